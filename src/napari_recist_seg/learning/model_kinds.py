"""The registry of model kinds: one entry per kind says everything front ends need.

Torch-free, so that the plugin's forms and the command line read it without loading torch.
Adding a kind means adding an entry here; the network factory, the loss, the trainer, inference,
reports and the plugin look its properties up instead of listing kinds themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODEL_KINDS", "MODEL_REGISTRY", "REFERENCE_COLOURS", "ModelKind", "colour_of",
           "display_name", "model_kind"]


@dataclass(frozen=True)
class ModelKind:
    """What one model kind is and needs.

    Attributes
    ----------
    name : str
        Identifier used in commands, checkpoints and run folders.
    display : str
        Name shown to people (tables, legends, the plugin).
    colour : str
        Hex colour of its masks and curves everywhere.
    description : str
        One line for tooltips and ``--help``.
    groups : bool
        Has a RECIST-group classification head (needs the K-means groups).
    paired : bool
        Trained on pairs of images (co-segmentation).
    prompted : bool
        Takes the lesion's RECIST as extra input channels, at training and at prediction.
    seg_weight, cls_weight : float or None
        Default loss weights of the mask term and of the group term.
    """

    name: str
    display: str
    colour: str
    description: str
    groups: bool = False
    paired: bool = False
    prompted: bool = False
    seg_weight: float = 100.0
    cls_weight: float | None = None


MODEL_REGISTRY: dict[str, ModelKind] = {
    kind.name: kind for kind in (
        ModelKind("multitask", "multitask", "#e6194b",
                  "Segmentation + RECIST-group classification",
                  groups=True, seg_weight=50.0, cls_weight=1.0),
        ModelKind("a1", "A1", "#3cb4ff", "Segmentation alone"),
        ModelKind("coseg", "co-segmentation", "#ffe119",
                  "Siamese co-segmentation of look-alike lesion pairs", paired=True),
        ModelKind("prompted", "prompted", "#00c8b4",
                  "Segmentation guided by the lesion's own RECIST (needs it to predict)",
                  prompted=True),
    )
}

#: Kinds in the order front ends list them.
MODEL_KINDS: tuple[str, ...] = tuple(MODEL_REGISTRY)

#: Colours of what models are compared with.
REFERENCE_COLOURS = {"ellipse": "#f58231", "quarter_ellipse": "#911eb4", "truth": "#3cff44"}


def model_kind(name: str) -> ModelKind:
    """The registry entry of ``name``; ValueError naming the known kinds otherwise."""
    try:
        return MODEL_REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model kind {name!r}; choose one of "
                         f"{', '.join(MODEL_KINDS)}") from None


def display_name(name: str) -> str:
    """The name people see for a model kind or a reference method (unknown names unchanged)."""
    entry = MODEL_REGISTRY.get(name)
    return entry.display if entry is not None else name


def colour_of(name: str, default: str = "#ffffff") -> str:
    """Hex colour of a model kind or reference method."""
    entry = MODEL_REGISTRY.get(name)
    if entry is not None:
        return entry.colour
    return REFERENCE_COLOURS.get(name, default)
