"""Run folders: what a training output folder holds, and one run at a time in it.

A run folder (``RUNS/<kind>``) receives ``best/`` and ``last/`` checkpoints from
:func:`~napari_recist_seg.learning.trainer.train`. This module tells what an existing folder
holds (:func:`find_run`) without importing torch, so a front end can show it at once, and guards
a folder while a run writes into it (:func:`claim_run_folder`): one run at a time, no silent
replacement of an earlier run, and no leftovers of interrupted saves.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RunFolderBusy",
    "RunFolderOccupied",
    "RunInfo",
    "check_not_busy",
    "claim_run_folder",
    "find_run",
    "resume_checkpoint",
    "resume_position",
    "round_folders",
    "round_name",
]

LOCK_FILE = ".lock"
_CHECKPOINTS = ("best", "last")
_FORMAT = "napari-recist-seg-checkpoint"
# config.json and training_state.json are kilobytes; anything far larger is not ours.
_MAX_JSON_BYTES = 64 * 1024 * 1024
# A lock file is written right after it is created; an empty one older than this was left by a
# process killed in between.
_LOCK_WRITE_GRACE_S = 10.0


class RunFolderBusy(RuntimeError):
    """Another training run is writing into the same run folder."""


class RunFolderOccupied(ValueError):
    """The run folder already holds a run and neither resuming nor overwriting was asked for."""

    def __init__(self, folder: Path, info: RunInfo):
        self.folder = Path(folder)
        self.info = info
        super().__init__(
            f"run folder {self.folder} already holds a run ({info.describe()}); continue it "
            f"with resume=... or replace it with overwrite=True"
        )


@dataclass(frozen=True)
class RunInfo:
    """What a run folder holds.

    Attributes
    ----------
    folder : Path
        The run folder.
    kind : str or None
        The model kind recorded in a checkpoint's ``config.json`` (None when unreadable).
    has_last, has_best : bool
        Whether a complete ``last/`` (resumable) or ``best/`` checkpoint is there.
    epoch : int or None
        The last epoch reached according to ``last/``'s training state: the epoch completed,
        or the one in progress when the run was stopped inside it. None without that state.
    finished : bool
        The run ended normally (all its epochs, or early stopping); False when it was stopped
        or interrupted and can be resumed.
    """

    folder: Path
    kind: str | None
    has_last: bool
    has_best: bool
    epoch: int | None
    finished: bool

    def describe(self) -> str:
        """A short human description, e.g. ``"multitask run stopped at epoch 3 (resumable)"``."""
        kind = self.kind or "unknown"
        if self.finished:
            return f"{kind} run finished at epoch {self.epoch}"
        if self.has_last and self.epoch is not None:
            return f"{kind} run stopped at epoch {self.epoch} (resumable)"
        if self.has_last:
            return f"{kind} run with a last checkpoint (resumable)"
        return f"{kind} run with a best checkpoint only (not resumable)"


def _read_small_json(path: Path):
    try:
        if not path.is_file() or path.stat().st_size > _MAX_JSON_BYTES:
            return None
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def _checkpoint_config(folder: Path) -> dict | None:
    config = _read_small_json(folder / "config.json")
    if isinstance(config, dict) and config.get("format") == _FORMAT:
        return config
    return None


def _interrupted_copies(folder: Path, name: str) -> list[Path]:
    """Hidden siblings that saving ``folder/name`` creates (``.name.tmp-*``, ``.name.old-*``)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    prefixes = (f".{name}.tmp-", f".{name}.old-")
    return [p for p in entries if p.name.startswith(prefixes)]


def _complete_copy(folder: Path, name: str) -> Path | None:
    """The newest complete checkpoint among the hidden siblings of ``folder/name``.

    A save replacing ``name`` renames the old folder aside before moving the new one in; a kill
    between the two leaves ``name`` absent and both complete versions hidden.
    """
    best, newest = None, -1
    for sibling in _interrupted_copies(folder, name):
        config = _checkpoint_config(sibling)
        files = config.get("files") if config else None
        if not isinstance(files, dict) or "model.safetensors" not in files:
            continue
        if not all(isinstance(f, str) and (sibling / f).is_file() for f in files):
            continue
        stamp = (sibling / "config.json").stat().st_mtime_ns
        if stamp > newest:
            best, newest = sibling, stamp
    return best


