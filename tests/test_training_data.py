"""Collecting training data from image/RECIST layer pairs, without a viewer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Shapes

from napari_recist_seg.plugin.training_data import training_data_from_layers


def _recist_layer(lesions, name="RECIST", ndim=2):
    """A RECIST Shapes layer: (long axis, short axis) point pairs per lesion."""
    data, ids, axes = [], [], []
    for i, (long_axis, short_axis) in enumerate(lesions):
        data += [np.asarray(long_axis, float), np.asarray(short_axis, float)]
        ids += [i, i]
        axes += ["long", "short"]
    return Shapes(data, shape_type="line", name=name, ndim=ndim,
                  features={"lesion_id": ids, "axis": axes})


LESION = ([[10, 10], [10, 40]], [[2, 25], [18, 25]])
OTHER = ([[40, 10], [40, 30]], [[35, 20], [45, 20]])
BROKEN = ([[20, 50], [20, 60]], [[5, 55], [35, 55]])  # short axis longer than long


def test_one_lesion_per_uint8_image_is_trained_as_whole_images():
    images = [Image(np.full((48, 64), k, np.uint8), name=f"img {k}") for k in range(3)]
    pairs = [(image, _recist_layer([LESION], f"{image.name} RECIST")) for image in images]
    data, skipped = training_data_from_layers(pairs)
    assert data["mode"] == "whole_image" and skipped == []
    assert len(data["images"]) == 3 and len(data["recists"]) == 3
    assert data["source"] == "img 0, img 1, img 2"
    # Copies: editing the layer afterwards does not change what is trained on.
    images[0].data[:] = 200
    assert data["images"][0].max() == 0


def test_ct_slices_with_several_lesions_are_trained_as_crops_leaving_broken_ones_out():
    image = Image(np.zeros((48, 64), np.float32), name="ct")
    layer = _recist_layer([LESION, BROKEN, OTHER], "ct RECIST")
    data, skipped = training_data_from_layers([(image, layer)])
    assert data["mode"] == "crops" and data["image_index"] == [0, 0]
    assert data["slices"] is None and len(data["recists"]) == 2
    assert len(skipped) == 1 and skipped[0].startswith("ct RECIST lesion 1:")


@pytest.mark.parametrize(("case", "message"), [
    ("nothing ticked", "tick at least one image"),
    ("no image at all", "there is no image layer"),
    ("no RECIST layer", "'ct': choose its RECIST layer"),
    ("2D and 3D", "mix 2D images and volumes"),
    ("wrong dimensions", "does not fit 'ct'"),
    ("no complete lesion", "'ct RECIST' has no complete lesion"),
    ("colour and grey", r"mix colour \('photo'\) and grey \('ct'\) images"),
    ("another scan's RECIST", "'ct RECIST' lies on another grid than 'ct' "
                              r"\(pixel size \(0.5, 0.5\) against \(1, 1\)\)"),
])
def test_pairs_that_cannot_be_trained_on_are_named(case, message):
    image = Image(np.zeros((48, 64), np.float32), name="ct")
    volume = Image(np.zeros((3, 48, 64), np.float32), name="stack")
    layer = _recist_layer([LESION], "ct RECIST")
    photo = Image(np.zeros((48, 64, 3), np.uint8), name="photo", rgb=True)
    scaled = _recist_layer([LESION], "ct RECIST")
    scaled.scale = (0.5, 0.5)
    pairs, has_images = {
        "nothing ticked": ([], True),
        "no image at all": ([], False),
        "no RECIST layer": ([(image, None)], True),
        "2D and 3D": ([(image, layer), (volume, _recist_layer([], "v", ndim=3))], True),
        "wrong dimensions": ([(image, _recist_layer([], "3d RECIST", ndim=3))], True),
        "no complete lesion": ([(image, _recist_layer([], "ct RECIST"))], True),
        "colour and grey": ([(image, layer), (photo, _recist_layer([LESION], "p"))], True),
        "another scan's RECIST": ([(image, scaled)], True),
    }[case]
    with pytest.raises(ValueError, match=message):
        training_data_from_layers(pairs, has_images)


def test_lines_drawn_while_no_dock_followed_the_layer_are_paired_and_trained_on():
    # The second lesion was drawn with napari's own line tool while no annotation dock showed
    # the layer: its lines have no lesion yet (lesion_id -1, no axis). A lone line is named.
    image = Image(np.zeros((48, 64), np.float32), name="ct")
    layer = _recist_layer([LESION], "ct RECIST")
    layer.add([np.asarray(OTHER[1], float), np.asarray(OTHER[0], float)], shape_type="line")
    layer.add([np.array([[5.0, 55.0], [5.0, 62.0]])], shape_type="line")
    layer.features = layer.features.assign(
        lesion_id=[0, 0, -1, -1, -1], axis=["long", "short", "", "", ""])
    data, skipped = training_data_from_layers([(image, layer)])
    assert len(data["recists"]) == 2
    # The longer of the two new lines is the long axis, whichever was drawn first.
    np.testing.assert_allclose(data["recists"][1].long_axis, OTHER[0])
    assert skipped == ["ct RECIST lesion 2: incomplete: draw the short axis"]
    # The user's layer is read, not written.
    assert layer.features["lesion_id"].tolist() == [0, 0, -1, -1, -1]
