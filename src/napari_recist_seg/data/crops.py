"""Lesion patches: square crops around a RECIST, their inverse, and intensity windowing.

Geometry convention
-------------------
Coordinates are (row, col) with pixel centres on integers, so source pixel ``i`` covers
``[i - 0.5, i + 0.5]``. A patch is the square of side ``side`` source pixels centred on
``centre``; its outer edge starts at ``edge = centre - side / 2``. It is resampled to
``size x size`` output pixels, each ``scale = side / size`` source pixels wide, so that::

    source = edge + (crop + 0.5) * scale
    crop = (source - edge) / scale - 0.5

Image axes
----------
Every function here takes 2D images ``(H, W)``, RGB(A) images with the channels last
``(H, W, 3)`` / ``(H, W, 4)``, or channel stacks with an explicit ``channel_axis`` (``0`` for
``(C, H, W)``, e.g. neighbouring CT slices). With ``channel_axis=None`` a 3D array whose last
axis has 3 or 4 entries is read as channels-last RGB(A); any other 3D array needs
``channel_axis``. Outputs keep the input's axis order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.recist import Recist

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WINDOW_PRESETS",
    "CropTransform",
    "crop_transform_for",
    "lesion_crop",
    "normalise_rgb",
    "resolve_channel_axis",
    "resolve_window",
    "window_ct",
]

#: CT display windows as (lowest, highest) Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (-160.0, 240.0),
    "lung": (-1350.0, 150.0),
    "bone": (-450.0, 1050.0),
    # level 30 HU, width 150 HU: narrow, so small density differences inside the liver show.
    "liver": (-45.0, 105.0),
    "wide": (-1024.0, 3071.0),
}

#: ImageNet channel statistics for images scaled to [0, 1] (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- axes ------------------------------------------------------------------------------------
def resolve_channel_axis(image: np.ndarray, channel_axis=None) -> int | None:
    """The non-negative channel axis of ``image``, or None for a single-channel 2D image.

    Parameters
    ----------
    image : ndarray
        ``(H, W)``, ``(H, W, 3|4)`` or a 3D stack with ``channel_axis`` given.
    channel_axis : int, optional
        Axis holding channels; None guesses channels-last for 3 or 4 trailing entries.

    Raises
    ------
    ValueError
        For arrays that are not 2D or 3D, or 3D arrays whose channel axis cannot be guessed.
    """
    if image.ndim == 2:
        if channel_axis is not None:
            raise ValueError(f"image is 2D (shape {image.shape}) but channel_axis={channel_axis}")
        return None
    if image.ndim != 3:
        raise ValueError(f"image must be 2D or 3D with one channel axis, got shape {image.shape}")
    if channel_axis is None:
        if image.shape[-1] in (3, 4):
            return 2
        raise ValueError(
            f"image has shape {image.shape}: pass channel_axis (0 for (C, H, W) stacks); "
            "only (H, W, 3) and (H, W, 4) are read as channels-last RGB(A) by default"
        )
    try:
        axis = int(channel_axis)
    except (TypeError, ValueError):
        raise ValueError(f"channel_axis must be an integer, got {channel_axis!r}") from None
    if not -3 <= axis < 3:
        raise ValueError(f"channel_axis {axis} is out of range for a 3D image")
    return axis % 3


def _is_rgb(image: np.ndarray, axis: int | None) -> bool:
    return axis == 2 and image.shape[2] in (3, 4)


# -- the transform ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CropTransform:
    """Where a square patch sits in its source image.

    Parameters
    ----------
    centre : tuple of float
        Patch centre (row, col) in source pixels.
    side : float
        Side length of the patch in source pixels.
    size : int
        Side length of the resampled patch in output pixels.
    """

    centre: tuple[float, float]
    side: float
    size: int

    def __post_init__(self):
        try:
            centre = tuple(float(v) for v in np.asarray(self.centre, dtype=float).reshape(-1))
        except (TypeError, ValueError):
            raise ValueError(f"centre must be (row, col), got {self.centre!r}") from None
        if len(centre) != 2 or not all(np.isfinite(centre)):
            raise ValueError(f"centre must be two finite numbers (row, col), got {self.centre!r}")
        side = float(self.side)
        if not np.isfinite(side) or side <= 0:
            raise ValueError(f"side must be a positive number of pixels, got {self.side!r}")
        size = int(self.size)
        if size != self.size or size <= 0:
            raise ValueError(f"size must be a positive integer, got {self.size!r}")
        object.__setattr__(self, "centre", centre)
        object.__setattr__(self, "side", side)
        object.__setattr__(self, "size", size)

    @property
    def scale(self) -> float:
        """Source pixels per output pixel (above 1: the patch is shrunk)."""
        return self.side / self.size

    @property
    def edge(self) -> np.ndarray:
        """(row, col) of the patch's outer top-left corner in source coordinates."""
        return np.asarray(self.centre) - self.side / 2.0

    def to_crop(self, points) -> np.ndarray:
        """Map (row, col) source points, shape ``(2,)`` or ``(N, 2)``, into the patch."""
        pts = np.asarray(points, dtype=float)
        return (pts - self.edge) / self.scale - 0.5

    def to_source(self, points) -> np.ndarray:
        """Map (row, col) patch points, shape ``(2,)`` or ``(N, 2)``, back to the source."""
        pts = np.asarray(points, dtype=float)
        return self.edge + (pts + 0.5) * self.scale

    def crop_recist(self, recist: Recist) -> Recist:
        """``recist`` in patch coordinates; its spacing grows by ``scale`` so mm are kept."""
        if not isinstance(recist, Recist):
            raise ValueError(f"recist must be a Recist, got {type(recist).__name__}")
        shift = -(self.edge + 0.5 * self.scale)
        return recist.translated(shift).scaled(1.0 / self.scale)

    def source_recist(self, recist: Recist) -> Recist:
        """Inverse of ``crop_recist``: a patch-space RECIST in source coordinates."""
        if not isinstance(recist, Recist):
            raise ValueError(f"recist must be a Recist, got {type(recist).__name__}")
        return recist.scaled(self.scale).translated(self.edge + 0.5 * self.scale)

    def _sample_grid(self) -> np.ndarray:
        # Source positions of the output pixel centres along one axis, relative to the edge.
        return (np.arange(self.size) + 0.5) * self.scale

    def crop_image(
        self, image, order: int = 1, channel_axis=None, pad_value=None, anti_aliasing=True
    ) -> np.ndarray:
        """Resample the patch out of ``image``.

        Parameters
        ----------
        image : array_like
            ``(H, W)``, channels-last RGB(A), or a stack with ``channel_axis``.
        order : int
            Spline order: 0 nearest, 1 bilinear (default), 3 cubic.
        channel_axis : int, optional
            See the module notes on image axes.
        pad_value : float, optional
            Value for the parts of the patch outside the image. By default 0 for RGB(A) images
            and the image minimum otherwise (air in CT, rather than a fake 0 HU tissue).
        anti_aliasing : bool
            When the patch is shrunk (``scale > 1``) and ``order > 0``, blur with a Gaussian of
            sigma ``(scale - 1) / 2`` first so that fine texture does not alias.

        Returns
        -------
        ndarray
            ``(size, size)`` plus the channel axis where the input had one. Floating inputs give
            float32; integer inputs keep their dtype (rounded and clipped); bool inputs give
            bool (values at or above 0.5 after interpolation).
        """
        img = np.asarray(image)
        axis = resolve_channel_axis(img, channel_axis)
        if img.size == 0:
            raise ValueError(f"image is empty (shape {img.shape})")
        if order not in (0, 1, 2, 3, 4, 5):
            raise ValueError(f"order must be a spline order between 0 and 5, got {order!r}")
        planes = [img] if axis is None else list(np.moveaxis(img, axis, 0))
        if pad_value is None:
            pad = 0.0 if _is_rgb(img, axis) else float(np.min(img))
        else:
            pad = float(pad_value)
        out = np.stack([self._crop_plane(p, order, pad, anti_aliasing) for p in planes], axis=0)
        out = _cast_like(out, img.dtype)
        if axis is None:
            return out[0]
        return np.moveaxis(out, 0, axis)

    def _crop_plane(self, plane: np.ndarray, order: int, pad: float, anti_aliasing: bool):
        grid = self._sample_grid()
        edge = self.edge
        rows = edge[0] + grid
        cols = edge[1] + grid
        blur = anti_aliasing and order > 0 and self.scale > 1.0
        sigma = (self.scale - 1.0) / 2.0 if blur else 0.0
        # Work on the bounding window of the samples (plus room for the spline and the blur)
        # so that a small patch from a large slice costs little.
        reach = order + 1 + int(np.ceil(4 * sigma))
        r0 = int(np.floor(rows[0])) - reach
        r1 = int(np.ceil(rows[-1])) + reach + 1
        c0 = int(np.floor(cols[0])) - reach
        c1 = int(np.ceil(cols[-1])) + reach + 1
        window = _padded_window(plane.astype(np.float64, copy=False), r0, r1, c0, c1, pad)
        if blur:
            window = ndimage.gaussian_filter(window, sigma, mode="nearest")
        rr = (rows - r0)[:, None]
        cc = (cols - c0)[None, :]
        coords = np.stack(np.broadcast_arrays(rr, cc))
        return ndimage.map_coordinates(window, coords, order=order, mode="nearest")

    def paste_mask(self, crop_mask, source_shape, threshold: float = 0.5) -> np.ndarray:
        """Put a patch-space mask (or probability map) back into the source image.

        Each source pixel inside the patch takes the bilinearly interpolated patch value,
        thresholded at ``threshold``; pixels outside the patch are False. For a patch that was
        enlarged by an integer factor (``1 / scale`` a whole number) and lies on the source
        pixel grid, cropping a mask with ``crop_image(mask, order=0)`` and pasting it back
        returns the mask exactly inside the patch.

        Parameters
        ----------
        crop_mask : array_like, shape (size, size)
            Bool mask or values in [0, 1].
        source_shape : tuple of int
            (rows, cols) of the source image (a channel axis, if given, is not allowed).
        threshold : float
            Interpolated values at or above it count as lesion.

        Returns
        -------
        numpy.ndarray of bool, shape ``source_shape``
        """
        values = self.paste_values(crop_mask, source_shape)
        return values >= threshold - 1e-6

    def paste_values(self, crop_values, source_shape) -> np.ndarray:
        """Bilinear resampling of a patch's values (e.g. probabilities) into the source image.

        Returns float32 of shape ``source_shape``, 0 outside the patch.
        """
        m = np.asarray(crop_values)
        if m.shape != (self.size, self.size):
            raise ValueError(f"crop_mask must have shape {(self.size, self.size)}, got {m.shape}")
        try:
            shape = tuple(int(s) for s in source_shape)
        except (TypeError, ValueError):
            raise ValueError(f"source_shape must be (rows, cols), got {source_shape!r}") from None
        if len(shape) != 2 or min(shape) <= 0:
            raise ValueError(f"source_shape must be two positive integers, got {source_shape!r}")
        out = np.zeros(shape, dtype=np.float32)
        edge = self.edge
        # Source pixels whose centres fall inside the patch's outer square [edge, edge + side).
        r0 = max(0, int(np.ceil(edge[0] - 1e-9)))
        c0 = max(0, int(np.ceil(edge[1] - 1e-9)))
        r1 = min(shape[0], int(np.ceil(edge[0] + self.side - 1e-9)))
        c1 = min(shape[1], int(np.ceil(edge[1] + self.side - 1e-9)))
        if r0 >= r1 or c0 >= c1:
            return out
        rr = (np.arange(r0, r1) - edge[0]) / self.scale - 0.5
        cc = (np.arange(c0, c1) - edge[1]) / self.scale - 0.5
        coords = np.stack(np.broadcast_arrays(rr[:, None], cc[None, :]))
        out[r0:r1, c0:c1] = ndimage.map_coordinates(
            m.astype(np.float32), coords, order=1, mode="nearest"
        )
        return out

    def to_dict(self) -> dict:
        """JSON-friendly form; ``CropTransform(**d)`` restores it."""
        return {"centre": list(self.centre), "side": self.side, "size": self.size}


