"""Reading DeepLesion key slices from its NIfTI release against its PNG release.

Writes one run of consecutive CT-like slices both ways (16-bit PNGs with HU + 32768, and one
NIfTI file as DeepLesion's ``DL_save_nifti.py`` lays it out, compressed and not), then times
what a training item reads: the key slice with one neighbour on each side, for key slices at
the start, middle and end of the run. A ``.nii.gz`` file is decompressed up to the planes asked
for, so its cost grows with the key slice's depth in the file:

    python benchmarks/nifti_key_slices.py --slices 60 --side 512 --repeats 5
"""

import argparse
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import SimpleITK as sitk

from napari_recist_seg.data.deeplesion import read_deeplesion_volume_planes


def _slices(n: int, side: int) -> np.ndarray:
    """CT-like slices: smooth anatomy with noise (noise keeps compression realistic)."""
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:side, :side] / side
    body = 1000.0 * np.exp(-((rr - 0.5) ** 2 + (cc - 0.5) ** 2) * 6) - 1000.0
    return np.stack([body + rng.normal(0, 20, (side, side)) + 2 * k
                     for k in range(n)]).astype(np.int16)


def _time(read, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        read()
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    hu = _slices(args.slices, args.side)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k, plane in enumerate(hu):
            iio.imwrite(folder / f"{k:03d}.png", (plane.astype(np.int32) + 32768).astype(np.uint16))
        image = sitk.GetImageFromArray(hu.transpose(0, 2, 1).copy())  # the files' own layout
        image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
        sitk.WriteImage(image, str(folder / "run.nii.gz"), True)
        sitk.WriteImage(image, str(folder / "run.nii"), False)
        size = (folder / "run.nii.gz").stat().st_size / 1e6
        print(f"{args.slices} slices of {args.side} x {args.side} px; run.nii.gz {size:.1f} MB, "
              f"median of {args.repeats} reads of 3 planes (ms)")
        print(f"{'key slice':>10} {'PNG':>8} {'.nii':>8} {'.nii.gz':>8}")
        for key in (1, args.slices // 2, args.slices - 2):
            planes = [key - 1, key, key + 1]
            png = _time(lambda p=planes: [iio.imread(folder / f"{k:03d}.png") for k in p],
                        args.repeats)
            raw = _time(lambda p=planes: read_deeplesion_volume_planes(folder / "run.nii", p),
                        args.repeats)
            gz = _time(lambda p=planes: read_deeplesion_volume_planes(folder / "run.nii.gz", p),
                       args.repeats)
            print(f"{key:>10} {png:8.1f} {raw:8.1f} {gz:8.1f}")


if __name__ == "__main__":
    main()
