"""DeepLesion DL_info.csv and slice reading, on a tiny fake DeepLesion tree."""

from __future__ import annotations

import csv
import warnings

import imageio.v3 as iio
import numpy as np
import pytest

from napari_recist_seg.data.deeplesion import (
    DeepLesionRecord,
    read_deeplesion,
    read_deeplesion_slice,
)

HEADER = [
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Normalized_lesion_location",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Patient_gender",
    "Patient_age",
    "Train_Val_Test",
]
SIZE = 32


def _row(file_name, coords, spacing="0.5, 0.8, 1", split="1", lesion_type="4", **over):
    patient, study, series, key = file_name[:-4].split("_")
    row = {
        "File_name": file_name,
        "Patient_index": str(int(patient)),
        "Study_index": str(int(study)),
        "Series_ID": str(int(series)),
        "Key_slice_index": str(int(key)),
        "Measurement_coordinates": coords,
        "Bounding_boxes": "5, 6, 25, 22",
        "Lesion_diameters_Pixel_": "16, 8",
        "Normalized_lesion_location": "0.5, 0.5, 0.5",
        "Coarse_lesion_type": lesion_type,
        "Possibly_noisy": "0",
        "Slice_range": "101, 109",
        "Spacing_mm_px_": spacing,
        "Image_size": f"{SIZE}, {SIZE}",
        "DICOM_windows": "-175, 275",
        "Patient_gender": "F",
        "Patient_age": "62.0",
        "Train_Val_Test": split,
    }
    row.update(over)
    return row


# Long axis (x, y) (8, 10) -> (24, 10), short axis (16, 6) -> (16, 14): 1-based x before y.
GOOD = "8, 10, 24, 10, 16, 6, 16, 14"


def _slice_hu(number):
    """A recognisable slice: a ramp plus 10 HU per slice number, so channels can be told apart."""
    ramp = np.arange(SIZE * SIZE, dtype=np.int32).reshape(SIZE, SIZE) - 1500
    return ramp + 10 * number


def _number(channel):
    """Which slice a channel came from (inverse of ``_slice_hu``)."""
    return int(round((float(channel[0, 0]) + 1500) / 10))


def _write_csv(path, rows, header=HEADER):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _tree(tmp_path, rows, slices=range(101, 110), series="000001_01_01"):
    root = tmp_path / "DeepLesion"
    folder = root / "Images_png" / series
    folder.mkdir(parents=True)
    for n in slices:
        iio.imwrite(folder / f"{n:03d}.png", (_slice_hu(n) + 32768).astype(np.uint16))
    _write_csv(root / "DL_info.csv", rows)
    return root


def test_reads_rows_and_converts_once(tmp_path):
    root = _tree(tmp_path, [_row("000001_01_01_105.png", GOOD, split="2")])
    (rec,) = read_deeplesion(root)
    assert isinstance(rec, DeepLesionRecord)
    assert rec.file_name == "000001_01_01_105.png"
    assert rec.key_slice == 105
    # 1-based (x, y) -> 0-based (row, col).
    np.testing.assert_allclose(rec.recist.long_axis, [[9, 7], [9, 23]])
    np.testing.assert_allclose(rec.recist.short_axis, [[5, 15], [13, 15]])
    # Spacing_mm_px_ is (x, y, z): rows take y's spacing.
    assert rec.spacing_mm == (0.8, 0.5, 1.0)
    assert rec.recist.spacing == (0.8, 0.5)
    assert rec.recist.long_mm == pytest.approx(16 * 0.5)
    assert rec.recist.short_mm == pytest.approx(8 * 0.8)
    assert rec.box == (5.0, 4.0, 21.0, 24.0)
    assert rec.window == (-175.0, 275.0)
    assert rec.split == "val"
    assert rec.lesion_type == 4 and rec.lesion_type_name == "liver"
    assert rec.image_size == (SIZE, SIZE)
    assert (rec.patient_index, rec.study_index, rec.series_id) == (1, 1, 1)
    assert rec.slice_range == (101, 109)
    assert rec.diameters_px == (16.0, 8.0)
    assert rec.possibly_noisy is False
    assert rec.patient_age == 62.0 and rec.patient_gender == "F"
    assert rec.image_path == root / "Images_png" / "000001_01_01" / "105.png"
    assert rec.series_name == "000001_01_01"
    # Round trip back to DeepLesion's numbers.
    assert rec.recist.to_deeplesion() == [float(v) for v in GOOD.split(",")]


def test_csv_path_and_images_root(tmp_path):
    root = _tree(tmp_path, [_row("000001_01_01_105.png", GOOD)])
    moved = tmp_path / "elsewhere"
    (root / "Images_png").rename(moved)
    with pytest.warns(UserWarning, match="1 of 1 rows have no image"):
        (rec,) = read_deeplesion(root / "DL_info.csv")
    assert rec.image_path is None
    (rec,) = read_deeplesion(root / "DL_info.csv", images_root=moved)
    assert rec.image_path == moved / "000001_01_01" / "105.png"
    with pytest.raises(ValueError, match="images_root"):
        read_deeplesion(root, images_root=tmp_path / "none")


