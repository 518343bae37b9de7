"""The groups and pseudo-masks widget with a real viewer: K-means, plot, live preview."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from napari_recist_seg.core.pseudo_masks import pseudo_mask_labels
from napari_recist_seg.core.recist import Recist
from napari_recist_seg.plugin.colours import line_colours
from napari_recist_seg.plugin.recist_layers import recist_layer_tuple
from napari_recist_seg.plugin.widgets.groups_widget import preview_name

PLUGIN = "napari-recist-seg"


def _widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Groups and pseudo-masks")
    return widget


def _add_recist(viewer, recists, slices=None, scale=(0.5, 0.8), name="lesions"):
    from napari.layers import Layer

    from napari_recist_seg.core.recist import recists_to_shapes

    data, features = recists_to_shapes(recists, slices=slices)
    if slices is not None:
        scale = (2.5, *scale[-2:])
    return viewer.add_layer(Layer.create(*recist_layer_tuple(data, features, scale, name)))


def _lesions():
    """Three small lesions at the top left, three large ones at the bottom right."""
    small = [
        Recist([[8, 5 + 12 * i], [8, 11 + 12 * i]], [[6, 8 + 12 * i], [10, 8 + 12 * i]])
        for i in range(3)
    ]
    large = [
        Recist([[45, 10 + 22 * i], [45, 30 + 22 * i]], [[38, 20 + 22 * i], [52, 20 + 22 * i]])
        for i in range(3)
    ]
    return small + large


def _grouped(widget, qtbot, layer, k: int) -> np.ndarray:
    """Run K-means with ``k`` groups; each line's group once written to the layer."""
    widget.k_spin.setValue(k)
    widget.run_kmeans()
    with qtbot.waitSignal(widget._worker.finished, timeout=20000):
        pass
    qtbot.waitUntil(lambda: "group" in layer.features, timeout=5000)
    return layer.features["group"].to_numpy()


def test_lines_drawn_before_the_dock_opened_are_grouped_and_coloured(viewer_2d, qtbot):
    # Two of the six lesions were added by a script while no dock followed the layer: their
    # lines have no lesion yet. Opening Groups gives them theirs, as the annotation dock does.
    layer = _add_recist(viewer_2d, _lesions()[:4])
    for recist in _lesions()[4:]:
        layer.add([np.asarray(recist.short_axis), np.asarray(recist.long_axis)],
                  shape_type="line")
    assert layer.features["lesion_id"].tolist()[8:] == [-1] * 4
    widget = _widget(viewer_2d)
    assert layer.features["lesion_id"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert layer.features["axis"].tolist()[8:] == ["short", "long"] * 2
    groups = _grouped(widget, qtbot, layer, 2)
    assert np.all(groups >= 0) and np.all(groups[0::2] == groups[1::2])
    qtbot.waitUntil(lambda: len(widget._plot_ids) == 6, timeout=5000)
    widget._on_pick(SimpleNamespace(artist=widget._scatter, ind=np.array([5])))
    assert set(layer.selected_data) == {10, 11}


def test_kmeans_groups_recolour_lines_and_link_the_plot(viewer_2d, qtbot):
    layer = _add_recist(viewer_2d, _lesions())
    data_before = [np.array(d) for d in layer.data]
    widget = _widget(viewer_2d)
    assert widget.recist_layer() is layer
    groups = _grouped(widget, qtbot, layer, 2)
    # Both lines of a lesion share its group; small and large lesions are apart.
    assert np.all(groups[0::2] == groups[1::2])
    per_lesion = groups[0::2]
    assert len(set(per_lesion[:3])) == 1 and len(set(per_lesion[3:])) == 1
    assert per_lesion[0] != per_lesion[3]
    np.testing.assert_allclose(layer.edge_color, line_colours(["long"] * 12, list(groups)))
    for before, after in zip(data_before, layer.data):
        np.testing.assert_array_equal(before, after)  # grouping never moves a line
    qtbot.waitUntil(lambda: len(widget._plot_ids) == 6, timeout=5000)
    assert widget._scatter.get_offsets().shape == (6, 2)

    # Clicking a point selects that lesion's lines; selecting lines highlights the point.
    widget._on_pick(SimpleNamespace(artist=widget._scatter, ind=np.array([4])))
    assert set(layer.selected_data) == {8, 9}
    assert widget.highlighted() == [4]
    layer.selected_data = {2}
    assert widget.highlighted() == [1]
    assert widget._highlight is not None

    # Suggest K runs in a worker and sets the K box.
    widget.k_spin.setValue(1)
    widget.suggest()
    with qtbot.waitSignal(widget._worker.finished, timeout=20000):
        pass
    qtbot.waitUntil(lambda: widget.k_spin.value() >= 2, timeout=5000)
    assert 2 <= widget.k_spin.value() <= 5


def test_preview_follows_edits_and_keep_freezes_it(viewer_2d, qtbot):
    recists = _lesions()[:2] + _lesions()[3:5]
    layer = _add_recist(viewer_2d, recists)
    features_before = layer.features.copy()
    widget = _widget(viewer_2d)
    widget.method_combo.setCurrentText("quarter_ellipse")
    widget.preview_button.setChecked(True)
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=10000)
    preview = widget.preview_layer
    assert preview.name == preview_name("quarter_ellipse")
    assert sorted(np.unique(preview.data)) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(preview.scale, (0.5, 0.8))
    assert layer.features.equals(features_before)

    # Move lesion 3 by 5 rows: the preview follows, the RECIST layer holds what was set.
    moved = [np.array(d) for d in layer.data]
    for i in (6, 7):
        moved[i][:, 0] += 5
    layer.data = moved
    old_rows = np.nonzero(preview.data == 4)[0].mean()
    qtbot.waitUntil(
        lambda: abs(np.nonzero(preview.data == 4)[0].mean() - old_rows - 5) < 0.5, timeout=10000
    )
    for a, b in zip(layer.data, moved):
        np.testing.assert_array_equal(a, b)
    assert layer.features[["lesion_id", "axis"]].equals(features_before[["lesion_id", "axis"]])

    # Keep: an ordinary layer, no longer updated.
    kept = widget.keep_preview()
    assert kept is preview and kept.name == "pseudo-masks (quarter_ellipse)"
    assert widget.preview_layer is None and not widget.preview_button.isChecked()
    snapshot = kept.data.copy()
    layer.data = [np.array(d) + 1 for d in layer.data]
    qtbot.wait(2 * 150 + 100)
    np.testing.assert_array_equal(kept.data, snapshot)


