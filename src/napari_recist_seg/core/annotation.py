"""Hand-drawn RECIST lines as lesions: pairing, measuring, checking and fixing them.

An annotation is a list of lines, each a ``(2, ndim)`` array of vertices whose last two
columns are (row, col) pixels; leading columns, when present, give the slice (and any other
non-spatial axis). A RECIST is measured on one axial slice: a line whose ends are on
different slices (drawn in a view whose plane is not axial) is neither measured nor paired,
and its lesion's problem is ``ACROSS_SLICES``. Which lesion a line belongs to and which
axis it is are kept beside the lines as two plain sequences, ``lesion_ids`` (-1 for a line
not yet in a lesion) and ``axes`` (``"long"``, ``"short"`` or ``""``), in the order of the
lines. Spacing is (row, col) in mm.

The measurement rules themselves are ``Recist``'s: a lesion here is valid exactly when
``recists_from_shapes`` accepts its two lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .recist import Recist, recist_from_mask, recists_from_shapes, short_exceeds_long

__all__ = [
    "ACROSS_SLICES",
    "CLICK_LINE_MAX_PX",
    "MIN_LINE_PX",
    "LesionInfo",
    "assign_lesions",
    "describe_lesions",
    "fill_line_spacing",
    "is_stray_line",
    "line_lengths_mm",
    "perpendicular_short_axis",
    "recists_from_labels",
    "segment_distance",
]

_AXES = ("long", "short")
#: Lines shorter than this many pixels are a click rather than a drawn axis (napari's line
#: tool leaves one on a click without a drag): they never pair, so they cannot take the
#: place of the axis drawn next.
MIN_LINE_PX = 1.5
#: napari's line tool leaves, on a click, a line from the click to a point the same small
#: step down and right in both coordinates (a few screen pixels, so up to about ten image
#: pixels when zoomed out). Lines of that shape up to this long are clicks too.
CLICK_LINE_MAX_PX = 24.0
#: Problem of a lesion with a line whose ends are on different slices. Its length in the
#: image plane would leave out the distance between the slices, and RECIST are measured
#: on an axial slice anyway: the line has to be drawn again there.
ACROSS_SLICES = (
    "not on one axial slice: draw RECIST on an axial slice, with the slices on the slider "
    "(napari's Roll dimensions button)"
)
# Leading coordinates closer than this are the same slice (napari gives both ends of a
# line drawn on a slice the slider's value, so they agree exactly).
_SAME_SLICE = 1e-6
# A length in mm inside a message ("12.5 mm"), to relabel where the pixel size is unknown.
_MM_IN_TEXT = re.compile(r"(\d) mm\b")


# -- lengths ----------------------------------------------------------------------------------
def _stack(data):
    """All shapes as one (n, vertices, ndim) array when they have the same size, else None."""
    if not len(data):
        return None
    try:
        stacked = np.asarray(list(data), dtype=float)
    except ValueError:  # shapes of different sizes
        return None
    return stacked if stacked.ndim == 3 else None


def line_lengths_mm(data, spacing, per_line_spacing=None) -> np.ndarray:
    """Length in mm of each line, from its first to its last vertex, in the image plane.

    A line whose ends are on different slices has no such length (NaN): its last two
    coordinates alone would leave out the distance between the slices.

    Parameters
    ----------
    data : sequence of array_like
        One ``(vertices, ndim)`` array per line; only the last two columns (row, col) count.
    spacing : tuple of float
        (row, col) pixel size in mm, used for every line.
    per_line_spacing : array_like, shape (n, 2), optional
        One (row, col) pixel size per line, used instead of ``spacing`` (lines read from a
        file may come from images with different pixel sizes).

    Returns
    -------
    ndarray, shape (n,)
    """
    n = len(data)
    if not n:
        return np.zeros(0)
    # First and last in-plane vertex of every line, gathered once, measured in one go: a
    # layer may hold thousands of lines and is measured again after each edit.
    stacked = _stack(data)
    if stacked is not None:
        ends = stacked[:, [0, -1], -2:]
        across = np.any(np.abs(stacked[:, 1:, :-2] - stacked[:, :1, :-2]) > _SAME_SLICE,
                        axis=(1, 2))
    else:
        arrays = [np.asarray(p, dtype=float) for p in data]
        ends = np.array([p[[0, -1], -2:] for p in arrays])
        across = np.array([_across_slices(p) for p in arrays])
    sp = np.broadcast_to(
        np.asarray(spacing if per_line_spacing is None else per_line_spacing, dtype=float),
        (n, 2),
    )
    lengths = np.hypot(*((ends[:, 1] - ends[:, 0]) * sp).T)
    lengths[across] = np.nan
    return lengths


def fill_line_spacing(data, per_line_spacing, slice_spacing=None, fallback=(1.0, 1.0)):
    """Per-line pixel sizes with the missing ones filled from the slice each line is on.

    A stack of key slices may have a different pixel size on each slice; a line drawn on
    one takes that slice's. A line without a valid spacing (NaN, zero or negative, as a newly
    drawn line has) gets, in this order: ``slice_spacing`` of its slice, the spacing of
    another line on the same slice, ``fallback``.

    Parameters
    ----------
    data : sequence of array_like
        ``(2, ndim)`` vertex arrays; leading columns, if any, are the slice.
    per_line_spacing : array_like, shape (n, 2)
        (row, col) pixel size per line in mm; NaN where unknown.
    slice_spacing : mapping, optional
        ``{slice: (row, col)}``; for a stack, the slice is the line's rounded first
        coordinate (a tuple of them with more than one leading axis).
    fallback : tuple of float
        (row, col) pixel size for lines nothing else gives one.

    Returns
    -------
    spacing : ndarray, shape (n, 2)
    filled : ndarray of bool, shape (n,)
        Which lines had no valid spacing.
    """
    n = len(data)
    values = np.array(per_line_spacing, dtype=float).reshape(n, 2)
    bad = ~np.all(np.isfinite(values) & (values > 0), axis=1)
    if not bad.any():
        return values, bad
    slices = slice_spacing or {}
    keys = [_leading(np.asarray(p, dtype=float)) for p in data]
    known: dict = {}
    for key, ok, sp in zip(keys, ~bad, values):
        if ok and key != "mixed":
            known.setdefault(key, sp)
    for i in np.flatnonzero(bad):
        key = keys[i]
        if key in slices:
            values[i] = np.asarray(slices[key], dtype=float)
        elif key in known:
            values[i] = known[key]
        else:
            values[i] = np.asarray(fallback, dtype=float)
    return values, bad


# -- pairing lines into lesions ---------------------------------------------------------------
def _across_slices(pts: np.ndarray) -> bool:
    """Whether a line's vertices differ in a leading (slice) coordinate."""
    if pts.shape[1] <= 2:
        return False
    lead = pts[:, :-2]
    return bool(np.any(np.abs(lead[1:] - lead[:1]) > _SAME_SLICE))


