"""A RECIST table over several scans, opened in napari or imported onto one scan: each
lesion lands on its own scan, where napari shows it (scale and origin)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from ._recist_table_data import recist_csv, write_nifti

PLUGIN = "napari-recist-seg"
LEFT = Qt.MouseButton.LeftButton
ORIGINS = {"a.nii.gz": (-50.0, 20.0, 7.5), "b.nii.gz": (10.0, -120.0, -300.0)}


def _scans(folder):
    """Two 9-slice scans with origins of their own and a table of 2 + 1 lesions on them."""
    import SimpleITK as sitk

    for name, origin in ORIGINS.items():
        write_nifti(folder / name, spacing=(0.7, 0.7, 2.5))
        scan = sitk.ReadImage(str(folder / name))
        scan.SetOrigin(origin)
        sitk.WriteImage(scan, str(folder / name))
    rows = [("a.nii.gz", 3, (20, 24, 6)), ("a.nii.gz", 6, (40, 30, 5)),
            ("b.nii.gz", 4, (30, 40, 7))]
    return recist_csv(folder / "lesions.csv", rows)


def _world(layer, point):
    return np.asarray(layer.data_to_world(np.asarray(point, float)))


def test_opening_a_table_puts_each_scans_lesions_on_that_scan(make_napari_viewer, tmp_path):
    table = _scans(tmp_path)
    viewer = make_napari_viewer()
    for name in ORIGINS:
        viewer.open(str(tmp_path / name), plugin=PLUGIN)
    viewer.open(str(table), plugin=PLUGIN)
    a, b = viewer.layers["a RECIST"], viewer.layers["b RECIST"]
    assert (a.nshapes, b.nshapes) == (4, 2)
    for recist, scan in ((a, viewer.layers["a"]), (b, viewer.layers["b"])):
        np.testing.assert_allclose(recist.scale, scan.scale)
        np.testing.assert_allclose(recist.translate, scan.translate)
        assert tuple(str(u) for u in recist.units) == tuple(str(u) for u in scan.units)
        # A line's first point is where the same voxel of the scan is.
        first = recist.data[0][0]
        np.testing.assert_allclose(_world(recist, first), _world(scan, first))
    # The lesions keep their slices and their mm lengths from the scans' headers.
    assert sorted({int(p[0]) for line in a.data for p in line}) == [3, 6]
    assert a.features["lesion_id"].tolist()[:2] == [0, 0]


def test_a_table_of_many_images_opens_as_one_layer(make_napari_viewer, tmp_path,
                                                   notifications):
    from napari_recist_seg.plugin.reader import MAX_IMAGE_LAYERS

    rows = [(f"img{i}.png", None, (20, 20, 5)) for i in range(MAX_IMAGE_LAYERS + 1)]
    table = recist_csv(tmp_path / "many.csv", rows)
    viewer = make_napari_viewer()
    viewer.open(str(table), plugin=PLUGIN)
    (layer,) = viewer.layers
    assert layer.name == "many RECIST" and layer.nshapes == 2 * len(rows)
    assert any("names 21 images" in text for level, text in notifications if level == "warning")


def _recist_widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotation")
    return widget


def _import(widget, qtbot, monkeypatch, path):
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(path), "")))
    qtbot.mouseClick(widget.import_button, LEFT)


def test_import_adds_only_the_chosen_scans_lesions(make_napari_viewer, qtbot, tmp_path,
                                                   monkeypatch, notifications):
    table = _scans(tmp_path)
    viewer = make_napari_viewer()
    for name in ORIGINS:
        viewer.open(str(tmp_path / name), plugin=PLUGIN)
    widget = _recist_widget(viewer)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("b"))
    _import(widget, qtbot, monkeypatch, table)
    layer = widget.recist_layer()
    assert layer.nshapes == 2 and set(layer.features["lesion_id"]) == {2}
    np.testing.assert_allclose(layer.translate, viewer.layers["b"].translate)
    assert any("1 of the 3 lesions" in text for _, text in notifications)

    # A table of other scans only: refused, nothing added.
    other = recist_csv(tmp_path / "other.csv", [("c.nii.gz", 1, (20, 20, 5)),
                                                ("d.nii.gz", 1, (20, 20, 5))])
    n = len(viewer.layers)
    _import(widget, qtbot, monkeypatch, other)
    assert len(viewer.layers) == n
    assert notifications[-1][0] == "error" and "none of them 'b'" in notifications[-1][1]

    # A lesion on a slice the scan does not have: refused, naming it.
    outside = recist_csv(tmp_path / "outside.csv", [("b.nii.gz", 12, (20, 20, 5))])
    _import(widget, qtbot, monkeypatch, outside)
    assert len(viewer.layers) == n
    assert notifications[-1][0] == "error"
    assert "lesion 0 of outside.csv is on slice 12" in notifications[-1][1]
    assert "slices 0 to 8" in notifications[-1][1]


@pytest.mark.parametrize("named", ["elsewhere.nii.gz", ""])
def test_import_of_one_other_image_still_adds_its_lesions(make_napari_viewer, qtbot, tmp_path,
                                                          monkeypatch, notifications, named):
    _scans(tmp_path)
    table = recist_csv(tmp_path / "one.csv", [(named, 2, (20, 20, 5))])
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "a.nii.gz"), plugin=PLUGIN)
    widget = _recist_widget(viewer)
    _import(widget, qtbot, monkeypatch, table)
    assert widget.recist_layer().nshapes == 2
    warned = any("they were added to 'a'" in text for _, text in notifications)
    assert warned == bool(named)


def test_lesions_drawn_on_a_scan_save_as_a_table_that_trains_as_it_is(make_napari_viewer,
                                                                      qtbot, tmp_path, draw):
    import napari

    from napari_recist_seg.data.recist_files import read_recists
    from napari_recist_seg.data.recist_sources import read_lesion_table

    _scans(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "b.nii.gz"), plugin=PLUGIN)
    widget = _recist_widget(viewer)
    layer = widget.new_recist_layer()
    draw(layer, [[4, 30, 20], [4, 30, 50]])
    draw(layer, [[4, 20, 35], [4, 40, 35]])
    # Saved beside the scan: the table names it, and reads as a lesion table.
    napari.save_layers(str(tmp_path / "drawn.csv"), [layer], plugin=PLUGIN)
    (row,) = read_lesion_table(tmp_path / "drawn.csv").rows
    assert row.image == "b.nii.gz" and row.slice == 4
    assert row.recist.long_mm == pytest.approx(30 * 0.7, rel=1e-4)
    # Saved elsewhere: the scan's file name, found with --images.
    (tmp_path / "elsewhere").mkdir()
    napari.save_layers(str(tmp_path / "elsewhere" / "drawn.csv"), [layer], plugin=PLUGIN)
    assert read_recists(tmp_path / "elsewhere" / "drawn.csv").images == ["b.nii.gz"]


def test_lines_saved_away_from_their_scan_reopen_on_it(make_napari_viewer, tmp_path, draw,
                                                       notifications):
    import napari

    _scans(tmp_path)
    viewer = make_napari_viewer()
    scan = viewer.open(str(tmp_path / "b.nii.gz"), plugin=PLUGIN)[0]
    layer = _recist_widget(viewer).new_recist_layer()
    draw(layer, [[4, 30, 20], [4, 30, 50]])
    draw(layer, [[4, 20, 35], [4, 40, 35]])
    (tmp_path / "elsewhere").mkdir()
    napari.save_layers(str(tmp_path / "elsewhere" / "drawn.csv"), [layer], plugin=PLUGIN)
    (reopened,) = viewer.open(str(tmp_path / "elsewhere" / "drawn.csv"), plugin=PLUGIN)
    # No scan beside the file: the placement saved with the lines puts them on the scan.
    np.testing.assert_allclose(reopened.scale, scan.scale)
    np.testing.assert_allclose(reopened.translate, scan.translate)
    assert tuple(str(u) for u in reopened.units) == tuple(str(u) for u in scan.units)
    for old, new in zip(layer.data, reopened.data):
        np.testing.assert_allclose(_world(reopened, new[0]), _world(layer, old[0]), atol=1e-6)
    assert reopened.features["length_mm"].max() == pytest.approx(30 * 0.7, rel=1e-4)
    # Saved again, the file keeps one placement (not the reopened layer's copy as well).
    napari.save_layers(str(tmp_path / "elsewhere" / "again.csv"), [reopened], plugin=PLUGIN)
    lines = (tmp_path / "elsewhere" / "again.csv").read_text().splitlines()
    header = next(line for line in lines if not line.startswith("#")).split(",")
    assert header.count("layer_scale") == 1 and header.count("layer_origin") == 1
    assert not [text for level, text in notifications if level == "error"]


def test_a_lesion_drawn_among_a_table_s_keeps_their_image_when_saved(make_napari_viewer,
                                                                    qtbot, tmp_path, draw):
    import napari

    from napari_recist_seg.data.recist_files import read_recists

    table = _scans(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "b.nii.gz"), plugin=PLUGIN)
    viewer.open(str(table), plugin=PLUGIN)
    layer = viewer.layers["b RECIST"]
    widget = _recist_widget(viewer)
    assert widget.recist_layer() is layer
    draw(layer, [[2, 30, 20], [2, 30, 50]])
    draw(layer, [[2, 20, 35], [2, 40, 35]])
    assert layer.features["image"].tolist() == ["b.nii.gz"] * 4
    # Saved beside the scan, it names one image and opens again as one layer.
    napari.save_layers(str(tmp_path / "b_lesions.csv"), [layer], plugin=PLUGIN)
    assert read_recists(tmp_path / "b_lesions.csv").images == ["b.nii.gz"] * 2
    before = len(viewer.layers)
    viewer.open(str(tmp_path / "b_lesions.csv"), plugin=PLUGIN)
    assert len(viewer.layers) == before + 1 and viewer.layers[-1].nshapes == 4
