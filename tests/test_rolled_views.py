"""The RECIST dock with napari's views other than the axial slice in 2D: the axes rolled
(Roll dimensions), transposed, and the 3D view, each chosen with napari's own buttons."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.core.annotation import ACROSS_SLICES
from napari_recist_seg.plugin.widgets._common import viewer_camera
from napari_recist_seg.plugin.widgets.recist_widget import SHORTCUTS

from ._gui import click
from .test_recist_widget_clicks import _cell, _click_row

PLUGIN = "napari-recist-seg"
SCALE = (5.0, 0.7, 0.7)  # 5 mm slices of 0.7 mm pixels


@pytest.fixture
def viewer(make_napari_viewer):
    """A viewer with a small CT volume (8 slices of 40 by 48 pixels) and a soft-tissue box."""
    viewer = make_napari_viewer()
    volume = np.full((8, 40, 48), -1000.0, dtype=np.float32)
    volume[2:7, 10:30, 12:36] = 40.0
    viewer.add_image(volume, name="ct", scale=SCALE)
    return viewer


def _dock(viewer, qtbot):
    """The RECIST dock with a new RECIST layer made by its New button."""
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotation")
    click(qtbot, widget.new_button)
    return widget


def _buttons(viewer):
    return viewer.window._qt_viewer.viewerButtons




def _drag_line(viewer, layer, start, end):
    """Drag a line with the layer's line tool between two points of the data (all axes, as
    the canvas gives them in the view shown), with napari's own mouse callbacks."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    shown = {"dims_displayed": list(viewer.dims.displayed)}
    w0 = tuple(layer.data_to_world(np.asarray(start, dtype=float)))
    w1 = tuple(layer.data_to_world(np.asarray(end, dtype=float)))
    mouse_press_callbacks(
        layer, read_only_mouse_event(type="mouse_press", position=w0, **shown))
    mouse_move_callbacks(layer, read_only_mouse_event(
        type="mouse_move", is_dragging=True, position=w1, **shown))
    mouse_release_callbacks(
        layer, read_only_mouse_event(type="mouse_release", position=w1, **shown))


# -- lines drawn with the axes rolled ---------------------------------------------------------
def test_lines_drawn_across_slices_are_not_measured_and_drawing_there_warns(
        viewer, qtbot, notifications, draw):
    widget = _dock(viewer, qtbot)
    layer = widget.recist_layer()
    click(qtbot, _buttons(viewer).rollDimsButton)
    assert tuple(viewer.dims.displayed) == (0, 1)  # slices by rows: not an axial slice

    click(qtbot, widget.draw_button)
    assert layer.mode == "add_line"  # drawing stays possible, the view stays as it is
    assert tuple(viewer.dims.displayed) == (0, 1)
    assert "not an axial slice" in widget.status.text()
    assert [t for level, t in notifications
            if level == "warning" and "Roll dimensions" in t and "axial" in t]

    # The column's slider gives the lines' column, as the canvas does.
    viewer.dims.set_point(2, 24 * SCALE[2])
    # Exactly along the rows of slice 4 (21 mm): on one axial slice, so measured.
    draw(layer, [[4, 5, 24], [4, 35, 24]])
    # 5 slices (25 mm) straight across slices, without a step in rows or columns: before, it
    # read "0.0 mm" and "a click rather than a drawn axis".
    _drag_line(viewer, layer, [1.5, 20, 24], [6.5, 20, 24])
    # Across slices and along the rows: 29.0 mm in space, not the 21.0 mm of its rows.
    _drag_line(viewer, layer, [2, 5, 24], [6, 35, 24])
    assert widget.model.rowCount() == 3
    assert _cell(widget, 0, "status") == "incomplete: draw the short axis"
    assert _cell(widget, 0, "long (mm)") == "21.0"
    for row in (1, 2):
        assert _cell(widget, row, "status") == ACROSS_SLICES
        assert _cell(widget, row, "long (mm)") in ("", None)
    labels = [str(t) for t in layer.text.values]
    assert labels == ["21.0 mm", "", ""]
    assert "0 valid" in widget.status.text()


def test_drawing_in_a_transposed_axial_view_measures_and_does_not_warn(
        viewer, qtbot, notifications):
    widget = _dock(viewer, qtbot)
    layer = widget.recist_layer()
    click(qtbot, _buttons(viewer).transposeDimsButton)
    assert tuple(viewer.dims.displayed) == (2, 1)  # still the axial slice, turned
    click(qtbot, widget.draw_button)
    assert layer.mode == "add_line"
    assert not [t for level, t in notifications if "Draw lesion" in t]
    viewer.dims.set_point(0, 4 * SCALE[0])
    _drag_line(viewer, layer, [4, 20, 12], [4, 20, 36])
    _drag_line(viewer, layer, [4, 10, 24], [4, 30, 24])
    assert _cell(widget, 0, "status") == "ok"
    assert (_cell(widget, 0, "long (mm)"), _cell(widget, 0, "short (mm)")) == ("16.8", "14.0")