def _leading(pts: np.ndarray):
    """Slice of a line (its leading coordinates, rounded), or None for 2D lines.

    A line whose vertices are on different slices gets the key "mixed".
    """
    if pts.shape[1] <= 2:
        return None
    if _across_slices(pts):
        return "mixed"
    values = tuple(int(round(v)) for v in pts[0, :-2].tolist())
    return values[0] if len(values) == 1 else values


def _pixel_length(line: np.ndarray) -> float:
    """A line's length in its image's pixels (its last two coordinates); NaN for a line
    across slices, which has no length in one image plane."""
    pts = np.asarray(line, dtype=float)
    if _across_slices(pts):
        return float("nan")
    return float(np.hypot(*(pts[-1, -2:] - pts[0, -2:])))


def is_stray_line(line) -> bool:
    """Whether a line is a click rather than a drawn axis.

    A click is a line on one slice either under ``MIN_LINE_PX`` long, or of the shape
    napari's line tool leaves on a click at any zoom (equal positive steps in row and
    column, at most ``CLICK_LINE_MAX_PX`` long). A line across slices is never a click,
    however short its last two coordinates make it: it was drawn in a plane that is not
    axial (see ``ACROSS_SLICES``).

    Parameters
    ----------
    line : array_like, shape (2, ndim)
        The line's vertices; the last two columns are (row, col).

    Returns
    -------
    bool
    """
    pts = np.asarray(line, dtype=float)
    if _across_slices(pts):
        return False
    d = pts[-1, -2:] - pts[0, -2:]
    length = float(np.hypot(*d))
    if length < MIN_LINE_PX:
        return True
    # The tool adds one step to both float32 coordinates: they agree to rounding only.
    return bool(d[0] > 0 and abs(d[0] - d[1]) <= 2e-3 and length <= CLICK_LINE_MAX_PX)


