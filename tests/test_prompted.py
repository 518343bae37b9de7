"""RECIST-prompted segmentation: prompt channels, data, training, prediction, commands."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_recist_seg.core.pseudo_masks import pseudo_mask
from napari_recist_seg.core.recist import Recist
from napari_recist_seg.core.recist_prompt import PROMPT_CHANNELS, jitter_recist, prompt_channels
from napari_recist_seg.learning.inference import is_prompted, load_model, predict_detailed
from napari_recist_seg.learning.model_kinds import MODEL_KINDS, MODEL_REGISTRY, model_kind

from ._learning_data import INPUT, dermoscopy, prepared, trained_run


def _recist() -> Recist:
    return Recist([[10.0, 8.0], [22.0, 26.0]], [[21.0, 13.7], [11.0, 20.3]])


# -- registry ----------------------------------------------------------------------------------
def test_every_kind_is_listed_once_with_its_properties():
    assert MODEL_KINDS == tuple(MODEL_REGISTRY)
    assert set(MODEL_KINDS) == {"multitask", "a1", "coseg", "prompted"}
    assert model_kind("prompted").prompted and not model_kind("a1").prompted
    assert model_kind("multitask").groups and model_kind("coseg").paired
    assert len({k.colour for k in MODEL_REGISTRY.values()}) == len(MODEL_KINDS)
    with pytest.raises(ValueError, match="unknown model kind 'unet'.*prompted"):
        model_kind("unet")


# -- prompt channels ---------------------------------------------------------------------------
def test_prompt_channels_mark_the_axes_the_endpoints_and_the_prior():
    r = _recist()
    p = prompt_channels(r, (32, 32))
    assert p.shape == (len(PROMPT_CHANNELS), 32, 32) and p.dtype == np.float32
    assert p.min() >= 0 and p.max() <= 1
    for point in (*r.long_axis, *r.short_axis):
        row, col = (int(round(v)) for v in point)
        assert p[0, row, col] > 0.5  # on the drawn line
        assert p[1, row, col] > 0.9  # the peak of its bump
    assert p[0, 0, 0] == 0 and p[1, 0, 31] < 1e-3
    inside = pseudo_mask(r, (32, 32), "quarter_ellipse")
    assert p[2][inside].mean() > 0.8 and p[2][~inside].mean() < 0.1
    assert not prompt_channels(r, (32, 32), prior=False)[2].any()


def test_the_distance_prior_is_one_half_on_the_quarter_ellipse_outline():
    slender = Recist([[16.0, 10.0], [16.0, 22.0]], [[15.0, 16.0], [17.5, 16.0]])
    large = Recist([[4.0, 5.0], [27.0, 26.0]], [[24.0, 9.0], [9.0, 21.0]])
    for recist in (_recist(), slender, large):
        inside = pseudo_mask(recist, (32, 32), "quarter_ellipse")
        prior = prompt_channels(recist, (32, 32), prior_edge="distance")[2]
        np.testing.assert_array_equal(prior >= 0.5, inside)
        assert prior.min() >= 0 and prior.max() <= 1
    # The blurred prior of earlier models cuts the tips of a slender lesion.
    blurred = prompt_channels(slender, (32, 32), prior_edge="blur")[2]
    inside = pseudo_mask(slender, (32, 32), "quarter_ellipse")
    assert ((blurred >= 0.5) < inside).sum() >= 2 and not ((blurred >= 0.5) > inside).any()
    # New models take the distance prior.
    np.testing.assert_array_equal(prompt_channels(slender, (32, 32))[2],
                                  prompt_channels(slender, (32, 32), prior_edge="distance")[2])
    with pytest.raises(ValueError, match="prior_edge must be one of distance, blur"):
        prompt_channels(slender, (32, 32), prior_edge="sharp")


def test_prediction_draws_the_prior_as_its_model_was_trained(tmp_path):
    """A silent prior-correcting network predicts its prior's half level: the quarter-ellipse
    with the distance prior, less with the blurred one, which checkpoints that do not name
    their prior had."""
    import json

    from napari_recist_seg.learning.checkpoints import save_checkpoint
    from napari_recist_seg.learning.models import build_model

    from ._learning_data import whole_preprocessing

    def saved(name, edge):
        model = build_model("prompted", in_channels=3, input_size=32, prior_residual=True,
                            prior_edge=edge)
        torch.nn.init.zeros_(model.segmentation_head[0].weight)
        torch.nn.init.zeros_(model.segmentation_head[0].bias)
        return save_checkpoint(tmp_path / name, model,
                               {"preprocessing": whole_preprocessing(size=32), "grouping": None},
                               [])

    image = np.zeros((32, 32, 3), np.uint8)
    slender = Recist([[16.0, 6.0], [16.0, 26.0]], [[14.5, 16.0], [17.5, 16.0]])
    inside = pseudo_mask(slender, (32, 32), "quarter_ellipse")
    distance = load_model(saved("distance", "distance"))
    assert distance.config["prior_edge"] == "distance"
    np.testing.assert_array_equal(
        predict_detailed(distance, image, [slender], refine="none").mask, inside)
    blurred = predict_detailed(load_model(saved("blur", "blur")), image, [slender],
                               refine="none").mask
    assert blurred.sum() < inside.sum()
    # A checkpoint saved before the prior's edge was recorded is given the blurred prior.
    legacy = saved("legacy", "blur")
    config = json.loads((legacy / "config.json").read_text())
    del config["model_config"]["prior_edge"]
    (legacy / "config.json").write_text(json.dumps(config))
    old = load_model(legacy)
    assert old.config["prior_edge"] == "blur"
    np.testing.assert_array_equal(
        predict_detailed(old, image, [slender], refine="none").mask, blurred)
    config["model_config"]["prior_edge"] = "sharp"
    (legacy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="prior_edge.*must be one of"):
        load_model(legacy)


def test_prompt_of_a_lesion_at_the_edge_stays_inside_the_array():
    r = Recist([[-3.0, 2.0], [12.0, 2.0]], [[4.0, -2.0], [4.0, 6.0]])
    p = prompt_channels(r, (16, 16))
    assert p.shape == (3, 16, 16) and np.isfinite(p).all() and p[1].max() > 0.5


def test_jitter_moves_endpoints_by_about_the_asked_pixels_and_zero_keeps_them():
    r = _recist()
    rng = np.random.default_rng(0)
    moves = []
    for _ in range(200):
        j = jitter_recist(r, rng, 2.0)
        moves.append(np.abs(j.long_axis - r.long_axis).mean())
    assert 0.8 < np.mean(moves) < 2.5
    assert jitter_recist(r, np.random.default_rng(0), 0.0) is r
    # A lesion 5 px long is moved by at most a tenth of its length (std), not by 2 px.
    small = Recist([[10.0, 10.0], [10.0, 15.0]], [[11.5, 12.5], [8.5, 12.5]])
    rng = np.random.default_rng(0)
    small_moves = [np.abs(jitter_recist(small, rng, 2.0).long_axis - small.long_axis).mean()
                   for _ in range(200)]
    assert 0.2 < np.mean(small_moves) < 0.6


# -- data --------------------------------------------------------------------------------------
def test_prompted_items_turn_with_the_image_and_the_source_set_is_unchanged():
    from napari_recist_seg.learning.preparation import prepare_whole_images

    images, recists = dermoscopy()
    base = prepare_whole_images(images, recists, size=INPUT, val_fraction=0.25, k=2,
                                augment=True).train_set
    view = base.with_prompt(jitter=0.0, prior_dropout=0.0)
    assert "prompt" not in base[0] and not base.prompt
    plain = view.prompt_of(0)
    seen_turned = False
    for epoch in range(6):
        view.set_epoch(epoch)
        base.set_epoch(epoch)
        item, reference = view[0], base[0]
        # The image is augmented exactly as for the other kinds.
        assert torch.equal(item["image"], reference["image"])
        # The drawn axes lie inside the pseudo-mask: they went through the same rotation and
        # flips as the mask.
        mask = item["mask"][0].numpy() > 0.5
        axes = item["prompt"][0].numpy() > 0.5
        assert axes.sum() > 0 and mask[axes].mean() > 0.9
        seen_turned |= not np.allclose(item["prompt"].numpy(), plain)
    assert seen_turned


def test_validation_prompts_are_plain_and_training_prompts_vary_by_epoch():
    base = prepared().train_set
    plain = base.with_prompt(0.0, 0.0)
    varied = base.with_prompt(2.0, 0.0)
    plain.set_epoch(3)
    assert np.array_equal(plain[0]["prompt"].numpy(), plain.prompt_of(0))
    seen = []
    for epoch in range(3):
        varied.set_epoch(epoch)
        seen.append(varied[0]["prompt"].numpy())
    assert not np.allclose(seen[0], seen[1]) and not np.allclose(seen[1], seen[2])
    varied.set_epoch(1)
    assert np.array_equal(varied[0]["prompt"].numpy(), seen[1])  # reproducible


def test_prior_dropout_blanks_the_prior_in_some_epochs_only():
    view = prepared().train_set.with_prompt(jitter=1.0, prior_dropout=0.5)
    blank = []
    for epoch in range(12):
        view.set_epoch(epoch)
        blank.append(not view[1]["prompt"][2].any())
    assert 0 < sum(blank) < 12
    with pytest.raises(ValueError, match="prior_dropout"):
        view.with_prompt(prior_dropout=1.5)


# -- training and prediction -------------------------------------------------------------------
@pytest.fixture(scope="module")
def prompted_run(tmp_path_factory):
    return trained_run("prompted", tmp_path_factory)


def test_a_prompted_run_trains_and_its_checkpoint_asks_for_the_recist(prompted_run):
    out, events = prompted_run
    assert events[-1].kind == "finished"
    model = load_model(out)
    assert is_prompted(model) and model.config["prompt_channels"] == 3
    images, recists = dermoscopy()
    with pytest.raises(ValueError, match="RECIST-prompted"):
        predict_detailed(model, images[0])
    result = predict_detailed(model, images[0], [recists[0]])
    assert result.mask.shape == images[0].shape[:2]
    assert result.groups is None


def test_the_prediction_follows_the_prompt(prompted_run):
    """Prompted by two different lesions' marks, the same image gives different masks."""
    model = load_model(prompted_run[0])
    images, recists = dermoscopy()
    a = predict_detailed(model, images[0], [recists[0]]).probability
    b = predict_detailed(model, images[0], [recists[5]]).probability
    # A two-epoch 32-pixel network is barely trained; what is tested is that the prompt
    # reaches the output through the saved and loaded checkpoint.
    assert np.abs(a - b).max() > 1e-4


