"""napari reader: RECIST files, DeepLesion's ``DL_info.csv``, and clinical images.

``get_reader`` only looks at names and the first bytes of a file, never raises, and returns
None for anything that is not ours (a CSV that is neither a RECIST file of this package nor
a DeepLesion table, a JSON of another program, ...). Errors while reading a file that is ours
become a napari notification, not a traceback.
"""

from __future__ import annotations

import re
import warnings
from functools import partial
from pathlib import Path

import numpy as np

from .layer_units import META_KEY, ct_contrast_limits, units_for
from .notifications import notify_error, notify_warning
from .recist_layers import SAVED_ANGLE_TOLERANCE, saved_placement, table_layer_tuple

__all__ = ["deeplesion_layers", "get_reader", "read_path"]

_RECIST_MARKER = "# napari-recist-seg recist csv"
_RECIST_COLUMNS = ("lesion_id", "long_r0", "long_c0", "short_r0", "short_c0")
_DEEPLESION_COLUMNS = ("File_name", "Measurement_coordinates", "Spacing_mm_px_")
#: Columns only DeepLesion's table has: a CSV with several of them is taken for one, so that
#: a missing required column is named rather than the file refused without a word.
_DEEPLESION_ONLY = ("File_name", "Measurement_coordinates", "Spacing_mm_px_", "Key_slice_index",
                    "Bounding_boxes", "Lesion_diameters_Pixel_", "Normalized_lesion_location",
                    "Coarse_lesion_type", "Possibly_noisy", "DICOM_windows", "Train_Val_Test")
_PEEK_CHARS = 8192


