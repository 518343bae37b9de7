"""The comparison widget with a real viewer, driven the way a user drives it.

Every control is used through Qt: buttons are clicked, the threshold typed, combo entries
picked, model ticks clicked. Most tests use models with known outputs (``_compare_stubs``);
the untrained checkpoints of the test input size (32 pixels) check the loading and the
plumbing with real networks, not the quality of their masks.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QStyle, QStyleOptionViewItem

from napari_recist_seg.learning.report import MODEL_COLOURS
from napari_recist_seg.plugin.comparison import ID_COLUMNS
from napari_recist_seg.plugin.layer_units import META_KEY
from napari_recist_seg.plugin.model_registry import MODEL_REGISTRY
from napari_recist_seg.plugin.training_job import prepare_torch_import
from napari_recist_seg.plugin.widgets._common import viewer_camera
from napari_recist_seg.plugin.widgets.compare_widget import (
    MODEL_COLUMN_PX,
    grid_shape,
    metric_titles,
    prediction_name,
)

from ._compare_stubs import ConstantModel, RampModel
from ._gui import pick, set_checked
from ._learning_data import crop_preprocessing, quick, saved_model, whole_preprocessing

PLUGIN = "napari-recist-seg"
LEFT = Qt.MouseButton.LeftButton


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    # Earlier tests may have drawn with Mesa: the models' imports must go the plugin's way.
    prepare_torch_import()
    root = tmp_path_factory.mktemp("compare-models")
    with quick():
        return {
            "a1": saved_model(root / "a1", "a1", in_channels=1,
                              preprocessing=crop_preprocessing()),
            "multitask": saved_model(root / "multitask", "multitask", in_channels=1, n_groups=2,
                                     preprocessing=crop_preprocessing()),
            "whole": saved_model(root / "whole", "a1", in_channels=3,
                                 preprocessing=whole_preprocessing()),
        }


pytestmark = pytest.mark.usefixtures("empty_model_registry")


def _widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
    return widget


def _ct_viewer(make_napari_viewer):
    """The CT slice sample: image, true masks (lesion i labelled i + 1) and RECIST."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ct_phantom_slice")
    return viewer


def _stub(kind, model, folder):
    """Register a model with known outputs (``folder`` only names it)."""
    return MODEL_REGISTRY.add(kind, folder, model)


def _snapshot(viewer):
    return {layer.name: ([np.array(d) for d in layer.data] if isinstance(layer.data, list)
                         else np.array(layer.data)) for layer in viewer.layers}


def _assert_unchanged(before, viewer):
    for name, data in before.items():
        now = viewer.layers[name].data
        if isinstance(data, list):
            assert len(now) == len(data)
            for a, b in zip(data, now):
                np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_equal(data, now)


def _wait(widget, qtbot):
    """Until the widget's workers are done (their signals may come before a waitSignal)."""
    qtbot.waitUntil(lambda: widget._worker is None and widget.predict_button.isEnabled()
                    and widget.load_button.isEnabled(), timeout=60000)


def _click_predict(widget, qtbot):
    qtbot.mouseClick(widget.predict_button, LEFT)
    _wait(widget, qtbot)


def _click_tick(qtbot, models_list, row: int) -> None:
    """Click the check box of a row of the models list, where the style draws it."""
    item = models_list.item(row)
    option = QStyleOptionViewItem()
    option.initFrom(models_list)
    option.rect = models_list.visualItemRect(item)
    option.features |= QStyleOptionViewItem.ViewItemFeature.HasCheckIndicator
    box = models_list.style().subElementRect(
        QStyle.SubElement.SE_ItemViewItemCheckIndicator, option, models_list)
    qtbot.mouseClick(models_list.viewport(), LEFT, pos=box.center())


def _table(widget) -> list[dict]:
    """The metrics table as the user reads it: header title -> cell text, per row."""
    table = widget.table
    titles = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    return [{t: table.item(r, c).text() for c, t in enumerate(titles)}
            for r in range(table.rowCount())]


