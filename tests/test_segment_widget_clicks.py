"""The Segment from RECIST widget with a real viewer, driven the way a user drives it.

Lesions are drawn with the RECIST annotation widget, the model is loaded with the Load
button (the folder dialog answered by the test), the model list is picked from, vertices are
dragged with napari's own mouse callbacks, and Keep and Stop are clicked. The prompted model is
trained here on 32-pixel crops of generated CT-like slices (bright elliptic
lesions), three short epochs at a high learning rate: enough for masks that overlap the
lesions well (fewer steps leave every probability under the threshold), not a measure of
quality.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from napari_recist_seg.core.recist import recist_from_mask
from napari_recist_seg.plugin.layer_units import META_KEY
from napari_recist_seg.plugin.training_job import prepare_torch_import
from napari_recist_seg.plugin.widgets.segment_widget import (
    SegmentWidget,
    keep_name,
    preview_name,
)

from ._gui import click, pick, type_number
from ._learning_data import TABLE_SOURCE, crop_preprocessing, quick, saved_model

PLUGIN = "napari-recist-seg"
LEFT = Qt.MouseButton.LeftButton
SPACING = (0.8, 0.8)
LESION_HU, TISSUE_HU, NOISE_HU = 120.0, 20.0, 10.0
TIMEOUT = 60000

pytestmark = pytest.mark.usefixtures("empty_model_registry")


def _ellipse(shape, centre, a, b, theta):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    u = (rr - centre[0]) * np.cos(theta) + (cc - centre[1]) * np.sin(theta)
    v = -(rr - centre[0]) * np.sin(theta) + (cc - centre[1]) * np.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _ct(masks, shape, seed):
    """A CT-like slice in HU: soft tissue with bright lesions where ``masks`` are."""
    rng = np.random.default_rng(seed)
    lesion = np.any(masks, axis=0) if len(masks) else np.zeros(shape, bool)
    image = np.where(lesion, LESION_HU, TISSUE_HU) + rng.normal(0, NOISE_HU, shape)
    return image.astype(np.float32)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A prompted model trained briefly, a model that is not prompted, and a prompted
    model that takes three channels."""
    from napari_recist_seg.learning.preparation import prepare_crops
    from napari_recist_seg.learning.trainer import TrainConfig, train

    prepare_torch_import()
    rng = np.random.default_rng(0)
    images, recists = [], []
    for i in range(48):
        mask = _ellipse((96, 96), rng.uniform(35, 60, 2), rng.uniform(8, 16), rng.uniform(5, 9),
                        rng.uniform(0, np.pi))
        images.append(_ct([mask], mask.shape, seed=100 + i))
        recists.append(recist_from_mask(mask))
    root = tmp_path_factory.mktemp("segment-models")
    data = prepare_crops(images, recists, size=32, val_fraction=0.25, k=2,
                         window=(-160.0, 240.0))
    config = TrainConfig(kind="prompted", input_size=32, in_channels=1, epochs=3, batch_size=4,
                         lr=3e-3, schedule="constant", seed=0, device="cpu")
    with quick():
        for _event in train(data.train_set, data.val_set, config, root / "prompted",
                            grouping=data.grouping):
            pass
        others = {
            "a1": saved_model(root / "a1", "a1", in_channels=1,
                              preprocessing=crop_preprocessing()),
            "rgb": saved_model(root / "rgb", "prompted", in_channels=3,
                               preprocessing=crop_preprocessing()),
        }
    return {"prompted": root / "prompted" / "best", **others}


@pytest.fixture
def predict_calls(monkeypatch):
    """The RECIST passed to each call of the library's prediction, in order."""
    from napari_recist_seg.learning import inference

    calls = []
    real = inference.predict_detailed

    def counted(model, image, recists=None, **kwargs):
        calls.append(list(recists))
        return real(model, image, recists, **kwargs)

    monkeypatch.setattr(inference, "predict_detailed", counted)
    return calls


def _patch_folder_dialog(monkeypatch, path):
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *args, **kwargs: str(path)))


def _recist_widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotation")
    return widget


def _segment_widget(viewer):
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment from RECIST")
    return widget


def _one_lesion(make_napari_viewer, qtbot, draw, mask, seed, name="ct"):
    """A viewer with a CT-like slice, ``mask``'s RECIST drawn on it through the RECIST dock,
    and the Segment dock open: (viewer, RECIST lines layer, Segment widget)."""
    viewer = make_napari_viewer()
    viewer.add_image(_ct([mask], mask.shape, seed=seed), name=name, scale=SPACING)
    annotation = _recist_widget(viewer)
    click(qtbot, annotation.new_button)
    lines = annotation.recist_layer()
    _draw_lesion(draw, lines, recist_from_mask(mask, spacing=SPACING))
    return viewer, lines, _segment_widget(viewer)


def _draw_lesion(draw, layer, recist, z=None):
    for axis in (recist.long_axis, recist.short_axis):
        points = np.asarray(axis, dtype=float)
        if z is not None:
            points = np.column_stack([np.full(2, float(z)), points])
        draw(layer, points)


