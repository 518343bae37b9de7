"""Output file names for the commands: distinct for every input, and never over a user's file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath


def _key(path: PurePath) -> str:
    # Case-insensitive file systems (macOS, Windows) treat Case.png and case.png as one file.
    return str(path).casefold()


def _safe_parts(name: str) -> list[str]:
    """The parts of ``name`` that can be recreated under an output folder: no anchor, no
    ``..``, no ``.``, so an output can never land outside that folder."""
    parts = PurePath(name).parts
    anchor = PurePath(name).anchor
    return [p for p in parts if p not in ("", ".", "..") and p != anchor]


def output_stems(names: Sequence[str]) -> list[PurePath]:
    """One relative output stem per input name, all distinct.

    Inputs with distinct stems keep a flat layout (``case``). When stems collide
    (``a/case.jpg`` and ``b/case.jpg``) every input keeps the subfolders that tell it apart
    (``a/case``, ``b/case``), relative to the folder the inputs share; inputs that differ only
    in their suffix (``case.jpg``, ``case.png``) get it in the name (``case_jpg``).

    Parameters
    ----------
    names : sequence of str
        Input paths or names, in any form (relative, absolute).

    Returns
    -------
    list of PurePath
        Relative paths without suffix, never absolute and never containing ``..``.
    """
    stems = [PurePath(n).stem or "image" for n in names]
    if len({s.casefold() for s in stems}) == len(stems):
        return [PurePath(s) for s in stems]
    folders = [_safe_parts(n)[:-1] for n in names]
    shared = 0
    while folders and all(len(f) > shared and f[shared] == folders[0][shared] for f in folders):
        shared += 1
    result = [PurePath(*f[shared:], s) for f, s in zip(folders, stems)]
    counts = Counter(_key(r) for r in result)
    for i, name in enumerate(names):
        if counts[_key(result[i])] > 1:
            suffix = PurePath(name).suffix.lstrip(".")
            if suffix:
                result[i] = result[i].with_name(f"{result[i].name}_{suffix}")
    seen: Counter = Counter()
    counts = Counter(_key(r) for r in result)
    for i, r in enumerate(result):
        if counts[_key(r)] > 1:  # the very same name given twice
            seen[_key(r)] += 1
            result[i] = r.with_name(f"{r.name}_{seen[_key(r)]}")
    return result


def prepare_output_folder(folder: Path) -> Path:
    """Create ``folder``; a clear error when it is a file or cannot be created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the output folder {folder}: {exc.strerror or exc}"
                         ) from None
    return folder


def refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, to replace an existing file without --overwrite.

    Raises
    ------
    ValueError
        Naming the first output that exists (and how many more do).
    """
    if overwrite:
        return
    clashes = [p for p in paths if p.exists() or p.is_symlink()]
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise ValueError(f"{clashes[0]} already exists{more}; pass --overwrite to replace "
                         f"existing files (nothing was written)")
