"""The training widget with a real viewer: tiny runs on generated data, stop, errors, loading.

Runs are kept tiny for a shared two-core CPU: a 32-pixel input, ResNet-18, batch 4, one epoch,
one torch thread, on two CT phantom slices (about ten lesions) or ten small dermoscopy images.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_recist_seg.plugin.model_registry import MODEL_REGISTRY
from napari_recist_seg.plugin.training_job import TrainingJob, run_training
from napari_recist_seg.plugin.training_process import _child_main, run_training_in_process

from ._folders import make_isic_folder
from ._gui import click, fill_training_form
from ._learning_data import quick

PLUGIN = "napari-recist-seg"


pytestmark = pytest.mark.usefixtures("empty_model_registry")


@pytest.fixture
def tiny():
    """One torch thread, checkpoints not forced to disk (see ``_learning_data.quick``)."""
    with quick():
        yield


def _widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    return widget


def _ct_layers(viewer, seeds=(0, 1)):
    """CT phantom slices with their RECIST layers, as the sample data makes them."""
    from napari.layers import Layer

    from napari_recist_seg.data.recist_files import RecistTable
    from napari_recist_seg.data.samples import ct_phantom_slice
    from napari_recist_seg.plugin.recist_layers import table_layer_tuple

    for seed in seeds:
        s = ct_phantom_slice(seed)
        viewer.add_image(s["image"], name=f"slice {seed}", scale=s["spacing"])
        viewer.add_layer(Layer.create(*table_layer_tuple(
            RecistTable(recists=list(s["recists"])), name=f"slice {seed} RECIST",
            scale=s["spacing"])))


def _start(qtbot, widget):
    """Click Start; the worker it started (None when it did not start)."""
    click(qtbot, widget.start_button)
    return widget.worker


def _spinners(viewer):
    from qtpy.QtWidgets import QLabel

    return [label.movie() for label in viewer.window._qt_window.findChildren(QLabel)
            if label.movie() is not None]


def _snapshot(viewer):
    return {layer.name: [np.array(d) for d in layer.data] if isinstance(layer.data, list)
            else np.array(layer.data) for layer in viewer.layers}


def _same(before, after):
    assert before.keys() == after.keys()
    for name, data in before.items():
        if isinstance(data, list):
            assert len(data) == len(after[name])
            for a, b in zip(data, after[name]):
                np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_equal(data, after[name])


def test_training_runs_reports_progress_and_stops_with_a_loadable_checkpoint(
        make_napari_viewer, qtbot, tmp_path, tiny, notifications, monkeypatch):
    from napari_recist_seg.learning.inference import load_model
    from napari_recist_seg.plugin.widgets import training_widget

    def stamped(job, stop):
        # When the trainer made each message, to count the steps done after Stop was pressed.
        for kind, payload in run_training(job, stop):
            if kind == "event":
                payload["made"] = time.perf_counter()
            yield kind, payload

    monkeypatch.setattr(training_widget, "run_training", stamped)
    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    # Each image found its RECIST layer and is ticked.
    pairs = widget.checked_pairs()
    assert [(i.name, r.name) for i, r in pairs] == [("slice 0", "slice 0 RECIST"),
                                                    ("slice 1", "slice 1 RECIST")]
    before = _snapshot(viewer)
    # Batch 2 and three epochs: many steps, so that Stop comes well before the end.
    fill_training_form(qtbot, widget, tmp_path / "models", epochs=3, batch=2)
    events, advanced, pressed = [], [], []

    def on_message(message):
        kind, payload = message
        events.append(payload if kind == "event" else {"kind": kind})
        if kind == "event" and payload["kind"] == "step" and not pressed:
            advanced.append(widget._state.bars["multitask"].n)
            pressed.append(time.perf_counter())
            widget.stop_button.click()

    spinners = _spinners(viewer)
    assert spinners and all(movie.speed() == 100 for movie in spinners)
    worker = _start(qtbot, widget)
    assert worker is not None and not widget.start_button.isEnabled()
    # napari's busy spinner repaints the window at each frame: slowed while training.
    assert all(movie.speed() == training_widget.SPINNER_SPEED_WHILE_TRAINING
               for movie in spinners)
    worker.yielded.connect(on_message)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    seen = [e["kind"] for e in events]
    assert seen[:3] == ["status", "prepared", "start"]
    assert seen[-2:] == ["stopped", "model"]
    # Stop ends the run within one step: at most the step in progress is finished.
    assert sum(e["kind"] == "step" and e["made"] > pressed[0] for e in events) <= 1
    stopped = events[-2]
    assert stopped["global_step"] < stopped["epochs"] * stopped["steps_per_epoch"]
    assert advanced and advanced[0] >= 1  # the napari progress bar moved with the steps
    curves = widget.curves()["multitask"]
    assert curves["step_x"] and np.all(np.isfinite(curves["step_seg"]))
    assert np.all(np.isfinite(curves["step_cls"]))  # the group loss of the multitask model
    # The plot is drawn in a worker thread and shown as a picture.
    qtbot.waitUntil(lambda: len(widget.plot.lines("multitask").get("step_seg", ([], []))[0])
                    == len(curves["step_x"]) and not widget.plot._busy, timeout=20000)
    assert widget.plot.rendered >= 1 and not widget.plot.pixmap().isNull()
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=5000)
    assert not widget._state.bars  # progress bars closed
    assert all(movie.speed() == 100 for movie in spinners)

    info = [text for level, text in notifications if level == "info"]
    last = tmp_path / "models" / "multitask" / "last"
    assert any("stopped" in text and str(last) in text for text in info)
    (entry,) = MODEL_REGISTRY.entries()
    assert entry.name == "multitask (stopped at epoch 1)" and entry.path == str(last.resolve())
    model = load_model(entry.path)
    assert model.kind == "multitask" and model.preprocessing["mode"] == "crops"
    assert model.config["in_channels"] == 1  # CT crops: one channel
    _same(before, _snapshot(viewer))


def test_training_in_a_child_process_from_an_image_mask_folder(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_recist_seg.learning.inference import load_model
    from napari_recist_seg.plugin.widgets import training_widget

    def not_niced(job, stop):
        # As the in-process tests: one torch thread; and no lower priority on a shared machine.
        job.niceness, job.torch_threads = 0, 1
        yield from run_training_in_process(job, stop)

    monkeypatch.setattr(training_widget, "run_training_in_process", not_niced)
    folder = make_isic_folder(tmp_path / "isic", n=10, size=48)
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    monkeypatch.setattr(training_widget.QFileDialog, "getExistingDirectory",
                        lambda *a, **k: str(folder))
    click(qtbot, widget.folder_button)  # "..." beside the folder field: a chooser
    assert widget.folder_radio.isChecked() and widget.folder_edit.text() == str(folder)
    fill_training_form(qtbot, widget, tmp_path / "models", kinds=("a1",), process=True)
    assert widget.form.separate_process.value
    messages = []
    worker = _start(qtbot, widget)
    worker.yielded.connect(messages.append)
    with qtbot.waitSignal(worker.finished, timeout=80000):
        pass
    kinds = [m[1]["kind"] if m[0] == "event" else m[0] for m in messages if m[0] != "plot"]
    assert kinds[0] == "status" and "prepared" in kinds
    assert kinds[-3:] == ["epoch", "finished", "model"]
    assert [m[1] for m in messages if m[0] == "prepared"][0]["mode"] == "whole_image"
    curves = widget.curves()["a1"]
    assert curves["epoch"] == [1] and 0.0 <= curves["dice"][0] <= 1.0
    # The training process drew the curves and sent the picture, at the plot's size.
    pictures = [m[1] for m in messages if m[0] == "plot"]
    assert pictures and pictures[-1].shape == (*widget.plot.picture_size()[::-1], 4)
    assert widget.plot.rendered >= len(pictures) and not widget.plot.pixmap().isNull()
    (entry,) = MODEL_REGISTRY.entries()
    assert entry.path.endswith("a1/best") and entry.name == "A1 (best epoch 1 of 1)"
    assert load_model(entry.path).kind == "a1"
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=5000)


def test_an_error_in_the_worker_is_a_notification(make_napari_viewer, qtbot, tmp_path, tiny,
                                                  notifications):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    fill_training_form(qtbot, widget, blocker / "models", kinds=("a1",))
    assert _start(qtbot, widget) is not None
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=60000)
    errors = [text for level, text in notifications if level == "error"]
    assert len(errors) == 1 and "not writable" in errors[0] and str(blocker) in errors[0]
    assert "Traceback" not in errors[0]
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=5000)
    assert not MODEL_REGISTRY.entries()


def test_the_child_process_reports_errors_as_messages(tmp_path):
    """What the training process sends when it fails: a message with the reason."""
    job = TrainingJob(kinds=("a1",), out_dir=str(tmp_path), images=[np.zeros((8, 8))] * 2,
                      recists=[object()] * 3, niceness=0)
    messages = queue.Queue()
    _child_main(job, messages, threading.Event())
    kind, text = messages.get_nowait()
    assert kind == "status"
    kind, text = messages.get_nowait()
    assert kind == "error" and "2 images but 3 RECIST" in text


def test_closing_the_dock_stops_training(make_napari_viewer, qtbot, tmp_path, tiny):
    viewer = make_napari_viewer()
    _ct_layers(viewer)
    widget = _widget(viewer)
    fill_training_form(qtbot, widget, tmp_path / "models", kinds=("a1", "coseg"), epochs=3, batch=2)
    seen = []
    worker = _start(qtbot, widget)
    worker.yielded.connect(lambda m: seen.append(m[1]["kind"] if m[0] == "event" else m[0]))
    with qtbot.waitSignal(worker.finished, timeout=60000):
        viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    # The run was asked to stop at once: no model was trained, nothing was written.
    assert "start" not in seen and "model" not in seen
    assert not (tmp_path / "models").exists()
    assert not MODEL_REGISTRY.entries()


def test_bad_inputs_notify_and_change_nothing(make_napari_viewer, tmp_path, notifications,
                                              qtbot, monkeypatch):
    from napari_recist_seg.plugin.widgets import training_widget

    viewer = make_napari_viewer()
    widget = _widget(viewer)
    fill_training_form(qtbot, widget, tmp_path / "models")
    assert _start(qtbot, widget) is None
    assert "no image layer" in notifications[-1][1]

    image = viewer.add_image(np.zeros((64, 64), np.float32), name="ct")
    recist = viewer.add_shapes([np.array([[10.0, 10.0], [10.0, 40.0]])], shape_type="line",
                               name="ct RECIST",
                               features={"lesion_id": [0], "axis": ["long"]})
    widget.set_pair(image, recist)
    before = _snapshot(viewer)
    assert _start(qtbot, widget) is None
    assert notifications[-1][0] == "error"
    assert "no complete lesion" in notifications[-1][1] and "ct RECIST" in notifications[-1][1]
    assert widget.start_button.isEnabled() and not widget.is_running()
    _same(before, _snapshot(viewer))

    # A folder that is no checkpoint: a notification naming it, and no model is added.
    bad = tmp_path / "not a checkpoint"
    bad.mkdir()
    (bad / "config.json").write_text("{ not json")
    chosen = [str(bad)]
    monkeypatch.setattr(training_widget.QFileDialog, "getExistingDirectory",
                        lambda *a, **k: chosen[0])
    click(qtbot, widget.load_button)
    qtbot.waitUntil(lambda: widget.load_button.isEnabled(), timeout=30000)
    assert notifications[-1][0] == "error" and str(bad) in notifications[-1][1]
    assert not MODEL_REGISTRY.entries()
    chosen[0] = str(tmp_path / "missing")
    click(qtbot, widget.load_button)
    qtbot.waitUntil(lambda: widget.load_button.isEnabled(), timeout=30000)
    assert "does not exist" in notifications[-1][1]
    assert not MODEL_REGISTRY.entries()


def test_run_training_needs_enough_lesions(tmp_path):
    job = TrainingJob(kinds=("a1",), out_dir=str(tmp_path), images=[], recists=[])
    with pytest.raises(ValueError, match="at least 3"):
        next(run_training(job))


_AFTER_DRAWING = """
import sys
import numpy as np
import napari_recist_seg.plugin.widgets.training_widget
import napari_recist_seg.plugin.widgets.compare_widget
import napari_recist_seg.plugin.training_job as tw
print("torch imported:", "torch" in sys.modules)
import napari
viewer = napari.Viewer(show=True)
viewer.add_image(np.zeros((16, 16)))
viewer.screenshot(canvas_only=True)  # the OpenGL driver is loaded and has drawn
tw.prepare_torch_import()  # loads triton (torchvision imports it) when it is installed
viewer.add_image(np.ones((16, 16)))
viewer.screenshot(canvas_only=True)
viewer.close()
print("ok")
"""


def test_no_torch_at_import_and_no_crash_when_it_comes_after_drawing():
    """The widgets' modules leave torch alone (napari starts fast), and loading torch's
    triton after the viewer has drawn with Mesa's LLVM-based OpenGL does not crash it."""
    out = subprocess.run([sys.executable, "-c", _AFTER_DRAWING], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "torch imported: False" and lines[-1] == "ok"


def test_the_curve_plot_rests_once_drawn(make_napari_viewer, qtbot):
    # A picture that resized its label made it redraw for ever, using a core of the CPU.
    nan = float("nan")
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    plot = widget.plot
    plot.set_curves({"a1": {"step_x": [1, 2, 3], "step_seg": [0.9, 0.6, 0.5],
                            "step_cls": [nan] * 3, "epoch": [1], "seg": [0.55], "cls": [nan],
                            "dice": [0.7]}})
    plot.refresh()
    qtbot.waitUntil(lambda: plot.rendered >= 1 and not plot._busy, timeout=10000)
    qtbot.wait(1500)  # resize events settle
    settled = plot.rendered
    qtbot.wait(2000)
    assert plot.rendered == settled
    # A real resize draws once more, at the new size.
    plot.resize(plot.width() + 60, plot.height() + 40)
    qtbot.waitUntil(lambda: plot.rendered > settled, timeout=10000)
    qtbot.waitUntil(lambda: not plot._busy and plot._drawn_size == plot.picture_size(),
                    timeout=10000)



_PARENT = """
import multiprocessing, sys, time
from napari_recist_seg.plugin.training_job import TrainingJob
from napari_recist_seg.plugin.training_process import run_training_in_process

# With curves drawn in the child (as the widget asks), its messages soon fill the pipe.
plot = (640, 480) if sys.argv[3] == "plot" else None
job = TrainingJob(kinds=("a1",), out_dir=sys.argv[2], folder=sys.argv[1], input_size=32,
                  epochs=200, batch_size=2, device="cpu", torch_threads=1, plot_size=plot,
                  plot_interval=0.0)
for kind, payload in run_training_in_process(job):
    if kind == "event" and payload["kind"] == "step":
        (child,) = multiprocessing.active_children()
        print(child.pid, flush=True)
        time.sleep(600)  # killed here, while its child trains
"""


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie has ended, only its record is left
        return fh.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("curves", ["plot", "none"])
def test_a_training_process_whose_viewer_died_stops_and_keeps_its_checkpoint(tmp_path,
                                                                            curves):
    import signal

    from napari_recist_seg.learning.inference import load_model

    folder = make_isic_folder(tmp_path / "isic", n=10, size=48)
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(folder),
                               str(tmp_path / "models"), curves], stdout=subprocess.PIPE,
                              text=True)
    try:
        child = int(parent.stdout.readline())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
    deadline = time.monotonic() + 60
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child), "the training process went on without its viewer"
    assert load_model(tmp_path / "models" / "a1" / "last").kind == "a1"


