"""Physical units: mm where a pixel size is known (per slice on a stack), px where not."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_recist_seg.data.recist_files import read_recists

PLUGIN = "napari-recist-seg"
_HEADER = (
    "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,"
    "Bounding_boxes,Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,"
    "Possibly_noisy,Slice_range,Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,"
    "Patient_age,Train_Val_Test"
)


def _deeplesion(root, rows):
    """A DL_info.csv and its PNG key slices; ``rows`` are (file name, x,y coords, spacing)."""
    import imageio.v3 as iio

    lines = [_HEADER]
    for name, xy, spacing in rows:
        folder = root / "Images_png" / name[:-8]
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / name[-7:]).exists():
            iio.imwrite(folder / name[-7:], np.full((48, 64), 32768, dtype=np.uint16))
        coords = ", ".join(str(v) for v in xy)
        lines.append(
            f'{name},1,1,1,{name[-7:-4]},"{coords}","1, 1, 60, 40","10, 5","0.5, 0.5, 0.5",'
            f'4,0,"100, 110","{spacing}, {spacing}, 5","64, 48","-175, 275",F,60,1'
        )
    (root / "DL_info.csv").write_text("\n".join(lines) + "\n")
    return root / "DL_info.csv"


# One lesion per key slice: long axis 30 px along x, short axis 10 px along y (1-based x, y).
_ROW_A = ("000001_01_01_109.png", [11, 21, 41, 21, 26, 16, 26, 26], 0.7)
_ROW_B = ("000002_01_01_020.png", [11, 21, 41, 21, 26, 16, 26, 26], 0.314)


def _cells(widget, row):
    model = widget.table.model()
    return {
        model.headerData(c, Qt.Orientation.Horizontal): model.index(row, c).data()
        for c in range(model.columnCount())
    }


def _recist_widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotation")
    return widget


def test_lines_drawn_on_a_stack_take_their_slices_pixel_size_and_export(
    make_napari_viewer, tmp_path, draw, notifications
):
    csv = _deeplesion(tmp_path, [_ROW_A, _ROW_B])
    viewer = make_napari_viewer()
    image, shapes = viewer.open(str(csv), plugin=PLUGIN)
    # Two pixel sizes cannot share one scale: one pixel per unit, never claimed as mm.
    np.testing.assert_allclose(image.scale, (1, 1, 1))
    assert [str(u) for u in image.units][-2:] == ["pixel", "pixel"]
    np.testing.assert_allclose(shapes.features["length_mm"], [21.0, 7.0, 9.42, 3.14])
    widget = _recist_widget(viewer)
    assert widget.recist_layer() is shapes
    # A 50 x 30 px lesion drawn on the 0.314 mm slice is 15.7 x 9.4 mm, not 50 x 30.
    draw(shapes, [[1, 5, 5], [1, 5, 55]])
    draw(shapes, [[1, 0, 30], [1, 30, 30]])
    cells = _cells(widget, 2)
    assert (cells["long (mm)"], cells["short (mm)"], cells["status"]) == ("15.7", "9.4", "ok")
    assert shapes.features["measurement"].tolist()[4] == "15.7 x 9.4 mm"
    np.testing.assert_allclose(shapes.features["spacing_row"].tolist()[4:], [0.314, 0.314])
    # The lesion drawn on the other slice takes that slice's 0.7 mm.
    draw(shapes, [[0, 30, 5], [0, 30, 25]])
    draw(shapes, [[0, 25, 15], [0, 35, 15]])
    assert _cells(widget, 3)["long (mm)"] == "14.0"
    # Export works: each lesion written with its own slice's pixel size.
    written = widget.export_recist_file(tmp_path / "out.csv")
    assert written is not None, notifications
    table = read_recists(written)
    assert [r.spacing for r in table.recists] == [(0.7, 0.7), (0.314, 0.314), (0.314, 0.314),
                                                  (0.7, 0.7)]
    assert table.slices == [0, 1, 1, 0]
    assert table.recists[2].long_mm == pytest.approx(15.7)


def test_writer_fills_missing_line_spacing_from_slice_and_names_lesions_without_one(tmp_path):
    from napari_recist_seg.plugin.writer import write_recist_file

    data = [np.array([[0, 5, 5], [0, 5, 45]]), np.array([[0, 0, 25], [0, 10, 25]]),
            np.array([[1, 5, 5], [1, 5, 45]]), np.array([[1, 0, 25], [1, 10, 25]])]
    features = {"lesion_id": [0, 0, 1, 1], "axis": ["long", "short"] * 2,
                "spacing_row": [np.nan] * 4, "spacing_col": [np.nan] * 4}
    meta = {"name": "x", "scale": (1, 1, 1), "shape_type": ["line"] * 4,
            "features": features,
            "metadata": {"napari-recist-seg": {"slice_spacing": [[0.5, 0.5], [0.25, 0.25]]}}}
    path = write_recist_file(str(tmp_path / "a.csv"), data, meta)
    assert [r.spacing for r in read_recists(path).recists] == [(0.5, 0.5), (0.25, 0.25)]
    meta["metadata"] = {}
    with pytest.raises(ValueError, match=r"lesion\(s\) 0, 1 have no pixel size"):
        write_recist_file(str(tmp_path / "b.csv"), data, meta)
    assert not (tmp_path / "b.csv").exists()


def test_writer_pairs_lines_drawn_while_no_dock_followed_the_layer(tmp_path):
    from napari_recist_seg.plugin.writer import write_recist_file

    data = [np.array([[5.0, 5.0], [5.0, 45.0]]), np.array([[0.0, 25.0], [10.0, 25.0]]),
            np.array([[40.0, 20.0], [50.0, 20.0]]), np.array([[45.0, 5.0], [45.0, 35.0]])]
    features = {"lesion_id": [0, 0, -1, -1], "axis": ["long", "short", np.nan, np.nan]}
    meta = {"name": "x", "scale": (0.5, 0.5), "shape_type": ["line"] * 4,
            "features": features}
    table = read_recists(write_recist_file(str(tmp_path / "a.csv"), data, meta))
    assert len(table.recists) == 2
    np.testing.assert_allclose(table.recists[1].long_axis, data[3])
    # A long axis left without its short axis is still refused, and nothing is written.
    data.append(np.array([[30.0, 50.0], [30.0, 60.0]]))
    features = {"lesion_id": [0, 0, -1, -1, -1], "axis": ["long", "short", "", "", ""]}
    with pytest.raises(ValueError, match="'x' as RECIST: lesion 2 has no short axis"):
        write_recist_file(str(tmp_path / "b.csv"), data, {**meta, "features": features,
                                                          "shape_type": ["line"] * 5})
    assert not (tmp_path / "b.csv").exists()


def test_writer_measures_and_pairs_lines_in_their_own_pixel_size(tmp_path):
    # Lines with a pixel size of their own (1 x 0.5 mm) on a layer of 0.7 mm pixels: the
    # vertical 30 px line (30 mm) is longer than the horizontal 40 px one (20 mm) in theirs,
    # shorter in the layer's.
    from napari_recist_seg.plugin.writer import write_recist_file

    lesion = [np.array([[2.0, 75.0, 40.0], [2.0, 105.0, 40.0]]),
              np.array([[2.0, 90.0, 20.0], [2.0, 90.0, 60.0]])]
    meta = {"name": "x", "scale": (2.5, 0.7, 0.7), "shape_type": ["line"] * 4}
    data = lesion + [line + [0.0, 0.0, 100.0] for line in lesion]
    features = {"lesion_id": [0, 0, -1, -1], "axis": ["long", "short", "", ""],
                "spacing_row": [1.0, 1.0, np.nan, np.nan],
                "spacing_col": [0.5, 0.5, np.nan, np.nan]}
    table = read_recists(write_recist_file(str(tmp_path / "a.csv"), data,
                                           {**meta, "features": features}))
    assert [(r.long_mm, r.short_mm) for r in table.recists] == [(30.0, 20.0)] * 2
    np.testing.assert_allclose(table.recists[1].long_axis, data[2][:, 1:])


def test_import_deeplesion_rows_use_each_rows_own_pixel_size(
    make_napari_viewer, tmp_path, notifications
):
    csv = _deeplesion(tmp_path, [_ROW_A])
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((48, 64), np.float32), name="000001_01_01_109",
                     scale=(0.8, 0.8))
    widget = _recist_widget(viewer)
    layer = widget.import_deeplesion(csv)
    assert layer is not None
    np.testing.assert_allclose(layer.scale, (0.8, 0.8))  # the lines sit on the image
    assert _cells(widget, 0)["long (mm)"] == "21.0"  # 30 px of the row's 0.7 mm
    (warning,) = [text for level, text in notifications if level == "warning"]
    assert "0.7 x 0.7 mm" in warning and "float64" not in warning


def test_layers_carry_mm_units_and_unknown_pixel_sizes_read_px(make_napari_viewer, draw):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ct_phantom_slice")
    for layer in viewer.layers:
        assert [str(u) for u in layer.units] == ["millimeter", "millimeter"], layer.name
    widget = _recist_widget(viewer)
    widget.image_combo.set_layer(viewer.layers["CT phantom"])
    new = widget.new_recist_layer()
    assert [str(u) for u in new.units] == ["millimeter", "millimeter"]

    # A photograph has no pixel size: px in labels, headers and the status line.
    viewer.open_sample(PLUGIN, "dermoscopy")
    derm = viewer.layers["dermoscopy RECIST"]
    assert all(text.endswith(" px") for text in derm.features["measurement"] if text)
    assert [str(u) for u in derm.units] == ["pixel", "pixel"]
    widget.image_combo.set_layer(viewer.layers["dermoscopy"])
    widget.recist_combo.set_layer(derm)
    headers = [widget.model.headerData(c, Qt.Orientation.Horizontal)
               for c in range(widget.model.columnCount())]
    assert "long (px)" in headers and not any("mm" in h for h in headers)
    assert len(set(headers)) == len(headers), headers  # no column said twice
    assert "lengths are in px" in widget.status.text()
    lone = widget.new_recist_layer()
    draw(lone, [[10, 10], [10, 30]])
    assert lone.features["measurement"].tolist() == ["20.0 px"]


def test_volume_reader_gives_mm_units(make_napari_viewer, tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((3, 6, 5), dtype=np.int16))
    img.SetSpacing((0.7, 0.8, 2.5))
    sitk.WriteImage(img, str(tmp_path / "scan.nii.gz"))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "scan.nii.gz"), plugin=PLUGIN)
    assert [str(u) for u in layer.units] == ["millimeter"] * 3


def test_a_series_time_axis_is_not_given_mm(make_napari_viewer, tmp_path):
    import SimpleITK as sitk

    frames = [sitk.GetImageFromArray(np.zeros((3, 6, 5), dtype=np.int16)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "series.nii.gz"))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "series.nii.gz"), plugin=PLUGIN)
    assert layer.ndim == 4
    assert [str(u) for u in layer.units] == ["pixel"] + ["millimeter"] * 3
