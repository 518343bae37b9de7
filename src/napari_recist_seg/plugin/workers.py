"""Background workers whose every failure reaches the widget that started them.

superqt's workers (behind ``napari.qt.threading.create_worker``) take a ``RuntimeError``
raised by the work for a deleted Qt object: they drop it with a warning and emit neither
``errored`` nor ``finished``, so the widget waits forever. PyTorch reports most of its
failures (a shape mismatch, memory, a broken child process) as ``RuntimeError``; here they
arrive as ``WorkFailed`` and are handled like any other error.
"""

from __future__ import annotations

import functools
import inspect

__all__ = ["WorkFailed", "create_worker", "reporting_runtime_errors"]


class WorkFailed(Exception):
    """A ``RuntimeError`` of a worker's work, carried to the GUI thread (its message)."""


def reporting_runtime_errors(func):
    """``func`` (a function or a generator function) raising ``WorkFailed`` in place of any
    ``RuntimeError``, the original kept as its cause."""
    if inspect.isgeneratorfunction(func):
        @functools.wraps(func)
        def generator(*args, **kwargs):
            try:
                return (yield from func(*args, **kwargs))
            except RuntimeError as exc:
                raise WorkFailed(str(exc)) from exc
        return generator

    @functools.wraps(func)
    def call(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RuntimeError as exc:
            raise WorkFailed(str(exc)) from exc
    return call


def create_worker(func, *args, **kwargs):
    """``napari.qt.threading.create_worker`` for ``func``, whose ``RuntimeError`` is reported
    through ``errored`` like any other error (see the module's note)."""
    from napari.qt.threading import create_worker as napari_worker

    return napari_worker(reporting_runtime_errors(func), *args, **kwargs)
