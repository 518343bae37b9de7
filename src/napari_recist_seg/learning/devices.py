"""Choosing the torch device, the speed settings that go with it, and ``torchrun`` processes.

- ``pick_device``: CUDA, Apple MPS or the CPU.
- ``default_workers`` and ``amp_dtype``: what the trainer's ``num_workers=None`` and
  ``amp="auto"`` mean on a device.
- ``Distributed``: this process's rank in a ``torchrun`` job and the few collectives the
  trainer uses; a world of one (no torchrun) makes every collective a no-op.
- ``synchronise_layers``: batch normalisation and dropout over the global batch of all
  processes (``CpuSyncBatchNorm`` on CPUs, which ``torch.nn.SyncBatchNorm`` does not support).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import pickle
import sys

import torch

from .train_config import AMP_SETTINGS

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: The ``amp`` settings of ``TrainConfig``.
AMP_CHOICES = AMP_SETTINGS

__all__ = ["AMP_CHOICES", "DEVICE_CHOICES", "CpuSyncBatchNorm", "Distributed",
           "GlobalBatchDropout", "amp_dtype", "available_devices", "default_workers",
           "end_process", "is_main_process", "pick_device", "synchronise_layers"]


def available_devices() -> list[str]:
    """Device names usable on this machine, best first, always ending with "cpu"."""
    names = []
    if torch.cuda.is_available():
        names.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    names.append("cpu")
    return names


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for ``name`` ("auto" picks CUDA, then MPS, then the CPU).

    Raises
    ------
    ValueError
        When the named device is unknown or not available here.
    """
    name = (name or "auto").lower()
    base = name.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {DEVICE_CHOICES}")
    usable = available_devices()
    if base == "auto":
        return torch.device(usable[0])
    if base not in usable:
        raise ValueError(f"device {name!r} is not available here (available: {usable})")
    return torch.device(name)


def default_workers(device: torch.device, cpu_count: int | None = None) -> int:
    """DataLoader worker processes for ``device`` when the configuration names none.

    With CUDA, workers build the next batches while the GPU computes: up to 4, leaving one
    core to the process that drives the GPU. On a CPU the network's threads already use the
    cores and a worker competes with them: on a two-core machine, 1 or 2 workers trained no
    faster than none (the trainer within noise of a bare loop either way, 128 px, batch 10),
    so the CPU default is 0, which also spares the workers' memory and start-up.
    """
    if torch.device(device).type == "cuda":
        cores = os.cpu_count() if cpu_count is None else cpu_count
        return max(0, min(4, int(cores or 1) - 1))
    return 0


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the ``amp`` setting on ``device``; None means full fp32.

    "auto" is bf16 on a CUDA device that supports it, else fp16 (which needs gradient
    scaling), and off elsewhere: on CPUs and MPS mixed precision is slower for these networks
    or unsupported. "bf16" and "fp16" are taken as asked on any device.

    Raises
    ------
    ValueError
        For a setting not in ``AMP_CHOICES``.
    """
    amp = str(amp or "auto").lower()
    if amp not in AMP_CHOICES:
        raise ValueError(f"unknown amp setting {amp!r}; choose one of {AMP_CHOICES}")
    if amp == "off":
        return None
    if amp == "auto":
        if torch.device(device).type != "cuda":
            return None
        return torch.bfloat16 if _native_bf16(device) else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _native_bf16(device) -> bool:
    """Whether the CUDA device computes in bf16 natively (Ampere and later); emulated bf16
    would be slower than fp16."""
    index = torch.device(device).index
    with torch.cuda.device(torch.cuda.current_device() if index is None else index):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch without the argument
            return bool(torch.cuda.is_bf16_supported())


def is_main_process() -> bool:
    """Whether this process reports progress: any process outside ``torchrun``, and rank 0
    within it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


