"""Segmentation networks: one factory over segmentation-models-pytorch's DeepLabV3Plus.

Four kinds of model are built here, all sharing the DeepLabV3+ encoder/decoder of
Chu et al. (MIDL 2021):

``"a1"``
    Plain DeepLabV3+ that predicts mask logits ``[B, 1, H, W]`` from a pseudo-mask target.
``"multitask"``
    The same network with a classification head on the deepest encoder features (global
    average pool, dropout, linear to ``n_groups``), trained to also predict the lesion's
    RECIST cluster. ``forward`` returns ``(mask_logits [B, 1, H, W], group_logits [B, K])``.
``"prompted"``
    Plain DeepLabV3+ whose input is the image followed by the lesion's RECIST drawn as three
    channels (``core.recist_prompt``): ``forward(x, prompt)``. With ``prior_residual`` (the
    trainer's default for this kind) its output corrects the logit of the prompt's
    quarter-ellipse prior.
``"coseg"``
    Attention-based co-segmentation (Chen et al., "Semantic aware attention based deep object
    co-segmentation"; Agarwal et al. for lesions): a siamese encoder, cross channel attention on
    the deepest features, and a shared decoder. ``forward(x_a, x_b=None)`` returns
    ``(logits_a, logits_b)``.

Nothing is ever downloaded: encoder weights are random unless a local weights file is named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.recist_prompt import PRIOR_EDGES, PROMPT_CHANNELS, check_prior_edge
from .model_kinds import MODEL_KINDS, MODEL_REGISTRY
from .train_config import MAX_GROUPS, MAX_IN_CHANNELS, MAX_INPUT_SIZE

__all__ = [
    "MODEL_KINDS",
    "ChannelAttention",
    "CoSegmentationModel",
    "PromptedNetwork",
    "SegmentationNetwork",
    "build_model",
    "load_encoder_weights",
]


_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
# Classifier layers found in ImageNet checkpoints of the encoders; the segmentation encoder has no
# such layer, so they are dropped rather than reported as unexpected keys.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "model.fc.",
                        "model.classifier.", "model.head.")


class ChannelAttention(nn.Module):
    """Channel attention vector from a feature map.

    Global average pool, then ``Linear -> tanh -> Linear -> sigmoid``, giving one gate in (0, 1)
    per channel. The tanh follows the co-segmentation re-implementation of Chu et al.

    Parameters
    ----------
    channels : int
        Number of feature channels.
    reduction : int
        Ratio between ``channels`` and the hidden width (at least 8 hidden units are kept).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the attention vector ``[B, C]`` of ``features`` ``[B, C, H, W]``."""
        pooled = features.mean(dim=(2, 3))
        return torch.sigmoid(self.fc2(torch.tanh(self.fc1(pooled))))


def _check_input(x: torch.Tensor, name: str, stride: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a [B, C, H, W] tensor, got {shape}")
    if x.shape[-2] % stride or x.shape[-1] % stride:
        raise ValueError(
            f"{name} height and width must be multiples of {stride}, got {tuple(x.shape[-2:])}"
        )


class SegmentationNetwork(nn.Module):
    """DeepLabV3+ assembled from the parts of a ``segmentation_models_pytorch.DeepLabV3Plus``.

    The parts keep smp's attribute names, so the state dict has the same keys as the smp model
    (``encoder.``, ``decoder.``, ``segmentation_head.``, ``classification_head.``). The wrapper
    exists because smp models reserve the ``config`` attribute for their own use.

    Parameters
    ----------
    encoder, decoder, segmentation_head : torch.nn.Module
        The parts of a DeepLabV3Plus model.
    classification_head : torch.nn.Module, optional
        smp's auxiliary head on the deepest encoder features; when present ``forward`` also
        returns group logits.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, segmentation_head: nn.Module,
                 classification_head: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = segmentation_head
        self.classification_head = classification_head

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Return mask logits ``[B, 1, H, W]``, and group logits ``[B, K]`` with a head."""
        _check_input(x, "x", self.encoder.output_stride)
        features = self.encoder(x)
        masks = self.segmentation_head(self.decoder(features))
        if self.classification_head is None:
            return masks
        return masks, self.classification_head(features[-1])


class PromptedNetwork(SegmentationNetwork):
    """DeepLabV3+ that segments the lesion a RECIST points at.

    The encoder's first convolution takes the image channels followed by the prompt channels;
    ``forward(x, prompt)`` joins them, so that a caller cannot forget the prompt unnoticed.
    With ``prior_residual`` the output is a correction added to the logit of the prompt's
    prior channel.
    """

    #: Logits of the prior are taken at these clipped probabilities: a certain prior would
    #: give infinite logits that no correction could overrule.
    PRIOR_CLIP = 0.02

    def __init__(self, encoder, decoder, segmentation_head, prior_residual: bool = False):
        super().__init__(encoder, decoder, segmentation_head)
        self.prior_residual = bool(prior_residual)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits ``[B, 1, H, W]`` of ``x`` ``[B, C, H, W]`` with ``prompt``
        ``[B, 3, H, W]``."""
        if prompt is None:
            raise ValueError("a prompted model needs the lesion's RECIST prompt channels "
                             "(prompt=...) beside the image")
        _check_input(prompt, "prompt", self.encoder.output_stride)
        if prompt.shape[0] != x.shape[0] or prompt.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"prompt has shape {tuple(prompt.shape)}, the image "
                             f"{tuple(x.shape)}: they must agree in batch, height and width")
        logits = super().forward(torch.cat([x, prompt.to(x.dtype)], dim=1))
        if not self.prior_residual:
            return logits
        prior = prompt[:, PROMPT_CHANNELS.index("prior")].unsqueeze(1).to(logits.dtype)
        peak = prior.amax(dim=(2, 3), keepdim=True)
        present = peak.gt(0).to(logits.dtype)
        # The prior is a blurred quarter-ellipse: on a lesion a few pixels across the blur
        # leaves no pixel above one half, and an unscaled logit would start it empty.
        prior = prior / peak.clamp_min(1e-6)
        eps = self.PRIOR_CLIP
        return logits + present * torch.logit(prior.clamp(eps, 1 - eps))


