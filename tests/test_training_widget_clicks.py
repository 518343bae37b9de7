"""The Training widget driven by clicks and typing: Start, Stop, Resume, a folder in use,
remembered settings, the device list.

Runs are tiny (32-pixel input, batch 2, one torch thread, in the viewer's process) on two CT
phantom slices.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QMessageBox

from napari_recist_seg.plugin.model_registry import MODEL_REGISTRY

from ._gui import click, fill_training_form, pick, set_checked, type_number, type_text
from ._learning_data import quick
from .test_plugin_training_widget import _ct_layers, _widget

pytestmark = pytest.mark.usefixtures("empty_model_registry")


@pytest.fixture
def tiny():
    with quick():
        yield


def _run(qtbot, widget, button, stop_after_first_step=False):
    """Click ``button``; wait for the run it starts to end; its messages."""
    messages = []
    click(qtbot, button)
    worker = widget.worker
    assert worker is not None, widget.status.text()
    # The settings are locked while they cannot change the run.
    assert not widget.form.widget.native.isEnabled() and not widget.resume_button.isEnabled()
    assert not widget.folder_edit.isEnabled()

    def on_message(message):
        messages.append(message)
        if (stop_after_first_step and message[0] == "event"
                and message[1]["kind"] == "step" and widget.stop_button.isEnabled()):
            click(qtbot, widget.stop_button)

    worker.yielded.connect(on_message)
    with qtbot.waitSignal(worker.finished, timeout=90000):
        pass
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=5000)
    assert widget.form.widget.native.isEnabled() and widget.resume_button.isEnabled()
    return messages


def _event_kinds(messages):
    return [m[1]["kind"] if m[0] == "event" else m[0] for m in messages if m[0] != "plot"]


def test_start_stop_a_folder_in_use_and_resume_by_clicks(make_napari_viewer, qtbot, tmp_path,
                                                         tiny, monkeypatch, notifications):
    from napari_recist_seg.plugin.widgets import training_widget

    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    out = tmp_path / "models"
    fill_training_form(qtbot, widget, out, epochs=1, batch=2)

    # Start, then Stop at the first step: a resumable last/ and nothing else.
    first = _run(qtbot, widget, widget.start_button, stop_after_first_step=True)
    assert _event_kinds(first)[-2:] == ["stopped", "model"]
    last = out / "multitask" / "last"
    assert last.is_dir() and not (out / "multitask" / "best").exists()
    (entry,) = MODEL_REGISTRY.entries()
    assert entry.name == "multitask (stopped at epoch 1)"
    saved = {p.name: p.stat().st_mtime_ns for p in last.iterdir()}

    # Start again into the same folder: the user is asked; Cancel starts nothing.
    asked = []

    def answer(choice):
        def ask(parent, folder, runs, new_folder, can_resume, resume_does=""):
            asked.append((str(folder), runs, new_folder, can_resume))
            return choice
        return ask

    monkeypatch.setattr(training_widget, "ask_about_occupied_folder", answer("cancel"))
    click(qtbot, widget.start_button)
    assert widget.worker is None and widget.start_button.isEnabled()
    assert asked[-1][0] == str(out) and asked[-1][3] is True
    assert "multitask run stopped at epoch 1" in asked[-1][1]
    assert {p.name: p.stat().st_mtime_ns for p in last.iterdir()} == saved

    # "New subfolder": the run goes to models/run-2, shown in the form; the old run stays.
    monkeypatch.setattr(training_widget, "ask_about_occupied_folder", answer("new"))
    second = _run(qtbot, widget, widget.start_button)
    assert _event_kinds(second)[-2:] == ["finished", "model"]
    assert (out / "run-2" / "multitask" / "best").is_dir()
    assert widget.form.out_dir.line_edit.value == str(out / "run-2")
    assert {p.name: p.stat().st_mtime_ns for p in last.iterdir()} == saved

    # Resume continues the stopped run in models/ from its last/ checkpoint.
    type_text(qtbot, widget.form.out_dir.line_edit.native, str(out))
    third = _run(qtbot, widget, widget.resume_button)
    statuses = [m[1] for m in third if m[0] == "status"]
    assert any("resuming multitask" in s and str(last) in s for s in statuses)
    kinds = _event_kinds(third)
    assert kinds[-2:] == ["finished", "model"]
    start = next(m[1] for m in third if m[0] == "event" and m[1]["kind"] == "start")
    assert start["global_step"] >= 1  # it went on from the step where it stopped
    assert (out / "multitask" / "best").is_dir()
    # The resumed run replaces its stopped state in the list; the run-2 model came first.
    names = sorted(e.name for e in MODEL_REGISTRY.entries())
    assert names == ["multitask (best epoch 1 of 1)", "multitask (best epoch 1 of 1, models)"]

    # Nothing left to resume: Resume says so and starts nothing.
    click(qtbot, widget.resume_button)
    assert widget.worker is None
    assert notifications[-1][0] == "error" and "no stopped run" in notifications[-1][1]


def test_the_folder_in_use_question_is_answered_by_its_buttons(qtbot, tmp_path):
    from napari_recist_seg.plugin.widgets.training_widget import ask_about_occupied_folder

    def press(label_start):
        def find_and_click():
            box = QApplication.activeModalWidget()
            if not isinstance(box, QMessageBox):
                QTimer.singleShot(50, find_and_click)
                return
            (button,) = [b for b in box.buttons() if b.text().startswith(label_start)]
            button.click()
        QTimer.singleShot(50, find_and_click)

    new = tmp_path / "run-2"
    press("New subfolder")
    assert ask_about_occupied_folder(None, tmp_path, "- A1: run", new, True) == "new"
    press("Resume")
    assert ask_about_occupied_folder(None, tmp_path, "- A1: run", new, True) == "resume"
    press("Cancel")
    assert ask_about_occupied_folder(None, tmp_path, "- A1: run", new, True) == "cancel"

    def resume_is_disabled():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(50, resume_is_disabled)
            return
        (resume,) = [b for b in box.buttons() if b.text() == "Resume"]
        states.append(resume.isEnabled())
        [b for b in box.buttons() if b.text() == "Cancel"][0].click()

    states = []
    QTimer.singleShot(50, resume_is_disabled)
    assert ask_about_occupied_folder(None, tmp_path, "- A1: finished", new, False) == "cancel"
    assert states == [False]


def test_settings_are_remembered_when_the_dock_is_opened_again(
        make_napari_viewer, qtbot, tmp_path, remembered_settings_folder):
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    fill_training_form(qtbot, widget, tmp_path / "my runs", kinds=("a1", "coseg"), epochs=7,
                       batch=6, size=96)
    pick(widget.form.encoder.native, "resnet34")
    type_number(qtbot, widget.form.lr.native, "0.0005")
    type_number(qtbot, widget.form.k.native, 12)
    expected = widget.settings()
    assert expected["kinds"] == ("a1", "coseg") and expected["encoder"] == "resnet34"
    assert expected["epochs"] == 7 and expected["batch_size"] == 6
    assert expected["input_size"] == 96 and expected["k"] == 12
    assert expected["lr"] == pytest.approx(5e-4)
    stored = json.loads((remembered_settings_folder / "training.json").read_text())
    assert stored["epochs"] == 7 and stored["out_dir"] == str(tmp_path / "my runs")
    viewer.window.remove_dock_widget(widget)

    again = _widget(viewer)
    assert again is not widget
    assert again.settings() == expected
    assert not again.form.separate_process.value  # unticked by the user, stays unticked


def test_a_damaged_settings_file_gives_the_defaults(make_napari_viewer,
                                                    remembered_settings_folder):
    from napari_recist_seg.plugin.training_job import TrainingJob

    (remembered_settings_folder / "training.json").write_text("{ not json")
    viewer = make_napari_viewer()
    settings = _widget(viewer).settings()
    defaults = TrainingJob(kinds=("multitask",), out_dir="x")
    assert settings["epochs"] == defaults.epochs and settings["lr"] == defaults.lr
    assert settings["kinds"] == ("multitask",)


def test_the_device_list_is_looked_up_when_first_opened(make_napari_viewer, qtbot,
                                                        monkeypatch):
    from napari_recist_seg.plugin.widgets import training_form

    monkeypatch.setattr(training_form, "_devices", ["auto", "cpu"])
    monkeypatch.setattr(training_form, "_torch_is_loaded", lambda: False)  # as at napari's start
    monkeypatch.setattr(training_form, "_lookup_devices", lambda: ["auto", "cpu", "cuda:0"])
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    combo = widget.form.device.native
    assert [combo.itemText(i) for i in range(combo.count())] == ["auto", "cpu"]
    click(qtbot, combo)
    qtbot.waitUntil(lambda: combo.count() == 3, timeout=10000)
    combo.hidePopup()
    pick(combo, "cuda:0")
    assert widget.settings()["device"] == "cuda:0"


def test_training_data_source_radio_buttons(make_napari_viewer, qtbot, tmp_path,
                                            notifications):
    viewer = make_napari_viewer()
    _ct_layers(viewer, seeds=(0,))
    widget = _widget(viewer)
    set_checked(qtbot, widget.folder_radio, True)
    assert not widget.layers_radio.isChecked()
    fill_training_form(qtbot, widget, tmp_path / "models")
    type_text(qtbot, widget.folder_edit, str(tmp_path / "nowhere"))
    click(qtbot, widget.start_button)
    assert widget.worker is None and "is not a folder" in notifications[-1][1]
    set_checked(qtbot, widget.layers_radio, True)
    # Unticking the only image leaves nothing to train on.
    item = widget.pairs.item(0, 0)
    rect = widget.pairs.visualItemRect(item)
    from qtpy.QtCore import QPoint, Qt

    qtbot.mouseClick(widget.pairs.viewport(), Qt.MouseButton.LeftButton,
                     pos=QPoint(rect.left() + 10, rect.center().y()))
    assert item.checkState() == Qt.CheckState.Unchecked
    click(qtbot, widget.start_button)
    assert widget.worker is None and "tick at least one image" in notifications[-1][1]
    # Choosing "(none)" as the RECIST layer of a ticked image is named in the message.
    qtbot.mouseClick(widget.pairs.viewport(), Qt.MouseButton.LeftButton,
                     pos=QPoint(rect.left() + 10, rect.center().y()))
    pick(widget.pairs.cellWidget(0, 1), "(none)")
    click(qtbot, widget.start_button)
    assert widget.worker is None and "choose its RECIST layer" in notifications[-1][1]
    assert np.all(np.isfinite(viewer.layers["slice 0"].data))


def test_training_on_a_deeplesion_stack_opened_from_its_table(make_napari_viewer, qtbot,
                                                              tmp_path, tiny, deeplesion_folder,
                                                              notifications):
    """DL_info.csv opened with the plugin's reader: key slices as a stack, their RECIST in mm;
    the Training widget trains on them by clicks."""
    from napari_recist_seg.plugin.widgets.recist_widget import RecistWidget

    from ._gui import open_dock

    viewer = make_napari_viewer()
    viewer.open(str(deeplesion_folder / "DL_info.csv"), plugin="napari-recist-seg")
    annotate = open_dock(viewer, "RECIST annotation", RecistWidget)
    lesions = annotate.lesions
    assert len(lesions) == 3 and all(info.ok for info in lesions)
    # 0.7 mm pixels: the first lesion's long axis is 30 px = 21 mm.
    assert max(lesions[0].recist.long_mm, lesions[0].recist.short_mm) == pytest.approx(21.0)
    widget = _widget(viewer)
    assert len(widget.checked_pairs()) == 1
    fill_training_form(qtbot, widget, tmp_path / "models", kinds=("a1",), epochs=1, batch=2)
    messages = _run(qtbot, widget, widget.start_button)
    assert _event_kinds(messages)[-2:] == ["finished", "model"], notifications
    prepared = next(m[1] for m in messages if m[0] == "prepared")
    assert prepared["mode"] == "crops" and prepared["n_train"] + prepared["n_val"] == 3
    (entry,) = MODEL_REGISTRY.entries()
    assert entry.kind == "a1" and entry.name.startswith("A1 (best epoch 1 of 1")


def test_training_from_a_recist_table_chosen_with_the_file_chooser(
        make_napari_viewer, qtbot, tmp_path, tiny, monkeypatch, notifications):
    """The third data source: a DL_info.csv chosen with "...", trained on without any layer."""
    from napari_recist_seg.plugin.widgets import training_widget

    from ._recist_table_data import write_deeplesion

    root = tmp_path / "deeplesion"
    write_deeplesion(root)
    table = root / "DL_info.csv"
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    monkeypatch.setattr(training_widget.QFileDialog, "getOpenFileName",
                        lambda *a, **k: (str(table), ""))
    click(qtbot, widget.table_button)
    assert widget.table_radio.isChecked() and widget.table_edit.text() == str(table)
    fill_training_form(qtbot, widget, tmp_path / "models", kinds=("a1",), epochs=1, batch=2)
    messages = _run(qtbot, widget, widget.start_button)
    assert _event_kinds(messages)[-2:] == ["finished", "model"], notifications
    prepared = next(m[1] for m in messages if m[0] == "prepared")
    assert prepared["mode"] == "crops" and prepared["in_channels"] == 3  # slice + neighbours
    (entry,) = MODEL_REGISTRY.entries()
    assert entry.kind == "a1" and (tmp_path / "models" / "a1" / "best").is_dir()
    # A table that is not there is named, and nothing starts.
    type_text(qtbot, widget.table_edit, str(root / "missing.csv"))
    click(qtbot, widget.start_button)
    assert widget.worker is None and "missing.csv is not a file" in notifications[-1][1]
    # The status line tells of this refusal, not of the run before it.
    assert widget.status.text().startswith("Training not started:")
    assert "missing.csv is not a file" in widget.status.text()


@pytest.mark.parametrize("process", [True, False], ids=["separate process", "thread"])
def test_a_failed_run_is_reported_and_the_form_can_start_again(
        make_napari_viewer, qtbot, tmp_path, tiny, notifications, process):
    """A table the child process cannot read ends the run with its reason, in both modes
    (the child's failure once left the widget running for ever)."""
    import pandas as pd

    from ._recist_table_data import write_deeplesion

    root = tmp_path / "deeplesion"
    write_deeplesion(root)
    table = root / "DL_info.csv"
    pd.read_csv(table).drop(columns=["Spacing_mm_px_"]).to_csv(table, index=False)
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    set_checked(qtbot, widget.table_radio, True)
    type_text(qtbot, widget.table_edit, str(table))
    fill_training_form(qtbot, widget, tmp_path / "models", kinds=("a1",), epochs=1, batch=2,
                       process=process)
    _run(qtbot, widget, widget.start_button)
    assert "Spacing_mm_px_" in widget.status.text()
    assert widget.status.text().startswith("Training failed")
    assert notifications[-1][0] == "error" and "Spacing_mm_px_" in notifications[-1][1]
    assert not widget.stop_button.isEnabled() and widget.worker is None


def test_an_edge_aware_loss_weight_typed_into_the_form_reaches_the_trainer(
        make_napari_viewer, qtbot, tmp_path, tiny, notifications):
    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    field = widget.form.crf_weight.native
    assert field.text() == "auto" and widget.form.values()["crf_weight"] is None
    out = tmp_path / "models"
    fill_training_form(qtbot, widget, out, kinds=("a1",), epochs=1, batch=2)
    type_number(qtbot, field, 30)
    messages = _run(qtbot, widget, widget.start_button)
    assert _event_kinds(messages)[-2:] == ["finished", "model"], notifications
    losses = [m[1]["losses"] for m in messages if m[0] == "event" and m[1]["kind"] == "step"]
    assert losses and all("crf" in terms for terms in losses)
    saved = json.loads((out / "a1" / "best" / "config.json").read_text(encoding="utf-8"))
    assert saved["train_config"]["crf_weight"] == 30.0


def test_encoder_best_epoch_and_augmentation_picked_in_the_lists_reach_the_trainer(
        make_napari_viewer, qtbot, tmp_path, tiny, notifications):
    from napari_recist_seg.learning.inference import load_model
    from napari_recist_seg.learning.pretrained import pretrained_encoder_state

    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    combo = widget.form.encoder.native
    entries = [combo.itemText(i) for i in range(combo.count())]
    assert "resnet18" in entries
    (entry,) = [e for e in entries if "efficientnet-lite0-imagenet" in e]
    out = tmp_path / "models"
    fill_training_form(qtbot, widget, out, kinds=("a1",), epochs=1, batch=2)
    pick(combo, entry)
    assert widget.form.select.native.currentText() == "validation loss"
    pick(widget.form.select.native, "validation dice")
    assert widget.form.augment.native.currentText() == "auto (flips for prompted models)"
    pick(widget.form.augment.native, "flips, any rotation, scale, shift")
    settings = widget.settings()
    assert settings["encoder"] == "tu-tf_efficientnet_lite0"
    assert settings["encoder_weights"] == "efficientnet-lite0-imagenet"
    assert settings["select"] == "dice" and settings["augment"] == "affine"
    messages = _run(qtbot, widget, widget.start_button)
    assert _event_kinds(messages)[-2:] == ["finished", "model"], notifications
    saved = json.loads((out / "a1" / "best" / "config.json").read_text(encoding="utf-8"))
    assert saved["train_config"]["encoder_weights"] == "efficientnet-lite0-imagenet"
    assert saved["train_config"]["select"] == "dice"
    assert saved["train_config"]["augment"] == "affine"
    model = load_model(out / "a1" / "best")
    assert model.config["encoder"] == "tu-tf_efficientnet_lite0"
    # One epoch of a few steps moves the weights a little from ImageNet's, not far.
    key = "model.blocks.3.0.conv_pw.weight"
    start = pretrained_encoder_state("efficientnet-lite0-imagenet")[key]
    trained = model.encoder.state_dict()[key]
    assert float(np.corrcoef(start.flatten(), trained.flatten())[0, 1]) > 0.9


def test_self_training_rounds_typed_into_the_form_train_each_round(
        make_napari_viewer, qtbot, tmp_path, tiny, monkeypatch, notifications):
    from napari_recist_seg.plugin.widgets import training_widget

    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    out = tmp_path / "models"
    fill_training_form(qtbot, widget, out, epochs=1, batch=2)
    type_number(qtbot, widget.form.self_training_rounds.native, 1)
    messages = _run(qtbot, widget, widget.start_button)
    finished = [m[1]["message"] for m in messages
                if m[0] == "event" and m[1]["kind"] == "finished"]
    assert [f.split(" all")[0] for f in finished] == ["first training",
                                                      "self-training round 1 of 1"]
    assert (out / "multitask" / "round-0" / "best").is_dir()
    model = next(m[1] for m in messages if m[0] == "model")
    assert model["path"] == str(out / "multitask" / "best")
    saved = json.loads((out / "multitask" / "best" / "config.json").read_text())
    assert saved["self_training"] == {"round": 1, "rounds": 1,
                                      "first_target": "quarter_ellipse"}

    # Resuming cannot continue a run of rounds: the question offers no Resume, and the
    # Resume button says why.
    asked = []

    def ask(parent, folder, runs, new_folder, can_resume, resume_does=""):
        asked.append(can_resume)
        return "cancel"

    monkeypatch.setattr(training_widget, "ask_about_occupied_folder", ask)
    click(qtbot, widget.start_button)
    assert asked == [False] and widget.worker is None
    click(qtbot, widget.resume_button)
    assert widget.worker is None
    assert notifications[-1][0] == "error"


def test_a_teacher_folder_typed_into_the_form_draws_the_targets(
        make_napari_viewer, qtbot, tmp_path, tiny, notifications):
    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    assert widget.form.values()["teacher"] is None
    # First a prompted model, then an A1 model taught by it.
    fill_training_form(qtbot, widget, tmp_path / "teacher", kinds=("prompted",), epochs=1,
                       batch=2)
    assert _event_kinds(_run(qtbot, widget, widget.start_button))[-2:] == ["finished",
                                                                          "model"]
    teacher = tmp_path / "teacher" / "prompted"
    out = tmp_path / "student"
    fill_training_form(qtbot, widget, out, kinds=("a1",), epochs=1, batch=2)
    type_text(qtbot, widget.form.teacher.line_edit.native, str(teacher))
    messages = _run(qtbot, widget, widget.start_button)
    assert _event_kinds(messages)[-2:] == ["finished", "model"], notifications
    statuses = [m[1] for m in messages if m[0] == "status"]
    assert any(s.startswith("the teacher draws the targets") for s in statuses), statuses
    saved = json.loads((out / "a1" / "best" / "config.json").read_text(encoding="utf-8"))
    assert saved["teacher"] == str(teacher)
    # A folder that is not there is named, and nothing starts.
    type_text(qtbot, widget.form.teacher.line_edit.native, str(tmp_path / "nowhere"))
    fill_training_form(qtbot, widget, tmp_path / "other", kinds=("a1",), epochs=1, batch=2)
    click(qtbot, widget.start_button)
    assert widget.worker is None and "nowhere" in notifications[-1][1]


def test_stop_while_the_data_is_read_says_nothing_was_trained(make_napari_viewer, qtbot,
                                                               tmp_path, tiny, notifications):
    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    fill_training_form(qtbot, widget, tmp_path / "models", kinds=("a1",), epochs=1, batch=2,
                       process=False)
    messages = []
    click(qtbot, widget.start_button)
    worker = widget.worker

    def stop_while_reading(message):
        messages.append(message)
        if message[0] == "status" and widget.stop_button.isEnabled():
            click(qtbot, widget.stop_button)

    worker.yielded.connect(stop_while_reading)
    with qtbot.waitSignal(worker.finished, timeout=90000):
        pass
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=5000)
    assert not [m for m in messages if m[0] == "event"]
    assert widget.status.text() == ("Stopped before the first training step; nothing was "
                                    "written.")
    # The output folder this run made is taken away again; nothing was put in it.
    assert not (tmp_path / "models").exists()


