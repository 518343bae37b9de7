"""Training and prediction from RECIST tables alone: DeepLesion's DL_info.csv and RECIST files
naming 2D images or volumes. No mask is read on these paths."""

from __future__ import annotations

import csv
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_recist_seg.cli import main
from napari_recist_seg.data.crops import crop_transform_for
from napari_recist_seg.data.recist_sources import read_lesion_table
from napari_recist_seg.learning.inference import LESION_COLUMNS, predict_table
from napari_recist_seg.learning.preparation import (
    prepare_from_table,
    split_table,
)

from ._learning_data import crop_preprocessing, quick
from ._recist_table_data import (
    DL_SLICES,
    disc_slice,
    recist_csv,
    write_deeplesion,
    write_nifti,
    write_png_folder,
)

TINY = ["--size", "32", "--epochs", "1", "--batch", "2", "--k", "2", "--crop", "40"]


@pytest.fixture(autouse=True)
def one_thread():
    with quick():
        yield


def _dl_names(slices=DL_SLICES):
    return {f"{p:06d}_01_01_{key:03d}.png" for p, key, *_ in slices}


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- DeepLesion end to end ----------------------------------------------------------------------
def test_deeplesion_trains_and_predicts_masks_named_by_file_name(tmp_path, capsys):
    table = write_deeplesion(tmp_path / "dl")
    runs = tmp_path / "runs"
    assert main(["train", str(table), "--out", str(runs), *TINY]) == 0
    said = capsys.readouterr().out
    # 5 rows of split 1, 1 of split 2; the split-3 row is never trained on.
    assert "5 training and 1 validation lesions" in said and "1 test rows not used" in said
    assert "3 input channels" in said

    out = tmp_path / "masks"
    assert main(["predict", str(table), "--model", str(runs / "multitask"),
                 "--out", str(out)]) == 0
    masks = {p.name for p in out.glob("*.png")}
    assert masks == _dl_names()
    for name in masks:
        mask = iio.imread(out / name)
        assert mask.dtype == np.uint8 and mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255}
    rows = _rows(out / "lesions.csv")
    assert tuple(rows[0]) == LESION_COLUMNS
    assert len(rows) == sum(len(s[3]) for s in DL_SLICES)
    assert [r["image"] for r in rows] == [f"{p:06d}_01_01_{k:03d}.png"
                                          for p, k, _, les, _ in DL_SLICES for _ in les]
    assert all(r["group"] in ("0", "1") for r in rows)
    assert [int(r["lesion"]) for r in rows] == list(range(len(rows)))

    # Existing masks are kept unless --overwrite.
    before = (out / "lesions.csv").read_bytes()
    (out / "lesions.csv").write_text("mine")
    assert main(["predict", str(table), "--model", str(runs / "multitask"),
                 "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "lesions.csv").read_text() == "mine"
    assert main(["predict", str(table), "--model", str(runs / "multitask"),
                 "--out", str(out), "--overwrite"]) == 0
    assert (out / "lesions.csv").read_bytes() == before

    # One key slice's picture alone has no neighbours for the model's other channels: the
    # command says which input to give instead.
    slice_png = next((tmp_path / "dl" / "Images_png").rglob("*.png"))
    assert main(["predict", str(slice_png), "--model", str(runs / "multitask"),
                 "--out", str(tmp_path / "one")]) == 2
    said = capsys.readouterr().err
    assert "neighbouring slice(s)" in said and "predict a lesion table" in said
    assert not (tmp_path / "one").exists()

    # --split 3: only the test rows.
    test_out = tmp_path / "test-masks"
    assert main(["predict", str(table), "--model", str(runs / "multitask"),
                 "--out", str(test_out), "--split", "3"]) == 0
    assert {p.name for p in test_out.glob("*.png")} == {"000005_01_01_007.png"}
    assert [r["image"] for r in _rows(test_out / "lesions.csv")] == ["000005_01_01_007.png"]


def test_deeplesion_images_elsewhere_with_images_option(tmp_path):
    table = write_deeplesion(tmp_path / "dl")
    moved = tmp_path / "slices"
    shutil.move(str(tmp_path / "dl" / "Images_png"), str(moved))
    with pytest.raises(ValueError, match=r"DL_info.csv: row 1 \(000001_01_01_010.png\): "
                                         r"image not found"):
        read_lesion_table(table)
    assert len(read_lesion_table(table, moved)) == 7


def test_deeplesion_channels_are_the_neighbouring_files(tmp_path):
    table = read_lesion_table(write_deeplesion(tmp_path / "dl"))
    centre = {s.paths[1]: s for s in table.stacks}
    # Patient 1: 009 and 011 exist; their discs are 200 HU brighter than the key slice's.
    first = table.stacks[table.rows[0].stack].read()
    assert first.shape == (3, 64, 64) and first.dtype == np.float32
    assert first[:, 20, 20].tolist() == [260.0, 60.0, 260.0]
    assert first[1, 0, 0] == -100.0
    # Patient 2: only 032 beside 031, so channel 0 repeats the key slice.
    second = table.stacks[table.rows[2].stack]
    assert [p[-7:] for p in second.paths] == ["031.png", "031.png", "032.png"]
    assert second.read()[:, 30, 30].tolist() == [60.0, 60.0, 260.0]
    # Patient 3: a lone key slice in every channel.
    third = table.stacks[table.rows[3].stack]
    assert len(set(third.paths)) == 1 and len(centre) == 5


def test_deeplesion_splits_follow_train_val_test(tmp_path):
    data = prepare_from_table(write_deeplesion(tmp_path / "dl"), size=32, k=2, crop_px=40)
    splits = [r.split for r in data.table.rows]
    assert [splits[i] for i in data.train_indices] == ["train"] * 5
    assert [splits[i] for i in data.val_indices] == ["val"]
    test_rows = {i for i, s in enumerate(splits) if s == "test"}
    assert test_rows and not test_rows & (set(data.train_indices) | set(data.val_indices))
    assert len(data.train_set) == 5 and len(data.val_set) == 1
    # Streamed: the datasets hold packed masks (pseudo and the empty true ones), no image.
    assert data.train_set.nbytes == 2 * 5 * 32 * 32 // 8
    # The groups were fitted once, on the training rows, and label every lesion.
    assert set(data.train_set.groups.tolist()) <= {0, 1}
    assert data.grouping.k == 2


def test_deeplesion_without_validation_rows_splits_by_patient(tmp_path):
    slices = [(p, k, n, les, 1) for p, k, n, les, _ in DL_SLICES]
    table = read_lesion_table(write_deeplesion(tmp_path / "dl", slices))
    for seed in range(5):
        train, val = split_table(table, 0.3, seed)
        tp = {table.rows[i].patient for i in train}
        vp = {table.rows[i].patient for i in val}
        assert tp and vp and not tp & vp
        assert sorted([*train, *val]) == list(range(len(table)))


# -- RECIST files ---------------------------------------------------------------------------------
def test_recist_csv_over_grey_and_colour_pngs_trains_and_predicts(tmp_path, capsys):
    rows = write_png_folder(tmp_path / "data" / "imgs")
    table = recist_csv(tmp_path / "data" / "lesions.csv",
                       [("imgs/" + name, s, les) for name, s, les in rows])
    runs = tmp_path / "runs"
    assert main(["train", str(table), "--out", str(runs), "--models", "a1", *TINY]) == 0
    assert "3 input channels" in capsys.readouterr().out  # grey joins colour as colour
    out = tmp_path / "masks"
    assert main(["predict", str(table), "--model", str(runs / "a1"), "--out", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} == {f"case{i}_mask.png" for i in range(6)}
    lesions = _rows(out / "lesions.csv")
    assert [r["image"] for r in lesions] == [f"imgs/case{i}.png" for i in range(6)]
    # No spacing in the file and none in a PNG: lengths in px only.
    assert all(r["area_mm2"] == "" and r["area_px"] != "" for r in lesions)
    assert all(r["group"] == "" for r in lesions)


def test_a_table_mixing_mm_and_px_is_refused_for_groups_only(tmp_path, capsys):
    from napari_recist_seg.learning.preparation import prepare_table_for_kinds

    rows = write_png_folder(tmp_path / "imgs", n=6, colour_every=0)
    table = recist_csv(tmp_path / "lesions.csv", [("imgs/" + n, s, les) for n, s, les in rows])
    lines = table.read_text().splitlines()
    for i in (2, 3, 5, 6):  # lesions 0, 1, 3 and 4 are given a pixel size
        assert lines[i].endswith(",,")
        lines[i] = lines[i][:-2] + ",0.7,0.7"
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"4 lesion\(s\) have a pixel size .* 2 do not "
                                         r"\(lengths in px; rows 3, 6\).*RECIST groups"):
        prepare_table_for_kinds(table, ["a1", "multitask"], size=32, crop_px=48)
    assert main(["train", str(table), "--out", str(tmp_path / "runs"), "--models",
                 "multitask", *TINY]) == 2
    assert "rows 3, 6" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    # Without a group head the lengths are never compared.
    prepared = prepare_table_for_kinds(table, ["a1"], size=32, crop_px=48)
    assert len(prepared["a1"].train_set) + len(prepared["a1"].val_set) == 6


def test_recist_csv_over_grey_pngs_gives_one_channel(tmp_path):
    rows = write_png_folder(tmp_path / "imgs", n=4, colour_every=0)
    table = read_lesion_table(recist_csv(tmp_path / "lesions.csv",
                                         [("imgs/" + n, s, les) for n, s, les in rows]))
    assert table.in_channels == 1
    assert table.stacks[0].read().shape == (1, 64, 64)


def test_recist_csv_over_a_nifti_volume_trains_and_predicts(tmp_path, capsys):
    vol = tmp_path / "ct"
    vol.mkdir()
    lesions = {1: [(20, 20, 7)], 4: [(40, 30, 8)], 7: [(30, 30, 9)]}
    write_nifti(vol / "a.nii.gz", lesions_by_slice=lesions)
    write_nifti(vol / "b.nii.gz", lesions_by_slice={3: [(25, 25, 7)], 5: [(35, 35, 6)]})
    table = recist_csv(vol / "lesions.csv", [
        ("a.nii.gz", 1, (20, 20, 7)), ("a.nii.gz", 4, (40, 30, 8)), ("a.nii.gz", 7, (30, 30, 9)),
        ("b.nii.gz", 3, (25, 25, 7)), ("b.nii.gz", 5, (35, 35, 6))])
    runs = tmp_path / "runs"
    assert main(["train", str(table), "--out", str(runs), "--models", "a1", *TINY]) == 0
    out = tmp_path / "masks"
    assert main(["predict", str(table), "--model", str(runs / "a1"), "--out", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} == {
        "a_slice1_mask.png", "a_slice4_mask.png", "a_slice7_mask.png", "b_slice3_mask.png",
        "b_slice5_mask.png"}
    rows = _rows(out / "lesions.csv")
    assert [r["slice"] for r in rows] == ["1", "4", "7", "3", "5"]
    # The volume gives the pixel size the file leaves out: areas in mm2.
    assert all(r["area_mm2"] != "" for r in rows)


def test_volume_channels_are_the_slices_nearest_two_mm_away(tmp_path):
    write_nifti(tmp_path / "v.nii.gz", n_slices=12, spacing=(0.7, 0.7, 0.5),
                lesions_by_slice={6: [(30, 30, 8)]})
    path = recist_csv(tmp_path / "l.csv", [("v.nii.gz", 6, (30, 30, 8)),
                                           ("v.nii.gz", 1, (30, 30, 8))])
    table = read_lesion_table(path)
    assert table.stacks[0].planes == (2, 6, 10)  # 2 mm at 0.5 mm a slice: 4 slices
    assert table.stacks[1].planes == (0, 1, 5)  # clamped at the volume's start
    stack = table.stacks[0].read()
    # Slice z has its background raised by 10 z HU; the disc is on slice 6 only.
    assert stack[:, 0, 0].tolist() == [-100.0, -100.0, -100.0]
    assert stack[:, 30, 30].tolist() == [-100.0, 120.0, -100.0]
    assert table.rows[0].recist.spacing == pytest.approx((0.7, 0.7))
    assert table.in_channels == 3


def test_split_by_image_or_patient_never_shares_one(tmp_path):
    rows = write_png_folder(tmp_path / "imgs", n=8, colour_every=0)
    # Two lesions on every image; patients own two images each.
    table_rows = [("imgs/" + n, s, les, f"p{i // 2}") for i, (n, s, les) in enumerate(rows)]
    table_rows += [("imgs/" + n, s, (les[0] - 10, les[1], 4), f"p{i // 2}")
                   for i, (n, s, les) in enumerate(rows)]
    by_image = read_lesion_table(recist_csv(tmp_path / "a.csv",
                                            [r[:3] for r in table_rows]))
    by_patient = read_lesion_table(recist_csv(tmp_path / "b.csv", table_rows,
                                              extra_columns=("patient",)))
    for seed in range(6):
        train, val = split_table(by_image, 0.3, seed)
        assert not ({by_image.rows[i].image for i in train}
                    & {by_image.rows[i].image for i in val})
        assert len(train) + len(val) == 16 and len(val) >= 2
        train, val = split_table(by_patient, 0.3, seed)
        tp = {by_patient.rows[i].patient for i in train}
        vp = {by_patient.rows[i].patient for i in val}
        assert tp and vp and not tp & vp
        assert not ({by_patient.rows[i].image for i in train}
                    & {by_patient.rows[i].image for i in val})


# -- errors ---------------------------------------------------------------------------------------
def test_missing_image_is_named_with_file_and_row(tmp_path, capsys):
    rows = write_png_folder(tmp_path / "imgs", n=4)
    table = recist_csv(tmp_path / "l.csv", [("imgs/" + n, s, les) for n, s, les in rows])
    (tmp_path / "imgs" / "case2.png").unlink()
    assert main(["train", str(table), "--out", str(tmp_path / "runs"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "l.csv: row 3 (lesion 2): image 'imgs/case2.png' not found" in err
    assert not (tmp_path / "runs" / "multitask" / "best").exists()


def test_missing_deeplesion_slice_is_named(tmp_path):
    table = write_deeplesion(tmp_path / "dl")
    (tmp_path / "dl" / "Images_png" / "000003_01_01" / "005.png").unlink()
    with pytest.raises(ValueError, match=r"DL_info.csv: row 4 \(000003_01_01_005.png\): image "
                                         r"not found .* \(1 more rows"):
        prepare_from_table(table, size=32)


def test_missing_image_column_is_named(tmp_path):
    write_png_folder(tmp_path / "imgs", n=3)
    path = tmp_path / "l.csv"
    path.write_text("lesion_id,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,short_r1,"
                    "short_c1\n0,20,10,20,30,14,20,26,20\n")
    with pytest.raises(ValueError, match=r"l.csv: column image is missing or empty"):
        read_lesion_table(path)
    # A table saved from napari's RECIST layer has the column, with nothing in it.
    path.write_text("lesion_id,image,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,"
                    "short_r1,short_c1\n0,,20,10,20,30,14,20,26,20\n")
    with pytest.raises(ValueError, match=r"l.csv: column image is missing or empty"):
        read_lesion_table(path)


def test_missing_deeplesion_column_is_named(tmp_path):
    table = write_deeplesion(tmp_path / "dl")
    lines = table.read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("Train_Val_Test")
    table.write_text("\n".join(",".join(line.split(",")[:drop]) if i == 0 else
                               line.rsplit(",", 1)[0] for i, line in enumerate(lines)) + "\n")
    with pytest.raises(ValueError, match=r"DL_info.csv: .*missing column\(s\): Train_Val_Test"):
        read_lesion_table(table)


def test_volume_row_without_slice_and_slice_outside(tmp_path):
    write_nifti(tmp_path / "v.nii.gz", n_slices=5)
    write_png_folder(tmp_path, n=1)
    no_slice = recist_csv(tmp_path / "a.csv", [("v.nii.gz", None, (30, 30, 8))])
    with pytest.raises(ValueError, match=r"a.csv: row 1 \(lesion 0\): image 'v.nii.gz' is a "
                                         r"volume of 5 slices but the row has no slice"):
        read_lesion_table(no_slice)
    outside = recist_csv(tmp_path / "b.csv", [("v.nii.gz", 5, (30, 30, 8))])
    with pytest.raises(ValueError, match=r"b.csv: row 1 \(lesion 0\): slice 5 is outside"):
        read_lesion_table(outside)


def test_a_time_series_row_is_refused_as_such(tmp_path):
    import SimpleITK as sitk

    frames = [sitk.GetImageFromArray(np.zeros((4, 32, 32), np.int16)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "t.nii.gz"))
    path = recist_csv(tmp_path / "l.csv", [("t.nii.gz", 2, (16, 16, 5))])
    with pytest.raises(ValueError, match=r"row 1.*t.nii.gz is a 4D image \(32 x 32 x 4 x 2 "
                                         r"voxels\); RECIST rows need a 2D slice or a 3D"):
        read_lesion_table(path)


def test_rows_naming_one_scan_in_two_spellings_share_it(tmp_path):
    write_nifti(tmp_path / "v.nii.gz", lesions_by_slice={4: [(20, 20, 6), (40, 40, 6)]})
    path = recist_csv(tmp_path / "l.csv", [("v.nii.gz", 4, (20, 20, 6)),
                                           ("./v.nii.gz", 4, (40, 40, 6)),
                                           (".//v.nii.gz", 2, (30, 30, 6))])
    table = read_lesion_table(path)
    assert [r.image for r in table.rows] == ["v.nii.gz"] * 3
    assert table.rows[0].stack == table.rows[1].stack != table.rows[2].stack
    assert [r.mask_name for r in table.rows] == ["v_slice4_mask.png", "v_slice4_mask.png",
                                                 "v_slice2_mask.png"]


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "a/../../x.png"])
def test_image_names_never_leave_the_folder(tmp_path, name):
    (tmp_path / "data").mkdir()
    iio.imwrite(tmp_path / "outside.png", np.zeros((8, 8), np.uint8))
    path = recist_csv(tmp_path / "data" / "l.csv", [(name, None, (30, 30, 8))])
    with pytest.raises(ValueError, match=r"row 1 \(lesion 0\): image .* inside .* --images"):
        read_lesion_table(path)


def test_bad_window_is_refused_before_reading(tmp_path):
    table = write_deeplesion(tmp_path / "dl")
    with pytest.raises(ValueError, match="window"):
        prepare_from_table(table, size=32, window="brain-ish")
    data = prepare_from_table(table, size=32, window="soft-tissue", crop_px=40)
    assert data.preprocessing["source"]["window"] == [-160.0, 240.0]


# -- prediction measurements ----------------------------------------------------------------------
class _Threshold(torch.nn.Module):
    """A stand-in model: lesion wherever the key slice (the middle channel) is bright."""

    kind = "multitask"

    def __init__(self, preprocessing):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = {"in_channels": 3}
        self.preprocessing = preprocessing

    def forward(self, x):
        # Soft-tissue-like window -175..275 HU: the disc (60 HU) is at 0.52, background 0.17.
        logits = (x[:, 1:2] - 0.35) * 60.0
        groups = torch.stack([torch.zeros(len(x)), torch.ones(len(x))], dim=1)
        return logits, groups


def test_predicted_masks_and_measurements_in_mm(tmp_path):
    table = write_deeplesion(tmp_path / "dl", spacing=0.8)
    pre = crop_preprocessing(size=32, channel_axis=0, field_of_view_px=40.0,
                             source={"kind": "deeplesion", "neighbours": 1, "colour": False,
                                     "window": None, "slice_gap_mm": 2.0})
    result = predict_table(_Threshold(pre), table, tmp_path / "out")
    assert {p.name for p in result.masks} == _dl_names()
    k = 0
    for patient, key, _, lesions, _ in DL_SLICES:
        mask = iio.imread(tmp_path / "out" / f"{patient:06d}_01_01_{key:03d}.png") > 0
        truth = disc_slice(lesions) > 0
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert dice > 0.9
        for *_, rad in lesions:
            row = result.lesions[k]
            assert row["area_mm2"] == pytest.approx(np.pi * rad ** 2 * 0.64, rel=0.2)
            assert row["long_mm"] == pytest.approx(2 * rad * 0.8, rel=0.2)
            assert row["short_mm"] <= row["long_mm"]
            assert row["group"] == 1
            k += 1


#: Discs (row, col, radius) by slice of the scan ``_oblique_scan_table`` writes.
_SCAN_LESIONS = {1: [(20, 20, 7)], 4: [(40, 30, 8), (15, 45, 6)]}


def _oblique_scan_table(folder):
    """``a.nii.gz`` with an origin and axes of the scanner's own (as a clinical NIfTI has) and
    ``lesions.csv`` measuring its discs; returns the SimpleITK image and the table's path."""
    import SimpleITK as sitk

    write_nifti(folder / "a.nii.gz", lesions_by_slice=_SCAN_LESIONS)
    scan = sitk.ReadImage(str(folder / "a.nii.gz"))
    scan.SetOrigin((-50.0, 20.0, 7.5))
    scan.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(scan, str(folder / "a.nii.gz"))
    rows = [("a.nii.gz", z, les) for z, discs in _SCAN_LESIONS.items() for les in discs]
    return scan, recist_csv(folder / "lesions.csv", rows)


def test_predicting_a_volume_table_writes_its_lesions_on_the_volume_grid(tmp_path):
    """Besides a PNG per key slice, each volume gets a label image that radiology viewers
    overlay on the scan: its own size, spacing, origin and axes, each lesion's voxels holding
    its row."""
    import SimpleITK as sitk

    vol = tmp_path / "ct"
    vol.mkdir()
    lesions = _SCAN_LESIONS
    scan, table = _oblique_scan_table(vol)
    pre = crop_preprocessing(size=32, channel_axis=0, field_of_view_px=40.0,
                             source={"kind": "volume", "neighbours": 1, "colour": False,
                                     "window": None, "slice_gap_mm": 2.0})
    result = predict_table(_Threshold(pre), table, tmp_path / "out")
    assert result.label_images == [tmp_path / "out" / "a_labels.nii.gz"]
    back = sitk.ReadImage(str(result.label_images[0]))
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(scan, getter)(), atol=1e-6)
    labels = sitk.GetArrayFromImage(back)
    rows = _rows(tmp_path / "out" / "lesions.csv")
    assert [int(r["row"]) for r in rows] == [1, 2, 3]
    placed = [(z, les) for z in lesions for les in lesions[z]]
    for r, (key, (row, col, rad)) in zip(rows, placed):
        truth = disc_slice([(row, col, rad)]) > 0
        mine = labels[key] == int(r["row"])
        assert 2 * (mine & truth).sum() / (mine.sum() + truth.sum()) > 0.8
    for z in lesions:  # the same masks as the slices' PNGs
        png = iio.imread(tmp_path / "out" / f"a_slice{z}_mask.png") > 0
        np.testing.assert_array_equal(labels[z] > 0, png)
    assert not labels[[0, 2, 3, 5, 6, 7, 8]].any()
    # Written once, the label image is not replaced without being asked.
    for written in [*result.masks, result.lesions_csv]:
        written.unlink()
    with pytest.raises(ValueError, match="a_labels.nii.gz already exists"):
        predict_table(_Threshold(pre), table, tmp_path / "out")


def test_pseudo_masks_of_a_scan_table_lie_on_the_scan_grid(tmp_path, capsys):
    import SimpleITK as sitk

    from napari_recist_seg.core.pseudo_masks import pseudo_mask

    scan, table = _oblique_scan_table(tmp_path)
    out = tmp_path / "pm"
    assert main(["pseudo-masks", str(table), "--out", str(out),
                 "--method", "quarter_ellipse"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_quarter_ellipse.nii.gz", "recists.csv"]
    back = sitk.ReadImage(str(out / "a_quarter_ellipse.nii.gz"))
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(scan, getter)(), atol=1e-6)
    labels = sitk.GetArrayFromImage(back)
    recists = read_lesion_table(table).rows
    for number, row in enumerate(recists, start=1):
        drawn = pseudo_mask(row.recist, labels.shape[1:], "quarter_ellipse")
        np.testing.assert_array_equal(labels[row.slice] == number, drawn)
    assert not labels[[0, 2, 3, 5, 6, 7, 8]].any()
    # A lesion without its slice is refused before anything is written.
    no_slice = recist_csv(tmp_path / "b.csv", [("a.nii.gz", None, (20, 20, 7))])
    capsys.readouterr()
    assert main(["pseudo-masks", str(no_slice), "--out", str(tmp_path / "pm2")]) == 2
    assert ("row 1 (lesion 0): image 'a.nii.gz' is a volume of 9 slices but the row has no "
            "slice" in " ".join(capsys.readouterr().err.split()))
    assert not (tmp_path / "pm2").exists()


def test_a_scan_given_as_an_image_is_sent_to_the_table_path(tmp_path, capsys):
    from ._learning_data import saved_model

    write_nifti(tmp_path / "ct.nii.gz", lesions_by_slice={2: [(20, 20, 7)]})
    recists = recist_csv(tmp_path / "lesions.csv", [("ct.nii.gz", 2, (20, 20, 7))])
    model = saved_model(tmp_path / "model", "a1", in_channels=1,
                        preprocessing=crop_preprocessing(window=(-175.0, 275.0)))
    code = main(["predict", str(tmp_path / "ct.nii.gz"), "--model", str(model),
                 "--recists", str(recists), "--out", str(tmp_path / "out")])
    assert code == 2
    # The command to run instead: the table beside the scan reads it without --images.
    said = " ".join(capsys.readouterr().err.split())
    assert (f"ct.nii.gz: a scan (NIfTI, MHA, NRRD or DICOM) is predicted through a RECIST "
            f"table naming it and each lesion's slice: recist-seg predict {recists} --model "
            f"{model} --out {tmp_path / 'out'}, which writes" in said)
    assert not (tmp_path / "out").exists()
    # A folder of scans gets the command that predicts them with the table given.
    scans = tmp_path / "scans"
    scans.mkdir()
    (tmp_path / "ct.nii.gz").rename(scans / "ct.nii.gz")
    code = main(["predict", str(scans), "--model", str(model), "--recists", str(recists),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert (f"scans: a scan (NIfTI, MHA, NRRD or DICOM) is predicted through a RECIST table "
            f"naming it and each lesion's slice: recist-seg predict {recists} --images {scans} "
            f"--model {model} --out {tmp_path / 'out'}, which writes"
            in " ".join(capsys.readouterr().err.split()))
    assert main(["predict", str(recists), "--images", str(scans), "--model", str(model),
                 "--out", str(tmp_path / "out")]) == 0


def test_field_of_view_px_is_widened_for_long_lesions(tmp_path):
    table = read_lesion_table(write_deeplesion(tmp_path / "dl"))
    small, big = table.rows[0].recist, table.rows[5].recist  # long axes 14 and 20 px
    assert crop_transform_for(small, 32, 0.5, field_of_view_px=40).side == 40
    assert crop_transform_for(big, 32, 1.0, field_of_view_px=40).side == pytest.approx(60)
    with pytest.raises(ValueError, match="not both"):
        crop_transform_for(small, 32, field_of_view_mm=10, field_of_view_px=40)


# -- evaluate -------------------------------------------------------------------------------------
def test_evaluate_pairs_masks_of_the_same_name_in_subfolders(tmp_path, capsys):
    pred, truth = tmp_path / "pred", tmp_path / "truth" / "a" / "b"
    pred.mkdir()
    truth.mkdir(parents=True)
    for i, (_, _, _, lesions, _) in enumerate(DL_SLICES):
        m = ((disc_slice(lesions) > 0) * 255).astype(np.uint8)
        iio.imwrite(pred / f"00000{i}_01_01_001.png", m)
        iio.imwrite(truth / f"00000{i}_01_01_001.png", m if i else np.zeros_like(m))
    (pred / "lesions.csv").write_text("image\n")
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(tmp_path / "truth"),
                 "--out", str(out)]) == 0
    assert "5 images" in capsys.readouterr().out
    dice = {r["image"]: float(r["dice"]) for r in _rows(out)}
    assert dice["000000_01_01_001"] == 0.0
    assert all(dice[f"00000{i}_01_01_001"] == 1.0 for i in range(1, 5))


# -- benchmark ------------------------------------------------------------------------------------
def test_benchmark_on_deeplesion_scores_split_three_against_masks(tmp_path, capsys):
    import json

    slices = [*DL_SLICES, (6, 9, (8,), [(20, 44, 8), (40, 20, 6)], 3)]
    table = write_deeplesion(tmp_path / "dl", slices, masks=True)
    out = tmp_path / "bench"
    assert main(["benchmark", "--train", str(table), "--out", str(out), "--models", "a1",
                 "--epochs", "1", "--size", "32", "--batch", "2", "--crop", "40"]) == 0
    assert "test split (3 lesions): mean Dice" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["n_train"] == 5 and results["scored"]
    block = results["tests"]["test split"]
    assert block["n_test"] == 3  # the three split-3 lesions, never trained on
    methods = block["methods"]
    assert set(methods) == {"a1", "ellipse", "quarter_ellipse"}
    # The discs' RECIST give near-perfect ellipses; the 1-epoch model scores something else.
    assert methods["ellipse"]["metrics"]["dice"]["mean"] > 0.85
    report = (out / "report.md").read_text(encoding="utf-8")
    assert results["n_val"] == 1  # split 2: patient 4's one lesion
    assert (f"RECIST table `{table}`: 5 training lesions (Train_Val_Test 1) and 1 validation "
            f"lesions (2), scored on split 3 against its true masks" in report)
    assert "simulated" not in report
    assert "## Test split (3 lesions, real masks)" in report
    figures = [line for line in report.splitlines() if line.startswith("![overlays](")]
    assert figures == ["![overlays](overlays_test_split.png)"]
    assert (out / "overlays_test_split.png").is_file()
    # Without masks/ the models are trained but not scored.
    shutil.rmtree(tmp_path / "dl" / "masks")
    assert main(["benchmark", "--train", str(table), "--out", str(tmp_path / "b2"), "--models",
                 "a1", "--epochs", "1", "--size", "32", "--batch", "2", "--crop", "40"]) == 0
    assert "not scored" in capsys.readouterr().out
    assert json.loads((tmp_path / "b2" / "results.json").read_text())["scored"] is False
    report = (tmp_path / "b2" / "report.md").read_text(encoding="utf-8")
    assert "not scored: no true masks were found for split 3" in report
    assert "against its true masks" not in report


def test_crop_lesion_sizes_each_patch_to_its_lesion(tmp_path, capsys):
    import json

    table = write_deeplesion(tmp_path / "dl")
    runs = tmp_path / "runs"
    tiny = [a for a in TINY if a not in ("--crop", "40")]
    assert main(["train", str(table), "--out", str(runs), *tiny, "--crop", "lesion"]) == 0
    saved = json.loads((runs / "multitask" / "best" / "config.json").read_text())
    assert saved["preprocessing"]["source"]["field_of_view_px"] is None
    # Its patches follow each lesion: twice the long axis at the default margin of 0.5.
    data = prepare_from_table(table, size=32, crop_px=None)
    for t, r in zip(data.train_set.transforms, data.train_set.source_recists):
        assert t.side == pytest.approx(2 * r.long_length, rel=0.05)
    for bad in ("wide", "-5", "nan"):
        with pytest.raises(SystemExit) as exc:  # argparse's own usage error
            main(["train", str(table), "--out", str(tmp_path / "x"), "--crop", bad])
        assert exc.value.code == 2 and "argument --crop" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_by_default_prompted_models_train_on_lesion_sized_patches(tmp_path, capsys):
    import json

    table = write_deeplesion(tmp_path / "dl")
    runs = tmp_path / "runs"
    tiny = [a for a in TINY if a not in ("--crop", "40")]
    assert main(["train", str(table), "--out", str(runs), *tiny, "--models", "a1,prompted"]) == 0
    said = capsys.readouterr().out
    assert "120 px patches" in said and "patches twice each lesion's long axis" in said

    def side(kind):
        saved = json.loads((runs / kind / "best" / "config.json").read_text())
        return saved["preprocessing"]["source"]["field_of_view_px"]

    assert side("a1") == 120.0 and side("prompted") is None


def test_table_benchmark_gives_each_kind_its_own_patches_and_says_so(tmp_path, monkeypatch):
    import json

    from napari_recist_seg.learning import report

    drawn = []
    plot = report.plot_overlays
    monkeypatch.setattr(report, "plot_overlays", lambda images, truths, predictions, *a, **k:
                        drawn.append((images, truths, predictions)) or plot(
                            images, truths, predictions, *a, **k))
    slices = [*DL_SLICES, (6, 9, (8,), [(20, 44, 8), (40, 20, 6)], 3)]
    table = write_deeplesion(tmp_path / "dl", slices, masks=True)
    out = tmp_path / "bench"
    assert main(["benchmark", "--train", str(table), "--out", str(out), "--models",
                 "a1,prompted", "--epochs", "1", "--size", "32", "--batch", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["a1"]["crop_px"] == 120.0
    assert results["training"]["prompted"]["crop_px"] is None
    methods = results["tests"]["test split"]["methods"]
    assert {"a1", "prompted", "quarter_ellipse"} <= set(methods)
    text = (out / "report.md").read_text(encoding="utf-8")
    assert ("a1 on 120 px patches; prompted on patches twice the lesion's long axis"
            in text)
    # The overlays show every method in the same patch as the image and the true mask.
    ((images, truths, predictions),) = drawn
    for kind in ("a1", "prompted", "quarter_ellipse"):
        assert [m.shape for m in predictions[kind]] == [t.shape for t in truths]


@pytest.mark.parametrize("which", ["key", "neighbour"])
def test_a_slice_of_another_size_is_named_by_train(tmp_path, capsys, which):
    root = tmp_path / "dl"
    write_deeplesion(root)
    # Patient 1's key slice 10 has neighbours 9 and 11; one file is replaced by a smaller one.
    bad = root / "Images_png" / "000001_01_01" / ("010.png" if which == "key" else "011.png")
    iio.imwrite(bad, np.full((40, 50), 32768, np.uint16))
    code = main(["train", str(root / "DL_info.csv"), "--out", str(tmp_path / "runs"),
                 "--models", "a1", "--epochs", "1", "--size", "32"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}: the slice is 40 x 50 pixels (rows x cols), the table says 64 x 64" in err
    assert not (tmp_path / "runs" / "a1" / "best").exists()


def test_predict_table_that_fails_half_way_leaves_no_masks_behind(tmp_path, capsys):
    from ._learning_data import crop_preprocessing, saved_model

    root = tmp_path / "dl"
    table = write_deeplesion(root)
    model = saved_model(tmp_path / "model", "a1", in_channels=1,
                        preprocessing=crop_preprocessing(window=(-175.0, 275.0)))
    # Patient 2's key slice, read after patient 1's: truncated.
    broken = root / "Images_png" / "000002_01_01" / "031.png"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 3])
    out = tmp_path / "nested" / "masks"
    code = main(["predict", str(table), "--model", str(model), "--out", str(out),
                 "--split", "1"])
    assert code == 2 and "031.png" in capsys.readouterr().err
    assert not (tmp_path / "nested").exists()
    # Mended, the same command needs no --overwrite: nothing of the failed run is in the way.
    broken.write_bytes(good)
    assert main(["predict", str(table), "--model", str(model), "--out", str(out),
                 "--split", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "000001_01_01_010.png", "000002_01_01_031.png", "000003_01_01_005.png", "lesions.csv"]


def test_a_table_named_from_its_own_folder_finds_its_images(tmp_path, monkeypatch):
    # Its folder is then "." and the images' paths are relative too: they are still inside.
    rows = write_png_folder(tmp_path / "images", n=2, colour_every=0)
    recist_csv(tmp_path / "images" / "lesions.csv", rows)
    monkeypatch.chdir(tmp_path / "images")
    assert len(read_lesion_table("lesions.csv").rows) == 2
    table = write_deeplesion(tmp_path / "dl")
    monkeypatch.chdir(table.parent)
    assert len(read_lesion_table(table.name).rows) == len(read_lesion_table(table).rows)


def test_grey_pictures_saved_in_colour_read_as_grey(tmp_path):
    # CT key slices are often shared as RGB JPEG with three equal channels.
    rows = write_png_folder(tmp_path / "png", n=2, colour_every=0)
    folder = tmp_path / "jpeg"
    folder.mkdir()
    jpeg_rows = []
    for name, slc, lesion in rows:
        grey = iio.imread(tmp_path / "png" / name)
        iio.imwrite(folder / name.replace(".png", ".jpg"), np.stack([grey] * 3, axis=-1),
                    quality=95)
        jpeg_rows.append((name.replace(".png", ".jpg"), slc, lesion))
    table = read_lesion_table(recist_csv(folder / "l.csv", jpeg_rows))
    assert table.in_channels == 1 and not table.colour
    plane = table.stacks[0].read()
    assert plane.shape == (1, 64, 64) and plane.dtype == np.uint8
    grey = iio.imread(folder / "case0.jpg")[..., 0]
    assert np.abs(plane[0].astype(int) - grey).max() <= 3
    # A model trained on colour still gets three channels from them.
    assert read_lesion_table(folder / "l.csv", colour=True).stacks[0].read().shape == (3, 64, 64)
    # Colour pictures stay colour.
    colour_rows = write_png_folder(tmp_path / "colour", n=2, colour_every=2)
    assert read_lesion_table(recist_csv(tmp_path / "colour" / "l.csv", colour_rows)).colour


def _anisotropic_table(folder):
    """``an.nii.gz`` with rows of 0.9 mm and columns of 0.6 mm, and a table (no spacing
    given) of one lesion whose axes are 28 px down (25.2 mm) and 36 px across (21.6 mm): a
    valid RECIST in mm, though its short axis is the longer one in pixels."""
    import SimpleITK as sitk

    write_nifti(folder / "an.nii.gz", spacing=(0.6, 0.9, 2.0))
    table = folder / "lesions.csv"
    table.write_text("lesion_id,image,slice,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,"
                     "short_r1,short_c1,spacing_row,spacing_col\n"
                     "0,an.nii.gz,4,18,32,46,32,32,14,32,50,,\n")
    np.testing.assert_allclose(sitk.ReadImage(str(folder / "an.nii.gz")).GetSpacing()[:2],
                               (0.6, 0.9), rtol=1e-6)
    return table


def test_a_scan_lesion_without_spacing_is_measured_in_its_header_mm(tmp_path, capsys):
    table = _anisotropic_table(tmp_path)
    (row,) = read_lesion_table(table).rows
    np.testing.assert_allclose(row.recist.spacing, (0.9, 0.6), rtol=1e-6)
    assert row.spacing_known
    assert row.recist.long_mm == pytest.approx(25.2, rel=1e-5)
    assert row.recist.short_mm == pytest.approx(21.6, rel=1e-5)
    # pseudo-masks reads it alike, and its recists.csv keeps the header's pixel size, so the
    # file read back (beside no scan) still measures in mm.
    out = tmp_path / "pm"
    assert main(["pseudo-masks", str(table), "--out", str(out)]) == 0
    with (out / "recists.csv").open() as fh:
        (written,) = [r for r in csv.DictReader(line for line in fh if not line.startswith("#"))]
    np.testing.assert_allclose([float(written["spacing_row"]), float(written["spacing_col"])],
                               (0.9, 0.6), rtol=1e-6)


def test_a_lesion_whose_pixel_size_nothing_gives_is_refused_in_px(tmp_path, capsys):
    from napari_recist_seg.data.recist_files import read_recists

    rows = write_png_folder(tmp_path, n=1, colour_every=0)
    path = tmp_path / "l.csv"
    path.write_text("lesion_id,image,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,"
                    f"short_r1,short_c1\n0,{rows[0][0]},18,32,46,32,32,14,32,50\n")
    with pytest.raises(ValueError, match=r"row 1 \(lesion 0\): invalid RECIST: short axis "
                                         r"\(36 px\) is longer than the long axis \(28 px\)"):
        read_lesion_table(path)
    # Only one of the two spacing cells is a mistake, named as such.
    path.write_text("lesion_id,image,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,"
                    f"short_r1,short_c1,spacing_row,spacing_col\n"
                    f"0,{rows[0][0]},20,10,20,30,14,20,26,20,0.5,\n")
    with pytest.raises(ValueError, match="spacing_row and spacing_col go together"):
        read_recists(path)
    # pseudo-masks of an image+mask folder, or of 2D images of unknown pixel size, leaves the
    # spacing of its recists.csv empty rather than claiming 1 mm.
    path.write_text("lesion_id,image,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,"
                    f"short_r1,short_c1\n0,{rows[0][0]},20,10,20,30,14,20,26,20\n")
    assert main(["pseudo-masks", str(path), "--out", str(tmp_path / "pm")]) == 0
    back = read_recists(tmp_path / "pm" / "recists.csv")
    assert back.spacing_known == [False]
    assert "spacing_row" in (tmp_path / "pm" / "recists.csv").read_text()
    assert ",," in (tmp_path / "pm" / "recists.csv").read_text().splitlines()[-1]


def test_a_recist_table_away_from_its_images_says_to_give_their_folder(tmp_path):
    from napari_recist_seg.data.recist_sources import read_lesion_table

    rows = write_png_folder(tmp_path / "data" / "imgs", n=2)
    (tmp_path / "elsewhere").mkdir()
    table = recist_csv(tmp_path / "elsewhere" / "lesions.csv",
                       [(name, s, les) for name, s, les in rows])
    with pytest.raises(ValueError, match=r"not found in .*elsewhere; if the images are "
                                         r"elsewhere, give their folder with --images"):
        read_lesion_table(table)
    assert len(read_lesion_table(table, tmp_path / "data" / "imgs")) >= 2
