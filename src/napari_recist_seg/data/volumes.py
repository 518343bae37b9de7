"""Clinical images through SimpleITK: DICOM (series or single file), NIfTI, MetaImage, NRRD.

Arrays come back in napari's axis order, (slice, row, col) for volumes and (row, col) for single
slices, with the voxel size in millimetres as ``scale`` in the same order. CT values stay in
Hounsfield units: SimpleITK applies the DICOM rescale slope and intercept while reading.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import plain_permissions

__all__ = ["LABEL_SUFFIXES", "MedicalImage", "ScanLabels", "grid_fits", "grid_shape",
           "is_medical_image_path", "read_grid", "read_medical_image", "write_label_image"]

#: Single-file formats a label image is written in (``write_label_image``).
LABEL_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")

# Suffixes SimpleITK reads as medical volumes (compared in lower case).
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".dicom", ".ima")
_FORMAT_NAMES = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
}
# A folder is checked for DICOM files by looking at this many of its files at most, so a
# large folder of something else does not cost a read of every file.
_MAX_PROBE = 32
# How many series a warning names before "...".
_LIST_MAX = 4

# DICOM tags (group|element, as SimpleITK's metadata dictionary spells them).
_TAG_MODALITY = "0008|0060"
_TAG_WINDOW_CENTER = "0028|1050"
_TAG_WINDOW_WIDTH = "0028|1051"
_TAG_SERIES_DESCRIPTION = "0008|103e"
_TAG_SERIES_UID = "0020|000e"
_TAG_RESCALE_INTERCEPT = "0028|1052"
_TAG_RESCALE_SLOPE = "0028|1053"


@dataclass
class MedicalImage:
    """An image read from a clinical file, in napari's axis order.

    Attributes
    ----------
    array : ndarray
        ``(slice, row, col)`` for a volume, ``(row, col)`` for a single slice; a trailing
        channel axis for colour (vector) images. CT stays in HU: integer data that fits is
        ``int16``, anything else ``float32`` (``uint8`` is kept as it is).
    scale : tuple of float
        Voxel size in mm for each spatial axis, same order as ``array`` (napari's ``scale``).
    origin : tuple of float
        Physical position (mm) of the first voxel's centre, same order as ``scale`` (napari's
        ``translate``). The direction cosines are not applied; they are in ``metadata``.
    name : str
        File (or folder) name without its suffix.
    metadata : dict
        ``format``, ``source`` and, where the file says so: ``modality`` (e.g. ``"CT"``),
        ``window`` (lo, hi) display window, ``window_center_width``, ``series_description``,
        ``series_uid``, ``rescale`` (slope, intercept), ``direction`` (ITK order, row-major
        3x3 or 2x2), ``n_series`` for a folder holding more than one DICOM series,
        ``slice_spacing_mm`` when a single slice was squeezed to 2D, and always ``grid``:
        the file's voxel grid as ITK states it (``size``, ``spacing``, ``origin`` in (x, y, z)
        order and ``direction``), with which ``write_label_image`` puts masks back on it.
    """

    array: np.ndarray
    scale: tuple[float, ...]
    origin: tuple[float, ...]
    name: str
    metadata: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float]:
        """In-plane pixel size (row, col) in mm: the spacing a ``Recist`` needs."""
        return (float(self.scale[-2]), float(self.scale[-1]))

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.scale)

    def layer_kwargs(self) -> dict:
        """Keyword arguments for a napari Image layer (``scale``, ``translate``, ``name``, ...)."""
        kwargs = {
            "scale": self.scale,
            "translate": self.origin,
            "name": self.name,
            "metadata": dict(self.metadata),
        }
        if self.array.ndim > len(self.scale):
            kwargs["rgb"] = True
        window = self.metadata.get("window")
        if window is not None:
            kwargs["contrast_limits"] = tuple(window)
        return kwargs


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _folder_has_dicom(path: Path) -> bool:
    try:
        entries = sorted(p for p in path.iterdir() if p.is_file())
    except OSError:
        return False
    if any(p.suffix.lower() in (".dcm", ".dicom", ".ima") for p in entries):
        return True
    return any(_has_dicom_preamble(p) for p in entries[:_MAX_PROBE])


def is_medical_image_path(path) -> bool:
    """Whether ``path`` looks like something ``read_medical_image`` opens. Never raises.

    True for a file with a NIfTI, MetaImage, NRRD or DICOM suffix, a file of any name with the
    DICOM preamble (``DICM`` at byte 128), and a folder holding DICOM files.
    """
    try:
        if isinstance(path, (list, tuple)):
            return False
        p = Path(path)
        if p.is_dir():
            return _folder_has_dicom(p)
        if _suffix(p) in _VOLUME_SUFFIXES:
            return True
        return p.is_file() and _has_dicom_preamble(p)
    except (OSError, TypeError, ValueError):
        return False


def _sitk():
    import SimpleITK as sitk

    return sitk


def _metadata_value(getter, has, key: str) -> str | None:
    if not has(key):
        return None
    value = getter(key).strip()
    return value or None


def _first_number(text: str | None) -> float | None:
    # Multi-valued DICOM strings are separated by backslashes ("40\\400"); use the first.
    if text is None:
        return None
    try:
        return float(text.split("\\")[0].strip())
    except ValueError:
        return None


def _dicom_metadata(getter, has) -> dict:
    meta: dict = {}
    modality = _metadata_value(getter, has, _TAG_MODALITY)
    if modality:
        meta["modality"] = modality
    centre = _first_number(_metadata_value(getter, has, _TAG_WINDOW_CENTER))
    width = _first_number(_metadata_value(getter, has, _TAG_WINDOW_WIDTH))
    if centre is not None and width is not None and width > 0:
        meta["window_center_width"] = (centre, width)
        meta["window"] = (centre - width / 2.0, centre + width / 2.0)
    for key, tag in (
        ("series_description", _TAG_SERIES_DESCRIPTION),
        ("series_uid", _TAG_SERIES_UID),
    ):
        value = _metadata_value(getter, has, tag)
        if value:
            meta[key] = value
    intercept = _first_number(_metadata_value(getter, has, _TAG_RESCALE_INTERCEPT))
    slope = _first_number(_metadata_value(getter, has, _TAG_RESCALE_SLOPE))
    if intercept is not None or slope is not None:
        meta["rescale"] = (1.0 if slope is None else slope, 0.0 if intercept is None else intercept)
    return meta


def _compact_dtype(arr: np.ndarray) -> np.ndarray:
    """int16 for integer data that fits (CT in HU), float32 for the rest; uint8 and bool kept."""
    if arr.dtype in (np.uint8, np.bool_, np.int16, np.float32):
        return arr
    if arr.dtype.kind in "iu":
        if arr.size == 0:
            return arr.astype(np.int16)
        lo, hi = arr.min(), arr.max()
        info = np.iinfo(np.int16)
        if info.min <= lo and hi <= info.max:
            return arr.astype(np.int16)
    return arr.astype(np.float32)


def _series_files(sitk, folder: Path) -> tuple[list[str], int, list[str]]:
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise ValueError(f"{folder}: cannot list DICOM series ({itk_message(exc)})") from None
    if not series_ids:
        raise ValueError(f"{folder}: folder holds no DICOM series")
    files_per_series = {
        sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids
    }
    best = max(series_ids, key=lambda sid: len(files_per_series[sid]))
    # GDCM silently leaves out files it cannot parse (a cut or corrupt slice): name them, as a
    # series with a slice missing is not what the folder holds.
    listed = {os.path.realpath(f) for sid in series_ids for f in files_per_series[sid]}
    left_out = sorted(
        entry.name for entry in folder.iterdir()
        if entry.is_file() and entry.name.upper() != "DICOMDIR"
        and (entry.suffix.lower() in (".dcm", ".dicom", ".ima") or _has_dicom_preamble(entry))
        and os.path.realpath(entry) not in listed
    )
    if left_out:
        names = ", ".join(left_out[:_LIST_MAX]) + (", ..." if len(left_out) > _LIST_MAX else "")
        warnings.warn(
            f"{folder}: {len(left_out)} DICOM file(s) could not be read and were left out of "
            f"the series: {names}",
            stacklevel=3,
        )
    if len(series_ids) > 1:
        counts = ", ".join(
            f"{sid} ({len(files_per_series[sid])} files)" for sid in series_ids[:_LIST_MAX]
        ) + (", ..." if len(series_ids) > _LIST_MAX else "")
        warnings.warn(
            f"{folder}: {len(series_ids)} DICOM series found ({counts}); reading the largest, "
            f"{best}",
            stacklevel=3,
        )
    return list(files_per_series[best]), len(series_ids), left_out


def _check_even_slices(folder: Path, positions: list, normal, left_out: list[str],
                       nominal: float | None = None) -> None:
    """Refuse a series whose slices are unevenly spaced because files could not be read, and
    warn of one unevenly spaced as scanned.

    A volume is one even grid: read as one, the slices after a gap sit one slice interval too
    near, and a RECIST table's slice numbers then point at other planes. The usual gap is the
    median one, or the header's slice spacing where there are too few gaps to tell.
    """
    if len(positions) < 2 or any(p is None for p in positions):
        return
    along = np.sort(np.asarray(positions, float) @ np.asarray(normal, float))
    gaps = np.diff(along)
    typical = float(np.median(gaps)) if len(gaps) >= 2 else nominal
    if not typical or typical <= 0 or np.all(
            np.abs(gaps - typical) <= max(0.1 * typical, 0.01)):
        return
    where = f"slice gaps from {gaps.min():.3g} to {gaps.max():.3g} mm"
    if left_out:
        names = ", ".join(left_out[:_LIST_MAX]) + (", ..." if len(left_out) > _LIST_MAX else "")
        raise ValueError(
            f"{folder}: slices are missing ({where}): {names} could not be read; as one "
            "volume the slices after the gap would be misplaced and slice numbers would not "
            "match the scan: repair or replace the damaged file(s)")
    holes = np.flatnonzero(gaps >= 1.5 * typical)
    if len(holes):
        # A gap of whole slice intervals is a file missing from the folder (an export that
        # dropped one): read on, every slice after it would be off its plane.
        k = int(holes[0])
        raise ValueError(
            f"{folder}: slices are missing: {gaps[k]:.3g} mm between the slices at "
            f"{along[k]:.4g} and {along[k + 1]:.4g} mm, where the others are {typical:.3g} mm "
            f"apart ({len(holes)} such gap(s)); as one volume the slices after a gap would be "
            "misplaced and slice numbers would not match the scan: export the series again "
            "with all its files")
    # SimpleITK spreads the slices evenly over the series' extent.
    even = (along[-1] - along[0]) / (len(along) - 1)
    off = float(np.max(np.abs(along - (along[0] + even * np.arange(len(along))))))
    warnings.warn(f"{folder}: the slices are not evenly spaced ({where}); the volume is read "
                  f"on an even grid of {even:.4g} mm, which puts slices up to {off:.2g} mm "
                  f"from where they were scanned", stacklevel=3)


def _unreadable(path: Path, exc: RuntimeError) -> ValueError:
    """The error for a file SimpleITK cannot read, naming it and why."""
    if path.is_file() and _has_dicom_preamble(path):
        return ValueError(f"{path}: cannot read image: the file begins as DICOM but its "
                          f"image cannot be read; it is truncated or damaged "
                          f"({itk_message(exc)})")
    return ValueError(f"{path}: cannot read image ({itk_message(exc)})")


def _slice_position(text) -> tuple[float, float, float] | None:
    try:
        values = tuple(float(v) for v in str(text).replace(",", "\\").split("\\"))
    except ValueError:
        return None
    return values if len(values) == 3 else None


_ITK_ERROR_RE = re.compile(r"(?:ITK ERROR|sitk::ERROR):\s*(?:\w+\(0x[0-9a-f]+\):\s*)?(.*)")


def itk_message(exc: Exception) -> str:
    """The useful part of an ITK error: without the C++ file/line prefix and trailer."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "Description:" in ln:
            return ln.split("Description:", 1)[1].strip()
    for ln in lines:
        match = _ITK_ERROR_RE.search(ln)
        if match and match.group(1):
            return match.group(1).strip()
    if lines:
        return lines[-1][:300]
    return type(exc).__name__


