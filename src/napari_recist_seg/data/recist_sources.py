"""Lesion tables without masks: every RECIST row with the CT slice stack it sits on.

Two kinds of table are read:

- DeepLesion's ``DL_info.csv``, its slices in ``Images_png/PPPPPP_SS_ss/NNN.png`` beside it
  (16-bit PNGs, HU = value - 32768), in its NIfTI release ``Images_nifti/PPPPPP_SS_ss_FFF-LLL
  .nii.gz``, or in a folder given as ``images``;
- this package's RECIST ``.csv`` / ``.json`` (see ``recist_files``) whose rows name their
  image, relative to the file's folder or to ``images``: a 2D image (PNG, JPEG, TIFF, BMP; grey
  or colour, 8 or 16 bit) or a volume (NIfTI, MetaImage, NRRD, a DICOM file or a folder holding
  a DICOM series), with the row's ``slice``.

Nothing is read beyond file listings and headers until a lesion's image is asked for: each
lesion gets a ``SliceStack``, a small picklable description of its key slice and neighbours
that reads them when called. Datasets built on it stream the images from disk.

Channels
--------
CT gives ``2 * neighbours + 1`` channels, the key slice in the middle. DeepLesion takes the
neighbouring files of the series folder (``NNN - j``; a missing file is replaced by the one
nearest to it towards the key slice, so a lone key slice is repeated). A volume takes the
slices nearest to ``j * slice_gap_mm`` from the key slice (clamped at the volume's ends).
A 2D image gives its own channels: grey 1, colour 3 (grey images join colour ones as colour
when a table holds both). 16-bit grey 2D images are CT stored as DeepLesion stores it
(HU = value - 32768); 8-bit and colour images are used as they are.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..core.recist import Recist, outside_image
from .deeplesion import hu_from_16bit
from .volumes import itk_message

__all__ = [
    "PATIENT_COLUMNS",
    "LesionRow",
    "LesionTable",
    "SliceStack",
    "is_deeplesion_table",
    "is_lesion_table",
    "parse_window",
    "read_lesion_table",
]

#: Feature columns of a RECIST file that name the patient, used to keep a patient's lesions
#: on one side of a training / validation split (compared without case, spaces as
#: underscores).
PATIENT_COLUMNS = ("patient", "patient_id", "patientid", "patient_index", "patient_name")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".dicom",
                    ".ima")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_WINDOW_RE = re.compile(r"^\s*[\[(]?\s*([-+0-9.eE]+)\s*[,;\s]\s*([-+0-9.eE]+)\s*[\])]?\s*$")


# -- one lesion's slices --------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceStack:
    """Where one key slice and its neighbouring slices are; calling it reads them.

    Attributes
    ----------
    kind : {"deeplesion", "deeplesion_volume", "image", "volume", "dicom"}
    paths : tuple of str
        DeepLesion: the PNG file of each channel. ``image``, ``volume`` and
        ``deeplesion_volume`` (DeepLesion's NIfTI files): the one file. ``dicom``: the DICOM
        file of each channel.
    planes : tuple of int
        ``volume`` and ``deeplesion_volume``: the slice index of each channel.
    colour : bool
        ``image``: give 3 channels (grey repeated) rather than 1.
    shape : tuple of int
        (rows, cols) of the slice, from the file's header or the table.
    """

    kind: str
    paths: tuple[str, ...]
    planes: tuple[int, ...] = ()
    colour: bool = False
    shape: tuple[int, int] | None = None

    def __call__(self) -> np.ndarray:
        return self.read()

    def grid(self) -> dict | None:
        """The voxel grid of the scan this slice lies on (``volumes.read_grid``); None for
        2D images and DeepLesion's PNG slices, which belong to no scan file. DeepLesion's NIfTI
        files hold their planes in another layout than their PNG slices (see
        ``deeplesion.png_plane_to_volume``)."""
        from .volumes import read_grid

        if self.kind in ("volume", "deeplesion_volume"):
            return read_grid(self.paths[0])
        if self.kind == "dicom":
            return read_grid(Path(self.paths[0]).parent)
        return None

    def read(self) -> np.ndarray:
        """The slices as ``(C, rows, cols)``: float32 HU for CT, uint8 for 8-bit images.

        Raises
        ------
        ValueError
            Naming the file, when it cannot be read or is not the size the table says.
        """
        if self.kind == "deeplesion":
            out = _stacked([(p, _read_png_hu(p)) for p in self.paths], self.shape)
        elif self.kind == "deeplesion_volume":
            from .deeplesion import read_deeplesion_volume_planes

            out = read_deeplesion_volume_planes(self.paths[0], self.planes)
        elif self.kind == "image":
            out = _read_2d(self.paths[0], self.colour)
        elif self.kind == "volume":
            out = _read_volume_planes(self.paths[0], self.planes)
        elif self.kind == "dicom":
            cache: dict[str, np.ndarray] = {}
            for p in self.paths:
                if p not in cache:
                    cache[p] = _read_volume_planes(p, (0,))[0]
            out = _stacked([(p, cache[p]) for p in self.paths], self.shape)
        else:
            raise ValueError(f"unknown slice stack kind {self.kind!r}")
        if self.shape is not None and tuple(out.shape[-2:]) != tuple(self.shape):
            raise ValueError(f"{self.paths[0]}: the slice is {out.shape[-2]} x {out.shape[-1]} "
                             f"pixels (rows x cols), the table says {self.shape[0]} x "
                             f"{self.shape[1]}")
        return out


def _stacked(planes, shape) -> np.ndarray:
    """``(path, plane)`` pairs stacked as channels; a plane of another size than the table's
    (or, without one, than the first) is named with both sizes."""
    expected = tuple(shape) if shape is not None else planes[0][1].shape
    source = "the table says" if shape is not None else "the first slice is"
    for path, plane in planes:
        if plane.shape != expected:
            raise ValueError(f"{path}: the slice is {plane.shape[0]} x {plane.shape[1]} pixels "
                             f"(rows x cols), {source} {expected[0]} x {expected[1]}")
    return np.stack([plane for _, plane in planes])


def _read_png_hu(path: str) -> np.ndarray:
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types for a broken file
        raise ValueError(f"{path}: cannot read image ({exc})") from None
    if img.ndim == 3:
        img = img[..., 0]  # grey stored as RGB(A): the channels are equal
    if img.ndim != 2:
        raise ValueError(f"{path}: expected a 2D slice, got shape {img.shape}")
    if img.dtype == np.uint8:
        # 8-bit copies of DeepLesion slices map HU -1024..3071 onto 0..255.
        return (img.astype(np.float32) * np.float32(4095.0 / 255.0) - np.float32(1024.0))
    return hu_from_16bit(img, path)


def _read_2d(path: str, colour: bool) -> np.ndarray:
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types for a broken file
        raise ValueError(f"{path}: cannot read image ({exc})") from None
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        rgb = img[..., :3]
        if rgb.dtype != np.uint8:
            rgb = _to_uint8(rgb)
        if not colour:
            # A grey picture saved in colour (the table found its channels equal).
            return np.round(rgb.mean(axis=-1)).astype(np.uint8)[None]
        return np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
    if img.ndim == 3 and img.shape[-1] == 2:
        img = img[..., 0]  # grey + alpha
    if img.ndim != 2:
        raise ValueError(f"{path}: expected a 2D grey or colour image, got shape {img.shape}")
    if img.dtype == bool:
        img = img.astype(np.uint8) * np.uint8(255)
    if img.dtype == np.uint8:
        return np.repeat(img[None], 3, axis=0) if colour else img[None]
    if colour:
        raise ValueError(f"{path}: a 16-bit grey (CT) image in a table of colour images")
    if img.dtype.kind == "f":
        return img.astype(np.float32)[None]  # floating point: taken as HU
    return hu_from_16bit(img, path)[None]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype.kind in "iu":
        return (img.astype(np.float64) * (255.0 / np.iinfo(img.dtype).max)).round().astype(
            np.uint8)
    return (np.clip(img.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)


def _sitk():
    import SimpleITK as sitk

    return sitk


def _read_volume_planes(path: str, planes) -> np.ndarray:
    """Slices ``planes`` of a volume (z index of napari's (z, row, col) order), float32 HU."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = list(reader.GetSize())
        lo, hi = min(planes), max(planes)
        _refuse_time_series(size, path)
        if len(size) == 3:
            # Only the slices needed: ITK streams them from formats that allow it.
            reader.SetExtractIndex([0, 0, int(lo)])
            reader.SetExtractSize([size[0], size[1], int(hi - lo + 1)])
        elif lo != 0 or hi != 0:
            raise ValueError(f"{path}: a single slice has no slice {hi}")
        image = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot read image ({itk_message(exc)})") from None
    arr = sitk.GetArrayFromImage(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a grey volume, got array shape {arr.shape}")
    return np.stack([arr[int(z) - int(lo)] for z in planes]).astype(np.float32)


# -- rows and tables ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LesionRow:
    """One lesion of a table.

    Attributes
    ----------
    recist : Recist
        In the key slice's (row, col) pixels, with its pixel spacing in mm.
    image : str
        The image as the table names it: DeepLesion's ``File_name``, or the RECIST file's
        ``image`` cell.
    slice : int or None
        The key slice of a volume (index along napari's first axis).
    row : int
        Data row number in the table (1 = the first lesion).
    lesion_id : int
    stack : int
        Index into ``LesionTable.stacks`` of the slices this lesion sits on.
    window : tuple of float or None
        Display window (lo, hi) in HU the table gives for this lesion.
    split : str or None
        "train", "val" or "test": DeepLesion's ``Train_Val_Test``, or a RECIST file's
        ``Train_Val_Test`` or ``split`` column (1, 2, 3 or the words); None without one.
    patient : str
        Patient (or, without a patient column, the image): a split never separates one.
    mask_name : str
        File name (relative to an output folder) for this key slice's predicted mask.
    spacing_known : bool
        Whether the pixel spacing comes from the table or the image (else it is 1 px).
    """

    recist: Recist
    image: str
    slice: int | None
    row: int
    lesion_id: int
    stack: int
    window: tuple[float, float] | None
    split: str | None
    patient: str
    mask_name: str
    spacing_known: bool = True


@dataclass
class LesionTable:
    """The lesions of a table and the slice stacks they sit on.

    Attributes
    ----------
    path : Path
        The table file.
    kind : {"deeplesion", "recist"}
    rows : list of LesionRow
    stacks : list of SliceStack
        One per key slice; lesions on the same key slice share one.
    neighbours : int
        Neighbouring slices on each side, as channels.
    slice_gap_mm : float
        Distance of neighbouring channels in a volume.
    colour : bool
        2D colour images (3 channels).
    """

    path: Path
    kind: str
    rows: list[LesionRow]
    stacks: list[SliceStack]
    neighbours: int = 1
    slice_gap_mm: float = 2.0
    colour: bool = False
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def recists(self) -> list[Recist]:
        return [r.recist for r in self.rows]

    @property
    def stack_index(self) -> list[int]:
        return [r.stack for r in self.rows]

    @property
    def in_channels(self) -> int:
        """Network input channels this table's lesions give."""
        kinds = {s.kind for s in self.stacks}
        if kinds <= {"image"}:
            if any(s.colour for s in self.stacks):
                return 3
            return 1
        return 2 * self.neighbours + 1

    def windows(self, window=None) -> list:
        """The HU window of each lesion: ``window`` for all when given, else each row's own
        (None where the table gives none: soft tissue for CT, none for 8-bit images)."""
        if window is not None and not (isinstance(window, str) and window == "auto"):
            w = parse_window(window)
            return [w] * len(self.rows)
        return [r.window for r in self.rows]


def parse_window(window) -> tuple[float, float]:
    """(lo, hi) HU from a preset name (``soft_tissue`` or ``soft-tissue``, ``lung`` ...), a
    ``"lo,hi"`` string or a pair of numbers."""
    from .crops import resolve_window

    if isinstance(window, str):
        match = _WINDOW_RE.match(window)
        if match:
            return resolve_window((float(match.group(1)), float(match.group(2))))
        return resolve_window(window.strip().replace("-", "_"))
    return resolve_window(window)


def is_lesion_table(path) -> bool:
    """Whether ``path`` is a table ``read_lesion_table`` reads: a ``.csv`` or ``.json`` file,
    or a folder holding ``DL_info.csv``. Never raises."""
    try:
        p = Path(path)
        if p.is_dir():
            return (p / "DL_info.csv").is_file()
        return p.suffix.lower() in (".csv", ".json")
    except (OSError, TypeError, ValueError):
        return False


def is_deeplesion_table(path) -> bool:
    """Whether ``path`` is DeepLesion's ``DL_info.csv`` (a CSV with its ``File_name`` or
    ``Measurement_coordinates`` column, whatever its name) or a folder holding one.
    Never raises."""
    try:
        p = Path(path)
        if p.is_dir():
            return (p / "DL_info.csv").is_file()
        return _is_deeplesion_csv(p)
    except (OSError, TypeError, ValueError):
        return False


def _is_deeplesion_csv(path: Path) -> bool:
    if path.is_dir():
        return True
    if path.suffix.lower() != ".csv":
        return False
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            head = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    # In other capitals or separated otherwise it is still DeepLesion's, and its reader
    # says what is wrong with it in DeepLesion's terms.
    cols = {c.strip().lower() for c in re.split(r"[,;\t]", head)}
    return "file_name" in cols or "measurement_coordinates" in cols


def read_lesion_table(path, images=None, *, neighbours: int = 1, slice_gap_mm: float = 2.0,
                      colour: bool | None = None) -> LesionTable:
    """Read a DeepLesion ``DL_info.csv`` or a RECIST ``.csv``/``.json`` naming its images.

    Every row's image is found (and, for a volume, its slice checked against the volume's
    header) here; no pixel is read.

    Parameters
    ----------
    path : str or Path
        The table, or a folder holding ``DL_info.csv``.
    images : str or Path, optional
        Where the images are: for DeepLesion the ``Images_png`` or ``Images_nifti`` folder
        (default: beside the CSV), for a RECIST file the folder its ``image`` names are
        relative to (default: the file's folder). A name never leads outside that folder.
    neighbours : int
        Slices on each side of the key slice, as extra channels (1: three channels).
    slice_gap_mm : float
        Volumes: distance of neighbouring channels (the slices nearest to it are taken).
    colour : bool, optional
        Give 2D images 3 channels (True) or their own (None: colour when any image is colour).

    Returns
    -------
    LesionTable

    Raises
    ------
    ValueError
        Naming the file, the row and the problem: a missing column, an image that is not
        there or leads outside its folder, a volume row without a slice or with a slice
        outside the volume.
    """
    neighbours = int(neighbours)
    if neighbours < 0:
        raise ValueError(f"neighbours must be at least 0, got {neighbours}")
    if not np.isfinite(slice_gap_mm) or slice_gap_mm <= 0:
        raise ValueError(f"slice_gap_mm must be positive, got {slice_gap_mm}")
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    if _is_deeplesion_csv(p):
        return _read_deeplesion_table(p, images, neighbours)
    return _read_recist_table(p, images, neighbours, float(slice_gap_mm), colour)


# -- DeepLesion -----------------------------------------------------------------------------------
def _read_deeplesion_table(path: Path, images, neighbours: int) -> LesionTable:
    from .deeplesion import IMAGE_FOLDERS, read_deeplesion

    if images is not None and not Path(images).is_dir():
        raise ValueError(f"--images {images}: no such folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_deeplesion(path, images_root=images, warn_missing=False)
    notes = [str(w.message) for w in caught]
    for note in notes:
        warnings.warn(note, stacklevel=3)
    csv_path = path / "DL_info.csv" if path.is_dir() else path
    missing = [r for r in records if r.image_path is None]
    if missing:
        first = missing[0]
        root = images if images is not None else (
            f"{csv_path.parent} (in {', '.join(IMAGE_FOLDERS)} or the folder itself)")
        more = f" ({len(missing) - 1} more rows lack theirs too)" if len(missing) > 1 else ""
        raise ValueError(f"{csv_path}: row {first.csv_row} ({first.file_name}): image not found "
                         f"under {root}{more}")
    if not records:
        raise ValueError(f"{csv_path}: no lesion rows")
    stacks: list[SliceStack] = []
    by_file: dict[str, int] = {}
    listings: dict[Path, set[str]] = {}
    rows = []
    for rec in records:
        if rec.file_name not in by_file:
            by_file[rec.file_name] = len(stacks)
            if rec.volume_slice is not None:
                stacks.append(_deeplesion_volume_stack(rec, neighbours))
            else:
                files = _deeplesion_neighbours(Path(rec.image_path), neighbours, listings)
                stacks.append(SliceStack("deeplesion", tuple(str(f) for f in files),
                                         shape=tuple(rec.image_size)))
        rows.append(LesionRow(
            recist=rec.recist, image=rec.file_name, slice=None, row=rec.csv_row,
            lesion_id=rec.csv_row - 1, stack=by_file[rec.file_name], window=tuple(rec.window),
            split=rec.split, patient=str(rec.patient_index), mask_name=rec.file_name,
        ))
    return LesionTable(csv_path, "deeplesion", rows, stacks, neighbours, 2.0, False, notes)


def _deeplesion_volume_stack(rec, k: int) -> SliceStack:
    """The key slice's plane of its NIfTI file and, for ``k``, the planes next to it (the
    outermost repeated at the file's ends, as for missing PNG files)."""
    from .deeplesion import deeplesion_volume_depth

    planes = [rec.volume_slice]
    if k:
        depth = deeplesion_volume_depth(rec.image_path)
        planes = [min(max(rec.volume_slice + j, 0), depth - 1) for j in range(-k, k + 1)]
    return SliceStack("deeplesion_volume", (str(rec.image_path),), planes=tuple(planes),
                      shape=tuple(rec.image_size))


def _deeplesion_neighbours(key: Path, k: int, listings: dict) -> list[Path]:
    """The files of channels -k..k: ``NNN + j`` in the key slice's folder, else the nearest
    existing one towards the key slice."""
    folder = key.parent
    if folder not in listings:
        try:
            listings[folder] = set(os.listdir(folder))
        except OSError:
            listings[folder] = set()
    names = listings[folder]
    match = re.match(r"^(?P<head>.*?)(?P<num>\d+)(?P<ext>\.[^.]+)$", key.name)
    if match is None:
        return [key] * (2 * k + 1)
    head, num, ext = match.group("head"), match.group("num"), match.group("ext")
    number = int(num)
    out = []
    for j in range(-k, k + 1):
        chosen = key
        for step in range(abs(j), 0, -1):
            n = number + (step if j > 0 else -step)
            if n < 0:
                continue
            name = f"{head}{n:0{len(num)}d}{ext}"
            if name in names:
                chosen = folder / name
                break
        out.append(chosen)
    return out


# -- RECIST files ---------------------------------------------------------------------------------
def safe_join(base: Path, name: str, where: str) -> Path:
    """``base / name``, refusing (ValueError starting with ``where``) a name that could lead
    outside ``base``: absolute, with ``..``, or a drive."""
    clean = name.strip().replace("\\", "/")
    parts = PurePosixPath(clean).parts
    if (not clean or clean.startswith("/") or "\x00" in clean or ".." in parts
            or (len(clean) > 1 and clean[1] == ":")):
        raise ValueError(f"{where}: image {name[:200]!r} must be a path inside {base}: a "
                         f"table's image names never lead outside its image folder; write "
                         f"them relative to a folder that holds all the images and give that "
                         f"folder with --images")
    joined = base.joinpath(*parts)
    # Absolute, so that a table named without a folder (its base ".") compares alike.
    inside, root = os.path.abspath(joined), os.path.abspath(base)
    if os.path.commonpath([inside, root]) != root:
        raise ValueError(f"{where}: image {name[:200]!r} resolves outside {base}")
    return joined


def _volume_suffix(path: Path) -> str | None:
    low = path.name.lower()
    for s in _VOLUME_SUFFIXES:
        if low.endswith(s):
            return s
    return None


def image_stem(path: Path) -> str:
    """A file name without its image suffix (``.nii.gz`` whole), as tables name stems."""
    suffix = _volume_suffix(path)
    if suffix:
        return path.name[: len(path.name) - len(suffix)]
    return path.stem if path.is_file() or path.suffix else path.name


@dataclass
class _VolumeInfo:
    kind: str  # "volume" or "dicom"
    n_slices: int
    spacing: tuple[float, float, float]  # (slice, row, col) mm
    shape: tuple[int, int]
    files: list[str] = field(default_factory=list)


def _volume_info(path: Path, where: str) -> _VolumeInfo:
    sitk = _sitk()
    try:
        if path.is_dir():
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not ids:
                raise ValueError(f"{where}: {path} holds no DICOM series")
            files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), sid)
                         for sid in ids), key=len)
            first = _header(files[0])
            dz = 1.0
            if len(files) > 1:
                second = _header(files[1])
                dz = float(np.linalg.norm(np.subtract(second.GetOrigin(), first.GetOrigin())))
                dz = dz if dz > 0 else float(first.GetSpacing()[2] if first.GetDimension() > 2
                                             else 1.0)
            sx, sy = first.GetSpacing()[:2]
            size = first.GetSize()
            return _VolumeInfo("dicom", len(files), (dz, float(sy), float(sx)),
                               (int(size[1]), int(size[0])), list(files))
        reader = _header(str(path))
        size = reader.GetSize()
        spacing = reader.GetSpacing()
        _refuse_time_series(size, path, where)
        if len(size) == 2:
            return _VolumeInfo("volume", 1, (1.0, float(spacing[1]), float(spacing[0])),
                               (int(size[1]), int(size[0])))
        return _VolumeInfo("volume", int(size[2]),
                           (float(spacing[2]), float(spacing[1]), float(spacing[0])),
                           (int(size[1]), int(size[0])))
    except RuntimeError as exc:
        raise ValueError(f"{where}: cannot read {path} ({itk_message(exc)})") from None


