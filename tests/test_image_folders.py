"""Image/mask folder pairing (ISIC, side by side, PH2) and mask loading."""

from __future__ import annotations

import warnings

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from napari_recist_seg.data.image_folders import (
    ImageMaskPair,
    load_pair,
    read_image_mask_folder,
    simulate_recists,
)


def _image(h=20, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _mask(h=20, w=24, box=(4, 3, 12, 19)):
    m = np.zeros((h, w), np.uint8)
    r0, c0, r1, c1 = box
    m[r0:r1, c0:c1] = 255
    return m


def test_isic_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        iio.imwrite(tmp_path / "images" / f"ISIC_000000{i}.jpg", _image(seed=i))
        iio.imwrite(tmp_path / "masks" / f"ISIC_000000{i}_segmentation.png", _mask())
    # ISIC 2017 superpixel maps sit among the images and are neither.
    iio.imwrite(tmp_path / "images" / "ISIC_0000000_superpixels.png", _image())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = read_image_mask_folder(tmp_path)
    assert [p.name for p in pairs] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert pairs[0] == ImageMaskPair(
        tmp_path / "images" / "ISIC_0000000.jpg",
        tmp_path / "masks" / "ISIC_0000000_segmentation.png",
        "ISIC_0000000",
    )
    image, mask = load_pair(pairs[0])
    assert image.dtype == np.uint8 and image.shape == (20, 24, 3)
    assert mask.dtype == bool and mask.sum() == 8 * 16


def test_side_by_side_names_and_unpaired_warning(tmp_path):
    iio.imwrite(tmp_path / "a.png", _image())
    iio.imwrite(tmp_path / "a_Segmentation.png", _mask())
    iio.imwrite(tmp_path / "b.bmp", _image())
    iio.imwrite(tmp_path / "b_lesion.bmp", _mask())
    iio.imwrite(tmp_path / "c.jpg", _image())
    iio.imwrite(tmp_path / "c_mask.png", _mask())
    iio.imwrite(tmp_path / "lonely.jpg", _image())
    iio.imwrite(tmp_path / "orphan_segmentation.png", _mask())
    with pytest.warns(UserWarning, match=r"2 file\(s\).*lonely.jpg.*orphan_segmentation.png"):
        pairs = read_image_mask_folder(tmp_path)
    assert [(p.name, p.mask_path.name) for p in pairs] == [
        ("a", "a_Segmentation.png"),
        ("b", "b_lesion.bmp"),
        ("c", "c_mask.png"),
    ]


def test_masks_folder_with_same_names(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "GroundTruth").mkdir()
    iio.imwrite(tmp_path / "images" / "x1.png", _image())
    iio.imwrite(tmp_path / "GroundTruth" / "x1.png", _mask())
    (pair,) = read_image_mask_folder(tmp_path)
    assert pair.mask_path == tmp_path / "GroundTruth" / "x1.png"


def test_ph2_layout(tmp_path):
    for name in ("IMD002", "IMD003"):
        case = tmp_path / "PH2 Dataset images" / name
        (case / f"{name}_Dermoscopic_Image").mkdir(parents=True)
        (case / f"{name}_lesion").mkdir()
        (case / f"{name}_roi").mkdir()
        iio.imwrite(case / f"{name}_Dermoscopic_Image" / f"{name}.bmp", _image())
        iio.imwrite(case / f"{name}_lesion" / f"{name}_lesion.bmp", _mask())
        iio.imwrite(case / f"{name}_roi" / f"{name}_R1_Label4.bmp", _mask())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = read_image_mask_folder(tmp_path)
    assert [p.name for p in pairs] == ["IMD002", "IMD003"]
    image, mask = load_pair(pairs[1])
    assert mask.sum() == 8 * 16


def test_mask_encodings(tmp_path):
    # 1-bit PNG (reads as bool), 0/1 labels and 0/255: nonzero is lesion in each.
    m = _mask() > 0
    Image.fromarray(m).convert("1").save(tmp_path / "one_segmentation.png")
    iio.imwrite(tmp_path / "two_segmentation.png", m.astype(np.uint8))
    iio.imwrite(tmp_path / "three_segmentation.png", m.astype(np.uint8) * 255)
    rgba = np.zeros(m.shape + (4,), np.uint8)
    rgba[m, 0] = 255
    rgba[..., 3] = 255  # opaque everywhere: alpha must not count as lesion
    iio.imwrite(tmp_path / "four_segmentation.png", rgba)
    for name in ("one", "two", "three", "four"):
        iio.imwrite(tmp_path / f"{name}.png", _image()[..., 0])
    pairs = read_image_mask_folder(tmp_path)
    assert len(pairs) == 4
    for pair in pairs:
        image, mask = load_pair(pair)
        assert image.shape == (20, 24) and image.dtype == np.uint8
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, m, err_msg=pair.name)


