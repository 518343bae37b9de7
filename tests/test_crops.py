import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import ellipse

from napari_recist_seg.core.recist import Recist, recist_from_mask
from napari_recist_seg.data.crops import (
    WINDOW_PRESETS,
    CropTransform,
    lesion_crop,
    normalise_rgb,
    window_ct,
)


def blob(shape=(200, 220), centre=(80, 95), radii=(20, 34), rotation=0.4):
    mask = np.zeros(shape, dtype=bool)
    rr, cc = ellipse(*centre, *radii, shape=shape, rotation=rotation)
    mask[rr, cc] = True
    # A notch makes the shape asymmetric, so that flips and offsets would show.
    mask[centre[0] - 4 : centre[0] + 4, centre[1] + 10 : centre[1] + 40] = False
    return mask


def aligned(edge_row, edge_col, side, size):
    """A transform whose outer edge lies on source pixel boundaries."""
    return CropTransform((edge_row - 0.5 + side / 2, edge_col - 0.5 + side / 2), side, size)


# -- CropTransform --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"centre": (1.0, 2.0), "side": 0.0, "size": 64},
        {"centre": (1.0, 2.0), "side": -3.0, "size": 64},
        {"centre": (1.0, 2.0), "side": 10.0, "size": 0},
        {"centre": (1.0, np.nan), "side": 10.0, "size": 64},
        {"centre": (1.0, 2.0, 3.0), "side": 10.0, "size": 64},
    ],
)
def test_transform_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        CropTransform(**kwargs)


def test_transform_is_frozen_and_round_trips_to_dict():
    t = CropTransform((10, 20), 33, 64)
    with pytest.raises(AttributeError):
        t.side = 5
    assert CropTransform(**t.to_dict()) == t
    assert t.centre == (10.0, 20.0) and isinstance(t.side, float)


