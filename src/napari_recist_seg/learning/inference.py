"""Using trained models: load a checkpoint, predict masks (and groups) on new images."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from skimage.transform import resize

from ..core.grouping import LesionGrouping
from ..core.recist_prompt import keep_marked_parts, prompt_channels
from ..core.recist_refinement import DEFAULT_REFINEMENT, check_refinement, refine_probability
from ..data.crops import crop_transform_for
from ..data.dataset import crop_input, whole_image_input, whole_image_recist
from ..data.deeplesion import png_plane_to_volume
from ..data.volumes import ScanLabels
from .checkpoints import (
    check_config_fields,
    interrupted_save_copy,
    load_checkpoint,
    read_checkpoint_config,
)
from .devices import pick_device
from .model_kinds import MODEL_REGISTRY
from .slice_context import slice_context, slice_gap_mm

__all__ = [
    "LESION_COLUMNS",
    "Prediction",
    "TablePrediction",
    "batch_probabilities",
    "is_prompted",
    "load_model",
    "predict",
    "predict_detailed",
    "predict_table",
    "resolve_checkpoint",
]


def resolve_checkpoint(path) -> Path:
    """The checkpoint folder for ``path``: the folder itself, a training run's ``best/``, or
    the ``best/`` of the one run in a training output folder."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return p
    if (p / "best" / "config.json").is_file():
        return p / "best"
    # A save killed between its two renames leaves the folder absent and a complete copy
    # next to it, which load_checkpoint reads.
    if interrupted_save_copy(p) is not None:
        return p
    if p.is_dir() and interrupted_save_copy(p / "best") is not None:
        return p / "best"
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    # ``recist-seg train --out`` holds one run per model kind.
    runs = sorted(c for c in p.iterdir() if (c / "best" / "config.json").is_file()) \
        if p.is_dir() else []
    if len(runs) == 1:
        return runs[0] / "best"
    if runs:
        names = ", ".join(str(r) for r in runs)
        raise ValueError(f"{p} holds {len(runs)} trained models; choose one of {names}")
    raise ValueError(f"{p} is not a checkpoint folder (no config.json, nor best/config.json)")


def load_model(path, device: str = "cpu") -> torch.nn.Module:
    """Load a trained model, ready to predict.

    Parameters
    ----------
    path : path
        A checkpoint folder, or a training output folder (its ``best/`` is used).
    device : str
        "cpu", "cuda", "mps" or "auto".

    Returns
    -------
    torch.nn.Module
        In eval mode, with ``kind`` (model kind), ``config`` (build arguments),
        ``checkpoint_config`` (everything saved: training settings, preprocessing, history),
        ``preprocessing`` and ``grouping`` (a ``LesionGrouping`` or None) attached.
    """
    folder = resolve_checkpoint(path)
    # Preprocessing and grouping are checked before the network is built or weights read.
    check_config_fields(read_checkpoint_config(folder), Path(folder) / "config.json")
    model, config = load_checkpoint(folder, map_location=pick_device(device))
    model.checkpoint_config = config
    model.checkpoint_path = str(folder)
    model.preprocessing = dict(config.get("preprocessing") or {
        "mode": "whole_image", "size": int(model.config.get("input_size", 128))})
    grouping = config.get("grouping")
    model.grouping = None if grouping is None else LesionGrouping.from_dict(grouping)
    return model


