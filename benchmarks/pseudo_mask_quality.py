"""Pseudo-mask quality: how close masks made from a RECIST alone come to the true lesion.

Each lesion's RECIST (simulated from its true mask for an image+mask folder, the table's own
for a DeepLesion ``DL_info.csv``) gives the pseudo-masks of ``core.pseudo_masks``, the
certain lesion of its trimap (``core.trimap``) and the trimap's band filled in by each
refinement. Their mean Dice and IoU against the true masks are printed as a Markdown table,
with the time per lesion, the share of true lesion pixels the trimap calls background (zero
when its rules hold) and the size of the band:

    python benchmarks/pseudo_mask_quality.py --folder /work/shared/data/isic2017_train_256
    python benchmarks/pseudo_mask_quality.py --table dl/DL_info.csv --limit 300

Folder images are used as they are (colour or grey). CT slices are grey, windowed with each
row's ``DICOM_windows`` (soft tissue, -160 to 240 HU, where the row gives none).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_recist_seg.core.metrics import segmentation_metrics, truth_under_recist
from napari_recist_seg.core.pseudo_masks import pseudo_mask
from napari_recist_seg.core.trimap import (
    BACKGROUND,
    LESION,
    UNKNOWN,
    recist_trimap,
    refine_trimap,
)

SOFT_TISSUE = (-160.0, 240.0)
# Rows of the table, in order: (label, how the mask is made).
METHODS = (
    "ellipse",
    "quarter_ellipse",
    "trimap: certain lesion only",
    "trimap + none (quarter ellipse in band)",
    "trimap + none (halfway split)",
    "trimap + random_walker",
    "trimap + morph_chan_vese",
)


def folder_cases(path, limit, seed):
    """(name, image, truth, recist) of a seeded subset of an image+mask folder."""
    # The library's loader pairs the files and simulates each mask's RECIST.
    from napari_recist_seg.learning.benchmark import load_folder

    data = load_folder(path, limit=limit, seed=seed)
    for name, image, mask, recist in zip(data.names, data.images, data.masks, data.recists):
        yield name, np.asarray(image), np.asarray(mask) > 0, recist


def table_cases(path, limit, seed):
    """(name, windowed key slice, the lesion's own truth, recist) of a DeepLesion table."""
    from napari_recist_seg.data.image_folders import load_mask
    from napari_recist_seg.data.recist_sources import read_lesion_table

    table = read_lesion_table(path, neighbours=0)
    mask_dir = Path(table.path).parent / "masks"
    if not mask_dir.is_dir():
        raise SystemExit(f"{mask_dir}: no masks folder beside the table")
    rows = list(table.rows)
    if limit is not None and limit < len(rows):
        keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:limit])
        rows = [rows[i] for i in keep]
    slices: dict[int, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for r in rows:
        if r.image not in masks:
            masks[r.image] = load_mask(mask_dir / r.image)
        if r.stack not in slices:
            slices = {r.stack: table.stacks[r.stack].read()[0]}  # rows come slice by slice
        hu = slices[r.stack]
        lo, hi = r.window if r.window is not None else SOFT_TISSUE
        image = np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        truth = truth_under_recist(masks[r.image], r.recist.long_axis, r.recist.short_axis)
        yield f"{r.image}#{r.row}", image, truth, r.recist


def evaluate(cases, inner, outer):
    """Per-method Dice, IoU and seconds per lesion, and the trimap's band statistics."""
    scores = {m: {"dice": [], "iou": [], "seconds": []} for m in METHODS}
    wrong_bg, band_image, band_lesion, trimap_s = [], [], [], []
    skipped = 0
    for _name, image, truth, recist in cases:
        if not truth.any():
            skipped += 1
            continue
        shape = truth.shape
        made = {}
        for method in ("ellipse", "quarter_ellipse"):
            t0 = time.perf_counter()
            made[method] = (pseudo_mask(recist, shape, method), time.perf_counter() - t0)
        t0 = time.perf_counter()
        trimap = recist_trimap(recist, shape, inner=inner, outer=outer)
        trimap_s.append(time.perf_counter() - t0)
        made["trimap: certain lesion only"] = (trimap == LESION, 0.0)
        quarter = made["quarter_ellipse"][0]
        for label, method, prior in (
            ("trimap + none (quarter ellipse in band)", "none", quarter),
            ("trimap + none (halfway split)", "none", None),
            ("trimap + random_walker", "random_walker", None),
            ("trimap + morph_chan_vese", "morph_chan_vese", quarter),
        ):
            t0 = time.perf_counter()
            mask = refine_trimap(image, trimap, method, prior=prior)
            made[label] = (mask, time.perf_counter() - t0)
        for method, (mask, seconds) in made.items():
            m = segmentation_metrics(mask, truth)
            scores[method]["dice"].append(m["dice"])
            scores[method]["iou"].append(m["iou"])
            scores[method]["seconds"].append(seconds)
        n_truth = int(truth.sum())
        n_band = int((trimap == UNKNOWN).sum())
        wrong_bg.append(int((truth & (trimap == BACKGROUND)).sum()) / n_truth)
        band_image.append(n_band / truth.size)
        band_lesion.append(n_band / n_truth)
    return scores, {"wrong_bg": np.array(wrong_bg), "band_image": np.array(band_image),
                    "band_lesion": np.array(band_lesion), "trimap_s": np.array(trimap_s),
                    "skipped": skipped}


def report(title, scores, band, inner, outer) -> str:
    n = len(band["wrong_bg"])
    lines = [f"### {title}: {n} lesions (trimap inner={inner:g}, outer={outer:g})", "",
             "| pseudo-mask | Dice | IoU | Dice < 0.7 | ms / lesion |",
             "|---|---|---|---|---|"]
    for method in METHODS:
        s = scores[method]
        dice = np.array(s["dice"])
        ms = 1000 * float(np.mean(s["seconds"]))
        ms_cell = f"{ms:.1f}" if ms > 0 else "-"
        if method.startswith("trimap:"):
            ms_cell = f"{1000 * float(np.mean(band['trimap_s'])):.1f} (trimap)"
        lines.append(f"| {method} | {dice.mean():.3f} | {np.mean(s['iou']):.3f} | "
                     f"{np.mean(dice < 0.7):.1%} | {ms_cell} |")
    wrong = band["wrong_bg"]
    lines += [
        "",
        "| trimap | value |",
        "|---|---|",
        f"| true lesion pixels labelled BACKGROUND (mean share) | {wrong.mean():.4%} |",
        f"| lesions with any such pixel | {int((wrong > 0).sum())} of {n} |",
        f"| worst lesion's share labelled BACKGROUND | {wrong.max():.2%} |",
        f"| UNKNOWN band, share of the image (mean) | {band['band_image'].mean():.2%} |",
        f"| UNKNOWN band, relative to the true lesion's area (mean) | "
        f"{band['band_lesion'].mean():.2f} |",
    ]
    if band["skipped"]:
        lines.append(f"| lesions skipped (no true mask under the RECIST) | {band['skipped']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", help="image+mask folder (images/ and masks/)")
    source.add_argument("--table", help="DeepLesion DL_info.csv with masks/ beside it")
    parser.add_argument("--limit", type=int, default=None,
                        help="lesions to use, a seeded random subset (folder default: 200; "
                             "table default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inner", type=float, default=0.5)
    parser.add_argument("--outer", type=float, default=1.5)
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    t0 = time.perf_counter()
    if args.folder:
        limit = 200 if args.limit is None else args.limit
        cases, title = folder_cases(args.folder, limit, args.seed), Path(args.folder).name
    else:
        cases, title = table_cases(args.table, args.limit, args.seed), Path(args.table).name
    scores, band = evaluate(cases, args.inner, args.outer)
    print(report(title, scores, band, args.inner, args.outer))
    print(f"\n({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
