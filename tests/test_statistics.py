"""Seed summaries and paired per-image comparisons of benchmark scores."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from napari_recist_seg.learning.statistics import (
    compare_methods,
    default_pairs,
    json_floats,
    paired_comparison,
    per_image_means,
    seed_summary,
)


def rows(values, metric="dice", **other):
    """Per-image metric dicts holding ``values`` under ``metric``."""
    return [{metric: float(v), **other} for v in values]


def seeds(matrix, metric="dice"):
    return [rows(r, metric) for r in matrix]


@pytest.fixture
def a_beats_b():
    """Two seeds of 20 images: A better than B on 18 images, worse on 2."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.4, 0.8, size=20)
    gap = rng.uniform(0.02, 0.1, size=20)
    gap[[4, 11]] *= -1  # B better on these two
    a = np.stack([base + gap + 0.01, base + gap - 0.01])
    b = np.stack([base + 0.005, base - 0.005])
    return a, b


def test_per_image_means_average_over_seeds_leaving_nan_out():
    per_seed = seeds([[0.2, np.nan, 0.5, np.nan], [0.4, 0.6, 0.7, np.nan]])
    means = per_image_means(per_seed)
    assert means[:3] == pytest.approx([0.3, 0.6, 0.6])
    assert math.isnan(means[3])
    assert per_image_means(seeds([[1.0, 2.0]]), "dice") == pytest.approx([1.0, 2.0])


def test_per_image_means_rejects_seeds_with_other_images_and_missing_metrics():
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        per_image_means(seeds([[0.1, 0.2], [0.1, 0.2, 0.3]]))
    with pytest.raises(ValueError, match="'iou'"):
        per_image_means(seeds([[0.1]]), "iou")
    with pytest.raises(ValueError, match="at least one seed"):
        per_image_means([])


def test_a_better_on_18_of_20_images_is_significant_with_scipys_p_value(a_beats_b):
    a, b = a_beats_b
    c = paired_comparison(seeds(a), seeds(b))
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    expected = stats.wilcoxon(ma - mb, zero_method="wilcox")
    assert c["n_images"] == 20
    assert (c["wins_a"], c["wins_b"], c["ties"]) == (18, 2, 0)
    assert c["p_value"] == pytest.approx(float(expected.pvalue))
    assert c["statistic"] == pytest.approx(float(expected.statistic))
    assert c["p_value"] < 0.01
    assert c["better"] == "a"
    assert c["mean_a"] == pytest.approx(ma.mean())
    assert c["mean_b"] == pytest.approx(mb.mean())
    assert c["mean_difference"] == pytest.approx((ma - mb).mean())
    assert c["median_difference"] == pytest.approx(np.median(ma - mb))
    assert c["test"] == "Wilcoxon signed-rank (two-sided)"
    assert c["metric"] == "dice" and c["note"] is None
    # Swapping the two methods swaps the verdict, not the p-value.
    swapped = paired_comparison(seeds(b), seeds(a))
    assert swapped["better"] == "b" and swapped["p_value"] == pytest.approx(c["p_value"])
    assert (swapped["wins_a"], swapped["wins_b"]) == (2, 18)


def test_lower_is_better_metrics_flip_the_winner(a_beats_b):
    a, b = a_beats_b
    c = paired_comparison(seeds(a, "hausdorff"), seeds(b, "hausdorff"), metric="hausdorff",
                          higher_is_better=False)
    assert c["better"] == "b" and (c["wins_a"], c["wins_b"]) == (2, 18)
    assert c["metric"] == "hausdorff"


def test_no_clear_winner_is_not_significant():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.8, size=20)
    signs = np.tile([1.0, -1.0], 10)
    a = base + signs * rng.uniform(0.01, 0.05, size=20)
    c = paired_comparison(seeds([a]), seeds([base]))
    assert c["p_value"] == pytest.approx(
        float(stats.wilcoxon(a - base, zero_method="wilcox").pvalue))
    assert c["p_value"] >= 0.05 and c["better"] is None
    assert c["wins_a"] == 10 and c["wins_b"] == 10


def test_identical_methods_give_p_one_without_error():
    values = [[0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.3]]
    c = paired_comparison(seeds(values), seeds(values))
    assert c["p_value"] == 1.0 and c["statistic"] == 0.0
    assert c["better"] is None
    assert (c["wins_a"], c["wins_b"], c["ties"]) == (0, 0, 7)
    assert "equal on every image" in c["note"]


def test_ties_are_left_out_of_the_ranks():
    a = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.3, 0.2, 0.55, 0.65])
    b = a.copy()
    b[:8] -= np.linspace(0.01, 0.08, 8)  # A better on 8, tied on 2
    c = paired_comparison(seeds([a]), seeds([b]))
    assert (c["wins_a"], c["wins_b"], c["ties"]) == (8, 0, 2)
    assert c["n_images"] == 10
    expected = stats.wilcoxon(a - b, zero_method="wilcox")
    assert c["p_value"] == pytest.approx(float(expected.pvalue))
    assert c["better"] == "a"


def test_few_differing_images_get_a_note_and_are_still_tested():
    a = [[0.9, 0.8, 0.7, 0.6, 0.5]]
    b = [[0.8, 0.7, 0.6, 0.5, 0.4]]
    c = paired_comparison(seeds(a), seeds(b))
    assert c["wins_a"] == 5
    assert "only 5 images differ" in c["note"]
    assert c["p_value"] == pytest.approx(0.0625)  # exact: 2 / 2**5
    assert c["better"] is None