def _nifti_expected_size(header: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file's header promises (offset + voxel data), None if not NIfTI."""
    for endian in ("<", ">"):
        (size,) = struct.unpack(endian + "i", header[:4])
        if size == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = struct.unpack(endian + "f", header[108:112])[0]
        elif size == 540 and len(header) >= 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
        else:
            continue
        n = dims[0]
        if not 1 <= n <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1 : n + 1]):
            return None
        voxels = 1
        for d in dims[1 : n + 1]:
            voxels *= max(int(d), 1)
        return int(offset) + voxels * bitpix // 8
    return None


def _check_nifti_complete(path: Path) -> None:
    """Raise for a truncated NIfTI: ITK reads one without complaint, padding with zeros."""
    gz = path.name.lower().endswith(".gz")
    try:
        if gz:
            with gzip.open(path, "rb") as fh:
                header = fh.read(540)
        else:
            with open(path, "rb") as fh:
                header = fh.read(540)
        expected = _nifti_expected_size(header)
    except EOFError as exc:
        # The compressed stream ends early. gzip reads ahead, so even a header that is there
        # raises this for a small file; ITK would read what there is and pad it with zeros.
        raise ValueError(f"{path}: compressed data is truncated ({exc})") from None
    except (OSError, zlib.error, struct.error):
        return  # not readable as NIfTI at all: SimpleITK gives the reason
    if expected is None:
        return
    if not gz:
        actual = path.stat().st_size
        if actual < expected:
            raise ValueError(
                f"{path}: file is truncated ({actual} bytes, the header needs {expected})"
            )
        return
    # gzip's trailer holds the uncompressed size mod 2**32: a cheap check before a full one.
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", fh.read(4))
    if isize == expected % 2**32:
        return
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: compressed data is truncated or corrupt ({exc})") from None
    if total < expected:
        raise ValueError(f"{path}: file is truncated ({total} bytes, the header needs {expected})")