def test_a_prompted_crop_model_segments_each_lesion_of_a_slice(tmp_path):
    from napari_recist_seg.learning.preparation import prepare_crops
    from napari_recist_seg.learning.trainer import train

    from ._learning_data import config, phantom_slices, quick

    images, recists, index = phantom_slices()
    data = prepare_crops(list(images), list(recists), image_index=list(index), size=INPUT,
                         val_fraction=0.3, k=2, window="soft_tissue")
    with quick():
        events = list(train(data.train_set, data.val_set,
                            config("prompted", in_channels=1, epochs=1), tmp_path / "run",
                            grouping=data.grouping))
    assert events[-1].kind == "finished"
    model = load_model(tmp_path / "run")
    slice_recists = [r for r, i in zip(recists, index) if i == 0]
    one = predict_detailed(model, images[0], slice_recists[:1]).probability
    both = predict_detailed(model, images[0], slice_recists[:2]).probability
    # Lesions are pasted back one by one: the second lesion's patch adds to the first's.
    assert (both >= one - 1e-6).all() and (both > one + 1e-3).any()


def test_a_prior_residual_network_starts_from_the_quarter_ellipse_of_its_recist():
    from napari_recist_seg.learning.models import build_model

    torch.manual_seed(0)
    model = build_model("prompted", in_channels=3, input_size=32, prior_residual=True).eval()
    assert model.config["prior_residual"] is True
    # With the last layer silent, only the prior's logit is left.
    torch.nn.init.zeros_(model.segmentation_head[0].weight)
    torch.nn.init.zeros_(model.segmentation_head[0].bias)
    r = _recist()
    prompt = torch.from_numpy(np.stack([prompt_channels(r, (32, 32)),
                                        prompt_channels(r, (32, 32), prior=False)]))
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 32, 32), prompt)
    inside = torch.from_numpy(pseudo_mask(r, (32, 32), "quarter_ellipse"))
    assert ((logits[0, 0] > 0) == inside).float().mean() > 0.95
    assert torch.all(logits[1] == 0)  # a blanked prior adds nothing
    # A lesion a few pixels across, whose blurred prior never reaches one half, is not
    # started empty.
    tiny = Recist([[15.0, 13.5], [15.0, 16.5]], [[14.25, 15.0], [15.75, 15.0]])
    tiny_prompt = torch.from_numpy(prompt_channels(tiny, (32, 32), prior_edge="blur"))[None]
    assert tiny_prompt[0, 2].max() < 0.5
    with torch.no_grad():
        tiny_logits = model(torch.zeros(1, 3, 32, 32), tiny_prompt)
    assert (tiny_logits > 0).sum() >= 2 and tiny_logits[0, 0, 15, 15] > 0
    plain = build_model("prompted", in_channels=3, input_size=32)
    assert "prior_residual" not in plain.config and not plain.prior_residual
    with pytest.raises(ValueError, match="prior_residual applies to prompted"):
        build_model("a1", input_size=32, prior_residual=True)


