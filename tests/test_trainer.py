"""The trainer: events, checkpoints, learning, stopping, resuming, early stopping, checks."""

from __future__ import annotations

import math
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from napari_recist_seg.learning import trainer
from napari_recist_seg.learning.checkpoints import load_checkpoint
from napari_recist_seg.learning.inference import load_model, predict
from napari_recist_seg.learning.trainer import (
    TrainConfig,
    TrainingInterrupted,
    check_output_folder,
    train,
)

from ._learning_data import EPOCHS, N_GROUPS, config, dermoscopy, prepared, quick, trained_run

KINDS = ("multitask", "a1", "coseg")
TERMS = {"multitask": {"seg", "cls", "total"}, "a1": {"seg", "total"}, "coseg": {"seg", "total"}}


@pytest.fixture(autouse=True)
def _quick():
    with quick():
        yield


def _kinds(events):
    return [e.kind for e in events]


def _weights(folder):
    model, _ = load_checkpoint(folder)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- a whole run ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_events_arrive_in_order(kind, tmp_path_factory):
    _, events = trained_run(kind, tmp_path_factory)
    spe = events[0].steps_per_epoch
    # 9 training images, batch 4: the last batch of one joins the one before it (pairs of
    # co-segmentation: 5 anchors, 2 a step, the last anchor joins too).
    assert spe == 2
    assert _kinds(events) == ["start"] + (["step"] * spe + ["epoch"]) * EPOCHS + ["finished"]
    steps = [e for e in events if e.kind == "step"]
    assert [e.global_step for e in steps] == list(range(1, EPOCHS * spe + 1))
    assert [e.step for e in steps] == list(range(1, spe + 1)) * EPOCHS
    assert [e.epoch for e in events if e.kind == "epoch"] == list(range(1, EPOCHS + 1))
    assert all(e.model_kind == kind and e.epochs == EPOCHS for e in events)
    elapsed = [e.elapsed for e in events[1:]]
    assert elapsed == sorted(elapsed)
    assert [e.progress for e in steps] == sorted(e.progress for e in steps)
    assert events[-1].progress == 1.0
    assert events[-1].message == "all epochs done"


@pytest.mark.parametrize("kind", KINDS)
def test_step_events_report_losses_lr_and_speed(kind, tmp_path_factory):
    _, events = trained_run(kind, tmp_path_factory)
    steps = [e for e in events if e.kind == "step"]
    for e in steps:
        assert set(e.losses) == TERMS[kind]
        assert all(math.isfinite(v) and v >= 0 for v in e.losses.values())
        parts = sum(v for k, v in e.losses.items() if k != "total")
        assert e.losses["total"] == pytest.approx(parts, rel=1e-5)
        assert e.images_per_second > 0
        assert 0 < e.lr <= 1e-3
    # The cosine schedule lowers the rate step after step.
    lrs = [e.lr for e in steps]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
    assert events[-1].images_per_second > 0


@pytest.mark.parametrize("kind", KINDS)
def test_epoch_events_carry_validation_metrics(kind, tmp_path_factory):
    _, events = trained_run(kind, tmp_path_factory)
    epochs = [e for e in events if e.kind == "epoch"]
    loss_keys = {f"loss_{t}" for t in TERMS[kind]}
    for e in epochs:
        assert loss_keys | {"loss", "dice", "iou", "hausdorff", "centre_error"} <= set(e.val)
        assert e.val["loss"] == e.val["loss_total"]
        assert 0.0 <= e.val["dice"] <= 1.0 and 0.0 <= e.val["iou"] <= 1.0
        assert set(e.losses) == TERMS[kind]
        assert e.images_per_second > 0
        assert e.checkpoint is not None and e.checkpoint.endswith("last")
    best = min(range(len(epochs)), key=lambda i: epochs[i].val["loss"])
    assert epochs[-1].best_epoch == best + 1
    assert events[-1].best_epoch == best + 1