def _type_threshold(widget, qtbot, text: str) -> None:
    spin = widget.threshold_spin
    spin.setFocus()
    spin.selectAll()
    qtbot.keyClicks(spin, text)
    qtbot.keyClick(spin, Qt.Key.Key_Enter)


def _patch_save_dialog(monkeypatch, path):
    chosen = "" if path is None else str(path)
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *args, **kwargs: (chosen, "CSV (*.csv)")))


def _patch_folder_dialog(monkeypatch, path):
    chosen = "" if path is None else str(path)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *args, **kwargs: chosen))


# -- real checkpoints ---------------------------------------------------------------------------
def test_one_contour_layer_per_model_metrics_and_csv(make_napari_viewer, qtbot, checkpoints,
                                                     tmp_path, monkeypatch):
    viewer = _ct_viewer(make_napari_viewer)
    before = _snapshot(viewer)
    n_user = len(viewer.layers)
    MODEL_REGISTRY.add("a1", checkpoints["a1"])
    MODEL_REGISTRY.add("multitask", checkpoints["multitask"])
    widget = _widget(viewer)
    assert widget.image_combo.layer().name == "CT phantom"
    assert widget.recist_combo.layer().name == "CT phantom RECIST"
    assert widget.gt_combo.layer().name == "CT phantom true masks"
    assert [e.name for e in widget.chosen_models()] == ["A1", "multitask"]

    _click_predict(widget, qtbot)
    names = [layer.name for layer in viewer.layers]
    assert len(viewer.layers) == n_user + 3  # two models and the ground-truth copy
    for name, kind in (("A1", "a1"), ("multitask", "multitask")):
        layer = viewer.layers[prediction_name(name)]
        assert layer.contour >= 1 and layer.data.shape == (256, 256)
        np.testing.assert_allclose(layer.colormap.map(np.array([1]))[0][:3],
                                   _rgb(MODEL_COLOURS[kind]), atol=1e-6)
        np.testing.assert_allclose(layer.scale, viewer.layers["CT phantom"].scale)
        # The image's units (mm): a layer in "pixel" beside it makes napari drop them all.
        assert tuple(layer.units) == tuple(viewer.layers["CT phantom"].units)
    truth = viewer.layers["CT phantom true masks (ground truth)"]
    assert [str(u) for u in truth.units] == ["millimeter"] * 2
    np.testing.assert_array_equal(truth.data, before["CT phantom true masks"] > 0)
    np.testing.assert_allclose(truth.colormap.map(np.array([1]))[0][:3],
                               _rgb(MODEL_COLOURS["truth"]), atol=1e-6)
    _assert_unchanged(before, viewer)

    # A row for the image and one per lesion, for each model; multitask rows have groups.
    n_lesions = len(np.unique(before["CT phantom true masks"])) - 1
    assert len(widget.rows) == 2 * (1 + n_lesions) == widget.table.rowCount()
    multitask = [row for row in widget.rows if row["model"] == "multitask"]
    a1 = [row for row in widget.rows if row["model"] == "A1"]
    assert all(isinstance(row["group"], int) for row in multitask[1:])
    assert all(row["group"] == "" for row in a1)
    assert all(0.0 <= row["dice"] <= 1.0 for row in widget.rows)
    assert _table(widget)[0]["model"] == "A1"

    _patch_save_dialog(monkeypatch, tmp_path / "metrics.csv")
    qtbot.mouseClick(widget.export_button, LEFT)
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(widget.rows)
    assert {"model", "lesion", "group", "dice", "hausdorff95", "note"} <= set(rows[0])

    # Predicting again replaces the models' layers instead of adding new ones.
    _click_predict(widget, qtbot)
    assert [layer.name for layer in viewer.layers] == names
    _assert_unchanged(before, viewer)


def test_whole_image_model_on_an_rgb_image(make_napari_viewer, qtbot, checkpoints):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "dermoscopy")
    MODEL_REGISTRY.add("a1", checkpoints["whole"])
    widget = _widget(viewer)
    _click_predict(widget, qtbot)
    layer = viewer.layers[prediction_name("A1")]
    assert layer.data.shape == (256, 256)
    assert len(widget.rows) == 2 == widget.table.rowCount()  # the image and its one lesion