def test_prompted_models_correct_their_prior_unless_told_not_to():
    from napari_recist_seg.learning.train_config import TrainConfig

    assert TrainConfig(kind="prompted").uses_prior_residual
    assert not TrainConfig(kind="prompted", prior_residual=False).uses_prior_residual
    assert not TrainConfig(kind="a1", n_groups=None).uses_prior_residual
    with pytest.raises(ValueError, match="prior_residual applies to prompted models"):
        TrainConfig(kind="a1", prior_residual=True).validate()


def test_a_network_that_corrects_its_prior_always_sees_it_unless_told_otherwise(monkeypatch):
    from napari_recist_seg.learning import trainer
    from napari_recist_seg.learning.train_config import TrainConfig

    assert TrainConfig(kind="prompted").training_prior_dropout == 0.0
    assert TrainConfig(kind="prompted", prior_residual=False).training_prior_dropout == 0.5
    assert TrainConfig(kind="prompted", prior_dropout=0.25).training_prior_dropout == 0.25
    with pytest.raises(ValueError, match="prior_dropout"):
        TrainConfig(kind="prompted", prior_dropout=1.5).validate()
    # What the trainer hands the data set is the resolved share.
    seen = []
    monkeypatch.setattr(type(prepared().train_set), "with_prompt",
                        lambda self, jitter, dropout, edge: seen.append(dropout) or self)
    for cfg in (TrainConfig(kind="prompted"), TrainConfig(kind="prompted", prior_residual=False)):
        trainer._with_prompt(prepared().train_set, cfg, "training")
    assert seen == [0.0, 0.5]


