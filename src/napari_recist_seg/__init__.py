"""Weakly supervised lesion segmentation from RECIST marks, for napari and scripts.

The geometry (``Recist``, pseudo-masks, grouping, metrics) is imported eagerly and needs only
numpy and scikit-*; the learning functions import torch on first use, so that napari starts
fast with the plugin installed.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from .core.grouping import LesionGrouping, group_lesions, suggest_k
from .core.metrics import segmentation_metrics
from .core.pseudo_masks import pseudo_mask, pseudo_mask_labels
from .core.recist import Recist, recist_from_mask, recists_from_shapes, recists_to_shapes

try:
    __version__ = version("napari-recist-seg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# Public names served lazily from the torch-based learning layer.
_LAZY = {
    "build_model": "napari_recist_seg.learning.models",
    "train": "napari_recist_seg.learning.trainer",
    "load_model": "napari_recist_seg.learning.inference",
    "predict": "napari_recist_seg.learning.inference",
}

__all__ = [
    "LesionGrouping",
    "Recist",
    "__version__",
    "group_lesions",
    "pseudo_mask",
    "pseudo_mask_labels",
    "recist_from_mask",
    "recists_from_shapes",
    "recists_to_shapes",
    "segmentation_metrics",
    "suggest_k",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_recist_seg' has no attribute {name!r}")
