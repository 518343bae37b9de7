"""Helpers shared by the plugin's reader, writer, sample data and widgets.

Nothing here imports Qt: the reader and writer use these helpers too, and they may run without
a window. The geometry itself comes from ``core``; what is here is bookkeeping between napari
layers (their data, ``features``, colours and scale) and the library's types.

A RECIST Shapes layer holds ``line`` shapes, one per axis, with per-line features
``lesion_id`` (int, -1 while a line is not yet part of a lesion), ``axis`` (``"long"`` or
``"short"``); ``length_mm`` and ``measurement`` (the text label: "long x short mm" on a
lesion's long axis) are derived from them and never written to files.
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np

# The geometry of drawn lines lives in the core; the names stay importable from here too.
from ..core.annotation import (
    LesionInfo,
    assign_lesions,
    describe_lesions,
    fill_line_spacing,
    line_lengths_mm,
    perpendicular_short_axis,
    recists_from_labels,
)

__all__ = [
    "AXIS_COLOURS",
    "DERIVED_COLUMNS",
    "SOFT_TISSUE_WINDOW",
    "LesionInfo",
    "assign_lesions",
    "ct_contrast_limits",
    "describe_lesions",
    "group_colour",
    "length_unit",
    "line_colours",
    "notify_error",
    "notify_info",
    "notify_warning",
    "perpendicular_short_axis",
    "recist_layer_tuple",
    "recists_from_labels",
    "sync_recist_layer",
    "table_layer_tuple",
    "units_for",
]

#: Edge colour of each axis kind; lines that are not part of a lesion yet are white.
AXIS_COLOURS = {"long": "#ffa319", "short": "#19c8ff"}
UNASSIGNED_COLOUR = "#ffffff"
#: Qualitative colours for K-means groups (matplotlib's tab10, then tab10's lighter half).
GROUP_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)
#: CT display window (HU) used when a file gives none: soft tissue, centre 40, width 400.
SOFT_TISSUE_WINDOW = (-160.0, 240.0)
#: Per-line columns the plugin computes; they are dropped when a layer is written to a file.
DERIVED_COLUMNS = ("length_mm", "measurement")
#: Defaults napari gives new lines: -1 marks a line the pairing has not seen yet.
RECIST_DEFAULTS = {"lesion_id": -1, "axis": "", "length_mm": np.nan, "measurement": ""}
#: Per-line pixel size columns: NaN for a new line, until it takes its slice's pixel size.
SPACING_DEFAULTS = {"spacing_row": np.nan, "spacing_col": np.nan}
#: Key of the plugin's entry in a layer's ``metadata``.
META_KEY = "napari-recist-seg"
#: The plugin's unit of length where the pixel size is known, and where it is not.
MM = "mm"
PX = "px"
_TEXT = {
    "string": "{measurement}",
    "size": 9,
    "color": "#ffff66",
    "anchor": "upper_left",
}
_EDGE_WIDTH = 1.0
#: Above this many shapes a RECIST layer starts with its length labels hidden. napari places
#: each label by rebuilding the layer's whole list of shapes, so a redraw of the labels costs
#: (shapes in view) x (shapes in the layer): about 0.6 s for 100 of 10,000 lines, on every
#: colour, feature or zoom change. The lesion table lists every length either way.
LABEL_LIMIT = 1000


def text_style(n_shapes: int) -> dict:
    """napari text settings of a RECIST layer: length labels, hidden above ``LABEL_LIMIT``."""
    return {**_TEXT, "visible": n_shapes <= LABEL_LIMIT}


def unproxied(obj):
    """The object itself where napari handed it to the plugin behind a proxy.

    napari gives plugin widgets a proxy of the viewer, and what its methods return (the
    layer ``add_layer`` returns, say) is a new proxy each time, never ``is`` the layer the
    layer list holds. The plugin compares and keys layers by identity, so it keeps real ones.
    """
    return getattr(obj, "__wrapped__", obj)


# -- notifications ----------------------------------------------------------------------------
def notify_error(message: str) -> None:
    """Show an error in napari's notification area (and the log), without raising."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    """Show a warning in napari's notification area."""
    from napari.utils.notifications import show_warning

    show_warning(message)


def notify_info(message: str) -> None:
    """Show an information message in napari's notification area."""
    from napari.utils.notifications import show_info

    show_info(message)


