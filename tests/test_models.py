import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from napari_recist_seg.learning.losses import make_loss, soft_dice_loss
from napari_recist_seg.learning.models import MODEL_KINDS, build_model

SIZE = 64
N_GROUPS = 3


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make(kind, **kwargs):
    torch.manual_seed(0)
    if kind == "multitask":
        kwargs.setdefault("n_groups", N_GROUPS)
    return build_model(kind, input_size=SIZE, **kwargs)


def tiny_batch():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, SIZE, SIZE, generator=g)
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[0, :, 16:48, 20:44] = 1
    mask[1, :, 8:40, 8:56] = 1
    partner = torch.randn(2, 3, SIZE, SIZE, generator=g)
    return {
        "image": image,
        "prompt": torch.rand(3, SIZE, SIZE, generator=g).expand(2, -1, -1, -1).clone(),
        "mask": mask,
        "group": torch.tensor([0, 2]),
        "partner_image": partner,
        "partner_mask": mask.flip(0),
    }


def forward(model, kind, batch):
    if kind == "coseg":
        return model(batch["image"], batch["partner_image"])
    if kind == "prompted":
        return model(batch["image"], batch["prompt"])
    return model(batch["image"])


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_forward_shapes(kind):
    model = make(kind).eval()
    batch = tiny_batch()
    with torch.no_grad():
        out = forward(model, kind, batch)
    if kind in ("a1", "prompted"):
        assert out.shape == (2, 1, SIZE, SIZE)
    elif kind == "multitask":
        mask_logits, group_logits = out
        assert mask_logits.shape == (2, 1, SIZE, SIZE)
        assert group_logits.shape == (2, N_GROUPS)
    else:
        logits_a, logits_b = out
        assert logits_a.shape == logits_b.shape == (2, 1, SIZE, SIZE)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_config_is_json_and_rebuilds_same_architecture(kind):
    model = make(kind)
    assert model.kind == kind
    config = json.loads(json.dumps(model.config))
    assert config["kind"] == kind
    assert "encoder_weights" not in config
    rebuilt = build_model(**config)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


