"""DeepLesion: ``DL_info.csv`` rows as RECIST measurements, and the CT slices they sit on.

DeepLesion (Yan et al., J. Med. Imaging 2018) gives, per lesion, the key slice's file name,
the RECIST endpoints in ``Measurement_coordinates`` as ``x1, y1, x2, y2`` (long axis) then
``x3, y3, x4, y4`` (short axis), x before y and 1-based, and the pixel spacing in
``Spacing_mm_px_`` as ``x, y, slice interval``. This module converts all of it once, to 0-based
(row, col) pixels and (row, col, slice) millimetres, so nothing downstream sees x/y order.

Slices are 16-bit PNGs with HU = value - 32768, stored at ``Images_png/PPPPPP_SS_ss/NNN.png``
for ``File_name`` ``PPPPPP_SS_ss_NNN.png``. Flat folders of key slices (``PPPPPP_SS_ss_NNN.png``
or ``.jpg``) are found too; 8-bit images (such as the JPEG key slices shared in some public
repositories) are taken as a linear map of HU -1024..3071 onto 0..255.

The NIfTI release of the same slices (``Images_nifti/PPPPPP_SS_ss_FFF-LLL.nii.gz``, one file per
run of consecutive slices FFF to LLL, HU as stored, written by DeepLesion's ``DL_save_nifti.py``)
is read too: the key slice is the file's plane ``NNN - FFF``, turned back to the PNG's rows and
columns (the files' axes hold columns along x and rows along y, and so does the RECIST).
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..core.recist import Recist, outside_image
from .volumes import itk_message

__all__ = [
    "LESION_TYPES",
    "DeepLesionRecord",
    "SkippedRow",
    "deeplesion_volume_depth",
    "png_plane_to_volume",
    "read_deeplesion",
    "read_deeplesion_slice",
    "read_deeplesion_volume_planes",
    "recist_on_volume",
    "recist_table",
    "volume_run",
]

LESION_TYPES = {
    -1: "unknown",
    1: "bone",
    2: "abdomen",
    3: "mediastinum",
    4: "liver",
    5: "lung",
    6: "kidney",
    7: "soft tissue",
    8: "pelvis",
}
_SPLITS = {1: "train", 2: "val", 3: "test"}

REQUIRED_COLUMNS = (
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Coarse_lesion_type",
    "Train_Val_Test",
)

# 16-bit PNGs store HU + 32768.
_PNG16_OFFSET = 32768.0
# 8-bit images: HU -1024..3071 mapped linearly onto 0..255.
_HU8_LO, _HU8_HI = -1024.0, 3071.0
# How many missing image names a warning lists before "...".
_LIST_MAX = 5
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FILE_NAME_RE = re.compile(r"^(?P<series>.+)_(?P<slice>\d+)\.(?:png|jpe?g)$", re.IGNORECASE)
# A run of consecutive slices as one NIfTI file: PPPPPP_SS_ss_FFF-LLL.nii(.gz).
_VOLUME_NAME_RE = re.compile(r"^(?P<series>.+)_(?P<first>\d+)-(?P<last>\d+)\.nii(?:\.gz)?$",
                             re.IGNORECASE)
# DeepLesion slices are 512 x 512; no CT slice comes near this, and a bigger claim would only
# make readers allocate for a size no file has.
MAX_IMAGE_SIDE = 8192
# Image folders looked for beside the table, in this order.
IMAGE_FOLDERS = ("Images_png", "Images_nifti", "images", "Images")
# Used when a row's DICOM_windows is inverted or empty: the usual soft-tissue window
# (level 40 HU, width 400 HU).
DEFAULT_WINDOW = (-160.0, 240.0)


@dataclass(frozen=True)
class DeepLesionRecord:
    """One row of ``DL_info.csv``, converted to 0-based (row, col) pixels and millimetres.

    Attributes
    ----------
    file_name : str
        ``File_name`` as in the CSV, e.g. ``"000001_01_01_109.png"``.
    key_slice : int
        ``Key_slice_index``: DeepLesion's slice number, the same as ``NNN`` in the file name
        (the numbering of the PNG files, not a 0-based index into a volume).
    recist : Recist
        The measurement, 0-based (row, col) pixels, with the in-plane spacing.
    box : tuple of float
        ``Bounding_boxes`` as (row0, col0, row1, col1), 0-based like ``recist``.
    spacing_mm : tuple of float
        (row, col, slice interval) in mm.
    window : tuple of float
        Display window (lo, hi) in HU from ``DICOM_windows``.
    lesion_type : int
        ``Coarse_lesion_type`` (1..8, -1 when not labelled; see ``LESION_TYPES``).
    split : str
        ``"train"``, ``"val"`` or ``"test"`` from ``Train_Val_Test``.
    image_size : tuple of int
        (rows, cols), from ``Image_size`` (given as x, y like the other columns).
    patient_index, study_index, series_id : int
    csv_row : int
        Data row number in the CSV (1 = the first row after the header).
    image_path : Path or None
        The key slice's image file, None when it was not found: a PNG or JPEG, or the NIfTI
        file of consecutive slices that holds it (then ``volume_slice`` says which plane).
    diameters_px : tuple of float or None
        ``Lesion_diameters_Pixel_`` (long, short) when present.
    slice_range : tuple of int or None
        ``Slice_range`` (first, last) slice numbers when present.
    possibly_noisy : bool or None
    patient_gender : str or None
    patient_age : float or None
    neighbours : int
        Default neighbour count for ``read_deeplesion_slice``.
    slice_gap_mm : float
        Default neighbour spacing (mm) for ``read_deeplesion_slice``.
    volume_slice : int or None
        When ``image_path`` is a NIfTI file of consecutive slices: the key slice's plane in it
        (0 for its first slice).
    """

    file_name: str
    key_slice: int
    recist: Recist
    box: tuple[float, float, float, float]
    spacing_mm: tuple[float, float, float]
    window: tuple[float, float]
    lesion_type: int
    split: str
    image_size: tuple[int, int]
    patient_index: int
    study_index: int
    series_id: int
    csv_row: int
    image_path: Path | None = None
    diameters_px: tuple[float, float] | None = None
    slice_range: tuple[int, int] | None = None
    possibly_noisy: bool | None = None
    patient_gender: str | None = None
    patient_age: float | None = None
    neighbours: int = 0
    slice_gap_mm: float = 2.0
    volume_slice: int | None = None

    @property
    def lesion_type_name(self) -> str:
        """The coarse lesion type in words (``"lung"``, ``"liver"``, ...)."""
        return LESION_TYPES.get(self.lesion_type, "unknown")

    @property
    def series_name(self) -> str:
        """``PPPPPP_SS_ss``: the folder under ``Images_png`` holding this series' slices."""
        match = _FILE_NAME_RE.match(self.file_name)
        return match.group("series") if match else Path(self.file_name).stem


