"""Mistakes users make when handing data to the library and the CLI: each is read as meant or
refused with a message naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.core.pseudo_masks import pseudo_mask
from napari_recist_seg.core.recist import Recist
from napari_recist_seg.data.recist_files import read_recists
from napari_recist_seg.learning.inference import load_model, predict_detailed

HEADER = ("image,lesion_id,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,short_r1,"
          "short_c1")


@pytest.fixture(scope="module")
def whole_model(tmp_path_factory):
    """An untrained whole-image model (its output depends on its input only)."""
    import torch

    from napari_recist_seg.learning.checkpoints import save_checkpoint
    from napari_recist_seg.learning.models import build_model

    from ._learning_data import whole_preprocessing

    torch.manual_seed(0)
    model = build_model("prompted", in_channels=3, input_size=32)
    run = save_checkpoint(tmp_path_factory.mktemp("m") / "run", model,
                          {"preprocessing": whole_preprocessing(size=32), "grouping": None}, [])
    return load_model(run)


def _picture():
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, (48, 48, 3)).astype(np.uint8)
    image[14:34, 10:38] = 230
    return image, Recist([[24.0, 11.0], [24.0, 37.0]], [[15.0, 24.0], [33.0, 24.0]])


def test_an_8_bit_picture_given_as_floats_is_read_on_its_own_scale(whole_model):
    image, recist = _picture()
    as_bytes = predict_detailed(whole_model, image, [recist]).probability
    as_floats = predict_detailed(whole_model, image.astype(np.float32), [recist]).probability
    np.testing.assert_allclose(as_floats, as_bytes, atol=1e-5)
    in_unit = predict_detailed(whole_model, image / 255.0, [recist]).probability
    np.testing.assert_allclose(in_unit, as_bytes, atol=1e-5)


def test_images_and_recists_that_cannot_be_predicted_are_refused_by_name(whole_model):
    image, recist = _picture()
    bad = image.astype(np.float32)
    bad[3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite values"):
        predict_detailed(whole_model, bad, [recist])
    with pytest.raises(ValueError, match=r"image is empty \(shape \(0, 0, 3\)\)"):
        predict_detailed(whole_model, np.zeros((0, 0, 3), np.uint8), [recist])
    with pytest.raises(ValueError, match="got a single Recist"):
        predict_detailed(whole_model, image, recist)
    with pytest.raises(ValueError, match=r"recists\[0\] must be a Recist, got dict"):
        predict_detailed(whole_model, image, [recist.to_dict()])
    far = Recist([[175.0, 20.0], [230.0, 20.0]], [[200.0, 10.0], [200.0, 30.0]])
    with pytest.raises(ValueError, match=r"recists\[1\]: its endpoint \(row 175.0.*48 rows"):
        predict_detailed(whole_model, image, [recist, far])


def test_a_shape_given_as_the_image_itself_says_so():
    _, recist = _picture()
    with pytest.raises(ValueError, match=r"array of shape \(48, 48\); pass image.shape\[:2\]"):
        pseudo_mask(recist, np.zeros((48, 48)))


def test_csv_cells_lose_the_spaces_after_commas(tmp_path):
    row = " a.png, 1, 10, 10, 10, 30, 5, 20, 15, 20, P1"
    (tmp_path / "t.csv").write_text(f"{HEADER},patient\n{row}\n")
    table = read_recists(tmp_path / "t.csv")
    assert table.images == ["a.png"] and table.features["patient"] == ["P1"]


@pytest.mark.parametrize("header, hint", [
    (HEADER.replace(",", ";"), "separated by semicolons"),
    (HEADER.replace(",", "\t"), "separated by tabs"),
    (HEADER.upper(), "column names are lower case"),
])
def test_a_header_of_another_separator_or_case_is_explained(tmp_path, header, hint):
    (tmp_path / "t.csv").write_text(header + "\n")
    with pytest.raises(ValueError, match=f"missing required column.*{hint}"):
        read_recists(tmp_path / "t.csv")


def test_groups_refuses_a_table_with_lengths_in_mm_and_px(tmp_path, capsys):
    from napari_recist_seg.cli import main

    rows = [f"a{i}.png,1,10,10,10,{30 + i},5,20,15,20,{'0.7,0.7' if i % 2 else ','}"
            for i in range(6)]
    (tmp_path / "m.csv").write_text(f"{HEADER},spacing_row,spacing_col\n" + "\n".join(rows))
    assert main(["groups", str(tmp_path / "m.csv"), "--out", str(tmp_path / "g.csv"),
                 "--k", "2"]) == 2
    assert "3 lesion(s) have a pixel size (lengths in mm) and 3 do not" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()


def test_a_grey_picture_that_is_not_8_bit_is_refused_with_the_way_out(whole_model):
    image, recist = _picture()
    grey = image[..., 0]
    assert predict_detailed(whole_model, grey, [recist]).mask.shape == grey.shape
    with pytest.raises(ValueError, match="3-channel images.*convert it to uint8"):
        predict_detailed(whole_model, grey.astype(np.uint16) * 256, [recist])
