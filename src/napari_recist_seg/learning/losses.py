"""Training losses for the three model kinds, with the weights of Chu et al. (MIDL 2021).

``make_loss(kind)`` returns a callable ``loss(outputs, batch) -> (total, terms)``:

- ``"a1"``: ``100 x BCE-with-logits`` between the mask logits and the pseudo-mask.
- ``"multitask"``: ``50 x BCE + 1 x cross-entropy`` of the group logits against the group label.
- ``"coseg"``: ``100 x BCE`` on each image of the pair, averaged over the two.
- ``"prompted"``: ``100 x BCE``, as ``"a1"``.

When the batch holds a ``"weight"`` map (0 where a trimap target is undecided), the mask terms
are averaged over the pixels of weight 1 only.

An optional soft Dice term (``dice_weight x (1 - soft Dice)``) can be added to any kind.
``terms`` holds Python floats of the *weighted* terms, so ``terms["total"]`` is their sum:
``"seg"``, ``"cls"`` (multitask only), ``"dice"`` (when ``dice_weight > 0``) and ``"total"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .model_kinds import MODEL_REGISTRY

__all__ = ["DEFAULT_WEIGHTS", "LossFn", "make_loss", "soft_dice_loss"]

#: Paper defaults: (segmentation weight, classification weight), from the kinds' registry.
DEFAULT_WEIGHTS = {k.name: (k.seg_weight, k.cls_weight) for k in MODEL_REGISTRY.values()}

LossFn = Callable[[Any, Mapping[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over images of ``1 - soft Dice`` between ``sigmoid(logits)`` and ``target``.

    ``eps`` smooths the ratio so that an empty target with an empty prediction scores 0.
    """
    probs = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    intersection = (probs * target).sum(1)
    denominator = probs.sum(1) + target.sum(1)
    return (1.0 - (2.0 * intersection + eps) / (denominator + eps)).mean()


def _check_weight(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _mask_like(batch: Mapping[str, torch.Tensor], key: str, logits: torch.Tensor) -> torch.Tensor:
    if key not in batch:
        raise ValueError(f"batch has no {key!r} entry")
    mask = batch[key]
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"batch[{key!r}] must be a tensor, got {type(mask).__name__}")
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.shape != logits.shape:
        raise ValueError(
            f"batch[{key!r}] has shape {tuple(batch[key].shape)}, the mask logits have shape "
            f"{tuple(logits.shape)}"
        )
    return mask.to(device=logits.device, dtype=logits.dtype)


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(value).__name__}")
    return value


