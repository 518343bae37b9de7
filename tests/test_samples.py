import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from napari_recist_seg.core.recist import Recist
from napari_recist_seg.data.samples import (
    ct_phantom_slice,
    ct_phantom_volume,
    dermoscopy_dataset,
    dermoscopy_image,
)


@pytest.fixture(scope="module")
def ct_slice():
    return ct_phantom_slice(0)


@pytest.fixture(scope="module")
def ct_volume():
    return ct_phantom_volume(0)


def _centre_on_mask(recist, mask):
    r, c = np.rint(recist.centre).astype(int)
    return bool(mask[r, c])


# -- CT slice -------------------------------------------------------------------------------
def test_ct_slice_is_deterministic_and_seeds_differ(ct_slice):
    again = ct_phantom_slice(0)
    np.testing.assert_array_equal(again["image"], ct_slice["image"])
    np.testing.assert_array_equal(again["masks"], ct_slice["masks"])
    assert again["recists"] == ct_slice["recists"]
    other = ct_phantom_slice(1)
    assert not np.array_equal(other["masks"], ct_slice["masks"])


def test_ct_slice_shapes_and_types(ct_slice):
    image, masks = ct_slice["image"], ct_slice["masks"]
    assert image.shape == (256, 256) and image.dtype == np.float32
    assert masks.shape == (256, 256) and masks.dtype == np.int32
    assert ct_slice["spacing"] == (0.8, 0.8)
    n = len(ct_slice["recists"])
    assert n >= 3
    assert sorted(np.unique(masks)) == list(range(n + 1))
    assert all(isinstance(r, Recist) and r.spacing == (0.8, 0.8) for r in ct_slice["recists"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ct_slice_recists_lie_on_their_lesions(seed):
    d = ct_phantom_slice(seed)
    lengths = []
    for i, r in enumerate(d["recists"], start=1):
        lesion = d["masks"] == i
        assert _centre_on_mask(r, lesion)
        # Endpoints are pixel centres of the lesion (the RECIST was measured on it).
        for p in r.long_axis:
            assert lesion[tuple(np.rint(p).astype(int))]
        lengths.append(r.long_length)
    assert max(lengths) / min(lengths) > 1.5  # lesions of different sizes


@pytest.mark.parametrize("seed", [0, 4])
def test_ct_slice_hounsfield_units_are_plausible(seed):
    d = ct_phantom_slice(seed)
    image, masks = d["image"], d["masks"]
    assert -1100 < image.min() and image.max() < 1500
    corner = image[:16, :16]
    assert abs(corner.mean() + 1000) < 5 and corner.std() < 25
    centre = image[118:138, 118:138]  # inside the body
    assert centre.mean() > -200
    contrasts = []
    for i in range(1, masks.max() + 1):
        lesion = masks == i
        ring = ndimage.binary_dilation(lesion, iterations=4) & ~ndimage.binary_dilation(
            lesion, iterations=2
        )
        contrasts.append(image[lesion].mean() - image[ring].mean())
        assert -200 < image[lesion].mean() < 200
    assert all(abs(c) > 15 for c in contrasts)
    assert min(contrasts) < 0 < max(contrasts)  # hypo- and hyperdense lesions


# -- CT volume ------------------------------------------------------------------------------
def test_ct_volume_shapes_and_determinism(ct_volume):
    image, masks = ct_volume["image"], ct_volume["masks"]
    assert image.shape == (16, 256, 256) and image.dtype == np.float32
    assert masks.shape == image.shape and masks.dtype == np.int32
    assert ct_volume["spacing"] == (2.5, 0.8, 0.8)
    n = len(ct_volume["recists"])
    assert n >= 3 and len(ct_volume["slices"]) == n
    assert sorted(np.unique(masks)) == list(range(n + 1))
    again = ct_phantom_volume(0)
    np.testing.assert_array_equal(again["image"], image)
    assert again["slices"] == ct_volume["slices"]
    small = ct_phantom_volume(3, n_slices=8)
    assert small["image"].shape == (8, 256, 256)
    with pytest.raises(ValueError, match="n_slices"):
        ct_phantom_volume(0, n_slices=2)


def test_ct_volume_lesions_span_slices_and_recists_are_on_key_slices(ct_volume):
    masks = ct_volume["masks"]
    spans = []
    for i, (r, z) in enumerate(zip(ct_volume["recists"], ct_volume["slices"]), start=1):
        assert 0 <= z < masks.shape[0]
        lesion = masks == i
        assert _centre_on_mask(r, lesion[z])
        areas = lesion.sum(axis=(1, 2))
        assert areas[z] == areas.max()  # measured on the largest cross-section
        spans.append(int((areas > 0).sum()))
    assert max(spans) >= 3


def test_ct_volume_hounsfield_units_are_plausible(ct_volume):
    image = ct_volume["image"]
    assert -1100 < image.min() and image.max() < 1500
    assert abs(image[:, :16, :16].mean() + 1000) < 5


# -- dermoscopy -----------------------------------------------------------------------------
def test_dermoscopy_image_shapes_and_recist():
    d = dermoscopy_image(0)
    image, mask = d["image"], d["mask"]
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert mask.shape == (256, 256) and mask.dtype == bool
    assert 0.03 < mask.mean() < 0.6
    (r,) = d["recists"]
    assert _centre_on_mask(r, mask)
    grey = image.mean(axis=2)
    assert grey[mask].mean() < grey[~mask].mean() - 30  # darker lesion on skin
    np.testing.assert_array_equal(dermoscopy_image(0)["image"], image)
    assert not np.array_equal(dermoscopy_image(1)["mask"], mask)
    assert dermoscopy_image(0, hairs=False)["image"].shape == (256, 256, 3)


def test_dermoscopy_dataset_shapes_determinism_and_prefix():
    images, masks = dermoscopy_dataset(12, seed=5, size=64)
    assert len(images) == len(masks) == 12
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in images)
    assert all(m.shape == (64, 64) and m.dtype == bool and m.any() for m in masks)
    again, _ = dermoscopy_dataset(12, seed=5, size=64)
    assert all(np.array_equal(a, b) for a, b in zip(images, again))
    prefix, _ = dermoscopy_dataset(4, seed=5, size=64)
    assert all(np.array_equal(a, b) for a, b in zip(images, prefix))
    other, _ = dermoscopy_dataset(2, seed=6, size=64)
    assert not np.array_equal(other[0], images[0])
    assert dermoscopy_dataset(0) == ([], [])
    with pytest.raises(ValueError, match="size"):
        dermoscopy_dataset(2, size=8)


def test_dermoscopy_dataset_is_varied_and_separable():
    images, masks = dermoscopy_dataset(24, seed=0, size=96)
    areas = np.array([m.mean() for m in masks])
    centres = np.array([np.argwhere(m).mean(axis=0) for m in masks])
    colours = np.array([im[m].mean(axis=0) for im, m in zip(images, masks)])
    assert areas.max() / areas.min() > 3
    assert centres.std(axis=0).min() > 3
    assert colours.std(axis=0).min() > 5
    # Learnable: even a global grey-level threshold finds most lesions well.
    dice = []
    for im, m in zip(images, masks):
        grey = im.mean(axis=2)
        pred = grey < threshold_otsu(grey)
        dice.append(2 * (pred & m).sum() / (pred.sum() + m.sum()))
    assert np.median(dice) > 0.85
