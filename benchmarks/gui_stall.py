"""How long the napari viewer stops answering while the Training widget trains on the CPU.

A real viewer (under Xvfb: run with ``xvfb-run -a``, or let this script start a virtual
display when ``DISPLAY`` is unset) gets generated data and the plugin's Training widget, which
is started exactly as a user would start it. A precise 10 ms ``QTimer`` stamps every tick of
the GUI event loop; a gap between two ticks is time the viewer could not react. The longest
gap and the 99th percentile are printed for the viewer at rest (baseline), for the data
preparation and model set-up, and for the training steps, with the training speed.

Both ways of running the trainer are measured by default: in a worker thread of the viewer's
process ("thread") and in a spawned child process whose events come back over a queue
("process", the widget's default).

    xvfb-run -a python benchmarks/gui_stall.py                       # CT crops, both modes
    xvfb-run -a python benchmarks/gui_stall.py --data dermoscopy --mode process
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _viewer_timing import TICK_MS, display, tick_stamps


def _ct_layers(viewer, n_slices: int) -> None:
    """A stack of CT phantom slices (one volume layer) with its RECIST on each slice."""
    from napari.layers import Layer

    from napari_recist_seg.core.recist import recists_to_shapes
    from napari_recist_seg.data.samples import ct_phantom_slice
    from napari_recist_seg.plugin.layer_units import SOFT_TISSUE_WINDOW
    from napari_recist_seg.plugin.recist_layers import recist_layer_tuple

    planes, recists, slices = [], [], []
    for z in range(n_slices):
        sample = ct_phantom_slice(seed=z)
        planes.append(sample["image"])
        recists += sample["recists"]
        slices += [z] * len(sample["recists"])
    scale = (2.5, 0.8, 0.8)
    viewer.add_image(np.stack(planes), name="CT", scale=scale,
                     contrast_limits=SOFT_TISSUE_WINDOW)
    data, features = recists_to_shapes(recists, slices=slices)
    viewer.add_layer(Layer.create(*recist_layer_tuple(data, features, scale, "CT RECIST")))
    return len(recists)


def _dermoscopy_folder(root: Path, n: int, size: int) -> Path:
    """An ISIC-style image+mask folder of generated dermoscopy images."""
    import imageio.v3 as iio

    from napari_recist_seg.data.samples import dermoscopy_dataset

    images, masks = dermoscopy_dataset(n, seed=0, size=size)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (image, mask) in enumerate(zip(images, masks)):
        iio.imwrite(root / "images" / f"ISIC_{i:07d}.png", image)
        iio.imwrite(root / "masks" / f"ISIC_{i:07d}_segmentation.png",
                    mask.astype(np.uint8) * 255)
    return root


def _gaps(stamps: list[float], start: float, end: float) -> np.ndarray:
    t = np.asarray([s for s in stamps if start <= s <= end])
    return np.diff(t) * 1000.0 if len(t) > 1 else np.zeros(1)


def _event_name(message) -> str:
    return message[1].get("kind", "") if message[0] == "event" else ""


def _worst(stamps, handled, start, end, n=5) -> list[str]:
    """The ``n`` longest gaps and the widget's handlers that ran in them."""
    t = np.asarray([s for s in stamps if start <= s <= end])
    if len(t) < 2:
        return []
    gaps = np.diff(t)
    out = []
    for i in np.argsort(gaps)[::-1][:n]:
        a, b = t[i], t[i + 1]
        inside = [f"{label} {1000 * (e - s):.0f} ms" for s, e, label in handled
                  if s < b and e > a]
        out.append(f"{1000 * gaps[i]:7.1f} ms at {a - start:6.1f} s: "
                   f"{', '.join(inside) or 'no widget handler'}")
    return out


def _summary(name: str, gaps: np.ndarray) -> str:
    return (f"  {name:28s} max {gaps.max():7.1f} ms   p99 {np.percentile(gaps, 99):6.1f} ms"
            f"   ({len(gaps)} ticks)")


