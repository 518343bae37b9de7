"""Fuzzing every public core function with degenerate and extreme input.

Each generated case must either return a valid result, checked against the function's
definition (an oracle where one can be written, invariants otherwise), or raise ``ValueError``
with a message; any other exception, a hang (the deadline) or a wrong answer fails. Where the
input is known to be valid, a ``ValueError`` fails too.

Runs: the default profile draws 200 cases per function; ``pytest -m slow`` runs the ``*_slow``
twins with the ``slow`` profile, 10,000 cases per function. Deadlines are generous (10 s and
30 s a case) because they only guard against hangs on a busy machine.

Exact geometry: the RECIST oracle decides validity with exact rational arithmetic on the given
float endpoints (``fractions.Fraction``), and is applied only away from the thresholds (within
1e-7 degrees of the perpendicularity tolerance, 1e-8 of the crossing limits and so on either
answer is right) and where the coordinates' own rounding is negligible against the lengths.
"""

from __future__ import annotations

import math
from datetime import timedelta
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import pdist

from napari_recist_seg.core.grouping import (
    FEATURE_SETS,
    LesionGrouping,
    group_lesions,
    recist_features,
    suggest_k,
)
from napari_recist_seg.core.metrics import METRIC_NAMES, segmentation_metrics
from napari_recist_seg.core.pseudo_masks import (
    MAX_PIXELS,
    PSEUDO_MASK_METHODS,
    pseudo_mask,
    pseudo_mask_labels,
)
from napari_recist_seg.core.recist import (
    Recist,
    recist_from_mask,
    recists_from_shapes,
    recists_to_shapes,
)

_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
# The default run draws the same cases every time, so a red run is reproducible and a green
# one stays green; ``-m slow`` draws 10,000 new cases a run to look further.
settings.register_profile(
    "fuzz", max_examples=200, deadline=timedelta(seconds=10), suppress_health_check=_HEALTH,
    derandomize=True,
)
settings.register_profile(
    "slow", max_examples=10_000, deadline=timedelta(seconds=30), suppress_health_check=_HEALTH
)
FUZZ = settings.get_profile("fuzz")
SLOW = settings.get_profile("slow")


# Fewer distinct lesions than groups is legitimate input; scikit-learn says so in a warning.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Number of distinct clusters:sklearn.exceptions.ConvergenceWarning"
)


def _value_error(exc: ValueError) -> None:
    assert str(exc).strip(), "a ValueError must say what is wrong"


EIGHT = np.ones((3, 3), dtype=bool)  # pixels touching at a corner are one lesion

# -- valid RECIST geometry -------------------------------------------------------------------

_LENGTH_EXPONENTS = st.one_of(st.floats(-4.0, 12.0), st.sampled_from([-4.0, 0.0, 12.0]))
_COORDS = st.one_of(
    st.floats(-40.0, 100.0),
    st.floats(-1e12, 1e12),
    st.sampled_from([0.0, -0.5, 63.5, 1e12, -1e12, 1e-4]),
)


@st.composite
def geometry(draw, coords=_COORDS, exponents=_LENGTH_EXPONENTS):
    """Centre, direction and half-lengths (minus and plus side) of both axes."""
    c = np.array([draw(coords), draw(coords)])
    angle = math.radians(draw(st.floats(0.0, 360.0)))
    d = np.array([math.sin(angle), math.cos(angle)])
    n = np.array([-d[1], d[0]])
    length = 10 ** draw(exponents)
    split = draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 1.0])))
    ratio = draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([1e-6, 0.5, 1.0])))
    s_split = draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 1.0])))
    lm, lp = length * split, length * (1 - split)
    sm, sp = length * ratio * s_split, length * ratio * (1 - s_split)
    return c, d, n, (lm, lp, sm, sp)


_RECIST_SPACINGS = st.one_of(st.just((1.0, 1.0)), st.sampled_from([(0.7, 0.7), (0.5, 2.0)]))


@st.composite
def valid_recists(draw, coords=_COORDS, exponents=_LENGTH_EXPONENTS, spacings=_RECIST_SPACINGS):
    """A Recist built from perpendicular axes crossing inside both (rounding may still break
    one at extreme scales: those are filtered out)."""
    c, d, n, (lm, lp, sm, sp) = draw(geometry(coords, exponents))
    spacing = draw(spacings)
    try:
        r = Recist([c - lm * d, c + lp * d], [c - sm * n, c + sp * n], spacing)
    except ValueError:
        assume(False)
    return r


def _check_recist(r: Recist) -> None:
    """Invariants every constructed Recist satisfies, whatever built it."""
    assert isinstance(r, Recist)
    pts = r.endpoints
    assert pts.shape == (4, 2) and np.all(np.isfinite(pts))
    assert not r.long_axis.flags.writeable and not r.short_axis.flags.writeable
    for value in (r.long_length, r.short_length, r.long_mm, r.short_mm):
        assert math.isfinite(value) and value > 0
    assert r.short_mm <= r.long_mm * (1 + 1e-9)
    assert 0.0 <= r.angle < 180.0
    assert 0.0 <= r.perpendicularity_error <= r.max_perpendicularity_error + 1e-9
    lo, hi = r.long_axis.min(axis=0), r.long_axis.max(axis=0)
    eps = 1e-9 * (np.abs(pts).max() + r.long_length)
    assert np.all(r.centre >= lo - eps) and np.all(r.centre <= hi + eps)
    bbox = r.bbox
    assert bbox == (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
    again = Recist(**r.to_dict(), max_perpendicularity_error=r.max_perpendicularity_error)
    assert again == r and hash(again) == hash(r)


# -- Recist construction ---------------------------------------------------------------------

_SPACINGS = st.one_of(
    st.just((1.0, 1.0)),
    st.tuples(
        st.sampled_from([1e-4, 0.5, 1.0, 3.0, 1e4]), st.sampled_from([1e-4, 0.5, 1.0, 3.0, 1e4])
    ),
    st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (math.nan, 1.0), (math.inf, 1.0), (1.0,),
                     (1.0, 1.0, 1.0), "ab", None]),
)
_TOLERANCES = st.one_of(
    st.just(15.0),
    st.sampled_from([0.0, 1e-9, 14.999999, 45.0, 89.9, 90.0, -1.0, 90.5, math.nan, math.inf]),
    st.floats(0.0, 90.0),
)