def read_medical_image(path) -> MedicalImage:
    """Read a DICOM series folder, a DICOM file, NIfTI, MetaImage or NRRD.

    Parameters
    ----------
    path : str or Path
        A folder of DICOM files (the largest series is read; a warning names the others), a
        single DICOM file, or a ``.nii``/``.nii.gz``/``.mha``/``.mhd``/``.nrrd`` file. Other
        formats SimpleITK understands are tried too.

    Returns
    -------
    MedicalImage
        A single slice comes back 2D: a length-1 slice axis is dropped.

    Raises
    ------
    ValueError
        When the path does not exist, or the file cannot be read (the message names the file
        and gives SimpleITK's reason).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    sitk = _sitk()
    meta: dict = {"source": str(path)}
    try:
        if path.is_dir():
            files, n_series, left_out = _series_files(sitk, path)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            reader.LoadPrivateTagsOn()
            image = reader.Execute()
            positions = [_slice_position(reader.GetMetaData(i, "0020|0032"))
                         if reader.HasMetaDataKey(i, "0020|0032") else None
                         for i in range(len(files))]
            nominal = None
            for tag in ("0018|0088", "0018|0050"):  # spacing between slices, thickness
                if nominal is None and reader.HasMetaDataKey(0, tag):
                    with contextlib.suppress(ValueError):
                        nominal = float(reader.GetMetaData(0, tag))
            _check_even_slices(path, positions, image.GetDirection()[2::3], left_out, nominal)
            meta.update(
                _dicom_metadata(
                    lambda k: reader.GetMetaData(0, k), lambda k: reader.HasMetaDataKey(0, k)
                )
            )
            meta["format"] = "dicom-series"
            meta["n_files"] = len(files)
            if n_series > 1:
                meta["n_series"] = n_series
            name = path.name
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.LoadPrivateTagsOn()
            reader.ReadImageInformation()
            suffix = _suffix(path)
            if reader.GetImageIO() == "NiftiImageIO" or suffix in (".nii", ".nii.gz"):
                _check_nifti_complete(path)
            is_dicom = reader.GetImageIO() == "GDCMImageIO" or suffix in (".dcm", ".dicom", ".ima")
            image = reader.Execute()
            if is_dicom:
                meta.update(_dicom_metadata(image.GetMetaData, image.HasMetaDataKey))
                meta["format"] = "dicom"
            else:
                meta["format"] = _FORMAT_NAMES.get(suffix, reader.GetImageIO() or "unknown")
            name = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None

    arr = sitk.GetArrayFromImage(image)
    meta["direction"] = tuple(float(d) for d in image.GetDirection())
    meta["grid"] = {"size": [int(v) for v in image.GetSize()],
                    "spacing": [float(v) for v in image.GetSpacing()],
                    "origin": [float(v) for v in image.GetOrigin()],
                    "direction": list(meta["direction"])}
    scale, origin = grid_placement(meta["grid"])
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        arr = arr[0]
        meta["slice_spacing_mm"] = float(image.GetSpacing()[2])
    if arr.size == 0:
        raise ValueError(f"{path}: image is empty (size {image.GetSize()})")
    if np.any(np.asarray(scale) <= 0) or not np.all(np.isfinite(scale)):
        raise ValueError(f"{path}: invalid voxel spacing {scale}")
    return MedicalImage(
        array=_compact_dtype(arr), scale=scale, origin=origin, name=name, metadata=meta
    )


def read_grid(path) -> dict:
    """The voxel grid of a medical image (``MedicalImage.metadata["grid"]``), from a file's
    header alone; a DICOM folder's series is read (its largest, as ``read_medical_image``)."""
    path = Path(path)
    if path.is_dir():
        return read_medical_image(path).metadata["grid"]
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None
    return {"size": [int(v) for v in reader.GetSize()],
            "spacing": [float(v) for v in reader.GetSpacing()],
            "origin": [float(v) for v in reader.GetOrigin()],
            "direction": [float(v) for v in reader.GetDirection()]}