def test_rgba_image_and_16bit_image(tmp_path):
    rgba = np.dstack([_image(), np.full((20, 24), 255, np.uint8)])
    iio.imwrite(tmp_path / "p.png", rgba)
    iio.imwrite(tmp_path / "p_mask.png", _mask())
    iio.imwrite(tmp_path / "q.png", np.full((20, 24), 65535, np.uint16))
    iio.imwrite(tmp_path / "q_mask.png", _mask())
    p, q = read_image_mask_folder(tmp_path)
    image, _ = load_pair(p)
    np.testing.assert_array_equal(image, rgba[..., :3])
    image, _ = load_pair(q)
    assert image.dtype == np.uint8 and image.max() == 255


def test_size_mismatch_names_both_files(tmp_path):
    iio.imwrite(tmp_path / "a.png", _image(20, 24))
    iio.imwrite(tmp_path / "a_segmentation.png", _mask(10, 12, (1, 1, 5, 5)))
    (pair,) = read_image_mask_folder(tmp_path)
    with pytest.raises(ValueError, match=r"a_segmentation\.png.*10x12.*a\.png.*20x24"):
        load_pair(pair)


def test_empty_and_unpaired_folders(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        read_image_mask_folder(tmp_path)
    iio.imwrite(tmp_path / "a.png", _image())
    with pytest.raises(ValueError, match="no image/mask pairs"):
        read_image_mask_folder(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        read_image_mask_folder(tmp_path / "a.png")


def test_duplicate_names_refused(tmp_path):
    iio.imwrite(tmp_path / "a.png", _image())
    iio.imwrite(tmp_path / "a.jpg", _image())
    iio.imwrite(tmp_path / "a_mask.png", _mask())
    with pytest.raises(ValueError, match="two images named 'a'"):
        read_image_mask_folder(tmp_path)


def test_corrupt_image(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    iio.imwrite(tmp_path / "a_mask.png", _mask())
    (pair,) = read_image_mask_folder(tmp_path)
    with pytest.raises(ValueError, match=r"a\.png: cannot read image"):
        load_pair(pair)


def test_simulate_recists(tmp_path):
    iio.imwrite(tmp_path / "a.png", _image())
    iio.imwrite(tmp_path / "a_mask.png", _mask(box=(4, 3, 12, 19)))
    iio.imwrite(tmp_path / "b.png", _image())
    iio.imwrite(tmp_path / "b_mask.png", np.zeros((20, 24), np.uint8))
    a, b = read_image_mask_folder(tmp_path)
    (recist,) = simulate_recists([a], spacing=(0.5, 0.5))
    # An 8 x 16 pixel rectangle: the long axis is its diagonal, spacing carried through.
    assert recist.long_length == pytest.approx(np.hypot(7, 15))
    assert recist.spacing == (0.5, 0.5)
    with pytest.raises(ValueError, match=r"b_mask\.png.*empty"):
        simulate_recists([a, b])


def test_a_mask_drawn_on_an_exif_turned_picture_is_refused_naming_the_tag(tmp_path):
    # Stored 20 rows x 24 columns with the EXIF tag "rotate 90 degrees": viewers show it
    # 24 x 20, and the mask was drawn on what they show.
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_image()).save(tmp_path / "images" / "ISIC_0000001.jpg", exif=exif)
    Image.fromarray(_mask(24, 20, (3, 4, 19, 12))).save(
        tmp_path / "masks" / "ISIC_0000001_segmentation.png")
    pair = ImageMaskPair(tmp_path / "images" / "ISIC_0000001.jpg",
                         tmp_path / "masks" / "ISIC_0000001_segmentation.png", "ISIC_0000001")
    with pytest.raises(ValueError, match=r"is 24x20 but image .* is 20x24 \(rows x columns\): "
                                         r"the image's EXIF orientation tag \(6\) has viewers "
                                         r"show it turned"):
        load_pair(pair)
    # Without the tag, only the sizes are named.
    Image.fromarray(_image()).save(tmp_path / "images" / "ISIC_0000001.jpg")
    with pytest.raises(ValueError, match=r"is 20x24 \(rows x columns\)$"):
        load_pair(pair)
