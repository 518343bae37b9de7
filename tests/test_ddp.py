"""Data-parallel training under torchrun: two CPU processes (gloo) train as one process does.

One ``torchrun --standalone --nproc_per_node 2 -m tests.test_ddp OUT`` job (this module's
``__main__``) trains the runs these tests read: an uninterrupted A1 run, an A1 run that rank 1
alone asks to stop after one step, its resumption, and a job whose ranks were given different
groupings. Each rank records its events, the checkpoints it wrote and any error in ``OUT``.

8 training images at 32 px, global batch 4 (2 per process), 2 epochs of 2 steps: no padding,
so step ``s`` of the two processes covers exactly the images of step ``s`` of one process.

What "equal" means: the two processes add the same numbers in other orders (batch statistics
summed over ranks, gradients averaged by all-reduce), so they differ from one process by float
rounding, and training amplifies rounding. Adam's first update is the learning rate times the
sign of each gradient, so a gradient that is zero up to rounding moves its weight by +-lr
either way: a few weights in a million then differ by 2 lr after one step. One process run
with 2 threads instead of 1 shows the same (measured: 10 of 15 million weights after step 1;
mean |difference| 2.0e-5 after 4 steps, against 2.5e-5 between 2 processes and 1). The tests
therefore hold step 1 to rounding and later steps to what rounding grows into.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_recist_seg.learning import trainer
from napari_recist_seg.learning.checkpoints import load_checkpoint
from napari_recist_seg.learning.devices import CpuSyncBatchNorm, GlobalBatchDropout

from ._learning_data import INPUT, checkpoint_weights, config, dermoscopy, quick

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
STOP_AFTER = 1  # steps: mid first epoch
LR = 1e-3


def _data(seed: int = 0):
    """8 training and 3 validation images: 8 splits into global batches of 4 exactly. The
    target is an unweighted pseudo-mask: with a trimap's weights each process would average
    its loss over its own decided pixels, which the global batch does not."""
    from napari_recist_seg.learning.preparation import prepare_whole_images

    images, recists = dermoscopy(11)
    return prepare_whole_images(images, recists, size=INPUT, val_fraction=0.25, k=2, seed=seed,
                                pseudo_mask_method="ellipse")


def _events(events) -> list[dict]:
    return [{"kind": e.kind, "global_step": e.global_step, "losses": e.losses,
             "message": e.message, "checkpoint": e.checkpoint,
             "val_loss": None if e.val is None else e.val["loss"]} for e in events]


def _job(out: Path) -> None:
    """What each process of the torchrun job does (see the module docstring)."""
    rank = int(os.environ["RANK"])
    written: list[str] = []
    real_save = trainer.save_checkpoint

    def recording_save(folder, *args, **kwargs):
        written.append(f"{Path(folder).parent.name}/{Path(folder).name}")
        return real_save(folder, *args, **kwargs)

    trainer.save_checkpoint = recording_save
    report: dict = {"rank": rank}
    data = _data()
    cfg = config("a1")
    with quick():
        report["full"] = _events(trainer.train(data.train_set, data.val_set, cfg, out / "full",
                                               grouping=data.grouping))
        steps = []

        def stop():
            return rank == 1 and len(steps) >= STOP_AFTER

        stopped = []
        for event in trainer.train(data.train_set, data.val_set, cfg, out / "stopped",
                                   grouping=data.grouping, stop=stop):
            stopped.append(event)
            if event.kind == "step":
                steps.append(event)
        report["stopped"] = _events(stopped)
        if rank == 0:
            shutil.copytree(out / "stopped" / "last", out / "step1")
        report["written_by_stop"] = list(written)
        # Rank 1 alone gets a Ctrl+C after its first step, as from a terminal reaching one
        # process first: both must end at the same step, with one last/ written.
        interrupted = []
        try:
            for event in trainer.train(data.train_set, data.val_set, cfg, out / "interrupted",
                                       grouping=data.grouping):
                interrupted.append(event)
                if event.kind == "step" and rank == 1:
                    os.kill(os.getpid(), signal.SIGINT)
            report["interrupted"] = {"events": _events(interrupted), "error": None}
        except trainer.TrainingInterrupted as exc:
            report["interrupted"] = {"events": _events(interrupted), "error": str(exc),
                                     "step": exc.step, "epoch": exc.epoch}
        report["written_by_interrupt"] = [w for w in written if w.startswith("interrupted/")]
        report["resumed"] = _events(trainer.train(data.train_set, data.val_set, cfg,
                                                  out / "stopped", grouping=data.grouping,
                                                  resume=out / "stopped" / "last"))
        # Rank 1 fits its groups with another seed: its labels differ from rank 0's.
        other = _data(seed=rank)
        try:
            next(trainer.train(other.train_set, other.val_set, config("multitask"),
                               out / "refused", grouping=other.grouping))
            report["refused"] = None
        except ValueError as exc:
            report["refused"] = str(exc)
    report["written"] = written
    (out / f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Run the two-process job once; (output folder, reports of rank 0 and rank 1)."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", "-m", "tests.test_ddp", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return out, reports


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same A1 run in one process with the same global batch, its weights after one step
    copied to ``step1``; (output folder, step and epoch events)."""
    out = tmp_path_factory.mktemp("single")
    data = _data()
    events = []
    with quick():
        for event in trainer.train(data.train_set, data.val_set, config("a1"), out,
                                   grouping=data.grouping, stop=lambda: bool(events)):
            if event.kind == "step":
                events.append(event)
        shutil.copytree(out / "last", out / "step1")
        for event in trainer.train(data.train_set, data.val_set, config("a1"), out,
                                   grouping=data.grouping, resume=out / "last"):
            if event.kind in ("step", "epoch"):
                events.append(event)
    return out, events


