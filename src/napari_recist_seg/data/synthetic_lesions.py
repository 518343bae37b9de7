"""Synthetic lesions inserted into real CT slices, with their true masks.

Real CT slices ("hosts") without labels receive lesions whose outline, contrast and texture are
drawn at random: a lobulated outline (an ellipse whose radius varies with angle by a few
Fourier terms, sometimes with extra lobes), a density above or below the tissue around it,
correlated noise inside and a blurred edge. Lesions are only placed where the host is soft
tissue, never over air, fat or bone. Each key slice also gets the two slices next to it: the
host moved a little, as the anatomy moves from one slice to the next, with each lesion's
cross-section there (smaller, shifted, or absent when the lesion does not reach that far).

Everything is drawn from ``numpy.random.Generator`` objects the caller seeds, so a seed gives
the same slices. Coordinates are (row, col) pixels; intensities are Hounsfield units (HU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.recist import Recist, recist_from_mask

__all__ = [
    "HOST_WINDOW",
    "SOFT_TISSUE_HU",
    "HostPose",
    "LesionAppearance",
    "LesionShape",
    "PlacedLesion",
    "RenderedSlice",
    "host_to_hu",
    "paint_lesion",
    "random_appearance",
    "random_pose",
    "random_shape",
    "render_key_slice",
    "soft_tissue_mask",
]

#: Window of the shared 8-bit host slices: 0..255 is -175..275 HU (DeepLesion's soft-tissue
#: window as the body-part regressor's data were saved).
HOST_WINDOW = (-175.0, 275.0)
#: HU range counted as soft tissue when placing a lesion: organs, muscle, lymph nodes. Fat
#: (about -100 HU), air, bone and contrast-filled vessels lie outside it.
SOFT_TISSUE_HU = (-30.0, 170.0)
# Free pixels kept between a lesion and the edge of the soft tissue, and between two lesions:
# two lesions never touch, so each is one connected component of the slice's mask.
_MARGIN_PX = 2
# Smallest long axis drawn: below it a lobulated outline is only a few pixels.
_MIN_LONG_PX = 6.0
# Tries per lesion at one size before it is shrunk, and how often it is shrunk.
_TRIES = 25
_SHRINKS = 5


# -- hosts ------------------------------------------------------------------------------------
def host_to_hu(image, window=HOST_WINDOW) -> np.ndarray:
    """An 8-bit windowed slice back in HU (values outside the window stay at its ends).

    Parameters
    ----------
    image : array_like of uint8, shape (rows, cols)
        0 is ``window[0]`` HU and 255 is ``window[1]`` HU.
    window : tuple of float
        (low, high) HU the image was saved with.

    Returns
    -------
    ndarray of float32

    Raises
    ------
    ValueError
        When the image is not 2D 8-bit or the window is not increasing.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8:
        # A grey slice saved as RGB has equal channels; anything else is not a CT slice.
        if not (np.array_equal(arr[..., 0], arr[..., 1])
                and np.array_equal(arr[..., 0], arr[..., 2])):
            raise ValueError(f"host image has colour (shape {arr.shape}); a grey CT slice "
                             "is needed")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"host image must be a 2D grey slice, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"host image must be 8-bit (a windowed CT slice), got {arr.dtype}")
    lo, hi = (float(v) for v in window)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"window must be two increasing HU values, got {window!r}")
    return (arr.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo))


def soft_tissue_mask(hu, hu_range=SOFT_TISSUE_HU, smooth: float = 1.0) -> np.ndarray:
    """Pixels of soft tissue: HU inside ``hu_range`` after a light smoothing.

    Parameters
    ----------
    hu : array_like, shape (rows, cols)
    hu_range : tuple of float
        (low, high) HU.
    smooth : float
        Gaussian sigma in pixels applied first, so that CT noise does not punch holes.

    Returns
    -------
    ndarray of bool
    """
    arr = np.asarray(hu, dtype=np.float32)
    if smooth > 0:
        arr = ndimage.gaussian_filter(arr, smooth)
    return (arr >= hu_range[0]) & (arr <= hu_range[1])


