"""Split an image+mask folder into train/ and test/ folders of links (no copies).

    python examples/split_image_folder.py --data ../shared/data/isic2017_train_256 \\
        --out isic-split --test 300

The split is by file, seeded, and each pair keeps its names, so the result reads like the
original with ``read_image_mask_folder``.
"""

import argparse
import os
from pathlib import Path

import numpy as np

from napari_recist_seg.data.image_folders import read_image_mask_folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image+mask folder")
    parser.add_argument("--out", required=True, help="folder to create train/ and test/ in")
    parser.add_argument("--test", type=int, default=300, help="number of test pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pairs = sorted(read_image_mask_folder(args.data), key=lambda p: p.name)
    if not 0 < args.test < len(pairs):
        raise SystemExit(f"--test must be between 1 and {len(pairs) - 1}")
    order = np.random.default_rng(args.seed).permutation(len(pairs))
    test = set(order[: args.test].tolist())
    out = Path(args.out)
    for i, pair in enumerate(pairs):
        split = out / ("test" if i in test else "train")
        for src, sub in ((pair.image_path, "images"), (pair.mask_path, "masks")):
            dst = split / sub / Path(src).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                os.symlink(Path(src).resolve(), dst)
    print(f"{len(pairs) - len(test)} training and {len(test)} test pairs in {out}")


if __name__ == "__main__":
    main()
