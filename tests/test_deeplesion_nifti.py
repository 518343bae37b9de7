"""DeepLesion tables over the NIfTI release of its slices (``Images_nifti``).

The NIfTI files are written here as DeepLesion's ``DL_save_nifti.py`` writes them: each run of
consecutive slices ``PPPPPP_SS_ss_FFF-LLL.nii.gz`` holds the PNG slices stacked along its third
axis, HU as stored, with the affine ``[[0, -sy, 0], [-sx, 0, 0], [0, 0, -sz]]`` (RAS), that is
ITK direction columns (0, 1, 0), (1, 0, 0), (0, 0, -1). The same slices are also written as
PNGs (HU + 32768), so every reading can be compared with the PNG release's.
"""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_recist_seg.data.deeplesion import (
    read_deeplesion,
    read_deeplesion_slice,
    read_deeplesion_volume_planes,
)
from napari_recist_seg.data.recist_sources import read_lesion_table

from ._learning_data import crop_preprocessing
from .conftest import _DL_HEADER

ROWS, COLS = 40, 56
SPACING = (0.7, 0.7, 2.5)  # x, y, slice interval as in Spacing_mm_px_
SERIES = "000007_02_01"
FIRST, LAST = 30, 36
# (key slice, 1-based x1,y1,x2,y2 long axis then x3,y3,x4,y4 short axis) per lesion.
LESIONS = [
    (33, (11, 9, 31, 9, 21, 5, 21, 13)),     # wide, near the top left
    (35, (44, 20, 44, 36, 40, 28, 48, 28)),  # tall, near the bottom right
]
LESION_HU = 300.0


