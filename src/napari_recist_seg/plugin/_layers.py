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
from dataclasses import dataclass, field

import numpy as np

from ..core.recist import Recist, recist_from_mask

__all__ = [
    "AXIS_COLOURS",
    "DERIVED_COLUMNS",
    "SOFT_TISSUE_WINDOW",
    "LesionInfo",
    "assign_lesions",
    "ct_contrast_limits",
    "describe_lesions",
    "group_colour",
    "line_colours",
    "notify_error",
    "notify_info",
    "notify_warning",
    "perpendicular_short_axis",
    "recist_layer_tuple",
    "recists_from_labels",
    "sync_recist_layer",
    "table_layer_tuple",
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
#: Key of the plugin's entry in a layer's ``metadata``.
META_KEY = "napari-recist-seg"
_TEXT = {
    "string": "{measurement}",
    "size": 9,
    "color": "#ffff66",
    "anchor": "upper_left",
}
_EDGE_WIDTH = 1.0


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


def _stack(data):
    """All shapes as one (n, vertices, ndim) array when they have the same size, else None."""
    try:
        return np.stack([np.asarray(p, dtype=float) for p in data]) if len(data) else None
    except ValueError:
        return None


def line_lengths_mm(data, spacing, per_line_spacing=None) -> np.ndarray:
    """Length in mm of each line from its first to its last vertex (in-plane coordinates)."""
    n = len(data)
    if not n:
        return np.zeros(0)
    # First and last in-plane vertex of every shape, gathered once, measured in one go.
    stacked = _stack(data)
    if stacked is not None:
        ends = stacked[:, [0, -1], -2:]
    else:
        ends = np.array([np.asarray(p, dtype=float)[[0, -1], -2:] for p in data])
    sp = np.broadcast_to(
        np.asarray(spacing if per_line_spacing is None else per_line_spacing, dtype=float),
        (n, 2),
    )
    return np.hypot(*((ends[:, 1] - ends[:, 0]) * sp).T)


def recist_shapes_kwargs(name: str, features: dict, scale, translate=None, ndim=None) -> dict:
    """Keyword arguments for a RECIST Shapes layer (lines, colours, text labels in mm)."""
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
        "text": dict(_TEXT),
        "scale": tuple(float(s) for s in scale),
        "metadata": {
            META_KEY: {"role": "recist", "color_by": "axis" if groups is None else "group"}
        },
    }
    if translate is not None:
        kwargs["translate"] = tuple(float(t) for t in translate)
    if ndim is not None:
        kwargs["ndim"] = int(ndim)
    return kwargs


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


def recist_layer_tuple(data, features: dict, scale, name: str, translate=None):
    """A napari LayerData tuple ``(data, kwargs, "shapes")`` for RECIST lines.

    ``features`` needs ``lesion_id`` and ``axis``; ``length_mm`` is computed here from the
    in-plane part of ``scale`` (or from ``spacing_row``/``spacing_col`` columns when present).
    """
    features = {k: list(v) for k, v in features.items()}
    per_line = _per_line_spacing(features)
    lengths = line_lengths_mm(data, tuple(scale)[-2:], per_line)
    features["length_mm"] = list(lengths)
    features["measurement"] = measurement_labels(features["lesion_id"], features["axis"], lengths)
    ndim = len(tuple(scale))
    kwargs = recist_shapes_kwargs(name, features, scale, translate, ndim=ndim)
    return (list(data), kwargs, "shapes")


def measurement_labels(lesion_ids, axes, lengths) -> list[str]:
    """Text label per line: "long x short mm" on a lesion's long axis, nothing on its short
    axis, and its own length for a line that is not (yet) half of a pair."""
    pairs: dict[int, dict[str, int]] = {}
    for i, (lid, axis) in enumerate(zip(lesion_ids, axes)):
        if int(lid) >= 0 and axis in ("long", "short"):
            pairs.setdefault(int(lid), {}).setdefault(axis, i)
    labels = []
    for i, (lid, axis) in enumerate(zip(lesion_ids, axes)):
        length = float(lengths[i])
        pair = pairs.get(int(lid), {})
        if not np.isfinite(length):
            labels.append("")
        elif axis == "long" and pair.get("long") == i and "short" in pair:
            labels.append(f"{length:.1f} x {float(lengths[pair['short']]):.1f} mm")
        elif axis == "short" and pair.get("short") == i and "long" in pair:
            labels.append("")
        else:
            labels.append(f"{length:.1f} mm")
    return labels


