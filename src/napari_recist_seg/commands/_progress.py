"""Progress bars for long CLI work (quiet when the output is not a terminal)."""

from __future__ import annotations

import sys


def progress(iterable, desc: str, unit: str = "it", total=None):
    """Wrap ``iterable`` in a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit=unit, total=total, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)
