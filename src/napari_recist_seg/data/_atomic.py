"""Atomic file writes: a reader never sees a half-written file, a failed write never clobbers."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = ["NewOutputs", "atomic_write", "fsync_folder", "plain_permissions",
           "remove_empty_folders"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; do it once, at import, before any threads run.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None):
    """Open a temporary file next to ``path``; on success move it over ``path`` in one step.

    The temporary file is created in the target's folder (so ``os.replace`` is a rename on one
    file system, which is atomic), flushed and fsynced before the rename. If the block raises,
    the temporary file is removed and an existing ``path`` is left untouched.

    Parameters
    ----------
    path : str or Path
        The file to write.
    mode : str
        ``"w"`` (text) or ``"wb"`` (binary); ``"x"`` variants are refused because the target
        is meant to be replaced.
    encoding, newline : str, optional
        Passed to ``open`` for text mode (ignored for binary mode). Use ``newline=""`` with
        the ``csv`` module.

    Yields
    ------
    file object
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write supports mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"cannot write {path}: folder {folder} {what}")
    if path.is_dir():
        # Checked first: the rename would fail only after the whole file was written, and
        # its error would name the temporary file.
        raise IsADirectoryError(errno.EISDIR, "is a folder; name a file to write", str(path))
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        # The error would name the hidden temporary file; the user knows only the folder.
        raise type(exc)(exc.errno, f"cannot write {path.name} in folder {folder}: "
                                   f"{exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        binary = "b" in mode
        with os.fdopen(
            fd,
            mode,
            encoding=None if binary else encoding,
            newline=None if binary else newline,
        ) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file private (0600); give it the permissions a plain open would.
        try:
            perms = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK
            os.chmod(tmp, perms)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_folder(folder)


def plain_permissions(path) -> None:
    """Give a file or folder made by ``tempfile`` (private: 0600 or 0700) the permissions a
    plain ``open`` or ``mkdir`` would, so that outputs on a shared disk are readable as the
    user's umask allows.

    Parameters
    ----------
    path : path-like
        A file or a folder; left as it is where its permissions cannot be changed.
    """
    path = Path(path)
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)


def fsync_folder(folder) -> None:
    """Make renames in ``folder`` durable (best effort: not possible on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class NewOutputs:
    """The files and folders a run writes, kept only when it ends well: a run that fails or
    is stopped half way leaves exactly what was there before, old files it was allowed to
    replace included, and a run that another one wrote the same files under meanwhile keeps
    none of its own.

    Use as ``with NewOutputs(folders, overwrite) as new:``, writing each output to
    ``new.file(path)``: a hidden file beside ``path`` (with its suffix), moved onto ``path``
    when the block ends without an error. ``folders`` are made now and removed on failure if
    they were not there. Without ``overwrite`` (the caller refused existing outputs before
    starting), an output found at the end was written by another run meanwhile.
    """

    def __init__(self, folders=(), overwrite: bool = False):
        self._overwrite = bool(overwrite)
        self._files: list[tuple[Path, Path]] = []  # (staged, final)
        folders = [Path(p) for p in folders]
        missing = set()
        for path in folders:
            for folder in (path, *path.parents):
                if folder.exists():
                    break
                missing.add(folder)
        self._folders = sorted(missing, key=lambda f: len(f.parts), reverse=True)
        for path in folders:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"cannot create the output folder {path}: "
                                 f"{exc.strerror or exc}") from None

    def file(self, path) -> Path:
        """Where to write the output ``path`` now: a hidden file beside it, ending as it does
        (so that a writer choosing its format by suffix still does), moved onto ``path`` at
        the end."""
        path = Path(path)
        staged = path.with_name(f".partial-{os.getpid()}-{len(self._files)}-{path.name}")
        self._files.append((staged, path))
        return staged

    def __enter__(self) -> NewOutputs:
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is None:
            # Written meanwhile by another run into the same folder: keeping ours would mix
            # the two runs' outputs.
            raced = [] if self._overwrite else [
                final for _, final in self._files if final.exists() or final.is_symlink()]
            if not raced:
                for staged, final in self._files:
                    os.replace(staged, final)
                return False
        for staged, _ in self._files:
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)
        for folder in self._folders:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        if kind is None:
            raise ValueError(f"{raced[0]} was written by another run while this one ran; "
                             f"nothing of this run was kept")
        return False


def remove_empty_folders(root) -> None:
    """Remove ``root`` and the folders under it, deepest first, where they are empty; a
    folder holding any file stays, with that file. Nothing happens for None."""
    if root is None or not Path(root).is_dir():
        return
    for folder, _dirs, _files in sorted(os.walk(root), key=lambda e: -len(e[0])):
        with contextlib.suppress(OSError):
            os.rmdir(folder)
