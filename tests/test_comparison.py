"""The comparison's logic without a viewer: input checks, predictions, metrics rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from napari.layers import Image, Labels, Shapes

from napari_recist_seg.core.recist import Recist
from napari_recist_seg.plugin.comparison import (
    EMPTY_PREDICTION,
    ROW_COLUMNS,
    collect_inputs,
    format_metric,
    metric_rows,
    predict_models,
)
from napari_recist_seg.plugin.model_registry import ModelEntry

from ._compare_stubs import ConstantModel, PriorModel, RampModel

SHAPE = (64, 64)


def _truth() -> np.ndarray:
    """Two square lesions, labelled 1 (rows and columns 10-19) and 2 (40-49)."""
    gt = np.zeros(SHAPE, np.int32)
    gt[10:20, 10:20] = 1
    gt[40:50, 40:50] = 2
    return gt


def _recist_lines(top_left=10, size=10, z=None):
    """A long and a short axis crossing at the centre of a square lesion."""
    c = top_left + (size - 1) / 2
    lo, hi = top_left, top_left + size - 1
    lines = [np.array([[c, lo], [c, hi]]), np.array([[lo, c], [hi, c]])]
    if z is not None:
        lines = [np.column_stack([np.full(2, z), line]) for line in lines]
    return lines


def _recist_layer(lines, ids=(0, 0), axes=("long", "short")):
    return Shapes(lines, shape_type="line", name="marks",
                  features={"lesion_id": list(ids), "axis": list(axes)})


def _entry(model, name="stub"):
    return ModelEntry(name, model.kind, "/nowhere", model)


def _square_recist(top_left=10, size=10) -> Recist:
    long, short = _recist_lines(top_left, size)
    return Recist(long, short)


# -- collect_inputs ---------------------------------------------------------------------------
def test_collect_inputs_copies_the_layers_and_finds_the_lesions():
    image = Image(np.random.default_rng(0).random(SHAPE, dtype=np.float32), name="ct")
    recist = _recist_layer(_recist_lines())
    truth = Labels(_truth(), name="truth")
    inputs = collect_inputs(image, recist, truth, [object()])
    assert inputs.image_name == "ct" and inputs.truth_name == "truth" and not inputs.rgb
    assert [(z, lid) for z, _, lid in inputs.lesions] == [(None, 0)]
    np.testing.assert_allclose(inputs.lesions[0][1].centre, (14.5, 14.5))
    # Copies: what the comparison does to them never reaches the user's layers.
    inputs.image[:] = -1
    inputs.truth[:] = 7
    assert image.data.min() >= 0 and truth.data.max() == 2


def test_collect_inputs_keeps_the_lesions_on_the_volume_slices():
    image = Image(np.zeros((3, *SHAPE), np.float32), name="stack")
    lines = _recist_lines(z=1) + _recist_lines(40, z=5)  # slice 5 is outside the volume
    recist = _recist_layer(lines, ids=(0, 0, 1, 1), axes=("long", "short") * 2)
    inputs = collect_inputs(image, recist, None, [object()])
    assert [(z, lid) for z, _, lid in inputs.lesions] == [(1, 0)]
    assert inputs.truth is None


def test_collect_inputs_leaves_out_a_lesion_reaching_past_the_image():
    image = Image(np.zeros(SHAPE, np.float32), name="ct")
    lines = _recist_lines() + _recist_lines(SHAPE[1] - 4)  # the second runs off the right edge
    recist = _recist_layer(lines, ids=(0, 0, 1, 1), axes=("long", "short") * 2)
    inputs = collect_inputs(image, recist, None, [object()])
    assert [(z, lid) for z, _, lid in inputs.lesions] == [(None, 0)]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: (None, None, None, [1]), "no image layer"),
    (lambda: (Image(np.zeros(SHAPE), name="ct"), None, None, []), "tick at least one model"),
    (lambda: (Image(np.zeros((2, 2, *SHAPE)), name="4d"), None, None, [1]), "'4d' is 4D"),
    (lambda: (Image(np.zeros(SHAPE), name="ct"), None, Labels(np.zeros((8, 8), int),
                                                               name="small"), [1]),
     "ground truth 'small' is (8, 8), the image (64, 64)"),
    (lambda: (Image(np.zeros((3, *SHAPE)), name="stack"),
              _recist_layer(_recist_lines()), None, [1]), "'marks' (2D) does not fit 'stack'"),
    (lambda: (Image(np.zeros(SHAPE), name="ct"),
              _recist_layer(_recist_lines()[:1], ids=(0,), axes=("long",)), None, [1]),
     "'marks' has no complete lesion"),
])
def test_collect_inputs_names_the_bad_input(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        collect_inputs(*make())


# -- predict_models ---------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_the_threshold_cuts_the_probability_map(threshold):
    image = np.zeros(SHAPE, np.float32)
    messages = list(predict_models([_entry(RampModel())], image, [], None, False, threshold))
    assert [kind for kind, _ in messages] == ["result"]
    result = messages[0][1]
    # The ramp's probability passes t on the right (1 - t) of the image.
    assert result["mask"].mean() == pytest.approx(1 - threshold, abs=0.04)
    assert result["mask"].dtype == np.uint8 and result["rows"] == []


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2, 1.5])
def test_a_threshold_outside_0_1_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold must be between 0 and 1"):
        next(predict_models([_entry(RampModel())], np.zeros(SHAPE), [], None, False, threshold))


def test_crop_models_predict_around_the_lesions_and_give_groups():
    model = ConstantModel(5.0, kind="multitask", mode="crops", group=1)
    lesions = [(None, _square_recist(), 3)]
    (_, result), = predict_models([_entry(model, "mt")], np.zeros(SHAPE, np.float32),
                                  lesions, _truth())
    assert result["groups"] == {(None, 3): 1}
    assert result["mask"][14, 14] == 1 and result["mask"][45, 45] == 0  # only the one lesion
    rows = result["rows"]
    # The image row, then lesion 1 only: lesion 2 has no RECIST, so it was not asked about.
    assert [row["lesion"] for row in rows] == ["all", 1]
    assert rows[1]["group"] == 1 and rows[0]["group"] == "1"


def test_a_prompted_model_segments_the_lesions_it_is_shown_and_needs_them():
    lesions = [(None, _square_recist(40), 7)]
    (_, result), = predict_models([_entry(PriorModel(), "pr")], np.zeros(SHAPE, np.float32),
                                  lesions, _truth())
    mask = result["mask"]
    assert mask[44, 44] == 1 and mask[14, 14] == 0  # the prompted lesion, not the other
    assert [row["lesion"] for row in result["rows"]] == ["all", 2]
    assert result["rows"][1]["dice"] > 0.6
    with pytest.raises(ValueError, match="'pr' is RECIST-prompted: choose the image's RECIST"):
        next(predict_models([_entry(PriorModel(), "pr")], np.zeros(SHAPE), [], None))


def test_a_model_that_cannot_read_the_image_is_named():
    grey_only = RampModel()
    grey_only.config = {"input_size": 32, "in_channels": 1}
    colour = np.zeros((*SHAPE, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^grey one: the model takes 1-channel images"):
        list(predict_models([_entry(grey_only, "grey one")], colour, [], None, rgb=True))
    # Beside another model, the message says how to compare that one.
    with pytest.raises(ValueError, match=r"^grey one: the model takes 1-channel images.*; "
                                         r"untick it to compare the other models$"):
        list(predict_models([_entry(RampModel(), "ramp"), _entry(grey_only, "grey one")],
                            colour, [], None, rgb=True))


def test_a_crop_model_without_lesions_is_refused_before_predicting():
    model = ConstantModel(5.0, mode="crops")
    with pytest.raises(ValueError, match="'stub' was trained on lesion crops"):
        next(predict_models([_entry(model)], np.zeros(SHAPE), [], None))


# -- metric_rows ------------------------------------------------------------------------------
def test_an_empty_prediction_leaves_undefined_metrics_blank_with_a_note():
    rows = metric_rows("m", np.zeros(SHAPE, np.uint8), _truth(), [None])
    assert [row["lesion"] for row in rows] == ["all", 1, 2]
    for row in rows:
        assert row["dice"] == 0.0 and row["iou"] == 0.0
        for key in ("hausdorff", "hausdorff95", "centre_error", "orientation_error",
                    "shape_error"):
            assert math.isnan(row[key]), key
        assert row["note"] == EMPTY_PREDICTION
        assert tuple(row) == ROW_COLUMNS
    assert format_metric(rows[0]["hausdorff"], 1) == ""
    assert format_metric(0.25, 2) == "0.25"


def test_a_lesion_the_model_missed_is_blank_and_the_other_scored():
    pred = np.zeros(SHAPE, np.uint8)
    pred[12:20, 10:20] = 1  # lesion 1 found (two rows short), lesion 2 missed
    rows = {row["lesion"]: row for row in metric_rows("m", pred, _truth(), [None])}
    assert rows[1]["hausdorff"] == pytest.approx(2.0) and rows[1]["note"] == ""
    assert math.isnan(rows[2]["hausdorff"]) and rows[2]["note"] == EMPTY_PREDICTION
    # The image as a whole has a prediction: its distances are defined.
    assert rows["all"]["note"] == "" and math.isfinite(rows["all"]["hausdorff"])


def test_a_volume_mean_leaves_out_the_slices_with_an_empty_prediction():
    gt = np.stack([_truth()] * 3)
    pred = np.zeros_like(gt, dtype=np.uint8)
    pred[0] = gt[0] > 0  # perfect on slice 0
    pred[2, 10:20, 12:20] = 1  # slice 2: lesion 1 two columns short, lesion 2 missed
    rows = metric_rows("m", pred, gt, [0, 1, 2])
    top = rows[0]
    assert top["lesion"] == "all" and top["slice"] == "3 slices"
    assert top["note"] == f"{EMPTY_PREDICTION} on 1 of 3 slices"
    # Distances: the mean of slices 0 and 2 (slice 1 has none): on slice 2, the missed
    # lesion's far corner (49, 49) is 30 rows and columns from the prediction's (19, 19).
    assert top["hausdorff"] == pytest.approx((0.0 + 30 * math.sqrt(2)) / 2)
    # Dice is defined on every slice: 1, 0 and 2 * 80 / (80 + 200).
    assert top["dice"] == pytest.approx((1.0 + 0.0 + 160 / 280) / 3)
    per_lesion = [(row["slice"], row["lesion"], row["note"]) for row in rows[1:]]
    assert per_lesion == [(0, 1, ""), (0, 2, ""), (1, 1, EMPTY_PREDICTION),
                          (1, 2, EMPTY_PREDICTION), (2, 1, ""), (2, 2, EMPTY_PREDICTION)]


def test_metric_rows_refuses_shapes_that_differ():
    with pytest.raises(ValueError, match=r"prediction is \(8, 8\) but the ground truth"):
        metric_rows("m", np.zeros((8, 8)), _truth(), [None])


def test_a_labelled_volume_keeps_its_labels_and_rows_name_the_recist_lesion():
    # Lesion k of a labelled volume is label k, one lesion a slice: each slice holds one
    # value, yet the rows must give the volume's labels, not renumber each slice from 1.
    gt = np.zeros((3, *SHAPE), np.int32)
    gt[0, 10:20, 10:20] = 1
    gt[1, 40:50, 40:50] = 2
    gt[2, 10:20, 40:50] = 3
    lesions = [(0, _square_recist(10), 5), (1, _square_recist(40), 6)]
    rows = metric_rows("m", gt > 0, gt, [0, 1, 2], lesions)
    per_lesion = [(row["slice"], row["lesion"], row["recist"]) for row in rows[1:]]
    # The third has no RECIST: nothing to name.
    assert per_lesion == [(0, 1, 5), (1, 2, 6), (2, 3, "")]
    assert rows[0]["recist"] == ""
    # A plain mask (one value in the whole volume) still numbers each slice's components.
    plain = (gt > 0).astype(np.uint8)
    rows = metric_rows("m", plain, plain, [0, 1, 2], lesions)
    assert [row["lesion"] for row in rows[1:]] == [1, 1, 1]


def test_collect_inputs_pairs_lines_no_dock_has_paired_yet():
    image = Image(np.zeros(SHAPE, np.float32), name="ct")
    recist = _recist_layer(_recist_lines() + _recist_lines(40), ids=(0, 0, -1, -1),
                           axes=("long", "short", "", ""))
    inputs = collect_inputs(image, recist, None, [object()])
    assert [lid for _, _, lid in inputs.lesions] == [0, 1]
    np.testing.assert_allclose(inputs.lesions[1][1].centre, (44.5, 44.5))


def test_a_slice_empty_in_prediction_and_truth_says_so_beside_its_perfect_score():
    # Dice 1 where neither mask has a lesion is also what a ground truth of another scan
    # gives: the note tells such slices apart.
    from napari_recist_seg.plugin.comparison import EMPTY_BOTH

    gt = np.zeros((3, *SHAPE), np.int32)
    gt[0] = _truth()
    mask = gt > 0
    rows = metric_rows("m", mask, gt, [0, 1, 2])
    assert rows[0]["lesion"] == "all"
    assert rows[0]["note"] == f"{EMPTY_BOTH} on 2 of 3 slices"
    (row,) = metric_rows("m", np.zeros(SHAPE, bool), np.zeros(SHAPE, np.int32), [None])
    assert row["dice"] == 1.0 and row["note"] == EMPTY_BOTH