@dataclass
class Prediction:
    """A model's output for one image.

    Attributes
    ----------
    mask : ndarray of bool, the image's (rows, cols)
    probability : ndarray of float32, same shape: the foreground probability
    groups : ndarray of int or None
        Predicted RECIST group per lesion (one entry in whole-image mode) for multitask models.
    """

    mask: np.ndarray
    probability: np.ndarray
    groups: np.ndarray | None = None


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def batch_probabilities(model, batch: np.ndarray, tta: bool,
                        prompts: np.ndarray | None = None):
    """Mask probabilities and group logits of a batch of network inputs.

    Parameters
    ----------
    model : torch.nn.Module
        A loaded model (``load_model``).
    batch : ndarray
        (N, C, S, S) float32 inputs, prepared as the model was trained.
    tta : bool
        Average with the predictions of the row- and column-flipped inputs.
    prompts : ndarray, optional
        (N, P, S, S) RECIST prompt channels, for prompted models.

    Returns
    -------
    tuple
        (N, S, S) mask probabilities, and (N, K) group logits or None.
    """
    device = _device_of(model)
    x = torch.from_numpy(batch).to(device)
    p = None if prompts is None else torch.from_numpy(prompts).to(device)
    entry = MODEL_REGISTRY[model.kind]

    def once(inp, prompt):
        if entry.prompted:
            return model(inp, prompt), None
        out = model(inp)
        if not (entry.groups or entry.paired):
            return out, None
        return out[0], (out[1] if entry.groups else None)

    with torch.no_grad():
        logits, groups = once(x, p)
        prob = torch.sigmoid(logits)
        if tta:
            # Flip test-time augmentation: average the predictions of mirrored inputs.
            for dims in ((3,), (2,)):
                lg, _ = once(torch.flip(x, dims), None if p is None else torch.flip(p, dims))
                prob = prob + torch.flip(torch.sigmoid(lg), dims)
            prob = prob / 3
    return prob[:, 0].cpu().numpy(), None if groups is None else groups.cpu().numpy()


def _prompts(model, recists, size: int) -> np.ndarray:
    """Prompt channels of RECIST in a model's input pixels, with the prior drawn as the
    model's training drew it (checkpoints that do not say had a blurred one)."""
    edge = str((getattr(model, "config", None) or {}).get("prior_edge", "blur"))
    return np.stack([prompt_channels(r, (size, size), prior_edge=edge) for r in recists])


def is_prompted(model) -> bool:
    """Whether ``model`` needs each lesion's RECIST to predict."""
    entry = MODEL_REGISTRY.get(getattr(model, "kind", None))
    return bool(entry is not None and entry.prompted)


def _plane_shape(image: np.ndarray, channel_axis) -> tuple[int, int]:
    if image.ndim == 2:
        return image.shape
    if channel_axis == 0:
        return image.shape[1:]
    return image.shape[:2]


