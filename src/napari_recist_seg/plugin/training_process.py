"""The plugin's training generator in a spawned child process.

A child process keeps the viewer responsive: torch and the data preparation then never hold
the GUI process's interpreter lock (see ``benchmarks/gui_stall.py`` for the measurement), and
the child's exit frees all the memory, GPU memory included, that training used. The messages
are those of ``training_job.run_training``.
"""

from __future__ import annotations

import os
import queue as queue_module
import threading
import time
from collections.abc import Iterator

from .curves import CurveFigure, add_event
from .training_job import TrainingFailed, TrainingJob, run_training

__all__ = ["run_training_in_process"]


def _describe(exc: BaseException) -> str:
    from ..learning.run_folders import RunFolderBusy

    if isinstance(exc, ValueError | OSError | FloatingPointError | TrainingFailed
                  | RunFolderBusy):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _child_main(job: TrainingJob, messages, stop_event) -> None:
    """Entry point of the training process: run ``run_training`` and send its messages."""
    if job.niceness:
        try:
            os.nice(int(job.niceness))
        except (AttributeError, OSError):  # not on every platform
            pass
    parent = os.getppid()

    def stop() -> bool:
        # A viewer that was killed cannot ask: an orphan is adopted by another process, and
        # stops after its step like a run whose Stop was pressed (its checkpoint is kept).
        return stop_event.is_set() or os.getppid() != parent

    try:
        figure, curves, drawn, changed = None, {}, 0.0, False
        for message in run_training(job, stop):
            messages.put(message)
            if job.plot_size and message[0] == "event":
                changed = add_event(curves, message[1]) or changed
                end = message[1]["kind"] in ("epoch", "stopped", "finished")
                if changed and (end or time.monotonic() - drawn >= job.plot_interval):
                    figure = figure or CurveFigure()
                    messages.put(("plot", figure.render(curves, *job.plot_size,
                                                                scale=job.plot_scale)))
                    drawn, changed = time.monotonic(), False
        messages.put(("done", None))
    except BaseException as exc:  # reported to the parent, which raises it there
        messages.put(("error", _describe(exc)))
    finally:
        if os.getppid() != parent:
            # Nobody reads the messages any more. A process exits only once its queued
            # messages are in the pipe, and with the pipe full (the curves' pictures) it
            # would wait for ever, holding its memory (GPU memory too).
            messages.cancel_join_thread()


def _plain_reason(text: str) -> str:
    """A child's failure in words a user can act on: Python's long message when a script
    that starts napari without an ``if __name__ == "__main__":`` guard is imported again by
    the training process, which then tries to start its own."""
    if "bootstrapping phase" in text:
        return ("the training process imports the script that started napari again, and that "
                "script has no 'if __name__ == \"__main__\":' guard around its code: add one "
                "(see the README), or untick 'Separate process' in the Training widget")
    return text


def run_training_in_process(job: TrainingJob, stop: threading.Event | None = None,
                            poll: float = 0.05) -> Iterator[tuple]:
    """``run_training`` in a spawned child process; same messages, same stop semantics.

    Parameters
    ----------
    job : TrainingJob
        Pickled to the child (the images travel with it).
    stop : threading.Event, optional
        Setting it asks the child to stop after its current step.
    poll : float
        Seconds between checks of ``stop`` while waiting for a message.

    Raises
    ------
    TrainingFailed
        With the child's reason when training fails there, or when the child dies.
    """
    import multiprocessing

    job.validate()
    stop = stop or threading.Event()
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    child_stop = ctx.Event()
    process = ctx.Process(target=_child_main, args=(job, messages, child_stop),
                          name="recist-seg training", daemon=True)
    process.start()
    done = False
    try:
        while True:
            if stop.is_set():
                child_stop.set()
            try:
                kind, payload = messages.get(timeout=poll)
            except queue_module.Empty:
                if process.is_alive():
                    continue
                try:  # the child may have exited just after its last message
                    kind, payload = messages.get(timeout=1.0)
                except queue_module.Empty:
                    raise TrainingFailed(
                        f"the training process ended unexpectedly (exit code {process.exitcode})"
                    ) from None
            if kind == "done":
                done = True
                return
            if kind == "error":
                raise TrainingFailed(_plain_reason(str(payload)))
            yield (kind, payload)
    finally:
        child_stop.set()
        process.join(timeout=30 if done else 10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        messages.close()
