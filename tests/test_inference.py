"""Inference: loading checkpoints, predicting masks and groups, lesion-crop mode, TTA, checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_recist_seg.core.grouping import LesionGrouping
from napari_recist_seg.data.crops import crop_transform_for
from napari_recist_seg.data.dataset import LesionDataset, whole_image_input
from napari_recist_seg.learning.inference import (
    load_model,
    predict,
    predict_detailed,
    resolve_checkpoint,
)

from ._learning_data import (
    INPUT,
    N_GROUPS,
    crop_preprocessing,
    dermoscopy,
    phantom_slices,
    quick,
    saved_model,
    square_support,
    trained_run,
    whole_preprocessing,
)


@pytest.fixture(autouse=True)
def _quick():
    with quick():
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Untrained models saved as checkpoints, for shapes, modes and channel checks."""
    root = tmp_path_factory.mktemp("models")
    with quick():
        return _save_models(root)


def _save_models(root):
    folders = {
        "grey_whole": saved_model(root / "grey_whole", "a1", in_channels=1,
                                  preprocessing=whole_preprocessing(normalise=None)),
        "ct_a1": saved_model(root / "ct_a1", "a1", in_channels=1,
                             preprocessing=crop_preprocessing()),
        "ct_multitask": saved_model(root / "ct_multitask", "multitask", in_channels=1,
                                    n_groups=3, preprocessing=crop_preprocessing()),
        "ct_coseg": saved_model(root / "ct_coseg", "coseg", in_channels=1,
                                preprocessing=crop_preprocessing(window=[-160.0, 240.0])),
    }
    return {name: load_model(folder) for name, folder in folders.items()}


@pytest.fixture
def multitask_run(tmp_path_factory):
    return trained_run("multitask", tmp_path_factory)[0]


@pytest.fixture
def a1_run(tmp_path_factory):
    return trained_run("a1", tmp_path_factory)[0]


def rgb_image(shape=(40, 44)):
    """A dermoscopy-like RGB image, not square."""
    image = dermoscopy()[0][2]
    return np.ascontiguousarray(image[: shape[0], : shape[1]])


# -- loading --------------------------------------------------------------------------------
def test_load_model_on_a_run_folder_uses_best(multitask_run):
    model = load_model(multitask_run)
    assert model.checkpoint_path == str(multitask_run / "best")
    assert resolve_checkpoint(multitask_run) == multitask_run / "best"
    assert resolve_checkpoint(multitask_run / "last") == multitask_run / "last"
    assert model.kind == "multitask" and not model.training
    assert isinstance(model.grouping, LesionGrouping) and model.grouping.k == N_GROUPS
    assert model.preprocessing["mode"] == "whole_image"
    assert model.preprocessing["size"] == INPUT
    assert model.preprocessing["normalise"] == "image"
    assert model.checkpoint_config["train_config"]["kind"] == "multitask"


def test_a_training_output_folder_resolves_to_its_one_run(multitask_run, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(multitask_run, out / "multitask")
    assert resolve_checkpoint(out) == out / "multitask" / "best"
    shutil.copytree(multitask_run, out / "a1")
    with pytest.raises(ValueError, match="holds 2 trained models; choose one of .*a1.*multitask"):
        resolve_checkpoint(out)
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        resolve_checkpoint(tmp_path)


def test_load_model_without_grouping(models):
    assert models["ct_a1"].grouping is None
    assert models["ct_a1"].preprocessing["mode"] == "crops"


def test_a_folder_that_is_not_a_checkpoint_is_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a checkpoint") as info:
        load_model(empty)
    assert str(empty) in str(info.value)
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="does not exist") as info:
        load_model(missing)
    assert str(missing) in str(info.value)
    a_file = tmp_path / "model.pt"
    a_file.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match="not a checkpoint") as info:
        load_model(a_file)
    assert str(a_file) in str(info.value)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"kind": "a1"}))
    with pytest.raises(ValueError) as info:
        load_model(fake)
    assert str(fake) in str(info.value)


