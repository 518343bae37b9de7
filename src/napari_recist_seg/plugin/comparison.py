"""Comparing models on one image: the work behind the Compare models widget, without Qt.

``collect_inputs`` checks the layers a user chose (image, RECIST, ground truth) and the
models, and gathers what a prediction needs; ``predict_models`` runs the models over the image
(a worker runs it: it loads torch); ``metric_rows`` scores a prediction against the ground
truth, for the whole image and for each lesion.

A metric an empty mask does not define (a distance, the orientation...) is NaN in the rows,
and the row's ``note`` says why ("empty prediction"); it is never given a made-up worst value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.metrics import (
    METRIC_NAMES,
    lesion_labels,
    lesion_metrics,
    mean_metrics,
    segmentation_metrics,
)
from ..core.recist import outside_image
from .layer_units import grid_mismatch, spacing_of, spatial_shape
from .model_planes import LayerPlanes, context_of, slice_gap_of
from .model_registry import load_entry
from .recist_layers import describe_layer
from .training_job import prepare_torch_import

__all__ = [
    "DEFAULT_THRESHOLD",
    "ID_COLUMNS",
    "THRESHOLD_RANGE",
    "ComparisonInputs",
    "collect_inputs",
    "format_metric",
    "metric_rows",
    "predict_models",
    "prediction_name",
]

#: Identifying columns of a metrics row; ``note`` comes after the metrics.
ID_COLUMNS = ("model", "lesion", "recist", "slice", "group")
NOTE = "note"
#: The probability above which a pixel is lesion, as ``recist-seg predict --threshold``.
DEFAULT_THRESHOLD = 0.5
#: The thresholds the widget offers: beyond them a mask is nearly all or nothing.
THRESHOLD_RANGE = (0.05, 0.95)

EMPTY_PREDICTION = "empty prediction"
EMPTY_BOTH = "no lesion in the ground truth nor in the prediction"
EMPTY_TRUTH = "no lesion in the ground truth"


def prediction_name(model_name: str) -> str:
    """Name of the Labels layer that holds a model's prediction."""
    return f"{model_name} prediction"


def format_metric(value, digits: int) -> str:
    """A metric as table text: blank when it is undefined (NaN)."""
    value = float(value)
    return "" if np.isnan(value) else f"{value:.{digits}f}"


# -- inputs -----------------------------------------------------------------------------------
@dataclass
class ComparisonInputs:
    """What a comparison needs, copied from the user's layers (which are never changed).

    Attributes
    ----------
    image : ndarray
        The image data: 2D (grey, or colour with ``rgb``) or a volume ``(Z, H, W[, 3])``.
    rgb : bool
    lesions : list of (slice or None, Recist, lesion id)
        The complete lesions of the RECIST layer (slice None for a 2D image).
    truth : ndarray or None
        Ground-truth labels with the image's spatial shape.
    image_name, truth_name : str
    lesions_problem : str
        Why the RECIST layer gave no lesions although one was chosen (it lies on another
        scan's grid), for the models that need them; "" otherwise.
    """

    image: np.ndarray
    rgb: bool = False
    lesions: list = field(default_factory=list)
    truth: np.ndarray | None = None
    image_name: str = ""
    truth_name: str = ""
    lesions_problem: str = ""