def test_prior_settings_from_the_command_line_reach_the_checkpoint(tmp_path):
    import json

    from napari_recist_seg.cli import main

    from ._folders import make_isic_folder
    from ._learning_data import quick

    data = make_isic_folder(tmp_path / "data", n=8, size=48)
    with quick():
        assert main(["train", str(data), "--out", str(tmp_path / "runs"), "--models",
                     "prompted", "--size", "32", "--epochs", "1", "--batch", "4",
                     "--prior-dropout", "0.3", "--prior-edge", "blur"]) == 0
    saved = json.loads((tmp_path / "runs" / "prompted" / "best" / "config.json").read_text())
    assert saved["train_config"]["prior_dropout"] == 0.3
    assert saved["model_config"]["prior_edge"] == "blur"
    assert main(["train", str(data), "--out", str(tmp_path / "r2"), "--models", "prompted",
                 "--prior-dropout", "2"]) == 2


def test_a_benchmark_with_the_blurred_prior_trains_and_reports_it(tmp_path):
    import json

    from ._learning_data import small_benchmark

    bench = small_benchmark(tmp_path, "prompted", "--prior-edge", "blur")
    saved = json.loads((bench / "runs" / "prompted-seed0" / "best" / "config.json").read_text())
    assert saved["model_config"]["prior_edge"] == "blur"
    report = (bench / "report.md").read_text(encoding="utf-8")
    assert "prior edge 'blur' (`--prior-edge blur`)" in report


