"""One trainer for every model kind: a generator of progress events that can be stopped.

The CLI prints the events with a progress bar; the napari plugin runs the same generator in a
worker and draws them. Stopping is checked between steps; the run then saves a resumable
checkpoint, so ``train(..., resume=folder)`` continues it as if it had never stopped.

Batches are built by a ``torch.utils.data.DataLoader`` (worker processes; pinned memory and
asynchronous copies with CUDA). Each batch is fixed by (seed, epoch, step) alone: the epoch
order comes from the seed and the epoch, and each item's augmentation from (seed, epoch,
index), so neither the number of workers nor the point a run resumed from changes the data.
Mixed precision (``amp``) and the ``channels_last`` layout are options; losses are computed in
fp32 and checkpoints hold fp32 weights.

Started by ``torchrun``, the trainer runs data-parallel (``DistributedDataParallel``) with
batch normalisation over the global batch; see the notes of :func:`train`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..core.metrics import segmentation_metrics
from .checkpoints import load_checkpoint, load_optimizer_state, save_checkpoint
from .devices import (
    Distributed,
    amp_dtype,
    default_workers,
    synchronise_layers,
)
from .losses import make_loss
from .model_kinds import MODEL_REGISTRY, model_kind
from .models import build_model
from .run_folders import claim_run_folder, resume_checkpoint
from .train_config import TrainConfig, selection_score

__all__ = ["TrainConfig", "TrainEvent", "TrainingInterrupted", "train", "check_output_folder"]

@dataclass
class TrainEvent:
    """One progress report from ``train``.

    ``kind`` is "start", "step", "epoch" (after validation), "stopped" (a stop request was
    honoured; ``checkpoint`` is resumable) or "finished" (all epochs run or early stopping).
    ``epoch`` counts from 1: the epoch in progress for "start", "step" and "stopped", the
    epoch just completed for "epoch" and "finished"; ``step`` counts steps done in it.
    ``stage`` names the training within a longer run ("first training", "self-training round
    1 of 2"; see ``self_training``), empty for a single training.
    """

    kind: str
    model_kind: str
    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    global_step: int
    losses: dict = field(default_factory=dict)
    lr: float = 0.0
    val: dict | None = None
    elapsed: float = 0.0
    images_per_second: float = 0.0
    best_epoch: int | None = None
    checkpoint: str | None = None
    message: str = ""
    stage: str = ""

    @property
    def progress(self) -> float:
        """Fraction of the planned steps done, in [0, 1]."""
        total = max(1, self.epochs * self.steps_per_epoch)
        return min(1.0, self.global_step / total)

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C (KeyboardInterrupt) ended a training run after it saved a resumable ``last/``.

    A ``KeyboardInterrupt``, so code that handles Ctrl+C keeps working; ``checkpoint`` is the
    folder to pass as ``resume``, ``epoch`` the epoch in progress (from 1) and ``step`` the
    steps of it that were done.
    """

    def __init__(self, checkpoint: str, epoch: int, step: int):
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step
        super().__init__(f"training interrupted at epoch {epoch}, step {step}; resumable "
                         f"checkpoint saved in {checkpoint}")


def _stop_signals() -> list:
    """The signals that stop training with a resumable ``last/``: Ctrl+C, and SIGTERM (what
    batch schedulers and ``timeout`` send) where a handler was put on it (``recist-seg``
    turns it into a Ctrl+C); without one, SIGTERM keeps its default and ends the process."""
    signals = [signal.SIGINT]
    if callable(signal.getsignal(signal.SIGTERM)):
        signals.append(signal.SIGTERM)
    return signals


@contextlib.contextmanager
def _ctrl_c_deferred():
    """Hold a Ctrl+C (or a SIGTERM the CLI turns into one) back until the block ends, so an
    update is never cut in half.

    An optimiser step, its scheduler step and the counters describing them change together;
    an interrupt between them would save a state that a resume cannot replay exactly. Only the
    main thread receives signals, so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    try:
        for signum in _stop_signals():
            previous[signum] = signal.signal(
                signum, lambda number, frame: received.append(number))
    except (ValueError, OSError):
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL:
                raise KeyboardInterrupt


class _CtrlCAsStop:
    """Under torchrun, turn Ctrl+C (and a SIGTERM the CLI handles) into a stop request that
    every process honours together.

    A terminal's Ctrl+C reaches each process of a torchrun job (and torchrun passes it on), at
    slightly different moments: a process that stopped where the signal found it would leave
    the others waiting in their next all-reduce. So each process only notes the signal, and the
    step loop's all-reduced stop check ends all of them at the same step, where ``last/`` is
    saved once. Only the main thread receives signals: elsewhere this notes nothing.
    """

    def __init__(self, enabled: bool):
        self.received = False
        self._previous: dict = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for signum in _stop_signals():
                try:
                    self._previous[signum] = signal.signal(signum, self._note)
                except (ValueError, OSError):
                    pass

    def _note(self, signum, frame) -> None:
        self.received = True

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (seeds code that uses the global state)
    torch.manual_seed(seed)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch, derived from (seed, epoch) alone so a resume replays it."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(n, generator=g)


def check_output_folder(out_dir, needed_bytes: int = 0) -> Path:
    """Make sure checkpoints can be written to ``out_dir`` before any training starts.

    Raises
    ------
    ValueError
        When the folder cannot be created or written, or has less free space than
        ``needed_bytes``.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"0" * 1024)
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"output folder {out} is not writable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(out).free
    if needed_bytes and free < needed_bytes:
        raise ValueError(
            f"output folder {out} has {free / 1e6:.0f} MB free; checkpoints need about "
            f"{needed_bytes / 1e6:.0f} MB"
        )
    return out


