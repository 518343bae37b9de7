"""The RECIST annotation widget with a real viewer: pairing, measuring, fixing, import/export."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_recist_seg.plugin.colours import AXIS_COLOURS, line_colours

PLUGIN = "napari-recist-seg"


def _widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotation")
    return widget


def _row(widget, row):
    """A table row as (lesion, slice, long, short, long px, short px, perp., status)."""
    model = widget.table.model()
    cells = {
        model.headerData(c, Qt.Orientation.Horizontal): model.index(row, c).data()
        for c in range(model.columnCount())
    }
    unit = model.unit
    return [cells[k] for k in ("lesion", "slice", f"long ({unit})", f"short ({unit})",
                                "long (px)", "short (px)", "perp. (deg)", "status")]


def _rows(widget):
    return widget.table.model().rowCount()


def test_two_lines_make_a_measured_lesion(viewer_2d, draw, mouse_draw, tmp_path):
    widget = _widget(viewer_2d)
    layer = widget.new_recist_layer()
    assert layer.name == "ct RECIST"
    np.testing.assert_allclose(layer.scale, (0.5, 0.8))
    draw(layer, [[10, 10], [10, 50]])  # 40 columns of 0.8 mm
    draw(layer, [[0, 30], [20, 30]])  # 20 rows of 0.5 mm
    assert layer.features["lesion_id"].tolist() == [0, 0]
    assert layer.features["axis"].tolist() == ["long", "short"]
    assert _rows(widget) == 1
    lesion_id, slice_, long_mm, short_mm, long_px, short_px, perp, status = _row(widget, 0)
    assert (lesion_id, slice_, long_mm, short_mm) == ("0", "", "32.0", "10.0")
    assert (long_px, short_px, perp, status) == ("40.0", "20.0", "0.0", "ok")
    np.testing.assert_allclose(layer.edge_color, line_colours(["long", "short"]))
    assert list(layer.text.values) == ["32.0 x 10.0 mm", ""]
    # The second lesion drawn with the mouse, short axis first: the longer line becomes its
    # long axis.
    mouse_draw(layer, [40, 60], [50, 60])
    mouse_draw(layer, [45, 55], [45, 75])
    np.testing.assert_allclose(layer.data[3], [[45, 55], [45, 75]], atol=0.5)
    assert layer.features["lesion_id"].tolist() == [0, 0, 1, 1]
    assert layer.features["axis"].tolist()[2:] == ["short", "long"]
    assert _row(widget, 1)[2:4] == ["16.0", "5.0"]
    assert AXIS_COLOURS["long"] != AXIS_COLOURS["short"]

    # A lone line is an incomplete lesion; a line far from it starts another one.
    draw(layer, [[30, 5], [30, 15]])
    assert _row(widget, 2)[-1] == "incomplete: draw the short axis"
    assert layer.text.values[4] == "8.0 mm"
    draw(layer, [[60, 60], [60, 75]])
    assert layer.features["lesion_id"].tolist() == [0, 0, 1, 1, 2, 3]
    assert [info.ok for info in widget.lesions] == [True, True, False, False]
    # Removing lines keeps the table in step.
    layer.selected_data = {4, 5}
    layer.remove_selected()
    assert _rows(widget) == 2

    # Export, then import: the same lesions in a new layer.
    path = widget.export_recist_file(tmp_path / "lesions.json")
    assert path is not None
    new = widget.import_recist_file(path)
    assert new is not layer and widget.recist_layer() is new

    def lines(shapes):
        keys = zip(shapes.features["lesion_id"], shapes.features["axis"])
        return {(int(i), a): np.asarray(d) for (i, a), d in zip(keys, shapes.data)}

    old_lines, new_lines = lines(layer), lines(new)
    assert old_lines.keys() == new_lines.keys()
    for key, pts in old_lines.items():
        np.testing.assert_allclose(new_lines[key], pts)
    np.testing.assert_allclose(new.scale, layer.scale)
    assert _row(widget, 0)[2:4] == ["32.0", "10.0"]


def test_stack_lesions_get_their_slice_and_rows_centre_them(viewer_3d, draw):
    widget = _widget(viewer_3d)
    layer = widget.new_recist_layer()
    assert layer.ndim == 3
    draw(layer, [[3, 10, 10], [3, 10, 30]])
    draw(layer, [[3, 5, 20], [3, 15, 20]])
    draw(layer, [[1, 40, 40], [1, 40, 60]])  # another slice: a new lesion
    draw(layer, [[1, 35, 50], [1, 45, 50]])
    assert layer.features["lesion_id"].tolist() == [0, 0, 1, 1]
    assert _row(widget, 0)[:4] == ["0", "3", "14.0", "7.0"]
    assert _row(widget, 1)[1] == "1"
    assert all(info.ok for info in widget.lesions)
    widget._on_cell_clicked(1)
    assert set(layer.selected_data) == {2, 3}
    assert viewer_3d.dims.point[0] == pytest.approx(1 * 2.5)
    camera = viewer_3d.scene.camera if hasattr(viewer_3d, "scene") else viewer_3d.camera
    np.testing.assert_allclose(camera.center[-2:], (40 * 0.7, 50 * 0.7))


def test_length_labels_show_on_small_layers_and_start_hidden_on_large_ones(viewer_3d, draw):
    from napari.layers import Layer

    from napari_recist_seg.core.recist import Recist, recists_to_shapes
    from napari_recist_seg.plugin.recist_layers import LABEL_LIMIT, recist_layer_tuple

    widget = _widget(viewer_3d)
    small = widget.new_recist_layer()
    draw(small, [[3, 10, 10], [3, 10, 30]])
    draw(small, [[3, 5, 20], [3, 15, 20]])
    assert small.text.visible and widget.labels_check.isChecked()
    assert small.features["measurement"].tolist() == ["14.0 x 7.0 mm", ""]

    # One lesion more than the limit allows labels for: they start hidden, and say so.
    n = LABEL_LIMIT // 2 + 1
    recists = [Recist([[10, 10], [10, 30]], [[5, 20], [15, 20]])] * n
    data, features = recists_to_shapes(recists, slices=[i % 5 for i in range(n)])
    large = viewer_3d.add_layer(
        Layer.create(*recist_layer_tuple(data, features, (2.5, 0.7, 0.7), "many"))
    )
    widget.recist_combo.set_layer(large)
    assert len(widget.lesions) == n
    assert not large.text.visible and not widget.labels_check.isChecked()
    assert "Lengths on lines are off" in widget.status.text()
    # The lengths are still there, for the table and for when labels are turned on.
    assert large.features["measurement"].tolist()[:2] == ["14.0 x 7.0 mm", ""]

    widget.labels_check.setChecked(True)
    assert large.text.visible
    assert "Lengths on lines are off" not in widget.status.text()
    large.text.visible = False  # napari's own "display text" box
    assert not widget.labels_check.isChecked()

    widget.recist_combo.set_layer(small)
    assert widget.labels_check.isChecked() and not large.text.visible


def test_rule_violation_is_flagged_and_make_perpendicular_fixes_it(
    viewer_2d, draw, tmp_path, notifications
):
    widget = _widget(viewer_2d)
    layer = widget.new_recist_layer()
    draw(layer, [[20, 10], [20, 50]])
    draw(layer, [[10, 25], [30, 35]])  # well off perpendicular (in mm)
    assert "from perpendicular" in _row(widget, 0)[-1]
    # The reason is also in full below the table, whose column may be cut.
    assert "Lesion 0: " in widget.status.text() and "from perpendicular" in widget.status.text()
    # A picture's lesions have no slice: that column is hidden.
    assert widget.table.isColumnHidden(1)
    before = np.array(layer.data[1])
    widget.table.selectRow(0)
    widget._on_cell_clicked(0)
    widget.make_perpendicular()
    after = np.array(layer.data[1])
    assert _row(widget, 0)[-1] == "ok"
    assert float(_row(widget, 0)[6]) == pytest.approx(0.0, abs=0.05)
    np.testing.assert_allclose(after.mean(axis=0), before.mean(axis=0))
    spacing = np.array([0.5, 0.8])
    np.testing.assert_allclose(
        np.linalg.norm((after[1] - after[0]) * spacing),
        np.linalg.norm((before[1] - before[0]) * spacing),
    )
    np.testing.assert_allclose(layer.data[0], [[20, 10], [20, 50]])  # long axis untouched
    assert widget.undo_button.isEnabled()
    widget.undo()
    np.testing.assert_allclose(layer.data[1], before)
    assert "from perpendicular" in _row(widget, 0)[-1]
    # Off perpendicular, it is still saved as drawn (work in progress); training and
    # prediction read the file with the rules and refuse the row.
    assert widget.export_recist_file(tmp_path / "x.csv") == str(tmp_path / "x.csv")
    from napari_recist_seg.data.recist_files import read_recists

    with pytest.raises(ValueError, match="from perpendicular"):
        read_recists(tmp_path / "x.csv")

    # A lone line cannot be exported: nothing is written, the reason is shown.
    widget.make_perpendicular()
    draw(layer, [[50, 60], [50, 75]])
    assert widget.export_recist_file(tmp_path / "y.csv") is None
    assert not (tmp_path / "y.csv").exists()
    assert notifications[-1][0] == "error" and "no short axis" in notifications[-1][1]


def test_no_image_layer_shows_a_notification_and_changes_nothing(
    make_napari_viewer, notifications
):
    viewer = make_napari_viewer()
    # Someone else's Shapes layer is not taken over as a RECIST layer.
    boxes = viewer.add_shapes([np.array([[0, 0], [10, 10]])], shape_type="rectangle",
                              edge_color="red", name="boxes")
    widget = _widget(viewer)
    assert widget.recist_layer() is None
    assert widget.new_recist_layer() is None
    widget.start_drawing()
    widget.make_perpendicular()
    widget.export_recist_file("unused.csv")
    assert list(viewer.layers) == [boxes]
    assert list(boxes.features.columns) == [] and np.all(boxes.text.values == "")
    np.testing.assert_allclose(boxes.edge_color, [[1, 0, 0, 1]])
    errors = [text for level, text in notifications if level == "error"]
    assert len(errors) == 4
    assert "choose an image layer" in errors[0]


def test_simulate_recist_from_labels_and_import_deeplesion_rows(
    viewer_2d, qtbot, deeplesion_folder, notifications
):
    labels = np.zeros((64, 80), dtype=np.int32)
    rr, cc = np.mgrid[:64, :80]
    labels[(rr - 20) ** 2 / 100 + (cc - 20) ** 2 / 225 <= 1] = 3
    labels[(rr - 45) ** 2 + (cc - 60) ** 2 <= 36] = 5
    viewer_2d.add_labels(labels, name="truth", scale=(0.5, 0.8))
    widget = _widget(viewer_2d)
    widget.simulate_from_labels()
    qtbot.waitUntil(lambda: widget.recist_layer() is not None, timeout=10000)
    layer = widget.recist_layer()
    assert layer.name == "truth RECIST"
    assert sorted(set(layer.features["lesion_id"])) == [2, 4]
    assert all(info.ok for info in widget.lesions)
    np.testing.assert_allclose(layer.scale, (0.5, 0.8))

    # DeepLesion rows go onto the image whose name is their File_name.
    viewer = viewer_2d
    viewer.add_image(np.zeros((48, 64), np.float32), name="000001_01_01_109", scale=(0.7, 0.7))
    widget.image_combo.set_layer(viewer.layers["000001_01_01_109"])
    layer = widget.import_deeplesion(deeplesion_folder / "DL_info.csv")
    assert layer is not None and len(layer.data) == 4
    np.testing.assert_allclose(layer.data[0], [[20, 10], [20, 40]])
    assert [info.lesion_id for info in widget.lesions] == [0, 1]
    assert widget.lesions[0].long_mm == pytest.approx(30 * 0.7)
    viewer.layers["000001_01_01_109"].name = "something else"
    n_layers = len(viewer.layers)
    assert widget.import_deeplesion(deeplesion_folder / "DL_info.csv") is None
    assert len(viewer.layers) == n_layers
    assert "no row" in notifications[-1][1]


def test_a_layer_emptied_by_a_script_is_an_empty_table_and_can_be_drawn_on_again(viewer_2d,
                                                                                 draw):
    # napari keeps a layer's feature rows when a script sets ``layer.data = []``.
    widget = _widget(viewer_2d)
    layer = widget.new_recist_layer()
    draw(layer, [[10, 10], [10, 50]])
    draw(layer, [[0, 30], [20, 30]])
    assert _rows(widget) == 1
    layer.data = []
    assert _rows(widget) == 0 and len(layer.features) == 0
    assert widget.status.text().startswith("0 lesion(s)")
    draw(layer, [[10, 10], [10, 50]])
    draw(layer, [[0, 30], [20, 30]])
    assert layer.features["lesion_id"].tolist() == [0, 0]
    assert _row(widget, 0)[2:4] == ["32.0", "10.0"]
