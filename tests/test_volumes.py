"""Clinical image reading through SimpleITK, on small files written here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from napari_recist_seg.data.volumes import (
    MedicalImage,
    is_medical_image_path,
    read_medical_image,
)


def _volume(shape=(4, 6, 5), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 2000, size=shape).astype(np.int16)


def _write_dicom_series(folder, volume, spacing_xyz, series_uid, modality="CT", window=None):
    """One file per slice, with the tags GDCM needs to order the slices and get spacing."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study_uid = "1.2.826.0.1.3680043.2.1125.9.1"
    for k in range(volume.shape[0]):
        img = sitk.GetImageFromArray(volume[k])
        img.SetSpacing(spacing_xyz[:2])
        z = k * spacing_xyz[2]
        tags = {
            "0008|0060": modality,
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing_xyz[2]),
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        if window is not None:
            tags["0028|1050"] = str(window[0])
            tags["0028|1051"] = str(window[1])
        for key, value in tags.items():
            img.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(img)


def test_dicom_series_values_spacing_and_axis_order(tmp_path):
    vol = _volume((4, 6, 5))
    _write_dicom_series(tmp_path / "ct", vol, (0.7, 0.6, 2.5), "1.2.3.4.5.1", window=(40, 400))
    img = read_medical_image(tmp_path / "ct")
    assert isinstance(img, MedicalImage)
    assert img.array.shape == (4, 6, 5)  # (slice, row, col)
    np.testing.assert_array_equal(img.array, vol)
    assert img.array.dtype in (np.int16, np.float32)
    # ITK spacing is (x, y, z) = (col, row, slice); napari's scale is its reverse.
    assert img.scale == pytest.approx((2.5, 0.6, 0.7))
    assert img.spacing == pytest.approx((0.6, 0.7))
    assert img.metadata["modality"] == "CT"
    assert img.metadata["window"] == pytest.approx((-160.0, 240.0))
    assert img.metadata["format"] == "dicom-series"
    assert img.ndim == 3
    kwargs = img.layer_kwargs()
    assert kwargs["scale"] == img.scale and kwargs["contrast_limits"] == pytest.approx((-160, 240))


def test_dicom_folder_with_two_series_reads_the_larger_and_warns(tmp_path):
    folder = tmp_path / "mixed"
    _write_dicom_series(folder, _volume((3, 4, 4), 1), (1.0, 1.0, 1.0), "1.2.3.9.1")
    small = tmp_path / "small"
    _write_dicom_series(small, _volume((1, 4, 4), 2), (1.0, 1.0, 1.0), "1.2.3.9.2")
    (small / "slice000.dcm").rename(folder / "other.dcm")
    with pytest.warns(UserWarning, match="2 DICOM series"):
        img = read_medical_image(folder)
    assert img.array.shape == (3, 4, 4)
    assert img.metadata["n_series"] == 2


def test_single_dicom_file_is_2d(tmp_path):
    vol = _volume((1, 7, 9), 3)
    _write_dicom_series(tmp_path / "one", vol, (0.5, 0.8, 3.0), "1.2.3.7")
    path = tmp_path / "one" / "slice000.dcm"
    img = read_medical_image(path)
    assert img.array.shape == (7, 9)
    np.testing.assert_array_equal(img.array, vol[0])
    assert img.scale == pytest.approx((0.8, 0.5))
    assert img.metadata["format"] == "dicom"
    assert img.name == "slice000"


def test_dicom_rescale_gives_hu(tmp_path):
    # Given an intercept, ITK's writer stores HU - intercept; reading must add it back.
    hu = (np.arange(0, 3000, 50).reshape(6, 10) - 1024).astype(np.int16)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((1.0, 1.0))
    for key, value in {"0008|0060": "CT", "0028|1052": "-1024", "0028|1053": "1"}.items():
        img.SetMetaData(key, value)
    path = tmp_path / "rescaled.dcm"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(img)
    # Uncompressed pixel data is the file's tail: check the stored values are not HU.
    raw = np.frombuffer(path.read_bytes()[-hu.nbytes :], dtype="<i2").reshape(hu.shape)
    np.testing.assert_array_equal(raw, hu + 1024)
    out = read_medical_image(path)
    np.testing.assert_array_equal(out.array, hu)
    assert out.metadata["rescale"] == pytest.approx((1.0, -1024.0))
    assert out.metadata["modality"] == "CT"


def test_nifti_anisotropic_spacing(tmp_path):
    vol = np.random.default_rng(4).normal(size=(3, 5, 7)).astype(np.float32)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.5, 0.9, 4.0))  # x (col), y (row), z (slice)
    img.SetOrigin((10.0, 20.0, 30.0))
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(img, str(path))
    out = read_medical_image(path)
    assert out.name == "scan"
    assert out.array.shape == (3, 5, 7)
    assert out.array.dtype == np.float32
    np.testing.assert_allclose(out.array, vol)
    assert out.scale == pytest.approx((4.0, 0.9, 0.5))
    assert out.spacing == pytest.approx((0.9, 0.5))
    assert out.metadata["format"] == "nifti"


