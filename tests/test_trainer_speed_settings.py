"""The trainer's speed settings change how fast it runs, not what it learns.

DataLoader workers build the very batches the main process builds (bit for bit, resume
included); ``amp="auto"`` is full precision on a CPU; ``channels_last`` changes only the order
of float additions, which training amplifies the way any rounding change does.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from napari_recist_seg.learning.checkpoints import load_checkpoint
from napari_recist_seg.learning.devices import amp_dtype, default_workers
from napari_recist_seg.learning.trainer import TrainConfig, train

from ._learning_data import EPOCHS, checkpoint_weights, config, prepared, quick, trained_run

LR = 1e-3


@pytest.fixture(autouse=True)
def _quick():
    with quick():
        yield


def _run(out, kind="multitask", *, stop_after=None, resume=None, **changes) -> list:
    data = prepared()
    steps = []
    events = []
    stop = None if stop_after is None else (lambda: len(steps) >= stop_after)
    for event in train(data.train_set, data.val_set, config(kind, **changes), out,
                       grouping=data.grouping, stop=stop, resume=resume):
        events.append(event)
        if event.kind == "step":
            steps.append(event)
    return events


def _differences(a: dict, b: dict) -> torch.Tensor:
    """|a - b| of every trained weight (not the batch statistics), flattened."""
    assert a.keys() == b.keys()
    keys = [k for k in a if not k.endswith(("running_mean", "running_var",
                                            "num_batches_tracked"))]
    return torch.cat([(a[k] - b[k]).abs().flatten() for k in keys])


def _step_losses(events) -> list[dict]:
    return [e.losses for e in events if e.kind == "step"]


def test_two_workers_train_the_same_weights_as_none(tmp_path_factory, tmp_path):
    """Multitask (dropout, groups) for 2 epochs: the same losses and weights, bit for bit."""
    out0, events0 = trained_run("multitask", tmp_path_factory)  # default: 0 workers on a CPU
    assert "0 data workers" in events0[0].message
    events2 = _run(tmp_path, num_workers=2)
    assert "2 data workers" in events2[0].message
    assert _step_losses(events2) == _step_losses(events0)
    assert [e.val for e in events2 if e.kind == "epoch"] == [
        e.val for e in events0 if e.kind == "epoch"]
    assert float(_differences(checkpoint_weights(tmp_path / "last"),
                              checkpoint_weights(out0 / "last")).max()) == 0.0


@pytest.mark.parametrize("kind", ["coseg", "prompted"])
def test_workers_carry_partners_and_prompts(kind, tmp_path):
    """Co-segmentation partners and the prompted kind's prompt channels reach the network
    through the workers unchanged: one epoch with 0 and with 2 workers agrees bit for bit."""
    events0 = _run(tmp_path / "w0", kind, epochs=1, num_workers=0)
    events2 = _run(tmp_path / "w2", kind, epochs=1, num_workers=2)
    assert _step_losses(events2) == _step_losses(events0)
    assert float(_differences(checkpoint_weights(tmp_path / "w0" / "last"),
                              checkpoint_weights(tmp_path / "w2" / "last")).max()) == 0.0


def test_resume_with_workers_is_exact(tmp_path_factory, tmp_path):
    """Stopped mid second epoch and resumed, with 2 workers both times: the uninterrupted
    run's losses and weights (that run had no workers)."""
    out0, events0 = trained_run("multitask", tmp_path_factory)
    first = _run(tmp_path, num_workers=2, stop_after=3)
    assert [e.kind for e in first][-2:] == ["step", "stopped"]
    shutil.copytree(tmp_path / "last", tmp_path / "stopped")
    rest = _run(tmp_path, num_workers=2, resume=tmp_path / "stopped")
    assert rest[-1].kind == "finished"
    assert _step_losses(first) + _step_losses(rest) == _step_losses(events0)
    assert float(_differences(checkpoint_weights(tmp_path / "last"),
                              checkpoint_weights(out0 / "last")).max()) == 0.0


