"""Per-image segmentation metrics for 2D binary masks.

The set follows the evaluation used for RECIST-supervised lesion segmentation: overlap
(Dice, IoU, volumetric similarity, the ISIC 2018 thresholded Jaccard), position (bounding-box
centre error), boundary (perimeter error, Hausdorff distance and its 95th percentile) and shape
(orientation, relative size and eccentricity differences). By default every metric is computed
per image and stays finite for empty masks, so that averages over a data set are always
defined; ``empty="nan"`` leaves the metrics that an empty mask does not define as NaN instead
(a table shown to a person should say "undefined", not a made-up worst value), and
``mean_metrics`` then averages over the images that define each metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import regionprops

__all__ = ["EMPTY_UNDEFINED", "METRIC_NAMES", "lesion_labels", "lesion_metrics", "mean_metrics",
           "segmentation_metrics", "truth_under_recist"]

METRIC_NAMES: tuple[str, ...] = (
    "dice",
    "iou",
    "vs",
    "centre_error",
    "perimeter_error",
    "hausdorff",
    "hausdorff95",
    "thresholded_jaccard",
    "orientation_error",
    "size_error",
    "shape_error",
)

#: Metrics that need both masks to be non-empty: NaN with ``empty="nan"`` when exactly one is.
#: ``size_error`` is only undefined when the reference is empty (its area is the denominator).
EMPTY_UNDEFINED: tuple[str, ...] = (
    "centre_error",
    "hausdorff",
    "hausdorff95",
    "orientation_error",
    "shape_error",
)
_EMPTY_MODES = ("worst", "nan")

# ISIC 2018 task 1: a per-image Jaccard below this counts as a complete failure.
THRESHOLDED_JACCARD_CUTOFF = 0.65

# Measured: a k-d tree query costs about as much per edge pixel as two distance maps cost
# for 8 to 10 pixels of window.
_KDTREE_COST_RATIO = 8

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _as_mask(array, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D mask, got an array with shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must have a boolean or numeric dtype, got {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    if arr.dtype == bool:
        return arr
    return arr != 0


def _edge_pixels(mask: np.ndarray) -> np.ndarray:
    # border_value=0 makes foreground pixels on the image border count as edge pixels.
    return mask & ~ndimage.binary_erosion(mask, structure=_FOUR_CONNECTED, border_value=0)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def _bbox_centre(bbox: tuple[int, int, int, int]) -> np.ndarray:
    r0, c0, r1, c1 = bbox
    return np.array([(r0 + r1) / 2.0, (c0 + c1) / 2.0])


def _directed_distances(
    edge_a: np.ndarray, edge_b: np.ndarray, window: tuple[slice, slice], spacing=(1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each edge pixel of one mask to the nearest edge pixel of the other.

    Both ways are exact Euclidean distances; the cheaper one is chosen. Distance maps cost a
    fixed amount per pixel of `window`, a k-d tree a larger amount per edge pixel, so thin
    boundaries in a large window (the usual case for lesions) go to the tree.
    """
    ea = edge_a[window]
    eb = edge_b[window]
    points_a = np.argwhere(ea)
    points_b = np.argwhere(eb)
    step = np.asarray(spacing, dtype=float)
    if _KDTREE_COST_RATIO * (len(points_a) + len(points_b)) < ea.size:
        a_to_b = cKDTree(points_b * step).query(points_a * step)[0]
        b_to_a = cKDTree(points_a * step).query(points_b * step)[0]
        return a_to_b, b_to_a
    # distance_transform_edt measures the distance to the nearest zero, i.e. to the boundary.
    # All boundary pixels lie inside `window`, so maps restricted to it are exact.
    a_to_b = ndimage.distance_transform_edt(~eb, sampling=step)[ea]
    b_to_a = ndimage.distance_transform_edt(~ea, sampling=step)[eb]
    return a_to_b, b_to_a


def _check_spacing(spacing) -> np.ndarray:
    if spacing is None:
        return np.ones(2)
    step = np.asarray(spacing, dtype=float).ravel()
    if step.shape != (2,) or not np.all(np.isfinite(step)) or not np.all(step > 0):
        raise ValueError(f"spacing must be two positive (row, col) sizes in mm, got {spacing!r}")
    return step


