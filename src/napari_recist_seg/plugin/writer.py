"""napari writers: RECIST Shapes layers, and Labels layers as medical label images.

napari's own shapes CSV drops the per-shape feature table; the RECIST writer keeps it (lesion
ids, groups and any user columns), so a layer written and read back is the same. napari saves
labels as TIFF or NumPy files, which no radiology viewer places on its scan; the labels writer
gives NIfTI, MetaImage or NRRD on the voxel grid of the image they were drawn on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.annotation import assign_lesions, fill_line_spacing
from .layer_units import META_KEY, pd_numeric
from .notifications import notify_error, notify_warning
from .recist_layers import (
    DERIVED_COLUMNS,
    LAYER_GRID_COLUMN,
    PIXEL_GRID,
    SAVED_ANGLE_TOLERANCE,
    placement_columns,
)

__all__ = ["write_labels_file", "write_labels_layer", "write_recist_file", "write_recist_layer"]


def write_recist_layer(path: str, data, meta: dict) -> list[str]:
    """napari's writer command: ``write_recist_file``, with problems shown as a notification.

    napari takes a ``ValueError`` from a writer for "this writer does not apply", so the
    reason would be lost; it is shown to the user instead and nothing is written.

    Returns
    -------
    list of str
        The path written, or an empty list when nothing was written.
    """
    try:
        return [write_recist_file(path, data, meta)]
    except (ValueError, OSError) as exc:
        notify_error(str(exc))
        return []


def write_labels_layer(path: str, data, meta: dict) -> list[str]:
    """napari's writer command for Labels layers: ``write_labels_file``, with problems shown
    as a notification (see ``write_recist_layer``)."""
    try:
        written = write_labels_file(path, data, meta)
    except (ValueError, OSError) as exc:
        notify_error(str(exc))
        return []
    try:
        problem = _unsized(np.shape(data), meta)
    except ValueError:  # written with a grid of its own: nothing else to say
        problem = ""
    if problem:
        notify_warning(f"Saved {meta.get('name', 'the layer')!r} to {written} with "
                       f"{problem}; other viewers will show it at that size.")
    return [written]


def _unsized(shape, meta: dict) -> str:
    """Why labels written without a scan's grid have no true voxel size ("" when they do):
    a layer in pixels, or a stack of slices of different pixel sizes."""
    if _grid_for(shape, meta) is not None:
        return ""
    slice_spacing = ((meta.get("metadata") or {}).get(META_KEY) or {}).get("slice_spacing")
    if slice_spacing:
        sizes = np.asarray(slice_spacing, dtype=float)
        return (f"1 x 1 mm pixels, as its slices' pixel sizes differ ({sizes.min():.3g} to "
                f"{sizes.max():.3g} mm) and one file has one")
    units = [str(u) for u in (meta.get("units") or ())]
    given = meta.get("scale")
    scale = np.asarray([1.0] * len(shape) if given is None else given, dtype=float)
    if (units and all(u in ("pixel", "px", "pixels") for u in units[-2:])
            and np.allclose(scale[-2:], 1.0)):
        return "1 mm voxels, as the layer has no pixel size (its units are pixels)"
    return ""


def write_labels_file(path: str, data, meta: dict) -> str:
    """Write a Labels layer as ``.nii``, ``.nii.gz``, ``.mha`` or ``.nrrd``.

    The voxel grid is that of the image the labels lie on, so that other viewers overlay
    them on the scan: the layer's own ``metadata["grid"]``, else that of an image layer of
    the current viewer read from a medical file (``data.volumes.read_medical_image``) with
    the same shape, scale and translation, else the layer's scale and translation in mm.

    Parameters
    ----------
    path : str
    data : array_like
        The layer's labels, 2D or 3D.
    meta : dict
        The layer's state: ``scale``, ``translate``, ``metadata``, ``name``.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        Naming the layer and the problem.
    """
    from ..data.volumes import write_label_image

    labels = np.asarray(data)
    name = meta.get("name", "layer")
    try:
        written = write_label_image(path, labels, grid=_grid_for(labels.shape, meta),
                                    scale=meta.get("scale"), translate=meta.get("translate"))
    except ValueError as exc:
        raise ValueError(f"cannot write {name!r}: {exc}") from None
    return str(written)


def _grid_for(shape, meta: dict) -> dict | None:
    from ..data.volumes import grid_fits

    own = (meta.get("metadata") or {}).get("grid")
    if own is not None and grid_fits(own, shape):
        return own
    try:
        import napari

        viewer = napari.current_viewer()
    except ImportError:
        viewer = None
    if viewer is None:
        return None
    n = len(shape)
    scale = np.asarray(meta.get("scale", [1.0] * n), float)[-n:]
    translate = np.asarray(meta.get("translate", [0.0] * n), float)[-n:]
    scans = []
    for layer in viewer.layers:
        grid = (getattr(layer, "metadata", None) or {}).get("grid")
        if (isinstance(layer, napari.layers.Image) and grid is not None
                and grid_fits(grid, shape)
                and np.allclose(layer.scale[-n:], scale)
                and np.allclose(layer.translate[-n:], translate)):
            scans.append((layer.name, grid))
    if not scans or all(g == scans[0][1] for _, g in scans):
        return scans[0][1] if scans else None
    # Scans of one size, pixel size and origin but oriented differently look the same in
    # napari; the labels are those of the scan they are named after, else nobody can tell.
    name = str(meta.get("name", ""))
    named = [(scan, g) for scan, g in scans if scan and name.startswith(scan)]
    if named:
        return max(named, key=lambda item: len(item[0]))[1]
    listed = ", ".join(repr(scan) for scan, _ in scans)
    raise ValueError(
        f"{name!r} lies on the voxel grid of several open scans ({listed}) that are oriented "
        f"differently, and its file would take one scan's orientation: rename the layer to "
        f"begin with its scan's name (e.g. '{scans[0][0]} labels') or close the other scans, "
        f"then save again")


def write_recist_file(path: str, data, meta: dict) -> str:
    """Write a Shapes layer of RECIST lines to a RECIST ``.csv`` or ``.json`` file.

    Parameters
    ----------
    path : str
        Target file; ``.csv`` or ``.json`` chooses the format (``.csv`` is added otherwise).
    data : list of arrays
        The layer's shapes: one ``line`` per axis.
    meta : dict
        The layer's state: ``features`` (needs ``lesion_id`` and ``axis``), ``scale``
        (the last two entries are the pixel size in mm), ``shape_type``, ``name``.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        When the layer does not hold complete RECIST lesions (the problem is named).
    """
    from ..data.recist_files import table_from_layer_data, write_recists

    name = meta.get("name", "layer")
    target = Path(path)
    if target.suffix.lower() not in (".csv", ".json"):
        target = target.with_name(target.name + ".csv")
    shape_types = list(meta.get("shape_type", ["line"] * len(data)))
    others = sorted({t for t in shape_types if t != "line"})
    if others:
        raise ValueError(
            f"cannot write {name!r} as RECIST: it holds {', '.join(others)} shapes; "
            "RECIST layers hold lines only"
        )
    features = meta.get("features")
    if features is None or "lesion_id" not in features or "axis" not in features:
        raise ValueError(
            f"cannot write {name!r} as RECIST: its lines have no lesion_id/axis features "
            "(open the RECIST annotation widget to pair them)"
        )
    columns = {k: features[k] for k in features.keys() if k not in DERIVED_COLUMNS}
    if any(_missing_or_negative(v) for v in list(columns["lesion_id"])):
        columns.update(_paired(data, columns, meta))
    loose = sum(1 for v in list(columns["lesion_id"]) if _missing_or_negative(v))
    if loose:
        raise ValueError(
            f"cannot write {name!r} as RECIST: {loose} line(s) are not part of a lesion "
            "(open the RECIST annotation widget to pair them)"
        )
    if "spacing_row" in columns and "spacing_col" in columns:
        columns.update(_line_spacing_columns(name, data, columns, meta))
    try:
        table = table_from_layer_data(data, columns, scale=meta.get("scale"),
                                      max_perpendicularity_error=SAVED_ANGLE_TOLERANCE)
    except ValueError as exc:
        # The file could not be read back with such a lesion in it: the user mends it first.
        raise ValueError(f"cannot write {name!r} as RECIST: {exc}. Nothing was written: mend "
                         f"that lesion (the RECIST widget's table says why it breaks the "
                         f"rules) or delete it, and save again") from None
    _name_the_image(table, meta, target)
    if _in_pixels(meta) and "spacing_row" not in columns:
        # A layer in pixels has no pixel size to give: the file leaves it empty rather than
        # claiming 1 mm, which a table reader would take as true.
        table.spacing_known = [False] * len(table)
    elif _in_pixels(meta):
        # Lines in pixels with each lesion's own size in mm (a stack of slices of several
        # pixel sizes): the file says so, or opening it would lay the lines out in mm, off
        # the stack they were drawn on (the key slices it names are not scans to place
        # them by).
        table.features[LAYER_GRID_COLUMN] = [PIXEL_GRID] * len(table)
    elif _placed(meta):
        table.features.update(placement_columns(meta["scale"], meta["translate"], len(table)))
    try:
        return str(write_recists(target, table))
    except OSError as exc:
        raise ValueError(f"cannot write {target}: {exc.strerror or exc}") from None


def _name_the_image(table, meta: dict, target: Path) -> None:
    """Give lesions that name no image the file their layer was drawn on: its path from the
    written file's folder when it lies inside it (a table naming its images trains as it
    is), else its name (found with ``--images``)."""
    source = ((meta.get("metadata") or {}).get(META_KEY) or {}).get("image_file")
    if not source:
        return
    source = Path(source)
    try:
        name = source.resolve().relative_to(target.parent.resolve()).as_posix()
    except (OSError, ValueError):
        name = source.name
    names = table.images or [""] * len(table)
    table.images = [n or name for n in names]


def _in_pixels(meta: dict) -> bool:
    """Whether a layer's plane is measured in pixels: napari's ``units`` say so and its
    scale is the default one (the rule of ``layer_units.pixel_size_known``)."""
    units = meta.get("units")
    scale = meta.get("scale")
    if not units or scale is None:
        return False
    return (all(str(u) in ("pixel", "px") for u in list(units)[-2:])
            and bool(np.allclose(np.asarray(scale, dtype=float)[-2:], 1.0)))


def _placed(meta: dict) -> bool:
    """Whether a layer lies where its lines' pixel size alone would not put it: shifted
    (a scan's origin) or stacked at a slice spacing other than 1."""
    scale, translate = meta.get("scale"), meta.get("translate")
    if scale is None or translate is None:
        return False
    scale = np.asarray(scale, dtype=float)
    return bool(np.any(np.asarray(translate, dtype=float) != 0)
                or (scale.size == 3 and scale[0] != 1.0))


def _paired(data, columns: dict, meta: dict) -> dict:
    """``lesion_id`` and ``axis`` with the lines drawn while no annotation dock followed the
    layer paired as that dock pairs them (the layer itself is left as it is)."""
    ids = [-1 if _missing_or_negative(v) else int(v) for v in list(columns["lesion_id"])]
    axes = ["" if not isinstance(a, str) else a for a in list(columns["axis"])]
    scale = tuple(meta.get("scale") or (1.0, 1.0))[-2:]
    per_line = None
    if "spacing_row" in columns and "spacing_col" in columns:
        # Lines with a pixel size of their own are compared in it, as the docks compare them.
        per_line = _filled_line_spacing(data, columns, meta, fallback=scale)
    ids, axes = assign_lesions(data, ids, axes, scale, ["line"] * len(data), per_line)
    return {"lesion_id": np.asarray(ids, dtype=np.int64), "axis": np.asarray(axes, dtype=object)}


def _missing_or_negative(value) -> bool:
    try:
        return not (int(value) >= 0)
    except (TypeError, ValueError):
        return True


def _line_spacing_columns(name: str, data, columns: dict, meta: dict) -> dict:
    """Per-line pixel sizes, the missing ones (lines drawn after reading) from their slice.

    Raises
    ------
    ValueError
        Naming the lesions whose slice has no known pixel size.
    """
    filled = _filled_line_spacing(data, columns, meta, fallback=(np.nan, np.nan))
    missing = ~np.all(np.isfinite(filled), axis=1)
    if missing.any():
        ids = sorted({str(columns["lesion_id"][i]) for i in np.flatnonzero(missing)})
        raise ValueError(
            f"cannot write {name!r} as RECIST: lesion(s) {', '.join(ids)} have no pixel size "
            "(their slice has none and no other lesion on it gives one)"
        )
    return {"spacing_row": filled[:, 0].tolist(), "spacing_col": filled[:, 1].tolist()}


def _filled_line_spacing(data, columns: dict, meta: dict, fallback) -> np.ndarray:
    """(n, 2) pixel size of each line: its own, else its slice's (the layer's per-slice
    sizes), else that of another line on its slice, else ``fallback``."""
    values = np.column_stack(
        [pd_numeric(columns["spacing_row"]), pd_numeric(columns["spacing_col"])]
    )
    table = ((meta.get("metadata") or {}).get(META_KEY) or {}).get("slice_spacing")
    slices = {i: tuple(sp) for i, sp in enumerate(table)} if table else None
    filled, _ = fill_line_spacing(list(data), values, slices, fallback=fallback)
    return filled
