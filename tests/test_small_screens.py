"""The docks on a laptop's screen (1366 x 768): opened together they still fit, and the
parts a user reads are not pushed out of view."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-recist-seg"
SCREEN_HEIGHT = 768


@pytest.mark.parametrize("docks", [
    ("RECIST annotation", "Groups and pseudo-masks"),
    ("Training", "Compare models"),
    ("RECIST annotation", "Segment from RECIST"),
])
def test_two_docks_opened_together_fit_a_laptop_screen(make_napari_viewer, docks):
    # napari stacks docks opened one after another in its side column: docks that could not
    # shrink made the window taller than the screen, their lower buttons out of reach.
    viewer = make_napari_viewer()
    window = viewer.window._qt_window
    for name in docks:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    QApplication.processEvents()
    assert window.minimumSizeHint().height() < SCREEN_HEIGHT, docks


def test_the_segment_docks_model_list_takes_the_width_beside_its_button(make_napari_viewer,
                                                                      qtbot):
    viewer = make_napari_viewer(show=True)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment from RECIST")
    viewer.window._qt_window.resize(1366, SCREEN_HEIGHT)
    qtbot.waitUntil(lambda: widget.isVisible() and widget.model_combo.width() < 640)
    # Split evenly, "prompted (finished at epoch 1)" and "... epoch 2" both read
    # "prompted (finished".
    assert widget.model_combo.width() > 2 * widget.load_button.width()


@pytest.mark.parametrize("name", ["RECIST annotation", "Groups and pseudo-masks",
                                  "Compare models", "Segment from RECIST"])
def test_a_dock_opens_wide_enough_for_its_controls(make_napari_viewer, qtbot, name):
    # In its scroll area a dock could be made narrower than its buttons, hiding their ends
    # behind a sideways scroll bar.
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    area = widget.findChild(QScrollArea)
    qtbot.waitUntil(lambda: widget.isVisible() and area.viewport().width() > 0)
    # Once napari has laid the dock out, nothing is left to scroll to sideways.
    qtbot.waitUntil(lambda: area.horizontalScrollBar().maximum() == 0, timeout=3000)
    assert area.viewport().width() >= area.widget().minimumSizeHint().width()
