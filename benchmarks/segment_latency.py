"""How fast the Segment from RECIST preview follows an edit, and how long the viewer stalls.

A real viewer (under Xvfb: run with ``xvfb-run -a``, or let this script start a virtual
display when ``DISPLAY`` is unset) shows a 512x512 CT-like slice (the CT phantom sample
resampled to 0.4 mm pixels) with its lesions' RECIST, the RECIST annotation widget (as a user
drawing lines has it open) and the Segment from RECIST widget with a RECIST-prompted model at
the default input size (128). The model is untrained (random weights): the time a prediction
takes does not depend on what the weights are; the threshold is set to the lowest offered, so
that each mask fills its lesion's crop (the most drawing and measuring an update can need).

Each trial drags one vertex of one lesion's short axis to a new place with napari's own mouse
callbacks (press, two drag moves 30 ms apart, release), each in its own turn of the event loop
as a user's mouse events arrive, and times, from the release, until the preview layer shows
that lesion's new mask (its ``set_data`` event after the prediction). A precise 10 ms
``QTimer`` stamps every turn of the GUI event loop; the longest gap between two stamps from the
press until 100 ms after the update is the longest time the viewer could not react. Each
trial puts the vertex somewhere new, so no prediction comes from the widget's cache.

    xvfb-run -a python benchmarks/segment_latency.py
    xvfb-run -a python benchmarks/segment_latency.py --trials 20 --threads 2 --size 128
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _viewer_timing import TICK_MS, display, run_until, tick_stamps

TARGET_S = 0.5
TARGET_STALL_MS = 100.0


def _slice_512():
    """The CT phantom slice resampled to 512x512 (0.4 mm pixels), with its RECIST."""
    from skimage.transform import resize

    from napari_recist_seg.core.recist import Recist
    from napari_recist_seg.data.samples import ct_phantom_slice

    sample = ct_phantom_slice(0)
    image = resize(sample["image"].astype(np.float32), (512, 512), order=1,
                   preserve_range=True, anti_aliasing=False).astype(np.float32)
    spacing = tuple(s / 2 for s in sample["spacing"])
    # Pixel centres: coordinate c on the 256 grid is 2c + 0.5 on the 512 grid.
    recists = [Recist(r.long_axis * 2 + 0.5, r.short_axis * 2 + 0.5, spacing)
               for r in sample["recists"]]
    return image, recists, spacing


def _prompted_checkpoint(folder: Path, size: int) -> Path:
    """An untrained prompted model saved as a lesion-crop checkpoint of CT slices."""
    import torch

    from napari_recist_seg.learning.checkpoints import save_checkpoint
    from napari_recist_seg.learning.models import build_model

    torch.manual_seed(0)
    model = build_model("prompted", in_channels=1, input_size=size)
    pre = {"mode": "crops", "size": size, "normalise": None, "channel_axis": None,
           "margin": 0.5, "field_of_view_mm": None, "window": [-160.0, 240.0], "context": 0,
           "pseudo_mask_method": "quarter_ellipse"}
    return save_checkpoint(folder, model, {"preprocessing": pre, "grouping": None}, [])


def _drag_steps(layer, line: int, vertex: int, to) -> list:
    """The mouse events of dragging one vertex, as callables to run one per event-loop turn.

    A user's press, drag and release reach napari as separate Qt events, each handled in its
    own turn of the event loop; running them apart keeps the release's turn what it is in use.
    """
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
    mid = tuple((np.asarray(start) + np.asarray(end)) / 2)

    def event(callbacks, kind, position, dragging=False):
        return lambda: callbacks(layer, read_only_mouse_event(
            type=kind, is_dragging=dragging, position=position))

    return [event(mouse_move_callbacks, "mouse_move", start),
            event(mouse_press_callbacks, "mouse_press", start),
            event(mouse_move_callbacks, "mouse_move", mid, True),
            event(mouse_move_callbacks, "mouse_move", end, True),
            event(mouse_release_callbacks, "mouse_release", end)]


def measure(args, app) -> dict:
    import napari
    import torch
    from qtpy.QtCore import QTimer

    from napari_recist_seg.core.recist import recists_to_shapes
    from napari_recist_seg.learning import inference
    from napari_recist_seg.plugin.model_registry import MODEL_REGISTRY
    from napari_recist_seg.plugin.recist_layers import recist_layer_tuple
    from napari_recist_seg.plugin.widgets.segment_widget import SegmentWidget

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    folder = _prompted_checkpoint(Path(tmp.name) / "prompted", args.size)

    image, recists, spacing = _slice_512()
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="CT", scale=spacing, contrast_limits=(-160, 240),
                     units=("mm", "mm"))
    data, features = recists_to_shapes(recists)
    viewer.add_layer(napari.layers.Layer.create(
        *recist_layer_tuple(data, features, spacing, "CT RECIST")))
    lines = viewer.layers["CT RECIST"]
    _dock, _annotation = viewer.window.add_plugin_dock_widget(
        "napari-recist-seg", "RECIST annotation")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment from RECIST")

    predict_s: list[float] = []
    real = inference.predict_detailed

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            predict_s.append(time.perf_counter() - t0)

    inference.predict_detailed = timed
    entry = MODEL_REGISTRY.add("prompted", folder, inference.load_model(folder))
    # Random weights give probabilities near 0.5 everywhere: at the lowest threshold offered
    # each lesion's mask is its whole crop, the most a prediction can make the preview draw
    # and measure.
    widget.threshold_spin.setValue(widget.threshold_spin.minimum())
    widget.choose_model(entry)
    idle = lambda: widget._worker is None and not widget._timer.isActive()  # noqa: E731
    if not run_until(app, lambda: idle() and widget.preview_layer is not None
                      and len(predict_s) >= len(recists), 120):
        raise SystemExit(f"the first predictions did not finish: {widget.status.text()}")
    preview = widget.preview_layer
    warm = list(predict_s)

    updates: list[float] = []
    preview.events.set_data.connect(lambda _e: updates.append(time.perf_counter()))
    timer, stamps = tick_stamps()
    run_until(app, lambda: False, 1.0)  # the window settles

    short_line = 1  # the first lesion's short axis
    base = np.array(lines.data[short_line], dtype=float)
    direction = (base[1] - base[0]) / np.linalg.norm(base[1] - base[0])
    released: list[float] = []
    letting_go: list[float] = []
    target = {"to": base[1]}

    def edit():
        *moves, release = _drag_steps(lines, short_line, 1, target["to"])
        for move in moves:
            move()
            run_until(app, lambda: False, 0.03)  # the pointer moves on between events

        def let_go():
            letting_go.append(time.perf_counter())
            release()
            released.append(time.perf_counter())

        QTimer.singleShot(0, let_go)

    def gaps(start: float, end: float) -> tuple[float, float]:
        """(the tick gap that holds the release, the longest gap after it until ``end``)."""
        before = [s for s in stamps if s <= start]
        after = [s for s in stamps if start < s <= end]
        if not before or not after:
            return float("nan"), float("nan")
        first = (after[0] - before[-1]) * 1000.0
        rest = np.diff(after).max() * 1000.0 if len(after) > 1 else 0.0
        return first, float(rest)

    def longest_gap(start: float, end: float) -> float:
        """The longest gap between ticks from the one before ``start`` until ``end``."""
        held = [s for s in stamps if s <= start][-1:] + [s for s in stamps if start < s <= end]
        return float(np.diff(held).max() * 1000.0) if len(held) > 1 else float("nan")

    def trials(n: int, offset: int, live: bool) -> dict:
        out = {"latency": [], "drag": [], "edit": [], "after": [], "calls": []}
        for trial in range(n):
            # Lengthen the short axis a little, a new length each time (nothing cached).
            target["to"] = base[1] + direction * 0.15 * (offset + trial + 1)
            n_pred, n_upd = len(predict_s), len(updates)
            released.clear()
            letting_go.clear()
            pressed = time.perf_counter()
            edit()
            if live:
                ok = run_until(
                    app, lambda n_pred=n_pred, n_upd=n_upd: bool(released) and idle()
                    and len(predict_s) > n_pred and len(updates) > n_upd
                    and updates[-1] > released[0], args.timeout)
                if not ok:
                    raise SystemExit(f"trial {trial}: no update within {args.timeout} s "
                                     f"({widget.status.text()})")
                done = updates[-1]
                out["latency"].append(done - released[0])
            else:
                run_until(app, lambda: bool(released), args.timeout)
                done = released[0] + 0.3  # as long as an update takes, about
            run_until(app, lambda done=done: time.perf_counter() > done + 0.1, args.timeout)
            first, rest = gaps(released[0], done + 0.1)
            out["drag"].append(longest_gap(pressed, letting_go[0]))
            out["edit"].append(first)
            out["after"].append(rest)
            out["calls"].append(len(predict_s) - n_pred)
            run_until(app, lambda: False, 0.2)
        return {k: np.asarray(v) for k, v in out.items()}

    live = trials(args.trials, 0, True)
    # The same edits with the preview stopped: what napari and the RECIST widget cost alone.
    widget.stop()
    alone = trials(args.trials, args.trials, False)
    timer.stop()
    inference.predict_detailed = real
    viewer.close()
    tmp.cleanup()
    return {"live": live, "alone": alone, "predict": np.asarray(predict_s[len(warm):]),
            "lesions": len(recists), "first": sum(warm)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--size", type=int, default=128, help="the model's input size")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per trial at most")
    args = p.parse_args(argv)

    with display():
        return _report(args)


def _report(args) -> int:
    from napari.qt import get_qapp

    app = get_qapp()
    r = measure(args, app)
    live, alone = r["live"], r["alone"]
    lat = live["latency"]
    stall = np.maximum.reduce([live["drag"], live["edit"], live["after"]])
    print(f"{os.cpu_count()} CPU cores, torch threads {args.threads}; prompted model (untrained, "
          f"ResNet-18 DeepLabV3+) at input {args.size}; 512x512 slice, {r['lesions']} lesions; "
          f"QTimer every {TICK_MS} ms")
    print(f"first segmentation of all {r['lesions']} lesions: {r['first']:.2f} s of prediction")
    print(f"vertex released -> preview updated ({args.trials} edits): median "
          f"{np.median(lat) * 1000:.0f} ms, min {lat.min() * 1000:.0f}, max "
          f"{lat.max() * 1000:.0f}  (target < {TARGET_S * 1000:.0f} ms)")
    print(f"  of which the model call (worker thread): median "
          f"{np.median(r['predict']) * 1000:.0f} ms; lesions predicted per edit: "
          f"{sorted(set(live['calls'].tolist()))}")
    print(f"longest main-thread stall per edit, press to update + 100 ms: median "
          f"{np.median(stall):.0f} ms, max {stall.max():.0f} ms  "
          f"(target < {TARGET_STALL_MS:.0f} ms)")
    print(f"  press and drag moves: median {np.median(live['drag']):.0f} ms, max "
          f"{live['drag'].max():.0f}")
    print(f"  the turn of the event loop that handles the release (napari, RECIST widget, "
          f"redraw): median {np.median(live['edit']):.0f} ms, max {live['edit'].max():.0f}")
    print(f"  after it, while the widget predicts and updates the preview: median "
          f"{np.median(live['after']):.0f} ms, max {live['after'].max():.0f}")
    print(f"same edits with the preview stopped: release turn median "
          f"{np.median(alone['edit']):.0f} ms, max {alone['edit'].max():.0f}; after it max "
          f"{alone['after'].max():.0f} ms")
    ok = np.median(lat) < TARGET_S and stall.max() < TARGET_STALL_MS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
