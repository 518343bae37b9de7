"""Progress bars for long CLI work: redrawn in place on a terminal, one line now and then in a
log file (a batch job's output), where redraws would pile up on one line."""

from __future__ import annotations

import sys

#: Seconds between two progress lines when the output is not a terminal.
LOG_INTERVAL_S = 30.0


class _LineLog:
    """A file for tqdm that turns each redraw into a line of its own."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip("\n")
        if text.strip():
            self._stream.write(text + "\n")

    def flush(self) -> None:
        self._stream.flush()


def bar_options() -> dict:
    """tqdm keyword arguments for a bar on stderr, by what stderr is."""
    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return {"file": stream, "dynamic_ncols": True, "mininterval": 0.5}
    return {"file": _LineLog(stream), "ncols": 100, "mininterval": LOG_INTERVAL_S,
            "maxinterval": LOG_INTERVAL_S * 4, "ascii": True}


def progress(iterable, desc: str, unit: str = "it", total=None):
    """Wrap ``iterable`` in a tqdm bar on stderr (see ``bar_options``)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit=unit, total=total, **bar_options())