class SkippedRow(NamedTuple):
    """A ``DL_info.csv`` row left out because its RECIST is invalid."""

    csv_row: int
    file_name: str
    reason: str

    @property
    def category(self) -> str:
        """The reason without its numbers, for counting: e.g. ``"axes not perpendicular"``."""
        text = self.reason
        if "perpendicular" in text:
            return "axes not perpendicular"
        if "longer than the long axis" in text:
            return "short axis longer than long axis"
        if "does not cross" in text:
            return "axes do not cross"
        if "zero length" in text:
            return "zero-length axis"
        if "lies outside" in text:
            return "outside the slice"
        return "other"


# -- CSV parsing ----------------------------------------------------------------------------
class _RowError(ValueError):
    pass


def _numbers(row: dict, column: str, n: int | None) -> list[float]:
    text = (row.get(column) or "").strip()
    parts = [p.strip() for p in text.strip("[]()").split(",") if p.strip()]
    if n is not None and len(parts) != n:
        raise _RowError(column, f"needs {n} numbers, got {len(parts)}: {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise _RowError(column, f"has a value that is not a number: {text!r}") from None
    if not all(np.isfinite(values)):
        raise _RowError(column, f"has non-finite values: {text!r}")
    return values


def _integer(row: dict, column: str) -> int:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise _RowError(column, f"is not a number: {text!r}") from None
    if not np.isfinite(value) or value != int(value):
        raise _RowError(column, f"is not an integer: {text!r}")
    return int(value)


def _optional(row: dict, column: str, parse):
    text = (row.get(column) or "").strip()
    if not text or text.lower() in ("nan", "none"):
        return None
    return parse(row, column)


class _InvalidRecist(ValueError):
    pass


def _check_plain_name(name: str, column: str) -> None:
    """Refuse a name that could point outside the image folder (``../``, absolute, a drive)."""
    if "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or (
            len(name) > 1 and name[1] == ":"):
        raise _RowError(column, f"must be a plain file name inside the image folder, got "
                                f"{name[:200]!r}")


