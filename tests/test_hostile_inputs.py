"""Hostile and unlucky inputs: occupied or locked run folders, Ctrl+C, clashing outputs,
files that lie about themselves. Each test builds its own input."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings

import pytest
import torch

from napari_recist_seg.cli import main
from napari_recist_seg.learning import trainer
from napari_recist_seg.learning.checkpoints import load_checkpoint
from napari_recist_seg.learning.run_folders import (
    RunFolderBusy,
    RunFolderOccupied,
    RunInfo,
    claim_run_folder,
    find_run,
)
from napari_recist_seg.learning.trainer import TrainingInterrupted, train

from ._folders import make_isic_folder
from ._learning_data import checkpoint_weights, config, prepared, quick, trained_run


@pytest.fixture(autouse=True)
def _quick():
    with quick():
        yield


def _finished_copy(tmp_path_factory, tmp_path, kind="a1"):
    """A private copy of a finished run folder (the shared run must stay as it is)."""
    out, _ = trained_run(kind, tmp_path_factory)
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


# -- run folders: what they hold ----------------------------------------------------------------
def test_find_run_is_none_without_checkpoints(tmp_path):
    assert find_run(tmp_path / "missing") is None
    assert find_run(tmp_path) is None
    (tmp_path / "best").mkdir()  # a folder of that name without a checkpoint
    (tmp_path / "best" / "notes.txt").write_text("mine")
    assert find_run(tmp_path) is None


def test_find_run_describes_a_finished_run(tmp_path_factory):
    out, _ = trained_run("a1", tmp_path_factory)
    info = find_run(out)
    assert info == RunInfo(folder=out, kind="a1", has_last=True, has_best=True, epoch=2,
                           finished=True)
    assert info.describe() == "a1 run finished at epoch 2"


def test_find_run_describes_a_stopped_run(tmp_path):
    data = prepared()
    calls = []
    events = list(train(data.train_set, data.val_set, config("a1", epochs=3), tmp_path,
                        stop=lambda: calls.append(1) or len(calls) > 3))
    assert events[-1].kind == "stopped"
    info = find_run(tmp_path)
    assert (info.kind, info.has_last, info.has_best, info.finished) == ("a1", True, True, False)
    assert info.epoch == 2  # stopped after one step of the second epoch
    assert info.describe() == "a1 run stopped at epoch 2 (resumable)"


# -- run folders: one run at a time, never replaced silently ----------------------------------
def test_training_into_an_occupied_folder_is_refused(tmp_path_factory, tmp_path):
    run = _finished_copy(tmp_path_factory, tmp_path)
    before = checkpoint_weights(run / "best")
    data = prepared()
    with pytest.raises(RunFolderOccupied, match="overwrite=True") as info:
        next(train(data.train_set, data.val_set, config("a1"), run))
    assert str(run) in str(info.value) and "a1 run finished at epoch 2" in str(info.value)
    assert isinstance(info.value, ValueError)
    after = checkpoint_weights(run / "best")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not (run / ".lock").exists()


def test_overwrite_removes_the_old_best_model(tmp_path_factory, tmp_path):
    run = _finished_copy(tmp_path_factory, tmp_path)
    data = prepared()
    # The new run stops before its first epoch ends: the old best/ must not pass for its own.
    events = list(train(data.train_set, data.val_set, config("a1"), run, overwrite=True,
                        stop=lambda: True))
    assert events[-1].kind == "stopped"
    assert not (run / "best").exists()
    info = find_run(run)
    assert (info.has_best, info.has_last, info.epoch, info.finished) == (False, True, 0, False)


def test_resume_and_overwrite_of_the_same_run_exclude_each_other(tmp_path_factory, tmp_path):
    run = _finished_copy(tmp_path_factory, tmp_path)
    data = prepared()
    with pytest.raises(ValueError, match="give one of them"):
        next(train(data.train_set, data.val_set, config("a1"), run, overwrite=True,
                   resume=run / "last"))
    assert (run / "last" / "config.json").is_file()


def test_resume_from_another_run_into_an_occupied_folder_is_refused(tmp_path_factory,
                                                                     tmp_path):
    run = _finished_copy(tmp_path_factory, tmp_path)
    other, _ = trained_run("a1", tmp_path_factory)
    data = prepared()
    with pytest.raises(RunFolderOccupied):
        next(train(data.train_set, data.val_set, config("a1"), run, resume=other / "last"))


def test_a_second_concurrent_run_fails_at_once(tmp_path):
    data = prepared()
    first = train(data.train_set, data.val_set, config("a1"), tmp_path)
    assert next(first).kind == "start"
    assert (tmp_path / ".lock").read_text().startswith(f"pid={os.getpid()}\n")
    with pytest.raises(RunFolderBusy, match="in use by another training run") as info:
        next(train(data.train_set, data.val_set, config("a1"), tmp_path))
    assert str(tmp_path) in str(info.value)
    first.close()
    assert not (tmp_path / ".lock").exists()
    assert next(train(data.train_set, data.val_set, config("a1"), tmp_path)).kind == "start"


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(f"pid={_dead_pid()}\nhost={socket.gethostname()}\n")
    data = prepared()
    events = list(train(data.train_set, data.val_set, config("a1"), tmp_path,
                        stop=lambda: True))
    assert events[-1].kind == "stopped"
    assert not (tmp_path / ".lock").exists()


def test_a_lock_of_a_live_process_is_respected(tmp_path):
    parent = os.getppid()  # alive for as long as the tests run
    (tmp_path / ".lock").write_text(f"pid={parent}\nhost={socket.gethostname()}\n")
    with pytest.raises(RunFolderBusy, match=f"pid={parent}"), claim_run_folder(tmp_path):
        pass
    assert (tmp_path / ".lock").exists()  # not ours to remove


def test_leftovers_of_interrupted_saves_are_tidied(tmp_path_factory, tmp_path):
    run = _finished_copy(tmp_path_factory, tmp_path)
    junk = run / ".best.tmp-k2j3"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"half written")
    (run / ".last.old-x9").mkdir()
    (run / ".write-test-123").write_bytes(b"0")
    # A kill between the two renames of a save: last/ is absent, the complete copy hidden.
    os.rename(run / "last", run / ".last.tmp-a8b")
    assert find_run(run).has_last  # the hidden complete copy still counts
    with claim_run_folder(run, resume=run / "last"):
        names = sorted(p.name for p in run.iterdir())
    assert names == [".lock", "best", "last"]
    assert (run / "last" / "config.json").is_file()
    assert sorted(p.name for p in run.iterdir()) == ["best", "last"]


# -- Ctrl+C ------------------------------------------------------------------------------------
def test_ctrl_c_in_the_first_epoch_saves_a_resumable_checkpoint(tmp_path_factory, tmp_path):
    data = prepared()
    calls = []

    def ctrl_c_at_second_step():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return False

    events = []
    with pytest.raises(TrainingInterrupted) as info:
        for event in train(data.train_set, data.val_set, config("a1"), tmp_path,
                           stop=ctrl_c_at_second_step):
            events.append(event)
    assert [e.kind for e in events] == ["start", "step"]
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.checkpoint == str(tmp_path / "last")
    assert (info.value.epoch, info.value.step) == (1, 1)
    assert str(tmp_path / "last") in str(info.value)
    assert not (tmp_path / ".lock").exists()
    run = find_run(tmp_path)
    assert (run.epoch, run.finished, run.has_best) == (1, False, False)
    # Resuming finishes the run exactly as if it had never been interrupted.
    resumed = list(train(data.train_set, data.val_set, config("a1"), tmp_path,
                         resume=tmp_path))
    assert (resumed[0].epoch, resumed[0].step, resumed[0].global_step) == (1, 1, 1)
    assert resumed[-1].kind == "finished"
    out_a, _ = trained_run("a1", tmp_path_factory)
    wa, wb = checkpoint_weights(out_a / "last"), checkpoint_weights(tmp_path / "last")
    assert max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa) <= 1e-6
    assert find_run(tmp_path).finished


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_waits_for_the_update_in_progress(signum):
    # Python's own Ctrl+C handler, also where the suite was started with SIGINT ignored
    # (a background job of a non-interactive shell); recist-seg puts it on SIGTERM too.
    before = signal.signal(signum, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with trainer._ctrl_c_deferred():
                os.kill(os.getpid(), signum)
                reached = True  # the signal did not cut the block short
    finally:
        signal.signal(signum, before)
    assert reached


def _stop(how: str) -> None:
    if how == "ctrl-c":  # Ctrl+C while the CLI prints, between two events
        raise KeyboardInterrupt
    # A batch scheduler's time limit (or `timeout`) sends SIGTERM.
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_stopped_run_of_several_models_names_those_not_started(tmp_path, capsys,
                                                                  monkeypatch):
    from napari_recist_seg.commands import learning as commands

    data = make_isic_folder(tmp_path / "data", n=10, size=48)
    real = commands.TrainingBars.__call__

    def stop_on_first_step(self, kind, seed, event):
        real(self, kind, seed, event)
        if event.kind == "step":
            raise KeyboardInterrupt

    monkeypatch.setattr(commands.TrainingBars, "__call__", stop_on_first_step)
    assert main(["train", str(data), "--out", str(tmp_path / "runs"), "--models",
                 "a1,coseg,multitask", "--size", "32", "--epochs", "1", "--batch", "4",
                 "--k", "2"]) == 130
    err = capsys.readouterr().err
    assert "continue with: --models a1 --resume" in err
    assert "not started: coseg, multitask (then: --models coseg,multitask)" in err


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_cli_ctrl_c_or_sigterm_saves_last_and_exits_130(tmp_path, capsys, monkeypatch, how):
    from napari_recist_seg.commands import learning as commands

    data = make_isic_folder(tmp_path / "data", n=10, size=48)
    out = tmp_path / "runs"
    real = commands.TrainingBars.__call__

    def stop_on_first_step(self, kind, seed, event):
        real(self, kind, seed, event)
        if event.kind == "step":
            _stop(how)

    monkeypatch.setattr(commands.TrainingBars, "__call__", stop_on_first_step)
    before = signal.getsignal(signal.SIGTERM)
    args = ["train", str(data), "--out", str(out), "--models", "a1", "--size", "32",
            "--epochs", "2", "--batch", "4", "--k", "2"]
    assert main(args) == 130
    err = capsys.readouterr().err
    last = out / "a1" / "last"
    assert f"in {last}" in err and "--resume" in err
    assert find_run(out / "a1").epoch == 1 and not find_run(out / "a1").finished
    assert not (out / "a1" / ".lock").exists()
    # The command's SIGTERM handler is put back after.
    assert signal.getsignal(signal.SIGTERM) == before
    monkeypatch.setattr(commands.TrainingBars, "__call__", real)

    # The occupied folder is refused, naming it and both ways on.
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out / "a1") in err and "--resume" in err and "--overwrite" in err
    # A run of another kind given to --resume is named as such, whatever --out holds.
    other = [a if a != "a1" else "multitask" for a in args]
    for where in (out, tmp_path / "elsewhere"):
        assert main([*other[:3], str(where), *other[4:], "--resume", str(out / "a1")]) == 2
        err = capsys.readouterr().err
        assert "is a 'a1' run, not 'multitask': name its kind with --models a1" in err, err
    # The run folder itself is accepted by --resume.
    assert main([*args, "--resume", str(out / "a1")]) == 0
    assert find_run(out / "a1").finished
    assert main([*args, "--overwrite", "--epochs", "1"]) == 0
    assert find_run(out / "a1").epoch == 1


# -- never replace user files ------------------------------------------------------------------
def _rgb_png(path, seed=0, size=48):
    import imageio.v3 as iio
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    iio.imwrite(path, rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return path


@pytest.fixture
def untrained_model(tmp_path):
    from ._learning_data import saved_model, whole_preprocessing

    return saved_model(tmp_path / "model", "a1", preprocessing=whole_preprocessing())


def test_predict_refuses_to_replace_a_file_before_writing_anything(tmp_path, untrained_model,
                                                                   capsys):
    data = make_isic_folder(tmp_path / "data", n=3, size=48)
    out = tmp_path / "preds"
    out.mkdir()
    mine = out / "ISIC_0000001_mask.png"
    mine.write_bytes(b"my own mask")
    args = ["predict", str(data / "images"), "--model", str(untrained_model), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(mine) in err and "--overwrite" in err and "nothing was written" in err
    assert mine.read_bytes() == b"my own mask"
    assert sorted(p.name for p in out.iterdir()) == [mine.name]
    assert main([*args, "--overwrite"]) == 0
    assert mine.read_bytes() != b"my own mask"
    assert len(list(out.glob("*_mask.png"))) == 3


def test_predict_keeps_subfolders_of_inputs_with_the_same_name(tmp_path, untrained_model):
    import csv

    import imageio.v3 as iio

    root = tmp_path / "images"
    _rgb_png(root / "a" / "case.png", seed=1)
    _rgb_png(root / "b" / "case.png", seed=2)
    out = tmp_path / "preds"
    assert main(["predict", str(root), "--model", str(untrained_model), "--out", str(out)]) == 0
    assert (out / "a" / "case_mask.png").is_file() and (out / "b" / "case_mask.png").is_file()
    assert iio.imread(out / "a" / "case_mask.png").shape == (48, 48)
    with open(out / "predictions.csv") as fh:
        names = [row["image"] for row in csv.DictReader(fh)]
    assert names == ["a/case.png", "b/case.png"]


def test_predict_on_a_ph2_or_isic_2017_folder_segments_its_images_only(tmp_path,
                                                                         untrained_model):
    import imageio.v3 as iio
    import numpy as np

    # PH2: IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp beside its lesion mask and its
    # per-colour region masks (IMDxxx_roi/); ISIC 2017: superpixel maps beside the images.
    root = tmp_path / "PH2"
    case = root / "IMD002"
    image = _rgb_png(case / "IMD002_Dermoscopic_Image" / "IMD002.png", seed=1)
    iio.imwrite(image.with_suffix(".bmp"), iio.imread(image))
    image.unlink()
    grey = np.zeros((48, 48), np.uint8)
    (case / "IMD002_lesion").mkdir()
    iio.imwrite(case / "IMD002_lesion" / "IMD002_lesion.bmp", grey)
    (case / "IMD002_roi").mkdir()
    iio.imwrite(case / "IMD002_roi" / "IMD002_R1.bmp", grey)
    _rgb_png(root / "ISIC_0000001.png", seed=2)
    _rgb_png(root / "ISIC_0000001_superpixels.png", seed=3)
    out = tmp_path / "preds"
    assert main(["predict", str(root), "--model", str(untrained_model), "--out", str(out)]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*_mask.png"))
    assert written == ["IMD002_mask.png", "ISIC_0000001_mask.png"]


def test_output_names_never_leave_the_output_folder():
    from napari_recist_seg.commands._outputs import output_stems

    stems = output_stems(["../x/case.jpg", "/abs/y/case.jpg", "case.png", "case.jpg"])
    assert len({str(s).casefold() for s in stems}) == 4
    assert all(not s.is_absolute() and ".." not in s.parts for s in stems)
    assert [str(s) for s in output_stems(["p/one.png", "q/two.png"])] == ["one", "two"]
    assert [str(s) for s in output_stems(["d/a/c.png", "d/b/c.png"])] == ["a/c", "b/c"]


def _recist(row=20.0, col=20.0):
    from napari_recist_seg.core.recist import Recist

    return Recist([[row - 8, col], [row + 8, col]], [[row, col - 4], [row, col + 4]])


def test_pseudo_masks_refuse_to_replace_and_keep_subfolders(tmp_path, capsys):
    from napari_recist_seg.data.recist_files import RecistTable, write_recists

    table = RecistTable([_recist(), _recist(25, 22)], images=["a/case.png", "b/case.png"])
    source = write_recists(tmp_path / "lesions.csv", table)
    out = tmp_path / "out"
    out.mkdir()
    (out / "recists.csv").write_text("my notes")
    args = ["pseudo-masks", str(source), "--out", str(out), "--shape", "48", "48"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out / "recists.csv") in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["recists.csv"]
    assert (out / "recists.csv").read_text() == "my notes"
    assert main([*args, "--overwrite"]) == 0
    assert (out / "a" / "case_ellipse.png").is_file()
    assert (out / "b" / "case_ellipse.png").is_file()


def test_groups_refuses_to_write_over_its_input(tmp_path, capsys):
    from napari_recist_seg.data.recist_files import RecistTable, write_recists

    table = RecistTable([_recist(20 + i, 20 + 2 * i) for i in range(6)],
                        images=[f"im{i}.png" for i in range(6)])
    source = write_recists(tmp_path / "lesions.csv", table)
    before = source.read_bytes()
    assert main(["groups", str(source), "--out", str(source), "--k", "2"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert source.read_bytes() == before


def test_an_unwritable_folder_is_named_not_the_temporary_file(tmp_path, monkeypatch):
    import tempfile

    from napari_recist_seg.data._atomic import atomic_write

    def refuse(prefix, suffix, dir):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "x1" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info, atomic_write(tmp_path / "out.csv") as fh:
        fh.write("never")
    text = str(info.value)
    assert str(tmp_path) in text and "out.csv" in text and ".tmp" not in text


# -- DeepLesion's DL_info.csv --------------------------------------------------------------------
def _deeplesion(tmp_path, **over):
    from .test_deeplesion import GOOD, _row, _tree

    return _tree(tmp_path, [_row("000001_01_01_105.png", GOOD, **over)])


@pytest.mark.parametrize("name", ["../../secret/000001_01_01_105.png",
                                  "/tmp/000001_01_01_105.png", "..\\000001_01_01_105.png"])
def test_deeplesion_file_names_cannot_leave_the_image_folder(tmp_path, name):
    import imageio.v3 as iio
    import numpy as np

    from napari_recist_seg.data.deeplesion import read_deeplesion

    root = _deeplesion(tmp_path, File_name=name)
    # A file where the name points, so following it would succeed.
    secret = tmp_path / "secret" / "000001_01_01" / "105.png"
    secret.parent.mkdir(parents=True)
    iio.imwrite(secret, np.full((32, 32), 32768, np.uint16))
    with pytest.raises(ValueError, match="File_name must be a plain file name") as info:
        read_deeplesion(root)
    assert "row 1" in str(info.value)


def test_deeplesion_image_column_cannot_leave_the_image_folder(tmp_path):
    from napari_recist_seg.data.deeplesion import read_deeplesion

    from .test_deeplesion import GOOD, HEADER, _row, _tree, _write_csv

    root = _tree(tmp_path, [])
    _write_csv(root / "DL_info.csv", [_row("000001_01_01_105.png", GOOD, image="../x.png")],
               header=[*HEADER, "image"])
    with pytest.raises(ValueError, match="column image must be a plain file name"):
        read_deeplesion(root)


@pytest.mark.parametrize("window", ["275, -175", "40, 40"])
def test_deeplesion_bad_window_warns_and_uses_soft_tissue(tmp_path, window):
    from napari_recist_seg.data.deeplesion import (
        DEFAULT_WINDOW,
        read_deeplesion,
        read_deeplesion_slice,
    )

    root = _deeplesion(tmp_path, DICOM_windows=window)
    with pytest.warns(UserWarning, match=r"DICOM_windows.*row 1 \(000001_01_01_105.png"):
        records = read_deeplesion(root)
    assert records[0].window == DEFAULT_WINDOW
    assert read_deeplesion_slice(records[0]).shape == (32, 32)


@pytest.mark.parametrize("size", ["100000, 100000", "0, 32", "32.5, 32", "-32, 32"])
def test_deeplesion_image_size_is_bounded(tmp_path, size):
    from napari_recist_seg.data.deeplesion import read_deeplesion

    with pytest.raises(ValueError, match="row 1 .*Image_size must be two whole numbers"):
        read_deeplesion(_deeplesion(tmp_path, Image_size=size))


def test_deeplesion_image_size_must_match_the_slice(tmp_path):
    from napari_recist_seg.data.deeplesion import read_deeplesion, read_deeplesion_slice

    records = read_deeplesion(_deeplesion(tmp_path, Image_size="64, 48"))
    with pytest.raises(ValueError, match="is 32 x 32 pixels but Image_size of row 1 says 64 x 48"):
        read_deeplesion_slice(records[0])
    with pytest.raises(ValueError, match="Image_size"):
        read_deeplesion_slice(records[0], neighbours=1)


# -- checkpoint config.json: every field checked before anything is built ----------------------
def _edit(folder, change):
    import json

    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda c: c["model_config"].update(in_channels=10**9), "model_config.in_channels"),
        (lambda c: c["model_config"].update(in_channels=0), "model_config.in_channels"),
        (lambda c: c["model_config"].update(in_channels=True), "model_config.in_channels"),
        (lambda c: c["model_config"].update(in_channels=3.5), "model_config.in_channels"),
        (lambda c: c["model_config"].update(input_size=2**20), "model_config.input_size"),
        (lambda c: c["model_config"].update(dropout="0.2"), "model_config.dropout"),
        (lambda c: c["model_config"].update(encoder=["resnet18"]), "model_config.encoder"),
        (lambda c: c.update(preprocessing="whole"), "preprocessing"),
        (lambda c: c["preprocessing"].update(size="128"), "preprocessing.size"),
        (lambda c: c["preprocessing"].update(size=10**7), "preprocessing.size"),
        (lambda c: c["preprocessing"].update(mode="tiles"), "preprocessing.mode"),
        (lambda c: c["preprocessing"].update(window=[300, -100]), "preprocessing.window"),
        (lambda c: c["preprocessing"].update(margin=float("nan")), "preprocessing.margin"),
        (lambda c: c["preprocessing"].update(channel_axis=7), "preprocessing.channel_axis"),
        (lambda c: c.update(grouping="k-means"), "grouping"),
        (lambda c: c.update(grouping={"features": "standardised", "centres": [[1, "x"]],
                                      "mean": [0], "scale": [1]}), "grouping"),
        (lambda c: c.update(grouping={"features": "paper", "centres": [[0] * 5] * 20_000,
                                      "mean": [0] * 5, "scale": [1] * 5}), "grouping"),
        (lambda c: c.update(history={"epoch": 1}), "history"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_checkpoint_config_fields_are_checked(tmp_path, change, field):
    from napari_recist_seg.learning.inference import load_model

    from ._learning_data import saved_model, whole_preprocessing

    folder = saved_model(tmp_path / "ckpt", "a1", preprocessing=whole_preprocessing())
    path = _edit(folder, change)
    with pytest.raises(ValueError) as info:
        load_model(folder)
    text = str(info.value)
    assert str(path) in text and f"'{field}" in text
    assert "c10" not in text and "Exception raised from" not in text and len(text) < 400


def test_model_sizes_are_bounded_when_building():
    from napari_recist_seg.learning.models import build_model

    with pytest.raises(ValueError, match="in_channels must be an integer from 1 to 64"):
        build_model("a1", in_channels=65)
    with pytest.raises(ValueError, match="n_groups must be an integer from 2 to 10000"):
        build_model("multitask", n_groups=10**6)


# -- RECIST files and masks ----------------------------------------------------------------------
def _recist_json(path, lesions):
    import json

    path.write_text(json.dumps({"format": "napari-recist-seg-recist", "format_version": 1,
                                "lesions": lesions}))
    return path


def _lesion(lid=0, **extra):
    return {"lesion_id": lid, "long_axis": [[12, 20], [28, 20]],
            "short_axis": [[20, 16], [20, 24]], **extra}


def test_recist_json_nested_ten_thousand_deep_is_a_clear_error(tmp_path):
    from napari_recist_seg.data.recist_files import FORMAT_NAME, read_recists

    path = tmp_path / "deep.json"
    path.write_text('{"format": "' + FORMAT_NAME + '", "lesions": ' + "[" * 10_000
                    + "]" * 10_000 + "}")
    with pytest.raises(ValueError, match="nested too deeply") as info:
        read_recists(path)
    assert str(path) in str(info.value)


def test_recist_json_image_must_be_a_name(tmp_path):
    from napari_recist_seg.data.recist_files import FORMAT_NAME, read_recists

    path = tmp_path / "lesions.json"
    _recist_json(path, [_lesion(0, image=["a.png", "b.png"])])
    text = path.read_text().replace("napari-recist-seg-recist", FORMAT_NAME)
    path.write_text(text)
    with pytest.raises(ValueError, match="lesion entry 1 .*'image' must be a file or layer name"):
        read_recists(path)


def test_duplicate_lesions_are_reported_with_their_ids(tmp_path):
    from napari_recist_seg.data.recist_files import RecistTable, read_recists, write_recists

    twice = RecistTable([_recist(), _recist(30, 30), _recist(30, 30)], lesion_ids=[4, 4, 9],
                        images=["a.png"] * 3)
    path = write_recists(tmp_path / "lesions.csv", twice)
    with pytest.warns(UserWarning) as caught:
        read_recists(path)
    texts = [str(w.message) for w in caught]
    assert any("lesion id(s) appear more than once" in t and ": 4" in t for t in texts)
    assert any("repeat the same measurement" in t and "4 and 9" in t for t in texts)
    # The same id on two images is two lesions, not a duplicate.
    apart = RecistTable([_recist(), _recist(30, 30)], lesion_ids=[0, 0], images=["a", "b"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_recists(write_recists(tmp_path / "apart.csv", apart))


def test_nan_in_a_float_mask_is_not_lesion(tmp_path):
    import imageio.v3 as iio
    import numpy as np

    from napari_recist_seg.data.image_folders import load_mask

    mask = np.zeros((16, 16), np.float32)
    mask[:, :4] = np.nan
    mask[6:10, 6:10] = 1.0
    iio.imwrite(tmp_path / "m.tif", mask)
    loaded = load_mask(tmp_path / "m.tif")
    assert loaded.sum() == 16 and loaded[6:10, 6:10].all()


def test_a_probability_map_read_as_a_mask_is_warned_about(tmp_path):
    import imageio.v3 as iio
    import numpy as np

    from napari_recist_seg.data.image_folders import load_mask

    rows, cols = np.mgrid[:64, :64]
    soft = np.clip(255 - 6 * np.hypot(rows - 32, cols - 32), 0, 255).astype(np.uint8)
    iio.imwrite(tmp_path / "soft.png", soft)
    with pytest.warns(UserWarning, match=r"soft\.png: \d+ grey levels in a mask"):
        assert load_mask(tmp_path / "soft.png").sum() == (soft > 0).sum()
    labels = np.zeros((64, 64), np.uint8)
    for i in range(20):  # a label image of 20 lesions is a mask, not a map
        labels[3 * i:3 * i + 2, 5:9] = i + 1
    iio.imwrite(tmp_path / "labels.png", labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_mask(tmp_path / "labels.png").sum() == 20 * 8


# -- grey image folders ----------------------------------------------------------------------------
def _grey_folder(root, n=10, size=48, bits=8, colour=()):
    """An image+mask folder of grey images (``colour``: indices written as RGB instead)."""
    import imageio.v3 as iio
    import numpy as np
    from skimage.draw import ellipse

    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        rr, cc = ellipse(size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4),
                         rng.uniform(8, 14), rng.uniform(5, 8), rotation=rng.uniform(0, 3),
                         shape=mask.shape)
        mask[rr, cc] = 255
        grey = np.where(mask > 0, 60.0, 180.0) + rng.normal(0, 5, mask.shape)
        if bits == 16:
            image = np.clip(grey * 256, 0, 65535).astype(np.uint16)
        else:
            image = np.clip(grey, 0, 255).astype(np.uint8)
        if i in colour:
            image = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
        iio.imwrite(root / "images" / f"case{i:02d}.png", image)
        iio.imwrite(root / "masks" / f"case{i:02d}_segmentation.png", mask)
    return root


@pytest.mark.parametrize("bits", [8, 16])
def test_a_grey_folder_trains_and_predicts(tmp_path, bits):
    data = _grey_folder(tmp_path / "grey", bits=bits)
    out = tmp_path / "runs"
    assert main(["train", str(data), "--out", str(out), "--models", "a1", "--size", "32",
                 "--epochs", "1", "--batch", "4", "--k", "2"]) == 0
    _, saved = load_checkpoint(out / "a1" / "best")
    assert saved["model_config"]["in_channels"] == 1
    assert main(["predict", str(data / "images"), "--model", str(out / "a1"), "--out",
                 str(tmp_path / "preds")]) == 0
    assert len(list((tmp_path / "preds").glob("*_mask.png"))) == 10


def test_a_mixed_grey_and_colour_folder_is_made_colour_with_a_warning(tmp_path):
    import numpy as np

    from napari_recist_seg.learning.benchmark import load_folder

    data = _grey_folder(tmp_path / "mixed", n=4, colour=(1,))
    with pytest.warns(UserWarning, match="3 of 4 images are grey.*case00"):
        folder = load_folder(data)
    assert folder.in_channels == 3
    assert all(np.asarray(im).shape == (48, 48, 3) for im in folder.images)


def test_channels_that_do_not_fit_the_config_are_named(tmp_path):
    from napari_recist_seg.learning.benchmark import load_folder
    from napari_recist_seg.learning.preparation import prepare_whole_images

    folder = load_folder(_grey_folder(tmp_path / "grey", n=8))
    data = prepare_whole_images(folder.images, folder.recists, size=32, k=2)
    with pytest.raises(ValueError, match=r"1 channel\(s\) but in_channels is 3"):
        next(train(data.train_set, data.val_set, config("a1", in_channels=3), tmp_path / "o"))
    assert not (tmp_path / "o" / ".lock").exists()


# -- groups: bounds and lesions too alike ------------------------------------------------------
def _same_lesions(tmp_path, n=10):
    from napari_recist_seg.data.recist_files import RecistTable, write_recists

    table = RecistTable([_recist() for _ in range(n)], images=[f"im{i}.png" for i in range(n)])
    return write_recists(tmp_path / "same.csv", table)


def test_groups_of_identical_lesions_say_they_are_too_alike(tmp_path, capsys):
    import warnings

    source = _same_lesions(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning, an error message instead
        assert main(["groups", str(source), "--out", str(tmp_path / "g.csv"), "--k", "3"]) == 2
        assert "too alike for k=3 groups" in capsys.readouterr().err
        assert main(["groups", str(source), "--out", str(tmp_path / "g.csv"),
                     "--suggest-k", "2:5"]) == 2
        assert "too alike" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()


@pytest.mark.parametrize("args, words", [
    (["--k", "0"], "k must be at least 1"),
    (["--k", "1000"], "k=1000 groups is more than the 10 lesions"),
    (["--k", "2", "--seed", "-1"], "seed must be an integer from 0 to 4294967295"),
])
def test_groups_settings_out_of_bounds_are_named(tmp_path, capsys, args, words):
    from napari_recist_seg.data.recist_files import RecistTable, write_recists

    table = RecistTable([_recist(15 + i, 15 + 2 * i) for i in range(10)])
    source = write_recists(tmp_path / "l.csv", table)
    assert main(["groups", str(source), "--out", str(tmp_path / "g.csv"), *args]) == 2
    assert words in capsys.readouterr().err


def test_train_size_is_bounded(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=4, size=32)
    assert main(["train", str(data), "--out", str(tmp_path / "o"), "--models", "a1",
                 "--size", "100000", "--k", "2"]) == 2
    assert "multiple of 16 from 16 to 4096" in capsys.readouterr().err


def test_long_and_nul_paths_give_a_short_message(tmp_path, capsys):
    long = str(tmp_path / ("x" * 5000)) + ".csv"
    assert main(["groups", long, "--out", str(tmp_path / "g.csv"), "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err) < 800 and "error" in err
    assert main(["groups", "a\x00b.csv", "--out", str(tmp_path / "g.csv"), "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert "\x00" not in err and len(err) < 800


def test_predict_names_an_image_it_cannot_segment_and_leaves_nothing(tmp_path,
                                                                     untrained_model, capsys):
    import imageio.v3 as iio
    import numpy as np

    root = tmp_path / "images"
    _rgb_png(root / "a.png", seed=1)
    broken = _rgb_png(root / "b_broken.png", seed=2)
    broken.write_bytes(broken.read_bytes()[:200])  # cut off, as by a failed copy
    out = tmp_path / "preds"
    assert main(["predict", str(root), "--model", str(untrained_model), "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "b_broken.png" in err and err.count("b_broken.png") == 1
    # a.png's mask, written before b_broken.png failed, is taken away with the folder.
    assert not out.exists()
    # A grey picture among colour ones is segmented by a colour model as training would
    # read it: as three equal channels.
    broken.unlink()
    iio.imwrite(root / "c_grey.png", np.full((48, 48), 90, np.uint8))
    assert main(["predict", str(root), "--model", str(untrained_model), "--out", str(out)]) == 0
    assert iio.imread(out / "c_grey_mask.png").shape == (48, 48)
