"""What to train from the napari plugin, and the generator that trains it.

``run_training`` prepares the data (``learning.preparation``) and runs the library's trainer
for each model kind in turn, yielding plain messages; ``training_process`` runs the same
generator in a child process. Messages are ``(kind, payload)`` tuples of built-in values and
numpy arrays, so the GUI process needs neither torch nor the trainer's classes to read them:

``("status", text)``
    What the run is doing before training starts.
``("warning", text)``
    A warning raised while the data was prepared (read, given pseudo-masks and groups, or
    given a teacher's targets), e.g. the masks of a folder left out because they are empty;
    each text once, sent once that step is done. Such warnings are not printed.
``("prepared", dict)``
    ``mode``, ``n_train``, ``n_val``, ``k`` and ``in_channels`` of the prepared sets.
``("event", dict)``
    A ``TrainEvent`` as ``TrainEvent.to_dict()`` (plus ``progress``).
``("model", dict)``
    A model kind is done: ``kind``, ``path`` (the checkpoint to use: ``best/``, or ``last/``
    when no epoch finished), ``last`` (the resumable ``last/``), ``stopped`` and ``name``
    (a display name that says the run and its state).
``("plot", ndarray)``
    Child process only, with ``TrainingJob.plot_size``: the training curves drawn there
    (``curves.CurveFigure``, RGBA), so that the viewer's process does no drawing while
    training.

Nothing here imports Qt, napari or torch at import time.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..core.training_targets import DEFAULT_TARGET
from ..learning.model_kinds import MODEL_KINDS, MODEL_REGISTRY
from ..learning.train_config import TrainConfig, check_crf_weight, check_rounds

__all__ = [
    "KIND_NAMES",
    "MODEL_KINDS",
    "TrainingFailed",
    "TrainingJob",
    "collect_warnings",
    "prepare_torch_import",
    "run_label",
    "run_training",
]

#: Display names of the model kinds (from the registry).
KIND_NAMES = {entry.name: entry.display for entry in MODEL_REGISTRY.values()}


class TrainingFailed(RuntimeError):
    """Training in the child process failed; the message is the child's reason."""


@dataclass
class TrainingJob:
    """What to train: the data (arrays and RECIST, or a folder) and the settings.

    ``mode`` is "whole_image" (one lesion per image, ``prepare_whole_images``) or "crops"
    (``prepare_crops``: ``image_index`` names each lesion's image, ``slices`` its slice in a
    volume). With ``folder``, an image+mask folder is read with ``learning.benchmark.
    load_folder`` (RECIST simulated from its masks) and trained on whole images.
    """

    kinds: tuple[str, ...]
    out_dir: str
    # The trainer's own defaults: one place for the plugin, the command line and the library.
    encoder: str = TrainConfig.encoder
    #: Encoder weights (``TrainConfig.encoder_weights``): a local file or the name of weights
    #: shipped in an installed package; None: random.
    encoder_weights: str | None = TrainConfig.encoder_weights
    input_size: int = TrainConfig.input_size
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    patience: int = TrainConfig.patience
    select: str = TrainConfig.select
    augment: str = TrainConfig.augment
    device: str = TrainConfig.device
    k: int | None = None
    seed: int = TrainConfig.seed
    val_fraction: float = 0.15
    pseudo_mask_method: str = DEFAULT_TARGET
    mode: str = "whole_image"
    images: list = field(default_factory=list)
    recists: list = field(default_factory=list)
    image_index: list[int] | None = None
    slices: list[int] | None = None
    folder: str | None = None
    #: A lesion table to train on (DeepLesion's ``DL_info.csv`` or a RECIST .csv/.json naming
    #: its images): lesion crops streamed from its files (``prepare_from_table``).
    table: str | None = None
    source: str = ""
    #: Torch intra-op threads of the run (None: torch's default).
    torch_threads: int | None = None
    #: Scheduling niceness added to a child process, so the viewer wins the CPU when it needs it.
    niceness: int = 5
    #: (width, height) in pixels: a child process draws the training curves at this size and
    #: sends them (no more often than every ``plot_interval`` seconds, and at each epoch's end).
    plot_size: tuple[int, int] | None = None
    #: Device pixels per logical pixel of the plot (2 on a high-DPI screen): its text is
    #: drawn that much larger in pixels, so it reads at the size of the window's own.
    plot_scale: float = 1.0
    plot_interval: float = 5.0
    #: Continue each kind's stopped run from its ``last/`` checkpoint in ``out_dir/<kind>``
    #: (kinds without one start afresh).
    resume: bool = False
    #: Extra rounds after the first training, each on the last network's masks kept within
    #: each RECIST's trimap (``learning.self_training``); earlier rounds go to
    #: ``out_dir/<kind>/round-R``.
    self_training_rounds: int = 0
    #: Weight of the edge-aware pairwise loss (``TrainConfig.crf_weight``); None: the
    #: trainer's default for each model kind and image.
    crf_weight: float | None = TrainConfig.crf_weight
    #: A trained model (run or checkpoint folder) whose masks, drawn from each training
    #: lesion's RECIST, replace the pseudo-masks as targets (``learning.teacher``); None: off.
    teacher: str | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if not self.kinds:
            raise ValueError("choose at least one model kind to train")
        bad = [k for k in self.kinds if k not in MODEL_KINDS]
        if bad:
            raise ValueError(f"unknown model kind(s) {bad}; choose from {MODEL_KINDS}")
        if not str(self.out_dir).strip():
            raise ValueError("choose an output folder for the checkpoints")
        if self.mode not in ("whole_image", "crops"):
            raise ValueError(f"mode must be 'whole_image' or 'crops', got {self.mode!r}")
        check_rounds(self.self_training_rounds)
        check_crf_weight(self.crf_weight)
        if self.teacher is not None and not Path(self.teacher).is_dir():
            raise ValueError(f"teacher {self.teacher}: no such run or checkpoint folder")
        if self.resume and self.self_training_rounds:
            raise ValueError("Resume continues one training run; self-training rounds start "
                             "afresh: set the rounds to 0 to resume")
        if self.folder is None and self.table is None and len(self.recists) < 3:
            raise ValueError(
                f"{len(self.recists)} complete lesion(s): training needs at least 3 (some are "
                "held out for validation)"
            )