# -- whole-image mode -----------------------------------------------------------------------
def test_predict_rgb_image_gives_a_mask_of_its_shape(multitask_run):
    model = load_model(multitask_run)
    image = rgb_image((40, 44))
    mask = predict(model, image)
    assert mask.dtype == bool and mask.shape == (40, 44)
    # uint8 and float in [0, 1] are the same image.
    as_float = predict_detailed(model, image.astype(np.float32) / 255.0).probability
    assert np.allclose(as_float, predict_detailed(model, image).probability, atol=1e-4)
    # A channels-first stack says so with channel_axis.
    chw = predict_detailed(model, np.moveaxis(image, -1, 0), channel_axis=0)
    assert chw.mask.shape == (40, 44)
    assert np.allclose(chw.probability, predict_detailed(model, image).probability, atol=1e-6)
    # RGBA: the alpha channel is dropped.
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(predict(model, rgba), mask)


def test_predict_grey_image_gives_a_mask_of_its_shape(models):
    image = (rgb_image((44, 36)).mean(axis=2)).astype(np.uint8)
    result = predict_detailed(models["grey_whole"], image)
    assert result.mask.dtype == bool and result.mask.shape == (44, 36)
    assert result.probability.dtype == np.float32 and result.probability.shape == (44, 36)
    assert 0.0 <= result.probability.min() and result.probability.max() <= 1.0
    assert np.array_equal(result.mask, result.probability >= 0.5)
    assert result.groups is None


def test_threshold_selects_more_pixels_when_lower(a1_run):
    model = load_model(a1_run)
    image = rgb_image()
    low = predict(model, image, threshold=0.2)
    high = predict(model, image, threshold=0.8)
    assert not (high & ~low).any()
    probability = predict_detailed(model, image).probability
    assert np.array_equal(low, probability >= 0.2)


def test_whole_image_input_matches_the_training_items():
    images, recists = dermoscopy()
    dataset = LesionDataset.from_whole_images(images[:1], recists[:1], size=INPUT,
                                              normalise="image")
    x = whole_image_input(images[0], INPUT, normalise="image")
    assert x.shape == (3, INPUT, INPUT) and x.dtype == np.float32
    assert np.allclose(x, dataset[0]["image"].numpy(), atol=1e-5)


def test_channel_count_mismatch_is_a_clear_error(models):
    with pytest.raises(ValueError, match="takes 1-channel images"):
        predict(models["grey_whole"], np.zeros((40, 40, 3), np.uint8))


def test_a_colour_model_reads_a_grey_picture_as_three_equal_channels(multitask_run):
    # As training reads the grey images of a mostly colour folder.
    model = load_model(multitask_run)
    grey = (rgb_image((40, 40)).mean(axis=2)).astype(np.uint8)
    np.testing.assert_array_equal(predict_detailed(model, grey).probability,
                                  predict_detailed(model, np.dstack([grey] * 3)).probability)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_threshold_outside_the_unit_interval_is_refused(threshold, models):
    with pytest.raises(ValueError, match="threshold"):
        predict(models["grey_whole"], np.zeros((32, 32), np.uint8), threshold=threshold)


