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
from .trimap import LESION, UNKNOWN, recist_trimap, refine_trimap

__all__ = ["DEFAULT_TARGET", "IMAGE_TARGETS", "TARGET_METHODS", "training_target"]

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
