"""Faults during work: stopping and resuming many times, killing a process while it saves,
running out of disk space in the middle of a run.

Stopping and resuming: a run stopped at five random steps (seeded) and resumed each time must end
with the weights of a run never stopped. On one CPU thread they are equal bit for bit (the
measured difference is 0.0); the tolerance, 1e-6 on every weight, leaves room for other BLAS
builds and is far below the changes a single training step makes (about 1e-3).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from napari_recist_seg.learning import checkpoints
from napari_recist_seg.learning.checkpoints import interrupted_save_copy, load_checkpoint
from napari_recist_seg.learning.inference import load_model, resolve_checkpoint
from napari_recist_seg.learning.trainer import train

from ._learning_data import checkpoint_weights, config, prepared, quick

EPOCHS = 3  # 9 training images in batches of 4: 2 steps an epoch, 6 in all
TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def _quick():
    with quick():
        yield


def _max_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)


def _run(kind, out, stops=()):
    """Train ``kind`` for EPOCHS, stopping before each global step in ``stops`` and resuming
    from ``last/``; returns every event of every segment."""
    data = prepared()
    cfg = config(kind, epochs=EPOCHS)
    events, resume = [], None
    for target in [*stops, None]:
        seen = {"global": None}

        def stop(target=target, seen=seen):
            return target is not None and seen["global"] >= target

        for event in train(data.train_set, data.val_set, cfg, out, grouping=data.grouping,
                           stop=stop, resume=resume):
            if event.kind in ("start", "step"):
                seen["global"] = event.global_step
            events.append(event)
        if target is not None:
            assert events[-1].kind == "stopped" and events[-1].global_step == target
            resume = out / "last"
    assert events[-1].kind == "finished"
    return events


@pytest.mark.parametrize(("kind", "seed"), [("multitask", 11), ("coseg", 12)])
def test_stopping_at_random_steps_and_resuming_matches_an_unbroken_run(kind, seed, tmp_path):
    total = EPOCHS * 2
    # Five stops drawn with replacement over every place a stop can happen: before the first
    # step, mid-epoch, at epoch boundaries (after validation), twice in a row.
    stops = sorted(random.Random(seed).choices(range(total), k=5))
    unbroken = _run(kind, tmp_path / "unbroken")
    broken = _run(kind, tmp_path / "broken", stops)
    # The same steps with the same losses ...
    steps_a = [e for e in unbroken if e.kind == "step"]
    steps_b = [e for e in broken if e.kind == "step"]
    assert [e.global_step for e in steps_b] == list(range(1, total + 1))
    for a, b in zip(steps_a, steps_b):
        assert b.losses == pytest.approx(a.losses, rel=1e-6, abs=1e-7)
    # ... the same validation, the same best epoch ...
    val_a = [e.val["loss"] for e in unbroken if e.kind == "epoch"]
    val_b = [e.val["loss"] for e in broken if e.kind == "epoch"]
    assert val_b == pytest.approx(val_a, rel=1e-6)
    assert broken[-1].best_epoch == unbroken[-1].best_epoch
    # ... and the same weights, in the resumable and in the best checkpoint.
    for name in ("last", "best"):
        diff = _max_difference(checkpoint_weights(tmp_path / "unbroken" / name),
                               checkpoint_weights(tmp_path / "broken" / name))
        assert diff <= TOLERANCE, (name, diff, stops)
    _, cfg_a = load_checkpoint(tmp_path / "unbroken" / "last")
    _, cfg_b = load_checkpoint(tmp_path / "broken" / "last")
    assert [h["epoch"] for h in cfg_b["history"]] == [h["epoch"] for h in cfg_a["history"]]


# -- SIGKILL while saving -----------------------------------------------------------------------
_SAVER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from napari_recist_seg.learning import checkpoints
    from napari_recist_seg.learning.models import build_model

    checkpoints._fsync_file = checkpoints.fsync_folder = lambda path: None
    folder, first, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "between-renames":
        # Killed right after the old checkpoint is moved aside, before the new one moves in.
        real_rename = os.rename

        def rename(src, dst):
            real_rename(src, dst)
            if os.path.basename(os.fspath(dst)).startswith("." + os.path.basename(folder)
                                                          + ".old-"):
                os.kill(os.getpid(), signal.SIGKILL)

        os.rename = rename
    model = build_model("a1", input_size=32)
    i = first
    while True:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(i))
        checkpoints.save_checkpoint(folder, model, {"iteration": i}, [])
        print(i, flush=True)
        i += 1
""")