def test_only_empty_folders_of_a_run_stopped_early_are_taken_away(tmp_path):
    from napari_recist_seg.data._atomic import remove_empty_folders

    (tmp_path / "models" / "a1" / "last").mkdir(parents=True)
    (tmp_path / "models" / "prompted").mkdir()
    (tmp_path / "models" / "prompted" / "keep.txt").write_text("mine")
    remove_empty_folders(tmp_path / "models")
    assert not (tmp_path / "models" / "a1").exists()
    assert (tmp_path / "models" / "prompted" / "keep.txt").read_text() == "mine"
    remove_empty_folders(None)  # no folder was made: nothing to do


def test_an_untick_survives_removing_another_image(make_napari_viewer, qtbot):
    from qtpy.QtCore import QPoint, Qt

    viewer = make_napari_viewer()
    _ct_layers(viewer, seeds=(0, 1))
    widget = _widget(viewer)
    assert [(i.name, r.name) for i, r in widget.checked_pairs()] == [
        ("slice 0", "slice 0 RECIST"), ("slice 1", "slice 1 RECIST")]
    # Untick the second image by a click on its box, then remove the first image.
    rect = widget.pairs.visualItemRect(widget.pairs.item(1, 0))
    qtbot.mouseClick(widget.pairs.viewport(), Qt.MouseButton.LeftButton,
                     pos=QPoint(rect.left() + 10, rect.center().y()))
    assert widget.pairs.item(1, 0).checkState() == Qt.CheckState.Unchecked
    viewer.layers.remove("slice 0")
    # The table lists the image left, still unticked, with its RECIST layer.
    assert widget.pairs.rowCount() == 1
    assert widget.pairs.item(0, 0).text() == "slice 1"
    assert widget.pairs.item(0, 0).checkState() == Qt.CheckState.Unchecked
    assert widget.pairs.cellWidget(0, 1).currentText() == "slice 1 RECIST"
    assert widget.checked_pairs() == [] and not widget.pairs.signalsBlocked()
    # Another change of the layer list keeps the user's untick.
    viewer.add_points(np.zeros((1, 2)), name="marks")
    assert widget.pairs.item(0, 0).checkState() == Qt.CheckState.Unchecked


