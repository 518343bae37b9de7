"""Training losses for the three model kinds, with the weights of Chu et al. (MIDL 2021).

``make_loss(kind)`` returns a callable ``loss(outputs, batch) -> (total, terms)``:

- ``"a1"``: ``100 x BCE-with-logits`` between the mask logits and the pseudo-mask.
- ``"multitask"``: ``50 x BCE + 1 x cross-entropy`` of the group logits against the group label.
- ``"coseg"``: ``100 x BCE`` on each image of the pair, averaged over the two.
- ``"prompted"``: ``100 x BCE``, as ``"a1"``.

When the batch holds a ``"weight"`` map (0 where a trimap target is undecided), the mask terms
are averaged over the pixels of weight 1 only.

An optional soft Dice term (``dice_weight x (1 - soft Dice)``) can be added to any kind, and so
can an image-aware pairwise term (``crf_weight x edge_aware_pairwise_loss``), which asks
neighbouring pixels of similar colour to agree, so that where the pseudo-mask is unsure (or
ignored) the mask's outline follows the image's edges.
``terms`` holds Python floats of the *weighted* terms, so ``terms["total"]`` is their sum:
``"seg"``, ``"cls"`` (multitask only), ``"dice"`` (when ``dice_weight > 0``), ``"crf"`` (when
``crf_weight > 0``) and ``"total"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .model_kinds import MODEL_REGISTRY

__all__ = ["DEFAULT_WEIGHTS", "LossFn", "edge_aware_pairwise_loss", "make_loss", "soft_dice_loss"]

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


def edge_aware_pairwise_loss(logits: torch.Tensor, image: torch.Tensor, *, radius: int = 5,
                             sigma_colour: float = 0.1, sigma_xy: float = 5.0,
                             stride: int | None = None) -> torch.Tensor:
    """A weighted total variation of the predicted mask over the image's colours.

    For every pair of pixels ``i, j`` at most ``radius`` apart (on a grid ``stride`` times
    coarser than the logits), the pair costs ``w_ij |p_i - p_j|`` with ``p = sigmoid(logits)``
    and ``w_ij = exp(-|I_i - I_j|^2 / (2 sigma_colour^2) - d_ij^2 / (2 sigma_xy^2))``: an
    outline across a colour edge is cheap, one through a region of one colour is dear. On a
    binary mask this is the Potts energy of a dense CRF (the cut a graph cut minimises); the
    absolute difference, unlike the product ``p_i (1 - p_j)``, charges nothing for a uniform
    but uncertain region, so its gradient moves outlines rather than sharpening them.
    Colours are standardised per image and channel first (``sigma_colour`` is in standard
    deviations of the image's own values, averaged over channels), so CT windows and
    dermoscopy photographs need no separate settings.

    Parameters
    ----------
    logits : Tensor
        [B, 1, H, W] mask logits.
    image : Tensor
        [B, C, H, W] image the logits were predicted from.
    radius, sigma_colour, sigma_xy : int or float
        Neighbourhood half-width and kernel widths, in coarse pixels.
    stride : int, optional
        Average-pool both inputs by this factor first. None: one coarse pixel per 64th of the
        logits' side, so the neighbourhood covers the same share of the network's input
        whatever its size (about a thirteenth of a side), and the cost stays a fraction of the
        network's.

    Returns
    -------
    Tensor
        Scalar: the energy summed over pairs, divided by the number of coarse pixels.
    """
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must have shape [B, 1, H, W], got {tuple(logits.shape)}")
    if image.ndim != 4 or image.shape[0] != logits.shape[0] or image.shape[2:] != logits.shape[2:]:
        raise ValueError(f"image must have shape [B, C, {logits.shape[2]}, {logits.shape[3]}] "
                         f"like the logits, got {tuple(image.shape)}")
    probs = torch.sigmoid(logits.float())
    image = image.to(probs)
    if stride is None:
        stride = max(1, round(min(probs.shape[2:]) / 64))
    if stride > 1:
        probs = F.avg_pool2d(probs, stride)
        image = F.avg_pool2d(image, stride)
    mean = image.mean(dim=(2, 3), keepdim=True)
    std = image.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    image = (image - mean) / std
    height, width = probs.shape[2:]
    total = probs.new_zeros(())
    # Each unordered pair once: offsets with dy > 0, or dy == 0 and dx > 0.
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy == 0 and dx <= 0) or dy * dy + dx * dx > radius * radius:
                continue
            rows_a, rows_b = slice(0, height - dy), slice(dy, height)
            cols_a = slice(max(0, -dx), width - max(0, dx))
            cols_b = slice(max(0, dx), width - max(0, -dx))
            pa, pb = probs[:, :, rows_a, cols_a], probs[:, :, rows_b, cols_b]
            ia, ib = image[:, :, rows_a, cols_a], image[:, :, rows_b, cols_b]
            colour = (ia - ib).pow(2).mean(dim=1, keepdim=True)
            weight = torch.exp(-colour / (2 * sigma_colour ** 2)
                               - (dy * dy + dx * dx) / (2 * sigma_xy ** 2))
            total = total + (weight * (pa - pb).abs()).sum()
    return total / (probs.shape[0] * height * width)


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
              dice_weight: float = 0.0, crf_weight: float = 0.0) -> LossFn:
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
    crf_weight : float
        Weight of an extra :func:`edge_aware_pairwise_loss` on each mask output against its
        input image (``batch["image"]``, ``batch["partner_image"]`` for co-segmentation's
        second output); 0 disables it.

    Returns
    -------
    callable
        ``loss(outputs, batch) -> (total_loss, terms)``. ``outputs`` is what the model's forward
        returned (a tensor for a1, a ``(mask_logits, group_logits)`` or ``(logits_a, logits_b)``
        pair otherwise). ``batch`` maps ``"mask"`` ([B, 1, H, W] or [B, H, W] pseudo-mask) and,
        per kind, ``"group"`` ([B] long) or ``"partner_mask"``. ``terms`` maps ``"seg"``,
        ``"cls"``, ``"dice"``, ``"crf"`` and ``"total"`` to floats.

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
    crf_w = _check_weight(crf_weight, "crf_weight")

    def crf_term(logits: torch.Tensor, batch, key: str) -> torch.Tensor | None:
        if crf_w == 0:
            return None
        if key not in batch:
            raise ValueError(f"batch has no {key!r} entry (needed by the pairwise term)")
        return edge_aware_pairwise_loss(logits, _as_tensor(batch[key], f"batch[{key!r}]"))

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
            crf = crf_term(logits, batch, "image")
        elif entry.groups:
            logits, group_logits = _pair(outputs, kind, "mask_logits, group_logits")
            bce, dice = seg_terms(logits, _mask_like(batch, "mask", logits),
                                  weight_of(batch, logits))
            crf = crf_term(logits, batch, "image")
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
            crf_a = crf_term(logits_a, batch, "image")
            crf = None if crf_a is None else 0.5 * (
                crf_a + crf_term(logits_b, batch, "partner_image"))

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
        if crf is not None:
            crf_weighted = crf_w * crf
            total = total + crf_weighted
            terms["crf"] = float(crf_weighted.detach())
        terms["total"] = float(total.detach())
        return total, terms

    loss.kind = kind  # type: ignore[attr-defined]
    loss.weights = {  # type: ignore[attr-defined]
        "seg": seg_weight, "cls": cls_weight, "dice": dice_w, "crf": crf_w}
    return loss