def test_images_of_other_dimensions_are_refused(models):
    with pytest.raises(ValueError, match="shape"):
        predict(models["grey_whole"], np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        predict(models["grey_whole"], np.zeros(32, np.uint8))


# -- groups -----------------------------------------------------------------------------------
def test_predict_detailed_groups_in_whole_image_mode(multitask_run, a1_run):
    result = predict_detailed(load_model(multitask_run), rgb_image())
    assert result.groups is not None and result.groups.shape == (1,)
    assert 0 <= result.groups[0] < N_GROUPS
    assert predict_detailed(load_model(a1_run), rgb_image()).groups is None


def test_predict_detailed_groups_in_crop_mode(models):
    images, recists, index = phantom_slices()
    lesions = [r for r, i in zip(recists, index) if i == 0]
    assert len(lesions) >= 3
    result = predict_detailed(models["ct_multitask"], images[0], lesions, batch_size=2)
    assert result.groups.dtype == np.int64 and result.groups.shape == (len(lesions),)
    assert ((0 <= result.groups) & (result.groups < 3)).all()
    # Batching does not change the answer.
    one_batch = predict_detailed(models["ct_multitask"], images[0], lesions, batch_size=16)
    assert np.array_equal(one_batch.groups, result.groups)
    assert np.allclose(one_batch.probability, result.probability, atol=1e-6)
    assert predict_detailed(models["ct_a1"], images[0], lesions).groups is None


# -- lesion-crop mode -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ct_a1", "ct_coseg"])
def test_crop_mode_predicts_only_around_the_lesions(name, models):
    images, recists, index = phantom_slices()
    image = images[0]
    lesions = [r for r, i in zip(recists, index) if i == 0]
    model = models[name]
    result = predict_detailed(model, image, lesions)
    assert result.mask.dtype == bool and result.mask.shape == image.shape
    near = np.zeros(image.shape, bool)
    for r in lesions:
        t = crop_transform_for(r, INPUT, model.preprocessing["margin"])
        square = square_support(t, image.shape)
        near |= square
        # Each lesion's own patch is pasted where that lesion is, and nowhere else.
        alone = predict_detailed(model, image, [r]).probability
        assert (alone[~square] == 0).all()
        assert alone[square].max() > 0
    assert (result.probability[~near] == 0).all()
    assert not (result.mask & ~near).any()
    assert near.mean() < 0.5  # the check means something: most of the slice is far away


def test_crop_mode_without_lesions_predicts_nothing(models):
    image = phantom_slices()[0][0]
    result = predict_detailed(models["ct_a1"], image, [])
    assert result.mask.shape == image.shape and not result.mask.any()


def test_crop_mode_window_changes_the_input(models):
    images, recists, index = phantom_slices()
    lesions = [r for r, i in zip(recists, index) if i == 0][:1]
    soft = predict_detailed(models["ct_a1"], images[0], lesions).probability
    bone = predict_detailed(models["ct_a1"], images[0], lesions, window="bone").probability
    assert not np.allclose(soft, bone)


# -- test-time augmentation -----------------------------------------------------------------
def test_tta_averages_the_flipped_predictions(a1_run):
    model = load_model(a1_run)
    # At the network's own size the resizing is the identity, so flips commute with it.
    image = rgb_image((INPUT, INPUT))
    plain = predict_detailed(model, image).probability
    flipped_cols = predict_detailed(model, image[:, ::-1]).probability[:, ::-1]
    flipped_rows = predict_detailed(model, image[::-1]).probability[::-1]
    tta = predict_detailed(model, image, tta=True)
    expected = (plain + flipped_cols + flipped_rows) / 3
    assert np.allclose(tta.probability, expected, atol=1e-5)
    assert not np.allclose(tta.probability, plain, atol=1e-3)  # the flips did something
    assert np.array_equal(predict(model, image, tta=True), tta.probability >= 0.5)


def test_tta_runs_in_crop_mode(models):
    images, recists, index = phantom_slices()
    lesions = [r for r, i in zip(recists, index) if i == 1]
    result = predict_detailed(models["ct_multitask"], images[1], lesions, tta=True)
    assert result.mask.shape == images[1].shape and result.groups.shape == (len(lesions),)


def test_a_ct_model_given_one_slice_says_how_to_give_its_neighbours(tmp_path):
    from napari_recist_seg.core.recist import Recist

    from ._learning_data import TABLE_SOURCE, crop_preprocessing, saved_model

    folder = saved_model(tmp_path / "ct", "prompted", in_channels=3,
                         preprocessing=crop_preprocessing(source=TABLE_SOURCE))
    model = load_model(folder)
    r = Recist(long_axis=[[20, 10], [20, 40]], short_axis=[[12, 25], [28, 25]])
    with pytest.raises(ValueError, match=r"takes 3-channel images .* 1 neighbouring slice\(s\) "
                                         r"on each side; give them as a \(3, H, W\) stack"):
        predict(model, np.zeros((48, 48), np.float32), recists=[r])
    stack = np.zeros((3, 48, 48), np.float32)
    assert predict(model, stack, recists=[r], channel_axis=0).shape == (48, 48)