def test_load_model_button(make_napari_viewer, qtbot, checkpoints, tmp_path, monkeypatch,
                           notifications):
    viewer = make_napari_viewer()
    widget = _widget(viewer)

    _patch_folder_dialog(monkeypatch, None)  # cancelled: nothing happens
    qtbot.mouseClick(widget.load_button, LEFT)
    _wait(widget, qtbot)
    assert widget.models_list.count() == 0 and not notifications

    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("[]")
    _patch_folder_dialog(monkeypatch, bad)
    qtbot.mouseClick(widget.load_button, LEFT)
    qtbot.waitUntil(lambda: bool(notifications), timeout=60000)
    _wait(widget, qtbot)
    assert notifications[-1][0] == "error" and str(bad) in notifications[-1][1]
    assert widget.models_list.count() == 0

    _patch_folder_dialog(monkeypatch, checkpoints["multitask"])
    qtbot.mouseClick(widget.load_button, LEFT)
    qtbot.waitUntil(lambda: widget.models_list.count() == 1, timeout=60000)
    _wait(widget, qtbot)
    item = widget.models_list.item(0)
    assert item.text() == "multitask" and item.checkState() == Qt.CheckState.Checked
    assert MODEL_REGISTRY.get("multitask").model is not None  # loaded, ready to predict


# -- models with known outputs -------------------------------------------------------------------
def test_threshold_spin_box_cuts_the_probability_map(make_napari_viewer, qtbot, tmp_path):
    viewer = _ct_viewer(make_napari_viewer)
    _stub("a1", RampModel(), tmp_path / "ramp")
    widget = _widget(viewer)
    assert widget.threshold_spin.value() == 0.5
    assert (widget.threshold_spin.minimum(), widget.threshold_spin.maximum()) == (0.05, 0.95)

    _click_predict(widget, qtbot)
    layer = viewer.layers[prediction_name("A1")]
    assert layer.data.mean() == pytest.approx(0.5, abs=0.03)

    _type_threshold(widget, qtbot, "0.8")
    assert widget.threshold_spin.value() == pytest.approx(0.8)
    _click_predict(widget, qtbot)
    assert layer.data.mean() == pytest.approx(0.2, abs=0.03)
    assert "threshold 0.8" not in widget.status.text()  # the run is over: its result shows
    assert widget.status.text().startswith("Predicted 'CT phantom' with A1")

    # The arrow key steps by 0.05; the range stops at 0.95.
    qtbot.keyClick(widget.threshold_spin, Qt.Key.Key_Up)
    assert widget.threshold_spin.value() == pytest.approx(0.85)
    _type_threshold(widget, qtbot, "0.99")
    assert widget.threshold_spin.value() <= 0.95


def test_flip_averaging_box_averages_with_the_mirrored_predictions(make_napari_viewer, qtbot,
                                                                   tmp_path):
    # The ramp mirrored left-right is 1 - p, upside down unchanged: the average of the three
    # is (p + 1) / 3, above 0.4 where p > 0.2, against p > 0.4 without flips.
    viewer = _ct_viewer(make_napari_viewer)
    _stub("a1", RampModel(), tmp_path / "ramp")
    widget = _widget(viewer)
    assert not widget.tta_box.isChecked()
    _type_threshold(widget, qtbot, "0.4")
    _click_predict(widget, qtbot)
    layer = viewer.layers[prediction_name("A1")]
    assert layer.data.mean() == pytest.approx(0.6, abs=0.03)
    set_checked(qtbot, widget.tta_box, True)
    _click_predict(widget, qtbot)
    assert layer.data.mean() == pytest.approx(0.8, abs=0.03)


