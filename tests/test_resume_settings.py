"""Resuming a run keeps what makes it that run: a seed, training target, augmentation or data
split other than the run's is refused (library, plugin job and command line alike); the
command line takes every such setting it is not given from the run; and a run with nothing
left to train says how to train it further."""

from __future__ import annotations

import json
import shlex
import shutil
from argparse import Namespace

import pytest

from napari_recist_seg.cli import main
from napari_recist_seg.learning.preparation import prepare_whole_images
from napari_recist_seg.learning.trainer import train

from ._folders import make_isic_folder
from ._learning_data import (
    EPOCHS,
    INPUT,
    N_GROUPS,
    config,
    dermoscopy,
    prepared,
    quick,
    trained_run,
)


@pytest.fixture(autouse=True)
def _quick():
    with quick():
        yield


def _copied_run(tmp_path_factory, tmp_path):
    """A copy of the session's finished a1 run (``EPOCHS`` epochs) in ``tmp_path/a1``."""
    out_a, _ = trained_run("a1", tmp_path_factory)
    run = tmp_path / "a1"
    shutil.copytree(out_a / "last", run / "last")
    return run


def _data(**changes):
    images, recists = dermoscopy(**changes.pop("images", {}))
    settings = dict(size=INPUT, val_fraction=0.25, k=N_GROUPS)
    settings.update(changes)
    return prepare_whole_images(images, recists, **settings)


# -- the library ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, data, words",
    [
        ({"seed": 1}, {}, "was trained with seed 0, not 1"),
        ({"augment": "flips"}, {}, "was trained with augmentation 'none', not 'flips'"),
        ({}, {"pseudo_mask_method": "ellipse"},
         "was trained with training target (pseudo-mask) 'quarter_ellipse', not 'ellipse'"),
        ({"crf_weight": 10.0}, {}, "was trained with edge-aware loss weight 0.0, not 10.0"),
        # The file need not exist: a resumed run takes all its weights from its checkpoint.
        ({"encoder_weights": "encoder.pth"}, {},
         "was trained with encoder weights None, not 'encoder.pth'"),
        ({}, {"val_fraction": 0.4}, "was trained on 9 training and 3 validation lesions, "
                                    "not 7 and 5"),
        # As many lesions, other ones (other images): not the run's data.
        ({}, {"images": {"seed": 1}}, "was trained on other training or validation lesions"),
    ],
)
def test_a_resume_that_would_train_another_run_is_refused(tmp_path_factory, tmp_path, changes,
                                                          data, words):
    run = _copied_run(tmp_path_factory, tmp_path)
    before = (run / "last" / "config.json").read_bytes()
    sets = _data(**data) if data else prepared()
    events = []
    with pytest.raises(ValueError) as info:
        for event in train(sets.train_set, sets.val_set, config("a1", **changes), run,
                           resume=run / "last"):
            events.append(event)
    message = str(info.value)
    assert words in message and str(run / "last") in message
    assert events == []
    assert (run / "last" / "config.json").read_bytes() == before


def test_another_network_is_named_by_its_settings_not_as_a_whole_dict(tmp_path_factory,
                                                                     tmp_path):
    run = _copied_run(tmp_path_factory, tmp_path)
    data = prepared()
    with pytest.raises(ValueError) as info:
        next(train(data.train_set, data.val_set, config("a1", input_size=64), run,
                   resume=run / "last"))
    message = str(info.value)
    assert "holds a model built with input_size 32, not input_size 64" in message
    assert "{" not in message


def test_settings_that_only_say_how_long_or_how_fast_are_free_on_resume(tmp_path_factory,
                                                                      tmp_path):
    run = _copied_run(tmp_path_factory, tmp_path)
    data = prepared()
    events = list(train(data.train_set, data.val_set,
                        config("a1", epochs=EPOCHS + 1, patience=9, num_workers=0, amp="off"),
                        run, resume=run / "last"))
    assert events[0].global_step == EPOCHS * events[0].steps_per_epoch
    assert [e.kind for e in events].count("epoch") == 1
    saved = json.loads((run / "last" / "config.json").read_text())
    assert saved["train_config"]["patience"] == 9 and len(saved["history"]) == EPOCHS + 1


def test_a_checkpoint_from_before_the_split_was_recorded_still_resumes(tmp_path_factory,
                                                                     tmp_path):
    run = _copied_run(tmp_path_factory, tmp_path)
    path = run / "last" / "config.json"
    saved = json.loads(path.read_text())
    assert saved["data_split"]["n_train"] == 9 and saved["data_split"]["lesions"]
    del saved["data_split"]
    path.write_text(json.dumps(saved))
    data = _data(val_fraction=0.4)  # nothing recorded to tell it by
    events = list(train(data.train_set, data.val_set, config("a1"), run, resume=run / "last"))
    assert [e.kind for e in events] == ["start", "finished"]