def test_state_dict_keys_match_plain_smp_model():
    import segmentation_models_pytorch as smp

    model = make("multitask")
    reference = smp.DeepLabV3Plus(encoder_name="resnet18", encoder_weights=None, classes=1,
                                  aux_params=dict(classes=N_GROUPS, dropout=0.2))
    assert set(model.state_dict()) == set(reference.state_dict())


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_few_adam_steps_reduce_the_loss(kind):
    model = make(kind).train()
    loss_fn = make_loss(kind)
    batch = tiny_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        total, terms = loss_fn(forward(model, kind, batch), batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(terms["total"])
    assert losses[-1] < 0.8 * losses[0], losses


def test_coseg_logits_depend_on_the_partner():
    model = make("coseg").eval()
    batch = tiny_batch()
    with torch.no_grad():
        a_with_b, _ = model(batch["image"], batch["partner_image"])
        a_with_other, _ = model(batch["image"], torch.flip(batch["partner_image"], dims=(2,)))
    assert not torch.allclose(a_with_b, a_with_other)


def test_coseg_without_partner_pairs_each_image_with_itself():
    model = make("coseg").eval()
    image = tiny_batch()["image"]
    with torch.no_grad():
        alone_a, alone_b = model(image)
        self_a, self_b = model(image, image)
    assert torch.equal(alone_a, alone_b)
    torch.testing.assert_close(alone_a, self_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alone_a, self_b, rtol=1e-4, atol=1e-4)


def test_coseg_rejects_mismatched_pair():
    model = make("coseg").eval()
    with pytest.raises(ValueError, match="same shape"):
        model(torch.zeros(2, 3, SIZE, SIZE), torch.zeros(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_input_not_multiple_of_stride_is_refused(kind):
    model = make(kind).eval()
    with pytest.raises(ValueError, match="multiples of 16"):
        if kind == "prompted":
            model(torch.zeros(1, 3, 60, 60), torch.zeros(1, 3, 60, 60))
        else:
            model(torch.zeros(1, 3, 60, 60))


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match="multitask.*a1.*coseg.*prompted"):
        build_model("unet")


@pytest.mark.parametrize("n_groups", [None, 1, 0, 2.5])
def test_multitask_needs_two_groups(n_groups):
    with pytest.raises(ValueError, match="n_groups"):
        build_model("multitask", n_groups=n_groups)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_size=100), "input_size"),
        (dict(input_size=0), "input_size"),
        (dict(output_stride=32), "output_stride"),
        (dict(in_channels=0), "in_channels"),
        (dict(dropout=1.0), "dropout"),
        (dict(encoder="no-such-encoder"), "encoder"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("a1", **kwargs)


def test_n_groups_ignored_for_kinds_without_head():
    assert build_model("a1", n_groups=7).config["n_groups"] is None


@pytest.mark.parametrize("name", ["imagenet", "ssl", "swsl"])
def test_download_weight_names_are_refused(name):
    with pytest.raises(ValueError, match="download"):
        build_model("a1", encoder_weights=name)


def test_missing_weights_file_is_reported(tmp_path):
    path = tmp_path / "encoder.safetensors"
    with pytest.raises(ValueError, match="does not exist"):
        build_model("a1", encoder_weights=path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_encoder_weights_are_loaded(tmp_path, suffix):
    torch.manual_seed(5)
    source = build_model("a1")
    state = {k: v.contiguous() for k, v in source.encoder.state_dict().items()}
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        # an ImageNet-style file with a classifier layer the encoder does not have
        torch.save({**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, path)
    model = build_model("multitask", n_groups=4, encoder_weights=str(path))
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert "encoder_weights" not in model.config


def test_whole_model_weights_and_single_channel_adaptation(tmp_path):
    torch.manual_seed(5)
    source = build_model("a1")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_model("coseg", in_channels=1, encoder_weights=path)
    conv = model.encoder.state_dict()["conv1.weight"]
    assert conv.shape[1] == 1
    torch.testing.assert_close(conv, source.encoder.state_dict()["conv1.weight"].sum(1, True))
    torch.testing.assert_close(model.encoder.state_dict()["layer4.1.conv2.weight"],
                               source.encoder.state_dict()["layer4.1.conv2.weight"])


def test_mismatched_encoder_weights_are_refused(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file({"something.weight": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="does not match the encoder"):
        build_model("a1", encoder_weights=path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_file_is_refused_without_running_it(tmp_path):
    # the payload is live: unpickling it does create its marker file
    probe = tmp_path / "probe-ran"
    pickle.loads(pickle.dumps(_Payload(str(probe)))).close()
    assert probe.exists()

    marker = tmp_path / "payload-ran"
    path = tmp_path / "encoder.pt"
    with open(path, "wb") as fh:
        pickle.dump({"conv1.weight": _Payload(str(marker))}, fh, protocol=2)
    with pytest.raises(ValueError, match="could not be read"):
        build_model("a1", encoder_weights=path)
    assert not marker.exists()


# --- losses ----------------------------------------------------------------------------------


def test_a1_loss_is_100_bce():
    batch = tiny_batch()
    logits = torch.randn(2, 1, SIZE, SIZE)
    total, terms = make_loss("a1")(logits, batch)
    expected = 100 * F.binary_cross_entropy_with_logits(logits, batch["mask"])
    torch.testing.assert_close(total, expected)
    assert set(terms) == {"seg", "total"}
    assert terms["total"] == pytest.approx(float(expected))


def test_multitask_loss_is_50_bce_plus_cross_entropy():
    batch = tiny_batch()
    logits, groups = torch.randn(2, 1, SIZE, SIZE), torch.randn(2, N_GROUPS)
    total, terms = make_loss("multitask")((logits, groups), batch)
    seg = 50 * F.binary_cross_entropy_with_logits(logits, batch["mask"])
    cls = F.cross_entropy(groups, batch["group"])
    torch.testing.assert_close(total, seg + cls)
    assert terms["seg"] == pytest.approx(float(seg))
    assert terms["cls"] == pytest.approx(float(cls))
    assert terms["total"] == pytest.approx(float(seg + cls))


def test_coseg_loss_averages_both_outputs():
    batch = tiny_batch()
    la, lb = torch.randn(2, 1, SIZE, SIZE), torch.randn(2, 1, SIZE, SIZE)
    total, _ = make_loss("coseg")((la, lb), batch)
    expected = 50 * (F.binary_cross_entropy_with_logits(la, batch["mask"])
                     + F.binary_cross_entropy_with_logits(lb, batch["partner_mask"]))
    torch.testing.assert_close(total, expected)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_dice_term_is_added_when_asked(kind):
    batch = tiny_batch()
    logits = torch.randn(2, 1, SIZE, SIZE)
    outputs = {"a1": logits, "prompted": logits,
               "multitask": (logits, torch.randn(2, N_GROUPS)), "coseg": (logits, logits)}[kind]
    total, terms = make_loss(kind, w_seg=1.0, dice_weight=2.0)(outputs, batch)
    assert "dice" in terms
    assert terms["total"] == pytest.approx(sum(v for k, v in terms.items() if k != "total"))
    assert float(total) == pytest.approx(terms["total"])


def test_soft_dice_of_perfect_prediction_is_near_zero():
    mask = tiny_batch()["mask"]
    assert float(soft_dice_loss((mask * 2 - 1) * 50, mask)) < 1e-3


def test_loss_accepts_masks_without_channel_axis():
    batch = tiny_batch()
    logits = torch.randn(2, 1, SIZE, SIZE)
    with_axis, _ = make_loss("a1")(logits, batch)
    without_axis, _ = make_loss("a1")(logits, {**batch, "mask": batch["mask"][:, 0]})
    torch.testing.assert_close(with_axis, without_axis)


def test_loss_input_errors():
    batch = tiny_batch()
    with pytest.raises(ValueError, match="kind"):
        make_loss("unet")
    with pytest.raises(ValueError, match="w_cls"):
        make_loss("a1", w_cls=1.0)
    with pytest.raises(ValueError, match="w_seg"):
        make_loss("a1", w_seg=-1)
    with pytest.raises(ValueError, match="shape"):
        make_loss("a1")(torch.zeros(2, 1, 32, 32), batch)
    with pytest.raises(ValueError, match="pair"):
        make_loss("multitask")(torch.zeros(2, 1, SIZE, SIZE), batch)
    with pytest.raises(ValueError, match="partner_mask"):
        make_loss("coseg")((torch.zeros(2, 1, SIZE, SIZE),) * 2,
                           {k: v for k, v in batch.items() if k != "partner_mask"})
    with pytest.raises(ValueError, match="group"):
        make_loss("multitask")((torch.zeros(2, 1, SIZE, SIZE), torch.zeros(2, N_GROUPS)),
                               {**batch, "group": torch.zeros(2)})


def test_resnet101_multitask_builds():
    model = build_model("multitask", encoder="resnet101", n_groups=5)
    assert model.config["encoder"] == "resnet101"
    assert model.classification_head[-2].out_features == 5


def test_prompted_network_reads_the_prompt_and_refuses_to_run_without_it():
    model = make("prompted").eval()
    batch = tiny_batch()
    assert model.config["prompt_channels"] == 3
    assert model.encoder.conv1.in_channels == 6
    with torch.no_grad():
        out = model(batch["image"], batch["prompt"])
        other = model(batch["image"], torch.flip(batch["prompt"], dims=(2,)))
    assert not torch.allclose(out, other)
    with pytest.raises(ValueError, match="prompt"):
        model(batch["image"])
    with pytest.raises(ValueError, match="prompt has shape"):
        model(batch["image"], batch["prompt"][:1])
    with pytest.raises(ValueError, match="prompt_channels"):
        build_model("prompted", input_size=SIZE, prompt_channels=2)


def test_weighted_loss_ignores_pixels_of_weight_zero():
    batch = tiny_batch()
    logits = torch.randn(2, 1, SIZE, SIZE)
    weight = torch.ones(2, 1, SIZE, SIZE)
    weight[:, :, :, : SIZE // 2] = 0
    total, _ = make_loss("a1", w_seg=1.0)(logits, {**batch, "weight": weight})
    half = slice(SIZE // 2, None)
    expected = F.binary_cross_entropy_with_logits(logits[..., half], batch["mask"][..., half])
    torch.testing.assert_close(total, expected)
    # Whatever the logits say where the weight is zero, the loss does not change.
    changed = logits.clone()
    changed[..., : SIZE // 2] = 100.0
    again, _ = make_loss("a1", w_seg=1.0)(changed, {**batch, "weight": weight})
    torch.testing.assert_close(again, total)
