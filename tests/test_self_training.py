"""Self-training rounds: targets refined within each RECIST's trimap, fresh networks trained
on them, folders, refusals, and the command line."""

import json

import numpy as np
import pytest

from napari_recist_seg.cli import main
from napari_recist_seg.core.recist import Recist
from napari_recist_seg.core.training_targets import self_training_target
from napari_recist_seg.core.trimap import BACKGROUND, LESION, recist_trimap
from napari_recist_seg.learning.inference import load_model
from napari_recist_seg.learning.run_folders import RunFolderOccupied
from napari_recist_seg.learning.self_training import refine_targets, round_folders, self_train

from ._folders import make_isic_folder
from ._learning_data import config, prepared, quick

RECIST = Recist([[32, 12], [32, 52]], [[20, 32], [44, 32]])


def test_target_keeps_what_the_recist_guarantees():
    trimap = recist_trimap(RECIST, (64, 64))
    everything = self_training_target(np.ones((64, 64)), RECIST)
    nothing = self_training_target(np.zeros((64, 64)), RECIST)
    # A network that says "lesion" everywhere is cut back to what is not certain background,
    # one that says "nothing" is filled with the certain lesion.
    assert np.array_equal(everything, trimap != BACKGROUND)
    assert np.array_equal(nothing, trimap == LESION)
    assert nothing.sum() < everything.sum()


def test_target_drops_pieces_no_axis_crosses():
    prob = np.zeros((64, 64), np.float32)
    prob[22:43, 14:51] = 0.9          # the lesion the axes measure
    prob[2:6, 2:6] = 0.9              # something else, far from the axes
    target = self_training_target(prob, RECIST)
    assert target[32, 32] and not target[2:6, 2:6].any()
    # Inside the undecided band the network's outline is kept as it is.
    band = recist_trimap(RECIST, (64, 64)) == 2
    assert np.array_equal(target[band], (prob >= 0.5)[band])


def test_target_refuses_bad_probability_maps():
    with pytest.raises(ValueError, match="2D"):
        self_training_target(np.zeros((2, 64, 64)), RECIST)
    bad = np.zeros((64, 64))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        self_training_target(bad, RECIST)


def test_with_targets_is_a_view_and_checks_the_shape():
    data = prepared()
    train_set = data.train_set
    before = train_set.pseudo_mask(0).copy()
    masks = np.zeros((len(train_set), train_set.size, train_set.size), bool)
    masks[:, :4, :4] = True
    view = train_set.with_targets(masks)
    assert np.array_equal(view.pseudo_mask(0), masks[0])
    assert np.array_equal(view[0]["mask"].numpy()[0] > 0.5, masks[0])
    assert np.array_equal(train_set.pseudo_mask(0), before)  # the original is untouched
    with pytest.raises(ValueError, match="shape"):
        train_set.with_targets(masks[:, :-1])


def test_rounds_train_fresh_networks_on_the_refined_targets(tmp_path):
    data = prepared()
    seen = []
    out = tmp_path / "run"
    with quick():
        events = list(self_train(data.train_set, data.val_set, config("prompted", epochs=1),
                                 out, rounds=1, grouping=data.grouping,
                                 on_targets=seen.append))
    first, final = round_folders(out, 1)
    assert first == out / "round-0" and final == out
    for folder in (first, final):
        assert (folder / "best" / "model.safetensors").is_file()
    # What round 1 trained on is round 0's network's masks, refined.
    assert len(seen) == 1 and seen[0].round == 1
    with quick():
        expected = refine_targets(load_model(first), data.train_set, batch_size=4)
    assert np.array_equal(seen[0].train_masks, expected)
    assert np.array_equal(seen[0].previous_train_masks[0], data.train_set.pseudo_mask(0))
    # The data set the caller gave keeps its own targets.
    assert np.array_equal(data.train_set.pseudo_mask(0), seen[0].previous_train_masks[0])
    assert [e.message.split(" all")[0] for e in events if e.kind == "finished"] == [
        "first training", "self-training round 1 of 1"]
    assert [e.stage for e in events if e.kind == "start"] == [
        "first training", "self-training round 1 of 1"]
    saved = json.loads((final / "best" / "config.json").read_text())
    assert saved["self_training"]["round"] == 1 and saved["self_training"]["rounds"] == 1


