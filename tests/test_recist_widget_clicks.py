"""Every control of the RECIST annotation widget, used as a user does: clicks, keys, picks."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from napari_recist_seg.core.recist import Recist
from napari_recist_seg.data.recist_files import RecistTable, read_recists, write_recists
from napari_recist_seg.plugin.widgets.recist_widget import SHORTCUTS, STATUS_COLUMN

from ._gui import set_checked

PLUGIN = "napari-recist-seg"
LEFT = Qt.MouseButton.LeftButton


def _widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotation")
    return widget


def _cell(widget, row, header):
    model = widget.table.model()
    for c in range(model.columnCount()):
        if model.headerData(c, Qt.Orientation.Horizontal) == header:
            return model.index(row, c).data()
    raise KeyError(header)


def _click_row(qtbot, widget, row):
    rect = widget.table.visualRect(widget.model.index(row, 0))
    qtbot.mouseClick(widget.table.viewport(), LEFT, pos=rect.center())


def _press(viewer, key):
    """Press a key combination the way napari's canvas hands it to the key bindings."""
    viewer.window._qt_viewer._key_map_handler.press_key(key)


def test_new_draw_table_perpendicular_undo_and_labels_by_clicks(viewer_2d, qtbot, draw):
    widget = _widget(viewer_2d)
    n = len(viewer_2d.layers)
    qtbot.mouseClick(widget.new_button, LEFT)
    assert len(viewer_2d.layers) == n + 1
    layer = widget.recist_layer()
    assert layer is viewer_2d.layers[-1] and layer.name == "ct RECIST"
    layer.mode = "pan_zoom"
    qtbot.mouseClick(widget.draw_button, LEFT)
    assert layer.mode == "add_line" and viewer_2d.layers.selection.active is layer

    draw(layer, [[20, 10], [20, 50]])
    draw(layer, [[10, 25], [30, 35]])  # far off perpendicular
    assert "from perpendicular" in _cell(widget, 0, "status")
    before = np.array(layer.data[1])
    _click_row(qtbot, widget, 0)
    assert set(layer.selected_data) == {0, 1}
    qtbot.mouseClick(widget.perpendicular_button, LEFT)
    assert _cell(widget, 0, "status") == "ok"
    assert not np.allclose(layer.data[1], before)
    assert widget.undo_button.isEnabled()
    qtbot.mouseClick(widget.undo_button, LEFT)
    np.testing.assert_allclose(layer.data[1], before)
    assert "from perpendicular" in _cell(widget, 0, "status")

    # Lengths on lines: the check box shows and hides the layer's text.
    assert widget.labels_check.isChecked() and layer.text.visible
    set_checked(qtbot, widget.labels_check, False)
    assert not layer.text.visible
    set_checked(qtbot, widget.labels_check, True)
    assert layer.text.visible


def test_undo_takes_back_a_drawn_and_a_deleted_lesion(viewer_2d, qtbot, draw):
    widget = _widget(viewer_2d)
    layer = widget.new_recist_layer()
    draw(layer, [[20, 10], [20, 50]])
    draw(layer, [[10, 30], [30, 30]])
    draw(layer, [[50, 60], [50, 75]])
    assert widget.model.rowCount() == 2
    qtbot.mouseClick(widget.undo_button, LEFT)  # the last line drawn goes
    assert layer.nshapes == 2 and widget.model.rowCount() == 1
    # Delete the lesion, then undo: both lines come back, paired and measured as before.
    layer.selected_data = {0, 1}
    layer.remove_selected()
    assert layer.nshapes == 0 and widget.model.rowCount() == 0
    qtbot.mouseClick(widget.undo_button, LEFT)
    assert layer.nshapes == 2
    assert layer.features["lesion_id"].tolist() == [0, 0]
    assert layer.features["axis"].tolist() == ["long", "short"]
    assert _cell(widget, 0, "long (mm)") == "32.0" and _cell(widget, 0, "status") == "ok"
    np.testing.assert_allclose(layer.data[0], [[20, 10], [20, 50]])
    assert list(layer.shape_type) == ["line", "line"]


def test_keyboard_shortcuts_draw_fix_and_undo(viewer_2d, qtbot, draw):
    widget = _widget(viewer_2d)
    for key in SHORTCUTS.values():
        assert key in (widget.draw_button.toolTip() + widget.perpendicular_button.toolTip()
                       + widget.undo_button.toolTip())
    _press(viewer_2d, SHORTCUTS["draw"])
    layer = widget.recist_layer()
    assert layer is not None and layer.mode == "add_line"
    draw(layer, [[20, 10], [20, 50]])
    draw(layer, [[10, 25], [30, 35]])
    before = np.array(layer.data[1])
    layer.mode = "select"
    layer.selected_data = {1}
    _press(viewer_2d, SHORTCUTS["perpendicular"])
    assert _cell(widget, 0, "status") == "ok"
    _press(viewer_2d, SHORTCUTS["undo"])
    np.testing.assert_allclose(layer.data[1], before)
    _press(viewer_2d, SHORTCUTS["undo"])  # the short axis drawn goes too
    assert layer.nshapes == 1


