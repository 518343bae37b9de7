"""RECIST measurements on disk (CSV and JSON) and as napari Shapes layer data.

CSV (``.csv``)::

    # napari-recist-seg recist csv v1
    lesion_id,image,slice,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,short_r1,short_c1,
    spacing_row,spacing_col,<feature columns...>

Coordinates are 0-based (row, col) pixels, spacing is (row, col) in mm. ``image`` and ``slice``
are empty when not used. Feature columns hold anything; on reading, a column whose values are
all integers becomes ``int``, all numbers ``float``, otherwise ``str``; empty cells in a numeric
column, and in a column with no values at all, read as None. Use JSON when feature types must
survive exactly.

JSON (``.json``)::

    {"format": "napari-recist-seg-recist", "format_version": 1,
     "lesions": [{"lesion_id": 0, "image": "a.png", "slice": 3,
                  "long_axis": [[r, c], [r, c]], "short_axis": [[r, c], [r, c]],
                  "spacing": [row_mm, col_mm], "features": {"name": value}}]}

Floats are written with ``repr`` precision, so a write/read round trip is exact. Writes are
atomic: a failed write leaves an existing file as it was.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.recist import Recist, recists_from_shapes, recists_to_shapes
from ._atomic import atomic_write

__all__ = [
    "CSV_COLUMNS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RecistTable",
    "read_recists",
    "recist_layer_data",
    "table_from_layer_data",
    "write_recists",
]

FORMAT_NAME = "napari-recist-seg-recist"
FORMAT_VERSION = 1
_CSV_MAGIC = "# napari-recist-seg recist csv v"
_COORD_COLUMNS = (
    "long_r0",
    "long_c0",
    "long_r1",
    "long_c1",
    "short_r0",
    "short_c0",
    "short_r1",
    "short_c1",
)
CSV_COLUMNS = ("lesion_id", "image", "slice", *_COORD_COLUMNS, "spacing_row", "spacing_col")
_REQUIRED_CSV = ("lesion_id", *_COORD_COLUMNS)
# Names a feature may not take: they are columns of the file or of the Shapes layer.
_RESERVED = frozenset(CSV_COLUMNS) | {"axis"}
_INT_RE = re.compile(r"^[+-]?\d+$")


@dataclass
class RecistTable:
    """RECIST measurements with their ids, where they are, and any per-lesion features.

    Attributes
    ----------
    recists : list of Recist
        Each keeps its own pixel spacing.
    lesion_ids : list of int
    slices : list of int or None
        Index along the stack axis per lesion, for measurements on a volume.
    images : list of str or None
        The image each lesion was measured on (a file name or layer name).
    features : dict of str to list
        Extra per-lesion columns, each a list as long as ``recists``.
    spacing_known : list of bool or None
        Per lesion, whether its pixel spacing is a true size in mm (stated by the file or a
        volume's header) rather than 1 px; None means all are. Written files leave an
        unknown spacing empty, so that reading them back does not turn pixels into mm.
    """

    recists: list[Recist]
    lesion_ids: list[int] = field(default_factory=list)
    slices: list[int] | None = None
    images: list[str] | None = None
    features: dict[str, list] = field(default_factory=dict)
    spacing_known: list[bool] | None = None

    def __post_init__(self):
        self.recists = list(self.recists)
        n = len(self.recists)
        if not self.lesion_ids and n:
            self.lesion_ids = list(range(n))
        self.lesion_ids = [_as_int(v, "lesion_id") for v in self.lesion_ids]
        if len(self.lesion_ids) != n:
            raise ValueError(f"lesion_ids has {len(self.lesion_ids)} entries for {n} lesions")
        if self.slices is not None:
            self.slices = [_as_int(v, "slice") for v in self.slices]
            if len(self.slices) != n:
                raise ValueError(f"slices has {len(self.slices)} entries for {n} lesions")
        if self.images is not None:
            self.images = [str(v) for v in self.images]
            if len(self.images) != n:
                raise ValueError(f"images has {len(self.images)} entries for {n} lesions")
        if self.spacing_known is not None:
            self.spacing_known = [bool(v) for v in self.spacing_known]
            if len(self.spacing_known) != n:
                raise ValueError(f"spacing_known has {len(self.spacing_known)} entries for "
                                 f"{n} lesions")
        feats = {}
        for name, values in dict(self.features or {}).items():
            name = str(name)
            if name in _RESERVED:
                raise ValueError(f"feature name {name!r} is reserved (a RECIST file column)")
            values = [_plain(v, name) for v in values]
            if len(values) != n:
                raise ValueError(f"feature {name!r} has {len(values)} values for {n} lesions")
            feats[name] = values
        self.features = feats

    def __len__(self) -> int:
        return len(self.recists)

    def subset(self, indices) -> RecistTable:
        """The lesions at ``indices``, in that order, with their columns."""
        idx = [int(i) for i in indices]

        def pick(values):
            return None if values is None else [values[i] for i in idx]

        return RecistTable([self.recists[i] for i in idx], [self.lesion_ids[i] for i in idx],
                           pick(self.slices), pick(self.images),
                           {name: pick(vals) for name, vals in self.features.items()},
                           pick(self.spacing_known))

    def image_groups(self) -> dict[str, list[int]]:
        """The lesions' indices per image name, in the order the names first appear
        (empty when the table names no image)."""
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.images or []):
            groups.setdefault(name, []).append(i)
        return groups

    def knows_spacing(self, i: int) -> bool:
        """Whether lesion ``i``'s pixel spacing is a true size in mm."""
        return self.spacing_known is None or self.spacing_known[i]

    def mixed_units(self) -> str:
        """Why the lesions' lengths cannot be compared ("" when they can): some are in mm
        (their pixel size is known) and others in px."""
        return mixed_units([self.knows_spacing(i) for i in range(len(self))])


def mixed_units(known, rows=None) -> str:
    """Why lesions' lengths cannot be compared ("" when they can): ``known[i]`` says whether
    lesion ``i``'s pixel size is known (its lengths in mm) or not (in px); ``rows`` are
    their rows in the file (default 1, 2, ...), the first few without one named."""
    known = [bool(k) for k in known]
    if not any(known) or all(known):
        return ""
    rows = list(range(1, len(known) + 1)) if rows is None else list(rows)
    without = [str(r) for r, k in zip(rows, known) if not k]
    shown = ", ".join(without[:5]) + (", ..." if len(without) > 5 else "")
    return (f"{sum(known)} lesion(s) have a pixel size (lengths in mm) and "
            f"{known.count(False)} do not (lengths in px; rows {shown}); give the pixel size "
            f"of every image (spacing_row, spacing_col) or of none")


def _as_int(value, what: str) -> int:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value)
    raise ValueError(f"{what} must be an integer, got {value!r}")