def collect_inputs(image, recist=None, truth=None, models=()) -> ComparisonInputs:
    """Check the chosen layers and models and copy what a prediction needs.

    Parameters
    ----------
    image : napari.layers.Image or None
    recist : napari.layers.Shapes, optional
        A RECIST layer (needed by lesion-crop models).
    truth : napari.layers.Labels, optional
        The ground truth, with the image's spatial shape.
    models : sequence
        The chosen models (at least one).

    Returns
    -------
    ComparisonInputs

    Raises
    ------
    ValueError
        Naming the layer (or the models) and the problem.
    """
    if image is None:
        raise ValueError("there is no image layer; open an image first")
    if image.multiscale:
        raise ValueError(f"{image.name!r} is a multiscale image; choose a single-scale one")
    if image.ndim not in (2, 3):
        raise ValueError(f"{image.name!r} is {image.ndim}D; images must be 2D or 3D")
    if not list(models):
        raise ValueError("tick at least one model (train one, or use 'Load model...')")
    lesions = []
    # Another scan's RECIST layer, left chosen after another image was picked, only matters
    # to the models that need lesions: predict_models names it for them.
    mismatch = grid_mismatch(image, recist)
    if recist is not None and not mismatch:
        if recist.ndim != image.ndim:
            raise ValueError(
                f"{recist.name!r} ({recist.ndim}D) does not fit {image.name!r} "
                f"({image.ndim}D)")
        infos = describe_layer(recist, spacing_of(image))
        valid = [i for i in infos if i.ok]
        if not valid:
            bad = next((f" (lesion {i.lesion_id}: {i.problem})" for i in infos), "")
            raise ValueError(
                f"{recist.name!r} has no complete lesion (a long and a short axis){bad}")
        depth = image.data.shape[0] if image.ndim == 3 else None
        plane = spatial_shape(image)[-2:]
        for info in valid:
            z = None if depth is None else info.slice
            # Lines drawn off the volume's slices, or reaching past the image's edge (the
            # RECIST widget marks them), cannot be predicted.
            if depth is not None and not (isinstance(z, int) and 0 <= z < depth):
                continue
            if outside_image(info.recist, plane):
                continue
            lesions.append((z, info.recist, int(info.lesion_id)))
    gt = None
    if truth is not None:
        shape = spatial_shape(image)
        gt = np.array(truth.data)
        if gt.shape != shape:
            raise ValueError(
                f"the ground truth {truth.name!r} is {gt.shape}, the image {shape}")
    return ComparisonInputs(np.array(image.data), bool(image.rgb), lesions, gt, image.name,
                            "" if truth is None else truth.name, mismatch)


# -- predicting -------------------------------------------------------------------------------
def _label_at(labels: np.ndarray, point) -> int:
    r, c = (int(round(float(v))) for v in point[-2:])
    if 0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]:
        return int(labels[r, c])
    return 0


def predict_models(entries, image, lesions, gt=None, rgb: bool = False,
                   threshold: float = DEFAULT_THRESHOLD, tta: bool = False,
                   metadata: dict | None = None, slice_mm: float | None = None,
                   lesions_problem: str = "", spacing=None):
    """Predict ``image`` with each model of ``entries``, yielding one result per model.

    Parameters
    ----------
    entries : list of ModelEntry
        Models are loaded (on the CPU) when they are not yet.
    image : ndarray
        2D (grey or, with ``rgb``, colour) or a volume ``(Z, H, W[, 3])``.
    lesions : list of (slice or None, Recist, lesion id)
        The RECIST of the image (needed by lesion-crop models).
    gt : ndarray, optional
        Ground-truth labels with the image's spatial shape: metrics are computed.
    rgb : bool
        The last axis of ``image`` holds colours.
    threshold : float
        The probability above which a pixel is lesion, in (0, 1).
    tta : bool
        Average each prediction with those of the image flipped left-right and upside down
        (three passes of the network, as ``recist-seg predict --tta``).
    metadata : dict, optional
        The image layer's metadata: a model that reads each slice's neighbours finds them
        where the slices came from (``model_planes.LayerPlanes``).
    slice_mm : float, optional
        The stack's slice interval in mm, where known (``model_planes.slice_mm_of``).
    lesions_problem : str
        Why ``lesions`` is empty although a RECIST layer was chosen
        (``ComparisonInputs.lesions_problem``), for the error of a model that needs them.
    spacing : (float, float), optional
        The image's (row, col) pixel size in mm, where known: distances in the metrics rows
        are then in mm, else in pixels.

    Yields
    ------
    ("loaded", name) while models load, then one ``("result", dict)`` per model with
    ``name``, ``kind``, ``mode``, ``mask`` (uint8, the image's spatial shape), ``groups``
    (multitask models: the predicted group per ``(slice, lesion id)``, or per ``(slice,
    None)`` for a whole image) and ``rows`` (``metric_rows``; empty without ``gt``).
    All models are loaded and checked before the first prediction, so a problem with any of
    them stops the run before anything is shown.

    Raises
    ------
    ValueError
        For a threshold outside (0, 1), or a lesion-crop model without lesions.
    """
    threshold = float(threshold)
    if not 0 < threshold < 1:
        raise ValueError(f"the threshold must be between 0 and 1, got {threshold}")
    prepare_torch_import()
    from ..learning.inference import is_prompted

    volume = np.ndim(image) - (1 if rgb else 0) == 3
    models = []
    for entry in entries:
        if entry.model is None:
            entry.model = load_entry(entry.path, "cpu")[2]
            yield ("loaded", entry.name)
        mode = entry.model.preprocessing.get("mode", "whole_image")
        # A prompted model segments the lesions it is shown, like a lesion-crop model.
        per_lesion = mode == "crops" or is_prompted(entry.model)
        if per_lesion and not lesions:
            why = "is RECIST-prompted" if is_prompted(entry.model) else \
                "was trained on lesion crops"
            if lesions_problem:
                raise ValueError(f"{entry.name!r} {why}, and {lesions_problem}")
            raise ValueError(f"{entry.name!r} {why}: choose the image's RECIST layer (with at "
                             f"least one complete lesion)")
        models.append((entry, entry.model, "crops" if per_lesion else mode))
    planes = range(image.shape[0]) if volume else [None]
    layer_planes = LayerPlanes(image, rgb, metadata, slice_mm)
    for entry, model, mode in models:
        try:
            yield _predict_one(entry, model, mode, image, planes, layer_planes, lesions, gt,
                               threshold, tta, volume, spacing)
        except ValueError as exc:
            # One model's failure shows nothing of the others: the user can leave it out.
            others = "; untick it to compare the other models" if len(models) > 1 else ""
            raise ValueError(f"{entry.name}: {exc}{others}") from None


