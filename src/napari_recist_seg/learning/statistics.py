"""Statistics for benchmark claims: summaries over seeds and paired per-image tests.

A benchmark scores every method on the same test images, once per training seed. Two kinds
of numbers come out of that here:

- ``seed_summary``: the mean over images per seed, then the mean and the (population)
  standard deviation of those seed means, as in the benchmark's metric tables.
- ``paired_comparison``: whether method A beats method B image by image. Each image's
  metric is first averaged over seeds (``per_image_means``); the pairs of values are then
  compared with the Wilcoxon signed-rank test (two-sided), which needs no normality and
  uses the pairing that unpaired means throw away.

Values are NumPy floats internally; the dictionaries returned hold plain Python floats,
and ``None`` where a value is undefined, so that they can be written to JSON as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "HIGHER_IS_BETTER",
    "SIGNIFICANCE_LEVEL",
    "compare_methods",
    "default_pairs",
    "json_floats",
    "paired_comparison",
    "per_image_means",
    "seed_summary",
]

#: p-value below which a comparison names a better method.
SIGNIFICANCE_LEVEL = 0.05

#: Below this many non-zero differences the signed-rank test cannot reach p < 0.05
#: (two-sided, exact): with 5 pairs the smallest p-value is 2 / 2**5 = 0.0625.
_MIN_NONZERO_PAIRS = 6

#: Metrics where a larger value is a better segmentation; for the others (distances and
#: errors) smaller is better.
HIGHER_IS_BETTER: frozenset[str] = frozenset({"dice", "iou", "vs", "thresholded_jaccard"})

_REFERENCES = ("quarter_ellipse", "ellipse")
_TEST_NAME = "Wilcoxon signed-rank (two-sided)"


def _value(x) -> float | None:
    """A plain float, or None for NaN (JSON has no NaN)."""
    x = float(x)
    return None if math.isnan(x) else x


def json_floats(values: Iterable) -> list[float | None]:
    """Plain floats for JSON, NaN written as None.

    Parameters
    ----------
    values : iterable of float

    Returns
    -------
    list of float or None
    """
    return [_value(v) for v in values]


def _matrix(per_seed: Sequence[Sequence[Mapping[str, float]]], metric: str) -> np.ndarray:
    """Values of ``metric`` as an array of shape (seeds, images)."""
    if len(per_seed) == 0:
        raise ValueError("per_seed must hold at least one seed, got an empty list")
    lengths = [len(rows) for rows in per_seed]
    if len(set(lengths)) != 1:
        raise ValueError(f"every seed must score the same images, got {lengths} images per "
                         f"seed")
    try:
        return np.array([[float(row[metric]) for row in rows] for rows in per_seed],
                        dtype=float).reshape(len(per_seed), lengths[0])
    except KeyError:
        raise ValueError(f"metric {metric!r} is missing from the per-image results") from None


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean leaving NaN out; NaN where every value is NaN (without numpy's warning)."""
    defined = ~np.isnan(values)
    count = defined.sum(axis=axis)
    total = np.where(defined, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def per_image_means(per_seed: Sequence[Sequence[Mapping[str, float]]],
                    metric: str = "dice") -> np.ndarray:
    """Each image's metric averaged over seeds.

    Parameters
    ----------
    per_seed : list of list of dict
        One list per seed, each holding one metric dictionary per image (as
        ``core.metrics.segmentation_metrics`` returns), the images in the same order in
        every seed.
    metric : str
        Key of the metric.

    Returns
    -------
    ndarray of float, shape (images,)
        The mean over the seeds where the image's value is defined: a NaN in one seed is
        left out of that image's mean, and an image that is NaN in every seed stays NaN.

    Raises
    ------
    ValueError
        If there is no seed, if the seeds hold different numbers of images, or if `metric`
        is missing.
    """
    return _nanmean(_matrix(per_seed, metric), axis=0)


def seed_summary(per_seed: Sequence[Sequence[Mapping[str, float]]],
                 metric: str = "dice") -> dict:
    """Mean and standard deviation over seeds of the per-seed mean over images.

    Parameters
    ----------
    per_seed : list of list of dict
        As in `per_image_means`.
    metric : str
        Key of the metric.

    Returns
    -------
    dict
        ``mean``
            Mean of the seed means.
        ``std``
            Population standard deviation (``ddof=0``) of the seed means, as in the
            benchmark's metric tables; 0 for a single seed.
        ``n_seeds``
            Number of seeds.
        ``seed_means``
            Each seed's mean over its images.

        Each seed's mean leaves out the images where the metric is NaN (as
        ``core.metrics.mean_metrics`` does); without NaN values this is the plain mean.
        Undefined values (a seed where every image is NaN) are None, and the mean and std
        are then taken over the other seeds.

    Raises
    ------
    ValueError
        As `per_image_means`.
    """
    seed_means = _nanmean(_matrix(per_seed, metric), axis=1)
    defined = seed_means[~np.isnan(seed_means)]
    return {
        "mean": _value(defined.mean()) if defined.size else None,
        "std": _value(defined.std(ddof=0)) if defined.size else None,
        "n_seeds": len(seed_means),
        "seed_means": json_floats(seed_means),
    }


def paired_comparison(per_seed_a: Sequence[Sequence[Mapping[str, float]]],
                      per_seed_b: Sequence[Sequence[Mapping[str, float]]],
                      metric: str = "dice", higher_is_better: bool = True) -> dict:
    """Compare two methods image by image with the Wilcoxon signed-rank test.

    Parameters
    ----------
    per_seed_a, per_seed_b : list of list of dict
        Each method's per-seed per-image metrics (see `per_image_means`); the two may have
        different numbers of seeds but must score the same test images in the same order,
        since images are paired by position.
    metric : str
        Key of the metric compared.
    higher_is_better : bool
        Whether a larger value of `metric` is better (Dice) or worse (distances, errors).

    Returns
    -------
    dict
        ``metric``, ``n_images``
            The metric and the number of pairs used: images where both methods' values
            (averaged over seeds) are defined; pairs with a NaN are dropped.
        ``mean_a``, ``mean_b``
            Means of the two methods over those images.
        ``mean_difference``, ``median_difference``
            Mean and median of the differences A - B.
        ``wins_a``, ``wins_b``, ``ties``
            Images where A is better, where B is better, and where they are equal.
        ``statistic``, ``p_value``
            ``scipy.stats.wilcoxon`` on the differences, two-sided: the statistic is the
            smaller of the two signed-rank sums. ``zero_method="wilcox"``: images where the
            two methods are equal are left out of the ranks (they support neither method).
            When every difference is zero, the statistic is 0 and the p-value 1.
        ``test``
            ``"Wilcoxon signed-rank (two-sided)"``.
        ``better``
            ``"a"`` or ``"b"`` when p < 0.05, chosen by which signed-rank sum is larger
            (the side the test found); None otherwise, and when every difference is zero.
        ``note``
            A caveat in words (no pair, all ties, or fewer than 6 non-zero differences, too
            few for the test to reach p < 0.05), or None.

        Undefined values (means with no pair) are None.

    Raises
    ------
    ValueError
        If the two methods have different numbers of images, or as `per_image_means`.
    """
    a = per_image_means(per_seed_a, metric)
    b = per_image_means(per_seed_b, metric)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same test images: method a has "
                         f"{a.size} images, method b has {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    diff = a - b
    a_better = diff > 0 if higher_is_better else diff < 0
    b_better = diff < 0 if higher_is_better else diff > 0
    out = {
        "metric": metric,
        "n_images": int(diff.size),
        "mean_a": _value(a.mean()) if diff.size else None,
        "mean_b": _value(b.mean()) if diff.size else None,
        "mean_difference": _value(diff.mean()) if diff.size else None,
        "median_difference": _value(np.median(diff)) if diff.size else None,
        "wins_a": int(a_better.sum()),
        "wins_b": int(b_better.sum()),
        "ties": int((diff == 0).sum()),
        "statistic": None,
        "p_value": None,
        "test": _TEST_NAME,
        "better": None,
        "note": None,
    }
    if diff.size == 0:
        out["note"] = "no image where both methods are defined"
        return out
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        out.update(statistic=0.0, p_value=1.0,
                   note="the two methods are equal on every image")
        return out
    if nonzero.size < _MIN_NONZERO_PAIRS:
        out["note"] = (f"only {nonzero.size} images differ: too few for the test to reach "
                       f"p < {SIGNIFICANCE_LEVEL}")
    result = stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    out["statistic"] = _value(result.statistic)
    out["p_value"] = _value(result.pvalue)
    if out["p_value"] is not None and out["p_value"] < SIGNIFICANCE_LEVEL:
        ranks = stats.rankdata(np.abs(nonzero))
        a_higher = ranks[nonzero > 0].sum() > ranks[nonzero < 0].sum()
        out["better"] = "a" if a_higher == higher_is_better else "b"
    return out


def compare_methods(scores_for_one_test: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
                    pairs: Iterable[tuple[str, str]], metric: str = "dice",
                    higher_is_better: bool | None = None) -> list[dict]:
    """`paired_comparison` for each pair of methods scored on one test set.

    Parameters
    ----------
    scores_for_one_test : dict of str to list of list of dict
        Each method's per-seed per-image metrics on the same test images.
    pairs : iterable of (str, str)
        The (a, b) comparisons; pairs naming a method not in `scores_for_one_test` are
        skipped.
    metric : str
        Key of the metric compared.
    higher_is_better : bool, optional
        Default: true for the overlap metrics of `HIGHER_IS_BETTER`, false for the others.

    Returns
    -------
    list of dict
        The `paired_comparison` results in the order of `pairs`, each with the method
        names added as ``a`` and ``b``.
    """
    if higher_is_better is None:
        higher_is_better = metric in HIGHER_IS_BETTER
    out = []
    for a, b in pairs:
        if a in scores_for_one_test and b in scores_for_one_test:
            result = paired_comparison(scores_for_one_test[a], scores_for_one_test[b],
                                       metric=metric, higher_is_better=higher_is_better)
            out.append({"a": a, "b": b, **result})
    return out


def default_pairs(methods: Iterable[str]) -> list[tuple[str, str]]:
    """The comparisons a reader of a benchmark asks for, among the methods present.

    Parameters
    ----------
    methods : iterable of str
        Method names: model kinds and the reference pseudo-masks ``"ellipse"`` and
        ``"quarter_ellipse"``.

    Returns
    -------
    list of (str, str)
        In this order, and only pairs whose both names are in `methods`, each pair once:
        every model kind against ``"quarter_ellipse"`` and against ``"ellipse"`` (does
        training beat the pseudo-mask it learned from?), ``"multitask"`` against ``"a1"``
        (does the RECIST-group task help segmentation?), ``"multitask"`` against
        ``"coseg"``, and ``"prompted"`` against every other method.
    """
    names = list(dict.fromkeys(methods))
    present = set(names)
    kinds = [m for m in names if m not in _REFERENCES]
    wanted = [(kind, ref) for kind in kinds for ref in _REFERENCES]
    wanted += [("multitask", "a1"), ("multitask", "coseg")]
    wanted += [("prompted", other) for other in names if other != "prompted"]
    out, seen = [], set()
    for a, b in wanted:
        key = frozenset((a, b))
        if a in present and b in present and a != b and key not in seen:
            seen.add(key)
            out.append((a, b))
    return out