def _parse_row(
    row: dict, neighbours: int, slice_gap_mm: float, csv_row: int, tol: float
) -> DeepLesionRecord:
    """One row as a record; ``_RowError`` for malformed cells, ``_InvalidRecist`` for
    well-formed numbers that are not a valid RECIST (checked last)."""
    file_name = (row.get("File_name") or "").strip()
    if not file_name:
        raise _RowError("File_name", "is empty")
    _check_plain_name(file_name, "File_name")
    sx, sy, sz = _numbers(row, "Spacing_mm_px_", 3)
    if sx <= 0 or sy <= 0 or sz <= 0:
        raise _RowError("Spacing_mm_px_", f"must be positive, got {row['Spacing_mm_px_']!r}")
    coords = _numbers(row, "Measurement_coordinates", 8)
    bx0, by0, bx1, by1 = _numbers(row, "Bounding_boxes", 4)
    lo, hi = _numbers(row, "DICOM_windows", 2)
    width, height = _numbers(row, "Image_size", 2)
    if not all(1 <= v <= MAX_IMAGE_SIDE and v == int(v) for v in (width, height)):
        raise _RowError("Image_size", f"must be two whole numbers from 1 to {MAX_IMAGE_SIDE}, "
                                      f"got {row['Image_size']!r}")
    split_code = _integer(row, "Train_Val_Test")
    if split_code not in _SPLITS:
        raise _RowError("Train_Val_Test", f"must be 1, 2 or 3, got {split_code}")

    def pair(r, c):
        return tuple(_numbers(r, c, 2))

    def slice_range(r, c):
        a, b = _numbers(r, c, 2)
        return (int(a), int(b))

    def flag(r, c):
        return bool(_integer(r, c))

    def age(r, c):
        return _numbers(r, c, 1)[0]

    gender = (row.get("Patient_gender") or "").strip() or None
    fields = dict(
        file_name=file_name,
        key_slice=_integer(row, "Key_slice_index"),
        box=(by0 - 1.0, bx0 - 1.0, by1 - 1.0, bx1 - 1.0),
        spacing_mm=(sy, sx, sz),
        window=(lo, hi),
        lesion_type=_integer(row, "Coarse_lesion_type"),
        split=_SPLITS[split_code],
        image_size=(int(height), int(width)),
        patient_index=_integer(row, "Patient_index"),
        study_index=_integer(row, "Study_index"),
        series_id=_integer(row, "Series_ID"),
        csv_row=csv_row,
        diameters_px=_optional(row, "Lesion_diameters_Pixel_", pair),
        slice_range=_optional(row, "Slice_range", slice_range),
        possibly_noisy=_optional(row, "Possibly_noisy", flag),
        patient_gender=gender,
        patient_age=_optional(row, "Patient_age", age),
        neighbours=neighbours,
        slice_gap_mm=slice_gap_mm,
    )
    try:
        # Spacing_mm_px_ is (x, y): the row spacing is y's.
        recist = Recist.from_deeplesion(
            coords, spacing=(sy, sx), one_based=True, max_perpendicularity_error=tol
        )
    except ValueError as exc:
        raise _InvalidRecist(str(exc)) from None
    problem = outside_image(recist, fields["image_size"], "the slice (Image_size)")
    if problem:
        raise _InvalidRecist(problem)
    return DeepLesionRecord(recist=recist, **fields)


# -- locating files ---------------------------------------------------------------------------
def _find_csv(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"{path}: no such file or folder")
    candidate = path / "DL_info.csv"
    if candidate.is_file():
        return candidate
    csvs = sorted(p for p in path.glob("*.csv") if p.name.lower().startswith("dl_info"))
    if len(csvs) == 1:
        return csvs[0]
    if not csvs:
        raise ValueError(f"{path}: folder holds no DL_info.csv")
    names = ", ".join(p.name for p in csvs)
    raise ValueError(f"{path}: several DL_info CSV files ({names}); pass one of them")


def _default_images_root(csv_path: Path) -> Path:
    for name in IMAGE_FOLDERS:
        candidate = csv_path.parent / name
        if candidate.is_dir():
            return candidate
    # Key slices or NIfTI files kept beside the table itself.
    return csv_path.parent


class _ImageIndex:
    """Which image files exist under a root, listed once per folder rather than per row."""

    def __init__(self, root: Path):
        self.root = root
        self._listing: dict[Path, frozenset[str]] = {}
        self._volumes: dict[str, list[tuple[int, int, str]]] | None = None

    def names(self, folder: Path) -> frozenset[str]:
        if folder not in self._listing:
            try:
                self._listing[folder] = frozenset(os.listdir(folder))
            except OSError:
                self._listing[folder] = frozenset()
        return self._listing[folder]

    def find(self, file_name: str, image_column: str | None, key_slice: int
             ) -> tuple[Path | None, int | None]:
        """The row's image file, and the key slice's plane when that file is a NIfTI run of
        slices (None for a file of one slice)."""
        found, plane = self._find(file_name, image_column), None
        if found is None:
            found, plane = self._find_volume(file_name, key_slice)
        if found is not None:
            # Names are checked when parsed; this guards the joined path once more, so no
            # spelling of a name can lead outside the image folder.
            inside = os.path.abspath(found)
            root = os.path.abspath(self.root)
            if os.path.commonpath([inside, root]) != root:
                raise ValueError(f"{file_name}: resolves to {found}, outside {self.root}")
        return found, plane

    def _find_volume(self, file_name: str, key_slice: int) -> tuple[Path | None, int | None]:
        """The NIfTI file ``SERIES_FFF-LLL.nii(.gz)`` whose slices FFF..LLL hold the key slice,
        and the key slice's plane in it."""
        if self._volumes is None:
            # One pass over the folder, whatever the number of rows.
            self._volumes = {}
            for name in sorted(self.names(self.root)):
                m = _VOLUME_NAME_RE.match(name)
                if m:
                    self._volumes.setdefault(m.group("series"), []).append(
                        (int(m.group("first")), int(m.group("last")), name))
        match = _FILE_NAME_RE.match(file_name)
        series = match.group("series") if match else Path(file_name).stem
        for first, last, name in self._volumes.get(series, ()):
            if first <= key_slice <= last:
                return self.root / name, key_slice - first
        return None, None

    def _find(self, file_name: str, image_column: str | None) -> Path | None:
        match = _FILE_NAME_RE.match(file_name)
        if match:
            series_dir = self.root / match.group("series")
            nnn = match.group("slice")
            stem_in_series = f"{nnn}{Path(file_name).suffix}"
            if stem_in_series in self.names(series_dir):
                return series_dir / stem_in_series
        flat = self.names(self.root)
        candidates = [file_name]
        if image_column:
            candidates.insert(0, image_column)
        stem = Path(file_name).stem
        candidates += [stem + s for s in _IMAGE_SUFFIXES]
        for name in candidates:
            if name in flat:
                return self.root / name
        return None