@st.composite
def recist_inputs(draw):
    """Endpoints near and far from valid: skewed, collinear, not crossing, zero length,
    huge, sub-pixel, outside any image, with NaN or inf."""
    c, d, n, (lm, lp, sm, sp) = draw(geometry())
    kind = draw(st.sampled_from(["valid", "skewed", "collinear", "apart", "swapped", "zero",
                                 "non-finite", "random"]))
    long_axis = np.array([c - lm * d, c + lp * d])
    short_axis = np.array([c - sm * n, c + sp * n])
    if kind == "skewed":
        tilt = math.radians(draw(st.one_of(st.sampled_from([1e-9, 14.9, 15.0, 15.1, 45.0, 89.0]),
                                           st.floats(-90.0, 90.0))))
        rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
        short_axis = c + (short_axis - c) @ rot.T
    elif kind == "collinear":
        short_axis = np.array([c - sm * d, c + sp * d])
    elif kind == "apart":  # shifted along or across the long axis, possibly past its end
        along = draw(st.floats(-3.0, 3.0)) * (lm + lp)
        across = draw(st.floats(-3.0, 3.0)) * (sm + sp + 1e-3)
        short_axis = short_axis + along * d + across * n
    elif kind == "swapped":
        long_axis, short_axis = short_axis, long_axis
    elif kind == "zero":
        which = draw(st.sampled_from([0, 1]))
        (long_axis if which == 0 else short_axis)[1] = (long_axis if which == 0 else short_axis)[0]
    elif kind == "non-finite":
        arr = long_axis if draw(st.booleans()) else short_axis
        arr[draw(st.integers(0, 1)), draw(st.integers(0, 1))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf]))
    elif kind == "random":
        long_axis = np.array(draw(st.lists(_COORDS, min_size=4, max_size=4))).reshape(2, 2)
        short_axis = np.array(draw(st.lists(_COORDS, min_size=4, max_size=4))).reshape(2, 2)
    return kind, long_axis, short_axis, draw(_SPACINGS), draw(_TOLERANCES)


def _exact_verdict(long_axis, short_axis, spacing, tol):
    """True/False: whether these endpoints make a valid RECIST, decided exactly; None near a
    threshold or where float rounding of the coordinates matters."""
    p0, p1 = [[Fraction(float(v)) for v in p] for p in long_axis]
    q0, q1 = [[Fraction(float(v)) for v in p] for p in short_axis]
    sr, sc = Fraction(spacing[0]), Fraction(spacing[1])
    d = (p1[0] - p0[0], p1[1] - p0[1])
    e = (q1[0] - q0[0], q1[1] - q0[1])
    long_len = math.sqrt(d[0] ** 2 + d[1] ** 2)
    short_len = math.sqrt(e[0] ** 2 + e[1] ** 2)
    scale = float(max(abs(v) for v in (*p0, *p1, *q0, *q1)))
    if min(long_len, short_len) <= 1e-6 * (1 + 1e-6):
        if max(long_len, short_len) < 1e-6 * (1 - 1e-6) or min(long_len, short_len) < 1e-6 * (
                1 - 1e-6):
            return False  # a zero-length axis
        return None
    if scale * 2.0**-52 > 1e-9 * min(long_len, short_len):
        return None  # the endpoints' rounding is not negligible against the lengths
    dm = (d[0] * sr, d[1] * sc)
    em = (e[0] * sr, e[1] * sc)
    dd = dm[0] ** 2 + dm[1] ** 2
    ee = em[0] ** 2 + em[1] ** 2
    de = dm[0] * em[0] + dm[1] * em[1]
    perp = math.degrees(math.asin(min(1.0, math.sqrt(float(de * de / (dd * ee))))))
    if abs(perp - tol) < 1e-7:
        return None
    ratio = float(ee / dd)
    if abs(ratio - (1 + 1e-9) ** 2) < 1e-9:
        return None
    denom = d[0] * e[1] - d[1] * e[0]
    sin = abs(float(denom)) / (long_len * short_len)
    if sin < 1e-3:
        return None if perp <= tol else False
    w = (q0[0] - p0[0], q0[1] - p0[1])
    t = float((w[0] * e[1] - w[1] * e[0]) / denom)
    u = float((w[0] * d[1] - w[1] * d[0]) / denom)
    near = 1e-8
    for x in (t, u):
        if min(abs(x + 1e-6), abs(x - 1 - 1e-6)) < near:
            return None
    crosses = -1e-6 <= t <= 1 + 1e-6 and -1e-6 <= u <= 1 + 1e-6
    return perp <= tol and ratio <= (1 + 1e-9) ** 2 and crosses


def _check_recist_construction(case):
    kind, long_axis, short_axis, spacing, tol = case
    try:
        r = Recist(long_axis, short_axis, spacing=spacing, max_perpendicularity_error=tol)
    except ValueError as exc:
        _value_error(exc)
        r = None
    well_posed = (
        np.all(np.isfinite(long_axis)) and np.all(np.isfinite(short_axis))
        and isinstance(spacing, tuple) and len(spacing) == 2
        and all(math.isfinite(s) and s > 0 for s in spacing)
        and math.isfinite(tol) and 0 <= tol <= 90
    )
    if not well_posed:
        assert r is None, f"{kind}: accepted bad numbers"
        return
    verdict = _exact_verdict(long_axis, short_axis, spacing, tol)
    note(f"{kind}: exact verdict {verdict}")
    if verdict is not None:
        assert (r is not None) == verdict, f"{kind}: exact geometry says valid={verdict}"
    if r is not None:
        _check_recist(r)
        assert r.spacing == tuple(float(s) for s in spacing)
        assert r.max_perpendicularity_error == float(tol)