def predict_detailed(model, image, recists=None, *, threshold: float = 0.5, tta: bool = False,
                     batch_size: int = 8, window=None, channel_axis=None,
                     refine: str = DEFAULT_REFINEMENT) -> Prediction:
    """Predict with probabilities and groups; see ``predict``."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    check_refinement(refine)
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2D grey or RGB, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise ValueError("image has non-finite values (NaN or inf)")
    image = _grey_as_colour(model, image)
    pre = model.preprocessing
    size = int(pre.get("size", 128))
    normalise = pre.get("normalise")
    shape = _plane_shape(image, channel_axis)
    if recists is not None:
        recists = _checked_recists(recists, shape)
    mode = pre.get("mode", "whole_image")
    prompted = is_prompted(model)
    if prompted and recists is None:
        raise ValueError("this model is RECIST-prompted: give the RECIST of each lesion to "
                         "segment")
    if mode == "crops" and recists is None:
        raise ValueError(
            "this model was trained on lesion crops: give the RECIST of the lesions to segment "
            "(recists=..., or --recists FILE on the command line)"
        )
    if mode == "whole_image" and recists is not None and not prompted:
        raise ValueError(
            "this model was trained on whole images: predict without RECIST (recists=None)"
        )
    model.eval()
    if mode == "whole_image" and prompted:
        return _predict_whole_prompted(model, image, list(recists), size, normalise, shape,
                                       channel_axis, threshold, tta, batch_size, refine)
    if recists is None:
        x = whole_image_input(image, size, channel_axis=channel_axis, normalise=normalise)
        _check_channels(model, x)
        prob, groups = batch_probabilities(model, x[None], tta)
        full = resize(prob[0], shape, order=1, mode="edge", anti_aliasing=False)
        full = full.astype(np.float32)
        g = None if groups is None else np.argmax(groups, axis=1)
        return Prediction(full >= threshold, full, g)

    recists = list(recists)
    full = np.zeros(shape, np.float32)
    group_out = []
    win = window if window is not None else pre.get("window")
    margin = float(pre.get("margin", 0.5))
    fov = pre.get("field_of_view_mm")
    fov_px = pre.get("field_of_view_px")
    for start in range(0, len(recists), batch_size):
        chunk = recists[start:start + batch_size]
        transforms = [crop_transform_for(r, size, margin, fov, field_of_view_px=fov_px)
                      for r in chunk]
        batch = np.stack([
            crop_input(image, t, window=win, channel_axis=channel_axis, normalise=normalise)
            for t in transforms
        ])
        _check_channels(model, batch[0])
        prompts = None
        if prompted:
            prompts = _prompts(model, [t.crop_recist(r) for t, r in zip(transforms, chunk)],
                               size)
        prob, groups = batch_probabilities(model, batch, tta, prompts)
        for t, p, r in zip(transforms, prob, chunk):
            pasted = t.paste_values(p, shape)
            if prompted:
                pasted = _lesion_only(pasted, r, threshold, refine,
                                      _refinement_plane(image, channel_axis))
            full = np.maximum(full, pasted)
        if groups is not None:
            group_out.extend(np.argmax(groups, axis=1).tolist())
    groups_arr = (np.asarray(group_out, dtype=np.int64) if MODEL_REGISTRY[model.kind].groups
                  else None)
    return Prediction(full >= threshold, full, groups_arr)


def _predict_whole_prompted(model, image, recists, size, normalise, shape, channel_axis,
                            threshold, tta, batch_size, refine) -> Prediction:
    """A whole-image prompted model: one pass per lesion, each prompted by its own RECIST."""
    x = whole_image_input(image, size, channel_axis=channel_axis, normalise=normalise)
    _check_channels(model, x)
    full = np.zeros(shape, np.float32)
    for start in range(0, len(recists), batch_size):
        chunk = recists[start:start + batch_size]
        prompts = _prompts(model, [whole_image_recist(r, shape, size) for r in chunk], size)
        prob, _ = batch_probabilities(model, np.repeat(x[None], len(chunk), axis=0), tta,
                                      prompts)
        for p, r in zip(prob, chunk):
            lesion = resize(p, shape, order=1, mode="edge", anti_aliasing=False)
            full = np.maximum(full, _lesion_only(lesion.astype(np.float32), r, threshold, refine,
                                                 _refinement_plane(image, channel_axis)))
    return Prediction(full >= threshold, full, None)


def _checked_recists(recists, shape) -> list:
    """``recists`` as a list, each a Recist on an image of ``shape`` (else a ValueError)."""
    from ..core.recist import Recist, outside_image

    if isinstance(recists, Recist):
        raise ValueError("recists must be a list of Recist, one per lesion: got a single "
                         "Recist (pass [recist])")
    try:
        recists = list(recists)
    except TypeError:
        raise ValueError(f"recists must be a list of Recist, got "
                         f"{type(recists).__name__}") from None
    for i, r in enumerate(recists):
        if not isinstance(r, Recist):
            raise ValueError(f"recists[{i}] must be a Recist, got {type(r).__name__}")
        problem = outside_image(r, shape)
        if problem:
            raise ValueError(f"recists[{i}]: {problem}")
    return recists


def _refinement_plane(image: np.ndarray, channel_axis) -> np.ndarray:
    """The picture the random walker refines a prompted mask on: the image itself when grey
    or channels-last colour, else the middle plane of a stack of slices (the key slice)."""
    if image.ndim == 2 or (channel_axis in (None, -1, 2) and image.shape[-1] == 3):
        return image
    planes = np.moveaxis(image, -1 if channel_axis is None else channel_axis, 0)
    return planes[planes.shape[0] // 2]


def _lesion_only(probability: np.ndarray, recist, threshold: float, refine: str,
                 plane: np.ndarray) -> np.ndarray:
    """A prompted lesion's probability map, refined by its RECIST and the image
    (``core.recist_refinement``), without the pieces its RECIST does not cross (their
    probabilities are set to 0)."""
    probability = refine_probability(probability, recist, plane, refine)
    above = probability >= threshold
    kept = keep_marked_parts(above, recist)
    return np.where(above & ~kept, np.float32(0.0), probability)


def _grey_as_colour(model, image: np.ndarray) -> np.ndarray:
    """A grey 8-bit picture given to a colour model, as its three equal channels: training
    does the same with the grey images of a mostly colour folder or table. CT values (not
    8-bit) and a CT model's channels (a slice and its neighbours) are left to be refused."""
    if (image.ndim != 2 or image.dtype != np.uint8
            or int(model.config.get("in_channels", 3)) != 3):
        return image
    source = (getattr(model, "preprocessing", None) or {}).get("source") or {}
    if source.get("neighbours") and not source.get("colour"):
        return image
    return np.repeat(image[..., None], 3, axis=-1)