# -- public readers -----------------------------------------------------------------------------
def read_deeplesion(
    path,
    images_root=None,
    neighbours: int = 0,
    slice_gap_mm: float = 2.0,
    invalid: str = "warn",
    max_perpendicularity_error: float = 15.0,
    warn_missing: bool = True,
    return_skipped: bool = False,
):
    """Read DeepLesion's ``DL_info.csv`` (or a subset of its rows) into records.

    Parameters
    ----------
    path : str or Path
        The CSV, or a folder holding ``DL_info.csv`` (or a single ``DL_info*.csv``).
    images_root : str or Path, optional
        Where the slices are: ``Images_png`` (with ``PPPPPP_SS_ss/NNN.png`` inside), a flat
        folder of key slices named like ``File_name`` (``.png`` or ``.jpg``; a CSV column
        ``image`` overrides the flat name), or a folder of NIfTI runs of slices
        (``PPPPPP_SS_ss_FFF-LLL.nii.gz``). Default: ``Images_png``, ``Images_nifti``,
        ``images`` or ``Images`` next to the CSV, the first that exists, else the CSV's own
        folder.
    neighbours, slice_gap_mm : int, float
        Stored on each record as the defaults for ``read_deeplesion_slice``.
    invalid : {"warn", "skip", "raise"}
        What to do with a row whose numbers are well formed but are not a valid RECIST (axes
        further from perpendicular than ``max_perpendicularity_error``, a short axis longer
        than the long one, axes that do not cross). DeepLesion has a few dozen such rows.
        ``warn`` skips them with one summary warning, ``skip`` skips them silently, ``raise``
        raises ValueError at the first.
    max_perpendicularity_error : float
        Tolerance in degrees for the angle between the axes (see ``Recist``).
    warn_missing : bool
        Warn (once, with a count and the first few names) about rows whose image was not
        found. Those rows are kept, with ``image_path`` None.
    return_skipped : bool
        Also return the skipped rows.

    Returns
    -------
    records : list of DeepLesionRecord
        In file order.
    skipped : list of SkippedRow
        Only with ``return_skipped``: (csv_row, file_name, reason) of each invalid row.

    Raises
    ------
    ValueError
        When the file is missing or not a CSV with DeepLesion's columns (the missing columns
        are listed), or a row is malformed: a wrong number of values or a value that is not a
        number (the message gives the row number and the column).
    """
    if invalid not in ("warn", "skip", "raise"):
        raise ValueError(f"invalid must be 'warn', 'skip' or 'raise', got {invalid!r}")
    neighbours = int(neighbours)
    if neighbours < 0:
        raise ValueError(f"neighbours must be >= 0, got {neighbours}")
    if not np.isfinite(slice_gap_mm) or slice_gap_mm <= 0:
        raise ValueError(f"slice_gap_mm must be positive, got {slice_gap_mm}")
    csv_path = _find_csv(Path(path))
    if images_root is None:
        root = _default_images_root(csv_path)
    else:
        root = Path(images_root)
        if not root.is_dir():
            raise ValueError(f"images_root {root} is not a folder")
    index = _ImageIndex(root)

    records: list[DeepLesionRecord] = []
    missing: list[str] = []
    bad_windows: list[str] = []
    skipped: list[SkippedRow] = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            absent = [c for c in REQUIRED_COLUMNS if c not in header]
            if absent:
                raise ValueError(
                    f"{csv_path}: not a DeepLesion DL_info CSV, missing column(s): "
                    f"{', '.join(absent)}{_header_hint(header)}"
                )
            for i, row in enumerate(reader, start=1):
                if None in row:
                    raise ValueError(
                        f"{csv_path}: row {i} (line {reader.line_num}) has more fields than "
                        "the header"
                    )
                short = [c for c, v in row.items() if v is None]
                if short:
                    # csv fills a short row's missing fields with None: say so, rather than
                    # call the first of them "not a number".
                    raise ValueError(
                        f"{csv_path}: row {i} (line {reader.line_num}) has "
                        f"{len(row) - len(short)} fields but the header has {len(row)}: "
                        f"{', '.join(short[:3])}{', ...' if len(short) > 3 else ''} missing"
                    )
                try:
                    record = _parse_row(
                        row, neighbours, float(slice_gap_mm), i, max_perpendicularity_error
                    )
                except _RowError as exc:
                    column, problem = exc.args
                    raise ValueError(
                        f"{csv_path}: row {i} (line {reader.line_num}), column {column} {problem}"
                    ) from None
                except _InvalidRecist as exc:
                    if invalid == "raise":
                        raise ValueError(
                            f"{csv_path}: row {i} (line {reader.line_num}), column "
                            f"Measurement_coordinates is not a valid RECIST: {exc}"
                        ) from None
                    skipped.append(SkippedRow(i, (row.get("File_name") or "").strip(), str(exc)))
                    continue
                image_column = (row.get("image") or "").strip()
                if image_column:
                    try:
                        _check_plain_name(image_column, "image")
                    except _RowError as exc:
                        raise ValueError(f"{csv_path}: row {i} (line {reader.line_num}), "
                                         f"column image {exc.args[1]}") from None
                if record.window[0] >= record.window[1]:
                    bad_windows.append(f"row {i} ({record.file_name}: "
                                       f"{row.get('DICOM_windows', '').strip()})")
                    record = replace(record, window=DEFAULT_WINDOW)
                try:
                    image_path, plane = index.find(record.file_name, image_column,
                                                   record.key_slice)
                except ValueError as exc:
                    raise ValueError(f"{csv_path}: row {i} (line {reader.line_num}), "
                                     f"column File_name {exc}") from None
                if image_path is None:
                    missing.append(record.file_name)
                else:
                    record = replace(record, image_path=image_path, volume_slice=plane)
                records.append(record)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path}: not a text CSV file ({exc.reason})") from None
    except csv.Error as exc:
        raise ValueError(f"{csv_path}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{csv_path}: cannot read ({exc.strerror or exc})") from None

    if missing and warn_missing:
        shown = ", ".join(missing[:_LIST_MAX]) + (", ..." if len(missing) > _LIST_MAX else "")
        where = f"under {root}"
        warnings.warn(
            f"{csv_path.name}: {len(missing)} of {len(records)} rows have no image {where}: "
            f"{shown}",
            stacklevel=2,
        )
    if bad_windows:
        shown = ", ".join(bad_windows[:_LIST_MAX]) + (", ..." if len(bad_windows) > _LIST_MAX
                                                      else "")
        warnings.warn(
            f"{csv_path.name}: {len(bad_windows)} row(s) have an empty or inverted "
            f"DICOM_windows (low >= high); the soft-tissue window {DEFAULT_WINDOW} HU is used "
            f"instead: {shown}",
            stacklevel=2,
        )
    if skipped and invalid == "warn":
        counts: dict[str, int] = {}
        for s in skipped:
            counts[s.category] = counts.get(s.category, 0) + 1
        summary = "; ".join(f"{n} {what}" for what, n in counts.items())
        first = ", ".join(f"row {s.csv_row} ({s.file_name})" for s in skipped[:_LIST_MAX])
        warnings.warn(
            f"{csv_path.name}: skipped {len(skipped)} row(s) whose RECIST is invalid: {summary}. "
            f"First: {first}",
            stacklevel=2,
        )
    repeats = _repeated_rows(records)
    if repeats:
        shown = ", ".join(f"{a} and {b}" for a, b in repeats[:_LIST_MAX]) + (
            ", ..." if len(repeats) > _LIST_MAX else "")
        warnings.warn(
            f"{csv_path.name}: {len(repeats)} row(s) repeat another row's measurement on the "
            f"same slice (rows {shown}); each counts as a lesion of its own",
            stacklevel=2,
        )
    if return_skipped:
        return records, skipped
    return records