def grid_placement(grid: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """napari's ``scale`` and ``translate`` of an image on a voxel grid: ITK keeps spacing
    and origin in (x, y, z), numpy's array is (z, y, x), so they are reversed; a single
    slice is squeezed as the reader squeezes it."""
    scale = tuple(float(v) for v in reversed(grid["spacing"]))
    origin = tuple(float(v) for v in reversed(grid["origin"]))
    if len(scale) == 3 and int(grid["size"][2]) == 1:
        scale, origin = scale[1:], origin[1:]
    return scale, origin


def grid_shape(grid: dict) -> tuple[int, ...]:
    """napari's array shape of a voxel grid, a single slice squeezed as the reader does."""
    shape = tuple(reversed([int(v) for v in grid["size"]]))
    return shape[1:] if len(shape) == 3 and shape[0] == 1 else shape


def grid_fits(grid, shape) -> bool:
    """Whether an array of ``shape`` lies on ``grid`` (a ``MedicalImage.metadata["grid"]``)."""
    try:
        return grid_shape(grid) == tuple(int(v) for v in shape)
    except (KeyError, TypeError, ValueError):
        return False


def write_label_image(path, labels, *, grid: dict | None = None, scale=None,
                      translate=None) -> Path:
    """Write a label image (masks) that medical viewers place where its image is.

    Parameters
    ----------
    path : str or Path
        ``.nii``, ``.nii.gz``, ``.mha`` or ``.nrrd``. Written atomically: an existing file is
        replaced only once the new one is complete, and a failed write leaves it as it was.
    labels : array_like of int or bool
        ``(slice, row, col)`` or ``(row, col)``, in napari's order; 0 is background.
    grid : dict, optional
        The voxel grid of the image the labels were drawn on (``MedicalImage.metadata
        ["grid"]``): size, spacing, origin and direction are written as that file states
        them, so the masks overlay it in 3D Slicer or ITK-SNAP even where its axes are not the
        scanner's. Without it, ``scale`` and ``translate`` (napari's, in mm) give the spacing
        and origin, and the axes are taken as the scanner's.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        For another suffix, labels that are not whole numbers from 0 up, or labels whose shape
        is not the grid's (each named with the path).
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in LABEL_SUFFIXES:
        raise ValueError(f"{path}: label images are written as {', '.join(LABEL_SUFFIXES)}, "
                         f"not {suffix or 'a file without a suffix'}")
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: labels must be 2D or 3D, got shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{path}: labels must be whole numbers, got {arr.dtype}")
    top = int(arr.max()) if arr.size else 0
    if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
        raise ValueError(f"{path}: labels must be 0 or more, found {int(arr.min())}")
    arr = arr.astype(np.uint8 if top < 2 ** 8 else np.uint16 if top < 2 ** 16 else np.uint32)
    sitk = _sitk()
    if grid is not None:
        if not grid_fits(grid, arr.shape):
            raise ValueError(f"{path}: labels of shape {arr.shape} do not lie on the image's "
                             f"grid of shape {grid_shape(grid)}")
        if len(grid["size"]) == 3 and arr.ndim == 2:
            arr = arr[None]  # the single slice the reader squeezed
        image = sitk.GetImageFromArray(arr)
        image.SetSpacing([float(v) for v in grid["spacing"]])
        image.SetOrigin([float(v) for v in grid["origin"]])
        image.SetDirection([float(v) for v in grid["direction"]])
    else:
        image = sitk.GetImageFromArray(arr)
        n = arr.ndim
        spacing = [1.0] * n if scale is None else [float(v) for v in list(scale)[-n:]]
        origin = [0.0] * n if translate is None else [float(v) for v in list(translate)[-n:]]
        image.SetSpacing(list(reversed(spacing)))
        image.SetOrigin(list(reversed(origin)))
    return _write_atomically(sitk, image, path, suffix)


class ScanLabels:
    """A scan's label image, filled lesion by lesion on its voxel grid, then written.

    Parameters
    ----------
    grid : dict
        The scan's voxel grid (``read_grid``, ``MedicalImage.metadata["grid"]``).
    dtype : numpy dtype
        Wide enough for the largest label.
    """

    def __init__(self, grid: dict, dtype=np.uint16):
        self.grid = grid
        self.array = np.zeros(grid_shape(grid), dtype)

    def add(self, mask, label: int, slice_index=None) -> None:
        """Set ``label`` where the 2D ``mask`` is true, on slice ``slice_index`` of a volume
        (a 2D scan has one plane)."""
        plane = self.array if self.array.ndim == 2 else self.array[int(slice_index or 0)]
        plane[np.asarray(mask, dtype=bool)] = label

    def write(self, path) -> Path:
        """``write_label_image`` on the scan's grid."""
        return write_label_image(path, self.array, grid=self.grid)


def _write_atomically(sitk, image, path: Path, suffix: str) -> Path:
    import tempfile

    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder; name a file to write")
    # SimpleITK chooses the format by the file name, so the temporary file keeps the suffix.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, True)
        plain_permissions(tmp)
        os.replace(tmp, path)
    except (RuntimeError, OSError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        reason = itk_message(exc) if isinstance(exc, RuntimeError) else exc.strerror or exc
        raise ValueError(f"cannot write {path}: {reason}") from None
    return path
