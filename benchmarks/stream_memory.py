"""Training streams from disk: resident memory does not grow with the number of crops.

Generated lesion crops (48 x 48 RGB PNG files, one lesion each) are written to a folder once;
then, in a fresh process for each size, a lazy ``LesionDataset`` is built over the first N of
them, the library's trainer runs some steps on it (input 32, batch 4) and every item is read
once more. Each process reports its peak resident memory; the default compares 2,000 with
20,000 crops:

    python benchmarks/stream_memory.py                      # both sizes, then the comparison
    python benchmarks/stream_memory.py --n 20000 --images /tmp/crops   # one size

What grows with N is what a lesion costs whatever the images: its RECIST, its file name and its
pseudo-mask packed to bits (128 bytes at input 32). The images themselves are read on access
and at most ``cache_size`` of them are kept.
"""

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CROP = 48


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def rss_mb() -> float:
    """Resident memory now, in MB (Linux; the peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return peak_rss_mb()
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def lesion(i: int):
    """Centre, half long axis, half short axis and angle of crop ``i`` (deterministic)."""
    rng = np.random.default_rng([7, i])
    centre = rng.uniform(18, 30, size=2)
    half_long = rng.uniform(6, 14)
    return centre, half_long, half_long * rng.uniform(0.4, 1.0), rng.uniform(0, math.pi)


def recist_of(i: int):
    from napari_recist_seg.core.recist import Recist

    c, a, b, t = lesion(i)
    d = np.array([math.sin(t), math.cos(t)])
    n = np.array([-d[1], d[0]])
    return Recist([c - a * d, c + a * d], [c - b * n, c + b * n])


def crop_image(i: int) -> np.ndarray:
    """A skin-like background with a darker elliptical lesion where ``recist_of(i)`` lies."""
    c, a, b, t = lesion(i)
    rng = np.random.default_rng([8, i])
    rr, cc = np.mgrid[:CROP, :CROP].astype(float)
    u = (rr - c[0]) * math.sin(t) + (cc - c[1]) * math.cos(t)
    v = -(rr - c[0]) * math.cos(t) + (cc - c[1]) * math.sin(t)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    img = rng.normal(200, 12, size=(CROP, CROP, 3)) * np.array([1.0, 0.85, 0.75])
    img[inside] *= 0.5
    return np.clip(img, 0, 255).astype(np.uint8)


def write_crops(folder: Path, n: int) -> None:
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"crop{i:05d}.png"
        if not path.exists():
            iio.imwrite(path, crop_image(i))


def run_one(images: Path, n: int, steps: int, size: int, cache: int) -> dict:
    """Build, train and read everything for the first ``n`` crops; memory figures in MB."""
    import torch

    from napari_recist_seg.data.dataset import LesionDataset
    from napari_recist_seg.learning.trainer import TrainConfig, train

    torch.set_num_threads(1)
    out = {"n": n, "rss_start": rss_mb()}
    paths = [images / f"crop{i:05d}.png" for i in range(n)]
    missing = [p for p in paths[:1] + paths[-1:] if not p.exists()]
    if missing:
        raise SystemExit(f"{missing[0]} is missing: write the crops first (--write)")
    t0 = time.perf_counter()
    recists = [recist_of(i) for i in range(n)]
    train_set = LesionDataset.from_whole_images(paths, recists, size=size, lazy=True,
                                                cache_size=cache, augment=True)
    val_set = LesionDataset.from_whole_images(paths[:8], recists[:8], size=size, lazy=True,
                                              cache_size=cache)
    out["build_s"] = time.perf_counter() - t0
    out["dataset_bytes"] = train_set.nbytes
    out["rss_built"] = rss_mb()

    config = TrainConfig(kind="a1", input_size=size, batch_size=4, epochs=1, device="cpu",
                         seed=0)
    done = {"steps": 0}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        for event in train(train_set, val_set, config, run_dir,
                           stop=lambda: done["steps"] >= steps):
            if event.kind == "step":
                done["steps"] += 1
    out["train_s"] = time.perf_counter() - t0
    out["steps"] = done["steps"]
    out["peak_after_training"] = peak_rss_mb()

    t0 = time.perf_counter()
    for i in range(len(train_set)):
        train_set[i]
    out["read_all_s"] = time.perf_counter() - t0
    out["cached_images"] = len(train_set._images.source)
    out["rss_end"] = rss_mb()
    out["peak"] = peak_rss_mb()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000],
                        help="dataset sizes; each runs in its own process")
    parser.add_argument("--images", type=Path, help="folder of crops (default: a temp folder)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--cache", type=int, default=16)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_one(args.images, args.n[0], args.steps, args.size, args.cache)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        images = args.images or Path(tmp) / "crops"
        t0 = time.perf_counter()
        write_crops(images, max(args.n))
        print(f"{max(args.n)} crops in {images} ({time.perf_counter() - t0:.0f} s)")
        results = []
        for n in args.n:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", "--n", str(n), "--images", str(images),
                 "--steps", str(args.steps), "--size", str(args.size), "--cache",
                 str(args.cache)], capture_output=True, text=True, check=False)
            if proc.returncode:
                print(proc.stderr[-3000:])
                return proc.returncode
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{r['n']:>6} crops: built in {r['build_s']:.0f} s (packed masks "
                  f"{r['dataset_bytes'] / 1e6:.2f} MB, RSS {r['rss_built']:.0f} MB); "
                  f"{r['steps']} steps in {r['train_s']:.0f} s; every item read in "
                  f"{r['read_all_s']:.0f} s with {r['cached_images']} images cached; peak RSS "
                  f"{r['peak']:.0f} MB (after training {r['peak_after_training']:.0f} MB), RSS "
                  f"at the end {r['rss_end']:.0f} MB")
    if len(results) > 1:
        a, b = results[0], results[-1]
        grow = (b["peak"] - a["peak"]) / (b["n"] - a["n"]) * 1e6
        print(f"peak RSS {a['peak']:.0f} MB for {a['n']} crops, {b['peak']:.0f} MB for {b['n']}: "
              f"{b['peak'] - a['peak']:+.0f} MB for {b['n'] - a['n']} more crops "
              f"({grow:.0f} bytes a crop; one crop image is {CROP * CROP * 3} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
