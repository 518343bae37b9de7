"""Training: train the models on the viewer's RECIST (or an image+mask folder) in a worker.

The widget gathers the ticked image/RECIST layer pairs into a ``TrainingJob`` and runs
``training_process.run_training_in_process`` (or, unticking "separate process",
``training_job.run_training`` in a worker thread) inside a napari generator worker. The
trainer's events come back to the GUI thread, where they move a napari progress bar per model
and a plot of the losses and the validation Dice. Stop asks the trainer to end after its
current step; the resumable ``last/`` checkpoint is kept. Trained models are added to
``MODEL_REGISTRY``, where the comparison widget finds them. The viewer's process imports torch
only to load a model or to list the devices (when the device list is opened); training in a
separate process never loads it there.

The layers' data is gathered by ``training_data.training_data_from_layers``, which also chooses
the protocol (whole images or lesion crops).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import multiprocessing.util  # noqa: F401 (its exit handler must run after ours, see below)
import sys
import threading
import time
from pathlib import Path

import numpy as np
from napari.layers import Image, Shapes
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...data._atomic import remove_empty_folders
from ..curves import SERIES, CurveFigure, add_event
from ..model_registry import MODEL_REGISTRY
from ..notifications import notify_error, notify_info, notify_warning
from ..recist_layers import is_recist_layer
from ..training_data import training_data_from_layers
from ..training_job import KIND_NAMES, TrainingJob, run_training, stopped_words
from ..training_process import run_training_in_process
from ._common import Connections, bind_lifetime, start_model_load, undocked
from .training_form import TrainingForm, default_output_folder

__all__ = ["CurvePlot", "TrainingWidget", "default_output_folder"]

#: Least time between two redraws of the plot (ms); drawing costs CPU time that training needs.
PLOT_INTERVAL_MS = 2000
#: Least time between two step updates of the status line and progress bar (s): each one
#: repaints the window, which costs tens of milliseconds where OpenGL is drawn in software.
STEP_UPDATE_INTERVAL_S = 0.5
#: Speed (percent) of the window's animated busy indicators while a run trains. Each frame
#: of napari's activity spinner repaints the whole window: where OpenGL is drawn in software
#: (Xvfb, remote desktops, machines without a GPU driver) that took 0.85 of a CPU core from
#: training; at 10% it takes about a tenth of that and still moves.
SPINNER_SPEED_WHILE_TRAINING = 10
#: Longest wait (s), when napari closes or Python exits during a run, for the run to finish
#: its step and write its resumable checkpoint.
QUIT_WAIT_S = 120.0
_NONE = "(none)"
#: Runs in progress, kept here so that their workers outlive a closed widget.
_LIVE_RUNS: set = set()
#: Curve drawings in progress, kept until they end for the same reason.
_LIVE_DRAWINGS: set = set()


class _RunState:
    """What a running training needs to be stopped from outside the widget.

    The widget's ``destroyed`` signal calls ``stop``; the application's ``aboutToQuit`` and
    Python's exit call ``stop_and_wait``, so that a viewer closed mid-run keeps the run's
    last step. They hold this object, not the widget, so a closed widget is not kept alive.
    """

    def __init__(self):
        self.stop_event: threading.Event | None = None
        self.ended: threading.Event | None = None
        self.worker = None
        self.generator = None  # the run itself, inside the worker's wrapper
        self._run_stop: threading.Event | None = None  # kept until the run itself ends
        self.bars: dict = {}
        self.spinners: list = []  # (QMovie, its speed before the run)

    def stop(self, *_args) -> bool:
        for event in (self.stop_event, self._run_stop):
            if event is not None:
                event.set()
        return True

    def watch(self, func, stop_event: threading.Event):
        """``func`` (a generator function: the run, stopped by ``stop_event``) telling this
        state when it ends."""
        ended = threading.Event()
        self.ended, self.stop_event, self._run_stop = ended, stop_event, stop_event

        @functools.wraps(func)
        def run(*args, **kwargs):
            _LIVE_RUNS.add(self)
            try:
                self.generator = func(*args, **kwargs)
                return (yield from self.generator)
            finally:
                ended.set()
                _LIVE_RUNS.discard(self)
        return run

    def _abandoned(self) -> bool:
        # napari asks every worker to quit when its window closes; the worker's thread then
        # leaves the run suspended between two messages, and nobody would finish it.
        # Its worker then ends too (``worker`` None once the widget heard so).
        worker, generator = self.worker, self.generator
        return (generator is not None
                and (worker is None or bool(getattr(worker, "abort_requested", False)))
                and inspect.getgeneratorstate(generator) == inspect.GEN_SUSPENDED)

    def _finish_here(self, deadline: float) -> None:
        """Run the abandoned run to its end in this thread (its messages are dropped)."""
        generator = self.generator
        try:
            for _message in generator:
                if time.monotonic() > deadline:
                    generator.close()  # its own clean-up ends the training process
                    break
        except Exception as exc:  # noqa: BLE001 (the viewer is gone: only the terminal hears)
            print(f"Training: {exc}", file=sys.stderr, flush=True)
        finally:
            if self.ended is not None:
                self.ended.set()
            _LIVE_RUNS.discard(self)

    def stop_and_wait(self, *_args, timeout: float = QUIT_WAIT_S) -> None:
        """Ask the run to stop and wait (at most ``timeout`` s) until it has saved its step.

        Without the wait, Python's exit kills the training process (and the thread) in the
        middle of its step, and the run's last checkpoint is an epoch or more old.
        """
        self.stop()
        ended = self.ended
        if ended is None or ended.is_set() or self not in _LIVE_RUNS:
            return
        print("Training: stopping after the current step and saving its checkpoint...",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + timeout
        while not ended.wait(0.2):
            if self._abandoned():
                self._finish_here(deadline)
                return
            if time.monotonic() > deadline:
                print(f"Training: the run did not stop within {timeout:.0f} s; its last saved "
                      "checkpoint is kept.", file=sys.stderr, flush=True)
                return

    def close_bars(self) -> None:
        for bar in self.bars.values():
            with contextlib.suppress(Exception):
                bar.close()
        self.bars = {}
        self.restore_spinners()

    def slow_spinners(self, window) -> None:
        """Slow the animated indicators (``QLabel`` movies) of ``window`` while training."""
        self.restore_spinners()
        with contextlib.suppress(RuntimeError):
            for label in window.findChildren(QLabel):
                movie = label.movie()
                if movie is not None:
                    self.spinners.append((movie, movie.speed()))
                    movie.setSpeed(SPINNER_SPEED_WHILE_TRAINING)

    def restore_spinners(self) -> None:
        for movie, speed in self.spinners:
            with contextlib.suppress(RuntimeError):  # the window may be gone
                movie.setSpeed(speed)
        self.spinners = []


class CurvePlot(QLabel):
    """Training curves (``curves.CurveFigure``), shown as a picture.

    The figure is never drawn in the GUI thread: drawn there (as a ``FigureCanvasQTAgg`` does),
    it took 30-100 ms on an idle two-core machine and 250-500 ms while training loaded the CPU,
    and the viewer did not react for as long (``benchmarks/gui_stall.py``). A training process
    draws it itself and sends the picture (``show_picture``); otherwise ``refresh`` draws it in
    a worker thread.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumSize(280, 240)
        # The picture must not size the label: a label that grows to fit its pixmap by a
        # frame's width gets a resize, a new picture, another resize, and never rests.
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.figure = CurveFigure()
        self._curves: dict = {}
        self._reset = False
        self._dirty = True
        self._busy = False
        self._worker = None
        #: How many pictures have been shown (for tests and benchmarks).
        self.rendered = 0
        self._drawn_size: tuple[int, int] | None = None  # of the picture shown
        self._resize_timer = QTimer(self)
        self._resize_timer.setSingleShot(True)
        self._resize_timer.setInterval(200)
        self._resize_timer.timeout.connect(self._on_resized)

    def picture_size(self) -> tuple[int, int]:
        """The size to draw at, in device pixels."""
        ratio = self.devicePixelRatioF()
        return max(1, int(self.width() * ratio)), max(1, int(self.height() * ratio))

    def has_curves(self) -> bool:
        """Whether any curve is drawn or waiting to be drawn."""
        return bool(self._curves) or self.rendered > 1

    def set_curves(self, curves: dict, reset: bool = False) -> None:
        """Draw ``curves`` (per model kind, ``curves.SERIES``) next time."""
        self._curves = {k: {n: list(v) for n, v in c.items()} for k, c in curves.items()}
        self._reset = self._reset or reset
        self._dirty = True

    def refresh(self) -> None:
        """Start drawing in a worker when something changed and no drawing is running."""
        from ..workers import create_worker

        if not self._dirty or self._busy:
            return
        ratio = self.devicePixelRatioF()
        width, height = self.picture_size()
        curves, reset = self._curves, self._reset
        self._dirty = self._reset = False
        self._busy = True
        worker = create_worker(self._draw, curves, reset, width, height, ratio,
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda picture: self.show_picture(picture, ratio))
        worker.finished.connect(self._finished)
        # Held until it ends: a worker whose plot was closed must still be there to say so.
        _LIVE_DRAWINGS.add(worker)
        worker.finished.connect(lambda: _LIVE_DRAWINGS.discard(worker))
        self._worker = worker
        worker.start()

    def _draw(self, curves, reset, width, height, ratio):
        if reset:
            self.figure.reset()
        return self.figure.render(curves, width, height, scale=ratio)

    def show_picture(self, picture: np.ndarray, ratio: float | None = None) -> None:
        """Show an RGBA picture of the curves."""
        with contextlib.suppress(RuntimeError):  # the plot may be gone
            ratio = self.devicePixelRatioF() if ratio is None else ratio
            h, w = picture.shape[:2]
            image = QImage(picture.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
            pixmap = QPixmap.fromImage(image)
            pixmap.setDevicePixelRatio(ratio)
            self.setPixmap(pixmap)
            self._drawn_size = (w, h)
            self.rendered += 1

    def _finished(self) -> None:
        self._busy = False
        self._worker = None
        with contextlib.suppress(RuntimeError):
            if self._dirty:
                self.refresh()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._resize_timer.start()

    def _on_resized(self) -> None:
        with contextlib.suppress(RuntimeError):
            if self.picture_size() != self._drawn_size:
                self._dirty = True
                self.refresh()

    def lines(self, kind: str) -> dict:
        """The series of ``kind`` as last drawn in this process: name -> (x, y)."""
        return self.figure.lines(kind)


# Smallest height of the scrolling data and settings (px): a few rows of the form.
SETTINGS_MIN_HEIGHT = 240
#: The most the settings may widen the dock to (px): past it, they scroll sideways.
SETTINGS_MAX_MIN_WIDTH = 560


class _SettingsArea(QScrollArea):
    """The scrolling settings: as wide as the form they hold (up to
    ``SETTINGS_MAX_MIN_WIDTH``), so that the dock opens wide enough for every field and
    button; a dock made narrower scrolls sideways rather than hiding their ends."""

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is not None:
            # The frame's two edges too: without them the form missed by 2 px, and a
            # sideways scroll bar took height from the settings.
            bar = self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()
            hint.setWidth(max(hint.width(), min(inner.minimumSizeHint().width() + bar,
                                                SETTINGS_MAX_MIN_WIDTH)))
        return hint


class TrainingWidget(QWidget):
    """Dock widget: train models from RECIST in a worker; load saved models.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._trained = False
        self._load_worker = None
        self._state = _RunState()
        self._curves: dict[str, dict[str, list]] = {}
        self._plot_dirty = False
        self._remote_plot = False  # the training process draws the curves
        self._last_step_update = 0.0
        self._last_checkpoints: dict[str, str] = {}
        self._new_out_dir: Path | None = None
        self._job: TrainingJob | None = None  # the run in progress (or the last one)
        self._warnings: list[str] = []  # raised while the run's data was prepared
        self._ended_kinds: list[str] = []  # kinds whose run ended (trained or stopped)
        self._stopped_kind: str | None = None
        self._connections = Connections()
        bind_lifetime(self, self._connections)
        state = self._state
        # A dock or viewer closed during training stops it after its current step (see also
        # ``event``).
        self.destroyed.connect(state.stop)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(state.stop_and_wait)
            self.destroyed.connect(lambda *_: _disconnect(app.aboutToQuit, state.stop_and_wait))
        self._plot_timer = QTimer(self)
        self._plot_timer.setInterval(PLOT_INTERVAL_MS)
        self._plot_timer.timeout.connect(self._redraw_if_dirty)
        self._build()
        events = napari_viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                self._connections.connect(emitter, self.refresh_pairs)
        self.refresh_pairs()

    def event(self, event) -> bool:
        # A run must not go on without anyone watching it.
        if undocked(self, event):
            self._state.stop()
        return super().event(event)

    # -- UI ---------------------------------------------------------------------------------
    def _build(self) -> None:
        source = QGroupBox("Training data")
        s = QGridLayout(source)
        self.layers_radio = QRadioButton("Open layers")
        self.layers_radio.setToolTip("Tick the images to train on and pick each one's RECIST")
        self.folder_radio = QRadioButton("Image+mask folder")
        self.folder_radio.setToolTip(
            "A folder of images and masks (ISIC style); RECIST are simulated from the masks and "
            "only they are used for training"
        )
        self.layers_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.layers_radio)
        group.addButton(self.folder_radio)
        self.pairs = QTableWidget(0, 2)
        # Tab leaves the table for the controls below it; arrows move between cells.
        self.pairs.setTabKeyNavigation(False)
        self.pairs.setHorizontalHeaderLabels(["Image", "RECIST layer"])
        self.pairs.verticalHeader().setVisible(False)
        self.pairs.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.pairs.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.pairs.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.pairs.setMinimumHeight(90)
        self.pairs.setMaximumHeight(200)  # many images scroll; the plot below stays in view
        self._rows: list[tuple] = []  # (image layer, checkbox item, RECIST combo, shapes list)
        self._touched: list = []  # image layers whose row the user changed
        self.pairs.itemChanged.connect(self._on_pair_item_changed)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("image+mask folder")
        folder_button = self.folder_button = QPushButton("...")
        folder_button.setToolTip("Choose the image+mask folder")
        folder_button.setMaximumWidth(32)
        folder_button.clicked.connect(lambda: self._ask_data_folder())
        s.addWidget(self.layers_radio, 0, 0, 1, 3)
        s.addWidget(self.pairs, 1, 0, 1, 3)
        self.table_radio = QRadioButton("RECIST table (DL_info.csv, RECIST .csv/.json)")
        self.table_radio.setToolTip(
            "DeepLesion's DL_info.csv (slices in Images_png or Images_nifti beside it) or a "
            "RECIST file naming "
            "its images: lesion crops read from the files, no mask needed"
        )
        group.addButton(self.table_radio)
        self.table_edit = QLineEdit()
        self.table_edit.setPlaceholderText("DL_info.csv or RECIST .csv/.json")
        table_button = self.table_button = QPushButton("...")
        table_button.setToolTip("Choose the RECIST table")
        table_button.setMaximumWidth(32)
        table_button.clicked.connect(lambda: self._ask_table())
        s.addWidget(self.folder_radio, 2, 0, 1, 3)
        s.addWidget(self.folder_edit, 3, 0, 1, 2)
        s.addWidget(folder_button, 3, 2)
        s.addWidget(self.table_radio, 4, 0, 1, 3)
        s.addWidget(self.table_edit, 5, 0, 1, 2)
        s.addWidget(table_button, 5, 2)

        options = QGroupBox("Models and settings")
        o = QVBoxLayout(options)
        o.setContentsMargins(2, 2, 2, 2)
        self.form = TrainingForm()
        o.addWidget(self.form.widget.native)

        buttons = QHBoxLayout()
        # Qt passes a button's ``checked`` flag to its slot: the lambdas keep it out of
        # methods whose first parameter means something else.
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Train the ticked models into the output folder")
        self.start_button.clicked.connect(lambda: self.start())
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip(
            "Continue the ticked models' stopped runs in the output folder from their last/ "
            "checkpoints, and train the ticked models not started yet"
        )
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step; the last/ checkpoint is kept")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(lambda: self.stop())
        self.load_button = QPushButton("Load model...")
        self.load_button.setToolTip("Load a checkpoint folder for the comparison widget")
        self.load_button.clicked.connect(lambda: self._ask_load_model())
        for button in (self.start_button, self.resume_button, self.stop_button,
                       self.load_button):
            buttons.addWidget(button)
        # Settings edited during a run would not reach it (its job was copied at Start) but
        # would read as if they had.
        self._locked_while_running = (source, options, self.resume_button)

        self.plot = CurvePlot()

        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # The data and settings scroll, so that on a laptop's screen the buttons, the curves
        # and the status stay in view.
        settings = QWidget()
        inner = QVBoxLayout(settings)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addWidget(source)
        inner.addWidget(options)
        self.settings_area = _SettingsArea()
        self.settings_area.setWidgetResizable(True)
        self.settings_area.setFrameShape(QFrame.Shape.NoFrame)
        self.settings_area.setWidget(settings)
        self.settings_area.setMinimumHeight(SETTINGS_MIN_HEIGHT)
        layout = QVBoxLayout(self)
        layout.addWidget(self.settings_area, 2)
        layout.addLayout(buttons)
        layout.addWidget(self.plot, 1)  # the plot takes the room left
        layout.addWidget(self.status)

    # -- image/RECIST pairs -----------------------------------------------------------------
    def refresh_pairs(self, event=None) -> None:
        """List the image layers, keeping the user's ticks and RECIST choices."""
        try:
            self._refresh_pairs()
        except RuntimeError:  # the widget was closed
            pass

    def _refresh_pairs(self) -> None:
        # Rows the user changed keep their tick and RECIST choice; the others are matched
        # again, so a RECIST layer added after its image is still found. (Layers are compared
        # with ==: a plugin's viewer hands out a new proxy object at each access.)
        # Read before the table is rebuilt: setRowCount deletes the old rows' items.
        previous = {}
        for image, item, combo, old_shapes in self._rows:
            if image in self._touched:
                index = combo.currentIndex()
                chosen = old_shapes[index - 1] if 0 < index <= len(old_shapes) else None
                previous[image.name] = (item.checkState(), chosen)
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        shapes = [layer for layer in self.viewer.layers if isinstance(layer, Shapes)]
        self._touched = [layer for layer in self._touched if layer in images]
        self.pairs.blockSignals(True)
        try:
            for _image, _item, old_combo, _shapes in self._rows:
                # Replaced cell widgets are deleted later, by the event loop; until then they
                # would still be drawn, stacked at the table's corner.
                old_combo.hide()
            self._rows = []
            self.pairs.setRowCount(len(images))
            for r, image in enumerate(images):
                self._add_pair_row(r, image, shapes, previous.get(image.name))
        finally:
            self.pairs.blockSignals(False)

    def _add_pair_row(self, r: int, image, shapes, previous) -> None:
        item = QTableWidgetItem(image.name)
        item.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
        combo = QComboBox()
        combo.addItems([_NONE, *[layer.name for layer in shapes]])
        if previous is not None:
            check, chosen = previous
            chosen = chosen if chosen in shapes else None
        else:
            chosen = self._match_recist(image, shapes)
            check = Qt.CheckState.Checked if chosen is not None else Qt.CheckState.Unchecked
        if chosen is not None:
            combo.setCurrentIndex(shapes.index(chosen) + 1)
        item.setCheckState(check)
        self.pairs.setItem(r, 0, item)
        self.pairs.setCellWidget(r, 1, combo)
        combo.currentIndexChanged.connect(lambda _i, layer=image: self._touch(layer))
        self._rows.append((image, item, combo, shapes))

    def _touch(self, layer) -> None:
        if layer not in self._touched:
            self._touched.append(layer)

    def _on_pair_item_changed(self, item) -> None:
        for image, row_item, _combo, _shapes in self._rows:
            if row_item is item:  # Qt items, not layers: identity is right
                self._touch(image)

    def _match_recist(self, image, shapes):
        """The RECIST layer that most likely belongs to ``image`` (or None)."""
        candidates = [s for s in shapes if is_recist_layer(s) and s.ndim == image.ndim]
        named = [s for s in candidates if image.name.lower() in s.name.lower()]
        if named:
            return min(named, key=lambda s: len(s.name))
        n_images = sum(isinstance(layer, Image) for layer in self.viewer.layers)
        if n_images == 1 and candidates:
            return candidates[-1]
        return None

    def checked_pairs(self) -> list[tuple]:
        """(image layer, RECIST layer or None) for each ticked image."""
        out = []
        for image, item, combo, shapes in self._rows:
            if item.checkState() == Qt.CheckState.Checked:
                i = combo.currentIndex()
                out.append((image, shapes[i - 1] if 0 < i <= len(shapes) else None))
        return out

    def set_pair(self, image, recist_layer, checked: bool = True) -> None:
        """Tick ``image`` and pair it with ``recist_layer`` (as the user would in the list)."""
        self.refresh_pairs()
        for row_image, item, combo, shapes in self._rows:
            if row_image == image:
                combo.setCurrentIndex(0 if recist_layer is None else shapes.index(recist_layer) + 1)
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
                return
        raise ValueError(f"{image!r} is not an image layer of the viewer")

    # -- the job ----------------------------------------------------------------------------
    def settings(self) -> dict:
        """The training settings of the form (``TrainingJob`` fields)."""
        return self.form.values()

    def make_job(self) -> TrainingJob:
        """A ``TrainingJob`` from the form and the layers; ValueError says what is missing."""
        settings = self.settings()
        if self.folder_radio.isChecked():
            folder = _chosen_path(self.folder_edit, "the image+mask folder", folder=True)
            job = TrainingJob(folder=folder, source=self.folder_edit.text().strip(), **settings)
        elif self.table_radio.isChecked():
            table = _chosen_path(self.table_edit, "the RECIST table (DL_info.csv or .csv/.json)",
                                 folder=False)
            job = TrainingJob(table=table, source=self.table_edit.text().strip(), **settings)
        else:
            job = TrainingJob(**settings, **self._layer_data())
        job.validate()
        return job

    def _layer_data(self) -> dict:
        pairs = self.checked_pairs()
        has_images = any(isinstance(layer, Image) for layer in self.viewer.layers)
        data, skipped = training_data_from_layers(pairs, has_images)
        if skipped:
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            notify_warning(f"Training: {len(skipped)} lesion(s) left out: "
                           f"{'; '.join(skipped[:3])}{more}")
        return data

    # -- running ----------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._worker is not None

    @property
    def worker(self):
        """The napari worker of the run in progress (None when nothing trains)."""
        return self._worker

    def start(self, job: TrainingJob | None = None, resume: bool = False):
        """Start training (``job`` defaults to the form's); returns the worker or None.

        With ``resume``, the ticked kinds are trained in turn: a stopped run in the output
        folder continues from its ``last/`` checkpoint, a kind without a run trains afresh
        and a finished run is left as it is unless Epochs asks for more (``_resume_plan``
        says which). Otherwise an output folder that already holds a run of a ticked kind is
        never replaced: the user is asked to resume it, train into a new subfolder, or
        cancel. The worker starts when the event loop next runs: connect to its signals
        first.
        """
        from ..workers import create_worker

        if self._worker is not None:
            notify_error("Training: a training run is already going; stop it first.")
            return None
        try:
            job = job if job is not None else self.make_job()
            job.validate()
            if resume:
                _resume_plan(job, _runs_of(job))  # says why when Resume cannot go on
                job.resume = True
                job.validate()
            elif not job.resume:
                job = self._settle_occupied_folder(job)
                if job is None:
                    self.status.setText("Training not started.")
                    return None
        except ValueError as exc:
            notify_error(f"Training: {exc}")
            # The status line would otherwise still tell of the previous run.
            self.status.setText(f"Training not started: {exc}")
            return None
        stop = threading.Event()
        # A folder this run makes is taken away again if the run ends before writing to it.
        self._new_out_dir = None if Path(job.out_dir).exists() else Path(job.out_dir)
        self._remote_plot = bool(self.form.separate_process.value)
        if self._remote_plot:
            if job.plot_size is None:
                job.plot_size = self.plot.picture_size()
                job.plot_scale = self.plot.devicePixelRatioF()
            worker = create_worker(self._state.watch(run_training_in_process, stop), job, stop,
                                   _start_thread=False, _ignore_errors=True)
        else:
            worker = create_worker(self._state.watch(run_training, stop), job, stop.is_set,
                                   _start_thread=False, _ignore_errors=True)
        self._state.worker = worker
        worker.yielded.connect(self._on_message)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._trained = False  # until a model's first training step is reported
        self._curves = {}
        self._last_checkpoints = {}
        self._last_step_update = 0.0
        self._job, self._warnings, self._ended_kinds, self._stopped_kind = job, [], [], None
        self._state.slow_spinners(self.window())
        self._clear_plot()
        self._set_running(True)
        self.status.setText(f"Starting: {', '.join(KIND_NAMES[k] for k in job.kinds)} "
                            f"-> {job.out_dir}")
        self._plot_timer.start()
        # The thread starts when the event loop next runs, so that whoever called ``start``
        # can connect to the worker's signals before its first message.
        QTimer.singleShot(0, worker.start)
        return worker

    def _settle_occupied_folder(self, job: TrainingJob) -> TrainingJob | None:
        """``job`` as the user wants it when its folder holds runs already; None: cancelled."""
        runs = _runs_of(job)
        if not runs:
            return job
        # Resume is offered whenever the Resume button would go on with these kinds.
        try:
            resume_does, can_resume = _resume_plan(job, runs), True
        except ValueError as exc:
            resume_does, can_resume = f"Resume is not offered: {exc}.", False
        lines = "\n".join(f"- {KIND_NAMES[kind]}: {run.describe()}" for kind, run in runs.items())
        new_folder = _free_subfolder(Path(job.out_dir))
        choice = ask_about_occupied_folder(self, job.out_dir, lines, new_folder, can_resume,
                                           resume_does=resume_does)
        if choice == "resume" and can_resume:
            job.resume = True
            return job
        if choice == "new":
            job.out_dir = str(new_folder)
            self.form.out_dir.value = new_folder  # the user sees where the run goes
            return job
        return None

    def stop(self) -> None:
        """Ask the run to stop after its current step (its last/ checkpoint is kept)."""
        if self._worker is None:
            return
        self._state.stop()
        self.stop_button.setEnabled(False)
        self.status.setText("Stopping after the current step...")

    def _set_running(self, running: bool) -> None:
        with contextlib.suppress(RuntimeError):
            self.start_button.setEnabled(not running)
            self.stop_button.setEnabled(running)
            for control in self._locked_while_running:
                control.setEnabled(not running)

    # -- messages from the worker (GUI thread) ----------------------------------------------
    def _on_message(self, message) -> None:
        try:
            kind, payload = message
            if kind == "status":
                self.status.setText(str(payload))
            elif kind == "warning":
                self._warnings.append(str(payload))
                notify_warning(f"Training: {payload}")
                self.status.setText(f"Warning: {payload}")
            elif kind == "prepared":
                p = payload
                # The warnings stay in the line until training starts (and in the
                # notifications after).
                noted = "".join(f"\nWarning: {text}" for text in self._warnings)
                self.status.setText(
                    f"{p['n_train']} training and {p['n_val']} validation lesions "
                    f"({'lesion crops' if p['mode'] == 'crops' else 'whole images'}), "
                    f"{p['k']} RECIST groups{noted}"
                )
            elif kind == "event":
                self._on_event(payload)
            elif kind == "model":
                self._on_model(payload)
            elif kind == "plot":
                self.plot.show_picture(payload)
        except RuntimeError:  # the widget was closed while the worker ran
            self._state.close_bars()

    def _on_event(self, e: dict) -> None:
        from napari.utils import progress

        kind = e["model_kind"]
        self._trained = True
        bars = self._state.bars
        total = max(1, int(e["epochs"]) * int(e["steps_per_epoch"]))
        if e["kind"] == "start":
            if kind in bars:
                bars.pop(kind).close()
            bars[kind] = progress(total=total, desc=f"training {KIND_NAMES[kind]}")
            bars[kind].update(int(e["global_step"]))
            self._curves.setdefault(kind, {n: [] for n in SERIES})
            self.status.setText(e.get("message", ""))
            return
        self._plot_dirty = add_event(self._curves, e) or self._plot_dirty
        if e["kind"] == "step":
            now = time.monotonic()
            if now - self._last_step_update < STEP_UPDATE_INTERVAL_S:
                return
            self._last_step_update = now
        bar = bars.get(kind)
        if bar is not None and int(e["global_step"]) > bar.n:
            bar.update(int(e["global_step"]) - bar.n)
        steps = max(1, int(e["steps_per_epoch"]))
        losses = e.get("losses") or {}
        if e["kind"] == "step":
            terms = ", ".join(f"{k} {v:.3g}" for k, v in losses.items() if k != "total")
            self.status.setText(
                f"{KIND_NAMES[kind]}: epoch {e['epoch']}/{e['epochs']}, step {e['step']}/"
                f"{steps} ({terms}; {e['images_per_second']:.1f} images/s)"
            )
        elif e["kind"] == "epoch":
            val = e.get("val") or {}
            self._redraw_if_dirty()
            self.status.setText(
                f"{KIND_NAMES[kind]}: epoch {e['epoch']}/{e['epochs']}: validation loss "
                f"{val.get('loss', np.nan):.4g}, Dice against the pseudo-masks "
                f"{val.get('dice', np.nan):.3f} "
                f"(best epoch {e.get('best_epoch')})"
            )
        elif e["kind"] in ("stopped", "finished"):
            if bar is not None:
                bars.pop(kind).close()
            self._last_checkpoints[kind] = e.get("checkpoint") or ""
            if e["kind"] == "stopped":
                self._stopped_kind = kind
                where = stopped_words(e["epoch"], e["step"])
                if e["step"]:
                    where += f", step {e['step']}"
                note = self._not_started_note(kind)
                notify_info(
                    f"Training {KIND_NAMES[kind]} {where}; its checkpoint (resumable) is in "
                    f"{e.get('checkpoint')}{'. ' + note if note else ''}"
                )
            else:
                self.status.setText(f"{KIND_NAMES[kind]}: {e.get('message', 'done')}")
            self._redraw_if_dirty()

    def _not_started(self, after: str | None = None) -> list[str]:
        """The run's kinds that never started (all after ``after`` when given)."""
        kinds = list(self._job.kinds) if self._job is not None else []
        if after in kinds:
            kinds = kinds[kinds.index(after) + 1:]
        return [k for k in kinds if k not in self._ended_kinds and k != after]

    def _not_started_note(self, stopped: str | None) -> str:
        """Which of the run's models a stop left untrained, and how to train them ("" when
        none); ``stopped`` is the kind whose run was stopped (None: between two kinds)."""
        left = self._not_started(stopped)
        if not left:
            return ""
        names, them = _names(left), "it" if len(left) == 1 else "them"
        if stopped is not None and self._job is not None and not self._job.self_training_rounds:
            # run_training resumes each ticked kind in turn: the stopped run, then these.
            return (f"Not started: {names}; Resume, with the same models ticked, continues "
                    f"{KIND_NAMES[stopped]} and then trains {them}")
        return f"Not started: {names}; to train {them}, tick only {them} and press Start"

    def _on_model(self, info: dict) -> None:
        self._ended_kinds.append(info["kind"])
        run_folder = Path(info["path"]).resolve().parent
        for old in MODEL_REGISTRY.entries():  # this run's earlier state (a stopped last/)
            if Path(old.path).parent == run_folder and Path(old.path) != Path(info["path"]):
                MODEL_REGISTRY.remove(old)
        entry = MODEL_REGISTRY.add(info["kind"], info["path"], name=info.get("name"))
        self.status.setText(f"{entry.name}: {info['path']} (offered for comparison)")

    def _on_error(self, exc) -> None:
        notify_error(f"Training: {exc}")
        with contextlib.suppress(RuntimeError):
            self.status.setText(f"Training failed: {exc}")

    def _on_finished(self) -> None:
        self._worker = None
        self._state.close_bars()
        event, self._state.stop_event = self._state.stop_event, None
        self._state.worker = None
        with contextlib.suppress(RuntimeError):
            if event is not None and event.is_set() and not self._trained:
                # Stopped while the data was prepared: no step ran, nothing was saved.
                self.status.setText("Stopped before the first training step; nothing was "
                                    "written.")
                remove_empty_folders(self._new_out_dir)
            elif event is not None and event.is_set():
                note = self._not_started_note(self._stopped_kind)
                if note and self._stopped_kind is None:
                    # Stopped between two models: no "stopped" event told of it.
                    notify_info(f"Training stopped. {note}")
                if note:
                    self.status.setText(f"{self.status.text()}\n{note}.")
            self._plot_timer.stop()
            self._redraw_if_dirty()
            self._set_running(False)
        self._remote_plot = False
        _release_accelerator_memory()

    # -- plot -------------------------------------------------------------------------------
    def curves(self) -> dict:
        """Per model kind: the loss and Dice series drawn in the plot."""
        return {k: {n: list(v) for n, v in c.items()} for k, c in self._curves.items()}

    def _clear_plot(self) -> None:
        if self.plot.has_curves():  # an empty plot needs no drawing
            self.plot.set_curves({}, reset=True)
            self.plot.refresh()

    def _redraw_if_dirty(self) -> None:
        if not self._plot_dirty:
            return
        self._plot_dirty = False
        with contextlib.suppress(RuntimeError):
            self.plot.set_curves(self._curves)
            if not self._remote_plot:
                self.plot.refresh()

    # -- loading a saved model --------------------------------------------------------------
    def load_model(self, path):
        """Load a checkpoint folder in a worker and offer it to the comparison widget."""
        self._load_worker = start_model_load(path, self.load_button, notify_error)
        return self._load_worker

    # -- dialogs ----------------------------------------------------------------------------
    def _ask_data_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Image+mask folder")
        if folder:
            self.folder_edit.setText(folder)
            self.folder_radio.setChecked(True)

    def _ask_table(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "RECIST table", "", "RECIST tables (*.csv *.json);;All files (*)"
        )
        if path:
            self.table_edit.setText(path)
            self.table_radio.setChecked(True)

    def _ask_load_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Checkpoint folder")
        if folder:
            self.load_model(folder)


def ask_about_occupied_folder(parent, folder, runs: str, new_folder: Path,
                              can_resume: bool, resume_does: str = "") -> str:
    """Ask what to do with an output folder that holds runs.

    Parameters
    ----------
    parent : QWidget or None
        The question's parent.
    folder : path-like
        The output folder.
    runs : str
        The runs it holds, one line each.
    new_folder : Path
        The subfolder the "New subfolder" answer trains into.
    can_resume : bool
        Whether Resume is offered (otherwise its button is greyed out).
    resume_does : str
        What Resume would do (or why it is not offered), shown above the buttons.

    Returns
    -------
    str
        "resume", "new" or "cancel".
    """
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Output folder in use")
    resume_does = f"\n\n{resume_does}" if resume_does else ""
    box.setText(f"{folder} already holds:\n{runs}{resume_does}\n\nNothing there is replaced.")
    resume = box.addButton("Resume", QMessageBox.ButtonRole.AcceptRole)
    resume.setEnabled(can_resume)
    new = box.addButton(f"New subfolder ({new_folder.name})", QMessageBox.ButtonRole.ActionRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(new)
    box.exec()
    clicked = box.clickedButton()
    return {id(resume): "resume", id(new): "new", id(cancel): "cancel"}.get(id(clicked),
                                                                          "cancel")


def _free_subfolder(folder: Path) -> Path:
    """The first ``folder/run-N`` (N = 2, 3...) that does not exist."""
    n = 2
    while (folder / f"run-{n}").exists():
        n += 1
    return folder / f"run-{n}"


def _runs_of(job: TrainingJob) -> dict:
    """The runs already in the output folder for the job's kinds (kind -> ``RunInfo``)."""
    from ...learning.run_folders import find_run, round_folders

    runs = {}
    for kind in job.kinds:
        # A self-training run's earlier rounds count as runs of its kind too.
        found = (find_run(f) for f in round_folders(Path(job.out_dir) / kind,
                                                     job.self_training_rounds))
        run = next((r for r in found if r is not None), None)
        if run is not None:
            runs[kind] = run
    return runs


def _chosen_path(edit, what: str, folder: bool) -> str:
    """The path typed or chosen in ``edit``; ValueError when it is empty or not there."""
    text = edit.text().strip()
    if not text:
        raise ValueError(f"choose {what} to train on")
    path = Path(text).expanduser()
    if not (path.is_dir() if folder else path.is_file()):
        raise ValueError(f"{text} is not a {'folder' if folder else 'file'}")
    return str(path)


def _names(kinds) -> str:
    """Display names of ``kinds`` in words: "A1", "A1 and co-segmentation", "a, b and c"."""
    names = [KIND_NAMES.get(k, k) for k in kinds]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _resume_plan(job: TrainingJob, runs: dict) -> str:
    """What Resume does with each ticked kind, given the runs in the output folder.

    Resume (``run_training`` with ``resume``) goes through the ticked kinds in turn: a stopped
    run continues from its ``last/``, a kind without a run trains afresh, and a finished run
    is resumed too, which trains nothing unless Epochs is above the epochs it did.

    Parameters
    ----------
    job : TrainingJob
        The ticked kinds, the output folder and the settings.
    runs : dict
        ``_runs_of(job)``: kind -> ``RunInfo`` of the runs there.

    Returns
    -------
    str
        What Resume would do, one line per kind.

    Raises
    ------
    ValueError
        Why Resume cannot go on: no ticked kind has a stopped run, one has a run without a
        ``last/`` (nothing to continue, and the trainer refuses to start afresh over it), or
        self-training rounds are asked for.
    """
    if not any(run.has_last and not run.finished for run in runs.values()):
        raise ValueError(f"{job.out_dir} holds no stopped run of {_names(job.kinds)} to resume")
    if job.self_training_rounds:
        raise ValueError("Resume continues one training run; self-training rounds start "
                         "afresh: set the rounds to 0 to resume")
    stuck = [kind for kind, run in runs.items() if not run.has_last]
    if stuck:
        runs_have = "run has" if len(stuck) == 1 else "runs have"
        raise ValueError(f"the {_names(stuck)} {runs_have} no last/ checkpoint in {job.out_dir}"
                         ": nothing to continue, and a run that started afresh would replace "
                         "it; untick it to resume the others")
    lines = []
    for kind in job.kinds:
        name, run = KIND_NAMES[kind], runs.get(kind)
        if run is None:
            lines.append(f"- train {name} (not started)")
        elif not run.finished:
            since = f" from epoch {run.epoch}" if run.epoch is not None else ""
            lines.append(f"- continue {name}{since} (stopped)")
        elif run.epoch is not None and job.epochs > run.epoch:
            lines.append(f"- train {name} (finished at epoch {run.epoch}) on to epoch "
                         f"{job.epochs}, as Epochs asks")
        else:
            lines.append(f"- leave {name} (finished) as it is")
    return "Resume would, in this order:\n" + "\n".join(lines)


def _wait_for_live_runs() -> None:
    # Registered after multiprocessing's own exit handler, so it runs first (last in, first
    # out): the training process is still alive to finish its step.
    for state in list(_LIVE_RUNS):
        state.stop_and_wait()
    if _LIVE_DRAWINGS:
        # A drawing of the curves still in its thread would report its end to a signal
        # object that Python's exit has already deleted (a traceback in the terminal).
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(10_000)


atexit.register(_wait_for_live_runs)


def _disconnect(signal, slot) -> None:
    with contextlib.suppress(TypeError, RuntimeError):
        signal.disconnect(slot)


def _release_accelerator_memory() -> None:
    """Give cached GPU memory back once training has ended (the trainer moved its model to
    the CPU already). Nothing to do when torch was never loaded in this process."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