@FUZZ
@given(recist_inputs())
def test_recist_construction(case):
    _check_recist_construction(case)


@pytest.mark.slow
@SLOW
@given(recist_inputs())
def test_recist_construction_slow(case):
    _check_recist_construction(case)


# -- Recist.from_deeplesion -------------------------------------------------------------------

_TOKENS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "", " ", "  3 ", "0x10", "1_000", "1e-4",
                     "١٢", "None", "3,", "--1"]),
)


@st.composite
def deeplesion_inputs(draw):
    mode = draw(st.sampled_from(["round trip", "tokens", "list"]))
    if mode == "round trip":
        r = draw(valid_recists(coords=st.floats(-1e6, 1e6), exponents=st.floats(0.0, 5.0),
                               spacings=st.just((1.0, 1.0))))
        snapped = np.round(r.endpoints * 8) / 8  # exactly representable after adding one
        return mode, snapped, draw(st.booleans())
    if mode == "tokens":
        tokens = draw(st.lists(_TOKENS, min_size=6, max_size=10))
        sep = draw(st.sampled_from([",", ", ", ";", " ,", ",,"]))
        return mode, sep.join(tokens), True
    values = draw(st.lists(st.one_of(_TOKENS, st.floats(), st.none(), st.integers()),
                           min_size=7, max_size=9))
    return mode, values, True


def _check_from_deeplesion(case):
    mode, value, one_based = case
    if mode == "round trip":
        rc = value
        xy = rc[:, ::-1] + (1.0 if one_based else 0.0)
        try:
            r = Recist.from_deeplesion(list(xy.reshape(-1)), one_based=one_based)
        except ValueError as exc:  # snapping to 1/8 px may spoil a borderline measurement
            _value_error(exc)
            return
        _check_recist(r)
        np.testing.assert_array_equal(r.endpoints, rc)
        assert r.to_deeplesion(one_based=one_based) == [float(v) for v in xy.reshape(-1)]
        return
    try:
        r = Recist.from_deeplesion(value)
    except ValueError as exc:
        _value_error(exc)
        return
    _check_recist(r)
    # What was accepted is exactly what the numbers say, x before y, one-based.
    parts = ([p for p in value.replace(";", ",").split(",") if p.strip()]
             if isinstance(value, str) else list(value))
    xy = np.array([float(p) for p in parts]).reshape(4, 2)
    np.testing.assert_array_equal(r.endpoints, xy[:, ::-1] - 1)


@FUZZ
@given(deeplesion_inputs())
def test_from_deeplesion(case):
    _check_from_deeplesion(case)


@pytest.mark.slow
@SLOW
@given(deeplesion_inputs())
def test_from_deeplesion_slow(case):
    _check_from_deeplesion(case)


# -- recist_from_mask --------------------------------------------------------------------------

_MASK_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int32, np.int64, np.uint64,
                np.float16, np.float32, np.float64]