def test_mha_and_nrrd(tmp_path):
    vol = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 5
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((1.5, 2.0, 3.0))
    for suffix, fmt in ((".mha", "metaimage"), (".nrrd", "nrrd")):
        path = tmp_path / f"vol{suffix}"
        sitk.WriteImage(img, str(path))
        out = read_medical_image(path)
        np.testing.assert_array_equal(out.array, vol)
        assert out.array.dtype == np.int16  # fits: compacted
        assert out.scale == pytest.approx((3.0, 2.0, 1.5))
        assert out.metadata["format"] == fmt


def test_2d_image_stays_2d(tmp_path):
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.25, 0.5))
    path = tmp_path / "flat.mha"
    sitk.WriteImage(img, str(path))
    out = read_medical_image(path)
    assert out.array.shape == (3, 4)
    assert out.scale == pytest.approx((0.5, 0.25))


def test_missing_path_names_it(tmp_path):
    with pytest.raises(ValueError, match="nope.nii"):
        read_medical_image(tmp_path / "nope.nii")


@pytest.mark.parametrize("name", ["broken.nii.gz", "broken.mha", "broken.dcm", "broken.nrrd"])
def test_corrupt_file_gives_value_error_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        read_medical_image(path)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz", "cut.mha", "cut.nrrd"])
def test_truncated_file_gives_value_error_naming_it(tmp_path, name):
    # ITK reads a truncated NIfTI without complaint (zero padding); the reader must not.
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(4, 16, 16)))
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        read_medical_image(path)


def test_truncated_dicom(tmp_path):
    _write_dicom_series(tmp_path / "s", _volume((1, 32, 32), 6), (1.0, 1.0, 1.0), "1.2.3.10")
    path = tmp_path / "s" / "slice000.dcm"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="slice000.dcm"):
        read_medical_image(path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no DICOM series"):
        read_medical_image(tmp_path)


def test_is_medical_image_path(tmp_path):
    vol = _volume((2, 4, 4), 5)
    _write_dicom_series(tmp_path / "series", vol, (1.0, 1.0, 1.0), "1.2.3.6")
    # A DICOM file without a suffix is recognised by its preamble.
    bare = tmp_path / "IM0001"
    bare.write_bytes((tmp_path / "series" / "slice000.dcm").read_bytes())
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.txt").write_text("x" * 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert is_medical_image_path(tmp_path / "series")
        assert is_medical_image_path(bare)
        assert is_medical_image_path(tmp_path / "a.nii.gz")  # by suffix, even if absent
        assert is_medical_image_path(tmp_path / "A.MHA")
        assert not is_medical_image_path(tmp_path / "empty")
        assert not is_medical_image_path(tmp_path / "text.txt")
        assert not is_medical_image_path(tmp_path / "missing.png")
        assert not is_medical_image_path(None)
        assert not is_medical_image_path(["a.nii"])
        assert not is_medical_image_path("\0bad")
    assert read_medical_image(bare).array.shape == (4, 4)


# -- label images on the scan's grid -------------------------------------------------------------
def _oblique_nifti(path, shape=(4, 20, 30)):
    """A CT-like volume whose axes are not the scanner's (as most NIfTI files from scanners)."""
    img = sitk.GetImageFromArray(_volume(shape))
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(path))
    return img


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_labels_are_written_on_the_grid_of_the_image_they_were_drawn_on(tmp_path, suffix):
    from napari_recist_seg.data.volumes import write_label_image

    source = _oblique_nifti(tmp_path / "ct.nii.gz")
    image = read_medical_image(tmp_path / "ct.nii.gz")
    labels = np.zeros(image.array.shape, np.int32)
    labels[2, 5:9, 10:15] = 3
    labels[1, 0, 0] = 1
    out = write_label_image(tmp_path / f"mask{suffix}", labels, grid=image.metadata["grid"])
    back = sitk.ReadImage(str(out))
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(source, getter)(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    assert back.GetPixelID() == sitk.sitkUInt8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_single_slice_mask_goes_back_to_its_slice(tmp_path):
    from napari_recist_seg.data.volumes import write_label_image

    source = _oblique_nifti(tmp_path / "slice.nii", shape=(1, 20, 30))
    image = read_medical_image(tmp_path / "slice.nii")
    assert image.array.ndim == 2
    labels = np.zeros(image.array.shape, bool)
    labels[3:6, 4:9] = True
    back = sitk.ReadImage(str(write_label_image(tmp_path / "m.nii.gz", labels,
                                                grid=image.metadata["grid"])))
    assert back.GetSize() == (30, 20, 1)
    np.testing.assert_allclose(back.GetOrigin(), source.GetOrigin())
    np.testing.assert_allclose(back.GetDirection(), source.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back)[0], labels)