def _predict_one(entry, model, mode, image, planes, layer_planes, lesions, gt, threshold, tta,
                 volume, spacing=None):
    """``predict_models``' result message for one model."""
    from ..learning.inference import predict_detailed

    shape = image.shape[: 3 if volume else 2]
    mask = np.zeros(shape, dtype=np.uint8)
    groups: dict = {}  # (slice, lesion id or None) -> predicted group
    done_planes = []
    for z in planes:
        plane = image if z is None else image[z]
        if mode == "crops":
            mine = [(lid, r) for s, r, lid in lesions if s == z]
            if not mine:
                continue
            plane, channel_axis = layer_planes.plane(z, context_of(model),
                                                     slice_gap_of(model))
            pred = predict_detailed(model, plane, [r for _, r in mine],
                                    threshold=threshold, tta=tta, channel_axis=channel_axis)
            if pred.groups is not None:
                for (lid, _), g in zip(mine, pred.groups):
                    groups[(z, lid)] = int(g)
        else:
            pred = predict_detailed(model, plane, threshold=threshold, tta=tta)
            if pred.groups is not None:
                groups[(z, None)] = int(pred.groups[0])
        if z is None:
            mask[...] = pred.mask
        else:
            mask[z] = pred.mask
        done_planes.append(z)
    rows = [] if gt is None else metric_rows(entry.name, mask, gt, done_planes, lesions,
                                             groups, mode, spacing)
    return ("result", {"name": entry.name, "kind": entry.kind, "mask": mask,
                       "groups": groups, "rows": rows, "mode": mode})


# -- metrics ----------------------------------------------------------------------------------
def _plane_note(pred: np.ndarray, truth: np.ndarray) -> str:
    if not pred.any() and not truth.any():
        # Scored as agreeing (Dice 1), which a ground truth of another scan also gives.
        return EMPTY_BOTH
    if not pred.any() and truth.any():
        return EMPTY_PREDICTION
    if pred.any() and not truth.any():
        return EMPTY_TRUTH
    return ""