def test_slice_in_hu(tmp_path):
    root = _tree(tmp_path, [_row("000001_01_01_105.png", GOOD)])
    (rec,) = read_deeplesion(root)
    hu = read_deeplesion_slice(rec)
    assert hu.dtype == np.float32 and hu.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(hu, _slice_hu(105))
    assert hu.min() < 0  # negative HU survive the uint16 encoding


def test_neighbour_stacking(tmp_path):
    # Slice interval 1 mm, gap 2 mm: channels are slices key-2, key, key+2.
    root = _tree(tmp_path, [_row("000001_01_01_105.png", GOOD, spacing="0.5, 0.5, 1")])
    (rec,) = read_deeplesion(root, neighbours=1)
    stack = read_deeplesion_slice(rec)
    assert stack.shape == (3, SIZE, SIZE) and stack.dtype == np.float32
    for channel, number in zip(stack, (103, 105, 107)):
        np.testing.assert_array_equal(channel, _slice_hu(number))
    # Past the end of the series the outermost slice repeats.
    stack = read_deeplesion_slice(rec, neighbours=3)
    numbers = [_number(c) for c in stack]
    assert numbers == [101, 101, 103, 105, 107, 109, 109]
    # Non-integer offsets pick the nearest existing slice.
    stack = read_deeplesion_slice(rec, neighbours=1, slice_gap_mm=1.4)
    assert [_number(c) for c in stack] == [104, 105, 106]


def test_neighbours_thicker_than_gap_and_gaps_in_files(tmp_path):
    # 5 mm slices with a 2 mm gap: offsets of 0.4 and 0.8 slices -> key, then key+1.
    root = _tree(
        tmp_path,
        [_row("000001_01_01_105.png", GOOD, spacing="0.5, 0.5, 5")],
        slices=(101, 104, 105, 108),
    )
    (rec,) = read_deeplesion(root)
    stack = read_deeplesion_slice(rec, neighbours=2)
    numbers = [_number(c) for c in stack]
    assert numbers == [104, 105, 105, 105, 105]
    stack = read_deeplesion_slice(rec, neighbours=1, slice_gap_mm=10)  # +-2 slices
    numbers = [_number(c) for c in stack]
    assert numbers == [104, 105, 108]  # 103 -> nearest 104; 107 -> nearest 108


