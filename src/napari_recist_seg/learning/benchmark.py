"""The real-data benchmark: train on RECIST only, score against real masks.

RECIST are simulated from the training masks (as a reader would draw them); the models learn
from the pseudo-masks and groups derived from those RECIST alone. Validation is a held-out
part of the training folder, scored against its pseudo-masks. Only the test folders' real
masks are used, and only for scoring.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.metrics import METRIC_NAMES, segmentation_metrics, truth_under_recist
from ..core.pseudo_masks import pseudo_mask
from ..core.recist import recist_from_mask
from ..core.recist_prompt import PRIOR_EDGES
from ..core.recist_refinement import DEFAULT_REFINEMENT
from ..core.training_targets import DEFAULT_TARGET
from ..data._atomic import atomic_write
from ..data.image_folders import load_pair, read_image_mask_folder, warn_unmeasured
from .devices import is_main_process
from .preparation import (
    AUTO_CROP,
    DEFAULT_CROP_PX,
    crop_px_for,
    prepare_crops,
    prepare_table_for_kinds,
    prepare_whole_images,
)
from .self_training import RoundTargets, check_rounds, self_train
from .statistics import compare_methods, default_pairs, json_floats, per_image_means, seed_summary
from .trainer import TrainConfig

__all__ = ["BenchmarkConfig", "load_folder", "run_benchmark", "run_table_benchmark",
           "REFERENCE_METHODS"]

REFERENCE_METHODS = ("ellipse", "quarter_ellipse")


@dataclass
class BenchmarkConfig:
    """Settings of ``run_benchmark`` (the CLI's options)."""

    models: Sequence[str] = ("multitask", "a1", "coseg")
    seeds: int = 1
    epochs: int = 4  # three models on 1,445 images of 128 px: about 35 min on 2 CPU cores
    size: int = 128
    n_train: int | None = None
    pseudo_mask: str = DEFAULT_TARGET
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    batch_size: int = 10
    lr: float = 1e-3
    patience: int = 5
    select: str = "loss"
    #: Training augmentation (``train_config.AUGMENTATIONS``; "auto": each kind's own).
    augment: str = "auto"
    val_fraction: float = 0.15
    k: int | None = None
    device: str = "auto"
    tta: bool = False
    #: How prompted models' masks are refined (``core.recist_refinement``).
    refine: str = DEFAULT_REFINEMENT
    examples: int = 6
    workers: int | None = None
    amp: str = "auto"
    channels_last: bool = False
    #: Image folders: train and score on crops around each lesion's RECIST, widened by this
    #: share of the lesion's size on each side; None keeps whole images.
    lesion_margin: float | None = None
    prior_residual: bool | None = None  # None: TrainConfig's default
    prior_edge: str = PRIOR_EDGES[0]
    prior_dropout: float | None = None  # None: TrainConfig's default
    #: Weight of the edge-aware pairwise loss term (``losses.edge_aware_pairwise_loss``);
    #: None: ``train_config.default_crf_weight``.
    crf_weight: float | None = None
    #: Extra self-training rounds after each model's first training (see ``self_training``).
    self_training_rounds: int = 0
    #: A trained model (run or checkpoint folder) whose masks, drawn from each training
    #: lesion's RECIST, replace the ``pseudo_mask`` targets (see ``teacher``).
    teacher: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["models"] = list(self.models)
        return d


@dataclass
class LoadedFolder:
    """Images, real masks and simulated RECIST of an image+mask folder."""

    name: str
    names: list
    images: list
    masks: list
    recists: list

    @property
    def in_channels(self) -> int:
        """Channels of the images (1 grey, 3 colour): what the network takes in."""
        return 1 if self.images and np.asarray(self.images[0]).ndim == 2 else 3


def load_folder(path, limit: int | None = None, seed: int = 0, progress=None) -> LoadedFolder:
    """Read an image+mask folder and simulate each mask's RECIST.

    ``limit`` keeps a seeded random subset of that many pairs. Pairs whose mask is empty
    (or a single pixel) are skipped with one warning.
    """
    pairs = sorted(read_image_mask_folder(path), key=lambda p: p.name)
    if limit is not None and limit < len(pairs):
        if limit < 1:
            raise ValueError(f"--n-train must be at least 1, got {limit}")
        keep = np.sort(np.random.default_rng(seed).permutation(len(pairs))[:limit])
        pairs = [pairs[i] for i in keep]
    names, images, masks, recists, skipped = [], [], [], [], []
    iterator = pairs if progress is None else progress(pairs, f"reading {Path(path).name}")
    for pair in iterator:
        image, mask = load_pair(pair)
        try:
            recist = recist_from_mask(mask)
        except ValueError:
            skipped.append(pair.name)
            continue
        names.append(pair.name)
        images.append(image)
        masks.append(mask)
        recists.append(recist)
    warn_unmeasured(path, skipped)
    if not names:
        raise ValueError(f"no usable image+mask pair in {path}")
    grey = [n for n, im in zip(names, images) if np.asarray(im).ndim == 2]
    if grey and len(grey) < len(names):
        # One network takes one number of channels: grey images join the colour ones.
        warnings.warn(
            f"{path}: {len(grey)} of {len(names)} images are grey and the others colour; the "
            f"grey ones are used as colour images: {', '.join(grey[:5])}"
            f"{' ...' if len(grey) > 5 else ''}",
            stacklevel=2,
        )
        images = [np.repeat(im[..., None], 3, axis=-1) if np.asarray(im).ndim == 2 else im
                  for im in images]
    return LoadedFolder(Path(path).name, names, images, masks, recists)


def _aggregate(per_seed: list[list[dict]]) -> dict:
    """Mean over images per seed, then mean and std over seeds, per metric."""
    seed_means = [
        {m: float(np.mean([d[m] for d in rows])) for m in METRIC_NAMES} for rows in per_seed
    ]
    return {
        m: {
            "mean": float(np.mean([s[m] for s in seed_means])),
            "std": float(np.std([s[m] for s in seed_means])),
        }
        for m in METRIC_NAMES
    }


def _method_entry(per_seed: list[list[dict]]) -> dict:
    """One method's results on one test set: metrics, per-image Dice, seeds, and how many
    of its masks were empty where the truth is not (mean over seeds)."""
    # Exactly one of the two masks empty is the one case where the volume similarity is 0.
    empty = [sum(1 for d in rows if d["vs"] == 0 and d["dice"] == 0) for rows in per_seed]
    return {
        "metrics": _aggregate(per_seed),
        "per_image_dice": json_floats(per_image_means(per_seed)),
        "seeds": seed_summary(per_seed),
        "empty_masks": float(np.mean(empty)),
    }


REPORT_FILES = ("results.json", "report.md")


def refuse_earlier_benchmark(out: Path, config) -> None:
    """ValueError when ``out`` already holds a benchmark's report or one of the runs this one
    would write (nothing is replaced)."""
    from .run_folders import find_run

    for name in REPORT_FILES:
        if (out / name).exists():
            raise ValueError(f"{out / name} already exists; choose another output folder or "
                             f"pass --overwrite to replace it")
    for seed in range(config.seeds):
        for kind in config.models:
            info = find_run(out / "runs" / f"{kind}-seed{seed}")
            if info is not None:
                raise ValueError(
                    f"{out} already holds the runs of a benchmark ({info.folder}: "
                    f"{info.describe()}); choose another output folder or pass --overwrite "
                    f"to replace them"
                )


def run_benchmark(
    train_dir,
    test_dirs: Sequence,
    out_dir,
    config: BenchmarkConfig,
    *,
    on_event: Callable | None = None,
    progress=None,
    stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    teacher_model=None,
) -> dict:
    """Train every model kind for every seed and score them on each test folder.

    Parameters
    ----------
    train_dir : path
        Image+mask folder whose masks only give the simulated RECIST.
    test_dirs : sequence of path
        Image+mask folders scored against their real masks.
    out_dir : path
        Receives ``results.json``, ``report.md``, figures and each run's checkpoints.
    config : BenchmarkConfig
    on_event : callable, optional
        ``on_event(model_kind, seed, TrainEvent)`` for progress display.
    progress : callable, optional
        ``progress(iterable, description)`` wrapping long loops (e.g. a tqdm bar).
    stop : callable, optional
        Polled between training steps; a stop ends the benchmark with what it has.
    overwrite : bool
        Replace the runs of an earlier benchmark in ``out_dir/runs``; without it such a folder
        is refused before anything is read or trained.
    teacher_model : torch.nn.Module, optional
        ``config.teacher`` already loaded (``inference.load_model``); loaded here otherwise.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    from .inference import is_prompted, load_model, predict

    out = Path(out_dir)
    check_rounds(config.self_training_rounds)
    if not test_dirs:
        raise ValueError("give at least one test folder")
    if not overwrite:
        refuse_earlier_benchmark(out, config)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_data = load_folder(train_dir, config.n_train, progress=progress)
    tests = [load_folder(d, progress=progress) for d in test_dirs]
    names = [t.name for t in tests]
    if len(set(names)) != len(names):
        raise ValueError(f"test folders need distinct names, got {names}")

    results = {
        "config": {**config.to_dict(), "train_dir": str(train_dir),
                   "test_dirs": [str(d) for d in test_dirs]},
        "n_train": len(train_data.names),
        "training": {},
        "tests": {t.name: {"n_test": len(t.names), "methods": {}} for t in tests},
        "histories": {},
    }
    scores: dict[str, dict[str, list[list[dict]]]] = {t.name: {} for t in tests}
    examples: dict[str, dict[str, list[np.ndarray]]] = {t.name: {} for t in tests}
    stopped = False
    teacher = _Teacher(config, teacher_model) if config.teacher else None
    for seed in range(config.seeds):
        data = _prepare_folder(train_data, config, seed)
        for kind in config.models:
            run_dir, best, stopped = _train_and_record(
                results, data, config, kind, seed, train_data.in_channels, out,
                stop=stop, overwrite=overwrite, on_event=on_event,
                truth_of=_folder_truth(train_data, data), progress=progress, teacher=teacher)
            if best is None:
                continue
            model = load_model(run_dir, device=config.device)
            # Prompted and lesion-crop models are given each test lesion's RECIST, simulated
            # from its mask exactly as for the pseudo-mask reference rows.
            needs_recist = is_prompted(model) or model.preprocessing.get("mode") == "crops"
            for test in tests:
                it = zip(test.images, test.masks)
                if progress is not None:
                    it = progress(list(it), f"scoring {kind} on {test.name}")
                preds = [predict(model, img, [r] if needs_recist else None, tta=config.tta,
                                 refine=config.refine)
                         for (img, _), r in zip(it, test.recists)]
                rows = [segmentation_metrics(p, m) for p, m in zip(preds, test.masks)]
                scores[test.name].setdefault(kind, []).append(rows)
                if seed == 0:
                    examples[test.name][kind] = preds[: config.examples]
            del model
            if stopped:
                break
        if stopped:
            break

    for test in tests:
        for method in REFERENCE_METHODS:
            drawn = [pseudo_mask(r, m.shape, method) for r, m in zip(test.recists, test.masks)]
            scores[test.name][method] = [
                [segmentation_metrics(p, m) for p, m in zip(drawn, test.masks)]
            ]
            examples[test.name][method] = drawn[: config.examples]
        for method, per_seed in scores[test.name].items():
            results["tests"][test.name]["methods"][method] = _method_entry(per_seed)
        results["tests"][test.name]["comparisons"] = compare_methods(
            scores[test.name], default_pairs(list(scores[test.name])))
    _average_seeds(results)
    results["total_seconds"] = time.perf_counter() - t0
    results["stopped"] = stopped

    if is_main_process():  # under torchrun, rank 0 alone writes
        with atomic_write(out / "results.json") as fh:
            json.dump(results, fh, indent=1)
        from .report import write_report

        write_report(out, results, tests, examples)
    return results


def _prepare_folder(train_data: LoadedFolder, config: BenchmarkConfig, seed: int):
    """Training and validation sets of an image+mask folder: whole images, or lesion crops."""
    common = dict(size=config.size, val_fraction=config.val_fraction, k=config.k,
                  pseudo_mask_method=config.pseudo_mask, seed=seed, normalise="image")
    if config.lesion_margin is None:
        return prepare_whole_images(train_data.images, train_data.recists, **common)
    return prepare_crops(train_data.images, train_data.recists, margin=config.lesion_margin,
                         **common)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _targets_dice(dataset, masks: np.ndarray, truth) -> float | None:
    """Mean Dice of item targets against true masks in source pixels (None: no truth)."""
    scores = []
    for i, mask in enumerate(masks):
        t = truth(i)
        if t is not None:
            scores.append(_dice(dataset.paste_back(i, mask, t.shape), t))
    return float(np.mean(scores)) if scores else None


def _round_record(targets: RoundTargets, data, truth_of) -> dict:
    """A self-training refinement as results.json keeps it: how much the targets moved and,
    where true masks of the training data are known, their Dice before and after."""
    entry = {"round": targets.round, "changed_pixels": targets.changed}
    if truth_of is not None:
        for name, dataset, masks, before in (
                ("train", data.train_set, targets.train_masks, targets.previous_train_masks),
                ("val", data.val_set, targets.val_masks, targets.previous_val_masks)):
            entry[f"{name}_target_dice"] = _targets_dice(dataset, masks, truth_of[name])
            entry[f"{name}_previous_dice"] = _targets_dice(dataset, before, truth_of[name])
    return entry


def _folder_truth(folder: LoadedFolder, data) -> dict:
    """True masks of the training and validation items of an image+mask folder."""
    return {name: (lambda i, idx=idx: folder.masks[int(idx[i])])
            for name, idx in (("train", data.train_indices), ("val", data.val_indices))}


class _TrainingTruth:
    """True masks of a table's training and validation lesions, where the masks folder holds
    their key slices' masks (each lesion's own part of it); each slice is read once per
    benchmark, whatever the seeds and models."""

    def __init__(self, table, mask_dir: Path):
        self.table = table
        self.mask_dir = mask_dir
        self._slices: dict[str, np.ndarray | None] = {}

    def _truth(self, row):
        from ..data.image_folders import load_mask

        if row.image not in self._slices:
            f = self.mask_dir / row.image
            self._slices[row.image] = load_mask(f) > 0 if f.is_file() else None
        whole = self._slices[row.image]
        if whole is None:
            return None
        return truth_under_recist(whole, row.recist.long_axis, row.recist.short_axis)

    def of(self, data) -> dict:
        """``truth_of`` of ``_train_and_record`` for the sets of ``data``."""
        rows = self.table.rows
        return {name: (lambda i, idx=idx: self._truth(rows[int(idx[i])]))
                for name, idx in (("train", data.train_indices), ("val", data.val_indices))}


def _train_and_record(results: dict, data, config: BenchmarkConfig, kind: str, seed: int,
                      in_channels: int, out: Path, *, stop, overwrite: bool, on_event,
                      truth_of: dict | None = None, progress=None,
                      teacher: _Teacher | None = None):
    """Train one model of the benchmark into ``out/runs/KIND-seedN`` and record its run in
    ``results``; returns (run folder, best epoch or None, whether it was stopped).

    ``truth_of`` (``{"train": f, "val": f}``, ``f(item) -> true mask or None``) lets
    self-training rounds report their targets' quality against the training data's true
    masks, which nothing trains on. With ``teacher`` (``config.teacher`` loaded) the model
    trains towards the teacher's masks, whose quality is recorded in the same way."""
    run_dir = out / "runs" / f"{kind}-seed{seed}"
    facts = {}
    if teacher is not None:
        drawn = teacher.targets(data, truth_of, progress, stop)
        if drawn is None:
            return run_dir, None, True
        data, quality = drawn
        results.setdefault("teacher", {"path": str(config.teacher), "targets": {}})[
            "targets"].setdefault(kind, []).append({"seed": seed, **quality})
        facts["teacher"] = str(config.teacher)
    tc = TrainConfig(kind=kind, encoder=config.encoder, input_size=config.size,
                     in_channels=in_channels, n_groups=data.grouping.k, epochs=config.epochs,
                     batch_size=config.batch_size, lr=config.lr, patience=config.patience,
                     select=config.select, augment=config.augment, seed=seed,
                     device=config.device, encoder_weights=config.encoder_weights,
                     num_workers=config.workers, amp=config.amp,
                     channels_last=config.channels_last,
                     prior_residual=config.prior_residual if kind == "prompted" else None,
                     prior_dropout=config.prior_dropout, prior_edge=config.prior_edge,
                     crf_weight=config.crf_weight)
    last = None
    seconds = 0.0
    rounds: list[dict] = []

    def record(targets: RoundTargets) -> None:
        rounds.append(_round_record(targets, data, truth_of))

    for event in self_train(data.train_set, data.val_set, tc, run_dir, grouping=data.grouping,
                            rounds=config.self_training_rounds, stop=stop, overwrite=overwrite,
                            on_targets=record, extra_config=facts):
        last = event
        if event.kind in ("finished", "stopped"):
            seconds += event.elapsed
        if on_event is not None:
            on_event(kind, seed, event)
    stopped = last is not None and last.kind == "stopped"
    if last is not None and last.checkpoint:
        run_dir = Path(last.checkpoint).parent  # an earlier round's, when stopped between rounds
    if config.self_training_rounds:
        results.setdefault("self_training", {}).setdefault(kind, []).append(
            {"seed": seed, "rounds": rounds})
    history = _history(run_dir)
    best = last.best_epoch if last is not None else None
    entry = results["training"].setdefault(kind, {"seeds": []})
    entry["crf_weight"] = tc.crf_weight_for(data.train_set.colour)
    entry["augment"] = tc.augmentation
    entry["seeds"].append({
        "seed": seed,
        "train_seconds": seconds,
        "epochs_run": len(history),
        "best_epoch": best,
        "seconds_to_best": next((h["elapsed"] for h in history if h["epoch"] == best), None),
        "images_per_second": last.images_per_second if last else 0.0,
        "n_groups": data.grouping.k,
        "stopped": stopped,
    })
    results["histories"].setdefault(kind, []).append(history)
    return run_dir, best, stopped