@st.composite
def mask_patterns(draw, max_side=32):
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    if draw(st.integers(0, 9)) == 0:
        shape = draw(st.sampled_from([(1, max_side), (max_side, 1), (1, 1), (2, 2)]))
    h, w = shape
    kind = draw(st.sampled_from(["empty", "pixel", "full", "frame", "line", "noise", "boxes",
                                 "two pixels"]))
    m = np.zeros(shape, dtype=bool)
    if kind == "pixel":
        m[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    elif kind == "full":
        m[:] = True
    elif kind == "frame":  # touches every border, hollow inside
        m[[0, -1], :] = True
        m[:, [0, -1]] = True
    elif kind == "line":  # collinear pixels: no convex hull
        r0, c0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        dr, dc = draw(st.sampled_from([(0, 1), (1, 0), (1, 1), (1, -1)]))
        for k in range(draw(st.integers(1, max_side))):
            r, c = r0 + k * dr, c0 + k * dc
            if 0 <= r < h and 0 <= c < w:
                m[r, c] = True
    elif kind == "noise":
        m = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w)).__iter__()
        m = np.fromiter(m, dtype=bool, count=h * w).reshape(shape)
    elif kind == "boxes":
        for _ in range(draw(st.integers(1, 4))):
            r0, c0 = draw(st.integers(-4, h)), draw(st.integers(-4, w))
            bh, bw = draw(st.integers(1, 12)), draw(st.integers(1, 12))
            m[max(r0, 0):max(r0 + bh, 0), max(c0, 0):max(c0 + bw, 0)] = True
    elif kind == "two pixels":
        for _ in range(2):
            m[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    return m


@st.composite
def typed_masks(draw, max_side=32):
    m = draw(mask_patterns(max_side))
    dtype = np.dtype(draw(st.sampled_from(_MASK_DTYPES)))
    if dtype == np.bool_:
        return m
    if dtype.kind == "f":
        value = draw(st.sampled_from([1.0, 0.5, -2.0, 1e-30, 1e30, 5e-324]))
        out = np.where(m, value, draw(st.sampled_from([0.0, -0.0])))
        with np.errstate(over="ignore", under="ignore"):
            out = out.astype(dtype)
        return out
    info = np.iinfo(dtype)
    value = draw(st.sampled_from([1, int(info.max), int(info.min) if info.min < 0 else 7]))
    return np.where(m, value, 0).astype(dtype)


_ODD_MASKS = st.sampled_from([
    np.zeros((0, 4)), np.zeros((4, 0), dtype=bool), np.ones(5), np.ones((1, 3, 3)), np.array(1),
    np.full((3, 3), "1"), np.ones((3, 3), dtype=complex), np.ones((3, 3), dtype=object),
    np.ones((3, 3), dtype="datetime64[s]"), np.array([[0, np.nan], [1, 1]]),
    np.array([[np.inf, 1.0], [1.0, 1.0]]), "mask", None,
])
_MASK_SPACINGS = st.one_of(
    st.just((1.0, 1.0)),
    st.tuples(st.sampled_from([1e-4, 0.3, 1.0, 7.0]), st.sampled_from([1e-4, 0.3, 1.0, 7.0])),
    st.sampled_from([(1e12, 1e-4), (0.0, 1.0), (math.nan, 1.0), (1.0, 2.0, 3.0)]),
)


def _check_recist_from_mask(case):
    mask, spacing = case
    arr = np.asarray(mask)
    try:
        r = recist_from_mask(mask, spacing=spacing)
    except ValueError as exc:
        _value_error(exc)
        r = None
    good_spacing = len(spacing) == 2 and all(math.isfinite(s) and s > 0 for s in spacing)
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "biuf" or not good_spacing:
        assert r is None
        return
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        assert r is None
        return
    fg = arr != 0
    labels, n = ndimage.label(fg, structure=EIGHT)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    ratio = max(spacing) / min(spacing)
    if n == 0 or sizes.max() == 1:
        assert r is None, "only empty masks and one-pixel lesions are refused"
        return
    if r is None:
        # A refusal is only acceptable where the spacing is so anisotropic that the
        # millimetre geometry cannot be resolved in floating point.
        assert ratio > 1e6, "a measurable lesion was refused"
        return
    _check_recist(r)
    assert r.spacing == tuple(float(s) for s in spacing)
    # The long axis joins two pixel centres of a largest component ...
    ends = r.long_axis
    snapped = np.round(ends).astype(int)
    assert np.allclose(ends, snapped, atol=1e-6 * max(arr.shape))
    lab = labels[snapped[0, 0], snapped[0, 1]]
    assert lab and lab == labels[snapped[1, 0], snapped[1, 1]]
    assert sizes[lab] == sizes.max()
    # ... as far apart, in millimetres, as two of its pixels are.
    pts = np.argwhere(labels == lab) * np.asarray(spacing, dtype=float)
    feret = pdist(pts).max()
    assert r.long_mm == pytest.approx(feret, rel=1e-9)
    # Everything lies on the image.
    eps = 1e-6 * max(arr.shape)
    assert np.all(r.endpoints >= -0.5 - eps)
    assert np.all(r.endpoints <= np.array(arr.shape) - 0.5 + eps)


@st.composite
def mask_cases(draw):
    mask = draw(st.one_of(typed_masks(), _ODD_MASKS)) if draw(st.integers(0, 9)) else draw(
        _ODD_MASKS)
    return mask, draw(_MASK_SPACINGS)


@FUZZ
@given(mask_cases())
def test_recist_from_mask(case):
    _check_recist_from_mask(case)


@pytest.mark.slow
@SLOW
@given(mask_cases())
def test_recist_from_mask_slow(case):
    _check_recist_from_mask(case)


# -- pseudo_mask --------------------------------------------------------------------------------

_GOOD_SHAPES = st.one_of(
    st.tuples(st.integers(1, 48), st.integers(1, 48)),
    st.sampled_from([(1, 1), (1, 64), (64, 1), np.array([5, 7]), (np.int64(9), np.int16(4)),
                     (6.0, 5.0)]),
)
_BAD_SHAPES = st.sampled_from([
    (0, 5), (5, 0), (-1, 5), (5,), (5, 5, 5), (2.5, 3), ("a", 3), None, 7, "ab",
    (math.inf, 3), (math.nan, 3), (10**6, 10**6), (MAX_PIXELS + 1, 1), (2**40, 2**40),
])
_RECIST_FOR_MASKS = valid_recists(
    coords=st.one_of(st.floats(-60.0, 110.0), st.sampled_from([0.0, 47.0, -0.5, 1e12, -1e12])),
    exponents=st.one_of(st.floats(-4.0, 2.3), st.sampled_from([-4.0, 0.0, 12.0]), st.floats(
        -4.0, 12.0)),
)


def _figure_frame(r: Recist, method: str):
    """Centre, unit vectors along and across the long axis, and the figure's extent
    [-a_minus, a_plus] x [-b_minus, b_plus] in that frame, from the docstring's definitions."""
    c = r.centre
    d = (r.long_axis[1] - r.long_axis[0]) / r.long_length
    n = np.array([-d[1], d[0]])
    if method == "ellipse":  # axes equal to the two lengths, centred at the intersection
        a, b = r.long_length / 2, r.short_length / 2
        return c, d, n, (a, a, b, b)
    if method == "quarter_ellipse":  # semi-axes: distances from the intersection to the ends
        sv = (r.short_axis - c) @ n
        dist = np.linalg.norm(r.short_axis - c, axis=1)
        return c, d, n, (float(np.linalg.norm(r.long_axis[0] - c)),
                         float(np.linalg.norm(r.long_axis[1] - c)),
                         float(dist[np.argmin(sv)]), float(dist[np.argmax(sv)]))
    uv = np.column_stack([(r.endpoints - c) @ d, (r.endpoints - c) @ n])  # polygon: its corners
    return c, d, n, (max(-uv[:, 0].min(), 0.0), max(uv[:, 0].max(), 0.0),
                     max(-uv[:, 1].min(), 0.0), max(uv[:, 1].max(), 0.0))


def _deep_inside(r: Recist, method: str, pts: np.ndarray, margin: float) -> bool:
    """Whether all points lie inside the (convex) figure, at least ``margin`` from its edge."""
    c, d, n, (am, ap, bm, bp) = _figure_frame(r, method)
    if method == "polygon":
        sv = (r.short_axis - c) @ n
        s_minus, s_plus = r.short_axis[np.argmin(sv)], r.short_axis[np.argmax(sv)]
        poly = np.array([r.long_axis[0], s_minus, r.long_axis[1], s_plus])
        edges = np.roll(poly, -1, axis=0) - poly
        area2 = np.sum(poly[:, 0] * np.roll(poly, -1, axis=0)[:, 1]
                       - np.roll(poly, -1, axis=0)[:, 0] * poly[:, 1])
        for p, e in zip(poly, edges):
            length = np.linalg.norm(e)
            if length == 0:  # two corners in one place (an axis ending at the other)
                continue
            cross = e[0] * (pts[:, 1] - p[1]) - e[1] * (pts[:, 0] - p[0])
            if np.any(np.sign(area2) * cross / length < margin):
                return False
        return True
    u = (pts - c) @ d
    v = (pts - c) @ n
    a = np.where(u >= 0, ap, am) - margin
    b = np.where(v >= 0, bp, bm) - margin
    if np.any(a <= 0) or np.any(b <= 0):
        return False
    return bool(np.all((u / a) ** 2 + (v / b) ** 2 < 1))


def _check_one_mask(r: Recist, shape, method, m):
    h, w = shape
    assert m.dtype == bool and m.shape == (h, w)
    c, d, n, (am, ap, bm, bp) = _figure_frame(r, method)
    scale = float(np.abs(r.endpoints).max()) + r.long_length
    eps = 1e-9 * scale + 1e-9
    # Every pixel of the mask lies in the figure's bounding rectangle ...
    pts = np.argwhere(m).astype(float)
    if len(pts):
        u = (pts - c) @ d
        v = (pts - c) @ n
        assert np.all(u >= -am - eps) and np.all(u <= ap + eps)
        assert np.all(v >= -bm - eps) and np.all(v <= bp + eps)
    # ... and there are no more of them than pixel centres fit in it.
    length, width = am + ap, bm + bp
    assert len(pts) <= length * width + math.sqrt(2) * (length + width) + math.pi / 2 + 1
    # An image entirely inside the figure (a convex one) is entirely lesion.
    corners = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], dtype=float)
    if _deep_inside(r, method, corners, 1e-6 * scale + 1e-6):
        assert m.all()
    # The symmetric ellipse holds the pixel nearest its centre when it is at least a pixel wide.
    if method == "ellipse" and r.short_length / 2 > math.sqrt(2) / 2 + 1e-6:
        p = np.round(c)
        if 0 <= p[0] < h and 0 <= p[1] < w and np.all(np.abs(c) < 1e9):
            assert m[int(p[0]), int(p[1])]