# -- images -----------------------------------------------------------------------------------
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
        Whether the leading axes index a stack of separate images rather than a distance.

    Returns
    -------
    dict
        ``{"units": (...)}`` to merge into a layer's keyword arguments, or ``{}``.
    """
    ndim = len(tuple(scale))
    if not spacing_known or ndim < 2:
        return {}
    lead = ("pixel" if stacked else MM,) * (ndim - 2)
    return {"units": (*lead, MM, MM)}


def _is_mm(unit) -> bool:
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
        _is_mm(u) for u in tuple(units)[-2:]
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


# -- RECIST layers ----------------------------------------------------------------------------
def _hex_to_rgba(colour: str) -> np.ndarray:
    colour = colour.lstrip("#")
    return np.array([int(colour[i : i + 2], 16) / 255.0 for i in (0, 2, 4)] + [1.0])


def group_colour(group) -> str:
    """Colour of a K-means group (a hex string); groups below 0 have none (white)."""
    try:
        g = int(group)
    except (TypeError, ValueError):
        return UNASSIGNED_COLOUR
    if g < 0:
        return UNASSIGNED_COLOUR
    return GROUP_PALETTE[g % len(GROUP_PALETTE)]


def line_colours(axes, groups=None) -> np.ndarray:
    """RGBA edge colour per line: by group where one is given (>= 0), else by axis."""
    by_axis = {name: _hex_to_rgba(c) for name, c in AXIS_COLOURS.items()}
    unassigned = _hex_to_rgba(UNASSIGNED_COLOUR)
    palette = np.array([_hex_to_rgba(c) for c in GROUP_PALETTE])
    out = np.array([by_axis.get(str(a), unassigned) for a in axes]).reshape(-1, 4)
    if groups is not None:
        g = _int_values(groups)
        has = g >= 0
        out[has] = palette[g[has] % len(palette)]
    return out


def _int_values(values, default: int = -1) -> np.ndarray:
    """Integers from a column that may hold None, NaN or text (those become ``default``)."""
    import pandas as pd

    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    return numbers.fillna(default).astype(np.int64).to_numpy()


def recist_shapes_kwargs(
    name: str, features: dict, scale, translate=None, ndim=None, units=None
) -> dict:
    """Keyword arguments for a RECIST Shapes layer (lines, colours, text labels in mm).

    ``units`` are napari's per-axis units (e.g. those of the image the lines go on); by
    default millimetres where ``scale`` is a pixel size (see ``units_for``).
    """
    axes = list(features.get("axis", []))
    groups = features.get("group")
    kwargs = {
        "name": name,
        "shape_type": "line",
        "edge_width": _EDGE_WIDTH,
        "edge_color": line_colours(axes, groups) if axes else "white",
        "face_color": "transparent",
        "features": features,
        "feature_defaults": _defaults_for(features),
        "text": text_style(len(axes)),
        "scale": tuple(float(s) for s in scale),
        "metadata": {
            META_KEY: {"role": "recist", "color_by": "axis" if groups is None else "group"}
        },
    }
    if translate is not None:
        kwargs["translate"] = tuple(float(t) for t in translate)
    if ndim is not None:
        kwargs["ndim"] = int(ndim)
    if units is not None:
        kwargs["units"] = tuple(str(u) for u in units)
    else:
        kwargs.update(default_units(scale))
    return kwargs


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


def _defaults_for(features) -> dict:
    defaults = {}
    for name in features:
        if name in RECIST_DEFAULTS:
            defaults[name] = RECIST_DEFAULTS[name]
            continue
        values = list(features[name])
        numeric = values and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in values
        )
        if name == "group":
            defaults[name] = -1
        else:
            defaults[name] = np.nan if numeric else ""
    return defaults


def recist_layer_tuple(data, features: dict, scale, name: str, translate=None, units=None,
                       metadata=None):
    """A napari LayerData tuple ``(data, kwargs, "shapes")`` for RECIST lines.

    ``features`` needs ``lesion_id`` and ``axis``; ``length_mm`` is computed here from the
    in-plane part of ``scale`` (or from ``spacing_row``/``spacing_col`` columns when present).
    Lengths are labelled px where neither gives a pixel size. ``metadata`` is merged into
    the plugin's entry of the layer's metadata (e.g. ``slice_spacing``).
    """
    features = {k: list(v) for k, v in features.items()}
    per_line = _per_line_spacing(features)
    lengths = line_lengths_mm(data, tuple(scale)[-2:], per_line)
    known = per_line is not None or not np.allclose(tuple(scale)[-2:], 1.0)
    if units is not None and all(_is_mm(u) for u in tuple(units)[-2:]):
        known = True
    features["length_mm"] = list(lengths)
    features["measurement"] = measurement_labels(
        features["lesion_id"], features["axis"], lengths, MM if known else PX
    )
    ndim = len(tuple(scale))
    kwargs = recist_shapes_kwargs(name, features, scale, translate, ndim=ndim, units=units)
    if metadata:
        kwargs["metadata"][META_KEY].update(metadata)
    return (list(data), kwargs, "shapes")


def measurement_labels(lesion_ids, axes, lengths, unit: str = "mm") -> list[str]:
    """Text label per line: "long x short mm" on a lesion's long axis, nothing on its short
    axis, and its own length for a line that is not (yet) half of a pair.

    ``unit`` is "px" where the pixel size is not known."""
    ids = np.asarray(lesion_ids, dtype=np.int64).reshape(-1)
    kinds = np.asarray(axes, dtype=object).reshape(-1)
    lengths = np.asarray(lengths, dtype=float).reshape(-1)
    n = len(ids)
    # The first long and the first short line of each lesion make its pair.
    partner = np.full(n, -1)
    firsts = {}
    for axis in ("long", "short"):
        lines = np.nonzero((kinds == axis) & (ids >= 0))[0]
        unique, first = np.unique(ids[lines], return_index=True)
        firsts[axis] = dict(zip(unique.tolist(), lines[first].tolist()))
    for lid, i in firsts["long"].items():
        j = firsts["short"].get(lid)
        if j is not None:
            partner[i], partner[j] = j, i
    labels = []
    for length, other, axis in zip(lengths.tolist(), partner.tolist(), kinds):
        if length != length or length in (np.inf, -np.inf):
            labels.append("")
        elif other < 0:
            labels.append(f"{length:.1f} {unit}")
        elif axis == "long":
            labels.append(f"{length:.1f} x {lengths[other]:.1f} {unit}")
        else:
            labels.append("")
    return labels


def table_layer_tuple(table, name: str, translate=None, scale=None, units=None,
                      per_line: bool = False, metadata=None):
    """LayerData for a ``data.recist_files.RecistTable`` (as read from a RECIST file).

    ``scale`` overrides the layer's scale, e.g. to match a volume's slice thickness; by
    default it is the lesions' common (row, col) spacing (and 1 for a slice axis).
    ``per_line`` keeps each lesion's own pixel size as per-line features even when all
    lesions share one (so that lengths stay the lesions' own under another ``scale``).
    """
    from ..data.recist_files import recist_layer_data

    data, features, table_scale = recist_layer_data(table)
    if scale is not None and len(tuple(scale)) != len(table_scale):
        raise ValueError(f"scale {tuple(scale)} does not fit {len(table_scale)}D RECIST lines")
    if per_line and "spacing_row" not in features:
        per_lesion = [r.spacing for r in table.recists for _ in range(2)]
        features["spacing_row"] = [float(sp[0]) for sp in per_lesion]
        features["spacing_col"] = [float(sp[1]) for sp in per_lesion]
    return recist_layer_tuple(data, features, table_scale if scale is None else scale, name,
                              translate, units=units, metadata=metadata)


def _per_line_spacing(features):
    if "spacing_row" in features and "spacing_col" in features:
        return np.column_stack(
            [np.asarray(features["spacing_row"], float), np.asarray(features["spacing_col"], float)]
        )
    return None


def is_recist_layer(layer) -> bool:
    """Whether a layer looks like a RECIST layer (made by this plugin, or with its columns)."""
    meta = getattr(layer, "metadata", {}) or {}
    if meta.get(META_KEY, {}).get("role") == "recist":
        return True
    feats = getattr(layer, "features", None)
    return feats is not None and "lesion_id" in feats and "axis" in feats


def layer_columns(layer) -> tuple[list[int], list[str]]:
    """``lesion_id`` and ``axis`` per shape of a layer (-1 and "" where missing)."""
    n = layer.nshapes
    feats = layer.features
    ids = _int_values(feats["lesion_id"]).tolist() if "lesion_id" in feats else [-1] * n
    axes = feats["axis"].fillna("").astype(str).tolist() if "axis" in feats else [""] * n
    return ids, axes


def write_columns(layer, columns: dict, defaults: dict | None = None) -> None:
    """Set per-shape feature columns of ``layer`` (one event), keeping the other columns.

    napari derives new defaults from the values whenever features are replaced, so the
    defaults (which new lines get) are restored: the RECIST defaults for the plugin's
    columns, ``defaults`` for given ones, the previous defaults for the rest.
    """
    old = layer.features
    previous = {}
    if len(old.columns):
        with contextlib.suppress(IndexError, KeyError):
            previous = layer.feature_defaults.iloc[0].to_dict()
    df = old.copy()
    for name, values in columns.items():
        df[name] = list(values)
    layer.features = df
    merged = {}
    for name in df.columns:
        if defaults and name in defaults:
            merged[name] = defaults[name]
        elif name in RECIST_DEFAULTS:
            merged[name] = RECIST_DEFAULTS[name]
        elif name in SPACING_DEFAULTS:
            merged[name] = SPACING_DEFAULTS[name]
        elif name in previous:
            merged[name] = previous[name]
        else:
            merged[name] = np.nan if df[name].dtype.kind in "fiu" else ""
    layer.feature_defaults = merged


def per_line_spacing(layer, fallback=(1.0, 1.0), slice_spacing=None):
    """(n, 2) per-line pixel size of a RECIST layer, or None where one scale fits all lines.

    Lines read from a file or a DeepLesion table may carry their own pixel size
    (``spacing_row``/``spacing_col`` features); on a stack of slices with different pixel
    sizes (``slice_spacing``, by default the layer's metadata) every line has its slice's.
    A line without one (drawn after the layer was read) takes its slice's pixel size, else
    that of another line on its slice, else ``fallback`` (``core.annotation.fill_line_spacing``).
    """
    return _line_spacing(layer, fallback, slice_spacing)[0]


def _line_spacing(layer, fallback=(1.0, 1.0), slice_spacing=None):
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


def sync_recist_layer(layer, spacing, unit: str | None = None, slice_spacing=None) -> bool:
    """Pair new lines into lesions, update lengths, colours and text labels of a RECIST layer.

    Only the layer's features and colours change, never its data. A new line on a stack of
    slices with different pixel sizes is given its slice's (``spacing_row``/``spacing_col``),
    so that it is measured and written in mm like the others. ``unit`` ("mm" or "px") labels
    the lengths; by default the layer's own (see ``length_unit``). Returns True when any
    feature column changed.
    """
    data = layer.data  # napari builds this list anew on each access
    n = len(data)
    ids, axes = layer_columns(layer)
    shape_types = list(layer.shape_type)
    per_line, filled = _line_spacing(layer, spacing, slice_spacing)
    new_ids, new_axes = assign_lesions(data, ids, axes, spacing, shape_types, per_line)
    lengths = line_lengths_mm(data, spacing, per_line)
    unit = unit or (MM if per_line is not None else length_unit(layer))
    feats = layer.features
    columns = {}
    if per_line is not None and (filled.any() or "spacing_row" not in feats):
        columns["spacing_row"] = per_line[:, 0]
        columns["spacing_col"] = per_line[:, 1]
    if "lesion_id" not in feats or new_ids != ids:
        columns["lesion_id"] = np.asarray(new_ids, dtype=np.int64)
    if "axis" not in feats or new_axes != axes:
        columns["axis"] = np.asarray(new_axes, dtype=object)
    old_len = feats["length_mm"].to_numpy(float) if "length_mm" in feats else None
    if old_len is None or not np.allclose(old_len, lengths, equal_nan=True):
        columns["length_mm"] = lengths
    labels = measurement_labels(new_ids, new_axes, lengths, unit)
    if "measurement" not in feats or feats["measurement"].tolist() != labels:
        columns["measurement"] = np.asarray(labels, dtype=object)
    if columns and n:
        write_columns(layer, columns)
    elif columns:
        # An empty layer: columns with no rows, so that the first line gets the defaults.
        df = layer.features.copy()
        for name in ("lesion_id", "axis", "length_mm", "measurement"):
            if name not in df:
                df[name] = np.zeros(0, dtype=object if name in ("axis", "measurement") else float)
        df["lesion_id"] = df["lesion_id"].astype(np.int64)
        layer.features = df
        layer.feature_defaults = {
            **{c: ("" if df[c].dtype == object else np.nan) for c in df.columns},
            **RECIST_DEFAULTS,
        }
    meta = layer.metadata.setdefault(META_KEY, {})
    if not meta.get("text_set"):
        layer.text = text_style(n)
        meta["text_set"] = True
    recolour(layer)
    return bool(columns)


def recolour(layer) -> None:
    """Colour a RECIST layer's lines by axis, or by group once grouping has run.

    Shapes other than lines keep their colour.
    """
    if not layer.nshapes:
        return
    _, axes = layer_columns(layer)
    groups = None
    meta = layer.metadata.get(META_KEY, {})
    if meta.get("color_by") == "group" and "group" in layer.features:
        groups = layer.features["group"].tolist()
    current = np.asarray(layer.edge_color, dtype=float)
    colours = current.copy()
    lines = np.asarray([t == "line" for t in layer.shape_type], dtype=bool)
    colours[lines] = line_colours(axes, groups)[lines]
    if not np.allclose(current, colours):
        layer.edge_color = colours


# -- lesions for the table, grouping and pseudo-masks -----------------------------------------
# What each layer's lesions were last measured as, shared by every widget that reads the layer:
# the second widget to look after an edit finds them measured.
_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def describe_layer(layer, spacing, unit: str | None = None, slice_spacing=None
                   ) -> list[LesionInfo]:
    """``describe_lesions`` for a napari Shapes layer.

    The layer's record of its last measurement (kept while the layer lives) is reused, so
    lesions whose lines have not changed since any earlier call are not measured again.
    ``unit`` labels lengths in the lesions' problems ("mm", or "px" where the pixel size is
    unknown; by default the layer's own).
    """
    cache = _MEASURED.setdefault(unproxied(layer), {})
    ids, axes = layer_columns(layer)
    per_line = per_line_spacing(layer, spacing, slice_spacing)
    unit = unit or (MM if per_line is not None else length_unit(layer))
    return describe_lesions(layer.data, ids, axes, spacing, per_line, cache=cache, unit=unit)
