"""Targets drawn by a teacher model from each RECIST: the library call, its refusals, and the
train and benchmark commands."""

import json

import numpy as np
import pytest

from napari_recist_seg.cli import main
from napari_recist_seg.learning.inference import load_model
from napari_recist_seg.learning.self_training import refine_targets
from napari_recist_seg.learning.teacher import check_teacher, teacher_targets

from ._folders import make_isic_folder
from ._learning_data import (
    INPUT,
    crop_preprocessing,
    prepared,
    quick,
    saved_model,
    whole_preprocessing,
)


def _teacher(folder, **changes):
    return saved_model(folder, "prompted", preprocessing=whole_preprocessing(**changes),
                       seed=3)


def test_teacher_targets_are_its_masks_within_each_recist(tmp_path):
    data = prepared()
    before = [data.train_set.pseudo_mask(i).copy() for i in range(len(data.train_set))]
    teacher = load_model(_teacher(tmp_path / "teacher"))
    with quick():
        taught, targets = teacher_targets(teacher, data, batch_size=4)
        expected = [refine_targets(teacher, d, batch_size=4) for d in (data.train_set,
                                                                        data.val_set)]
    for view, masks in ((taught.train_set, expected[0]), (taught.val_set, expected[1])):
        assert all(np.array_equal(view.pseudo_mask(i), m) for i, m in enumerate(masks))
    assert np.array_equal(targets.train_masks, expected[0])
    assert np.array_equal(targets.previous_train_masks, np.stack(before))
    assert 0 < targets.changed < 1
    # The caller's data keep their drawn targets; images and groups are shared.
    assert all(np.array_equal(data.train_set.pseudo_mask(i), b) for i, b in enumerate(before))
    assert taught.grouping is data.grouping
    assert np.array_equal(taught.train_set[0]["image"], data.train_set[0]["image"])


@pytest.mark.parametrize("changes, words", [
    ({"size": INPUT * 2}, "size"),
    ({"normalise": None}, "normalise"),
])
def test_a_teacher_that_sees_lesions_otherwise_is_refused(tmp_path, changes, words):
    data = prepared()
    teacher = load_model(_teacher(tmp_path / "t", **changes))
    with pytest.raises(ValueError, match=words) as err:
        check_teacher(teacher, data.train_set, "TEACHER")
    assert "TEACHER" in str(err.value)


def test_a_crop_teacher_and_a_grey_teacher_are_refused(tmp_path):
    data = prepared()
    crops = load_model(saved_model(tmp_path / "c", "prompted", preprocessing=crop_preprocessing(
        normalise="image")))
    with pytest.raises(ValueError, match="patches"):
        teacher_targets(crops, data)
    grey = load_model(saved_model(tmp_path / "g", "prompted", in_channels=1,
                                  preprocessing=whole_preprocessing()))
    with pytest.raises(ValueError, match="1-channel"):
        teacher_targets(grey, data)


def test_train_command_learns_from_the_teacher_and_resumes_only_with_it(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=8, size=48)
    teacher = _teacher(tmp_path / "teacher")
    out = tmp_path / "runs"
    args = ["train", str(data), "--out", str(out), "--models", "a1", "--size", str(INPUT),
            "--epochs", "1", "--batch", "4"]
    with quick():
        assert main([*args, "--teacher", str(teacher)]) == 0
    captured = capsys.readouterr()
    assert f"targets drawn by the teacher {teacher}" in captured.out
    saved = json.loads((out / "a1" / "best" / "config.json").read_text())
    assert saved["teacher"] == str(teacher)
    # Continuing that run without the teacher would change its targets: refused.
    code = main(["train", str(data), "--out", str(out), "--models", "a1", "--resume",
                 str(out / "a1")])
    assert code == 2 and "--teacher" in capsys.readouterr().err
    # A teacher folder that does not exist is named before any data is read.
    code = main([*args, "--out", str(tmp_path / "other"), "--teacher", str(tmp_path / "none")])
    assert code == 2 and "no such run" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_benchmark_reports_the_teacher_targets_quality(tmp_path, capsys, monkeypatch):
    from napari_recist_seg.learning import inference
    from napari_recist_seg.learning import teacher as teacher_module

    train_dir = make_isic_folder(tmp_path / "train", n=10, size=48, seed=1)
    test_dir = make_isic_folder(tmp_path / "test", n=3, size=48, seed=2)
    teacher = _teacher(tmp_path / "teacher")
    out = tmp_path / "bench"
    loads, drawings = [], []

    def counted_load(path, *args, **kwargs):
        loads.append(str(path))
        return load_model(path, *args, **kwargs)

    def counted_targets(*args, **kwargs):
        drawings.append(args[1])
        return teacher_targets(*args, **kwargs)

    monkeypatch.setattr(inference, "load_model", counted_load)
    monkeypatch.setattr(teacher_module, "teacher_targets", counted_targets)
    with quick():
        code = main(["benchmark", "--train", str(train_dir), "--test", str(test_dir), "--out",
                     str(out), "--models", "a1,coseg", "--epochs", "1", "--size", str(INPUT),
                     "--batch", "4", "--seeds", "2", "--teacher", str(teacher)])
    assert code == 0
    # One load of the teacher, and one drawing per seed that both kinds train on.
    assert loads.count(str(teacher)) == 1
    assert len(drawings) == 2 and drawings[0] is not drawings[1]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["teacher"] == str(teacher)
    targets = results["teacher"]["targets"]
    assert [e["seed"] for e in targets["a1"]] == [0, 1] == [e["seed"] for e in targets["coseg"]]
    assert targets["a1"] == targets["coseg"]
    entry = targets["a1"][0]
    assert 0 < entry["changed_pixels"] < 1
    for key in ("train_target_dice", "val_target_dice", "train_previous_dice"):
        assert 0 < entry[key] <= 1
    assert entry["train_target_dice"] != entry["train_previous_dice"]
    saved = json.loads((out / "runs" / "a1-seed0" / "best" / "config.json").read_text())
    assert saved["teacher"] == str(teacher)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "### Targets drawn by a teacher" in report and "| a1 |" in report
    # A teacher of another input size is refused before anything is trained.
    wrong = _teacher(tmp_path / "wrong", size=INPUT * 2)
    capsys.readouterr()
    code = main(["benchmark", "--train", str(train_dir), "--test", str(test_dir), "--out",
                 str(tmp_path / "b2"), "--models", "a1", "--epochs", "1", "--size",
                 str(INPUT), "--teacher", str(wrong)])
    assert code == 2 and "size" in capsys.readouterr().err
    assert not (tmp_path / "b2" / "runs").exists()
