"""RECIST drawn as extra image channels: the prompt of RECIST-prompted segmentation.

A prompted network sees, beside the image, where the lesion was measured:

``axes``
    The long and short axis segments, rasterised with anti-aliasing (1 on the line).
``endpoints``
    A Gaussian bump at each of the four endpoints (peak 1), which tells the network where the
    lesion's boundary was touched, the one thing a RECIST measures exactly.
``prior``
    The quarter-ellipse through the four endpoints, softened at its edge: a shape guess the
    network may use or overrule. Training drops it at random so that the network learns to read
    the image rather than copy the guess. Its edge is drawn one of two ways (``PRIOR_EDGES``):
    ``"distance"``, a logistic of the signed distance to the quarter-ellipse's outline, whose
    0.5 level is that outline; or ``"blur"``, the quarter-ellipse mask blurred with a Gaussian,
    whose 0.5 level cuts the tips of small or slender lesions (the prior of earlier models).

Channels are in [0, 1] and are computed in the coordinates of the network input (a resized
image or a lesion crop), so their scale follows the lesion there.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import line_aa

from .pseudo_masks import pseudo_mask
from .recist import Recist

__all__ = ["PRIOR_EDGES", "PROMPT_CHANNELS", "check_prior_edge", "jitter_recist",
           "keep_marked_parts", "prompt_channels"]

#: Names of the prompt channels, in the order they follow the image channels.
PROMPT_CHANNELS = ("axes", "endpoints", "prior")

#: How the prior channel's edge is softened; the first is the default of new models.
PRIOR_EDGES = ("distance", "blur")

#: A logistic of slope 1.7 / s follows a Gaussian edge of width s to within 1%.
_LOGISTIC_SLOPE = 1.7


def check_prior_edge(value) -> None:
    """Refuse a ``prior_edge`` that is not one of ``PRIOR_EDGES``, naming the choices."""
    if value not in PRIOR_EDGES:
        raise ValueError(f"prior_edge must be one of {', '.join(PRIOR_EDGES)}, got {value!r}")


def _bump_sigma(recist: Recist) -> float:
    # Wide enough to be seen by a stride-16 encoder on a small lesion, narrow enough to stay a
    # point on a large one.
    return float(np.clip(0.06 * recist.long_length, 1.5, 6.0))


def prompt_channels(recist: Recist, shape, *, prior: bool = True,
                    prior_edge: str = PRIOR_EDGES[0]) -> np.ndarray:
    """Render a RECIST as prompt channels.

    Parameters
    ----------
    recist : Recist
        The measurement in the pixel coordinates of ``shape``.
    shape : tuple of int
        (rows, cols) of the network input.
    prior : bool
        When False the ``prior`` channel is all zero (how training drops it).
    prior_edge : {"distance", "blur"}
        How the prior's edge is softened (see the module docstring); a model must be given
        the prior it was trained with.

    Returns
    -------
    numpy.ndarray of float32, shape (3, rows, cols)
        ``axes``, ``endpoints`` and ``prior`` (see the module docstring).
    """
    if not isinstance(recist, Recist):
        raise ValueError(f"recist must be a Recist, got {type(recist).__name__}")
    check_prior_edge(prior_edge)
    rows, cols = (int(s) for s in shape)
    out = np.zeros((3, rows, cols), np.float32)
    for a, b in (recist.long_axis, recist.short_axis):
        r0, c0, r1, c1 = (int(round(float(v))) for v in (*a, *b))
        rr, cc, val = line_aa(r0, c0, r1, c1)
        keep = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
        np.maximum.at(out[0], (rr[keep], cc[keep]), val[keep].astype(np.float32))

    sigma = _bump_sigma(recist)
    points = np.vstack([recist.long_axis, recist.short_axis])
    # Evaluate each bump only in a window of 4 sigma: the crop may be large.
    reach = int(np.ceil(4 * sigma))
    for pr, pc in points:
        r0, r1 = max(0, int(pr) - reach), min(rows, int(pr) + reach + 2)
        c0, c1 = max(0, int(pc) - reach), min(cols, int(pc) + reach + 2)
        if r0 >= r1 or c0 >= c1:
            continue
        rr, cc = np.mgrid[r0:r1, c0:c1]
        bump = np.exp(-((rr - pr) ** 2 + (cc - pc) ** 2) / (2 * sigma ** 2)).astype(np.float32)
        np.maximum(out[1, r0:r1, c0:c1], bump, out=out[1, r0:r1, c0:c1])

    if prior:
        out[2] = _prior(recist, (rows, cols), max(1.0, sigma / 2), prior_edge)
    return out


def _prior(recist: Recist, shape, width: float, edge: str) -> np.ndarray:
    inside = pseudo_mask(recist, shape, "quarter_ellipse")
    if edge == "blur":
        blurred = ndimage.gaussian_filter(inside.astype(np.float32), sigma=width)
        return np.clip(blurred, 0.0, 1.0)
    # Pixel centres lie half a pixel inside the outline that a mask's edge pixels draw.
    signed = np.where(inside, ndimage.distance_transform_edt(inside) - 0.5,
                      0.5 - ndimage.distance_transform_edt(~inside))
    return (1.0 / (1.0 + np.exp(-_LOGISTIC_SLOPE * signed / width))).astype(np.float32)


#: Endpoint jitter never exceeds this share of the long axis (as a standard deviation).
JITTER_SHARE_OF_LONG_AXIS = 0.1


def jitter_recist(recist: Recist, rng: np.random.Generator, pixels: float) -> Recist:
    """The same RECIST with each endpoint moved by a random offset (normal, ``pixels`` std).

    Readers disagree with each other by a few pixels on where a boundary is; training on such
    jitter keeps a prompted network from trusting the endpoints more than a reader would. How
    far readers disagree shrinks with the lesion, so the std is at most
    ``JITTER_SHARE_OF_LONG_AXIS`` of the long axis: 2 px would move the ends of a 5 px lesion
    by almost half its length. Four offsets are always drawn (so the random stream does not
    depend on the outcome); when the moved axes no longer cross, or the short one becomes the
    longer, the RECIST is returned unchanged.
    """
    sigma = min(float(pixels), JITTER_SHARE_OF_LONG_AXIS * recist.long_length)
    offsets = rng.normal(0.0, 1.0, size=(4, 2)) * sigma
    if sigma <= 0:
        return recist
    long_axis = recist.long_axis + offsets[:2]
    short_axis = recist.short_axis + offsets[2:]
    try:
        return Recist(long_axis, short_axis, recist.spacing, max_perpendicularity_error=90.0)
    except ValueError:
        return recist


def keep_marked_parts(mask, recist: Recist) -> np.ndarray:
    """The parts (8-connected) of ``mask`` that the RECIST's axes cross.

    Both axes lie inside the lesion they measure, so a predicted piece that no axis touches
    belongs to something else (a neighbouring organ or lesion). When no piece is crossed the
    mask is returned unchanged: nothing better is known.

    Parameters
    ----------
    mask : array_like of bool, 2D
    recist : Recist
        In the coordinates of ``mask``.

    Returns
    -------
    numpy.ndarray of bool
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask
    rows, cols = mask.shape
    on_axes = set()
    for a, b in (recist.long_axis, recist.short_axis):
        steps = int(np.ceil(np.hypot(*(b - a)))) * 2 + 1
        for t in np.linspace(0.0, 1.0, steps):
            r, c = (int(round(float(v))) for v in a + t * (b - a))
            if 0 <= r < rows and 0 <= c < cols and labels[r, c]:
                on_axes.add(int(labels[r, c]))
    if not on_axes:
        return mask
    return np.isin(labels, sorted(on_axes))
