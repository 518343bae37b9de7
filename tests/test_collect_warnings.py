"""Warnings raised while the Training dock prepares data are gathered for the dock."""

from __future__ import annotations

import threading
import warnings

from napari_recist_seg.plugin.training_job import collect_warnings


def _warn(*texts):
    for text in texts:
        warnings.warn(text, UserWarning, stacklevel=2)
    return "done"


def test_warnings_are_gathered_each_once_and_again_in_a_second_call():
    result, texts = collect_warnings(_warn, "a", "b", "a")
    assert (result, texts) == ("done", ["a", "b"])
    # Python shows a warning once per place; a second run must still tell it.
    assert collect_warnings(_warn, "a")[1] == ["a"]


def test_warnings_are_gathered_when_another_thread_puts_back_its_showwarning():
    # Another thread leaving catch_warnings while data is prepared (the viewer's thread in
    # pandas or matplotlib) puts back the showwarning it found when it entered.
    shown = []

    def theirs(message, *args, **kwargs):
        shown.append(str(message))

    def prepare():
        warnings.showwarning = theirs
        return _warn("2 masks were skipped")

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert collect_warnings(prepare) == ("done", ["2 masks were skipped"])


def test_ignored_warnings_stay_ignored_and_other_threads_warnings_are_not_gathered():
    def other_thread():
        warnings.warn("from the viewer", UserWarning, stacklevel=2)

    def prepare():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        return _warn("kept", "quiet")

    with warnings.catch_warnings(record=True) as printed:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="quiet")
        assert collect_warnings(prepare) == ("done", ["kept"])
    assert [str(w.message) for w in printed] == ["from the viewer"]
