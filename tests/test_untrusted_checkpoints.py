"""Checkpoints from strangers: nothing in them runs, and every tampering is a clear ValueError.

An attacker who can hand over a checkpoint folder controls every byte of it, including the
SHA-256 records in ``config.json``; so most cases here rewrite those records to match the
tampered files, which takes the checksum out of the way and reaches the deeper checks. Every
entry point that reads a checkpoint is tried: ``load_checkpoint``, ``load_model`` (on the folder
and on a training output folder), ``load_optimizer_state`` and ``train(resume=...)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from napari_recist_seg.learning import checkpoints
from napari_recist_seg.learning.checkpoints import (
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)
from napari_recist_seg.learning.inference import load_model
from napari_recist_seg.learning.models import build_model
from napari_recist_seg.learning.trainer import train

from ._learning_data import INPUT, N_GROUPS, config, prepared, quick


@pytest.fixture(autouse=True)
def _quick():
    with quick():
        yield


# -- payloads ---------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bytes(marker) -> bytes:
    return pickle.dumps({"encoder.conv1.weight": _Payload(marker)}, protocol=4)


def _torch_save_bytes(marker, tmp_path) -> bytes:
    path = tmp_path / "payload.pt"
    torch.save({"encoder.conv1.weight": _Payload(marker)}, path)
    return path.read_bytes()


def test_the_payloads_are_live(tmp_path):
    """Unpickled, both payloads do create their marker: their absence below means something."""
    marker = tmp_path / "ran"
    pickle.loads(_pickle_bytes(marker))
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "live.pt"
    path.write_bytes(_torch_save_bytes(marker, tmp_path))
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.fixture
def no_unpickling(monkeypatch):
    """Every way into pickle fails the test, so a refusal cannot come from an unpickle."""
    import _pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint file was unpickled")

    for module in (pickle, _pickle):
        for name in ("load", "loads", "Unpickler"):
            monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)


# -- checkpoints to tamper with ---------------------------------------------------------------
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A training output folder: ``best/`` and a resumable ``last/`` of a multitask model,
    stopped before its first step (nothing is trained: only the files matter here)."""
    data = prepared()
    out = tmp_path_factory.mktemp("run")
    with quick():
        # The run first: a folder that already holds a checkpoint is refused as occupied.
        events = list(train(data.train_set, data.val_set, config("multitask"), out,
                            stop=lambda: True))
        torch.manual_seed(0)
        model = build_model("multitask", input_size=INPUT, n_groups=N_GROUPS)
        save_checkpoint(out / "best", model, {"preprocessing": None, "grouping": None}, [])
    assert events[-1].kind == "stopped"
    return out


def _copy_run(run_folder, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run_folder, out)
    return out


def _edit_config(folder: Path, change) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


def _forge_records(folder: Path) -> None:
    """Rewrite config.json's size and SHA-256 records to match the files as they are now."""
    def change(cfg):
        for name in list(cfg.get("files", {})):
            path = folder / name
            if path.is_file():
                data = path.read_bytes()
                cfg["files"][name] = {"size": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}
    _edit_config(folder, change)


def _entry_points(out: Path):
    """Every public way a checkpoint is read, as (name, callable) pairs."""
    data = prepared()

    def resume():
        next(train(data.train_set, data.val_set, config("multitask"), out / "resumed",
                   resume=out / "last"))

    def optimizer_state():
        model = build_model("multitask", input_size=INPUT, n_groups=N_GROUPS)
        load_optimizer_state(out / "last", torch.optim.Adam(model.parameters()))

    return [
        ("load_checkpoint", lambda: load_checkpoint(out / "last")),
        ("load_model(run folder)", lambda: load_model(out)),
        ("load_model(best)", lambda: load_model(out / "best")),
        ("load_optimizer_state", optimizer_state),
        ("train(resume=...)", resume),
    ]


def _all_refused(out: Path, words: str, names=None) -> list[str]:
    """Run the entry points; each must raise a ValueError whose message contains ``words``."""
    reached = []
    for name, call in _entry_points(out):
        if names is not None and name not in names:
            continue
        with pytest.raises(ValueError, match=words) as info:
            call()
        assert str(out) in str(info.value) or "checkpoint" in str(info.value), name
        reached.append(name)
    if names is not None:
        assert set(reached) == set(names), f"entry points never run: {set(names) - set(reached)}"
    return reached


