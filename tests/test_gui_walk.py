"""A user's walk through the plugin, end to end, in a real viewer under Xvfb.

Open the CT sample from the File menu, open each widget from the Plugins menu, draw two more
lesions with the mouse, group the lesions, preview their pseudo-masks, train the three models
briefly (in a separate process, the default), stop and resume, and compare their predictions
with the true masks. Every step is a click, a key or a mouse drag, as a user does it; the run
is kept tiny (32-pixel input, three epochs) for a two-core CPU. An exception that reaches napari's
error handler fails the walk (``conftest.fail_on_unhandled_gui_errors``).
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_recist_seg.plugin.model_registry import MODEL_REGISTRY
from napari_recist_seg.plugin.widgets.compare_widget import CompareWidget, prediction_name
from napari_recist_seg.plugin.widgets.groups_widget import GroupsWidget
from napari_recist_seg.plugin.widgets.recist_widget import RecistWidget
from napari_recist_seg.plugin.widgets.segment_widget import SegmentWidget
from napari_recist_seg.plugin.widgets.training_widget import TrainingWidget

from ._gui import click, fill_training_form, open_dock, pick, set_checked, trigger_menu, type_number

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
    trigger_menu(viewer, "File", "Open Sample", "RECIST Segmentation",
                 "CT phantom slice (lesions, masks, RECIST)")
    image = viewer.layers["CT phantom"]
    recist = viewer.layers["CT phantom RECIST"]
    truth = viewer.layers["CT phantom true masks"]
    assert [str(u) for u in image.units] == ["millimeter"] * 2  # the scale bar reads mm
    image_before, truth_before = np.array(image.data), np.array(truth.data)
    lines_before = _lines(recist)
    n_sample = len(lines_before) // 2

    # Draw two lesions: long axis, then short axis.
    annotate = open_dock(viewer, "RECIST annotation", RecistWidget)
    assert annotate.recist_layer() is recist
    click(qtbot, annotate.draw_button)
    assert recist.mode == "add_line"
    for long_axis, short_axis in DRAWN:
        mouse_draw(recist, *long_axis)
        mouse_draw(recist, *short_axis)
    infos = annotate.lesions
    assert len(infos) == n_sample + 2 and all(info.ok for info in infos)
    table = annotate.table.model()
    headers = [table.headerData(c, Qt.Orientation.Horizontal) for c in range(table.columnCount())]
    long_col = next(c for c, h in enumerate(headers) if str(h).startswith("long"))
    short_col = next(c for c, h in enumerate(headers) if str(h).startswith("short"))
    assert "mm" in str(headers[long_col])
    drawn_rows = [[table.index(r, c).data() for c in (long_col, short_col)]
                  for r in range(n_sample, n_sample + 2)]
    assert drawn_rows == [["24.0", "12.8"], ["22.6", "13.6"]]

    # Group them: K-means in two groups recolours the lines.
    groups = open_dock(viewer, "Groups and pseudo-masks", GroupsWidget)
    pick(groups.recist_combo, recist.name)
    type_number(qtbot, groups.k_spin, 2)
    click(qtbot, groups.run_button)
    qtbot.waitUntil(lambda: "groups (sizes" in groups.status.text(), timeout=20000)
    assert sorted(set(recist.features["group"])) == [0, 1]
    colours = {tuple(np.round(c, 3)) for c in recist.edge_color}
    assert len(colours) >= 2

    # Preview the ellipse pseudo-masks: one label per lesion, the user's layer untouched.
    pick(groups.method_combo, "ellipse")
    set_checked(qtbot, groups.preview_button, True)
    qtbot.waitUntil(lambda: groups.preview_layer is not None, timeout=20000)
    preview = viewer.layers[groups.preview_layer.name]
    qtbot.waitUntil(lambda: len(np.unique(preview.data)) == n_sample + 3, timeout=20000)
    row, col = np.asarray(DRAWN[0][0]).mean(axis=0).astype(int)
    assert preview.data[row, col] > 0  # the drawn lesion's centre is in its pseudo-mask
    set_checked(qtbot, groups.preview_button, False)
    assert groups.preview_layer is None

    # Train the four models briefly on the slice's RECIST (all but the true masks), in a
    # separate process (the default): Start, Stop at the first step, then Resume.
    training = open_dock(viewer, "Training", TrainingWidget)
    assert [(i.name, r.name) for i, r in training.checked_pairs()] == [(image.name, recist.name)]
    assert training.form.separate_process.value  # the default: the viewer stays responsive
    fill_training_form(qtbot, training, tmp_path / "models",
                       kinds=("multitask", "a1", "coseg", "prompted"), process=True, epochs=3,
                       batch=2)
    click(qtbot, training.start_button)
    worker = training.worker
    assert worker is not None, notifications

    def stop_at_first_step(message):
        if (message[0] == "event" and message[1]["kind"] == "step"
                and training.stop_button.isEnabled()):
            click(qtbot, training.stop_button)

    worker.yielded.connect(stop_at_first_step)
    with qtbot.waitSignal(worker.finished, timeout=600000):
        pass
    qtbot.waitUntil(lambda: training.start_button.isEnabled(), timeout=10000)
    assert [e.name for e in MODEL_REGISTRY] == ["multitask (stopped at epoch 1)"]
    click(qtbot, training.resume_button)
    worker = training.worker
    assert worker is not None, notifications
    with qtbot.waitSignal(worker.finished, timeout=600000):
        pass
    assert not [n for n in notifications if n[0] == "error"], notifications
    assert sorted(entry.kind for entry in MODEL_REGISTRY) == ["a1", "coseg", "multitask",
                                                              "prompted"]
    assert all("of 3)" in entry.name for entry in MODEL_REGISTRY)  # e.g. best epoch 2 of 3
    curves = training.curves()
    assert all(curves[kind]["epoch"] == [1, 2, 3]
               for kind in ("a1", "coseg", "multitask", "prompted"))

    # Compare the four models against the true masks, overlaid and side by side.
    compare = open_dock(viewer, "Compare models", CompareWidget)
    assert compare.image_combo.layer().name == image.name
    assert compare.gt_combo.layer().name == truth.name
    assert len(compare.chosen_models()) == 4
    click(qtbot, compare.predict_button)
    qtbot.waitUntil(lambda: compare._worker is None and compare.predict_button.isEnabled(),
                    timeout=60000)
    for entry in MODEL_REGISTRY:
        layer = viewer.layers[prediction_name(entry.name)]
        assert layer.data.shape == image.data.shape
    n_truth = len(np.unique(truth_before)) - 1
    whole = [e for e in MODEL_REGISTRY if e.kind != "prompted"]
    # The prompted model is scored on the lesions it was shown: those with a RECIST.
    assert len([r for r in compare.rows if r["model"] in {e.name for e in whole}]) == \
        3 * (1 + n_truth)
    assert any(r["model"].startswith("prompted") for r in compare.rows)
    assert all(0.0 <= row["dice"] <= 1.0 for row in compare.rows)
    set_checked(qtbot, compare.side_button, True)
    assert viewer.canvas.grid.enabled
    set_checked(qtbot, compare.side_button, False)
    assert not viewer.canvas.grid.enabled

    # Segment from the RECIST with the prompted model: a preview that Keep copies.
    segment = open_dock(viewer, "Segment from RECIST", SegmentWidget)
    prompted = next(e.name for e in MODEL_REGISTRY if e.kind == "prompted")
    pick(segment.recist_combo, recist.name)
    pick(segment.model_combo, prompted)
    qtbot.waitUntil(lambda: segment.preview_layer is not None, timeout=60000)
    qtbot.waitUntil(lambda: segment._worker is None and len(segment.rows()) == n_sample + 2
                    and all(r["note"] in ("", "empty prediction") for r in segment.rows()),
                    timeout=60000)
    assert "mm" in "".join(str(segment.table_model.headerData(c, Qt.Orientation.Horizontal))
                           for c in range(segment.table_model.columnCount()))
    kept_before = len(viewer.layers)
    click(qtbot, segment.keep_button)
    assert len(viewer.layers) == kept_before + 1
    kept = viewer.layers[f"{image.name} prompted masks"]
    np.testing.assert_array_equal(kept.data, segment.preview_layer.data)
    assert kept is not segment.preview_layer

    # Nothing the user had was changed: the image, the true masks, and the sample's lines
    # (the RECIST layer holds exactly the sample's lines and the four drawn ones).
    np.testing.assert_array_equal(image.data, image_before)
    np.testing.assert_array_equal(truth.data, truth_before)
    now = _lines(recist)
    assert len(now) == len(lines_before) + 4
    for old, new in zip(lines_before, now):
        np.testing.assert_array_equal(old, new)
    assert not [n for n in notifications if n[0] == "error"], notifications