def _point_segment_distance(p, a, b) -> float:
    d = b - a
    denom = float(d @ d)
    t = 0.0 if denom == 0 else float(np.clip((p - a) @ d / denom, 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * d)))


def segment_distance(s1, s2) -> float:
    """Shortest distance between two 2D segments.

    Parameters
    ----------
    s1, s2 : array_like, shape (2, 2)
        The endpoints of each segment.

    Returns
    -------
    float
        0 when the segments cross, else the smallest endpoint-to-segment distance.
    """
    a, b = np.asarray(s1, float)
    c, d = np.asarray(s2, float)

    def orient(p, q, r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    if o1 * o2 < 0 and o3 * o4 < 0:
        return 0.0
    # Segments that do not cross are closest at an endpoint of one of them.
    return min(
        _point_segment_distance(a, c, d),
        _point_segment_distance(b, c, d),
        _point_segment_distance(c, a, b),
        _point_segment_distance(d, a, b),
    )


def assign_lesions(
    data, lesion_ids, axes, spacing=(1.0, 1.0), shape_types=None, per_line_spacing=None
):
    """Give each line not yet in a lesion its ``lesion_id`` and ``axis``.

    A line belongs to a lesion when it has a lesion id (>= 0) and an axis that the lesion has
    not already got from an earlier line; other lines (new ones, or copies of a lesion's
    lines) are taken in order: a line joins the most recently drawn lesion that has only one
    line, is on the same slice and lies near it (their segments closer than half the longer
    one's length); the longer of the two (in mm) becomes ``long`` (``core.recist.order_axes``'s
    rule), so the axes may be drawn in either order. Otherwise it starts a new lesion (the
    next free id) as its ``long`` axis.
    Shapes other than lines are left out (id -1, axis "").

    Parameters
    ----------
    data : sequence of array_like
        ``(2, ndim)`` vertex arrays; leading columns, if any, are the slice.
    lesion_ids, axes : sequence
        Current per-line values (-1 and "" for lines not in a lesion).
    spacing : tuple of float
        (row, col) pixel size in mm, to compare lengths and distances physically.
    shape_types : sequence of str, optional
        napari shape type per entry of ``data``; only ``"line"`` shapes are paired.
    per_line_spacing : array_like, shape (n, 2), optional
        Pixel size of each line (lines on a stack of slices with different pixel sizes),
        used instead of ``spacing``.

    Returns
    -------
    lesion_ids : list of int
    axes : list of str
    """
    n = len(data)
    ids = [int(v) for v in lesion_ids]
    axes = [str(a) for a in axes]
    if len(ids) != n or len(axes) != n:
        raise ValueError(f"{n} lines but {len(ids)} lesion_ids and {len(axes)} axes")
    sp = np.broadcast_to(
        np.asarray(spacing if per_line_spacing is None else per_line_spacing, dtype=float),
        (n, 2),
    )
    pts = [np.asarray(p, dtype=float) for p in data]
    is_line = [
        (shape_types is None or shape_types[i] == "line") and pts[i].shape[0] == 2
        for i in range(n)
    ]
    lengths = line_lengths_mm(pts, spacing, per_line_spacing)
    # Slices are needed only for lines still to pair and lesions waiting for a second line;
    # a layer of thousands of lesions has few of either.
    keys: dict[int, object] = {}

    def key_of(i):
        if i not in keys:
            keys[i] = _leading(pts[i])
        return keys[i]

    members: dict[int, dict[str, int]] = {}
    pending = []
    for i in range(n):
        if not is_line[i]:
            ids[i], axes[i] = -1, ""
            continue
        lid, axis = ids[i], axes[i]
        if lid >= 0 and axis in _AXES and axis not in members.get(lid, {}):
            members.setdefault(lid, {})[axis] = i
        else:
            pending.append(i)
    next_id = max(members, default=-1) + 1
    # Lesions with one line, by slice: {slice: {lesion id: line}}. Lines across slices
    # ("mixed") never pair.
    waiting: dict[object, dict[int, int]] = {}
    for lid, lines in members.items():
        if len(lines) == 1:
            (j,) = lines.values()
            if key_of(j) != "mixed" and not is_stray_line(pts[j]):
                waiting.setdefault(key_of(j), {})[lid] = j

    for i in pending:
        key = key_of(i)
        partner = None
        stray = is_stray_line(pts[i])
        for lid, j in waiting.get(key, {}).items() if key != "mixed" and not stray else ():
            # "Near" scales with the lesion: a short axis starts within its long axis' reach.
            reach = 0.5 * max(lengths[i], lengths[j])
            gap = segment_distance(pts[i][:, -2:] * sp[i], pts[j][:, -2:] * sp[j])
            if gap <= reach and (partner is None or j > partner[1]):
                partner = (lid, j)
        if partner is None:
            ids[i], axes[i] = next_id, "long"
            members[next_id] = {"long": i}
            if key != "mixed" and not stray:
                waiting.setdefault(key, {})[next_id] = i
            next_id += 1
            continue
        lid, j = partner
        if short_exceeds_long(lengths[j], lengths[i]):
            axes[i], axes[j] = "long", "short"
        else:
            axes[i], axes[j] = "short", "long"
        ids[i] = lid
        members[lid] = {axes[i]: i, axes[j]: j}
        del waiting[key][lid]
    return ids, axes


# -- lesions for the table, grouping and pseudo-masks -----------------------------------------
@dataclass
class LesionInfo:
    """One annotated lesion, measured and checked.

    Attributes
    ----------
    lesion_id : int
    slice : int, tuple of int, "mixed" or None
        Slice of the lesion's lines (None for 2D lines, "mixed" when they disagree).
    long_index, short_index : int or None
        Position of the lesion's long and short line among all lines.
    long_px, short_px, long_mm, short_mm : float
        Axis lengths in pixels and in mm (NaN for a missing axis).
    perpendicularity_error : float
        Degrees from a right angle between the axes, in mm space (NaN without both axes).
    recist : Recist or None
        The measurement, when it is valid.
    problem : str
        Empty for a valid RECIST, else why it is incomplete or invalid (for a measurement
        that breaks a rule, ``Recist``'s own message).
    centre : ndarray
        Leading coordinates then (row, col) of the axes' crossing when valid, else the mean
        of the lesion's vertices.
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
        """Whether the lesion is a valid RECIST."""
        return not self.problem

    @property
    def line_indices(self) -> list[int]:
        """Positions of the lesion's long and short line (those it has)."""
        return [i for i in (self.long_index, self.short_index) if i is not None]

    @property
    def status(self) -> str:
        """What the lesion table shows: "ok", or the problem."""
        return "ok" if self.ok else self.problem


def _perpendicularity(long_pts, short_pts, spacing) -> float:
    # Recist measures this too, but only a valid Recist exists; the angle of a lesion that
    # breaks the rules is what a reader needs to see to fix it.
    d = (long_pts[1] - long_pts[0]) * spacing
    e = (short_pts[1] - short_pts[0]) * spacing
    norm = float(np.linalg.norm(d) * np.linalg.norm(e))
    if norm == 0:
        return float("nan")
    cos = abs(float(d @ e)) / norm
    return float(np.degrees(np.arcsin(min(1.0, cos))))


def describe_lesions(
    data, lesion_ids, axes, spacing=(1.0, 1.0), per_line_spacing=None, tolerance=15.0,
    cache: dict | None = None, unit: str = "mm",
) -> list[LesionInfo]:
    """Measure and check each lesion of an annotation (sorted by lesion id).

    Lines with lesion id < 0 are not part of a lesion and are left out.

    Parameters
    ----------
    data : sequence of array_like
        ``(2, ndim)`` vertex arrays, one per line.
    lesion_ids, axes : sequence
        Lesion id and axis (``"long"``/``"short"``) of each line.
    spacing : tuple of float
        (row, col) pixel size in mm.
    per_line_spacing : array_like, shape (n, 2), optional
        Pixel size per line; a lesion takes that of its first line.
    tolerance : float
        Largest accepted deviation from a right angle between the axes, in degrees.
    cache : dict, optional
        Results of an earlier call (pass the same dict each time): lesions whose lines have
        not changed are not validated again, so a layer with thousands of lesions stays quick
        to follow while one is edited. It is left holding this call's input and lesions.
    unit : {"mm", "px"}
        Unit of lengths in the problems' text: "px" where the pixel size is not known (the
        spacing is then one pixel, and a length in "mm" would claim what nobody measured).

    Returns
    -------
    list of LesionInfo
    """
    if len(lesion_ids) != len(data) or len(axes) != len(data):
        raise ValueError(
            f"{len(data)} lines but {len(lesion_ids)} lesion_ids and {len(axes)} axes"
        )
    ids = [int(v) for v in lesion_ids]
    kinds = [str(a) for a in axes]
    by_id: dict[int, dict[str, list[int]]] = {}
    for i, (lid, axis) in enumerate(zip(ids, kinds)):
        if lid >= 0:
            by_id.setdefault(lid, {}).setdefault(axis, []).append(i)
    stacked = _stack(data)
    # Each line's vertices as bytes (one C call for all lines): cheap to compare.
    if stacked is not None:
        rows = np.ascontiguousarray(stacked.reshape(len(data), -1))
        flat = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel().tolist()
    else:
        flat = [np.asarray(p, dtype=float).tobytes() + bytes(np.shape(p)) for p in data]
    spacings = None if per_line_spacing is None else np.asarray(per_line_spacing).tolist()
    base = tuple(float(v) for v in spacing)
    if unit not in ("mm", "px"):
        raise ValueError(f"unit must be 'mm' or 'px', got {unit!r}")
    settings = (base, float(tolerance), spacings is None, unit)
    known = _unchanged_lesions(cache, settings, flat, ids, kinds, spacings)
    out = []
    for lid in sorted(by_id):
        info = known.get(lid)
        if info is None:
            lines = by_id[lid]
            indices = sorted(i for group in lines.values() for i in group)
            sp = base if spacings is None else tuple(spacings[indices[0]])
            arrays = {i: np.asarray(data[i], dtype=float) for i in indices}
            info = _describe_one(lid, lines, arrays, np.asarray(sp), tolerance)
            if unit != "mm":
                info.problem = _MM_IN_TEXT.sub(rf"\1 {unit}", info.problem)
        out.append(info)
    if cache is not None:
        cache.clear()
        cache["previous"] = {
            "settings": settings, "flat": flat, "ids": ids, "axes": kinds,
            "spacings": spacings, "infos": {info.lesion_id: info for info in out},
        }
    return out


def _unchanged_lesions(cache, settings, flat, ids, kinds, spacings) -> dict:
    """Lesions of the previous call (kept in ``cache``) none of whose lines changed.

    Lines are compared by position: a lesion is reused when each line that belongs to it,
    before or now, has the same vertices, lesion id, axis and pixel size at the same index,
    so its line indices hold too. Lines added at the end leave the others reusable.
    """
    previous = (cache or {}).get("previous")
    if previous is None or previous["settings"] != settings:
        return {}
    old_flat, old_ids, old_kinds = previous["flat"], previous["ids"], previous["axes"]
    old_spacings = previous["spacings"]
    common = min(len(flat), len(old_flat))
    dirty = set(ids[common:]) | set(old_ids[common:])
    for i in range(common):
        if (
            flat[i] != old_flat[i] or ids[i] != old_ids[i] or kinds[i] != old_kinds[i]
            or (spacings is not None and spacings[i] != old_spacings[i])
        ):
            dirty.add(ids[i])
            dirty.add(old_ids[i])
    return {lid: info for lid, info in previous["infos"].items() if lid not in dirty}


def _describe_one(lid, lines, arrays, sp, tolerance) -> LesionInfo:
    info = LesionInfo(lesion_id=lid)
    longs, shorts = lines.get("long", []), lines.get("short", [])
    info.long_index = longs[0] if longs else None
    info.short_index = shorts[0] if shorts else None
    idx = info.line_indices
    keys = {_leading(arrays[i]) for i in idx}
    info.slice = next(iter(keys)) if len(keys) == 1 else "mixed"
    across = any(_across_slices(arrays[i]) for i in idx)
    for name, i in zip(_AXES, (info.long_index, info.short_index)):
        if i is not None and not _across_slices(arrays[i]):
            d = arrays[i][-1, -2:] - arrays[i][0, -2:]
            setattr(info, f"{name}_px", float(np.hypot(*d)))
            setattr(info, f"{name}_mm", float(np.hypot(*(d * sp))))
    centre_pts = np.vstack([arrays[i] for i in idx]) if idx else np.zeros((1, 2))
    info.centre = centre_pts.mean(axis=0)
    if len(longs) > 1 or len(shorts) > 1 or set(lines) - set(_AXES):
        info.problem = "more than two lines share this lesion id"
    elif across:
        # Before "incomplete" or "a click": drawing the other axis or deleting the line
        # as a click would not help; drawing it on a slice does.
        info.problem = ACROSS_SLICES
    elif info.long_index is None:
        info.problem = "incomplete: no long axis"
    elif info.short_index is None:
        info.problem = "incomplete: draw the short axis"
        if is_stray_line(arrays[info.long_index]):
            info.problem = "a click rather than a drawn axis: delete it"
    else:
        long_pts, short_pts = arrays[info.long_index], arrays[info.short_index]
        info.perpendicularity_error = _perpendicularity(long_pts[:, -2:], short_pts[:, -2:], sp)
        try:
            (info.recist,), _, _ = recists_from_shapes(
                [long_pts, short_pts],
                {"lesion_id": [lid, lid], "axis": list(_AXES)},
                tuple(sp),
                tolerance,
            )
        except ValueError as exc:
            # The table names the lesion already; its problem is the reason alone.
            info.problem = str(exc).removeprefix(f"lesion {lid}: ")
        else:
            info.centre = np.concatenate([long_pts[0, :-2], info.recist.centre])
    return info


# -- fixes and simulation ---------------------------------------------------------------------
def perpendicular_short_axis(long_axis, short_axis, spacing=(1.0, 1.0)) -> np.ndarray:
    """The short axis turned about its midpoint to be perpendicular to the long axis.

    Parameters
    ----------
    long_axis, short_axis : array_like, shape (2, 2)
        (row, col) endpoints in pixels.
    spacing : tuple of float
        (row, col) pixel size in mm. The turn is made in mm, so the result is perpendicular
        and as long as the drawn short axis physically, even with anisotropic pixels.

    Returns
    -------
    ndarray, shape (2, 2)
        The new short axis; its endpoints keep their order (the first stays on the same
        side of the long axis).

    Raises
    ------
    ValueError
        When the long axis has zero length (there is no direction to be perpendicular to).
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

    Each label is measured with ``recist_from_mask``; in 3D on the slice where its area is
    largest (its key slice), as a reader would choose it.

    Parameters
    ----------
    labels : array_like of int, 2D or 3D
        0 is background; in 3D the first axis is the slice.
    spacing : tuple of float
        In-plane (row, col) pixel size in mm.

    Returns
    -------
    recists : list of Recist
    label_values : list of int
        The label each RECIST measures.
    slices : list of int or None
        Key slice of each measured label in 3D, else None.
    skipped : list of str
        Labels that could not be measured, with the reason.

    Raises
    ------
    ValueError
        When ``labels`` is neither 2D nor 3D.
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