def _pair(outputs: Any, kind: str, names: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 2:
        raise ValueError(f"outputs of a {kind!r} model must be a pair ({names}), "
                         f"got {type(outputs).__name__}")
    return (_as_tensor(outputs[0], f"{kind} outputs[0]"),
            _as_tensor(outputs[1], f"{kind} outputs[1]"))


def make_loss(kind: str, w_seg: float | None = None, w_cls: float | None = None,
              dice_weight: float = 0.0) -> LossFn:
    """Return the training loss of a model kind.

    Parameters
    ----------
    kind : str
        A kind of ``model_kinds.MODEL_REGISTRY``, as in
        :func:`napari_recist_seg.learning.models.build_model`.
    w_seg : float, optional
        Weight of the BCE mask term; default from the registry: 100, or 50 for multitask.
    w_cls : float, optional
        Weight of the group cross-entropy; multitask only, default 1.
    dice_weight : float
        Weight of an extra soft Dice term (0 disables it, the paper's setting).

    Returns
    -------
    callable
        ``loss(outputs, batch) -> (total_loss, terms)``. ``outputs`` is what the model's forward
        returned (a tensor for a1, a ``(mask_logits, group_logits)`` or ``(logits_a, logits_b)``
        pair otherwise). ``batch`` maps ``"mask"`` ([B, 1, H, W] or [B, H, W] pseudo-mask) and,
        per kind, ``"group"`` ([B] long) or ``"partner_mask"``. ``terms`` maps ``"seg"``,
        ``"cls"``, ``"dice"`` and ``"total"`` to floats.

    Raises
    ------
    ValueError
        Unknown kind, negative weights, or ``w_cls`` given for a kind without a group head.
        The returned callable raises ValueError for outputs or batches of the wrong form.
    """
    if kind not in DEFAULT_WEIGHTS:
        raise ValueError(f"kind must be one of {list(DEFAULT_WEIGHTS)}, got {kind!r}")
    default_seg, default_cls = DEFAULT_WEIGHTS[kind]
    entry = MODEL_REGISTRY[kind]
    seg_weight = default_seg if w_seg is None else _check_weight(w_seg, "w_seg")
    if not entry.groups and w_cls is not None:
        raise ValueError(f"w_cls applies to kind 'multitask' only, got w_cls={w_cls!r} "
                         f"for kind {kind!r}")
    cls_weight = default_cls if w_cls is None else _check_weight(w_cls, "w_cls")
    dice_w = _check_weight(dice_weight, "dice_weight")

    def seg_terms(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if weight is None:
            bce = F.binary_cross_entropy_with_logits(logits, target)
            dice = soft_dice_loss(logits, target) if dice_w > 0 else None
            return bce, dice
        # Pixels of weight 0 (a trimap's undecided band) teach nothing either way: the mean is
        # over the decided pixels only.
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)
        dice = None
        if dice_w > 0:
            dice = soft_dice_loss(logits.masked_fill(weight == 0, -20.0), target * weight)
        return bce, dice

    def weight_of(batch, logits):
        return _mask_like(batch, "weight", logits) if "weight" in batch else None

    def loss(outputs: Any, batch: Mapping[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        if not isinstance(batch, Mapping):
            raise ValueError(f"batch must be a mapping of tensors, got {type(batch).__name__}")
        cls_term = None
        if not entry.groups and not entry.paired:
            logits = _as_tensor(outputs, f"{kind} outputs")
            bce, dice = seg_terms(logits, _mask_like(batch, "mask", logits),
                                  weight_of(batch, logits))
        elif entry.groups:
            logits, group_logits = _pair(outputs, kind, "mask_logits, group_logits")
            bce, dice = seg_terms(logits, _mask_like(batch, "mask", logits),
                                  weight_of(batch, logits))
            if "group" not in batch:
                raise ValueError("batch has no 'group' entry (needed by the multitask loss)")
            group = _as_tensor(batch["group"], "batch['group']")
            if group.ndim != 1 or group.shape[0] != group_logits.shape[0]:
                raise ValueError(f"batch['group'] must have shape [{group_logits.shape[0]}], "
                                 f"got {tuple(group.shape)}")
            if group.is_floating_point():
                raise ValueError("batch['group'] must hold integer group labels")
            cls_term = cls_weight * F.cross_entropy(
                group_logits, group.to(device=group_logits.device, dtype=torch.long)
            )
        else:
            logits_a, logits_b = _pair(outputs, kind, "logits_a, logits_b")
            bce_a, dice_a = seg_terms(logits_a, _mask_like(batch, "mask", logits_a),
                                      weight_of(batch, logits_a))
            weight_b = (_mask_like(batch, "partner_weight", logits_b)
                        if "partner_weight" in batch else None)
            bce_b, dice_b = seg_terms(logits_b, _mask_like(batch, "partner_mask", logits_b),
                                      weight_b)
            bce = 0.5 * (bce_a + bce_b)
            dice = None if dice_a is None else 0.5 * (dice_a + dice_b)

        seg_term = seg_weight * bce
        total = seg_term
        terms: dict[str, float] = {"seg": float(seg_term.detach())}
        if cls_term is not None:
            total = total + cls_term
            terms["cls"] = float(cls_term.detach())
        if dice is not None:
            dice_term = dice_w * dice
            total = total + dice_term
            terms["dice"] = float(dice_term.detach())
        terms["total"] = float(total.detach())
        return total, terms

    loss.kind = kind  # type: ignore[attr-defined]
    loss.weights = {"seg": seg_weight, "cls": cls_weight, "dice": dice_w}  # type: ignore[attr-defined]
    return loss
