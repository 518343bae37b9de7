"""Read real DeepLesion rows, DeepLesion key slices and CT DICOM files with the data readers.

    python examples/read_real_data.py --data ../shared/data

``--data`` is a folder holding ``deeplesion_samples/`` (DL_info CSVs and 8-bit key slices) and
``ct_hosts/pydicom/`` (DICOM files, with 16-bit PNG copies storing HU + 32768).
"""

import argparse
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from napari_recist_seg.core.recist import recist_from_mask
from napari_recist_seg.data.deeplesion import read_deeplesion, read_deeplesion_slice
from napari_recist_seg.data.image_folders import load_mask
from napari_recist_seg.data.volumes import read_medical_image


def _quartiles(values):
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return "min {:.1f}  q1 {:.1f}  median {:.1f}  q3 {:.1f}  max {:.1f}".format(*q)


def deeplesion_rows(folder: Path) -> None:
    csvs = sorted(folder.glob("DL_info*.csv"))
    if not csvs:
        print(f"no DL_info*.csv in {folder}")
        return
    path = csvs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the images of most rows are not here
        records, skipped = read_deeplesion(path, invalid="skip", return_skipped=True)
    total = len(records) + len(skipped)
    print(f"{path.name}: {total} rows, {len(records)} valid RECIST, {len(skipped)} invalid")
    for reason, n in Counter(s.category for s in skipped).most_common():
        print(f"  invalid: {n:3d}  {reason}")
    for s in skipped[:3]:
        print(f"    e.g. row {s.csv_row} {s.file_name}: {s.reason}")
    long_mm = np.array([r.recist.long_mm for r in records])
    short_mm = np.array([r.recist.short_mm for r in records])
    print(f"  long axis (mm):  {_quartiles(long_mm)}")
    print(f"  short axis (mm): {_quartiles(short_mm)}")
    # DL_info's own diameters in pixels, as a check of the coordinate conversion.
    diffs = [
        max(
            abs(r.recist.long_length - r.diameters_px[0]),
            abs(r.recist.short_length - r.diameters_px[1]),
        )
        for r in records
        if r.diameters_px is not None
    ]
    print(f"  |our axis lengths - Lesion_diameters_Pixel_| max {max(diffs):.4f} px")
    print(f"  splits {dict(Counter(r.split for r in records))}")
    types = Counter(r.lesion_type_name for r in records)
    print("  lesion types " + ", ".join(f"{k} {v}" for k, v in types.most_common()))
    sizes = Counter(r.spacing_mm[2] for r in records)
    print("  slice intervals (mm) " + ", ".join(f"{k:g}: {v}" for k, v in sizes.most_common(5)))
    widths = Counter(r.window for r in records).most_common(3)
    print("  windows " + ", ".join(f"{lo:g}..{hi:g}: {n}" for (lo, hi), n in widths))

    recist_rows = folder / "recist_DL_info_rows.csv"
    if not recist_rows.is_file():
        return
    samples = read_deeplesion(recist_rows)
    print(f"\n{recist_rows.name}: {len(samples)} lesions on the key slices in images/")
    for r in samples:
        hu = read_deeplesion_slice(r)
        rows, cols = np.round(r.recist.centre).astype(int)
        r0, c0, r1, c1 = (int(round(v)) for v in r.box)
        inside = hu[max(r0, 0) : r1 + 1, max(c0, 0) : c1 + 1]
        print(
            f"  {r.file_name} {r.lesion_type_name:<11} {hu.shape}"
            f" HU {hu.min():6.0f}..{hu.max():5.0f}"
            f"  long {r.recist.long_mm:5.1f} mm  short {r.recist.short_mm:5.1f} mm"
            f"  spacing {r.recist.spacing[0]:.3f}  box median HU {np.median(inside):6.1f}"
            f"  centre HU {hu[rows, cols]:6.1f}"
        )
    stack = read_deeplesion_slice(samples[0], neighbours=1)
    print(
        f"  neighbours=1 on a folder of key slices: {stack.shape}, channels equal: "
        f"{all(np.array_equal(c, stack[1]) for c in stack)}"
    )


def dicom_files(folder: Path) -> None:
    dicom = folder / "dicom"
    png = folder / "png16_hu_plus_32768"
    print(f"\n{dicom}:")
    for path in sorted(dicom.iterdir()):
        try:
            img = read_medical_image(path)
        except ValueError as exc:
            print(f"  {path.name}: ERROR {exc}")
            continue
        a = img.array
        meta = img.metadata
        window = meta.get("window")
        line = (
            f"  {path.name}: {meta.get('modality', '?')} {a.shape} {a.dtype} spacing "
            f"{img.spacing[0]:.4f} x {img.spacing[1]:.4f} mm, values {a.min()}..{a.max()}"
        )
        if window is not None:
            line += f", window {window[0]:g}..{window[1]:g}"
        if "rescale" in meta:
            line += f", rescale slope/intercept {meta['rescale'][0]:g}/{meta['rescale'][1]:g}"
        ref = png / f"{path.stem}.png"
        if ref.is_file():
            import imageio.v3 as iio

            hu = iio.imread(ref).astype(np.int32) - 32768
            diff = np.abs(hu - a.astype(np.int32)).max() if hu.shape == a.shape else "shape"
            line += f"; vs HU PNG max |diff| {diff}"
        print(line)
    mask_path = (
        folder / "mr_liver_lesion" / "MR-SIEMENS-DICOM-WithOverlays_lesionmask_filled_overlay.png"
    )
    mr = dicom / "MR-SIEMENS-DICOM-WithOverlays.dcm"
    if mask_path.is_file() and mr.is_file():
        img = read_medical_image(mr)
        mask = load_mask(mask_path)
        r = recist_from_mask(mask, spacing=img.spacing)
        print(
            f"  MR lesion outline: {mask.sum()} px, simulated RECIST long {r.long_mm:.1f} mm, "
            f"short {r.short_mm:.1f} mm"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder with the real data")
    args = parser.parse_args(argv)
    data = Path(args.data)
    deeplesion_rows(data / "deeplesion_samples")
    dicom_files(data / "ct_hosts" / "pydicom")


if __name__ == "__main__":
    main()
