"""The README's screenshots of the five dock widgets, taken from a real viewer.

Walks the path a user takes on the CT phantom sample, by clicks and keys as a user does it
(menus, buttons, typing into the fields): the RECIST table, K-means groups and an ellipse
pseudo-mask preview, a short training of the four models on other phantom slices, their
predictions compared against the true masks, overlaid and side by side, and the prompted
model's live masks of the drawn lesions after one endpoint is moved. napari draws with
OpenGL, so run it under a virtual display:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/widget_screenshots.py

Takes five to fifteen minutes on 2 CPU cores (most of it training the four models).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

PLUGIN = "napari-recist-seg"


def run_loop(ms: int) -> None:
    """Run Qt's event loop for ``ms`` milliseconds, as napari's own loop would run it
    (unlike ``processEvents``, this also deletes the widgets Qt was asked to delete)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait_for(condition, what: str, timeout: float = 900.0) -> None:
    """Run the event loop until ``condition()`` holds (the viewer stays live meanwhile)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        run_loop(20)


def settle(seconds: float = 0.5) -> None:
    """Let pending redraws happen before a screenshot."""
    run_loop(int(seconds * 1000))


def camera(viewer):
    """The camera the canvas draws with (napari 0.9 marks ``viewer.camera`` as deprecated
    but still draws with it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return viewer.camera


# -- a user's hands: the mouse and the keyboard ----------------------------------------------
def click(widget) -> None:
    """A left click on a button (or a check box, on its indicator)."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QCheckBox, QRadioButton

    if not widget.isEnabled():
        raise SystemExit(f"{widget.text()!r} is disabled")
    pos = (QPoint(8, widget.height() // 2) if isinstance(widget, QCheckBox | QRadioButton)
           else widget.rect().center())
    QTest.mouseClick(widget, Qt.MouseButton.LeftButton, pos=pos)
    settle(0.1)


def set_checked(box, checked: bool) -> None:
    if box.isChecked() != checked:
        click(box)


def type_into(edit, text) -> None:
    """Replace a field's text by typing (a spin box's line edit, a line edit)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    edit = edit.lineEdit() if hasattr(edit, "lineEdit") else edit
    QTest.keyClick(edit, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClick(edit, Qt.Key.Key_Backspace)
    QTest.keyClicks(edit, str(text))
    QTest.keyClick(edit, Qt.Key.Key_Return)


def pick(combo, text: str) -> None:
    """Choose an entry of a drop-down list."""
    index = combo.findText(text)
    if index < 0:
        raise SystemExit(f"{text!r} is not offered")
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def choose_menu(viewer, *path: str) -> None:
    """Choose a menu entry of the window, e.g. ("Plugins", "RECIST Segmentation", ...)."""
    menu = viewer.window._qt_window.menuBar()
    for depth, text in enumerate(path):
        action = {a.text().replace("&", ""): a for a in menu.actions()}[text]
        if depth == len(path) - 1:
            action.trigger()
        else:
            menu = action.menu()
            menu.aboutToShow.emit()
    settle(0.2)


def click_table_cell(table, row: int, column: int) -> None:
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    rect = table.visualRect(table.model().index(row, column))
    QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton,
                     pos=QPoint(rect.left() + 10, rect.center().y()))
    settle(0.1)


class Shooter:
    """Docks one widget at a time and saves screenshots of the whole window."""

    def __init__(self, viewer, out: Path):
        self.viewer = viewer
        self.out = out
        self.dock = None

    def show(self, title: str, widget_class):
        """Open a widget from the Plugins menu, closing the one shown before."""
        if self.dock is not None:
            self.viewer.window.remove_dock_widget(self.dock)
        choose_menu(self.viewer, "Plugins", "RECIST Segmentation", title)
        widget = self.viewer.window._qt_window.findChildren(widget_class)[-1]
        self.dock = widget
        settle()
        return widget

    def shoot(self, filename: str) -> None:
        settle()
        path = self.out / filename
        image = self.viewer.screenshot(path=str(path), canvas_only=False, flash=False)
        print(f"{path}: {image.shape[1]}x{image.shape[0]}")


