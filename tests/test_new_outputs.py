"""Outputs of a run are kept only when it ends well: stopped half way it leaves what was
there before, old files it may replace included, and it never mixes with another run's."""

from __future__ import annotations

import pytest

from napari_recist_seg.data._atomic import NewOutputs


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_finished_run_keeps_its_outputs_under_their_names(tmp_path):
    out = tmp_path / "out"
    with NewOutputs([out]) as new:
        staged = new.file(out / "case_labels.nii.gz")
        assert staged.name.endswith("case_labels.nii.gz") and staged.parent == out
        staged.write_text("labels")
        new.file(out / "lesions.csv").write_text("rows")
        assert not (out / "lesions.csv").exists()  # nothing final before the end
    assert (out / "case_labels.nii.gz").read_text() == "labels"
    assert (out / "lesions.csv").read_text() == "rows"
    assert _leftovers(out) == []


@pytest.mark.parametrize("stop", [KeyboardInterrupt, ValueError])
def test_a_stopped_run_leaves_the_old_files_it_was_replacing(tmp_path, stop):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_mask.png").write_text("old a")
    (out / "lesions.csv").write_text("old rows")
    with pytest.raises(stop), NewOutputs([out], overwrite=True) as new:
        new.file(out / "a_mask.png").write_text("new a")
        new.file(out / "b_mask.png").write_text("new b")
        raise stop("stopped half way")
    assert (out / "a_mask.png").read_text() == "old a"
    assert (out / "lesions.csv").read_text() == "old rows"
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "lesions.csv"]


def test_a_stopped_run_into_a_new_folder_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(KeyboardInterrupt), NewOutputs([out]) as new:
        new.file(out / "a_mask.png").write_text("a")
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()


def test_another_run_writing_the_same_outputs_meanwhile_keeps_them_whole(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"a_mask.png was written by another run while this "
                                         r"one ran; nothing of this run was kept"):
        with NewOutputs([out]) as new:
            new.file(out / "a_mask.png").write_text("ours a")
            new.file(out / "b_mask.png").write_text("ours b")
            (out / "a_mask.png").write_text("theirs a")  # the other run finished first
    assert (out / "a_mask.png").read_text() == "theirs a"
    assert not (out / "b_mask.png").exists() and _leftovers(out) == []
