"""The image-aware pairwise loss term: outlines that follow the image's edges."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_recist_seg.learning.losses import edge_aware_pairwise_loss, make_loss


def two_region_image(size=32, edge=16, channels=3, seed=0):
    """A dark left part and a bright right part, with a little noise: one vertical edge."""
    rng = np.random.default_rng(seed)
    image = np.full((channels, size, size), 0.2, np.float32)
    image[:, :, edge:] = 0.8
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    return torch.from_numpy(image)[None]


def split_logits(size=32, cut=16, strength=8.0):
    logits = torch.full((1, 1, size, size), -strength)
    logits[..., cut:] = strength
    return logits


def test_a_mask_cut_along_the_image_edge_costs_less_than_one_cut_elsewhere():
    image = two_region_image()
    on_edge = float(edge_aware_pairwise_loss(split_logits(cut=16), image))
    off_edge = float(edge_aware_pairwise_loss(split_logits(cut=10), image))
    assert on_edge < 0.05 * off_edge
    # A uniform prediction disagrees nowhere.
    uniform = float(edge_aware_pairwise_loss(torch.full((1, 1, 32, 32), 9.0), image))
    assert uniform < 0.01 * off_edge


def test_the_colour_scale_is_the_image_s_own_so_grey_ct_windows_behave_alike():
    bright = two_region_image(channels=1)
    faint = 0.5 + 0.05 * (bright - 0.5)  # the same picture at a tenth of the contrast
    for image in (bright, faint):
        assert (float(edge_aware_pairwise_loss(split_logits(cut=16), image))
                < 0.05 * float(edge_aware_pairwise_loss(split_logits(cut=10), image)))


def test_descending_the_pairwise_term_moves_an_outline_onto_the_edge():
    # Unary terms fix only the outer columns (a trimap's certain parts); the pairwise term
    # alone decides the undecided band between, where the true edge lies at column 20, a few
    # pixels from the starting outline (a straight cut through one colour costs the same
    # wherever it lies, so only an edge within reach pulls).
    image = two_region_image(size=32, edge=20)
    logits = split_logits(cut=16, strength=2.0).requires_grad_(True)
    decided = torch.zeros(1, 1, 32, 32)
    decided[..., :6] = 1
    decided[..., 28:] = 1
    target = torch.zeros(1, 1, 32, 32)
    target[..., 28:] = 1
    optimiser = torch.optim.Adam([logits], lr=0.2)
    for _ in range(300):
        optimiser.zero_grad()
        unary = (torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target, reduction="none") * decided).sum() / decided.sum()
        (unary + 5.0 * edge_aware_pairwise_loss(logits, image, stride=1)).backward()
        optimiser.step()
    columns = (logits.detach()[0, 0] > 0).float().mean(0).numpy()
    first_lesion_column = int(np.argmax(columns > 0.5))
    assert first_lesion_column == 20


def test_bad_shapes_are_refused_with_what_was_given():
    image = two_region_image()
    with pytest.raises(ValueError, match=r"logits must have shape \[B, 1, H, W\]"):
        edge_aware_pairwise_loss(torch.zeros(1, 2, 32, 32), image)
    with pytest.raises(ValueError, match=r"image must have shape \[B, C, 32, 32\]"):
        edge_aware_pairwise_loss(torch.zeros(1, 1, 32, 32), image[..., :16])


@pytest.mark.parametrize("kind", ["a1", "prompted", "multitask", "coseg"])
def test_every_kind_adds_the_weighted_pairwise_term_to_its_total(kind):
    image = two_region_image()
    logits = split_logits(cut=10, strength=3.0)
    mask = (split_logits(cut=16) > 0).float()
    batch = {"image": image, "mask": mask, "group": torch.tensor([0]),
             "partner_image": image, "partner_mask": mask}
    outputs = {"multitask": (logits, torch.zeros(1, 3)), "coseg": (logits, logits)}.get(
        kind, logits)
    plain_total, plain_terms = make_loss(kind)(outputs, batch)
    total, terms = make_loss(kind, crf_weight=7.0)(outputs, batch)
    expected = 7.0 * float(edge_aware_pairwise_loss(logits, image))
    assert "crf" not in plain_terms
    assert terms["crf"] == pytest.approx(expected, rel=1e-5)
    assert float(total) == pytest.approx(float(plain_total) + expected, rel=1e-5)
    assert terms["total"] == pytest.approx(float(total), rel=1e-6)
    with pytest.raises(ValueError, match="crf_weight must be a number >= 0"):
        make_loss(kind, crf_weight=-1.0)
    without_image = {k: v for k, v in batch.items() if k != "image"}
    with pytest.raises(ValueError, match="'image'"):
        make_loss(kind, crf_weight=1.0)(outputs, without_image)


def test_the_setting_is_checked_and_reaches_the_checkpoint_from_the_command_line(tmp_path):
    from napari_recist_seg.cli import main
    from napari_recist_seg.learning.train_config import TrainConfig

    from ._folders import make_isic_folder
    from ._learning_data import quick

    with pytest.raises(ValueError, match="crf_weight"):
        TrainConfig(kind="a1", crf_weight=-2.0).validate()
    data = make_isic_folder(tmp_path / "data", n=8, size=48)
    with quick():
        assert main(["train", str(data), "--out", str(tmp_path / "runs"), "--models", "a1",
                     "--size", "32", "--epochs", "1", "--batch", "4",
                     "--crf-weight", "25"]) == 0
    saved = json.loads((tmp_path / "runs" / "a1" / "best" / "config.json").read_text(
        encoding="utf-8"))
    assert saved["train_config"]["crf_weight"] == 25.0


def test_prompted_models_on_colour_images_use_it_unless_told_otherwise():
    from napari_recist_seg.learning.train_config import (
        DEFAULT_CRF_WEIGHT,
        TrainConfig,
        default_crf_weight,
    )

    assert TrainConfig(kind="prompted").crf_weight_for(colour=True) == DEFAULT_CRF_WEIGHT
    assert TrainConfig(kind="prompted").crf_weight_for(colour=False) == 0.0
    assert TrainConfig(kind="a1").crf_weight_for(colour=True) == 0.0
    assert TrainConfig(kind="a1", crf_weight=5.0).crf_weight_for(colour=False) == 5.0
    assert TrainConfig(kind="prompted", crf_weight=0.0).crf_weight_for(colour=True) == 0.0
    assert default_crf_weight("multitask", True) == 0.0


def test_colour_means_a_photograph_not_a_ct_slice_with_its_neighbours(tmp_path):
    from napari_recist_seg.learning.preparation import prepare_from_table, prepare_whole_images

    from ._learning_data import dermoscopy
    from ._recist_table_data import write_deeplesion

    images, recists = dermoscopy()
    rgb = prepare_whole_images(images, recists, size=32, val_fraction=0.25, k=2)
    assert rgb.train_set.n_channels == 3 and rgb.train_set.colour
    grey = prepare_whole_images([im.mean(axis=-1) for im in images], recists, size=32,
                                val_fraction=0.25, k=2)
    assert grey.train_set.n_channels == 1 and not grey.train_set.colour
    write_deeplesion(tmp_path / "dl")
    table = prepare_from_table(tmp_path / "dl" / "DL_info.csv", size=32, k=2)
    # A slice and its two neighbours make three channels, none of them a colour.
    assert table.train_set.n_channels == 3 and not table.train_set.colour


def test_the_benchmark_says_which_models_trained_with_it(tmp_path):
    from napari_recist_seg.cli import main
    from napari_recist_seg.learning.train_config import DEFAULT_CRF_WEIGHT

    from ._folders import make_isic_folder
    from ._learning_data import quick

    train_dir = make_isic_folder(tmp_path / "train", n=10, size=48, seed=1)
    test_dir = make_isic_folder(tmp_path / "test", n=3, size=48, seed=2)
    out = tmp_path / "bench"
    with quick():
        assert main(["benchmark", "--train", str(train_dir), "--test", str(test_dir), "--out",
                     str(out), "--models", "prompted,a1", "--epochs", "1", "--size", "32",
                     "--batch", "4"]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["training"]["prompted"]["crf_weight"] == DEFAULT_CRF_WEIGHT > 0
    assert results["training"]["a1"]["crf_weight"] == 0.0
    saved = json.loads((out / "runs" / "prompted-seed0" / "best" / "config.json").read_text(
        encoding="utf-8"))
    assert saved["train_config"]["crf_weight"] is None  # resolved at training time
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"Edge-aware pairwise loss: prompted weight {DEFAULT_CRF_WEIGHT:g}." in report
