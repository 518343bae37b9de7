"""Bad files: each gives one clear error (or warning) naming the file and the problem, in the
library and in the napari reader, which never raises and never crashes the viewer.

The reader is called the way napari calls it: ``get_reader(path)`` must return None (not ours)
or a reader whose call returns ``[(None,)]`` and shows exactly one error notification. The
notifications are caught where the reader sends them, so no viewer is needed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import struct
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import SimpleITK as sitk

from napari_recist_seg.core.recist import Recist
from napari_recist_seg.data.dataset import LesionDataset
from napari_recist_seg.data.deeplesion import read_deeplesion, read_deeplesion_slice
from napari_recist_seg.data.image_folders import (
    load_image,
    load_mask,
    load_pair,
    read_image_mask_folder,
    simulate_recists,
)
from napari_recist_seg.data.recist_files import read_recists, write_recists
from napari_recist_seg.data.volumes import read_medical_image
from napari_recist_seg.plugin import reader

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
VOLUME = RNG.integers(-1000, 1000, size=(4, 16, 16)).astype(np.int16)


@pytest.fixture
def shown(monkeypatch):
    """Notifications the reader shows, as (level, message) pairs."""
    messages: list[tuple[str, str]] = []
    monkeypatch.setattr(reader, "notify_error", lambda m: messages.append(("error", m)))
    monkeypatch.setattr(reader, "notify_warning", lambda m: messages.append(("warning", m)))
    return messages


def _encoded(array, extension) -> bytes:
    buffer = io.BytesIO()
    iio.imwrite(buffer, array, extension=extension)
    return buffer.getvalue()


def _nifti_bytes(tmp_path, volume=VOLUME) -> bytes:
    path = tmp_path / "whole.nii"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    return path.read_bytes()


def _dicom_bytes(tmp_path) -> bytes:
    path = tmp_path / "whole.dcm"
    image = sitk.GetImageFromArray(VOLUME[0])
    image.SetMetaData("0008|0060", "CT")
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def _check_reader(path: Path, shown, words: str) -> None:
    """Not ours (None), or read to ``[(None,)]`` with exactly one error naming file and problem."""
    shown.clear()
    read = reader.get_reader(str(path))
    if read is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # problems arrive as notifications, not warnings
        layers = read(str(path))
    assert layers == [(None,)]
    assert len(shown) == 1 and shown[0][0] == "error", shown
    message = shown[0][1]
    assert path.name in message and words.lower() in message.lower(), message


# -- images: PNG, JPEG, NIfTI, DICOM ---------------------------------------------------------
def _png_cut(tmp_path):
    data = _encoded(RGB, ".png")
    return data[: len(data) // 2]


def _png_scrambled(tmp_path):
    data = _encoded(RGB, ".png")
    return data[:40] + bytes(200) + data[240:]


def _jpeg_cut(tmp_path):
    data = _encoded(RGB, ".jpg")
    return data[: len(data) // 2]


def _jpeg_scrambled(tmp_path):
    data = _encoded(RGB, ".jpg")
    return data[:20] + b"\xff" * 50 + data[70:]


IMAGE_FILES = {
    "cut.png": (_png_cut, "truncated"),
    "scrambled.png": (_png_scrambled, "cannot read image"),
    "empty.png": (lambda tmp_path: b"", "cannot read image"),
    "cut.jpg": (_jpeg_cut, "truncated"),
    "scrambled.jpg": (_jpeg_scrambled, "cannot read image"),
    "text.png": (lambda tmp_path: b"hello, I am not a picture\n" * 20, "cannot read image"),
}


@pytest.mark.parametrize("name", sorted(IMAGE_FILES))
def test_bad_picture_files(tmp_path, shown, name):
    make, words = IMAGE_FILES[name]
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    for load in (load_image, load_mask):
        with pytest.raises(ValueError, match=words) as info:
            load(path)
        assert str(path) in str(info.value)
    # Streaming a data set from disk reads the file on access and says which one is bad.
    recist = Recist([[5, 5], [5, 20]], [[0, 12], [10, 12]])
    with pytest.raises(ValueError, match="cannot read image") as info:
        LesionDataset.from_whole_images([path], [recist], size=32, lazy=True)
    assert str(path) in str(info.value)
    _check_reader(path, shown, "cannot")


def _nifti_cut(tmp_path):
    data = _nifti_bytes(tmp_path)
    return data[: len(data) // 2]


def _nifti_gz_cut(tmp_path):
    # Small enough that gzip's read-ahead fails on the header: ITK would pad it with zeros.
    return gzip.compress(_nifti_bytes(tmp_path))[:200]


def _nifti_gz_cut_large(tmp_path):
    big = np.tile(VOLUME, (4, 4, 4))
    data = gzip.compress(_nifti_bytes(tmp_path, big))
    return data[: len(data) * 2 // 3]


def _nifti_huge_header(tmp_path):
    header = bytearray(_nifti_bytes(tmp_path)[:352])
    struct.pack_into("<8h", header, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)
    return bytes(header) + bytes(100)


def _dicom_cut(tmp_path):
    data = _dicom_bytes(tmp_path)
    return data[: len(data) // 2]


def _dicom_pixels_cut(tmp_path):
    data = _dicom_bytes(tmp_path)
    return data[:-100]


def _dicom_preamble_only(tmp_path):
    return bytes(128) + b"DICM" + RNG.bytes(300)


VOLUME_FILES = {
    "cut.nii": (_nifti_cut, "truncated"),
    "cut.nii.gz": (_nifti_gz_cut, "truncated"),
    "cut-large.nii.gz": (_nifti_gz_cut_large, "truncated"),
    "not-gzip.nii.gz": (lambda tmp_path: b"\x1f\x8b" + bytes(100), "cannot read image"),
    "huge-header.nii": (_nifti_huge_header, "truncated"),
    "cut.dcm": (_dicom_cut, "cannot read image"),
    "pixels-cut.dcm": (_dicom_pixels_cut, "cannot read image"),
    "IM0001": (_dicom_preamble_only, "cannot read image"),
    "empty.nii": (lambda tmp_path: b"", "cannot read image"),
}


@pytest.mark.parametrize("name", sorted(VOLUME_FILES))
def test_bad_medical_image_files(tmp_path, shown, name):
    make, words = VOLUME_FILES[name]
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    with pytest.raises(ValueError, match=words) as info:
        read_medical_image(path)
    assert str(path) in str(info.value)
    _check_reader(path, shown, words)
    if name != "empty.nii":
        assert reader.get_reader(str(path)) is not None  # these are ours: shown, not ignored


def test_a_dicom_series_with_a_cut_slice(tmp_path, shown):
    folder = tmp_path / "series"
    folder.mkdir()
    for k in range(3):
        image = sitk.GetImageFromArray(VOLUME[k])
        for key, value in {"0008|0060": "CT", "0020|000e": "1.2.3.4", "0020|0013": str(k + 1),
                           "0020|0032": f"0\\0\\{k}", "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"s{k}.dcm"))
        writer.Execute(image)
    cut = folder / "s1.dcm"
    cut.write_bytes(cut.read_bytes()[:-200])
    # Either the series is refused, naming the folder, or the cut file is left out with a
    # warning; never a series with a slice of zeros read as if it were whole.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = read_medical_image(folder)
        except ValueError as exc:
            assert str(folder) in str(exc)
            image = None
    if image is not None:
        # GDCM leaves the unreadable file out of the series; the reader says which.
        assert [str(w.message) for w in caught if "s1.dcm" in str(w.message)], (
            "a series was read without its cut slice, and without a word")
        assert image.array.shape[0] == 2
        assert not np.any(np.all(image.array == 0, axis=(1, 2)))
    shown.clear()
    read = reader.get_reader(str(folder))
    assert read is not None
    layers = read(str(folder))
    assert (layers[0][0] is None) == (image is None)
    assert len(shown) == 1
    assert "s1.dcm" in shown[0][1] or str(folder) in shown[0][1]


# -- DeepLesion tables ------------------------------------------------------------------------
HEADER = ["File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
          "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
          "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range",
          "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age",
          "Train_Val_Test"]


def _row(name="000001_01_01_105.png", coords="8, 10, 24, 10, 16, 6, 16, 14", **changes):
    row = dict(zip(HEADER, [name, "1", "1", "1", "105", coords, "5, 6, 25, 22", "16, 8",
                            "0.5, 0.5, 0.5", "4", "0", "101, 109", "0.5, 0.5, 1", "32, 32",
                            "-175, 275", "F", "62", "1"]))
    row.update(changes)
    return row


def _deeplesion(tmp_path, rows, header=HEADER, slices=(105,)):
    root = tmp_path / "DeepLesion"
    folder = root / "Images_png" / "000001_01_01"
    folder.mkdir(parents=True)
    for n in slices:
        iio.imwrite(folder / f"{n:03d}.png", np.full((32, 32), 32768 + 40, dtype=np.uint16))
    with open(root / "DL_info.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.parametrize(
    "rows, header, words",
    [
        ([_row()], [h for h in HEADER if h != "Spacing_mm_px_"], "missing"),
        ([_row(), _row(coords="8, 10, 24")], HEADER, "row 2"),
        ([_row(Spacing_mm_px_="0.5, x, 1")], HEADER, "Spacing_mm_px_"),
        ([_row(Key_slice_index="many")], HEADER, "Key_slice_index"),
    ],
    ids=["missing column", "short coordinates", "bad spacing", "bad key slice"],
)
def test_bad_deeplesion_tables(tmp_path, shown, rows, header, words):
    root = _deeplesion(tmp_path, rows, header)
    with pytest.raises(ValueError, match=words) as info:
        read_deeplesion(root)
    assert "DL_info.csv" in str(info.value)
    for path in (root, root / "DL_info.csv"):
        _check_reader(path, shown, words)
    assert reader.get_reader(str(root)) is not None


@pytest.mark.parametrize(
    "content, words",
    [(b"", "DL_info.csv"), (b"\x00\xff\xfe\x81 binary \x00" * 10, "DL_info.csv"),
     (",".join(HEADER).encode() + b"\n", "no lesion")],
    ids=["empty", "binary", "header only"],
)
def test_empty_and_binary_deeplesion_tables(tmp_path, shown, content, words):
    root = _deeplesion(tmp_path, [])
    (root / "DL_info.csv").write_bytes(content)
    if words != "no lesion":
        with pytest.raises(ValueError, match="DL_info.csv"):
            read_deeplesion(root)
    else:
        assert read_deeplesion(root) == []
    _check_reader(root, shown, words)


def test_a_cut_key_slice_is_one_notification(tmp_path, shown):
    root = _deeplesion(tmp_path, [_row()])
    png = root / "Images_png" / "000001_01_01" / "105.png"
    png.write_bytes(png.read_bytes()[:60])
    (record,) = read_deeplesion(root)
    with pytest.raises(ValueError, match="105.png"):
        read_deeplesion_slice(record)
    _check_reader(root, shown, "105.png")


def test_a_missing_key_slice_is_one_warning(tmp_path, shown):
    root = _deeplesion(tmp_path, [_row(), _row(name="000001_01_01_107.png",
                                                Key_slice_index="107")])
    with pytest.warns(UserWarning, match="000001_01_01_107.png"):
        records = read_deeplesion(root)
    assert [r.image_path is None for r in records] == [False, True]
    shown.clear()
    layers = reader.get_reader(str(root))(str(root))
    assert [layer[2] for layer in layers] == ["image", "shapes"]
    assert len(shown) == 1 and shown[0][0] == "warning"
    assert "000001_01_01_107.png" in shown[0][1]


# -- image/mask folders --------------------------------------------------------------------------
def test_image_and_mask_of_different_sizes(tmp_path):
    # Same number of pixels, rows and columns swapped: only the shape tells them apart.
    iio.imwrite(tmp_path / "ISIC_1.jpg", RGB)
    iio.imwrite(tmp_path / "ISIC_1_segmentation.png", np.zeros((48, 40), np.uint8) + 255)
    iio.imwrite(tmp_path / "ISIC_2.jpg", RGB)
    iio.imwrite(tmp_path / "ISIC_2_segmentation.png", np.zeros((40, 48), np.uint8) + 255)
    pairs = read_image_mask_folder(tmp_path)
    with pytest.raises(ValueError) as info:
        load_pair(pairs[0])
    message = str(info.value)
    assert "ISIC_1_segmentation.png" in message and "ISIC_1.jpg" in message
    assert "48x40" in message and "40x48" in message
    load_pair(pairs[1])
    # Simulating RECIST from the masks alone cannot see the mismatch; training data can.
    assert len(simulate_recists(pairs)) == 2
    recists = simulate_recists(pairs)
    with pytest.raises(ValueError, match=r"gt_masks\[0\]"):
        LesionDataset.from_whole_images([load_image(p.image_path) for p in pairs], recists,
                                        size=32, gt_masks=[load_mask(p.mask_path)
                                                           for p in pairs])


def test_empty_folders(tmp_path, shown):
    empty = tmp_path / "empty"
    (empty / "sub" / "deeper").mkdir(parents=True)
    (empty / ".hidden").write_text("")
    with pytest.raises(ValueError, match="no image files") as info:
        read_image_mask_folder(empty)
    assert str(empty) in str(info.value)
    with pytest.raises(ValueError, match="no DL_info.csv") as info:
        read_deeplesion(empty)
    assert str(empty) in str(info.value)
    with pytest.raises(ValueError, match="no DICOM series") as info:
        read_medical_image(empty)
    assert str(empty) in str(info.value)
    assert reader.get_reader(str(empty)) is None
    # A folder that is ours by name but holds nothing to read is one notification.
    shown.clear()
    layers = reader.read_path(str(empty), kind="volume")
    assert layers == [(None,)] and len(shown) == 1 and "no DICOM series" in shown[0][1]


# -- RECIST files from a newer version ---------------------------------------------------------
def _recists():
    return [Recist([[10, 10], [10, 40]], [[5, 25], [15, 25]])]


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_a_recist_file_from_a_newer_version(tmp_path, shown, suffix):
    path = write_recists(tmp_path / f"marks{suffix}", _recists())
    if suffix == ".json":
        doc = json.loads(path.read_text())
        doc["format_version"] = 7
        doc["lesions"][0]["new_field"] = {"nested": [1, 2]}
        path.write_text(json.dumps(doc))
    else:
        path.write_text(path.read_text().replace("csv v1", "csv v7", 1))
    with pytest.raises(ValueError, match="7 is newer") as info:
        read_recists(path)
    assert str(path) in str(info.value)
    assert reader.get_reader(str(path)) is not None
    _check_reader(path, shown, "newer")
