"""Each example script runs as a user would run it."""

import runpy
import sys
from pathlib import Path

import pytest

from ._folders import make_isic_folder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_core_tour_writes_figure(tmp_path, monkeypatch, capsys):
    out = tmp_path / "tour.png"
    run_example("core_tour.py", ["--out", str(out), "--n", "6"], monkeypatch)
    assert out.stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "quarter_ellipse" in text and "groups:" in text


def test_pseudo_mask_dice_on_folder(tmp_path, monkeypatch, capsys):
    data = make_isic_folder(tmp_path / "data", n=5)
    run_example("pseudo_mask_dice.py", ["--data", str(data)], monkeypatch)
    text = capsys.readouterr().out
    assert "5 image/mask pairs" in text
    lines = [ln.split() for ln in text.splitlines() if ln.strip().startswith("ellipse")]
    assert len(lines) == 2  # one per tie rule
    assert all(float(parts[3]) > 0.85 for parts in lines)


def test_examples_reject_missing_arguments(monkeypatch):
    with pytest.raises(SystemExit):
        run_example("pseudo_mask_dice.py", [], monkeypatch)


def test_split_image_folder_links_pairs(tmp_path, monkeypatch, capsys):
    from napari_recist_seg.data.image_folders import read_image_mask_folder

    data = make_isic_folder(tmp_path / "data", n=6)
    out = tmp_path / "split"
    run_example("split_image_folder.py", ["--data", str(data), "--out", str(out),
                                          "--test", "2"], monkeypatch)
    train = read_image_mask_folder(out / "train")
    test = read_image_mask_folder(out / "test")
    assert len(train) == 4 and len(test) == 2
    assert not {p.name for p in train} & {p.name for p in test}
