"""Score RECIST pseudo-masks against real lesion masks of an image+mask folder.

For each mask the RECIST a reader would draw is simulated (long axis = largest Feret
diameter, short axis = longest perpendicular chord), each pseudo-mask method is drawn from it,
and Dice against the real mask is averaged. Both rules for placing the short axis among equally
long chords are scored: "middle" (the default, what a reader does) and "first" (a plain
arg-max, the rule behind published reference figures):

    python examples/pseudo_mask_dice.py --data ../shared/data/isic2017_train_256
"""

import argparse
import time

import numpy as np

from napari_recist_seg import pseudo_mask, recist_from_mask, segmentation_metrics
from napari_recist_seg.core.pseudo_masks import PSEUDO_MASK_METHODS
from napari_recist_seg.data.image_folders import load_pair, read_image_mask_folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image+mask folder (ISIC/PH2 naming)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N pairs only")
    args = parser.parse_args(argv)

    pairs = read_image_mask_folder(args.data)[: args.limit]
    rules = ("middle", "first")
    dice = {(t, m): [] for t in rules for m in PSEUDO_MASK_METHODS}
    seconds = []
    for pair in pairs:
        _, mask = load_pair(pair)
        for ties in rules:
            t0 = time.perf_counter()
            recist = recist_from_mask(mask, ties=ties)
            seconds.append(time.perf_counter() - t0)
            for method in PSEUDO_MASK_METHODS:
                drawn = pseudo_mask(recist, mask.shape, method)
                dice[ties, method].append(segmentation_metrics(drawn, mask)["dice"])
    print(f"{len(pairs)} image/mask pairs from {args.data}")
    for ties in rules:
        print(f"short axis at the {ties} of equally long chords:")
        for method in PSEUDO_MASK_METHODS:
            d = np.asarray(dice[ties, method])
            print(f"  {method:16s} Dice mean {d.mean():.4f}  median {np.median(d):.4f}  "
                  f"std {d.std():.4f}")
    print(f"recist_from_mask: {1e3 * np.mean(seconds):.2f} ms per mask on average")


if __name__ == "__main__":
    main()