class Distributed:
    """This process's place in a ``torchrun`` job and the collectives the trainer uses.

    A process started without ``torchrun`` (``WORLD_SIZE`` unset or 1, no process group) is
    rank 0 of a world of 1, and every method then returns at once without communicating.
    Under ``torchrun`` the process group is created on first use (NCCL when the run is on
    CUDA, gloo on CPUs) and kept for the rest of the process, so that several runs of one
    command (a benchmark's models) share it.

    Parameters
    ----------
    device_name : str
        The run's device setting ("auto", "cpu", "cuda", "cuda:N"...): it decides the
        backend and, with CUDA, that each process takes the GPU of its local rank.
    """

    def __init__(self, device_name: str = "auto"):
        import torch.distributed as dist

        self.dist = dist
        try:
            env_world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        except ValueError:
            env_world = 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        base = (device_name or "auto").lower().split(":")[0]
        cuda = base in ("auto", "cuda") and torch.cuda.is_available()
        if env_world > 1 and dist.is_available() and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(self.local_rank)
            # Rank, world size and the rendezvous address come from torchrun's environment.
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            atexit.register(_destroy_group)
            _GROUPS_STARTED.append(dist.get_backend())
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1
        self.backend = str(dist.get_backend()) if self.active else None
        if self.active and self.backend == "nccl" and not cuda:
            raise ValueError(f"this torchrun job's processes talk over NCCL (GPUs), but the "
                             f"run asks for device {device_name!r}: train on CUDA, or start a "
                             f"new job for the CPU")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder and reports progress."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.active and self.world_size > 1

    def device(self, name: str) -> torch.device:
        """The device of this process: with CUDA under torchrun, the GPU of its local rank."""
        device = pick_device(name)
        if self.parallel and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        return device

    def _flag_device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one of them."""
        if not self.parallel:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._flag_device())
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, values: list[float]) -> list[float]:
        """The mean over ranks of each of ``values`` (the same length on every rank)."""
        if not self.parallel or not values:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self._flag_device())
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return [float(v) / self.world_size for v in t.cpu()]

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.parallel:
            return [obj]
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def from_main(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.parallel:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, error: BaseException | None) -> None:
        """Raise on every rank when any rank had ``error``: a rank that failed alone would
        leave the others waiting for it in the next collective."""
        if not self.parallel:
            if error is not None:
                raise error
            return
        reports = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(rank, text) for rank, text in enumerate(reports) if text is not None]
        if failed:
            rank, text = failed[0]
            raise ValueError(f"process {rank} of this torchrun job failed: {text}")

    def same_everywhere(self, what: str, obj) -> None:
        """ValueError on every rank unless ``obj`` pickles to the same bytes on all ranks."""
        if not self.parallel:
            return
        digest = hashlib.sha256(pickle.dumps(obj, protocol=4)).hexdigest()
        digests = self.gather(digest)
        differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise ValueError(f"the processes of this torchrun job were given different {what} "
                             f"(rank {differ[0]} differs from rank 0): give every process "
                             f"the same data, settings and seed")

    def barrier(self) -> None:
        if self.parallel:
            self.dist.barrier()


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


#: The process groups this process started (a torchrun job's), for ``end_process``.
_GROUPS_STARTED: list[str] = []


def end_process(code: int) -> int:
    """Return ``code`` at once, or end this ``torchrun`` process with it, cleanly.

    A process that started a process group is ended here once its work is done: the group
    is destroyed and Python's exit functions run (logging, temporary files, DataLoader
    workers), the streams are flushed, and the process exits without C++'s teardown of
    static objects, which now and then aborts a gloo process (SIGABRT, "terminate called
    without an active exception") after a run that finished: torchrun would then report
    the whole job failed and end the other processes.

    Parameters
    ----------
    code : int
        The exit status.

    Returns
    -------
    int
        ``code``, in a process that started no process group (the function does not return
        in one that did).
    """
    if not _GROUPS_STARTED:
        return code
    _destroy_group()
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_functions is not None:
        run_exit_functions()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(int(code))


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced (summed) gradient."""

    @staticmethod
    def forward(ctx, tensor):
        import torch.distributed as dist

        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class CpuSyncBatchNorm(torch.nn.BatchNorm2d):
    """Batch normalisation whose training statistics are those of the global batch of all
    ranks, for processes that train on CPUs (gloo).

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors and PyTorch has no CPU kernel for its
    statistics, so this computes per-channel sums and sums of squares (in float64, so that
    the variance does not lose digits to cancellation), adds them up over ranks with an
    all-reduce that gradients flow back through, and normalises with the result. N processes
    with B/N images each then compute what one process computes with B images, up to float
    rounding. Outside training, or without a process group of two or more, it is a plain
    ``BatchNorm2d``. The parameters and buffers are those of ``BatchNorm2d``, so state dicts
    load either way.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or _rank_and_world()[1] < 2:
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [d for d in range(input.dim()) if d != 1]
        x = input.float()
        local = torch.cat([
            x.sum(dim=dims, dtype=torch.float64),
            (x * x).sum(dim=dims, dtype=torch.float64),
            torch.tensor([input.numel() / channels], dtype=torch.float64, device=input.device),
        ])
        total = _SumOverRanks.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
                else:
                    factor = self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype),
                                                        alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype),
                                                       alpha=factor)
        shape = [1, channels] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps).float()
        shift = -mean.float() * scale
        if self.weight is not None:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        return x * scale.view(shape) + shift.view(shape)


class GlobalBatchDropout(torch.nn.Dropout):
    """Dropout whose masks are those one process draws for the global batch, whatever the
    memory layout.

    The mask is always drawn for a contiguous tensor, as ``torch.nn.functional.dropout``
    draws it on a CPU for contiguous input: under ``channels_last`` (where the plain layer
    would fill its mask in another order) the same images lose the same values. Under
    ``torchrun`` every rank keeps the same random stream and draws the mask of the whole
    global batch, then keeps the rows of its own images: rank ``r`` holds global rows
    ``r, r + N, ...``, as the trainer deals them. N processes on CPUs thus drop what one
    process drops.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return input
        if self.p >= 1:
            return input * 0.0
        rank, world = _rank_and_world()
        shape = (input.shape[0] * world, *input.shape[1:])
        keep = torch.empty(shape, dtype=input.dtype, device=input.device).bernoulli_(1 - self.p)
        if world > 1:
            keep = keep[rank::world]
        return input * keep * (1.0 / (1 - self.p))


def synchronise_layers(model: torch.nn.Module, device: torch.device, *,
                       batch_norm: bool = True) -> torch.nn.Module:
    """``model`` with the layers that look across a batch working on the global batch.

    Each ``Dropout`` becomes :class:`GlobalBatchDropout`; with ``batch_norm``, each
    ``BatchNorm2d`` becomes ``torch.nn.SyncBatchNorm`` on GPUs and :class:`CpuSyncBatchNorm`
    on CPUs. Layers are replaced in place (the returned model is ``model``) keeping their
    parameters, buffers and names, so state dicts and checkpoints do not change.
    """
    cpu = torch.device(device).type == "cpu"
    for name, child in list(model.named_children()):
        if batch_norm and type(child) is torch.nn.BatchNorm2d:
            if cpu:
                sync = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum,
                                        child.affine, child.track_running_stats)
            else:
                sync = torch.nn.SyncBatchNorm(child.num_features, child.eps, child.momentum,
                                              child.affine, child.track_running_stats)
            if child.affine:
                sync.weight = child.weight
                sync.bias = child.bias
            sync.running_mean = child.running_mean
            sync.running_var = child.running_var
            sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(model, name, sync)
        elif type(child) is torch.nn.Dropout:
            drop = GlobalBatchDropout(child.p, child.inplace)
            drop.train(child.training)
            setattr(model, name, drop)
        else:
            synchronise_layers(child, device, batch_norm=batch_norm)
    return model
