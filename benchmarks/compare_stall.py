"""How long the napari viewer stops answering while the Compare widget predicts a CT volume.

A real viewer (under Xvfb: run with ``xvfb-run -a``, or let this script start a virtual
display when ``DISPLAY`` is unset) shows a 512x512xN CT-like volume (the CT phantom slice
resampled to 0.4 mm pixels, shifted from slice to slice), its lesions' RECIST on every slice,
and a ground-truth Labels layer. The Compare widget gets two untrained lesion-crop models
(prompted and A1; the time a prediction takes does not depend on the weights) and its
Predict button is clicked through Qt. A precise 10 ms ``QTimer`` stamps every turn of the GUI
event loop; the longest gap from the click until the widget shows its results (and 300 ms
more) is the longest time the viewer could not react. Each click is followed by another with
the overlays already made, which updates them in place.

With ``--profile`` the main thread's slowest calls during the first click are listed.

    xvfb-run -a python benchmarks/compare_stall.py
    xvfb-run -a python benchmarks/compare_stall.py --slices 150 --clicks 3 --profile
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

TARGET_STALL_MS = 100.0


def _volume(n_slices: int):
    """A 512x512 CT-like volume with a lesion mask and RECIST on every slice."""
    from skimage.transform import resize

    from napari_recist_seg.core.recist import Recist
    from napari_recist_seg.data.samples import ct_phantom_slice

    sample = ct_phantom_slice(0)
    plane = resize(sample["image"].astype(np.float32), (512, 512), order=1,
                   preserve_range=True, anti_aliasing=False).astype(np.int16)
    masks = resize(sample["masks"].astype(np.float32), (512, 512), order=0,
                   preserve_range=True, anti_aliasing=False).astype(np.uint8)
    spacing = tuple(s / 2 for s in sample["spacing"])
    volume = np.empty((n_slices, 512, 512), np.int16)
    truth = np.empty((n_slices, 512, 512), np.uint8)
    recists, slices = [], []
    for z in range(n_slices):
        shift = (z % 7) - 3
        volume[z] = np.roll(plane, shift, axis=1)
        truth[z] = np.roll(masks, shift, axis=1)
        for r in sample["recists"]:
            offset = np.array([0.5, 0.5 + shift])
            recists.append(Recist(r.long_axis * 2 + offset, r.short_axis * 2 + offset,
                                  spacing))
            slices.append(z)
    return volume, truth, recists, slices, (2.5, *spacing)


def _checkpoint(folder: Path, kind: str, size: int) -> Path:
    """An untrained lesion-crop model of ``kind`` saved as a checkpoint of CT slices."""
    import torch

    from napari_recist_seg.learning.checkpoints import save_checkpoint
    from napari_recist_seg.learning.models import build_model

    torch.manual_seed(0)
    model = build_model(kind, in_channels=1, input_size=size)
    pre = {"mode": "crops", "size": size, "normalise": None, "channel_axis": None,
           "margin": 0.5, "field_of_view_mm": None, "window": [-160.0, 240.0], "context": 0,
           "pseudo_mask_method": "quarter_ellipse"}
    return save_checkpoint(folder, model, {"preprocessing": pre, "grouping": None}, [])


def measure(args, app) -> dict:
    import cProfile
    import pstats

    import napari
    import torch

    from napari_recist_seg.core.recist import recists_to_shapes
    from napari_recist_seg.learning import inference
    from napari_recist_seg.plugin.model_registry import MODEL_REGISTRY
    from napari_recist_seg.plugin.recist_layers import recist_layer_tuple
    from napari_recist_seg.plugin.training_job import prepare_torch_import
    from napari_recist_seg.plugin.widgets.compare_widget import CompareWidget

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    volume, truth, recists, slices, scale = _volume(args.slices)
    viewer = napari.Viewer(show=True)
    viewer.add_image(volume, name="CT", scale=scale, contrast_limits=(-160, 240),
                     units=("mm", "mm", "mm"))
    data, features = recists_to_shapes(recists, slices=slices)
    viewer.add_layer(napari.layers.Layer.create(
        *recist_layer_tuple(data, features, scale, "CT RECIST")))
    viewer.add_labels(truth, name="CT_mask", scale=scale, units=("mm", "mm", "mm"))
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Compare models")
    prepare_torch_import()  # as the plugin does before building a network in a drawn viewer
    for kind in ("prompted", "a1"):
        folder = _checkpoint(Path(tmp.name) / kind, kind, args.size)
        MODEL_REGISTRY.add(kind, folder, inference.load_model(folder))
    widget.refresh_models()
    widget.set_models([entry.name for entry in MODEL_REGISTRY.entries()])
    widget.image_combo.set_layer(viewer.layers["CT"])
    widget.gt_combo.set_layer(viewer.layers["CT_mask"])

    timer, stamps = tick_stamps()
    run_until(app, lambda: False, 1.0)  # the window settles

    results = []
    for click in range(args.clicks):
        profiler = cProfile.Profile() if args.profile and click == args.profile_click else None
        shown: list[float] = []
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        widget.predict_button.click()
        if widget._worker is None:
            raise SystemExit(f"click {click}: nothing predicted ({widget.status.text()})")
        # The results are shown in the slot that lets the worker go.
        ok = run_until(app, lambda: widget._worker is None, args.timeout)
        shown.append(time.perf_counter())
        run_until(app, lambda: False, 0.3)
        if profiler is not None:
            profiler.disable()
        if not ok:
            raise SystemExit(f"click {click}: no result within {args.timeout} s "
                             f"({widget.status.text()})")
        held = [s for s in stamps if s <= t0][-1:] + [s for s in stamps if s > t0]
        gaps = np.diff(held) * 1000.0
        results.append({"seconds": shown[0] - t0, "longest": float(gaps.max()),
                        "over": int((gaps > TARGET_STALL_MS).sum()),
                        "status": widget.status.text()})
        if profiler is not None:
            print(f"main thread, slowest calls of click {click + 1} (cumulative):")
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(25)
        run_until(app, lambda: False, 0.5)
    timer.stop()
    viewer.close()
    tmp.cleanup()
    return {"clicks": results, "lesions": len(recists)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=150)
    p.add_argument("--clicks", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--size", type=int, default=64, help="the models' input size")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per click at most")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-click", type=int, default=0, help="which click (from 0)")
    args = p.parse_args(argv)

    with display():
        return _report(args)


def _report(args) -> int:
    from napari.qt import get_qapp

    app = get_qapp()
    r = measure(args, app)
    print(f"{os.cpu_count()} CPU cores, torch threads {args.threads}; 512x512x{args.slices} "
          f"int16 volume, {r['lesions']} lesions, ground truth; two untrained lesion-crop "
          f"models at input {args.size}; QTimer every {TICK_MS} ms")
    for i, c in enumerate(r["clicks"]):
        print(f"click {i + 1}: results shown after {c['seconds']:.1f} s; longest main-thread "
              f"stall {c['longest']:.0f} ms, {c['over']} over {TARGET_STALL_MS:.0f} ms  "
              f"({c['status']})")
    worst = max(c["longest"] for c in r["clicks"])
    return 0 if worst < TARGET_STALL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