def test_the_output_folder_button_fits_and_chooses_a_folder(make_napari_viewer, qtbot,
                                                            tmp_path, monkeypatch):
    from pathlib import Path

    from magicgui.backends._qtpy import widgets as qt_widgets
    from magicgui.types import FileDialogMode

    viewer = make_napari_viewer()
    widget = _widget(viewer)
    button = widget.form.out_dir.choose_btn.native
    assert button.text() == "..." and button.maximumWidth() <= 32
    # magicgui's folder dialog, answered as a user picking tmp_path/runs.
    monkeypatch.setitem(qt_widgets.QFILE_DIALOG_MODES, FileDialogMode.EXISTING_DIRECTORY,
                        lambda *args, **kwargs: str(tmp_path / "runs"))
    click(qtbot, button)
    assert Path(widget.form.out_dir.value) == tmp_path / "runs"


_CLOSE_MID_RUN = '''
import sys

import napari

if __name__ == "__main__":
    data, out = sys.argv[1], sys.argv[2]
    viewer = napari.Viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-recist-seg", "Training")
    widget.folder_radio.setChecked(True)
    widget.folder_edit.setText(data)
    form = widget.form
    for kind in ("multitask", "a1", "coseg", "prompted"):
        form[kind].value = kind == "a1"
    form.input_size.value, form.epochs.value, form.batch_size.value = 32, 50, 2
    form.separate_process.value = sys.argv[3] == "process"
    form.out_dir.value = out
    widget.start_button.click()

    def on_message(message):
        if message[0] == "event" and message[1]["kind"] == "step" and message[1]["step"] == 2:
            print("closing at step", message[1]["global_step"], flush=True)
            viewer.window._qt_window.close()  # the title bar's close button

    widget.worker.yielded.connect(on_message)
    napari.run()
'''


@pytest.mark.parametrize("where", ["thread", "process"])
def test_closing_napari_mid_run_keeps_the_run_up_to_its_last_step(tmp_path, where):
    # A user closes napari's window while a model trains: the run must stop after its step
    # and keep it resumable, as Stop does, and Python must exit without a traceback.
    import os
    import subprocess
    import sys

    from ._folders import make_isic_folder

    data = make_isic_folder(tmp_path / "data", n=8, size=32)
    script = tmp_path / "close_mid_run.py"
    script.write_text(_CLOSE_MID_RUN)
    out = tmp_path / "runs"
    from napari_recist_seg.plugin.remembered_settings import SETTINGS_DIR_VARIABLE

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "NAPARI_CONFIG": str(tmp_path / "napari.yaml"),
           SETTINGS_DIR_VARIABLE: str(tmp_path / "settings")}
    done = subprocess.run([sys.executable, str(script), str(data), str(out), where],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    closed_at = int(done.stdout.split("closing at step")[1].split()[0])
    state = json.loads((out / "a1" / "last" / "training_state.json").read_text())["state"]
    assert state["global_step"] >= closed_at  # not the end of an earlier epoch
    assert not (out / "a1" / ".lock").exists()
