"""Preparation: seeded splits, groups fitted on training lesions only, whole images and crops."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.core import grouping as grouping_module
from napari_recist_seg.data.crops import crop_transform_for
from napari_recist_seg.data.dataset import crop_input
from napari_recist_seg.learning import preparation
from napari_recist_seg.learning.preparation import (
    default_k,
    prepare_crops,
    prepare_whole_images,
    split_indices,
)

from ._learning_data import INPUT, dermoscopy, phantom_slices


@pytest.fixture
def fits(monkeypatch):
    """The lesions each K-means grouping is fitted on, in call order."""
    calls = []

    def recording(recists, k, **kwargs):
        calls.append(list(recists))
        return grouping_module.group_lesions(recists, k, **kwargs)

    monkeypatch.setattr(preparation, "group_lesions", recording)
    return calls


# -- split --------------------------------------------------------------------------------
@pytest.mark.parametrize("n, fraction", [(3, 0.15), (10, 0.15), (57, 0.15), (20, 0.5),
                                         (5, 0.9)])
def test_split_is_disjoint_sorted_and_covers_everything(n, fraction):
    train_idx, val_idx = split_indices(n, fraction, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(n))
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)
    assert train_idx.dtype.kind in "iu" and val_idx.dtype.kind in "iu"
    assert len(val_idx) >= 1 and len(train_idx) >= 2
    assert len(val_idx) == min(n - 2, max(1, round(n * fraction)))


def test_split_is_seeded():
    a = split_indices(57, 0.2, seed=7)
    b = split_indices(57, 0.2, seed=7)
    c = split_indices(57, 0.2, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    # Not simply the last lesions held out.
    assert not np.array_equal(a[1], np.arange(57 - len(a[1]), 57))


@pytest.mark.parametrize("n, fraction", [(2, 0.15), (0, 0.15), (10, 0.0), (10, 1.0),
                                         (10, -0.1)])
def test_bad_splits_are_refused(n, fraction):
    with pytest.raises(ValueError):
        split_indices(n, fraction)


# -- number of groups -------------------------------------------------------------------------
@pytest.mark.parametrize("n, k", [(0, 2), (10, 2), (59, 2), (60, 3), (200, 10), (899, 44),
                                  (900, 45), (10**6, 45)])
def test_default_k(n, k):
    assert default_k(n) == k


def test_default_k_is_bounded_and_grows():
    ks = [default_k(n) for n in range(0, 2000, 7)]
    assert min(ks) == 2 and max(ks) == 45
    assert ks == sorted(ks)
    assert all(isinstance(k, int) for k in ks)


# -- whole images -----------------------------------------------------------------------------
def test_whole_images_group_on_training_lesions_only(fits):
    images, recists = dermoscopy()
    data = prepare_whole_images(images, recists, size=INPUT, val_fraction=0.25, k=3, seed=1)
    assert len(fits) == 1
    train_recists = [recists[i] for i in data.train_indices]
    val_recists = [recists[i] for i in data.val_indices]
    assert fits[0] == train_recists
    assert not any(r in fits[0] for r in val_recists)
    assert data.grouping.k == 3
    assert data.train_set.source_recists == train_recists
    assert data.val_set.source_recists == val_recists
    assert np.array_equal(data.train_set.groups, data.grouping.predict(train_recists))
    assert np.array_equal(data.val_set.groups, data.grouping.predict(val_recists))


def test_whole_images_sets(fits):
    images, recists = dermoscopy()
    data = prepare_whole_images(images, recists, size=INPUT, val_fraction=0.25, k=2,
                                augment=True)
    assert len(data.train_set) + len(data.val_set) == len(images)
    assert len(data.val_set) == 3
    train_idx, val_idx = split_indices(len(images), 0.25, 0)
    assert np.array_equal(data.train_indices, train_idx)
    assert np.array_equal(data.val_indices, val_idx)
    item = data.train_set[0]
    assert item["image"].shape == (3, INPUT, INPUT) and item["mask"].shape == (1, INPUT, INPUT)
    assert item["mask"].sum() > 0
    assert data.train_set.augment and not data.val_set.augment
    assert data.preprocessing["mode"] == "whole_image"
    assert data.preprocessing["size"] == INPUT and data.preprocessing["normalise"] == "image"


def test_default_and_oversized_k(fits):
    images, recists = dermoscopy()
    assert prepare_whole_images(images, recists, size=INPUT).grouping.k == 2
    with pytest.warns(UserWarning, match=r"k=50 groups is more than the \d+ training lesions"):
        data = prepare_whole_images(images, recists, size=INPUT, k=50)
    assert data.grouping.k == len(data.train_set)  # at most one group a lesion


def test_whole_images_need_one_recist_each():
    images, recists = dermoscopy()
    with pytest.raises(ValueError, match="RECIST"):
        prepare_whole_images(images[:5], recists[:4], size=INPUT)


# -- lesion crops ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom():
    return phantom_slices()


def test_crops_from_several_lesions_on_each_image(phantom, fits):
    images, recists, index = phantom
    assert len(images) == 2 and len(recists) >= 8
    data = prepare_crops(list(images), recists, image_index=index, size=INPUT, k=2,
                         val_fraction=0.25)
    n = len(recists)
    assert len(data.train_set) + len(data.val_set) == n
    assert fits == [[recists[i] for i in data.train_indices]]
    assert data.preprocessing["mode"] == "crops" and data.preprocessing["size"] == INPUT
    for dataset, idx in ((data.train_set, data.train_indices), (data.val_set, data.val_indices)):
        assert dataset.source_recists == [recists[i] for i in idx]
        assert np.array_equal(dataset.groups, data.grouping.predict(dataset.source_recists))
        for j, i in enumerate(idx):
            item = dataset[j]
            assert item["image"].shape == (1, INPUT, INPUT)
            # The lesion sits in the middle of its patch.
            mask = item["mask"][0].numpy() > 0
            assert mask.any() and mask[INPUT // 2 - 2: INPUT // 2 + 2,
                                       INPUT // 2 - 2: INPUT // 2 + 2].all()
            # The patch comes from the image the lesion is on, not another one.
            t = crop_transform_for(recists[i], INPUT, 0.5)
            own = crop_input(images[index[i]], t)
            other = crop_input(images[1 - index[i]], t)
            assert np.abs(item["image"].numpy() - own).max() <= 1.01 / 255
            assert np.abs(item["image"].numpy() - other).max() > 0.1


def test_crops_need_one_image_index_each(phantom):
    images, recists, index = phantom
    with pytest.raises(ValueError, match="image_index"):
        prepare_crops(list(images), recists, image_index=index[:-1], size=INPUT, k=2)
    with pytest.raises(ValueError, match="image_index"):
        prepare_crops(list(images), recists, size=INPUT, k=2)  # 2 images, more lesions


@pytest.mark.parametrize("window", [(-160, 240), [-160, 240], np.array([-160.0, 240.0]),
                                    "soft_tissue"])
def test_crops_take_one_window_in_any_spelling(window, phantom):
    images, recists, index = phantom
    data = prepare_crops(list(images), recists, image_index=index, size=INPUT, k=2,
                         window=window)
    # The window is recorded so that inference windows new images the same way.
    assert data.preprocessing["window"] == [-160.0, 240.0]
    reference = prepare_crops(list(images), recists, image_index=index, size=INPUT, k=2)
    assert np.array_equal(data.train_set.image_u8(0), reference.train_set.image_u8(0))


def test_crops_take_one_window_per_lesion(phantom):
    images, recists, index = phantom
    windows = [(-160, 240) if i % 2 else (-1000, 400) for i in range(len(recists))]
    data = prepare_crops(list(images), recists, image_index=index, size=INPUT, k=2,
                         window=windows)
    for j, i in enumerate(data.train_indices):
        t = crop_transform_for(recists[i], INPUT, 0.5)
        expected = crop_input(images[index[i]], t, window=windows[i])
        assert np.abs(data.train_set[j]["image"].numpy() - expected).max() <= 1.01 / 255
