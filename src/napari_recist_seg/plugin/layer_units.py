"""Pixel sizes and units of napari layers: mm where the pixel size is known, px where not.

Nothing here imports Qt: the reader, writer and sample data use it too. A RECIST layer's
lines may carry their own pixel size (lines read from a table, or drawn on a stack of slices
with different pixel sizes).
"""

from __future__ import annotations

import numpy as np

from ..core.annotation import (
    fill_line_spacing,
)

__all__ = [
    "META_KEY",
    "MM",
    "PX",
    "SOFT_TISSUE_WINDOW",
    "ct_contrast_limits",
    "default_units",
    "grid_mismatch",
    "derived_units",
    "is_mm",
    "length_unit",
    "line_spacing_and_gaps",
    "pd_numeric",
    "per_line_spacing",
    "pixel_size_known",
    "slice_spacing_of",
    "spacing_of",
    "spatial_shape",
    "units_for",
    "unproxied",
]


#: CT display window (HU) used when a file gives none: soft tissue, centre 40, width 400.
SOFT_TISSUE_WINDOW = (-160.0, 240.0)


#: Key of the plugin's entry in a layer's ``metadata``.
META_KEY = "napari-recist-seg"


#: The plugin's unit of length where the pixel size is known, and where it is not.
MM = "mm"


PX = "px"


def unproxied(obj):
    """The object itself where napari handed it to the plugin behind a proxy.

    napari gives plugin widgets a proxy of the viewer, and what its methods return (the
    layer ``add_layer`` returns, say) is a new proxy each time, never ``is`` the layer the
    layer list holds. The plugin compares and keys layers by identity, so it keeps real ones.
    """
    return getattr(obj, "__wrapped__", obj)