@pytest.mark.parametrize("epochs", [1, EPOCHS])
def test_a_finished_run_resumed_without_more_epochs_says_how_to_go_on(tmp_path_factory,
                                                                     tmp_path, epochs):
    run = _copied_run(tmp_path_factory, tmp_path)
    before = (run / "last" / "config.json").read_bytes()
    data = prepared()
    events = list(train(data.train_set, data.val_set, config("a1", epochs=epochs), run,
                        resume=run / "last"))
    assert [e.kind for e in events] == ["start", "finished"]
    assert events[-1].message == (f"all {EPOCHS} epochs of the run are done (asked for "
                                  f"{epochs}): set epochs above {EPOCHS} to train further")
    assert (run / "last" / "config.json").read_bytes() == before


# -- the napari Training dock's job -----------------------------------------------------------
@pytest.mark.parametrize(
    "changes, words",
    [
        ({"seed": 1}, "seed 0, not 1"),
        ({"augment": "affine"}, "augmentation 'none', not 'affine'"),
        ({"pseudo_mask_method": "polygon"},
         "training target (pseudo-mask) 'quarter_ellipse', not 'polygon'"),
        ({"val_fraction": 0.4}, "9 training and 3 validation lesions, not 7 and 5"),
    ],
)
def test_the_training_dock_resume_is_refused_in_words(tmp_path_factory, tmp_path, changes,
                                                      words):
    from napari_recist_seg.plugin.training_job import TrainingJob, run_training

    run = _copied_run(tmp_path_factory, tmp_path)
    images, recists = dermoscopy()
    settings = dict(kinds=("a1",), out_dir=str(tmp_path), images=list(images),
                    recists=list(recists), input_size=INPUT, epochs=EPOCHS, batch_size=4,
                    k=N_GROUPS, val_fraction=0.25, encoder="resnet18", device="cpu",
                    resume=True)
    with pytest.raises(ValueError, match="checkpoint .* was trained ") as info:
        list(run_training(TrainingJob(**{**settings, **changes})))
    assert words in str(info.value) and str(run / "last") in str(info.value)
    # The job of the run's own settings resumes it (nothing left: it says how to go on).
    messages = list(run_training(TrainingJob(**settings)))
    finished = [m[1] for m in messages if m[0] == "event" and m[1]["kind"] == "finished"]
    assert finished[0]["message"].startswith(f"all {EPOCHS} epochs of the run are done")


# -- the command line -------------------------------------------------------------------------
def _interrupt_at_second_epoch(monkeypatch):
    """Ctrl+C once the first step of the second epoch is done, as the CLI prints it."""
    from napari_recist_seg.commands import learning as commands

    real = commands.TrainingBars.__call__

    def ctrl_c(self, kind, seed, event):
        real(self, kind, seed, event)
        if event.kind == "step" and event.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(commands.TrainingBars, "__call__", ctrl_c)
    return real


