"""Tiny data sets and tiny training runs shared by the learning tests.

Everything is small enough for a shared two-core CPU: 12 dermoscopy-like images of 48 pixels,
a 32-pixel network input, ResNet-18, batch 4, two epochs. A run of each model kind is
trained once per test session and reused by the trainer and inference tests.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import torch

from napari_recist_seg.core.recist import recist_from_mask
from napari_recist_seg.data.samples import ct_phantom_slice, dermoscopy_dataset
from napari_recist_seg.learning import checkpoints
from napari_recist_seg.learning.checkpoints import save_checkpoint
from napari_recist_seg.learning.models import build_model
from napari_recist_seg.learning.preparation import prepare_whole_images
from napari_recist_seg.learning.trainer import TrainConfig, train

INPUT = 32
N_IMAGES = 12  # 9 training and 3 validation lesions with val_fraction 0.25
N_GROUPS = 2
EPOCHS = 2


@functools.cache
def dermoscopy(n: int = N_IMAGES, size: int = 48, seed: int = 0):
    """``n`` RGB images and their RECIST, simulated from the true masks."""
    images, masks = dermoscopy_dataset(n, seed=seed, size=size)
    return tuple(images), tuple(recist_from_mask(m) for m in masks)


@functools.cache
def phantom_slices(seeds=(0, 1)):
    """CT phantom slices and their lesions: (images, recists, image_index)."""
    images, recists, index = [], [], []
    for k, seed in enumerate(seeds):
        sample = ct_phantom_slice(seed)
        images.append(sample["image"])
        recists.extend(sample["recists"])
        index.extend([k] * len(sample["recists"]))
    return tuple(images), tuple(recists), tuple(index)


@functools.cache
def prepared():
    """Whole-image training (9 lesions) and validation (3 lesions) sets, 2 groups."""
    images, recists = dermoscopy()
    return prepare_whole_images(images, recists, size=INPUT, val_fraction=0.25, k=N_GROUPS)


def config(kind: str, **changes) -> TrainConfig:
    """A tiny training configuration of ``kind``."""
    settings = dict(kind=kind, encoder="resnet18", input_size=INPUT, epochs=EPOCHS, batch_size=4,
                    lr=1e-3, n_groups=N_GROUPS if kind == "multitask" else None, seed=0,
                    device="cpu")
    settings.update(changes)
    return TrainConfig(**settings)


@contextlib.contextmanager
def quick():
    """One torch thread, and checkpoint files not forced to disk: the tests never lose power,
    and flushing some hundred megabytes a checkpoint is most of a tiny run's time."""
    previous = torch.get_num_threads()
    flush = checkpoints._fsync_file, checkpoints.fsync_folder
    torch.set_num_threads(1)
    checkpoints._fsync_file = checkpoints.fsync_folder = lambda path: None
    try:
        yield
    finally:
        checkpoints._fsync_file, checkpoints.fsync_folder = flush
        torch.set_num_threads(previous)


_RUNS: dict[str, tuple[Path, list]] = {}


def trained_run(kind: str, tmp_path_factory) -> tuple[Path, list]:
    """(output folder, events) of one uninterrupted run of ``kind``, trained once a session."""
    if kind not in _RUNS:
        data = prepared()
        out = tmp_path_factory.mktemp(f"run-{kind}")
        with quick():
            events = list(train(data.train_set, data.val_set, config(kind), out,
                                grouping=data.grouping))
        _RUNS[kind] = (out, events)
    return _RUNS[kind]


def saved_model(folder, kind: str = "a1", *, in_channels: int = 3, preprocessing=None,
                n_groups: int | None = None, seed: int = 0) -> Path:
    """An untrained model saved as a checkpoint with the given preprocessing."""
    torch.manual_seed(seed)
    model = build_model(kind, encoder="resnet18", in_channels=in_channels, input_size=INPUT,
                        n_groups=n_groups if kind == "multitask" else None)
    extra = {"preprocessing": preprocessing, "grouping": None}
    return save_checkpoint(folder, model, extra, [])


#: The ``source`` a model trained on a DeepLesion table records: the key slice and one
#: neighbour on each side, 2 mm apart, as its three channels.
TABLE_SOURCE = {"kind": "deeplesion", "neighbours": 1, "slice_gap_mm": 2.0, "colour": False,
                "window": None, "in_channels": 3}


def crop_preprocessing(**changes) -> dict:
    """The preprocessing record of a lesion-crop data set at the test input size."""
    pre = {"mode": "crops", "size": INPUT, "normalise": None, "channel_axis": None,
           "margin": 0.5, "field_of_view_mm": None, "window": None, "context": 0,
           "pseudo_mask_method": "ellipse"}
    pre.update(changes)
    return pre


def whole_preprocessing(**changes) -> dict:
    """The preprocessing record of a whole-image data set at the test input size."""
    pre = {"mode": "whole_image", "size": INPUT, "normalise": "image", "channel_axis": None,
           "pseudo_mask_method": "ellipse"}
    pre.update(changes)
    return pre


def square_support(transform, shape, grow: int = 1) -> np.ndarray:
    """Pixels of ``shape`` whose centres lie within ``grow`` pixels of a crop's square."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    r0, c0 = transform.edge
    side = transform.side
    return ((rr >= r0 - grow) & (rr <= r0 + side + grow)
            & (cc >= c0 - grow) & (cc <= c0 + side + grow))


def checkpoint_weights(folder) -> dict:
    """A checkpoint's weights as float64 copies, to compare two checkpoints."""
    model, _ = checkpoints.load_checkpoint(folder)
    return {k: v.detach().clone().double() for k, v in model.state_dict().items()}


def small_benchmark(tmp_path, models: str, *extra: str) -> Path:
    """``recist-seg benchmark`` of ``models`` on 8 small ISIC-like training images and 3 test
    images, one epoch at the test input size; the benchmark's output folder."""
    from napari_recist_seg.cli import main

    from ._folders import make_isic_folder

    data = make_isic_folder(tmp_path / "data", n=8, size=48)
    test_dir = make_isic_folder(tmp_path / "test", n=3, size=48, seed=2)
    bench = tmp_path / "bench"
    with quick():
        assert main(["benchmark", "--train", str(data), "--test", str(test_dir), "--out",
                     str(bench), "--models", models, "--epochs", "1", "--size", str(INPUT),
                     "--batch", "4", *extra]) == 0
    return bench
