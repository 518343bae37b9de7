"""The comparison widget with a real viewer: predictions as contours, metrics, side by side.

The models are untrained checkpoints of the test input size (32 pixels): what is checked is
the plumbing (layers, colours, table, CSV, grid), not the quality of the masks.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_recist_seg.learning.report import MODEL_COLOURS
from napari_recist_seg.plugin._layers import META_KEY
from napari_recist_seg.plugin.training_worker import MODEL_REGISTRY, prepare_torch_import
from napari_recist_seg.plugin.widgets.compare_widget import prediction_name

from ._learning_data import crop_preprocessing, quick, saved_model, whole_preprocessing

PLUGIN = "napari-recist-seg"


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


def _predict(widget, qtbot):
    assert widget.predict() is not None
    _wait(widget, qtbot)


def _wait(widget, qtbot):
    """Until the widget's workers are done (their signals may come before a waitSignal)."""
    qtbot.waitUntil(lambda: widget._worker is None and widget.predict_button.isEnabled()
                    and widget.load_button.isEnabled(), timeout=60000)


def test_one_contour_layer_per_model_metrics_and_csv(make_napari_viewer, qtbot, checkpoints,
                                                     tmp_path):
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

    _predict(widget, qtbot)
    names = [layer.name for layer in viewer.layers]
    assert len(viewer.layers) == n_user + 3  # two models and the ground-truth copy
    for name, kind in (("A1", "a1"), ("multitask", "multitask")):
        layer = viewer.layers[prediction_name(name)]
        assert layer.contour >= 1 and layer.data.shape == (256, 256)
        np.testing.assert_allclose(layer.colormap.map(np.array([1]))[0][:3],
                                   _rgb(MODEL_COLOURS[kind]), atol=1e-6)
        np.testing.assert_allclose(layer.scale, viewer.layers["CT phantom"].scale)
    truth = viewer.layers["CT phantom true masks (ground truth)"]
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
    assert widget.table.item(0, 0).text() == "A1"

    path = widget.export_csv(tmp_path / "metrics.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(widget.rows)
    assert {"model", "lesion", "group", "dice", "hausdorff95"} <= set(rows[0])

    # Predicting again replaces the models' layers instead of adding new ones.
    _predict(widget, qtbot)
    assert [layer.name for layer in viewer.layers] == names
    _assert_unchanged(before, viewer)


def test_side_by_side_grid_on_and_off(make_napari_viewer, qtbot, checkpoints):
    viewer = _ct_viewer(make_napari_viewer)
    MODEL_REGISTRY.add("a1", checkpoints["a1"])
    MODEL_REGISTRY.add("multitask", checkpoints["multitask"])
    widget = _widget(viewer)
    widget.side_button.setChecked(True)  # nothing to show yet: refused
    assert not widget.side_button.isChecked() and not viewer.canvas.grid.enabled
    _predict(widget, qtbot)
    order = [layer.name for layer in viewer.layers]
    visible = [layer.visible for layer in viewer.layers]

    widget.side_button.setChecked(True)
    grid = viewer.canvas.grid
    assert grid.enabled and grid.stride == 2
    layers = list(viewer.layers)
    # Every view holds the image (or a copy sharing its data) under one contour.
    overlays = [la for la in layers if la.metadata.get(META_KEY, {}).get("role")
                in ("prediction", "truth")]
    assert len(overlays) == 3
    image_data = viewer.layers["CT phantom"].data
    cells = {}
    for i, layer in enumerate(layers):
        if layer.visible:
            cells.setdefault(grid.position(i, layers), []).append(layer)
    assert len(cells) == 3
    for content in cells.values():
        under, over = content
        assert under.data is image_data and over in overlays

    widget.side_button.setChecked(False)
    assert not viewer.canvas.grid.enabled
    assert [layer.name for layer in viewer.layers] == order
    assert [layer.visible for layer in viewer.layers] == visible


def test_whole_image_model_on_an_rgb_image(make_napari_viewer, qtbot, checkpoints):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "dermoscopy")
    MODEL_REGISTRY.add("a1", checkpoints["whole"])
    widget = _widget(viewer)
    _predict(widget, qtbot)
    layer = viewer.layers[prediction_name("A1")]
    assert layer.data.shape == (256, 256)
    assert len(widget.rows) == 2  # the image and its one lesion


def test_bad_inputs_notify_and_change_nothing(make_napari_viewer, qtbot, checkpoints, tmp_path,
                                              notifications):
    viewer = make_napari_viewer()
    MODEL_REGISTRY.add("a1", checkpoints["a1"])
    widget = _widget(viewer)
    assert widget.predict() is None
    assert notifications[-1][0] == "error" and "no image layer" in notifications[-1][1]

    image = viewer.add_image(np.zeros((64, 64), np.float32), name="ct")
    viewer.add_shapes([np.array([[10.0, 10.0], [10.0, 40.0]])], shape_type="line",
                      name="ct RECIST", features={"lesion_id": [0], "axis": ["long"]})
    widget.recist_combo.set_layer(viewer.layers["ct RECIST"])
    before = _snapshot(viewer)
    assert widget.predict() is None
    assert "no complete lesion" in notifications[-1][1]
    assert "ct RECIST" in notifications[-1][1]

    # A lesion-crop model without RECIST: refused in the worker, before anything is shown.
    widget.recist_combo.setCurrentIndex(0)
    assert widget.recist_combo.layer() is None
    assert widget.predict() is not None
    _wait(widget, qtbot)
    assert "lesion crops" in notifications[-1][1] and "RECIST" in notifications[-1][1]
    assert len(viewer.layers) == len(before)
    _assert_unchanged(before, viewer)
    assert image.data.shape == (64, 64)

    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("[]")
    widget.load_model(bad)
    _wait(widget, qtbot)
    assert notifications[-1][0] == "error" and str(bad) in notifications[-1][1]
    assert [e.name for e in MODEL_REGISTRY] == ["A1"]
    assert widget.models_list.count() == 1

    # A good folder is added to the list (ticked), through the same button.
    widget.load_model(checkpoints["multitask"])
    _wait(widget, qtbot)
    qtbot.waitUntil(lambda: widget.models_list.count() == 2, timeout=5000)
    assert [e.name for e in widget.chosen_models()] == ["A1", "multitask"]
    _assert_unchanged(before, viewer)


def _rgb(colour: str) -> np.ndarray:
    colour = colour.lstrip("#")
    return np.array([int(colour[i:i + 2], 16) / 255 for i in (0, 2, 4)])