@dataclass(frozen=True)
class HostPose:
    """A small rigid-plus-scale move of a host slice, so one host gives several key slices.

    Attributes
    ----------
    rotation_deg : float
        About the image centre, counter-clockwise on screen.
    scale : float
        Zoom about the image centre (1 = unchanged).
    shift : tuple of float
        (row, col) pixels added after rotation and zoom.
    """

    rotation_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    def apply(self, hu: np.ndarray, fill: float = HOST_WINDOW[0]) -> np.ndarray:
        """The slice moved by this pose (linear interpolation; uncovered pixels get ``fill``)."""
        hu = np.asarray(hu, dtype=np.float32)
        if self == HostPose():
            return hu.copy()
        t = math.radians(self.rotation_deg)
        # Output pixel p takes the input at centre + R^-1 (p - centre - shift) / scale.
        rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
        matrix = rot / self.scale
        centre = (np.array(hu.shape, dtype=float) - 1) / 2
        offset = centre - matrix @ (centre + np.asarray(self.shift, dtype=float))
        return ndimage.affine_transform(hu, matrix, offset=offset, order=1, mode="constant",
                                        cval=float(fill)).astype(np.float32)

    def drifted(self, rng: np.random.Generator) -> HostPose:
        """The pose of the next slice: the anatomy a little larger or smaller and moved."""
        return HostPose(
            self.rotation_deg + float(rng.normal(0, 0.3)),
            self.scale * float(1 + rng.uniform(-0.015, 0.015)),
            (self.shift[0] + float(rng.normal(0, 0.7)), self.shift[1] + float(rng.normal(0, 0.7))),
        )


def random_pose(rng: np.random.Generator) -> HostPose:
    """A pose within a few degrees, +-8 % and +-12 px of the host as it is."""
    return HostPose(float(rng.uniform(-6, 6)), float(rng.uniform(0.92, 1.08)),
                    (float(rng.uniform(-12, 12)), float(rng.uniform(-12, 12))))


# -- outlines ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LesionShape:
    """A lobulated outline around the origin, in pixels.

    The body is an ellipse with semi-axes ``radii`` along ``angle`` and across it, whose radius
    is multiplied by ``1 + sum(a_k cos(k theta + phi_k))`` over ``harmonics`` (k, a_k, phi_k);
    each of ``lobes`` (u, v, r) adds a disc of radius r at (u, v) in the same rotated frame.

    Attributes
    ----------
    radii : tuple of float
    angle : float
        Radians, from the column axis towards the row axis.
    harmonics : tuple of tuple
    lobes : tuple of tuple
    """

    radii: tuple[float, float]
    angle: float
    harmonics: tuple[tuple[int, float, float], ...] = ()
    lobes: tuple[tuple[float, float, float], ...] = ()

    def reach(self) -> float:
        """An upper bound of the distance from the origin to the outline."""
        body = max(self.radii) * (1 + sum(abs(a) for _, a, _ in self.harmonics))
        lobes = [math.hypot(u, v) + r for u, v, r in self.lobes]
        return max([body, *lobes])

    def scaled(self, factor: float) -> LesionShape:
        """The same outline ``factor`` times as large."""
        f = float(factor)
        return LesionShape((self.radii[0] * f, self.radii[1] * f), self.angle, self.harmonics,
                           tuple((u * f, v * f, r * f) for u, v, r in self.lobes))

    def jittered(self, rng: np.random.Generator, amount: float = 0.15) -> LesionShape:
        """A close variant: the cross-section of the same lesion on a nearby slice."""
        harmonics = tuple((k, a * float(1 + rng.uniform(-amount, amount)),
                           p + float(rng.normal(0, amount))) for k, a, p in self.harmonics)
        lobes = tuple((u, v, r * float(1 + rng.uniform(-amount, amount)))
                      for u, v, r in self.lobes)
        return LesionShape(self.radii, self.angle + float(rng.normal(0, amount / 2)),
                           harmonics, lobes)

    def rasterise(self, centre, shape) -> tuple[np.ndarray, tuple[int, int]]:
        """Pixels whose centre lies inside the outline placed at ``centre``.

        Parameters
        ----------
        centre : tuple of float
            (row, col) of the origin in the image.
        shape : tuple of int
            (rows, cols) of the image; the result is clipped to it.

        Returns
        -------
        mask : ndarray of bool
            The bounding window of the outline (one 8-connected piece without holes).
        origin : tuple of int
            (row, col) of the window's first pixel in the image.
        """
        reach = self.reach() + 1
        r0 = max(0, int(math.floor(centre[0] - reach)))
        r1 = min(shape[0], int(math.ceil(centre[0] + reach)) + 1)
        c0 = max(0, int(math.floor(centre[1] - reach)))
        c1 = min(shape[1], int(math.ceil(centre[1] + reach)) + 1)
        if r0 >= r1 or c0 >= c1:
            return np.zeros((0, 0), dtype=bool), (r0, c0)
        dr = np.arange(r0, r1, dtype=float)[:, None] - centre[0]
        dc = np.arange(c0, c1, dtype=float)[None, :] - centre[1]
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        u = dc * cos + dr * sin
        v = -dc * sin + dr * cos
        a, b = self.radii
        theta = np.arctan2(v / b, u / a)
        rho = np.hypot(u / a, v / b)
        radius = np.ones_like(theta)
        for k, amp, phase in self.harmonics:
            radius += amp * np.cos(k * theta + phase)
        inside = rho <= radius
        for lu, lv, lr in self.lobes:
            inside |= (u - lu) ** 2 + (v - lv) ** 2 <= lr * lr
        return _one_piece(inside), (r0, c0)