# -- going to a lesion from the table in every layout -----------------------------------------
def _two_lesions(widget, draw):
    """Two valid lesions drawn on axial slices; the world point of each one's axes' crossing."""
    layer = widget.recist_layer()
    draw(layer, [[2, 20, 10], [2, 20, 40]])
    draw(layer, [[2, 10, 25], [2, 30, 25]])
    draw(layer, [[6, 8, 30], [6, 8, 46]])
    draw(layer, [[6, 2, 38], [6, 14, 38]])
    assert [_cell(widget, row, "status") for row in (0, 1)] == ["ok", "ok"]
    return [np.multiply([2, 20, 25], SCALE), np.multiply([6, 8, 38], SCALE)]


def _shown_at(viewer, world):
    """Whether the sliders and the camera are on ``world`` in the viewer's current layout."""
    dims, camera = viewer.dims, viewer_camera(viewer)
    hidden = [np.isclose(dims.point[a], world[a], atol=SCALE[a] / 2) for a in dims.not_displayed]
    centre = np.asarray(camera.center)[-dims.ndisplay:]
    return all(hidden) and np.allclose(centre, [world[a] for a in dims.displayed], atol=1e-6)


def test_a_row_click_goes_to_the_lesion_with_the_axes_rolled(viewer, qtbot, draw):
    widget = _dock(viewer, qtbot)
    crossings = _two_lesions(widget, draw)
    click(qtbot, _buttons(viewer).rollDimsButton)
    assert tuple(viewer.dims.not_displayed) == (2,)  # the columns are on the slider
    for row in (1, 0):
        _click_row(qtbot, widget, row)
        assert _shown_at(viewer, crossings[row]), (row, viewer.dims.point,
                                                   viewer_camera(viewer).center)


def test_a_row_click_goes_to_the_lesion_in_3d(viewer, qtbot, draw):
    widget = _dock(viewer, qtbot)
    crossings = _two_lesions(widget, draw)
    click(qtbot, _buttons(viewer).ndisplayButton)
    assert viewer.dims.ndisplay == 3
    _click_row(qtbot, widget, 1)
    assert _shown_at(viewer, crossings[1]), viewer_camera(viewer).center
    # 3D with the axes rolled: the camera's centre is in the order of the displayed axes.
    click(qtbot, _buttons(viewer).rollDimsButton)
    assert tuple(viewer.dims.displayed) != (0, 1, 2)
    _click_row(qtbot, widget, 0)
    assert _shown_at(viewer, crossings[0]), viewer_camera(viewer).center
    # Back in 2D, the slider is on the lesion's slice.
    click(qtbot, _buttons(viewer).rollDimsButton)
    click(qtbot, _buttons(viewer).rollDimsButton)
    click(qtbot, _buttons(viewer).ndisplayButton)
    assert viewer.dims.ndisplay == 2 and tuple(viewer.dims.displayed) == (1, 2)
    _click_row(qtbot, widget, 1)
    assert _shown_at(viewer, crossings[1])


# -- Draw lesion in 3D ------------------------------------------------------------------------
def test_draw_lesion_in_3d_says_to_switch_to_2d(viewer, qtbot, notifications):
    widget = _dock(viewer, qtbot)
    layer = widget.recist_layer()
    click(qtbot, _buttons(viewer).ndisplayButton)
    assert viewer.dims.ndisplay == 3

    click(qtbot, widget.draw_button)
    assert layer.mode == "pan_zoom"  # napari refuses the line tool in 3D
    assert "switch the viewer to 2D" in widget.status.text()
    warned = [t for level, t in notifications if level == "warning" and "2D/3D button" in t]
    assert len(warned) == 1

    viewer.window._qt_viewer._key_map_handler.press_key(SHORTCUTS["draw"])
    assert len([t for level, t in notifications if "2D/3D button" in t]) == 2

    click(qtbot, _buttons(viewer).ndisplayButton)
    click(qtbot, widget.draw_button)
    assert layer.mode == "add_line"
    assert len([t for level, t in notifications if "2D/3D button" in t]) == 2


def test_draw_lesion_on_a_hidden_layer_says_to_show_it(viewer, qtbot, notifications):
    widget = _dock(viewer, qtbot)
    layer = widget.recist_layer()
    layer.visible = False  # its eye in the layer list
    click(qtbot, widget.draw_button)
    assert layer.mode == "pan_zoom"  # napari refuses the line tool on a hidden layer
    assert "is hidden; show it" in widget.status.text()
    assert [t for level, t in notifications if level == "warning" and "is hidden" in t]


def test_a_lesions_label_leaves_out_a_partner_without_length():
    from napari_recist_seg.plugin.recist_layers import measurement_labels

    # A short axis drawn across slices has no length: the long axis says its own alone.
    labels = measurement_labels([0, 0], ["long", "short"], [21.0, float("nan")])
    assert labels == ["21.0 mm", ""]
    assert measurement_labels([0, 0], ["long", "short"], [21.0, 9.5]) == ["21.0 x 9.5 mm", ""]
