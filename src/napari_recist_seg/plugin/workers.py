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

    Once finished, the worker lets go of its function, arguments and generator
    (``_release``); the slots connected to it are the caller's to keep light.
    """
    from napari.qt.threading import create_worker as napari_worker

    worker = napari_worker(reporting_runtime_errors(func), *args, **kwargs)
    worker.finished.connect(lambda: _release(worker))
    return worker


def _release(worker) -> None:
    """Drop a finished worker's function, arguments and generator: napari keeps every
    worker it made for the rest of the session (its task list), and with them whatever
    they were given (a comparison's copies of a CT volume)."""
    for name in ("_func", "_args", "_kwargs", "_gen"):
        if hasattr(worker, name):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(worker, name, None)
