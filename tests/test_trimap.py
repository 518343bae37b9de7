"""Trimaps from a RECIST, and filling their unknown band from the image."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import ellipse

from napari_recist_seg.core.metrics import segmentation_metrics
from napari_recist_seg.core.pseudo_masks import pseudo_mask
from napari_recist_seg.core.recist import Recist
from napari_recist_seg.core.trimap import (
    BACKGROUND,
    LESION,
    TRIMAP_REFINEMENTS,
    UNKNOWN,
    recist_trimap,
    refine_trimap,
)


# -- shapes and their RECIST -------------------------------------------------------------------
def _blob(shape, parts):
    """Union of ellipses, each (row, col, row_radius, col_radius, rotation_deg)."""
    m = np.zeros(shape, dtype=bool)
    for r, c, a, b, deg in parts:
        rr, cc = ellipse(r, c, a, b, shape=shape, rotation=np.radians(deg))
        m[rr, cc] = True
    return m


def _rotated(parts, centre, deg):
    """The same union of ellipses turned by ``deg`` about ``centre``."""
    t = np.radians(deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    out = []
    for r, c, a, b, d in parts:
        p = rot @ (np.array([r, c], dtype=float) - centre) + centre
        out.append((p[0], p[1], a, b, d - deg))
    return out


def _measure(mask, max_angle_deg=3.0):
    """RECIST by brute force on the mask's edge pixel centres.

    Long axis: the farthest pair of edge pixels. Short axis: the longest pair of edge pixels
    within ``max_angle_deg`` of perpendicular to it whose segment crosses the long axis.
    """
    edge = mask & ~ndimage.binary_erosion(mask)
    pts = np.argwhere(edge).astype(float)
    diff = pts[:, None, :] - pts[None, :, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    a, b = pts[i], pts[j]
    d = (b - a) / np.linalg.norm(b - a)
    n = np.array([-d[1], d[0]])
    u = (pts - a) @ d
    v = (pts - a) @ n
    du = u[:, None] - u[None, :]
    dv = v[:, None] - v[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        perpendicular = np.abs(du) <= np.tan(np.radians(max_angle_deg)) * np.abs(dv)
    # The pair's segment crosses the long axis: its ends are on either side (v changes sign)
    # and where it meets the axis lies between the long axis' ends.
    crosses = v[:, None] * v[None, :] <= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        s = v[:, None] / (v[:, None] - v[None, :])
        at = u[:, None] + s * (u[None, :] - u[:, None])
    ok = perpendicular & crosses & (at >= 0) & (at <= np.linalg.norm(b - a)) & (dist > 0)
    k, m = np.unravel_index(np.argmax(np.where(ok, dist, -1.0)), dist.shape)
    assert ok[k, m], "no perpendicular chord found"
    return Recist([a, b], [pts[k], pts[m]])


_CENTRE = np.array([80.0, 80.0])
# Convex or nearly so, with the short axis crossing off the long axis' middle.
_EGG = [(80, 80, 16, 34, 0), (80, 66, 22, 20, 0)]
_TILTED_EGG = [(80, 84, 14, 30, 0), (76, 70, 20, 18, 0)]
_ELLIPSE = [(80, 80, 18, 36, 0)]
# Not convex: a round body with lobes of different sizes.
_LOBED = [(80, 80, 22, 22, 0), (80, 108, 13, 13, 0), (56, 84, 12, 12, 0), (100, 62, 11, 15, 20)]


def _lobed_random(rng, shape=(160, 160)):
    m = np.zeros(shape, dtype=bool)
    for k in range(int(rng.integers(2, 6))):
        off = rng.normal(0, 12, 2) if k else np.zeros(2)
        rr, cc = ellipse(80 + off[0], 80 + off[1], rng.uniform(6, 25), rng.uniform(6, 25),
                         shape=shape, rotation=rng.uniform(0, np.pi))
        m[rr, cc] = True
    lab, n = ndimage.label(m)
    return lab == 1 + int(np.argmax(ndimage.sum(m, lab, range(1, n + 1))))


# -- recist_trimap -----------------------------------------------------------------------------
def test_labels_dtype_and_band():
    mask = _blob((160, 160), _EGG)
    t = recist_trimap(_measure(mask), mask.shape)
    assert t.dtype == np.uint8 and t.shape == mask.shape
    assert set(np.unique(t).tolist()) == {BACKGROUND, LESION, UNKNOWN}
    assert (t == UNKNOWN).sum() > 0.2 * mask.sum()
    # Lesion and background never touch: the band lies between them.
    assert not (ndimage.binary_dilation(t == LESION) & (t == BACKGROUND)).any()


@pytest.mark.parametrize("parts", [_ELLIPSE, _EGG, _TILTED_EGG], ids=["ellipse", "egg", "tilted"])
@pytest.mark.parametrize("deg", [0, 23, 45, 90, 137])
def test_no_lesion_pixel_is_background_for_rounded_shapes(parts, deg):
    mask = _blob((160, 160), _rotated(parts, _CENTRE, deg))
    r = _measure(mask)
    t = recist_trimap(r, mask.shape)
    assert not (mask & (t == BACKGROUND)).any()


@pytest.mark.parametrize("deg", [0, 30, 75, 120])
def test_no_lesion_pixel_is_background_for_a_lobed_shape(deg):
    mask = _blob((160, 160), _rotated(_LOBED, _CENTRE, deg))
    r = _measure(mask)
    assert abs(r.centre - (r.long_axis[0] + r.long_axis[1]) / 2).max() > 1  # off-centre
    t = recist_trimap(r, mask.shape, outer=2.0)
    assert not (mask & (t == BACKGROUND)).any()


def test_diameter_rule_alone_is_a_guarantee_for_any_shape():
    rng = np.random.default_rng(7)
    for _ in range(25):
        mask = _lobed_random(rng)
        r = _measure(mask)
        t = recist_trimap(r, mask.shape, outer=np.inf)
        assert not (mask & (t == BACKGROUND)).any()
        # ... and it still rules out most of the image.
        assert (t == BACKGROUND).mean() > 0.5


@pytest.mark.parametrize("parts", [_ELLIPSE, _EGG, _TILTED_EGG], ids=["ellipse", "egg", "tilted"])
@pytest.mark.parametrize("deg", [0, 35, 90, 160])
def test_certain_lesion_is_inside_convex_lesions(parts, deg):
    mask = _blob((160, 160), _rotated(parts, _CENTRE, deg))
    t = recist_trimap(_measure(mask), mask.shape)
    certain = t == LESION
    assert certain.sum() > 0.15 * mask.sum()
    assert mask[certain].mean() >= 0.98


def test_rules_match_scaled_quarter_ellipses_and_axes():
    r = Recist([[40, 20], [52, 90]], [[28, 38], [60, 32]])
    shape = (100, 120)
    t = recist_trimap(r, shape, inner=0.4, outer=1.7)
    c = r.centre

    def scaled(f):
        return pseudo_mask(Recist(c + f * (r.long_axis - c), c + f * (r.short_axis - c)),
                           shape, "quarter_ellipse")

    assert (t[scaled(0.4)] == LESION).all()
    assert ((t != BACKGROUND) <= scaled(1.7)).all()
    # Every pixel the axes pass through is certain lesion.
    for axis in (r.long_axis, r.short_axis):
        pts = np.rint(axis[0] + np.linspace(0, 1, 200)[:, None] * (axis[1] - axis[0]))
        assert (t[pts[:, 0].astype(int), pts[:, 1].astype(int)] == LESION).all()
    # The band reaches out as far as the grown ellipse where the diameter rule allows.
    assert (t == UNKNOWN).sum() > (scaled(1.0) & ~scaled(0.4)).sum()


def test_diameter_rule_is_in_millimetres():
    # Pixels twice as tall as wide: 40 px along the columns is 40 mm, 20 rows are 40 mm.
    r = Recist([[30, 20], [30, 60]], [[25, 40], [35, 40]], spacing=(2.0, 1.0))
    shape = (60, 80)
    t = recist_trimap(r, shape, outer=np.inf)
    rr, cc = np.mgrid[:60, :80].astype(float)
    limit = r.long_mm + 2.0  # one pixel of slack, the larger pixel side
    in_mm = np.ones(shape, dtype=bool)
    in_px = np.ones(shape, dtype=bool)
    for e in r.endpoints:
        in_mm &= np.hypot((rr - e[0]) * 2.0, cc - e[1]) <= limit
        in_px &= np.hypot(rr - e[0], cc - e[1]) <= r.long_length + 1.0
    np.testing.assert_array_equal(t != BACKGROUND, in_mm | (t == LESION))
    assert (in_px & ~in_mm).sum() > 100  # the check above tells the two apart


def test_endpoints_beyond_the_image():
    r = Recist([[-30, 10], [40, 70]], [[-10, 50], [20, 15]])
    t = recist_trimap(r, (50, 60))
    assert t.shape == (50, 60)
    assert (t == LESION).any() and (t == UNKNOWN).any()
    far = Recist([[5e5, 5e5], [5e5 + 40, 5e5]], [[5e5 + 20, 5e5 - 8], [5e5 + 20, 5e5 + 8]])
    assert (recist_trimap(far, (50, 60)) == BACKGROUND).all()


def test_argument_errors():
    r = Recist([[20, 10], [20, 50]], [[14, 30], [26, 30]])
    for inner in (0, 1, 1.2, -0.5, float("nan"), "a"):
        with pytest.raises(ValueError, match="inner"):
            recist_trimap(r, (40, 60), inner=inner)
    for outer in (1, 0.8, float("nan"), None):
        with pytest.raises(ValueError, match="outer"):
            recist_trimap(r, (40, 60), outer=outer)
    for shape in ((0, 5), (5,), (2.5, 3), "ab", (40, 60, 3), None):
        with pytest.raises(ValueError, match="shape"):
            recist_trimap(r, shape)
    with pytest.raises(ValueError, match="Recist"):
        recist_trimap([[20, 10], [20, 50]], (40, 60))


# -- refine_trimap -----------------------------------------------------------------------------
def _scene(parts, shape=(160, 160), noise=0.12, seed=0):
    mask = _blob(shape, parts)
    rng = np.random.default_rng(seed)
    image = np.where(mask, 0.75, 0.25) + rng.normal(0, noise, shape)
    return mask, image


def test_random_walker_beats_the_quarter_ellipse_on_a_lobed_lesion():
    mask, image = _scene(_rotated(_LOBED, _CENTRE, 30))
    r = _measure(mask)
    t = recist_trimap(r, mask.shape)
    out = refine_trimap(image, t, "random_walker")
    dice = segmentation_metrics(out, mask)["dice"]
    quarter = segmentation_metrics(pseudo_mask(r, mask.shape, "quarter_ellipse"), mask)["dice"]
    assert dice > 0.9
    assert dice > quarter + 0.05


@pytest.mark.parametrize("method", [*TRIMAP_REFINEMENTS, "chan_vese"])
def test_every_method_keeps_the_certain_regions(method):
    mask, image = _scene(_EGG, seed=3)
    t = recist_trimap(_measure(mask), mask.shape)
    # Make the image disagree with the trimap: a bright strip from the lesion out into
    # certain background, and a dark cut into certain lesion from the edge.
    image[76:85, 80:] = 0.75
    image[:80, 64:70] = 0.25
    assert (t[76:85, 80:] == BACKGROUND).sum() > 200
    assert (t[:80, 64:70] == LESION).sum() > 20
    out = refine_trimap(image, t, method)
    assert out.dtype == bool and out.shape == t.shape
    assert out[t == LESION].all()
    assert not out[t == BACKGROUND].any()
    if method != "none":
        assert segmentation_metrics(out, mask)["dice"] > 0.9


def test_chan_vese_and_colour_images():
    mask, grey = _scene(_rotated(_LOBED, _CENTRE, 75), seed=1)
    t = recist_trimap(_measure(mask), mask.shape)
    assert segmentation_metrics(refine_trimap(grey, t, "morph_chan_vese"), mask)["dice"] > 0.9
    # Colour: the lesion differs from the skin in hue, not in brightness.
    rgb = np.zeros(mask.shape + (3,))
    rgb[..., 0] = np.where(mask, 0.7, 0.3)
    rgb[..., 2] = np.where(mask, 0.3, 0.7)
    rgb += np.random.default_rng(2).normal(0, 0.08, rgb.shape)
    rgb8 = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    assert segmentation_metrics(refine_trimap(rgb8, t, "random_walker"), mask)["dice"] > 0.9


def test_small_lesion_on_a_large_image_and_a_resampled_walk():
    parts = [(300 + p[0], 200 + p[1], *p[2:]) for p in _rotated(_LOBED, _CENTRE, 10)]
    mask, image = _scene(parts, shape=(512, 512), seed=4)
    image = (image * 1000 - 1000).astype(np.int16)  # CT-like values and dtype
    t = recist_trimap(_measure(mask), mask.shape)
    full = refine_trimap(image, t)
    coarse = refine_trimap(image, t, max_side=48)
    for out in (full, coarse):
        assert segmentation_metrics(out, mask)["dice"] > 0.9
        assert not out[t == BACKGROUND].any() and out[t == LESION].all()
    assert not np.array_equal(full, coarse)  # the second really was resampled


def test_none_splits_the_band_by_the_prior_or_halfway():
    mask = _blob((160, 160), _EGG)
    r = _measure(mask)
    t = recist_trimap(r, mask.shape)
    quarter = pseudo_mask(r, mask.shape, "quarter_ellipse")
    out = refine_trimap(np.zeros(mask.shape), t, "none", prior=quarter)
    np.testing.assert_array_equal(out, (quarter & (t != BACKGROUND)) | (t == LESION))
    half = refine_trimap(np.zeros(mask.shape), t, "none")
    assert ((t == LESION) <= half).all() and (half <= (t != BACKGROUND)).all()
    assert segmentation_metrics(half, quarter)["dice"] > 0.85
    # A flat image leaves nothing for the image methods: they fall back to the same split.
    np.testing.assert_array_equal(refine_trimap(np.ones(mask.shape), t, "random_walker"), half)


def test_refine_errors():
    mask, image = _scene(_EGG)
    t = recist_trimap(_measure(mask), mask.shape)
    with pytest.raises(ValueError, match="trimap is 160 x 160"):
        refine_trimap(image[:, :150], t)
    with pytest.raises(ValueError, match="no LESION"):
        refine_trimap(image, np.where(t == LESION, UNKNOWN, t))
    with pytest.raises(ValueError, match="unknown refinement method 'grabcut'"):
        refine_trimap(image, t, "grabcut")
    with pytest.raises(ValueError, match="may only hold"):
        refine_trimap(image, np.where(t == UNKNOWN, 3, t))
    with pytest.raises(ValueError, match="2D grey"):
        refine_trimap(np.stack([image] * 4, axis=-1), t)
    with pytest.raises(ValueError, match="non-finite"):
        refine_trimap(np.where(mask, np.nan, image), t)
    with pytest.raises(ValueError, match="prior"):
        refine_trimap(image, t, "none", prior=mask[:10])