def measure(mode: str, args, app) -> dict:
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(show=True)
    tmp = tempfile.TemporaryDirectory()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-recist-seg", "Training")
    if args.data == "ct":
        n_lesions = _ct_layers(viewer, args.n)
        widget.refresh_pairs()
        what = f"{n_lesions} lesions on {args.n} CT phantom slices (lesion crops)"
    else:
        folder = _dermoscopy_folder(Path(tmp.name) / "data", args.n, args.image_size)
        widget.folder_radio.setChecked(True)
        widget.folder_edit.setText(str(folder))
        what = f"{args.n} dermoscopy images of {args.image_size} px (whole images)"
    for kind, box in widget.kind_boxes.items():
        box.setChecked(kind in args.models)
    widget.size_spin.setValue(args.size)
    widget.epochs_spin.setValue(args.epochs)
    widget.batch_spin.setValue(args.batch)
    widget.device_combo.setCurrentText("cpu")
    widget.out_edit.setText(str(Path(tmp.name) / "models"))
    widget.process_box.setChecked(mode == "process")

    # Time the widget's own GUI-thread work, to tell its cost from the rest of the stall.
    handled: list[tuple[float, float, str]] = []

    def timed(function, label):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return function(*a, **kw)
            finally:
                name = label(*a) if callable(label) else label
                handled.append((t0, time.perf_counter(), name))
        return wrapper

    widget._on_message = timed(widget._on_message, lambda m: f"{m[0]} {_event_name(m)}")
    import gc

    gc_start: list[float] = []

    def on_gc(phase, info):
        # Garbage collections of the viewer's process pause every thread that holds the GIL.
        if phase == "start":
            gc_start.append(time.perf_counter())
        elif gc_start:
            handled.append((gc_start.pop(), time.perf_counter(),
                            f"gc gen{info.get('generation')}"))

    gc.callbacks.append(on_gc)
    widget.plot.refresh = timed(widget.plot.refresh, "plot update")
    widget.make_job = timed(widget.make_job, "reading the layers")
    widget.start = timed(widget.start, "Start")
    widget.plot.show_picture = timed(widget.plot.show_picture, "plot shown")
    widget.plot._draw = timed(widget.plot._draw, "plot drawn (worker thread)")

    timer, stamps = tick_stamps()
    browse = QTimer()
    browse.setInterval(200)
    if args.browse and viewer.dims.ndim > 2:
        # A user paging through slices makes the viewer slice and draw while training runs.
        nz = viewer.dims.nsteps[0]
        browse.timeout.connect(
            lambda: viewer.dims.set_current_step(0, (viewer.dims.current_step[0] + 1) % nz))

    def run_for(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)

    browse.start()
    run_for(1.0)  # let the window settle
    t_base = time.perf_counter()
    run_for(args.baseline)
    t_start = time.perf_counter()
    seen = {"first_step": None, "ips": 0.0, "events": 0}

    def on_message(message):
        kind, payload = message
        if kind == "event" and payload["kind"] in ("step", "epoch", "finished"):
            seen["events"] += 1
            if seen["first_step"] is None:
                seen["first_step"] = time.perf_counter()
            if payload["images_per_second"]:
                seen["ips"] = payload["images_per_second"]

    worker = widget.start()
    if worker is None:
        raise SystemExit("the widget did not start training (see the notification above)")
    worker.yielded.connect(on_message)
    done = []
    worker.finished.connect(lambda: done.append(time.perf_counter()))
    errors = []
    worker.errored.connect(lambda exc: errors.append(exc))
    deadline = t_start + args.timeout
    while not done and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.001)
    if not done:
        widget.stop()
        while not done:
            app.processEvents()
            time.sleep(0.001)
    t_end = done[0]
    timer.stop()
    browse.stop()
    first = seen["first_step"] or t_end
    result = {
        "mode": mode,
        "what": what,
        "baseline": _gaps(stamps, t_base, t_start),
        "setup": _gaps(stamps, t_start, first),
        "training": _gaps(stamps, first, t_end),
        "seconds": t_end - t_start,
        "ips": seen["ips"],
        "errors": errors,
        "worst": _worst(stamps, handled, t_start, t_end),
    }
    gc.callbacks.remove(on_gc)
    viewer.close()
    tmp.cleanup()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("thread", "process", "both"), default="both")
    p.add_argument("--data", choices=("ct", "dermoscopy"), default="ct")
    p.add_argument("--n", type=int, default=10,
                   help="CT phantom slices (about 4-5 lesions each) or dermoscopy images")
    p.add_argument("--image-size", type=int, default=256, help="dermoscopy image side")
    p.add_argument("--models", nargs="+", default=["multitask"],
                   choices=("multitask", "a1", "coseg"))
    p.add_argument("--size", type=int, default=128, help="network input side")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--baseline", type=float, default=3.0, help="seconds at rest first")
    p.add_argument("--timeout", type=float, default=400.0, help="stop training after this")
    p.add_argument("--no-browse", dest="browse", action="store_false",
                   help="do not page through the slices while training")
    p.add_argument("--explain", action="store_true",
                   help="list the longest gaps with the widget's handlers that ran in them")
    args = p.parse_args(argv)

    with display():
        return _report(args)


def _report(args) -> int:
    from napari.qt import get_qapp

    app = get_qapp()
    modes = ("thread", "process") if args.mode == "both" else (args.mode,)
    print(f"{os.cpu_count()} CPU cores; QTimer every {TICK_MS} ms; "
          f"{'paging slices every 200 ms' if args.browse else 'no interaction'}")
    results = [measure(mode, args, app) for mode in modes]
    for r in results:
        print(f"\n{r['mode']}: {r['what']}, models {', '.join(args.models)}, input "
              f"{args.size}, batch {args.batch}, {args.epochs} epoch(s)")
        if r["errors"]:
            print(f"  training failed: {r['errors'][0]}")
        print(_summary("viewer at rest", r["baseline"]))
        print(_summary("preparation and set-up", r["setup"]))
        print(_summary("training steps", r["training"]))
        if args.explain:
            print("  longest gaps:")
            for line in r["worst"]:
                print(f"    {line}")
        print(f"  {r['ips']:.2f} images/s; {r['seconds']:.1f} s from Start to the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
