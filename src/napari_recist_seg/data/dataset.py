"""A torch ``Dataset`` of lesion images, RECIST pseudo-masks, groups and optional true masks.

Memory
------
Everything derived from the RECIST (pseudo-masks, groups) and any true masks are computed once,
at construction, and kept as packed bits: ``size * size / 8`` bytes per mask (2 KiB at 128 x
128, so 20,000 lesions take 40 MiB). Images are kept in one of two ways:

- ``lazy=False`` (default): each lesion's resized image or crop is computed once and kept as
  uint8, ``C * size * size`` bytes per lesion (48 KiB for RGB at 128; 20,000 one-channel CT
  crops take 320 MiB). Source images are read one at a time and released.
- ``lazy=True``: only the sources are referenced (paths, callables or the caller's arrays); a
  lesion's image is read and cropped when its item is requested. The most recently read
  ``cache_size`` source images are kept (least recently used dropped first), so memory stays
  bounded whatever the number of lesions. Items are identical to the preloaded ones.

Reproducibility
---------------
Augmentation of item ``i`` in epoch ``e`` draws from ``numpy.random.default_rng`` seeded with
``(seed, e, i)``, so it does not depend on the order in which items are read or on which
``DataLoader`` worker reads them. Call ``set_epoch`` before each epoch and use
``EpochSampler`` (or ``epoch_order``) for a shuffled order that is reproducible too. Worker
processes see the epoch set before the loader is iterated (keep ``persistent_workers`` off).
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.transform import resize
from torch.utils.data import Dataset, Sampler

from ..core.recist import Recist
from ..core.recist_prompt import PRIOR_EDGES, check_prior_edge, jitter_recist, prompt_channels
from ..core.training_targets import (
    DEFAULT_TARGET,
    IMAGE_TARGETS,
    TARGET_METHODS,
    training_target,
)
from .crops import (
    CropTransform,
    crop_transform_for,
    normalise_rgb,
    resolve_channel_axis,
    resolve_window,
    window_ct,
)

__all__ = ["EpochSampler", "LesionDataset", "crop_input", "pair_indices", "whole_image_input",
           "whole_image_recist"]

_PAIR_MODES = ("same_group", "random")
#: Largest scaling (and smallest, its inverse) and shift (a share of the side) of the
#: "affine" augmentation.
_AFFINE_SCALE = 1.25
_AFFINE_SHIFT = 0.1
_NORMALISE = (None, "image", "imagenet")


# -- reading sources ---------------------------------------------------------------------------
def _read_image(path) -> np.ndarray:
    from skimage import io

    if not os.path.isfile(path):
        raise ValueError(f"{os.fspath(path)}: no such image file")
    try:
        return np.asarray(io.imread(os.fspath(path)))
    except Exception as exc:  # each image library fails in its own way
        # PIL raises OSError or SyntaxError, ITK RuntimeError, imageio ValueError: one clear
        # error naming the file, so a bad file in a data set of thousands can be found.
        raise ValueError(f"{os.fspath(path)}: cannot read image ({exc})") from None


def _materialise(item, loader) -> np.ndarray:
    """An image from an array, a zero-argument callable, or a reference for ``loader``."""
    if isinstance(item, np.ndarray):
        return item
    if loader is not None:
        return np.asarray(loader(item))
    if callable(item):
        return np.asarray(item())
    if isinstance(item, str | os.PathLike):
        return _read_image(item)
    return np.asarray(item)


class _SourceCache:
    """Least-recently-used cache of source images, keyed by their position in ``items``."""

    def __init__(self, items, loader, cache_size: int):
        self.items = list(items)
        self.loader = loader
        self.cache_size = max(0, int(cache_size))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, k: int) -> np.ndarray:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        image = _materialise(self.items[k], self.loader)
        if self.cache_size:
            self._cache[k] = image
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return image

    def __len__(self) -> int:
        return len(self._cache)

    def __getstate__(self):
        # Worker processes start with an empty cache rather than a copy of the parent's.
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state


# -- model inputs, shared with inference ----------------------------------------------------
def whole_image_input(image, size: int, *, channel_axis=None, normalise=None) -> np.ndarray:
    """A whole image as the network sees it: float32 (C, size, size), as in ``from_whole_images``.

    Parameters
    ----------
    image : ndarray
        ``(H, W)`` or ``(H, W, 3)`` (uint8, or float in [0, 1]).
    size : int
    channel_axis : int, optional
    normalise : {None, "image", "imagenet"}
    """
    x = _whole_u8(np.asarray(image), int(size), channel_axis).astype(np.float32) / 255.0
    if normalise is not None:
        x = normalise_rgb(x, mode=normalise, channel_axis=0)
    return np.ascontiguousarray(x, dtype=np.float32)


def whole_image_recist(recist: Recist, source_shape, size: int) -> Recist:
    """``recist`` in the coordinates of its image resized to ``size`` x ``size``."""
    h, w = (int(v) for v in source_shape[:2])
    factor = (size / h, size / w)
    # Pixel centres sit at integers: scale about the image's outer corner (-0.5, -0.5).
    return recist.translated((0.5, 0.5)).scaled(factor).translated((-0.5, -0.5))


def crop_input(image, transform: CropTransform, *, window=None, channel_axis=None,
               slice_index=None, context: int = 0, normalise=None) -> np.ndarray:
    """A lesion patch as the network sees it: float32 (C, size, size), as in ``from_crops``."""
    image = np.asarray(image)
    w = _auto_window(image, None if window is None else resolve_window(window))
    x = _crop_u8(image, transform, channel_axis, w, slice_index, context).astype(np.float32)
    x /= 255.0
    if normalise is not None:
        x = normalise_rgb(x, mode=normalise, channel_axis=0)
    return np.ascontiguousarray(x, dtype=np.float32)


# -- images to uint8 (C, S, S) -----------------------------------------------------------------
#: Float images a little outside [0, 1] (resampling overshoot) are still read as 0 to 1.
_UNIT_SLACK = 0.05


def _to_unit(image: np.ndarray) -> np.ndarray:
    """float64 in [0, 1]: uint8 / 255, other integers by their dtype's maximum, floats of 0
    to 255 (an 8-bit picture as floats) / 255, other floats clipped."""
    if image.dtype == bool:
        return image.astype(np.float64)
    if image.dtype.kind in "iu":
        return image.astype(np.float64) / float(np.iinfo(image.dtype).max)
    if image.dtype.kind == "f":
        if image.size and not np.all(np.isfinite(image)):
            raise ValueError("image has non-finite values (NaN or inf)")
        data = image.astype(np.float64)
        if data.size and data.min() >= 0 and 1 + _UNIT_SLACK < data.max() <= 255:
            data = data / 255.0
        return np.clip(data, 0.0, 1.0)
    raise ValueError(f"image has unsupported dtype {image.dtype}")


def _unit_to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _channels_first(image: np.ndarray, channel_axis) -> np.ndarray:
    axis = resolve_channel_axis(image, channel_axis)
    if axis is None:
        return image[None]
    out = np.moveaxis(image, axis, 0)
    if axis == 2 and out.shape[0] == 4:
        out = out[:3]  # RGBA: the alpha channel carries no lesion information
    return out


def _whole_u8(image: np.ndarray, size: int, channel_axis) -> np.ndarray:
    """The whole image resized to (C, size, size) uint8."""
    chw = _channels_first(np.asarray(image), channel_axis)
    unit = _area_reduce(_to_unit(chw), (size, size))
    out = resize(np.moveaxis(unit, 0, -1), (size, size), order=1, anti_aliasing=True, mode="edge")
    return _unit_to_u8(np.moveaxis(out, -1, 0))


#: Reductions beyond this factor are first done by area averaging. The Gaussian anti-aliasing
#: of one step costs seconds on a 6000 x 4000 dermoscopy original (its kernel grows with the
#: factor); after averaging down to this factor it runs on a small image. Smaller reductions
#: (the 256 px sets) are resized exactly as before.
_AREA_REDUCE_ABOVE = 4


def _area_reduce(chw: np.ndarray, shape) -> np.ndarray:
    """``chw`` (C, H, W) float, with each image axis longer than ``_AREA_REDUCE_ABOVE`` times
    its target in ``shape`` averaged down to that length (PIL's box filter, which keeps the
    pixel grid's geometry: a pixel's weight is the area it covers)."""
    h, w = chw.shape[-2:]
    new_h = min(h, _AREA_REDUCE_ABOVE * int(shape[0]))
    new_w = min(w, _AREA_REDUCE_ABOVE * int(shape[1]))
    if (new_h, new_w) == (h, w):
        return chw
    from PIL import Image

    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
                         .resize((new_w, new_h), Image.Resampling.BOX))
              for plane in chw.reshape(-1, h, w)]
    return np.stack(planes).reshape(*chw.shape[:-2], new_h, new_w)


def _lesion_plane(image: np.ndarray, slice_index, context: int) -> np.ndarray:
    """(2 context + 1, H, W) neighbouring slices of a volume around ``slice_index``."""
    if image.ndim != 3:
        raise ValueError(f"with slices given, images must be (Z, H, W) volumes, got {image.shape}")
    z = int(slice_index)
    if not 0 <= z < image.shape[0]:
        raise ValueError(f"slice {z} is outside a volume of {image.shape[0]} slices")
    # Slices beyond the ends repeat the end slice, as a scanner's last slice has no neighbour.
    idx = np.clip(np.arange(z - context, z + context + 1), 0, image.shape[0] - 1)
    return image[idx]


def _crop_u8(image, transform: CropTransform, channel_axis, window, slice_index, context):
    """The lesion patch as (C, size, size) uint8, windowed when a CT window applies."""
    image = np.asarray(image)
    if slice_index is not None:
        image = _lesion_plane(image, slice_index, context)
        channel_axis = 0
    patch = transform.crop_image(image, order=1, channel_axis=channel_axis)
    chw = _channels_first(patch, channel_axis if patch.ndim == 3 else None)
    if window is None:
        unit = _to_unit(chw)
    else:
        unit = window_ct(chw, window)
    return _unit_to_u8(unit)


def _auto_window(image: np.ndarray, window):
    """The window a lesion uses: none for uint8 images, soft tissue for other data."""
    if window is not None:
        return window
    return None if image.dtype == np.uint8 else resolve_window("soft_tissue")


def _parse_windows(window, n: int):
    """One window per lesion: None (auto), or (lo, hi)."""
    if window is None or isinstance(window, str):
        w = None if window is None else resolve_window(window)
        return [w] * n
    seq = list(window)
    if len(seq) == 2 and all(np.isscalar(v) and not isinstance(v, str) for v in seq):
        w = resolve_window(seq)
        return [w] * n
    if len(seq) != n:
        raise ValueError(
            f"window must be a preset name, (lo, hi), or one window per lesion; got {len(seq)} "
            f"windows for {n} lesions"
        )
    return [None if w is None else resolve_window(w) for w in seq]


# -- masks -------------------------------------------------------------------------------------
def _check_target(method) -> None:
    if method not in TARGET_METHODS:
        raise ValueError(f"unknown pseudo-mask method {method!r}; choose one of "
                         f"{TARGET_METHODS}")


def _hwc(chw: np.ndarray) -> np.ndarray:
    """A (C, S, S) image as the (S, S, C) float image a target method reads (it stretches
    intensities itself, so their scale does not matter)."""
    return np.moveaxis(chw, 0, -1).astype(np.float32) / np.float32(255.0)


def _pack_target(masks, weights, i: int, target) -> None:
    mask, weight = target
    _pack_into(masks, i, mask)
    if weights is not None:
        _pack_into(weights, i, np.ones(mask.shape, bool) if weight is None else weight)


def _packed_store(n: int, size: int) -> np.ndarray:
    """Room for ``n`` bit-packed ``size x size`` masks, one row each."""
    return np.zeros((n, (size * size + 7) // 8), dtype=np.uint8)


def _pack_into(store: np.ndarray, i: int, mask) -> None:
    # astype(bool): a nonzero value is foreground, as when assigning into a bool array.
    store[i] = np.packbits(np.asarray(mask).astype(bool).reshape(-1))


def _resize_mask(mask: np.ndarray, shape) -> np.ndarray:
    small = _area_reduce(mask.astype(np.float32)[None], shape)[0]
    out = resize(small, shape, order=1, anti_aliasing=True, mode="edge")
    return out >= 0.5


def _gt_plane(gt, slice_index) -> np.ndarray:
    gt = np.asarray(gt)
    if gt.ndim == 3 and slice_index is not None:
        gt = gt[int(slice_index)]
    if gt.ndim != 2:
        raise ValueError(f"a true mask must be 2D (or a volume with slices given), got {gt.shape}")
    return gt != 0


def _plane_shape(image, channel_axis) -> tuple[int, int]:
    """(rows, cols) of an image; volumes and channel stacks give their last two axes."""
    image = np.asarray(image)
    if channel_axis is None and image.ndim == 3 and image.shape[-1] in (3, 4):
        return (int(image.shape[0]), int(image.shape[1]))
    if channel_axis is not None and image.ndim == 3:
        axis = int(channel_axis) % 3
        return tuple(int(s) for a, s in enumerate(image.shape) if a != axis)
    return (int(image.shape[-2]), int(image.shape[-1]))


def _check_recists(recists) -> list[Recist]:
    recists = list(recists)
    for i, r in enumerate(recists):
        if not isinstance(r, Recist):
            raise ValueError(f"recists[{i}] is not a Recist but {type(r).__name__}")
    if not recists:
        raise ValueError("recists is empty: a dataset needs at least one lesion")
    return recists


def _check_size(size) -> int:
    try:
        s = int(size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an integer, got {size!r}") from None
    if s != size or s <= 0 or s % 16:
        raise ValueError(f"size must be a positive multiple of 16, got {size!r}")
    return s


def _resolve_groups(groups, recists) -> np.ndarray:
    n = len(recists)
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    if hasattr(groups, "predict"):  # a fitted LesionGrouping: group the source measurements
        out = np.asarray(groups.predict(recists), dtype=np.int64)
    else:
        arr = np.asarray(groups)
        if arr.dtype.kind not in "iub" or arr.shape != (n,):
            raise ValueError(
                f"groups must be {n} integers (one per lesion), got dtype {arr.dtype} and "
                f"shape {arr.shape}"
            )
        out = arr.astype(np.int64)
    if (out < 0).any():
        raise ValueError("groups must be non-negative class indices")
    return out


def _check_gt_list(gt_masks, n):
    if gt_masks is None:
        return [None] * n
    gt = list(gt_masks)
    if len(gt) != n:
        raise ValueError(f"gt_masks has {len(gt)} entries for {n} lesions")
    return gt


# -- the dataset -------------------------------------------------------------------------------
class LesionDataset(Dataset):
    """Lesion images with their pseudo-masks and group labels, ready for training.

    Build with ``from_whole_images`` (dermoscopy: one lesion per image, the image resized) or
    ``from_crops`` (CT: a patch around each lesion). Items are dicts:

    ``image``
        float32 tensor (C, size, size), in [0, 1] unless ``normalise`` is set.
    ``mask``
        float32 tensor (1, size, size): the RECIST pseudo-mask (0 or 1).
    ``weight`` (``trimap`` targets only)
        float32 tensor (1, size, size): 1 where the target is decided, 0 in the trimap's band.
    ``prompt`` (views made by ``with_prompt`` only)
        float32 tensor (3, size, size): the RECIST prompt channels.
    ``group``
        int64 scalar tensor: the lesion's group (0 for all when no groups were given).
    ``gt``
        float32 tensor (1, size, size): the true mask, or all NaN when unknown (the key is
        always present so that items collate into batches).
    ``has_gt``
        bool: whether ``gt`` holds a true mask.
    ``index``
        int: the lesion's position in the dataset.

    Attributes
    ----------
    size, n_channels : int
    recists : list of Recist
        Measurements in item coordinates (the resized image or the patch).
    source_recists : list of Recist
        Measurements as given, in source image coordinates.
    transforms : list of CropTransform or None
        Patch placement per lesion (``from_crops``), else None.
    groups : ndarray of int64
    has_gt : ndarray of bool
    epoch : int
    """

    def __init__(
        self,
        *,
        images,
        masks_packed,
        groups,
        weights_packed=None,
        gt_packed,
        has_gt,
        size,
        n_channels,
        recists,
        source_recists,
        transforms,
        source_shapes,
        augment,
        seed,
        normalise,
        jitter,
        pseudo_mask_method,
    ):
        self._images = images
        self._masks = masks_packed
        self._weights = weights_packed
        self.groups = groups
        self._gt = gt_packed
        self.has_gt = has_gt
        self.size = size
        self.n_channels = n_channels
        self.recists = recists
        self.source_recists = source_recists
        self.transforms = transforms
        self.source_shapes = source_shapes
        self.augment = bool(augment)
        self.seed = int(seed)
        self.jitter = float(jitter)
        self.pseudo_mask_method = pseudo_mask_method
        if normalise not in _NORMALISE:
            raise ValueError(f"normalise must be one of {_NORMALISE}, got {normalise!r}")
        if normalise == "imagenet" and n_channels != 3:
            raise ValueError(
                f"ImageNet normalisation needs 3 channels, the images have {n_channels}"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        self.normalise = normalise
        self.epoch = 0
        self.prompt = False
        self.prompt_jitter = 0.0
        self.prior_dropout = 0.0
        self.prior_edge = PRIOR_EDGES[0]
        self.affine = False

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_whole_images(
        cls,
        images: Sequence,
        recists: Sequence[Recist],
        size: int = 128,
        pseudo_mask_method: str = DEFAULT_TARGET,
        groups=None,
        gt_masks=None,
        augment: bool = False,
        seed: int = 0,
        *,
        channel_axis=None,
        normalise=None,
        jitter: float = 0.1,
        lazy: bool = False,
        loader=None,
        cache_size: int = 16,
    ) -> LesionDataset:
        """One lesion per image, the whole image resized to ``size x size`` (HAM10000 protocol).

        Parameters
        ----------
        images : sequence
            One entry per lesion: an array (``(H, W)`` or ``(H, W, 3)`` RGB; uint8, or float in
            [0, 1]), a path, or a zero-argument callable returning an array.
        recists : sequence of Recist
            One per image, in that image's pixel coordinates.
        size : int
            Output side, a multiple of 16.
        pseudo_mask_method : str
            See ``pseudo_mask``. The mask is drawn at the output size from the RECIST scaled
            with the image; when the image is not square (the scaling differs between rows and
            columns, which would shear the figure) it is drawn at the source size and resized.
        groups : sequence of int or LesionGrouping, optional
            Group per lesion, or a fitted grouping applied to ``recists``; default all 0.
        gt_masks : sequence, optional
            True mask per image (source shape), or None entries where unknown.
        augment : bool
            Random flips, 90-degree rotations and brightness/contrast jitter.
        seed : int
            Seed for augmentation and ``epoch_order``.
        channel_axis : int, optional
            For 3D images other than channels-last RGB.
        normalise : {None, "image", "imagenet"}
            Standardisation of the item image (see ``normalise_rgb``); None keeps [0, 1].
        jitter : float
            Largest brightness shift and relative contrast change when augmenting.
        lazy : bool
            Read images on access instead of keeping the resized copies (see the module notes).
            Each image is still read once here, to learn its shape.
        loader : callable, optional
            ``loader(entry) -> array`` for the entries of ``images`` (default: arrays as they
            are, callables called, paths read with scikit-image).
        cache_size : int
            Source images kept in the lazy mode's cache.
        """
        size = _check_size(size)
        _check_target(pseudo_mask_method)
        recists = _check_recists(recists)
        items = list(images)
        n = len(recists)
        if len(items) != n:
            raise ValueError(f"{len(items)} images for {n} RECIST measurements: need one each")
        gt_list = _check_gt_list(gt_masks, n)
        source = _SourceCache(items, loader, 0)
        stored = None if lazy else np.empty((n, 0, size, size), dtype=np.uint8)
        # Packed as they are drawn: unpacked, n lesions would first take n * size**2 bytes each.
        masks = _packed_store(n, size)
        gts = _packed_store(n, size)
        weights = _packed_store(n, size) if pseudo_mask_method == "trimap" else None
        has_gt = np.zeros(n, dtype=bool)
        out_recists, shapes = [], []
        n_channels = None
        for i, r in enumerate(recists):
            image = source.get(i)
            chw = _channels_first(image, channel_axis)
            if n_channels is None:
                n_channels = chw.shape[0]
                if stored is not None:
                    stored = np.empty((n, n_channels, size, size), dtype=np.uint8)
            elif chw.shape[0] != n_channels:
                raise ValueError(
                    f"image {i} has {chw.shape[0]} channels, earlier images {n_channels}"
                )
            h, w = chw.shape[1:]
            shapes.append((h, w))
            if stored is not None:
                stored[i] = _whole_u8(image, size, channel_axis)
            factor = (size / h, size / w)
            r_out = whole_image_recist(r, (h, w), size)
            out_recists.append(r_out)
            needs_image = pseudo_mask_method in IMAGE_TARGETS
            if abs(factor[0] - factor[1]) <= 1e-9 * max(factor):
                item = _hwc(_whole_u8(image, size, channel_axis)) if needs_image else None
                target = training_target(r_out, (size, size), pseudo_mask_method, item)
            else:
                pixels = _hwc(chw) if needs_image else None
                mask, weight = training_target(r, (h, w), pseudo_mask_method, pixels)
                target = (_resize_mask(mask, (size, size)),
                          None if weight is None else _resize_mask(weight, (size, size)))
            _pack_target(masks, weights, i, target)
            if gt_list[i] is not None:
                gt = np.asarray(_materialise(gt_list[i], None))
                if gt.shape != (h, w):
                    raise ValueError(f"gt_masks[{i}] has shape {gt.shape}, its image {(h, w)}")
                _pack_into(gts, i, _resize_mask(gt != 0, (size, size)))
                has_gt[i] = True
        if lazy:
            images_src = _LazyWhole(_SourceCache(items, loader, cache_size), size, channel_axis)
        else:
            images_src = _Stored(stored)
        dataset = cls(
            images=images_src,
            masks_packed=masks,
            weights_packed=weights,
            groups=_resolve_groups(groups, recists),
            gt_packed=gts,
            has_gt=has_gt,
            size=size,
            n_channels=int(n_channels),
            recists=out_recists,
            source_recists=recists,
            transforms=None,
            source_shapes=shapes,
            augment=augment,
            seed=seed,
            normalise=normalise,
            jitter=jitter,
            pseudo_mask_method=pseudo_mask_method,
        )
        dataset.preprocessing = {
            "mode": "whole_image",
            "size": size,
            "normalise": normalise,
            "channel_axis": channel_axis,
            "pseudo_mask_method": pseudo_mask_method,
        }
        return dataset

    @classmethod
    def from_crops(
        cls,
        images: Sequence,
        recists: Sequence[Recist],
        size: int = 128,
        margin: float = 0.5,
        window=None,
        image_index=None,
        pseudo_mask_method: str = DEFAULT_TARGET,
        groups=None,
        gt_masks=None,
        augment: bool = False,
        seed: int = 0,
        *,
        field_of_view_mm=None,
        field_of_view_px=None,
        slices=None,
        context: int = 0,
        channel_axis=None,
        normalise=None,
        jitter: float = 0.1,
        lazy: bool = False,
        loader=None,
        cache_size: int = 16,
    ) -> LesionDataset:
        """A square patch around each lesion (CT protocol), see ``lesion_crop``.

        Parameters
        ----------
        images : sequence
            Source images (arrays, paths or callables, as in ``from_whole_images``): 2D slices
            in HU, RGB, ``(C, H, W)`` stacks with ``channel_axis=0``, or ``(Z, H, W)`` volumes
            with ``slices``.
        recists : sequence of Recist
            One per lesion, in its source image's pixel coordinates.
        size, margin, field_of_view_mm, field_of_view_px
            Patch size and extent (see ``lesion_crop`` and ``crop_transform_for``).
        window : str, (lo, hi), or sequence of those, optional
            CT window(s) mapping HU to [0, 1], one for all lesions or one per lesion. By
            default uint8 images are used as they are and anything else gets the soft-tissue
            window (-160, 240) HU.
        image_index : sequence of int, optional
            Which image each lesion is on (several lesions may share one); by default lesion
            ``i`` is on image ``i``.
        slices : sequence of int, optional
            Key slice of each lesion when the images are volumes.
        context : int
            With ``slices``: neighbouring slices on each side stacked as channels (1 gives the
            3-slice input of DeepLesion models).
        groups, gt_masks, augment, seed, channel_axis, normalise, jitter, lazy, loader,
        cache_size
            As in ``from_whole_images``; ``gt_masks`` entries are in source coordinates (a
            volume's entry may be the whole volume or the key slice). Pseudo-masks, true masks
            and patch placement need no image, so ``lazy=True`` reads at most the first
            lesion's image here (for its channel count; none with ``slices``).
        """
        size = _check_size(size)
        _check_target(pseudo_mask_method)
        recists = _check_recists(recists)
        items = list(images)
        n = len(recists)
        if image_index is None:
            if len(items) != n:
                raise ValueError(
                    f"{len(items)} images for {n} lesions: pass image_index to share images"
                )
            index = np.arange(n)
        else:
            index = np.asarray(image_index)
            if index.shape != (n,) or index.dtype.kind not in "iu":
                raise ValueError(f"image_index must be {n} integers, one per lesion")
            if n and (index.min() < 0 or index.max() >= len(items)):
                raise ValueError(f"image_index values must lie in [0, {len(items) - 1}]")
            index = index.astype(np.int64)
        if slices is not None:
            slices = [int(s) for s in slices]
            if len(slices) != n:
                raise ValueError(f"slices has {len(slices)} entries for {n} lesions")
            if channel_axis is not None:
                raise ValueError("channel_axis does not apply with slices: volumes are (Z, H, W)")
        context = int(context)
        if context < 0:
            raise ValueError(f"context must be non-negative, got {context}")
        if context and slices is None:
            raise ValueError("context needs slices (the images must be volumes)")
        windows = _parse_windows(window, n)
        gt_list = _check_gt_list(gt_masks, n)
        transforms = [crop_transform_for(r, size, margin, field_of_view_mm,
                                         field_of_view_px=field_of_view_px) for r in recists]
        out_recists = [t.crop_recist(r) for t, r in zip(transforms, recists)]
        # Packed as they are drawn: unpacked, n lesions would first take n * size**2 bytes each.
        masks = _packed_store(n, size)
        gts = _packed_store(n, size)
        weights = _packed_store(n, size) if pseudo_mask_method == "trimap" else None
        has_gt = np.zeros(n, dtype=bool)
        shapes: list = [None] * n
        needs_image = pseudo_mask_method in IMAGE_TARGETS
        for i, r_out in enumerate(out_recists):
            if not needs_image:  # else drawn below, once each patch is cut
                _pack_target(masks, weights, i,
                             training_target(r_out, (size, size), pseudo_mask_method))
            if gt_list[i] is not None:
                key = None if slices is None else slices[i]
                plane = _gt_plane(_materialise(gt_list[i], None), key)
                _pack_into(gts, i, transforms[i].crop_image(plane, order=1, pad_value=0))
                has_gt[i] = True
                shapes[i] = plane.shape
        lesion_slices = [None] * n if slices is None else slices
        lazy_src = _LazyCrops(
            _SourceCache(items, loader, cache_size),
            index,
            transforms,
            windows,
            lesion_slices,
            context,
            channel_axis,
        )
        n_channels = None
        if lazy and not needs_image:
            images_src = lazy_src
        else:
            stored = None
            # Read each source once and crop all of its lesions, then let it go.
            for k in np.unique(index):
                lesions = np.nonzero(index == k)[0]
                image = _materialise(items[k], loader)
                for i in lesions:
                    patch = lazy_src.make(int(i), image)
                    if needs_image:
                        _pack_target(masks, weights, int(i), training_target(
                            out_recists[i], (size, size), pseudo_mask_method, _hwc(patch)))
                    if lazy:
                        shapes[i] = _plane_shape(
                            image, None if slices is not None else channel_axis)
                        continue
                    if stored is None:
                        stored = np.empty((n,) + patch.shape, dtype=np.uint8)
                    if patch.shape != stored.shape[1:]:
                        raise ValueError(
                            f"lesion {i}'s image gives {patch.shape[0]} channels, earlier "
                            f"lesions {stored.shape[1]}"
                        )
                    stored[i] = patch
                    shapes[i] = _plane_shape(image, None if slices is not None else channel_axis)
            images_src = lazy_src if lazy else _Stored(stored)
            n_channels = None if lazy else stored.shape[1]
        if n_channels is None:
            n_channels = lazy_src.n_channels_hint()
        dataset = cls(
            images=images_src,
            masks_packed=masks,
            weights_packed=weights,
            groups=_resolve_groups(groups, recists),
            gt_packed=gts,
            has_gt=has_gt,
            size=size,
            n_channels=n_channels,
            recists=out_recists,
            source_recists=recists,
            transforms=transforms,
            source_shapes=shapes,
            augment=augment,
            seed=seed,
            normalise=normalise,
            jitter=jitter,
            pseudo_mask_method=pseudo_mask_method,
        )
        single = window if isinstance(window, str) else None
        if not isinstance(window, str) and window is not None and len(window) == 2 and all(
                np.isscalar(v) and not isinstance(v, str) for v in window):
            single = tuple(float(v) for v in window)  # one (lo, hi) pair for every lesion
        dataset.preprocessing = {
            "mode": "crops",
            "size": size,
            "normalise": normalise,
            "channel_axis": channel_axis,
            "margin": margin,
            "field_of_view_mm": field_of_view_mm,
            "field_of_view_px": None if field_of_view_px is None else float(field_of_view_px),
            "window": single if single is None else list(resolve_window(single)),
            "context": context,
            "pseudo_mask_method": pseudo_mask_method,
        }
        return dataset

    # -- access --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._masks.shape[0])

    def _check_index(self, index) -> int:
        i = int(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for {n} lesions")
        return i

    def _unpack(self, packed: np.ndarray, i: int) -> np.ndarray:
        s = self.size
        return np.unpackbits(packed[i], count=s * s).reshape(s, s).astype(bool)

    def pseudo_mask(self, index) -> np.ndarray:
        """Lesion ``index``'s pseudo-mask, bool (size, size), without augmentation."""
        return self._unpack(self._masks, self._check_index(index))

    def gt_mask(self, index) -> np.ndarray | None:
        """Lesion ``index``'s true mask, bool (size, size), or None when unknown."""
        i = self._check_index(index)
        return self._unpack(self._gt, i) if self.has_gt[i] else None

    def image_u8(self, index) -> np.ndarray:
        """Lesion ``index``'s image as stored: uint8 (C, size, size), without augmentation."""
        return self._images.image(self._check_index(index))

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached images and packed masks (not counting a lazy cache)."""
        weights = 0 if self._weights is None else self._weights.nbytes
        return int(self._images.nbytes + self._masks.nbytes + self._gt.nbytes + weights)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation and ``epoch_order`` of epoch ``epoch``."""
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def epoch_order(self, shuffle: bool = True) -> np.ndarray:
        """The order to visit the lesions in this epoch (a permutation fixed by seed and epoch)."""
        n = len(self)
        if not shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch, 0, 0]).permutation(n)

    @property
    def colour(self) -> bool:
        """Whether the channels are a photograph's colours, rather than one grey image or a
        CT slice with its neighbours."""
        pre = getattr(self, "preprocessing", None) or {}
        source = pre.get("source")
        if isinstance(source, dict) and "colour" in source:
            return bool(source["colour"])
        return self.n_channels == 3 and not pre.get("context")

    def with_prompt(self, jitter: float = 2.0, prior_dropout: float = 0.5,
                    prior_edge: str = PRIOR_EDGES[0]) -> LesionDataset:
        """A view of this data set whose items also hold the RECIST prompt channels.

        Parameters
        ----------
        jitter : float
            Standard deviation, in item pixels, of the random shift of each endpoint, drawn
            anew for each item and epoch (readers disagree by a few pixels on where a
            boundary is). 0 with ``prior_dropout`` 0 gives the plain prompt, for validation.
        prior_dropout : float
            Probability that an item's ``prior`` channel is blanked, so that a network learns
            to segment from the image and the marks alone.
        prior_edge : {"distance", "blur"}
            How the prior channel's edge is softened (``core.recist_prompt``).

        Returns
        -------
        LesionDataset
            A shallow copy sharing images and masks; this data set is not changed. Items gain
            a ``prompt`` entry: float32 (3, size, size), see ``core.recist_prompt``.
        """
        if not (0 <= float(jitter) <= 0.25 * self.size):
            raise ValueError(f"jitter must be between 0 and {0.25 * self.size:g} pixels, "
                             f"got {jitter!r}")
        if not 0 <= float(prior_dropout) <= 1:
            raise ValueError(f"prior_dropout must be in [0, 1], got {prior_dropout!r}")
        check_prior_edge(prior_edge)
        view = copy.copy(self)
        view.prompt = True
        view.prompt_jitter = float(jitter)
        view.prior_dropout = float(prior_dropout)
        view.prior_edge = prior_edge
        return view

    def with_augmentation(self, kind: str) -> LesionDataset:
        """A view of this data set whose items are varied from epoch to epoch.

        Parameters
        ----------
        kind : {"none", "flips", "affine"}
            "flips": random flips and quarter turns with brightness and contrast jitter;
            "affine": those, then a rotation by any angle, a scaling by 0.8 to 1.25 and a
            shift of up to a tenth of the side (images, masks and weights mirrored at the
            edges, prompt channels blank beyond them); "none": items as they are.

        Returns
        -------
        LesionDataset
            A shallow copy; this data set is not changed.
        """
        if kind not in ("none", "flips", "affine"):
            raise ValueError(f"augmentation must be 'none', 'flips' or 'affine', got {kind!r}")
        view = copy.copy(self)
        view.augment = kind != "none"
        view.affine = kind == "affine"
        return view

    def with_targets(self, masks) -> LesionDataset:
        """A view of this data set training towards other targets (a self-training round's).

        Parameters
        ----------
        masks : array_like of bool, (n, size, size)
            One target per lesion, in item coordinates (unaugmented), in this data set's
            order.

        Returns
        -------
        LesionDataset
            A shallow copy sharing images, prompts and groups; every pixel of the new targets
            counts in the loss (a trimap's band weights are dropped). This data set is not
            changed.
        """
        masks = np.asarray(masks)
        expected = (len(self), self.size, self.size)
        if masks.shape != expected:
            raise ValueError(f"targets must have shape {expected}, got {masks.shape}")
        packed = _packed_store(len(self), self.size)
        for i, mask in enumerate(masks):
            _pack_into(packed, i, mask)
        view = copy.copy(self)
        view._masks = packed
        view._weights = None
        return view

    def prompt_of(self, index) -> np.ndarray:
        """Lesion ``index``'s prompt channels without augmentation, float32 (3, size, size)."""
        i = self._check_index(index)
        return prompt_channels(self.recists[i], (self.size, self.size),
                               prior_edge=self.prior_edge)

    def _prompt(self, i: int) -> np.ndarray:
        if self.prompt_jitter == 0 and self.prior_dropout == 0:
            return prompt_channels(self.recists[i], (self.size, self.size),
                                   prior_edge=self.prior_edge)
        # A stream of its own, so that prompted items augment their images exactly as the
        # items of the other model kinds do.
        rng = np.random.default_rng([self.seed, self.epoch, 3, i])
        recist = jitter_recist(self.recists[i], rng, self.prompt_jitter)
        keep_prior = bool(rng.random() >= self.prior_dropout)
        return prompt_channels(recist, (self.size, self.size), prior=keep_prior,
                               prior_edge=self.prior_edge)

    def partners(self, mode: str = "same_group") -> np.ndarray:
        """Co-segmentation partner of each lesion for this epoch (see ``pair_indices``)."""
        return pair_indices(self.groups, seed=[self.seed, self.epoch, 2, 0], mode=mode)

    def __getitem__(self, index) -> dict:
        i = self._check_index(index)
        image = self._images.image(i).astype(np.float32) / np.float32(255.0)
        mask = self._unpack(self._masks, i)
        has_gt = bool(self.has_gt[i])
        gt = self._unpack(self._gt, i) if has_gt else None
        prompt = self._prompt(i) if self.prompt else None
        weight = None if self._weights is None else self._unpack(self._weights, i)
        if self.augment:
            image, mask, gt, prompt, weight = self._augment(i, image, mask, gt, prompt, weight)
        if self.normalise is not None:
            image = normalise_rgb(image, mode=self.normalise, channel_axis=0)
        if gt is None:
            gt_arr = np.full((1, self.size, self.size), np.nan, dtype=np.float32)
        else:
            gt_arr = gt[None].astype(np.float32)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask[None], dtype=np.float32)),
            "group": torch.tensor(int(self.groups[i]), dtype=torch.int64),
            "gt": torch.from_numpy(np.ascontiguousarray(gt_arr)),
            "has_gt": has_gt,
            "index": i,
        }
        if weight is not None:
            item["weight"] = torch.from_numpy(np.ascontiguousarray(weight[None],
                                                                   dtype=np.float32))
        if prompt is not None:
            item["prompt"] = torch.from_numpy(np.ascontiguousarray(prompt, dtype=np.float32))
        return item

    def augmentation_rng(self, index) -> np.random.Generator:
        """The generator that augments item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, 1, self._check_index(index)])

    def _augment(self, i, image, mask, gt, prompt=None, weight=None):
        rng = self.augmentation_rng(i)
        # Draw every number every time so that each choice keeps its place in the stream.
        k = int(rng.integers(4))
        flip_rows, flip_cols = rng.random(2) < 0.5
        contrast = 1.0 + rng.uniform(-self.jitter, self.jitter)
        brightness = rng.uniform(-self.jitter, self.jitter)

        def geometric(a, lead):
            axes = (lead, lead + 1)
            a = np.rot90(a, k, axes=axes)
            if flip_rows:
                a = np.flip(a, axis=lead)
            if flip_cols:
                a = np.flip(a, axis=lead + 1)
            return a

        image = geometric(image, 1)
        mask = geometric(mask, 0)
        gt = None if gt is None else geometric(gt, 0)
        prompt = None if prompt is None else geometric(prompt, 1)
        weight = None if weight is None else geometric(weight, 0)
        mean = image.mean(axis=(1, 2), keepdims=True)
        image = (image - mean) * np.float32(contrast) + mean + np.float32(brightness)
        image = np.clip(image, 0.0, 1.0)
        if self.affine:
            image, mask, gt, prompt, weight = self._warp(i, image, mask, gt, prompt, weight)
        return image, mask, gt, prompt, weight

    def _warp(self, i, image, mask, gt, prompt, weight):
        """A random rotation, scaling and shift of an item (``with_augmentation("affine")``)."""
        # A stream of its own, so that the flips and jitter stay those of "flips".
        rng = np.random.default_rng([self.seed, self.epoch, 4, i])
        angle = rng.uniform(0.0, 2.0 * np.pi)
        scale = np.exp(rng.uniform(-np.log(_AFFINE_SCALE), np.log(_AFFINE_SCALE)))
        shift = rng.uniform(-_AFFINE_SHIFT, _AFFINE_SHIFT, 2) * self.size
        # affine_transform maps output coordinates to input ones: o -> M o + offset.
        matrix = np.array([[np.cos(angle), -np.sin(angle)],
                           [np.sin(angle), np.cos(angle)]]) / scale
        centre = np.full(2, (self.size - 1) / 2.0)
        offset = centre - matrix @ centre + shift

        def warp(a, order=1, mode="reflect"):
            return ndi.affine_transform(np.asarray(a, np.float32), matrix, offset=offset,
                                        order=order, mode=mode)

        image = np.stack([warp(c) for c in image])
        mask = warp(mask) >= 0.5
        gt = None if gt is None else warp(gt) >= 0.5
        prompt = None if prompt is None else np.stack([warp(c, mode="constant")
                                                       for c in prompt])
        weight = None if weight is None else warp(weight, order=0)
        return image, mask, gt, prompt, weight

    def paste_back(self, index, mask, source_shape=None) -> np.ndarray:
        """Map an item-space mask (or probability map) back onto the lesion's source image.

        Parameters
        ----------
        index : int
        mask : array_like, shape (size, size)
            Values at or above 0.5 are lesion.
        source_shape : tuple of int, optional
            (rows, cols) of the source; needed only when the dataset has not seen the source
            (lazy crops without a true mask).

        Returns
        -------
        numpy.ndarray of bool, the source shape
        """
        i = self._check_index(index)
        m = np.asarray(mask)
        if m.shape != (self.size, self.size):
            raise ValueError(f"mask must have shape {(self.size, self.size)}, got {m.shape}")
        shape = source_shape if source_shape is not None else self.source_shapes[i]
        if shape is None:
            raise ValueError(f"the source shape of lesion {i} is unknown: pass source_shape")
        if self.transforms is not None:
            return self.transforms[i].paste_mask(m, shape)
        return _resize_mask(m.astype(np.float32) >= 0.5, tuple(int(s) for s in shape))

    def __repr__(self) -> str:
        kind = "crops" if self.transforms is not None else "whole images"
        return (
            f"LesionDataset({len(self)} lesions, {kind}, {self.n_channels}x{self.size}x"
            f"{self.size}, {int(self.has_gt.sum())} with true masks, augment={self.augment})"
        )


# -- image stores ------------------------------------------------------------------------------
class _Stored:
    """Images computed once and kept: uint8 (N, C, S, S)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def image(self, i: int) -> np.ndarray:
        return self.array[i]

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