def _well_formed_shape(shape) -> bool:
    try:
        values = tuple(shape)
        ints = tuple(int(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        return False
    return (len(ints) == 2 and min(ints) > 0 and all(i == v for i, v in zip(ints, values))
            and ints[0] * ints[1] <= MAX_PIXELS)


@st.composite
def pseudo_mask_cases(draw):
    r = draw(st.one_of(_RECIST_FOR_MASKS, st.sampled_from([None, "recist", 3])) if draw(
        st.integers(0, 19)) == 0 else _RECIST_FOR_MASKS)
    shape = draw(_BAD_SHAPES) if draw(st.integers(0, 9)) == 0 else draw(_GOOD_SHAPES)
    method = draw(st.sampled_from(PSEUDO_MASK_METHODS)) if draw(st.integers(0, 19)) else draw(
        st.sampled_from(["circle", "", None, "ELLIPSE"]))
    return r, shape, method


def _check_pseudo_mask(case):
    r, shape, method = case
    valid = isinstance(r, Recist) and _well_formed_shape(shape) and method in PSEUDO_MASK_METHODS
    try:
        m = pseudo_mask(r, shape, method)
    except ValueError as exc:
        _value_error(exc)
        assert not valid, "valid input was refused"
        return
    assert valid, "invalid input was accepted"
    _check_one_mask(r, tuple(int(s) for s in shape), method, m)


@FUZZ
@given(pseudo_mask_cases())
def test_pseudo_mask(case):
    _check_pseudo_mask(case)


@pytest.mark.slow
@SLOW
@given(pseudo_mask_cases())
def test_pseudo_mask_slow(case):
    _check_pseudo_mask(case)


# -- pseudo_mask_labels ------------------------------------------------------------------------

_LABELS = st.one_of(
    st.integers(1, 1000),
    st.sampled_from([0, -5, 2**31 - 1, -(2**31), 2**31, 2**40, 1.5, 3.0, "3", None, math.nan,
                     np.int64(7), np.uint8(200), True]),
)


@st.composite
def label_cases(draw):
    recists = draw(st.lists(_RECIST_FOR_MASKS, max_size=4))
    if draw(st.integers(0, 9)) == 0:
        recists.insert(draw(st.integers(0, len(recists))), draw(st.sampled_from([None, "r", 5])))
    labels = None
    if draw(st.booleans()):
        labels = draw(st.lists(_LABELS, min_size=len(recists), max_size=len(recists)))
        if draw(st.integers(0, 9)) == 0:
            labels = labels + [1] if draw(st.booleans()) or not labels else labels[:-1]
    shape = draw(_BAD_SHAPES) if draw(st.integers(0, 9)) == 0 else draw(_GOOD_SHAPES)
    method = draw(st.sampled_from(PSEUDO_MASK_METHODS + ("blob",)))
    return recists, shape, method, labels


def _label_ok(value) -> bool:
    try:
        return int(value) == value and -(2**31) <= int(value) < 2**31
    except (TypeError, ValueError, OverflowError):
        return False


def _check_pseudo_mask_labels(case):
    recists, shape, method, labels = case
    valid = (all(isinstance(r, Recist) for r in recists) and _well_formed_shape(shape)
             and method in PSEUDO_MASK_METHODS
             and (labels is None or (len(labels) == len(recists)
                                     and all(_label_ok(v) for v in labels))))
    try:
        out = pseudo_mask_labels(recists, shape, method, labels=labels)
    except ValueError as exc:
        _value_error(exc)
        assert not valid, "valid input was refused"
        return
    assert valid, "invalid input was accepted"
    shape = tuple(int(s) for s in shape)
    assert out.dtype == np.int32 and out.shape == shape
    # Exactly the single masks, later lesions drawn over earlier ones.
    expected = np.zeros(shape, dtype=np.int32)
    for i, r in enumerate(recists):
        expected[pseudo_mask(r, shape, method)] = i + 1 if labels is None else int(labels[i])
    np.testing.assert_array_equal(out, expected)


@FUZZ
@given(label_cases())
def test_pseudo_mask_labels(case):
    _check_pseudo_mask_labels(case)


@pytest.mark.slow
@SLOW
@given(label_cases())
def test_pseudo_mask_labels_slow(case):
    _check_pseudo_mask_labels(case)


# -- segmentation_metrics ----------------------------------------------------------------------


@st.composite
def metric_cases(draw):
    pred = draw(typed_masks(max_side=24))
    kind = draw(st.sampled_from(["same shape"] * 6 + ["other shape", "odd", "non-finite"]))
    if kind == "same shape":
        gt = np.resize(draw(mask_patterns(24)), pred.shape)
        gt = gt.astype(draw(st.sampled_from(_MASK_DTYPES)))
    elif kind == "other shape":
        gt = draw(typed_masks(max_side=24))
    elif kind == "odd":
        gt = draw(_ODD_MASKS)
    else:
        gt = np.asarray(pred, dtype=float).copy()
        gt.flat[draw(st.integers(0, gt.size - 1))] = draw(st.sampled_from([math.nan, math.inf]))
    if draw(st.booleans()):
        pred, gt = gt, pred
    return pred, gt


def _as_checked(x):
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "biuf":
        return None
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        return None
    return arr != 0


def _check_metrics(case):
    pred, gt = case
    p, g = _as_checked(pred), _as_checked(gt)
    valid = p is not None and g is not None and p.shape == g.shape
    try:
        out = segmentation_metrics(pred, gt)
    except ValueError as exc:
        _value_error(exc)
        assert not valid, "valid masks were refused"
        return
    assert valid, "invalid masks were accepted"
    assert list(out) == list(METRIC_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    diagonal = math.hypot(*p.shape)
    for key in ("dice", "iou", "vs", "thresholded_jaccard", "shape_error"):
        assert 0.0 <= out[key] <= 1.0 + 1e-12, key
    for key in ("centre_error", "hausdorff", "hausdorff95"):
        assert 0.0 <= out[key] <= diagonal + 1e-9, key
    assert 0.0 <= out["orientation_error"] <= 90.0 + 1e-9
    assert out["size_error"] >= 0 and out["perimeter_error"] >= 0
    assert out["hausdorff95"] <= out["hausdorff"] + 1e-9
    assert out["iou"] <= out["dice"] + 1e-12
    # Overlap is what the pixels say.
    tp, union = np.count_nonzero(p & g), np.count_nonzero(p | g)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    assert out["dice"] == pytest.approx(2 * tp / total if total else 1.0)
    assert out["iou"] == pytest.approx(tp / union if union else 1.0)
    # Symmetric measures do not depend on which mask is the prediction.
    swapped = segmentation_metrics(gt, pred)
    for key in ("dice", "iou", "vs", "hausdorff", "centre_error", "orientation_error"):
        assert swapped[key] == pytest.approx(out[key], abs=1e-9), key
    if np.array_equal(p, g):
        assert out["dice"] == 1.0 and out["hausdorff"] == 0.0


@FUZZ
@given(metric_cases())
def test_segmentation_metrics(case):
    _check_metrics(case)


@pytest.mark.slow
@SLOW
@given(metric_cases())
def test_segmentation_metrics_slow(case):
    _check_metrics(case)


# -- recists_from_shapes -----------------------------------------------------------------------

_MUTATIONS = ["none"] * 4 + [
    "drop line", "duplicate line", "axis name", "id 1.5", "id nan", "id none", "id inf",
    "vertex nan", "vertex inf", "slice apart", "three points", "one point", "scalar shape",
    "short column", "no axis column", "features none", "data int", "swap axes", "slice inf",
    "mix 2d 3d",
]


@st.composite
def shapes_cases(draw):
    spacing = draw(_RECIST_SPACINGS)
    recists = draw(st.lists(valid_recists(coords=st.floats(-100.0, 600.0),
                                          exponents=st.floats(-1.0, 3.0),
                                          spacings=st.just(spacing)),
                            min_size=1, max_size=5))
    ids = draw(st.lists(st.one_of(st.integers(-10, 10**6), st.just(2**40)),
                        min_size=len(recists), max_size=len(recists), unique=True))
    three_d = draw(st.booleans())
    slices = draw(st.lists(st.integers(0, 300), min_size=len(recists),
                           max_size=len(recists))) if three_d else None
    data, features = recists_to_shapes(recists, slices=slices, lesion_ids=ids)
    order = draw(st.permutations(range(len(data))))
    data = [np.array(data[i]) for i in order]
    lesion_id = [features["lesion_id"][i] for i in order]
    axis = [features["axis"][i] for i in order]
    if draw(st.booleans()):
        lesion_id = [float(v) for v in lesion_id]  # a float column after a round trip
    mutation = draw(st.sampled_from(_MUTATIONS))
    k = draw(st.integers(0, len(data) - 1))
    feats = {"lesion_id": lesion_id, "axis": axis}
    if mutation == "drop line":
        del data[k], lesion_id[k], axis[k]
    elif mutation == "duplicate line":
        data.append(data[k].copy())
        lesion_id.append(lesion_id[k])
        axis.append(axis[k])
    elif mutation == "axis name":
        axis[k] = draw(st.sampled_from(["Long", "major", "", "1"]))
    elif mutation.startswith("id "):
        lesion_id[k] = {"id 1.5": lesion_id[k] + 0.5, "id nan": math.nan, "id none": None,
                        "id inf": math.inf}[mutation]
    elif mutation in ("vertex nan", "vertex inf"):
        data[k][draw(st.integers(0, 1)), -1] = math.nan if mutation == "vertex nan" else math.inf
    elif mutation == "slice apart" and three_d:
        data[k][:, 0] += draw(st.sampled_from([0.5, 1.0, 100.0]))
    elif mutation == "slice inf" and three_d:
        data[k][:, 0] = math.inf
        partner = next(i for i in range(len(data)) if lesion_id[i] == lesion_id[k] and i != k)
        data[partner][:, 0] = math.inf
    elif mutation == "mix 2d 3d" and three_d:
        data[k] = data[k][:, 1:]
    elif mutation == "three points":
        data[k] = np.vstack([data[k], data[k][:1]])
    elif mutation == "one point":
        data[k] = data[k][:1]
    elif mutation == "scalar shape":
        data[k] = np.float64(3.0)
    elif mutation == "short column":
        lesion_id.pop()
    elif mutation == "no axis column":
        feats = {"lesion_id": lesion_id}
    elif mutation == "features none":
        feats = None
    elif mutation == "data int":
        data = 7
    elif mutation == "swap axes":  # the short line becomes the long one and vice versa
        lid = lesion_id[k]
        for i in range(len(axis)):
            if lesion_id[i] == lid:
                axis[i] = "short" if axis[i] == "long" else "long"
    else:
        mutation = "none"
    return recists, ids, slices, data, feats, mutation, spacing


_MUST_FAIL = {"drop line", "duplicate line", "axis name", "id 1.5", "id nan", "id none",
              "id inf", "vertex nan", "vertex inf", "three points", "one point", "scalar shape",
              "short column", "no axis column", "features none", "data int", "slice inf",
              "mix 2d 3d"}


def _check_shapes(case):
    recists, ids, slices, data, feats, mutation, spacing = case
    note(f"mutation: {mutation}")
    try:
        out, out_ids, out_slices = recists_from_shapes(data, feats, spacing=spacing)
    except ValueError as exc:
        _value_error(exc)
        assert mutation != "none", "a valid layer was refused"
        if mutation == "slice apart":
            assert "slice" in str(exc)
        return
    assert mutation not in _MUST_FAIL, f"{mutation}: accepted"
    if mutation == "slice apart":
        # Half a slice or more apart is refused; allclose's tolerance lets tiny offsets pass.
        raise AssertionError("axes on different slices were paired")
    for r in out:
        _check_recist(r)
    assert len(out) == len(out_ids) == len(set(out_ids))
    if mutation == "none":
        # Exactly the lesions that were drawn, paired correctly, in the layer's order.
        by_id = dict(zip(ids, recists))
        assert [by_id[i] for i in out_ids] == out
        if slices is None:
            assert out_slices is None
        else:
            assert out_slices == [dict(zip(ids, slices))[i] for i in out_ids]


@FUZZ
@given(shapes_cases())
def test_recists_from_shapes(case):
    _check_shapes(case)


@pytest.mark.slow
@SLOW
@given(shapes_cases())
def test_recists_from_shapes_slow(case):
    _check_shapes(case)


# -- group_lesions and suggest_k ---------------------------------------------------------------

_GROUP_RECISTS = valid_recists(
    coords=st.one_of(st.floats(-50.0, 600.0), st.sampled_from([1e12, -1e12, 0.0])),
    exponents=st.one_of(st.floats(-4.0, 4.0), st.just(12.0)),
)


@st.composite
def grouping_cases(draw):
    pool = draw(st.lists(_GROUP_RECISTS, min_size=1, max_size=5))
    recists = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=14))
    if draw(st.integers(0, 29)) == 0:
        recists = draw(st.sampled_from([[], [None], recists + ["lesion"]]))
    k = draw(st.one_of(st.integers(-1, 16),
                       st.sampled_from([2.0, 2.5, "3", "x", None, 10**20, math.nan])))
    features = draw(st.sampled_from(FEATURE_SETS + ("pixels",)))
    seed = draw(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([-1, 2**32])))
    n_init = draw(st.sampled_from([1, 1, 2, None]))
    return recists, k, features, seed, n_init