def table_layer_tuple(table, name: str, translate=None, scale=None):
    """LayerData for a ``data.recist_files.RecistTable`` (as read from a RECIST file).

    ``scale`` overrides the layer's scale, e.g. to match a volume's slice thickness; by
    default it is the lesions' common (row, col) spacing (and 1 for a slice axis).
    """
    from ..data.recist_files import recist_layer_data

    data, features, table_scale = recist_layer_data(table)
    if scale is not None and len(tuple(scale)) != len(table_scale):
        raise ValueError(f"scale {tuple(scale)} does not fit {len(table_scale)}D RECIST lines")
    return recist_layer_tuple(data, features, table_scale if scale is None else scale, name,
                              translate)


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
    n = len(layer.data)
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
        elif name in previous:
            merged[name] = previous[name]
        else:
            merged[name] = np.nan if df[name].dtype.kind in "fiu" else ""
    layer.feature_defaults = merged


def per_line_spacing(layer, fallback=(1.0, 1.0)):
    """(n, 2) per-line spacing from ``spacing_row``/``spacing_col`` features, else None.

    Lines without one (drawn after the layer was read) get ``fallback``.
    """
    feats = layer.features
    if "spacing_row" in feats and "spacing_col" in feats:
        values = np.column_stack(
            [
                pd_numeric(feats["spacing_row"]),
                pd_numeric(feats["spacing_col"]),
            ]
        )
        bad = ~np.isfinite(values) | (values <= 0)
        return np.where(bad, np.broadcast_to(np.asarray(fallback, float), values.shape), values)
    return None


def pd_numeric(column) -> np.ndarray:
    """Floats from a feature column (NaN where a value is missing or not a number)."""
    import pandas as pd

    return pd.to_numeric(pd.Series(list(column), dtype=object), errors="coerce").to_numpy(float)


def sync_recist_layer(layer, spacing) -> bool:
    """Pair new lines into lesions, update lengths, colours and text labels of a RECIST layer.

    Only the layer's features and colours change, never its data. Returns True when any
    feature column changed.
    """
    n = len(layer.data)
    ids, axes = layer_columns(layer)
    shape_types = list(layer.shape_type)
    new_ids, new_axes = assign_lesions(layer.data, ids, axes, spacing, shape_types)
    lengths = line_lengths_mm(layer.data, spacing, per_line_spacing(layer, spacing))
    feats = layer.features
    columns = {}
    if "lesion_id" not in feats or new_ids != ids:
        columns["lesion_id"] = np.asarray(new_ids, dtype=np.int64)
    if "axis" not in feats or new_axes != axes:
        columns["axis"] = np.asarray(new_axes, dtype=object)
    old_len = feats["length_mm"].to_numpy(float) if "length_mm" in feats else None
    if old_len is None or not np.allclose(old_len, lengths, equal_nan=True):
        columns["length_mm"] = lengths
    labels = measurement_labels(new_ids, new_axes, lengths)
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
        layer.text = dict(_TEXT)
        meta["text_set"] = True
    recolour(layer)
    return bool(columns)


def recolour(layer) -> None:
    """Colour a RECIST layer's lines by axis, or by group once grouping has run.

    Shapes other than lines keep their colour.
    """
    if not len(layer.data):
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


# -- pairing lines into lesions ---------------------------------------------------------------
def _leading(pts: np.ndarray):
    """Slice of a line (its leading coordinates, rounded), or None for 2D lines.

    A line whose vertices are on different slices gets the key "mixed".
    """
    if pts.shape[1] <= 2:
        return None
    lead = pts[:, :-2].tolist()
    first = lead[0]
    if any(abs(a - b) > 1e-6 for row in lead[1:] for a, b in zip(row, first)):
        return "mixed"
    values = tuple(int(round(v)) for v in first)
    return values[0] if len(values) == 1 else values


