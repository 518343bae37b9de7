"""Models with known outputs for the comparison tests: no training, no weights.

Each is a parameter-free torch module with the attributes a loaded checkpoint carries
(``kind``, ``config``, ``preprocessing``), so ``predict_detailed`` runs it as it runs a
trained model, and what it predicts is known in advance.
"""

from __future__ import annotations

import torch

SIZE = 32


class RampModel(torch.nn.Module):
    """Whole-image model whose lesion probability grows from left to right: at threshold t,
    the columns right of t (a fraction 1 - t of the image) are lesion."""

    def __init__(self, kind: str = "a1", n_groups: int = 2, group: int = 1):
        super().__init__()
        self.kind = kind
        self.config = {"input_size": SIZE}
        self.preprocessing = {"mode": "whole_image", "size": SIZE, "normalise": None}
        self.n_groups, self.group = n_groups, group

    def forward(self, x):
        n, _, rows, cols = x.shape
        p = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
        logits = torch.logit(p).expand(n, 1, rows, cols).clone()
        return self._with_groups(logits, n)

    def _with_groups(self, logits, n):
        if self.kind == "a1":
            return logits
        groups = torch.zeros(n, self.n_groups)
        groups[:, self.group] = 5.0
        return logits, groups


class ConstantModel(RampModel):
    """A model that gives every pixel the same logit: ``value < 0`` predicts nothing."""

    def __init__(self, value: float, kind: str = "a1", mode: str = "whole_image", **kw):
        super().__init__(kind, **kw)
        self.value = float(value)
        if mode == "crops":
            self.preprocessing = {"mode": "crops", "size": SIZE, "normalise": None,
                                  "margin": 0.5, "field_of_view_mm": None, "window": None}

    def forward(self, x):
        n, _, rows, cols = x.shape
        return self._with_groups(torch.full((n, 1, rows, cols), self.value), n)


class PriorModel(RampModel):
    """A RECIST-prompted whole-image model that predicts its prompt's prior channel (the
    quarter-ellipse through the endpoints)."""

    def __init__(self):
        super().__init__("prompted")

    def forward(self, x, prompt=None):
        if prompt is None:
            raise ValueError("a prompted model needs the prompt")
        return (prompt[:, 2:3] - 0.5) * 20.0