def _slice(number: int) -> np.ndarray:
    """A slice whose rows, columns and number can all be told apart, with each lesion on its
    key slice as a bright rectangle around its RECIST."""
    rr, cc = np.mgrid[:ROWS, :COLS]
    hu = (-800.0 + 3.0 * rr + cc // 2 + 7.0 * number).astype(np.float32)
    for key, xy in LESIONS:
        if key == number:
            xs, ys = np.asarray(xy[0::2]) - 1, np.asarray(xy[1::2]) - 1
            hu[int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1] = LESION_HU
    return hu


def _write_dl_nifti(path, slices, spacing=SPACING, direction=(0, 1, 0, 1, 0, 0, 0, 0, -1)):
    """Slices (each rows x cols) as ``DL_save_nifti.py`` saves them: volume V[row, col, k]."""
    volume = np.stack(slices, axis=-1).astype(np.int16)  # (rows, cols, k): nibabel's order
    image = sitk.GetImageFromArray(volume.transpose(2, 1, 0))  # ITK index (row, col, k)
    image.SetSpacing([float(spacing[0]), float(spacing[1]), float(spacing[2])])
    image.SetDirection([float(v) for v in direction])
    sitk.WriteImage(image, str(path))


def _table(root, lesions=LESIONS):
    lines = [_DL_HEADER]
    for i, (key, xy) in enumerate(lesions):
        xs, ys = xy[0::2], xy[1::2]
        coords = ", ".join(str(v) for v in xy)
        box = f"{min(xs) - 2}, {min(ys) - 2}, {max(xs) + 2}, {max(ys) + 2}"
        lines.append(
            f'{SERIES}_{key:03d}.png,7,2,1,{key},"{coords}","{box}","20, 8","0.5, 0.5, 0.5",'
            f'4,0,"{FIRST}, {LAST}","{SPACING[0]}, {SPACING[1]}, {SPACING[2]}",'
            f'"{COLS}, {ROWS}","-175, 275",F,60,{1 + i}'
        )
    (root / "DL_info.csv").write_text("\n".join(lines) + "\n")
    return root / "DL_info.csv"


@pytest.fixture
def releases(tmp_path):
    """The same DeepLesion series as the PNG release and as the NIfTI release, each beside
    its own copy of DL_info.csv: (PNG table, NIfTI table)."""
    png_root, nii_root = tmp_path / "png", tmp_path / "nifti"
    series = png_root / "Images_png" / SERIES
    series.mkdir(parents=True)
    (nii_root / "Images_nifti").mkdir(parents=True)
    slices = {n: _slice(n) for n in range(FIRST, LAST + 1)}
    for n, hu in slices.items():
        iio.imwrite(series / f"{n:03d}.png", (hu + 32768).astype(np.uint16))
    _write_dl_nifti(nii_root / "Images_nifti" / f"{SERIES}_{FIRST:03d}-{LAST:03d}.nii.gz",
                    [slices[n] for n in range(FIRST, LAST + 1)])
    # Another run of the same series, away from the key slices, which no row uses.
    _write_dl_nifti(nii_root / "Images_nifti" / f"{SERIES}_050-051.nii.gz",
                    [_slice(50), _slice(51)])
    return _table(png_root), _table(nii_root)


def test_key_slices_and_neighbours_match_the_png_release(releases):
    png_table, nii_table = releases
    png, nii = read_deeplesion(png_table), read_deeplesion(nii_table)
    assert [r.volume_slice for r in nii] == [33 - FIRST, 35 - FIRST]
    assert all(r.image_path.name == f"{SERIES}_030-036.nii.gz" for r in nii)
    for a, b in zip(png, nii):
        key = read_deeplesion_slice(b)
        assert key.shape == (ROWS, COLS) and key.dtype == np.float32
        np.testing.assert_array_equal(key, read_deeplesion_slice(a))
        # The RECIST lies on its lesion: rows and columns are the PNG's, not swapped.
        centre = np.round(b.recist.centre).astype(int)
        assert key[centre[0], centre[1]] == LESION_HU
        for k, gap in ((1, 2.0), (2, 5.0), (3, 2.5)):
            np.testing.assert_array_equal(read_deeplesion_slice(b, neighbours=k, slice_gap_mm=gap),
                                          read_deeplesion_slice(a, neighbours=k, slice_gap_mm=gap))


def test_lesion_tables_give_the_same_stacks(releases):
    png_table, nii_table = releases
    for neighbours in (0, 1, 3):
        png = read_lesion_table(png_table, neighbours=neighbours)
        nii = read_lesion_table(nii_table, neighbours=neighbours)
        assert [s.kind for s in nii.stacks] == ["deeplesion_volume"] * 2
        assert [r.split for r in nii.rows] == [r.split for r in png.rows]
        for a, b in zip(png.stacks, nii.stacks):
            np.testing.assert_array_equal(b.read(), a.read())
            assert a.grid() is None and b.grid()["size"] == [ROWS, COLS, LAST - FIRST + 1]


def test_the_viewer_opens_the_table_on_its_nifti_slices(releases):
    from napari_recist_seg.plugin.reader import get_reader

    png_table, nii_table = releases
    png_layers = get_reader(str(png_table))(str(png_table))
    nii_layers = get_reader(str(nii_table))(str(nii_table))
    assert [t for *_, t in nii_layers] == ["image", "shapes"]
    np.testing.assert_array_equal(np.asarray(nii_layers[0][0]), np.asarray(png_layers[0][0]))
    for a, b in zip(png_layers[1][0], nii_layers[1][0]):
        np.testing.assert_array_equal(a, b)


def test_pseudo_masks_of_the_nifti_table_match_the_png_table(releases, tmp_path):
    from napari_recist_seg.cli import main

    png_table, nii_table = releases
    main(["pseudo-masks", str(png_table), "--out", str(tmp_path / "a")])
    main(["pseudo-masks", str(nii_table), "--out", str(tmp_path / "b")])
    written = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert written and written == sorted(p.name for p in (tmp_path / "b").glob("*.png"))
    for name in written:
        np.testing.assert_array_equal(iio.imread(tmp_path / "a" / name),
                                      iio.imread(tmp_path / "b" / name))


def test_files_in_array_order_and_flipped_axes_are_turned_to_the_png_layout(tmp_path):
    slices = [_slice(n) for n in (4, 5)]
    # Written as SimpleITK writes a (k, rows, cols) array: no transpose, identity axes.
    plain = tmp_path / "plain.nii.gz"
    image = sitk.GetImageFromArray(np.stack(slices).astype(np.int16))
    sitk.WriteImage(image, str(plain))
    np.testing.assert_array_equal(read_deeplesion_volume_planes(plain, [1, 0]),
                                  np.stack(slices[::-1]))
    # Rows running anterior (-y) and columns running right (-x), stored transposed.
    flipped = tmp_path / "flipped.nii.gz"
    _write_dl_nifti(flipped, [s[::-1, ::-1] for s in slices],
                    direction=(0, -1, 0, -1, 0, 0, 0, 0, 1))
    np.testing.assert_array_equal(read_deeplesion_volume_planes(flipped, [0, 1]),
                                  np.stack(slices))


def test_missing_runs_and_damaged_files_are_named(releases):
    _png_table, nii_table = releases
    folder = nii_table.parent / "Images_nifti"
    # A key slice outside every run of the series: the row has no image.
    outside = _table(nii_table.parent, [(40, LESIONS[0][1])])
    with pytest.warns(UserWarning, match="1 of 1 rows have no image"):
        assert read_deeplesion(outside)[0].image_path is None
    with pytest.raises(ValueError, match=r"row 1 \(000007_02_01_040.png\): image not found"):
        read_lesion_table(outside)
    # A damaged file: reading its slice names it.
    _table(nii_table.parent)
    (folder / f"{SERIES}_030-036.nii.gz").write_bytes(b"not a NIfTI file")
    record = read_deeplesion(nii_table)[0]
    with pytest.raises(ValueError, match="030-036.nii.gz: cannot read image"):
        read_deeplesion_slice(record)
    with pytest.raises(ValueError, match="030-036.nii.gz: cannot read image"):
        read_deeplesion_volume_planes(record.image_path, [0])
    # A plane the file does not hold.
    small = folder / "small.nii.gz"
    _write_dl_nifti(small, [_slice(1)])
    with pytest.raises(ValueError, match="holds slices 0 to 0, not slice 2"):
        read_deeplesion_volume_planes(small, [0, 2])


def test_nifti_files_kept_beside_the_table_are_found(releases):
    _png_table, nii_table = releases
    folder = nii_table.parent / "Images_nifti"
    for f in folder.iterdir():
        f.rename(nii_table.parent / f.name)
    folder.rmdir()
    records = read_deeplesion(nii_table)
    assert [r.image_path.parent for r in records] == [nii_table.parent] * 2
    assert [r.volume_slice for r in records] == [33 - FIRST, 35 - FIRST]


class _Bright(torch.nn.Module):
    """A stand-in CT model: lesion wherever the key slice (the middle channel) is bright."""

    kind = "a1"

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = {"in_channels": 3}
        self.preprocessing = crop_preprocessing(
            size=32, channel_axis=0, field_of_view_px=40.0,
            source={"kind": "deeplesion", "neighbours": 1, "colour": False, "window": None,
                    "slice_gap_mm": 2.0})

    def forward(self, x):
        return (x[:, 1:2] - 0.5) * 60.0


def test_predicting_the_nifti_table_labels_each_run_on_its_own_grid(releases, tmp_path):
    from napari_recist_seg.learning.inference import predict_table

    png_table, nii_table = releases
    from_png = predict_table(_Bright(), png_table, tmp_path / "png")
    from_nii = predict_table(_Bright(), nii_table, tmp_path / "nii")
    assert from_png.label_images == []
    assert sorted(p.name for p in from_nii.masks) == sorted(p.name for p in from_png.masks)
    for a, b in zip(sorted(from_png.masks), sorted(from_nii.masks)):
        np.testing.assert_array_equal(iio.imread(a), iio.imread(b))
    # Both key slices lie in one run: one label image on that file's grid.
    run = nii_table.parent / "Images_nifti" / f"{SERIES}_030-036.nii.gz"
    assert from_nii.label_images == [tmp_path / "nii" / f"{SERIES}_030-036_labels.nii.gz"]
    labels_file = from_nii.label_images[0]
    scan, labels = sitk.ReadImage(str(run)), sitk.ReadImage(str(labels_file))
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(labels, getter)(), getattr(scan, getter)(), atol=1e-6)
    # Read back as the key slices are read, each lesion lies where its PNG mask does,
    # holding its table row; the other slices of the run are empty.
    planes = read_deeplesion_volume_planes(labels_file, range(LAST - FIRST + 1))
    for row, (key, _xy) in enumerate(LESIONS, start=1):
        png = iio.imread(tmp_path / "nii" / f"{SERIES}_{key:03d}.png") > 0
        assert png.any()
        np.testing.assert_array_equal(planes[key - FIRST] > 0, png)
        assert set(np.unique(planes[key - FIRST])) == {0, row}
    others = [z for z in range(LAST - FIRST + 1) if z + FIRST not in (33, 35)]
    assert not planes[others].any()