def _plain(value, name: str):
    """Feature values as plain Python str/int/float/bool/None (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ValueError(
        f"feature {name!r}: values must be str, int, float, bool or None, got "
        f"{type(value).__name__}"
    )


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        return "json"
    raise ValueError(
        f"{path}: RECIST files must end in .csv or .json, got {suffix or 'no suffix'!r}"
    )


# -- writing ---------------------------------------------------------------------------------------
def write_recists(path, recists, lesion_ids=None, slices=None, images=None, features=None) -> Path:
    """Write RECIST measurements to ``.csv`` or ``.json`` (chosen by the suffix), atomically.

    Parameters
    ----------
    path : str or Path
    recists : sequence of Recist, or RecistTable
        A table carries its own ids, slices, images and features (the other arguments must
        then be None).
    lesion_ids : sequence of int, optional
        Default 0, 1, ...
    slices : sequence of int, optional
    images : sequence of str, optional
    features : mapping of str to sequence, optional
        Extra columns, one value per lesion (str, int, float, bool or None).

    Returns
    -------
    Path
    """
    if isinstance(recists, RecistTable):
        if any(v is not None for v in (lesion_ids, slices, images, features)):
            raise ValueError("pass either a RecistTable or the separate columns, not both")
        table = recists
    else:
        table = RecistTable(
            recists=list(recists),
            lesion_ids=list(lesion_ids) if lesion_ids is not None else [],
            slices=None if slices is None else list(slices),
            images=None if images is None else list(images),
            features={k: list(v) for k, v in (features or {}).items()},
        )
    for i, r in enumerate(table.recists):
        if not isinstance(r, Recist):
            raise ValueError(f"item {i} is a {type(r).__name__}, not a Recist")
    path = Path(path)
    fmt = _format(path)
    if fmt == "csv":
        _write_csv(path, table)
    else:
        _write_json(path, table)
    return path


def _num(value: float) -> str:
    return repr(float(value))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _write_csv(path: Path, table: RecistTable) -> None:
    names = list(table.features)
    with atomic_write(path, "w", newline="") as fh:
        fh.write(f"{_CSV_MAGIC}{FORMAT_VERSION}\n")
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*CSV_COLUMNS, *names])
        for i, r in enumerate(table.recists):
            coords = [*r.long_axis.reshape(-1), *r.short_axis.reshape(-1)]
            row = [
                str(table.lesion_ids[i]),
                "" if table.images is None else table.images[i],
                "" if table.slices is None else str(table.slices[i]),
                *(_num(v) for v in coords),
                *((_num(r.spacing[0]), _num(r.spacing[1])) if table.knows_spacing(i)
                  else ("", "")),
                *(_cell(table.features[name][i]) for name in names),
            ]
            writer.writerow(row)


def _write_json(path: Path, table: RecistTable) -> None:
    lesions = []
    for i, r in enumerate(table.recists):
        entry: dict = {"lesion_id": table.lesion_ids[i]}
        if table.images is not None:
            entry["image"] = table.images[i]
        if table.slices is not None:
            entry["slice"] = table.slices[i]
        entry["long_axis"] = [[float(v) for v in p] for p in r.long_axis]
        entry["short_axis"] = [[float(v) for v in p] for p in r.short_axis]
        if table.knows_spacing(i):
            entry["spacing"] = [float(v) for v in r.spacing]
        if table.features:
            entry["features"] = {name: vals[i] for name, vals in table.features.items()}
        lesions.append(entry)
    doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "lesions": lesions}
    text = json.dumps(doc, indent=1)
    with atomic_write(path, "w") as fh:
        fh.write(text + "\n")


# -- reading ---------------------------------------------------------------------------------------
def read_recists(path, max_perpendicularity_error: float = 15.0,
                 spacing_of=None) -> RecistTable:
    """Read a RECIST ``.csv`` or ``.json`` file written by ``write_recists`` (or by hand).

    Parameters
    ----------
    path : str or Path
    max_perpendicularity_error : float
        Tolerance passed to each ``Recist`` (degrees).
    spacing_of : callable, optional
        ``spacing_of(image_name)`` gives the (row, col) pixel size in mm of a lesion that
        states none (a volume's header does), or None. Lesions are checked (perpendicular,
        short axis not longer than the long one) in those mm; without it, in pixels.

    Returns
    -------
    RecistTable

    Raises
    ------
    ValueError
        When the file is missing or unreadable, a required column or key is missing (named
        with the file), the JSON's ``format_version`` is newer than this version supports, or
        a row is not a valid RECIST (the row and lesion id are named).
    """
    path = Path(path)
    fmt = _format(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = _line_of(path.read_bytes(), exc.start)
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason} on line {line}); "
                         f"spreadsheets write UTF-8 when saved as 'CSV UTF-8'") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if fmt == "csv":
        table = _read_csv(path, text, max_perpendicularity_error, spacing_of)
    else:
        table = _read_json(path, text, max_perpendicularity_error, spacing_of)
    _warn_duplicates(path, table)
    return table


def _warn_duplicates(path: Path, table: RecistTable) -> None:
    """Warn, with the ids, about lesions given twice: a repeated id on the same image and
    slice, or the very same measurement repeated (a copy-paste, a merge of two exports)."""
    images = table.images or [None] * len(table)
    slices = table.slices or [None] * len(table)
    seen_ids: dict[tuple, int] = {}
    seen_rows: dict[tuple, int] = {}
    dup_ids: list[int] = []
    dup_rows: list[tuple[int, int]] = []
    for lid, image, slc, r in zip(table.lesion_ids, images, slices, table.recists):
        key = (image, slc, lid)
        if key in seen_ids and lid not in dup_ids:
            dup_ids.append(lid)
        seen_ids.setdefault(key, lid)
        where = (image, slc, tuple(np.round(np.concatenate(
            [r.long_axis.ravel(), r.short_axis.ravel()]), 6)))
        if where in seen_rows:
            dup_rows.append((seen_rows[where], lid))
        else:
            seen_rows[where] = lid
    if dup_ids:
        shown = ", ".join(map(str, dup_ids[:10])) + (", ..." if len(dup_ids) > 10 else "")
        warnings.warn(f"{path}: {len(dup_ids)} lesion id(s) appear more than once for the same "
                      f"image and slice: {shown}", UserWarning, stacklevel=3)
    if dup_rows:
        shown = ", ".join(f"{a} and {b}" for a, b in dup_rows[:10]) + (
            ", ..." if len(dup_rows) > 10 else "")
        warnings.warn(f"{path}: {len(dup_rows)} lesion(s) repeat the same measurement on the "
                      f"same image and slice (lesion ids {shown})", UserWarning, stacklevel=3)


def _build(path, where, lid, long_axis, short_axis, spacing, tol) -> Recist:
    """A row's ``Recist``; ``spacing`` None means that nothing gives the pixel size, so the
    lesion is measured (and refused) in pixels."""
    try:
        return Recist(long_axis, short_axis, (1.0, 1.0) if spacing is None else spacing,
                      max_perpendicularity_error=tol)
    except ValueError as exc:
        reason = str(exc).replace(" mm)", " px)") if spacing is None else str(exc)
        raise ValueError(f"{path}: {where} (lesion {lid}): invalid RECIST: {reason}") from None


def _fallback_spacing(spacing_of, image) -> tuple[float, float] | None:
    """The pixel size ``spacing_of`` gives a lesion on ``image`` that states none."""
    if spacing_of is None or not isinstance(image, str) or not image.strip():
        return None
    spacing = spacing_of(image)
    return None if spacing is None else (float(spacing[0]), float(spacing[1]))


def _infer_column(values: list[str]):
    present = [v for v in values if v != ""]
    if not present:
        return [None] * len(values)
    if all(_INT_RE.match(v.strip()) for v in present):
        return [None if v == "" else int(v) for v in values]
    try:
        [float(v) for v in present]
    except ValueError:
        return list(values)
    return [None if v == "" else float(v) for v in values]


def _line_of(data: bytes, offset: int) -> int:
    """The line (from 1) of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def _plain_name(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").split())


def separator_hint(header: list, what: str) -> str:
    """A note when a CSV ``header`` read as one cell holds semicolons or tabs: ``what``
    (the kind of file) is comma-separated."""
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        sep = "semicolons" if ";" in header[0] else "tabs"
        return f" (its header is separated by {sep}; {what} is comma-separated)"
    return ""


def _header_hint(header: list) -> str:
    """Why a header may lack the required columns: another separator, or capitals."""
    hint = separator_hint(header, "a RECIST CSV")
    if hint:
        return hint
    if any(h.lower() in _REQUIRED_CSV and h not in _REQUIRED_CSV for h in header):
        return " (column names are lower case, e.g. long_r0)"
    return ""


def _read_csv(path: Path, text: str, tol: float, spacing_of=None) -> RecistTable:
    # Comment lines come only before the header; cells after it may hold '#' or newlines.
    body = text
    while body.lstrip(" \t\r\n").startswith("#"):
        body = body.lstrip(" \t\r\n")
        line, _, body = body.partition("\n")
        line = line.strip()
        if line.startswith(_CSV_MAGIC):
            version_text = line[len(_CSV_MAGIC) :].strip()
            if not version_text.isdigit():
                raise ValueError(f"{path}: unreadable format version {version_text!r}")
            if int(version_text) > FORMAT_VERSION:
                raise ValueError(
                    f"{path}: RECIST CSV version {version_text} is newer than this version of "
                    f"napari-recist-seg supports ({FORMAT_VERSION}); please upgrade"
                )
    try:
        rows = list(csv.reader(io.StringIO(body, newline="")))
    except csv.Error as exc:
        raise ValueError(f"{path}: malformed CSV ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{path}: empty file, no header row")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in _REQUIRED_CSV if c not in header]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}"
                         f"{_header_hint(header)}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ValueError(f"{path}: repeated column(s) {', '.join(dupes)}")
    # An optional column in other capitals or with spaces would be read as a feature and its
    # values (a pixel size, a slice) left unused without a word.
    near = [(h, _plain_name(h)) for h in header
            if h not in _RESERVED and _plain_name(h) in _RESERVED]
    if near:
        raise ValueError(f"{path}: column(s) {', '.join(repr(h) for h, _ in near)} would be "
                         f"read as lesion features; name them "
                         f"{', '.join(name for _, name in near)} (column names are lower case, "
                         f"words joined by _)")
    col = {h: i for i, h in enumerate(header)}
    feature_names = [h for h in header if h not in _RESERVED]

    recists, ids, slice_cells, image_cells, known = [], [], [], [], []
    raw_features: dict[str, list[str]] = {name: [] for name in feature_names}
    for n, row in enumerate(rows[1:], start=1):
        where = f"row {n}"
        if len(row) != len(header):
            raise ValueError(f"{path}: {where} has {len(row)} fields, the header has {len(header)}")

        def get(name, row=row):
            return row[col[name]].strip() if name in col else ""

        lid_text = get("lesion_id")
        try:
            lid = _as_int(lid_text, "lesion_id")
        except ValueError:
            raise ValueError(
                f"{path}: {where}: lesion_id must be an integer, got {lid_text!r}"
            ) from None
        try:
            coords = [_number(get(c)) for c in _COORD_COLUMNS]
            cells = [get(c) for c in ("spacing_row", "spacing_col")]
            spacing = [_number(v) for v in cells] if all(cells) else None
        except ValueError:
            bad = next(
                c
                for c in (*_COORD_COLUMNS, "spacing_row", "spacing_col")
                if c in col and not _is_float(get(c), allow_empty=c.startswith("spacing"))
            )
            point = " (decimals are written with a point)" if "," in get(bad) else ""
            raise ValueError(
                f"{path}: {where} (lesion {lid}): column {bad} is not a number: "
                f"{get(bad)!r}{point}") from None
        if any(cells) and not all(cells):
            raise ValueError(f"{path}: {where} (lesion {lid}): spacing_row and spacing_col "
                             f"go together: give both or leave both empty")
        long_axis = np.array(coords[:4]).reshape(2, 2)
        short_axis = np.array(coords[4:]).reshape(2, 2)
        # Cells are read as typed, less the spaces a spreadsheet leaves after each comma.
        image = get("image")
        if spacing is None:
            spacing = _fallback_spacing(spacing_of, image)
        recists.append(_build(path, where, lid, long_axis, short_axis, spacing, tol))
        known.append(spacing is not None)
        ids.append(lid)
        slice_cells.append(get("slice"))
        image_cells.append(image)
        for name in feature_names:
            raw_features[name].append(get(name))

    slices = None
    if any(slice_cells):
        if not all(slice_cells):
            n = slice_cells.index("") + 1
            raise ValueError(f"{path}: row {n} (lesion {ids[n - 1]}) has no slice, others do")
        slices = []
        for n, text_value in enumerate(slice_cells, start=1):
            try:
                slices.append(_as_int(text_value, "slice"))
            except ValueError:
                raise ValueError(
                    f"{path}: row {n} (lesion {ids[n - 1]}): slice must be an integer, got "
                    f"{text_value!r}"
                ) from None
    images = image_cells if any(image_cells) else None
    features = {name: _infer_column(vals) for name, vals in raw_features.items()}
    return RecistTable(recists, ids, slices, images, features, spacing_known=known)