def _drag_vertex(layer, line: int, vertex: int, to):
    """Drag a vertex of a line with napari's direct-selection tool, as the mouse does."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    layer.mode = "direct"
    layer.selected_data = {line}
    start = tuple(layer.data_to_world(np.asarray(layer.data[line][vertex], dtype=float)))
    end = tuple(layer.data_to_world(np.asarray(to, dtype=float)))
    mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", position=start))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=start))
    mouse_move_callbacks(
        layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=end))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=end))


def _idle(widget):
    return widget._worker is None and not widget._timer.isActive() and \
        widget.load_button.isEnabled()


def _wait_segmented(qtbot, widget, n_rows):
    def done():
        rows = widget.rows()
        return (_idle(widget) and widget.preview_layer is not None and len(rows) == n_rows
                and all(r["note"] in ("", "empty prediction") for r in rows))

    qtbot.waitUntil(done, timeout=TIMEOUT)


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def _snapshot(layer):
    data = layer.data
    return [np.array(d) for d in data] if isinstance(data, list) else np.array(data)


def _same(before, layer) -> bool:
    now = layer.data
    if isinstance(before, list):
        return len(before) == len(now) and all(np.array_equal(a, b) for a, b in zip(before, now))
    return np.array_equal(before, now)


# -- the whole story on a slice ---------------------------------------------------------------
def test_lesions_segmented_live_kept_and_stopped(make_napari_viewer, qtbot, checkpoints, draw,
                                                 predict_calls, monkeypatch):
    shape = (128, 128)
    masks = [_ellipse(shape, (40, 45), 13, 8, 0.4), _ellipse(shape, (88, 85), 11, 7, 2.0)]
    viewer = make_napari_viewer()
    image = viewer.add_image(_ct(masks, shape, seed=7), name="ct", scale=SPACING)
    recists = [recist_from_mask(m, spacing=SPACING) for m in masks]
    annotation = _recist_widget(viewer)
    click(qtbot, annotation.new_button)
    lines = annotation.recist_layer()
    for r in recists:
        _draw_lesion(draw, lines, r)

    widget = _segment_widget(viewer)
    assert widget.recist_layer() is lines and widget.image_layer() is image
    assert widget.model_combo.currentText() == "(no model: Load...)"
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    _wait_segmented(qtbot, widget, 2)

    preview = widget.preview_layer
    assert preview.name == preview_name("ct") and preview in viewer.layers
    assert preview.data.shape == shape and tuple(preview.scale) == SPACING
    assert preview.metadata[META_KEY]["role"] == "prompted preview"
    # The lines stay above the masks, and the layer being drawn in stays the active one.
    assert viewer.layers.index(preview) < viewer.layers.index(lines)
    assert viewer.layers.selection.active is lines
    assert len(predict_calls) == 2
    for label, mask in ((1, masks[0]), (2, masks[1])):
        assert _dice(preview.data == label, mask) > 0.6, label

    # The table: drawn and measured diameters in mm, the mask's area in mm².
    rows = widget.rows()
    assert [r["lesion"] for r in rows] == ["0", "1"]
    for row, r, label in zip(rows, recists, (1, 2)):
        assert row["drawn long (mm)"] == f"{r.long_mm:.1f}"
        assert row["drawn short (mm)"] == f"{r.short_mm:.1f}"
        area = float(row["mask area (mm²)"])
        assert 0 < area <= (preview.data == label).sum() * 0.64 + 0.05
        assert float(row["mask long (mm)"]) == pytest.approx(r.long_mm, rel=0.3)
        assert float(row["mask short (mm)"]) == pytest.approx(r.short_mm, rel=0.4)
    assert "2 segmented" in widget.status.text()
    # A 2D image has no slice column to show; titles wrap onto two lines to keep it narrow.
    assert widget.table.isColumnHidden(1)
    assert widget.table_model.headerData(2, Qt.Orientation.Horizontal) == "drawn\nlong (mm)"

    # Moving a vertex of lesion 1's short axis predicts lesion 1 again, and only it.
    first = preview.data == 1
    end = np.asarray(lines.data[3][1]) + [2.0, 1.0]
    _drag_vertex(lines, 3, 1, end)
    qtbot.waitUntil(lambda: len(predict_calls) == 3 and _idle(widget), timeout=TIMEOUT)
    _wait_segmented(qtbot, widget, 2)
    np.testing.assert_allclose(predict_calls[-1][0].short_axis[1], end)
    np.testing.assert_array_equal(preview.data == 1, first)
    assert (preview.data == 2).any()
    # Back where it was: the mask is the one predicted before, without running the model.
    _drag_vertex(lines, 3, 1, end - [2.0, 1.0])
    qtbot.wait(200)
    _wait_segmented(qtbot, widget, 2)
    assert len(predict_calls) == 3

    # A deleted lesion leaves the preview; a new one is predicted on its own.
    lines.selected_data = {2, 3}
    lines.remove_selected()
    qtbot.waitUntil(lambda: _idle(widget) and not (preview.data == 2).any(), timeout=TIMEOUT)
    assert len(predict_calls) == 3 and len(widget.rows()) == 1
    moved = recists[1].translated((0.5, -0.5))
    _draw_lesion(draw, lines, moved)
    qtbot.waitUntil(lambda: len(predict_calls) == 4, timeout=TIMEOUT)
    _wait_segmented(qtbot, widget, 2)
    np.testing.assert_allclose(predict_calls[-1][0].long_axis, moved.long_axis)
    assert _dice(preview.data > 1, masks[1]) > 0.6

    # Keep: a new layer equal to the preview; the user's layers are as they were.
    before = {layer.name: _snapshot(layer) for layer in (image, lines)}
    n_layers = len(viewer.layers)
    click(qtbot, widget.keep_button)
    assert len(viewer.layers) == n_layers + 1
    kept = viewer.layers[keep_name("ct")]
    np.testing.assert_array_equal(kept.data, preview.data)
    assert kept is not preview and kept.data is not preview.data
    assert kept.data.dtype == np.uint8  # a quarter of the preview's memory
    assert tuple(kept.scale) == SPACING
    assert kept.metadata[META_KEY]["role"] == "prompted masks"
    assert _same(before["ct"], image) and _same(before[lines.name], lines)
    assert lines.nshapes == 4

    # Stop removes the preview and no longer follows the lines; the kept layer stays.
    click(qtbot, widget.stop_button)
    assert widget.preview_layer is None and preview not in viewer.layers
    assert kept in viewer.layers
    _drag_vertex(lines, 1, 1, np.asarray(lines.data[1][1]) + [1.0, 0.0])
    qtbot.wait(200)
    assert len(predict_calls) == 4 and widget.preview_layer is None
    assert not widget.stop_button.isEnabled() and not widget.keep_button.isEnabled()
    # Segment starts again: the moved lesion is predicted, the other comes from the cache.
    widget.segment_button.click()  # through Qt: the button's clicked signal
    _wait_segmented(qtbot, widget, 2)
    assert len(predict_calls) == 5 and widget.preview_layer in viewer.layers


def test_threshold_measures_again_without_running_the_model(make_napari_viewer, qtbot,
                                                            checkpoints, draw, predict_calls,
                                                            monkeypatch):
    shape = (96, 96)
    mask = _ellipse(shape, (48, 48), 14, 9, 0.7)
    viewer, _lines, widget = _one_lesion(make_napari_viewer, qtbot, draw, mask, seed=3)
    # The network's own probabilities: a refined map is 0 or 1 over much of the patch.
    pick(widget.refine_combo, "None: the network's own mask")
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    _wait_segmented(qtbot, widget, 1)
    area = float(widget.rows()[0]["mask area (mm²)"])
    pixels = int((widget.preview_layer.data > 0).sum())

    type_number(qtbot, widget.threshold_spin, 0.3)
    qtbot.waitUntil(lambda: _idle(widget) and widget.rows()[0]["mask area (mm²)"] != f"{area:.1f}",
                    timeout=TIMEOUT)
    assert float(widget.rows()[0]["mask area (mm²)"]) > area
    assert int((widget.preview_layer.data > 0).sum()) > pixels
    assert len(predict_calls) == 1


def test_refinement_picked_in_the_list_predicts_again_and_is_kept_with_the_masks(
        make_napari_viewer, qtbot, checkpoints, draw, predict_calls, monkeypatch):
    from napari_recist_seg.core.trimap import LESION, recist_trimap

    shape = (96, 96)
    mask = _ellipse(shape, (48, 48), 14, 9, 0.7)
    viewer, _lines, widget = _one_lesion(make_napari_viewer, qtbot, draw, mask, seed=4)
    assert widget.refine() == "random_walker"
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    _wait_segmented(qtbot, widget, 1)
    # The default refinement keeps what the RECIST guarantees: its axes are lesion.
    recist = recist_from_mask(mask, spacing=SPACING)
    certain = recist_trimap(recist, shape) == LESION
    assert (widget.preview_layer.data[certain] > 0).all()

    pick(widget.refine_combo, "None: the network's own mask")
    qtbot.waitUntil(lambda: _idle(widget) and len(predict_calls) == 2, timeout=TIMEOUT)
    assert widget.refine() == "none"
    kept = widget.keep()
    assert kept.metadata[META_KEY]["refine"] == "none"
    # Back to the first choice: its masks come from the cache, the model is not run again.
    pick(widget.refine_combo, "RECIST trimap + image (random walker)")
    qtbot.waitUntil(lambda: _idle(widget), timeout=TIMEOUT)
    assert len(predict_calls) == 2
    assert (widget.preview_layer.data[certain] > 0).all()


# -- a stack of slices ------------------------------------------------------------------------
def test_volume_lesion_is_segmented_on_its_own_slice(make_napari_viewer, qtbot, checkpoints,
                                                     draw, monkeypatch):
    shape = (96, 96)
    mask = _ellipse(shape, (50, 40), 13, 8, 1.1)
    volume = np.stack([_ct([], shape, seed=z) for z in range(5)])
    volume[2] = _ct([mask], shape, seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="ct stack", scale=(2.5, *SPACING))
    annotation = _recist_widget(viewer)
    click(qtbot, annotation.new_button)
    lines = annotation.recist_layer()
    assert lines.ndim == 3
    _draw_lesion(draw, lines, recist_from_mask(mask, spacing=SPACING), z=2)

    widget = _segment_widget(viewer)
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    _wait_segmented(qtbot, widget, 1)
    preview = widget.preview_layer
    assert preview.data.shape == volume.shape and tuple(preview.scale) == (2.5, *SPACING)
    assert _dice(preview.data[2] == 1, mask) > 0.6
    assert not preview.data[[0, 1, 3, 4]].any()
    assert widget.rows()[0]["slice"] == "2" and not widget.table.isColumnHidden(1)


def test_a_table_model_segments_the_stack_opened_from_its_table(make_napari_viewer, qtbot,
                                                                tmp_path, monkeypatch,
                                                                notifications):
    """A model trained on a lesion table reads each key slice with its neighbours: on the
    stack the reader makes of that table they come from the series files."""
    from napari_recist_seg.learning import inference

    from ._recist_table_data import DL_SLICES, write_deeplesion

    table = write_deeplesion(tmp_path / "dl")
    model = saved_model(tmp_path / "model", "prompted", in_channels=3,
                        preprocessing=crop_preprocessing(window=(-175.0, 275.0),
                                                         source=TABLE_SOURCE))
    seen = []
    real = inference.predict_detailed

    def spied(model, image, recists=None, **kwargs):
        seen.append((np.shape(image), kwargs.get("channel_axis")))
        return real(model, image, recists, **kwargs)

    monkeypatch.setattr(inference, "predict_detailed", spied)
    viewer = make_napari_viewer()
    viewer.open(str(table), plugin=PLUGIN)
    widget = _segment_widget(viewer)
    _patch_folder_dialog(monkeypatch, model)
    click(qtbot, widget.load_button)
    n_lesions = sum(len(lesions) for *_, lesions, _split in DL_SLICES)
    qtbot.waitUntil(lambda: _idle(widget) and widget.preview_layer is not None
                    and len(widget.rows()) == n_lesions, timeout=TIMEOUT)
    assert not [text for level, text in notifications if level == "error"]
    assert all(r["note"] in ("", "empty prediction") for r in widget.rows()), widget.rows()
    assert seen and set(seen) == {((3, 64, 64), 0)}


def test_a_model_of_grey_key_slices_segments_a_grey_slice(make_napari_viewer, qtbot, tmp_path,
                                                         draw, monkeypatch, notifications):
    """A table of 8-bit grey key slices records one neighbour on each side but gives the
    network one channel: the slice is read alone, not as three copies."""
    grey_table = {**TABLE_SOURCE, "kind": "recist", "in_channels": 1}
    model = saved_model(tmp_path / "model", "prompted", in_channels=1,
                        preprocessing=crop_preprocessing(source=grey_table))
    shape = (96, 96)
    mask = _ellipse(shape, (48, 48), 12, 8, 0.3)
    _viewer, _lines, widget = _one_lesion(make_napari_viewer, qtbot, draw, mask, seed=5,
                                          name="slice")
    _patch_folder_dialog(monkeypatch, model)
    click(qtbot, widget.load_button)
    qtbot.waitUntil(lambda: _idle(widget) and widget.preview_layer is not None
                    and len(widget.rows()) == 1, timeout=TIMEOUT)
    assert not [text for level, text in notifications if level == "error"]
    assert widget.rows()[0]["note"] in ("", "empty prediction"), widget.rows()


# -- models and messages ----------------------------------------------------------------------
def test_models_that_cannot_segment_from_recist_say_why(make_napari_viewer, qtbot, checkpoints,
                                                        draw, monkeypatch, notifications):
    shape = (96, 96)
    mask = _ellipse(shape, (48, 48), 12, 8, 0.3)
    viewer, _lines, widget = _one_lesion(make_napari_viewer, qtbot, draw, mask, seed=5)
    n_layers = len(viewer.layers)

    # A model that does not take the RECIST: loaded, chosen, refused with the reason.
    _patch_folder_dialog(monkeypatch, checkpoints["a1"])
    click(qtbot, widget.load_button)
    qtbot.waitUntil(lambda: _idle(widget) and "Not segmented" in widget.status.text(),
                    timeout=TIMEOUT)
    errors = [text for level, text in notifications if level == "error"]
    assert errors and "A1 model" in errors[-1] and "RECIST-prompted" in errors[-1]
    assert "does not take the lesion's RECIST" in widget.status.text()
    assert widget.model_combo.currentText().endswith("[not prompted]")
    assert len(viewer.layers) == n_layers and widget.preview_layer is None
    # The lesion is on the image: its row does not say otherwise (the status says why).
    assert [row["note"] for row in widget.rows()] == [""]

    # A prompted model whose channels the grey image does not give.
    _patch_folder_dialog(monkeypatch, checkpoints["rgb"])
    click(qtbot, widget.load_button)
    qtbot.waitUntil(lambda: _idle(widget) and "3-channel" in widget.status.text(),
                    timeout=TIMEOUT)
    assert "'ct' is a grey image (1 channel)" in notifications[-1][1]
    assert widget.preview_layer is None

    # The right model, picked from the list: the lesion is segmented.
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    _wait_segmented(qtbot, widget, 1)
    names = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    prompted_name = widget.model_combo.currentText()
    pick(widget.model_combo, next(n for n in names if n.endswith("[not prompted]")))
    assert widget.preview_layer is None and "Not segmented" in widget.status.text()
    pick(widget.model_combo, prompted_name)
    _wait_segmented(qtbot, widget, 1)
    assert (widget.preview_layer.data == 1).any()


def test_without_image_or_model_segment_says_what_is_missing(make_napari_viewer, qtbot,
                                                             notifications):
    viewer = make_napari_viewer()
    widget = _segment_widget(viewer)
    click(qtbot, widget.segment_button)
    assert notifications[-1][0] == "error" and "no image layer" in notifications[-1][1]
    assert "no image layer" in widget.status.text()
    viewer.add_image(np.zeros((32, 32), np.float32), name="ct")
    click(qtbot, widget.segment_button)
    assert "load a RECIST-prompted one" in notifications[-1][1]
    assert not widget.keep_button.isEnabled() and len(viewer.layers) == 1


def test_segment_clicked_while_the_model_loads_waits_for_it(make_napari_viewer, qtbot,
                                                          checkpoints, draw, monkeypatch,
                                                          notifications):
    import threading

    from napari_recist_seg.plugin import model_registry

    shape = (96, 96)
    mask = _ellipse(shape, (48, 48), 12, 8, 0.3)
    _viewer, _lines, widget = _one_lesion(make_napari_viewer, qtbot, draw, mask, seed=5)
    release = threading.Event()
    real_load = model_registry.load_entry

    def slow_load(*args, **kwargs):
        release.wait(TIMEOUT / 1000)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(model_registry, "load_entry", slow_load)
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    assert not widget.load_button.isEnabled()  # loading
    click(qtbot, widget.segment_button)
    assert "still loading" in widget.status.text()
    assert not [n for n in notifications if n[0] == "error"]
    release.set()
    _wait_segmented(qtbot, widget, 1)
    assert _dice(widget.preview_layer.data == 1, mask) > 0.5
    assert not [n for n in notifications if n[0] == "error"]


def _segmented_lesion(make_napari_viewer, qtbot, draw, monkeypatch, checkpoints):
    """One drawn lesion segmented live with the prompted model loaded by its button."""
    mask = _ellipse((96, 96), (48, 48), 12, 8, 0.3)
    viewer, lines, widget = _one_lesion(make_napari_viewer, qtbot, draw, mask, seed=5)
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    _wait_segmented(qtbot, widget, 1)
    return viewer, lines, widget


def test_closing_the_dock_while_predicting_leaves_the_viewer_working(
        make_napari_viewer, qtbot, checkpoints, draw, monkeypatch, predict_calls):
    viewer, lines, widget = _segmented_lesion(make_napari_viewer, qtbot, draw, monkeypatch,
                                              checkpoints)
    preview = widget.preview_layer

    _drag_vertex(lines, 1, 1, np.asarray(lines.data[1][1]) + [1.0, 0.0])
    qtbot.waitUntil(lambda: widget._worker is not None, timeout=TIMEOUT)
    viewer.window.remove_dock_widget(widget)
    with qtbot.waitSignal(widget.destroyed, timeout=TIMEOUT):
        widget.deleteLater()  # what becomes of a closed dock's widget nobody holds
    qtbot.wait(1500)
    # The lines are still edited; the preview went with its dock and nothing follows them.
    calls = len(predict_calls)
    _drag_vertex(lines, 1, 1, np.asarray(lines.data[1][1]) + [1.0, 0.0])
    qtbot.wait(300)
    assert preview not in viewer.layers and len(predict_calls) == calls
    assert [layer.name for layer in viewer.layers] == ["ct", lines.name]


@pytest.mark.parametrize("dock", ["Segment from RECIST", "Groups and pseudo-masks"])
def test_lengths_on_lines_follow_a_drag_without_the_annotation_widget(make_napari_viewer,
                                                                      tmp_path, dock):
    # A RECIST file opened from the File menu and edited with only another dock of the plugin
    # open: the line's label must show the new length, as the lesion table beside it does.
    from napari_recist_seg.core.recist import Recist
    from napari_recist_seg.data.recist_files import RecistTable, write_recists

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="ct", scale=(0.5, 0.5))
    path = write_recists(tmp_path / "lesions.csv", RecistTable(
        [Recist([[30, 10], [30, 40]], [[22, 25], [38, 25]], (0.5, 0.5))]))
    (lines,) = viewer.open(str(path), plugin=PLUGIN)
    viewer.window.add_plugin_dock_widget(PLUGIN, dock)
    long_line = list(lines.features["axis"]).index("long")
    assert lines.features["measurement"][long_line] == "15.0 x 8.0 mm"

    _drag_vertex(lines, long_line, 1, (30, 50))
    assert lines.features["length_mm"][long_line] == pytest.approx(20.0)
    assert lines.features["measurement"][long_line] == "20.0 x 8.0 mm"


def test_one_edit_updates_the_layer_once_with_three_widgets_docked(make_napari_viewer, tmp_path,
                                                                   monkeypatch):
    # Every widget that follows the layer receives the drag's event; the layer's pairing and
    # labels are worked out once for it, not once per widget.
    from napari_recist_seg.core.recist import Recist
    from napari_recist_seg.data.recist_files import RecistTable, write_recists
    from napari_recist_seg.plugin import recist_layers

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="ct", scale=(0.5, 0.5))
    path = write_recists(tmp_path / "lesions.csv", RecistTable(
        [Recist([[30, 10], [30, 40]], [[22, 25], [38, 25]], (0.5, 0.5))]))
    (lines,) = viewer.open(str(path), plugin=PLUGIN)
    for dock in ("RECIST annotation", "Segment from RECIST", "Groups and pseudo-masks"):
        viewer.window.add_plugin_dock_widget(PLUGIN, dock)
    calls = []
    real = recist_layers.sync_recist_layer
    monkeypatch.setattr(recist_layers, "sync_recist_layer",
                        lambda layer, *args: calls.append(layer) or real(layer, *args))
    long_line = list(lines.features["axis"]).index("long")
    _drag_vertex(lines, long_line, 1, (30, 50))
    assert calls == [lines]
    assert lines.features["measurement"][long_line] == "20.0 x 8.0 mm"


def test_closing_the_dock_by_its_close_button_stops_following_the_lines(
        make_napari_viewer, qtbot, checkpoints, draw, monkeypatch, predict_calls):
    viewer, lines, widget = _segmented_lesion(make_napari_viewer, qtbot, draw, monkeypatch,
                                              checkpoints)
    preview = widget.preview_layer
    assert preview in viewer.layers
    dock = widget.parent()
    click(qtbot, dock.title.close_button)  # the dock's own x, as a user closes it
    qtbot.waitUntil(lambda: widget.parent() is None, timeout=TIMEOUT)
    assert preview not in viewer.layers
    calls = len(predict_calls)
    _drag_vertex(lines, 1, 1, np.asarray(lines.data[1][1]) + [1.0, 0.0])
    qtbot.wait(600)
    assert len(predict_calls) == calls
    assert not any(layer.name == preview.name for layer in viewer.layers)


def test_each_scan_is_segmented_with_its_own_recist_layer(make_napari_viewer, qtbot, checkpoints,
                                                          draw, monkeypatch):
    # Two scans of other pixel sizes and origins, each with its RECIST layer, drawn through
    # the annotation dock: the lesions of one scan must never be segmented on the other.
    shape = (96, 96)
    masks = {"head": _ellipse(shape, (40, 45), 13, 8, 0.4),
             "neck": _ellipse(shape, (55, 50), 11, 7, 2.0)}
    grids = {"head": ((0.8, 0.8), (0.0, 0.0)), "neck": ((0.5, 0.5), (12.0, -30.0))}
    viewer = make_napari_viewer()
    for k, (name, mask) in enumerate(masks.items()):
        scale, translate = grids[name]
        viewer.add_image(_ct([mask], shape, seed=20 + k), name=name, scale=scale,
                         translate=translate)
    annotation = _recist_widget(viewer)
    lines = {}
    for name, mask in masks.items():
        pick(annotation.image_combo, name)
        click(qtbot, annotation.new_button)
        lines[name] = annotation.recist_layer()
        _draw_lesion(draw, lines[name], recist_from_mask(mask))
    widget = _segment_widget(viewer)
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)

    # Picking a scan picks its own RECIST layer, whichever RECIST layer is on top.
    pick(widget.image_combo, "head")
    assert widget.recist_combo.layer() is lines["head"]
    _wait_segmented(qtbot, widget, 1)
    long_mm = float(widget.rows()[0]["drawn long (mm)"])
    expected = recist_from_mask(masks["head"], spacing=grids["head"][0]).long_mm
    assert abs(long_mm - expected) < 0.1
    assert _dice(widget.preview_layer.data == 1, masks["head"]) > 0.5

    pick(widget.image_combo, "neck")
    assert widget.recist_combo.layer() is lines["neck"]
    _wait_segmented(qtbot, widget, 1)
    assert _dice(widget.preview_layer.data == 1, masks["neck"]) > 0.5

    # Picking the other scan's RECIST layer picks that scan.
    pick(widget.recist_combo, lines["head"].name)
    assert widget.image_combo.layer().name == "head"
    pick(widget.image_combo, "neck")
    assert widget.recist_combo.layer() is lines["neck"]
    # Lines no image claims (copied onto the head's grid by hand), picked for the neck, stop
    # the live preview with the reason.
    viewer.add_shapes([np.asarray(d) for d in lines["head"].data], shape_type="line",
                      name="loose lines", scale=lines["head"].scale,
                      translate=lines["head"].translate, features=lines["head"].features.copy())
    pick(widget.recist_combo, "loose lines")
    assert widget.image_combo.layer().name == "neck"
    qtbot.waitUntil(lambda: _idle(widget) and "another grid" in widget.status.text(),
                    timeout=TIMEOUT)
    assert "the RECIST layer 'loose lines' lies on another grid than 'neck'" in \
        widget.status.text()
    assert widget.preview_layer is None
    click(qtbot, widget.segment_button)
    assert widget.status.text().startswith("Not segmented: the RECIST layer 'loose lines'")


def test_pictures_of_one_size_keep_their_own_lesions(make_napari_viewer, qtbot, checkpoints,
                                                     draw, monkeypatch):
    # Two pictures on one grid (same size, no pixel size): each widget must pair a picture
    # with the RECIST layer drawn on it, never with the other's.
    shape = (96, 96)
    masks = {"A": _ellipse(shape, (40, 45), 13, 8, 0.4),
             "B": _ellipse(shape, (55, 50), 11, 7, 2.0)}
    viewer = make_napari_viewer()
    for k, (name, mask) in enumerate(masks.items()):
        viewer.add_image(_ct([mask], shape, seed=30 + k), name=name)
    annotation = _recist_widget(viewer)
    pick(annotation.image_combo, "A")
    click(qtbot, annotation.new_button)
    lines = {"A": annotation.recist_layer()}
    _draw_lesion(draw, lines["A"], recist_from_mask(masks["A"]))
    # Picking B lets go of A's layer; Draw lesion then makes B's own.
    pick(annotation.image_combo, "B")
    assert annotation.recist_combo.layer() is None
    click(qtbot, annotation.draw_button)
    lines["B"] = annotation.recist_layer()
    assert lines["B"] is not lines["A"] and lines["B"].name == "B RECIST"
    _draw_lesion(draw, lines["B"], recist_from_mask(masks["B"]))
    pick(annotation.image_combo, "A")
    assert annotation.recist_combo.layer() is lines["A"]

    _dock, groups = viewer.window.add_plugin_dock_widget(PLUGIN, "Groups and pseudo-masks")
    _dock, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
    widget = _segment_widget(viewer)
    for w in (groups, compare, widget):
        # Opened over both pictures, each starts on one picture with its own lesions.
        assert w.recist_combo.layer() is lines[w.image_combo.layer().name]
        pick(w.image_combo, "A")
        assert w.recist_combo.layer() is lines["A"]
        pick(w.recist_combo, "B RECIST")
        assert w.image_combo.layer().name == "B"
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    _wait_segmented(qtbot, widget, 1)
    assert widget.preview_layer.name == "B prompted preview"
    assert _dice(widget.preview_layer.data == 1, masks["B"]) > 0.5


def test_a_lesion_reaching_past_the_image_is_left_out_and_named(make_napari_viewer, qtbot,
                                                               checkpoints, draw, monkeypatch):
    shape = (96, 96)
    mask = _ellipse(shape, (48, 48), 14, 9, 0.7)
    viewer, lines, widget = _one_lesion(make_napari_viewer, qtbot, draw, mask, seed=5)
    # A second lesion whose long axis runs off the right edge.
    draw(lines, [[20.0, 80.0], [20.0, 110.0]])
    draw(lines, [[14.0, 95.0], [26.0, 95.0]])
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    qtbot.waitUntil(lambda: _idle(widget) and widget.preview_layer is not None
                    and widget.rows()[0]["note"] == "", timeout=TIMEOUT)
    assert widget.rows()[1]["note"] == "reaches past the image's edge"
    assert widget.preview_layer.data.any()


def test_keep_while_lesions_are_being_segmented_keeps_nothing_and_says_so(
        make_napari_viewer, qtbot, checkpoints, draw, monkeypatch):
    import threading

    from napari_recist_seg.learning import inference

    shape = (96, 96)
    masks = [_ellipse(shape, (35, 35), 12, 8, 0.3), _ellipse(shape, (65, 60), 10, 7, 1.2)]
    viewer, lines, widget = _one_lesion(make_napari_viewer, qtbot, draw, masks[0], seed=8)
    _draw_lesion(draw, lines, recist_from_mask(masks[1], spacing=SPACING))
    # The second lesion's prediction waits until the test lets it go.
    release, real, calls = threading.Event(), inference.predict_detailed, []

    def held(model, image, recists=None, **kwargs):
        calls.append(recists)
        if len(calls) > 1:
            release.wait(30)
        return real(model, image, recists, **kwargs)

    monkeypatch.setattr(inference, "predict_detailed", held)
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    # The first lesion's mask is shown (Keep is enabled once there is a preview) while the
    # second is still held.
    qtbot.waitUntil(lambda: len(calls) == 2 and widget.keep_button.isEnabled(),
                    timeout=TIMEOUT)
    n_layers = len(viewer.layers)
    click(qtbot, widget.keep_button)
    assert len(viewer.layers) == n_layers
    assert widget.status.text().startswith("Not kept: ")
    assert "still being segmented" in widget.status.text()
    release.set()
    _wait_segmented(qtbot, widget, 2)
    click(qtbot, widget.keep_button)
    kept = viewer.layers[keep_name("ct")]
    assert set(np.unique(kept.data)) == {0, 1, 2}


def test_a_model_loaded_before_any_image_waits_without_an_error(make_napari_viewer, qtbot,
                                                                checkpoints, monkeypatch,
                                                                notifications):
    viewer = make_napari_viewer()
    widget = _segment_widget(viewer)
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    qtbot.waitUntil(lambda: _idle(widget) and widget.model_entry() is not None,
                    timeout=TIMEOUT)
    assert "there is no image layer" in widget.status.text()
    assert not [text for level, text in notifications if level == "error"]
    # Pressed by the user, Segment still says it out loud.
    click(qtbot, widget.segment_button)
    assert [text for level, text in notifications if level == "error"]


def test_recist_simulated_from_each_pictures_mask_stays_with_that_picture(
        make_napari_viewer, qtbot, checkpoints, monkeypatch):
    # Two pictures of one size with their masks; each one's RECIST simulated through the
    # annotation dock. The layers are named after the masks, yet each belongs to its picture.
    shape = (96, 96)
    masks = {"A": _ellipse(shape, (40, 45), 13, 8, 0.4),
             "B": _ellipse(shape, (55, 50), 11, 7, 2.0)}
    viewer = make_napari_viewer()
    for k, (name, mask) in enumerate(masks.items()):
        viewer.add_image(_ct([mask], shape, seed=40 + k), name=name)
        viewer.add_labels(mask.astype(np.uint8), name=f"{name} mask")
    annotation = _recist_widget(viewer)
    lines = {}
    for name in masks:
        pick(annotation.image_combo, name)
        pick(annotation.labels_combo, f"{name} mask")
        click(qtbot, annotation.simulate_button)
        qtbot.waitUntil(lambda n=name: any(layer.name == f"{n} mask RECIST"
                                           for layer in viewer.layers), timeout=TIMEOUT)
        lines[name] = viewer.layers[f"{name} mask RECIST"]
    _dock, groups = viewer.window.add_plugin_dock_widget(PLUGIN, "Groups and pseudo-masks")
    _dock, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
    widget = _segment_widget(viewer)
    for w in (annotation, groups, compare, widget):
        for name in ("A", "B", "A"):
            pick(w.image_combo, name)
            assert w.recist_combo.layer() is lines[name], (type(w).__name__, name)
    _patch_folder_dialog(monkeypatch, checkpoints["prompted"])
    click(qtbot, widget.load_button)
    _wait_segmented(qtbot, widget, 1)
    assert _dice(widget.preview_layer.data == 1, masks["A"]) > 0.5


def test_picking_another_scan_lets_go_of_the_first_scans_lesions(make_napari_viewer, qtbot,
                                                                 draw):
    # A lesion drawn on a 0.7 mm scan; a 0.5 mm scan opened after it and picked in the
    # annotation and Groups docks: its lengths must never be re-measured with 0.5 mm pixels,
    # and Draw lesion must start the new scan's own layer.
    shape = (96, 96)
    mask = _ellipse(shape, (40, 45), 13, 8, 0.4)
    viewer = make_napari_viewer()
    viewer.add_image(_ct([mask], shape, seed=50), name="first", scale=(0.7, 0.7))
    annotation = _recist_widget(viewer)
    click(qtbot, annotation.new_button)
    first = annotation.recist_layer()
    _draw_lesion(draw, first, recist_from_mask(mask))
    drawn = first.features["length_mm"].to_numpy().copy()
    expected = recist_from_mask(mask, spacing=(0.7, 0.7)).long_mm
    assert abs(drawn.max() - expected) < 0.1
    _dock, groups = viewer.window.add_plugin_dock_widget(PLUGIN, "Groups and pseudo-masks")
    viewer.add_image(_ct([mask], shape, seed=51), name="second", scale=(0.5, 0.5),
                     translate=(10.0, -20.0))
    for w in (annotation, groups):
        pick(w.image_combo, "second")
        assert w.recist_combo.layer() is None, type(w).__name__
    np.testing.assert_allclose(first.features["length_mm"].to_numpy(), drawn)
    click(qtbot, annotation.draw_button)
    second = annotation.recist_layer()
    assert second is not first and second.name == "second RECIST"
    for w in (annotation, groups):
        pick(w.image_combo, "first")
        assert w.recist_combo.layer() is first, type(w).__name__


def test_the_one_prompted_model_loaded_elsewhere_is_chosen_and_segments_on_click(
        make_napari_viewer, qtbot, checkpoints, draw):
    from napari_recist_seg.learning.inference import load_model
    from napari_recist_seg.plugin.model_registry import MODEL_REGISTRY

    shape = (96, 96)
    mask = _ellipse(shape, (48, 48), 12, 8, 0.3)
    _viewer, _lines, widget = _one_lesion(make_napari_viewer, qtbot, draw, mask, seed=5)
    # Loaded in another dock (Compare's Load model..., a training that finished).
    MODEL_REGISTRY.add("a1", checkpoints["a1"], load_model(checkpoints["a1"]))
    MODEL_REGISTRY.add("prompted", checkpoints["prompted"], load_model(checkpoints["prompted"]))
    qtbot.waitUntil(lambda: widget.model_combo.count() == 3, timeout=TIMEOUT)
    assert widget.model_entry() is not None and widget.model_entry().kind == "prompted"
    # Chosen, not started: nothing is segmented until the user asks.
    assert widget.preview_layer is None
    click(qtbot, widget.segment_button)
    _wait_segmented(qtbot, widget, 1)
    assert _dice(widget.preview_layer.data > 0, mask) > 0.5
    # Stopped, the model picked again from the list (the one already chosen) starts again.
    click(qtbot, widget.stop_button)
    assert widget.preview_layer is None
    pick(widget.model_combo, widget.model_combo.currentText())
    _wait_segmented(qtbot, widget, 1)