def metric_rows(name: str, mask, gt, planes, lesions=(), groups=None,
                mode: str = "whole_image", spacing=None) -> list[dict]:
    """Metrics rows of one model's prediction: the image first, then each lesion.

    Parameters
    ----------
    name : str
        The model's name (the rows' ``model``).
    mask : ndarray
        The prediction, the spatial shape of ``gt`` (non-zero is lesion).
    gt : ndarray
        Ground-truth labels (one value per lesion, or a plain mask whose connected
        components are the lesions).
    planes : list of int, or [None]
        The slices that were predicted; ``[None]`` for a 2D image.
    lesions : list of (slice or None, Recist, lesion id)
        The RECIST lesions, to find each ground-truth lesion's predicted group.
    groups : dict, optional
        Predicted group per ``(slice, lesion id)`` (or ``(slice, None)`` for a whole image).
    mode : str
        "crops": only the ground-truth lesions with a RECIST centred in them were asked
        about, so only they are scored.
    spacing : (float, float), optional
        The (row, col) pixel size in mm: distances in mm rather than pixels.

    Returns
    -------
    list of dict
        ``model``, ``lesion`` (the ground truth's label of the lesion, "all" for the image
        row), ``recist`` (the id of the RECIST lesion centred in it, as the other docks
        number them; "" for none), ``slice``, ``group``, every metric of
        ``METRIC_NAMES`` (NaN where undefined) and ``note``. The image row holds the metrics of
        the whole image (of a volume: the mean over the predicted slices, each metric over the
        slices that define it); its note counts the slices with an empty prediction.
    """
    groups = groups or {}
    mask = np.asarray(mask)
    gt = np.asarray(gt)
    if mask.shape != gt.shape:
        raise ValueError(f"the prediction is {mask.shape} but the ground truth {gt.shape}")
    rows, per_plane, notes = [], [], []
    # Decided on the whole volume: one slice of a labelled volume may hold a single label.
    labelled = len(np.unique(gt[gt > 0])) > 1
    for z in planes:
        p = (mask if z is None else mask[z]) > 0
        labels = lesion_labels(gt if z is None else gt[z], labelled)
        # The group of each ground-truth lesion: that of the RECIST lesion centred in it.
        asked, group_of, recist_of = set(), {}, {}
        for s, recist, lid in lesions:
            value = _label_at(labels, recist.centre) if s == z else 0
            if value:
                asked.add(value)
                recist_of.setdefault(value, lid)
                if (z, lid) in groups:
                    group_of.setdefault(value, groups[(z, lid)])
        if mode == "crops":
            labels = np.where(np.isin(labels, sorted(asked)), labels, 0)
        per_plane.append(segmentation_metrics(p, labels > 0, empty="nan", spacing=spacing))
        notes.append(_plane_note(p, labels > 0))
        image_group = groups.get((z, None))
        for value, metrics in lesion_metrics(p, labels, empty="nan", spacing=spacing):
            g = group_of.get(value, image_group)
            note = EMPTY_PREDICTION if np.isnan(metrics["hausdorff"]) else ""
            rows.append({"model": name, "lesion": value, "recist": recist_of.get(value, ""),
                         "slice": "" if z is None else z,
                         "group": "" if g is None else g, **metrics, NOTE: note})
    if per_plane:
        rows.insert(0, {"model": name, "lesion": "all", "recist": "",
                        "slice": "" if list(planes) == [None] else f"{len(planes)} slices",
                        "group": " ".join(str(g) for g in sorted(set(groups.values()))),
                        **mean_metrics(per_plane), NOTE: _summary_note(notes)})
    return rows


def _summary_note(notes: list[str]) -> str:
    if len(notes) == 1:
        return notes[0]
    parts = []
    for text in (EMPTY_PREDICTION, EMPTY_TRUTH, EMPTY_BOTH):
        n = notes.count(text)
        if n:
            parts.append(f"{text} on {n} of {len(notes)} slices")
    return "; ".join(parts)


#: Every column of a metrics row, in order (the CSV file's header).
ROW_COLUMNS = (*ID_COLUMNS, *METRIC_NAMES, NOTE)
