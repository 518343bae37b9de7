"""What a network is trained towards, from a RECIST: a pseudo-mask, or a trimap with a band
the loss leaves alone.

``TARGET_METHODS`` are the choices of ``--pseudo-mask`` when training:

- the pseudo-masks of ``core.pseudo_masks`` (``ellipse``, ``quarter_ellipse``, ``polygon``):
  every pixel has a target;
- ``trimap``: what the RECIST guarantees (``core.trimap.recist_trimap``): certain lesion, certain
  background, and an undecided band between where the loss is not applied, so the network is
  free to follow the image there;
- ``trimap_random_walker``: the same trimap with its band decided from the image by a random
  walker (``core.trimap.refine_trimap``): a full target that follows edges.
"""

from __future__ import annotations

import numpy as np

from .pseudo_masks import PSEUDO_MASK_METHODS, pseudo_mask
from .recist import Recist
from .recist_prompt import keep_marked_parts
from .trimap import BACKGROUND, LESION, UNKNOWN, recist_trimap, refine_trimap

__all__ = ["DEFAULT_TARGET", "IMAGE_TARGETS", "TARGET_METHODS", "self_training_target",
           "training_target"]

#: Every target a training run can use.
TARGET_METHODS = (*PSEUDO_MASK_METHODS, "trimap", "trimap_random_walker")
#: The target of every front end (command line, plugin, benchmarks) unless another is asked
#: for. Chosen on held-out parts of training data, never on test folders: against the true
#: masks of the training data the quarter-ellipse is the best pseudo-mask (ISIC Dice 0.932,
#: ellipse 0.867, trimap + random walker 0.900; CT-like 0.899, 0.828, 0.904), and a prompted
#: model trained on it scored best on a held-out part of the ISIC training folder (0.918, trimap
#: 0.881, trimap + random walker 0.909). The paper's protocol is ``"ellipse"``.
DEFAULT_TARGET = "quarter_ellipse"
#: Targets that read the image as well as the RECIST.
IMAGE_TARGETS = ("trimap_random_walker",)


def training_target(recist: Recist, shape, method: str, image=None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """The target of one lesion.

    Parameters
    ----------
    recist : Recist
        In the coordinates of ``shape``.
    shape : tuple of int
        (rows, cols) of the target.
    method : str
        One of ``TARGET_METHODS``.
    image : ndarray, optional
        The network input the target belongs to, (rows, cols) grey or (rows, cols, C); needed
        by ``IMAGE_TARGETS``.

    Returns
    -------
    mask : ndarray of bool, ``shape``
        Lesion pixels.
    weight : ndarray of bool or None
        Pixels the loss counts (None: all of them).
    """
    if method not in TARGET_METHODS:
        raise ValueError(f"unknown training target {method!r}; choose one of {TARGET_METHODS}")
    if method in PSEUDO_MASK_METHODS:
        return pseudo_mask(recist, shape, method), None
    trimap = recist_trimap(recist, shape)
    if method == "trimap":
        return trimap == LESION, trimap != UNKNOWN
    if image is None:
        raise ValueError(f"the {method!r} target reads the image: pass image")
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] not in (1, 3):
        # Several CT slices as channels: the key slice is the middle one.
        image = image[..., image.shape[-1] // 2]
    elif image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return refine_trimap(image, trimap, "random_walker"), None


def self_training_target(probability, recist: Recist, *, threshold: float = 0.5) -> np.ndarray:
    """The next round's target of one lesion from a trained network's prediction.

    The network's mask keeps only what the RECIST allows: the pieces its axes cross, with
    everything its trimap calls certain lesion added and everything it calls certain
    background removed (``core.trimap.recist_trimap``). So a round can move the outline only
    within the band the measurement leaves undecided.

    Parameters
    ----------
    probability : array_like, 2D
        The network's lesion probability for the item.
    recist : Recist
        The lesion's measurement in the coordinates of ``probability``.
    threshold : float
        Probability at which a pixel is lesion.

    Returns
    -------
    numpy.ndarray of bool, the shape of ``probability``
    """
    probability = np.asarray(probability, dtype=np.float32)
    if probability.ndim != 2:
        raise ValueError(f"probability must be a 2D map, got shape {probability.shape}")
    if not np.isfinite(probability).all():
        raise ValueError("probability holds NaN or infinite values")
    mask = keep_marked_parts(probability >= threshold, recist)
    trimap = recist_trimap(recist, probability.shape)
    return (mask | (trimap == LESION)) & (trimap != BACKGROUND)
