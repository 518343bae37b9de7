"""The plane of an image layer that a model reads for a lesion.

A model trained on a lesion table reads the key slice with its neighbours as channels
(``preprocessing["context"]`` slices on each side). An image layer shows one plane per slice,
so the neighbours are found where the slices came from: the series files of a DeepLesion
stack opened from its table (as training read them), the adjacent planes of a volume, or,
for a lone grey slice, the slice itself in every channel, as training does for a folder of
key slices without their neighbours.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

__all__ = ["LayerPlanes", "context_of"]

#: Records of the lesion tables read so far, by (path, modification time): a live preview
#: asks for neighbours at every edit.
_TABLES: dict[tuple[str, int], dict] = {}
_TABLES_LOCK = threading.Lock()


def context_of(model) -> int:
    """Neighbouring slices on each side that ``model`` reads as channels (0: none)."""
    return int((getattr(model, "preprocessing", None) or {}).get("context") or 0)


def _records_by_file(table) -> dict:
    from ..data.deeplesion import read_deeplesion

    path = Path(table)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    with _TABLES_LOCK:
        if key not in _TABLES:
            records = {}
            for record in read_deeplesion(path):
                records.setdefault(record.file_name, record)
            _TABLES.clear()  # one table at a time is ample; others are read again
            _TABLES[key] = records
        return _TABLES[key]


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
    """

    def __init__(self, data, rgb: bool = False, metadata: dict | None = None):
        self.data = data
        self.rgb = bool(rgb)
        self.metadata = dict(metadata or {})

    @property
    def shape(self) -> tuple:
        return tuple(np.shape(self.data))

    def plane(self, z, context: int = 0) -> tuple[np.ndarray, int | None]:
        """Plane ``z`` (None: a 2D image) and its channel axis, with ``context`` neighbouring
        slices on each side as channels ``(2 context + 1, H, W)`` when asked of grey data."""
        plane = np.asarray(self.data if z is None else self.data[z])
        if not context or self.rgb or plane.ndim != 2:
            return plane, None
        stack = self._from_table(z, context, plane.shape)
        if stack is None and z is not None:
            # Beyond the ends the end slice repeats, as the trainer's volumes do.
            idx = np.clip(np.arange(z - context, z + context + 1), 0, self.shape[0] - 1)
            stack = np.stack([plane if i == z else np.asarray(self.data[i]) for i in idx])
        if stack is None:
            stack = np.repeat(plane[None], 2 * context + 1, axis=0)
        return stack.astype(plane.dtype, copy=False), 0

    def _from_table(self, z, context: int, shape) -> np.ndarray | None:
        from ..data.deeplesion import read_deeplesion_slice

        files = self.metadata.get("deeplesion_files")
        table = self.metadata.get("deeplesion_table")
        if not files or not table or not Path(table).exists():
            return None
        index = 0 if z is None else int(z)
        if not 0 <= index < len(files):
            return None
        record = _records_by_file(table).get(files[index])
        if record is None or record.image_path is None:
            return None
        stack = read_deeplesion_slice(record, neighbours=context)
        if stack.shape[1:] == tuple(shape):
            return stack
        # The stack pads slices of another size with air in its top-left corner.
        out = np.full((stack.shape[0], *shape), -1024.0, dtype=np.float32)
        rows, cols = min(shape[0], stack.shape[1]), min(shape[1], stack.shape[2])
        out[:, :rows, :cols] = stack[:, :rows, :cols]
        return out
