"""The plugin's docks by keyboard: Tab walks every control, out of tables too, and the
annotation shortcuts act only while their dock is open."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QApplication, QPushButton

from ._gui import click

PLUGIN = "napari-recist-seg"


def _tab_walk(start, steps: int = 120) -> list:
    """The widgets Tab gives focus to, from ``start``, as a keyboard user walks a dock."""
    from qtpy.QtTest import QTest

    start.setFocus(Qt.FocusReason.TabFocusReason)
    seen, widget = [], start
    for _ in range(steps):
        QTest.keyClick(widget, Qt.Key.Key_Tab)
        QApplication.processEvents()
        widget = start.window().focusWidget()
        if widget is None:
            break
        seen.append(widget)
    return seen


@pytest.mark.parametrize("dock, table, below", [
    ("RECIST annotation", "table", "export_button"),
    ("Training", "pairs", "start_button"),
])
def test_tab_leaves_a_table_for_the_controls_below(make_napari_viewer, dock, table, below):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((64, 64)), name="picture")
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, dock)
    view = getattr(widget, table)
    assert isinstance(view, QAbstractItemView)
    walked = _tab_walk(view)
    button = getattr(widget, below)
    assert isinstance(button, QPushButton)
    assert button in walked, f"Tab from the {table} never reached {below}"


def test_annotation_shortcuts_stop_when_the_dock_is_closed(make_napari_viewer, qtbot):
    from napari_recist_seg.plugin.widgets.recist_widget import SHORTCUTS

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64)), name="picture")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotation")
    press = viewer.window._qt_viewer._key_map_handler.press_key
    press(SHORTCUTS["draw"])
    layer = widget.recist_layer()
    assert layer is not None and layer.mode == "add_line"
    layer.mode = "pan_zoom"
    click(qtbot, dock.title.close_button)  # the dock's own x, as a user closes it
    qtbot.waitUntil(lambda: not widget.isVisible(), timeout=5000)
    n = len(viewer.layers)
    press(SHORTCUTS["draw"])
    assert layer.mode == "pan_zoom" and len(viewer.layers) == n
