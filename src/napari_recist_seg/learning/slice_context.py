"""Which neighbouring slices a lesion-crop model reads as channels, from its preprocessing.

Models of volumes record ``preprocessing["context"]``; models of grey lesion tables record
the table's ``source["neighbours"]`` and ``source["slice_gap_mm"]``. Prediction on a table,
and the plugin on an image layer, both ask here, so that they read what training read.
Kept free of torch: the plugin asks before the model's library is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["slice_context", "slice_gap_mm"]


def _source(preprocessing) -> Mapping:
    source = (preprocessing or {}).get("source") or {}
    return source if isinstance(source, Mapping) else {}


def slice_context(preprocessing) -> int:
    """Neighbouring slices on each side read as channels (0: none).

    Parameters
    ----------
    preprocessing : mapping or None
        A model's ``preprocessing``: its ``context`` (crops of volumes), else the
        ``neighbours`` of the grey lesion table it was trained on.
    """
    pre = preprocessing or {}
    context = int(pre.get("context") or 0)
    source = _source(pre)
    if not context and not source.get("colour"):
        context = int(source.get("neighbours") or 0)
        channels = source.get("in_channels")
        if channels:
            # A table of 8-bit grey key slices records the neighbours it was asked for but
            # gives one channel: what the network reads is what counts.
            context = min(context, (int(channels) - 1) // 2)
    return context


def slice_gap_mm(preprocessing) -> float | None:
    """Distance in mm between the slices a table-trained model reads as channels, or None
    for adjacent planes (models of volumes)."""
    gap = _source(preprocessing).get("slice_gap_mm")
    return float(gap) if gap else None