def _point_segment_distance(p, a, b) -> float:
    d = b - a
    denom = float(d @ d)
    t = 0.0 if denom == 0 else float(np.clip((p - a) @ d / denom, 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * d)))


def segment_distance(s1, s2) -> float:
    """Shortest distance between two 2D segments (0 when they cross)."""
    a, b = np.asarray(s1, float)
    c, d = np.asarray(s2, float)

    def orient(p, q, r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    if o1 * o2 < 0 and o3 * o4 < 0:
        return 0.0
    return min(
        _point_segment_distance(a, c, d),
        _point_segment_distance(b, c, d),
        _point_segment_distance(c, a, b),
        _point_segment_distance(d, a, b),
    )


def assign_lesions(data, lesion_ids, axes, spacing=(1.0, 1.0), shape_types=None):
    """Give each line not yet in a lesion its ``lesion_id`` and ``axis``.

    A line belongs to a lesion when it has a lesion id (>= 0) and an axis that the lesion has
    not already got from an earlier line; other lines (new ones, or copies of a lesion's
    lines) are taken in order: a line joins the most recently drawn lesion that has only one
    line, is on the same slice and lies near it (their segments closer than half the longer
    one's length); the longer of the two (in mm) becomes ``long``. Otherwise it starts a new
    lesion (the next free id) as its ``long`` axis. Shapes other than lines are left out
    (id -1, axis "").

    Parameters
    ----------
    data : sequence of (2, ndim) arrays
    lesion_ids, axes : sequence
        Current per-line values (-1 and "" for lines not in a lesion).
    spacing : tuple of float
        (row, col) pixel size in mm, to compare lengths physically.
    shape_types : sequence of str, optional

    Returns
    -------
    lesion_ids : list of int
    axes : list of str
    """
    n = len(data)
    ids = [int(v) for v in lesion_ids]
    axes = [str(a) for a in axes]
    sp = np.asarray(spacing, dtype=float)
    pts = [np.asarray(p, dtype=float) for p in data]
    is_line = [
        (shape_types is None or shape_types[i] == "line") and pts[i].shape[0] == 2
        for i in range(n)
    ]
    members: dict[int, dict[str, int]] = {}
    pending = []
    for i in range(n):
        if not is_line[i]:
            ids[i], axes[i] = -1, ""
            continue
        lid, axis = ids[i], axes[i]
        if lid >= 0 and axis in ("long", "short") and axis not in members.get(lid, {}):
            members.setdefault(lid, {})[axis] = i
        else:
            pending.append(i)
    next_id = max(members, default=-1) + 1

    def length_mm(i):
        return float(np.linalg.norm((pts[i][1, -2:] - pts[i][0, -2:]) * sp))

    for i in pending:
        key = _leading(pts[i])
        partner = None
        for lid, lines in members.items():
            if len(lines) != 1:
                continue
            (j,) = lines.values()
            if _leading(pts[j]) != key or key == "mixed":
                continue
            reach = 0.5 * max(length_mm(i), length_mm(j))
            gap = segment_distance(pts[i][:, -2:] * sp, pts[j][:, -2:] * sp)
            if gap <= reach and (partner is None or j > partner[1]):
                partner = (lid, j)
        if partner is None:
            ids[i], axes[i] = next_id, "long"
            members[next_id] = {"long": i}
            next_id += 1
            continue
        lid, j = partner
        if length_mm(i) > length_mm(j):
            axes[i], axes[j] = "long", "short"
        else:
            axes[i], axes[j] = "short", "long"
        ids[i] = lid
        members[lid] = {axes[i]: i, axes[j]: j}
    return ids, axes


# -- lesions for the table, grouping and pseudo-masks -----------------------------------------
@dataclass
class LesionInfo:
    """One lesion of a RECIST layer as the widgets show it.

    ``problem`` is empty for a valid RECIST, else the reason it is incomplete or invalid
    (the ``Recist`` validation message).
    """

    lesion_id: int
    slice: object = None
    long_index: int | None = None
    short_index: int | None = None
    long_px: float = float("nan")
    short_px: float = float("nan")
    long_mm: float = float("nan")
    short_mm: float = float("nan")
    perpendicularity_error: float = float("nan")
    recist: Recist | None = None
    problem: str = ""
    centre: np.ndarray = field(default_factory=lambda: np.zeros(2))

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def line_indices(self) -> list[int]:
        return [i for i in (self.long_index, self.short_index) if i is not None]

    @property
    def status(self) -> str:
        return "ok" if self.ok else self.problem


def _perpendicularity(long_pts, short_pts, spacing) -> float:
    d = (long_pts[1] - long_pts[0]) * spacing
    e = (short_pts[1] - short_pts[0]) * spacing
    norm = float(np.linalg.norm(d) * np.linalg.norm(e))
    if norm == 0:
        return float("nan")
    cos = abs(float(d @ e)) / norm
    return float(np.degrees(np.arcsin(min(1.0, cos))))


def describe_lesions(
    data, lesion_ids, axes, spacing=(1.0, 1.0), per_line_spacing=None, tolerance=15.0,
    cache: dict | None = None,
) -> list[LesionInfo]:
    """Measure and validate each lesion of a RECIST layer (sorted by lesion id).

    Lines with lesion id < 0 are not part of a lesion and are left out.

    Parameters
    ----------
    cache : dict, optional
        Results of an earlier call (pass the same dict each time): lesions whose lines have
        not changed are not validated again, so a layer with thousands of lesions stays quick
        to follow while one is edited. It is left holding this call's lesions only.
    """
    by_id: dict[int, dict[str, list[int]]] = {}
    for i, (lid, axis) in enumerate(zip(lesion_ids, axes)):
        lid = int(lid)
        if lid < 0:
            continue
        by_id.setdefault(lid, {}).setdefault(str(axis), []).append(i)
    out, used = [], {}
    stacked = _stack(data)
    # Each line's vertices as bytes (one C call for all lines): cheap to hash as a cache key.
    if stacked is not None:
        rows = np.ascontiguousarray(stacked.reshape(len(data), -1))
        flat = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel().tolist()
    else:
        flat = [np.asarray(p, dtype=float).tobytes() + bytes(np.shape(p)) for p in data]
    spacings = None if per_line_spacing is None else np.asarray(per_line_spacing).tolist()
    base = tuple(float(v) for v in spacing)
    for lid in sorted(by_id):
        lines = by_id[lid]
        indices = sorted(i for group in lines.values() for i in group)
        sp = base if spacings is None else tuple(spacings[indices[0]])
        key = (
            lid,
            tuple(sorted((a, tuple(g)) for a, g in lines.items())),
            tuple(flat[i] for i in indices),
            sp,
            float(tolerance),
        )
        info = cache.get(key) if cache is not None else None
        if info is None:
            arrays = {i: np.asarray(data[i], dtype=float) for i in indices}
            info = _describe_one(lid, lines, arrays, np.asarray(sp), tolerance)
        used[key] = info
        out.append(info)
    if cache is not None:
        cache.clear()
        cache.update(used)
    return out


def _describe_one(lid, lines, arrays, sp, tolerance) -> LesionInfo:
    info = LesionInfo(lesion_id=lid)
    longs, shorts = lines.get("long", []), lines.get("short", [])
    others = [a for a in lines if a not in ("long", "short")]
    info.long_index = longs[0] if longs else None
    info.short_index = shorts[0] if shorts else None
    idx = info.line_indices
    keys = {_leading(arrays[i]) for i in idx}
    info.slice = next(iter(keys)) if len(keys) == 1 else "mixed"
    if info.long_index is not None:
        d = arrays[info.long_index][-1, -2:] - arrays[info.long_index][0, -2:]
        info.long_px = float(np.hypot(*d))
        info.long_mm = float(np.hypot(*(d * sp)))
    if info.short_index is not None:
        d = arrays[info.short_index][-1, -2:] - arrays[info.short_index][0, -2:]
        info.short_px = float(np.hypot(*d))
        info.short_mm = float(np.hypot(*(d * sp)))
    centre_pts = np.vstack([arrays[i] for i in idx]) if idx else np.zeros((1, 2))
    info.centre = centre_pts.mean(axis=0)
    if len(longs) > 1 or len(shorts) > 1 or others:
        info.problem = "more than two lines share this lesion id"
    elif info.long_index is None:
        info.problem = "incomplete: no long axis"
    elif info.short_index is None:
        info.problem = "incomplete: draw the short axis"
    else:
        long_pts, short_pts = arrays[info.long_index], arrays[info.short_index]
        info.perpendicularity_error = _perpendicularity(long_pts[:, -2:], short_pts[:, -2:], sp)
        if "mixed" in keys or len(keys) > 1:
            info.problem = "its two axes are not on the same slice"
        elif long_pts.shape[0] != 2 or short_pts.shape[0] != 2:
            info.problem = "a RECIST axis must be a line of two points"
        else:
            try:
                info.recist = Recist(long_pts[:, -2:], short_pts[:, -2:], tuple(sp), tolerance)
            except ValueError as exc:
                info.problem = str(exc)
            else:
                info.centre = np.concatenate([long_pts[0, :-2], info.recist.centre])
    return info


def describe_layer(layer, spacing, cache: dict | None = None) -> list[LesionInfo]:
    """``describe_lesions`` for a napari Shapes layer."""
    ids, axes = layer_columns(layer)
    return describe_lesions(
        layer.data, ids, axes, spacing, per_line_spacing(layer, spacing), cache=cache
    )


def perpendicular_short_axis(long_axis, short_axis, spacing=(1.0, 1.0)) -> np.ndarray:
    """The short axis turned about its midpoint to be perpendicular to the long axis.

    Perpendicular and same length in millimetres, so anisotropic pixels are handled.
    Coordinates are (row, col); the result is a (2, 2) array.
    """
    sp = np.asarray(spacing, dtype=float)
    long_axis = np.asarray(long_axis, dtype=float)
    short_axis = np.asarray(short_axis, dtype=float)
    d = (long_axis[1] - long_axis[0]) * sp
    if not np.linalg.norm(d):
        raise ValueError("the long axis has zero length")
    normal = np.array([-d[1], d[0]]) / np.linalg.norm(d)
    e = (short_axis[1] - short_axis[0]) * sp
    # Keep the short axis' sense, so its endpoints do not swap places.
    if normal @ e < 0:
        normal = -normal
    half = 0.5 * float(np.linalg.norm(e)) * normal / sp
    mid = short_axis.mean(axis=0)
    return np.vstack([mid - half, mid + half])


def recists_from_labels(labels, spacing=(1.0, 1.0)):
    """One simulated RECIST per label of a 2D or 3D label image.

    In 3D each label is measured on the slice where its area is largest (its key slice).

    Returns
    -------
    recists : list of Recist
    label_values : list of int
    slices : list of int or None
    skipped : list of str
        Labels that could not be measured, with the reason.
    """
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got {arr.ndim} dimensions")
    values = [int(v) for v in np.unique(arr) if v != 0]
    recists, kept, slices, skipped = [], [], [], []
    for v in values:
        if arr.ndim == 3:
            areas = (arr == v).reshape(arr.shape[0], -1).sum(axis=1)
            z = int(np.argmax(areas))
            mask = arr[z] == v
        else:
            z, mask = None, arr == v
        try:
            recists.append(recist_from_mask(mask, spacing=spacing))
        except ValueError as exc:
            skipped.append(f"label {v}: {exc}")
            continue
        kept.append(v)
        slices.append(z)
    return recists, kept, (slices if arr.ndim == 3 else None), skipped