def _check_channels(model, x: np.ndarray) -> None:
    expected = int(model.config.get("in_channels", x.shape[0]))
    if x.shape[0] != expected:
        source = (getattr(model, "preprocessing", None) or {}).get("source") or {}
        k = int(source.get("neighbours") or 0)
        hint = ""
        if k and expected == 2 * k + 1 and not source.get("colour"):
            hint = (f": it reads a CT key slice with {k} neighbouring slice(s) on each side; "
                    f"give them as a ({expected}, H, W) stack in HU with channel_axis=0 (for "
                    f"DeepLesion, data.deeplesion.read_deeplesion_slice(record, "
                    f"neighbours={k}))")
        elif expected == 3 and x.shape[0] == 1:
            hint = (": a grey picture is given to a colour model as 8-bit (uint8) values, "
                    "which it then reads in three equal channels; convert it to uint8 or to "
                    "(H, W, 3)")
        raise ValueError(
            f"the model takes {expected}-channel images but this image gives {x.shape[0]} "
            f"channel(s){hint}"
        )


def predict(model, image, recists=None, *, threshold: float = 0.5, tta: bool = False,
            batch_size: int = 8, window=None, channel_axis=None,
            refine: str = DEFAULT_REFINEMENT) -> np.ndarray:
    """Segment lesions in a 2D image.

    Parameters
    ----------
    model : torch.nn.Module
        From ``load_model``.
    image : ndarray
        ``(H, W)`` grey or ``(H, W, 3)`` RGB (uint8, or float in [0, 1]; CT in HU with
        ``recists``).
    recists : sequence of Recist, optional
        Lesion-crop mode: a patch around each lesion is segmented and pasted back. Without
        it, the whole image is resized to the model's input size (dermoscopy mode).
    threshold : float
        Probability above which a pixel is lesion.
    tta : bool
        Average over horizontal and vertical flips.
    batch_size : int
        Patches per forward pass in lesion-crop mode.
    window : str or (lo, hi), optional
        CT window for lesion crops (default: the one the model was trained with).
    channel_axis : int, optional
        For channel stacks other than channels-last RGB.
    refine : {"random_walker", "trimap", "none"}
        For RECIST-prompted models: how each lesion's probability is refined with what its
        RECIST guarantees and the image shows (``core.recist_refinement``). The default
        averages it with a random walker's inside the RECIST's trimap; ``"none"`` gives the
        network's own output.

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    return predict_detailed(model, image, recists, threshold=threshold, tta=tta,
                            batch_size=batch_size, window=window,
                            channel_axis=channel_axis, refine=refine).mask


#: Columns of ``lesions.csv`` written by ``predict_table``.
LESION_COLUMNS = ("image", "slice", "lesion", "lesion_id", "row", "mask", "area_mm2", "long_mm",
                  "short_mm", "area_px", "long_px", "short_px", "group")


@dataclass
class TablePrediction:
    """What ``predict_table`` wrote.

    Attributes
    ----------
    masks : list of Path
        One 8-bit PNG per key slice (255 inside any predicted lesion of the slice).
    lesions : list of dict
        One per lesion, keyed by ``LESION_COLUMNS`` (also written to ``lesions.csv``).
    lesions_csv : Path
    label_images : list of Path
        One per volume: its lesions on its own voxel grid, each lesion's voxels holding its
        ``row``.
    """

    masks: list
    lesions: list
    lesions_csv: Path
    label_images: list = field(default_factory=list)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _measure(mask: np.ndarray, spacing, known: bool) -> dict:
    """Area and RECIST diameters of the lesion's largest predicted component."""
    from ..core.recist import recist_from_mask

    lesion = _largest_component(mask)
    area_px = int(lesion.sum())
    out = {"area_px": area_px, "long_px": "", "short_px": "", "area_mm2": "", "long_mm": "",
           "short_mm": ""}
    if known:
        out["area_mm2"] = round(area_px * float(spacing[0]) * float(spacing[1]), 4)
    try:
        r = recist_from_mask(lesion, spacing=spacing)
    except ValueError:
        return out  # nothing (or a single pixel) predicted: no diameters to measure
    out["long_px"], out["short_px"] = round(r.long_length, 4), round(r.short_length, 4)
    if known:
        out["long_mm"], out["short_mm"] = round(r.long_mm, 4), round(r.short_mm, 4)
    return out