def _repeated_rows(records) -> list[tuple[int, int]]:
    """(first row, repeating row) for rows measuring the same lesion of the same slice
    again: a copy-paste or two exports merged."""
    first: dict[tuple, int] = {}
    repeats = []
    for rec in records:
        r = rec.recist
        key = (rec.file_name, tuple(np.round(np.concatenate(
            [r.long_axis.ravel(), r.short_axis.ravel()]), 3)))
        if key in first:
            repeats.append((first[key], rec.csv_row))
        else:
            first[key] = rec.csv_row
    return repeats


def _header_hint(header: list) -> str:
    """Why a DL_info header lacks its columns: another separator, or other capitals."""
    from .recist_files import separator_hint

    hint = separator_hint(header, "DL_info.csv")
    if hint:
        return hint
    lower = {h.lower() for h in header}
    if any(c.lower() in lower for c in REQUIRED_COLUMNS if c not in header):
        return " (column names are written as DeepLesion writes them, e.g. File_name)"
    return ""


_SAID = [False]  # whether this process was told how 8-bit slices are read
# Air: the least a CT scanner records inside its field of view.
_AIR_HU = -1024.0


def hu_from_16bit(img: np.ndarray, path) -> np.ndarray:
    """The HU of a 16-bit grey slice, as float32.

    Signed integers are HU as they are. Unsigned ones are DeepLesion's encoding, HU + 32768;
    a slice whose values, read so, would all lie below air (-1024 HU) is stored another way
    (HU + 1024, say), and is refused rather than read as a blank image.

    Raises
    ------
    ValueError
        Naming ``path``, its range of values and how to store the slice.
    """
    if img.dtype.kind == "i":
        return img.astype(np.float32)
    hu = img.astype(np.float32) - np.float32(_PNG16_OFFSET)
    if hu.size and float(hu.max()) < _AIR_HU:
        raise ValueError(
            f"{path}: its values ({int(img.min())} to {int(img.max())}) read as DeepLesion's "
            f"HU + {_PNG16_OFFSET:.0f} would all lie below air ({_AIR_HU:g} HU), so the slice "
            f"is stored another way (HU + 1024, say); save it as HU + {_PNG16_OFFSET:.0f} in "
            f"an unsigned 16-bit PNG, as HU in a signed 16-bit TIFF, or as a NIfTI, MHA or "
            f"DICOM volume")
    return hu


