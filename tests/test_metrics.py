import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from skimage.draw import ellipse
from skimage.measure import regionprops

from napari_recist_seg.core import metrics as metrics_module
from napari_recist_seg.core.metrics import (
    EMPTY_UNDEFINED,
    METRIC_NAMES,
    lesion_metrics,
    mean_metrics,
    segmentation_metrics,
)

SHAPE = (64, 64)


def square(top, left, size, shape=SHAPE):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def ellipse_mask(r_radius, c_radius, rotation_deg, shape=(128, 128)):
    mask = np.zeros(shape, dtype=bool)
    centre = (shape[0] // 2, shape[1] // 2)
    rr, cc = ellipse(*centre, r_radius, c_radius, shape=shape, rotation=np.radians(rotation_deg))
    mask[rr, cc] = True
    return mask


def test_keys_are_metric_names_in_order_and_floats():
    result = segmentation_metrics(square(10, 10, 20), square(12, 14, 18))
    assert tuple(result) == METRIC_NAMES
    assert all(type(value) is float for value in result.values())
    assert all(math.isfinite(value) for value in result.values())


def test_identical_masks_score_perfectly():
    mask = ellipse_mask(20, 40, 25)
    result = segmentation_metrics(mask, mask.copy())
    assert result["dice"] == 1.0
    assert result["iou"] == 1.0
    assert result["vs"] == 1.0
    assert result["thresholded_jaccard"] == 1.0
    for key in (
        "centre_error",
        "perimeter_error",
        "hausdorff",
        "hausdorff95",
        "orientation_error",
        "size_error",
        "shape_error",
    ):
        assert result[key] == pytest.approx(0.0, abs=1e-9), key


def test_half_overlapping_equal_squares():
    # 20x20 squares shifted by 10 rows: TP = FP = FN = 200.
    result = segmentation_metrics(square(20, 10, 20), square(10, 10, 20))
    assert result["dice"] == pytest.approx(0.5)
    assert result["iou"] == pytest.approx(1 / 3)
    assert result["vs"] == pytest.approx(1.0)
    assert result["thresholded_jaccard"] == 0.0
    assert result["size_error"] == pytest.approx(0.0)
    assert result["perimeter_error"] == pytest.approx(0.0)


def test_small_square_inside_large_square():
    # pred 10x10 inside gt 20x20: TP = 100, FP = 0, FN = 300.
    result = segmentation_metrics(square(15, 15, 10), square(10, 10, 20))
    assert result["dice"] == pytest.approx(200 / 500)
    assert result["iou"] == pytest.approx(100 / 400)
    assert result["vs"] == pytest.approx(1 - 300 / 500)
    assert result["size_error"] == pytest.approx(300 / 400)
    # Edge pixels: 4 * 20 - 4 = 76 and 4 * 10 - 4 = 36.
    assert result["perimeter_error"] == pytest.approx((76 - 36) / 2)
    assert result["shape_error"] == pytest.approx(0.0, abs=1e-9)
    # Both boxes are centred on (19.5, 19.5).
    assert result["centre_error"] == pytest.approx(0.0)


def test_volumetric_similarity_asymmetric_errors():
    gt = square(10, 10, 20)  # 400 px
    pred = np.zeros(SHAPE, dtype=bool)
    pred[10:30, 10:25] = True  # 300 px inside gt
    pred[40:50, 40:50] = True  # 100 px outside gt
    # TP = 300, FP = 100, FN = 100 -> VS = 1 even though the overlap is imperfect.
    result = segmentation_metrics(pred, gt)
    assert result["vs"] == pytest.approx(1.0)
    assert result["dice"] == pytest.approx(600 / 800)
    assert result["iou"] == pytest.approx(300 / 500)


def test_thresholded_jaccard_keeps_high_iou():
    gt = square(10, 10, 20)
    pred = np.zeros(SHAPE, dtype=bool)
    pred[10:30, 10:28] = True  # IoU = 360 / 400
    result = segmentation_metrics(pred, gt)
    assert result["iou"] == pytest.approx(0.9)
    assert result["thresholded_jaccard"] == pytest.approx(0.9)


@pytest.mark.parametrize("shift", [(0, 6), (5, 0), (3, 4), (-6, 8)])
def test_shifted_square_centre_and_hausdorff_equal_the_shift(shift):
    gt = square(20, 20, 16)
    pred = square(20 + shift[0], 20 + shift[1], 16)
    distance = math.hypot(*shift)
    result = segmentation_metrics(pred, gt)
    assert result["centre_error"] == pytest.approx(distance)
    assert result["hausdorff"] == pytest.approx(distance)
    assert 0 < result["hausdorff95"] <= distance + 1e-9
    assert result["orientation_error"] == pytest.approx(0.0, abs=1e-6)
    assert result["size_error"] == pytest.approx(0.0)


def test_perimeter_counts_pixels_on_the_image_border():
    full = np.ones((10, 10), dtype=bool)
    empty_centre = full.copy()
    empty_centre[1:-1, 1:-1] = False  # a ring made only of border pixels
    inner = np.zeros((10, 10), dtype=bool)
    inner[3:7, 3:7] = True  # 16 px, 12 of them edge pixels
    # The full image has 36 edge pixels, all on the image border.
    assert segmentation_metrics(full, inner)["perimeter_error"] == pytest.approx((36 - 12) / 2)
    assert segmentation_metrics(empty_centre, full)["perimeter_error"] == pytest.approx(0.0)


def brute_force_hausdorff(a, b):
    points_a = np.argwhere(metrics_module._edge_pixels(a))
    points_b = np.argwhere(metrics_module._edge_pixels(b))
    distances = cdist(points_a, points_b)
    a_to_b = distances.min(axis=1)
    b_to_a = distances.min(axis=0)
    hd = max(a_to_b.max(), b_to_a.max())
    hd95 = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    return hd, hd95


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("ratio", [0, 10**9])  # force the k-d tree, then distance maps
def test_hausdorff_matches_pairwise_distances(seed, swap, ratio, monkeypatch):
    monkeypatch.setattr(metrics_module, "_KDTREE_COST_RATIO", ratio)
    rng = np.random.default_rng(seed)
    pred = np.zeros((40, 50), dtype=bool)
    gt = np.zeros((40, 50), dtype=bool)
    pred[rng.integers(5, 15) : rng.integers(20, 38), rng.integers(0, 20) : rng.integers(25, 50)] = 1
    gt[rng.integers(0, 20) : rng.integers(25, 40), rng.integers(5, 20) : rng.integers(30, 45)] = 1
    pred |= rng.random(pred.shape) > 0.97  # scattered pixels, some far from the rest
    if swap:
        pred, gt = gt, pred
    hd, hd95 = brute_force_hausdorff(pred, gt)
    result = segmentation_metrics(pred, gt)
    assert result["hausdorff"] == pytest.approx(hd)
    assert result["hausdorff95"] == pytest.approx(hd95)


@pytest.mark.parametrize("rotation", [15.0, 30.0, 60.0, -45.0])
def test_rotated_ellipse_orientation_error(rotation):
    base = ellipse_mask(15, 45, 0.0)
    rotated = ellipse_mask(15, 45, rotation)
    result = segmentation_metrics(rotated, base)
    assert result["orientation_error"] == pytest.approx(abs(rotation), abs=1.0)
    # Rotation keeps the shape, so eccentricity and area barely change.
    assert result["shape_error"] < 0.01
    assert result["size_error"] < 0.02


def test_orientation_error_wraps_around_90_degrees():
    # Near-horizontal ellipses tilted +1 and -1 degree: regionprops reports about +89 and -89.
    a = ellipse_mask(12, 55, 1.0)
    b = ellipse_mask(12, 55, -1.0)
    orientation_a = math.degrees(regionprops(a.astype(np.uint8))[0].orientation)
    orientation_b = math.degrees(regionprops(b.astype(np.uint8))[0].orientation)
    assert abs(orientation_a) > 85 and abs(orientation_b) > 85
    assert orientation_a * orientation_b < 0
    result = segmentation_metrics(a, b)
    assert result["orientation_error"] == pytest.approx(2.0, abs=0.5)
    assert 0.0 <= result["orientation_error"] <= 90.0


def test_orthogonal_ellipses_have_90_degree_error_and_shape_error():
    horizontal = ellipse_mask(15, 45, 0.0)
    vertical = ellipse_mask(45, 15, 0.0)
    assert segmentation_metrics(horizontal, vertical)["orientation_error"] == pytest.approx(
        90.0, abs=0.5
    )
    disc = ellipse_mask(30, 30, 0.0)
    expected = abs(
        regionprops(horizontal.astype(np.uint8))[0].eccentricity
        - regionprops(disc.astype(np.uint8))[0].eccentricity
    )
    result = segmentation_metrics(horizontal, disc)
    assert result["shape_error"] == pytest.approx(expected)
    assert result["shape_error"] > 0.8


def test_disconnected_mask_is_one_region():
    # Two blobs on a diagonal: as a whole, the mask is elongated at 45 degrees.
    pred = square(5, 5, 8, shape=(60, 60)) | square(45, 45, 8, shape=(60, 60))
    gt = np.zeros((60, 60), dtype=bool)
    gt[20:40, 5:55] = True  # horizontal bar, orientation 90 degrees
    result = segmentation_metrics(pred, gt)
    assert result["orientation_error"] == pytest.approx(45.0, abs=1.0)
    # Box centres (28.5, 28.5) and (29.5, 29.5).
    assert result["centre_error"] == pytest.approx(math.sqrt(2.0))


def test_both_empty_is_perfect():
    empty = np.zeros(SHAPE, dtype=bool)
    result = segmentation_metrics(empty, empty)
    for key in ("dice", "iou", "vs", "thresholded_jaccard"):
        assert result[key] == 1.0, key
    for key in (
        "centre_error",
        "perimeter_error",
        "hausdorff",
        "hausdorff95",
        "orientation_error",
        "size_error",
        "shape_error",
    ):
        assert result[key] == 0.0, key


def test_empty_prediction_gets_finite_worst_values():
    gt = square(10, 10, 20)
    empty = np.zeros(SHAPE, dtype=bool)
    diagonal = math.hypot(*SHAPE)
    result = segmentation_metrics(empty, gt)
    for key in ("dice", "iou", "vs", "thresholded_jaccard"):
        assert result[key] == 0.0, key
    for key in ("centre_error", "hausdorff", "hausdorff95"):
        assert result[key] == pytest.approx(diagonal), key
    assert result["perimeter_error"] == pytest.approx(76 / 2)
    assert result["orientation_error"] == 90.0
    assert result["size_error"] == 1.0
    assert result["shape_error"] == 1.0


def test_empty_reference_size_error_is_covered_fraction():
    pred = square(10, 10, 16)  # 256 px of 4096
    empty = np.zeros(SHAPE, dtype=bool)
    result = segmentation_metrics(pred, empty)
    assert result["dice"] == 0.0
    assert result["vs"] == 0.0
    assert result["hausdorff"] == pytest.approx(math.hypot(*SHAPE))
    assert result["size_error"] == pytest.approx(256 / 4096)
    assert result["orientation_error"] == 90.0
    assert result["shape_error"] == 1.0
    assert all(math.isfinite(value) for value in result.values())


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m.astype(np.uint8) * 255,
        lambda m: m.astype(np.int64) * 3,
        lambda m: m.astype(np.float32) * 0.5,
        lambda m: np.where(m, -1.0, 0.0),
        lambda m: m.astype(int).tolist(),
    ],
)
def test_non_bool_dtypes_match_bool(convert):
    pred = ellipse_mask(20, 35, 10)
    gt = ellipse_mask(22, 30, 40)
    expected = segmentation_metrics(pred, gt)
    assert segmentation_metrics(convert(pred), convert(gt)) == expected


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="pred and gt"):
        segmentation_metrics(np.zeros((10, 10)), np.zeros((10, 11)))