class _LazyWhole:
    """Whole images resized on access."""

    nbytes = 0

    def __init__(self, source: _SourceCache, size: int, channel_axis):
        self.source = source
        self.size = size
        self.channel_axis = channel_axis

    def image(self, i: int) -> np.ndarray:
        return _whole_u8(self.source.get(i), self.size, self.channel_axis)


class _LazyCrops:
    """Lesion patches cut on access from a cache of source images."""

    nbytes = 0

    def __init__(self, source, index, transforms, windows, slices, context, channel_axis):
        self.source = source
        self.index = index
        self.transforms = transforms
        self.windows = windows
        self.slices = slices
        self.context = context
        self.channel_axis = channel_axis

    def make(self, i: int, image) -> np.ndarray:
        image = np.asarray(image)
        window = _auto_window(image, self.windows[i])
        return _crop_u8(
            image, self.transforms[i], self.channel_axis, window, self.slices[i], self.context
        )

    def image(self, i: int) -> np.ndarray:
        return self.make(i, self.source.get(int(self.index[i])))

    def n_channels_hint(self) -> int:
        # Known without reading: volumes give 2 context + 1 channels; otherwise read lesion 0.
        if self.slices[0] is not None:
            return 2 * self.context + 1
        return int(self.image(0).shape[0])


