"""Training augmentation: flips and quarter turns, and the affine warp on top of them; images,
masks and prompts move together; the trainer, the commands and the report take the setting."""

import json

import numpy as np
import pytest

from napari_recist_seg.cli import main
from napari_recist_seg.core.recist import recist_from_mask
from napari_recist_seg.data.dataset import LesionDataset
from napari_recist_seg.learning.train_config import TrainConfig

from ._folders import make_isic_folder
from ._learning_data import INPUT, quick, small_benchmark

SIZE = 64


def _ellipse(rows, cols, r0, c0, a, b, angle):
    rr, cc = np.mgrid[:rows, :cols]
    y, x = rr - r0, cc - c0
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _masks_as_images(n=4):
    """Images that are their own lesion masks (white lesion on black), and the RECIST."""
    masks = [_ellipse(SIZE, SIZE, 30 + 2 * i, 34 - i, 18, 9, 0.4 * i) for i in range(n)]
    images = [np.repeat(m[..., None], 3, axis=2).astype(np.uint8) * 255 for m in masks]
    return images, [recist_from_mask(m) for m in masks], masks


def _dataset():
    images, recists, masks = _masks_as_images()
    return LesionDataset.from_whole_images(images, recists, size=SIZE, gt_masks=masks, seed=5)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _dihedral(mask):
    out = []
    for k in range(4):
        turned = np.rot90(mask, k)
        out += [turned, np.fliplr(turned)]
    return out


def test_affine_items_move_image_mask_and_truth_together():
    data = _dataset()
    view = data.with_augmentation("affine")
    assert not data.augment and not data.affine  # the data set itself is untouched
    moved = 0
    for epoch in range(3):
        view.epoch = epoch
        for i in range(len(view)):
            item = view[i]
            image = item["image"].numpy()[0]
            mask = item["mask"].numpy()[0]
            gt = item["gt"].numpy()[0]
            assert np.corrcoef(image.ravel(), mask.ravel())[0, 1] > 0.95
            plain = data.pseudo_mask(i)
            # The pseudo-mask and the true mask move as one: their overlap is kept.
            before = _dice(plain, data[i]["gt"].numpy()[0] > 0.5)
            assert abs(_dice(mask > 0.5, gt > 0.5) - before) < 0.03
            if not any(np.array_equal(mask > 0.5, d) for d in _dihedral(plain)):
                moved += 1
    # A rotation by any angle, scaling or shift is none of the eight flips and quarter turns.
    assert moved >= 10


def test_flips_give_only_flips_and_quarter_turns_and_vary_with_the_epoch():
    data = _dataset()
    view = data.with_augmentation("flips")
    seen = set()
    for epoch in range(6):
        view.epoch = epoch
        mask = view[0]["mask"].numpy()[0] > 0.5
        matches = [k for k, d in enumerate(_dihedral(data.pseudo_mask(0)))
                   if np.array_equal(mask, d)]
        assert matches
        seen.add(matches[0])
    assert len(seen) > 1
    assert data.with_augmentation("none")[0]["mask"].numpy()[0].sum() == data.pseudo_mask(0).sum()
    with pytest.raises(ValueError, match="augmentation"):
        data.with_augmentation("zoom")


def test_prompt_channels_are_warped_with_the_lesion():
    view = _dataset().with_prompt(0.0, 0.0).with_augmentation("affine")
    for epoch in range(2):
        view.epoch = epoch
        for i in range(len(view)):
            item = view[i]
            axes = item["prompt"].numpy()[0] > 0.5  # the drawn long and short axes
            mask = item["mask"].numpy()[0] > 0.5
            assert axes.sum() > 10
            assert (axes & mask).sum() / axes.sum() > 0.85


def test_unknown_augmentation_is_refused_by_the_config():
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="zoom").validate()


@pytest.mark.parametrize("kind, expected", [("prompted", "flips"), ("multitask", "none"),
                                            ("a1", "none"), ("coseg", "none")])
def test_auto_augmentation_is_flips_for_prompted_models_only(kind, expected):
    from napari_recist_seg.learning.trainer import _with_augmentation

    config = TrainConfig(kind=kind, n_groups=2)
    assert config.augment == "auto" and config.augmentation == expected
    data = _dataset()
    trained_on = _with_augmentation(data, config)
    if expected == "none":
        assert trained_on is data
        return
    # The items the trainer sees are the data set's flips and quarter turns, changing with
    # the epoch; the data set itself is left as it was.
    assert trained_on.augment and not data.augment
    seen = []
    for epoch in range(6):
        trained_on.epoch = epoch
        mask = trained_on[0]["mask"].numpy()[0] > 0.5
        assert any(np.array_equal(mask, d) for d in _dihedral(data[0]["mask"].numpy()[0] > 0.5))
        seen.append(mask.tobytes())
    assert len(set(seen)) > 1
    # Asked for explicitly, "none" still trains on the items as they are.
    assert _with_augmentation(data, TrainConfig(kind=kind, augment="none")) is data


def test_benchmark_report_names_each_kind_s_own_augmentation(tmp_path):
    bench = small_benchmark(tmp_path, "a1,prompted")
    results = json.loads((bench / "results.json").read_text())
    assert results["training"]["a1"]["augment"] == "none"
    assert results["training"]["prompted"]["augment"] == "flips"
    report = (bench / "report.md").read_text(encoding="utf-8")
    assert "training augmentation 'flips' for prompted" in report


def test_train_and_benchmark_commands_take_the_augmentation(tmp_path):
    data = make_isic_folder(tmp_path / "data", n=8, size=48)
    out = tmp_path / "runs"
    with quick():
        assert main(["train", str(data), "--out", str(out), "--models", "a1", "--size",
                     str(INPUT), "--epochs", "1", "--batch", "4", "--augment", "affine"]) == 0
    saved = json.loads((out / "a1" / "best" / "config.json").read_text())
    assert saved["train_config"]["augment"] == "affine"
    test_dir = make_isic_folder(tmp_path / "test", n=3, size=48, seed=2)
    bench = tmp_path / "bench"
    with quick():
        assert main(["benchmark", "--train", str(data), "--test", str(test_dir), "--out",
                     str(bench), "--models", "a1", "--epochs", "1", "--size", str(INPUT),
                     "--batch", "4", "--augment", "flips"]) == 0
    saved = json.loads((bench / "runs" / "a1-seed0" / "best" / "config.json").read_text())
    assert saved["train_config"]["augment"] == "flips"
    assert "training augmentation 'flips'" in (bench / "report.md").read_text(encoding="utf-8")