@pytest.mark.parametrize("name", ["pred", "gt"])
@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 2)),
        np.zeros(16),
        np.zeros((0, 4)),
        np.array([[0.0, np.nan], [1.0, 0.0]]),
        np.array([[0.0, np.inf], [1.0, 0.0]]),
        np.array([["a", "b"], ["c", "d"]]),
    ],
)
def test_bad_input_raises_naming_the_argument(name, bad):
    good = np.zeros(bad.shape if bad.ndim == 2 and bad.size else (2, 2), dtype=bool)
    args = {"pred": good, "gt": good, name: bad}
    with pytest.raises(ValueError, match=f"^{name} "):
        segmentation_metrics(args["pred"], args["gt"])


def test_mean_metrics_averages_each_key():
    a = segmentation_metrics(square(10, 10, 20), square(10, 10, 20))
    b = segmentation_metrics(np.zeros(SHAPE), square(10, 10, 20))
    mean = mean_metrics([a, b])
    assert tuple(mean) == METRIC_NAMES
    assert mean["dice"] == pytest.approx(0.5)
    assert mean["hausdorff"] == pytest.approx(math.hypot(*SHAPE) / 2)
    assert mean_metrics(iter([a]))["dice"] == 1.0


def test_mean_metrics_rejects_empty_and_mismatched_input():
    with pytest.raises(ValueError, match="metrics"):
        mean_metrics([])
    with pytest.raises(ValueError, match=r"metrics\[1\]"):
        mean_metrics([{"dice": 1.0, "iou": 1.0}, {"dice": 0.5}])