def predict_table(model, path, out, *, images=None, split=None, threshold: float = 0.5,
                  tta: bool = False, batch_size: int = 8, overwrite: bool = False,
                  progress=None, refine: str = DEFAULT_REFINEMENT) -> TablePrediction:
    """Segment every lesion of a table and write one mask per key slice and ``lesions.csv``.

    Parameters
    ----------
    model : torch.nn.Module
        From ``load_model``: a lesion-crop model.
    path : str or Path
        DeepLesion's ``DL_info.csv`` or a RECIST ``.csv``/``.json`` naming its images (see
        ``read_lesion_table``). Its slices are read one key slice at a time.
    out : str or Path
        Output folder. Masks are 8-bit PNGs the size of the slice, 255 inside any predicted
        lesion, named as DeepLesion's ``File_name`` for DeepLesion, ``<image stem>_mask.png``
        for a 2D image and ``<image stem>_slice<z>_mask.png`` for a volume's slice.
        Each volume (NIfTI, MetaImage, NRRD, DICOM series) also gets
        ``<image stem>_labels.nii.gz`` on its own voxel grid (size, spacing, origin and axes as
        the file states them, so that radiology viewers overlay it on the scan), in which each
        lesion's voxels hold its ``row``.
        ``lesions.csv`` has a row per lesion (``LESION_COLUMNS``): the diameters are those of
        the RECIST measured on the lesion's predicted mask (its largest connected part), in
        mm where the pixel size is known (else those columns are empty and the ``_px`` ones
        hold the values); ``group`` is the predicted RECIST group of a multitask model.
    images : str or Path, optional
        The image folder, as in ``read_lesion_table``.
    split : int, optional
        Only the rows of this DeepLesion ``Train_Val_Test`` (1, 2 or 3).
    threshold, tta, batch_size, refine
        As in ``predict``.
    overwrite : bool
        Replace existing output files; otherwise any existing one is refused before anything
        is written.
    progress : callable, optional
        ``progress(iterable, description)`` wrapping the loop over key slices.

    Returns
    -------
    TablePrediction
    """
    import csv

    from ..data._atomic import NewOutputs, atomic_write
    from ..data.recist_sources import read_lesion_table

    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    check_refinement(refine)
    pre = dict(model.preprocessing)
    if pre.get("mode") != "crops":
        raise ValueError("this model was trained on whole images; a lesion table needs a model "
                         "trained on lesion crops (recist-seg train on a table)")
    source = dict(pre.get("source") or {})
    table = read_lesion_table(path, images, neighbours=slice_context(pre),
                              slice_gap_mm=slice_gap_mm(pre) or 2.0,
                              colour=source.get("colour"))
    rows = list(enumerate(table.rows))
    if split is not None:
        names = {1: "train", 2: "val", 3: "test"}
        if split not in names:
            raise ValueError(f"split must be 1, 2 or 3 (Train_Val_Test), got {split!r}")
        if all(r.split is None for r in table.rows):
            raise ValueError(f"{table.path}: split selects rows by their Train_Val_Test (or "
                             "split) column; this table has none")
        rows = [(i, r) for i, r in rows if r.split == names[split]]
        if not rows:
            raise ValueError(f"{table.path}: no rows with Train_Val_Test {split}")
    expected = int(model.config.get("in_channels", table.in_channels))
    if table.in_channels != expected:
        raise ValueError(f"the model takes {expected}-channel inputs but {table.path} gives "
                         f"{table.in_channels} (key slice and neighbours, or colour)")
    fixed = source.get("window")
    windows = table.windows(None if fixed is None else tuple(fixed))
    out = Path(out)
    by_stack: dict[int, list] = {}
    for i, r in rows:
        by_stack.setdefault(r.stack, []).append((i, r))
    targets = {s: out / members[0][1].mask_name for s, members in by_stack.items()}
    volumes = _volume_label_images(table, by_stack, out)
    lesions_csv = out / "lesions.csv"
    if not overwrite:
        clashes = [p for p in [*targets.values(), *volumes.values(), lesions_csv]
                   if p.exists() or p.is_symlink()]
        if clashes:
            more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
            raise ValueError(f"{clashes[0]} already exists{more}; pass --overwrite to "
                             f"replace existing files (nothing was written)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    outputs = NewOutputs([out, *{t.parent for t in [*targets.values(), *volumes.values()]}],
                         overwrite=overwrite)

    records: dict[int, dict] = {}
    written = []
    volume_labels: dict[str, ScanLabels] = {}
    # Row numbers label the lesions in a volume's label image.
    label_type = np.uint16 if max(r.row for _, r in rows) < 2 ** 16 else np.uint32
    stacks = list(by_stack.items())
    loop = stacks if progress is None else progress(stacks, "predicting")
    with outputs:
        for s, members, lesion_masks, groups in _predict_stacks(model, table, loop, windows,
                                                                 threshold, tta, batch_size,
                                                                 refine):
            union = np.zeros(lesion_masks[0].shape, dtype=bool)
            for (i, r), lesion, group in zip(members, lesion_masks, groups):
                union |= lesion
                slot = _scan_slot(table.stacks[s], r)
                if slot is not None:
                    key, plane = slot
                    if key not in volume_labels:
                        volume_labels[key] = ScanLabels(table.stacks[s].grid(), label_type)
                    labels = volume_labels[key]
                    if table.stacks[s].kind == "deeplesion_volume":
                        lesion_in_file = png_plane_to_volume(lesion, labels.grid)
                    else:
                        lesion_in_file = lesion
                    labels.add(lesion_in_file, r.row, plane)
                records[i] = {"image": r.image, "slice": "" if r.slice is None else r.slice,
                              "lesion": i, "lesion_id": r.lesion_id, "row": r.row,
                              "mask": r.mask_name,
                              **_measure(lesion, r.recist.spacing, r.spacing_known),
                              "group": "" if group is None else group}
            _write_png(outputs.file(targets[s]), union)
            written.append(targets[s])
        label_images = []
        for key, labels in volume_labels.items():
            labels.write(outputs.file(volumes[key]))
            label_images.append(volumes[key])
        lesions = [records[i] for i, _ in rows]
        with atomic_write(outputs.file(lesions_csv), newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(LESION_COLUMNS))
            w.writeheader()
            w.writerows(lesions)
    return TablePrediction(written, lesions, lesions_csv, label_images)


