"""The plugin with thousands of lesions in one RECIST layer: how long each update takes.

A CT-like stack gets a RECIST layer of ``--lesions`` lesions (two lines each), spread over
its slices. In a real viewer (under Xvfb: run with ``xvfb-run -a``), the script times what a
user waits for: docking the RECIST widget (pairing, lengths, colours, the lesion table),
a vertex edit (the table and labels follow), selecting a lesion from the table, zooming with
the length labels hidden and shown, docking the groups widget, K-means with recolouring, the
first pseudo-mask preview and the preview following an edit. A 10 ms timer stamps the event
loop throughout; its longest gap is how long the viewer froze.

    xvfb-run -a python benchmarks/many_lesions.py --repeat 3      # 5,000 lesions
    xvfb-run -a python benchmarks/many_lesions.py --lesions 20000 --slices 400
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import time
from pathlib import Path

import numpy as np


class Ticks:
    """Time stamps of a 10 ms timer on the GUI thread; gaps are freezes."""

    def __init__(self):
        from qtpy.QtCore import Qt, QTimer

        self.stamps: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.stamps.append(time.perf_counter()))
        self.timer.start()

    def longest_gap_ms(self, start: float, end: float) -> float:
        inside = [s for s in self.stamps if start <= s <= end]
        # The gaps before the first and after the last tick count: the action itself.
        edges = np.diff([start, *inside, end])
        return float(edges.max() * 1000.0)


def pump(until, timeout: float = 300.0) -> float:
    """Run the event loop until ``until()`` holds; the seconds it took."""
    from qtpy.QtWidgets import QApplication

    start = time.perf_counter()
    while not until():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the plugin did not finish within the time limit")
        QApplication.processEvents()
        time.sleep(0.001)
    return time.perf_counter() - start


def idle_for(seconds: float):
    """An ``until`` for ``pump`` that holds once ``seconds`` have passed since it was made."""
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() >= end


def settle(seconds: float) -> None:
    """Let the viewer idle (paint, lay out) as it would between a user's clicks."""
    end = time.perf_counter() + seconds
    pump(lambda: time.perf_counter() >= end)


def random_lesions(n: int, n_slices: int, size: int, seed: int = 0):
    """``n`` perpendicular RECIST spread over a grid on each slice: (recists, slices)."""
    from napari_recist_seg.core.recist import Recist

    rng = np.random.default_rng(seed)
    per_slice = int(np.ceil(n / n_slices))
    side = int(np.ceil(np.sqrt(per_slice)))
    cell = size / side
    recists, slices = [], []
    for i in range(n):
        z, k = divmod(i, per_slice)
        centre = (np.array(divmod(k, side)) + 0.5) * cell
        half_long = rng.uniform(0.15, 0.4) * cell
        half_short = half_long * rng.uniform(0.3, 0.95)
        t = rng.uniform(0, np.pi)
        u = np.array([np.sin(t), np.cos(t)])
        v = np.array([u[1], -u[0]])
        recists.append(Recist([centre - half_long * u, centre + half_long * u],
                              [centre - half_short * v, centre + half_short * v]))
        slices.append(z)
    return recists, slices


def move_vertex(layer, index: int, shift) -> None:
    """Move the first vertex of line ``index`` as napari's vertex tool does on release."""
    from napari.layers.base._base_constants import ActionType

    vertices = np.array(layer.data[index])
    vertices[0, -2:] += shift
    with layer.events.set_data.blocker():
        layer._data_view.edit(index, vertices)
    layer.events.data(value=layer.data, action=ActionType.CHANGED, data_indices=(index,),
                      vertex_indices=((0,),))
    layer.refresh()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesions", type=int, default=5000)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of a slice")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--profile", metavar="FOLDER",
                        help="write a cProfile file per action into FOLDER")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole walk this many times, each in a new viewer, and "
                             "print the median (with the range)")
    args = parser.parse_args(argv)
    runs = [walk(args) for _ in range(max(1, args.repeat))]
    print(f"{args.lesions} lesions ({2 * args.lesions} lines) on {args.slices} slices of "
          f"{args.size}x{args.size}, {len(runs)} run(s): median (min-max)")
    print(f"{'action':55s} {'seconds':>18s} {'longest freeze ms':>20s}")
    for i, (label, *_rest) in enumerate(runs[0]):
        seconds = [run[i][1] for run in runs]
        gaps = [run[i][2] for run in runs]
        print(f"{label:55s} {_spread(seconds, '.2f'):>18s} {_spread(gaps, '.0f'):>20s}")


