import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from napari_recist_seg.learning import checkpoints as ckpt
from napari_recist_seg.learning.checkpoints import (
    load_checkpoint,
    load_optimizer_state,
    read_checkpoint_config,
    save_checkpoint,
)
from napari_recist_seg.learning.losses import make_loss
from napari_recist_seg.learning.models import MODEL_KINDS, build_model

SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make(kind):
    torch.manual_seed(0)
    return build_model(kind, n_groups=3 if kind == "multitask" else None, input_size=SIZE)


def image():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def forward(model, kind, x):
    """The model's output on ``x`` (with its partner or a fixed prompt where it takes one)."""
    if kind == "coseg":
        return model(x, x.flip(0))
    if kind == "prompted":
        g = torch.Generator().manual_seed(4)
        return model(x, torch.rand(x.shape[0], 3, *x.shape[2:], generator=g))
    return model(x)


def outputs(model, kind, x):
    with torch.no_grad():
        out = forward(model, kind, x)
    return out if isinstance(out, tuple) else (out,)


def edit_config(folder, change):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def saved_a1(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "a1"
    save_checkpoint(folder, make("a1"), {"note": "x"}, [])
    return folder


def fresh_copy(saved, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for item in saved.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_round_trip_gives_identical_outputs(tmp_path, kind):
    model = make(kind)
    # a little training so batch-norm statistics and weights differ from a fresh build
    loss_fn = make_loss(kind)
    x = image()
    mask = (x[:, :1] > 0).float()
    batch = {"image": x, "mask": mask, "group": torch.tensor([0, 1]),
             "partner_image": x.flip(0), "partner_mask": mask.flip(0)}
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, _ = loss_fn(forward(model, kind, x), batch)
    loss.backward()
    optimizer.step()
    model.eval()

    extra = {"grouping": {"centres": np.arange(6.0).reshape(3, 2), "k": np.int64(3)}}
    history = [{"epoch": 1, "loss": 1.5}]
    folder = save_checkpoint(tmp_path / "run" / "best", model, extra, history)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in folder.parent.iterdir()] == ["best"]

    loaded, config = load_checkpoint(folder)
    assert not loaded.training
    assert loaded.kind == kind and loaded.config == model.config
    assert config["format"] == "napari-recist-seg-checkpoint"
    assert config["format_version"] == 1
    assert config["kind"] == kind
    assert config["model_config"] == model.config
    assert config["grouping"] == {"centres": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], "k": 3}
    assert config["history"] == history
    assert "package_version" in config
    for expected, got in zip(outputs(model, kind, x), outputs(loaded, kind, x)):
        assert torch.equal(expected, got)


