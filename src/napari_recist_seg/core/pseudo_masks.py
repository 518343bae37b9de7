"""Pseudo-masks: dense lesion masks drawn from a RECIST measurement alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .recist import Recist

__all__ = ["MAX_PIXELS", "PSEUDO_MASK_METHODS", "pseudo_mask", "pseudo_mask_labels"]

PSEUDO_MASK_METHODS = ("ellipse", "quarter_ellipse", "polygon")

#: Largest output a pseudo-mask may have, in pixels (2**30: a 32768 x 32768 image, 1 GiB as
#: bool, 4 GiB as int32 labels). A larger shape is far beyond any 2D image this package
#: reads and is refused rather than allocated.
MAX_PIXELS = 2**30
# Pixels evaluated at once: the figure test needs about 50 bytes of temporaries per pixel,
# so blocks keep them to some 10 MB however large the image and the lesion are.
_BLOCK_PIXELS = 1 << 18


def _check_shape(shape) -> tuple[int, int]:
    if isinstance(shape, np.ndarray) and shape.ndim >= 2:
        raise ValueError(f"shape must be two positive integers (rows, cols), got an array of "
                         f"shape {shape.shape}; pass image.shape[:2]")
    try:
        values = tuple(shape)
        ints = tuple(int(s) for s in values)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"shape must be two positive integers, got {shape!r}") from None
    if len(ints) != 2 or min(ints) <= 0 or any(i != v for i, v in zip(ints, values)):
        raise ValueError(f"shape must be two positive integers (rows, cols), got {shape!r}")
    if ints[0] * ints[1] > MAX_PIXELS:
        raise ValueError(
            f"shape {ints} has {ints[0] * ints[1]:,} pixels, more than the {MAX_PIXELS:,} a "
            f"pseudo-mask may have"
        )
    return ints


def _check_method(method) -> None:
    if method not in PSEUDO_MASK_METHODS:
        raise ValueError(
            f"unknown pseudo-mask method {method!r}; choose one of {PSEUDO_MASK_METHODS}"
        )


def _frame(recist: Recist):
    """Unit vectors along the long axis and across it, and signed half-lengths per side."""
    c = recist.centre
    la, sa = recist.long_axis, recist.short_axis
    d = la[1] - la[0]
    d = d / np.linalg.norm(d)
    n = np.array([-d[1], d[0]])
    # Half-lengths measured from the intersection to each endpoint: the long axis splits at
    # the centre into a "+d" and a "-d" part, the short axis into a "+n" and a "-n" part.
    long_plus = float(np.linalg.norm(la[1] - c))
    long_minus = float(np.linalg.norm(la[0] - c))
    s_proj = (sa - c) @ n
    s_dist = np.linalg.norm(sa - c, axis=1)
    short_plus = float(s_dist[int(np.argmax(s_proj))])
    short_minus = float(s_dist[int(np.argmin(s_proj))])
    if np.argmax(s_proj) == np.argmin(s_proj):  # both ends on one side cannot happen once validated
        short_plus = short_minus = float(s_dist.mean())
    return c, d, n, (long_minus, long_plus, short_minus, short_plus)


def _window(recist: Recist, shape, pad=1.0):
    """Index window covering the measurement, clipped to the image."""
    r0, c0, r1, c1 = recist.bbox
    # Both ellipses can reach beyond the endpoints' box: the symmetric one by L/2 from an
    # off-middle crossing, a quarter ellipse by up to L.
    reach = 2 * recist.long_length
    cr, cc = recist.centre
    r0, r1 = min(r0, cr - reach / 2), max(r1, cr + reach / 2)
    c0, c1 = min(c0, cc - reach / 2), max(c1, cc + reach / 2)
    rs = max(0, int(np.floor(r0 - pad)))
    re = min(shape[0], int(np.ceil(r1 + pad)) + 1)
    cs = max(0, int(np.floor(c0 - pad)))
    ce = min(shape[1], int(np.ceil(c1 + pad)) + 1)
    return rs, re, cs, ce


def pseudo_mask(recist: Recist, shape, method: str = "ellipse") -> np.ndarray:
    """Rasterise a pseudo-mask from one RECIST measurement.

    A pixel belongs to the mask when its centre lies inside the figure.

    Parameters
    ----------
    recist : Recist
    shape : tuple of int
        (rows, cols) of the output.
    method : {"ellipse", "quarter_ellipse", "polygon"}
        ``"ellipse"``: the paper's symmetric ellipse centred at the axes' intersection, full
        axes equal to the two RECIST lengths, rotated along the long axis.
        ``"quarter_ellipse"``: each quadrant is a quarter ellipse whose semi-axes are the true
        distances from the intersection to that quadrant's two endpoints, so off-centre marks
        give an asymmetric outline through all four endpoints.
        ``"polygon"``: the quadrilateral through the four endpoints (an under-segmentation).

    Returns
    -------
    numpy.ndarray of bool, shape ``shape``

    Raises
    ------
    ValueError
        For a ``recist`` that is not a Recist, an unknown method, or a shape that is not two
        positive integers or has more than ``MAX_PIXELS`` pixels. Memory beyond the output is
        bounded (the figure is evaluated in blocks of rows around the lesion).
    """
    if not isinstance(recist, Recist):
        raise ValueError(f"recist must be a Recist, got {type(recist).__name__}")
    shape = _check_shape(shape)
    _check_method(method)
    out = np.zeros(shape, dtype=bool)
    for rows, cols, inside in _blocks(recist, shape, method):
        out[rows, cols] = inside
    return out


def _blocks(recist: Recist, shape, method: str):
    """(row slice, col slice, inside) for blocks of rows covering the measurement's window."""
    rs, re, cs, ce = _window(recist, shape)
    if rs >= re or cs >= ce:
        return
    step = max(1, _BLOCK_PIXELS // (ce - cs))
    for r0 in range(rs, re, step):
        r1 = min(re, r0 + step)
        rr, cc = np.mgrid[r0:r1, cs:ce].astype(float)
        yield slice(r0, r1), slice(cs, ce), _inside(recist, rr, cc, method)


def _inside(recist: Recist, rr: np.ndarray, cc: np.ndarray, method: str) -> np.ndarray:
    c, d, n, (lm, lp, sm, sp) = _frame(recist)
    dr, dc = rr - c[0], cc - c[1]
    u = dr * d[0] + dc * d[1]
    v = dr * n[0] + dc * n[1]
    if method == "ellipse":
        a = recist.long_length / 2
        b = recist.short_length / 2
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if method == "quarter_ellipse":
        a = np.where(u >= 0, lp, lm)
        b = np.where(v >= 0, sp, sm)
        # A zero half-length (endpoint on the other axis) collapses that quadrant.
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(a > 0, (u / a) ** 2, np.where(u == 0, 0.0, np.inf)) + np.where(
                b > 0, (v / b) ** 2, np.where(v == 0, 0.0, np.inf)
            )
        return q <= 1.0
    # polygon: the quadrilateral long0 -> short(+n) -> long1 -> short(-n) is convex because
    # the axes cross, so a point is inside when it is on the same side of all four edges.
    la, sa = recist.long_axis, recist.short_axis
    s_side = (sa - c) @ n
    s_plus, s_minus = (sa[1], sa[0]) if s_side[1] >= s_side[0] else (sa[0], sa[1])
    poly = np.array([la[0], s_minus, la[1], s_plus])
    inside = np.ones(rr.shape, dtype=bool)
    area2 = 0.0
    for i in range(4):
        p, q = poly[i], poly[(i + 1) % 4]
        area2 += p[0] * q[1] - q[0] * p[1]
    sign = 1.0 if area2 >= 0 else -1.0
    for i in range(4):
        p, q = poly[i], poly[(i + 1) % 4]
        cross = (q[0] - p[0]) * (cc - p[1]) - (q[1] - p[1]) * (rr - p[0])
        # cross is the distance to the edge times its length: the slack for pixels on the edge
        # is 1e-9 pixel whatever the edge's length (a flat 1e-9 let pixels up to 1e-3 pixel
        # outside a micro-pixel edge in).
        inside &= sign * cross >= -1e-9 * float(np.hypot(*(q - p)))
    return inside


def pseudo_mask_labels(
    recists: Sequence[Recist], shape, method: str = "ellipse", labels=None
) -> np.ndarray:
    """Draw many pseudo-masks into one label image (lesion ``i`` gets ``labels[i]``).

    Later lesions are drawn over earlier ones where they overlap.

    Parameters
    ----------
    recists : sequence of Recist
    shape : tuple of int
    method : str
        See ``pseudo_mask``.
    labels : sequence of int, optional
        Label value per lesion (default 1, 2, ...); 0 is background. Each must fit in int32.

    Returns
    -------
    numpy.ndarray of int32

    Raises
    ------
    ValueError
        As ``pseudo_mask``, and for labels that are not integers of int32 range or whose
        number differs from the number of lesions.
    """
    shape = _check_shape(shape)
    _check_method(method)
    recists = list(recists)
    for i, r in enumerate(recists):
        if not isinstance(r, Recist):
            raise ValueError(f"recists[{i}] is not a Recist but {type(r).__name__}")
    labels = list(range(1, len(recists) + 1)) if labels is None else list(labels)
    if len(labels) != len(recists):
        raise ValueError(f"labels has {len(labels)} entries for {len(recists)} lesions")
    info = np.iinfo(np.int32)
    for i, lab in enumerate(labels):
        try:
            ok = int(lab) == lab and info.min <= int(lab) <= info.max
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"labels[{i}] must be an integer of int32 range, got {lab!r}")
    out = np.zeros(shape, dtype=np.int32)
    for r, lab in zip(recists, labels):
        for rows, cols, inside in _blocks(r, shape, method):
            out[rows, cols][inside] = int(lab)
    return out
