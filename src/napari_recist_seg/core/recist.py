"""RECIST measurements: one lesion's long and short axes, validated, with conversions.

Coordinates are (row, col) pixels throughout; spacing is (row, col) in millimetres.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "AXIS_ORDER_RULE",
    "Recist",
    "outside_image",
    "order_axes",
    "short_exceeds_long",
    "recist_from_mask",
    "recists_from_shapes",
    "recists_to_shapes",
]

# Lengths below this are treated as zero: a RECIST axis must span a measurable distance.
_MIN_LENGTH = 1e-6
# Slack for "the short axis crosses the long axis" so that endpoints placed exactly on the
# other axis (common when a mark is snapped to a pixel) still count as crossing.
_CROSS_TOL = 1e-6


#: The one rule for a short axis longer than the long one, whichever path a lesion comes by
#: (drawn, read from a file, read from DeepLesion). Lines not yet labelled are labelled by it:
#: the longer of the two, in mm, is the long axis (``order_axes``). Axes that are labelled
#: already (a line edited after pairing, a row of a file) are the reader's marks and are never
#: relabelled behind their back: such a lesion is a rule violation, with ``Recist``'s message.
AXIS_ORDER_RULE = (
    "the longer axis in mm is the long axis: unlabelled lines are labelled so, labelled axes "
    "that break it are flagged"
)
# Relative slack of the comparison: equal axes (a round lesion) are in order.
_LENGTH_SLACK = 1e-9


# How far (px) beyond the image's edge an endpoint may lie: marks placed on the border pixel,
# or a rounding away, are not errors.
OUTSIDE_MARGIN_PX = 1.0


def outside_image(recist, shape, image: str = "the image",
                  margin: float = OUTSIDE_MARGIN_PX) -> str:
    """Why ``recist`` does not lie on an image of ``shape`` ("" when it does).

    Pixel centres are at whole (row, col) coordinates, so the image spans -0.5 to
    ``rows - 0.5`` (and columns alike); an endpoint may lie up to ``margin`` pixels beyond.
    A RECIST outside its image is most often one whose coordinates are not 0-based (row, col)
    pixels of that image: millimetres, x before y, or another image's size.

    Parameters
    ----------
    recist : Recist
    shape : tuple of int
        The image's (rows, cols) (further leading entries are ignored).
    image : str
        The image's name, for the message.
    margin : float

    Returns
    -------
    str
    """
    rows, cols = (int(v) for v in tuple(shape)[-2:])
    for r, c in np.asarray(recist.endpoints, dtype=float):
        if not (-0.5 - margin <= r <= rows - 0.5 + margin
                and -0.5 - margin <= c <= cols - 0.5 + margin):
            return (f"its endpoint (row {r:.1f}, col {c:.1f}) lies outside {image} "
                    f"({rows} rows x {cols} columns); RECIST coordinates are 0-based (row, "
                    f"col) pixels of the image")
    return ""


def short_exceeds_long(long_mm: float, short_mm: float) -> bool:
    """Whether a short axis of ``short_mm`` breaks RECIST against a long axis of ``long_mm``.

    Parameters
    ----------
    long_mm, short_mm : float
        Axis lengths in the same unit (mm where the pixel size is known).

    Returns
    -------
    bool
        True when the short axis is longer (beyond a relative 1e-9, so equal axes pass).
    """
    return float(short_mm) > float(long_mm) * (1 + _LENGTH_SLACK)


def order_axes(first, second, spacing=(1.0, 1.0)):
    """Two unlabelled axes as (long, short) by ``AXIS_ORDER_RULE``.

    Parameters
    ----------
    first, second : array_like, shape (2, 2)
        (row, col) endpoints in pixels.
    spacing : tuple of float
        (row, col) pixel size in mm: the lengths are compared physically.

    Returns
    -------
    long_axis, short_axis : ndarray, shape (2, 2)
    swapped : bool
        True when ``second`` was the longer (and so became the long axis).
    """
    a = np.asarray(first, dtype=float)
    b = np.asarray(second, dtype=float)
    sp = np.asarray(spacing, dtype=float)
    a_mm = float(np.linalg.norm((a[-1, -2:] - a[0, -2:]) * sp))
    b_mm = float(np.linalg.norm((b[-1, -2:] - b[0, -2:]) * sp))
    if short_exceeds_long(a_mm, b_mm):
        return b, a, True
    return a, b, False


# Bounds that keep every product of the measurement finite in float64: no image has 10^15
# pixels along a side, and a pixel between a picometre and a kilometre covers microscopy to
# any scan. Beyond them lengths and angles would overflow or vanish and a perfectly drawn
# RECIST would be rejected for the wrong reason.
_MAX_COORD = 1e15
_SPACING_RANGE = (1e-9, 1e6)


def _as_axis(value, name: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 2x2 array of (row, col) endpoints: {exc}") from None
    if arr.shape != (2, 2):
        raise ValueError(
            f"{name} must be a 2x2 array of (row, col) endpoints, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite coordinates: {arr.tolist()}")
    if np.abs(arr).max() > _MAX_COORD:
        raise ValueError(
            f"{name} has coordinates beyond {_MAX_COORD:.0e} pixels: {arr.tolist()}"
        )
    return arr


def _as_spacing(value) -> np.ndarray:
    try:
        arr = np.array(value, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spacing must be two positive numbers (row, col) in mm: {exc}") from None
    if arr.shape != (2,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(
            f"spacing must be two positive finite numbers (row, col) in mm, got {value!r}"
        )
    low, high = _SPACING_RANGE
    if np.any(arr < low) or np.any(arr > high):
        raise ValueError(
            f"spacing must be between {low:.0e} and {high:.0e} mm per pixel, got {value!r}"
        )
    return arr


def _line_intersection(p0, p1, q0, q1):
    """Parameters (t, u) with p0 + t (p1 - p0) == q0 + u (q1 - q0); None when parallel."""
    d = p1 - p0
    e = q1 - q0
    denom = d[0] * e[1] - d[1] * e[0]
    scale = np.linalg.norm(d) * np.linalg.norm(e)
    if abs(denom) <= 1e-12 * scale:
        return None
    w = q0 - p0
    t = (w[0] * e[1] - w[1] * e[0]) / denom
    u = (w[0] * d[1] - w[1] * d[0]) / denom
    return t, u


class Recist:
    """One lesion's RECIST measurement: a long axis and the short axis across it.

    Parameters
    ----------
    long_axis, short_axis : array_like, shape (2, 2)
        The two endpoints of each axis as (row, col) pixel coordinates.
    spacing : tuple of float, optional
        Pixel size (row, col) in millimetres, used for ``long_mm``, ``short_mm`` and for the
        perpendicularity check (which is physical, so anisotropic pixels are handled).
    max_perpendicularity_error : float, optional
        Largest accepted deviation from a right angle between the axes, in degrees. RECIST drawn
        by hand is rarely exactly perpendicular; 15 degrees by default.

    Raises
    ------
    ValueError
        For non-finite coordinates or coordinates beyond 10^15 pixels, a pixel size outside
        10^-9 to 10^6 mm, zero-length axes, axes further from perpendicular than the
        tolerance, a short axis longer than the long axis, or axes whose segments do not cross.
    """

    __slots__ = ("_long", "_short", "_spacing", "_centre", "_tol")

    def __init__(self, long_axis, short_axis, spacing=(1.0, 1.0), max_perpendicularity_error=15.0):
        long_axis = _as_axis(long_axis, "long_axis")
        short_axis = _as_axis(short_axis, "short_axis")
        self._spacing = _as_spacing(spacing)
        tol = float(max_perpendicularity_error)
        if not np.isfinite(tol) or not 0 <= tol <= 90:
            raise ValueError(
                f"max_perpendicularity_error must be between 0 and 90 degrees, got {tol}"
            )
        self._tol = tol
        long_len = float(np.linalg.norm(long_axis[1] - long_axis[0]))
        short_len = float(np.linalg.norm(short_axis[1] - short_axis[0]))
        if long_len < _MIN_LENGTH:
            raise ValueError(f"long axis has zero length (endpoints {long_axis.tolist()})")
        if short_len < _MIN_LENGTH:
            raise ValueError(f"short axis has zero length (endpoints {short_axis.tolist()})")
        self._long = long_axis
        self._short = short_axis
        self._long.setflags(write=False)
        self._short.setflags(write=False)
        self._spacing.setflags(write=False)
        perp = self.perpendicularity_error
        if perp > tol:
            raise ValueError(
                f"axes are {perp:.1f} degrees from perpendicular (tolerance {tol:g} degrees)"
            )
        if short_exceeds_long(self.long_mm, self.short_mm):
            raise ValueError(
                f"short axis ({self.short_mm:.3g} mm) is longer than the long axis "
                f"({self.long_mm:.3g} mm)"
            )
        params = _line_intersection(long_axis[0], long_axis[1], short_axis[0], short_axis[1])
        if params is None:  # unreachable after the perpendicularity check unless tol == 90
            raise ValueError("long and short axes are parallel and do not cross")
        t, u = params
        lo, hi = -_CROSS_TOL, 1 + _CROSS_TOL
        if not (lo <= t <= hi and lo <= u <= hi):
            raise ValueError(
                "short axis does not cross the long axis "
                f"(their lines meet at {t:.2f} along the long axis, {u:.2f} along the short "
                "axis; both must lie between 0 and 1)"
            )
        self._centre = long_axis[0] + np.clip(t, 0, 1) * (long_axis[1] - long_axis[0])
        self._centre.setflags(write=False)

    # -- geometry -------------------------------------------------------------------------
    @property
    def long_axis(self) -> np.ndarray:
        """(2, 2) endpoints of the long axis, (row, col) pixels (read-only)."""
        return self._long

    @property
    def short_axis(self) -> np.ndarray:
        """(2, 2) endpoints of the short axis, (row, col) pixels (read-only)."""
        return self._short

    @property
    def spacing(self) -> tuple[float, float]:
        """Pixel size (row, col) in millimetres."""
        return (float(self._spacing[0]), float(self._spacing[1]))

    @property
    def max_perpendicularity_error(self) -> float:
        """Tolerance (degrees) this measurement was validated with."""
        return self._tol

    @property
    def long_length(self) -> float:
        """Length of the long axis in pixels."""
        return float(np.linalg.norm(self._long[1] - self._long[0]))

    @property
    def short_length(self) -> float:
        """Length of the short axis in pixels."""
        return float(np.linalg.norm(self._short[1] - self._short[0]))

    @property
    def long_mm(self) -> float:
        """Length of the long axis in millimetres."""
        return float(np.linalg.norm((self._long[1] - self._long[0]) * self._spacing))

    @property
    def short_mm(self) -> float:
        """Length of the short axis in millimetres."""
        return float(np.linalg.norm((self._short[1] - self._short[0]) * self._spacing))

    @property
    def centre(self) -> np.ndarray:
        """(row, col) where the two axis lines intersect."""
        return self._centre

    @property
    def angle(self) -> float:
        """Orientation of the long axis in degrees, in [0, 180).

        Measured from the column (x) axis towards the row (y) axis, i.e. clockwise on screen,
        where rows run downwards: ``atan2(d_row, d_col)`` folded to half a turn.
        """
        d = self._long[1] - self._long[0]
        return float(np.degrees(np.arctan2(d[0], d[1])) % 180.0) % 180.0

    @property
    def perpendicularity_error(self) -> float:
        """Deviation of the angle between the axes from 90 degrees, in millimetre space."""
        d = (self._long[1] - self._long[0]) * self._spacing
        e = (self._short[1] - self._short[0]) * self._spacing
        cos = abs(float(np.dot(d, e))) / (np.linalg.norm(d) * np.linalg.norm(e))
        return float(np.degrees(np.arcsin(min(1.0, cos))))

    @property
    def endpoints(self) -> np.ndarray:
        """(4, 2) array: long axis start, long axis end, short axis start, short axis end."""
        return np.vstack([self._long, self._short])

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(row_min, col_min, row_max, col_max) of the four endpoints."""
        pts = self.endpoints
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))

    # -- derived measurements ------------------------------------------------------------
    def _with(self, long_axis, short_axis, spacing=None) -> Recist:
        return Recist(
            long_axis,
            short_axis,
            self._spacing if spacing is None else spacing,
            max_perpendicularity_error=self._tol,
        )

    def translated(self, offset) -> Recist:
        """The same measurement shifted by ``offset`` (row, col) pixels."""
        off = np.asarray(offset, dtype=float).reshape(1, 2)
        return self._with(self._long + off, self._short + off)

    def scaled(self, factor) -> Recist:
        """The measurement in an image resampled by ``factor`` (scalar or (row, col)).

        Coordinates are multiplied by ``factor`` and the spacing divided by it, so lengths in
        millimetres are unchanged.
        """
        f = np.broadcast_to(np.asarray(factor, dtype=float), (2,))
        if not np.all(np.isfinite(f)) or np.any(f <= 0):
            raise ValueError(f"scale factor must be positive and finite, got {factor!r}")
        return self._with(self._long * f, self._short * f, self._spacing / f)

    def with_spacing(self, spacing) -> Recist:
        """The same pixel coordinates with another pixel spacing (mm)."""
        return self._with(self._long, self._short, spacing)

    # -- DeepLesion ---------------------------------------------------------------------
    @classmethod
    def from_deeplesion(
        cls, coordinates, spacing=(1.0, 1.0), one_based=True, max_perpendicularity_error=15.0
    ) -> Recist:
        """Build from DeepLesion's ``Measurement_coordinates``.

        Parameters
        ----------
        coordinates : sequence of 8 numbers or str
            ``x1, y1, x2, y2`` (long axis) then ``x3, y3, x4, y4`` (short axis), x (column)
            before y (row), as in ``DL_info.csv``; a comma-separated string is accepted.
        spacing : tuple of float
            Pixel size (row, col) in mm. DeepLesion's ``Spacing_mm_px_`` is isotropic in-plane.
        one_based : bool
            DeepLesion's pixel coordinates are 1-based (NIH's loaders subtract one), so by
            default one is subtracted from each to get 0-based (row, col) array indices.
            ``to_deeplesion`` adds it back, so the round trip is exact.
        """
        values = _parse_numbers(coordinates, 8, "Measurement_coordinates")
        xy = values.reshape(4, 2)
        rc = xy[:, ::-1] - (1.0 if one_based else 0.0)
        return cls(rc[:2], rc[2:], spacing, max_perpendicularity_error=max_perpendicularity_error)

    def to_deeplesion(self, one_based=True) -> list[float]:
        """The numbers ``x1, y1, ..., x4, y4`` in DeepLesion's order (see ``from_deeplesion``)."""
        xy = self.endpoints[:, ::-1] + (1.0 if one_based else 0.0)
        return [float(v) for v in xy.reshape(-1)]

    # -- misc ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-friendly dict: ``long_axis``, ``short_axis``, ``spacing``."""
        return {
            "long_axis": self._long.tolist(),
            "short_axis": self._short.tolist(),
            "spacing": list(self.spacing),
        }

    def __eq__(self, other) -> bool:
        if not isinstance(other, Recist):
            return NotImplemented
        return (
            np.array_equal(self._long, other._long)
            and np.array_equal(self._short, other._short)
            and np.array_equal(self._spacing, other._spacing)
        )

    def __hash__(self) -> int:
        return hash((self._long.tobytes(), self._short.tobytes(), self._spacing.tobytes()))

    def __repr__(self) -> str:
        return (
            f"Recist(long_axis={self._long.tolist()}, short_axis={self._short.tolist()}, "
            f"spacing={self.spacing})"
        )