def stopped_words(epoch: int, step: int) -> str:
    """Where a stopped run stopped: "stopped at epoch 3" inside an epoch, "stopped after
    epoch 2" between two (a "stopped" event's epoch is the one it would have gone on with)."""
    if int(step) == 0 and int(epoch) > 1:
        return f"stopped after epoch {int(epoch) - 1}"
    return f"stopped at epoch {int(epoch)}"


def run_label(kind: str, last_event) -> str:
    """A model's display name that says its state, e.g. "multitask (stopped at epoch 3)".

    ``last_event`` is the run's last ``TrainEvent`` (None when it never started).
    """
    name = KIND_NAMES.get(kind, kind)
    if last_event is None:
        return f"{name} (not trained)"
    if last_event.kind == "stopped":
        return f"{name} ({stopped_words(last_event.epoch, last_event.step)})"
    if last_event.best_epoch is not None:
        return f"{name} (best epoch {last_event.best_epoch} of {last_event.epoch})"
    return f"{name} (epoch {last_event.epoch})"


def _llvm_is_loaded() -> bool:
    try:
        with open("/proc/self/maps") as fh:
            return any("libLLVM" in line for line in fh)
    except OSError:
        return False


def prepare_torch_import() -> None:
    """Make importing torch (with smp and torchvision) safe in a process that draws with Mesa.

    Mesa's OpenGL drivers that compile shaders with LLVM (llvmpipe, the software renderer of
    Xvfb and of machines without a GPU driver, and radeonsi) map their LLVM into the viewer's
    process. torchvision imports triton when it is installed (CUDA builds of torch bring it),
    and triton's own copy of LLVM then crashes the process while it initialises. Loading
    triton with ``RTLD_DEEPBIND`` makes it bind to its own symbols. Nothing is done when torch
    or triton is loaded already, off Linux, or when no LLVM is mapped (a child process).
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or not _llvm_is_loaded():
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401
    except ImportError:  # not installed: nothing to guard against
        pass
    finally:
        sys.setdlopenflags(flags)


def collect_warnings(func: Callable, *args, **kwargs) -> tuple[object, list[str]]:
    """Call ``func`` and gather the warnings it raises instead of printing them.

    Parameters
    ----------
    func : callable
        Called with ``args`` and ``kwargs`` in this thread.

    Returns
    -------
    tuple
        ``func``'s result and the texts of the warnings raised in this thread while it ran,
        each once, in the order raised.

    Notes
    -----
    The warning filters in force still apply (an ignored warning stays ignored), but a
    warning already shown once is shown again: a second run on the same data must tell the
    same. Warnings that other threads (the viewer's) raise meanwhile are printed as before.
    """
    owner = threading.get_ident()
    texts: list[str] = []
    # warnings.showwarning is process-wide: another thread's catch_warnings (pandas or
    # matplotlib in the viewer's thread) may put back the one it found on entering while
    # this runs. Warnings raised through warnings.warn, as this package's own are, are also
    # noted where they are raised, which no other thread undoes.
    if warnings.warn is not _noting_warn:
        _noting_warn.original = warnings.warn
        warnings.warn = _noting_warn
    _NOTED.texts = texts
    try:
        # Entering catch_warnings also forgets which warnings were shown already.
        with warnings.catch_warnings():
            show = warnings.showwarning

            def gather(message, category, filename, lineno, file=None, line=None):
                if threading.get_ident() != owner:
                    show(message, category, filename, lineno, file, line)
                elif str(message) not in texts:
                    texts.append(str(message))

            warnings.showwarning = gather
            result = func(*args, **kwargs)
    finally:
        _NOTED.texts = None
    return result, texts


#: The warnings ``collect_warnings`` gathers in each thread (``texts``: a list, or None).
_NOTED = threading.local()


def _noting_warn(message, category=None, stacklevel=1, source=None, **kwargs):
    """``warnings.warn`` that also notes the text for a ``collect_warnings`` of this thread
    (unless a filter ignores it)."""
    texts = getattr(_NOTED, "texts", None)
    if texts is not None and not _ignored(message, category) and str(message) not in texts:
        texts.append(str(message))
    return _noting_warn.original(message, category, stacklevel + 1, source, **kwargs)


_noting_warn.original = warnings.warn


def _ignored(message, category) -> bool:
    """Whether the first of the filters in force that fits the warning ignores it (filters
    naming a module or line are taken to fit)."""
    if isinstance(message, Warning):
        category = type(message)
    category = category or UserWarning
    text = str(message)
    for action, pattern, kind, _module, _line in warnings.filters:
        if (pattern is None or pattern.match(text)) and issubclass(category, kind):
            return action == "ignore"
    return False


def _warning_messages(texts: list[str]) -> Iterator[tuple]:
    for text in texts:
        yield ("warning", text)


def _release_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _teacher_targets(job: TrainingJob, data, taught: dict, stop) -> Iterator[tuple]:
    """Draw ``data``'s targets with the job's teacher into ``taught[id(data)]``, yielding
    status messages with the count of lesions done (nothing is stored when stopped)."""
    import threading

    from ..learning.inference import load_model
    from ..learning.teacher import teacher_targets

    total = len(data.train_set) + len(data.val_set)
    done = [0]
    outcome: dict = {}

    def draw() -> None:
        try:
            teacher, noted = collect_warnings(load_model, job.teacher, device=job.device)
            outcome["result"], more = collect_warnings(
                teacher_targets, teacher, data, batch_size=job.batch_size,
                name=str(job.teacher), stop=stop,
                progress=lambda n, _total: done.__setitem__(0, n))
            outcome["warnings"] = noted + [t for t in more if t not in noted]
        except Exception as exc:  # noqa: BLE001 (raised again in the generator's thread)
            outcome["error"] = exc

    # The drawing runs beside this generator so that it can report how far it has got.
    worker = threading.Thread(target=draw, name="teacher-targets", daemon=True)
    worker.start()
    while worker.is_alive():
        yield ("status", f"the teacher draws the targets: {done[0]} of {total} lesions")
        worker.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    yield from _warning_messages(outcome.get("warnings", []))
    if outcome.get("result") is not None:
        taught[id(data)] = outcome["result"][0]


def run_training(job: TrainingJob, stop: Callable[[], bool] | None = None) -> Iterator[tuple]:
    """Prepare the data and train each model kind of ``job`` in turn, yielding messages.

    ``stop`` is polled between training steps (by the trainer) and between models; a stopped
    model keeps its resumable ``last/`` checkpoint and the kinds after it are not trained.
    """
    job.validate()
    stop = stop or (lambda: False)
    if stop():  # asked to stop before anything started: no need to load torch at all
        return
    prepare_torch_import()
    from ..learning.preparation import (
        prepare_crops,
        prepare_table_for_kinds,
        prepare_whole_images,
    )
    from ..learning.self_training import self_train
    from ..learning.trainer import TrainConfig, train

    if job.torch_threads:
        import torch

        torch.set_num_threads(int(job.torch_threads))
    images, recists, mode = job.images, job.recists, job.mode
    if job.folder is not None:
        from ..learning.benchmark import load_folder

        yield ("status", f"reading {job.folder}")
        # What the command line prints (masks left out, grey images among colour ones) must
        # reach the viewer's user too: in a thread or a child process it would only reach
        # the terminal, if any.
        loaded, noted = collect_warnings(load_folder, job.folder, seed=job.seed)
        yield from _warning_messages(noted)
        images, recists, mode = loaded.images, loaded.recists, "whole_image"
    if stop():
        return
    common = dict(size=job.input_size, val_fraction=job.val_fraction, k=job.k,
                  pseudo_mask_method=job.pseudo_mask_method, seed=job.seed)
    sets = {}
    if job.table is not None:
        yield ("status", f"reading {job.table}, making pseudo-masks and groups")
        # Each model kind trains on its own patch side (prompted: sized to the lesion).
        sets, noted = collect_warnings(prepare_table_for_kinds, job.table, job.kinds,
                                       **common)
        data, mode = sets[job.kinds[0]], "crops"
    elif mode == "crops":
        yield ("status", f"making pseudo-masks and groups for {len(recists)} lesions")
        data, noted = collect_warnings(prepare_crops, images, recists,
                                       image_index=job.image_index, slices=job.slices,
                                       **common)
    else:
        yield ("status", f"making pseudo-masks and groups for {len(recists)} lesions")
        data, noted = collect_warnings(prepare_whole_images, images, recists, **common)
    yield from _warning_messages(noted)
    in_channels = int(data.train_set.n_channels)
    yield ("prepared", {"mode": mode, "n_train": len(data.train_set),
                        "n_val": len(data.val_set), "k": int(data.grouping.k),
                        "in_channels": in_channels})
    source = job.source or job.folder or job.table or ""
    extra = {"trained_with": {"front_end": "napari", "source": source}}
    if job.teacher:
        taught = {}
        for d in {id(d): d for d in [data, *sets.values()]}.values():
            yield from _teacher_targets(job, d, taught, stop)
            if id(d) not in taught:  # stopped
                return
        data = taught[id(data)]
        sets = {kind: taught[id(d)] for kind, d in sets.items()}
        extra["teacher"] = str(job.teacher)
    try:
        for kind in job.kinds:
            if stop():
                break
            data = sets.get(kind, data)
            config = TrainConfig(
                kind=kind, encoder=job.encoder, encoder_weights=job.encoder_weights,
                input_size=job.input_size,
                in_channels=in_channels,
                n_groups=int(data.grouping.k) if MODEL_REGISTRY[kind].groups else None,
                epochs=job.epochs, batch_size=job.batch_size, lr=job.lr, patience=job.patience,
                select=job.select, augment=job.augment,
                seed=job.seed, device=job.device, crf_weight=job.crf_weight,
                # Batches are built where training runs: forking DataLoader workers from a
                # process that holds Qt (or from the viewer's child) is not safe.
                num_workers=0,
            )
            out = Path(job.out_dir) / kind
            resume = out / "last" if job.resume and (out / "last").is_dir() else None
            if resume is not None:
                from ..learning.teacher import check_resume_teacher

                check_resume_teacher(resume, job.teacher, "teacher")
                yield ("status", f"resuming {KIND_NAMES[kind]} from {resume}")
            last = None
            if job.self_training_rounds:
                run = self_train(data.train_set, data.val_set, config, out,
                                 rounds=job.self_training_rounds, grouping=data.grouping,
                                 extra_config=extra, stop=stop)
            else:
                run = train(data.train_set, data.val_set, config, out, grouping=data.grouping,
                            extra_config=extra, stop=stop, resume=resume)
            for event in run:
                last = event
                payload = event.to_dict()
                payload["progress"] = event.progress
                yield ("event", payload)
            stopped = last is not None and last.kind == "stopped"
            # best/ exists once an epoch of this run improved; before that only last/ does.
            has_best = last is not None and last.best_epoch is not None
            # A self-training run stopped between rounds ends with an earlier round's folder.
            run_dir = Path(last.checkpoint).parent if last is not None and last.checkpoint \
                else out
            path = run_dir / ("best" if has_best else "last")
            yield ("model", {"kind": kind, "path": str(path), "last": str(run_dir / "last"),
                             "stopped": stopped, "name": run_label(kind, last)})
            if stopped:
                break
    finally:
        _release_accelerator_memory()