def ct_contrast_limits(array, metadata: dict | None = None):
    """Display window for an image: the file's own, soft tissue for CT, else None (auto)."""
    metadata = metadata or {}
    window = metadata.get("window")
    if window is not None:
        return (float(window[0]), float(window[1]))
    arr = np.asarray(array) if not hasattr(array, "dtype") else array
    is_ct = str(metadata.get("modality", "")).upper() == "CT"
    if not is_ct and getattr(arr, "dtype", None) is not None and arr.dtype.kind in "if":
        # Without a modality tag, air at about -1000 is CT's signature.
        sample = np.asarray(arr[tuple(slice(None, None, max(1, s // 64)) for s in arr.shape)])
        is_ct = sample.size > 0 and float(sample.min()) <= -900.0
    return SOFT_TISSUE_WINDOW if is_ct else None


def spatial_shape(image_layer) -> tuple[int, ...]:
    """Shape of an image layer's spatial axes (a colour axis is left out)."""
    data = image_layer.data
    if getattr(image_layer, "multiscale", False):
        data = data[0]
    return tuple(int(s) for s in data.shape[: image_layer.ndim])


def spacing_of(layer) -> tuple[float, float]:
    """In-plane pixel size (row, col) in mm: the last two entries of the layer's scale."""
    scale = np.asarray(layer.scale, dtype=float)
    return (float(scale[-2]), float(scale[-1]))


def units_for(scale, spacing_known: bool = True, stacked: bool = False) -> dict:
    """napari ``units`` keyword for a layer whose pixel size is ``scale`` in mm.

    Parameters
    ----------
    scale : sequence of float
        The layer's scale; its last two entries are the (row, col) pixel size.
    spacing_known : bool
        False where the scale is not a physical pixel size (then no unit is claimed and
        napari keeps "pixel").
    stacked : bool
        Whether the leading axis indexes a stack of separate images rather than a
        distance. Axes before (slice, row, col), a series' time, never carry mm.

    Returns
    -------
    dict
        ``{"units": (...)}`` to merge into a layer's keyword arguments, or ``{}``.
    """
    ndim = len(tuple(scale))
    if not spacing_known or ndim < 2:
        return {}
    # Beyond (slice, row, col), an axis is time or a channel of a series: no length.
    lead = ("pixel",) * max(0, ndim - 3) + ("pixel" if stacked else MM,) * min(1, ndim - 2)
    return {"units": (*lead, MM, MM)}


def is_mm(unit) -> bool:
    return str(unit) in ("mm", "millimeter", "millimetre")


def pixel_size_known(layer) -> bool:
    """Whether a layer's scale is a physical pixel size.

    It is when the layer's in-plane ``units`` are millimetres, or (for layers from
    elsewhere, which keep napari's default unit) when its scale is not the default one.
    """
    if layer is None:
        return False
    if hasattr(layer, "nshapes") and per_line_spacing(layer) is not None:
        return True
    units = getattr(layer, "units", None)
    if units is not None and len(tuple(units)) >= 2 and all(
        is_mm(u) for u in tuple(units)[-2:]
    ):
        return True
    return not np.allclose(spacing_of(layer), 1.0)


def length_unit(*layers) -> str:
    """"mm" when the first layer given (not None) has a known pixel size, else "px"."""
    for layer in layers:
        if layer is not None:
            return MM if pixel_size_known(layer) else PX
    return PX


def slice_spacing_of(*layers) -> dict | None:
    """``{slice: (row, col)}`` pixel sizes of a stack of key slices, from layer metadata.

    The DeepLesion reader stacks key slices of different pixel sizes; their sizes are kept
    in the image's and the RECIST layer's metadata (``slice_spacing``, one pair per slice).
    The first of ``layers`` (None ones skipped) that has them gives them.
    """
    for layer in layers:
        if layer is None:
            continue
        table = (getattr(layer, "metadata", None) or {}).get(META_KEY, {}).get("slice_spacing")
        if table:
            return {i: (float(sp[0]), float(sp[1])) for i, sp in enumerate(table)}
    return None


def default_units(scale) -> dict:
    """``units_for`` a scale nothing else is known about: mm where it is not the default.

    A leading axis with a scale of 1 indexes a stack of slices (a distance between slices is
    never exactly 1 mm by chance often enough to assume it).
    """
    scale = tuple(float(s) for s in scale)
    known = len(scale) >= 2 and not np.allclose(scale[-2:], 1.0)
    stacked = len(scale) > 2 and np.allclose(scale[:-2], 1.0)
    return units_for(scale, known, stacked)


def derived_units(image) -> dict:
    """``units`` for a layer made over ``image`` (a preview, a new RECIST layer): the image's.

    Images the plugin opens are in mm, so what is made over them is too. An image added
    elsewhere keeps napari's "pixel" even with a scale; a layer over it in mm would make the
    viewer's units inconsistent, and napari then drops units for every layer.
    """
    units = tuple(str(u) for u in getattr(image, "units", ()) or ())
    return {"units": units} if units else {}


def grid_mismatch(image, layer) -> str:
    """Why ``layer`` (a RECIST layer) does not lie on ``image``'s pixel grid ("" if it does).

    Lesions are drawn, measured and segmented in ``layer``'s data coordinates onto
    ``image``'s pixels, so the two must share their scale and offset: a RECIST layer of
    another scan (another pixel size or origin) would land on the wrong pixels and be
    measured with the wrong pixel size.

    Parameters
    ----------
    image : napari.layers.Image
    layer : napari.layers.Shapes

    Returns
    -------
    str
        "" when the two fit (or either is missing), else what differs, naming both.
    """
    if image is None or layer is None:
        return ""
    n = min(image.ndim, layer.ndim)
    theirs_scale = np.asarray(layer.scale, float)[-n:]
    ours_scale = np.asarray(image.scale, float)[-n:]
    theirs_at = np.asarray(layer.translate, float)[-n:]
    ours_at = np.asarray(image.translate, float)[-n:]
    differ = []
    if not np.allclose(theirs_scale, ours_scale, rtol=1e-3, atol=0.0):
        differ.append(f"pixel size {_listed(theirs_scale)} against {_listed(ours_scale)}")
    # Half a pixel apart is still the same grid as far as a drawn line can tell.
    if np.any(np.abs(theirs_at - ours_at) > 0.5 * np.abs(ours_scale)):
        differ.append(f"origin {_listed(theirs_at)} against {_listed(ours_at)}")
    if not differ:
        return ""
    return (f"the RECIST layer {layer.name!r} lies on another grid than {image.name!r} "
            f"({'; '.join(differ)}): choose the image's own RECIST layer")


def _listed(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def grid_metadata(image) -> dict:
    """``{"grid": ...}`` of an image read from a medical file (``MedicalImage.metadata``),
    for the metadata of a layer made over it: saved as NIfTI, MHA or NRRD, it then lands on
    the scan's voxel grid even after the image is closed. Empty for other images."""
    grid = (getattr(image, "metadata", None) or {}).get("grid")
    return {"grid": grid} if grid is not None else {}


def per_line_spacing(layer, fallback=(1.0, 1.0), slice_spacing=None):
    """(n, 2) per-line pixel size of a RECIST layer, or None where one scale fits all lines.

    Lines read from a file or a DeepLesion table may carry their own pixel size
    (``spacing_row``/``spacing_col`` features); on a stack of slices with different pixel
    sizes (``slice_spacing``, by default the layer's metadata) every line has its slice's.
    A line without one (drawn after the layer was read) takes its slice's pixel size, else
    that of another line on its slice, else ``fallback`` (``core.annotation.fill_line_spacing``).
    """
    return line_spacing_and_gaps(layer, fallback, slice_spacing)[0]


def line_spacing_and_gaps(layer, fallback=(1.0, 1.0), slice_spacing=None):
    """``per_line_spacing`` and which lines had no pixel size of their own (None, None)."""
    feats = layer.features
    table = slice_spacing if slice_spacing is not None else slice_spacing_of(layer)
    n = len(feats)
    if "spacing_row" in feats and "spacing_col" in feats:
        values = np.column_stack(
            [pd_numeric(feats["spacing_row"]), pd_numeric(feats["spacing_col"])]
        )
    elif table:
        values = np.full((n, 2), np.nan)
    else:
        return None, None
    if n != layer.nshapes:
        return None, None
    return fill_line_spacing(layer.data, values, table, fallback)


def pd_numeric(column) -> np.ndarray:
    """Floats from a feature column (NaN where a value is missing or not a number)."""
    import pandas as pd

    return pd.to_numeric(pd.Series(list(column), dtype=object), errors="coerce").to_numpy(float)
