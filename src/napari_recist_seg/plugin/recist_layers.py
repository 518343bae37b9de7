"""RECIST Shapes layers: building them, keeping their features in step, describing lesions.

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

from ..core.annotation import (
    LesionInfo,
    assign_lesions,
    describe_lesions,
    line_lengths_mm,
)
from .colours import (
    int_values,
    line_colours,
)
from .layer_units import (
    META_KEY,
    MM,
    PX,
    default_units,
    is_mm,
    length_unit,
    line_spacing_and_gaps,
    per_line_spacing,
    unproxied,
)

__all__ = [
    "DERIVED_COLUMNS",
    "LABEL_LIMIT",
    "RECIST_DEFAULTS",
    "SPACING_DEFAULTS",
    "describe_layer",
    "is_recist_layer",
    "layer_columns",
    "measurement_labels",
    "placement_columns",
    "recist_layer_tuple",
    "recist_shapes_kwargs",
    "recolour",
    "saved_placement",
    "sync_after_edit",
    "sync_recist_layer",
    "table_layer_tuple",
    "text_style",
    "write_columns",
]


#: A RECIST file's columns holding the scale and origin (mm, napari's axis order, values
#: separated by spaces) of the layer its lines were drawn on: the lines open on their scan
#: even where the file is saved away from it.
LAYER_SCALE_COLUMN = "layer_scale"
LAYER_ORIGIN_COLUMN = "layer_origin"
#: Per-line columns the plugin computes (the placement ones from the layer when written);
#: a layer's own are dropped when it is written to a file.
DERIVED_COLUMNS = ("length_mm", "measurement", LAYER_SCALE_COLUMN, LAYER_ORIGIN_COLUMN)


#: Defaults napari gives new lines: -1 marks a line the pairing has not seen yet.
#: The angle between a lesion's axes that a RECIST file saved from napari, or opened in it, may
#: hold: any. A lesion drawn a little off perpendicular is work in progress to keep (the RECIST
#: table says what to mend); training and prediction read files with the rules' 15 degrees and
#: refuse such a row by name.
SAVED_ANGLE_TOLERANCE = 90.0
RECIST_DEFAULTS = {"lesion_id": -1, "axis": "", "length_mm": np.nan, "measurement": ""}


#: Per-line pixel size columns: NaN for a new line, until it takes its slice's pixel size.
SPACING_DEFAULTS = {"spacing_row": np.nan, "spacing_col": np.nan}


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


def _defaults_for(features) -> dict:
    from ..data.recist_sources import PATIENT_COLUMNS, SPLIT_COLUMNS

    # What one image's lesions share: a lesion drawn beside them is on that image, of that
    # patient and split (a blank image name split a saved file into two layers).
    shared = {"image", *PATIENT_COLUMNS, *SPLIT_COLUMNS}
    defaults = {}
    for name in features:
        if name in RECIST_DEFAULTS:
            defaults[name] = RECIST_DEFAULTS[name]
            continue
        values = list(features[name])
        if "_".join(str(name).lower().split()) in shared and len(values) and all(
                v == values[0] for v in values) and str(values[0]) not in ("", "nan"):
            defaults[name] = values[0]
            continue
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
    if units is not None and all(is_mm(u) for u in tuple(units)[-2:]):
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
        elif other < 0 or not np.isfinite(lengths[other]):
            # Alone, or paired with a line that has no length (drawn across slices).
            labels.append(f"{length:.1f} {unit}")
        elif axis == "long":
            labels.append(f"{length:.1f} x {lengths[other]:.1f} {unit}")
        else:
            labels.append("")
    return labels


#: A RECIST file's column saying its lines were drawn on a layer in pixels whose lesions
#: each carry their own pixel size (``PIXEL_GRID``): it opens in pixels again.
LAYER_GRID_COLUMN = "layer_grid"
PIXEL_GRID = "pixels"


def placement_columns(scale, translate, n: int) -> dict:
    """``{LAYER_SCALE_COLUMN: [...], LAYER_ORIGIN_COLUMN: [...]}``, the same ``n`` cells
    each, for a layer's ``scale`` and ``translate``."""
    def cells(values):
        return [" ".join(f"{float(v):.10g}" for v in values)] * n

    return {LAYER_SCALE_COLUMN: cells(scale), LAYER_ORIGIN_COLUMN: cells(translate)}