def test_combos_pick_the_image_the_layer_and_the_labels(viewer_2d, qtbot, draw):
    widget = _widget(viewer_2d)
    layer = widget.new_recist_layer()
    draw(layer, [[20, 10], [20, 50]])
    draw(layer, [[10, 30], [30, 30]])
    assert _cell(widget, 0, "long (mm)") == "32.0"
    viewer_2d.add_image(np.zeros((64, 80)), name="fine", scale=(0.25, 0.25))
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("fine"))
    # Another scan's lesions are let go, not measured again with this scan's pixels.
    assert widget.recist_layer() is None
    assert float(layer.features["length_mm"].max()) == 32.0
    other = widget.new_recist_layer()
    assert widget.recist_layer() is other
    widget.recist_combo.setCurrentIndex(widget.recist_combo.findText(layer.name))
    assert widget.recist_layer() is layer and widget.model.rowCount() == 1
    # Picking them by hand picks their own scan again.
    assert widget.image_layer().name != "fine"
    assert _cell(widget, 0, "long (mm)") == "32.0"

    labels = np.zeros((64, 80), np.int32)
    labels[10:30, 10:50] = 1
    viewer_2d.add_labels(labels, name="truth a", scale=(0.5, 0.8))
    viewer_2d.add_labels(labels * 0, name="empty", scale=(0.5, 0.8))
    widget.labels_combo.setCurrentIndex(widget.labels_combo.findText("truth a"))
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("ct"))
    qtbot.mouseClick(widget.simulate_button, LEFT)
    qtbot.waitUntil(lambda: "truth a RECIST" in [x.name for x in viewer_2d.layers],
                    timeout=10000)
    simulated = viewer_2d.layers["truth a RECIST"]
    assert widget.recist_layer() is simulated and simulated.nshapes == 2
    assert widget.lesions[0].long_mm == pytest.approx(np.hypot(19 * 0.5, 39 * 0.8), abs=0.5)


def test_import_export_and_deeplesion_buttons_with_file_dialogs(
    viewer_2d, qtbot, draw, tmp_path, monkeypatch, deeplesion_folder
):
    widget = _widget(viewer_2d)
    layer = widget.new_recist_layer()
    draw(layer, [[20, 10], [20, 50]])
    draw(layer, [[10, 30], [30, 30]])
    target = tmp_path / "mine.json"
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(target), "")))
    qtbot.mouseClick(widget.export_button, LEFT)
    table = read_recists(target)
    assert len(table) == 1 and table.recists[0].long_mm == pytest.approx(32.0)

    source = tmp_path / "other.csv"
    write_recists(source, RecistTable([Recist([[5, 5], [5, 25]], [[0, 15], [10, 15]],
                                              (0.5, 0.8))]))
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(source), "")))
    qtbot.mouseClick(widget.import_button, LEFT)
    imported = widget.recist_layer()
    assert imported.name == "other RECIST" and imported.nshapes == 2
    assert _cell(widget, 0, "long (mm)") == "16.0"

    viewer_2d.add_image(np.zeros((48, 64), np.float32), name="000001_01_01_109",
                        scale=(0.7, 0.7))
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("000001_01_01_109"))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(
        lambda *a, **k: (str(deeplesion_folder / "DL_info.csv"), "")))
    qtbot.mouseClick(widget.deeplesion_button, LEFT)
    rows = widget.recist_layer()
    assert rows.name == "000001_01_01_109 DeepLesion RECIST" and rows.nshapes == 4
    # Each line carries its row's split and key slice, as when the table is opened.
    assert list(rows.features["split"]) == ["train", "train", "val", "val"]
    assert set(rows.features["key_slice"]) == {109}

    # A cancelled dialog does nothing.
    n = len(viewer_2d.layers)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: ("", "")))
    qtbot.mouseClick(widget.import_button, LEFT)
    qtbot.mouseClick(widget.deeplesion_button, LEFT)
    assert len(viewer_2d.layers) == n