def test_lesion_metrics_scores_each_lesion_in_its_window():
    from napari_recist_seg.core.metrics import lesion_labels, lesion_metrics

    gt = np.zeros((40, 60), np.int32)
    gt[5:15, 5:15] = 1
    gt[20:30, 35:55] = 2
    pred = gt > 0
    pred[20:30, 35:45] = False  # half of lesion 2 missed
    pred[0:3, 50:60] = True  # a false positive far from both lesions
    out = dict(lesion_metrics(pred, gt))
    assert sorted(out) == [1, 2]
    assert out[1]["dice"] == pytest.approx(1.0)  # the far false positive is outside its window
    assert out[2]["dice"] == pytest.approx(2 * 100 / (100 + 200))
    # A plain 0/1 mask: each 8-connected component is a lesion, in raster order.
    labels = lesion_labels((gt > 0).astype(np.uint8))
    np.testing.assert_array_equal(labels, gt)
    touching = np.zeros((10, 10), bool)
    touching[2:4, 2:4] = touching[4:6, 4:6] = True  # corners touch: one lesion
    assert lesion_labels(touching).max() == 1
    with pytest.raises(ValueError, match="differ in shape"):
        lesion_metrics(pred[:, :50], gt)
    with pytest.raises(ValueError, match="2D"):
        lesion_labels(np.zeros((2, 4, 4)))