def test_stack_preview_is_per_slice_and_bad_input_changes_nothing(
    viewer_3d, qtbot, draw, notifications
):
    # A RECIST layer with one line: grouping and preview refuse, with a reason.
    from napari.layers import Shapes

    lone = viewer_3d.add_layer(Shapes(ndim=3, scale=(2.5, 0.7, 0.7), name="lone"))
    draw(lone, [[2, 10, 10], [2, 10, 30]])
    widget = _widget(viewer_3d)
    widget.recist_combo.set_layer(lone)
    n_layers = len(viewer_3d.layers)
    widget.run_kmeans()
    widget.suggest()
    widget.preview_button.setChecked(True)
    assert not widget.preview_button.isChecked()
    assert len(viewer_3d.layers) == n_layers and "group" not in lone.features
    errors = [text for level, text in notifications if level == "error"]
    assert len(errors) == 3
    assert "at least two complete lesions" in errors[0]
    assert "no complete lesion" in errors[2]

    # Lesions on slices 1 and 3 of the stack: labels only on those slices.
    recists = [_lesions()[0], _lesions()[4]]
    layer = _add_recist(viewer_3d, recists, slices=[1, 3], scale=(0.7, 0.7))
    widget.recist_combo.set_layer(layer)
    widget.preview_button.setChecked(True)
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=10000)
    labels = widget.preview_layer.data
    assert labels.shape == (5, 64, 80)
    assert [sorted(np.unique(labels[z])) for z in range(5)] == [
        [0], [0, 1], [0], [0, 2], [0],
    ]
    np.testing.assert_allclose(widget.preview_layer.scale, (2.5, 0.7, 0.7))

    # Without an image layer the preview cannot take a size: refused, nothing added.
    widget.preview_button.setChecked(False)
    assert widget.preview_layer is None
    viewer_3d.layers.remove("ct stack")
    n_layers = len(viewer_3d.layers)
    widget.preview_button.setChecked(True)
    assert not widget.preview_button.isChecked() and len(viewer_3d.layers) == n_layers
    assert "choose an image layer" in notifications[-1][1]