def saved_placement(features, ndim: int) -> dict:
    """``scale`` and ``translate`` from a RECIST file's placement columns when every row
    gives the same ``ndim`` finite values with positive scales; else nothing."""
    found = {}
    for key, column in (("scale", LAYER_SCALE_COLUMN), ("translate", LAYER_ORIGIN_COLUMN)):
        cells = {str(c).strip() for c in (features.get(column) or [])}
        if len(cells) != 1:
            return {}
        try:
            values = tuple(float(v) for v in cells.pop().split())
        except ValueError:
            return {}
        if len(values) != ndim or not np.all(np.isfinite(values)):
            return {}
        found[key] = values
    return found if min(found["scale"]) > 0 else {}


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
    grid = list(table.features.get(LAYER_GRID_COLUMN) or [])
    if scale is None and grid and all(str(g) == PIXEL_GRID for g in grid):
        scale, per_line = (1.0,) * len(table_scale), True
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
    if len(feats) != n:
        # napari keeps the old rows when a script sets ``layer.data = []``.
        return [-1] * n, [""] * n
    ids = int_values(feats["lesion_id"]).tolist() if "lesion_id" in feats else [-1] * n
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
    if not n and len(layer.features):
        # Emptied by a script (``layer.data = []``): napari leaves the old rows behind.
        layer.features = layer.features.iloc[0:0]
    ids, axes = layer_columns(layer)
    shape_types = list(layer.shape_type)
    per_line, filled = line_spacing_and_gaps(layer, spacing, slice_spacing)
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


# The data event each layer was last brought up to date for (weakly held): every widget that
# follows the layer receives the same event object, and only the first need do the work.
_SYNCED_FOR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sync_after_edit(layer, edit, spacing, unit: str | None = None, slice_spacing=None) -> bool:
    """``sync_recist_layer`` once per edit, however many widgets follow the layer.

    ``edit`` is the layer's data event that prompted the call; a layer already brought up to
    date for that same event is left alone (False). With ``edit`` None it always runs.
    """
    layer = unproxied(layer)
    if edit is not None:
        done = _SYNCED_FOR.get(layer)
        if done is not None and done() is edit:
            return False
    changed = sync_recist_layer(layer, spacing, unit, slice_spacing)
    if edit is not None:
        with contextlib.suppress(TypeError):  # an event that cannot be weakly referenced
            _SYNCED_FOR[layer] = weakref.ref(edit)
    return changed


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
    per_line = per_line_spacing(layer, spacing, slice_spacing)
    ids, axes = paired_columns(layer, spacing, per_line)
    unit = unit or (MM if per_line is not None else length_unit(layer))
    return describe_lesions(layer.data, ids, axes, spacing, per_line, cache=cache, unit=unit)


def paired_columns(layer, spacing, per_line=None) -> tuple[list[int], list[str]]:
    """``lesion_id`` and ``axis`` per shape, with lines not yet in a lesion paired.

    Lines drawn while no annotation dock followed the layer (napari's own line tool, a
    script) have no lesion yet: they are paired here as that dock would pair them
    (``core.annotation.assign_lesions``), without writing to the layer, so that training
    and comparison read every lesion the user sees drawn.
    """
    ids, axes = layer_columns(layer)
    shape_types = list(layer.shape_type)
    if any(i < 0 and t == "line" for i, t in zip(ids, shape_types)):
        ids, axes = assign_lesions(layer.data, ids, axes, spacing, shape_types, per_line)
    return ids, axes

