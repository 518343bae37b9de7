"""Driving Qt controls as a user does: mouse clicks, typing, picking list entries."""

from __future__ import annotations

from qtpy.QtCore import Qt

from napari_recist_seg.learning.model_kinds import MODEL_KINDS


def click(qtbot, widget) -> None:
    """A left click in the middle of ``widget`` (a button, a check box...)."""
    assert widget.isEnabled(), f"{widget.text() if hasattr(widget, 'text') else widget} is disabled"
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, pos=widget.rect().center())


def set_checked(qtbot, box, checked: bool) -> None:
    """Click a check box (or a toggle button) until it is ``checked``."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QCheckBox, QRadioButton

    if box.isChecked() != checked:
        if isinstance(box, QCheckBox | QRadioButton):  # on its indicator, at the left
            qtbot.mouseClick(box, Qt.MouseButton.LeftButton, pos=QPoint(8, box.height() // 2))
        else:
            click(qtbot, box)
    assert box.isChecked() == checked


def _replace_text(qtbot, edit, text: str) -> None:
    # Ctrl+A then typing, as a user replaces a field's text.
    qtbot.keyClick(edit, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(edit, Qt.Key.Key_Backspace)
    qtbot.keyClicks(edit, str(text))
    qtbot.keyClick(edit, Qt.Key.Key_Return)


def type_text(qtbot, edit, text: str) -> None:
    """Replace the text of a line edit by typing ``text``, then Enter."""
    _replace_text(qtbot, edit, text)
    assert edit.text() == str(text), (edit.text(), text)


def type_number(qtbot, spin, value) -> None:
    """Type ``value`` into a spin box, as a user replacing its text."""
    _replace_text(qtbot, spin.lineEdit(), value)
    assert abs(spin.value() - float(value)) < 1e-9, (spin.value(), value)


def pick(combo, text: str) -> None:
    """Choose the entry ``text`` of a combo box, as picking it from the open list does."""
    index = combo.findText(text)
    entries = [combo.itemText(i) for i in range(combo.count())]
    assert index >= 0, f"{text!r} is not in the list {entries}"
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def fill_training_form(qtbot, widget, out, kinds=("multitask",), process=False, epochs=1,
                       batch=4, size=32) -> None:
    """Fill the Training widget's settings form by clicks and typing."""
    form = widget.form
    for kind in MODEL_KINDS:
        set_checked(qtbot, form[kind].native, kind in kinds)
    type_number(qtbot, form.input_size.native, size)
    type_number(qtbot, form.epochs.native, epochs)
    type_number(qtbot, form.batch_size.native, batch)
    pick(form.device.native, "cpu")
    type_text(qtbot, form.out_dir.line_edit.native, str(out))
    set_checked(qtbot, form.separate_process.native, process)


def trigger_menu(viewer, *path: str) -> None:
    """Choose a menu entry of the viewer's window, e.g. ("File", "Open Sample", ...)."""
    menu = viewer.window._qt_window.menuBar()
    for depth, text in enumerate(path):
        actions = {a.text().replace("&", ""): a for a in menu.actions()}
        assert text in actions, f"no {text!r} in the menu: {sorted(actions)}"
        action = actions[text]
        if depth == len(path) - 1:
            assert action.isEnabled(), f"menu entry {text!r} is disabled"
            action.trigger()
            return
        menu = action.menu()
        menu.aboutToShow.emit()  # napari fills some menus as they open


def open_dock(viewer, title: str, widget_class):
    """Open a widget of the plugin from the Plugins menu; the widget."""
    trigger_menu(viewer, "Plugins", "RECIST Segmentation", title)
    found = viewer.window._qt_window.findChildren(widget_class)
    assert found, f"no {widget_class.__name__} after choosing {title!r}"
    return found[-1]