def segmentation_metrics(pred, gt, *, empty: str = "worst", spacing=None) -> dict[str, float]:
    """Compare a predicted 2D mask with a reference mask.

    Parameters
    ----------
    pred : array_like, shape (rows, cols)
        Predicted mask. Any boolean or numeric dtype; nonzero pixels are foreground.
    gt : array_like, shape (rows, cols)
        Reference (ground-truth) mask, same shape and conventions as `pred`.
    empty : {"worst", "nan"}
        What the metrics that need two non-empty masks are when exactly one mask is empty:
        finite worst values (the default, see Notes) or NaN (``EMPTY_UNDEFINED``, and
        ``size_error`` when `gt` is empty).
    spacing : (float, float), optional
        The (row, col) pixel size in mm: ``centre_error``, ``hausdorff`` and ``hausdorff95``
        (and the worst value D below) are then in mm rather than pixels.

    Returns
    -------
    dict of str to float
        Keys in the order of `METRIC_NAMES`:

        ``dice``
            2 TP / (2 TP + FP + FN).
        ``iou``
            TP / (TP + FP + FN) (Jaccard index).
        ``vs``
            Volumetric similarity, 1 - abs(FN - FP) / (2 TP + FP + FN).
        ``centre_error``
            Euclidean distance in pixels (mm with ``spacing``) between the centres of the
            two masks' bounding boxes.
        ``perimeter_error``
            abs(E(gt) - E(pred)) / 2, where E counts edge pixels: foreground pixels with a
            4-neighbour in the background or lying on the image border.
        ``hausdorff``
            Symmetric (maximum of both directions) Hausdorff distance in pixels (mm with
            ``spacing``) between the two sets of edge pixels.
        ``hausdorff95``
            Maximum of the two directed 95th percentiles of edge-to-edge distances.
        ``thresholded_jaccard``
            ``iou`` if it is at least 0.65, else 0 (ISIC 2018 rule).
        ``orientation_error``
            Angle in degrees, in [0, 90], between the principal axes of the two masks, each
            mask taken as a single region (``skimage.measure.regionprops`` orientation).
            Axes are undirected, so 89 and -89 degrees differ by 2. Meaningless for nearly
            isotropic shapes (discs, squares), whose principal axis is arbitrary.
        ``size_error``
            Relative area difference abs(A(pred) - A(gt)) / A(gt).
        ``shape_error``
            abs(eccentricity(pred) - eccentricity(gt)) of the moment-equivalent ellipses.

    Raises
    ------
    ValueError
        If `pred` or `gt` is not 2D, has size zero, has a non-numeric dtype or contains NaN
        or inf, if the two shapes differ, or if `empty` is not "worst" or "nan".

    Notes
    -----
    With ``empty="worst"``, empty masks give finite values so that plain means over images
    stay defined. With D the length of the image diagonal, ``hypot(rows, cols)``:

    - both empty: a perfect score; ``dice``, ``iou``, ``vs`` and ``thresholded_jaccard``
      are 1 and every error and distance is 0.
    - exactly one empty: ``dice``, ``iou``, ``thresholded_jaccard`` and ``vs`` are 0 (the
      formula gives 0 for ``vs``); ``centre_error``, ``hausdorff`` and ``hausdorff95``
      are D; ``perimeter_error`` follows its formula (half the edge count of the non-empty
      mask); ``orientation_error`` is 90 and ``shape_error`` is 1.
      ``size_error`` is 1 when `pred` is empty (the formula's value) and, when `gt` is
      empty, the fraction of the image that `pred` covers, in (0, 1]: a stray false
      positive costs little, a prediction filling the image costs as much as missing a
      lesion entirely.

    With ``empty="nan"``, both empty is still a perfect score, and when exactly one is
    empty the metrics of ``EMPTY_UNDEFINED`` are NaN, as is ``size_error`` when `gt` is
    empty; the overlap metrics and ``perimeter_error`` keep the values above.
    """
    if empty not in _EMPTY_MODES:
        raise ValueError(f"empty must be 'worst' or 'nan', got {empty!r}")
    step = _check_spacing(spacing)
    p = _as_mask(pred, "pred")
    g = _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")

    area_p = int(np.count_nonzero(p))
    area_g = int(np.count_nonzero(g))
    tp = int(np.count_nonzero(p & g))
    fp = area_p - tp
    fn = area_g - tp
    diagonal = float(np.hypot(*(np.asarray(p.shape) * step)))

    if area_p == 0 and area_g == 0:
        perfect = dict.fromkeys(METRIC_NAMES, 0.0)
        perfect.update(dice=1.0, iou=1.0, vs=1.0, thresholded_jaccard=1.0)
        return perfect

    denom = 2 * tp + fp + fn  # > 0 here: at least one mask is non-empty
    dice = 2 * tp / denom
    iou = tp / (tp + fp + fn)
    vs = 1.0 - abs(fn - fp) / denom
    thresholded = iou if iou >= THRESHOLDED_JACCARD_CUTOFF else 0.0

    edge_p = _edge_pixels(p)
    edge_g = _edge_pixels(g)
    perimeter_error = abs(int(np.count_nonzero(edge_g)) - int(np.count_nonzero(edge_p))) / 2

    result = {
        "dice": float(dice),
        "iou": float(iou),
        "vs": float(vs),
        "perimeter_error": float(perimeter_error),
        "thresholded_jaccard": float(thresholded),
    }

    if (area_p == 0 or area_g == 0) and empty == "nan":
        result.update(dict.fromkeys(EMPTY_UNDEFINED, float("nan")),
                      size_error=1.0 if area_p == 0 else float("nan"))
        return {name: float(result[name]) for name in METRIC_NAMES}
    if area_p == 0 or area_g == 0:
        result.update(
            centre_error=diagonal,
            hausdorff=diagonal,
            hausdorff95=diagonal,
            orientation_error=90.0,
            size_error=1.0 if area_p == 0 else area_p / p.size,
            shape_error=1.0,
        )
        return {name: float(result[name]) for name in METRIC_NAMES}

    bbox_p = _bbox(p)
    bbox_g = _bbox(g)
    result["centre_error"] = float(np.linalg.norm(
        (_bbox_centre(bbox_p) - _bbox_centre(bbox_g)) * step))

    window = (
        slice(min(bbox_p[0], bbox_g[0]), max(bbox_p[2], bbox_g[2]) + 1),
        slice(min(bbox_p[1], bbox_g[1]), max(bbox_p[3], bbox_g[3]) + 1),
    )
    p_to_g, g_to_p = _directed_distances(edge_p, edge_g, window, step)
    result["hausdorff"] = max(float(p_to_g.max()), float(g_to_p.max()))
    result["hausdorff95"] = max(float(np.percentile(p_to_g, 95)), float(np.percentile(g_to_p, 95)))

    # The whole mask is labelled 1 so that disconnected pieces form one region.
    props_p = regionprops(p[window].astype(np.uint8))[0]
    props_g = regionprops(g[window].astype(np.uint8))[0]
    delta = abs(props_p.orientation - props_g.orientation) % np.pi
    # Principal axes are lines, not vectors: angles a and a + 180 degrees are the same axis.
    delta = min(delta, np.pi - delta)
    result["orientation_error"] = float(np.degrees(delta))
    result["size_error"] = abs(area_p - area_g) / area_g
    result["shape_error"] = abs(float(props_p.eccentricity) - float(props_g.eccentricity))

    return {name: float(result[name]) for name in METRIC_NAMES}


