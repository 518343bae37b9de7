"""Training and model loading for the plugin's widgets, behind one generator interface.

``run_training`` prepares the data (``learning.preparation``) and runs the library's trainer
for each model kind in turn, yielding plain messages. ``run_training_in_process`` runs the same
generator in a spawned child process and passes its messages back over a queue; the widget
consumes either one in a napari thread worker. A child process keeps the viewer responsive:
torch and the data preparation then never hold the GUI process's interpreter lock (see
``benchmarks/gui_stall.py`` for the measurement), and the child's exit frees all the memory,
GPU memory included, that training used.

Messages are ``(kind, payload)`` tuples of built-in values and numpy arrays, so the GUI
process needs neither torch nor the trainer's classes to read them:

``("status", text)``
    What the run is doing before training starts.
``("prepared", dict)``
    ``mode``, ``n_train``, ``n_val``, ``k`` and ``in_channels`` of the prepared sets.
``("event", dict)``
    A ``TrainEvent`` as ``TrainEvent.to_dict()`` (plus ``progress``).
``("model", dict)``
    A model kind is done: ``kind``, ``path`` (the checkpoint to use: ``best/``, or ``last/``
    when no epoch finished), ``last`` (the resumable ``last/``) and ``stopped``.
``("plot", ndarray)``
    Child process only, with ``TrainingJob.plot_size``: the training curves drawn there
    (``CurveFigure``, RGBA), so that the viewer's process does no drawing while training.

Nothing here imports Qt, napari or torch at import time.
"""

from __future__ import annotations

import os
import queue as queue_module
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from psygnal import Signal

__all__ = [
    "CurveFigure",
    "MODEL_REGISTRY",
    "ModelEntry",
    "ModelRegistry",
    "TrainingFailed",
    "TrainingJob",
    "load_entry",
    "prepare_torch_import",
    "run_training",
    "run_training_in_process",
]

MODEL_KINDS = ("multitask", "a1", "coseg")
#: Display names of the model kinds.
KIND_NAMES = {"multitask": "multitask", "a1": "A1", "coseg": "co-segmentation"}


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
    encoder: str = "resnet18"
    input_size: int = 128
    epochs: int = 30
    batch_size: int = 10
    lr: float = 1e-3
    patience: int = 5
    device: str = "auto"
    k: int | None = None
    seed: int = 0
    val_fraction: float = 0.15
    pseudo_mask_method: str = "ellipse"
    mode: str = "whole_image"
    images: list = field(default_factory=list)
    recists: list = field(default_factory=list)
    image_index: list[int] | None = None
    slices: list[int] | None = None
    folder: str | None = None
    source: str = ""
    #: Torch intra-op threads of the run (None: torch's default).
    torch_threads: int | None = None
    #: Scheduling niceness added to a child process, so the viewer wins the CPU when it needs it.
    niceness: int = 5
    #: (width, height) in pixels: a child process draws the training curves at this size and
    #: sends them (no more often than every ``plot_interval`` seconds, and at each epoch's end).
    plot_size: tuple[int, int] | None = None
    plot_interval: float = 5.0

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
        if self.folder is None and len(self.recists) < 3:
            raise ValueError(
                f"{len(self.recists)} complete lesion(s): training needs at least 3 (some are "
                "held out for validation)"
            )


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


def _release_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    from ..learning.preparation import prepare_crops, prepare_whole_images
    from ..learning.trainer import TrainConfig, train

    if job.torch_threads:
        import torch

        torch.set_num_threads(int(job.torch_threads))
    images, recists, mode = job.images, job.recists, job.mode
    if job.folder is not None:
        from ..learning.benchmark import load_folder

        yield ("status", f"reading {job.folder}")
        loaded = load_folder(job.folder, seed=job.seed)
        images, recists, mode = loaded.images, loaded.recists, "whole_image"
    if stop():
        return
    yield ("status", f"making pseudo-masks and groups for {len(recists)} lesions")
    common = dict(size=job.input_size, val_fraction=job.val_fraction, k=job.k,
                  pseudo_mask_method=job.pseudo_mask_method, seed=job.seed)
    if mode == "crops":
        data = prepare_crops(images, recists, image_index=job.image_index, slices=job.slices,
                             **common)
    else:
        data = prepare_whole_images(images, recists, **common)
    in_channels = int(data.train_set.n_channels)
    yield ("prepared", {"mode": mode, "n_train": len(data.train_set),
                        "n_val": len(data.val_set), "k": int(data.grouping.k),
                        "in_channels": in_channels})
    extra = {"trained_with": {"front_end": "napari", "source": job.source or job.folder or ""}}
    try:
        for kind in job.kinds:
            if stop():
                break
            config = TrainConfig(
                kind=kind, encoder=job.encoder, input_size=job.input_size,
                in_channels=in_channels,
                n_groups=int(data.grouping.k) if kind == "multitask" else None,
                epochs=job.epochs, batch_size=job.batch_size, lr=job.lr, patience=job.patience,
                seed=job.seed, device=job.device,
            )
            out = Path(job.out_dir) / kind
            last = None
            for event in train(data.train_set, data.val_set, config, out,
                               grouping=data.grouping, extra_config=extra, stop=stop):
                last = event
                payload = event.to_dict()
                payload["progress"] = event.progress
                yield ("event", payload)
            stopped = last is not None and last.kind == "stopped"
            # best/ exists once an epoch of this run improved; before that only last/ does.
            has_best = last is not None and last.best_epoch is not None
            path = out / ("best" if has_best else "last")
            yield ("model", {"kind": kind, "path": str(path), "last": str(out / "last"),
                             "stopped": stopped})
            if stopped:
                break
    finally:
        _release_accelerator_memory()


