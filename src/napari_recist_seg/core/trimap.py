"""Trimaps: what a RECIST measurement says about each pixel, and how to fill in the rest.

A RECIST is two lines, not an outline. Any pseudo-mask drawn from it (an ellipse, a quarter
ellipse) asserts far more than the measurement supports. A trimap keeps only what it does
support: pixels that are lesion for sure, pixels that are background for sure, and a band of
``UNKNOWN`` pixels between them that training can ignore or that an image-driven method can
decide (``refine_trimap``).

The rules of ``recist_trimap``
------------------------------
With L the long axis length, A and B its endpoints, C and D the short axis endpoints, and q
the quarter-ellipse form of ``pseudo_mask(..., "quarter_ellipse")`` (q <= 1 is that figure;
q <= f**2 is the same figure scaled by f about the axes' intersection):

- LESION: the pixels on either axis segment, and q <= ``inner**2``.
- BACKGROUND: q > ``outer**2``, or a distance of more than L from any of A, B, C, D.
- UNKNOWN: everything else.

LESION wins where the rules overlap (an axis of a mark drawn carelessly can end farther than
L from the other axis' ends).

The distance rule is a guarantee, not a guess. The long axis is the lesion's largest
diameter, so no two lesion points are farther apart than L; the four endpoints lie on the
lesion, so every lesion pixel is within L of each of them. It holds for lesions of any
shape, concave or in pieces. The ellipse rules are a shape prior: most lesions stay within
half as far again as the quarter ellipse through the four endpoints and cover half of it,
but a lobe off the axes, or a mark drawn inside the lesion's edge, can reach beyond the grown
ellipse. ``outer=np.inf`` keeps only the guarantee.

Distances are measured in millimetres with the RECIST's pixel spacing, so the rule stays
exact for anisotropic pixels. A slack of one pixel is added to L because drawn endpoints sit
on the lesion's edge only to within a pixel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .pseudo_masks import _check_shape, pseudo_mask
from .recist import Recist

__all__ = [
    "BACKGROUND",
    "LESION",
    "TRIMAP_REFINEMENTS",
    "UNKNOWN",
    "recist_trimap",
    "refine_trimap",
    "walker_probability",
]

#: Trimap label of pixels that are certainly not the lesion.
BACKGROUND = 0
#: Trimap label of pixels that are certainly the lesion.
LESION = 1
#: Trimap label of the band the RECIST does not decide (ignored in training).
UNKNOWN = 2

#: Methods of ``refine_trimap`` ("chan_vese" is accepted as another name for the last).
TRIMAP_REFINEMENTS = ("none", "random_walker", "morph_chan_vese")
_ALIASES = {"chan_vese": "morph_chan_vese"}

# Drawn endpoints are placed on the lesion's edge to within a pixel; simulated ones sit on
# pixel centres of the edge. One pixel of slack keeps the diameter rule a guarantee for both.
_ENDPOINT_SLACK_PX = 1.0
# Rows of the distance test done at once, so that temporaries stay near 10 MB even for a
# lesion spanning thousands of pixels.
_BLOCK_PIXELS = 1 << 18


# -- validation --------------------------------------------------------------------------------
def _check_factor(value, name: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if np.isnan(f):
        raise ValueError(f"{name} must be a number, got NaN")
    return f


# -- the trimap --------------------------------------------------------------------------------
def _scaled(recist: Recist, factor: float) -> Recist | None:
    """The measurement scaled by ``factor`` about its axes' intersection (None if degenerate).

    Scaling every endpoint towards the intersection scales all four half-axes alike, so the
    quarter ellipse of the result is the original one scaled about the same point.
    """
    c = recist.centre
    try:
        return Recist(c + factor * (recist.long_axis - c), c + factor * (recist.short_axis - c),
                      recist.spacing,
                      max_perpendicularity_error=recist.max_perpendicularity_error)
    except ValueError:
        # Only a factor so small that an axis shrinks below 1e-6 pixel: nothing to draw.
        return None


def _clip_segment(p0: np.ndarray, p1: np.ndarray, shape) -> tuple | None:
    """The part of segment p0-p1 within half a pixel of the image, or None (Liang-Barsky)."""
    lo = np.array([-0.5, -0.5])
    hi = np.array([shape[0] - 0.5, shape[1] - 0.5])
    d = p1 - p0
    t0, t1 = 0.0, 1.0
    for k in range(2):
        if d[k] == 0:
            if not lo[k] <= p0[k] <= hi[k]:
                return None
            continue
        a, b = (lo[k] - p0[k]) / d[k], (hi[k] - p0[k]) / d[k]
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
        if t0 > t1:
            return None
    return p0 + t0 * d, p0 + t1 * d


def _draw_axes(recist: Recist, out: np.ndarray) -> None:
    """Set every pixel whose square an axis segment passes through (clipped to the image)."""
    for axis in (recist.long_axis, recist.short_axis):
        # Clipping first bounds the work by the image's size even for endpoints that lie
        # far outside it.
        seg = _clip_segment(axis[0], axis[1], out.shape)
        if seg is None:
            continue
        a, b = seg
        d = b - a
        # The segment enters a new pixel wherever it crosses a pixel edge (k + 0.5); a
        # point between two consecutive crossings lies inside exactly one pixel. A line
        # drawn one pixel per step (Bresenham) would skip some of the pixels it cuts.
        ts = [np.array([0.0, 1.0])]
        for k in range(2):
            if d[k] != 0:
                lo, hi = sorted((a[k], b[k]))
                edges = np.arange(np.ceil(lo - 0.5), np.floor(hi - 0.5) + 1) + 0.5
                ts.append((edges - a[k]) / d[k])
        t = np.unique(np.clip(np.concatenate(ts), 0.0, 1.0))
        t = np.concatenate([t, (t[:-1] + t[1:]) / 2])
        pts = np.floor(a + t[:, None] * d + 0.5).astype(int)
        pts = np.clip(pts, 0, np.array(out.shape) - 1)
        out[pts[:, 0], pts[:, 1]] = True


def _within_diameter(recist: Recist, shape) -> tuple[tuple[slice, slice], np.ndarray]:
    """Window of the image and, inside it, the pixels within L (+ slack) of all 4 endpoints."""
    sp = np.asarray(recist.spacing, dtype=float)
    limit = recist.long_mm + _ENDPOINT_SLACK_PX * float(sp.max())
    ends = recist.endpoints
    # Every such pixel lies within `limit` of each endpoint, so within the intersection of
    # the four boxes of that half-width around them.
    reach = limit / sp
    lo = np.max(ends - reach, axis=0)
    hi = np.min(ends + reach, axis=0)
    lo = np.clip(np.floor(lo), 0, shape)
    hi = np.clip(np.ceil(hi) + 1, 0, shape)
    r0, c0 = int(lo[0]), int(lo[1])
    r1, c1 = max(r0, int(hi[0])), max(c0, int(hi[1]))
    window = (slice(r0, r1), slice(c0, c1))
    near = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    if near.size == 0:
        return window, near
    step = max(1, _BLOCK_PIXELS // (c1 - c0))
    cols = np.arange(c0, c1, dtype=float)
    for start in range(r0, r1, step):
        rows = np.arange(start, min(r1, start + step), dtype=float)
        ok = np.ones((len(rows), len(cols)), dtype=bool)
        for e in ends:
            dr = ((rows - e[0]) * sp[0])[:, None]
            dc = ((cols - e[1]) * sp[1])[None, :]
            ok &= dr * dr + dc * dc <= limit * limit
        near[start - r0:start - r0 + len(rows)] = ok
    return window, near


def recist_trimap(recist: Recist, shape, *, inner: float = 0.5, outer: float = 1.5) -> np.ndarray:
    """Label each pixel as certain lesion, certain background or unknown from one RECIST.

    Parameters
    ----------
    recist : Recist
    shape : tuple of int
        (rows, cols) of the output.
    inner : float
        Scale, in (0, 1), of the quarter ellipse through the four endpoints (about the axes'
        intersection) taken as certain lesion, with the two axis segments.
    outer : float
        Scale, above 1, of the quarter ellipse beyond which pixels are certain background.
        ``np.inf`` leaves only the diameter rule, which holds for any lesion shape.

    Returns
    -------
    numpy.ndarray of uint8, shape ``shape``
        ``LESION`` (1), ``BACKGROUND`` (0) or ``UNKNOWN`` (2). See the module's description
        for the rules; in short: LESION is the axes and the shrunk quarter ellipse;
        BACKGROUND is outside the grown quarter ellipse or farther than the long axis length
        (plus one pixel) from any endpoint, which no lesion pixel can be; the rest is UNKNOWN.

    Raises
    ------
    ValueError
        For a ``recist`` that is not a Recist, a ``shape`` that is not two positive integers,
        or ``inner`` / ``outer`` outside ``0 < inner < 1 < outer``.
    """
    if not isinstance(recist, Recist):
        raise ValueError(f"recist must be a Recist, got {type(recist).__name__}")
    shape = _check_shape(shape)
    inner = _check_factor(inner, "inner")
    outer = _check_factor(outer, "outer")
    if not 0 < inner < 1:
        raise ValueError(f"inner must be between 0 and 1 (exclusive), got {inner}")
    if not outer > 1:
        raise ValueError(f"outer must be greater than 1, got {outer}")

    out = np.full(shape, BACKGROUND, dtype=np.uint8)
    window, near = _within_diameter(recist, shape)
    if near.any():
        if np.isfinite(outer):
            grown = _scaled(recist, outer)
            # A scaled-up measurement is always valid: only shrinking can degenerate.
            near &= pseudo_mask(grown, shape, "quarter_ellipse")[window]
        out[window][near] = UNKNOWN
    certain = np.zeros(shape, dtype=bool)
    shrunk = _scaled(recist, inner)
    if shrunk is not None:
        certain |= pseudo_mask(shrunk, shape, "quarter_ellipse")
    _draw_axes(recist, certain)
    out[certain] = LESION
    return out


# -- filling the band --------------------------------------------------------------------------
def _check_trimap(trimap) -> np.ndarray:
    t = np.asarray(trimap)
    if t.ndim != 2:
        raise ValueError(f"trimap must be 2D, got shape {t.shape}")
    if t.size == 0:
        raise ValueError("trimap is empty (size 0)")
    if t.dtype.kind not in "biuf":
        raise ValueError(f"trimap must have an integer dtype, got {t.dtype}")
    values = np.unique(t)
    bad = values[~np.isin(values, (BACKGROUND, LESION, UNKNOWN))]
    if bad.size:
        raise ValueError(f"trimap may only hold {BACKGROUND}, {LESION} and {UNKNOWN}, found "
                         f"{bad[:5].tolist()}")
    return t.astype(np.uint8)


def _check_image(image, shape) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype.kind not in "biuf":
        raise ValueError(f"image must be numeric, got dtype {img.dtype}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 3)):
        raise ValueError(f"image must be 2D grey or (rows, cols, 3) colour, got shape "
                         f"{img.shape}")
    if img.shape[:2] != tuple(shape):
        raise ValueError(f"image is {img.shape[0]} x {img.shape[1]} pixels but the trimap is "
                         f"{shape[0]} x {shape[1]}")
    if img.dtype.kind == "f" and not np.all(np.isfinite(img)):
        raise ValueError("image has non-finite values (NaN or inf)")
    return img


def _normalised(img: np.ndarray) -> np.ndarray | None:
    """The box's image stretched to [0, 1] by its 1st-99th percentiles; None if flat."""
    data = img.astype(np.float64)
    lo, hi = np.percentile(data, (1, 99))
    if not hi > lo:
        lo, hi = float(data.min()), float(data.max())
        if not hi > lo:
            return None
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def _box(region: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    return (slice(max(0, rows[0] - margin), min(region.shape[0], rows[-1] + 1 + margin)),
            slice(max(0, cols[0] - margin), min(region.shape[1], cols[-1] + 1 + margin)))


def _halfway(t: np.ndarray) -> np.ndarray:
    """UNKNOWN pixels at least as close to certain lesion as to certain background."""
    to_lesion = ndimage.distance_transform_edt(t != LESION)
    if not (t == BACKGROUND).any():
        return t == UNKNOWN
    to_background = ndimage.distance_transform_edt(t != BACKGROUND)
    return (t == UNKNOWN) & (to_lesion <= to_background)


def refine_trimap(image, trimap, method: str = "random_walker", *, prior=None,
                  margin: int = 10, beta: float = 130.0, max_side: int = 256,
                  num_iter: int = 40, smoothing: int = 1) -> np.ndarray:
    """Decide the UNKNOWN band of a trimap from the image, giving a binary lesion mask.

    Certain lesion stays lesion and certain background stays background whatever the
    method. Only the bounding box of the pixels that are not background, widened by
    ``margin``, is looked at, so a small lesion on a large slice costs little.

    Parameters
    ----------
    image : array_like
        2D grey image of any numeric dtype, or (rows, cols, 3) colour. It is stretched to
        [0, 1] by its own 1st and 99th percentiles inside the box (one pair for all channels).
    trimap : array_like of int, 2D
        ``BACKGROUND`` / ``LESION`` / ``UNKNOWN`` labels, as made by ``recist_trimap``.
    method : {"random_walker", "morph_chan_vese", "chan_vese", "none"}
        ``"random_walker"``: ``skimage.segmentation.random_walker`` seeded with the certain
        lesion and certain background, solved directly (``mode="bf"``, a sparse LU
        factorisation: some 0.1 s for a 150 x 150 box, 0.3 to 0.5 s for 256 x 256; the
        iterative ``"cg"`` and ``"cg_j"`` modes converge slowly on the ill-conditioned
        systems that strong edges make, often taking seconds). Colour images are used with
        all three channels.
        ``"morph_chan_vese"`` (or ``"chan_vese"``): ``skimage.segmentation.
        morphological_chan_vese`` started from the ``"none"`` result, run in rounds of 5
        iterations with the certain regions put back after each round so that the contour
        cannot leave the band. Colour images are averaged to grey.
        ``"none"``: no image at all: an UNKNOWN pixel is lesion when ``prior`` says so, or,
        without ``prior``, when it is at least as close to the certain lesion as to the
        certain background. With ``recist_trimap``'s default ``inner=0.5, outer=1.5`` the
        plain quarter ellipse lies halfway between the shrunk and grown ones along every ray
        from the axes' crossing, so this approximates it; it is smaller near the long axis'
        ends, where the diameter rule brings the background closer. Pass the quarter
        ellipse as ``prior`` to get it exactly.
    prior : array_like of bool, optional
        A pseudo-mask of the same shape that splits the band for ``"none"`` and starts
        ``"morph_chan_vese"`` (for instance ``pseudo_mask(recist, shape, "quarter_ellipse")``).
    margin : int
        Pixels of certain background kept around the band.
    beta : float
        ``random_walker``'s edge penalty (the image being in [0, 1]).
    max_side : int
        ``random_walker`` on a box longer than this is solved on the box resampled to this
        longest side, and its lesion probability interpolated back, to bound time and memory.
    num_iter, smoothing : int
        ``morphological_chan_vese``'s total iterations and smoothing steps per iteration.

    Returns
    -------
    numpy.ndarray of bool, the trimap's shape

    Raises
    ------
    ValueError
        When image and trimap shapes disagree, the trimap holds values other than 0, 1 and 2
        or no LESION pixel, the image is not 2D grey or (rows, cols, 3), has non-finite
        values, or the method is unknown.

    Notes
    -----
    Without any certain background in the box (the band reaches every edge of the image),
    ``"random_walker"`` has nothing to oppose the lesion seeds and returns lesion and band
    together. On a flat image (no contrast in the box) both image methods give ``"none"``.
    """
    name = _ALIASES.get(method, method) if isinstance(method, str) else method
    if name not in TRIMAP_REFINEMENTS:
        raise ValueError(f"unknown refinement method {method!r}; choose one of "
                         f"{TRIMAP_REFINEMENTS} (or 'chan_vese')")
    t_full = _check_trimap(trimap)
    img_full = _check_image(image, t_full.shape)
    if not (t_full == LESION).any():
        raise ValueError("trimap has no LESION pixel: nothing to grow the lesion from")
    prior_full = None
    if prior is not None:
        prior_full = np.asarray(prior)
        if prior_full.shape != t_full.shape:
            raise ValueError(f"prior has shape {prior_full.shape}, the trimap {t_full.shape}")
        prior_full = prior_full.astype(bool)
    margin, max_side = _check_box_options(margin, max_side)

    box = _box(t_full != BACKGROUND, margin)
    t = t_full[box]
    lesion = t == LESION
    background = t == BACKGROUND
    unknown = t == UNKNOWN
    out = np.zeros(t_full.shape, dtype=bool)
    if not unknown.any():
        out[box] = lesion
        return out

    split = prior_full[box] & unknown if prior_full is not None else _halfway(t)
    plain = lesion | split
    result = plain
    if name != "none":
        img = _normalised(img_full[box])
        if img is not None and name == "random_walker":
            result = _random_walker(img, lesion, background, beta, max_side)
        elif img is not None:
            grey = img.mean(axis=-1) if img.ndim == 3 else img
            result = _chan_vese(grey, plain, lesion, background, num_iter, smoothing)
    out[box] = (result & ~background) | lesion
    return out


def walker_probability(image, trimap, *, margin: int = 10, beta: float = 130.0,
                       max_side: int = 256) -> np.ndarray:
    """The random walker's lesion probability over a trimap: 1 on certain lesion, 0 on
    certain background, and in the UNKNOWN band the probability that a walker from each
    pixel reaches the certain lesion before the certain background.

    Parameters
    ----------
    image, trimap, margin, beta, max_side
        As in ``refine_trimap``.

    Returns
    -------
    numpy.ndarray of float32, the trimap's shape
        0 outside the box that ``refine_trimap`` looks at. On a flat image the band is
        split halfway between the certain regions, as ``refine_trimap(..., "none")`` does.

    Raises
    ------
    ValueError
        As ``refine_trimap``.
    """
    t_full = _check_trimap(trimap)
    img_full = _check_image(image, t_full.shape)
    if not (t_full == LESION).any():
        raise ValueError("trimap has no LESION pixel: nothing to grow the lesion from")
    margin, max_side = _check_box_options(margin, max_side)
    box = _box(t_full != BACKGROUND, margin)
    t = t_full[box]
    lesion = t == LESION
    background = t == BACKGROUND
    out = np.zeros(t_full.shape, dtype=np.float32)
    img = _normalised(img_full[box]) if (t == UNKNOWN).any() else None
    if img is None:
        prob = (lesion | _halfway(t)).astype(np.float32)
    else:
        prob = _walker_probability(img, lesion, background, beta, max_side)
    prob[lesion] = 1.0
    prob[background] = 0.0
    out[box] = prob
    return out


def _check_box_options(margin, max_side) -> tuple[int, int]:
    margin = int(margin)
    if margin < 0:
        raise ValueError(f"margin must be at least 0, got {margin}")
    max_side = int(max_side)
    if max_side < 8:
        raise ValueError(f"max_side must be at least 8 pixels, got {max_side}")
    return margin, max_side


def _random_walker(img, lesion, background, beta, max_side) -> np.ndarray:
    return _walker_probability(img, lesion, background, beta, max_side) >= 0.5


def _walker_probability(img, lesion, background, beta, max_side) -> np.ndarray:
    if not background.any():
        return (~background).astype(np.float32)
    seeds = np.zeros(lesion.shape, dtype=np.int32)
    seeds[lesion] = 1
    seeds[background] = 2
    if max(lesion.shape) <= max_side:
        return _walk(img, seeds, beta).astype(np.float32)
    from skimage.transform import resize

    f = max_side / max(lesion.shape)
    small = tuple(max(2, int(round(n * f))) for n in lesion.shape)
    # Seeds are read at the centres of the coarse pixels: a coarse pixel straddling the
    # band's edge is then decided by the walk rather than forced either way.
    rows = np.clip(((np.arange(small[0]) + 0.5) * lesion.shape[0] / small[0]).astype(int), 0,
                   lesion.shape[0] - 1)
    cols = np.clip(((np.arange(small[1]) + 0.5) * lesion.shape[1] / small[1]).astype(int), 0,
                   lesion.shape[1] - 1)
    coarse = seeds[np.ix_(rows, cols)]
    if not ((coarse == 1).any() and (coarse == 2).any() and (coarse == 0).any()):
        # Too thin to survive resampling.
        return _walk(img, seeds, beta).astype(np.float32)
    prob = _walk(resize(img, small + img.shape[2:], anti_aliasing=True), coarse, beta)
    return resize(prob, lesion.shape, order=1).astype(np.float32)


def _walk(img, seeds, beta) -> np.ndarray:
    """Probability that a walker from each pixel reaches a lesion seed (label 1) first."""
    from skimage.segmentation import random_walker

    prob = random_walker(img, seeds, beta=float(beta), mode="bf", return_full_prob=True,
                         channel_axis=-1 if img.ndim == 3 else None)
    return prob[0]


def _chan_vese(grey, start, lesion, background, num_iter, smoothing) -> np.ndarray:
    from skimage.segmentation import morphological_chan_vese

    level = start.astype(np.int8)
    left = max(0, int(num_iter))
    while left > 0:
        # morphological_chan_vese has no constraint of its own: short rounds with the
        # certain regions reset in between keep the contour inside the band throughout.
        n = min(5, left)
        level = morphological_chan_vese(grey, n, init_level_set=level,
                                        smoothing=int(smoothing)).astype(bool)
        level = (level & ~background) | lesion
        left -= n
        level = level.astype(np.int8)
    return level.astype(bool)
