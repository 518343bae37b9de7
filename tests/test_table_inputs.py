"""What a RECIST table from elsewhere brings: 16-bit grey slices (DeepLesion's HU + 32768 in
unsigned PNGs, HU in signed images, a slice stored another way refused by name instead of read
as a blank image), a split column of its own, and column names in other capitals."""

from __future__ import annotations

import re

import imageio.v3 as iio
import numpy as np
import pytest

from napari_recist_seg.data.deeplesion import hu_from_16bit
from napari_recist_seg.data.recist_sources import read_lesion_table

from ._recist_table_data import disc_slice, recist_csv

HU = disc_slice([(32, 32, 10)])  # background -100 HU, the lesion 60 HU


def _table(tmp_path, name, pixels):
    iio.imwrite(tmp_path / name, pixels)
    return read_lesion_table(recist_csv(tmp_path / "recists.csv", [(name, None, (32, 32, 10))]))


def test_unsigned_slices_are_hu_plus_32768_and_signed_ones_hu():
    np.testing.assert_array_equal(hu_from_16bit((HU + 32768).astype(np.uint16), "a.png"), HU)
    np.testing.assert_array_equal(hu_from_16bit(HU.astype(np.int16), "a.tif"), HU)


def test_a_signed_tiff_of_hu_is_read_as_hu(tmp_path):
    table = _table(tmp_path, "slice.tif", HU.astype(np.int16))
    image = np.asarray(table.stacks[0]())
    assert image.min() == -100 and image.max() == 60


def test_a_png_of_hu_plus_1024_is_refused_by_name(tmp_path):
    table = _table(tmp_path, "slice.png", (HU + 1024).astype(np.uint16))
    with pytest.raises(ValueError) as info:
        table.stacks[0]()
    message = str(info.value)
    assert str(tmp_path / "slice.png") in message
    assert "values (924 to 1084)" in message and "below air (-1024 HU)" in message


# -- a RECIST file's own split --------------------------------------------------------------
def _split_table(tmp_path, column, values):
    rows = []
    for i, value in enumerate(values):
        name = f"case{i}.png"
        iio.imwrite(tmp_path / name, (HU + 32768).astype(np.uint16))
        rows.append((name, None, (32, 32, 10), value))
    return recist_csv(tmp_path / "recists.csv", rows, extra_columns=(column,))


@pytest.mark.parametrize("column", ["Train_Val_Test", "split", "Split"])
def test_a_split_column_decides_training_validation_and_test_rows(tmp_path, column):
    from napari_recist_seg.learning.preparation import split_table

    path = _split_table(tmp_path, column, [1, 1, 2, 3, "train", "validation", "test", 1])
    train, val = split_table(read_lesion_table(path))
    # Before, the column was a feature like any other: a seeded split of all eight images,
    # test rows included.
    assert train.tolist() == [0, 1, 4, 7] and val.tolist() == [2, 5]


