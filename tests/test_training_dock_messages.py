"""What the Training dock tells its user: data left out while it was read, the models a Stop
left untrained, and what Resume would do with an output folder in use.

Runs are tiny (32-pixel input, batch 2, one epoch, one torch thread).
"""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QMessageBox

from napari_recist_seg.plugin.model_registry import MODEL_REGISTRY

from ._folders import make_isic_folder
from ._gui import click, fill_training_form, set_checked, type_text
from ._learning_data import quick
from .test_plugin_training_widget import _ct_layers, _widget

pytestmark = pytest.mark.usefixtures("empty_model_registry")

THREE_KINDS = ("multitask", "a1", "coseg")


@pytest.fixture
def tiny():
    with quick():
        yield


def _run(qtbot, widget, button, on_message=None):
    """Click ``button``; wait for the run it starts to end; its messages.

    ``on_message(message)`` is called with each message after the widget has shown it.
    """
    messages = []
    click(qtbot, button)
    worker = widget.worker
    assert worker is not None, widget.status.text()

    def record(message):
        messages.append(message)
        if on_message is not None:
            on_message(message)

    worker.yielded.connect(record)
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=5000)
    return messages


def _events(messages, kind=None):
    return [m[1] for m in messages if m[0] == "event" and m[1]["kind"] != "step"
            and (kind is None or m[1]["model_kind"] == kind)]


def _answer_the_question(answer: str, seen: list) -> None:
    """When the "Output folder in use" question opens, note its text and which buttons are
    enabled in ``seen``, then click ``answer`` (Cancel when that button is greyed out)."""

    def find_and_click():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(50, find_and_click)
            return
        buttons = {b.text(): b for b in box.buttons()}
        seen.append((box.text(), {text: b.isEnabled() for text, b in buttons.items()}))
        chosen = buttons[answer] if buttons[answer].isEnabled() else buttons["Cancel"]
        chosen.click()

    QTimer.singleShot(50, find_and_click)


def _stop_during_a1(qtbot, widget, out):
    """Train multitask, A1 and co-segmentation into ``out`` and press Stop at A1's first
    step: multitask finished, A1 stopped, co-segmentation not started; the run's messages."""
    fill_training_form(qtbot, widget, out, kinds=THREE_KINDS, epochs=1, batch=2)

    def stop_in_a1(message):
        if (message[0] == "event" and message[1]["kind"] == "step"
                and message[1]["model_kind"] == "a1" and widget.stop_button.isEnabled()):
            click(qtbot, widget.stop_button)

    messages = _run(qtbot, widget, widget.start_button, stop_in_a1)
    assert [e["kind"] for e in _events(messages, "a1")][-1] == "stopped"
    assert (out / "multitask" / "best").is_dir() and (out / "a1" / "last").is_dir()
    assert not (out / "coseg").exists()
    return messages


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("process", [False, True], ids=["thread", "separate process"])
def test_masks_left_out_of_an_image_mask_folder_are_told(make_napari_viewer, qtbot, tmp_path,
                                                         tiny, notifications, process):
    # Two of the folder's eight masks are empty: the command line warns that they were
    # skipped, and so must the dock (the warning was raised where the dock never showed it).
    data = make_isic_folder(tmp_path / "data", n=8, size=32)
    for name in ("ISIC_0000000", "ISIC_0000003"):
        iio.imwrite(data / "masks" / f"{name}_segmentation.png", np.zeros((32, 32), np.uint8))
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    set_checked(qtbot, widget.folder_radio, True)
    type_text(qtbot, widget.folder_edit, str(data))
    fill_training_form(qtbot, widget, tmp_path / "models", kinds=("a1",), epochs=1, batch=2,
                       process=process)
    lines = {}

    def note_status(message):
        lines.setdefault(message[0], widget.status.text())

    messages = _run(qtbot, widget, widget.start_button, note_status)
    assert [e["kind"] for e in _events(messages)][-1] == "finished"
    warned = [text for level, text in notifications if level == "warning"]
    assert len(warned) == 1, notifications
    assert warned[0].startswith("Training: 2 masks in ")
    assert "empty or too small to measure and were skipped: ISIC_0000000, ISIC_0000003" \
        in warned[0]
    # The status line says it too, and still when the prepared data is described.
    assert lines["warning"] == "Warning: " + warned[0].removeprefix("Training: ")
    assert lines["prepared"].startswith("5 training and 1 validation lesions")
    assert "2 masks in" in lines["prepared"] and "ISIC_0000003" in lines["prepared"]

    # A second run on the same folder tells it again (a warning is normally printed once).
    type_text(qtbot, widget.form.out_dir.line_edit.native, str(tmp_path / "again"))

    def stop_when_warned(message):
        if message[0] == "warning" and widget.stop_button.isEnabled():
            click(qtbot, widget.stop_button)

    _run(qtbot, widget, widget.start_button, stop_when_warned)
    assert len([n for n in notifications if n[0] == "warning"]) == 2, notifications
    assert notifications[-1] == ("warning", warned[0])