def _scan_slot(stack, row) -> tuple[str, int] | None:
    """(scan, slice) where a lesion's mask goes in a scan's label image; None for lesions on
    2D images and DeepLesion's PNG slices. A DeepLesion NIfTI file is the scan of its key
    slices."""
    if stack.kind in ("volume", "dicom"):
        return row.image, row.slice
    if stack.kind == "deeplesion_volume":
        return stack.paths[0], stack.planes[len(stack.planes) // 2]
    return None


def _volume_label_images(table, by_stack, out: Path) -> dict[str, Path]:
    """``{scan: out / "<stem>_labels.nii.gz"}`` for the scans among the predicted rows (keys
    as ``_scan_slot`` gives them)."""
    names = {}
    for s, members in by_stack.items():
        stack = table.stacks[s]
        if stack.kind == "deeplesion_volume":
            name = Path(stack.paths[0]).name
            stem = re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)
            names[stack.paths[0]] = out / f"{stem}_labels.nii.gz"
        elif stack.kind in ("volume", "dicom"):
            for _, r in members:
                # A volume slice's mask is "<stem>_slice<z>_mask.png" (see LesionRow.mask_name).
                stem = r.mask_name[: -len(f"_slice{r.slice}_mask.png")]
                names[r.image] = out / f"{stem}_labels.nii.gz"
    return names