def _int_or_none(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or abs(value) > 10**9:  # NaN or absurd
        return None
    return int(value)


def find_run(folder) -> RunInfo | None:
    """Describe the training run in ``folder``, or None when there is none.

    Parameters
    ----------
    folder : path-like
        A run folder (the ``out_dir`` given to ``train``; ``RUNS/<kind>`` for the CLI).

    Returns
    -------
    RunInfo or None
        None when the folder does not exist or holds no ``best/`` or ``last/`` checkpoint
        (a checkpoint left hidden by an interrupted save counts).
    """
    path = Path(folder)
    if not path.is_dir():
        return None
    configs = {}
    for name in _CHECKPOINTS:
        located = path / name if (path / name).is_dir() else _complete_copy(path, name)
        config = None if located is None else _checkpoint_config(located)
        if config is not None:
            configs[name] = (located, config)
    if not configs:
        return None
    kind = None
    for name in ("last", "best"):
        if name in configs and isinstance(configs[name][1].get("kind"), str):
            kind = configs[name][1]["kind"]
            break
    epoch, finished = None, False
    if "last" in configs:
        located, config = configs["last"]
        training = _read_small_json(located / "training_state.json")
        state = training.get("state") if isinstance(training, dict) else None
        if isinstance(state, dict):
            done = _int_or_none(state.get("epoch"))
            step = _int_or_none(state.get("step_in_epoch")) or 0
            bad = _int_or_none(state.get("bad_epochs")) or 0
            settings = config.get("train_config")
            settings = settings if isinstance(settings, dict) else {}
            epochs = _int_or_none(settings.get("epochs"))
            patience = _int_or_none(settings.get("patience"))
            if done is not None and done >= 0:
                epoch = done + (1 if step > 0 else 0)
                finished = step == 0 and (
                    (epochs is not None and done >= epochs)
                    or (patience is not None and patience >= 1 and bad >= patience)
                )
    return RunInfo(folder=path, kind=kind, has_last="last" in configs,
                   has_best="best" in configs, epoch=epoch, finished=finished)


def resume_checkpoint(path) -> Path:
    """The ``last/`` checkpoint to resume from ``path``: ``path`` itself, or its ``last/``
    when ``path`` is a run folder."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").exists() and (
            (path / "last").is_dir() or _complete_copy(path, "last") is not None):
        return path / "last"
    return path


def resume_position(checkpoint) -> tuple[int, int] | None:
    """Where a run resumed from ``checkpoint`` would start, read without torch.

    Parameters
    ----------
    checkpoint : path-like
        A ``last/`` checkpoint folder (see :func:`resume_checkpoint`).

    Returns
    -------
    tuple of int or None
        (epochs completed, steps done of the next epoch), as its training state records
        them; None when the folder holds no readable training state.
    """
    training = _read_small_json(Path(checkpoint) / "training_state.json")
    state = training.get("state") if isinstance(training, dict) else None
    if not isinstance(state, dict):
        return None
    epoch = _int_or_none(state.get("epoch"))
    step = _int_or_none(state.get("step_in_epoch", 0))
    if epoch is None or step is None or min(epoch, step) < 0:
        return None
    return epoch, step


# -- the lock ------------------------------------------------------------------------------------
def _host() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return "unknown-host"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return True
    return True


def _lock_is_stale(lock: Path) -> bool:
    try:
        text = lock.read_text(encoding="utf-8", errors="replace")
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return True
    except OSError:
        return False
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    pid = _int_or_none(_parse_int(fields.get("pid")))
    if pid is None:
        return age > _LOCK_WRITE_GRACE_S
    if fields.get("host") != _host():
        return False  # another machine's process: it cannot be checked from here
    return not _pid_alive(pid)


def _parse_int(text):
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def _take_lock(folder: Path) -> Path:
    lock = folder / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if _lock_is_stale(lock):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            break
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"pid={os.getpid()}\nhost={_host()}\nstarted={time.time():.0f}\n")
        return lock
    raise RunFolderBusy(_busy_message(folder))


def _busy_message(folder: Path) -> str:
    lock = folder / LOCK_FILE
    holder = ""
    with contextlib.suppress(OSError):
        holder = " (" + ", ".join(lock.read_text(encoding="utf-8").split()[:2]) + ")"
    return (f"run folder {folder} is in use by another training run{holder}; wait for it to "
            f"end, or choose another folder (a lock left by a process that no longer runs is "
            f"taken over automatically: delete {lock} if that process ran on another machine "
            f"and is gone)")


def check_not_busy(folder) -> None:
    """Raise ``RunFolderBusy`` when a training run that is still going holds ``folder``.

    Parameters
    ----------
    folder : path-like
        A run folder; one without a lock, or whose lock was left by a process that no
        longer runs, passes.
    """
    folder = Path(folder)
    if (folder / LOCK_FILE).exists() and not _lock_is_stale(folder / LOCK_FILE):
        raise RunFolderBusy(_busy_message(folder))


def _remove_checkpoint(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _tidy(folder: Path) -> None:
    """Recover checkpoints an interrupted save left hidden, then delete the other leftovers."""
    for name in _CHECKPOINTS:
        target = folder / name
        if not target.exists():
            copy = _complete_copy(folder, name)
            if copy is not None:
                os.rename(copy, target)
        for leftover in _interrupted_copies(folder, name):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    leftover.unlink()
    # The trainer's write probe, when a kill came between writing and removing it.
    for probe in folder.glob(".write-test-*"):
        if probe.is_file():
            with contextlib.suppress(OSError):
                probe.unlink()


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def claim_run_folder(folder, *, resume=None, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``folder`` for one training run.

    On entry the folder is created and locked (a ``.lock`` file with this process's id and
    host; a lock whose process is gone on this host is stale and taken over); an earlier run
    in it is refused unless it is being resumed or overwritten; checkpoints an interrupted save
    left hidden are put back in place and other leftovers deleted. The lock is released on
    exit, however the run ends.

    Parameters
    ----------
    folder : path-like
        The run folder (``out_dir`` of ``train``).
    resume : path-like, optional
        The checkpoint the run resumes from. Resuming a run of this same folder is allowed
        when it already holds a run.
    overwrite : bool
        Replace the run the folder holds: its ``best/`` and ``last/`` are deleted on entry, so
        an old best model can never be taken for the new run's.

    Yields
    ------
    Path
        The folder.

    Raises
    ------
    RunFolderBusy
        Another run holds the folder.
    RunFolderOccupied (a ValueError)
        The folder holds a run, and neither ``overwrite`` nor a ``resume`` from it was given.
    ValueError
        The folder cannot be created or written.
    """
    path = Path(folder)
    if overwrite and resume is not None and _is_inside(Path(resume), path):
        raise ValueError(f"resume={str(resume)!r} continues the run in {path} and "
                         f"overwrite=True would delete it: give one of them")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"output folder {path} is not writable: {exc.strerror or exc}"
                         ) from None
    try:
        lock = _take_lock(path)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ValueError(f"output folder {path} is not writable: {exc.strerror}") from None
        raise ValueError(f"output folder {path} cannot be used: {exc.strerror or exc}"
                         ) from None
    try:
        info = find_run(path)
        if info is not None and not overwrite:
            if resume is None or not _is_inside(Path(resume), path):
                raise RunFolderOccupied(path, info)
        try:
            _tidy(path)
            if overwrite:
                for name in _CHECKPOINTS:
                    _remove_checkpoint(path / name)
        except OSError as exc:
            raise ValueError(f"output folder {path} cannot be tidied: "
                             f"{exc.filename}: {exc.strerror}") from None
        yield path
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def round_folders(out_dir, rounds: int) -> list[Path]:
    """The run folder of each round: ``OUT/round-0`` ... ``OUT/round-{R-1}``, then ``OUT``."""
    out = Path(out_dir)
    return [out / f"round-{r}" for r in range(int(rounds))] + [out]


def round_name(r: int, rounds: int) -> str:
    """How progress messages name round ``r``: "first training", "self-training round 1 of 2"."""
    return "first training" if r == 0 else f"self-training round {r} of {rounds}"