def test_amp_auto_is_full_precision_on_a_cpu(tmp_path_factory, tmp_path):
    out0, events0 = trained_run("multitask", tmp_path_factory)  # amp="auto", the default
    assert "mixed precision" not in events0[0].message
    events = _run(tmp_path, amp="off")
    assert _step_losses(events) == _step_losses(events0)
    assert float(_differences(checkpoint_weights(tmp_path / "last"),
                              checkpoint_weights(out0 / "last")).max()) == 0.0


def test_channels_last_learns_what_the_default_layout_learns(tmp_path_factory, tmp_path):
    """Other convolution kernels add in other orders. Step 1 is the same to rounding: the
    same loss, and all weights equal to 1e-5 but a few, whose gradient is zero up to
    rounding, so that Adam's first update (lr times its sign) moves them +-lr the other way
    (measured: 6e-6 of the weights on one machine, 3e-4 on an AVX2-only one; a layout that
    scrambled the convolutions would move about half of them). After 4 steps rounding has
    grown the way a change of thread count grows it: mean |difference| 2.7e-5 and 8e-5
    (measured on the two machines), held to 2e-4."""
    out0, events0 = trained_run("multitask", tmp_path_factory)
    one = _run(tmp_path / "one", channels_last=True, stop_after=1)
    assert "channels_last" in one[0].message
    assert _step_losses(one)[0] == pytest.approx(_step_losses(events0)[0], rel=1e-5)
    shutil.copytree(tmp_path / "one" / "last", tmp_path / "step1")
    _run(tmp_path / "ref", stop_after=1)  # the default layout, stopped after step 1
    diff = _differences(checkpoint_weights(tmp_path / "step1"),
                        checkpoint_weights(tmp_path / "ref" / "last"))
    assert float((diff > 1e-5).double().mean()) < 2e-3
    assert float(diff.max()) <= 2 * LR * 1.01
    rest = _run(tmp_path / "one", channels_last=True, resume=tmp_path / "one" / "last")
    assert rest[-1].kind == "finished"
    # The total loss to 4% (measured at step 4: 0.3% on one machine, 1.5% on an AVX2-only
    # one; the small group term drifts by 5%).
    for a, b in zip(_step_losses(one) + _step_losses(rest), _step_losses(events0)):
        assert a["total"] == pytest.approx(b["total"], rel=4e-2)
    diff = _differences(checkpoint_weights(tmp_path / "one" / "last"),
                        checkpoint_weights(out0 / "last"))
    assert float(diff.mean()) < 2e-4
    assert float(diff.max()) <= 2 * EPOCHS * 2 * LR * 1.01
    # The checkpoint holds fp32 weights and loads into a model of the default layout.
    model, _ = load_checkpoint(tmp_path / "one" / "last")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(p.is_contiguous() for p in model.parameters())


def test_speed_settings_are_checked():
    with pytest.raises(ValueError, match="num_workers"):
        TrainConfig(kind="a1", num_workers=-1).validate()
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(kind="a1", amp="fp8").validate()
    assert TrainConfig(kind="a1", num_workers=0, amp="bf16", channels_last=True
                       ).validate() is None


def test_defaults_for_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_workers(cpu) == 0
    assert [default_workers(cuda, cores) for cores in (1, 2, 4, 16)] == [0, 1, 3, 4]
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cuda) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    assert amp_dtype("fp16", cuda) is torch.float16
    with pytest.raises(ValueError, match="amp"):
        amp_dtype("half", cpu)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_keeps_fp32_checkpoints(amp, tmp_path):
    """The autocast path (run here on the CPU, where it is opt-in) learns like full precision
    and saves fp32 weights; fp16 goes through the gradient scaler."""
    import warnings

    data = prepared()
    with quick(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        events = list(train(data.train_set, data.val_set, config("a1", amp=amp, epochs=2),
                            tmp_path / "run", grouping=data.grouping))
    # A step the gradient scaler skips is no call-order mistake, and says nothing.
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert f"mixed precision {'bfloat16' if amp == 'bf16' else 'float16'}" in events[0].message
    losses = [e.val["loss"] for e in events if e.kind == "epoch"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    model, _ = load_checkpoint(tmp_path / "run" / "best")
    assert all(p.dtype == torch.float32 for p in model.parameters())