def test_empty_prediction_is_blank_with_a_note_in_table_and_csv(make_napari_viewer, qtbot,
                                                                tmp_path, monkeypatch):
    viewer = _ct_viewer(make_napari_viewer)
    _stub("a1", ConstantModel(-8.0), tmp_path / "nothing")
    widget = _widget(viewer)
    _click_predict(widget, qtbot)
    assert not viewer.layers[prediction_name("A1")].data.any()
    assert "empty prediction: A1" in widget.status.text()

    rows = _table(widget)
    # Long model names are cut short, not pushing the metrics out of view; the whole name
    # is in the cell's tooltip.
    assert widget.table.columnWidth(0) <= MODEL_COLUMN_PX
    assert widget.table.item(0, 0).toolTip() == widget.table.item(0, 0).text()
    # A picture has no slices: that empty column is hidden, the metrics move into view.
    assert widget.table.isColumnHidden(ID_COLUMNS.index("slice"))
    assert not widget.table.isColumnHidden(ID_COLUMNS.index("lesion"))
    n_lesions = len(np.unique(viewer.layers["CT phantom true masks"].data)) - 1
    assert len(rows) == 1 + n_lesions
    # The sample's pixel size is known: distances are in mm.
    undefined = ("Hausdorff mm", "centre err mm", "orient. err deg", "shape err")
    for row in rows:
        assert row["Dice"] == "0.000" and row["note"] == "empty prediction"
        for title in undefined:
            assert row[title] == "", (title, row)  # not the diagonal, nor 90 degrees
    column = metric_titles("mm").index("Hausdorff mm") + len(ID_COLUMNS)
    assert "empty prediction" in widget.table.item(0, column).toolTip()

    _patch_save_dialog(monkeypatch, tmp_path / "empty.csv")
    qtbot.mouseClick(widget.export_button, LEFT)
    with open(tmp_path / "empty.csv", newline="") as fh:
        saved = list(csv.DictReader(fh))
    assert len(saved) == len(rows)
    assert all(r["hausdorff"] == "" and r["orientation_error"] == "" for r in saved)
    assert all(r["note"] == "empty prediction" and float(r["dice"]) == 0.0 for r in saved)
    assert {r["distance_unit"] for r in saved} == {"mm"}


def test_export_button_cancelled_or_without_metrics_writes_nothing(
        make_napari_viewer, qtbot, tmp_path, monkeypatch, notifications):
    viewer = _ct_viewer(make_napari_viewer)
    _stub("a1", RampModel(), tmp_path / "ramp")
    widget = _widget(viewer)
    target = tmp_path / "out.csv"
    _patch_save_dialog(monkeypatch, target)
    qtbot.mouseClick(widget.export_button, LEFT)  # nothing predicted yet
    assert not target.exists()
    assert notifications[-1][0] == "error" and "no metrics yet" in notifications[-1][1]

    _click_predict(widget, qtbot)
    _patch_save_dialog(monkeypatch, None)  # the dialog is cancelled
    qtbot.mouseClick(widget.export_button, LEFT)
    assert list(tmp_path.iterdir()) == []


def test_model_ticks_choose_the_models_that_predict(make_napari_viewer, qtbot, tmp_path):
    viewer = _ct_viewer(make_napari_viewer)
    _stub("a1", RampModel(), tmp_path / "ramp")
    _stub("multitask", ConstantModel(5.0, kind="multitask", mode="crops"), tmp_path / "mt")
    widget = _widget(viewer)
    viewer.show()  # the ticks are clicked where they are drawn
    qtbot.waitUntil(lambda: widget.models_list.isVisible(), timeout=5000)
    assert [widget.models_list.item(i).text() for i in range(2)] == ["A1", "multitask"]

    _click_tick(qtbot, widget.models_list, 0)
    assert widget.models_list.item(0).checkState() == Qt.CheckState.Unchecked
    _click_predict(widget, qtbot)
    assert prediction_name("multitask") in viewer.layers
    assert prediction_name("A1") not in viewer.layers
    assert {row["model"] for row in _table(widget)} == {"multitask"}
    # The crop model segmented the marked lesions (a square around each) and gave groups.
    assert _table(widget)[1]["group"] == "1"

    _click_tick(qtbot, widget.models_list, 0)
    _click_tick(qtbot, widget.models_list, 1)
    _click_predict(widget, qtbot)
    assert prediction_name("A1") in viewer.layers
    assert {row["model"] for row in _table(widget)} == {"A1"}

    # No model ticked: refused, and the status line says why.
    _click_tick(qtbot, widget.models_list, 0)
    qtbot.mouseClick(widget.predict_button, LEFT)
    assert widget._worker is None
    assert "tick at least one model" in widget.status.text()