def test_missing_images_one_summary_warning(tmp_path):
    rows = [_row("000001_01_01_105.png", GOOD)] + [
        _row(f"000002_01_01_{n:03d}.png", GOOD) for n in range(1, 9)
    ]
    root = _tree(tmp_path, rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_deeplesion(root)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1
    assert "8 of 9 rows" in msgs[0] and "000002_01_01_001.png" in msgs[0] and "..." in msgs[0]
    assert len(records) == 9
    assert records[0].image_path is not None
    assert all(r.image_path is None for r in records[1:])
    with pytest.raises(ValueError, match="000002_01_01_001.png"):
        read_deeplesion_slice(records[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_deeplesion(root, warn_missing=False)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("Measurement_coordinates", "8, 10, 24, 10, 16, 6, 16"),
        ("Measurement_coordinates", "8, 10, 24, 10, 16, 6, 16, x"),
        ("Spacing_mm_px_", "0.5, abc, 1"),
        ("Spacing_mm_px_", "0.5, 0.5"),
        ("Bounding_boxes", "1, 2, 3"),
        ("Train_Val_Test", "7"),
        ("Key_slice_index", "1.5"),
        ("DICOM_windows", ""),
    ],
)
def test_malformed_row_names_row_and_column(tmp_path, column, value):
    rows = [_row("000001_01_01_105.png", GOOD), _row("000001_01_01_106.png", GOOD)]
    rows[1][column] = value
    root = _tree(tmp_path, rows)
    with pytest.raises(ValueError, match=rf"row 2 \(line 3\), column {column}"):
        read_deeplesion(root)


def test_a_row_short_of_fields_is_named_as_such(tmp_path):
    root = _tree(tmp_path, [_row("000001_01_01_105.png", GOOD)])
    lines = (root / "DL_info.csv").read_text().splitlines()
    fields = next(csv.reader([lines[1]]))
    cut = ",".join(f'"{f}"' for f in fields[:-2])  # the last two fields left out
    (root / "DL_info.csv").write_text("\n".join([lines[0], cut]) + "\n")
    with pytest.raises(ValueError, match=rf"row 1 \(line 2\) has {len(fields) - 2} fields but "
                                         rf"the header has {len(fields)}: "
                                         rf"{HEADER[-2]}, {HEADER[-1]} missing"):
        read_deeplesion(root)


def test_a_repeated_row_is_warned_about_with_both_rows(tmp_path):
    rows = [_row("000001_01_01_105.png", GOOD), _row("000001_01_01_106.png", GOOD),
            _row("000001_01_01_105.png", GOOD)]
    root = _tree(tmp_path, rows)
    with pytest.warns(UserWarning, match=r"1 row\(s\) repeat another row's measurement on the "
                                         r"same slice \(rows 1 and 3\)"):
        assert len(read_deeplesion(root)) == 3


def test_missing_columns_listed(tmp_path):
    header = [h for h in HEADER if h not in ("Spacing_mm_px_", "DICOM_windows")]
    root = tmp_path / "dl"
    root.mkdir()
    _write_csv(root / "DL_info.csv", [_row("000001_01_01_105.png", GOOD)], header=header)
    with pytest.raises(ValueError, match="Spacing_mm_px_, DICOM_windows"):
        read_deeplesion(root)


def test_invalid_recist_rows(tmp_path):
    # Axes 45 degrees apart: well-formed numbers, invalid measurement.
    rows = [
        _row("000001_01_01_105.png", GOOD),
        _row("000001_01_01_106.png", "8, 10, 24, 10, 12, 6, 20, 14"),
    ]
    root = _tree(tmp_path, rows)
    with pytest.warns(UserWarning, match=r"skipped 1 row.*1 axes not perpendicular.*row 2"):
        records = read_deeplesion(root)
    assert [r.file_name for r in records] == ["000001_01_01_105.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, skipped = read_deeplesion(root, invalid="skip", return_skipped=True)
    assert len(records) == 1
    assert skipped[0].csv_row == 2 and skipped[0].category == "axes not perpendicular"
    with pytest.raises(ValueError, match="row 2.*Measurement_coordinates.*perpendicular"):
        read_deeplesion(root, invalid="raise")
    # A looser tolerance accepts it.
    assert len(read_deeplesion(root, max_perpendicularity_error=50)) == 2


def test_8bit_flat_folder(tmp_path):
    # Key slices alone, 8-bit, named like File_name with another suffix (as public JPEG
    # samples are): 0..255 maps onto HU -1024..3071.
    root = tmp_path / "samples"
    (root / "images").mkdir(parents=True)
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (SIZE, 1))
    iio.imwrite(root / "images" / "000003_01_01_010.png", grey)
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)
    iio.imwrite(root / "images" / "000004_01_01_020.jpg", flat, quality=100)
    _write_csv(
        root / "DL_info_subset.csv",
        [_row("000003_01_01_010.png", GOOD), _row("000004_01_01_020.png", GOOD)],
    )
    a, b = read_deeplesion(root)
    assert a.image_path.name == "000003_01_01_010.png"
    assert b.image_path.name == "000004_01_01_020.jpg"
    from napari_recist_seg.data import deeplesion

    deeplesion._SAID[0] = False
    with pytest.warns(UserWarning, match=r"000003_01_01_010.png: 8-bit slices are read as HU "
                                         r"-1024 to 3071 spread evenly over 0-255"):
        hu = read_deeplesion_slice(a)
    np.testing.assert_allclose(hu, grey.astype(np.float32) / 255 * 4095 - 1024, atol=1e-3)
    assert hu.min() == -1024
    hu = read_deeplesion_slice(b)
    assert hu.shape == (SIZE, SIZE)
    np.testing.assert_allclose(hu, 128 / 255 * 4095 - 1024, atol=17)  # one 8-bit step
    # No neighbours in a folder of key slices: every channel is the key slice.
    stack = read_deeplesion_slice(b, neighbours=2)
    assert stack.shape == (5, SIZE, SIZE)
    assert all(np.array_equal(c, stack[2]) for c in stack)
    with pytest.raises(ValueError, match="8-bit"):
        read_deeplesion_slice(a, encoding="16bit")


def test_corrupt_slice_and_csv(tmp_path):
    root = _tree(tmp_path, [_row("000001_01_01_105.png", GOOD)])
    png = root / "Images_png" / "000001_01_01" / "105.png"
    png.write_bytes(png.read_bytes()[:60])
    (rec,) = read_deeplesion(root)
    with pytest.raises(ValueError, match="105.png"):
        read_deeplesion_slice(rec)
    bad = tmp_path / "DL_info.csv"
    bad.write_bytes(b"\xff\xfe\x00\x81 not text")
    with pytest.raises(ValueError, match="DL_info.csv"):
        read_deeplesion(bad)
    with pytest.raises(ValueError, match="no such file"):
        read_deeplesion(tmp_path / "missing.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no DL_info.csv"):
        read_deeplesion(empty)
