"""Grouping lesions by their RECIST measurements with K-means.

The group of a lesion is the class label of the multi-task model's classification head.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .recist import Recist

__all__ = ["FEATURE_SETS", "LesionGrouping", "group_lesions", "recist_features", "suggest_k"]

#: Feature sets: "standardised" (orientation as (cos 2t, sin 2t), every column z-scored,
#: lengths in mm) and "paper" (the published recipe: raw centre x, centre y, short and long
#: length in pixels and the angle in degrees, unscaled).
FEATURE_SETS = ("standardised", "paper")
#: The most groups a saved grouping may hold (DeepLesion's 32,735 lesions suggest about 190).
MAX_SAVED_GROUPS = 10_000

_FEATURE_NAMES = {
    "standardised": ("centre_row", "centre_col", "short_mm", "long_mm", "cos_2angle", "sin_2angle"),
    "paper": ("centre_x", "centre_y", "short_px", "long_px", "angle_deg"),
}


# Floats of the distance block ``predict`` computes at once (8 MB).
_PREDICT_BLOCK = 1 << 20
# Restarts of K-means by default: 10 while lesions x K is at most this, 3 above it. Each
# restart costs a full K-means run; on DeepLesion's 32,735 lesions with K=190 one takes seconds,
# and the best of 3 seeds came within 0.2% of the best inertia of 10 (the spread between
# single seeds was under 1%).
_FULL_RESTARTS_UP_TO = 2_000_000


def _check_features(features: str) -> None:
    if features not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {features!r}; choose one of {FEATURE_SETS}")


def recist_features(recists: Sequence[Recist], features: str = "standardised") -> np.ndarray:
    """The unscaled feature matrix K-means groups on, one row per lesion.

    Parameters
    ----------
    recists : sequence of Recist
    features : {"standardised", "paper"}
        See ``FEATURE_SETS``. Standardisation itself happens in ``group_lesions``.

    Returns
    -------
    numpy.ndarray, shape (n_lesions, n_features)
    """
    _check_features(features)
    recists = list(recists)
    if not recists:
        return np.zeros((0, len(_FEATURE_NAMES[features])))
    for i, r in enumerate(recists):
        if not isinstance(r, Recist):
            raise ValueError(f"lesion {i} is not a Recist but {type(r).__name__}")
    centre = np.array([r.centre for r in recists])
    angle = np.radians([r.angle for r in recists])
    if features == "paper":
        return np.column_stack(
            [
                centre[:, 1],
                centre[:, 0],
                [r.short_length for r in recists],
                [r.long_length for r in recists],
                np.degrees(angle),
            ]
        )
    # An orientation of 179 degrees is next to 1 degree: doubling the angle before taking
    # cos/sin makes the encoding continuous over the half turn.
    return np.column_stack(
        [
            centre[:, 0],
            centre[:, 1],
            [r.short_mm for r in recists],
            [r.long_mm for r in recists],
            np.cos(2 * angle),
            np.sin(2 * angle),
        ]
    )


class LesionGrouping:
    """A fitted K-means grouping of lesions, restorable from plain numbers.

    Attributes
    ----------
    features : str
        Feature set name.
    centres : ndarray, shape (k, n_features)
        Cluster centres in the scaled feature space.
    mean, scale : ndarray, shape (n_features,)
        Feature scaling applied before distances (identity for the paper's features).
    labels_ : ndarray of int
        Group of each lesion the grouping was fitted on.
    """

    def __init__(self, features, centres, mean, scale, labels=None, seed=0):
        _check_features(features)
        self.features = features
        self.centres = np.asarray(centres, dtype=float)
        self.mean = np.asarray(mean, dtype=float)
        self.scale = np.asarray(scale, dtype=float)
        n_feat = len(_FEATURE_NAMES[features])
        if self.centres.ndim != 2 or self.centres.shape[1] != n_feat:
            raise ValueError(
                f"group centres must have shape (k, {n_feat}) for {features!r} features, "
                f"got {self.centres.shape}"
            )
        if self.mean.shape != (n_feat,) or self.scale.shape != (n_feat,):
            raise ValueError(f"group scaling must have {n_feat} values per feature")
        if not (np.all(np.isfinite(self.centres)) and np.all(np.isfinite(self.scale))):
            raise ValueError("group centres and scaling must be finite")
        if np.any(self.scale <= 0):
            raise ValueError("group feature scales must be positive")
        self.labels_ = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.seed = int(seed)

    @property
    def k(self) -> int:
        """Number of groups."""
        return int(self.centres.shape[0])

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the feature columns."""
        return _FEATURE_NAMES[self.features]

    def transform(self, recists: Sequence[Recist]) -> np.ndarray:
        """Scaled features of ``recists`` (the space the centres live in)."""
        return (recist_features(recists, self.features) - self.mean) / self.scale

    def predict(self, recists: Sequence[Recist]) -> np.ndarray:
        """Group of each lesion: the nearest centre in the scaled feature space."""
        x = self.transform(recists)
        out = np.zeros(len(x), dtype=np.int64)
        # In blocks of lesions: all distances at once would take n * k * n_features floats
        # (300 MB for DeepLesion's 32,735 lesions and K=190).
        step = max(1, _PREDICT_BLOCK // max(1, self.k * x.shape[1]))
        for start in range(0, len(x), step):
            block = x[start:start + step]
            d2 = ((block[:, None, :] - self.centres[None, :, :]) ** 2).sum(axis=2)
            out[start:start + step] = np.argmin(d2, axis=1)
        return out

    def to_dict(self) -> dict:
        """JSON-friendly state; ``LesionGrouping.from_dict`` restores it."""
        return {
            "features": self.features,
            "k": self.k,
            "seed": self.seed,
            "centres": self.centres.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "feature_names": list(self.feature_names),
        }

    @classmethod
    def from_dict(cls, state: dict) -> LesionGrouping:
        """Restore a grouping saved with ``to_dict``.

        Raises
        ------
        ValueError
            Naming the field when ``state`` is not a grouping: missing keys, values that are
            not numbers, shapes that do not fit, more than ``MAX_SAVED_GROUPS`` groups.
        """
        if not isinstance(state, dict):
            raise ValueError(f"saved grouping must be an object, got {type(state).__name__}")
        missing = [k for k in ("features", "centres", "mean", "scale") if k not in state]
        if missing:
            raise ValueError(f"saved grouping lacks {missing[0]!r}")
        if not isinstance(state["features"], str):
            raise ValueError(f"saved grouping: 'features' must be a text, got "
                             f"{type(state['features']).__name__}")
        centres = state["centres"]
        if not isinstance(centres, list) or not 1 <= len(centres) <= MAX_SAVED_GROUPS:
            raise ValueError(f"saved grouping: 'centres' must be a list of 1 to "
                             f"{MAX_SAVED_GROUPS} rows")
        seed = state.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"saved grouping: 'seed' must be an integer, got {seed!r:.40}")
        arrays = []
        for key in ("centres", "mean", "scale"):
            try:
                value = np.asarray(state[key], dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"saved grouping: {key!r} must hold numbers only, in a "
                                 f"regular shape") from None
            if not np.all(np.isfinite(value)):
                raise ValueError(f"saved grouping: {key!r} must be finite")
            arrays.append(value)
        return cls(state["features"], *arrays, seed=seed)

    def __repr__(self) -> str:
        return f"LesionGrouping(k={self.k}, features={self.features!r})"


def _scaling(x: np.ndarray, features: str):
    if features == "paper":
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    # A constant column (all lesions the same size, say) carries no information: leave it
    # unscaled rather than divide by zero.
    return mean, np.where(std > 1e-12, std, 1.0)


def group_lesions(
    recists: Sequence[Recist], k: int, features: str = "standardised", seed: int = 0,
    n_init: int | None = None,
) -> LesionGrouping:
    """Fit K-means on the lesions' RECIST features.

    Parameters
    ----------
    recists : sequence of Recist
        Lesions to fit on (the training lesions; predict others with ``.predict``).
    k : int
        Number of groups, between 1 and the number of lesions.
    features : {"standardised", "paper"}
        Feature set (see ``FEATURE_SETS``).
    seed : int
        K-means seed; the same inputs and seed give the same groups.
    n_init : int, optional
        K-means restarts (the best is kept). By default 10, or 3 when the number of lesions
        times ``k`` exceeds 2,000,000 (DeepLesion's 32,735 lesions with K=190), where each
        restart takes seconds and more of them barely lower the inertia.

    Returns
    -------
    LesionGrouping
    """
    from sklearn.cluster import KMeans

    recists = list(recists)
    try:
        # 2.0 is two groups; 2.5 is a mistake, not two groups.
        if not isinstance(k, str) and int(k) != k:
            raise ValueError
        k = int(k)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > len(recists):
        raise ValueError(f"k={k} groups is more than the {len(recists)} lesions given")
    seed = _check_seed(seed)
    x = recist_features(recists, features)
    mean, scale = _scaling(x, features)
    xs = (x - mean) / scale
    distinct = _distinct_rows(xs)
    if distinct < k:
        # K-means would only warn and return duplicate centres: groups nobody can tell apart.
        raise ValueError(
            f"the lesions are too alike for k={k} groups: their {len(recists)} RECIST "
            f"measurements take only {distinct} distinct value(s); choose k <= {distinct}"
        )
    if n_init is None:
        n_init = 10 if len(recists) * k <= _FULL_RESTARTS_UP_TO else 3
    km = KMeans(n_clusters=k, n_init=n_init, random_state=int(seed)).fit(xs)
    grouping = LesionGrouping(features, km.cluster_centers_, mean, scale, seed=seed)
    grouping.labels_ = grouping.predict(recists)
    return grouping


MAX_SEED = 2**32 - 1


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
            0 <= seed <= MAX_SEED):
        raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)


