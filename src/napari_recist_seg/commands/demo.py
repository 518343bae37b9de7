"""Generated data for ``recist-seg demo``: dermoscopy-like images in ISIC naming."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data._atomic import atomic_write


def _write_png(path: Path, array: np.ndarray) -> None:
    import imageio.v3 as iio

    with atomic_write(path, "wb", encoding=None) as fh:
        iio.imwrite(fh, array, extension=".png")


def write_demo_data(root, n_train: int, n_test: int, size: int = 128, seed: int = 0):
    """Write ``train/`` and ``test/`` image+mask folders of generated lesions; return both."""
    from ..data.samples import dermoscopy_dataset

    images, masks = dermoscopy_dataset(n_train + n_test, seed=seed, size=size)
    root = Path(root)
    folders = []
    for split, idx in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        folder = root / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        for i in idx:
            name = f"ISIC_{i:07d}"
            _write_png(folder / "images" / f"{name}.png", images[i])
            _write_png(folder / "masks" / f"{name}_segmentation.png",
                       np.asarray(masks[i], bool).astype(np.uint8) * 255)
        folders.append(folder)
    return folders[0], folders[1]


def write_geometry_figure(folder, path, n: int = 12) -> Path:
    """Pseudo-masks and K-means groups of the first ``n`` lesions of an image+mask folder."""
    from ..core.grouping import group_lesions
    from ..learning.benchmark import load_folder
    from ..learning.report import plot_pseudo_masks_and_groups

    data = load_folder(folder)
    grouping = group_lesions(data.recists, k=min(4, len(data.recists)), seed=0)
    return plot_pseudo_masks_and_groups(data.images[:n], data.recists[:n],
                                        grouping.labels_[:n], path, truths=data.masks[:n])