def test_a_prior_residual_run_keeps_its_kind_through_the_checkpoint(tmp_path):
    from napari_recist_seg.learning.trainer import train

    from ._learning_data import config, quick

    data = prepared()
    with quick():
        events = list(train(data.train_set, data.val_set,
                            config("prompted", epochs=1, prior_residual=True), tmp_path / "run",
                            grouping=data.grouping))
    assert events[-1].kind == "finished"
    model = load_model(tmp_path / "run")
    assert model.prior_residual and model.config["prior_residual"] is True
    images, recists = dermoscopy()
    result = predict_detailed(model, images[0], [recists[0]])
    drawn = pseudo_mask(recists[0], images[0].shape[:2], "quarter_ellipse")
    # One epoch barely moves the network: the mask is still close to the prior it corrects.
    dice = 2 * (result.mask & drawn).sum() / (result.mask.sum() + drawn.sum())
    assert dice > 0.6


# -- commands ----------------------------------------------------------------------------------
def test_prompted_from_a_deeplesion_table_with_trimap_targets_end_to_end(tmp_path, capsys):
    """Train on RECIST rows alone with the trimap target, predict the test split, and refuse
    to predict images without their RECIST."""
    import csv
    import json

    from napari_recist_seg.cli import main

    from ._learning_data import quick
    from ._recist_table_data import DL_SLICES, write_deeplesion

    slices = [*DL_SLICES, (6, 9, (8,), [(20, 44, 8), (40, 20, 6)], 3)]
    table = write_deeplesion(tmp_path / "dl", slices, masks=True)
    tiny = ["--size", "32", "--epochs", "1", "--batch", "2", "--crop", "40"]
    with quick():
        assert main(["train", str(table), "--out", str(tmp_path / "runs"), "--models",
                     "prompted", "--pseudo-mask", "trimap", *tiny]) == 0
        run = tmp_path / "runs" / "prompted"
        saved = json.loads((run / "best" / "config.json").read_text())
        assert saved["kind"] == "prompted"
        assert saved["train_config"]["prompt_jitter"] > 0
        assert saved["preprocessing"]["pseudo_mask_method"] == "trimap"
        out = tmp_path / "masks"
        assert main(["predict", str(table), "--split", "3", "--model", str(run),
                     "--out", str(out)]) == 0
        with open(out / "lesions.csv", newline="") as fh:
            assert len(list(csv.DictReader(fh))) == 3  # the split-3 rows
        # The network's own masks, unrefined, on request; an unknown refinement is refused.
        assert main(["predict", str(table), "--split", "3", "--model", str(run),
                     "--out", str(tmp_path / "raw"), "--refine", "none"]) == 0
        assert (tmp_path / "raw" / "lesions.csv").is_file()
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(["predict", str(table), "--model", str(run), "--out", str(tmp_path / "y"),
                  "--refine", "crf"])
        assert "invalid choice: 'crf'" in capsys.readouterr().err
        png = next((tmp_path / "dl" / "Images_png").rglob("*.png"))
        assert main(["predict", str(png), "--model", str(run),
                     "--out", str(tmp_path / "x")]) == 2
        assert "RECIST-prompted" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
        assert main(["benchmark", "--train", str(table), "--out", str(tmp_path / "bench"),
                     "--models", "prompted,a1", *tiny]) == 0
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    block = results["tests"]["test split"]
    assert {"prompted", "a1", "quarter_ellipse"} <= set(block["methods"])
    pairs = {(c["a"], c["b"]) for c in block["comparisons"]}
    assert ("prompted", "quarter_ellipse") in pairs and ("prompted", "a1") in pairs
    assert results["config"]["refine"] == "random_walker"
    # CT slices with their neighbours as channels are not colour: no edge-aware loss.
    assert results["training"]["prompted"]["crf_weight"] == 0.0


