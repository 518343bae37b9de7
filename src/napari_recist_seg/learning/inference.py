"""Using trained models: load a checkpoint, predict masks (and groups) on new images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.transform import resize

from ..core.grouping import LesionGrouping
from ..data.crops import crop_transform_for
from ..data.dataset import crop_input, whole_image_input
from .checkpoints import (
    check_config_fields,
    interrupted_save_copy,
    load_checkpoint,
    read_checkpoint_config,
)
from .devices import pick_device

__all__ = ["Prediction", "load_model", "predict", "predict_detailed", "resolve_checkpoint"]


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


def _run(model, batch: np.ndarray, tta: bool):
    """Mask probabilities (N, S, S) and group logits (N, K) or None for a batch of inputs."""
    x = torch.from_numpy(batch).to(_device_of(model))

    def once(inp):
        out = model(inp)
        if model.kind == "a1":
            return out, None
        return out[0], (out[1] if model.kind == "multitask" else None)

    with torch.no_grad():
        logits, groups = once(x)
        prob = torch.sigmoid(logits)
        if tta:
            # Flip test-time augmentation: average the predictions of mirrored inputs.
            for dims in ((3,), (2,)):
                lg, _ = once(torch.flip(x, dims))
                prob = prob + torch.flip(torch.sigmoid(lg), dims)
            prob = prob / 3
    return prob[:, 0].cpu().numpy(), None if groups is None else groups.cpu().numpy()


def _plane_shape(image: np.ndarray, channel_axis) -> tuple[int, int]:
    if image.ndim == 2:
        return image.shape
    if channel_axis == 0:
        return image.shape[1:]
    return image.shape[:2]


def predict_detailed(model, image, recists=None, *, threshold: float = 0.5, tta: bool = False,
                     batch_size: int = 8, window=None, channel_axis=None) -> Prediction:
    """Predict with probabilities and groups; see ``predict``."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2D grey or RGB, got shape {image.shape}")
    pre = model.preprocessing
    size = int(pre.get("size", 128))
    normalise = pre.get("normalise")
    shape = _plane_shape(image, channel_axis)
    mode = pre.get("mode", "whole_image")
    if mode == "crops" and recists is None:
        raise ValueError(
            "this model was trained on lesion crops: give the RECIST of the lesions to segment"
        )
    if mode == "whole_image" and recists is not None:
        raise ValueError(
            "this model was trained on whole images: predict without RECIST (recists=None)"
        )
    model.eval()
    if recists is None:
        x = whole_image_input(image, size, channel_axis=channel_axis, normalise=normalise)
        _check_channels(model, x)
        prob, groups = _run(model, x[None], tta)
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
    for start in range(0, len(recists), batch_size):
        chunk = recists[start:start + batch_size]
        transforms = [crop_transform_for(r, size, margin, fov) for r in chunk]
        batch = np.stack([
            crop_input(image, t, window=win, channel_axis=channel_axis, normalise=normalise)
            for t in transforms
        ])
        _check_channels(model, batch[0])
        prob, groups = _run(model, batch, tta)
        for t, p in zip(transforms, prob):
            full = np.maximum(full, t.paste_values(p, shape))
        if groups is not None:
            group_out.extend(np.argmax(groups, axis=1).tolist())
    groups_arr = (np.asarray(group_out, dtype=np.int64) if model.kind == "multitask"
                  else None)
    return Prediction(full >= threshold, full, groups_arr)


def _check_channels(model, x: np.ndarray) -> None:
    expected = int(model.config.get("in_channels", x.shape[0]))
    if x.shape[0] != expected:
        raise ValueError(
            f"the model takes {expected}-channel images but this image gives {x.shape[0]} "
            "channel(s)"
        )


def predict(model, image, recists=None, *, threshold: float = 0.5, tta: bool = False,
            batch_size: int = 8, window=None, channel_axis=None) -> np.ndarray:
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

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    return predict_detailed(model, image, recists, threshold=threshold, tta=tta,
                            batch_size=batch_size, window=window,
                            channel_axis=channel_axis).mask