def test_an_occupied_round_folder_is_refused_before_anything_trains(tmp_path):
    data = prepared()
    out = tmp_path / "run"
    with quick():
        list(self_train(data.train_set, data.val_set, config("a1", epochs=1), out / "round-0",
                        rounds=0, grouping=data.grouping))
        run = self_train(data.train_set, data.val_set, config("a1", epochs=1), out, rounds=1,
                         grouping=data.grouping)
        with pytest.raises(RunFolderOccupied):
            next(run)
    assert not (out / "best").exists()


@pytest.mark.parametrize("rounds", [-1, 11, 1.5, True])
def test_bad_round_counts_are_refused(tmp_path, rounds):
    data = prepared()
    with pytest.raises(ValueError, match="self-training rounds"):
        next(self_train(data.train_set, data.val_set, config("a1"), tmp_path / "r",
                        rounds=rounds))


def test_train_command_runs_rounds_and_refuses_resume_with_them(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=8, size=48)
    out = tmp_path / "runs"
    with quick():
        code = main(["train", str(data), "--out", str(out), "--models", "prompted", "--size",
                     "32", "--epochs", "1", "--batch", "4", "--self-training-rounds", "1"])
    assert code == 0
    assert (out / "prompted" / "round-0" / "best").is_dir()
    assert (out / "prompted" / "best").is_dir()
    err = capsys.readouterr().err
    assert "before self-training round 1" in err
    assert "prompted (seed 0, first training)" in err
    assert "prompted (seed 0, self-training round 1 of 1)" in err
    # A second run into the same folder is refused, naming the round's folder.
    code = main(["train", str(data), "--out", str(out), "--models", "prompted", "--size", "32",
                 "--epochs", "1", "--batch", "4", "--self-training-rounds", "1"])
    assert code == 2 and "round-0" in capsys.readouterr().err
    code = main(["train", str(data), "--out", str(out), "--models", "prompted",
                 "--resume", str(out / "prompted"), "--self-training-rounds", "1"])
    assert code == 2 and "--self-training-rounds" in capsys.readouterr().err


def test_benchmark_reports_the_quality_of_each_round_targets(tmp_path):
    train_dir = make_isic_folder(tmp_path / "train", n=10, size=48, seed=1)
    test_dir = make_isic_folder(tmp_path / "test", n=3, size=48, seed=2)
    out = tmp_path / "bench"
    with quick():
        code = main(["benchmark", "--train", str(train_dir), "--test", str(test_dir), "--out",
                     str(out), "--models", "prompted", "--epochs", "1", "--size", "32",
                     "--batch", "4", "--self-training-rounds", "2"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["self_training_rounds"] == 2
    (seed,) = results["self_training"]["prompted"]
    assert [r["round"] for r in seed["rounds"]] == [1, 2]
    first, second = seed["rounds"]
    # Round 2 starts from the targets round 1 trained on.
    assert second["train_previous_dice"] == pytest.approx(first["train_target_dice"])
    for entry in seed["rounds"]:
        for key in ("train_target_dice", "val_target_dice", "train_previous_dice"):
            assert 0 < entry[key] <= 1
        assert 0 <= entry["changed_pixels"] < 1
    assert (out / "runs" / "prompted-seed0" / "round-1" / "best").is_dir()
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "### Self-training rounds" in report and "| prompted | 2 |" in report


def test_a_stop_between_rounds_ends_with_the_round_that_finished(tmp_path):
    data = prepared()
    out = tmp_path / "run"
    asked = []
    events = []
    with quick():
        for event in self_train(data.train_set, data.val_set, config("a1", epochs=1), out,
                                rounds=2, grouping=data.grouping, stop=lambda: bool(asked)):
            events.append(event)
            if event.kind == "finished":
                asked.append(True)  # the user clicks Stop as the first round ends
    assert [e.kind for e in events][-2:] == ["finished", "stopped"]
    final = events[-1]
    assert "stopped after the first training" in final.message and str(out / "round-0") in \
        final.message
    assert final.checkpoint.startswith(str(out / "round-0"))
    assert not (out / "round-1").exists() and not (out / "best").exists()