def _distinct_rows(xs: np.ndarray) -> int:
    # Rounded, so lesions equal up to float noise count as one.
    return int(len(np.unique(np.round(xs, 9), axis=0))) if len(xs) else 0


def suggest_k(
    recists: Sequence[Recist], k_range=range(2, 11), features: str = "standardised", seed: int = 0,
    sample_size: int = 5000,
) -> tuple[int, dict[int, float]]:
    """Score each K by the silhouette of its grouping and return the best.

    Parameters
    ----------
    recists : sequence of Recist
    k_range : iterable of int
        Candidate K values; those outside [2, n_lesions - 1] are skipped.
    features, seed
        As in ``group_lesions``.
    sample_size : int
        Silhouette is computed on at most this many lesions (it is quadratic).

    Returns
    -------
    best_k : int
    scores : dict of int to float
        Mean silhouette per K (higher is better).
    """
    from sklearn.metrics import silhouette_score

    recists = list(recists)
    try:
        candidates = [int(k) for k in k_range]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"k_range must be a sequence of integers, got {k_range!r}") from None
    seed = _check_seed(seed)
    ks = sorted({k for k in candidates if 2 <= k <= len(recists) - 1})
    if ks:
        x = recist_features(recists, features)
        mean, scale = _scaling(x, features)
        distinct = _distinct_rows((x - mean) / scale)
        if distinct < 2:
            raise ValueError(f"the lesions are too alike to group: all {len(recists)} have the "
                             f"same RECIST measurements")
        alike = [k for k in ks if k > distinct]
        ks = [k for k in ks if k <= distinct]
        if not ks:
            raise ValueError(
                f"the lesions are too alike for K in {alike}: their {len(recists)} RECIST "
                f"measurements take only {distinct} distinct values; choose K <= {distinct}"
            )
    if not ks:
        raise ValueError(
            f"no K in {candidates} can be scored for {len(recists)} lesions "
            "(silhouette needs 2 <= K < number of lesions)"
        )
    scores = {}
    for k in ks:
        g = group_lesions(recists, k, features=features, seed=seed)
        xs = g.transform(recists)
        if len(np.unique(g.labels_)) < 2:
            scores[k] = -1.0
            continue
        n = min(sample_size, len(xs))
        scores[k] = float(
            silhouette_score(
                xs, g.labels_, sample_size=n if n < len(xs) else None, random_state=seed
            )
        )
    best = max(scores, key=lambda kk: (scores[kk], -kk))
    return best, scores