# -- the training curves ---------------------------------------------------------------------------
#: Series kept per model kind: per-step loss terms at fractional epochs, per-epoch means, Dice.
SERIES = ("step_x", "step_seg", "step_cls", "epoch", "seg", "cls", "dice")


def add_event(curves: dict, event: dict) -> bool:
    """Add a training event (``TrainEvent.to_dict()``) to ``curves``; True when it changed."""
    kind = event["model_kind"]
    c = curves.setdefault(kind, {name: [] for name in SERIES})
    losses = event.get("losses") or {}
    nan = float("nan")
    if event["kind"] == "step":
        steps = max(1, int(event["steps_per_epoch"]))
        c["step_x"].append(int(event["epoch"]) - 1 + int(event["step"]) / steps)
        c["step_seg"].append(float(losses.get("seg", nan)))
        c["step_cls"].append(float(losses.get("cls", nan)))
        return True
    if event["kind"] == "epoch":
        c["epoch"].append(int(event["epoch"]))
        c["seg"].append(float(losses.get("seg", nan)))
        c["cls"].append(float(losses.get("cls", nan)))
        c["dice"].append(float((event.get("val") or {}).get("dice", nan)))
        return True
    return False


class CurveFigure:
    """The training curves as a matplotlib figure drawn off screen (Agg, no Qt).

    Top: segmentation loss (solid) and group loss (dashed) per step (thin) and per epoch
    (dots); bottom: validation Dice per epoch; one colour per model kind
    (``learning.report.MODEL_COLOURS``). Drawing takes tens to hundreds of milliseconds, so it
    is done away from the viewer's GUI thread: in the training process, or in a worker thread.
    One drawing at a time.
    """

    def __init__(self, dpi: int = 80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.figure.subplots_adjust(left=0.17, right=0.97, top=0.91, bottom=0.13, hspace=0.28)
        self.loss_axes = self.figure.add_subplot(211)
        self.dice_axes = self.figure.add_subplot(212, sharex=self.loss_axes)
        self._lines: dict = {}
        self._style()

    def _style(self) -> None:
        for ax in (self.loss_axes, self.dice_axes):
            ax.tick_params(labelsize=7)
        self.loss_axes.set_ylabel("loss", fontsize=8)
        self.loss_axes.set_title("seg (solid), group (dashed); dots: epoch means", fontsize=8)
        self.dice_axes.set_ylabel("val. Dice", fontsize=8)
        self.dice_axes.set_xlabel("epoch", fontsize=8)
        self.dice_axes.set_ylim(0, 1)

    def reset(self) -> None:
        self.loss_axes.clear()
        self.dice_axes.clear()
        self._lines = {}
        self._style()

    def lines(self, kind: str) -> dict:
        """The drawn series of ``kind``: name -> (x, y), as last drawn."""
        return {name: (list(line.get_xdata()), list(line.get_ydata()))
                for name, line in self._lines.get(kind, {}).items()}

    def render(self, curves: dict, width: int, height: int):
        """Draw ``curves`` (per model kind, the ``SERIES``) at ``width`` x ``height`` pixels.

        Returns an RGBA uint8 array of shape (height, width, 4).
        """
        import numpy as np

        from ..learning.report import MODEL_COLOURS

        self.figure.set_size_inches(max(1, width) / self.figure.dpi,
                                    max(1, height) / self.figure.dpi)
        for kind, c in curves.items():
            lines = self._lines.get(kind)
            if lines is None:
                colour = MODEL_COLOURS.get(kind)
                la, lo = self.loss_axes, self.dice_axes
                lines = {
                    "step_seg": la.plot([], [], "-", lw=0.8, alpha=0.5, color=colour)[0],
                    "step_cls": la.plot([], [], "--", lw=0.8, alpha=0.5, color=colour)[0],
                    "seg": la.plot([], [], "o-", ms=3, color=colour,
                                   label=KIND_NAMES.get(kind, kind))[0],
                    "cls": la.plot([], [], "o--", ms=3, color=colour)[0],
                    "dice": lo.plot([], [], "o-", ms=3, color=colour)[0],
                }
                self._lines[kind] = lines
                la.legend(fontsize=7, loc="upper right")
            for name in ("step_seg", "step_cls"):
                lines[name].set_data(c["step_x"], c[name])
            for name in ("seg", "cls", "dice"):
                lines[name].set_data(c["epoch"], c[name])
        for ax in (self.loss_axes, self.dice_axes):
            ax.relim()
            ax.autoscale_view()
        self.dice_axes.set_ylim(0, 1)
        canvas = self.figure.canvas
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()


# -- the same generator in a child process ------------------------------------------------------
def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValueError | OSError | FloatingPointError | TrainingFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _child_main(job: TrainingJob, messages, stop_event) -> None:
    """Entry point of the training process: run ``run_training`` and send its messages."""
    if job.niceness:
        try:
            os.nice(int(job.niceness))
        except (AttributeError, OSError):  # not on every platform
            pass
    parent = os.getppid()

    def stop() -> bool:
        # A viewer that was killed cannot ask: an orphan is adopted by another process, and
        # stops after its step like a run whose Stop was pressed (its checkpoint is kept).
        return stop_event.is_set() or os.getppid() != parent

    try:
        figure, curves, drawn, changed = None, {}, 0.0, False
        for message in run_training(job, stop):
            messages.put(message)
            if job.plot_size and message[0] == "event":
                changed = add_event(curves, message[1]) or changed
                end = message[1]["kind"] in ("epoch", "stopped", "finished")
                if changed and (end or time.monotonic() - drawn >= job.plot_interval):
                    figure = figure or CurveFigure()
                    messages.put(("plot", figure.render(curves, *job.plot_size)))
                    drawn, changed = time.monotonic(), False
        messages.put(("done", None))
    except BaseException as exc:  # reported to the parent, which raises it there
        messages.put(("error", _describe(exc)))


def run_training_in_process(job: TrainingJob, stop: threading.Event | None = None,
                            poll: float = 0.05) -> Iterator[tuple]:
    """``run_training`` in a spawned child process; same messages, same stop semantics.

    Parameters
    ----------
    job : TrainingJob
        Pickled to the child (the images travel with it).
    stop : threading.Event, optional
        Setting it asks the child to stop after its current step.
    poll : float
        Seconds between checks of ``stop`` while waiting for a message.

    Raises
    ------
    TrainingFailed
        With the child's reason when training fails there, or when the child dies.
    """
    import multiprocessing

    job.validate()
    stop = stop or threading.Event()
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    child_stop = ctx.Event()
    process = ctx.Process(target=_child_main, args=(job, messages, child_stop),
                          name="recist-seg training", daemon=True)
    process.start()
    done = False
    try:
        while True:
            if stop.is_set():
                child_stop.set()
            try:
                kind, payload = messages.get(timeout=poll)
            except queue_module.Empty:
                if process.is_alive():
                    continue
                try:  # the child may have exited just after its last message
                    kind, payload = messages.get(timeout=1.0)
                except queue_module.Empty:
                    raise TrainingFailed(
                        f"the training process ended unexpectedly (exit code {process.exitcode})"
                    ) from None
            if kind == "done":
                done = True
                return
            if kind == "error":
                raise TrainingFailed(payload)
            yield (kind, payload)
    finally:
        child_stop.set()
        process.join(timeout=30 if done else 10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        messages.close()


# -- trained models offered to the comparison widget -------------------------------------------
@dataclass(eq=False)
class ModelEntry:
    """A trained model the comparison widget can use.

    ``model`` is the loaded torch module once ``load_entry`` has run (it is loaded lazily, in a
    worker, so that torch is imported only when a model is used).
    """

    name: str
    kind: str
    path: str
    model: object = None


class ModelRegistry:
    """The trained and loaded models of this session, shared by the training and comparison
    widgets. ``changed`` is emitted (in the thread that changed it) after every change."""

    changed = Signal()

    def __init__(self):
        self._entries: list[ModelEntry] = []
        self._lock = threading.Lock()

    def __iter__(self):
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def get(self, name: str) -> ModelEntry | None:
        for entry in self._entries:
            if entry.name == name:
                return entry
        return None

    def add(self, kind: str, path, model=None) -> ModelEntry:
        """Add a model (or refresh the entry of the same checkpoint folder) and return it."""
        path = str(Path(path).expanduser().resolve())
        with self._lock:
            for entry in self._entries:
                if entry.path == path:
                    entry.kind, entry.model = kind, model
                    break
            else:
                names = {e.name for e in self._entries}
                base = KIND_NAMES.get(kind, kind)
                name, n = base, 2
                while name in names:
                    name, n = f"{base} {n}", n + 1
                entry = ModelEntry(name, kind, path, model)
                self._entries.append(entry)
        self.changed.emit()
        return entry

    def remove(self, entry: ModelEntry) -> None:
        with self._lock:
            self._entries = [e for e in self._entries if e is not entry]
        self.changed.emit()

    def clear(self) -> None:
        with self._lock:
            self._entries = []
        self.changed.emit()


MODEL_REGISTRY = ModelRegistry()


def load_entry(path, device: str = "cpu"):
    """Load a checkpoint folder (or a training output folder) for the registry.

    Returns ``(kind, folder, model)``; raises ValueError naming the folder and the problem.
    """
    prepare_torch_import()
    from ..learning.inference import load_model, resolve_checkpoint

    folder = resolve_checkpoint(path)
    try:
        model = load_model(folder, device=device)
    except (ValueError, OSError, KeyError) as exc:
        raise ValueError(f"{folder} cannot be loaded: {exc}") from None
    return model.kind, str(folder), model