def _k_ok(k, n) -> bool:
    try:
        value = int(k)
    except (TypeError, ValueError, OverflowError):
        return False
    return (isinstance(k, str) or value == k) and 1 <= value <= n


def _distinct_counts(recists, features) -> tuple[int, int]:
    """Bounds on how many lesions K-means can tell apart: (loose, strict).

    ``strict`` counts exactly distinct rows of the grouping features; ``loose`` merges rows
    equal up to a millionth of each feature's magnitude (at least 1). Rows the library takes
    as equal up to float noise are equal within that, so its own count lies between the two.
    """
    x = np.asarray(recist_features(recists, features), float)
    if not len(x):
        return 0, 0
    strict = len(np.unique(x, axis=0))
    # The library compares standardised features (a near-constant column is left unscaled),
    # so what it merges differs by less than 1e-9 of max(the column's size, 1).
    tol = 1e-6 * np.maximum(np.abs(x).max(axis=0), 1.0)
    kept: list[np.ndarray] = []
    for row in x:
        if not any(np.all(np.abs(row - other) <= tol) for other in kept):
            kept.append(row)
    return len(kept), strict


def _check_grouping(case):
    recists, k, features, seed, n_init = case
    valid = (all(isinstance(r, Recist) for r in recists) and _k_ok(k, len(recists))
             and features in FEATURE_SETS and 0 <= seed < 2**32)
    try:
        g = group_lesions(recists, k, features=features, seed=seed, n_init=n_init)
    except ValueError as exc:
        _value_error(exc)
        # Lesions that K-means cannot tell apart are refused for K groups, with a reason.
        too_alike = "too alike" in str(exc) and _distinct_counts(recists, features)[0] < int(k)
        assert not valid or too_alike, "valid input was refused"
        return
    assert valid, "invalid input was accepted"
    n = len(recists)
    assert isinstance(g, LesionGrouping) and g.k == int(k)
    assert g.centres.shape == (g.k, len(g.feature_names))
    assert np.all(np.isfinite(g.centres)) and np.all(g.scale > 0)
    assert g.labels_.shape == (n,) and g.labels_.dtype == np.int64
    assert np.all((g.labels_ >= 0) & (g.labels_ < g.k))
    x = g.transform(recists)
    assert np.all(np.isfinite(x))
    # Each lesion is in the group of its nearest centre, and a saved grouping agrees.
    d2 = ((x[:, None, :] - g.centres[None]) ** 2).sum(axis=2)
    assert np.all(d2[np.arange(n), g.labels_] <= d2.min(axis=1) * (1 + 1e-9) + 1e-12)
    np.testing.assert_array_equal(LesionGrouping.from_dict(g.to_dict()).predict(recists),
                                  g.labels_)
    # Identical lesions share a group; the same seed gives the same groups.
    for i in range(n):
        for j in range(i):
            if recists[i] == recists[j]:
                assert g.labels_[i] == g.labels_[j]
    again = group_lesions(recists, k, features=features, seed=seed, n_init=n_init)
    np.testing.assert_array_equal(again.labels_, g.labels_)