def _decode_hu(path: Path, encoding: str) -> np.ndarray:
    import imageio.v3 as iio

    try:
        img = iio.imread(path)
    except Exception as exc:  # imageio raises many types for a broken file
        raise ValueError(f"{path}: cannot read image ({exc})") from None
    img = np.asarray(img)
    if img.ndim == 3:
        # Grey saved as RGB(A): the channels are equal, so one of them is the image.
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"{path}: expected a 2D slice, got shape {img.shape}")
    kind = encoding
    if kind == "auto":
        kind = "8bit" if img.dtype == np.uint8 else "16bit"
        if kind == "8bit" and not _SAID[0]:
            # Once a run: a series saved after a display window reads with wrong HU, and
            # nothing in its pixels says so.
            _SAID[0] = True
            warnings.warn(f"{path}: 8-bit slices are read as HU {_HU8_LO:g} to {_HU8_HI:g} "
                          f"spread evenly over 0-255 (DeepLesion's own PNGs are 16-bit, HU + "
                          f"32768); slices saved after a display window read with wrong HU",
                          stacklevel=2)
    if kind == "16bit":
        if img.dtype == np.uint8:
            raise ValueError(f"{path}: 8-bit image, but a 16-bit (HU + 32768) PNG was expected")
        return hu_from_16bit(img, path)
    if kind == "8bit":
        if img.dtype != np.uint8:
            raise ValueError(f"{path}: {img.dtype} image, but an 8-bit image was expected")
        hu = img.astype(np.float32) * np.float32((_HU8_HI - _HU8_LO) / 255.0) + np.float32(_HU8_LO)
        return hu.astype(np.float32)
    raise ValueError(f"encoding must be 'auto', '16bit' or '8bit', got {encoding!r}")


def _check_size(image: np.ndarray, record: DeepLesionRecord, path: Path) -> np.ndarray:
    """The RECIST and box are in the CSV's pixel grid: a slice of another size does not fit."""
    if tuple(image.shape[-2:]) != tuple(record.image_size):
        rows, cols = record.image_size
        raise ValueError(f"{path}: the slice is {image.shape[-1]} x {image.shape[-2]} pixels "
                         f"but Image_size of row {record.csv_row} says {cols} x {rows}")
    return image


def _available_slices(record: DeepLesionRecord) -> tuple[dict[int, Path], int]:
    """Slice numbers next to the key slice's file: ``NNN.png`` in its series folder, or
    ``PPPPPP_SS_ss_NNN.<ext>`` in a flat folder."""
    path = record.image_path
    folder = path.parent
    series = record.series_name
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    found: dict[int, Path] = {}
    if folder.name == series:
        pattern = re.compile(r"^(\d+)" + re.escape(path.suffix) + "$", re.IGNORECASE)
    else:
        pattern = re.compile(re.escape(series) + r"_(\d+)" + re.escape(path.suffix) + "$")
    for name in names:
        m = pattern.match(name)
        if m:
            found[int(m.group(1))] = folder / name
    key = _FILE_NAME_RE.match(path.name)
    key_number = int(key.group("slice")) if key else int(path.stem)
    found.setdefault(key_number, path)
    return found, key_number


def _nearest_slices(numbers, key_number: int, k: int, gap: float, interval: float) -> list[int]:
    """For channels -k..k, the existing slice number nearest to ``key + j * gap / interval``."""
    numbers = np.array(sorted(numbers))
    chosen = []
    for j in range(-k, k + 1):
        target = key_number + j * gap / interval
        dist = np.abs(numbers - target)
        # Ties go towards the key slice, so both sides of a symmetric stack stay symmetric.
        best = numbers[np.lexsort((np.abs(numbers - key_number), dist))[0]]
        chosen.append(int(best))
    return chosen