@pytest.mark.parametrize("flipped", [False, True], ids=["DL_save_nifti", "flipped axes"])
def test_rows_imported_onto_an_opened_nifti_file_lie_on_their_lesions(
        make_napari_viewer, qtbot, tmp_path, monkeypatch, flipped):
    """A researcher opens one NIfTI file of the release in napari and imports the table's
    rows with the RECIST widget's button: each lesion of the file's series lands on its key
    slice's plane, on the lesion, as long as the PNG release measures it."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFileDialog

    run = tmp_path / f"{SERIES}_{FIRST:03d}-{LAST:03d}.nii.gz"
    slices = [_slice(n) for n in range(FIRST, LAST + 1)]
    if flipped:
        _write_dl_nifti(run, [s[::-1, ::-1] for s in slices],
                        direction=(0, -1, 0, -1, 0, 0, 0, 0, 1))
    else:
        _write_dl_nifti(run, slices)
    table = _table(tmp_path)  # no image folder: rows are matched by the file's name
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(run), plugin="napari-recist-seg")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-recist-seg",
                                                         "RECIST annotation")
    widget.image_combo.set_layer(image)
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *args, **kwargs: (str(table), "")))
    qtbot.mouseClick(widget.deeplesion_button, Qt.MouseButton.LeftButton)
    layer = widget.recist_layer()
    assert layer is not None and len(layer.data) == 2 * len(LESIONS)
    volume = np.asarray(image.data)
    expected = {r.csv_row - 1: r.recist for r in read_deeplesion(table)}
    for info in widget.lesions:
        key = LESIONS[info.lesion_id][0]
        lines = [np.asarray(layer.data[i]) for i in range(len(layer.data))
                 if layer.features["lesion_id"][i] == info.lesion_id]
        assert all(np.allclose(line[:, 0], key - FIRST) for line in lines)
        centre = np.round(np.mean([line[:, 1:].mean(axis=0) for line in lines], axis=0))
        assert volume[key - FIRST, int(centre[0]), int(centre[1])] == LESION_HU
        assert info.long_mm == pytest.approx(expected[info.lesion_id].long_mm)
        assert info.short_mm == pytest.approx(expected[info.lesion_id].short_mm)