def _start_saver(folder: Path, first: int, mode: str = "loop") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SAVER, str(folder), str(first), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _check_complete(folder: Path, at_least: int, at_most: int, recovered=None) -> int:
    """The checkpoint at ``folder`` loads, is one of the iterations that may have been saved,
    and its weights are that iteration's (no mix of two saves). ``recovered``: whether it must
    (True) or must not (False) be read from a copy an interrupted save left, which is
    announced with a warning; None accepts both."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, cfg = load_checkpoint(folder)
    announced = any("interrupted" in str(w.message) for w in caught)
    if recovered is not None:
        assert announced == recovered
    iteration = cfg["iteration"]
    assert at_least <= iteration <= at_most, (iteration, at_least, at_most)
    for name, tensor in model.state_dict().items():
        if tensor.dtype.is_floating_point and "running" not in name:
            assert torch.all(tensor == float(iteration)), name
    return iteration


def test_killing_a_process_while_it_saves_never_loses_the_checkpoint(tmp_path):
    folder = tmp_path / "last"
    rng = random.Random(5)
    first, kills = 0, 0
    for _ in range(5):
        proc = _start_saver(folder, first)
        try:
            line = proc.stdout.readline()  # one save done in this process
            assert line.strip() == str(first), proc.stderr.read()[-2000:]
            time.sleep(rng.uniform(0.0, 1.5))  # then die at any point of a later save
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        done = max(int(v) for v in [line, *proc.stdout.read().split()])
        # The last save reported complete, or the one in progress if it got into place.
        iteration = _check_complete(folder, done, done + 1)
        first = iteration + 1
    assert kills == 5


def test_a_kill_between_the_two_renames_is_recovered(tmp_path):
    folder = tmp_path / "run" / "best"
    folder.parent.mkdir()
    proc = _start_saver(folder, 0)
    try:
        assert proc.stdout.readline().strip() == "0", proc.stderr.read()[-2000:]
    finally:
        proc.kill()
        proc.wait(timeout=60)
    printed = [int(v) for v in ["0", *proc.stdout.read().split()]]
    saved = max(printed)
    # This save dies with the old checkpoint aside and the new one not yet in place.
    proc = _start_saver(folder, 100, "between-renames")
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert not folder.exists()
    siblings = sorted(p.name for p in folder.parent.iterdir())
    assert any(".best.old-" in s for s in siblings) and any(".best.tmp-" in s for s in siblings)
    # Every reader finds the newest complete copy by itself: the save that was in progress.
    assert interrupted_save_copy(folder).name.startswith(".best.tmp-")
    assert _check_complete(folder, 100, 100, recovered=True) == 100
    assert resolve_checkpoint(folder.parent) == folder
    with pytest.warns(UserWarning, match="interrupted"):
        assert load_model(folder.parent).checkpoint_config["iteration"] == 100
    # The previous save is still there too, complete.
    old = next(p for p in folder.parent.iterdir() if ".best.old-" in p.name)
    assert _check_complete(old, saved, saved, recovered=False) == saved
    # The next save puts the folder back in place.
    proc = _start_saver(folder, 200)
    try:
        assert proc.stdout.readline().strip() == "200", proc.stderr.read()[-2000:]
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert _check_complete(folder, 200, 201) in (200, 201)


# -- running out of disk space in the middle of a run ------------------------------------------
def test_a_disk_filling_up_mid_run_keeps_the_previous_checkpoints(tmp_path, monkeypatch):
    """Free space is checked before training; a disk that fills up later fails the save
    with the system's error, and what was saved before stays loadable."""
    real = checkpoints._atomic_save_tensors
    calls = {"n": 0}

    def filling_up(path, tensors, metadata):
        calls["n"] += 1
        if calls["n"] > 3:  # epoch 1 writes best (1 file) and last (2 files); then it is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, tensors, metadata)

    monkeypatch.setattr(checkpoints, "_atomic_save_tensors", filling_up)
    data = prepared()
    events = []
    with pytest.raises(OSError) as info:
        for event in train(data.train_set, data.val_set, config("a1", epochs=EPOCHS), tmp_path,
                           grouping=data.grouping):
            events.append(event)
    assert info.value.errno == errno.ENOSPC
    assert [e.kind for e in events].count("epoch") == 1
    _, last = load_checkpoint(tmp_path / "last")
    _, best = load_checkpoint(tmp_path / "best")
    assert len(last["history"]) == 1 and len(best["history"]) == 1
    # Nothing half-written is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]