def test_point_mapping_round_trips_and_centres():
    t = CropTransform((50.3, 71.9), 40.0, 128)
    pts = np.array([[0.0, 0.0], [50.3, 71.9], [12.5, 99.0]])
    np.testing.assert_allclose(t.to_source(t.to_crop(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(t.to_crop((50.3, 71.9)), [63.5, 63.5])
    # The outer edge of the patch maps to the outer edge of the output grid.
    np.testing.assert_allclose(t.to_crop(t.edge), [-0.5, -0.5])
    assert t.scale == pytest.approx(40 / 128)


# Nearest-neighbour crops are exact for any integer zoom; bilinear ones (thresholded at 0.5)
# up to a zoom of 2, beyond which a lone corner pixel can fall below the threshold.
@pytest.mark.parametrize(("zoom", "order"), [(1, 0), (2, 0), (4, 0), (1, 1), (2, 1)])
def test_crop_then_paste_is_identity_for_integer_zoom(zoom, order):
    mask = blob()
    size = 128
    t = aligned(50, 60, size // zoom, size)
    crop = t.crop_image(mask, order=order)
    assert crop.dtype == bool and crop.shape == (size, size)
    back = t.paste_mask(crop, mask.shape)
    inside = t.paste_mask(np.ones((size, size), bool), mask.shape)
    assert inside.sum() == (size // zoom) ** 2
    np.testing.assert_array_equal(back[inside], mask[inside])
    assert not back[~inside].any()


@pytest.mark.parametrize("side", [37.3, 96.0, 211.7])
def test_crop_then_paste_disagrees_only_near_the_outline(side):
    # Tolerance for other scales: pixels may flip only within max(1, scale) source pixels of
    # the outline, as a resampled outline moves by at most one output pixel.
    mask = blob()
    t = CropTransform((80.3, 95.7), side, 128)
    back = t.paste_mask(t.crop_image(mask, order=1), mask.shape)
    inside = t.paste_mask(np.ones((128, 128), bool), mask.shape)
    wrong = (back != mask) & inside
    dist_in = ndimage.distance_transform_edt(mask)
    dist_out = ndimage.distance_transform_edt(~mask)
    dist = np.where(mask, dist_in, dist_out)
    assert dist[wrong].max(initial=0) <= max(1.0, t.scale) + 0.5
    b, m = back[inside], mask[inside]
    assert 2 * (b & m).sum() / (b.sum() + m.sum()) > 0.97


def test_paste_mask_accepts_probabilities_and_checks_shapes():
    t = aligned(10, 10, 64, 64)
    probs = np.full((64, 64), 0.3)
    probs[10:20, 10:20] = 0.8
    out = t.paste_mask(probs, (100, 100))
    assert out.dtype == bool and out.shape == (100, 100)
    assert out.sum() == 100 and out[20:30, 20:30].all()
    with pytest.raises(ValueError, match="crop_mask"):
        t.paste_mask(np.zeros((32, 32)), (100, 100))
    with pytest.raises(ValueError, match="source_shape"):
        t.paste_mask(probs, (100,))


def test_paste_mask_outside_the_image_is_empty_and_clipped():
    t = CropTransform((-40.0, -40.0), 30.0, 32)
    assert not t.paste_mask(np.ones((32, 32)), (50, 50)).any()
    t = CropTransform((5.0, 5.0), 30.0, 32)
    out = t.paste_mask(np.ones((32, 32)), (50, 50))
    assert out[:20, :20].all() and not out[20:].any() and not out[:, 20:].any()


# -- lesion_crop ----------------------------------------------------------------------------
def test_lesion_crop_centres_the_box_and_sizes_the_patch():
    mask = blob()
    r = recist_from_mask(mask)
    patch, t = lesion_crop(mask.astype(np.float32), r, size=64, margin=0.5)
    r0, c0, r1, c1 = r.bbox
    np.testing.assert_allclose(t.centre, ((r0 + r1) / 2, (c0 + c1) / 2))
    assert t.side == pytest.approx(2 * r.long_length)
    assert patch.shape == (64, 64) and patch.dtype == np.float32
    _, t0 = lesion_crop(mask, r, size=64, margin=0.0)
    assert t0.side == pytest.approx(r.long_length)


def test_lesion_crop_field_of_view_in_mm():
    r = Recist([[50, 40], [50, 80]], [[40, 60], [60, 60]], spacing=(0.5, 0.5))
    _, t = lesion_crop(np.zeros((120, 120)), r, size=32, field_of_view_mm=40)
    assert t.side == pytest.approx(80)


@pytest.mark.parametrize("size", [0, 100, 120, 17, 64.5])
def test_lesion_crop_size_must_be_multiple_of_16(size):
    r = Recist([[50, 40], [50, 80]], [[40, 60], [60, 60]])
    with pytest.raises(ValueError, match="size"):
        lesion_crop(np.zeros((100, 100)), r, size=size)


def test_lesion_crop_rejects_bad_margin_and_fov():
    r = Recist([[50, 40], [50, 80]], [[40, 60], [60, 60]])
    with pytest.raises(ValueError, match="margin"):
        lesion_crop(np.zeros((100, 100)), r, margin=-0.1)
    with pytest.raises(ValueError, match="field_of_view_mm"):
        lesion_crop(np.zeros((100, 100)), r, field_of_view_mm=0)


def test_crop_recist_lands_on_the_lesion_in_the_patch():
    mask = blob()
    r = recist_from_mask(mask, spacing=(0.7, 0.7))
    patch, t = lesion_crop(mask.astype(np.float32), r, size=128, margin=0.4)
    rc = t.crop_recist(r)
    lesion = patch > 0.5
    # Centre and all four endpoints sit on the lesion in the patch.
    for p in np.vstack([rc.centre[None], rc.endpoints]):
        rr, cc = np.clip(np.rint(p).astype(int), 0, 127)
        assert lesion[max(rr - 1, 0) : rr + 2, max(cc - 1, 0) : cc + 2].any()
    assert lesion[tuple(np.rint(rc.centre).astype(int))]
    np.testing.assert_allclose(rc.centre, t.to_crop(r.centre), atol=1e-9)
    assert rc.long_length == pytest.approx(r.long_length / t.scale)
    assert rc.long_mm == pytest.approx(r.long_mm)
    # Measured again on the patch, the lesion gives about the same RECIST.
    again = recist_from_mask(lesion)
    assert again.long_length == pytest.approx(rc.long_length, rel=0.05)
    np.testing.assert_allclose(t.source_recist(rc).endpoints, r.endpoints, atol=1e-9)


def test_crop_pads_ct_with_minimum_and_rgb_with_zero():
    ct = np.full((60, 60), 40.0, dtype=np.float32)
    ct[0, 0] = -1024.0
    t = CropTransform((0.0, 0.0), 40.0, 32)
    patch = t.crop_image(ct, order=1)
    assert patch[0, 0] == pytest.approx(-1024.0)
    assert patch[-1, -1] == pytest.approx(40.0)
    rgb = np.full((60, 60, 3), 200, dtype=np.uint8)
    patch = t.crop_image(rgb)
    assert patch.dtype == np.uint8 and patch.shape == (32, 32, 3)
    assert (patch[0, 0] == 0).all() and (patch[-1, -1] == 200).all()
    assert t.crop_image(ct, pad_value=7.0)[0, 0] == pytest.approx(7.0)


def test_crop_channel_layouts():
    rng = np.random.default_rng(0)
    gray = rng.random((80, 90)).astype(np.float32)
    stack = np.stack([gray, 2 * gray, 3 * gray])
    t = CropTransform((40.0, 45.0), 20.0, 32)
    g = t.crop_image(gray)
    s = t.crop_image(stack, channel_axis=0)
    assert s.shape == (3, 32, 32)
    np.testing.assert_allclose(s[2], 3 * g, rtol=1e-5)
    last = t.crop_image(np.moveaxis(stack, 0, -1))  # (H, W, 3) read as RGB
    np.testing.assert_allclose(np.moveaxis(last, -1, 0), s, rtol=1e-6)
    with pytest.raises(ValueError, match="channel_axis"):
        t.crop_image(np.zeros((5, 80, 90)))
    with pytest.raises(ValueError, match="channel_axis"):
        t.crop_image(gray, channel_axis=0)
    with pytest.raises(ValueError):
        t.crop_image(np.zeros((2, 3, 4, 5)))


def test_crop_scale_one_copies_pixels_and_shrinking_is_antialiased():
    rng = np.random.default_rng(1)
    img = rng.random((100, 100))
    t = aligned(20, 30, 64, 64)
    np.testing.assert_allclose(t.crop_image(img), img[20:84, 30:94], rtol=1e-6)
    checker = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)
    small = aligned(0, 0, 256, 64).crop_image(checker)
    assert small.std() < 0.05 and small.mean() == pytest.approx(0.5, abs=0.05)


def test_integer_images_keep_their_dtype():
    img = np.arange(100 * 100, dtype=np.int16).reshape(100, 100) - 3000
    out = CropTransform((50.0, 50.0), 30.0, 32).crop_image(img)
    assert out.dtype == np.int16


# -- intensities ----------------------------------------------------------------------------
def test_window_presets_and_mapping():
    assert WINDOW_PRESETS["soft_tissue"] == (-160, 240)
    assert WINDOW_PRESETS["lung"] == (-1350, 150)
    assert WINDOW_PRESETS["bone"] == (-450, 1050)
    assert WINDOW_PRESETS["wide"] == (-1024, 3071)
    assert "liver" in WINDOW_PRESETS
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    out = window_ct(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(window_ct(hu, "lung")[:2], [350 / 1500, 1190 / 1500], rtol=1e-6)
    np.testing.assert_allclose(window_ct(hu, (0, 100))[2], 0.4)


@pytest.mark.parametrize("window", ["brain", (100, 0), (1, 1), (0, np.inf), "x", (1, 2, 3)])
def test_window_rejects_bad_windows(window):
    with pytest.raises(ValueError, match="window"):
        window_ct(np.zeros(3), window)


def test_normalise_rgb_per_image_and_imagenet():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
    out = normalise_rgb(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 1)), 1, atol=1e-3)
    net = normalise_rgb(img, mode="imagenet")
    expected = (img[0, 0] / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(net[0, 0], expected, rtol=1e-4)
    chw = normalise_rgb(np.moveaxis(img, -1, 0), channel_axis=0)
    np.testing.assert_allclose(np.moveaxis(chw, 0, -1), out, atol=1e-5)
    flat = normalise_rgb(np.full((8, 8, 3), 0.5, dtype=np.float32))
    assert np.isfinite(flat).all()
    with pytest.raises(ValueError, match="mode"):
        normalise_rgb(img, mode="other")
    with pytest.raises(ValueError, match="3 channels"):
        normalise_rgb(img[..., :2], mode="imagenet")
