"""Training settings (``TrainConfig``) and their bounds, without torch.

Kept apart from the trainer so that front ends (the napari plugin's forms, the command line)
take their defaults from here without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..core.recist_prompt import PRIOR_EDGES, check_prior_edge
from .model_kinds import MODEL_KINDS, model_kind

__all__ = ["AMP_SETTINGS", "AUGMENTATIONS", "DEFAULT_CRF_WEIGHT", "MAX_GROUPS", "MAX_INPUT_SIZE",
           "MAX_IN_CHANNELS", "MAX_ROUNDS", "MODEL_KINDS", "SELECT_METRICS", "TrainConfig",
           "check_crf_weight", "check_rounds", "default_augmentation", "default_crf_weight",
           "selection_score"]

# Upper bounds: far above any real use, low enough that no setting makes a network of absurd
# size (a config file may come from anywhere).
#: Largest number of input channels a checkpoint or a run may ask for.
MAX_IN_CHANNELS = 64
#: Largest network input side in pixels.
MAX_INPUT_SIZE = 4096
#: Largest number of RECIST groups (classes of the multitask head).
MAX_GROUPS = 10_000
#: Most self-training rounds a run may ask for: each one trains a whole network again.
MAX_ROUNDS = 10
#: Mixed-precision settings (see ``devices.amp_dtype``).
AMP_SETTINGS = ("auto", "bf16", "fp16", "off")
#: What picks the ``best`` checkpoint and drives early stopping: the validation loss, or the
#: validation Dice against the pseudo-masks.
SELECT_METRICS = ("loss", "dice")
#: Training augmentations (see ``data.dataset.LesionDataset.with_augmentation``): each model
#: kind's own default (``default_augmentation``), none, flips and quarter turns with
#: brightness and contrast jitter, or those and a random rotation by any angle, scaling and
#: shift.
AUGMENTATIONS = ("auto", "none", "flips", "affine")


def selection_score(val: dict, select: str) -> float:
    """The number a validation record ranks epochs by, lower being better: its loss, or its
    Dice negated (``select`` is one of ``SELECT_METRICS``)."""
    if select == "dice":
        return -float(val.get("dice", float("nan")))
    return float(val["loss"])



@dataclass(frozen=True)
class TrainConfig:
    """What to train and how.

    Defaults follow the paper where it is sound (Adam, lr 1e-3, batch 10, early stopping with
    patience 5 on the validation mask loss, loss weights) and add what a CPU needs to get
    there: a small ResNet-18 encoder at 128x128 and a cosine learning-rate schedule, which
    damps the epoch-to-epoch swings of a constant rate so the best-validation checkpoint is
    a good one.

    Speed settings change neither the batches nor, beyond float rounding, what is learnt:
    ``num_workers`` DataLoader worker processes (None: 0 on a CPU, up to 4 with CUDA; see
    ``devices.default_workers``), ``amp`` mixed precision ("auto": bf16 where the CUDA device
    supports it, else fp16 with gradient scaling, and off on CPUs; "bf16", "fp16" or "off" to
    choose) and ``channels_last`` memory layout. Under ``torchrun``, ``batch_size`` is the
    global batch, split evenly over the processes.

    ``prior_residual`` (prompted models): the network learns a correction of the quarter-ellipse
    prior in its prompt rather than a mask from nothing (``models.PromptedNetwork``). None, the
    default, turns it on for prompted models: on a held-out part of the ISIC training folder it
    lifted the prompted model from 0.894 to 0.928 Dice.

    ``prior_dropout`` (prompted models): the share of training items whose prior channel is
    blanked. None, the default, is 0 for a network that corrects its prior (a blank prior
    leaves it nothing to correct, and on the CT-like set's validation split it lifted the
    prompted model from 0.861 to 0.887 Dice) and 0.5 for the plain network.

    ``prior_edge`` (prompted models): how the prior channel's edge is softened,
    "distance" (the default; its 0.5 level is the quarter-ellipse's outline) or "blur" (a
    Gaussian-blurred mask, the prior of earlier models); see ``core.recist_prompt``.

    ``select``: what ranks the epochs for the ``best`` checkpoint and early stopping, "loss"
    (the validation loss, the default) or "dice" (the validation Dice against the
    pseudo-masks). A network that grows over-confident can see its loss rise while its masks
    still improve, and "dice" keeps those later epochs.

    ``augment``: how training items are varied from epoch to epoch, one of ``AUGMENTATIONS``;
    "auto", the default, is each kind's own (``default_augmentation``): flips for prompted
    models, none for the others, as the paper trains.
    """

    kind: str = "multitask"
    encoder: str = "resnet18"
    input_size: int = 128
    in_channels: int = 3
    n_groups: int | None = None
    epochs: int = 30
    batch_size: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    patience: int = 5
    select: str = "loss"
    augment: str = "auto"
    seed: int = 0
    device: str = "auto"
    w_seg: float | None = None
    w_cls: float | None = None
    dice_weight: float = 0.0
    crf_weight: float | None = None
    pairing: str = "same_group"
    encoder_weights: str | None = None
    prompt_jitter: float = 2.0
    prior_dropout: float | None = None
    prior_residual: bool | None = None
    prior_edge: str = PRIOR_EDGES[0]
    num_workers: int | None = None
    amp: str = "auto"
    channels_last: bool = False

    @property
    def uses_prior_residual(self) -> bool:
        """Whether the network corrects its prompt's prior (``prior_residual`` resolved)."""
        if self.prior_residual is None:
            return model_kind(self.kind).prompted
        return bool(self.prior_residual)

    @property
    def training_prior_dropout(self) -> float:
        """The share of training items whose prior channel is blanked (``prior_dropout``
        resolved): None means 0 for a network that corrects its prior, 0.5 otherwise."""
        if self.prior_dropout is not None:
            return float(self.prior_dropout)
        return 0.0 if self.uses_prior_residual else 0.5

    @property
    def augmentation(self) -> str:
        """The augmentation training applies: ``augment``, or the kind's default for "auto"."""
        return default_augmentation(self.kind) if self.augment == "auto" else self.augment

    def crf_weight_for(self, colour: bool) -> float:
        """The weight of the edge-aware pairwise loss on images that are (``colour``) or are
        not photographs in colour: ``crf_weight``, or ``default_crf_weight`` when None."""
        if self.crf_weight is not None:
            return float(self.crf_weight)
        return default_crf_weight(self.kind, colour)

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        entry = model_kind(self.kind)
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be at least 2 (batch normalisation), got {self.batch_size}"
            )
        for name in ("epochs", "input_size", "in_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 16 <= self.input_size <= MAX_INPUT_SIZE or self.input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 from 16 to {MAX_INPUT_SIZE} "
                             f"pixels, got {self.input_size}")
        if self.in_channels > MAX_IN_CHANNELS:
            raise ValueError(f"in_channels must be at most {MAX_IN_CHANNELS}, got "
                             f"{self.in_channels}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.select not in SELECT_METRICS:
            raise ValueError(f"select must be one of {list(SELECT_METRICS)}, got "
                             f"{self.select!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {list(AUGMENTATIONS)}, got "
                             f"{self.augment!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if entry.groups and (self.n_groups is None or self.n_groups < 2):
            raise ValueError(
                f"the {entry.display} model needs n_groups >= 2 (the number of RECIST groups)"
            )
        if not 0 <= self.prompt_jitter <= 0.25 * self.input_size:
            raise ValueError(f"prompt_jitter must be between 0 and a quarter of input_size, "
                             f"got {self.prompt_jitter}")
        check_crf_weight(self.crf_weight)
        if self.prior_dropout is not None and not 0 <= self.prior_dropout <= 1:
            raise ValueError(f"prior_dropout must be in [0, 1], got {self.prior_dropout}")
        if self.prior_residual and not entry.prompted:
            raise ValueError(f"prior_residual applies to prompted models, not to the "
                             f"{entry.display} model")
        check_prior_edge(self.prior_edge)
        if self.num_workers is not None and (isinstance(self.num_workers, bool)
                                             or not isinstance(self.num_workers, int)
                                             or self.num_workers < 0):
            raise ValueError(f"num_workers must be a whole number, 0 or more, got "
                             f"{self.num_workers!r}")
        if self.amp not in AMP_SETTINGS:
            raise ValueError(f"amp must be one of {', '.join(AMP_SETTINGS)}, got {self.amp!r}")
        if self.pairing not in ("same_group", "random"):
            raise ValueError(f"pairing must be 'same_group' or 'random', got {self.pairing!r}")

    def to_dict(self) -> dict:
        return asdict(self)


#: Weight of the edge-aware pairwise loss term where it is on by default.
DEFAULT_CRF_WEIGHT = 50.0


def default_crf_weight(kind: str, colour: bool) -> float:
    """The edge-aware pairwise loss weight a model trains with unless told otherwise, on
    colour photographs (``colour``) or on grey images (CT slices, with or without their
    neighbours as channels).

    On for prompted models on colour images: on a held-out part of the ISIC training folder
    it lifted the prompted model from 0.929 to 0.940 Dice (weights 20, 50, 100, 200 and 400
    gave 0.937, 0.940, 0.941, 0.929 and 0.921; 50 keeps clear of the fall beyond 100). Off
    elsewhere: on the CT-like set's validation split it lowered the prompted model from 0.904
    to 0.903 (weight 25) and 0.887 (100), and the unprompted multitask model on ISIC from
    0.838 to 0.797 (100).
    """
    return DEFAULT_CRF_WEIGHT if model_kind(kind).prompted and colour else 0.0


def default_augmentation(kind: str) -> str:
    """The augmentation a model kind trains with unless told otherwise.

    "flips" for prompted models: on a held-out part of the ISIC training folder (300 training
    images, edge-aware loss 50) it lifted the prompted model from 0.939 to 0.940 Dice in 3
    epochs (better on 184 of 300 images, Wilcoxon p = 0.003) and from 0.941 to 0.942 in 6
    (p = 0.003), and on the CT-like set's validation split from 0.902 to 0.903 (p = 0.12).
    "none" for the others: the default multitask model (ResNet-18 from scratch, 4 epochs)
    scored 0.857 with flips against 0.862 without (p = 0.49).
    """
    return "flips" if model_kind(kind).prompted else "none"


def check_crf_weight(weight) -> float | None:
    """``weight`` as a float (None stays None: the default), or ValueError unless it is a
    finite number of 0 or more."""
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
            weight >= 0 and math.isfinite(weight)):
        raise ValueError(f"crf_weight (the edge-aware loss weight) must be a number >= 0, "
                         f"got {weight!r}")
    return float(weight)


def check_rounds(rounds) -> int:
    """``rounds`` as an int, or ValueError unless it is a whole number from 0 to MAX_ROUNDS."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"self-training rounds must be a whole number from 0 to {MAX_ROUNDS}, "
                         f"got {rounds!r}")
    return int(rounds)
