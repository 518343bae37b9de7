"""Small generated image+mask folders in ISIC naming, shared by CLI and example tests."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.draw import ellipse


def make_isic_folder(root: Path, n: int = 6, size: int = 64, seed: int = 0,
                     width: int | None = None) -> Path:
    """Write ``n`` RGB images (``size`` rows, ``width`` columns, default square) with one
    elliptic lesion each and their 0/255 masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    width = size if width is None else width
    for i in range(n):
        mask = np.zeros((size, width), np.uint8)
        a = rng.uniform(size * 0.18, size * 0.35)
        b = rng.uniform(size * 0.1, a)
        rr, cc = ellipse(size / 2 + rng.uniform(-5, 5), width / 2 + rng.uniform(-5, 5), a, b,
                         rotation=rng.uniform(0, np.pi), shape=mask.shape)
        mask[rr, cc] = 255
        image = np.full((size, width, 3), (200, 160, 140), np.uint8)
        image[mask > 0] = (90, 60, 50)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        name = f"ISIC_{i:07d}"
        iio.imwrite(root / "images" / f"{name}.png", image)
        iio.imwrite(root / "masks" / f"{name}_segmentation.png", mask)
    return root