class _Teacher:
    """The benchmark's teacher: loaded once, and each prepared data set's targets drawn once,
    however many model kinds train on it."""

    def __init__(self, config: BenchmarkConfig, model=None):
        self.config = config
        self._model = model
        self._last: tuple | None = None  # (data, its result): kinds of a seed share data

    def targets(self, data, truth_of, progress, stop):
        """``data`` with the teacher's targets and their record, or None when stopped."""
        from .inference import load_model
        from .teacher import teacher_targets

        if self._last is not None and self._last[0] is data:
            return self._last[1]
        if self._model is None:
            self._model = load_model(self.config.teacher, device=self.config.device)
        drawn = teacher_targets(self._model, data, batch_size=self.config.batch_size,
                                name=str(self.config.teacher), stop=stop,
                                progress=_step_progress(progress, "teacher's targets"))
        if drawn is None:
            return None
        taught, targets = drawn
        record = _round_record(targets, data, truth_of)
        record.pop("round")
        self._last = (data, (taught, record))
        return taught, record


def _step_progress(progress, description: str):
    """A ``(done, total)`` callback that advances a ``progress(iterable, description)`` bar."""
    if progress is None:
        return None
    state = {"bar": None, "done": 0}

    def step(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = iter(progress(range(total), description))
        while state["done"] < done:
            next(state["bar"], None)
            state["done"] += 1
        if done >= total:
            next(state["bar"], None)  # the bar closes when its iterable ends

    return step


def _average_seeds(results: dict) -> None:
    """Mean and std over seeds of each model's training figures, beside its per-seed list."""
    for entry in results["training"].values():
        seeds = entry["seeds"]
        for key in ("train_seconds", "epochs_run", "best_epoch", "seconds_to_best",
                    "images_per_second"):
            values = [s[key] for s in seeds if s[key] is not None]
            entry[key] = float(np.mean(values)) if values else None
            entry[f"{key}_std"] = float(np.std(values)) if values else None


def _history(run_dir: Path) -> list[dict]:
    from .checkpoints import read_checkpoint_config

    for name in ("last", "best"):
        folder = run_dir / name
        if (folder / "config.json").is_file():
            return list(read_checkpoint_config(folder).get("history") or [])
    return []


@dataclass
class _TableTest:
    """Test lesions of a table, as the report draws them: windowed patches and true masks."""

    name: str
    names: list
    images: list
    masks: list


def _own_truth(truths: dict, row) -> np.ndarray:
    """The true mask of a test lesion alone (its key slice's mask may hold others)."""
    recist = row.recist
    return truth_under_recist(truths[row.image], recist.long_axis, recist.short_axis)


def _lesion_box(transform, shape) -> tuple[slice, slice]:
    """Source pixels of a lesion's patch square, clipped to the slice: where it is scored."""
    r0, c0 = (int(np.floor(v)) for v in transform.edge)
    side = int(np.ceil(transform.side))
    return (slice(max(r0, 0), min(r0 + side + 1, shape[0])),
            slice(max(c0, 0), min(c0 + side + 1, shape[1])))


def run_table_benchmark(
    table_path,
    out_dir,
    config: BenchmarkConfig,
    *,
    images=None,
    masks=None,
    crop_px: float | str | None = AUTO_CROP,
    window=None,
    on_event: Callable | None = None,
    progress=None,
    stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    teacher_model=None,
) -> dict:
    """The benchmark on DeepLesion's ``DL_info.csv``: train on splits 1 and 2, test on 3.

    Models learn from the RECIST rows alone (see ``prepare_from_table``). Each test lesion
    is scored inside its patch square against the true mask of its key slice, read from
    ``masks`` (default: ``masks/`` beside the CSV, files named by ``File_name``), as are the
    ellipse and quarter-ellipse pseudo-masks of its RECIST (the reference rows). Without
    masks the models are trained and timed but not scored.

    Parameters
    ----------
    table_path : path
        ``DL_info.csv`` (or a folder holding it).
    out_dir : path
        Receives ``results.json``, ``report.md`` and the runs (``runs/KIND-seedN``).
    config : BenchmarkConfig
        ``n_train`` and ``val_fraction`` do not apply: the table's splits decide.
    images, window
        As in ``prepare_from_table``.
    crop_px : float, None or "auto"
        The patch side in source px (None: sized to each lesion); "auto" gives each model
        kind its own (``preparation.crop_px_for``). Reference rows are scored in patches of
        ``DEFAULT_CROP_PX``.
    masks : path, optional
    on_event, progress, stop, overwrite, teacher_model
        As in ``run_benchmark``.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    from ..data.image_folders import load_mask
    from ..data.recist_sources import read_lesion_table
    from .inference import _predict_stacks, load_model
    out = Path(out_dir)
    check_rounds(config.self_training_rounds)
    if not overwrite:
        refuse_earlier_benchmark(out, config)
    table = read_lesion_table(table_path, images)
    if table.kind != "deeplesion":
        raise ValueError(f"{table.path}: the table benchmark needs DeepLesion's "
                         f"Train_Val_Test splits (a DL_info.csv)")
    test_rows = [(i, r) for i, r in enumerate(table.rows) if r.split == "test"]
    if not test_rows:
        raise ValueError(f"{table.path}: no test rows (Train_Val_Test 3)")
    mask_dir = Path(masks) if masks is not None else table.path.parent / "masks"
    truths: dict[str, np.ndarray] | None = None
    if mask_dir.is_dir():
        truths = {}
        for _, r in test_rows:
            if r.image not in truths:
                f = mask_dir / r.image
                if not f.is_file():
                    raise ValueError(f"{mask_dir}: no mask {r.image} for row {r.row} of "
                                     f"{table.path}")
                truths[r.image] = load_mask(f) > 0
    elif masks is not None:
        raise ValueError(f"masks {mask_dir}: no such folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    name = "test split"
    by_stack: dict[int, list] = {}
    for i, r in test_rows:
        by_stack.setdefault(r.stack, []).append((i, r))
    stacks = list(by_stack.items())
    results = {
        "config": {**config.to_dict(), "train_dir": str(table.path), "test_dirs": [name],
                   "crop_px": crop_px, "window": window, "source": "table"},
        "n_train": 0, "training": {}, "histories": {},
        "tests": {name: {"n_test": len(test_rows), "methods": {}}} if truths else {},
    }
    scores: dict[str, list[list[dict]]] = {}
    examples: dict[str, list[np.ndarray]] = {}
    stopped = False
    data = None
    training_truth = _TrainingTruth(table, mask_dir)
    teacher = _Teacher(config, teacher_model) if config.teacher else None
    for seed in range(config.seeds):
        sets = prepare_table_for_kinds(
            table.path, config.models, images, crop_px=crop_px, size=config.size,
            window=window, k=config.k, pseudo_mask_method=config.pseudo_mask, seed=seed)
        for kind in config.models:
            data = sets[kind]
            results["n_train"] = len(data.train_indices)
            results["n_val"] = len(data.val_indices)
            results["training"].setdefault(kind, {"seeds": []})["crop_px"] = crop_px_for(
                kind, crop_px)
            run_dir, best, stopped = _train_and_record(
                results, data, config, kind, seed, data.train_set.n_channels, out,
                stop=stop, overwrite=overwrite, on_event=on_event,
                truth_of=training_truth.of(data), progress=progress, teacher=teacher)
            if best is None or truths is None:
                if stopped:
                    break
                continue
            model = load_model(run_dir, device=config.device)
            loop = stacks if progress is None else progress(stacks, f"scoring {kind}")
            rows, preds = [], []
            windows = table.windows(window)
            for _, members, lesion_masks, _ in _predict_stacks(
                    model, table, loop, windows, 0.5, config.tta, 8, config.refine):
                for (_, r), pred in zip(members, lesion_masks):
                    box = _lesion_box(_scoring_transform(r, model), pred.shape)
                    rows.append(segmentation_metrics(pred[box], _own_truth(truths, r)[box]))
                    if len(preds) < config.examples:
                        # Overlays show every method in the reference rows' patch.
                        shown = _scoring_transform(r, None, config.size, DEFAULT_CROP_PX)
                        preds.append(pred[_lesion_box(shown, pred.shape)])
            scores.setdefault(kind, []).append(rows)
            if seed == 0:
                examples[kind] = preds[: config.examples]
            del model
            if stopped:
                break
        if stopped:
            break

    tests = []
    if truths is not None:
        order = [m for _, members in stacks for m in members]
        boxes, test_images, test_masks = [], [], []
        for _, r in order:
            t = _scoring_transform(r, None, config.size, DEFAULT_CROP_PX)
            boxes.append(_lesion_box(t, truths[r.image].shape))
        for method in REFERENCE_METHODS:
            drawn, rows = [], []
            for (_, r), box in zip(order, boxes):
                truth = _own_truth(truths, r)
                m = pseudo_mask(r.recist, truth.shape, method)[box]
                rows.append(segmentation_metrics(m, truth[box]))
                drawn.append(m)
            scores[method] = [rows]
            examples[method] = drawn[: config.examples]
        for (_, r), box in list(zip(order, boxes))[: config.examples]:
            key = table.stacks[r.stack].read()
            mid = key[key.shape[0] // 2][box]
            lo, hi = r.window if r.window is not None else (-160.0, 240.0)
            test_images.append(np.clip((mid - lo) / (hi - lo), 0, 1))
            test_masks.append(_own_truth(truths, r)[box])
        tests = [_TableTest(name, [r.image for _, r in order], test_images, test_masks)]
        for method, per_seed in scores.items():
            results["tests"][name]["methods"][method] = _method_entry(per_seed)
        results["tests"][name]["comparisons"] = compare_methods(
            scores, default_pairs(list(scores)))
    _average_seeds(results)
    results["total_seconds"] = time.perf_counter() - t0
    results["stopped"] = stopped
    results["scored"] = truths is not None
    if is_main_process():  # under torchrun, rank 0 alone writes
        with atomic_write(out / "results.json") as fh:
            json.dump(results, fh, indent=1)
        from .report import write_report

        write_report(out, results, tests, {name: examples} if tests else {})
    return results


def _scoring_transform(row, model, size=None, crop_px=None):
    """The patch square of a test lesion, as the model (or the settings) places it."""
    from ..data.crops import crop_transform_for

    if model is not None:
        pre = model.preprocessing
        size, crop_px = int(pre.get("size", 128)), pre.get("field_of_view_px")
        margin = float(pre.get("margin", 0.5))
    else:
        margin = 0.5
    return crop_transform_for(row.recist, int(size), margin, field_of_view_px=crop_px)