def test_a_run_stopped_between_epochs_says_after_which_epoch():
    from napari_recist_seg.learning.trainer import TrainEvent
    from napari_recist_seg.plugin.training_job import run_label

    def stopped(epoch, step):
        return TrainEvent("stopped", "multitask", epoch=epoch, epochs=4, step=step,
                          steps_per_epoch=10, global_step=10 * (epoch - 1) + step)

    between, inside, first = stopped(2, 0), stopped(2, 3), stopped(1, 0)
    assert run_label("multitask", between) == "multitask (stopped after epoch 1)"
    assert run_label("multitask", inside) == "multitask (stopped at epoch 2)"
    assert run_label("multitask", first) == "multitask (stopped at epoch 1)"


def test_the_training_dock_fits_a_laptop_screen_with_its_buttons_in_view(make_napari_viewer):
    from napari_recist_seg.plugin.widgets.training_widget import TrainingWidget

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-recist-seg", "Training")
    assert isinstance(widget, TrainingWidget)
    # A 768 px screen less the window's bars: the settings scroll instead of pushing Start,
    # Stop and the curves off the screen.
    assert widget.minimumSizeHint().height() <= 600
    assert widget.settings_area.widget().sizeHint().height() > widget.settings_area.minimumHeight()
    assert widget.settings_area.isAncestorOf(widget.form.widget.native)
    assert not widget.settings_area.isAncestorOf(widget.start_button)
    # The dock is as wide as the form (up to a cap past which the settings scroll sideways).
    from napari_recist_seg.plugin.widgets.training_widget import SETTINGS_MAX_MIN_WIDTH

    form_width = widget.settings_area.widget().minimumSizeHint().width()
    assert widget.minimumSizeHint().width() >= min(form_width, SETTINGS_MAX_MIN_WIDTH)
    assert (widget.settings_area.horizontalScrollBarPolicy()
            != Qt.ScrollBarPolicy.ScrollBarAlwaysOff)


def test_an_unguarded_script_is_told_how_to_guard_itself():
    from napari_recist_seg.plugin.training_process import _plain_reason

    python_says = (
        "RuntimeError: \n        An attempt has been made to start a new process before the\n"
        "        current process has finished its bootstrapping phase.\n")
    reason = _plain_reason(python_says)
    assert "if __name__ == \"__main__\":" in reason and "Separate process" in reason
    assert _plain_reason("CUDA out of memory") == "CUDA out of memory"


def test_curve_text_is_drawn_larger_on_a_high_dpi_screen():
    # At Qt scale 2 the picture has twice the pixels per point: text drawn at the same
    # number of pixels would read half the size of the window's own.
    from napari_recist_seg.plugin.curves import CurveFigure

    heights = []
    for scale in (1.0, 2.0):
        figure = CurveFigure()
        picture = figure.render({}, 560, 480, scale=scale)
        assert picture.shape == (480, 560, 4)
        renderer = figure.figure.canvas.get_renderer()
        title = figure.loss_axes.title.get_window_extent(renderer)
        heights.append(title.height)
    assert heights[1] == pytest.approx(2 * heights[0], rel=0.15)