def test_pairs_with_nan_are_dropped():
    a = [[0.9, np.nan, 0.7, 0.6], [0.9, np.nan, 0.7, np.nan]]
    b = [[0.8, 0.7, np.nan, 0.5]]
    c = paired_comparison(seeds(a), seeds(b))
    # Image 1 is NaN in every seed of A, image 2 in B; image 3 keeps A's one defined seed.
    assert c["n_images"] == 2
    assert c["mean_a"] == pytest.approx((0.9 + 0.6) / 2)
    assert c["mean_b"] == pytest.approx((0.8 + 0.5) / 2)
    nothing = paired_comparison(seeds([[np.nan]]), seeds([[0.5]]))
    assert nothing["n_images"] == 0 and nothing["p_value"] is None
    assert nothing["mean_a"] is None and nothing["better"] is None
    json.dumps(nothing, allow_nan=False)


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match="a has 3 images, method b has 2"):
        paired_comparison(seeds([[0.1, 0.2, 0.3]]), seeds([[0.1, 0.2]]))


def test_seed_summary_matches_the_benchmark_tables_population_std():
    per_seed = seeds([[0.2, 0.4], [0.6, 0.8], [0.5, 0.5]])
    s = seed_summary(per_seed)
    assert s["n_seeds"] == 3
    assert s["seed_means"] == pytest.approx([0.3, 0.7, 0.5])
    assert s["mean"] == pytest.approx(0.5)
    assert s["std"] == pytest.approx(np.std([0.3, 0.7, 0.5]))  # ddof=0
    assert s["std"] != pytest.approx(np.std([0.3, 0.7, 0.5], ddof=1))
    one = seed_summary(seeds([[0.2, 0.4]]))
    assert one["std"] == 0.0 and one["n_seeds"] == 1


def test_seed_summary_agrees_with_the_benchmark_aggregate():
    from napari_recist_seg.core.metrics import METRIC_NAMES
    from napari_recist_seg.learning.benchmark import _aggregate

    rng = np.random.default_rng(5)
    per_seed = [[{m: float(rng.uniform()) for m in METRIC_NAMES} for _ in range(6)]
                for _ in range(3)]
    table = _aggregate(per_seed)["dice"]
    s = seed_summary(per_seed)
    assert s["mean"] == pytest.approx(table["mean"]) and s["std"] == pytest.approx(table["std"])


def test_seed_summary_leaves_nan_images_out_and_stays_json():
    s = seed_summary(seeds([[0.2, np.nan], [np.nan, np.nan], [0.4, 0.6]]))
    assert s["seed_means"] == [pytest.approx(0.2), None, pytest.approx(0.5)]
    assert s["mean"] == pytest.approx(0.35) and s["n_seeds"] == 3
    json.dumps(s, allow_nan=False)


def test_json_floats_write_nan_as_none():
    assert json_floats(np.array([0.5, np.nan])) == [0.5, None]
    assert all(type(v) is float for v in json_floats(np.array([1, 2])))


def test_default_pairs_hold_the_questions_a_reader_asks():
    methods = ["multitask", "a1", "coseg", "prompted", "ellipse", "quarter_ellipse"]
    pairs = default_pairs(methods)
    for kind in ("multitask", "a1", "coseg", "prompted"):
        assert (kind, "quarter_ellipse") in pairs and (kind, "ellipse") in pairs
    assert ("multitask", "a1") in pairs and ("multitask", "coseg") in pairs
    assert ("prompted", "a1") in pairs and ("prompted", "multitask") in pairs
    assert ("prompted", "coseg") in pairs
    # Each pair once, never a method against itself, and no other pair.
    assert len({frozenset(p) for p in pairs}) == len(pairs) == 4 * 2 + 2 + 3
    assert ("ellipse", "quarter_ellipse") not in pairs
    assert ("a1", "coseg") not in pairs


def test_default_pairs_only_name_methods_present():
    assert default_pairs(["a1", "coseg", "ellipse", "quarter_ellipse"]) == [
        ("a1", "quarter_ellipse"), ("a1", "ellipse"),
        ("coseg", "quarter_ellipse"), ("coseg", "ellipse")]
    assert default_pairs(["multitask", "a1"]) == [("multitask", "a1")]
    assert default_pairs(["ellipse", "quarter_ellipse"]) == []


def test_compare_methods_names_the_pairs_and_skips_absent_methods(a_beats_b):
    a, b = a_beats_b
    scores = {"multitask": seeds(a), "a1": seeds(b), "ellipse": seeds(b[:1])}
    out = compare_methods(scores, [("multitask", "a1"), ("coseg", "a1"),
                                   ("a1", "ellipse")])
    assert [(c["a"], c["b"]) for c in out] == [("multitask", "a1"), ("a1", "ellipse")]
    assert out[0]["better"] == "a"
    assert out[0]["p_value"] == pytest.approx(paired_comparison(seeds(a), seeds(b))["p_value"])
    json.dumps(out, allow_nan=False)


def test_compare_methods_knows_which_metrics_are_errors(a_beats_b):
    a, b = a_beats_b
    scores = {"multitask": seeds(a, "hausdorff"), "a1": seeds(b, "hausdorff")}
    (c,) = compare_methods(scores, [("multitask", "a1")], metric="hausdorff")
    assert c["better"] == "b"
