"""From images and RECIST to training and validation sets, with groups fitted on training only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.grouping import LesionGrouping, group_lesions
from ..core.recist import Recist
from ..data.dataset import LesionDataset

__all__ = ["PreparedData", "default_k", "prepare_crops", "prepare_whole_images", "split_indices"]


def default_k(n_train: int) -> int:
    """A number of groups for ``n_train`` lesions: about 20 lesions a group, 2 to 45 groups.

    The paper used K=45 for HAM10000 and K=40 for LiTS; small sets need fewer groups so each
    still has enough members for its class to be learnable.
    """
    return int(max(2, min(45, n_train // 20)))


def split_indices(n: int, val_fraction: float = 0.15, seed: int = 0):
    """Seeded split of ``range(n)`` into sorted (train, validation) index arrays."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if n < 3:
        raise ValueError(f"{n} lesions are too few to split into training and validation")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = min(n - 2, max(1, int(round(n * val_fraction))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class PreparedData:
    """Training and validation sets and the grouping fitted on the training lesions."""

    train_set: LesionDataset
    val_set: LesionDataset
    grouping: LesionGrouping
    train_indices: np.ndarray
    val_indices: np.ndarray

    @property
    def preprocessing(self) -> dict:
        """How inputs were made; stored in checkpoints so inference does the same."""
        return dict(self.train_set.preprocessing)


def _fit_groups(recists, train_idx, k, features, seed) -> LesionGrouping:
    train_recists = [recists[i] for i in train_idx]
    k = default_k(len(train_recists)) if k is None else int(k)
    return group_lesions(train_recists, min(k, len(train_recists)), features=features, seed=seed)


def check_input_size(size) -> int:
    """The network input side in px, checked before any image is resized to it.

    Raises
    ------
    ValueError
        Unless ``size`` is a multiple of 16 from 16 to ``MAX_INPUT_SIZE`` (4096).
    """
    from .train_config import MAX_INPUT_SIZE

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not (
            16 <= size <= MAX_INPUT_SIZE) or size % 16:
        raise ValueError(f"input size must be a multiple of 16 from 16 to {MAX_INPUT_SIZE} "
                         f"pixels, got {size!r}")
    return int(size)


def prepare_whole_images(
    images: Sequence,
    recists: Sequence[Recist],
    *,
    size: int = 128,
    val_fraction: float = 0.15,
    k: int | None = None,
    features: str = "standardised",
    pseudo_mask_method: str = "ellipse",
    normalise: str | None = "image",
    augment: bool = False,
    seed: int = 0,
    lazy: bool = False,
) -> PreparedData:
    """Whole-image sets (dermoscopy, the paper's HAM10000 protocol): one lesion per image.

    Real masks are never used: the pseudo-masks drawn from ``recists`` are the only targets,
    for validation too.

    Parameters
    ----------
    images : sequence
        Arrays or paths, one per lesion.
    recists : sequence of Recist
    size : int
        Network input side (a multiple of 16).
    val_fraction : float
        Share of lesions held out for early stopping and checkpoint selection.
    k : int, optional
        Number of RECIST groups (default ``default_k``).
    features, pseudo_mask_method, normalise, augment, seed, lazy
        See ``group_lesions`` and ``LesionDataset.from_whole_images``.
    """
    check_input_size(size)
    recists = list(recists)
    if len(images) != len(recists):
        raise ValueError(f"{len(images)} images but {len(recists)} RECIST measurements")
    train_idx, val_idx = split_indices(len(recists), val_fraction, seed)
    grouping = _fit_groups(recists, train_idx, k, features, seed)

    def subset(idx, aug):
        return LesionDataset.from_whole_images(
            [images[i] for i in idx], [recists[i] for i in idx], size=size,
            pseudo_mask_method=pseudo_mask_method, groups=grouping, augment=aug, seed=seed,
            normalise=normalise, lazy=lazy,
        )

    return PreparedData(subset(train_idx, augment), subset(val_idx, False), grouping,
                        train_idx, val_idx)


def prepare_crops(
    images: Sequence,
    recists: Sequence[Recist],
    *,
    image_index=None,
    slices=None,
    context: int = 0,
    size: int = 128,
    margin: float = 0.5,
    window=None,
    val_fraction: float = 0.15,
    k: int | None = None,
    features: str = "standardised",
    pseudo_mask_method: str = "ellipse",
    normalise: str | None = None,
    augment: bool = False,
    seed: int = 0,
) -> PreparedData:
    """Lesion-crop sets (CT, the paper's DeepLesion protocol); see ``prepare_whole_images``.

    ``image_index[i]`` names the image lesion ``i`` lies on (default: one image per lesion);
    ``slices[i]`` its slice in a volume, with ``context`` neighbouring slices as channels.
    """
    recists = list(recists)
    n = len(recists)
    image_index = list(range(n)) if image_index is None else [int(i) for i in image_index]
    if len(image_index) != n:
        raise ValueError(f"image_index has {len(image_index)} entries for {n} lesions")
    train_idx, val_idx = split_indices(n, val_fraction, seed)
    grouping = _fit_groups(recists, train_idx, k, features, seed)
    if isinstance(window, list | np.ndarray) and len(window) == 2 and all(
            np.isscalar(v) and not isinstance(v, str) for v in window):
        window = tuple(float(v) for v in window)  # one (lo, hi) pair, not one per lesion
    windows = None if window is None or isinstance(window, str | tuple) else list(window)

    def subset(idx, aug):
        return LesionDataset.from_crops(
            images, [recists[i] for i in idx], size=size, margin=margin,
            window=window if windows is None else [windows[i] for i in idx],
            image_index=[image_index[i] for i in idx], pseudo_mask_method=pseudo_mask_method,
            groups=grouping, augment=aug, seed=seed, normalise=normalise,
            slices=None if slices is None else [slices[i] for i in idx], context=context,
        )

    return PreparedData(subset(train_idx, augment), subset(val_idx, False), grouping,
                        train_idx, val_idx)