def test_saving_again_replaces_the_checkpoint_cleanly(tmp_path):
    folder = tmp_path / "last"
    save_checkpoint(folder, make("a1"), {}, [{"epoch": 1}])
    save_checkpoint(folder, make("multitask"), {}, [{"epoch": 2}])
    _, config = load_checkpoint(folder)
    assert config["kind"] == "multitask"
    assert config["history"] == [{"epoch": 2}]
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "last"
    save_checkpoint(folder, make("a1"), {}, [{"epoch": 1}])
    original = ckpt._atomic_write_bytes

    def killed_while_writing_config(path, data):
        if path.name == "config.json":
            raise KeyboardInterrupt
        original(path, data)

    monkeypatch.setattr(ckpt, "_atomic_write_bytes", killed_while_writing_config)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, make("multitask"), {}, [{"epoch": 2}])
    monkeypatch.undo()
    _, config = load_checkpoint(folder)
    assert config["kind"] == "a1" and config["history"] == [{"epoch": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_failed_swap_restores_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "last"
    save_checkpoint(folder, make("a1"), {}, [{"epoch": 1}])
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in os.fspath(src):
            raise OSError("disk went away")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(OSError):
        save_checkpoint(folder, make("a1"), {}, [{"epoch": 2}])
    monkeypatch.undo()
    _, config = load_checkpoint(folder)
    assert config["history"] == [{"epoch": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_a_folder_with_other_content_is_not_overwritten(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a checkpoint"):
        save_checkpoint(folder, make("a1"), {}, [])
    assert (folder / "notes.txt").read_text() == "keep me"


def test_save_input_errors(tmp_path):
    model = make("a1")
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "a", model, {"kind": "coseg"}, [])
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "b", model, {"thing": object()}, [])
    with pytest.raises(ValueError, match="build_model"):
        save_checkpoint(tmp_path / "c", torch.nn.Linear(2, 2), {}, [])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(kind="multitask"),
        lambda c: (c.update(kind="multitask"), c["model_config"].update(kind="multitask",
                                                                         n_groups=3)),
        lambda c: (c.update(kind="coseg"), c["model_config"].update(kind="coseg")),
    ],
    ids=["top-level only", "to multitask", "to coseg"],
)
def test_changed_kind_is_refused(saved_a1, tmp_path, change):
    folder = fresh_copy(saved_a1, tmp_path)
    edit_config(folder, change)
    with pytest.raises(ValueError, match="config.json|model.safetensors"):
        load_checkpoint(folder)


def test_unknown_kind_is_refused(saved_a1, tmp_path):
    folder = fresh_copy(saved_a1, tmp_path)
    edit_config(folder, lambda c: c.update(kind="unet"))
    with pytest.raises(ValueError, match="unknown model kind 'unet'"):
        load_checkpoint(folder)


def test_shape_mismatch_is_refused(saved_a1, tmp_path):
    folder = fresh_copy(saved_a1, tmp_path)
    edit_config(folder, lambda c: c["model_config"].update(in_channels=1))
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(folder)


def test_foreign_config_is_refused(saved_a1, tmp_path):
    folder = fresh_copy(saved_a1, tmp_path)
    (folder / "config.json").write_text(json.dumps({"_model_class": "DeepLabV3Plus"}))
    with pytest.raises(ValueError, match="not a napari-recist-seg checkpoint"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(folder)


def test_missing_folder_and_files_are_named(saved_a1, tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    folder = fresh_copy(saved_a1, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match="no config.json"):
        load_checkpoint(folder)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def no_unpickling(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)


@pytest.mark.parametrize("keep_file_record", [True, False])
def test_pickle_as_weights_is_refused_and_never_runs(saved_a1, tmp_path, keep_file_record):
    probe = tmp_path / "probe-ran"
    pickle.loads(pickle.dumps(_Payload(str(probe)))).close()
    assert probe.exists(), "the payload must be live for this test to mean anything"

    folder = fresh_copy(saved_a1, tmp_path)
    marker = tmp_path / "payload-ran"
    with open(folder / "model.safetensors", "wb") as fh:
        pickle.dump({"encoder.conv1.weight": _Payload(str(marker))}, fh)
    if not keep_file_record:  # reach the format check, not only the checksum
        edit_config(folder, lambda c: c.pop("files"))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_torch_save_file_as_weights_is_refused(saved_a1, tmp_path, no_unpickling):
    folder = fresh_copy(saved_a1, tmp_path)
    torch.save({"encoder.conv1.weight": torch.zeros(1)}, folder / "model.safetensors")
    edit_config(folder, lambda c: c.pop("files"))
    with pytest.raises(ValueError, match="pickle or torch.save"):
        load_checkpoint(folder)


@pytest.mark.parametrize("keep_file_record", [True, False])
def test_truncated_weights_are_refused(saved_a1, tmp_path, keep_file_record, no_unpickling):
    folder = fresh_copy(saved_a1, tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if not keep_file_record:
        edit_config(folder, lambda c: c.pop("files"))
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(folder)


def test_changed_bytes_of_the_right_size_are_named_as_such(saved_a1, tmp_path, no_unpickling):
    folder = fresh_copy(saved_a1, tmp_path)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="its content differs from the checksum") as err:
        load_checkpoint(folder)
    assert "instead of" not in str(err.value)


def test_corrupt_header_is_refused(saved_a1, tmp_path, no_unpickling):
    folder = fresh_copy(saved_a1, tmp_path)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    data[8 + header_len // 2] = ord("}")
    path.write_bytes(bytes(data))
    edit_config(folder, lambda c: c.pop("files"))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(folder)


def test_loading_never_unpickles(saved_a1, no_unpickling):
    model, _ = load_checkpoint(saved_a1)
    assert model.kind == "a1"


def test_optimizer_and_training_state_round_trip(tmp_path):
    kind = "multitask"
    model = make(kind)
    loss_fn = make_loss(kind)
    x = image()
    mask = (x[:, :1] > 0).float()
    batch = {"image": x, "mask": mask, "group": torch.tensor([0, 2])}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    def step(m, opt, sched):
        m.train()
        loss, _ = loss_fn(m(x), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    for _ in range(3):
        step(model, optimizer, scheduler)
    state = {
        "epoch": 3,
        "best_loss": None,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.MT19937(0).state,
        "pcg64": np.random.default_rng(0).bit_generator.state,
        "python_rng": random.getstate(),
        "by_group": {0: 1.5, (1, 2): [2.5]},
        "__private": "kept",
    }
    folder = save_checkpoint(tmp_path / "last", model, {}, [], optimizer=optimizer,
                             scheduler=scheduler, state=state)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "model.safetensors", "optimizer.safetensors",
                     "training_state.json"]

    loaded, _ = load_checkpoint(folder)
    optimizer2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=2, gamma=0.5)
    restored = load_optimizer_state(folder, optimizer2, scheduler2)

    assert restored["epoch"] == 3 and restored["best_loss"] is None
    assert torch.equal(restored["torch_rng"], state["torch_rng"])
    assert restored["numpy_rng"]["bit_generator"] == "MT19937"
    np.testing.assert_array_equal(restored["numpy_rng"]["state"]["key"],
                                  state["numpy_rng"]["state"]["key"])
    assert restored["numpy_rng"]["state"]["key"].dtype == np.uint32
    assert restored["pcg64"] == state["pcg64"]  # 128-bit integers survive JSON
    assert restored["python_rng"] == state["python_rng"]
    assert restored["by_group"] == {0: 1.5, (1, 2): [2.5]}
    assert restored["__private"] == "kept"
    assert scheduler2.state_dict() == scheduler.state_dict()
    saved_groups = optimizer.state_dict()["param_groups"]
    assert optimizer2.state_dict()["param_groups"] == saved_groups
    for key, value in optimizer.state_dict()["state"].items():
        for name, tensor in value.items():
            assert torch.equal(optimizer2.state_dict()["state"][key][name], tensor)

    # resuming continues exactly where training stopped
    torch.manual_seed(7)
    step(model, optimizer, scheduler)
    torch.manual_seed(7)
    step(loaded, optimizer2, scheduler2)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_training_state_without_optimizer(tmp_path):
    folder = save_checkpoint(tmp_path / "best", make("a1"), {}, [], state={"epoch": 4})
    assert load_optimizer_state(folder, None) == {"epoch": 4}
    optimizer = torch.optim.Adam(make("a1").parameters())
    with pytest.raises(ValueError, match="no optimizer state"):
        load_optimizer_state(folder, optimizer)


def test_optimizer_state_missing_or_mismatched(saved_a1, tmp_path):
    optimizer = torch.optim.Adam(make("a1").parameters())
    with pytest.raises(ValueError, match="no optimizer or training state"):
        load_optimizer_state(saved_a1, optimizer)

    model = make("a1")
    optimizer = torch.optim.Adam(model.parameters())
    folder = save_checkpoint(tmp_path / "last", model, {}, [], optimizer=optimizer)
    other = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="does not fit"):
        load_optimizer_state(folder, other)


def test_read_checkpoint_config_does_not_need_the_weights(saved_a1, tmp_path):
    folder = fresh_copy(saved_a1, tmp_path)
    (folder / "model.safetensors").unlink()
    assert read_checkpoint_config(folder)["note"] == "x"


def test_missing_folder_is_read_from_the_copy_an_interrupted_save_left(saved_a1, tmp_path):
    leftover = tmp_path / ".last.old-x1y2"
    leftover.mkdir()
    for item in saved_a1.iterdir():
        (leftover / item.name).write_bytes(item.read_bytes())
    with pytest.warns(UserWarning, match=r"\.last\.old-x1y2"):
        model, config = load_checkpoint(tmp_path / "last")
    assert config["note"] == "x"
    # An incomplete copy is not used, only named.
    (leftover / "model.safetensors").write_bytes(b"cut")
    with pytest.raises(ValueError, match=r"\.last\.old-x1y2"):
        load_checkpoint(tmp_path / "last")


def test_checkpoints_and_label_volumes_are_readable_as_the_umask_allows(tmp_path):
    # Files staged with tempfile are private; on a shared disk others of the group must read
    # the runs and masks as they read any file the user writes.
    from napari_recist_seg.data._atomic import _UMASK
    from napari_recist_seg.data.volumes import write_label_image

    save_checkpoint(tmp_path / "best", make("a1"), {}, [{"epoch": 1}])
    assert (tmp_path / "best").stat().st_mode & 0o777 == 0o777 & ~_UMASK
    for f in (tmp_path / "best").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~_UMASK, f.name
    labels = write_label_image(tmp_path / "m.nii.gz", np.ones((3, 4, 5), bool))
    assert labels.stat().st_mode & 0o777 == 0o666 & ~_UMASK