def _padded_window(plane: np.ndarray, r0: int, r1: int, c0: int, c1: int, pad: float):
    """``plane[r0:r1, c0:c1]`` with out-of-image parts filled with ``pad``."""
    h, w = plane.shape
    out = np.full((r1 - r0, c1 - c0), pad, dtype=np.float64)
    sr0, sr1 = max(r0, 0), min(r1, h)
    sc0, sc1 = max(c0, 0), min(c1, w)
    if sr0 < sr1 and sc0 < sc1:
        out[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = plane[sr0:sr1, sc0:sc1]
    return out


def _cast_like(values: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return values >= 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(np.float32)


# -- lesion patches --------------------------------------------------------------------------
def crop_transform_for(
    recist: Recist, size: int = 128, margin: float = 0.5, field_of_view_mm=None,
    *, field_of_view_px=None,
) -> CropTransform:
    """The ``CropTransform`` that ``lesion_crop`` uses (no image needed).

    See ``lesion_crop`` for ``size``, ``margin`` and ``field_of_view_mm``.

    Parameters
    ----------
    field_of_view_px : float, optional
        Patch side in source pixels (DeepLesion models use 120 px), widened to the
        ``margin`` rule's side for a lesion too long to fit with that context. Not with
        ``field_of_view_mm``.
    """
    if not isinstance(recist, Recist):
        raise ValueError(f"recist must be a Recist, got {type(recist).__name__}")
    try:
        size_i = int(size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an integer, got {size!r}") from None
    if size_i != size or size_i <= 0 or size_i % 16:
        raise ValueError(
            f"size must be a positive multiple of 16 (the network's output stride), got {size!r}"
        )
    if field_of_view_mm is not None and field_of_view_px is not None:
        raise ValueError("give field_of_view_mm or field_of_view_px, not both")
    r0, c0, r1, c1 = recist.bbox
    centre = ((r0 + r1) / 2.0, (c0 + c1) / 2.0)
    if field_of_view_mm is not None:
        fov = float(field_of_view_mm)
        if not np.isfinite(fov) or fov <= 0:
            raise ValueError(f"field_of_view_mm must be positive, got {field_of_view_mm!r}")
        side = fov / float(np.mean(recist.spacing))
    else:
        margin = float(margin)
        if not np.isfinite(margin) or margin < 0:
            raise ValueError(f"margin must be a non-negative fraction, got {margin!r}")
        side = recist.long_length * (1.0 + 2.0 * margin)
        if field_of_view_px is not None:
            fov_px = float(field_of_view_px)
            if not np.isfinite(fov_px) or fov_px <= 0:
                raise ValueError(f"field_of_view_px must be positive, got {field_of_view_px!r}")
            # A fixed scale keeps lesion sizes comparable; only a lesion that would not fit
            # with its context gets a larger patch.
            side = max(fov_px, side)
    return CropTransform(centre, side, size_i)


def lesion_crop(
    image,
    recist: Recist,
    size: int = 128,
    margin: float = 0.5,
    field_of_view_mm=None,
    channel_axis=None,
    order: int = 1,
    pad_value=None,
):
    """A square patch around a lesion, resampled to ``size x size``.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` (e.g. CT in HU), ``(H, W, 3)`` RGB, or a stack with ``channel_axis``.
    recist : Recist
        The lesion; the patch is centred on the centre of its bounding box.
    size : int
        Output side in pixels; a multiple of 16 so that DeepLabV3+ (output stride 16) tiles it.
    margin : float
        Context on each side as a fraction of the long axis: the patch side is
        ``long_length * (1 + 2 * margin)`` source pixels.
    field_of_view_mm : float, optional
        Fixed patch side in millimetres instead (divided by the mean of the RECIST's spacing),
        so that every patch has the same physical scale.
    channel_axis : int, optional
        See the module notes on image axes.
    order : int
        Interpolation order for the image (1: bilinear).
    pad_value : float, optional
        Fill for parts outside the image: by default the image minimum (air for CT), 0 for
        RGB(A).

    Returns
    -------
    patch : ndarray
        The patch, axes as the input (see ``CropTransform.crop_image`` for the dtype).
    transform : CropTransform
        Maps between patch and source (``crop_recist``, ``paste_mask`` ...).
    """
    transform = crop_transform_for(recist, size, margin, field_of_view_mm)
    patch = transform.crop_image(image, order=order, channel_axis=channel_axis, pad_value=pad_value)
    return patch, transform


# -- intensities -----------------------------------------------------------------------------
def resolve_window(window) -> tuple[float, float]:
    """(lo, hi) HU from a preset name or a pair of numbers."""
    if isinstance(window, str):
        try:
            return WINDOW_PRESETS[window]
        except KeyError:
            raise ValueError(
                f"unknown CT window {window!r}; choose one of {sorted(WINDOW_PRESETS)} "
                "or give (lo, hi) in HU"
            ) from None
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(
            f"window must be a preset name or (lo, hi) in HU, got {window!r}"
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise ValueError(f"window must have finite lo < hi, got {window!r}")
    return lo, hi


def window_ct(hu, window=WINDOW_PRESETS["soft_tissue"]) -> np.ndarray:
    """Map Hounsfield units linearly onto [0, 1] between the window's limits.

    Parameters
    ----------
    hu : array_like
        CT intensities in HU.
    window : str or (float, float)
        A ``WINDOW_PRESETS`` name or (lo, hi) in HU; values outside are clipped.

    Returns
    -------
    numpy.ndarray of float32, same shape as ``hu``
    """
    lo, hi = resolve_window(window)
    arr = np.asarray(hu, dtype=np.float32)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def normalise_rgb(img, mode: str = "image", channel_axis=None, eps: float = 1e-6) -> np.ndarray:
    """Standardise each channel of an image.

    Parameters
    ----------
    img : array_like
        ``(H, W, C)`` channels-last by default, ``(H, W)``, or any 3D layout with
        ``channel_axis``. Integer images are first divided by their dtype's maximum (255 for
        uint8); floating images are taken to be in [0, 1] already.
    mode : {"image", "imagenet"}
        ``"image"``: subtract this image's per-channel mean and divide by its standard
        deviation. ``"imagenet"``: use the ImageNet constants (3 channels only), as pretrained
        encoders expect.
    channel_axis : int, optional
        Defaults to the last axis for 3D input.
    eps : float
        Added to the standard deviation so that a flat channel does not divide by zero.

    Returns
    -------
    numpy.ndarray of float32, same shape as ``img``
    """
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise ValueError(f"img must be 2D or 3D, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        x = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    elif arr.dtype.kind in "fb":
        x = arr.astype(np.float32)
    else:
        raise ValueError(f"img has unsupported dtype {arr.dtype}")
    if arr.ndim == 2:
        x = x[..., None]
        axis = 2
    else:
        axis = 2 if channel_axis is None else int(channel_axis) % 3
    x = np.moveaxis(x, axis, -1)
    if mode == "image":
        mean = x.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
        std = x.std(axis=(0, 1), dtype=np.float64).astype(np.float32)
    elif mode == "imagenet":
        if x.shape[-1] != 3:
            raise ValueError(f"ImageNet normalisation needs 3 channels, img has {x.shape[-1]}")
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        std = np.asarray(IMAGENET_STD, dtype=np.float32)
    else:
        raise ValueError(f"mode must be 'image' or 'imagenet', got {mode!r}")
    out = (x - mean) / (std + np.float32(eps))
    out = np.moveaxis(out, -1, axis)
    return out[..., 0] if arr.ndim == 2 else out