def _checkpoint_bytes(model: torch.nn.Module) -> int:
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    # best + last, the latter with Adam's two moments, plus the copy made while swapping.
    return int(n * 6)


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Start and end of each batch; a last batch of one joins the one before it, because
    batch normalisation cannot train on a single image."""
    bounds = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


#: Item entries that only some data sets hold: RECIST prompt channels, trimap loss weights.
_OPTIONAL_KEYS = ("prompt", "weight")


def _collate(dataset, indices, partners=None) -> dict:
    items = [dataset[int(i)] for i in indices]
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "group": torch.as_tensor([int(it["group"]) for it in items], dtype=torch.long),
    }
    for key in _OPTIONAL_KEYS:
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    if partners is not None:
        p_items = [dataset[int(partners[int(i)])] for i in indices]
        batch["partner_image"] = torch.stack([it["image"] for it in p_items])
        batch["partner_mask"] = torch.stack([it["mask"] for it in p_items])
        if "weight" in p_items[0]:
            batch["partner_weight"] = torch.stack([it["weight"] for it in p_items])
    return batch


class _Batches(torch.utils.data.Dataset):
    """Item ``s`` is the whole batch of step ``s``, so that one DataLoader worker builds one
    batch, and what a batch holds does not depend on which worker built it.

    Picklable whenever ``dataset`` is, for workers started by spawn as well as by fork.
    """

    def __init__(self, dataset, order, bounds, partners=None, self_pairs: bool = False):
        self.dataset = dataset
        self.order = torch.as_tensor(order, dtype=torch.long)
        self.bounds = list(bounds)
        self.partners = partners
        self.self_pairs = self_pairs

    def __len__(self) -> int:
        return len(self.bounds)

    def __getitem__(self, step: int) -> dict:
        start, end = self.bounds[step]
        batch = _collate(self.dataset, self.order[start:end], self.partners)
        if self.self_pairs:
            # At inference a lesion is paired with itself, so validation pairs it so too.
            batch["partner_image"] = batch["image"]
            batch["partner_mask"] = batch["mask"]
        return batch


def _loader(batches: _Batches, steps, workers: int, device, seed: int):
    """A DataLoader over the steps ``steps`` of ``batches``.

    Workers start anew for each loader (never persistent), so they copy the data set after
    its epoch was set. The loader draws its workers' seeds from a generator of its own: the
    global random state, which checkpoints save for an exact resume, stays untouched.
    """
    return torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=list(steps), num_workers=int(workers),
        pin_memory=torch.device(device).type == "cuda",
        generator=torch.Generator().manual_seed(int(seed)), persistent_workers=False,
    )


def _shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of an epoch order: padded with its first items to a multiple of
    ``world`` and dealt out round-robin, as ``DistributedSampler`` does."""
    if world == 1:
        return order
    total = math.ceil(len(order) / world) * world
    padded = torch.cat([order, order[: total - len(order)]]) if total > len(order) else order
    return padded[rank:total:world]


