"""Dock widgets of the plugin, each a thin front end over library calls.

Every widget is a ``QWidget`` whose constructor takes ``napari_viewer``; napari.yaml lists it
as a command (``python_name: napari_recist_seg.plugin.widgets.<module>:<Class>``) plus a
``widgets`` entry with its display name. A new widget is a new module here and those two
manifest entries. Shared pieces (layer pickers, connection bookkeeping) are in ``_common``.
Imports are lazy so that listing the widgets does not load Qt or matplotlib.
"""

from importlib import import_module

_WIDGETS = {
    "RecistWidget": ".recist_widget",
    "GroupsWidget": ".groups_widget",
    "TrainingWidget": ".training_widget",
    "CompareWidget": ".compare_widget",
    "SegmentWidget": ".segment_widget",
}

__all__ = list(_WIDGETS)


def __getattr__(name):
    if name in _WIDGETS:
        return getattr(import_module(_WIDGETS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