def add_training_slices(viewer, seeds):
    """Other phantom slices with their RECIST, hidden: the training set."""
    from napari.layers import Layer

    from napari_recist_seg.data.recist_files import RecistTable
    from napari_recist_seg.data.samples import ct_phantom_slice
    from napari_recist_seg.plugin.layer_units import SOFT_TISSUE_WINDOW
    from napari_recist_seg.plugin.recist_layers import table_layer_tuple

    pairs = []
    for seed in seeds:
        s = ct_phantom_slice(seed)
        image = viewer.add_image(s["image"], name=f"training slice {seed}", scale=s["spacing"],
                                 units=("mm", "mm"), contrast_limits=SOFT_TISSUE_WINDOW,
                                 visible=False)
        recist = viewer.add_layer(Layer.create(*table_layer_tuple(
            RecistTable(recists=list(s["recists"])), name=f"training slice {seed} RECIST",
            scale=s["spacing"])))
        recist.visible = False
        pairs.append((image, recist))
    return pairs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the PNG files")
    parser.add_argument("--train-slices", type=int, default=12,
                        help="phantom slices to train on (about 5 lesions each)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--size", type=int, default=64, help="network input size")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The forms start from their defaults, not from what this machine's user last chose.
    from napari_recist_seg.plugin.remembered_settings import SETTINGS_DIR_VARIABLE

    os.environ[SETTINGS_DIR_VARIABLE] = tempfile.mkdtemp(prefix="recist-seg-settings-")

    import napari

    from napari_recist_seg.plugin.training_job import prepare_torch_import
    from napari_recist_seg.plugin.widgets.compare_widget import CompareWidget
    from napari_recist_seg.plugin.widgets.groups_widget import GroupsWidget
    from napari_recist_seg.plugin.widgets.recist_widget import RecistWidget
    from napari_recist_seg.plugin.widgets.segment_widget import SegmentWidget
    from napari_recist_seg.plugin.widgets.training_widget import TrainingWidget

    viewer = napari.Viewer(title="napari-recist-seg", show=True)
    # Once the viewer's OpenGL (and Mesa's LLVM) is loaded, torch must be imported the safe
    # way; the plugin does this itself, and this script imports nothing of torch before it.
    prepare_torch_import()
    viewer.window._qt_window.resize(1500, 950)
    choose_menu(viewer, "File", "Open Sample", "RECIST Segmentation",
                "CT phantom slice (lesions, masks, RECIST)")
    layers = viewer.layers
    image, truth, recist = (layers["CT phantom"], layers["CT phantom true masks"],
                            layers["CT phantom RECIST"])
    truth.visible = False
    viewer.canvas.overlays.scale_bar.visible = True  # mm: the layers carry their pixel size
    shots = Shooter(viewer, out)

    # 1. RECIST annotation: the lesion table, one lesion selected (a click on its row).
    widget = shots.show("RECIST annotation", RecistWidget)
    click_table_cell(widget.table, 0, 0)
    camera(viewer).zoom = 2.2
    shots.shoot("widget_recist.png")

    # 2. Groups: K-means recolours the lines; the ellipse pseudo-masks are previewed.
    widget = shots.show("Groups and pseudo-masks", GroupsWidget)
    type_into(widget.k_spin, 2)
    click(widget.run_button)
    wait_for(lambda: "groups (sizes" in widget.status.text(), "K-means")
    pick(widget.method_combo, "ellipse")
    set_checked(widget.preview_button, True)
    wait_for(lambda: widget.preview_layer is not None, "the pseudo-mask preview")
    viewer.reset_view()
    camera(viewer).zoom *= 1.6
    shots.shoot("widget_groups.png")
    set_checked(widget.preview_button, False)

    # 3. Training: the four models on other slices, one after another, with the live plot.
    pairs = add_training_slices(viewer, range(1, args.train_slices + 1))
    widget = shots.show("Training", TrainingWidget)
    rows = [widget.pairs.item(r, 0).text() for r in range(widget.pairs.rowCount())]
    click_table_cell(widget.pairs, rows.index(image.name), 0)  # untick the sample slice
    form = widget.form
    for kind in ("multitask", "a1", "coseg", "prompted"):
        set_checked(form[kind].native, True)
    type_into(form.input_size.native, args.size)
    type_into(form.epochs.native, args.epochs)
    type_into(form.batch_size.native, 8)
    with tempfile.TemporaryDirectory() as models:
        type_into(form.out_dir.line_edit.native, models)
        started = time.monotonic()
        click(widget.start_button)
        if widget.worker is None:
            raise SystemExit("training did not start (see the notification above)")
        wait_for(lambda: not widget.is_running(), "training", timeout=3600)
        print(f"trained four models in {time.monotonic() - started:.0f} s")
        shots.shoot("widget_training.png")

        # 4. Comparison on the sample slice (not trained on), against its true masks.
        for slice_image, slice_recist in pairs:
            viewer.layers.remove(slice_image)
            viewer.layers.remove(slice_recist)
        widget = shots.show("Compare models", CompareWidget)
        pick(widget.image_combo, image.name)
        pick(widget.recist_combo, recist.name)
        pick(widget.gt_combo, truth.name)
        click(widget.predict_button)
        wait_for(lambda: widget._worker is None and widget.predict_button.isEnabled(),
                 "predictions")
        frame_lesions(viewer, image, recist)
        shots.shoot("widget_compare.png")
        set_checked(widget.side_button, True)
        viewer.reset_view()
        camera(viewer).zoom *= 1.5
        shots.shoot("compare_side_by_side.png")
        print(mean_dice_by_model(widget))
        set_checked(widget.side_button, False)

        # 5. Segment from RECIST: the prompted model's masks follow an edited endpoint, over
        # the true masks' outlines (the comparison's layers hidden by their eye buttons).
        for layer in viewer.layers:
            if layer.name.endswith(" prediction"):
                layer.visible = False
        widget = shots.show("Segment from RECIST", SegmentWidget)
        pick(widget.image_combo, image.name)
        pick(widget.recist_combo, recist.name)
        pick(widget.model_combo, next(widget.model_combo.itemText(i)
                                      for i in range(widget.model_combo.count())
                                      if widget.model_combo.itemText(i).startswith("prompted")))
        click(widget.segment_button)
        wait_for(lambda: widget.preview_layer is not None and widget._worker is None,
                 "the prompted masks")
        move_endpoint(recist, lesion=0, by=4.0)
        wait_for(lambda: widget._worker is None and not widget._timer.isActive(),
                 "the edited lesion's mask")
        truth.visible = True
        truth.contour = 1
        camera(viewer).center = tuple(_lesions(recist)[0].centre * np.asarray(image.scale))
        camera(viewer).zoom = 12.0
        shots.shoot("widget_segment.png")
        click(widget.keep_button)
    viewer.close()


