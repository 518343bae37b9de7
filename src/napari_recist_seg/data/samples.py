"""Generated sample images: CT-like phantoms and dermoscopy-like photographs with true masks.

Everything here is synthetic, deterministic for a given seed and quick to make, so it serves
tests, documentation and a demo without any download. The anatomy is schematic (an axial
abdominal slice: body wall, liver, spleen, kidneys, vessels, spine); intensities are plausible
Hounsfield units, not a model of any scanner.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import line_aa

from ..core.recist import recist_from_mask

__all__ = [
    "ct_phantom_slice",
    "ct_phantom_volume",
    "dermoscopy_dataset",
    "dermoscopy_image",
]

_CT_SHAPE = (256, 256)
_AIR_HU = -1000.0

# Organ labels of the phantom's anatomy map and their base densities (HU, portal venous phase).
_FAT, _MUSCLE, _CAVITY, _LIVER, _SPLEEN, _KIDNEY, _AORTA, _IVC, _BONE, _CANAL, _GAS = range(1, 12)
_ORGAN_HU = {
    _FAT: -100.0,
    _MUSCLE: 50.0,
    _CAVITY: 15.0,
    _LIVER: 60.0,
    _SPLEEN: 50.0,
    _KIDNEY: 140.0,
    _AORTA: 180.0,
    _IVC: 120.0,
    _BONE: 350.0,
    _CANAL: 20.0,
    _GAS: -900.0,
}


# -- shapes ---------------------------------------------------------------------------------
def _window(shape, centre, reach):
    """Index window of the pixels within ``reach`` of ``centre`` (clipped to the image)."""
    r0 = max(0, int(np.floor(centre[0] - reach)))
    r1 = min(shape[0], int(np.ceil(centre[0] + reach)) + 1)
    c0 = max(0, int(np.floor(centre[1] - reach)))
    c1 = min(shape[1], int(np.ceil(centre[1] + reach)) + 1)
    return r0, r1, c0, c1


def _local_frame(shape, centre, reach, theta, stretch=1.0):
    """Window plus rotated coordinates (u along ``theta``, divided by ``stretch``; v across)."""
    r0, r1, c0, c1 = _window(shape, centre, reach)
    dr = np.arange(r0, r1, dtype=np.float64)[:, None] - centre[0]
    dc = np.arange(c0, c1, dtype=np.float64)[None, :] - centre[1]
    cos, sin = np.cos(theta), np.sin(theta)
    u = (dc * cos + dr * sin) / stretch
    v = dr * cos - dc * sin
    return (r0, r1, c0, c1), u, v


def _ellipse(shape, centre, a, b, theta=0.0):
    """Pixels inside an ellipse: semi-axis ``a`` along angle ``theta`` (radians), ``b`` across."""
    out = np.zeros(shape, dtype=bool)
    (r0, r1, c0, c1), u, v = _local_frame(shape, centre, max(a, b) + 1, theta)
    if r0 < r1 and c0 < c1:
        out[r0:r1, c0:c1] = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return out


def _blob(shape, centre, radius, harmonics, stretch=1.0, theta=0.0):
    """A star-shaped lobulated region: radius ``radius * (1 + sum a_k cos(k phi + p_k))``.

    ``harmonics`` is a sequence of (k, amplitude, phase); the outline is then stretched by
    ``stretch`` along the angle ``theta``.
    """
    out = np.zeros(shape, dtype=bool)
    reach = radius * (1 + sum(abs(h[1]) for h in harmonics)) * max(stretch, 1.0) + 1
    (r0, r1, c0, c1), u, v = _local_frame(shape, centre, reach, theta, stretch)
    if r0 < r1 and c0 < c1:
        out[r0:r1, c0:c1] = np.hypot(u, v) <= radius * _lobes(np.arctan2(v, u), harmonics)
    return out


def _lobes(phi, harmonics):
    edge = np.ones_like(phi)
    for k, amp, phase in harmonics:
        edge += amp * np.cos(k * phi + phase)
    return edge


def _smooth_basis(n, cells):
    """(n, cells) Gaussian interpolation weights: smooth fields from a coarse grid."""
    x = (np.arange(n) + 0.5) / n * cells - 0.5
    w = np.exp(-0.5 * ((x[:, None] - np.arange(cells)[None, :]) / 0.8) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def _smooth_noise(rng, shape, cells):
    """Zero-mean, unit-std noise varying over about ``cells`` blobs per side."""
    coarse = rng.standard_normal((cells, cells))
    field = _smooth_basis(shape[0], cells) @ coarse @ _smooth_basis(shape[1], cells).T
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


# -- CT phantom -----------------------------------------------------------------------------
def _anatomy_params(rng):
    """Per-phantom jitter of the anatomy, so that seeds give different bodies."""
    return {
        "body": (
            128 + rng.uniform(-4, 4),
            128 + rng.uniform(-4, 4),
            rng.uniform(94, 102),
            rng.uniform(112, 120),
        ),
        "fat": rng.uniform(7, 12),
        "muscle": rng.uniform(5, 8),
        "liver": (rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(0.95, 1.08)),
        "spleen": (rng.uniform(-5, 5), rng.uniform(-5, 5)),
        "kidneys": (rng.uniform(-4, 4), rng.uniform(-4, 4)),
        "gas": (rng.uniform(95, 120), rng.uniform(130, 150), rng.uniform(4, 7)),
    }


def _anatomy(shape, z, p):
    """Organ label map of one axial slice at craniocaudal position ``z`` in [0, 1]."""
    labels = np.zeros(shape, dtype=np.int8)
    br, bc, ba, bb = p["body"]
    body = _ellipse(shape, (br, bc), bb, ba)
    labels[body] = _FAT
    t_fat, t_mus = p["fat"], p["muscle"]
    labels[_ellipse(shape, (br, bc), bb - t_fat, ba - t_fat)] = _MUSCLE
    cavity = _ellipse(shape, (br + 2, bc), bb - t_fat - t_mus, ba - t_fat - t_mus)
    labels[cavity] = _CAVITY
    # Paraspinal muscles and the spine sit at the back (bottom of the image).
    spine_r = br + 0.55 * ba
    for side in (-1, 1):
        labels[_ellipse(shape, (spine_r + 22, bc + side * 24), 17, 13)] = _MUSCLE
    lr, lc, ls = p["liver"]
    if z < 0.9:
        s = ls * (1.0 - 0.55 * z)
        liver = _ellipse(shape, (br - 22 + lr, bc - 48 + lc), 52 * s, 60 * s, np.radians(-20))
        liver |= _ellipse(shape, (br - 38 + lr, bc - 18 + lc), 38 * s, 22 * s, np.radians(10))
        labels[liver & cavity] = _LIVER
    sr, sc = p["spleen"]
    if z < 0.62:
        s = np.sqrt(max(0.0, 1.0 - (z / 0.62) ** 2))
        centre = (br - 12 + sr, bc + 66 + sc)
        spleen = _ellipse(shape, centre, 38 * s + 1, 24 * s + 1, np.radians(60))
        labels[spleen & cavity] = _SPLEEN
    kr, kc = p["kidneys"]
    if 0.28 < z < 1.0:
        s = np.sin(np.pi * (z - 0.28) / 0.72)
        for side in (-1, 1):
            centre = (spine_r - 6 + kr, bc + side * (50 + kc))
            kidney = _ellipse(shape, centre, 25 * s + 1, 14 * s + 1, np.radians(90 + side * 20))
            labels[kidney & cavity] = _KIDNEY
    labels[_ellipse(shape, (spine_r - 26, bc + 12), 10, 10)] = _AORTA
    labels[_ellipse(shape, (spine_r - 24, bc - 16), 9, 8)] = _IVC
    labels[_ellipse(shape, (spine_r, bc), 17, 15)] = _BONE
    labels[_ellipse(shape, (spine_r + 24, bc), 7, 7)] = _CANAL
    labels[_ellipse(shape, (spine_r + 38, bc), 4, 9, np.pi / 2)] = _BONE
    gr, gc, gs = p["gas"]
    gas = _ellipse(shape, (br - gr + 128 - 40, bc + gc - 128 + 20), gs * 1.4, gs)
    labels[gas & (labels == _CAVITY)] = _GAS
    return labels


_HU_LUT = np.full(max(_ORGAN_HU) + 1, _AIR_HU)
for _lab, _value in _ORGAN_HU.items():
    _HU_LUT[_lab] = _value


def _render_ct(labels, lesions, texture, rng):
    """HU image of a label map with lesions painted in, partial-volume blur and noise.

    ``lesions`` is a list of (mask, base HU, texture amplitude); ``texture`` a smooth
    unit-std field giving soft tissue and lesions their mottled look.
    """
    hu = _HU_LUT[labels]
    bone = labels == _BONE
    # Cortical shell: denser than the marrow inside.
    cortex = bone & ~ndimage.binary_erosion(bone, iterations=2)
    hu[cortex] = 800.0
    soft = (labels >= _MUSCLE) & (labels <= _SPLEEN)
    hu[soft] += 5.0 * texture[soft]
    for mask, value, amplitude in lesions:
        # The lesion's texture is the organ's, flipped, so it does not continue across the edge.
        hu[mask] = value - amplitude * texture[mask]
    hu = ndimage.gaussian_filter(hu, 0.7)
    hu += rng.normal(0.0, 12.0, size=hu.shape)
    return hu.astype(np.float32)


# Lesion recipes: (organ, shape, density change in HU, semi-axis range in pixels).
_LESION_RECIPES = [
    (_LIVER, "ellipse", -35.0, (9.0, 16.0)),
    (_LIVER, "blob", 65.0, (6.0, 11.0)),
    (_KIDNEY, "ellipse", -125.0, (4.0, 7.0)),
    (_SPLEEN, "blob", -40.0, (4.0, 8.0)),
    (_LIVER, "blob", -40.0, (3.0, 6.0)),
]


def _lesion_shape(shape, kind, centre, a, b, theta, harmonics):
    if kind == "ellipse":
        return _ellipse(shape, centre, a, b, theta)
    return _blob(shape, centre, b, harmonics, stretch=a / b, theta=theta)


class _OrganMasks:
    """Eroded organ masks per slice, computed on first use."""

    def __init__(self, organ_maps):
        self.maps = organ_maps
        self._cache = {}

    def get(self, z, organ, erosion):
        key = (z, organ, erosion)
        if key not in self._cache:
            self._cache[key] = ndimage.binary_erosion(self.maps[z] == organ, iterations=erosion)
        return self._cache[key]


def _place_lesions(rng, organ_maps, key_range, slice_mm, pixel_mm, n_lesions):
    """Draw lesions that lie wholly inside their organ on every slice they cross.

    Returns a list of dicts with the lesion's key slice, its per-slice masks and its HU.
    """
    n_slices = len(organ_maps)
    shape = organ_maps[0].shape
    organs = _OrganMasks(organ_maps)
    occupied = [np.zeros(shape, dtype=bool) for _ in range(n_slices)]
    lesions = []
    for organ, kind, delta, (a_lo, a_hi) in _LESION_RECIPES[:n_lesions]:
        a = rng.uniform(a_lo, a_hi)
        placed = None
        for attempt in range(60):
            if attempt and attempt % 15 == 0:
                a *= 0.8  # the organ is too crowded for this size: try smaller
            b = a * rng.uniform(0.55, 0.9)
            theta = rng.uniform(0, np.pi)
            harmonics = [
                (k, rng.uniform(0.04, 0.16) / np.sqrt(k - 1), rng.uniform(0, 2 * np.pi))
                for k in (2, 3, 4, 5)
            ]
            key = int(rng.integers(key_range[0], key_range[1] + 1))
            candidates = np.argwhere(organs.get(key, organ, 4) & ~occupied[key])
            if len(candidates) == 0:
                continue
            centre = candidates[int(rng.integers(len(candidates)))].astype(float)
            centre += rng.uniform(-0.5, 0.5, size=2)
            # A roughly spherical lesion: its extent along z follows its in-plane size.
            half_depth = (a + b) / 2 * pixel_mm / slice_mm
            masks = {}
            ok = True
            for z in sorted(range(n_slices), key=lambda zz: abs(zz - key)):
                dz = abs(z - key)
                if dz > 0 and dz >= half_depth:
                    continue
                shrink = np.sqrt(max(0.0, 1.0 - (dz / half_depth) ** 2)) if dz else 1.0
                if b * shrink < 1.5:
                    continue
                m = _lesion_shape(shape, kind, centre, a * shrink, b * shrink, theta, harmonics)
                allowed = organs.get(z, organ, 3)
                if not m.any() or (m & ~allowed).any() or (m & occupied[z]).any():
                    ok = False
                    break
                masks[z] = m
            if ok and key in masks and masks[key].sum() >= 12:
                placed = (key, masks)
                break
        if placed is None:
            continue
        key, masks = placed
        for z, m in masks.items():
            occupied[z] |= ndimage.binary_dilation(m, iterations=4)
        lesions.append(
            {
                "key": key,
                "masks": masks,
                "hu": _ORGAN_HU[organ] + delta,
                "texture": rng.uniform(3.0, 6.0),
            }
        )
    return lesions


def _ct_phantom(seed, n_slices, z_range, key_range, slice_mm, pixel_mm):
    rng = np.random.default_rng(seed)
    params = _anatomy_params(rng)
    zs = np.linspace(z_range[0], z_range[1], n_slices) if n_slices > 1 else [z_range[0]]
    organ_maps = [_anatomy(_CT_SHAPE, float(z), params) for z in zs]
    n_lesions = int(rng.integers(4, len(_LESION_RECIPES) + 1))
    lesions = _place_lesions(rng, organ_maps, key_range, slice_mm, pixel_mm, n_lesions)
    image = np.empty((n_slices,) + _CT_SHAPE, dtype=np.float32)
    labels = np.zeros((n_slices,) + _CT_SHAPE, dtype=np.int32)
    # Tissue texture drifts slowly from slice to slice (a rotation between two independent
    # fields keeps its variance), so it looks continuous along z.
    fields = _smooth_noise(rng, _CT_SHAPE, 16), _smooth_noise(rng, _CT_SHAPE, 16)
    for z in range(n_slices):
        texture = np.cos(0.3 * z) * fields[0] + np.sin(0.3 * z) * fields[1]
        painted = []
        for i, lesion in enumerate(lesions, start=1):
            m = lesion["masks"].get(z)
            if m is not None:
                labels[z][m] = i
                painted.append((m, lesion["hu"], lesion["texture"]))
        image[z] = _render_ct(organ_maps[z], painted, texture, rng)
    spacing = (pixel_mm, pixel_mm)
    recists = [
        recist_from_mask(labels[lesion["key"]] == i, spacing=spacing)
        for i, lesion in enumerate(lesions, start=1)
    ]
    slices = [int(lesion["key"]) for lesion in lesions]
    return image, labels, recists, slices


def ct_phantom_slice(seed: int = 0) -> dict:
    """A synthetic axial abdominal CT slice with lesions and their true masks.

    Parameters
    ----------
    seed : int
        The same seed gives the same phantom.

    Returns
    -------
    dict
        ``image``: float32 (256, 256) in HU (air -1000, fat about -100, soft tissue 15-60,
        enhanced kidney 140, bone 350-800, Gaussian noise of 12 HU); ``masks``: int32 label
        image, lesion ``i`` labelled ``i + 1``; ``recists``: list of ``Recist``, one per lesion,
        simulated from its mask (``recist_from_mask``); ``spacing``: (0.8, 0.8) mm.
        The lesions (four or five) differ in size and shape (ellipses, lobulated blobs) and sit
        in the liver, kidney and spleen, hypo- or hyperdense to their organ.
    """
    image, labels, recists, _ = _ct_phantom(seed, 1, (0.45, 0.45), (0, 0), 2.5, 0.8)
    return {"image": image[0], "masks": labels[0], "recists": recists, "spacing": (0.8, 0.8)}


def ct_phantom_volume(seed: int = 0, n_slices: int = 16) -> dict:
    """A synthetic abdominal CT volume with lesions spanning several slices.

    Parameters
    ----------
    seed : int
        The same seed gives the same phantom.
    n_slices : int
        Number of axial slices (at least 4), 2.5 mm apart.

    Returns
    -------
    dict
        ``image``: float32 (Z, 256, 256) in HU; ``masks``: int32 (Z, 256, 256) labels, lesion
        ``i`` labelled ``i + 1`` on every slice it crosses; ``recists``: one ``Recist`` per
        lesion measured on its key slice (largest cross-section, as DeepLesion's marks are);
        ``slices``: the key slice index of each lesion; ``spacing``: (2.5, 0.8, 0.8) mm as
        (z, row, col).
    """
    n_slices = int(n_slices)
    if n_slices < 4:
        raise ValueError(f"n_slices must be at least 4, got {n_slices}")
    # Keep key slices away from the ends so each lesion has room above and below.
    key_range = (max(1, n_slices // 5), min(n_slices - 2, n_slices - 1 - n_slices // 5))
    image, labels, recists, slices = _ct_phantom(seed, n_slices, (0.2, 0.8), key_range, 2.5, 0.8)
    return {
        "image": image,
        "masks": labels,
        "recists": recists,
        "slices": slices,
        "spacing": (2.5, 0.8, 0.8),
    }


# -- dermoscopy -----------------------------------------------------------------------------
def _dermoscopy(rng, size: int, hairs: bool):
    """One dermoscopy-like RGB image and its lesion mask, drawn at ``size x size``."""
    shape = (size, size)
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64)
    px = size / 128.0  # sizes below are given for a 128-pixel image
    skin = np.array([rng.uniform(200, 240), rng.uniform(145, 190), rng.uniform(120, 165)])
    radial = np.hypot(rr - size / 2, cc - size / 2) / (size / 2)
    light = 1.0 - rng.uniform(0.0, 0.25) * radial**2 + 0.05 * _smooth_noise(rng, shape, 5)
    img = skin[None, None, :] * light[..., None]
    img *= 1.0 + 0.03 * _smooth_noise(rng, shape, 24)[..., None]

    centre = size / 2 + rng.uniform(-0.15, 0.15, size=2) * size
    radius = rng.uniform(0.12, 0.3) * size
    stretch = rng.uniform(1.0, 1.5)
    theta = rng.uniform(0, np.pi)
    harmonics = [
        (k, rng.uniform(0.0, 0.14) / np.sqrt(k - 1), rng.uniform(0, 2 * np.pi))
        for k in (2, 3, 4, 5, 7)
    ]
    # Signed distance (approximately, in pixels) to the outline gives a soft, anti-aliased edge.
    u = ((cc - centre[1]) * np.cos(theta) + (rr - centre[0]) * np.sin(theta)) / stretch
    v = -(cc - centre[1]) * np.sin(theta) + (rr - centre[0]) * np.cos(theta)
    phi = np.arctan2(v, u)
    rho = np.hypot(u, v)
    edge = np.ones_like(phi)
    for k, amp, phase in harmonics:
        edge += amp * np.cos(k * phi + phase)
    outline = radius * edge
    mask = rho <= outline
    softness = rng.uniform(0.8, 2.5) * px
    alpha = np.clip((outline - rho) / softness + 0.5, 0.0, 1.0)

    darkness = rng.uniform(0.35, 0.65)
    brown = np.array([1.0, rng.uniform(0.6, 0.75), rng.uniform(0.45, 0.65)])
    lesion_rgb = skin * darkness * brown / brown.max()
    depth = np.clip(1.0 - rho / np.maximum(outline, 1e-6), 0.0, 1.0)
    shade = 1.0 - rng.uniform(0.1, 0.35) * depth + 0.1 * _smooth_noise(rng, shape, 10)
    lesion = lesion_rgb[None, None, :] * shade[..., None]
    img = img * (1.0 - alpha[..., None]) + lesion * alpha[..., None]
    img += rng.normal(0.0, 3.0, size=img.shape)

    if hairs:
        hair_rgb = np.array([45.0, 32.0, 25.0])
        for _ in range(int(rng.integers(0, 4))):
            p0, p1, p2 = rng.uniform(-0.1, 1.1, size=(3, 2)) * size
            t = np.linspace(0.0, 1.0, 24)[:, None]
            pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
            pts = np.clip(np.rint(pts).astype(int), 0, size - 1)
            for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
                lr, lc, val = line_aa(r0, c0, r1, c1)
                val = val[:, None] * 0.85
                img[lr, lc] = img[lr, lc] * (1 - val) + hair_rgb * val
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, mask


def dermoscopy_image(seed: int = 0, hairs: bool = True) -> dict:
    """A dermoscopy-like photograph of one pigmented lesion.

    Parameters
    ----------
    seed : int
        The same seed gives the same image.
    hairs : bool
        Draw up to three dark hair-like curves across the image.

    Returns
    -------
    dict
        ``image``: uint8 (256, 256, 3) RGB, skin-toned background with uneven lighting and a
        darker, irregular lesion; ``mask``: bool (256, 256) true lesion; ``recists``: a list
        holding the lesion's ``Recist`` (from its mask).
    """
    image, mask = _dermoscopy(np.random.default_rng(seed), 256, hairs)
    return {"image": image, "mask": mask, "recists": [recist_from_mask(mask)]}


def dermoscopy_dataset(n: int, seed: int = 0, size: int = 128, hairs: bool = True):
    """Many varied dermoscopy-like images with their masks, for training and demos.

    Lesions vary in size (about a quarter to over half the image), outline, elongation,
    colour, darkness, position and edge sharpness; backgrounds in skin tone and lighting.
    Image ``i`` depends only on ``seed`` and ``i``, so a longer set extends a shorter one.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Base seed.
    size : int
        Image side in pixels.
    hairs : bool
        Draw up to three hair-like curves on some images.

    Returns
    -------
    images : list of uint8 (size, size, 3) arrays
    masks : list of bool (size, size) arrays
    """
    n = int(n)
    size = int(size)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    images, masks = [], []
    for i in range(n):
        image, mask = _dermoscopy(np.random.default_rng([int(seed), i]), size, hairs)
        images.append(image)
        masks.append(mask)
    return images, masks
