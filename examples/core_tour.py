"""RECIST core on generated lesions: measure, draw pseudo-masks, group, save a figure.

    python examples/core_tour.py --out core_tour.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.draw import ellipse  # noqa: E402

from napari_recist_seg import (  # noqa: E402
    group_lesions,
    pseudo_mask,
    recist_from_mask,
    segmentation_metrics,
)


def generated_lesions(n=12, shape=(96, 96), seed=0):
    """Random elliptic lesions with a little lobulation, one per mask."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        m = np.zeros(shape, bool)
        a, b = sorted(rng.uniform(8, 38, 2), reverse=True)
        rr, cc = ellipse(48, 48, a, b, shape=shape, rotation=rng.uniform(0, np.pi))
        m[rr, cc] = True
        rr, cc = ellipse(48 + rng.uniform(-a, a) / 2, 48, b / 1.5, b / 1.5, shape=shape)
        m[rr, cc] = True
        masks.append(m)
    return masks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="core_tour.png", help="figure to write (PNG)")
    parser.add_argument("--n", type=int, default=12, help="number of generated lesions")
    args = parser.parse_args(argv)

    masks = generated_lesions(args.n)
    recists = [recist_from_mask(m, spacing=(0.8, 0.8)) for m in masks]
    grouping = group_lesions(recists, k=3, seed=0)
    methods = ("ellipse", "quarter_ellipse", "polygon")
    dice = {m: [] for m in methods}

    cols = min(6, len(masks))
    rows = int(np.ceil(len(masks) / cols))
    # Constrained layout keeps each title above its own picture (tight_layout let the
    # second row's titles run into the first row's pictures).
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.6 * rows), squeeze=False,
                             layout="constrained")
    colours = plt.cm.tab10.colors
    for ax, mask, r, g in zip(axes.flat, masks, recists, grouping.labels_):
        pm = {m: pseudo_mask(r, mask.shape, m) for m in methods}
        for m in methods:
            dice[m].append(segmentation_metrics(pm[m], mask)["dice"])
        ax.imshow(mask, cmap="gray", vmin=0, vmax=2)
        ax.contour(pm["ellipse"], levels=[0.5], colors="tab:cyan", linewidths=1)
        ax.contour(pm["quarter_ellipse"], levels=[0.5], colors="tab:orange", linewidths=1)
        for axis, style in ((r.long_axis, "-"), (r.short_axis, "--")):
            ax.plot(axis[:, 1], axis[:, 0], style, color=colours[g % 10], lw=2)
        ax.set_title(f"group {g}: {r.long_mm:.0f}x{r.short_mm:.0f} mm", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("RECIST (lines, coloured by group), ellipse (cyan), quarter ellipse (orange)")
    fig.savefig(args.out, dpi=100)
    for m in methods:
        print(f"{m:16s} mean Dice against the true masks: {np.mean(dice[m]):.3f}")
    print(f"groups: {np.bincount(grouping.labels_).tolist()}  figure: {args.out}")


if __name__ == "__main__":
    main()