def test_reason_column_group_column_and_legend_are_visible(make_napari_viewer, qtbot, draw):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((64, 80), np.float32), name="ct", scale=(0.5, 0.8))
    widget = _widget(viewer)
    layer = widget.new_recist_layer()
    draw(layer, [[20, 10], [20, 50]])
    draw(layer, [[10, 25], [30, 35]])
    qtbot.wait(50)
    table = widget.table
    assert table.model().headerData(STATUS_COLUMN, Qt.Orientation.Horizontal) == "status"
    left = table.columnViewportPosition(STATUS_COLUMN)
    assert 0 <= left and left + 40 < table.viewport().width()
    assert "from perpendicular" in _cell(widget, 0, "status")
    assert "long axis" in widget.legend.text() and "short axis" in widget.legend.text()

    # Grouped lesions: the group in the table, the group colours in the legend.
    from napari_recist_seg.plugin.layer_units import META_KEY
    from napari_recist_seg.plugin.recist_layers import recolour, write_columns

    write_columns(layer, {"group": [2, 2]}, defaults={"group": -1})
    layer.metadata[META_KEY]["color_by"] = "group"
    recolour(layer)
    widget.sync()
    assert _cell(widget, 0, "group") == "2"
    assert "group 2" in widget.legend.text()


@pytest.mark.parametrize("zoom", [None, 1.0, 0.5])
def test_a_stray_click_with_the_line_tool_does_not_steal_the_next_axis(viewer_2d, qtbot,
                                                                       mouse_draw, zoom):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    widget = _widget(viewer_2d)
    layer = widget.new_recist_layer()
    layer.mode = "add_line"
    start_zoom = viewer_2d.scene.camera.zoom
    if zoom is not None:
        viewer_2d.scene.camera.zoom = zoom
        viewer_2d.screenshot(canvas_only=True)  # a drawn frame hands the zoom to the layer
    # A click without a drag: napari's line tool leaves a line of a few screen pixels, so
    # of several image pixels when zoomed out (about 9 here at zoom 0.5), reaching within
    # the long axis' pairing distance.
    at = tuple(layer.data_to_world(np.array([40.0, 40.0])))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=at))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=at))
    assert layer.nshapes == 1
    # The axes are drawn back at the first zoom, where a drag's end lies where it is let go.
    viewer_2d.scene.camera.zoom = start_zoom
    viewer_2d.screenshot(canvas_only=True)
    mouse_draw(layer, [20, 10], [20, 50])
    mouse_draw(layer, [10, 30], [30, 30])
    statuses = [_cell(widget, row, "status") for row in range(widget.model.rowCount())]
    assert "ok" in statuses
    assert statuses.count("ok") == 1
    assert any(s.startswith("a click rather than a drawn axis") for s in statuses)


def test_a_lesion_reaching_past_the_image_says_so_and_export_warns(viewer_2d, qtbot, draw,
                                                                 tmp_path, monkeypatch,
                                                                 notifications):
    widget = _widget(viewer_2d)
    qtbot.mouseClick(widget.new_button, LEFT)
    layer = widget.recist_layer()
    cols = viewer_2d.layers["ct"].data.shape[-1]
    draw(layer, [[20, 10], [20, 50]])
    draw(layer, [[10, 30], [30, 30]])
    assert _cell(widget, 0, "status") == "ok"
    draw(layer, [[20, cols - 20], [20, cols + 30]])  # its far end beyond the right edge
    draw(layer, [[10, cols], [30, cols]])
    assert _cell(widget, 1, "status") == "endpoint outside the image"
    assert "2 lesion(s), 1 valid." in widget.status.text()

    target = tmp_path / "out.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(target), "")))
    qtbot.mouseClick(widget.export_button, LEFT)
    assert len(read_recists(target)) == 2  # written as drawn
    assert any(level == "warning" and "lesion(s) 1 have an endpoint outside 'ct'" in text
               for level, text in notifications)


def test_importing_onto_an_image_in_pixels_claims_no_pixel_size_for_it(
        make_napari_viewer, qtbot, tmp_path, monkeypatch, notifications):
    """A stack of slices of several pixel sizes is shown in pixels: lines imported onto it
    keep their own mm sizes, with no warning that they differ from a 1 mm image."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 48, 64), np.float32), name="key slices")
    source = tmp_path / "drawn.csv"
    write_recists(source, RecistTable([Recist([[5, 5], [5, 25]], [[0, 15], [10, 15]],
                                              (0.8, 0.8))], slices=[1]))
    widget = _widget(viewer)
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(source), "")))
    qtbot.mouseClick(widget.import_button, LEFT)
    assert widget.recist_layer().nshapes == 2
    assert not [t for level, t in notifications if "differs from the image" in t]

    # On an image in mm of another size, the difference is still pointed out.
    viewer.add_image(np.zeros((3, 48, 64), np.float32), name="scan", scale=(2.0, 0.5, 0.5),
                     units=("mm", "mm", "mm"))
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("scan"))
    qtbot.mouseClick(widget.import_button, LEFT)
    assert [t for level, t in notifications if "0.8 x 0.8 mm differs from the image's" in t]