def _spread(values, fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return (f"{format(float(np.median(values)), fmt)} ({format(min(values), fmt)}-"
            f"{format(max(values), fmt)})")


def walk(args) -> list[tuple[str, float, float]]:
    """One walk through the actions in a new viewer: (action, seconds, longest freeze ms)."""
    import napari
    from napari.layers import Layer

    from napari_recist_seg.core.recist import recists_to_shapes
    from napari_recist_seg.plugin.recist_layers import recist_layer_tuple

    viewer = napari.Viewer(show=True)
    ticks = Ticks()
    rng = np.random.default_rng(1)
    volume = rng.normal(40, 20, size=(args.slices, args.size, args.size)).astype(np.float32)
    scale = (2.5, 0.7, 0.7)
    viewer.add_image(volume, name="CT", scale=scale, contrast_limits=(-160, 240))
    recists, slices = random_lesions(args.lesions, args.slices, args.size)
    rows = []

    def timed(label, action, until=lambda: True):
        profiler = cProfile.Profile() if args.profile else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        action()
        pump(until)
        end = time.perf_counter()
        if profiler:
            profiler.disable()
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(Path(args.profile) / f"{len(rows)}.prof")
        rows.append((label, end - start, ticks.longest_gap_ms(start, end)))

    data, features = recists_to_shapes(recists, slices=slices)
    holder = {}
    timed("add the RECIST layer",
          lambda: holder.setdefault("layer", viewer.add_layer(
              Layer.create(*recist_layer_tuple(data, features, scale, "CT RECIST")))))
    layer = viewer.layers["CT RECIST"]
    timed("dock RECIST annotation (pair, measure, table)",
          lambda: holder.setdefault("recist", viewer.window.add_plugin_dock_widget(
              "napari-recist-seg", "RECIST annotation")[1]),
          lambda: len(holder["recist"].lesions) == args.lesions)
    annotate = holder["recist"]
    assert all(info.ok for info in annotate.lesions)
    last = 2 * (args.lesions - 1)
    before = annotate.lesions[-1].long_mm
    timed("edit a vertex: table and labels follow",
          lambda: move_vertex(layer, last, (0.0, -3.0)),
          lambda: annotate.lesions[-1].long_mm != before)
    timed("select a lesion from the table (and centre it)",
          lambda: annotate.select_lesion(args.lesions // 2))

    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None else viewer.camera

    def zoom_in():
        camera.zoom = camera.zoom * 1.25

    # The labels are placed again when the canvas redraws: the row's time includes 0.3 s of
    # idling for that; its longest freeze is the figure to read.
    zoom_in()  # the first redraw at a new zoom also builds shaders: not what is measured
    settle(0.5)
    timed("zoom in one step (length labels hidden)", zoom_in, idle_for(0.3))
    layer.text.visible = True
    settle(0.5)
    timed("zoom in one step (length labels shown)", zoom_in, idle_for(0.3))
    layer.text.visible = False
    settle(0.5)

    def dock_groups():
        holder["groups"] = viewer.window.add_plugin_dock_widget(
            "napari-recist-seg", "Groups and pseudo-masks")[1]
        holder["groups"].set_recist_layer(layer)

    timed("dock Groups and pseudo-masks (plot)", dock_groups)
    groups = holder["groups"]
    groups.k_spin.setValue(args.k)
    pump(lambda: not groups._timer.isActive())
    settle(1.0)
    timed(f"K-means (K={args.k}) and recolour the lines", groups.run_kmeans,
          lambda: "groups (sizes" in groups.status.text())
    groups.method_combo.setCurrentText("ellipse")
    timed("first pseudo-mask preview (all slices)",
          lambda: groups.preview_button.setChecked(True),
          lambda: groups.preview_layer is not None)
    pump(lambda: not groups._preview_running and not groups._timer.isActive())
    preview = groups.preview_layer
    z = slices[-1]
    old = int((preview.data[z] == args.lesions).sum())
    timed("edit a vertex: preview follows (incl. 150 ms debounce)",
          lambda: move_vertex(layer, last + 1, (2.0, 2.0)),
          lambda: int((preview.data[z] == args.lesions).sum()) != old)

    viewer.close()
    ticks.timer.stop()
    gc.collect()  # the next walk should not pay for collecting this one's layers
    return rows


if __name__ == "__main__":
    main()