def _volume_reader(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot read image ({itk_message(exc)})") from None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise ValueError(f"{path}: expected a grey volume of slices, got "
                         f"{reader.GetDimension()}D with {reader.GetNumberOfComponents()} "
                         "component(s)")
    return reader


def deeplesion_volume_depth(path) -> int:
    """How many slices a DeepLesion NIfTI file holds (from its header alone)."""
    return int(_volume_reader(Path(path)).GetSize()[2])


def read_deeplesion_volume_planes(path, planes, row: int | None = None) -> np.ndarray:
    """Planes of a DeepLesion NIfTI file of consecutive slices, in the PNG slices' layout.

    The file's third axis runs over the slices. Of its first two axes, the one pointing most
    along the patient's y axis (anterior to posterior) becomes the rows and the other the
    columns, each turned to run as y and x do, as the PNG slices and their RECIST do: for
    ``DL_save_nifti.py``'s files this is the transpose of each plane as SimpleITK returns it.

    Parameters
    ----------
    path : str or Path
    planes : sequence of int
        0-based planes along the file's third axis.
    row : int, optional
        The table row asking, for messages.

    Returns
    -------
    ndarray of float32
        ``(len(planes), rows, cols)``, HU as stored.

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read, is not a grey volume, or lacks a plane.
    """
    import SimpleITK as sitk

    path = Path(path)
    reader = _volume_reader(path)
    size = list(reader.GetSize())
    planes = [int(p) for p in planes]
    lo, hi = min(planes), max(planes)
    if lo < 0 or hi >= size[2]:
        asked = f" for row {row}" if row is not None else ""
        wanted = hi if hi >= size[2] else lo
        raise ValueError(f"{path}: holds slices 0 to {size[2] - 1}, not slice {wanted}{asked}")
    reader.SetExtractIndex([0, 0, lo])
    reader.SetExtractSize([size[0], size[1], hi - lo + 1])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot read image ({itk_message(exc)})") from None
    arr = sitk.GetArrayFromImage(image)  # (plane, axis 1, axis 0)
    arr = np.stack([arr[p - lo] for p in planes]).astype(np.float32, copy=False)
    transpose, flip_rows, flip_cols = _png_layout(image.GetDirection())
    if transpose:
        arr = arr.transpose(0, 2, 1)
    if flip_rows:
        arr = arr[:, ::-1, :]
    if flip_cols:
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


def _png_layout(direction) -> tuple[bool, bool, bool]:
    """How a plane as SimpleITK returns it becomes the PNG slice's rows and columns: (swap
    its axes, then flip rows, flip columns). Of the file's first two axes, the one pointing
    most along the patient's y axis holds the rows."""
    axes = np.asarray(direction, dtype=float).reshape(3, 3)  # column i: axis i
    row_axis = 0 if abs(axes[1, 0]) >= abs(axes[1, 1]) else 1
    return row_axis == 0, bool(axes[1, row_axis] < 0), bool(axes[0, 1 - row_axis] < 0)


def volume_run(name: str) -> tuple[str, int, int] | None:
    """(series, first, last) of a NIfTI file of consecutive slices named
    ``PPPPPP_SS_ss_FFF-LLL[.nii[.gz]]`` (a file name or napari's layer name for it)."""
    text = str(name)
    if not re.search(r"\.nii(\.gz)?$", text, re.IGNORECASE):
        text += ".nii.gz"
    m = _VOLUME_NAME_RE.match(text)
    if m is None or int(m.group("first")) > int(m.group("last")):
        return None
    return m.group("series"), int(m.group("first")), int(m.group("last"))


def recist_on_volume(record: DeepLesionRecord, grid: dict) -> tuple[int, Recist]:
    """A row's RECIST on its NIfTI file of consecutive slices as napari shows the file: the
    plane (``key - FFF``, FFF from the file name or the row's ``Slice_range``) and the RECIST
    turned from the PNG slice's rows and columns to the file's (the inverse of
    ``read_deeplesion_volume_planes``).

    Parameters
    ----------
    record : DeepLesionRecord
        With ``volume_slice``, or ``slice_range`` when its file was not looked for.
    grid : dict
        The file's voxel grid (``volumes.read_grid``, a layer's ``metadata["grid"]``).
    """
    plane = record.volume_slice
    if plane is None:
        if record.slice_range is None:
            raise ValueError(f"row {record.csv_row} ({record.file_name}) has no Slice_range "
                             "to place its key slice in a volume")
        plane = record.key_slice - record.slice_range[0]
    transpose, flip_rows, flip_cols = _png_layout(grid["direction"])
    rows, cols = record.image_size
    r = record.recist

    def place(points):
        pts = np.asarray(points, dtype=float).copy()
        if flip_rows:
            pts[:, 0] = rows - 1 - pts[:, 0]
        if flip_cols:
            pts[:, 1] = cols - 1 - pts[:, 1]
        return pts[:, ::-1] if transpose else pts

    spacing = tuple(r.spacing)[::-1] if transpose else tuple(r.spacing)
    return int(plane), Recist(place(r.long_axis), place(r.short_axis), spacing)