def test_the_continue_hint_resumes_with_the_run_s_own_settings(tmp_path, capsys, monkeypatch):
    from napari_recist_seg.commands import learning as commands

    data = make_isic_folder(tmp_path / "data", n=10, size=48)
    out = tmp_path / "runs"
    # Settings that are not the defaults (--size 128, --batch 10, --seed 0, --epochs 30).
    real = _interrupt_at_second_epoch(monkeypatch)
    assert main(["train", str(data), "--out", str(out), "--models", "a1", "--size", "32",
                 "--batch", "4", "--seed", "3", "--epochs", "2"]) == 130
    err = capsys.readouterr().err
    hint = err.split("continue with: ", 1)[1].splitlines()[0]
    assert hint == f"--models a1 --resume {shlex.quote(str(out / 'a1' / 'last'))}"
    last = out / "a1" / "last"
    state = json.loads((last / "training_state.json").read_text())["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    saved_before = (last / "config.json").read_bytes()

    # Given otherwise, a setting is refused in the command line's terms, and nothing is
    # written; several at once are named together.
    for changed, words in (
            (["--size", "64"], "trained with --size 32, not --size 64"),
            (["--seed", "1"], "trained with --seed 3, not --seed 1"),
            (["--pseudo-mask", "ellipse"],
             "trained with --pseudo-mask quarter_ellipse, not --pseudo-mask ellipse"),
            (["--augment", "flips"], "trained with --augment auto, not --augment flips"),
            (["--encoder-weights", "my weights.pth"],
             "trained with no --encoder-weights, not --encoder-weights 'my weights.pth'"),
            (["--batch", "8", "--lr", "0.01"],
             "trained with --batch 4 and --lr 0.001, not --batch 8 and --lr 0.01")):
        assert main(["train", str(data), "--out", str(out), *shlex.split(hint),
                     *changed]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert words in err and "{" not in err, err
        assert (last / "config.json").read_bytes() == saved_before

    # The hint as it stands: the run's own settings are taken, and it goes on from its step.
    starts = []

    def record(self, kind, seed, event):
        if event.kind == "start":
            starts.append(event)
        real(self, kind, seed, event)

    monkeypatch.setattr(commands.TrainingBars, "__call__", record)
    assert main(["train", str(data), "--out", str(out), *shlex.split(hint)]) == 0
    captured = capsys.readouterr()
    assert ("resuming with the run's own settings: --size 32 --epochs 2 --batch 4 --seed 3\n"
            in captured.out)
    assert (starts[0].epoch, starts[0].step, starts[0].global_step) == (2, 1, 3)
    saved = json.loads((last / "config.json").read_text())
    train_config = saved["train_config"]
    assert (train_config["input_size"], train_config["batch_size"], train_config["seed"],
            train_config["epochs"]) == (32, 4, 3, 2)
    assert len(saved["history"]) == 2 and saved["data_options"] == {"n_train": None}

    # Done: asking again, with no more epochs than it has, trains nothing and says how to
    # train further (exit 0: the run is as asked, and a job script re-run after it ended
    # must not fail).
    finished = (last / "config.json").read_bytes()
    for extra, asked in (([], ""), (["--epochs", "1"], " (asked for 1)")):
        assert main(["train", str(data), "--out", str(out), "--resume", str(out / "a1"),
                     *extra]) == 0
        text = capsys.readouterr().out
        assert (f"a1: all 2 epochs of the run are done{asked}; give --epochs above 2 to "
                f"train further") in text
        assert (last / "config.json").read_bytes() == finished
    assert not starts[1:]


def test_the_continue_hint_names_what_the_run_needs_and_cannot_take():
    from napari_recist_seg.commands.learning import _continue_hint

    plain = Namespace(teacher=None, images=None)
    assert _continue_hint("a1", "runs/a1/last", plain) == "--models a1 --resume runs/a1/last"
    taught = Namespace(teacher="my teacher", images="/data/Images_png")
    assert _continue_hint("prompted", "runs/prompted/last", taught) == (
        "--models prompted --resume runs/prompted/last --teacher 'my teacher' "
        "--images /data/Images_png")


def test_train_help_still_names_the_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("(default: 128)", "(default: 30; with --resume, the run's)", "default: 10",
                  "(default: loss)", "(default: auto)", "(default: quarter_ellipse)",
                  "(default: 0)", "(default: 2.0)"):
        assert words in text, words
    assert "<not given>" not in text


def test_a_table_run_resumes_with_its_own_patches_and_window(tmp_path, capsys):
    from ._recist_table_data import write_deeplesion

    table = write_deeplesion(tmp_path / "dl")
    out = tmp_path / "runs"
    first = ["train", str(table), "--out", str(out), "--models", "a1", "--size", "32",
             "--batch", "2", "--epochs", "1", "--crop", "40", "--neighbours", "0",
             "--window", "lung"]
    assert main(first) == 0
    capsys.readouterr()
    saved = json.loads((out / "a1" / "last" / "config.json").read_text())
    assert saved["data_options"] == {"window": "lung", "crop": 40.0, "neighbours": 0,
                                     "slice_gap_mm": 2.0}
    resume = ["train", str(table), "--out", str(out), "--resume", str(out / "a1")]
    # A patch side or window of another run would train on other images: refused.
    assert main([*resume, "--epochs", "2", "--crop", "50", "--window", "bone"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("trained with --window lung and --crop 40, not --window bone and --crop 50"
            in err)
    # Left out, they are the run's (one input channel: --neighbours 0 too).
    assert main([*resume, "--epochs", "2"]) == 0
    said = capsys.readouterr().out
    assert ("resuming with the run's own settings: --models a1 --size 32 --batch 2 --window "
            "lung --crop 40 --neighbours 0") in said
    saved = json.loads((out / "a1" / "last" / "config.json").read_text())
    assert len(saved["history"]) == 2 and saved["train_config"]["in_channels"] == 1