class CoSegmentationModel(nn.Module):
    """Siamese DeepLabV3+ with cross channel attention between the two images of a pair.

    Both images go through the same encoder. An attention vector computed from each image's
    deepest features gates its partner's deepest features channel by channel, so what one image
    looks like decides which channels of the other are kept: the pair is segmented jointly. The
    shared DeepLabV3+ decoder and segmentation head then produce one mask per image.

    Parameters
    ----------
    encoder, decoder, segmentation_head : torch.nn.Module
        The parts of a ``segmentation_models_pytorch.DeepLabV3Plus`` model.
    reduction : int
        Reduction ratio of the channel attention's hidden layer.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, segmentation_head: nn.Module,
                 reduction: int = 16):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = segmentation_head
        self.attention = ChannelAttention(encoder.out_channels[-1], reduction=reduction)

    def _decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(features))

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment a pair of images.

        Parameters
        ----------
        x_a : torch.Tensor
            First images, ``[B, C, H, W]``.
        x_b : torch.Tensor, optional
            Their partners, same shape. When omitted each image is paired with itself: its own
            attention vector gates its own features, which is plain self-attention. That is the
            natural inference mode for a single lesion, since no partner is available and the
            network then sees features gated the same way as for a look-alike partner.

        Returns
        -------
        tuple of torch.Tensor
            ``(logits_a, logits_b)``, each ``[B, 1, H, W]``. With ``x_b`` omitted both are the
            same tensor.
        """
        _check_input(x_a, "x_a", self.encoder.output_stride)
        if x_b is None:
            features = self.encoder(x_a)
            deepest = features[-1]
            gate = self.attention(deepest)
            logits = self._decode([*features[:-1], deepest * gate[:, :, None, None]])
            return logits, logits

        _check_input(x_b, "x_b", self.encoder.output_stride)
        if x_a.shape != x_b.shape:
            raise ValueError(
                f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and "
                f"{tuple(x_b.shape)}"
            )
        batch = x_a.shape[0]
        # One encoder pass over both halves: the weights are shared anyway, and batch norm then
        # sees the statistics of the whole pair batch, the same for both branches.
        features = self.encoder(torch.cat([x_a, x_b], dim=0))
        deepest_a, deepest_b = features[-1][:batch], features[-1][batch:]
        gate_a = self.attention(deepest_a)[:, :, None, None]
        gate_b = self.attention(deepest_b)[:, :, None, None]
        # Cross attention: each image's gate is applied to its partner's features.
        deepest = torch.cat([deepest_a * gate_b, deepest_b * gate_a], dim=0)
        logits = self._decode([*features[:-1], deepest])
        return logits[:batch], logits[batch:]


