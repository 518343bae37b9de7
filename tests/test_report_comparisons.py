"""The benchmark report's paired comparisons, from scores as the benchmark stores them."""

from types import SimpleNamespace

import numpy as np

from napari_recist_seg.core.metrics import METRIC_NAMES
from napari_recist_seg.learning.report import write_report
from napari_recist_seg.learning.statistics import (
    compare_methods,
    default_pairs,
    json_floats,
    per_image_means,
    seed_summary,
)


def _per_seed(dice: np.ndarray) -> list[list[dict]]:
    return [[{m: (float(v) if m == "dice" else 0.0) for m in METRIC_NAMES} for v in row]
            for row in dice]


def _results(n_seeds: int, with_statistics: bool = True) -> dict:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.8, size=20)
    gap = rng.uniform(0.03, 0.08, size=20)
    gap[[2, 9]] *= -1  # a1 better on two images only
    noise = np.tile([1.0, -1.0], 10) * rng.uniform(0.01, 0.05, size=20)
    scores = {
        "multitask": _per_seed(np.stack([base + gap + 0.002 * s for s in range(n_seeds)])),
        "a1": _per_seed(np.stack([base + 0.001 * s for s in range(n_seeds)])),
        "ellipse": _per_seed(base[None, :] + noise),
        "quarter_ellipse": _per_seed(base[None, :] - 0.3),
    }
    methods = {}
    for method, per_seed in scores.items():
        s = seed_summary(per_seed)
        metrics = {m: {"mean": 0.0, "std": 0.0} for m in METRIC_NAMES}
        metrics["dice"] = {"mean": s["mean"], "std": s["std"]}
        methods[method] = {"metrics": metrics}
        if with_statistics:
            methods[method].update(per_image_dice=json_floats(per_image_means(per_seed)),
                                   seeds=s)
    block = {"n_test": 20, "methods": methods}
    if with_statistics:
        block["comparisons"] = compare_methods(scores, default_pairs(list(scores)))
    training = {kind: {"epochs_run": 2.0, "best_epoch": 2.0, "seconds_to_best": 5.0,
                       "train_seconds": 9.0, "images_per_second": 3.0}
                for kind in ("multitask", "a1")}
    return {"config": {"seeds": n_seeds, "encoder": "resnet18", "size": 32, "epochs": 2,
                       "train_dir": "train", "pseudo_mask": "ellipse"},
            "n_train": 40, "training": training, "histories": {},
            "tests": {"test": block}, "total_seconds": 12.0}


def _report(tmp_path, results) -> str:
    path = write_report(tmp_path, results, [SimpleNamespace(name="test")], {})
    return path.read_text(encoding="utf-8")


def test_report_has_a_paired_comparisons_table_with_the_numbers(tmp_path):
    results = _results(n_seeds=3)
    text = _report(tmp_path, results)
    assert "### Paired comparisons" in text
    assert ("| A | B | images | mean A | mean B | A better on | B better on | Wilcoxon p | "
            "verdict |") in text
    comparisons = {(c["a"], c["b"]): c for c in results["tests"]["test"]["comparisons"]}
    c = comparisons[("multitask", "a1")]
    assert c["better"] == "a" and c["wins_a"] == 18 and c["p_value"] < 0.01
    p = f"{c['p_value']:.1e}" if c["p_value"] < 0.001 else f"{c['p_value']:.3f}"
    row = (f"| multitask | a1 | 20 | {c['mean_a']:.4f} | {c['mean_b']:.4f} | 18 | 2 | {p} | "
           f"multitask better (p={p}) |")
    assert row in text
    # The ellipse is the a1 model's values give or take noise of either sign.
    tie = comparisons[("a1", "ellipse")]
    assert tie["better"] is None and tie["p_value"] > 0.05
    assert "| a1 | ellipse | 20 |" in text
    line = next(t for t in text.splitlines() if t.startswith("| a1 | ellipse |"))
    assert line.endswith("| no significant difference |")
    # The quarter ellipse is far worse than every model.
    assert "| a1 | quarter_ellipse | 20 |" in text
    assert "a1 better (p=" in text
    assert text.count("Seeds: 3; mean ± std over seeds.") == 1
    assert "indicative only" not in text


def test_report_says_claims_from_fewer_than_three_seeds_are_indicative(tmp_path):
    text = _report(tmp_path, _results(n_seeds=2))
    assert "Seeds: 2; mean ± std over seeds." in text
    assert "indicative only (fewer than 3 seeds)" in text


def test_report_of_older_results_without_comparisons_skips_the_section(tmp_path):
    text = _report(tmp_path, _results(n_seeds=1, with_statistics=False))
    assert "## Test folder `test` (20 images, real masks)" in text
    assert "Paired comparisons" not in text and "Seeds:" not in text


def test_empty_masks_are_counted_and_their_stand_in_distances_said(tmp_path):
    from napari_recist_seg.core.metrics import segmentation_metrics
    from napari_recist_seg.learning.benchmark import _method_entry

    truth = np.zeros((20, 20), bool)
    truth[5:12, 6:14] = True
    found, missed, astray = truth.copy(), np.zeros_like(truth), np.roll(truth, 10, axis=1)
    # Seed 0 misses one lesion, seed 1 two; a mask beside the lesion is not empty.
    per_seed = [[segmentation_metrics(p, truth) for p in (found, missed, astray, found)],
                [segmentation_metrics(p, truth) for p in (missed, missed, found, astray)]]
    entry = _method_entry(per_seed)
    assert entry["empty_masks"] == 1.5
    assert entry["metrics"]["hausdorff"]["mean"] > 0 and len(entry["per_image_dice"]) == 4
    results = _results(n_seeds=2)
    results["tests"]["test"]["methods"]["a1"]["empty_masks"] = 1.5
    text = _report(tmp_path, results)
    assert ("Empty masks, where the truth is not (mean over seeds): a1 1.5 of 20. Each "
            "scores Dice 0, its centre error and Hausdorff distances the diagonal") in text
    del results["tests"]["test"]["methods"]["a1"]["empty_masks"]
    assert "Empty masks" not in _report(tmp_path, results)
