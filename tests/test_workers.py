"""Workers report a RuntimeError of their work like any other error, and still finish."""

import pytest

from napari_recist_seg.plugin.workers import WorkFailed, create_worker


def _fails():
    raise RuntimeError("shape mismatch in the network")


def _yields_then_fails():
    yield 1
    raise RuntimeError("child process ended")


@pytest.mark.parametrize("work", [_fails, _yields_then_fails])
def test_a_runtime_error_reaches_errored_and_finished(qtbot, work):
    worker = create_worker(work, _start_thread=False, _ignore_errors=True)
    errors = []
    worker.errored.connect(errors.append)
    with qtbot.waitSignal(worker.finished, timeout=10000):
        worker.start()
    (error,) = errors
    assert isinstance(error, WorkFailed) and not isinstance(error, RuntimeError)
    assert str(error) == str(error.__cause__) and isinstance(error.__cause__, RuntimeError)


def test_what_the_work_returns_and_sends_is_unchanged(qtbot):
    def echo():
        got = yield "first"
        yield f"got {got}"
        return "done"

    worker = create_worker(echo, _start_thread=False)
    seen, returned = [], []
    worker.yielded.connect(lambda v: (seen.append(v), worker.send("x") if v == "first" else None))
    worker.returned.connect(returned.append)
    with qtbot.waitSignal(worker.finished, timeout=10000):
        worker.start()
    assert seen[0] == "first" and returned == ["done"]