def _refuse_time_series(size, path, where: str = "") -> None:
    if len(size) > 3:
        raise ValueError(f"{where + ': ' if where else ''}{path} is a {len(size)}D image "
                         f"({' x '.join(map(str, size))} voxels); RECIST rows need a 2D "
                         f"slice or a 3D volume")


def _header(path: str):
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def image_size(path, where: str = "") -> tuple[int, int]:
    """A 2D image's (rows, cols) from its header alone; ValueError naming ``where`` (or the
    file) when it cannot be read."""
    return _probe_2d(Path(path), where or str(path))[2]


# Largest difference between the channels of a grey picture saved in colour (JPEG rounding).
_GREY_TOLERANCE = 3


def _grey_content(im) -> bool:
    """Whether a colour image holds a grey picture (equal channels), such as CT key slices
    saved as RGB JPEG: read at an eighth of its size where the format allows (JPEG)."""
    w, h = im.size
    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool(np.abs(rgb - rgb[..., :1]).max(initial=0) <= _GREY_TOLERANCE)


def _probe_2d(path: Path, where: str) -> tuple[bool, bool, tuple[int, int]]:
    """(colour, 16-bit grey, (rows, cols)) from the image's header; a colour image holding a
    grey picture counts as grey."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            colour = mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "RGBX", "PA")
            if colour and _grey_content(im):
                colour = False
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{where}: cannot read image {path} ({exc})") from None
    deep = mode.startswith("I") or mode == "F"
    return colour, deep, (int(h), int(w))


def _row_window(features: dict, i: int, where: str):
    for name in ("DICOM_windows", "window"):
        if name in features and features[name][i] not in (None, ""):
            value = features[name][i]
            try:
                return parse_window(str(value))
            except ValueError as exc:
                raise ValueError(f"{where}: column {name} {exc}") from None
    return None


#: Feature columns of a RECIST file that give each row's split, as DeepLesion's
#: ``Train_Val_Test`` does (compared without case, spaces as underscores).
SPLIT_COLUMNS = ("train_val_test", "split")
_SPLIT_WORDS = {"1": "train", "train": "train", "training": "train",
                "2": "val", "val": "val", "validation": "val",
                "3": "test", "test": "test", "testing": "test"}


def _named_column(features: dict, names) -> str | None:
    """The first feature column called one of ``names``, without regard to case or to
    spaces for underscores ("Patient ID" is ``patient_id``)."""
    plain = {"_".join(str(k).lower().split()): k for k in features}
    return next((plain[name] for name in names if name in plain), None)


def _row_split(features: dict, column: str | None, i: int, where: str) -> str | None:
    """Row ``i``'s split ("train", "val" or "test") from the table's split ``column``."""
    if column is None:
        return None
    value = features[column][i]
    text = "" if value is None else str(value).strip().lower()
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if text not in _SPLIT_WORDS:
        raise ValueError(f"{where}: column {column} must be 1, 2 or 3 (train, validation, "
                         f"test), got {value!r}")
    return _SPLIT_WORDS[text]




def header_spacing(base: Path, headers: dict | None = None):
    """``spacing_of`` for ``read_recists``: a volume's (row, col) pixel size from its header,
    so that a lesion stating none is checked in mm; None for a 2D image or a file that
    cannot be read (the table reader names those problems itself). The headers read are
    kept in ``headers`` (name to header or None), for a caller to reuse."""
    cache: dict = {} if headers is None else headers

    def spacing_of(name: str):
        if name not in cache:
            cache[name] = None
            try:
                file = safe_join(base, name, name)
                if file.exists() and (file.is_dir() or _volume_suffix(file) is not None):
                    cache[name] = _volume_info(file, name)
            except ValueError:
                pass
        info = cache[name]
        return None if info is None else tuple(info.spacing[1:])

    return spacing_of


def _mm(spacing) -> str:
    return " x ".join(f"{float(v):g}" for v in spacing) + " mm"


def _read_recist_table(path: Path, images, neighbours: int, gap: float,
                       colour: bool | None) -> LesionTable:
    from .recist_files import read_recists

    base = Path(images) if images is not None else path.parent
    if not base.is_dir():
        raise ValueError(f"--images {base}: no such folder")
    headers: dict = {}  # each scan's header, read once
    table = read_recists(path, spacing_of=header_spacing(base, headers))
    if table.images is None:
        raise ValueError(f"{path}: column image is missing or empty: each row must name the "
                         f"image its lesion is on (a file or folder relative to {base})")
    patient_col = _named_column(table.features, PATIENT_COLUMNS)
    split_col = _named_column(table.features, SPLIT_COLUMNS)
    n = len(table)

    probes: dict[str, tuple] = {}
    plan = []  # per row: (kind, resolved path, slice, recist, spacing_known)
    other_size = []  # rows whose pixel size is not their scan header's
    for i in range(n):
        where = f"{path}: row {i + 1} (lesion {table.lesion_ids[i]})"
        name = table.images[i]
        if not name.strip():
            raise ValueError(f"{where}: no image")
        file = safe_join(base, name, where)
        if not file.exists():
            # Names are read from the table's own folder unless --images says otherwise.
            hint = ("" if images is not None else
                    "; if the images are elsewhere, give their folder with --images (names "
                    "are relative to it)")
            raise ValueError(f"{where}: image {name!r} not found in {base}{hint}")
        slc = None if table.slices is None else table.slices[i]
        recist = table.recists[i]
        known = table.knows_spacing(i)
        is_volume = file.is_dir() or _volume_suffix(file) is not None
        if name not in probes:
            probes[name] = ((headers.get(name) or _volume_info(file, where),) if is_volume
                            else _probe_2d(file, where))
        if is_volume:
            (info,) = probes[name]
            if slc is None:
                if info.n_slices == 1:
                    slc = 0
                else:
                    raise ValueError(f"{where}: image {name!r} is a volume of {info.n_slices} "
                                     f"slices but the row has no slice")
            if not 0 <= slc < info.n_slices:
                raise ValueError(f"{where}: slice {slc} is outside {name!r}, which has "
                                 f"{info.n_slices} slices (0 to {info.n_slices - 1})")
            if not known:  # read_recists found no header (unreadable volume): use it now
                recist = recist.with_spacing(info.spacing[1:])
                known = True
            elif not np.allclose(recist.spacing, info.spacing[1:], rtol=0.01):
                other_size.append((i + 1, recist.spacing, info.spacing[1:], name))
            plan.append(("volume", file, slc, recist, known))
        else:
            if slc not in (None, 0):
                raise ValueError(f"{where}: image {name!r} is a 2D image, it has no slice {slc}")
            plan.append(("image", file, None, recist, known))
    if other_size:
        row, own, header, name = other_size[0]
        warnings.warn(f"{path}: {len(other_size)} row(s) give a pixel size other than their "
                      f"scan's header, e.g. row {row}: {_mm(own)} where {name!r} says "
                      f"{_mm(header)}; each row's own size is used", stacklevel=3)
    kinds = {p[0] for p in plan}
    if kinds == {"image", "volume"} and neighbours:
        raise ValueError(f"{path}: rows mix 2D images and volumes; their channel counts differ "
                         f"(1 or 3 against {2 * neighbours + 1}): use one kind per table")
    any_colour = any(probes[table.images[i]][0] for i, p in enumerate(plan) if p[0] == "image")
    use_colour = any_colour if colour is None else bool(colour)
    if use_colour:
        deep = [table.images[i] for i, p in enumerate(plan)
                if p[0] == "image" and probes[table.images[i]][1]]
        if deep:
            raise ValueError(f"{path}: rows mix colour images and 16-bit grey (CT) images, "
                             f"e.g. {deep[0]!r}: use one kind per table")

    # Rows naming one file in two spellings ("a.nii.gz", "./a.nii.gz") are one scan: they
    # share its first spelling, which keys its slices, outputs and mask names.
    spelling: dict[Path, str] = {}
    names = [spelling.setdefault(Path(p[1]).resolve(), table.images[i])
             for i, p in enumerate(plan)]
    stacks: list[SliceStack] = []
    by_key: dict[tuple, int] = {}
    rows = []
    mask_names = _mask_names([(names[i], p[2], p[0]) for i, p in enumerate(plan)])
    for i, (kind, file, slc, recist, known) in enumerate(plan):
        name = names[i]
        key = (name, slc)
        if key not in by_key:
            by_key[key] = len(stacks)
            if kind == "image":
                stacks.append(SliceStack("image", (str(file),), colour=use_colour,
                                         shape=probes[table.images[i]][2]))
            else:
                stacks.append(_volume_stack(file, probes[table.images[i]][0], slc,
                                            neighbours, gap))
        shape = stacks[by_key[key]].shape
        problem = outside_image(recist, shape, repr(name)) if shape is not None else ""
        if problem:
            raise ValueError(f"{path}: row {i + 1} (lesion {table.lesion_ids[i]}): {problem}")
        patient = str(table.features[patient_col][i]) if patient_col else name
        where = f"{path}: row {i + 1} (lesion {table.lesion_ids[i]})"
        rows.append(LesionRow(
            recist=recist, image=name, slice=slc, row=i + 1, lesion_id=table.lesion_ids[i],
            stack=by_key[key], window=_row_window(table.features, i, where),
            split=_row_split(table.features, split_col, i, where), patient=patient,
            mask_name=mask_names[i], spacing_known=known,
        ))
    if not rows:
        raise ValueError(f"{path}: no lesion rows")
    return LesionTable(path, "recist", rows, stacks, neighbours, gap, use_colour)


def _volume_stack(file: Path, info: _VolumeInfo, z: int, k: int, gap: float) -> SliceStack:
    step = gap / info.spacing[0]
    planes = tuple(int(np.clip(z + round(j * step), 0, info.n_slices - 1))
                   for j in range(-k, k + 1))
    if info.kind == "dicom":
        return SliceStack("dicom", tuple(info.files[p] for p in planes), shape=info.shape)
    return SliceStack("volume", (str(file),), planes=planes, shape=info.shape)


def _mask_names(items) -> list[str]:
    """``<stem>_mask.png`` per 2D image and ``<stem>_slice<z>_mask.png`` per volume slice;
    images of the same stem in different folders keep their folders."""
    stems = {}
    for name, _, _ in items:
        stems.setdefault(name, image_stem(Path(name.replace("\\", "/"))))
    count = Counter(stems.values())
    out = []
    for name, slc, kind in items:
        stem = stems[name]
        if count[stem] > 1:
            parent = PurePosixPath(name.replace("\\", "/")).parent
            stem = str(parent / stem) if str(parent) != "." else stem
        out.append(f"{stem}_mask.png" if kind == "image" else f"{stem}_slice{slc}_mask.png")
    return out

