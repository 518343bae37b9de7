"""Grouping DeepLesion-sized data: 32,735 lesions into K=190 groups.

The real RECIST rows of DeepLesion's test split are resampled with replacement up to the size of
the whole DeepLesion (32,735 lesions), each copy shifted by up to ``--jitter`` pixels so that the
copies are not identical, and grouped with both feature sets. Prints the seconds each grouping
takes and the peak resident memory of the process:

    python benchmarks/grouping_scale.py --data ../shared/data/deeplesion_samples
"""

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from napari_recist_seg.core.grouping import FEATURE_SETS, group_lesions
from napari_recist_seg.data.deeplesion import read_deeplesion

DEEPLESION_LESIONS = 32_735


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def cpu_seconds() -> float:
    """CPU time of this process (all threads): less sensitive to a busy machine than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def resampled_recists(data: Path, n: int, jitter: float, seed: int):
    """``n`` lesions drawn with replacement from the valid rows of the table, each shifted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing images are expected: only the rows are used
        records = read_deeplesion(data, invalid="skip", warn_missing=False)
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(records), size=n)
    shifts = rng.uniform(-jitter, jitter, size=(n, 2))
    return len(records), [records[i].recist.translated(s) for i, s in zip(picks, shifts)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "deeplesion_samples" / "DL_info_test_split_from_HAID.csv")
    parser.add_argument("--n", type=int, default=DEEPLESION_LESIONS)
    parser.add_argument("--k", type=int, default=190)
    parser.add_argument("--jitter", type=float, default=2.0, help="largest shift, pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", choices=FEATURE_SETS, nargs="+", default=list(FEATURE_SETS))
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    n_rows, recists = resampled_recists(args.data, args.n, args.jitter, args.seed)
    print(f"{n_rows} valid rows resampled to {len(recists)} lesions in "
          f"{time.perf_counter() - t0:.1f} s; peak memory {peak_rss_mb():.0f} MB")
    for features in args.features:
        t0, c0 = time.perf_counter(), cpu_seconds()
        grouping = group_lesions(recists, args.k, features=features, seed=args.seed)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        sizes = np.bincount(grouping.labels_, minlength=args.k)
        t1 = time.perf_counter()
        again = group_lesions(recists, args.k, features=features, seed=args.seed)
        repeat = time.perf_counter() - t1
        same = np.array_equal(again.labels_, grouping.labels_)
        print(f"{features:>12}: K={grouping.k} in {seconds:.1f} s ({cpu:.1f} s CPU; again "
              f"{repeat:.1f} s, same "
              f"groups: {same}); group sizes {sizes.min()}..{sizes.max()}; peak memory "
              f"{peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
