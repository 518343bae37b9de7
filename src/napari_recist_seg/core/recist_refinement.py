"""Refining a prompted prediction with what its RECIST guarantees and what the image shows.

A RECIST-prompted network reads the image, but trained on pseudo-masks drawn from RECIST it
leans towards their outline. At prediction time two more sources are at hand for the lesion
being segmented:

- its trimap (``core.trimap.recist_trimap``): the axes and the shrunk quarter ellipse are
  lesion for sure, and pixels beyond the grown quarter ellipse or farther than the long axis
  from an endpoint are not;
- the random walker seeded by that trimap (``core.trimap.walker_probability``), which follows
  the image's own edges through the band between.

``refine_probability`` averages the network's probability with the walker's inside the band
and sets the certain regions (``"random_walker"``, the default), or only sets the certain
regions (``"trimap"``), or leaves the network's map alone (``"none"``). The two sources err
in different places (the network towards the drawn outline, the walker along any strong edge
near the band), so their average is better than either.
"""

from __future__ import annotations

import numpy as np

from .recist import Recist
from .trimap import BACKGROUND, LESION, recist_trimap, walker_probability

__all__ = ["DEFAULT_REFINEMENT", "REFINEMENTS", "WALKER_WEIGHT", "check_refinement",
           "refine_probability"]

#: Ways of refining a prompted prediction; the first is the default.
REFINEMENTS = ("random_walker", "trimap", "none")
DEFAULT_REFINEMENT = REFINEMENTS[0]
#: The walker's share of the average in the band (chosen on validation splits, CT and
#: dermoscopy alike; 0.25 and 0.75 were a little worse on both).
WALKER_WEIGHT = 0.5


def check_refinement(method) -> str:
    """``method`` if it names a refinement, else a ValueError listing them."""
    if method not in REFINEMENTS:
        raise ValueError(f"unknown refinement {method!r}; choose one of "
                         f"{', '.join(REFINEMENTS)}")
    return method


def refine_probability(probability, recist: Recist, image=None,
                       method: str = DEFAULT_REFINEMENT, *,
                       walker_weight: float = WALKER_WEIGHT) -> np.ndarray:
    """One lesion's predicted probability map, refined by its RECIST and the image.

    Parameters
    ----------
    probability : array_like of float, 2D
        The network's lesion probability for this lesion alone, in image pixels.
    recist : Recist
        The lesion's RECIST, in the same pixels.
    image : array_like, optional
        The image the probability belongs to: 2D grey or (rows, cols, 3) colour, any
        numeric scale (it is stretched by its own percentiles near the lesion). Needed by
        ``"random_walker"`` only.
    method : {"random_walker", "trimap", "none"}
    walker_weight : float
        The walker's share, in [0, 1], of the average in the trimap's band.

    Returns
    -------
    numpy.ndarray of float32, the probability's shape
        In [0, 1]: 1 on the trimap's certain lesion and 0 on its certain background unless
        ``method`` is ``"none"``.

    Raises
    ------
    ValueError
        For an unknown method, a probability that is not 2D, a weight outside [0, 1], a
        missing image for ``"random_walker"``, or an image whose size is not the
        probability's.
    """
    check_refinement(method)
    p = np.asarray(probability, dtype=np.float32)
    if p.ndim != 2:
        raise ValueError(f"probability must be 2D, got shape {p.shape}")
    if method == "none":
        return p
    if not 0.0 <= float(walker_weight) <= 1.0:
        raise ValueError(f"walker_weight must be between 0 and 1, got {walker_weight}")
    trimap = recist_trimap(recist, p.shape)
    if method == "random_walker":
        if image is None:
            raise ValueError("the random_walker refinement needs the image")
        walk = walker_probability(image, trimap)
        w = np.float32(walker_weight)
        p = (1 - w) * p + w * walk
    return np.where(trimap == BACKGROUND, np.float32(0.0),
                    np.where(trimap == LESION, np.float32(1.0), p)).astype(np.float32)