def _parse_numbers(value, n: int, name: str) -> np.ndarray:
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").split(",") if p.strip()]
    else:
        parts = list(np.ravel(np.asarray(value, dtype=object)))
    if len(parts) != n:
        raise ValueError(f"{name} needs {n} numbers, got {len(parts)}: {value!r}")
    try:
        arr = np.array([float(p) for p in parts])
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} has a value that is not a number: {value!r}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values: {value!r}")
    return arr


# -- napari Shapes ------------------------------------------------------------------------
def recists_to_shapes(recists: Sequence[Recist], slices=None, lesion_ids=None):
    """Two ``line`` shapes per lesion, in the form napari's Shapes layer takes.

    Parameters
    ----------
    recists : sequence of Recist
    slices : sequence of int, optional
        Index along a leading (stack) axis for each lesion; the lines are then 3D.
    lesion_ids : sequence of int, optional
        Ids written to the ``lesion_id`` feature (default 0, 1, ...).

    Returns
    -------
    data : list of ndarray
        ``(2, 2)`` (or ``(2, 3)`` with slices) vertex arrays: long axis, then short axis.
    features : dict of list
        ``lesion_id`` and ``axis`` (``"long"`` / ``"short"``), one entry per line.
    """
    recists = list(recists)
    ids = list(range(len(recists))) if lesion_ids is None else [int(i) for i in lesion_ids]
    if len(ids) != len(recists):
        raise ValueError(f"lesion_ids has {len(ids)} entries for {len(recists)} lesions")
    if slices is not None and len(slices) != len(recists):
        raise ValueError(f"slices has {len(slices)} entries for {len(recists)} lesions")
    data, feat_id, feat_axis = [], [], []
    for i, r in enumerate(recists):
        for axis_name, pts in (("long", r.long_axis), ("short", r.short_axis)):
            pts = np.array(pts)
            if slices is not None:
                pts = np.column_stack([np.full(2, float(slices[i])), pts])
            data.append(pts)
            feat_id.append(ids[i])
            feat_axis.append(axis_name)
    return data, {"lesion_id": feat_id, "axis": feat_axis}