def _worst(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _differences(a: dict, b: dict) -> torch.Tensor:
    """|a - b| of every trained weight (not the batch statistics), flattened."""
    assert a.keys() == b.keys()
    keys = [k for k in a if not k.endswith(("running_mean", "running_var",
                                            "num_batches_tracked"))]
    return torch.cat([(a[k] - b[k]).abs().flatten() for k in keys])


def test_two_processes_train_the_weights_of_one(job, single):
    out, (rank0, _) = job
    one_out, one_events = single
    assert [e["kind"] for e in rank0["full"]] == (
        ["start"] + ["step", "step", "epoch"] * 2 + ["finished"])
    assert "in 2 processes (world size 2, gloo," in rank0["full"][0]["message"]
    # The losses of the global batch, step for step: step 1 to rounding (measured 2e-7),
    # later ones to what rounding grows into, which depends on the CPU's kernels (measured
    # 7e-4 at step 3 on one machine, 1e-2 at step 5 on an AVX2-only one; 2 threads: 5e-5).
    ours = [e for e in rank0["full"] if e["kind"] in ("step", "epoch")]
    assert [e["kind"] for e in ours] == [e.kind for e in one_events]
    for i, (a, b) in enumerate(zip(ours, one_events)):
        assert a["losses"] == pytest.approx(b.losses, rel=1e-5 if i == 0 else 3e-2)
        if b.val is not None:
            assert a["val_loss"] == pytest.approx(b.val["loss"], rel=1e-3)
    # Weights after step 1: all but a few in a million equal to 1e-5, those few moved by
    # Adam's +-lr the other way (at most 2 lr apart). A wrong batch, unsynchronised batch
    # statistics or a missing gradient average changes the sign of many gradients instead.
    diff = _differences(checkpoint_weights(out / "step1"), checkpoint_weights(one_out / "step1"))
    assert float((diff > 1e-5).double().mean()) < 1e-5
    assert float(diff.max()) <= 2 * LR * 1.01
    # Batch statistics came from the global batch: running means and variances agree to
    # 1e-3 relative (measured 5e-5; each rank's own half batch gives differences near 1).
    a, b = checkpoint_weights(out / "step1"), checkpoint_weights(one_out / "step1")
    stats = [k for k in b if k.endswith(("running_mean", "running_var"))]
    assert stats
    assert max(float(((a[k] - b[k]).abs() / (b[k].abs() + 1e-3)).max()) for k in stats) < 1e-3
    # After 4 steps: as far apart as rounding alone takes two single-process runs.
    diff = _differences(checkpoint_weights(out / "full" / "last"),
                        checkpoint_weights(one_out / "last"))
    assert float(diff.mean()) < 1e-4
    assert float(diff.max()) <= 4 * 2 * LR * 1.01


def test_both_ranks_report_the_same_run(job):
    _, (rank0, rank1) = job
    for name in ("full", "stopped", "resumed"):
        a, b = rank0[name], rank1[name]
        assert [e["kind"] for e in a] == [e["kind"] for e in b]
        assert [e["losses"] for e in a] == [e["losses"] for e in b]
        assert [e["val_loss"] for e in a] == [e["val_loss"] for e in b]


def test_each_process_ends_with_its_exit_functions_run(job):
    # The job exited 0 (the fixture's check) through end_process, which skips C++'s
    # teardown but not Python's exit functions.
    out, _ = job
    assert sorted(p.name for p in out.glob("exit-functions-ran*")) == [
        f"exit-functions-ran{r}" for r in range(WORLD)]


def test_only_rank_zero_writes_the_run_folder(job):
    out, (rank0, rank1) = job
    assert rank1["written"] == []
    # last after each of the 2 epochs, best after each that improved the validation loss.
    full = [w for w in rank0["written"] if w.startswith("full/")]
    assert full.count("full/last") == 2 and 1 <= full.count("full/best") <= 2
    assert sorted(p.name for p in (out / "full").iterdir()) == ["best", "last"]
    _, saved = load_checkpoint(out / "full" / "last")
    assert len(saved["history"]) == 2
    assert saved["train_config"]["batch_size"] == 4


def test_a_stop_on_one_rank_stops_both_and_last_is_written_once(job):
    out, (rank0, rank1) = job
    for report in (rank0, rank1):
        kinds = [e["kind"] for e in report["stopped"]]
        assert kinds == ["start", "step", "stopped"]
        assert report["stopped"][-1]["global_step"] == STOP_AFTER
    saves = [w for w in rank0["written_by_stop"] if w.startswith("stopped/")]
    assert saves == ["stopped/last"]  # once, for the stop
    assert rank1["written_by_stop"] == []
    _, saved = load_checkpoint(out / "stopped" / "last")
    assert len(saved["history"]) == 2  # the resumed run's, which wrote last/ after it


def test_ctrl_c_on_one_rank_ends_both_at_the_same_step_with_one_last(job):
    out, (rank0, rank1) = job
    for report in (rank0, rank1):
        got = report["interrupted"]
        assert got["error"] is not None and "interrupted" in got["error"], got
        assert (got["epoch"], got["step"]) == (1, 1)
        assert [e["kind"] for e in got["events"]] == ["start", "step"]
    assert rank0["written_by_interrupt"] == ["interrupted/last"]
    assert rank1["written_by_interrupt"] == []
    assert sorted(p.name for p in (out / "interrupted").iterdir()) == ["last"]


def test_resume_under_ddp_matches_the_uninterrupted_run(job):
    out, (rank0, _) = job
    resumed = rank0["resumed"]
    assert [e["kind"] for e in resumed] == ["start", "step", "epoch", "step", "step", "epoch",
                                            "finished"]
    assert resumed[0]["global_step"] == STOP_AFTER
    full_steps = [e["losses"] for e in rank0["full"] if e["kind"] == "step"]
    parts = [e["losses"] for e in rank0["stopped"] + resumed if e["kind"] == "step"]
    assert len(parts) == len(full_steps)
    for a, b in zip(parts, full_steps):
        assert a == pytest.approx(b, rel=1e-6)
    # Same job, same reduction orders: the resumed weights are those of the uninterrupted run.
    worst = _worst(checkpoint_weights(out / "full" / "last"),
                   checkpoint_weights(out / "stopped" / "last"))
    assert worst <= 1e-6, worst


def test_ranks_with_different_data_or_groupings_are_refused(job):
    out, reports = job
    for report in reports:
        assert report["refused"] is not None and "different" in report["refused"]
    assert not (out / "refused" / "last").exists()


def test_cpu_sync_batch_norm_is_plain_batch_norm_in_one_process():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3)
    sync = CpuSyncBatchNorm(3)
    sync.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(plain(x), sync(x))
    assert torch.equal(plain.running_var, sync.running_var)


def test_global_batch_dropout_is_plain_dropout_in_one_process():
    x = torch.randn(4, 8, 3, 3)
    torch.manual_seed(0)
    plain = torch.nn.Dropout(0.5)(x)
    torch.manual_seed(0)
    assert torch.equal(GlobalBatchDropout(0.5)(x), plain)


if __name__ == "__main__":
    import atexit

    from napari_recist_seg.learning.devices import end_process

    out = Path(sys.argv[1])
    # Python's exit functions still run when end_process ends the process.
    atexit.register(lambda: (out / f"exit-functions-ran{os.environ['RANK']}").touch())
    _job(out)
    sys.exit(end_process(0))
