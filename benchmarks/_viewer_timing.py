"""What the viewer benchmarks share: a virtual display, an event loop run until a condition,
and a precise timer that stamps every turn of the GUI event loop."""

from __future__ import annotations

import contextlib
import os
import sys
import time

#: The tick of the stamping timer: a gap between two stamps is time the viewer could not react.
TICK_MS = 10


@contextlib.contextmanager
def display():
    """A virtual X display for the run when none is set (Linux), else nothing."""
    virtual = None
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        from pyvirtualdisplay import Display

        virtual = Display(visible=False, size=(1600, 1000))
        virtual.start()
    try:
        yield
    finally:
        if virtual is not None:
            virtual.stop()


def run_until(app, condition, timeout: float) -> bool:
    """Process ``app``'s events until ``condition()`` holds (True) or ``timeout`` s pass."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.0005)
    return False


def tick_stamps():
    """A started ``QTimer`` firing every ``TICK_MS`` and the list its ticks' times go to."""
    from qtpy.QtCore import Qt, QTimer

    stamps: list[float] = []
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start()
    return timer, stamps