def mean_metrics(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average per-image metric dictionaries key by key, leaving out undefined (NaN) values.

    Parameters
    ----------
    metrics : sequence of mapping of str to float
        One dictionary per image, typically from `segmentation_metrics`. All must have the
        same keys.

    Returns
    -------
    dict of str to float
        Mean of each key over the images where it is not NaN (NaN where no image defines
        it), in the key order of the first dictionary. Without NaN values this is the
        arithmetic mean.

    Raises
    ------
    ValueError
        If `metrics` is empty or its dictionaries do not all have the same keys.
    """
    metrics = list(metrics)
    if not metrics:
        raise ValueError("metrics must contain at least one dictionary, got an empty sequence")
    keys = list(metrics[0])
    key_set = set(keys)
    for index, entry in enumerate(metrics):
        if set(entry) != key_set:
            raise ValueError(
                f"metrics[{index}] has keys {sorted(entry)}, expected the keys of metrics[0] "
                f"{sorted(key_set)}"
            )
    out = {}
    for key in keys:
        values = np.array([float(entry[key]) for entry in metrics])
        defined = values[~np.isnan(values)]
        # np.nanmean warns on an all-NaN column; an undefined mean is simply NaN here.
        out[key] = float(defined.mean()) if defined.size else float("nan")
    return out


def lesion_labels(truth: np.ndarray, labelled: bool | None = None) -> np.ndarray:
    """The lesions of a 2D ground truth as labels.

    Parameters
    ----------
    truth : ndarray
        Labels (one value per lesion) or a plain mask.
    labelled : bool, optional
        Whether ``truth``'s values are lesion labels (True) or it is a plain mask (False).
        By default a slice holding a single non-zero value is a plain mask; a slice of a
        labelled volume may hold one lesion only, so the volume's caller says.

    Returns
    -------
    ndarray of int64
        ``truth``'s own labels, or its 8-connected components for a plain mask (one with
        several lesions).
    """
    truth = np.asarray(truth)
    if truth.ndim != 2:
        raise ValueError(f"the ground truth must be 2D, got shape {truth.shape}")
    if labelled is None:
        labelled = len(np.unique(truth[truth > 0])) > 1
    if not labelled:
        return ndimage.label(truth > 0, structure=np.ones((3, 3), dtype=bool))[0].astype(
            np.int64)
    return np.where(truth > 0, truth, 0).astype(np.int64)


def truth_under_recist(truth: np.ndarray, long_axis, short_axis=None) -> np.ndarray:
    """The lesion a RECIST measures, out of a slice's ground truth that holds several.

    DeepLesion-style masks hold every lesion of a key slice in one mask; scoring one lesion
    against all of them would count its neighbours as missed. The lesion is the ground
    truth's labels (or 8-connected components) that the RECIST's axes cross.

    Parameters
    ----------
    truth : ndarray
        2D labels or plain mask.
    long_axis, short_axis : (2, 2) array_like
        The axes' (row, col) endpoints in pixels.

    Returns
    -------
    ndarray of bool
        The crossed lesions; all of ``truth`` when the axes cross none (nothing to choose by).
    """
    labels = lesion_labels(truth)
    crossed: set[int] = set()
    for axis in (long_axis, short_axis):
        if axis is None:
            continue
        p0, p1 = np.asarray(axis, dtype=float)
        n = int(np.ceil(np.abs(p1 - p0).max())) + 2
        points = np.round(p0 + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0)).astype(int)
        inside = np.all((points >= 0) & (points < labels.shape), axis=1)
        crossed.update(int(v) for v in labels[points[inside, 0], points[inside, 1]] if v)
    if not crossed:
        return labels > 0
    return np.isin(labels, sorted(crossed))


def lesion_metrics(pred: np.ndarray, labels: np.ndarray, *,
                   empty: str = "worst", spacing=None) -> list[tuple[int, dict]]:
    """``segmentation_metrics`` of a 2D prediction for each lesion of a labelled ground truth.

    Each lesion is scored in its bounding box grown by half its size on each side (at
    least 4 pixels), so that distances and errors speak of that lesion; the pixels of other
    lesions in the window are left out of the prediction.

    Parameters
    ----------
    pred : ndarray
        Predicted mask (non-zero is lesion), the shape of ``labels``.
    labels : ndarray
        Ground truth, one label per lesion (``lesion_labels`` makes one from a mask).
    empty : {"worst", "nan"}
        Passed to ``segmentation_metrics``: how a lesion with no predicted pixel in its
        window is scored.
    spacing : (float, float), optional
        Passed to ``segmentation_metrics``: distances in mm.

    Returns
    -------
    list of (label, metrics)
        In increasing label order.
    """
    pred = np.asarray(pred) > 0
    labels = np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(
            f"prediction {pred.shape} and ground truth {labels.shape} differ in shape"
        )
    boxes = ndimage.find_objects(labels)
    out = []
    for value in np.unique(labels[labels > 0]):
        box = boxes[int(value) - 1]
        window = tuple(slice(max(0, s.start - max(4, (s.stop - s.start) // 2)),
                             min(n, s.stop + max(4, (s.stop - s.start) // 2)))
                       for s, n in zip(box, labels.shape))
        lab = labels[window]
        mine = lab == value
        others = (lab > 0) & ~mine
        out.append((int(value),
                    segmentation_metrics(pred[window] & ~others, mine, empty=empty,
                                         spacing=spacing)))
    return out