# -- empty="nan": undefined metrics stay undefined ---------------------------------------------
@pytest.mark.parametrize("swap", [False, True])
def test_empty_nan_leaves_distances_and_shape_undefined(swap):
    gt = square(10, 10, 20)
    empty = np.zeros(SHAPE, dtype=bool)
    pred, truth = (gt, empty) if swap else (empty, gt)
    worst = segmentation_metrics(pred, truth)
    result = segmentation_metrics(pred, truth, empty="nan")
    assert tuple(result) == METRIC_NAMES
    for key in EMPTY_UNDEFINED:
        assert math.isnan(result[key]), key
        assert math.isfinite(worst[key]), key
    # Overlap is defined: nothing overlaps. The perimeter error follows its formula.
    for key in ("dice", "iou", "vs", "thresholded_jaccard", "perimeter_error"):
        assert result[key] == worst[key], key
    assert result["dice"] == 0.0 and result["perimeter_error"] == (4 * 20 - 4) / 2
    # An empty reference leaves the relative size error undefined; an empty prediction
    # misses all of the lesion's area.
    if swap:
        assert math.isnan(result["size_error"])
    else:
        assert result["size_error"] == 1.0


def test_empty_nan_changes_nothing_when_both_or_neither_is_empty():
    a, b = square(10, 10, 20), square(14, 12, 16)
    assert segmentation_metrics(a, b, empty="nan") == segmentation_metrics(a, b)
    none = np.zeros(SHAPE, dtype=bool)
    assert segmentation_metrics(none, none, empty="nan") == segmentation_metrics(none, none)