@pytest.mark.parametrize("kind", KINDS)
def test_best_and_last_checkpoints_are_written(kind, tmp_path_factory):
    out, events = trained_run(kind, tmp_path_factory)
    finished = events[-1]
    assert finished.checkpoint == str(out / "best")
    assert (out / "best" / "model.safetensors").is_file()
    assert (out / "last" / "optimizer.safetensors").is_file()
    assert not (out / "best" / "optimizer.safetensors").exists()
    _, last_config = load_checkpoint(out / "last")
    _, best_config = load_checkpoint(out / "best")
    assert len(last_config["history"]) == EPOCHS
    assert len(best_config["history"]) == finished.best_epoch
    assert last_config["train_config"]["kind"] == kind
    assert last_config["preprocessing"]["size"] == 32
    if kind == "multitask":
        assert best_config["grouping"]["centres"] is not None
    model = load_model(out)
    assert model.kind == kind
    assert model.checkpoint_path == str(out / "best")


@pytest.mark.parametrize("kind", KINDS)
def test_training_loss_falls(kind, tmp_path_factory):
    _, events = trained_run(kind, tmp_path_factory)
    totals = [e.losses["total"] for e in events if e.kind == "step"]
    first, last = np.mean(totals[:2]), np.mean(totals[-2:])
    assert last < 0.9 * first, totals
    seg = [e.losses["seg"] for e in events if e.kind == "step"]
    assert np.mean(seg[-2:]) < 0.9 * np.mean(seg[:2]), seg