def _check_int(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be an integer {bound}, got {str(value)[:80]}")
    return int(value)


def build_model(kind: str, encoder: str = "resnet18", in_channels: int = 3,
                n_groups: int | None = None, encoder_weights: str | os.PathLike | None = None,
                input_size: int = 128, dropout: float = 0.2, output_stride: int = 16,
                prompt_channels: int | None = None, prior_residual: bool = False,
                prior_edge: str | None = None) -> nn.Module:
    """Build a segmentation network on segmentation-models-pytorch's DeepLabV3Plus.

    Parameters
    ----------
    kind : str
        Which network, a kind of ``model_kinds.MODEL_REGISTRY`` (see the module docstring).
    encoder : str
        Any encoder name segmentation-models-pytorch accepts: ``"resnet18"`` (fast on a CPU),
        ``"resnet101"`` (as in the paper), ``"tu-<timm name>"``, ...
    in_channels : int
        Number of image channels (3 for three neighbouring CT slices or RGB). A ``"prompted"``
        network takes three prompt channels more.
    n_groups : int, optional
        Number of lesion groups K for the ``"multitask"`` head (at least 2). Ignored, and stored
        as None, for the other kinds.
    encoder_weights : str or path-like, optional
        None for random initialisation (default); the name of weights shipped inside an
        installed package (``pretrained.PRETRAINED_ENCODERS``: ``"efficientnet-lite0-imagenet"``
        with ``encoder="tu-tf_efficientnet_lite0"``); or the path of a local file holding the
        encoder's state dict: ``.safetensors``, or ``.pth``/``.pt`` read with
        ``torch.load(weights_only=True)``. Names of downloadable weights such as ``"imagenet"``
        are refused: nothing is downloaded.
    input_size : int
        Side of the square training patches, a multiple of 16. Recorded in ``model.config`` for
        training and inference; the network itself accepts any multiple of the output stride.
    dropout : float
        Dropout before the classification layer of the ``"multitask"`` head, in [0, 1).
    output_stride : {8, 16}
        Output stride of the encoder (dilated last stages); 16 as in the paper.
    prompt_channels : int, optional
        Recorded in ``config`` for a ``"prompted"`` network (3); when given it must be what
        the kind takes, so a config edited by hand cannot build a network its weights do not
        fit.
    prior_residual : bool
        ``"prompted"`` only: the network's output is added to the logit of the prompt's
        quarter-ellipse prior, so that it learns a correction of the RECIST's own shape guess
        and starts from it (items whose prior channel is blank get no such term).
    prior_edge : {"distance", "blur"}, optional
        ``"prompted"`` only: how the edge of the prompt's prior channel is drawn
        (``core.recist_prompt``), recorded so that prediction draws it as training did. None:
        ``"distance"``, the default of new models.

    Returns
    -------
    torch.nn.Module
        The network, with attributes ``kind`` and ``config`` (a JSON-serialisable dict of the
        arguments above except ``encoder_weights``, so that ``build_model(**model.config)``
        rebuilds the same architecture).

    Raises
    ------
    ValueError
        Unknown kind or encoder, bad sizes, ``n_groups`` < 2 for ``"multitask"``, or encoder
        weights that are not a readable local file matching the encoder.
    """
    import segmentation_models_pytorch as smp

    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {list(MODEL_KINDS)}, got {kind!r}")
    entry = MODEL_REGISTRY[kind]
    if not isinstance(encoder, str) or not encoder:
        raise ValueError(f"encoder must be a non-empty encoder name, got {encoder!r}")
    if any(c in encoder for c in ":/\\"):
        # timm resolves "hf-hub:..." by downloading a configuration and "local-dir:..." by
        # reading one from disk; encoder names (even with a ".tag") never hold these characters.
        raise ValueError(f"encoder {encoder!r} names a hub or a path, not an encoder: nothing is "
                         f"downloaded or read to build a network")
    in_channels = _check_int(in_channels, "in_channels", 1, MAX_IN_CHANNELS)
    input_size = _check_int(input_size, "input_size", 16, MAX_INPUT_SIZE)
    if input_size % 16:
        raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
    if output_stride not in (8, 16) or isinstance(output_stride, bool):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
        0.0 <= dropout < 1.0
    ):
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if entry.groups:
        if n_groups is None:
            raise ValueError(f"n_groups is required for kind {kind!r} (number of groups >= 2)")
        n_groups = _check_int(n_groups, "n_groups", 2, MAX_GROUPS)
    else:
        n_groups = None
    packaged = _packaged_weights(encoder_weights, encoder)
    weights_path = None if packaged else _resolve_weights_path(encoder_weights)

    aux_params = dict(classes=n_groups, dropout=float(dropout)) if entry.groups else None
    expected_prompt = len(PROMPT_CHANNELS) if entry.prompted else None
    if prompt_channels is not None and prompt_channels != expected_prompt:
        raise ValueError(f"prompt_channels is {prompt_channels!r}, a {kind!r} network takes "
                         f"{expected_prompt!r}")
    prompt_channels = expected_prompt or 0
    if prior_residual and not entry.prompted:
        raise ValueError(f"prior_residual applies to prompted networks, not to {kind!r}")
    if prior_edge is not None and not entry.prompted:
        raise ValueError(f"prior_edge applies to prompted networks, not to {kind!r}")
    if entry.prompted:
        prior_edge = PRIOR_EDGES[0] if prior_edge is None else prior_edge
        check_prior_edge(prior_edge)
    try:
        base = smp.DeepLabV3Plus(
            encoder_name=encoder,
            encoder_weights=None,
            encoder_output_stride=int(output_stride),
            in_channels=in_channels + prompt_channels,
            classes=1,
            aux_params=aux_params,
        )
    except (KeyError, RuntimeError) as exc:
        # smp raises KeyError for unknown built-in names, timm RuntimeError for unknown tu- names
        raise ValueError(f"encoder {encoder!r} cannot be built: {exc}") from None

    if entry.paired:
        model: nn.Module = CoSegmentationModel(base.encoder, base.decoder, base.segmentation_head)
    elif entry.prompted:
        model = PromptedNetwork(base.encoder, base.decoder, base.segmentation_head,
                                prior_residual=bool(prior_residual))
    else:
        model = SegmentationNetwork(base.encoder, base.decoder, base.segmentation_head,
                                    base.classification_head)
    if weights_path is not None:
        load_encoder_weights(model.encoder, weights_path)
    elif packaged:
        from .pretrained import pretrained_encoder_state

        _load_state(model.encoder, pretrained_encoder_state(encoder_weights),
                    f"pretrained encoder {encoder_weights!r}")

    model.kind = kind
    model.config = {
        "kind": kind,
        "encoder": encoder,
        "in_channels": in_channels,
        "n_groups": n_groups,
        "input_size": input_size,
        "dropout": float(dropout),
        "output_stride": int(output_stride),
    }
    if prompt_channels:
        model.config["prompt_channels"] = prompt_channels
    if prior_residual:
        model.config["prior_residual"] = True
    if entry.prompted:
        model.config["prior_edge"] = prior_edge
    return model