def frame_lesions(viewer, image, recist_layer, margin: float = 1.4) -> None:
    """Centre the camera on the lesions and zoom until they (widened by ``margin``) fill it.

    The zoom is found relative to the one that fits the whole image, so that it does not
    depend on the canvas's size in pixels.
    """
    ends = np.concatenate([np.asarray(line)[:, -2:] for line in recist_layer.data])
    ends = ends * np.asarray(image.scale)[-2:]
    viewer.reset_view()
    whole = np.asarray(image.data.shape[-2:]) * np.asarray(image.scale)[-2:]
    span = (ends.max(axis=0) - ends.min(axis=0)) * margin
    camera(viewer).center = tuple((ends.max(axis=0) + ends.min(axis=0)) / 2)
    camera(viewer).zoom *= float(np.min(whole / np.maximum(span, 1e-6)))


def move_endpoint(recist_layer, lesion: int, by: float) -> None:
    """Lengthen a lesion's long axis by ``by`` pixels at its first end, as dragging that
    vertex in the select-vertices mode does (the layer's data is set once, on release)."""
    data = [np.array(d) for d in recist_layer.data]
    ids = list(recist_layer.features["lesion_id"])
    axes = list(recist_layer.features["axis"])
    wanted = sorted(set(i for i in ids if i >= 0))[lesion]
    line = next(k for k, (i, a) in enumerate(zip(ids, axes)) if i == wanted and a == "long")
    start, end = data[line][0], data[line][1]
    data[line][0] = start + by * (start - end) / np.linalg.norm(start - end)
    recist_layer.data = data
    settle(0.1)


def _lesions(recist_layer):
    from napari_recist_seg.core.recist import recists_from_shapes

    return recists_from_shapes(recist_layer.data, recist_layer.features)[0]


def mean_dice_by_model(widget) -> str:
    """Each model's Dice over the whole image and its mean over lesions, as text."""
    parts = []
    for name in dict.fromkeys(row["model"] for row in widget.rows):
        rows = [row for row in widget.rows if row["model"] == name]
        whole = [row["dice"] for row in rows if row["lesion"] == "all"]
        lesions = [row["dice"] for row in rows if row["lesion"] != "all"]
        parts.append(f"{name}: Dice {whole[0]:.3f} (image), {np.mean(lesions):.3f} "
                     f"(mean of {len(lesions)} lesions)")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