def _number(text: str) -> float:
    """``text`` as a number; Python's digit separators ("2_00") are not taken, since a
    table cell holding one is a typing slip more likely than 200."""
    if "_" in text:
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def _is_float(text: str, allow_empty: bool = False) -> bool:
    if text == "" and allow_empty:
        return True
    try:
        _number(text)
    except ValueError:
        return False
    return True


def _read_json(path: Path, text: str, tol: float, spacing_of=None) -> RecistTable:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a RECIST file: its JSON is nested too deeply to "
                         f"read") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{path}: not a napari-recist-seg RECIST file (no 'format': {FORMAT_NAME!r}): "
            f"its lesions go in a list under 'lesions' of one object, "
            f'{{"format": "{FORMAT_NAME}", "format_version": {FORMAT_VERSION}, '
            f'"lesions": [...]}}'
        )
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path}: 'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: RECIST file format_version {version} is newer than this version of "
            f"napari-recist-seg supports ({FORMAT_VERSION}); please upgrade"
        )
    lesions = doc.get("lesions")
    if not isinstance(lesions, list):
        raise ValueError(f"{path}: missing required key 'lesions' (a list)")

    recists, ids, slices, images, known = [], [], [], [], []
    feature_rows: list[dict] = []
    for n, entry in enumerate(lesions, start=1):
        where = f"lesion entry {n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {where} is not an object")
        for key in ("lesion_id", "long_axis", "short_axis"):
            if key not in entry:
                raise ValueError(f"{path}: {where} is missing required key {key!r}")
        try:
            lid = _as_int(entry["lesion_id"], "lesion_id")
        except ValueError as exc:
            raise ValueError(f"{path}: {where}: {exc}") from None
        spacing = entry.get("spacing")
        if spacing is None:
            spacing = _fallback_spacing(spacing_of, entry.get("image"))
        recists.append(
            _build(path, where, lid, entry["long_axis"], entry["short_axis"], spacing, tol)
        )
        known.append(spacing is not None)
        ids.append(lid)
        slices.append(entry.get("slice"))
        image = entry.get("image")
        if image is not None and not isinstance(image, str):
            raise ValueError(f"{path}: {where} (lesion {lid}): 'image' must be a file or layer "
                             f"name (text), got {type(image).__name__}")
        images.append(image)
        feats = entry.get("features", {}) or {}
        if not isinstance(feats, dict):
            raise ValueError(f"{path}: {where} (lesion {lid}): 'features' must be an object")
        feature_rows.append(feats)

    def column(values, what):
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):
            n = values.index(None) + 1
            raise ValueError(f"{path}: lesion entry {n} (lesion {ids[n - 1]}) has no {what}")
        return values

    slices_out = column(slices, "slice")
    images_out = column(images, "image")
    names: list[str] = []
    for feats in feature_rows:
        for name in feats:
            if name not in names:
                names.append(name)
    features = {name: [feats.get(name) for feats in feature_rows] for name in names}
    try:
        return RecistTable(recists, ids, slices_out, images_out, features,
                           spacing_known=known)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# -- napari Shapes layer ---------------------------------------------------------------------------