def _predict_stacks(model, table, stacks, windows, threshold, tta, batch_size,
                    refine=DEFAULT_REFINEMENT):
    """For each (stack index, [(row index, LesionRow)]) of ``stacks``: the same, each lesion's
    predicted mask on the slice, and its predicted group (None unless multitask). One key
    slice is read at a time."""
    pre = model.preprocessing
    size = int(pre.get("size", 128))
    margin = float(pre.get("margin", 0.5))
    fov_px = pre.get("field_of_view_px")
    normalise = pre.get("normalise")
    model.eval()
    for s, members in stacks:
        image = table.stacks[s].read()
        shape = image.shape[-2:]
        masks, groups_out = [], []
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            transforms = [crop_transform_for(r.recist, size, margin,
                                             field_of_view_px=fov_px) for _, r in chunk]
            batch = np.stack([crop_input(image, t, window=windows[i], channel_axis=0,
                                         normalise=normalise)
                              for (i, _), t in zip(chunk, transforms)])
            _check_channels(model, batch[0])
            prompts = None
            if is_prompted(model):
                prompts = _prompts(model, [t.crop_recist(r.recist)
                                           for (_, r), t in zip(chunk, transforms)], size)
            prob, groups = batch_probabilities(model, batch, tta, prompts)
            for k, t in enumerate(transforms):
                pasted = t.paste_values(prob[k], shape)
                if prompts is not None:
                    pasted = _lesion_only(pasted, chunk[k][1].recist, threshold, refine,
                                          _refinement_plane(image, 0))
                masks.append(pasted >= threshold)
                groups_out.append(None if groups is None else int(np.argmax(groups[k])))
        yield s, members, masks, groups_out


def _write_png(path: Path, mask: np.ndarray) -> None:
    import imageio.v3 as iio

    from ..data._atomic import atomic_write

    with atomic_write(path, "wb", encoding=None) as fh:
        iio.imwrite(fh, mask.astype(np.uint8) * np.uint8(255), extension=".png")
