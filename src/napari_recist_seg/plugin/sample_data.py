"""napari sample data (File > Open Sample): generated phantoms, never downloaded.

Each sample gives the image, its true lesion masks (a Labels layer, lesion ``i`` labelled
``i + 1``) and the RECIST measured on them (lesion ids 0, 1, ...).
"""

from __future__ import annotations

import numpy as np

from .layer_units import SOFT_TISSUE_WINDOW, units_for
from .recist_layers import table_layer_tuple

__all__ = ["ct_slice_sample", "ct_volume_sample", "dermoscopy_sample"]


def _recist_table(recists, slices=None):
    from ..data.recist_files import RecistTable

    return RecistTable(recists=list(recists), slices=slices)


def ct_slice_sample():
    """A CT-like abdominal slice (HU) with lesions, their true masks and their RECIST."""
    from ..data.samples import ct_phantom_slice

    s = ct_phantom_slice(seed=0)
    scale = tuple(s["spacing"])
    units = units_for(scale)
    return [
        (
            s["image"],
            {"name": "CT phantom", "scale": scale, "contrast_limits": SOFT_TISSUE_WINDOW,
             "colormap": "gray", **units},
            "image",
        ),
        (s["masks"], {"name": "CT phantom true masks", "scale": scale, "opacity": 0.35,
                      **units}, "labels"),
        table_layer_tuple(_recist_table(s["recists"]), name="CT phantom RECIST", scale=scale,
                          **units),
    ]


def ct_volume_sample():
    """A small CT-like volume; each lesion's RECIST sits on its key slice."""
    from ..data.samples import ct_phantom_volume

    s = ct_phantom_volume(seed=0)
    scale = tuple(s["spacing"])
    units = units_for(scale)
    return [
        (
            s["image"],
            {"name": "CT phantom volume", "scale": scale,
             "contrast_limits": SOFT_TISSUE_WINDOW, "colormap": "gray", **units},
            "image",
        ),
        (s["masks"], {"name": "CT phantom volume true masks", "scale": scale, "opacity": 0.35,
                      **units}, "labels"),
        table_layer_tuple(
            _recist_table(s["recists"], s["slices"]), name="CT phantom volume RECIST",
            scale=scale, **units,
        ),
    ]


def dermoscopy_sample():
    """A dermoscopy-like RGB photograph of a pigmented lesion, its mask and RECIST.

    A photograph has no pixel size: its lengths are in px.
    """
    from ..data.samples import dermoscopy_image

    s = dermoscopy_image(seed=0)
    return [
        (s["image"], {"name": "dermoscopy", "rgb": True}, "image"),
        (s["mask"].astype(np.int32), {"name": "dermoscopy true mask", "opacity": 0.35},
         "labels"),
        table_layer_tuple(_recist_table(s["recists"]), name="dermoscopy RECIST"),
    ]