def recist_layer_data(table: RecistTable):
    """Shapes layer data for a table: two ``line`` shapes per lesion.

    Returns
    -------
    data : list of ndarray
        ``(2, 2)`` vertex arrays, or ``(2, 3)`` with the slice first when the table has slices.
    features : dict of list
        One value per line: ``lesion_id``, ``axis`` (``"long"``/``"short"``), ``image`` when the
        table has images, then the table's features, each lesion's value on both its lines.
        When lesions differ in spacing, ``spacing_row`` and ``spacing_col`` are added too.
    scale : tuple of float
        The layer's ``scale``: the (row, col) spacing shared by all lesions (with 1.0 for the
        slice axis in 3D), or all ones when they differ.
    """
    data, feats = recists_to_shapes(table.recists, slices=table.slices, lesion_ids=table.lesion_ids)
    per_line = [i for i in range(len(table)) for _ in range(2)]
    if table.images is not None:
        feats["image"] = [table.images[i] for i in per_line]
    for name, values in table.features.items():
        feats[name] = [values[i] for i in per_line]
    spacings = {r.spacing for r in table.recists}
    lead = (1.0,) if table.slices is not None else ()
    if len(spacings) <= 1:
        spacing = next(iter(spacings)) if spacings else (1.0, 1.0)
        scale = (*lead, *spacing)
    else:
        feats["spacing_row"] = [table.recists[i].spacing[0] for i in per_line]
        feats["spacing_col"] = [table.recists[i].spacing[1] for i in per_line]
        scale = (*lead, 1.0, 1.0)
    return data, feats, tuple(float(s) for s in scale)