# -- pickles never run ------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["pickle", "torch.save"])
@pytest.mark.parametrize("target", ["model.safetensors", "optimizer.safetensors"])
def test_a_pickle_in_place_of_tensors_never_runs(run_folder, tmp_path, no_unpickling, form,
                                                 target):
    out = _copy_run(run_folder, tmp_path)
    marker = tmp_path / "payload-ran"
    payload = (_pickle_bytes(marker) if form == "pickle"
               else _torch_save_bytes(marker, tmp_path))
    for folder in (out / "best", out / "last"):
        if (folder / target).exists():
            (folder / target).write_bytes(payload)
            _forge_records(folder)
    if target == "model.safetensors":
        names = {"load_checkpoint", "load_model(run folder)", "load_model(best)",
                 "train(resume=...)"}
    else:  # only resuming reads the optimizer state
        names = {"load_optimizer_state", "train(resume=...)"}
    words = "pickle" if target == "model.safetensors" else "optimizer.safetensors.*pickle"
    assert set(_all_refused(out, words, names)) == names
    assert not marker.exists()


@pytest.mark.parametrize("target", ["config.json", "training_state.json"])
def test_a_pickle_in_place_of_json_never_runs(run_folder, tmp_path, no_unpickling, target):
    out = _copy_run(run_folder, tmp_path)
    marker = tmp_path / "payload-ran"
    (out / "last" / target).write_bytes(_pickle_bytes(marker))
    if target == "training_state.json":
        _forge_records(out / "last")
    names = {"load_checkpoint", "train(resume=...)"} if target == "config.json" else {
        "load_optimizer_state", "train(resume=...)"}
    _all_refused(out, "not valid JSON", names)
    assert not marker.exists()