# -- stopping and resuming ----------------------------------------------------------------
Interrupted = namedtuple("Interrupted", "out events resumed")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A multitask run stopped after 3 steps (mid second epoch), then resumed to the end."""
    with quick():
        data = prepared()
        out = tmp_path_factory.mktemp("interrupted")
        seen = []
        events = []
        for event in train(data.train_set, data.val_set, config("multitask"), out,
                           grouping=data.grouping, stop=lambda: len(seen) >= 3):
            events.append(event)
            if event.kind == "step":
                seen.append(event)
        shutil.copytree(out / "last", out / "stopped")
        resumed = list(train(data.train_set, data.val_set, config("multitask"), out,
                             grouping=data.grouping, resume=out / "last"))
    return Interrupted(out, events, resumed)


def test_stop_ends_within_one_step(interrupted):
    run = interrupted
    assert _kinds(run.events) == ["start", "step", "step", "epoch", "step", "stopped"]
    stopped = run.events[-1]
    assert (stopped.epoch, stopped.step, stopped.global_step) == (2, 1, 3)
    assert stopped.checkpoint == str(run.out / "last")
    assert stopped.best_epoch == 1


def test_stopped_checkpoint_loads_and_predicts(interrupted):
    run = interrupted
    model = load_model(run.out / "stopped")  # a copy of last/ as the stop left it
    assert model.kind == "multitask" and model.grouping.k == N_GROUPS
    assert len(model.checkpoint_config["history"]) == 1
    image = dermoscopy()[0][0]
    mask = predict(model, image)
    assert mask.dtype == bool and mask.shape == image.shape[:2]
    # The stopped weights are those after 3 steps, not a best (end of epoch) model.
    stopped, best = _weights(run.out / "stopped"), _weights(run.out / "best")
    assert any(not torch.equal(stopped[k], best[k]) for k in stopped)


def test_stopped_checkpoint_itself_loads_and_predicts(tmp_path):
    data = prepared()
    events = list(train(data.train_set, data.val_set, config("a1", epochs=2), tmp_path,
                        stop=lambda: True))
    assert _kinds(events) == ["start", "stopped"]
    assert events[-1].global_step == 0
    model = load_model(events[-1].checkpoint)
    image = dermoscopy()[0][1]
    mask = predict(model, image)
    assert mask.dtype == bool and mask.shape == image.shape[:2]
    # No epoch finished, so there is no best model yet.
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_model(tmp_path)


def test_resume_continues_where_it_stopped(interrupted):
    run = interrupted
    resumed = run.resumed
    spe = resumed[0].steps_per_epoch
    assert _kinds(resumed) == (["start", "step", "epoch"] + (["step"] * spe + ["epoch"])
                               * (EPOCHS - 2) + ["finished"])
    assert (resumed[0].epoch, resumed[0].step, resumed[0].global_step) == (2, 1, 3)
    steps = [e for e in resumed if e.kind == "step"]
    assert [e.global_step for e in steps] == list(range(4, EPOCHS * spe + 1))
    assert resumed[-1].progress == 1.0


def test_a_finished_run_trained_further_goes_on_down_its_schedule(tmp_path_factory):
    # --resume with more epochs: the cosine ends at the new last step, never climbing back up
    # past the old one; another batch size or rate is refused rather than replayed wrongly.
    out_a, events_a = trained_run("a1", tmp_path_factory)
    out = tmp_path_factory.mktemp("further")
    shutil.copytree(out_a / "last", out / "last")
    data = prepared()
    for changed, words in (({"batch_size": 2}, "batch_size 4, not 2"),
                           ({"lr": 1e-2}, "lr 0.001, not 0.01")):
        with pytest.raises(ValueError, match=words):
            list(train(data.train_set, data.val_set, config("a1", epochs=EPOCHS + 2, **changed),
                       out, resume=out / "last"))
    with quick():
        more = list(train(data.train_set, data.val_set, config("a1", epochs=EPOCHS + 2), out,
                          resume=out / "last"))
    before = [e.lr for e in events_a if e.kind == "step"]
    after = [e.lr for e in more if e.kind == "step"]
    assert len(after) == 2 * more[0].steps_per_epoch
    rates = before + after
    assert all(b <= a * (1 + 1e-9) for a, b in zip(rates, rates[1:])), rates
    assert after[-1] == pytest.approx(1e-3 * 0.01, rel=1e-3)


def test_resumed_run_matches_uninterrupted_run(interrupted, tmp_path_factory):
    run = interrupted
    out_a, events_a = trained_run("multitask", tmp_path_factory)
    # Same losses step for step (dropout included: the random state is restored) ...
    losses_a = [e.losses for e in events_a if e.kind == "step"]
    losses_b = ([e.losses for e in run.events if e.kind == "step"]
                + [e.losses for e in run.resumed if e.kind == "step"])
    assert len(losses_a) == len(losses_b)
    for a, b in zip(losses_a, losses_b):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6)
    # ... the same validation, the same best epoch ...
    val_a = [e.val["loss"] for e in events_a if e.kind == "epoch"]
    val_b = ([e.val["loss"] for e in run.events if e.kind == "epoch"]
             + [e.val["loss"] for e in run.resumed if e.kind == "epoch"])
    assert val_b == pytest.approx(val_a, rel=1e-6)
    assert run.resumed[-1].best_epoch == events_a[-1].best_epoch
    # ... and the same final weights: bit for bit on one CPU thread (measured 0.0); the
    # tolerance leaves room for other BLAS builds.
    wa, wb = _weights(out_a / "last"), _weights(run.out / "last")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    assert worst <= 1e-6


def test_ctrl_c_inside_a_step_resumes_as_if_never_interrupted(tmp_path_factory):
    # Ctrl+C arrives in the middle of the third step's forward pass, after the batch norms
    # have counted its batch: last/ is saved as it was when the step began.
    out_a, _ = trained_run("multitask", tmp_path_factory)
    data = prepared()
    out = tmp_path_factory.mktemp("ctrl-c-mid-step")
    model_calls = []

    def interrupt_third_forward(module, inputs, output):
        if module.training:
            model_calls.append(1)
            if len(model_calls) == 3:
                raise KeyboardInterrupt

    real_build = trainer.build_model

    def build_with_hook(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_hook(interrupt_third_forward)
        return model

    with quick():
        trainer.build_model = build_with_hook
        try:
            with pytest.raises(TrainingInterrupted):
                list(train(data.train_set, data.val_set, config("multitask"), out,
                           grouping=data.grouping))
        finally:
            trainer.build_model = real_build
        list(train(data.train_set, data.val_set, config("multitask"), out,
                   grouping=data.grouping, resume=out / "last"))
    wa, wb = _weights(out_a / "last"), _weights(out / "last")
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    assert worst <= 1e-6


def test_resumed_history_matches_uninterrupted_history(interrupted, tmp_path_factory):
    """The per-epoch training losses in the history cover the whole epoch after a resume."""
    run = interrupted
    out_a, _ = trained_run("multitask", tmp_path_factory)
    _, config_a = load_checkpoint(out_a / "last")
    _, config_b = load_checkpoint(run.out / "last")
    hist_a, hist_b = config_a["history"], config_b["history"]
    assert [h["epoch"] for h in hist_b] == [h["epoch"] for h in hist_a]
    for a, b in zip(hist_a, hist_b):
        assert b["val"]["loss"] == pytest.approx(a["val"]["loss"], rel=1e-6)
        assert b["train"] == pytest.approx(a["train"], rel=1e-6)


def test_resume_with_another_kind_is_refused(tmp_path_factory, tmp_path):
    out_a, _ = trained_run("multitask", tmp_path_factory)
    data = prepared()
    events = []
    with pytest.raises(ValueError, match="multitask"):
        for event in train(data.train_set, data.val_set, config("a1"), tmp_path,
                           resume=out_a / "last"):
            events.append(event)
    assert events == []


def test_resume_with_another_selection_figure_is_refused(tmp_path_factory, tmp_path):
    out_a, _ = trained_run("multitask", tmp_path_factory)
    data = prepared()
    with pytest.raises(ValueError, match="by validation loss: resume with select='loss'"):
        next(train(data.train_set, data.val_set, config("multitask", select="dice"), tmp_path,
                   resume=out_a / "last"))


def test_resume_with_another_architecture_is_a_value_error(tmp_path_factory, tmp_path):
    """Same kind, other number of groups: the checkpoint cannot fit the new model."""
    out_a, _ = trained_run("multitask", tmp_path_factory)
    data = prepared()
    with pytest.raises(ValueError) as info:
        next(train(data.train_set, data.val_set, config("multitask", n_groups=N_GROUPS + 1),
                   tmp_path, resume=out_a / "last"))
    assert str(out_a / "last") in str(info.value)


def test_resume_from_a_best_checkpoint_is_refused(tmp_path_factory, tmp_path):
    out_a, _ = trained_run("multitask", tmp_path_factory)
    data = prepared()
    with pytest.raises(ValueError, match="optimizer"):
        next(train(data.train_set, data.val_set, config("multitask"), tmp_path,
                   resume=out_a / "best"))


# -- early stopping -----------------------------------------------------------------------
def _scripted_validation(monkeypatch, losses):
    """Validation that computes its metrics but reports the scripted losses, in turn."""
    real = trainer._validate
    script = iter(losses)

    def scripted(*args, **kwargs):
        out = real(*args, **kwargs)
        out["loss"] = out["loss_total"] = next(script)
        return out

    monkeypatch.setattr(trainer, "_validate", scripted)


def _scripted_dice(monkeypatch, losses, dice):
    """Validation that reports the scripted losses and Dice, in turn."""
    real = trainer._validate
    script = iter(zip(losses, dice))

    def scripted(*args, **kwargs):
        out = real(*args, **kwargs)
        out["loss"], out["dice"] = next(script)
        out["loss_total"] = out["loss"]
        return out

    monkeypatch.setattr(trainer, "_validate", scripted)


def _two_images():
    return Subset(prepared().train_set, range(2))  # one step an epoch


def test_early_stop_with_patience_one(monkeypatch, tmp_path):
    _scripted_validation(monkeypatch, [1.0, 1.0, 0.5, 0.1])
    data = prepared()
    events = list(train(_two_images(), data.val_set, config("a1", epochs=4, patience=1),
                        tmp_path))
    assert _kinds(events) == ["start"] + ["step", "epoch"] * 2 + ["finished"]
    finished = events[-1]
    assert finished.message.startswith("early stop")
    assert finished.epoch == 2 and finished.best_epoch == 1
    assert finished.checkpoint == str(tmp_path / "best")
    _, best = load_checkpoint(tmp_path / "best")
    _, last = load_checkpoint(tmp_path / "last")
    assert len(best["history"]) == 1 and len(last["history"]) == 2
    # A training set without a preprocessing record (a Subset here) leaves inference at the
    # size the network was trained at.
    assert load_model(tmp_path).preprocessing == {"mode": "whole_image", "size": 32}


def test_early_stop_patience_counts_epochs_since_the_best(monkeypatch, tmp_path):
    # Epochs 2 and 4 are worse, but epoch 3 improves in between: no two bad epochs in a row.
    _scripted_validation(monkeypatch, [2.0, 2.5, 1.0, 1.5])
    data = prepared()
    cfg = config("a1", epochs=4, patience=2, schedule="constant")
    events = list(train(_two_images(), data.val_set, cfg, tmp_path))
    finished = events[-1]
    assert finished.kind == "finished" and finished.message == "all epochs done"
    assert finished.epoch == 4 and finished.best_epoch == 3
    assert [e.best_epoch for e in events if e.kind == "epoch"] == [1, 1, 3, 3]
    assert all(e.lr == 1e-3 for e in events if e.kind == "step")
    _, best = load_checkpoint(tmp_path / "best")
    assert len(best["history"]) == 3


@pytest.mark.parametrize(("select", "best", "stopped_at"), [("loss", 2, 4), ("dice", 4, 5)])
def test_the_best_checkpoint_follows_the_chosen_validation_figure(monkeypatch, tmp_path,
                                                                  select, best, stopped_at):
    # An over-confident network: its loss rises after epoch 2 while its Dice still grows.
    _scripted_dice(monkeypatch, [2.0, 1.0, 1.5, 1.8, 2.2], [0.6, 0.7, 0.75, 0.8, 0.79])
    cfg = config("a1", epochs=5, patience=2, select=select)
    events = list(train(_two_images(), prepared().val_set, cfg, tmp_path))
    finished = events[-1]
    assert finished.best_epoch == best and finished.epoch == stopped_at
    assert (finished.message == "all epochs done") == (stopped_at == 5)
    if stopped_at < 5:
        assert finished.message == f"early stop: no better validation {select} for 2 epochs"
    _, saved = load_checkpoint(tmp_path / "best")
    assert len(saved["history"]) == best
    assert saved["train_config"]["select"] == select


def test_an_early_stopped_run_resumed_gets_its_patience_again(monkeypatch, tmp_path):
    # Stops at epoch 2 (patience 1); resumed, epochs 3 and 4 are worse again, 5 better.
    _scripted_validation(monkeypatch, [1.0, 1.5, 2.0, 1.8, 0.5, 0.4, 0.3])
    data = prepared()
    first = list(train(_two_images(), data.val_set, config("a1", epochs=6, patience=1),
                       tmp_path))
    assert first[-1].message.startswith("early stop") and first[-1].epoch == 2
    again = list(train(_two_images(), data.val_set, config("a1", epochs=6, patience=2),
                       tmp_path, resume=tmp_path / "last"))
    assert "it had early stopped" in again[0].message
    assert "until 2 epochs without a better validation loss" in again[0].message
    # Before, the old count of bad epochs stopped it after one more epoch (epoch 3).
    assert [e.epoch for e in again if e.kind == "epoch"] == [3, 4]
    assert again[-1].message.startswith("early stop") and again[-1].best_epoch == 1


def test_patience_running_out_at_the_last_epoch_is_no_early_stop(monkeypatch, tmp_path):
    _scripted_validation(monkeypatch, [1.0, 2.0, 3.0])
    events = list(train(_two_images(), prepared().val_set, config("a1", epochs=3, patience=2),
                        tmp_path))
    finished = events[-1]
    assert finished.kind == "finished" and finished.epoch == 3 and finished.best_epoch == 1
    assert finished.message == "all epochs done"


def test_an_unknown_selection_figure_is_refused():
    with pytest.raises(ValueError, match="select must be one of"):
        TrainConfig(select="iou").validate()


# -- checks before training -----------------------------------------------------------------
def test_unwritable_output_folder_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    out = blocker / "out"
    with pytest.raises(ValueError, match="not writable") as info:
        check_output_folder(out)
    assert str(out) in str(info.value)
    data = prepared()
    events = []
    with pytest.raises(ValueError, match="not writable"):
        for event in train(data.train_set, data.val_set, config("a1"), out):
            events.append(event)
    assert events == []


def test_output_folder_without_enough_space_is_refused(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ValueError, match="MB free"):
        check_output_folder(tmp_path / "out", needed_bytes=free * 2 + 10**9)
    assert check_output_folder(tmp_path / "ok", needed_bytes=1) == tmp_path / "ok"
    assert list((tmp_path / "ok").iterdir()) == []  # the write probe is gone

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(trainer.shutil, "disk_usage",
                        lambda path: usage._replace(free=10**6))
    data = prepared()
    with pytest.raises(ValueError, match="checkpoints need"):
        next(train(data.train_set, data.val_set, config("a1"), tmp_path / "small"))
    assert not (tmp_path / "small" / "last").exists()


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(kind="unet"), "unknown model kind"),
        (dict(batch_size=1), "batch_size"),
        (dict(kind="multitask", n_groups=None), "n_groups"),
        (dict(kind="multitask", n_groups=1), "n_groups"),
        (dict(epochs=0), "epochs"),
        (dict(patience=0), "patience"),
        (dict(lr=0.0), "learning rate"),
        (dict(lr=float("nan")), "learning rate"),
        (dict(schedule="step"), "schedule"),
        (dict(pairing="nearest"), "pairing"),
    ],
)
def test_config_validation(changes, words, tmp_path):
    bad = TrainConfig(**{**dict(kind="a1", batch_size=4), **changes})
    with pytest.raises(ValueError, match=words):
        bad.validate()
    data = prepared()
    with pytest.raises(ValueError, match=words):
        next(train(data.train_set, data.val_set, bad, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_valid_configs_pass():
    for cfg in (TrainConfig(kind="a1", batch_size=2), TrainConfig(kind="coseg"),
                TrainConfig(kind="multitask", n_groups=N_GROUPS)):
        assert cfg.validate() is None  # raises ValueError on a bad setting


def test_training_set_of_one_image_is_refused(tmp_path):
    data = prepared()
    with pytest.raises(ValueError, match="1 image"):
        next(train(Subset(data.train_set, [0]), data.val_set, config("a1"), tmp_path))
    with pytest.raises(ValueError, match="validation set is empty"):
        next(train(data.train_set, Subset(data.val_set, []), config("a1"), tmp_path))


@pytest.mark.parametrize(
    "n, batch, bounds",
    [
        (9, 4, [(0, 4), (4, 9)]),
        (8, 4, [(0, 4), (4, 8)]),
        (5, 4, [(0, 5)]),
        (5, 2, [(0, 2), (2, 5)]),
        (2, 4, [(0, 2)]),
        (3, 10, [(0, 3)]),
    ],
)
def test_a_last_batch_of_one_joins_the_one_before(n, batch, bounds):
    got = trainer._batch_bounds(n, batch)
    assert got == bounds
    assert all(end - start >= 2 for start, end in got)


def test_nine_images_in_batches_of_four_train_without_batch_norm_errors(tmp_path_factory):
    """A batch of one image would fail in the ASPP pooling branch's batch normalisation."""
    assert len(prepared().train_set) == 9
    for kind in KINDS:
        _, events = trained_run(kind, tmp_path_factory)
        assert events[-1].kind == "finished" and events[0].steps_per_epoch == 2
    # What the unmerged split would have done in its third step:
    model = trainer.build_model("a1", input_size=32)
    model.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(prepared().train_set[0]["image"][None])