def _rank_bounds(per_epoch: int, per_step: int, world: int) -> list[tuple[int, int]]:
    """Each step's start and end in one rank's shard.

    Global step ``s`` covers the same positions of the (padded) epoch order as step ``s`` of
    a single process, so N processes see each step's images together that one would see.
    ``per_step`` is a multiple of ``world``, and the padded epoch too, so the bounds divide.
    """
    padded = math.ceil(per_epoch / world) * world
    return [(s // world, e // world) for s, e in _batch_bounds(padded, per_step)]


#: Network inputs that take the ``channels_last`` layout.
_IMAGE_KEYS = ("image", "partner_image", "prompt")


def _to_device(batch: dict, device, channels_last: bool = False) -> dict:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last:
        for key in _IMAGE_KEYS:
            if key in out and out[key].dim() == 4:
                out[key] = out[key].contiguous(memory_format=torch.channels_last)
    return out


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _as_float(outputs):
    """Network outputs in fp32, so that losses are computed at full precision after autocast."""
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(o.float() for o in outputs)
    return outputs.float()


def _forward(model, kind: str, batch: dict):
    entry = MODEL_REGISTRY[kind]
    if entry.paired:
        return model(batch["image"], batch.get("partner_image", batch["image"]))
    if entry.prompted:
        return model(batch["image"], batch["prompt"])
    return model(batch["image"])


def _mask_logits(outputs, kind: str) -> torch.Tensor:
    entry = MODEL_REGISTRY[kind]
    if entry.groups or entry.paired:
        return outputs[0]
    return outputs


def _with_prompt(dataset, config: TrainConfig, name: str):
    """``dataset`` as a prompted model reads it: items with the RECIST prompt channels,
    randomised for training and plain for validation (as a user's marks arrive)."""
    if not MODEL_REGISTRY[config.kind].prompted:
        return dataset
    if hasattr(dataset, "with_prompt"):
        if name == "validation":
            return dataset.with_prompt(0.0, 0.0, config.prior_edge)
        return dataset.with_prompt(config.prompt_jitter, config.training_prior_dropout,
                                   config.prior_edge)
    if "prompt" not in dataset[0]:
        raise ValueError(f"the {name} set's items have no 'prompt' entry, which a prompted "
                         f"model needs: build it as a LesionDataset")
    return dataset


def _with_augmentation(dataset, config: TrainConfig):
    """The training set varied as ``config.augment`` asks (a set already augmented by its
    maker keeps its own augmentation when nothing more is asked, and a set of another kind
    than ``LesionDataset`` is taken as it is when the kind's default is asked)."""
    kind = config.augmentation
    if kind == "none":
        return dataset
    if not hasattr(dataset, "with_augmentation"):
        if config.augment == "auto":
            return dataset
        raise ValueError(f"augment={config.augment!r} needs a LesionDataset training set")
    return dataset.with_augmentation(kind)


@contextlib.contextmanager
def _skipped_first_step_unreported():
    """Silence torch's call-order warning for the schedule's first step under fp16.

    The gradient scaler skips the optimiser's step while it finds its scale (infinite fp16
    gradients); the schedule still follows the step count, which torch mistakes for a wrong
    call order. Entered once per run, as ``catch_warnings`` swaps process-wide state (the
    plugin trains in a thread beside the viewer).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning,
                                message=r"Detected call of `lr_scheduler\.step\(\)` before "
                                        r"`optimizer\.step\(\)`")
        yield


def _validate(model, kind, loss_fn, dataset, batch_size, device, *, workers: int = 0,
              amp=None, channels_last: bool = False, ranks: Distributed | None = None) -> dict:
    """Mean loss and mask metrics on the validation set, against its pseudo-masks.

    Under ``torchrun`` each rank scores every ``world``-th item and the sums are gathered,
    so every rank returns the same figures.
    """
    rank, world = (0, 1) if ranks is None else (ranks.rank, ranks.world_size)
    model.eval()
    totals: dict[str, float] = {}
    metrics: list[tuple[int, dict]] = []
    n = len(dataset)
    mine = list(range(rank, n, world))
    bounds = [(s, min(len(mine), s + batch_size)) for s in range(0, len(mine), batch_size)]
    batches = _Batches(dataset, mine, bounds, self_pairs=MODEL_REGISTRY[kind].paired)
    with torch.no_grad():
        for step, raw in enumerate(_loader(batches, range(len(bounds)), workers, device, 0)):
            batch = _to_device(raw, device, channels_last)
            with _autocast(device, amp):
                outputs = _forward(model, kind, batch)
            outputs = _as_float(outputs)
            _, terms = loss_fn(outputs, batch)
            size = len(batch["image"])
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + float(value) * size
            pred = (_mask_logits(outputs, kind) > 0).cpu().numpy()[:, 0]
            target = batch["mask"].cpu().numpy()[:, 0] > 0.5
            first = bounds[step][0]
            metrics.extend((mine[first + j], segmentation_metrics(p, t))
                           for j, (p, t) in enumerate(zip(pred, target)))
    model.train()
    if ranks is not None and ranks.parallel:
        parts = ranks.gather((totals, metrics))
        totals = {}
        for part_totals, _ in parts:
            for key, value in part_totals.items():
                totals[key] = totals.get(key, 0.0) + value
        metrics = sorted((m for _, part in parts for m in part), key=lambda im: im[0])
    out = {f"loss_{k}": v / max(1, n) for k, v in totals.items()}
    out["loss"] = out.get("loss_total", float("nan"))
    if metrics:
        for key in ("dice", "iou", "hausdorff", "centre_error"):
            out[key] = float(np.mean([m[key] for _, m in metrics]))
    return out


def _make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    if config.schedule == "constant":
        return None
    total = max(1, config.epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total, eta_min=config.lr * 0.01
    )


def _rng_state() -> dict:
    return {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),  # noqa: NPY002
        "python_rng": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    if state.get("torch_rng") is not None:
        torch.set_rng_state(torch.as_tensor(state["torch_rng"], dtype=torch.uint8))
    if state.get("numpy_rng") is not None:
        np.random.set_state(tuple(state["numpy_rng"]))  # noqa: NPY002
    if state.get("python_rng") is not None:
        random.setstate(tuple(state["python_rng"]))


class _StepStart:
    """What a step changes before its update is committed (batch-norm statistics, the random
    state its batch and dropout draw from): a Ctrl+C in the middle of the step saves the run
    as it was when the step began, so that the resumed run, which does the step again, counts
    its batch once."""

    def __init__(self, model):
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.rng = _rng_state()

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
        _set_rng_state(self.rng)


def train(
    train_set,
    val_set,
    config: TrainConfig,
    out_dir,
    *,
    grouping=None,
    extra_config: dict | None = None,
    stop: Callable[[], bool] | None = None,
    resume=None,
    overwrite: bool = False,
) -> Iterator[TrainEvent]:
    """Train one model, yielding ``TrainEvent`` objects as it goes.

    Parameters
    ----------
    train_set, val_set : LesionDataset
        Items are dicts with ``image`` [C,H,W], ``mask`` [1,H,W] (the pseudo-mask) and
        ``group``; ``val_set`` is scored against its pseudo-masks (never real masks), and its
        loss drives early stopping and the choice of the best checkpoint.
    config : TrainConfig
    out_dir : path
        The run folder. Receives ``best/`` (lowest validation loss: the model to use) and
        ``last/`` (the latest state with the optimiser: what ``resume`` takes). It is locked
        while the run writes (a second run into it fails with ``RunFolderBusy``), and a folder
        that already holds a run is refused unless ``resume`` continues it or ``overwrite``
        replaces it (see :func:`~napari_recist_seg.learning.run_folders.claim_run_folder`).
    grouping : LesionGrouping, optional
        The K-means grouping fitted on the training lesions; saved in the checkpoints so that
        new lesions can be given groups consistently.
    extra_config : dict, optional
        More JSON-friendly facts stored in the checkpoint (normalisation, data description).
    stop : callable returning bool, optional
        Polled between steps; when it returns True the run saves ``last/`` and ends with a
        "stopped" event.
    resume : path, optional
        A ``last/`` checkpoint folder of an earlier run with the same configuration, or the
        run folder holding it.
    overwrite : bool
        Replace the run ``out_dir`` holds (its ``best/`` and ``last/`` are deleted first).

    Yields
    ------
    TrainEvent

    Raises
    ------
    TrainingInterrupted
        On Ctrl+C (KeyboardInterrupt) during the run, after ``last/`` was saved: the run
        resumes from it at the step it reached. Under torchrun a Ctrl+C on any process ends
        every process at the same step, before it begins, with one ``last/``.

    Notes
    -----
    Started by ``torchrun`` (``WORLD_SIZE`` above 1), every process calls ``train`` with the
    same arguments, and together they train one model. The process group is created here
    when none exists: NCCL on CUDA (each process on the GPU of its local rank), gloo on CPUs.

    - ``config.batch_size`` is the global batch: each of the N processes takes ``1/N`` of
      every step (it must divide evenly). Each epoch's order is padded with its first items
      to a multiple of N and dealt out round-robin, as ``DistributedSampler`` does, so that
      the N parts of step ``s`` are the images one process would take at step ``s``.
    - Gradients are averaged over the processes, and batch normalisation uses the statistics
      of the global batch (``SyncBatchNorm`` on GPUs, ``devices.CpuSyncBatchNorm`` on CPUs).
      Every process keeps the random stream one process would have, and dropout draws the
      masks of the global batch (``devices.GlobalBatchDropout``). With an epoch that needs
      no padding, N processes on CPUs therefore compute what one process computes with the
      same ``batch_size``, up to float rounding; the exception is trimap-weighted losses,
      which each process averages over its own decided pixels. (On GPUs the kernels differ
      from one process's, dropout's random numbers among them.)
    - The data, settings, seed and RECIST grouping must be the same on every process (the
      K-means grouping is fitted from the seed); this is checked, and a run whose processes
      differ is refused.
    - Rank 0 alone claims ``out_dir`` and writes checkpoints; events (losses and validation
      of the global batch) arrive on every rank, and front ends show rank 0's. A stop
      request on any rank stops all of them; ``resume`` must be readable by every process.
    """
    config.validate()
    if len(train_set) < 2:
        raise ValueError(
            f"the training set has {len(train_set)} image(s); training needs at least 2"
        )
    if len(val_set) == 0:
        raise ValueError("the validation set is empty: early stopping needs held-out lesions")
    _check_channels(train_set, config)
    train_set = _with_prompt(train_set, config, "training")
    train_set = _with_augmentation(train_set, config)
    val_set = _with_prompt(val_set, config, "validation")
    stop = stop or (lambda: False)
    ranks = Distributed(config.device)
    if ranks.parallel:
        _check_world(config, ranks.world_size)
    error = None
    try:
        if resume is not None:
            resume = resume_checkpoint(resume)
    except (ValueError, OSError) as exc:
        error = exc
    ranks.agree(error)
    if ranks.parallel:
        _check_same_everywhere(ranks, train_set, val_set, config, grouping)
    with contextlib.ExitStack() as claim:
        error = None
        if ranks.is_main:
            try:
                claim.enter_context(claim_run_folder(out_dir, resume=resume,
                                                     overwrite=overwrite))
            except Exception as exc:  # noqa: BLE001 (re-raised on this rank by agree)
                error = exc
        # The other ranks start once rank 0 holds the folder, or stop with it.
        ranks.agree(error)
        yield from _train_in_folder(train_set, val_set, config, out_dir, grouping=grouping,
                                    extra_config=extra_config, stop=stop, resume=resume,
                                    ranks=ranks)
        # Rank 0's checkpoints are complete before any rank goes on (to load them, say).
        ranks.barrier()


def _check_world(config: TrainConfig, world: int) -> None:
    """The global batch must split evenly over ``world`` processes."""
    pairs = MODEL_REGISTRY[config.kind].paired
    per_step = max(1, config.batch_size // 2) if pairs else config.batch_size
    if per_step % world:
        what = (f"{per_step} image pairs a step (batch_size {config.batch_size})" if pairs
                else f"batch_size {config.batch_size}")
        lower = max(1, per_step // world) * world
        raise ValueError(
            f"{what} does not split evenly over {world} processes: the batch size is the "
            f"global batch; use a multiple of {world} such as "
            f"{lower * (2 if pairs else 1)} or {(lower + world) * (2 if pairs else 1)}"
        )


def _check_same_everywhere(ranks: Distributed, train_set, val_set, config: TrainConfig,
                           grouping) -> None:
    """Refuse a torchrun job whose processes were given different data: their shards would
    not add up to the epochs of one data set, and different groupings would train the group
    head on different labels."""
    def groups(dataset):
        g = getattr(dataset, "groups", None)
        return None if g is None else np.asarray(g, dtype=np.int64).tobytes()

    ranks.same_everywhere("settings", config.to_dict())
    ranks.same_everywhere("data (numbers of images or RECIST groups)",
                          (len(train_set), len(val_set), groups(train_set), groups(val_set)))
    ranks.same_everywhere("RECIST groupings (K-means centres)",
                          None if grouping is None else grouping.to_dict())


def _train_in_folder(train_set, val_set, config: TrainConfig, out_dir, *, grouping,
                     extra_config, stop, resume, ranks: Distributed) -> Iterator[TrainEvent]:
    device = ranks.device(config.device)
    world, rank = ranks.world_size, ranks.rank
    workers = default_workers(device) if config.num_workers is None else int(config.num_workers)
    amp = amp_dtype(config.amp, device)
    _seed_everything(config.seed)
    model = build_model(
        config.kind,
        encoder=config.encoder,
        in_channels=config.in_channels,
        n_groups=config.n_groups,
        # A resumed run takes all its weights from its checkpoint.
        encoder_weights=None if resume is not None else config.encoder_weights,
        input_size=config.input_size,
        prior_residual=config.uses_prior_residual,
        prior_edge=config.prior_edge if MODEL_REGISTRY[config.kind].prompted else None,
    )
    error = None
    out = Path(out_dir)
    if ranks.is_main:
        try:
            out = check_output_folder(out_dir, _checkpoint_bytes(model))
        except ValueError as exc:
            error = exc
    ranks.agree(error)
    if ranks.parallel or config.channels_last:
        # Every rank keeps the random stream of one process, and dropout masks and batch
        # statistics are those of the global batch; dropout masks do not depend on the
        # memory layout.
        synchronise_layers(model, device, batch_norm=ranks.parallel)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = make_loss(config.kind, w_seg=config.w_seg, w_cls=config.w_cls,
                        dice_weight=config.dice_weight, crf_weight=config.crf_weight_for(
                            bool(getattr(train_set, "colour", False))))
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    n_train = len(train_set)
    # A co-segmentation step sees each anchor and its partner, so half as many anchors per
    # batch and per epoch keep the images processed per step and per epoch equal across kinds.
    pairs = MODEL_REGISTRY[config.kind].paired
    per_epoch = math.ceil(n_train / 2) if pairs else n_train
    per_step = max(1, config.batch_size // 2) if pairs else config.batch_size
    bounds = _rank_bounds(per_epoch, per_step, world)
    steps_per_epoch = len(bounds)
    scheduler = _make_scheduler(optimizer, config, steps_per_epoch)

    ckpt_config = {
        "train_config": config.to_dict(),
        "grouping": None if grouping is None else grouping.to_dict(),
        "preprocessing": getattr(train_set, "preprocessing", None),
        "data_split": _data_split(train_set, val_set),
        **(extra_config or {}),
    }
    history: list[dict] = []
    start_epoch, start_step, global_step = 0, 0, 0
    # The best selection score so far (selection_score: the loss, or the Dice negated).
    best_score, best_epoch, bad_epochs = math.inf, None, 0
    elapsed_before = 0.0
    resumed_running: dict[str, float] = {}
    patience_renewed = False
    error = None
    try:
        if resume is not None:
            (history, start_epoch, start_step, global_step, best_score, best_epoch, bad_epochs,
             elapsed_before, resumed_running, patience_renewed) = _resume_state(
                resume, model, optimizer, scheduler, scaler, config, device, ckpt_config,
                colour=bool(getattr(train_set, "colour", False)))
    except (ValueError, OSError, RuntimeError) as exc:
        error = exc
    ranks.agree(error)

    def save(kind_of: str, epoch: int, step_in_epoch: int, elapsed: float,
             running: dict | None = None) -> str:
        folder = out / kind_of
        if not ranks.is_main:
            return str(folder)
        if kind_of == "best":
            save_checkpoint(folder, model, ckpt_config, history)
            return str(folder)
        state = {
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            # Named when it was always the loss; checkpoints keep the name.
            "best_loss": best_score if math.isfinite(best_score) else None,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "elapsed": elapsed,
            "rng": _rng_state(),
            # Loss sums of the epoch in progress, so a resumed epoch reports a whole mean.
            "running": dict(running or {}),
            "world_size": world,
            "scaler": None if scaler is None else scaler.state_dict(),
        }
        save_checkpoint(folder, model, ckpt_config, history, optimizer=optimizer,
                        scheduler=scheduler, state=state)
        return str(folder)

    net = model
    if ranks.parallel:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        # Every batch has the same shape, so the fastest convolution algorithms are found once.
        torch.backends.cudnn.benchmark = True

    t_start = time.perf_counter() - elapsed_before
    train_seconds = 0.0
    images_seen = 0
    common = dict(model_kind=config.kind, epochs=config.epochs, steps_per_epoch=steps_per_epoch)
    # Where a Ctrl+C resumes from: the epoch (from 0), the steps of it whose updates are
    # complete, and their loss sums. Validation interrupted resumes at the validation.
    at_epoch, at_step, at_running = start_epoch, start_step, dict(resumed_running)
    step_start = None
    # A finished run resumed with no more epochs than it has done trains nothing: the
    # finishing message says how to train it further.
    done_message = ("all epochs done" if start_epoch < config.epochs else
                    f"all {start_epoch} epochs of the run are done (asked for {config.epochs}): "
                    f"set epochs above {start_epoch} to train further")
    ctrl_c = _CtrlCAsStop(ranks.parallel)
    try:
        yield TrainEvent("start", epoch=start_epoch + 1, step=start_step,
                         global_step=global_step, lr=optimizer.param_groups[0]["lr"], **common,
                         message=_start_message(config, device, ranks, n_train, workers, amp)
                         + (f"; it had early stopped, and goes on until {config.patience} "
                            f"epoch{'s' if config.patience != 1 else ''} without a better "
                            f"validation {config.select}" if patience_renewed else ""))
        for epoch in range(start_epoch, config.epochs):
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            order = _shard(_epoch_order(n_train, config.seed, epoch)[:per_epoch], rank, world)
            partners = None
            if pairs:
                from ..data.dataset import pair_indices

                partners = pair_indices(_groups_of(train_set), seed=[config.seed, epoch],
                                        mode=config.pairing)
            first = start_step if epoch == start_epoch else 0
            running: dict[str, float] = dict(resumed_running) if first else {}
            at_epoch, at_step, at_running = epoch, first, running
            batches = iter(_loader(_Batches(train_set, order, bounds, partners),
                                   range(first, steps_per_epoch), workers, device,
                                   int(config.seed) * 100_003 + epoch))
            for step in range(first, steps_per_epoch):
                if ranks.any(stop() or ctrl_c.received):
                    del batches
                    path = save("last", epoch, step, time.perf_counter() - t_start, running)
                    if ranks.any(ctrl_c.received):
                        raise TrainingInterrupted(path, epoch + 1, step)
                    yield TrainEvent("stopped", epoch=epoch + 1, step=step, global_step=global_step,
                                     elapsed=time.perf_counter() - t_start, checkpoint=path,
                                     best_epoch=best_epoch, lr=optimizer.param_groups[0]["lr"],
                                     message="stopped on request", **common)
                    return
                t0 = time.perf_counter()
                step_start = _StepStart(model)
                batch = _to_device(next(batches), device, config.channels_last)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device, amp):
                    outputs = _forward(net, config.kind, batch)
                loss, terms = loss_fn(_as_float(outputs), batch)
                if ranks.parallel:
                    # The global batch's losses, the same on every rank: what is reported and
                    # checked, so that all ranks take the same decisions.
                    terms = dict(zip(terms, ranks.mean(list(terms.values()))))
                if not math.isfinite(terms["total"]):
                    raise FloatingPointError(
                        f"training loss became {terms['total']} at epoch {epoch + 1}, "
                        f"step {step + 1}; try a lower learning rate"
                    )
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                with _ctrl_c_deferred():
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if scheduler is not None:
                        # torch checks the call order on the schedule's first step only.
                        with (_skipped_first_step_unreported() if scaler is not None
                              and global_step == 0 else contextlib.nullcontext()):
                            scheduler.step()
                    global_step += 1
                    for k, v in terms.items():
                        running[k] = running.get(k, 0.0) + float(v)
                    at_step = step + 1
                    step_start = None
                dt = time.perf_counter() - t0
                train_seconds += dt
                images_seen += len(batch["image"]) * (2 if pairs else 1) * world
                yield TrainEvent(
                    "step", epoch=epoch + 1, step=step + 1, global_step=global_step,
                    losses={k: float(v) for k, v in terms.items()},
                    lr=optimizer.param_groups[0]["lr"], elapsed=time.perf_counter() - t_start,
                    images_per_second=images_seen / max(train_seconds, 1e-9),
                    best_epoch=best_epoch, **common,
                )
            del batches
            val = _validate(model, config.kind, loss_fn, val_set, config.batch_size, device,
                            workers=workers, amp=amp, channels_last=config.channels_last,
                            ranks=ranks)
            n_steps = max(1, steps_per_epoch)
            record = {
                "epoch": epoch + 1,
                "train": {k: v / n_steps for k, v in running.items()},
                "val": val,
                "lr": optimizer.param_groups[0]["lr"],
                "elapsed": time.perf_counter() - t_start,
            }
            # The epoch's record and both checkpoints go together: a Ctrl+C half-way would
            # leave a history that a resume extends twice.
            with _ctrl_c_deferred():
                history.append(record)
                score = selection_score(val, config.select)
                improved = score < best_score - 1e-9
                if improved:
                    best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                else:
                    bad_epochs += 1
                if improved:
                    save("best", epoch + 1, 0, time.perf_counter() - t_start)
                last = save("last", epoch + 1, 0, time.perf_counter() - t_start)
                at_epoch, at_step, at_running = epoch + 1, 0, {}
            yield TrainEvent(
                "epoch", epoch=epoch + 1, step=steps_per_epoch, global_step=global_step,
                losses=record["train"], val=val, lr=record["lr"],
                elapsed=record["elapsed"], images_per_second=images_seen / max(train_seconds, 1e-9),
                best_epoch=best_epoch, checkpoint=last, **common,
            )
            # At the last epoch there is nothing left to stop: the run ends as planned.
            if bad_epochs >= config.patience and epoch + 1 < config.epochs:
                yield TrainEvent(
                    "finished", epoch=epoch + 1, step=steps_per_epoch, global_step=global_step,
                    elapsed=time.perf_counter() - t_start, best_epoch=best_epoch,
                    images_per_second=images_seen / max(train_seconds, 1e-9),
                    checkpoint=str(out / "best"), lr=record["lr"], **common,
                    message=f"early stop: no better validation {config.select} for "
                            f"{bad_epochs} epochs",
                )
                return
        yield TrainEvent(
            "finished", epoch=config.epochs, step=steps_per_epoch, global_step=global_step,
            elapsed=time.perf_counter() - t_start, best_epoch=best_epoch,
            images_per_second=images_seen / max(train_seconds, 1e-9),
            checkpoint=str(out / "best"), lr=optimizer.param_groups[0]["lr"], **common,
            message=done_message,
        )
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        with _ctrl_c_deferred():
            if step_start is not None:
                step_start.restore()
            path = save("last", at_epoch, at_step, time.perf_counter() - t_start, at_running)
        raise TrainingInterrupted(path, at_epoch + 1, at_step) from None
    finally:
        ctrl_c.restore()
        # Free accelerator memory as soon as training ends, however it ends.
        torch.backends.cudnn.benchmark = cudnn_benchmark
        del net
        optimizer.state.clear()
        model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _resume_state(resume, model, optimizer, scheduler, scaler, config: TrainConfig,
                  device, run_config: dict | None = None, *, colour: bool = False) -> tuple:
    """Load a ``last/`` checkpoint into the model, optimiser, scheduler and random state;
    return the run's counters (history, epoch, step, global step, best loss and epoch, bad
    epochs, elapsed seconds, loss sums of the epoch in progress) and whether the run had
    early stopped, in which case its count of bad epochs starts again from 0.

    ``run_config`` is what this run would save beside its weights (``preprocessing``,
    ``grouping``, ``data_split``) and ``colour`` whether its training images are colour
    photographs: with ``config``, they must describe the run the checkpoint holds
    (``_check_same_run``)."""
    resumed_model, saved = load_checkpoint(resume, map_location=device)
    saved_train = saved.get("train_config", {})
    if not isinstance(saved_train, dict):
        raise ValueError(f"checkpoint {resume}: 'train_config' is not an object")
    if saved_train.get("kind") != config.kind:
        raise ValueError(
            f"checkpoint {resume} is a {saved_train.get('kind')!r} run, not {config.kind!r}"
        )
    saved_select = saved_train.get("select", "loss")
    if saved_select != config.select:
        # Its best score so far is a number of the other figure: the two cannot be compared.
        raise ValueError(f"checkpoint {resume} picked its best epoch by validation "
                         f"{saved_select}: resume with select={saved_select!r} (--select "
                         f"{saved_select})")
    if resumed_model.config != model.config:
        theirs, ours = resumed_model.config, model.config
        differ = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        raise ValueError(
            f"checkpoint {resume} holds a model built with "
            f"{', '.join(f'{k} {theirs.get(k)!r}' for k in differ)}, not "
            f"{', '.join(f'{k} {ours.get(k)!r}' for k in differ)}: resume with the settings "
            f"of the original run"
        )
    _check_same_run(resume, saved, config, run_config, colour=colour)
    model.load_state_dict(resumed_model.state_dict())
    del resumed_model
    length = getattr(scheduler, "T_max", None)
    state = load_optimizer_state(resume, optimizer, scheduler)
    if length is not None:
        # The schedule's length is this run's (more --epochs than the checkpoint's): the
        # cosine goes on from where it is down to its end at the new last step, instead of
        # climbing again past the old one.
        scheduler.T_max = length
    # The state comes from a file: anything malformed is a clear error, not a crash later.
    try:
        history = list(saved.get("history") or [])
        start_epoch = int(state.get("epoch", 0))
        start_step = int(state.get("step_in_epoch", 0))
        global_step = int(state.get("global_step", 0))
        best_score = float(state.get("best_loss") if state.get("best_loss") is not None
                           else math.inf)
        best_epoch = state.get("best_epoch")
        best_epoch = None if best_epoch is None else int(best_epoch)
        bad_epochs = int(state.get("bad_epochs", 0))
        elapsed_before = float(state.get("elapsed", 0.0))
        resumed_running = {str(k): float(v) for k, v in dict(state.get("running") or {}
                                                             ).items()}
        if min(start_epoch, start_step, global_step, bad_epochs) < 0:
            raise ValueError(f"negative epoch or step counts ({start_epoch}, {start_step})")
        # Resuming a run that early stopped asks it to train further: it gets its patience
        # again instead of stopping after one more epoch without a better figure.
        saved_patience = int(saved_train.get("patience", config.patience))
        early_stopped = start_step == 0 and bad_epochs >= saved_patience
        if early_stopped:
            bad_epochs = 0
        if state.get("rng") is not None:
            _set_rng_state(state["rng"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(dict(state["scaler"]))
    except (AttributeError, TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ValueError(f"checkpoint {resume}: its training state is invalid: {exc}"
                         ) from None
    return (history, start_epoch, start_step, global_step, best_score, best_epoch, bad_epochs,
            elapsed_before, resumed_running, early_stopped)


#: Settings a resumed run must keep: (its name in messages, how it is read from a TrainConfig
#: given whether the images are in colour, its command-line option or None, the flag of the
#: model kind it applies to or None for all). Another batch or rate would replay the saved
#: steps wrongly (a batch counted twice, an optimiser state of another rate); the others
#: decide which items the saved steps learnt from or what towards (the seed draws the split,
#: the groups and the batches). A resume with another value would go on as another run while
#: its checkpoint claimed to be one. Settings read through a resolving property compare what
#: training does, so that "auto" and the kind's own augmentation, say, are one.
_KEPT_SETTINGS = (
    ("batch_size", lambda c, colour: c.batch_size, "--batch", None),
    ("encoder weights", lambda c, colour: c.encoder_weights, "--encoder-weights", None),
    ("lr", lambda c, colour: c.lr, "--lr", None),
    ("schedule", lambda c, colour: c.schedule, None, None),
    ("seed", lambda c, colour: c.seed, "--seed", None),
    ("augmentation", lambda c, colour: c.augmentation, "--augment", None),
    ("weight_decay", lambda c, colour: c.weight_decay, None, None),
    ("dice_weight", lambda c, colour: c.dice_weight, None, None),
    ("w_seg", lambda c, colour: c.w_seg, None, None),
    ("w_cls", lambda c, colour: c.w_cls, None, None),
    ("edge-aware loss weight", lambda c, colour: c.crf_weight_for(colour), "--crf-weight",
     None),
    ("prompt_jitter", lambda c, colour: c.prompt_jitter, None, "prompted"),
    ("prior dropout", lambda c, colour: c.training_prior_dropout, "--prior-dropout",
     "prompted"),
    ("pairing", lambda c, colour: c.pairing, None, "paired"),
)


def _refuse(resume, setting: str, saved, given, option: str | None) -> None:
    where = f" ({option} on the command line)" if option else ""
    raise ValueError(f"checkpoint {resume} was trained with {setting} {saved!r}, not "
                     f"{given!r}: resume with the run's own {setting}{where}")


def _plain(value):
    """``value`` as JSON gives it back (tuples as lists, numpy numbers as numbers), so that
    what a run would save compares equal to what it saved."""
    def default(obj):
        return obj.tolist() if hasattr(obj, "tolist") else str(obj)

    try:
        return json.loads(json.dumps(value, default=default))
    except (TypeError, ValueError):
        return value


def _flat(record: dict, prefix: str = "") -> dict:
    """``record`` with nested dicts flattened into dotted keys."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_same_run(resume, saved: dict, config: TrainConfig, run_config: dict | None, *,
                    colour: bool) -> None:
    """Refuse, with a ValueError naming the checkpoint, the setting, the saved and the given
    value, a resume whose settings or data would make it another run than the saved one.

    Entries that an older checkpoint lacks are not held against it. Settings that only
    change how long or how fast the run trains (epochs, patience, device, workers, mixed
    precision) are free.
    """
    saved_train = saved.get("train_config") or {}
    names = {f.name for f in fields(TrainConfig)}
    entry = model_kind(config.kind)
    kept = [row for row in _KEPT_SETTINGS if row[3] is None or getattr(entry, row[3])]
    try:
        theirs = replace(config, **{k: v for k, v in saved_train.items() if k in names})
        values = [(read(theirs, colour), read(config, colour)) for _, read, _, _ in kept]
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ValueError(f"checkpoint {resume}: its train_config is invalid: {exc}") from None
    for (setting, _, option, _), (was, now) in zip(kept, values):
        if was != now:
            _refuse(resume, setting, was, now, option)
    run_config = run_config or {}
    if entry.groups or entry.paired:
        # The groups decide the group head's labels and the co-segmentation pairs.
        was, now = (((d or {}).get("grouping") or {}).get("k") for d in (saved, run_config))
        if was is not None and now is not None and was != now:
            _refuse(resume, "RECIST groups", was, now, "--k")
    was, now = (d.get("preprocessing") for d in (saved, run_config))
    if isinstance(was, dict) and isinstance(now, dict):
        was, now = _flat(_plain(was)), _flat(_plain(now))
        for key in sorted(set(was) & set(now)):
            if was[key] == now[key]:
                continue
            if key == "pseudo_mask_method":
                _refuse(resume, "training target (pseudo-mask)", was[key], now[key],
                        "--pseudo-mask")
            raise ValueError(f"checkpoint {resume} prepared its images with {key} "
                             f"{was[key]!r}, not {now[key]!r}: resume with the run's own data "
                             f"settings")
    was, now = (d.get("data_split") for d in (saved, run_config))
    if isinstance(was, dict) and isinstance(now, dict):
        counts = [(d.get("n_train"), d.get("n_val")) for d in (was, now)]
        how = ("resume with the run's own data and split: the same images, seed and "
               "validation fraction (--n-train on the command line)")
        if counts[0] != counts[1]:
            raise ValueError(f"checkpoint {resume} was trained on {counts[0][0]} training and "
                             f"{counts[0][1]} validation lesions, not {counts[1][0]} and "
                             f"{counts[1][1]}: {how}")
        if was.get("lesions") and now.get("lesions") and was["lesions"] != now["lesions"]:
            raise ValueError(f"checkpoint {resume} was trained on other training or "
                             f"validation lesions than these ({counts[0][0]} and "
                             f"{counts[0][1]}, as here, but not the same ones): {how}")