@FUZZ
@given(grouping_cases())
def test_group_lesions(case):
    _check_grouping(case)


@pytest.mark.slow
@SLOW
@given(grouping_cases())
def test_group_lesions_slow(case):
    _check_grouping(case)


@st.composite
def suggest_cases(draw):
    pool = draw(st.lists(_GROUP_RECISTS, min_size=1, max_size=4))
    recists = draw(st.lists(st.sampled_from(pool), max_size=9))
    k_range = draw(st.one_of(
        st.lists(st.integers(-2, 11), max_size=3),
        st.sampled_from([range(2, 4), [2, 2], 5, None, ["3", 2], ["x"]]),
    ))
    features = draw(st.sampled_from(FEATURE_SETS + ("pixels",)))
    sample_size = draw(st.sampled_from([5000, 3, 0, -1]))
    return recists, k_range, features, sample_size


def _check_suggest_k(case):
    recists, k_range, features, sample_size = case
    try:
        ks = {int(k) for k in k_range}
    except (TypeError, ValueError):
        ks = None
    n = len(recists)
    usable = None if ks is None else {k for k in ks if 2 <= k <= n - 1}
    valid = bool(usable) and features in FEATURE_SETS and sample_size >= 2
    try:
        best, scores = suggest_k(recists, k_range, features=features, seed=0,
                                 sample_size=sample_size)
    except ValueError as exc:
        _value_error(exc)
        too_alike = ("too alike" in str(exc) and bool(usable)
                     and _distinct_counts(recists, features)[0] < min(usable))
        assert not valid or sample_size < n or too_alike, "valid input was refused"
        return
    assert usable and features in FEATURE_SETS, "invalid input was accepted"
    # K above the number of lesions K-means can tell apart is not scored.
    loose, strict = _distinct_counts(recists, features)
    assert {k for k in usable if k <= loose} <= set(scores) <= {k for k in usable if k <= strict}
    assert all(-1.0 <= s <= 1.0 for s in scores.values())
    assert best in scores and scores[best] == max(scores.values())