def test_stack_preview_recomputes_only_the_slices_whose_lesions_changed(
    viewer_3d, qtbot, monkeypatch
):
    from napari_recist_seg.plugin.widgets import groups_widget as module

    asked: list[set] = []
    real = module._pseudo_mask_slices

    def recording(jobs, shape2d, method):
        asked.append(set(jobs))
        return real(jobs, shape2d, method)

    monkeypatch.setattr(module, "_pseudo_mask_slices", recording)
    recists = [_lesions()[0], _lesions()[4], _lesions()[1]]
    layer = _add_recist(viewer_3d, recists, slices=[1, 3, 4], scale=(0.7, 0.7))
    widget = _widget(viewer_3d)
    widget.recist_combo.set_layer(layer)
    widget.preview_button.setChecked(True)
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=10000)
    labels = widget.preview_layer.data
    assert asked == [{1, 3, 4}]
    slice_1, slice_4 = labels[1].copy(), labels[4].copy()

    # Move lesion 2 (slice 3) by 4 columns: only slice 3 is computed again.
    moved = [np.array(d) for d in layer.data]
    for i in (2, 3):
        moved[i][:, 2] += 4
    layer.data = moved
    old_cols = np.nonzero(labels[3] == 2)[1].mean()
    qtbot.waitUntil(lambda: np.nonzero(labels[3] == 2)[1].mean() > old_cols + 3.5, timeout=10000)
    qtbot.waitUntil(lambda: not widget._preview_running, timeout=10000)
    assert asked[1:] == [{3}]
    np.testing.assert_array_equal(labels[1], slice_1)
    np.testing.assert_array_equal(labels[4], slice_4)

    # Move lesion 1 from slice 1 to slice 2: slice 1 is cleared, slice 2 computed.
    moved = [np.array(d) for d in layer.data]
    for i in (0, 1):
        moved[i][:, 0] = 2
    layer.data = moved
    qtbot.waitUntil(lambda: not labels[1].any() and (labels[2] == 1).any(), timeout=10000)
    qtbot.waitUntil(lambda: not widget._preview_running, timeout=10000)
    assert asked[-1] == {2}
    np.testing.assert_array_equal(labels[2], slice_1)

    # Another pseudo-mask method: every slice again.
    widget.method_combo.setCurrentText("quarter_ellipse")
    qtbot.waitUntil(lambda: asked[-1] == {2, 3, 4} and not widget._preview_running,
                    timeout=10000)
    assert widget.preview_layer.name == preview_name("quarter_ellipse")
    for info in widget.lesions():
        expected = pseudo_mask_labels([info.recist], (64, 80), method="quarter_ellipse",
                                      labels=[info.lesion_id + 1])
        np.testing.assert_array_equal(labels[info.slice], expected)


def test_plugin_modules_do_not_import_torch():
    """napari must start fast: the plugin's modules leave torch unimported."""
    import subprocess
    import sys

    modules = (
        "napari_recist_seg.plugin.reader",
        "napari_recist_seg.plugin.writer",
        "napari_recist_seg.plugin.sample_data",
        "napari_recist_seg.plugin.widgets.recist_widget",
        "napari_recist_seg.plugin.widgets.groups_widget",
    )
    for name in modules:
        __import__(name)
    if "torch" not in sys.modules:
        return  # nothing in this process has loaded it, the widgets' use included
    # Another test loaded torch here; ask a fresh interpreter instead.
    code = f"import sys; import {', '.join(modules)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_plot_reads_alike_diameters_as_plain_numbers(viewer_2d, qtbot):
    # Three lesions of one short axis and long axes a hair apart: no "1e-5 + 2.0014e1".
    lesions = [Recist([[10 + 20 * i, 10], [10 + 20 * i, 40 + 1e-4 * i]],
                      [[5 + 20 * i, 25], [15 + 20 * i, 25]]) for i in range(3)]
    _add_recist(viewer_2d, lesions)
    widget = _widget(viewer_2d)
    widget._draw_plot([i for i in widget.lesions() if i.ok])
    widget.canvas.draw()
    for axis in (widget.axes.xaxis, widget.axes.yaxis):
        assert axis.get_major_formatter().get_offset() == ""


def test_a_lesion_drawn_after_k_means_is_said_to_have_no_group(viewer_2d, qtbot):
    layer = _add_recist(viewer_2d, _lesions())
    widget = _widget(viewer_2d)
    _grouped(widget, qtbot, layer, 2)
    assert widget.status.text().startswith("K-means: 6 lesions in 2 groups")
    # A seventh lesion drawn with napari's line tool: the dock pairs it, K-means has not seen it.
    layer.add_lines([np.array([[30.0, 70.0], [30.0, 90.0]]), np.array([[24.0, 80.0],
                                                                       [36.0, 80.0]])])
    qtbot.waitUntil(lambda: "Not grouped" in widget.status.text(), timeout=5000)
    assert widget.status.text().endswith(
        "Not grouped: 1 lesion(s) drawn or mended since; run K-means again.")
    _grouped(widget, qtbot, layer, 2)
    assert widget.status.text().startswith("K-means: 7 lesions in 2 groups")
    assert "Not grouped" not in widget.status.text()