def png_plane_to_volume(plane, grid: dict) -> np.ndarray:
    """A plane in the PNG slices' layout (a mask predicted on a key slice read with
    ``read_deeplesion_volume_planes``) turned back to the layout of its NIfTI file's planes
    (``volumes.read_grid``'s grid; the inverse of the reading)."""
    plane = np.asarray(plane)
    transpose, flip_rows, flip_cols = _png_layout(grid["direction"])
    if flip_rows:
        plane = plane[::-1, :]
    if flip_cols:
        plane = plane[:, ::-1]
    return np.ascontiguousarray(plane.T if transpose else plane)


def read_deeplesion_slice(
    record: DeepLesionRecord,
    neighbours: int | None = None,
    slice_gap_mm: float | None = None,
    encoding: str = "auto",
) -> np.ndarray:
    """The key CT slice of a record in HU, optionally with neighbouring slices as channels.

    Parameters
    ----------
    record : DeepLesionRecord
        Needs ``image_path``.
    neighbours : int, optional
        ``k`` slices either side; default the record's ``neighbours``. The result then has
        ``2k + 1`` channels, ordered from ``-k`` to ``+k`` with the key slice in the middle.
    slice_gap_mm : float, optional
        Distance between channels in mm (default the record's). The slice for offset ``j`` is
        the existing file whose number is nearest to ``key + j * gap / slice_interval``: with
        a 5 mm slice interval and a 2 mm gap, the first neighbours are the key slice itself.
        Beyond the first or last file of the series the outermost existing file is repeated,
        and a folder of key slices alone gives the key slice in every channel.
    encoding : {"auto", "16bit", "8bit"}
        ``16bit``: HU = value - 32768 (DeepLesion's PNGs). ``8bit``: values 0..255 mapped
        linearly onto HU -1024..3071. ``auto`` picks by the file's bit depth.

    Returns
    -------
    ndarray of float32
        ``(H, W)`` when ``neighbours`` is 0, else ``(2k + 1, H, W)``.

    Raises
    ------
    ValueError
        When the record has no image, a file cannot be read, or neighbouring slices differ in
        size.
    """
    if record.image_path is None:
        raise ValueError(f"{record.file_name}: image not found (record has no image_path)")
    k = record.neighbours if neighbours is None else int(neighbours)
    gap = record.slice_gap_mm if slice_gap_mm is None else float(slice_gap_mm)
    if k < 0:
        raise ValueError(f"neighbours must be >= 0, got {k}")
    if not np.isfinite(gap) or gap <= 0:
        raise ValueError(f"slice_gap_mm must be positive, got {gap}")
    path = Path(record.image_path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (row {record.csv_row}, {record.file_name})")
    if record.volume_slice is not None:
        planes = [record.volume_slice]
        if k:
            depth = deeplesion_volume_depth(path)
            if not 0 <= record.volume_slice < depth:
                raise ValueError(f"{path}: holds {depth} slices, not the key slice of row "
                                 f"{record.csv_row} ({record.file_name})")
            planes = _nearest_slices(range(depth), record.volume_slice, k, gap,
                                     record.spacing_mm[2])
        stack = read_deeplesion_volume_planes(path, planes, row=record.csv_row)
        _check_size(stack, record, path)
        return stack if k else stack[0]
    if k == 0:
        return _check_size(_decode_hu(path, encoding), record, path)

    found, key_number = _available_slices(record)
    chosen = _nearest_slices(found, key_number, k, gap, record.spacing_mm[2])
    cache: dict[int, np.ndarray] = {}
    channels = []
    for number in chosen:
        if number not in cache:
            cache[number] = _decode_hu(found[number], encoding)
        channels.append(cache[number])
    shapes = {c.shape for c in channels}
    if len(shapes) > 1:
        raise ValueError(f"{path.parent}: neighbouring slices differ in size: {sorted(shapes)}")
    _check_size(channels[0], record, path)
    return np.stack(channels).astype(np.float32, copy=False)


def recist_table(records, slices=None):
    """DeepLesion rows as a ``RecistTable``: each row's RECIST (with its own pixel size), its
    ``File_name`` as the image, its CSV row number less one as the lesion id, and its lesion
    type, split, key slice, patient, study and series as per-lesion features.

    Parameters
    ----------
    records : sequence of DeepLesionRecord
    slices : sequence of int, optional
        Each lesion's index in a stack of key slices.

    Returns
    -------
    RecistTable
    """
    from .recist_files import RecistTable

    rows = list(records)
    return RecistTable(
        recists=[r.recist for r in rows],
        lesion_ids=[r.csv_row - 1 for r in rows],
        slices=None if slices is None else list(slices),
        images=[r.file_name for r in rows],
        features={
            "lesion_type": [r.lesion_type_name for r in rows],
            "split": [r.split for r in rows],
            "key_slice": [r.key_slice for r in rows],
            "patient_index": [r.patient_index for r in rows],
            "study_index": [r.study_index for r in rows],
            "series_id": [r.series_id for r in rows],
        },
    )