# -- tampered configuration -------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c.update(kind="unet"), "unknown model kind 'unet'"),
        (lambda c: c.update(kind="exec('import os')"), "unknown model kind"),
        (lambda c: c.pop("format"), "format marker"),
        (lambda c: c.update(format="napari-recist-seg-checkpoint-2"), "format marker"),
        (lambda c: c.update(format_version=2), "format_version 2"),
        (lambda c: c.update(format_version="1"), "format_version '1'"),
        (lambda c: c["model_config"].update(n_groups=N_GROUPS + 3), "does not fit"),
        (lambda c: c["model_config"].update(in_channels=1), "does not fit"),
        (lambda c: c["model_config"].update(encoder_weights="imagenet"), "encoder weights"),
        (lambda c: c["model_config"].update(encoder_weights="/tmp/weights.pth"),
         "encoder weights"),
        (lambda c: c["model_config"].update(encoder="/etc/passwd"), "names a hub or a path"),
        (lambda c: c["model_config"].update(encoder="tu-local-dir:/tmp"), "names a hub or a path"),
        (lambda c: c["model_config"].update(encoder="tu-hf-hub:timm/resnet18.a1_in1k"),
         "names a hub or a path"),
        (lambda c: c["model_config"].update(encoder="no_such_encoder"), "cannot rebuild"),
        (lambda c: c["model_config"].update(__class__="os.system"), "cannot rebuild"),
        (lambda c: c.update(model_config="resnet18"), "model_config"),
        (lambda c: c["model_config"].update(kind="a1"), "contradicts"),
        (lambda c: c.update(files={"model.safetensors": {"size": 1, "sha256": "0" * 64}}),
         "does not match"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_tampered_config_is_refused_everywhere(run_folder, tmp_path, no_unpickling, change,
                                                 words, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("loading a checkpoint tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    out = _copy_run(run_folder, tmp_path)
    for folder in (out / "best", out / "last"):
        _edit_config(folder, change)
    names = {"load_checkpoint", "load_model(run folder)", "load_model(best)",
             "train(resume=...)"}
    if words.startswith("format"):
        names.add("load_optimizer_state")
    t0 = time.perf_counter()
    _all_refused(out, words, names)
    assert time.perf_counter() - t0 < 60  # no retries against a hub, no building giants


def test_tensors_of_the_wrong_shape_are_refused(run_folder, tmp_path, no_unpickling):
    from safetensors.torch import load_file, save_file

    out = _copy_run(run_folder, tmp_path)
    for folder in (out / "best", out / "last"):
        weights = load_file(folder / "model.safetensors")
        name = next(k for k, v in weights.items() if v.ndim == 4)
        weights[name] = weights[name].transpose(0, 1).contiguous()
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        _forge_records(folder)
    names = {"load_checkpoint", "load_model(run folder)", "train(resume=...)"}
    assert set(_all_refused(out, "does not fit", names)) == names


def test_a_config_for_a_giant_network_is_refused_before_building_it(run_folder, tmp_path,
                                                                     monkeypatch):
    """resnet152 weights would take 240 MB; the file holds a resnet18's 50 MB. The network is
    only ever built on the meta device (no memory) before the refusal."""
    out = _copy_run(run_folder, tmp_path)
    _edit_config(out / "last", lambda c: c["model_config"].update(encoder="resnet152"))
    devices = []
    real_build = checkpoints.build_model

    def spy(**kwargs):
        devices.append(torch.empty(()).device.type)
        return real_build(**kwargs)

    monkeypatch.setattr(checkpoints, "build_model", spy)
    with pytest.raises(ValueError, match=r"describes a 'multitask' model whose weights take "
                                         r"2\d\d\.\d MB, but .* holds [45]\d\.\d MB"):
        load_checkpoint(out / "last")
    assert devices == ["meta"]


# -- training state ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, words",
    [
        (lambda t: t.update(format="other"), "not a napari-recist-seg training state"),
        (lambda t: t["state"].update(epoch={"__tensor__": "state.999"}), "missing"),
        (lambda t: t["state"].update(epoch={"__tensor__": ["a", "b"]}), "malformed"),
        (lambda t: t["state"].update(epoch={"__items__": 5}), "malformed"),
        (lambda t: t["state"].update(epoch={"__tuple__": 5}), "malformed"),
        (lambda t: t.update(optimizer={"state": {}, "param_groups": []}), "does not fit"),
        (lambda t: t.update(optimizer=[1, 2, 3]), "does not fit"),
        (lambda t: t.update(state=[1, 2]), "training state is invalid"),
        (lambda t: t["state"].update(epoch="twelve"), "training state is invalid"),
        (lambda t: t["state"].update(step_in_epoch=-3), "training state is invalid"),
        (lambda t: t["state"].update(running=[1]), "training state is invalid"),
        (lambda t: t["state"].update(rng={"torch_rng": [1, 2, 3]}), "training state is invalid"),
        (lambda t: t["state"].update(rng={"numpy_rng": "MT19937"}), "training state is invalid"),
        (lambda t: t["state"].update(rng={"python_rng": [3, [1], None]}),
         "training state is invalid"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_tampered_training_state_is_refused(run_folder, tmp_path, no_unpickling, change,
                                              words):
    out = _copy_run(run_folder, tmp_path)
    path = out / "last" / "training_state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))
    _forge_records(out / "last")
    names = {"train(resume=...)"}
    if "invalid" not in words:
        names.add("load_optimizer_state")
    assert set(_all_refused(out, words, names)) == names


def test_json_nested_beyond_the_parser_is_a_value_error(run_folder, tmp_path, no_unpickling):
    out = _copy_run(run_folder, tmp_path)
    deep = "[" * 200_000 + "]" * 200_000
    (out / "last" / "training_state.json").write_text('{"format": ' + deep + "}")
    _forge_records(out / "last")
    names = {"load_optimizer_state", "train(resume=...)"}
    assert set(_all_refused(out, "not valid JSON", names)) == names
    (out / "last" / "config.json").write_text('{"format": ' + deep + "}")
    names = {"load_checkpoint", "train(resume=...)"}
    assert set(_all_refused(out, "not valid JSON", names)) == names


# -- truncated and oversized files ------------------------------------------------------------
@pytest.mark.parametrize("target", ["model.safetensors", "optimizer.safetensors",
                                    "training_state.json", "config.json"])
@pytest.mark.parametrize("forged", [True, False], ids=["records forged", "records kept"])
def test_a_file_cut_mid_way_is_refused(run_folder, tmp_path, no_unpickling, target, forged):
    out = _copy_run(run_folder, tmp_path)
    path = out / "last" / target
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if forged and target != "config.json":
        _forge_records(out / "last")
    words = {"model.safetensors": "model.safetensors", "optimizer.safetensors":
             "optimizer.safetensors", "training_state.json": "training_state.json",
             "config.json": "not valid JSON"}[target]
    if target == "model.safetensors":
        words = "truncated" if forged else "does not match"
    names = {"model.safetensors": {"load_checkpoint", "train(resume=...)"},
             "config.json": {"load_checkpoint", "load_optimizer_state", "train(resume=...)"}}.get(
        target, {"load_optimizer_state", "train(resume=...)"})
    assert set(_all_refused(out, words, names)) == names


def test_a_declared_header_length_beyond_the_file_is_refused_without_allocating(
        run_folder, tmp_path, no_unpickling):
    out = _copy_run(run_folder, tmp_path)
    path = out / "last" / "model.safetensors"
    data = bytearray(path.read_bytes())
    for declared in (2**62, 2**40, len(data)):  # far beyond, beyond, one past the end
        data[:8] = declared.to_bytes(8, "little")
        path.write_bytes(bytes(data))
        _forge_records(out / "last")
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match="not a safetensors file"):
                load_checkpoint(out / "last")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 20e6


def test_a_huge_config_is_refused_without_reading_it(run_folder, tmp_path):
    out = _copy_run(run_folder, tmp_path)
    path = out / "last" / "config.json"
    with open(path, "r+b") as fh:  # sparse: 4 GB of nothing, taking no disk space
        fh.truncate(4 * 2**30)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than any checkpoint file"):
            load_checkpoint(out / "last")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6


_ENDLESS_FILES = textwrap.dedent("""
    import json, os, sys, resource
    import torch
    from napari_recist_seg.learning.checkpoints import load_checkpoint, load_optimizer_state
    from napari_recist_seg.learning.models import build_model
    folder = sys.argv[1]
    model = build_model("multitask", input_size=32, n_groups=2)
    load_checkpoint(folder)  # everything a load needs is imported and mapped
    # From here on, at most 2 GB more address space: reading an endless file would hit it.
    mapped = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + 2 * 2**30, resource.RLIM_INFINITY))
    results = {}
    for name in ("config.json", "model.safetensors", "optimizer.safetensors",
                 "training_state.json"):
        path = os.path.join(folder, name)
        os.rename(path, path + ".real")
        for source in ("/dev/zero", "/dev/urandom", "fifo"):
            if source == "fifo":
                os.mkfifo(path)
            else:
                os.symlink(source, path)
            try:
                if name in ("config.json", "model.safetensors"):
                    load_checkpoint(folder)
                else:
                    load_optimizer_state(folder, torch.optim.Adam(model.parameters()))
                results[name + " -> " + source] = "loaded"
            except ValueError as exc:
                results[name + " -> " + source] = "ValueError: " + str(exc)
            except BaseException as exc:
                results[name + " -> " + source] = type(exc).__name__ + ": " + str(exc)
            os.unlink(path)
        os.rename(path + ".real", path)
    print(json.dumps(results))
""")


def test_links_to_endless_devices_and_fifos_are_refused_at_once(run_folder, tmp_path):
    """A file that is /dev/zero, /dev/urandom or a FIFO (which blocks a reader forever) must
    not be read: each is refused as not a regular file. Run in a child process with a memory
    cap and a time limit, so that a failure cannot take this machine down or hang the suite."""
    out = _copy_run(run_folder, tmp_path)
    proc = subprocess.run([sys.executable, "-c", _ENDLESS_FILES, str(out / "last")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 12
    for case, outcome in results.items():
        assert outcome.startswith("ValueError: "), (case, outcome)
        name = case.split(" -> ")[0]
        assert name in outcome, (case, outcome)