# -- training targets --------------------------------------------------------------------------
def test_trimap_targets_leave_the_band_out_of_the_loss_and_turn_with_the_image():
    from napari_recist_seg.core.trimap import LESION, UNKNOWN, recist_trimap
    from napari_recist_seg.learning.preparation import prepare_whole_images

    images, recists = dermoscopy()
    data = prepare_whole_images(images, recists, size=INPUT, val_fraction=0.25, k=2,
                                pseudo_mask_method="trimap", augment=True)
    ds = data.train_set
    trimap = recist_trimap(ds.recists[0], (INPUT, INPUT))
    assert np.array_equal(ds.pseudo_mask(0), trimap == LESION)
    for epoch in range(4):
        ds.set_epoch(epoch)
        item = ds[0]
        weight = item["weight"][0].numpy()
        assert set(np.unique(weight)) == {0.0, 1.0}
        assert (weight == 0).sum() == (trimap == UNKNOWN).sum()
        # The certain lesion lies where the loss counts, after the same turn.
        assert weight[item["mask"][0].numpy() > 0.5].min() == 1.0
    assert "weight" not in prepare_whole_images(images, recists, size=INPUT, val_fraction=0.25,
                                                k=2).train_set[0]


def test_the_random_walker_target_follows_the_image_where_the_ellipse_does_not():
    from napari_recist_seg.core.recist import recist_from_mask
    from napari_recist_seg.core.training_targets import training_target
    from napari_recist_seg.data.dataset import LesionDataset

    # A bright square lesion: its ellipse cuts the corners, the image shows them.
    image = np.full((64, 64), 40, np.uint8)
    truth = np.zeros((64, 64), bool)
    truth[18:46, 18:46] = True
    image[truth] = 200
    rng = np.random.default_rng(0)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    recist = recist_from_mask(truth)

    def dice(a):
        return 2 * (a & truth).sum() / (a.sum() + truth.sum())

    walked, weight = training_target(recist, truth.shape, "trimap_random_walker", image)
    ellipse, _ = training_target(recist, truth.shape, "ellipse")
    assert weight is None
    assert dice(walked) > 0.95 > dice(ellipse)
    ds = LesionDataset.from_whole_images([image], [recist], size=64,
                                         pseudo_mask_method="trimap_random_walker")
    assert dice(ds.pseudo_mask(0)) > 0.95
    with pytest.raises(ValueError, match="unknown pseudo-mask method 'blob'.*trimap"):
        LesionDataset.from_whole_images([image], [recist], size=64, pseudo_mask_method="blob")


def test_only_the_pieces_the_recist_crosses_are_kept():
    from napari_recist_seg.core.recist_prompt import keep_marked_parts

    mask = np.zeros((40, 40), bool)
    mask[8:20, 8:20] = True  # the lesion
    mask[28:34, 28:34] = True  # something else
    r = Recist([[9.0, 14.0], [19.0, 14.0]], [[14.0, 9.5], [14.0, 18.5]])
    kept = keep_marked_parts(mask, r)
    assert kept[14, 14] and not kept[30, 30]
    assert kept.sum() == 144
    away = Recist([[1.0, 36.0], [5.0, 36.0]], [[3.0, 35.0], [3.0, 37.0]])
    assert np.array_equal(keep_marked_parts(mask, away), mask)  # nothing crossed: unchanged
