"""Background workers whose every failure reaches the widget that started them.

superqt's workers (behind ``napari.qt.threading.create_worker``) take a ``RuntimeError``
raised by the work for a deleted Qt object: they drop it with a warning and emit neither
``errored`` nor ``finished``, so the widget waits forever. PyTorch reports most of its
failures (a shape mismatch, memory, a broken child process) as ``RuntimeError``; here they
arrive as ``WorkFailed`` and are handled like any other error.
"""

from __future__ import annotations

import contextlib
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
    through ``errored`` like any other error (see the module's note).

    A second after the worker has finished (its ``finished`` slots have run by then), it
    lets go of its work, arguments and slots (``_release``).
    """
    from napari.qt.threading import create_worker as napari_worker
    from qtpy.QtCore import QTimer

    worker = napari_worker(reporting_runtime_errors(func), *args, **kwargs)
    # Later than the slots connected after this one: each reaches the GUI thread as an
    # event of its own, and a release before them would cut them off.
    worker.finished.connect(lambda: QTimer.singleShot(RELEASE_AFTER_MS,
                                                      lambda: _release(worker)))
    return worker


#: How long after a worker has finished it lets go of what it holds (ms).
RELEASE_AFTER_MS = 1000


#: Signals whose slots a finished worker no longer needs.
_SIGNALS = ("started", "yielded", "returned", "errored", "warned", "aborted", "finished",
            "paused", "resumed")


def _release(worker) -> None:
    """Drop what a finished worker holds: its function, arguments and generator, and the
    slots connected to its signals (closures over the results).

    napari keeps every worker it made for the rest of the session (its task list). A
    comparison on a CT volume held three copies of the volume that way: 150 MB more at each
    press of Predict.
    """
    for name in ("_func", "_args", "_kwargs", "_gen"):
        if hasattr(worker, name):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(worker, name, None)
    for name in _SIGNALS:
        signal = getattr(worker, name, None)
        if signal is not None:
            with contextlib.suppress(TypeError, RuntimeError):
                signal.disconnect()