def test_a_stop_names_the_models_not_started_and_resume_trains_them(
        make_napari_viewer, qtbot, tmp_path, tiny, notifications):
    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    out = tmp_path / "models"
    _stop_during_a1(qtbot, widget, out)
    stopped = [text for level, text in notifications if "Training A1 stopped" in text]
    assert len(stopped) == 1, notifications
    assert stopped[0].endswith("Not started: co-segmentation; Resume, with the same models "
                               "ticked, continues A1 and then trains it")
    assert widget.status.text().endswith("\nNot started: co-segmentation; Resume, with the "
                                         "same models ticked, continues A1 and then trains it.")
    finished = _mtimes(out / "multitask")

    # What the note says: Resume continues A1 from its step, then trains co-segmentation;
    # the finished multitask run is left as it is.
    messages = _run(qtbot, widget, widget.resume_button)
    assert notifications[-1][0] != "error", notifications
    a1, coseg = _events(messages, "a1"), _events(messages, "coseg")
    assert [e["kind"] for e in a1] == ["start", "epoch", "finished"]
    assert a1[0]["global_step"] >= 1  # from the step where it stopped
    assert [e["kind"] for e in coseg] == ["start", "epoch", "finished"]
    assert coseg[0]["global_step"] == 0
    assert (out / "a1" / "best").is_dir() and (out / "coseg" / "best").is_dir()
    assert _mtimes(out / "multitask") == finished
    assert sorted(e.kind for e in MODEL_REGISTRY.entries()) == sorted(THREE_KINDS)


def test_the_folder_in_use_question_offers_resume_beside_a_finished_run(
        make_napari_viewer, qtbot, tmp_path, tiny, notifications):
    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    out = tmp_path / "models"
    _stop_during_a1(qtbot, widget, out)
    finished = _mtimes(out / "multitask")

    # Start again into the same folder: the question offers Resume and says what it does.
    seen = []
    _answer_the_question("Resume", seen)
    messages = _run(qtbot, widget, widget.start_button)
    ((text, enabled),) = seen
    assert enabled["Resume"], text
    assert ("Resume would, in this order:\n- leave multitask (finished) as it is\n"
            "- continue A1 from epoch 1 (stopped)\n- train co-segmentation (not started)") in text
    assert "- multitask: multitask run finished at epoch 1" in text
    assert "- A1: a1 run stopped at epoch 1 (resumable)" in text
    assert [e["kind"] for e in _events(messages, "a1")][-1] == "finished"
    assert _events(messages, "a1")[0]["global_step"] >= 1
    assert [e["kind"] for e in _events(messages, "coseg")][-1] == "finished"
    assert (out / "coseg" / "best").is_dir() and _mtimes(out / "multitask") == finished
    assert not (out / "run-2").exists()

    # With every run finished there is nothing to resume: greyed out, and the question says
    # why.
    seen.clear()
    _answer_the_question("Resume", seen)
    click(qtbot, widget.start_button)
    ((text, enabled),) = seen
    assert not enabled["Resume"]
    assert "Resume is not offered: " in text and "holds no stopped run" in text
    assert widget.worker is None and widget.status.text() == "Training not started."


def test_what_resume_would_do_with_each_kind_of_run(tmp_path):
    from napari_recist_seg.learning.run_folders import RunInfo
    from napari_recist_seg.plugin.training_job import TrainingJob
    from napari_recist_seg.plugin.widgets.training_widget import _resume_plan

    def run(kind, *, last=True, epoch=1, finished=False):
        return RunInfo(folder=tmp_path / kind, kind=kind, has_last=last, has_best=True,
                       epoch=epoch, finished=finished)

    job = TrainingJob(kinds=("multitask", "a1", "coseg", "prompted"), out_dir=str(tmp_path),
                      epochs=3, folder=str(tmp_path))
    plan = _resume_plan(job, {"multitask": run("multitask", epoch=3, finished=True),
                              "a1": run("a1", epoch=2),
                              "coseg": run("coseg", epoch=1, finished=True)})
    assert plan.splitlines() == [
        "Resume would, in this order:",
        "- leave multitask (finished) as it is",
        "- continue A1 from epoch 2 (stopped)",
        "- train co-segmentation (finished at epoch 1) on to epoch 3, as Epochs asks",
        "- train prompted (not started)",
    ]
    # A run with only best/ can be neither continued nor trained afresh over.
    with pytest.raises(ValueError, match="the prompted run has no last/ checkpoint"):
        _resume_plan(job, {"a1": run("a1"), "prompted": run("prompted", last=False)})
    with pytest.raises(ValueError, match="holds no stopped run of multitask, A1, "
                                         "co-segmentation and prompted to resume"):
        _resume_plan(job, {"a1": run("a1", finished=True)})