# -- order and pairs ---------------------------------------------------------------------------
class EpochSampler(Sampler):
    """Visits a ``LesionDataset`` in the order of its current epoch (``epoch_order``)."""

    def __init__(self, dataset: LesionDataset, shuffle: bool = True):
        self.dataset = dataset
        self.shuffle = bool(shuffle)

    def __iter__(self):
        return iter(self.dataset.epoch_order(self.shuffle).tolist())

    def __len__(self) -> int:
        return len(self.dataset)


def pair_indices(groups, seed=0, mode: str = "same_group") -> np.ndarray:
    """A partner for each lesion, for co-segmentation training.

    Parameters
    ----------
    groups : sequence of int
        Group of each lesion.
    seed : int or sequence of int
        Seed of the draw (e.g. ``[seed, epoch]``); the same seed gives the same pairs.
    mode : {"same_group", "random"}
        ``"same_group"``: the partner is another lesion of the same group, drawn uniformly; a
        lesion alone in its group is paired with itself. ``"random"``: any other lesion.

    Returns
    -------
    numpy.ndarray of int64
        ``partner[i]`` is the index paired with lesion ``i``; it differs from ``i`` whenever
        another candidate exists.
    """
    if mode not in _PAIR_MODES:
        raise ValueError(f"mode must be one of {_PAIR_MODES}, got {mode!r}")
    g = np.asarray(groups)
    if g.ndim != 1 or (g.size and g.dtype.kind not in "iub"):
        raise ValueError(f"groups must be a 1D sequence of integers, got shape {g.shape}")
    n = g.size
    rng = np.random.default_rng(seed)
    partner = np.arange(n, dtype=np.int64)
    if mode == "random":
        if n > 1:
            # An offset in [1, n) from each index never lands on the index itself.
            partner = (partner + rng.integers(1, n, size=n)) % n
        return partner
    for value in np.unique(g):
        members = np.nonzero(g == value)[0]
        m = members.size
        if m < 2:
            continue
        offsets = rng.integers(1, m, size=m)
        partner[members] = members[(np.arange(m) + offsets) % m]
    return partner