_HUGE = Recist([[0.0, 0.0], [622514636637.6196, -782608156852.414]],
               [[0.0, 0.0], [293478058819.6552, 233442988739.10736]])
_HUGE_NOISY = Recist([[0.0, 0.0], [622514636637.6196, -782608156852.414]],
                     [[-8.812270311805025e-44, -7.009596313395322e-44],
                      [293478058819.6552, 233442988739.10736]])
_UNIT = Recist([[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [-1.0, 0.0]])


@FUZZ
@given(suggest_cases())
# Lesions equal up to float noise: one group however they are compared.
@example(([_HUGE, _HUGE, _HUGE_NOISY], range(2, 4), "standardised", 5000))
@example(([_HUGE, _HUGE, _HUGE_NOISY, _UNIT], range(2, 4), "standardised", 5000))
def test_suggest_k(case):
    _check_suggest_k(case)


@pytest.mark.slow
@SLOW
@given(suggest_cases())
def test_suggest_k_slow(case):
    _check_suggest_k(case)


# -- sizes --------------------------------------------------------------------------------------


def test_pseudo_mask_refuses_a_giant_output_without_allocating_it():
    r = Recist([[10, 10], [10, 20]], [[5, 15], [15, 15]])
    for method in PSEUDO_MASK_METHODS:
        with pytest.raises(ValueError, match="more than the 1,073,741,824"):
            pseudo_mask(r, (10**6, 10**6), method)
    with pytest.raises(ValueError, match="pixels"):
        pseudo_mask_labels([r], (10**6, 10**6))


@pytest.mark.parametrize("huge", [False, True], ids=["tiny lesion", "lesion beyond the image"])
def test_pseudo_mask_memory_is_the_output_plus_a_bounded_block(huge):
    import tracemalloc

    shape = (3000, 2000)
    size = 1e6 if huge else 4.0
    r = Recist([[1500, 1000 - size], [1500, 1000 + size]], [[1500 - size / 2, 1000],
                                                             [1500 + size / 2, 1000]])
    tracemalloc.start()
    try:
        m = pseudo_mask(r, shape)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.all() if huge else m.sum() < 50
    # The output is 6 MB; a grid of the whole image in float64 would add about 100 MB.
    assert peak < m.nbytes + 20e6, peak