def test_labels_without_a_grid_take_napari_scale_and_translation(tmp_path):
    from napari_recist_seg.data.volumes import write_label_image

    labels = np.zeros((3, 8, 9), np.uint16)
    labels[1, 2, 3] = 300
    back = sitk.ReadImage(str(write_label_image(tmp_path / "m.mha", labels,
                                                scale=(2.0, 0.5, 0.6),
                                                translate=(4.0, 5.0, 6.0))))
    np.testing.assert_allclose(back.GetSpacing(), (0.6, 0.5, 2.0))
    np.testing.assert_allclose(back.GetOrigin(), (6.0, 5.0, 4.0))
    assert back.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


def test_bad_labels_are_refused_and_an_existing_file_is_kept(tmp_path, monkeypatch):
    from napari_recist_seg.data.volumes import write_label_image

    _oblique_nifti(tmp_path / "ct.nii.gz")
    grid = read_medical_image(tmp_path / "ct.nii.gz").metadata["grid"]
    target = tmp_path / "m.nii.gz"
    target.write_bytes(b"the user's file")
    good = np.zeros((4, 20, 30), np.uint8)
    with pytest.raises(ValueError, match=r"m.nii.gz: labels of shape \(4, 10, 30\) do not lie "
                                         r"on the image's grid of shape \(4, 20, 30\)"):
        write_label_image(target, good[:, :10], grid=grid)
    with pytest.raises(ValueError, match="labels must be whole numbers, got float"):
        write_label_image(target, good.astype(float), grid=grid)
    with pytest.raises(ValueError, match="labels must be 0 or more, found -1"):
        write_label_image(target, good.astype(np.int8) - 1, grid=grid)
    with pytest.raises(ValueError, match=r"m.tif: label images are written as \.nii\.gz"):
        write_label_image(tmp_path / "m.tif", good, grid=grid)
    with pytest.raises(ValueError, match="folder .* does not exist"):
        write_label_image(tmp_path / "nowhere" / "m.nii", good, grid=grid)

    def half_written(image, name, *args):
        with open(name, "wb") as fh:
            fh.write(b"\x00" * 10)
        raise RuntimeError("Description: disk full")

    monkeypatch.setattr(sitk, "WriteImage", half_written)
    with pytest.raises(ValueError, match="cannot write .*m.nii.gz: disk full"):
        write_label_image(target, good, grid=grid)
    assert target.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "m.nii.gz"]


def test_a_series_missing_a_slice_is_refused_and_an_uneven_one_announced(tmp_path):
    vol = _volume((5, 16, 16), 3)
    # A damaged file in the middle: read as one even stack, the slices after it would be
    # misplaced and a table's slice numbers would point at other planes.
    _write_dicom_series(tmp_path / "cut", vol, (0.7, 0.7, 2.5), "1.2.3.20")
    damaged = tmp_path / "cut" / "slice002.dcm"
    damaged.write_bytes(damaged.read_bytes()[:300])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="slices are missing") as info:
            read_medical_image(tmp_path / "cut")
    assert "slice002.dcm could not be read" in str(info.value)
    assert "2.5 to 5 mm" in str(info.value)

    # Only two slices left of three: the header's slice spacing tells the gap.
    _write_dicom_series(tmp_path / "three", vol[:3], (0.7, 0.7, 2.5), "1.2.3.21")
    damaged = tmp_path / "three" / "slice001.dcm"
    damaged.write_bytes(damaged.read_bytes()[:300])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="slice001.dcm could not be read"):
            read_medical_image(tmp_path / "three")

    # A file missing from the folder (an export that dropped one) leaves a gap of two slice
    # intervals: refused too, naming where.
    _write_dicom_series(tmp_path / "dropped", vol, (0.7, 0.7, 2.5), "1.2.3.24")
    (tmp_path / "dropped" / "slice002.dcm").unlink()
    with pytest.raises(ValueError, match=r"slices are missing: 5 mm between the slices at 2.5 "
                                         r"and 7.5 mm, where the others are 2.5 mm apart"):
        read_medical_image(tmp_path / "dropped")

    # Scanned unevenly (no file lost): read, with a warning giving the grid it is read on.
    _write_dicom_series(tmp_path / "uneven", vol, (0.7, 0.7, 2.5), "1.2.3.22")
    moved = tmp_path / "uneven" / "slice004.dcm"
    image = sitk.ReadImage(str(moved))
    image.SetMetaData("0020|0032", "0\\0\\10.8")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(moved))
    writer.Execute(image)
    with pytest.warns(UserWarning, match=r"not evenly spaced \(slice gaps from 2.5 to 3.3 mm\); "
                                         r"the volume is read on an even grid of 2.7 mm, "
                                         r"which puts slices up to 0.6 mm from where"):
        read = read_medical_image(tmp_path / "uneven")
    assert read.array.shape == (5, 16, 16)
    assert read.scale[0] == pytest.approx(2.7)


def test_a_cut_dicom_file_is_called_truncated(tmp_path):
    _write_dicom_series(tmp_path / "s", _volume((1, 32, 32), 6), (1.0, 1.0, 1.0), "1.2.3.23")
    path = tmp_path / "s" / "slice000.dcm"
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_medical_image(path)
