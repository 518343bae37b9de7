"""A user's walk through the plugin, end to end, in a real viewer under Xvfb.

Open the CT sample, draw two more lesions with the mouse, group the lesions, preview their
pseudo-masks, train the three models briefly (in a separate process, the default) and
compare their predictions with the true masks. Each step goes through the widgets, as a user
would; the run is kept tiny (32-pixel input, one epoch) for a two-core CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.plugin.training_worker import MODEL_REGISTRY
from napari_recist_seg.plugin.widgets.compare_widget import prediction_name

PLUGIN = "napari-recist-seg"

#: Two lesions drawn by hand, in pixels: (long axis, short axis). Pixels are 0.8 mm.
DRAWN = (
    ([[60, 60], [60, 90]], [[52, 75], [68, 75]]),  # 24.0 x 12.8 mm
    ([[190, 150], [210, 170]], [[194, 166], [206, 154]]),  # 22.6 x 13.6 mm
)


pytestmark = pytest.mark.usefixtures("empty_model_registry")


def _lines(layer):
    return [np.array(d) for d in layer.data]


def test_sample_draw_group_preview_train_compare(make_napari_viewer, qtbot, mouse_draw,
                                                 notifications, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ct_phantom_slice")
    image = viewer.layers["CT phantom"]
    recist = viewer.layers["CT phantom RECIST"]
    truth = viewer.layers["CT phantom true masks"]
    image_before, truth_before = np.array(image.data), np.array(truth.data)
    lines_before = _lines(recist)
    n_sample = len(lines_before) // 2

    # Draw two lesions: long axis, then short axis.
    _dock, annotate = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotation")
    assert annotate.recist_layer() is recist
    annotate.start_drawing()
    assert recist.mode == "add_line"
    for long_axis, short_axis in DRAWN:
        mouse_draw(recist, *long_axis)
        mouse_draw(recist, *short_axis)
    infos = annotate.lesions
    assert len(infos) == n_sample + 2 and all(info.ok for info in infos)
    table = annotate.table.model()
    drawn_rows = [[table.index(r, c).data() for c in (2, 3)]
                  for r in range(n_sample, n_sample + 2)]
    assert drawn_rows == [["24.0", "12.8"], ["22.6", "13.6"]]

    # Group them: K-means in two groups recolours the lines.
    _dock, groups = viewer.window.add_plugin_dock_widget(PLUGIN, "Groups and pseudo-masks")
    groups.set_recist_layer(recist)
    groups.k_spin.setValue(2)
    groups.run_kmeans()
    qtbot.waitUntil(lambda: "groups (sizes" in groups.status.text(), timeout=20000)
    assert sorted(set(recist.features["group"])) == [0, 1]
    colours = {tuple(np.round(c, 3)) for c in recist.edge_color}
    assert len(colours) >= 2

    # Preview the ellipse pseudo-masks: one label per lesion, the user's layer untouched.
    groups.method_combo.setCurrentText("ellipse")
    groups.preview_button.setChecked(True)
    qtbot.waitUntil(lambda: groups.preview_layer is not None, timeout=20000)
    preview = viewer.layers[groups.preview_layer.name]
    qtbot.waitUntil(lambda: len(np.unique(preview.data)) == n_sample + 3, timeout=20000)
    row, col = np.asarray(DRAWN[0][0]).mean(axis=0).astype(int)
    assert preview.data[row, col] > 0  # the drawn lesion's centre is in its pseudo-mask
    groups.preview_button.setChecked(False)
    assert groups.preview_layer is None

    # Train the three models briefly on the slice's RECIST (all but the true masks).
    _dock, training = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    training.set_pair(image, recist)
    for box in training.kind_boxes.values():
        box.setChecked(True)
    training.size_spin.setValue(32)
    training.epochs_spin.setValue(1)
    training.batch_spin.setValue(4)
    training.device_combo.setCurrentText("cpu")
    training.out_edit.setText(str(tmp_path / "models"))
    assert training.process_box.isChecked()  # the default: the viewer stays responsive
    worker = training.start()
    assert worker is not None, notifications
    with qtbot.waitSignal(worker.finished, timeout=240000):
        pass
    assert not [n for n in notifications if n[0] == "error"], notifications
    assert sorted(entry.kind for entry in MODEL_REGISTRY) == ["a1", "coseg", "multitask"]
    curves = training.curves()
    assert all(curves[kind]["epoch"] == [1] for kind in ("a1", "coseg", "multitask"))

    # Compare the three models against the true masks, overlaid and side by side.
    _dock, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
    assert compare.image_combo.layer().name == image.name
    assert compare.gt_combo.layer().name == truth.name
    assert len(compare.chosen_models()) == 3
    assert compare.predict() is not None
    qtbot.waitUntil(lambda: compare._worker is None and compare.predict_button.isEnabled(),
                    timeout=60000)
    for entry in MODEL_REGISTRY:
        layer = viewer.layers[prediction_name(entry.name)]
        assert layer.data.shape == image.data.shape
    n_truth = len(np.unique(truth_before)) - 1
    assert len(compare.rows) == 3 * (1 + n_truth)
    assert all(0.0 <= row["dice"] <= 1.0 for row in compare.rows)
    compare.side_button.setChecked(True)
    assert viewer.canvas.grid.enabled
    compare.side_button.setChecked(False)
    assert not viewer.canvas.grid.enabled

    # Nothing the user had was changed: the image, the true masks, and the sample's lines
    # (the RECIST layer holds exactly the sample's lines and the four drawn ones).
    np.testing.assert_array_equal(image.data, image_before)
    np.testing.assert_array_equal(truth.data, truth_before)
    now = _lines(recist)
    assert len(now) == len(lines_before) + 4
    for old, new in zip(lines_before, now):
        np.testing.assert_array_equal(old, new)
    assert not [n for n in notifications if n[0] == "error"], notifications