def recists_from_shapes(
    data, features: Mapping, spacing=(1.0, 1.0), max_perpendicularity_error=15.0,
    lesion_spacing: Mapping | None = None,
):
    """Pair the ``line`` shapes of a RECIST Shapes layer back into lesions.

    Parameters
    ----------
    data : sequence of array_like
        Vertex arrays, ``(2, 2)`` or ``(2, ndim)``; the last two columns are (row, col) and a
        single leading column, if present, is the slice index.
    features : mapping
        Columns ``lesion_id`` and ``axis`` (one value per shape), e.g. ``layer.features``.
    spacing : tuple of float
        Pixel size (row, col) in mm.
    lesion_spacing : mapping of int to (float, float), optional
        The pixel size of the lesions that have one of their own, by lesion id (lines of a
        stack of slices with several pixel sizes), used instead of ``spacing``.

    Returns
    -------
    recists : list of Recist
    lesion_ids : list of int
    slices : list of int or None
        One slice per lesion for 3D data, else None.

    Raises
    ------
    ValueError
        When a column is missing, a lesion lacks its long or short line, has two of one, its
        lines lie on different slices, or a measurement is invalid (the lesion id is named).
    """
    try:
        present = [col for col in ("lesion_id", "axis") if col in features]
    except TypeError:
        raise ValueError(
            f"features must be a mapping of columns, got {type(features).__name__}"
        ) from None
    for col in ("lesion_id", "axis"):
        if col not in present:
            raise ValueError(f"RECIST shapes need a '{col}' feature column")
    try:
        ids = list(features["lesion_id"])
        axes = [str(a) for a in features["axis"]]
        data = list(data)
    except TypeError as exc:
        raise ValueError(f"RECIST shapes need sequences of shapes and feature values: {exc}"
                         ) from None
    if not (len(ids) == len(axes) == len(data)):
        raise ValueError(
            f"{len(data)} shapes but {len(ids)} lesion_id and {len(axes)} axis values"
        )
    by_lesion: dict[int, dict[str, np.ndarray]] = {}
    order: list[int] = []
    for pts, lid, axis in zip(data, ids, axes):
        pts = np.asarray(pts, dtype=float)
        if pts.ndim != 2 or pts.shape[0] != 2 or pts.shape[1] < 2:
            raise ValueError(f"lesion {lid}: a RECIST axis must be a line of 2 points")
        try:
            # 3.0 (a float column) is lesion 3; 3.5 is no lesion id, not lesion 3.
            if not isinstance(lid, str) and int(lid) != lid:
                raise ValueError
            lid = int(lid)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"lesion_id must be an integer, got {lid!r}") from None
        if axis not in ("long", "short"):
            raise ValueError(f"lesion {lid}: axis must be 'long' or 'short', got {axis!r}")
        entry = by_lesion.setdefault(lid, {})
        if lid not in order:
            order.append(lid)
        if axis in entry:
            raise ValueError(f"lesion {lid} has two {axis} axes")
        entry[axis] = pts
    recists, slices = [], []
    three_d = any(p.shape[1] > 2 for e in by_lesion.values() for p in e.values())
    for lid in order:
        entry = by_lesion[lid]
        missing = [a for a in ("long", "short") if a not in entry]
        if missing:
            raise ValueError(f"lesion {lid} has no {missing[0]} axis")
        long_pts, short_pts = entry["long"], entry["short"]
        if three_d:
            if long_pts.shape[1] != short_pts.shape[1] or long_pts.shape[1] < 3:
                raise ValueError(
                    f"lesion {lid}: its lines mix 2D and {max(long_pts.shape[1], 3)}D points"
                )
            lead = np.concatenate([long_pts[:, :-2], short_pts[:, :-2]])
            if not np.all(np.isfinite(lead)):
                raise ValueError(f"lesion {lid}: its slice coordinate is not finite")
            if not np.allclose(lead, lead[0]):
                raise ValueError(f"lesion {lid}: its two axes are not on the same slice")
            slices.append(int(round(float(lead[0, 0]))) if lead.shape[1] else 0)
        try:
            recists.append(
                Recist(long_pts[:, -2:], short_pts[:, -2:],
                       (lesion_spacing or {}).get(lid, spacing), max_perpendicularity_error)
            )
        except ValueError as exc:
            raise ValueError(f"lesion {lid}: {exc}") from None
    return recists, order, (slices if three_d else None)


