"""RECIST marks that do not lie on their image are refused (or, in DeepLesion tables, skipped
with the other invalid rows), naming the lesion, the image and its size, before anything is
written: a table in millimetres, in x-before-y order or of another image size would otherwise
train on empty targets and predict empty masks without a word."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_recist_seg.cli import main
from napari_recist_seg.core.recist import Recist, outside_image
from napari_recist_seg.data.deeplesion import read_deeplesion
from napari_recist_seg.data.recist_sources import read_lesion_table

from ._recist_table_data import recist_csv, write_deeplesion, write_png_folder


def test_outside_image_allows_the_border_pixel_and_names_the_endpoint():
    inside = Recist(long_axis=[[5.0, -1.2], [5.0, 63.9]], short_axis=[[-0.9, 30.0], [10.0, 30.0]])
    assert outside_image(inside, (64, 64)) == ""
    far = Recist(long_axis=[[5.0, 25.0], [70.0, 25.0]], short_axis=[[30.0, 10.0], [30.0, 40.0]])
    problem = outside_image(far, (64, 48), "'a.png'")
    assert "(row 70.0, col 25.0) lies outside 'a.png' (64 rows x 48 columns)" in problem
    # Columns are checked against the columns: a wide image takes what a tall one refuses.
    wide = Recist(long_axis=[[10.0, 10.0], [10.0, 60.0]], short_axis=[[5.0, 35.0], [15.0, 35.0]])
    assert outside_image(wide, (20, 64)) == "" and outside_image(wide, (64, 20)) != ""


def _scaled_table(tmp_path, factor):
    rows = write_png_folder(tmp_path / "images", n=3, colour_every=0)
    scaled = [(name, slc, (r * factor, c * factor, rad)) for name, slc, (r, c, rad) in rows]
    return recist_csv(tmp_path / "images" / "lesions.csv", scaled)


def test_a_table_of_marks_off_the_image_is_refused(tmp_path):
    table = _scaled_table(tmp_path, 10)
    with pytest.raises(ValueError, match=r"row 1 \(lesion 0\): its endpoint .* lies outside "
                                         r"'case0.png' \(64 rows x 64 columns\)"):
        read_lesion_table(table)
    assert len(read_lesion_table(_scaled_table(tmp_path / "ok", 1)).rows) == 3


def test_commands_refuse_marks_off_the_image_and_write_nothing(tmp_path, capsys):
    table = _scaled_table(tmp_path, 10)
    for args in (["pseudo-masks", str(table)],
                 ["train", str(table), "--models", "a1", "--epochs", "1", "--size", "32"]):
        out = tmp_path / args[0]
        assert main([*args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "lies outside 'case0.png' (64 rows x 64 columns)" in err, err
        assert not out.exists()


def test_predict_with_recists_refuses_marks_off_the_image_and_lists_unmarked_images(
        tmp_path, capsys):
    table = _scaled_table(tmp_path, 10)
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "images"), "--recists", str(table), "--model",
                 str(tmp_path / "no-model"), "--out", str(out)]) == 2
    assert "lies outside 'case0.png'" in capsys.readouterr().err
    assert not out.exists()


def test_deeplesion_rows_off_their_slice_are_skipped_with_the_invalid_rows(tmp_path):
    import pandas as pd

    root = tmp_path / "dl"
    write_deeplesion(root)
    path = root / "DL_info.csv"
    frame = pd.read_csv(path)
    n = len(frame)
    coords = [float(v) for v in frame.loc[0, "Measurement_coordinates"].split(",")]
    frame.loc[0, "Measurement_coordinates"] = ", ".join(str(10 * v) for v in coords)
    frame.to_csv(path, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records, skipped = read_deeplesion(path, return_skipped=True)
    assert len(records) == n - 1 and [s.csv_row for s in skipped] == [1]
    assert skipped[0].category == "outside the slice"
    assert any("1 outside the slice" in str(w.message) for w in caught)
    assert np.isfinite(records[0].recist.long_mm)


def test_predict_names_recist_images_that_match_no_input_image(tmp_path, capsys):
    from ._learning_data import crop_preprocessing, saved_model

    rows = write_png_folder(tmp_path / "images", n=2, colour_every=0)
    model = saved_model(tmp_path / "model", "a1", in_channels=1,
                        preprocessing=crop_preprocessing())
    out = tmp_path / "pred"

    def predict(table):
        return main(["predict", str(tmp_path / "images"), "--recists", str(table), "--model",
                     str(model), "--out", str(out)])

    # Every lesion on a misspelt name: nothing to predict, said as an error.
    misspelt = recist_csv(tmp_path / "typo.csv", [("cas0.png", *rows[0][1:])])
    assert predict(misspelt) == 2
    assert ("typo.csv: its lesions name cas0, and no input image has such a name"
            in capsys.readouterr().err)
    assert not out.exists()
    # A table without image names cannot be matched at all.
    unnamed = recist_csv(tmp_path / "unnamed.csv", [("", *rows[0][1:])])
    assert predict(unnamed) == 2
    assert "its lesions need an 'image' column" in capsys.readouterr().err
    # One name of two matches: its image is predicted, the other name is reported.
    some = recist_csv(tmp_path / "some.csv", [rows[0], ("case7.png", *rows[1][1:])])
    assert predict(some) == 0
    said = capsys.readouterr()
    assert "1 masks" in said.out and (out / "case0_mask.png").exists()
    assert ("1 image name(s) of " in said.err
            and "match no input image; their lesions are not predicted: case7" in said.err)
