"""Grouping lesions by their RECIST measurements (K-means)."""

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from napari_recist_seg.core.grouping import (
    FEATURE_SETS,
    LesionGrouping,
    group_lesions,
    recist_features,
    suggest_k,
)
from napari_recist_seg.core.recist import Recist


def _recist(centre, angle_deg, long_length, short_length, spacing=(1.0, 1.0)):
    c = np.asarray(centre, dtype=float)
    t = np.radians(angle_deg)
    d = np.array([np.sin(t), np.cos(t)])
    n = np.array([-d[1], d[0]])
    return Recist(
        [c - long_length / 2 * d, c + long_length / 2 * d],
        [c - short_length / 2 * n, c + short_length / 2 * n],
        spacing=spacing,
    )


# Cluster recipes: (centre, centre jitter, long length range, short/long ratio, angle range).
_CLUSTERS = [
    ((50, 50), 8, (8, 14), (0.5, 0.9), (10, 30)),  # small lesions, top left
    ((450, 430), 8, (60, 80), (0.5, 0.9), (100, 120)),  # big lesions, bottom right
    ((60, 450), 8, (25, 35), (0.3, 0.5), (50, 70)),  # medium, elongated, top right
]


def _cluster_lesions(n_per_cluster, seed, clusters=_CLUSTERS):
    rng = np.random.default_rng(seed)
    lesions, truth = [], []
    for label, (centre, jitter, (lo, hi), (rlo, rhi), (alo, ahi)) in enumerate(clusters):
        for _ in range(n_per_cluster):
            long_length = rng.uniform(lo, hi)
            lesions.append(
                _recist(
                    np.asarray(centre) + rng.uniform(-jitter, jitter, 2),
                    rng.uniform(alo, ahi),
                    long_length,
                    long_length * rng.uniform(rlo, rhi),
                    spacing=(0.8, 0.8),
                )
            )
            truth.append(label)
    return lesions, np.array(truth)


def test_two_clear_clusters_are_recovered():
    lesions, truth = _cluster_lesions(15, seed=1, clusters=_CLUSTERS[:2])
    g = group_lesions(lesions, k=2)
    assert isinstance(g, LesionGrouping)
    assert g.k == 2
    assert g.labels_.shape == (30,)
    assert set(g.labels_.tolist()) == {0, 1}
    assert adjusted_rand_score(truth, g.labels_) == 1.0


@pytest.mark.parametrize("features", FEATURE_SETS)
def test_three_clear_clusters_are_recovered(features):
    lesions, truth = _cluster_lesions(12, seed=2)
    g = group_lesions(lesions, k=3, features=features)
    assert adjusted_rand_score(truth, g.labels_) == 1.0
    np.testing.assert_array_equal(g.predict(lesions), g.labels_)


def test_same_seed_same_labels():
    lesions, _ = _cluster_lesions(10, seed=3)
    a = group_lesions(lesions, k=5, seed=7)
    b = group_lesions(lesions, k=5, seed=7)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.centres, b.centres)
    assert a.seed == 7