# -- simulation from a mask ----------------------------------------------------------------
def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    # 8-connectivity: pixels touching at a corner belong to the same lesion.
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _boundary_points(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, border_value=0)
    return np.argwhere(mask & ~inner).astype(float)


def _farthest_pair(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact diameter of a point set through its convex hull."""
    hull_pts = points
    if len(points) > 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            hull_pts = points[ConvexHull(points).vertices]
        except QhullError:  # collinear points: the extremes along the line are the answer
            hull_pts = points
    diff = hull_pts[:, None, :] - hull_pts[None, :, :]
    d2 = np.einsum("ijk,ijk->ij", diff, diff)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return hull_pts[i], hull_pts[j]


def recist_from_mask(
    mask, spacing=(1.0, 1.0), max_perpendicularity_error=15.0, ties: str = "middle"
) -> Recist:
    """Simulate the RECIST a reader would draw on a binary lesion mask.

    The long axis is the largest Feret diameter of the largest connected component, found
    exactly between pixel centres on its convex hull. The short axis is the longest chord
    perpendicular to it: pixel centres are binned by their position along the long axis (one
    pixel per bin, bins placed symmetrically about its midpoint) and the widest bin whose
    extent crosses the long axis gives the chord.

    Parameters
    ----------
    mask : array_like, 2D
        Nonzero pixels are the lesion.
    spacing : tuple of float
        Pixel size (row, col) in mm, stored on the result.
    max_perpendicularity_error : float
        Tolerance stored on the result.
    ties : {"middle", "first"}
        Which of several equally long perpendicular chords becomes the short axis: the one
        nearest the middle of the long axis (what a reader does), or the first from the long
        axis' start (a plain arg-max; its crossing drifts towards one end).

    Returns
    -------
    Recist

    Raises
    ------
    ValueError
        When ``mask`` is not 2D, not boolean or numeric, has NaN or inf, is empty, or its
        lesion is a single pixel.
    """
    if ties not in ("middle", "first"):
        raise ValueError(f"ties must be 'middle' or 'first', got {ties!r}")
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        # Anything else compares unequal to 0 everywhere ("0" != 0): the whole image would
        # silently become the lesion.
        raise ValueError(f"mask must have a boolean or numeric dtype, got {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError("mask has non-finite values")
    fg = arr != 0
    if not fg.any():
        raise ValueError("mask is empty: no lesion to measure")
    spacing_arr = _as_spacing(spacing)
    rows, cols = np.nonzero(fg)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    comp = _largest_component(fg[r0:r1, c0:c1])
    # Measure in millimetres so that the axes are longest and perpendicular physically, as a
    # reader sees them, even when pixels are not square.
    pts = _boundary_points(comp) * spacing_arr
    if len(pts) < 2:
        raise ValueError("mask's lesion is a single pixel: RECIST needs at least two pixels")
    a, b = _farthest_pair(pts)
    length = float(np.linalg.norm(b - a))
    direction = (b - a) / length
    normal = np.array([-direction[1], direction[0]])

    step = float(spacing_arr.min())
    inside = np.argwhere(comp).astype(float) * spacing_arr - a
    u = inside @ direction / step
    v = inside @ normal
    n_steps = length / step
    half = n_steps / 2
    # Only occupied bins are kept: with very anisotropic pixels the long axis can span far
    # more bins of the finer pitch than the lesion has pixels.
    rel_bins, bins = np.unique(np.rint(u - half), return_inverse=True)
    bins = bins.reshape(-1)
    n_bins = len(rel_bins)
    vmin = np.full(n_bins, np.inf)
    vmax = np.full(n_bins, -np.inf)
    np.minimum.at(vmin, bins, v)
    np.maximum.at(vmax, bins, v)
    width = np.where((vmin <= 0) & (vmax >= 0), vmax - vmin, -1.0)
    if width.max() <= 0:
        vmin_k, vmax_k = -0.5 * step, 0.5 * step
        pos = half
    else:
        # Equally long chords are common in symmetric lesions; a reader measures the one
        # across the middle, so by default the most central of them is taken. Pixel rounding
        # makes such chords differ by fractions of a pixel, so within half a pixel is "equal".
        slack = 0.5 * step if ties == "middle" else 1e-9 * step
        best = np.flatnonzero(width >= width.max() - slack)
        k = int(best[np.argmin(np.abs(rel_bins[best]))] if ties == "middle" else best[0])
        vmin_k, vmax_k = vmin[k], vmax[k]
        pos = float(rel_bins[k]) + half
    u_k = float(np.clip(pos * step, 0, length))
    base = a + u_k * direction
    short = np.vstack([base + vmin_k * normal, base + vmax_k * normal])
    if vmax_k - vmin_k > length:
        # Only possible for tiny, nearly square blobs; keep the measurement valid.
        mid = short.mean(axis=0)
        half = 0.5 * length * normal
        short = np.vstack([mid - half, mid + half])
    offset = np.array([r0, c0], dtype=float)
    long_axis = np.vstack([a, b]) / spacing_arr + offset
    short = short / spacing_arr + offset
    return Recist(long_axis, short, spacing, max_perpendicularity_error=max_perpendicularity_error)