def test_predict_split_selects_a_recist_file_s_rows(tmp_path, capsys):
    from napari_recist_seg.cli import main

    from ._learning_data import crop_preprocessing, saved_model

    path = _split_table(tmp_path, "Train_Val_Test", [1, 3, 2, 3])
    model = saved_model(tmp_path / "model", "a1", in_channels=1,
                        preprocessing=crop_preprocessing(window=(-175.0, 275.0)))
    out = tmp_path / "masks"
    assert main(["predict", str(path), "--model", str(model), "--out", str(out),
                 "--split", "3"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["case1_mask.png", "case3_mask.png"]


def test_a_split_value_that_is_not_one_is_refused_by_row(tmp_path):
    path = _split_table(tmp_path, "split", [1, 2, "holdout"])
    with pytest.raises(ValueError, match=r"row 3 \(lesion 2\): column split must be 1, 2 or 3 "
                                         r"\(train, validation, test\), got 'holdout'"):
        read_lesion_table(path)


@pytest.mark.parametrize("name", ["Spacing_Row", "spacing row", " Spacing-Row"])
def test_an_optional_column_in_other_capitals_is_refused_not_dropped(tmp_path, name):
    from napari_recist_seg.data.recist_files import read_recists

    path = _split_table(tmp_path, "split", [1, 2])
    text = path.read_text().replace("spacing_row,", f"{name},", 1)
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_recists(path)
    message = str(info.value)
    assert f"column(s) {name.strip()!r} would be read as lesion features" in message
    assert "name them spacing_row" in message


def test_a_patient_column_with_a_space_keeps_a_patient_on_one_side(tmp_path):
    from napari_recist_seg.learning.preparation import split_table

    path = _split_table(tmp_path, "Patient ID", ["A", "A", "A", "B", "B", "C", "C", "C"])
    table = read_lesion_table(path)
    assert [r.patient for r in table.rows] == ["A", "A", "A", "B", "B", "C", "C", "C"]
    train, val = split_table(table, val_fraction=0.34)
    patients = [{table.rows[i].patient for i in part} for part in (train, val)]
    assert not patients[0] & patients[1] and len(patients[1]) == 1


def test_a_row_s_pixel_size_other_than_its_scan_header_s_is_used_and_said(tmp_path):
    from ._recist_table_data import write_nifti

    write_nifti(tmp_path / "vol.nii.gz", spacing=(0.7, 0.7, 1.0),
                lesions_by_slice={4: [(32, 32, 10)]})
    coords = "32,22,32,42,23,32,41,32"
    (tmp_path / "recists.csv").write_text(
        "lesion_id,image,slice,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,short_r1,"
        f"short_c1,spacing_row,spacing_col\n0,vol.nii.gz,4,{coords},0.8,0.8\n"
        "1,vol.nii.gz,4,10,2,10,12,6,7,14,7,,\n")
    with pytest.warns(UserWarning, match=r"1 row\(s\) give a pixel size other than their "
                                         r"scan's header, e.g. row 1: 0.8 x 0.8 mm where "
                                         r"'vol.nii.gz' says 0.7 x 0.7 mm"):
        table = read_lesion_table(tmp_path / "recists.csv")
    assert [r.recist.spacing for r in table.rows] == [(0.8, 0.8), pytest.approx((0.7, 0.7))]


# -- messages for tables saved otherwise ------------------------------------------------------
def test_a_csv_in_another_encoding_names_its_line_and_how_to_save_it(tmp_path):
    from napari_recist_seg.data.recist_files import read_recists

    path = _split_table(tmp_path, "split", [1, 2])
    text = path.read_text() + "2,Müller.png,,1,1,1,9,0,5,2,5,,,1\n"
    path.write_bytes(text.encode("cp1252"))
    with pytest.raises(ValueError, match=r"not a UTF-8 text file \(invalid start byte on line "
                                         r"5\); spreadsheets write UTF-8 when saved as "
                                         r"'CSV UTF-8'"):
        read_recists(path)


@pytest.mark.parametrize(("change", "words"), [
    (str.lower, "(column names are written as DeepLesion writes them, e.g. File_name)"),
    (lambda text: text.replace(",", ";"),
     "(its header is separated by semicolons; DL_info.csv is comma-separated)"),
])
def test_a_dl_info_saved_otherwise_is_named_in_deeplesion_s_terms(tmp_path, change, words):
    from ._recist_table_data import write_deeplesion

    table = write_deeplesion(tmp_path / "dl")
    lines = table.read_text().split("\n", 1)
    table.write_text(change(lines[0]) + "\n" + lines[1])
    with pytest.raises(ValueError) as info:
        read_lesion_table(table)
    message = str(info.value)
    assert "not a DeepLesion DL_info CSV, missing column(s): File_name" in message
    assert words in message


@pytest.mark.parametrize(("cell", "words"), [
    ("2_00", "column long_c0 is not a number: '2_00'"),
    ('"22,5"', "column long_c0 is not a number: '22,5' (decimals are written with a point)"),
])
def test_a_coordinate_typed_otherwise_is_named(tmp_path, cell, words):
    from napari_recist_seg.data.recist_files import read_recists

    path = _split_table(tmp_path, "split", [1, 2])
    lines = path.read_text().splitlines()
    cells = lines[2].split(",")
    cells[4] = cell
    lines[2] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=re.escape(words)):
        read_recists(path)
