"""Training from a DeepLesion table at DeepLesion's size: memory, time to first step, speed.

A ``DL_info.csv`` (for example one made by ``examples/make_deeplesion_like.py``) is grown to N
lesion rows: each row of the source is repeated with its RECIST shifted by a few pixels, on the
same key slices (DeepLesion itself has several lesions on many key slices), so the slices on
disk stay those of the source. Then, in a fresh process for each N, the library prepares the
table (``prepare_from_table``: reading it, pseudo-masks and K-means once) and its trainer runs
some steps. Each process reports its peak resident memory, the seconds to the first step and
the images per second over the steps after the first:

    python benchmarks/table_scale.py --table dl-like/DL_info.csv --n 3000 32735

What grows with N is what a lesion costs whatever the images (its RECIST, file name and
bit-packed pseudo-mask); slices are read from disk when a batch needs them.
"""

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def grow_table(source: Path, out: Path, n: int, seed: int = 0) -> Path:
    """``out/DL_info.csv`` with ``n`` rows made from those of ``source`` (slices linked)."""
    with source.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    images = out / "Images_png"
    if not images.exists():
        images.symlink_to((source.parent / "Images_png").resolve())
    grown = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        if i >= len(rows):
            dx, dy = rng.integers(-3, 4, size=2)
            xy = [float(v) for v in row["Measurement_coordinates"].split(",")]
            xy = [v + (dx if j % 2 == 0 else dy) for j, v in enumerate(xy)]
            row["Measurement_coordinates"] = ", ".join(f"{v:.3f}" for v in xy)
            box = [float(v) for v in row["Bounding_boxes"].split(",")]
            box = [v + (dx if j % 2 == 0 else dy) for j, v in enumerate(box)]
            row["Bounding_boxes"] = ", ".join(f"{v:.3f}" for v in box)
        grown.append(row)
    table = out / "DL_info.csv"
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(grown)
    return table


def measure(table: str, size: int, batch: int, steps: int) -> dict:
    """Prepare ``table`` and train ``steps`` steps in this process; figures as a dict."""
    import torch

    from napari_recist_seg.learning.preparation import prepare_from_table
    from napari_recist_seg.learning.trainer import TrainConfig, train

    torch.manual_seed(0)
    t0 = time.perf_counter()
    data = prepare_from_table(table, size=size)
    prepared = time.perf_counter() - t0
    config = TrainConfig(kind="multitask", input_size=size, epochs=1, batch_size=batch,
                         in_channels=int(data.train_set.n_channels),
                         n_groups=int(data.grouping.k), device="cpu")
    first, times = None, []
    with tempfile.TemporaryDirectory() as runs:
        for event in train(data.train_set, data.val_set, config, Path(runs) / "run",
                           grouping=data.grouping, stop=lambda: len(times) >= steps):
            if event.kind == "step":
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                times.append(now)
    per_second = (batch * (len(times) - 1) / (times[-1] - times[0])) if len(times) > 1 else 0.0
    return {"lesions": len(data.train_set) + len(data.val_set), "n_train": len(data.train_set),
            "k": int(data.grouping.k), "prepare_s": prepared, "first_step_s": first,
            "images_per_second": per_second, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="a DL_info.csv with its Images_png")
    parser.add_argument("--n", type=int, nargs="+", default=[3000, 32735],
                        help="numbers of lesion rows to measure")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--work", help="folder for the grown tables (default: a temporary one)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a grown table, measured in-process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.batch, args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for n in args.n:
            table = grow_table(Path(args.table), work / f"n{n}", n)
            out = subprocess.run(
                [sys.executable, __file__, "--table", args.table, "--one", str(table),
                 "--size", str(args.size), "--batch", str(args.batch), "--steps",
                 str(args.steps)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{n:>6} rows, {r['lesions']} lesions of splits 1-2 ({r['n_train']} "
                  f"training, K={r['k']}): prepared "
                  f"in {r['prepare_s']:.1f} s, first step at {r['first_step_s']:.1f} s, "
                  f"{r['images_per_second']:.1f} images/s, peak memory "
                  f"{r['peak_rss_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