def test_unknown_empty_mode_is_refused():
    with pytest.raises(ValueError, match="empty must be 'worst' or 'nan', got 'zero'"):
        segmentation_metrics(square(1, 1, 3), square(1, 1, 3), empty="zero")


def test_mean_metrics_leaves_out_undefined_values():
    defined = {"dice": 0.5, "hausdorff": 4.0, "shape_error": float("nan")}
    missed = {"dice": 0.0, "hausdorff": float("nan"), "shape_error": float("nan")}
    mean = mean_metrics([defined, missed, {**defined, "hausdorff": 2.0}])
    assert mean["dice"] == pytest.approx(1 / 3)
    assert mean["hausdorff"] == pytest.approx(3.0)  # over the two images that define it
    assert math.isnan(mean["shape_error"])  # no image defines it


def test_lesion_metrics_passes_the_empty_mode_on():
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[5:15, 5:15] = 1
    labels[40:50, 40:50] = 2
    pred = labels == 1  # lesion 2 missed
    worst = dict(lesion_metrics(pred, labels))
    undefined = dict(lesion_metrics(pred, labels, empty="nan"))
    assert undefined[1] == worst[1] and undefined[1]["dice"] == 1.0
    assert math.isnan(undefined[2]["hausdorff"]) and math.isfinite(worst[2]["hausdorff"])


def test_truth_under_recist_keeps_the_lesion_its_axes_cross():
    from napari_recist_seg.core.metrics import truth_under_recist

    truth = np.zeros((40, 60), np.uint8)
    truth[5:15, 5:20] = 255   # the measured lesion
    truth[25:35, 40:55] = 255  # a neighbour on the same slice
    own = truth_under_recist(truth, [[10, 5], [10, 19]], [[5, 12], [14, 12]])
    assert own[10, 10] and not own[30, 45]
    assert own.sum() == 10 * 15
    # Both lesions crossed: both kept; axes that cross nothing: the whole truth.
    both = truth_under_recist(truth, [[10, 10], [30, 45]])
    assert both.sum() == 2 * 150
    assert truth_under_recist(truth, [[20, 0], [20, 59]]).sum() == 2 * 150
    # Labels are kept apart even when they touch.
    labels = np.zeros((20, 20), np.int32)
    labels[:, :10], labels[:, 10:] = 1, 2
    assert truth_under_recist(labels, [[5, 2], [5, 8]]).sum() == 20 * 10


@pytest.mark.parametrize("force_tree", [False, True])
def test_distances_in_mm_follow_each_axis_pixel_size(monkeypatch, force_tree):
    """Squares 4 rows and 2 columns apart: with 0.5 x 2 mm pixels every distance is
    measured in mm along each axis, by either way of finding the nearest edge."""
    if force_tree:
        monkeypatch.setattr(metrics_module, "_KDTREE_COST_RATIO", 0.0)
    pred, gt = square(24, 22, 12), square(20, 20, 12)
    px = segmentation_metrics(pred, gt)
    mm = segmentation_metrics(pred, gt, spacing=(0.5, 2.0))
    assert px["centre_error"] == pytest.approx(math.hypot(4, 2))
    assert mm["centre_error"] == pytest.approx(math.hypot(4 * 0.5, 2 * 2.0))
    # Brute force over the edge pixels, in mm.
    edges = [np.argwhere(metrics_module._edge_pixels(m)) * (0.5, 2.0) for m in (pred, gt)]
    d = cdist(*edges)
    assert mm["hausdorff"] == pytest.approx(max(d.min(axis=1).max(), d.min(axis=0).max()))
    assert mm["dice"] == px["dice"]
    empty = segmentation_metrics(np.zeros(SHAPE, bool), gt, spacing=(0.5, 2.0))
    assert empty["hausdorff"] == pytest.approx(math.hypot(64 * 0.5, 64 * 2.0))
    lesion = lesion_metrics(pred, gt.astype(int), spacing=(0.5, 2.0))[0][1]
    assert lesion["centre_error"] == pytest.approx(mm["centre_error"])
    for bad in ((0.5,), (0.0, 1.0), (np.nan, 1.0)):
        with pytest.raises(ValueError, match="spacing must be two positive"):
            segmentation_metrics(pred, gt, spacing=bad)