def _column(features, name: str) -> list:
    values = features[name]
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in list(values)]


def _image_names(values, slices) -> list[str]:
    """Each lesion's image name; a lesion drawn in the viewer has none (or NaN), and takes
    that of a lesion on its slice (one slice shows one image; a 2D layer, one image)."""
    names = ["" if _nan_to_none(v) is None or str(v) == "nan" else str(v) for v in values]
    if slices is None:
        slices = [None] * len(names)
    known: dict = {}
    for name, z in zip(names, slices):
        if name:
            known.setdefault(z, name)
    return [name or known.get(z, "") for name, z in zip(names, slices)]


def table_from_layer_data(
    data: Sequence, features: Mapping, scale=None, max_perpendicularity_error: float = 15.0
) -> RecistTable:
    """Rebuild a table from Shapes layer data and features (a dict of lists or a DataFrame).

    Parameters
    ----------
    data : sequence of array_like
        The layer's ``data``: one line per axis, ``(2, 2)`` or ``(2, 3)`` (slice first).
    features : mapping or DataFrame
        Must have ``lesion_id`` and ``axis``; ``image``, ``spacing_row`` and ``spacing_col``
        are used if present; every other column becomes a table feature, taken from the
        lesion's long-axis line.
    scale : sequence of float, optional
        The layer's ``scale``; its last two entries are the (row, col) spacing in mm.

    Raises
    ------
    ValueError
        When lines do not pair into valid lesions (the lesion id is named).
    """
    spacing = (1.0, 1.0)
    if scale is not None:
        s = [float(v) for v in np.ravel(scale)]
        if len(s) < 2:
            raise ValueError(f"scale needs at least two entries, got {scale!r}")
        spacing = (s[-2], s[-1])
    names = [str(k) for k in features.keys()]
    columns = {name: _column(features, name) for name in names}
    # Each lesion's values (and pixel size) come from its long-axis line.
    long_line: dict[int, int] = {}
    for i, (lid, axis) in enumerate(zip(columns["lesion_id"], columns["axis"])):
        if str(axis) == "long":
            with contextlib.suppress(TypeError, ValueError, OverflowError):
                long_line[int(lid)] = i  # a bad id is named by recists_from_shapes
    lesion_spacing = None
    if "spacing_row" in columns and "spacing_col" in columns:
        # Measured in each lesion's own pixel size from the start: in the layer's, the
        # longer of two lines may be the other one.
        lesion_spacing = {lid: (float(columns["spacing_row"][i]),
                                float(columns["spacing_col"][i]))
                          for lid, i in long_line.items()}
    recists, ids, slices = recists_from_shapes(
        data,
        columns,
        spacing=spacing,
        max_perpendicularity_error=max_perpendicularity_error,
        lesion_spacing=lesion_spacing,
    )
    rows = [long_line[lid] for lid in ids]
    images = (_image_names([columns["image"][i] for i in rows], slices)
              if "image" in columns else None)
    skip = {"lesion_id", "axis", "image", "spacing_row", "spacing_col"}
    feats = {
        name: [_nan_to_none(columns[name][i]) for i in rows] for name in names if name not in skip
    }
    return RecistTable(recists, ids, slices, images, feats)


def _nan_to_none(value):
    # pandas fills missing feature values with NaN; a table holds None for them.
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