def _one_piece(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece, holes filled: a lesion is one solid region."""
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def random_shape(rng: np.random.Generator, long_px: float) -> LesionShape:
    """A random lobulated outline whose longest extent is about ``long_px`` pixels.

    Shapes range from nearly round to strongly lobulated and elongated, so that RECIST-based
    ellipses fit some lesions well and others poorly, as on real CT.
    """
    elongation = float(rng.uniform(0.45, 1.0))
    a = long_px / 2
    b = a * elongation
    # How irregular: most lesions mildly, some strongly (the tail real lesions have).
    irregularity = float(rng.beta(2.0, 3.0)) * 0.65
    n_terms = int(rng.integers(2, 6))
    ks = np.sort(rng.choice(np.arange(2, 8), size=n_terms, replace=False))
    weights = rng.uniform(0.3, 1.0, size=n_terms) / ks ** 0.7
    weights *= irregularity / weights.sum()
    harmonics = tuple((int(k), float(w), float(rng.uniform(0, 2 * math.pi)))
                      for k, w in zip(ks, weights))
    lobes = []
    # Some lesions are a cluster: a main body with one to three blobs grown on its edge.
    if rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 4))):
            t = float(rng.uniform(0, 2 * math.pi))
            rim = 0.75 + float(rng.uniform(0, 0.25))
            r = float(rng.uniform(0.3, 0.55)) * b
            lobes.append((rim * a * math.cos(t), rim * b * math.sin(t), r))
    shape = LesionShape((a, b), float(rng.uniform(0, math.pi)), harmonics, tuple(lobes))
    # Lobes and harmonics make it larger than asked: bring the reach back to the request.
    return shape.scaled(min(1.0, 0.5 * long_px / shape.reach() * 1.15))


# -- density ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LesionAppearance:
    """How a lesion looks: its density against the tissue around it, texture and edge.

    Attributes
    ----------
    contrast_hu : float
        Mean density minus the surrounding tissue's (negative: hypodense).
    texture_hu : float
        Standard deviation of the correlated noise inside.
    texture_sigma : float
        Correlation length of that noise, pixels.
    edge_sigma : float
        Blur of the edge, pixels.
    core_hu : float
        Extra density at the centre, fading to 0 at the edge (negative: a necrotic or cystic
        centre; positive with a hypodense lesion: a brighter core).
    """

    contrast_hu: float
    texture_hu: float
    texture_sigma: float
    edge_sigma: float
    core_hu: float = 0.0


def random_appearance(rng: np.random.Generator) -> LesionAppearance:
    """Mostly hypodense lesions (as metastases in liver are), a third hyperdense."""
    sign = -1.0 if rng.random() < 0.67 else 1.0
    core = 0.0
    if rng.random() < 0.3:
        core = -float(rng.uniform(10, 40))
    return LesionAppearance(
        contrast_hu=sign * float(rng.uniform(18, 75)),
        texture_hu=float(rng.uniform(3, 14)),
        texture_sigma=float(rng.uniform(0.7, 2.0)),
        edge_sigma=float(rng.uniform(0.5, 1.4)),
        core_hu=core,
    )


def paint_lesion(hu: np.ndarray, mask: np.ndarray, origin, appearance: LesionAppearance,
                 local_hu: float, rng: np.random.Generator) -> None:
    """Draw one lesion into ``hu`` in place.

    The tissue's coarse structure under the lesion is replaced by the lesion's density, while
    the host's fine noise stays, so the lesion carries the scanner's noise like its
    surroundings. The edge is blurred by ``appearance.edge_sigma``.

    Parameters
    ----------
    hu : ndarray of float32, shape (rows, cols)
        The slice, modified in place.
    mask : ndarray of bool
        The lesion in a window of the slice starting at ``origin``.
    origin : tuple of int
        (row, col) of the window.
    appearance : LesionAppearance
    local_hu : float
        Density of the tissue around the lesion.
    rng : numpy.random.Generator
        For the texture.
    """
    if not mask.any():
        return
    pad = int(math.ceil(3 * max(appearance.edge_sigma, 2.0))) + 1
    r0, c0 = origin
    rows, cols = hu.shape
    w0, w1 = max(0, r0 - pad), min(rows, r0 + mask.shape[0] + pad)
    v0, v1 = max(0, c0 - pad), min(cols, c0 + mask.shape[1] + pad)
    big = np.zeros((w1 - w0, v1 - v0), dtype=np.float32)
    big[r0 - w0:r0 - w0 + mask.shape[0], c0 - v0:c0 - v0 + mask.shape[1]] = mask
    alpha = ndimage.gaussian_filter(big, appearance.edge_sigma)
    region = hu[w0:w1, v0:v1]
    coarse = ndimage.gaussian_filter(region, 2.0)
    texture = ndimage.gaussian_filter(rng.standard_normal(big.shape).astype(np.float32),
                                      appearance.texture_sigma)
    texture *= np.float32(appearance.texture_hu / max(float(texture.std()), 1e-6))
    target = np.float32(local_hu + appearance.contrast_hu) + texture
    if appearance.core_hu:
        depth = ndimage.distance_transform_edt(big > 0)
        if depth.max() > 0:
            target += np.float32(appearance.core_hu) * (depth / depth.max()).astype(np.float32)
    region += alpha * (target - coarse)


# -- a key slice and its neighbours ----------------------------------------------------------
@dataclass(frozen=True)
class PlacedLesion:
    """One lesion drawn on a key slice.

    Attributes
    ----------
    recist : Recist
        Measured on the lesion's own mask.
    area_px : int
    local_hu : float
        Density of the host tissue around it.
    appearance : LesionAppearance
    on_neighbours : tuple of bool
        Whether it shows on the previous and the next slice.
    """

    recist: Recist
    area_px: int
    local_hu: float
    appearance: LesionAppearance
    on_neighbours: tuple[bool, bool]


@dataclass(frozen=True)
class RenderedSlice:
    """A key slice with its lesions, its two neighbours and its true mask.

    Attributes
    ----------
    key : ndarray of float32
        The key slice in HU.
    neighbours : tuple
        Previous and next slice in HU, or None where no lesion shows on it (it is then the
        moved host alone, ``background_poses`` tells which).
    background_poses : tuple of HostPose
        Poses of the host on the previous and the next slice.
    mask : ndarray of bool
        Union of the lesions' true masks on the key slice.
    lesions : list of PlacedLesion
    """

    key: np.ndarray
    neighbours: tuple[np.ndarray | None, np.ndarray | None]
    background_poses: tuple[HostPose, HostPose]
    mask: np.ndarray
    lesions: list


def _local_hu(hu: np.ndarray, soft: np.ndarray, mask: np.ndarray, origin) -> float:
    """Median density of the soft tissue in a ring around the lesion."""
    r0, c0 = origin
    pad = 8
    rows, cols = hu.shape
    w0, w1 = max(0, r0 - pad), min(rows, r0 + mask.shape[0] + pad)
    v0, v1 = max(0, c0 - pad), min(cols, c0 + mask.shape[1] + pad)
    big = np.zeros((w1 - w0, v1 - v0), dtype=bool)
    big[r0 - w0:r0 - w0 + mask.shape[0], c0 - v0:c0 - v0 + mask.shape[1]] = mask
    ring = ndimage.binary_dilation(big, iterations=6) & ~ndimage.binary_dilation(big,
                                                                                 iterations=2)
    ring &= soft[w0:w1, v0:v1]
    values = hu[w0:w1, v0:v1][ring] if ring.any() else hu[w0:w1, v0:v1][big]
    return float(np.median(values))


def _fits(mask, origin, allowed: np.ndarray) -> bool:
    """Whether the lesion, grown by the margin, lies on allowed pixels only."""
    r0, c0 = origin
    if mask.size == 0:
        return False
    window = allowed[r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]]
    if window.shape != mask.shape:
        return False
    return bool(window[mask].all())


def render_key_slice(host_hu: np.ndarray, pose: HostPose, neighbour_poses, n_lesions: int,
                     long_px: list, slice_interval_mm: float, pixel_mm: float,
                     rng: np.random.Generator) -> RenderedSlice:
    """Place up to ``n_lesions`` lesions on a moved host and draw its neighbour slices.

    Parameters
    ----------
    host_hu : ndarray, shape (rows, cols)
        The host in HU.
    pose : HostPose
        How the key slice is moved from the host.
    neighbour_poses : tuple of HostPose
        How the previous and the next slice are moved (see ``HostPose.drifted``). A neighbour
        on which no lesion shows is exactly the host in its pose, so the same poses give
        identical files that can be stored once.
    n_lesions : int
        Lesions wanted; fewer are placed when the soft tissue has no room left.
    long_px : list of float
        Wanted long axis of each lesion in pixels (shrunk when it does not fit).
    slice_interval_mm, pixel_mm : float
        Slice spacing and pixel size: how far a lesion reaches onto the neighbours.
    rng : numpy.random.Generator

    Returns
    -------
    RenderedSlice
    """
    key = pose.apply(host_hu)
    shape = key.shape
    soft = soft_tissue_mask(key)
    # Lesions stay a margin away from anything that is not soft tissue; the erosion does it
    # once for all of them.
    allowed = ndimage.binary_erosion(soft, iterations=_MARGIN_PX, border_value=0)
    depth = ndimage.distance_transform_edt(allowed)
    poses = tuple(neighbour_poses)
    if len(poses) != 2:
        raise ValueError(f"neighbour_poses must be two poses, got {len(poses)}")
    backgrounds = [None, None]
    union = np.zeros(shape, dtype=bool)
    placed: list[tuple[LesionShape, tuple[float, float], np.ndarray, tuple[int, int]]] = []
    for i in range(int(n_lesions)):
        found = _place(rng, float(long_px[i]), allowed, depth, shape)
        if found is None:
            continue
        lesion_shape, centre, mask, origin = found
        placed.append(found)
        # Later lesions keep a margin from this one: they never touch.
        grown = ndimage.binary_dilation(np.pad(mask, _MARGIN_PX + 1),
                                        iterations=_MARGIN_PX + 1)
        _clear(allowed, grown, (origin[0] - _MARGIN_PX - 1, origin[1] - _MARGIN_PX - 1))
        # Depths are not recomputed (the costliest step): centres are only drawn from them,
        # and every outline is checked against ``allowed`` itself.
        _clear(depth, grown, (origin[0] - _MARGIN_PX - 1, origin[1] - _MARGIN_PX - 1))
        union[origin[0]:origin[0] + mask.shape[0], origin[1]:origin[1] + mask.shape[1]] |= mask
    lesions = []
    host_key = key.copy()
    neighbour_slices: list[list] = [[], []]
    for lesion_shape, centre, mask, origin in placed:
        local = _local_hu(host_key, soft, mask, origin)
        look = random_appearance(rng)
        paint_lesion(key, mask, origin, look, local, rng)
        recist = recist_from_mask(mask, spacing=(pixel_mm, pixel_mm)).translated(origin)
        # The lesion is roughly as deep as it is wide; its cross-section on a slice at
        # distance dz shrinks like a sphere's.
        depth_mm = float(rng.uniform(0.5, 1.1)) * recist.long_mm / 2
        shows = []
        for side in (0, 1):
            dz = slice_interval_mm
            factor = math.sqrt(max(0.0, 1 - (dz / depth_mm) ** 2)) if depth_mm > 0 else 0.0
            factor *= float(rng.uniform(0.9, 1.0))
            if factor * recist.long_length < 3:
                shows.append(False)
                continue
            moved = (centre[0] + float(rng.normal(0, 0.8)), centre[1] + float(rng.normal(0, 0.8)))
            neighbour_slices[side].append(
                (lesion_shape.scaled(factor).jittered(rng), moved, look, local))
            shows.append(True)
        lesions.append(PlacedLesion(recist, int(mask.sum()), local, look, tuple(shows)))
    for side in (0, 1):
        if not neighbour_slices[side]:
            continue
        image = poses[side].apply(host_hu)
        for lesion_shape, centre, look, local in neighbour_slices[side]:
            mask, origin = lesion_shape.rasterise(centre, shape)
            paint_lesion(image, mask, origin, look, local, rng)
        backgrounds[side] = image
    return RenderedSlice(key, tuple(backgrounds), poses, union, lesions)


def _clear(allowed: np.ndarray, grown: np.ndarray, origin) -> None:
    """Set ``allowed`` to 0 (False) under ``grown``, a window placed at ``origin``."""
    r0, c0 = origin
    rows, cols = allowed.shape
    a0, a1 = max(0, r0), min(rows, r0 + grown.shape[0])
    b0, b1 = max(0, c0), min(cols, c0 + grown.shape[1])
    if a0 < a1 and b0 < b1:
        window = allowed[a0:a1, b0:b1]
        window[grown[a0 - r0:a1 - r0, b0 - c0:b1 - c0]] = 0


def _place(rng, long_px, allowed, depth, shape):
    """A lesion outline and a place for it on allowed pixels, or None when there is none."""
    size = max(long_px, _MIN_LONG_PX)
    for _ in range(_SHRINKS + 1):
        lesion_shape = random_shape(rng, size)
        inner = min(lesion_shape.radii) * 0.6
        candidates = np.flatnonzero(depth.ravel() >= max(inner, 1.0))
        if candidates.size:
            for _ in range(_TRIES):
                flat = int(candidates[rng.integers(candidates.size)])
                centre = (float(flat // shape[1]) + float(rng.uniform(-0.5, 0.5)),
                          float(flat % shape[1]) + float(rng.uniform(-0.5, 0.5)))
                mask, origin = lesion_shape.rasterise(centre, shape)
                if mask.sum() >= 4 and _fits(mask, origin, allowed):
                    return lesion_shape, centre, mask, origin
        if size <= _MIN_LONG_PX:
            break
        size = max(_MIN_LONG_PX, size * 0.7)
    return None
