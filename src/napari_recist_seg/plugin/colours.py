"""Colours of RECIST lines: by axis before grouping, by group after."""

from __future__ import annotations

import numpy as np

__all__ = [
    "AXIS_COLOURS",
    "GROUP_PALETTE",
    "UNASSIGNED_COLOUR",
    "group_colour",
    "int_values",
    "line_colours",
]


#: Edge colour of each axis kind; lines that are not part of a lesion yet are white.
AXIS_COLOURS = {"long": "#ffa319", "short": "#19c8ff"}


UNASSIGNED_COLOUR = "#ffffff"


#: Qualitative colours for K-means groups (matplotlib's tab10, then tab10's lighter half).
GROUP_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)


def _hex_to_rgba(colour: str) -> np.ndarray:
    colour = colour.lstrip("#")
    return np.array([int(colour[i : i + 2], 16) / 255.0 for i in (0, 2, 4)] + [1.0])


def int_values(values, default: int = -1) -> np.ndarray:
    """Integers from a column that may hold None, NaN or text (those become ``default``)."""
    import pandas as pd

    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    return numbers.fillna(default).astype(np.int64).to_numpy()


def group_colour(group) -> str:
    """Colour of a K-means group (a hex string); groups below 0 have none (white)."""
    try:
        g = int(group)
    except (TypeError, ValueError):
        return UNASSIGNED_COLOUR
    if g < 0:
        return UNASSIGNED_COLOUR
    return GROUP_PALETTE[g % len(GROUP_PALETTE)]


def line_colours(axes, groups=None) -> np.ndarray:
    """RGBA edge colour per line: by group where one is given (>= 0), else by axis."""
    by_axis = {name: _hex_to_rgba(c) for name, c in AXIS_COLOURS.items()}
    unassigned = _hex_to_rgba(UNASSIGNED_COLOUR)
    palette = np.array([_hex_to_rgba(c) for c in GROUP_PALETTE])
    out = np.array([by_axis.get(str(a), unassigned) for a in axes]).reshape(-1, 4)
    if groups is not None:
        g = int_values(groups)
        has = g >= 0
        out[has] = palette[g[has] % len(palette)]
    return out
