"""Messages in napari's notification area, shown from any thread."""

from __future__ import annotations

__all__ = [
    "notify_error",
    "notify_info",
    "notify_warning",
]


def notify_error(message: str) -> None:
    """Show an error in napari's notification area (and the log), without raising."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    """Show a warning in napari's notification area."""
    from napari.utils.notifications import show_warning

    show_warning(message)


def notify_info(message: str) -> None:
    """Show an information message in napari's notification area."""
    from napari.utils.notifications import show_info

    show_info(message)