def test_combo_choices_image_and_ground_truth(make_napari_viewer, qtbot, tmp_path):
    viewer = _ct_viewer(make_napari_viewer)
    other = viewer.add_image(np.zeros((40, 50), np.float32), name="other")
    _stub("a1", RampModel(), tmp_path / "ramp")
    widget = _widget(viewer)
    image_combo = widget.image_combo
    # The image that has RECIST lines comes first (with them), not the topmost one.
    assert image_combo.layer().name == "CT phantom"
    assert widget.recist_combo.layer().name == "CT phantom RECIST"
    image_combo.setCurrentIndex([image_combo.itemText(i) for i in range(image_combo.count())]
                                .index("CT phantom"))
    # Without a ground truth: a contour but no metrics.
    gt_combo = widget.gt_combo
    gt_combo.setCurrentIndex([gt_combo.itemText(i) for i in range(gt_combo.count())]
                             .index("(none)"))
    assert gt_combo.layer() is None
    _click_predict(widget, qtbot)
    assert widget.table.rowCount() == 0 and widget.rows == []
    assert not any("ground truth" in layer.name for layer in viewer.layers)
    assert viewer.layers[prediction_name("A1")].data.shape == (256, 256)

    # Another image (the true masks no longer fit it): its prediction replaces the layer.
    image_combo.setCurrentIndex([image_combo.itemText(i) for i in range(image_combo.count())]
                                .index("other"))
    assert image_combo.layer().name == other.name
    _click_predict(widget, qtbot)
    assert viewer.layers[prediction_name("A1")].data.shape == (40, 50)

    gt_combo.setCurrentIndex([gt_combo.itemText(i) for i in range(gt_combo.count())]
                             .index("CT phantom true masks"))
    n_layers = len(viewer.layers)
    qtbot.mouseClick(widget.predict_button, LEFT)
    assert widget._worker is None and len(viewer.layers) == n_layers
    assert widget.status.text().startswith("Not predicted: the ground truth")


def test_ground_truth_is_the_chosen_scans_own_mask_never_another_scans(make_napari_viewer,
                                                                         qtbot):
    # Two scans of one grid, and the mask of the first, named after it (napari names a layer
    # opened from "case01_mask.nii.gz" so).
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 50), np.float32), name="case01")
    viewer.add_image(np.ones((40, 50), np.float32), name="case02")
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 10:20] = 1
    viewer.add_labels(mask, name="case01_mask")
    widget = _widget(viewer)
    image_combo, gt_combo = widget.image_combo, widget.gt_combo
    pick(image_combo, "case02")
    assert gt_combo.layer() is None
    pick(image_combo, "case01")
    assert gt_combo.layer().name == "case01_mask"
    pick(image_combo, "case02")
    assert gt_combo.layer() is None
    # A mask named after no scan may be either's; one of another size is neither's.
    viewer.add_labels(np.zeros((40, 50), np.uint8), name="drawn")
    viewer.add_labels(np.zeros((30, 50), np.uint8), name="small")
    assert gt_combo.layer().name == "drawn"
    # The user's own choice of another scan's mask is kept while the image stays.
    pick(gt_combo, "case01_mask")
    viewer.add_labels(np.zeros((40, 50), np.uint8), name="later")
    assert gt_combo.layer().name == "case01_mask"


