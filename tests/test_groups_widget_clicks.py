"""Every control of the Groups and pseudo-masks widget, used as a user does."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from napari_recist_seg.core.recist import Recist, recists_to_shapes
from napari_recist_seg.plugin.recist_layers import recist_layer_tuple
from napari_recist_seg.plugin.widgets.groups_widget import preview_name

PLUGIN = "napari-recist-seg"
LEFT = Qt.MouseButton.LeftButton


def _widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Groups and pseudo-masks")
    return widget


def _add(viewer, recists, name):
    from napari.layers import Layer

    data, features = recists_to_shapes(recists)
    return viewer.add_layer(
        Layer.create(*recist_layer_tuple(data, features, (0.5, 0.8), name, units=("mm", "mm")))
    )


def _lesions():
    small = [Recist([[8, 5 + 12 * i], [8, 11 + 12 * i]], [[6, 8 + 12 * i], [10, 8 + 12 * i]])
             for i in range(3)]
    large = [Recist([[45, 10 + 22 * i], [45, 30 + 22 * i]],
                    [[38, 20 + 22 * i], [52, 20 + 22 * i]]) for i in range(3)]
    return small + large


def _type(qtbot, spin, text):
    spin.selectAll()
    qtbot.keyClicks(spin, text)
    qtbot.keyClick(spin, Qt.Key.Key_Return)


def test_groups_controls_by_clicks_typing_and_picks(make_napari_viewer, ct_image, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(ct_image, name="ct", scale=(0.5, 0.8), units=("mm", "mm"))
    lone = _add(viewer, _lesions()[:1], "one lesion")
    layer = _add(viewer, _lesions(), "lesions")
    widget = _widget(viewer)
    widget.recist_combo.setCurrentIndex(widget.recist_combo.findText("one lesion"))
    assert widget.recist_layer() is lone
    widget.recist_combo.setCurrentIndex(widget.recist_combo.findText("lesions"))
    assert widget.recist_layer() is layer
    assert widget.axes.get_xlabel() == "long diameter (mm)"

    widget.features_combo.setCurrentIndex(widget.features_combo.findText("standardised"))
    _type(qtbot, widget.seed_spin, "7")
    assert widget.seed_spin.value() == 7
    _type(qtbot, widget.k_spin, "2")
    assert widget.k_spin.value() == 2
    qtbot.mouseClick(widget.run_button, LEFT)
    qtbot.waitUntil(lambda: "group" in layer.features and widget.run_button.isEnabled(),
                    timeout=20000)
    groups = layer.features["group"].to_numpy()[0::2]
    assert len(set(groups[:3])) == 1 and len(set(groups[3:])) == 1 and groups[0] != groups[3]
    assert layer.metadata["napari-recist-seg"]["grouping"]["k"] == 2

    _type(qtbot, widget.k_spin, "1")
    qtbot.mouseClick(widget.suggest_button, LEFT)
    # While K is being suggested, K-means cannot run with the K about to change.
    assert not widget.run_button.isEnabled() and not widget.k_spin.isEnabled()
    qtbot.waitUntil(lambda: widget.k_spin.value() >= 2 and widget.suggest_button.isEnabled(),
                    timeout=20000)
    assert widget.run_button.isEnabled() and widget.k_spin.isEnabled()
    assert "Suggested K=" in widget.status.text()

    # Clicking a point of the plot selects its lesion's lines.
    qtbot.waitUntil(lambda: len(widget._plot_ids) == 6, timeout=5000)
    widget.canvas.draw()
    x, y = widget.axes.transData.transform(widget._scatter.get_offsets()[3])
    ratio = widget.canvas.device_pixel_ratio
    pos = QPoint(int(round(x / ratio)), int(round(widget.canvas.height() - y / ratio)))
    qtbot.mouseClick(widget.canvas, LEFT, pos=pos)
    assert set(layer.selected_data) == {6, 7}  # the first of the large lesions, on top

    # Pseudo-masks: pick a method, preview by clicking, keep by clicking.
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("ct"))
    widget.method_combo.setCurrentIndex(widget.method_combo.findText("quarter_ellipse"))
    qtbot.mouseClick(widget.preview_button, LEFT)
    assert widget.preview_button.isChecked()
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=10000)
    preview = widget.preview_layer
    assert preview.name == preview_name("quarter_ellipse")
    assert sorted(np.unique(preview.data)) == list(range(7))
    assert [str(u) for u in preview.units] == ["millimeter", "millimeter"]
    qtbot.mouseClick(widget.keep_button, LEFT)
    assert preview.name == "pseudo-masks (quarter_ellipse)" and widget.preview_layer is None
    assert not widget.preview_button.isChecked()

    # Preview on, then off by a second click: the preview layer goes.
    qtbot.mouseClick(widget.preview_button, LEFT)
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=10000)
    second = widget.preview_layer
    qtbot.mouseClick(widget.preview_button, LEFT)
    assert second not in viewer.layers and preview in viewer.layers


def test_kept_pseudo_masks_save_on_the_scan_grid_after_the_scan_is_closed(
        make_napari_viewer, ct_image, qtbot, tmp_path):
    import napari
    import SimpleITK as sitk

    # One oblique CT slice as scanners export it: 3D with one plane, axes not the scanner's.
    scan = sitk.GetImageFromArray(ct_image[None].astype(np.int16))
    scan.SetSpacing((0.8, 0.5, 3.0))
    scan.SetOrigin((0.0, 0.0, 12.5))
    scan.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(scan, str(tmp_path / "ct.nii.gz"))
    viewer = make_napari_viewer(show=True)
    (image,) = viewer.open(str(tmp_path / "ct.nii.gz"), plugin=PLUGIN)
    _add(viewer, _lesions(), "lesions")
    widget = _widget(viewer)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText(image.name))
    qtbot.mouseClick(widget.preview_button, LEFT)
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=10000)
    preview = widget.preview_layer
    qtbot.mouseClick(widget.keep_button, LEFT)
    viewer.layers.remove(image)
    (path,) = napari.save_layers(str(tmp_path / "pseudo-masks.nii.gz"), [preview])
    back = sitk.ReadImage(path)
    assert back.GetSize() == (80, 64, 1)
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(scan, getter)())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back)[0], preview.data)


def test_closing_the_dock_removes_the_preview_it_no_longer_follows(make_napari_viewer,
                                                                   ct_image, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(ct_image, name="ct", scale=(0.5, 0.8), units=("mm", "mm"))
    layer = _add(viewer, _lesions(), "lesions")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Groups and pseudo-masks")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("ct"))
    qtbot.mouseClick(widget.preview_button, LEFT)
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=10000)
    preview = widget.preview_layer
    qtbot.mouseClick(dock.title.close_button, LEFT)  # the dock's own x
    qtbot.waitUntil(lambda: widget.parent() is None, timeout=5000)
    assert preview not in viewer.layers and not widget.preview_button.isChecked()
    # Editing the lines afterwards brings no preview back.
    layer.data = [np.asarray(d) + 1.0 for d in layer.data]
    qtbot.wait(500)
    assert all(not name.startswith("pseudo-masks") for name in
               (lyr.name for lyr in viewer.layers))


def _previewing(make_napari_viewer, ct_image, qtbot):
    """A CT image in mm, its RECIST layer and the Groups dock showing their pseudo-masks:
    (viewer, image, RECIST layer, widget)."""
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(ct_image, name="ct", scale=(0.5, 0.8), units=("mm", "mm"))
    layer = _add(viewer, _lesions(), "lesions")
    widget = _widget(viewer)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("ct"))
    qtbot.mouseClick(widget.preview_button, LEFT)
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=10000)
    return viewer, image, layer, widget


@pytest.mark.parametrize("renamed", [False, True])
def test_removing_the_image_stops_the_preview_and_says_so(make_napari_viewer, ct_image,
                                                          qtbot, renamed):
    viewer, image, _layer, widget = _previewing(make_napari_viewer, ct_image, qtbot)
    preview = widget.preview_layer
    if renamed:  # the preview knows its image, not just the name it had
        image.name = "ct renamed"
    viewer.layers.remove(image)
    assert preview not in viewer.layers and not widget.preview_button.isChecked()
    assert f"stopped: its image {image.name!r} was removed" in widget.status.text()


def test_a_preview_that_cannot_follow_an_edit_stops_and_says_why(make_napari_viewer,
                                                                 ct_image, qtbot):
    _viewer, image, layer, widget = _previewing(make_napari_viewer, ct_image, qtbot)
    # The picture's pixel size set after drawing: the lines now lie on another grid.
    image.scale = (0.02, 0.02)
    layer.data = [np.asarray(d) + 1.0 for d in layer.data]
    qtbot.waitUntil(lambda: not widget.preview_button.isChecked(), timeout=10000)
    assert widget.preview_layer is None
    assert widget.status.text().startswith("Pseudo-mask preview stopped: ")
    assert "grid" in widget.status.text()


def test_preview_follows_the_chosen_image_and_stops_with_its_recist_layer(
        make_napari_viewer, ct_image, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(ct_image, name="ct", scale=(0.5, 0.8), units=("mm", "mm"))
    layer = _add(viewer, _lesions(), "lesions")
    widget = _widget(viewer)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("ct"))
    qtbot.mouseClick(widget.preview_button, LEFT)
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=10000)

    def previews():
        return [lyr for lyr in viewer.layers if lyr.name.startswith("pseudo-masks")]

    # Another image of another size, on the same grid: one preview, of the new size.
    viewer.add_image(np.zeros((70, 90), np.float32), name="smaller", scale=(0.5, 0.8),
                     units=("mm", "mm"))
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("smaller"))
    qtbot.waitUntil(lambda: widget.preview_layer is not None
                    and widget.preview_layer.data.shape == (70, 90), timeout=10000)
    assert previews() == [widget.preview_layer] and widget.preview_button.isChecked()

    # The RECIST layer removed: no masks of lesions that no longer exist.
    viewer.layers.remove(layer)
    assert previews() == [] and not widget.preview_button.isChecked()
    assert "Pseudo-mask preview stopped: no RECIST layer" in widget.status.text()


def test_clicking_a_point_goes_to_its_lesions_slice(make_napari_viewer, qtbot):
    from napari.layers import Layer

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((5, 64, 96), np.float32), name="stack", scale=(2.5, 0.5, 0.8))
    # Lesions of distinct sizes, so that no two points of the plot coincide.
    recists = [Recist([[10 + 9 * i, 10], [10 + 9 * i, 16 + 5 * i]],
                      [[8 + 9 * i, 13 + 2.5 * i], [12 + 9 * i, 13 + 2.5 * i]]) for i in range(6)]
    slices = [0, 1, 2, 3, 4, 4]
    data, features = recists_to_shapes(recists, slices=slices)
    layer = viewer.add_layer(Layer.create(*recist_layer_tuple(
        data, features, (2.5, 0.5, 0.8), "lesions")))
    widget = _widget(viewer)
    assert widget.recist_layer() is layer
    _type(qtbot, widget.k_spin, "2")
    qtbot.mouseClick(widget.run_button, LEFT)
    qtbot.waitUntil(lambda: len(widget._plot_ids) == 6 and widget.run_button.isEnabled(),
                    timeout=20000)
    viewer.dims.set_point(0, 4 * 2.5)
    widget.canvas.draw()
    point = widget._plot_ids.index(1)  # the lesion on slice 1
    x, y = widget.axes.transData.transform(widget._scatter.get_offsets()[point])
    ratio = widget.canvas.device_pixel_ratio
    pos = QPoint(int(round(x / ratio)), int(round(widget.canvas.height() - y / ratio)))
    qtbot.mouseClick(widget.canvas, LEFT, pos=pos)
    assert set(layer.selected_data) == {2, 3}
    assert viewer.dims.point[0] == 2.5  # slice 1, where the lesion is
    centre = np.asarray(recists[1].centre) * (0.5, 0.8)
    from napari_recist_seg.plugin.widgets._common import viewer_camera

    np.testing.assert_allclose(viewer_camera(viewer).center[-2:], centre, atol=1.0)
