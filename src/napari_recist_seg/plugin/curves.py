"""Training curves: the series kept per model kind and their off-screen matplotlib figure."""

from __future__ import annotations

from .training_job import KIND_NAMES

__all__ = ["SERIES", "CurveFigure", "add_event"]

#: Series kept per model kind: per-step loss terms at fractional epochs, per-epoch means, Dice.
SERIES = ("step_x", "step_seg", "step_cls", "epoch", "seg", "cls", "dice")


def add_event(curves: dict, event: dict) -> bool:
    """Add a training event (``TrainEvent.to_dict()``) to ``curves``; True when it changed."""
    kind = event["model_kind"]
    c = curves.setdefault(kind, {name: [] for name in SERIES})
    losses = event.get("losses") or {}
    nan = float("nan")
    if event["kind"] == "step":
        steps = max(1, int(event["steps_per_epoch"]))
        c["step_x"].append(int(event["epoch"]) - 1 + int(event["step"]) / steps)
        c["step_seg"].append(float(losses.get("seg", nan)))
        c["step_cls"].append(float(losses.get("cls", nan)))
        return True
    if event["kind"] == "epoch":
        c["epoch"].append(int(event["epoch"]))
        c["seg"].append(float(losses.get("seg", nan)))
        c["cls"].append(float(losses.get("cls", nan)))
        c["dice"].append(float((event.get("val") or {}).get("dice", nan)))
        return True
    return False


class CurveFigure:
    """The training curves as a matplotlib figure drawn off screen (Agg, no Qt).

    Top: segmentation loss (solid) and group loss (dashed) per step (thin) and per epoch
    (dots); bottom: validation Dice per epoch; one colour per model kind
    (``learning.report.MODEL_COLOURS``). Drawing takes tens to hundreds of milliseconds, so it
    is done away from the viewer's GUI thread: in the training process, or in a worker thread.
    One drawing at a time.
    """

    def __init__(self, dpi: int = 80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(dpi=dpi)
        self._dpi = dpi
        FigureCanvasAgg(self.figure)
        self.figure.subplots_adjust(left=0.17, right=0.97, top=0.91, bottom=0.13, hspace=0.28)
        self.loss_axes = self.figure.add_subplot(211)
        self.dice_axes = self.figure.add_subplot(212, sharex=self.loss_axes)
        self._lines: dict = {}
        self._style()

    def _style(self) -> None:
        for ax in (self.loss_axes, self.dice_axes):
            ax.tick_params(labelsize=7)
        self.loss_axes.set_ylabel("loss", fontsize=8)
        self.loss_axes.set_title("seg (solid), group (dashed); dots: epoch means", fontsize=8)
        self.dice_axes.set_ylabel("val. Dice\n(vs pseudo-masks)", fontsize=8)
        self.dice_axes.set_xlabel("epoch", fontsize=8)
        self.dice_axes.set_ylim(0, 1)

    def reset(self) -> None:
        self.loss_axes.clear()
        self.dice_axes.clear()
        self._lines = {}
        self._style()

    def lines(self, kind: str) -> dict:
        """The drawn series of ``kind``: name -> (x, y), as last drawn."""
        return {name: (list(line.get_xdata()), list(line.get_ydata()))
                for name, line in self._lines.get(kind, {}).items()}

    def render(self, curves: dict, width: int, height: int, scale: float = 1.0):
        """Draw ``curves`` (per model kind, the ``SERIES``) at ``width`` x ``height`` pixels.

        ``scale`` is the screen's device pixels per logical pixel: text and lines are drawn
        that many times larger, as the rest of a high-DPI window is. Returns an RGBA uint8
        array of shape (height, width, 4).
        """
        import numpy as np

        from ..learning.report import MODEL_COLOURS

        self.figure.set_dpi(self._dpi * max(0.5, float(scale)))
        self.figure.set_size_inches(max(1, width) / self.figure.dpi,
                                    max(1, height) / self.figure.dpi)
        for kind, c in curves.items():
            lines = self._lines.get(kind)
            if lines is None:
                colour = MODEL_COLOURS.get(kind)
                la, lo = self.loss_axes, self.dice_axes
                lines = {
                    "step_seg": la.plot([], [], "-", lw=0.8, alpha=0.5, color=colour)[0],
                    "step_cls": la.plot([], [], "--", lw=0.8, alpha=0.5, color=colour)[0],
                    "seg": la.plot([], [], "o-", ms=3, color=colour,
                                   label=KIND_NAMES.get(kind, kind))[0],
                    "cls": la.plot([], [], "o--", ms=3, color=colour)[0],
                    "dice": lo.plot([], [], "o-", ms=3, color=colour)[0],
                }
                self._lines[kind] = lines
                la.legend(fontsize=7, loc="upper right")
            for name in ("step_seg", "step_cls"):
                lines[name].set_data(c["step_x"], c[name])
            for name in ("seg", "cls", "dice"):
                lines[name].set_data(c["epoch"], c[name])
        for ax in (self.loss_axes, self.dice_axes):
            ax.relim()
            ax.autoscale_view()
        self.dice_axes.set_ylim(0, 1)
        canvas = self.figure.canvas
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()