def _data_split(train_set, val_set) -> dict:
    """What identifies a run's training and validation items, saved in its checkpoints so a
    resume can tell whether it was given the same: their numbers, and a SHA-256 of their
    lesions' RECIST (None where a data set does not hold them)."""
    record = {"n_train": len(train_set), "n_val": len(val_set), "lesions": None}
    digest = hashlib.sha256()
    for part in (train_set, val_set):
        recists = getattr(part, "source_recists", None)
        if recists is None or len(recists) != len(part):
            return record
        try:
            points = np.asarray([np.asarray(r.endpoints, dtype=np.float64) for r in recists])
        except (AttributeError, TypeError, ValueError):
            return record
        # Rounded, so that float noise in reading the same marks never counts as a change;
        # adding 0.0 turns -0.0 into 0.0.
        digest.update(np.int64(len(part)).tobytes())
        digest.update((np.round(points.ravel(), 3) + 0.0).tobytes())
    record["lesions"] = digest.hexdigest()
    return record


def _start_message(config: TrainConfig, device, ranks: Distributed, n_train: int,
                   workers: int, amp) -> str:
    where = str(device)
    details = [f"{n_train} images", f"{workers} data worker{'s' if workers != 1 else ''}"]
    if ranks.parallel:
        where += f" in {ranks.world_size} processes"
        details.insert(0, f"world size {ranks.world_size}, {ranks.backend}")
    if amp is not None:
        details.append(f"mixed precision {str(amp).replace('torch.', '')}")
    if config.channels_last:
        details.append("channels_last")
    return f"training {config.kind} on {where} ({', '.join(details)})"


def _check_channels(dataset, config: TrainConfig) -> None:
    """The network's input channels must be the data's; say so before building anything."""
    try:
        image = dataset[0]["image"]
    except (TypeError, KeyError, IndexError):
        return  # not a dict data set: the first batch will tell
    channels = int(image.shape[0]) if getattr(image, "ndim", 0) == 3 else None
    if channels is not None and channels != config.in_channels:
        raise ValueError(
            f"the training images have {channels} channel(s) but in_channels is "
            f"{config.in_channels}: set TrainConfig(in_channels={channels})"
        )


def _groups_of(dataset) -> np.ndarray:
    groups = getattr(dataset, "groups", None)
    if groups is None:
        groups = [int(dataset[i]["group"]) for i in range(len(dataset))]
    return np.asarray(groups, dtype=np.int64)


def with_overrides(config: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``config`` with some fields changed (None values are ignored)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
