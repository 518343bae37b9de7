"""The plane of an image layer that a model reads for a lesion.

A model trained on a lesion table reads the key slice with its neighbours as channels
(``preprocessing["context"]`` slices on each side). An image layer shows one plane per slice,
so the neighbours are found where the slices came from: the series files of a DeepLesion
stack opened from its table (as training read them), the adjacent planes of a volume, or,
for a lone grey slice, the slice itself in every channel, as training does for a folder of
key slices without their neighbours.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..learning.slice_context import slice_context, slice_gap_mm

__all__ = ["LayerPlanes", "context_of", "slice_gap_of", "slice_mm_of"]

def context_of(model) -> int:
    """Neighbouring slices on each side that ``model`` reads as channels (0: none)."""
    return slice_context(getattr(model, "preprocessing", None))


def slice_gap_of(model) -> float | None:
    """Distance in mm between the slices a table-trained ``model`` reads as channels, or
    None for neighbouring planes."""
    return slice_gap_mm(getattr(model, "preprocessing", None))


def slice_mm_of(layer) -> float | None:
    """The slice interval in mm of an image layer's stack, where its units say mm."""
    from .layer_units import is_mm

    units = tuple(getattr(layer, "units", None) or ())
    if getattr(layer, "ndim", 0) - (1 if getattr(layer, "rgb", False) else 0) != 3:
        return None
    if len(units) >= 3 and is_mm(units[0]) and float(layer.scale[0]) > 0:
        return float(layer.scale[0])
    return None


def _table_key(table) -> tuple[str, int]:
    """A table file's path and modification time: what its cached reads are kept under."""
    path = Path(table).resolve()
    return str(path), path.stat().st_mtime_ns


@lru_cache(maxsize=1)  # one table at a time is ample; another is read again
def _records_by_file(table_key: tuple[str, int]) -> dict:
    """The first record of each key slice file of a table, read once per table version: a
    live preview asks for neighbours at every edit."""
    from ..data.deeplesion import read_deeplesion

    records = {}
    for record in read_deeplesion(table_key[0]):
        records.setdefault(record.file_name, record)
    return records


@lru_cache(maxsize=8)
def _table_stack(table_key: tuple[str, int], file_name: str, context: int) -> np.ndarray | None:
    """A DeepLesion key slice with ``context`` neighbours on each side, read once: a live
    preview asks for the same slice at every edit of a lesion on it. Read-only, as it is
    shared by every caller."""
    from ..data.deeplesion import read_deeplesion_slice

    record = _records_by_file(table_key).get(file_name)
    if record is None or record.image_path is None:
        return None
    stack = read_deeplesion_slice(record, neighbours=context)
    stack.setflags(write=False)
    return stack


class LayerPlanes:
    """The planes of an image layer's data as models read them.

    Parameters
    ----------
    data : array_like
        2D grey or colour, or a stack ``(Z, H, W[, 3])``.
    rgb : bool
        The last axis holds colours.
    metadata : dict, optional
        The layer's metadata; a DeepLesion stack opened by this plugin's reader names its
        table and each plane's file there.
    slice_mm : float, optional
        The stack's slice interval in mm (``slice_mm_of``), where known.
    """

    def __init__(self, data, rgb: bool = False, metadata: dict | None = None,
                 slice_mm: float | None = None):
        self.data = data
        self.rgb = bool(rgb)
        self.metadata = dict(metadata or {})
        self.slice_mm = slice_mm

    @property
    def shape(self) -> tuple:
        return tuple(np.shape(self.data))

    def plane(self, z, context: int = 0, gap_mm: float | None = None
              ) -> tuple[np.ndarray, int | None]:
        """Plane ``z`` (None: a 2D image) and its channel axis, with ``context`` neighbouring
        slices on each side as channels ``(2 context + 1, H, W)`` when asked of grey data.

        With ``gap_mm`` and a known slice interval, the neighbour ``j`` is the plane nearest
        ``j * gap_mm`` away, as a lesion table's volumes are read; otherwise the adjacent
        planes. Beyond the ends the end plane repeats."""
        plane = np.asarray(self.data if z is None else self.data[z])
        if not context or self.rgb or plane.ndim != 2:
            return plane, None
        stack = self._from_table(z, context, plane.shape)
        if stack is None and z is not None:
            steps = np.arange(-context, context + 1, dtype=float)
            if gap_mm and self.slice_mm:
                steps = np.rint(steps * gap_mm / self.slice_mm)
            idx = np.clip(z + steps.astype(int), 0, self.shape[0] - 1)
            stack = np.stack([plane if i == z else np.asarray(self.data[i]) for i in idx])
        if stack is None:
            stack = np.repeat(plane[None], 2 * context + 1, axis=0)
        return stack.astype(plane.dtype, copy=False), 0

    def _from_table(self, z, context: int, shape) -> np.ndarray | None:
        files = self.metadata.get("deeplesion_files")
        table = self.metadata.get("deeplesion_table")
        if not files or not table or not Path(table).exists():
            return None
        index = 0 if z is None else int(z)
        if not 0 <= index < len(files):
            return None
        stack = _table_stack(_table_key(table), files[index], int(context))
        if stack is None:
            return None
        if stack.shape[1:] == tuple(shape):
            return stack
        # The stack pads slices of another size with air in its top-left corner.
        out = np.full((stack.shape[0], *shape), -1024.0, dtype=np.float32)
        rows, cols = min(shape[0], stack.shape[1]), min(shape[1], stack.shape[2])
        out[:, :rows, :cols] = stack[:, :rows, :cols]
        return out