def test_a_mask_is_named_after_its_scan_not_one_whose_name_begins_its_own(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("case1", "case12", "ct", "ct_2"):
        viewer.add_image(np.zeros((40, 50), np.float32), name=name)
    for name in ("case1_mask", "case12_mask", "ct_2_mask"):
        viewer.add_labels(np.zeros((40, 50), np.uint8), name=name)
    widget = _widget(viewer)
    pick(widget.image_combo, "case12")
    assert widget.gt_combo.layer().name == "case12_mask"
    # The scan case12 closed, its mask still open: it stays case12's, never case1's.
    viewer.layers.remove("case12")
    pick(widget.image_combo, "case1")
    assert widget.gt_combo.layer().name == "case1_mask"
    viewer.layers.remove("case1_mask")
    assert widget.gt_combo.layer() is None
    viewer.layers.remove("case12_mask")
    pick(widget.image_combo, "ct")
    assert widget.gt_combo.layer() is None  # ct_2_mask is ct_2's
    pick(widget.image_combo, "ct_2")
    assert widget.gt_combo.layer().name == "ct_2_mask"


def test_status_line_is_replaced_after_a_failed_prediction(make_napari_viewer, qtbot, tmp_path,
                                                            notifications):
    viewer = _ct_viewer(make_napari_viewer)
    before = _snapshot(viewer)
    _stub("a1", ConstantModel(5.0, mode="crops"), tmp_path / "crops")
    widget = _widget(viewer)
    recist = widget.recist_combo
    recist.setCurrentIndex([recist.itemText(i) for i in range(recist.count())].index("(none)"))
    # A lesion-crop model without RECIST: refused in the worker, before anything is shown.
    qtbot.mouseClick(widget.predict_button, LEFT)
    assert widget.status.text().startswith("Predicting")
    _wait(widget, qtbot)
    status = widget.status.text()
    assert status.startswith("Prediction of 'CT phantom' failed:") and "lesion crops" in status
    assert "Predicting" not in status
    assert "lesion crops" in notifications[-1][1]
    assert len(viewer.layers) == len(before)
    _assert_unchanged(before, viewer)

    # Choosing the RECIST layer again, the same click works.
    recist.setCurrentIndex([recist.itemText(i) for i in range(recist.count())]
                           .index("CT phantom RECIST"))
    _click_predict(widget, qtbot)
    assert widget.status.text().startswith("Predicted 'CT phantom' with A1")


def test_bad_inputs_notify_and_change_nothing(make_napari_viewer, qtbot, tmp_path,
                                              notifications):
    viewer = make_napari_viewer()
    _stub("a1", RampModel(), tmp_path / "ramp")
    widget = _widget(viewer)
    qtbot.mouseClick(widget.predict_button, LEFT)
    assert notifications[-1][0] == "error" and "no image layer" in notifications[-1][1]
    assert "no image layer" in widget.status.text()

    image = viewer.add_image(np.zeros((64, 64), np.float32), name="ct")
    viewer.add_shapes([np.array([[10.0, 10.0], [10.0, 40.0]])], shape_type="line",
                      name="ct RECIST", features={"lesion_id": [0], "axis": ["long"]})
    recist = widget.recist_combo
    recist.setCurrentIndex([recist.itemText(i) for i in range(recist.count())]
                           .index("ct RECIST"))
    before = _snapshot(viewer)
    qtbot.mouseClick(widget.predict_button, LEFT)
    assert widget._worker is None
    assert "no complete lesion" in notifications[-1][1]
    assert "ct RECIST" in notifications[-1][1]
    assert len(viewer.layers) == len(before)
    _assert_unchanged(before, viewer)
    assert image.data.shape == (64, 64)


def test_side_by_side_views_named_after_their_models(make_napari_viewer, qtbot, tmp_path):
    viewer = _ct_viewer(make_napari_viewer)
    _stub("a1", RampModel(), tmp_path / "ramp")
    _stub("multitask", ConstantModel(5.0, kind="multitask", mode="crops"), tmp_path / "mt")
    widget = _widget(viewer)
    qtbot.mouseClick(widget.side_button, LEFT)  # nothing to show yet: refused
    assert not widget.side_button.isChecked() and not viewer.canvas.grid.enabled
    _click_predict(widget, qtbot)
    order = [layer.name for layer in viewer.layers]
    visible = [layer.visible for layer in viewer.layers]
    camera = viewer_camera(viewer)
    camera.zoom, camera.center = 12.0, (20.0, 25.0)  # the user looks at a lesion

    qtbot.mouseClick(widget.side_button, LEFT)
    assert widget.side_button.isChecked()
    grid = viewer.canvas.grid
    assert grid.enabled and grid.stride == 2
    assert camera.zoom < 12.0  # every view fits, not a corner of the first
    layers = list(viewer.layers)
    overlays = [la for la in layers if la.metadata.get(META_KEY, {}).get("role")
                in ("prediction", "truth")]
    assert len(overlays) == 3
    image_data = viewer.layers["CT phantom"].data
    cells = {}
    for i, layer in enumerate(layers):
        if layer.visible:
            cells.setdefault(grid.position(i, layers), []).append(layer)
    assert len(cells) == 3
    titles = {}
    for content in cells.values():
        under, over = content
        # The image (or a copy sharing its data) under one contour, whose name the view
        # shows in its corner, in the model's colour.
        assert under.data is image_data and over in overlays
        assert over.name_overlay.visible
        np.testing.assert_allclose(np.asarray(over.name_overlay.color)[:3],
                                   over.colormap.map(np.array([1]))[0][:3], atol=1e-6)
        titles[over.name] = over
        # The title is sized to its view (not below 8 pt), so a long model name is not cut.
        view_width = viewer.canvas.size[1] / grid.shape[1]
        size = over.name_overlay.font_size
        assert 8 <= size <= 12
        assert size == 8 or len(over.name) * size <= view_width
    # All titles in one size.
    assert len({over.name_overlay.font_size for over in overlays}) == 1
    assert set(titles) == {prediction_name("A1"), prediction_name("multitask"),
                           "CT phantom true masks (ground truth)"}

    qtbot.mouseClick(widget.side_button, LEFT)
    assert not widget.side_button.isChecked() and not viewer.canvas.grid.enabled
    assert camera.zoom == pytest.approx(12.0)  # back on the lesion
    np.testing.assert_allclose(camera.center[-2:], (20.0, 25.0))
    assert [layer.name for layer in viewer.layers] == order
    assert [layer.visible for layer in viewer.layers] == visible
    assert not any(layer.name_overlay.visible for layer in viewer.layers)


def test_side_by_side_grid_gives_each_view_the_most_room():
    # A tall canvas (a dock beside it) stacks 5 views in 2 columns, a wide one in a row.
    assert grid_shape(5, (1000, 500), (64, 64)) == (3, 2)
    assert grid_shape(5, (500, 1500), (64, 64)) == (1, 5)
    assert grid_shape(4, (800, 800), (64, 64)) == (2, 2)
    # A wide image on a square canvas: one column of views.
    assert grid_shape(3, (900, 900), (100, 400)) == (3, 1)
    assert grid_shape(3, None, (64, 64)) == (-1, -1)


def test_predicting_in_side_by_side_keeps_the_views(make_napari_viewer, qtbot, tmp_path):
    viewer = _ct_viewer(make_napari_viewer)
    _stub("a1", RampModel(), tmp_path / "ramp")
    widget = _widget(viewer)
    _click_predict(widget, qtbot)
    qtbot.mouseClick(widget.side_button, LEFT)
    n_layers = len(viewer.layers)
    _type_threshold(widget, qtbot, "0.3")
    _click_predict(widget, qtbot)
    assert viewer.canvas.grid.enabled and len(viewer.layers) == n_layers
    assert viewer.layers[prediction_name("A1")].data.mean() == pytest.approx(0.7, abs=0.03)
    assert viewer.layers[prediction_name("A1")].name_overlay.visible
    qtbot.mouseClick(widget.side_button, LEFT)
    assert not viewer.canvas.grid.enabled
    assert math.isfinite(widget.rows[0]["hausdorff"])


def _rgb(colour: str) -> np.ndarray:
    colour = colour.lstrip("#")
    return np.array([int(colour[i:i + 2], 16) / 255 for i in (0, 2, 4)])


def test_side_by_side_shows_only_the_last_prediction_of_the_image(make_napari_viewer, qtbot,
                                                                  tmp_path):
    # Two models and the true masks on the CT slice; then only A1 on another image of the
    # same size, without a ground truth: the earlier outlines are not this image's.
    viewer = _ct_viewer(make_napari_viewer)
    recist = viewer.layers["CT phantom RECIST"]
    _stub("a1", RampModel(), tmp_path / "ramp")
    _stub("multitask", ConstantModel(5.0, kind="multitask", mode="whole_image"),
          tmp_path / "mt")
    widget = _widget(viewer)
    viewer.layers.selection.active = recist
    _click_predict(widget, qtbot)
    truth = "CT phantom true masks (ground truth)"
    assert {prediction_name("A1"), prediction_name("multitask"), truth} <= \
        {layer.name for layer in viewer.layers}
    # The outlines lie under the RECIST lines, which stay the layer being edited.
    names = [layer.name for layer in viewer.layers]
    assert names.index(prediction_name("A1")) < names.index(recist.name)
    assert viewer.layers.selection.active is recist

    other = viewer.add_image(np.zeros((256, 256), np.float32), name="other")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("other"))
    widget.gt_combo.setCurrentIndex(widget.gt_combo.findText("(none)"))
    _click_tick(qtbot, widget.models_list, 1)  # multitask off
    _click_predict(widget, qtbot)
    assert widget.status.text().startswith("Predicted 'other' with A1")
    assert viewer.layers[prediction_name("A1")].visible
    assert not viewer.layers[prediction_name("multitask")].visible
    assert not viewer.layers[truth].visible

    qtbot.mouseClick(widget.side_button, LEFT)
    assert widget.side_button.isChecked()
    shown = [layer for layer in viewer.layers if layer.visible]
    assert [layer.name for layer in shown] == ["other", prediction_name("A1")]
    assert shown[0] is other