def _packaged_weights(encoder_weights, encoder: str) -> bool:
    """Whether ``encoder_weights`` names weights shipped inside an installed package; their
    encoder must be the one asked for."""
    if not isinstance(encoder_weights, str):
        return False
    from .pretrained import PRETRAINED_ENCODERS

    option = PRETRAINED_ENCODERS.get(encoder_weights)
    if option is None:
        return False
    if option.encoder != encoder:
        raise ValueError(f"encoder_weights {encoder_weights!r} are for the encoder "
                         f"{option.encoder!r}, not {encoder!r}")
    return True


def _resolve_weights_path(encoder_weights: str | os.PathLike | None) -> Path | None:
    if encoder_weights is None:
        return None
    if not isinstance(encoder_weights, (str, os.PathLike)):
        raise ValueError(
            f"encoder_weights must be None or the path of a local weights file, "
            f"got {encoder_weights!r}"
        )
    path = Path(encoder_weights).expanduser()
    if path.is_file():
        if path.suffix.lower() not in _WEIGHT_SUFFIXES:
            raise ValueError(
                f"encoder_weights file {str(path)!r} must end in one of {list(_WEIGHT_SUFFIXES)}"
            )
        return path
    text = str(encoder_weights)
    looks_like_path = (
        isinstance(encoder_weights, os.PathLike)
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.lower().endswith(_WEIGHT_SUFFIXES)
    )
    if looks_like_path:
        raise ValueError(f"encoder_weights file {text!r} does not exist or is not a file")
    raise ValueError(
        f"encoder_weights={text!r}: downloading weights is not supported; name a local weights "
        f"file (.safetensors, .pth or .pt) holding the encoder's state dict, or use None"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"encoder_weights file {str(path)!r} is not valid safetensors: "
                             f"{exc}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "refused"
        raise ValueError(
            f"encoder_weights file {str(path)!r} could not be read as plain tensors "
            f"(torch.load with weights_only=True): {exc}"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError(
            f"encoder_weights file {str(path)!r} does not hold a state dict of named tensors"
        )
    return obj


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    # Same idea as adapting ImageNet RGB filters to other inputs: a single channel gets the sum
    # of the colour filters; more channels cycle through them, rescaled to keep the response.
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    source = weight.shape[1]
    index = torch.arange(in_channels) % source
    return weight[:, index] * (source / in_channels)


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load an encoder state dict from a local file into ``encoder``.

    Accepted key layouts: the encoder's own keys; keys of a whole segmentation model (prefix
    ``encoder.``); a timm model's keys for a ``tu-`` encoder (without its ``model.`` prefix).
    ImageNet classifier layers (``fc.``, ``classifier.``, ``head.``) are ignored, and a first
    convolution trained on a different number of input channels is adapted.

    Raises
    ------
    ValueError
        The file cannot be read safely, or its tensors do not match the encoder.
    """
    path = Path(path)
    _load_state(encoder, _read_state_dict(path), f"encoder_weights file {str(path)!r}")


def _load_state(encoder: nn.Module, state: dict, source: str) -> None:
    """Map ``state`` onto ``encoder`` (see ``load_encoder_weights``); ``source`` names it in
    messages."""
    own = encoder.state_dict()
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not set(state) & set(own):
        prefixed = {f"model.{k}": v for k, v in state.items()}
        if set(prefixed) & set(own):
            state = prefixed
    state = {k: v for k, v in state.items()
             if not (k not in own and k.startswith(_CLASSIFIER_PREFIXES))}

    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the encoder: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    for key, value in list(state.items()):
        expected = own[key].shape
        if value.shape == expected:
            continue
        if (value.ndim == 4 and value.shape[0] == expected[0]
                and value.shape[2:] == expected[2:]):
            state[key] = _adapt_first_conv(value, expected[1])
            continue
        raise ValueError(
            f"{source}: tensor {key!r} has shape {tuple(value.shape)}, "
            f"the encoder expects {tuple(expected)}"
        )
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    # nn.Module's loader: smp's encoder subclasses rename keys, which is handled above already.
    nn.Module.load_state_dict(encoder, state, strict=True)