def _peek(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return fh.read(_PEEK_CHARS)


def _csv_header(text: str) -> list[str]:
    import csv

    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return [h.strip() for h in next(csv.reader([line]))]
    return []


def _classify_csv(path: Path) -> str | None:
    text = _peek(path)
    if text.lstrip().startswith(_RECIST_MARKER):
        return "recist"
    header = _csv_header(text)
    if all(c in header for c in _RECIST_COLUMNS):
        return "recist"
    if all(c in header for c in _DEEPLESION_COLUMNS):
        return "deeplesion"
    if sum(c in header for c in _DEEPLESION_ONLY) >= 3:
        return "deeplesion"
    return None


def _deeplesion_folder(path: Path) -> bool:
    if (path / "DL_info.csv").is_file():
        return True
    return len([p for p in path.glob("*.csv") if p.name.lower().startswith("dl_info")]) == 1


def _classify(path) -> str | None:
    from ..data.volumes import is_medical_image_path

    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        if _deeplesion_folder(p):
            return "deeplesion"
        return "volume" if is_medical_image_path(p) else None
    if not p.is_file():
        return None
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _classify_csv(p)
    if suffix == ".json":
        return "recist" if '"napari-recist-seg-recist"' in _peek(p) else None
    return "volume" if is_medical_image_path(p) else None


def get_reader(path):
    """Return a reader function for ``path`` when it is ours, else None. Never raises."""
    try:
        kind = _classify(path)
    except Exception:  # deciding must never fail; anything odd is simply not ours
        return None
    if kind is None:
        return None
    return partial(read_path, kind=kind)


def read_path(path, kind: str | None = None):
    """Read ``path`` into napari LayerData tuples; errors become a notification.

    Returns ``[(None,)]`` (napari's "nothing to add") when reading fails.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    try:
        kind = kind or _classify(path)
        if kind is None:
            raise ValueError("not a RECIST file, DeepLesion table or medical image")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layers = _READERS[kind](path)
        for w in caught:
            if issubclass(w.category, UserWarning):
                notify_warning(str(w.message))
        return layers
    except Exception as exc:  # a broken file must not crash the viewer
        notify_error(f"napari-recist-seg could not open {path.name}: {exc}")
        return [(None,)]


#: A RECIST file naming more images than this opens as one layer: a layer per image would
#: bury the layer list.
MAX_IMAGE_LAYERS = 20


def _read_recist_file(path: Path):
    from ..data.recist_files import read_recists
    from ..data.recist_sources import header_spacing

    # A lesion on a scan that states no pixel size is measured in its header's.
    table = read_recists(path, max_perpendicularity_error=SAVED_ANGLE_TOLERANCE,
                         spacing_of=header_spacing(path.parent))
    if not len(table):
        raise ValueError("the file holds no lesion")
    groups = table.image_groups()
    if not groups or len(groups) > MAX_IMAGE_LAYERS:
        if groups:
            notify_warning(f"{path.name} names {len(groups)} images: its lesions open as one "
                           f"layer in pixels; to place one image's lesions on it, open the "
                           f"image and use Import RECIST file in the RECIST widget.")
        placement = {} if groups else _placement(path.parent, None, table)
        return [table_layer_tuple(table, name=f"{_stem(path)} RECIST", **placement)]
    # One layer per image, on that image's grid when the file beside the table is a scan, so
    # that the lines lie on the scan as napari opens it (its scale and origin).
    layers = []
    for name, rows in groups.items():
        lesions = table.subset(rows)
        placement = _placement(path.parent, name, lesions)
        own = _own_pixel_sizes(lesions, placement.get("scale"))
        if own:
            notify_warning(f"{path.name}: {own} of {name}, whose header says "
                           f"{_mm(placement['scale'][-2:])}. The lines lie on the scan's "
                           f"pixels and are measured with the file's sizes, as recist-seg's "
                           f"commands measure them.")
        layers.append(table_layer_tuple(lesions, name=f"{_stem(Path(name))} RECIST",
                                        per_line=bool(own), **placement))
    return layers


def _own_pixel_sizes(lesions, scale) -> str:
    """What the file says of the pixel size of lesions whose stated size is not that of the
    scan they are placed on ("" when all agree, or when they lie on no scan)."""
    if scale is None:
        return ""
    plane = np.asarray(scale, float)[-2:]
    differ = [i for i, r in enumerate(lesions.recists)
              if lesions.knows_spacing(i)
              and not np.allclose(r.spacing, plane, rtol=1e-3, atol=0.0)]
    if not differ:
        return ""
    sizes = sorted({_mm(lesions.recists[i].spacing) for i in differ})
    ids = ", ".join(str(lesions.lesion_ids[i]) for i in differ[:5])
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    return f"pixel size {' or '.join(sizes)} given for lesion(s) {ids}{more}"


def _mm(spacing) -> str:
    return " x ".join(f"{float(v):.4g}" for v in spacing) + " mm"


def _placement(base: Path, name: str | None, lesions) -> dict:
    """Where the lesions' lines lie in napari: as the scan ``name`` beside the file is
    shown, else as the layer they were drawn on was (the file's placement columns), else
    nothing (the lesions' own pixel size)."""
    ndim = 3 if lesions.slices is not None else 2
    placement = _scan_placement(base, name, ndim == 3) if name else {}
    if not placement:
        placement = saved_placement(lesions.features, ndim)
        placement.update(units_for(placement["scale"]) if placement else {})
    return placement


def _scan_placement(base: Path, name: str, stacked: bool) -> dict:
    """``scale``, ``translate`` and ``units`` of the scan ``name`` (relative to ``base``) as
    napari shows it, from its header; nothing when it is not a readable scan there."""
    from ..data.recist_sources import safe_join
    from ..data.volumes import grid_placement, is_medical_image_path, read_grid

    try:
        file = safe_join(base, name, name)
        if not file.exists() or not is_medical_image_path(file):
            return {}
        scale, translate = grid_placement(read_grid(file))
    except ValueError:
        return {}
    if len(scale) != (3 if stacked else 2):  # lines and scan of different dimensions
        return {}
    return {"scale": scale, "translate": translate, **units_for(scale)}


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".csv", ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


#: Words in a file name that, with whole-number voxels from 0 up, mark a label image (masks
#: as 3D Slicer, ITK-SNAP, nnU-Net or ``recist-seg predict`` write them), opened as Labels.
_LABEL_WORDS = re.compile(r"label|mask|seg", re.IGNORECASE)


def _is_label_image(image) -> bool:
    arr = image.array
    return (arr.ndim == len(image.scale) and arr.dtype.kind in "biu"
            and not str(image.metadata.get("format", "")).startswith("dicom")
            and _LABEL_WORDS.search(image.name) is not None
            and (arr.size == 0 or int(arr.min()) >= 0))


def _read_volume(path: Path):
    from ..data.volumes import read_medical_image

    image = read_medical_image(path)
    kwargs = image.layer_kwargs()
    # DICOM, NIfTI, MHA and NRRD give spacing in mm (1 mm where a file states none).
    kwargs.update(units_for(kwargs["scale"]))
    if _is_label_image(image):
        kwargs.pop("contrast_limits", None)
        return [(image.array, kwargs, "labels")]
    if not kwargs.get("rgb"):
        kwargs.setdefault("colormap", "gray")
        if "contrast_limits" not in kwargs:
            window = ct_contrast_limits(image.array, image.metadata)
            if window is not None:
                kwargs["contrast_limits"] = window
    return [(image.array, kwargs, "image")]


def _read_deeplesion(path: Path):
    from ..data.deeplesion import read_deeplesion

    records = read_deeplesion(path)
    if not records:
        raise ValueError("the table holds no lesion row")
    name = path.name if path.is_dir() else _stem(path)
    return deeplesion_layers(records, name, table_path=path)


def _padded_reader(record, shape):
    from ..data.deeplesion import read_deeplesion_slice

    def read():
        try:
            img = read_deeplesion_slice(record, neighbours=0)
        except (OSError, ValueError) as exc:
            # Read when the slice is first shown: a damaged file must not break the viewer.
            notify_warning(f"{record.file_name} (row {record.csv_row}) could not be read, "
                           f"shown as air: {exc}")
            return np.full(shape, -1024.0, dtype=np.float32)
        if img.shape == shape:
            return img
        # Slices of another size sit in the top-left corner of the stack, padded with air.
        out = np.full(shape, -1024.0, dtype=np.float32)
        rows, cols = min(shape[0], img.shape[0]), min(shape[1], img.shape[1])
        out[:rows, :cols] = img[:rows, :cols]
        return out

    return read


def deeplesion_layers(records, name: str, with_image: bool = True, table_path=None):
    """An image layer of the key slices (HU) and a RECIST Shapes layer for DeepLesion rows.

    Rows on the same key slice share it; several key slices are stacked (lazily, each read
    when shown) and each lesion sits on its own slice. Rows whose image is missing are left
    out when others have theirs; when none has, only the RECIST layer is returned.

    Key slices with one pixel size give the layers that scale, in mm. Slices of different
    pixel sizes cannot share one scale: the layers keep one pixel per unit and each slice's
    pixel size is kept in their metadata (``slice_spacing``), so that each line, those drawn
    later included, is measured and written with its own slice's.

    ``table_path``, the path the records were read from, is kept in the image layer's metadata
    (``deeplesion_table``), so that models that read a slice's neighbours find them.

    Returns
    -------
    list of napari LayerData tuples
    """
    from ..data.deeplesion import recist_table

    have = [r for r in records if r.image_path is not None]
    with_image = with_image and bool(have)
    rows = have if with_image else list(records)
    files: list[str] = []
    for r in rows:
        if r.file_name not in files:
            files.append(r.file_name)
    stacked = len(files) > 1
    table = recist_table(rows, [files.index(r.file_name) for r in rows] if stacked else None)
    first = {}
    for r in rows:
        first.setdefault(r.file_name, r)
    slice_spacing = [[float(v) for v in first[f].recist.spacing] for f in files]
    shared = all(np.allclose(sp, slice_spacing[0]) for sp in slice_spacing)
    scale = ((1.0,) if stacked else ()) + (tuple(slice_spacing[0]) if shared else (1.0, 1.0))
    units = units_for(scale, spacing_known=shared, stacked=True).get("units")
    extra = {"slice_spacing": slice_spacing} if stacked and not shared else None
    shapes = table_layer_tuple(
        table, name=f"{name} RECIST", scale=scale, units=units, metadata=extra
    )
    layers = []
    if with_image:
        image = _key_slices([first[f] for f in files])
        window = rows[0].window
        kwargs = {
            "name": name,
            "scale": scale,
            "contrast_limits": (float(window[0]), float(window[1])),
            "colormap": "gray",
            "metadata": {"deeplesion_files": files, META_KEY: dict(extra or {}),
                         **({"deeplesion_table": str(Path(table_path).resolve())}
                            if table_path is not None else {})},
        }
        if units is not None:
            kwargs["units"] = units
        layers.append((image, kwargs, "image"))
    layers.append(shapes)
    return layers


def _key_slices(records):
    from ..data.deeplesion import read_deeplesion_slice

    if len(records) == 1:
        return read_deeplesion_slice(records[0], neighbours=0)
    import dask
    import dask.array as da

    # The stack's size comes from the table, not from a slice: any slice, the first too, may
    # be damaged, and each is read only when shown.
    shape = tuple(int(max(r.image_size[k] for r in records)) for k in range(2))
    parts = [da.from_delayed(dask.delayed(_padded_reader(r, shape))(), shape=shape,
                             dtype=np.float32) for r in records]
    return da.stack(parts)


_READERS = {
    "recist": _read_recist_file,
    "deeplesion": _read_deeplesion,
    "volume": _read_volume,
}