def test_fit_on_one_set_predict_another():
    train, train_truth = _cluster_lesions(12, seed=4)
    test, test_truth = _cluster_lesions(6, seed=5)
    g = group_lesions(train, k=3)
    pred = g.predict(test)
    assert pred.dtype == np.int64
    assert adjusted_rand_score(test_truth, pred) == 1.0
    # Same group numbers as the training lesions of the same cluster.
    for label in range(3):
        train_groups = set(g.labels_[train_truth == label].tolist())
        assert set(pred[test_truth == label].tolist()) == train_groups
    # Prediction is "nearest centre" in the scaled feature space.
    x = g.transform(test)
    d2 = ((x[:, None, :] - g.centres[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(pred, d2.argmin(axis=1))
    assert g.predict([]).shape == (0,)


@pytest.mark.parametrize("features", FEATURE_SETS)
def test_to_dict_from_dict_round_trip(features):
    train, _ = _cluster_lesions(10, seed=6)
    other, _ = _cluster_lesions(10, seed=7)
    g = group_lesions(train, k=4, features=features, seed=3)
    state = json.loads(json.dumps(g.to_dict()))
    assert state["features"] == features
    assert state["k"] == 4
    assert state["seed"] == 3
    assert state["feature_names"] == list(g.feature_names)
    restored = LesionGrouping.from_dict(state)
    assert restored.k == 4 and restored.features == features
    np.testing.assert_array_equal(restored.predict(train), g.labels_)
    np.testing.assert_array_equal(restored.predict(other), g.predict(other))
    np.testing.assert_array_equal(restored.centres, g.centres)
    np.testing.assert_array_equal(restored.scale, g.scale)


def test_from_dict_with_missing_or_bad_state_raises():
    lesions, _ = _cluster_lesions(5, seed=8)
    state = group_lesions(lesions, k=2).to_dict()
    for key in ("features", "centres", "mean", "scale"):
        broken = dict(state)
        del broken[key]
        with pytest.raises(ValueError, match=f"lacks '{key}'"):
            LesionGrouping.from_dict(broken)
    with pytest.raises(ValueError, match="unknown feature set"):
        LesionGrouping.from_dict(dict(state, features="fancy"))
    with pytest.raises(ValueError, match="shape"):
        LesionGrouping.from_dict(dict(state, centres=[[0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive"):
        LesionGrouping.from_dict(dict(state, scale=[0.0] * len(state["scale"])))


def test_orientation_wraps_around_in_standardised_features():
    # Same place and size; only the orientation differs.
    lesions = [_recist((50, 50), a, 30, 10) for a in (1, 179, 90, 45, 135)]
    f = recist_features(lesions, "standardised")
    assert f.shape == (5, 6)
    np.testing.assert_allclose(f[0, 4:], [np.cos(np.radians(2)), np.sin(np.radians(2))])
    np.testing.assert_allclose(f[1, 4:], [np.cos(np.radians(358)), np.sin(np.radians(358))])
    # In the space K-means works in, 1 and 179 degrees are neighbours, 90 is far away.
    g = group_lesions(lesions, k=1)
    x = g.transform(lesions)
    near = np.linalg.norm(x[0] - x[1])
    far = np.linalg.norm(x[0] - x[2])
    assert near < 0.1 * far
    # And K-means groups them that way.
    many = [_recist((50, 50), a, 30, 10) for a in (0.5, 1, 2, 178, 179, 179.5, 88, 90, 92, 91)]
    labels = group_lesions(many, k=2).labels_
    assert len(set(labels[:6].tolist())) == 1
    assert len(set(labels[6:].tolist())) == 1
    assert labels[0] != labels[6]


def test_paper_features_are_unscaled():
    lesions, _ = _cluster_lesions(6, seed=9)
    f = recist_features(lesions, "paper")
    r = lesions[3]
    np.testing.assert_allclose(
        f[3], [r.centre[1], r.centre[0], r.short_length, r.long_length, r.angle]
    )
    g = group_lesions(lesions, k=3, features="paper")
    assert g.feature_names == ("centre_x", "centre_y", "short_px", "long_px", "angle_deg")
    np.testing.assert_array_equal(g.mean, 0)
    np.testing.assert_array_equal(g.scale, 1)
    np.testing.assert_allclose(g.transform(lesions), f)


def test_standardised_features_are_z_scored_and_in_mm():
    lesions, _ = _cluster_lesions(6, seed=10)
    f = recist_features(lesions, "standardised")
    np.testing.assert_allclose(f[:, 3], [r.long_mm for r in lesions])
    np.testing.assert_allclose(f[:, 2], [r.short_mm for r in lesions])
    g = group_lesions(lesions, k=2)
    x = g.transform(lesions)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-9)


def test_constant_feature_column_is_not_divided_by_zero():
    lesions = [_recist((50, 50 + 10 * i), 30, 20, 10) for i in range(6)]
    g = group_lesions(lesions, k=2)
    assert np.all(np.isfinite(g.transform(lesions)))
    assert np.all(g.scale > 0)


def test_k_out_of_range_raises():
    lesions, _ = _cluster_lesions(2, seed=11)  # 6 lesions
    with pytest.raises(ValueError, match="k=7 groups is more than the 6 lesions"):
        group_lesions(lesions, k=7)
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        group_lesions(lesions, k=0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        group_lesions(lesions, k=-3)
    with pytest.raises(ValueError, match="k must be an integer"):
        group_lesions(lesions, k="many")
    with pytest.raises(ValueError, match="more than the 0 lesions"):
        group_lesions([], k=1)
    assert group_lesions(lesions, k=6).k == 6  # k == n is allowed


def test_bad_feature_set_and_non_recist_raise():
    lesions, _ = _cluster_lesions(2, seed=12)
    with pytest.raises(ValueError, match="unknown feature set 'pixels'"):
        group_lesions(lesions, k=2, features="pixels")
    with pytest.raises(ValueError, match="lesion 1 is not a Recist"):
        recist_features([lesions[0], (1, 2, 3)])
    assert recist_features([], "paper").shape == (0, 5)


def test_suggest_k_finds_three_clusters():
    lesions, _ = _cluster_lesions(10, seed=13)
    best, scores = suggest_k(lesions, k_range=range(2, 8))
    assert best == 3
    assert set(scores) == set(range(2, 8))
    assert scores[3] == max(scores.values())
    assert all(-1.0 <= s <= 1.0 for s in scores.values())


def test_suggest_k_skips_impossible_k_and_raises_when_none_left():
    lesions, _ = _cluster_lesions(1, seed=14)  # 3 lesions: only K = 2 can be scored
    best, scores = suggest_k(lesions, k_range=[1, 2, 3, 9])
    assert best == 2 and set(scores) == {2}
    with pytest.raises(ValueError, match="no K in"):
        suggest_k(lesions, k_range=[3, 4])