def test_a_renamed_result_is_kept_and_a_reused_one_takes_its_new_name(make_napari_viewer,
                                                                       qtbot, tmp_path):
    viewer = _ct_viewer(make_napari_viewer)
    other = viewer.add_image(np.zeros((40, 50), np.float32), name="other")
    _stub("a1", RampModel(), tmp_path / "ramp")
    widget = _widget(viewer)
    widget.image_combo.set_layer(viewer.layers["CT phantom"])
    widget.gt_combo.set_layer(None)
    _click_predict(widget, qtbot)
    first = viewer.layers[prediction_name("A1")]
    first.name = "CT result to keep"
    kept = np.array(first.data)
    widget.image_combo.set_layer(other)
    _click_predict(widget, qtbot)
    # The renamed layer is the user's now: untouched; the new image's result is a new layer.
    assert first in viewer.layers and first.name == "CT result to keep"
    np.testing.assert_array_equal(first.data, kept)
    assert viewer.layers[prediction_name("A1")].data.shape == (40, 50)
    # A result layer the user left alone is reused (under the name it was given).
    again = viewer.layers[prediction_name("A1")]
    _click_predict(widget, qtbot)
    assert viewer.layers[prediction_name("A1")] is again


def test_closing_the_dock_while_predicting_adds_nothing(make_napari_viewer, qtbot, tmp_path,
                                                        monkeypatch):
    import threading

    from napari_recist_seg.plugin.widgets import compare_widget

    viewer = _ct_viewer(make_napari_viewer)
    _stub("a1", RampModel(), tmp_path / "ramp")
    release, real = threading.Event(), compare_widget.predict_models

    def held(*args, **kwargs):
        release.wait(30)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(compare_widget, "predict_models", held)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
    names = [layer.name for layer in viewer.layers]
    qtbot.mouseClick(widget.predict_button, LEFT)
    assert widget._worker is not None
    worker = widget._worker
    qtbot.mouseClick(dock.title.close_button, LEFT)  # the dock's own x
    qtbot.waitUntil(lambda: widget.parent() is None, timeout=5000)
    with qtbot.waitSignal(worker.finished, timeout=30000):
        release.set()
    qtbot.wait(100)
    assert [layer.name for layer in viewer.layers] == names
