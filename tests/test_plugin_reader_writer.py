"""The plugin's manifest, reader, writer and sample data, found and run through napari."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.core.recist import Recist
from napari_recist_seg.data.recist_files import RecistTable, read_recists, write_recists
from napari_recist_seg.plugin.colours import AXIS_COLOURS, line_colours
from napari_recist_seg.plugin.layer_units import META_KEY, SOFT_TISSUE_WINDOW
from napari_recist_seg.plugin.reader import get_reader

PLUGIN = "napari-recist-seg"


def _table(slices=None, spacing=(0.6, 0.6)):
    recists = [
        Recist([[10, 10], [10, 40]], [[2, 25], [18, 25]], spacing),
        Recist([[30, 50], [50, 50]], [[40, 45], [40, 55]], spacing),
    ]
    return RecistTable(
        recists,
        lesion_ids=[3, 7],
        slices=slices,
        features={"group": [1, 0], "note": ["cyst", "node"], "score": [0.25, 1.5]},
    )


# -- manifest -----------------------------------------------------------------------------------
def test_manifest_lists_every_contribution():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    contrib = manifest.contributions
    commands = {c.id for c in contrib.commands}
    assert {
        f"{PLUGIN}.get_reader",
        f"{PLUGIN}.write_recist",
        f"{PLUGIN}.write_labels",
        f"{PLUGIN}.sample_ct_slice",
        f"{PLUGIN}.sample_ct_volume",
        f"{PLUGIN}.sample_dermoscopy",
        f"{PLUGIN}.recist_widget",
        f"{PLUGIN}.groups_widget",
    } <= commands
    assert {w.display_name for w in contrib.widgets} >= {
        "RECIST annotation",
        "Groups and pseudo-masks",
    }
    assert {s.key for s in contrib.sample_data} == {
        "ct_phantom_slice",
        "ct_phantom_volume",
        "dermoscopy",
    }
    (reader,) = contrib.readers
    assert reader.accepts_directories
    for pattern in ("*.csv", "*.json", "*.dcm", "*.nii", "*.nii.gz", "*.mha", "*.mhd", "*.nrrd"):
        assert pattern in reader.filename_patterns
    writers = {w.command: w for w in contrib.writers}
    assert set(writers[f"{PLUGIN}.write_recist"].filename_extensions) == {".csv", ".json"}
    assert writers[f"{PLUGIN}.write_recist"].layer_types == ["shapes"]
    labels_writer = writers[f"{PLUGIN}.write_labels"]
    assert set(labels_writer.filename_extensions) == {".nii.gz", ".nii", ".mha", ".nrrd"}
    assert labels_writer.layer_types == ["labels"]
    for command in contrib.commands:
        assert callable(pm.commands.get(command.id)), command.id


# -- deciding what is ours ---------------------------------------------------------------------
def test_get_reader_returns_none_for_foreign_files(tmp_path):
    plain = tmp_path / "measurements.csv"
    plain.write_text("a,b,c\n1,2,3\n")
    other_json = tmp_path / "config.json"
    other_json.write_text('{"format": "something-else"}')
    binary = tmp_path / "noise.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    for path in (plain, other_json, binary, text, empty_dir, tmp_path / "missing.csv"):
        assert get_reader(str(path)) is None, path
    # Odd inputs are not ours either, and deciding never raises.
    for odd in (None, 12, [str(plain), str(text)], "", b"\x00"):
        assert get_reader(odd) is None


def test_get_reader_claims_our_formats(tmp_path, deeplesion_folder):
    write_recists(tmp_path / "r.csv", _table())
    write_recists(tmp_path / "r.json", _table())
    for path in (tmp_path / "r.csv", tmp_path / "r.json", deeplesion_folder,
                 deeplesion_folder / "DL_info.csv"):
        assert callable(get_reader(str(path))), path


# -- reading through napari --------------------------------------------------------------------
def _check_recist_layer(layer):
    assert layer._type_string == "shapes"
    assert list(layer.shape_type) == ["line"] * 4
    np.testing.assert_allclose(layer.scale, (0.6, 0.6))
    np.testing.assert_allclose(layer.data[0], [[10, 10], [10, 40]])
    np.testing.assert_allclose(layer.data[3], [[40, 45], [40, 55]])
    assert layer.features["lesion_id"].tolist() == [3, 3, 7, 7]
    assert layer.features["axis"].tolist() == ["long", "short", "long", "short"]
    np.testing.assert_allclose(layer.features["length_mm"], [18.0, 9.6, 12.0, 6.0])
    assert list(layer.text.values) == ["18.0 x 9.6 mm", "", "12.0 x 6.0 mm", ""]


def _check_nifti_layer(layer, vol):
    assert layer._type_string == "image"
    assert layer.data.shape == (4, 6, 5)
    np.testing.assert_allclose(layer.scale, (2.5, 0.8, 0.7))
    assert tuple(layer.contrast_limits) == SOFT_TISSUE_WINDOW
    np.testing.assert_array_equal(np.asarray(layer.data), vol)


def _check_deeplesion_layers(image, shapes):
    assert image._type_string == "image" and shapes._type_string == "shapes"
    # Two key slices stacked; HU = PNG value - 32768.
    assert image.data.shape == (2, 48, 64)
    np.testing.assert_allclose(np.asarray(image.data[0]), -50.0)
    np.testing.assert_allclose(np.asarray(image.data[1]), 50.0)
    np.testing.assert_allclose(image.scale, (1.0, 0.7, 0.7))
    np.testing.assert_allclose(shapes.scale, image.scale)
    assert tuple(image.contrast_limits) == (-175.0, 275.0)
    # x, y, 1-based -> (slice, row, col), 0-based; each lesion on its key slice.
    assert len(shapes.data) == 6
    np.testing.assert_allclose(shapes.data[0], [[0, 20, 10], [0, 20, 40]])
    np.testing.assert_allclose(shapes.data[1], [[0, 15, 25], [0, 25, 25]])
    np.testing.assert_allclose(shapes.data[4], [[1, 10, 20], [1, 30, 20]])
    assert shapes.features["lesion_id"].tolist() == [0, 0, 1, 1, 2, 2]
    assert shapes.features["lesion_type"].tolist()[0] == "liver"
    np.testing.assert_allclose(shapes.features["length_mm"][0], 30 * 0.7)


def test_each_format_opens_through_the_manifest(
    make_napari_viewer, tmp_path, deeplesion_folder, notifications
):
    import SimpleITK as sitk

    viewer = make_napari_viewer()
    # Our RECIST files, CSV and JSON; a file with groups is coloured by group.
    for suffix in (".csv", ".json"):
        path = write_recists(tmp_path / f"lesions{suffix}", _table())
        (layer,) = viewer.open(str(path), plugin=PLUGIN)
        _check_recist_layer(layer)
        assert layer.features["note"].tolist() == ["cyst", "cyst", "node", "node"]
        np.testing.assert_allclose(layer.edge_color, line_colours(["long"] * 4, [1, 1, 0, 0]))
    plain = _table()
    plain.features = {}
    path = write_recists(tmp_path / "plain.csv", plain)
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    np.testing.assert_allclose(layer.edge_color, line_colours(["long", "short"] * 2))
    assert AXIS_COLOURS["long"] != AXIS_COLOURS["short"]

    # A NIfTI volume: (slice, row, col) with its spacing, CT shown with a soft-tissue window.
    vol = np.full((4, 6, 5), -1000, dtype=np.int16)
    vol[:, 2:4, 1:4] = 40
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.7, 0.8, 2.5))  # x (col), y (row), z (slice)
    sitk.WriteImage(img, str(tmp_path / "scan.nii.gz"))
    (layer,) = viewer.open(str(tmp_path / "scan.nii.gz"), plugin=PLUGIN)
    _check_nifti_layer(layer, vol)

    # A DeepLesion folder (DL_info.csv + Images_png), and its CSV alone.
    _check_deeplesion_layers(*viewer.open(str(deeplesion_folder), plugin=PLUGIN))
    assert not [n for n in notifications if n[0] == "error"]

    # A broken file of ours: a notification naming the problem, no layer, no crash.
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "# napari-recist-seg recist csv v1\n"
        "lesion_id,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,short_r1,short_c1\n"
        "0,1,1,1,1,x,0,0,0\n"
    )
    n_layers = len(viewer.layers)
    assert callable(get_reader(str(bad)))
    assert viewer.open(str(bad), plugin=PLUGIN) == []
    assert len(viewer.layers) == n_layers
    errors = [text for level, text in notifications if level == "error"]
    assert len(errors) == 1 and "bad.csv" in errors[0] and "short_r0" in errors[0]


# -- writing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".json"])
@pytest.mark.parametrize("three_d", [False, True])
def test_writer_round_trip_is_lossless(tmp_path, suffix, three_d):
    import napari
    from napari.layers import Layer

    from napari_recist_seg.plugin.reader import read_path

    table = _table(slices=[2, 4] if three_d else None)
    from napari_recist_seg.plugin.recist_layers import table_layer_tuple

    layer = Layer.create(*table_layer_tuple(table, "lesions"))
    path = tmp_path / f"out{suffix}"
    written = napari.save_layers(str(path), [layer], plugin=PLUGIN)
    assert written == [str(path)]
    again = read_recists(path)
    assert again.lesion_ids == [3, 7]
    assert again.slices == ([2, 4] if three_d else None)
    assert again.features == table.features
    assert [r.spacing for r in again.recists] == [(0.6, 0.6)] * 2
    (layer_data,) = read_path(str(path))
    data, kwargs, kind = layer_data
    assert kind == "shapes"
    for a, b in zip(data, layer.data):
        np.testing.assert_array_equal(a, b)
    for name in ("lesion_id", "axis", "group", "note", "score"):
        assert list(kwargs["features"][name]) == layer.features[name].tolist()
    assert "length_mm" not in again.features and "measurement" not in again.features


def test_a_layer_in_pixels_saves_no_pixel_size(tmp_path):
    import napari
    from napari.layers import Layer

    from napari_recist_seg.plugin.recist_layers import table_layer_tuple

    table = _table()
    data, kwargs, kind = table_layer_tuple(table, "lesions")
    pixels = Layer.create(data, {**kwargs, "scale": (1.0, 1.0), "units": ("pixel", "pixel")},
                          kind)
    napari.save_layers(str(tmp_path / "px.csv"), [pixels], plugin=PLUGIN)
    again = read_recists(tmp_path / "px.csv")
    # Left empty, not 1 mm: read back, the lesions are still in pixels.
    assert again.spacing_known == [False, False]


def test_writer_refuses_a_lone_line(tmp_path, notifications):
    import napari
    from napari.layers import Shapes

    layer = Shapes(
        [np.array([[0, 0], [5, 5]])], shape_type="line",
        features={"lesion_id": [-1], "axis": [""]},
    )
    with pytest.warns(UserWarning, match="did not return any written paths"):
        assert napari.save_layers(str(tmp_path / "x.csv"), [layer], plugin=PLUGIN) == []
    assert not (tmp_path / "x.csv").exists()
    (level, text), = notifications
    assert level == "error" and "as RECIST: lesion 0 has no short axis" in text


def test_a_lesion_drawn_off_perpendicular_is_saved_and_opens_again(tmp_path):
    import napari
    from napari.layers import Shapes

    from napari_recist_seg.plugin.reader import get_reader

    # Axes 45 degrees apart: work in progress, kept; the commands still refuse the row.
    lines = [np.array([[10.0, 10.0], [10.0, 40.0]]), np.array([[0.0, 15.0], [20.0, 35.0]])]
    layer = Shapes(lines, shape_type="line",
                   features={"lesion_id": [0, 0], "axis": ["long", "short"]})
    path = tmp_path / "x.csv"
    assert napari.save_layers(str(path), [layer], plugin=PLUGIN) == [str(path)]
    (data, _kwargs, _kind), = get_reader(str(path))(str(path))
    np.testing.assert_allclose(np.asarray(data, dtype=float), np.asarray(lines))
    with pytest.raises(ValueError, match="row 1 .*45.0 degrees from perpendicular"):
        read_recists(path)


def test_a_lesion_that_breaks_the_rules_stops_the_save_with_how_to_mend_it(tmp_path,
                                                                          notifications):
    import napari
    from napari.layers import Shapes

    # A short axis longer than the long one: the file could not hold it as RECIST.
    layer = Shapes([np.array([[10, 10], [10, 20]]), np.array([[0, 15], [30, 15]])],
                   shape_type="line", features={"lesion_id": [0, 0], "axis": ["long", "short"]})
    with pytest.warns(UserWarning, match="did not return any written paths"):
        assert napari.save_layers(str(tmp_path / "x.csv"), [layer], plugin=PLUGIN) == []
    assert not (tmp_path / "x.csv").exists()
    (level, text), = notifications
    assert level == "error" and "is longer than the long axis" in text
    assert "Nothing was written: mend that lesion" in text


# -- sample data --------------------------------------------------------------------------------
def test_samples_open_from_the_manifest(make_napari_viewer):
    from npe2 import PluginManager

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ct_phantom_slice")
    image, masks, recist = viewer.layers
    assert (image._type_string, masks._type_string, recist._type_string) == (
        "image", "labels", "shapes")
    assert image.data.shape == (256, 256)
    assert tuple(image.contrast_limits) == SOFT_TISSUE_WINDOW
    np.testing.assert_allclose(recist.scale, image.scale)
    n = len(recist.data) // 2
    assert n >= 3 and masks.data.max() == n

    # The other samples, from their manifest commands (the same data napari would add).
    pm = PluginManager.instance()
    (image, _, image_type), (masks, _, _), (lines, kwargs, _) = pm.get_command(
        f"{PLUGIN}.sample_ct_volume"
    ).exec()
    assert image_type == "image" and image.ndim == 3
    assert kwargs["scale"] == (2.5, 0.8, 0.8)
    # Each lesion's lines lie on a slice where its true mask is.
    for lid, pts in zip(kwargs["features"]["lesion_id"], lines):
        z, r, c = np.round(pts.mean(axis=0)).astype(int)
        assert masks[z, r, c] == lid + 1
    (image, image_kwargs, _), _, (lines, _, _) = pm.get_command(
        f"{PLUGIN}.sample_dermoscopy"
    ).exec()
    assert image.shape[-1] == 3 and image_kwargs["rgb"] and len(lines) == 2


def test_a_damaged_slice_of_a_deeplesion_stack_is_shown_as_air_with_a_warning(tmp_path,
                                                                            notifications):
    from napari_recist_seg.plugin.reader import read_path

    from ._recist_table_data import write_deeplesion

    root = tmp_path / "dl"
    table = write_deeplesion(root)
    broken = root / "Images_png" / "000002_01_01" / "031.png"
    broken.write_bytes(broken.read_bytes()[:100])
    (data, _kwargs, kind), *_ = read_path(str(table))
    assert kind == "image"
    # The stack opens; the damaged slice is read when shown, as air, and named.
    assert np.asarray(data[0]).max() > -1000
    assert (np.asarray(data[1]) == -1024.0).all()
    assert any(level == "warning" and "000002_01_01_031.png" in text
               for level, text in notifications)
    # The first slice too: the stack's size comes from the table.
    first = root / "Images_png" / "000001_01_01" / "010.png"
    first.write_bytes(b"")
    (data, _kwargs, _kind), *_ = read_path(str(table))
    assert (np.asarray(data[0]) == -1024.0).all() and np.asarray(data[2]).max() > -1000
    assert any(level == "warning" and "000001_01_01_010.png" in text
               for level, text in notifications)


@pytest.mark.parametrize("column", ["File_name", "Measurement_coordinates", "Spacing_mm_px_"])
def test_a_deeplesion_table_missing_a_column_is_opened_to_name_it(tmp_path, notifications,
                                                                  column):
    import pandas as pd

    from ._recist_table_data import write_deeplesion

    table = write_deeplesion(tmp_path / "dl")
    pd.read_csv(table).drop(columns=[column]).to_csv(table, index=False)
    reader = get_reader(str(table))
    assert reader is not None  # taken as a DeepLesion table, not refused without a word
    assert reader(str(table)) == [(None,)]
    level, text = notifications[-1]
    assert level == "error" and column in text and "DL_info.csv" in text


# -- labels writer ------------------------------------------------------------------------------
def test_labels_drawn_on_a_scan_are_saved_on_its_grid(tmp_path, make_napari_viewer,
                                                      notifications):
    """Open an oblique NIfTI, press napari's new-labels button, paint, save as NIfTI: the file
    overlays the scan in other viewers (same size, spacing, origin and axes)."""
    import napari
    import SimpleITK as sitk

    scan = sitk.GetImageFromArray(np.zeros((5, 24, 32), np.int16))
    scan.SetSpacing((0.7, 0.8, 2.5))
    scan.SetOrigin((10.0, -20.0, 30.0))
    scan.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(scan, str(tmp_path / "ct.nii.gz"))
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "ct.nii.gz"), plugin=PLUGIN)
    viewer.layers.selection.active = image
    viewer.window._qt_viewer.layerButtons.newLabelsButton.click()
    labels = viewer.layers[-1]
    assert labels._type_string == "labels" and "grid" not in labels.metadata
    labels.data[3, 4:9, 6:12] = 2
    paths = napari.save_layers(str(tmp_path / "ct-masks.nii.gz"), [labels])
    assert paths == [str(tmp_path / "ct-masks.nii.gz")]
    back = sitk.ReadImage(paths[0])
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(scan, getter)(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels.data)
    # Opened again, the masks are a Labels layer on the scan, and save back onto its grid.
    (again,) = viewer.open(paths[0], plugin=PLUGIN)
    assert again._type_string == "labels" and image._type_string == "image"
    np.testing.assert_allclose(again.scale, image.scale)
    np.testing.assert_allclose(again.translate, image.translate)
    np.testing.assert_array_equal(again.data, labels.data)
    resaved = sitk.ReadImage(napari.save_layers(str(tmp_path / "again.nrrd"), [again])[0])
    np.testing.assert_allclose(resaved.GetDirection(), scan.GetDirection())

    # Labels on a grid of their own keep their scale and translation, with the scanner's axes.
    coarse = viewer.add_labels(np.ones((5, 12, 16), np.uint8), scale=(2.5, 1.6, 1.4))
    back = sitk.ReadImage(napari.save_layers(str(tmp_path / "coarse.mha"), [coarse])[0])
    np.testing.assert_allclose(back.GetSpacing(), (1.4, 1.6, 2.5))
    np.testing.assert_allclose(back.GetDirection(), np.eye(3).ravel())
    assert not notifications

    # Labels with no pixel size are saved, and the user is told at what size.
    plain = viewer.add_labels(np.ones((12, 16), np.uint8), name="drawn on a photo")
    napari.save_layers(str(tmp_path / "plain.nii.gz"), [plain])
    (level, text), = notifications
    assert level == "warning" and "'drawn on a photo'" in text and "1 mm voxels" in text
    notifications.clear()
    # A stack of key slices of different pixel sizes (a DeepLesion table) has none either.
    stack = viewer.add_labels(np.ones((2, 12, 16), np.uint8), name="key slices",
                              metadata={META_KEY: {"slice_spacing": [[0.5, 0.5], [0.8, 0.8]]}})
    napari.save_layers(str(tmp_path / "stack.nii.gz"), [stack])
    (level, text), = notifications
    assert level == "warning" and "pixel sizes differ (0.5 to 0.8 mm)" in text
    notifications.clear()

    negative = viewer.add_labels(np.full((5, 24, 32), -1, np.int32))
    with pytest.warns(UserWarning, match="did not return any written paths"):
        napari.save_layers(str(tmp_path / "negative.nii"), [negative], plugin=PLUGIN)
    assert not (tmp_path / "negative.nii").exists()
    (level, text), = notifications
    assert level == "error" and "labels must be 0 or more, found -1" in text


def test_labels_on_two_scans_oriented_differently_are_saved_on_the_one_they_are_named_after(
        tmp_path, make_napari_viewer, notifications):
    # Two scans of one size, pixel size and origin, but rotated differently, look the same in
    # napari: labels over them must never be saved with one's orientation by chance.
    import napari
    import SimpleITK as sitk

    directions = {"rot": (0.866, -0.5, 0.0, 0.5, 0.866, 0.0, 0.0, 0.0, 1.0),
                  "lps": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)}
    viewer = make_napari_viewer()
    for name, direction in directions.items():
        scan = sitk.GetImageFromArray(np.zeros((4, 20, 24), np.int16))
        scan.SetSpacing((0.7, 0.7, 5.0))
        scan.SetOrigin((1.0, 2.0, 3.0))
        scan.SetDirection(direction)
        sitk.WriteImage(scan, str(tmp_path / f"{name}.nii.gz"))
        viewer.open(str(tmp_path / f"{name}.nii.gz"), plugin=PLUGIN)
    viewer.layers.selection.active = viewer.layers["rot"]
    viewer.window._qt_viewer.layerButtons.newLabelsButton.click()
    labels = viewer.layers[-1]
    labels.data[1, 3:8, 4:9] = 1
    # A name that says nothing of its scan: refused, naming both.
    labels.name = "painted"
    target = tmp_path / "labels.nii.gz"
    with pytest.warns(UserWarning, match="did not return any written paths"):
        napari.save_layers(str(target), [labels], plugin=PLUGIN)
    assert not target.exists()
    (level, text), = notifications
    assert level == "error" and "'rot', 'lps'" in text and "oriented differently" in text
    # Named after its scan (as napari names a new Labels layer over the chosen image).
    labels.name = "rot - Labels"
    napari.save_layers(str(target), [labels], plugin=PLUGIN)
    np.testing.assert_allclose(sitk.ReadImage(str(target)).GetDirection(), directions["rot"],
                               atol=1e-3)


@pytest.mark.parametrize(("name", "values", "kind"), [
    ("liver_mask.nii.gz", np.array([0, 1, 2]), "labels"),
    ("case_seg.nrrd", np.array([0, 300]), "labels"),
    ("liver_mask_probability.nii.gz", np.array([0.0, 0.5]), "image"),  # not whole numbers
    ("segmental_ct.mha", np.array([-1000, 40]), "image"),  # HU below 0
    ("ct.nii.gz", np.array([0, 1]), "image"),  # nothing in the name says masks
])
def test_label_images_open_as_labels(tmp_path, name, values, kind):
    import SimpleITK as sitk

    from napari_recist_seg.plugin.reader import read_path

    vol = np.resize(values, (3, 6, 7)).astype(values.dtype)
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / name))
    ((data, kwargs, layer_type),) = read_path(str(tmp_path / name))
    assert layer_type == kind
    np.testing.assert_array_equal(data, vol)
    if kind == "labels":
        assert "contrast_limits" not in kwargs and "colormap" not in kwargs


def test_lines_saved_from_a_stack_in_pixels_open_on_it_again(tmp_path, make_napari_viewer):
    """A DeepLesion stack of slices of two pixel sizes opens in pixels: a lesion kept from it
    and saved reopens on the stack where it was, its lengths still in mm."""
    import napari
    import pandas as pd

    from napari_recist_seg.plugin.recist_layers import LAYER_GRID_COLUMN

    from ._recist_table_data import write_deeplesion

    table = write_deeplesion(tmp_path / "dl")
    rows = pd.read_csv(table)
    rows.loc[0, "Spacing_mm_px_"] = "0.6, 0.6, 2"
    rows.to_csv(table, index=False)
    viewer = make_napari_viewer()
    layers = viewer.open(str(table), plugin=PLUGIN)
    lines = next(layer for layer in layers if layer._type_string == "shapes")
    np.testing.assert_allclose(lines.scale, 1.0)
    ids = np.asarray(lines.features["lesion_id"])
    lines.selected_data = set(np.flatnonzero(ids != ids[-1]).tolist())
    lines.remove_selected()
    assert len(lines.data) == 2
    saved = napari.save_layers(str(tmp_path / "kept.csv"), [lines], plugin=PLUGIN)
    assert pd.read_csv(saved[0], comment="#")[LAYER_GRID_COLUMN].tolist() == ["pixels"]
    (again,) = viewer.open(saved[0], plugin=PLUGIN)
    np.testing.assert_allclose(again.scale, lines.scale)
    for a, b in zip(again.data, lines.data):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(again.features["spacing_row"], lines.features["spacing_row"])


def test_a_recist_file_whose_pixel_size_differs_from_its_scans_keeps_its_own_and_says_so(
        tmp_path, make_napari_viewer, notifications):
    import napari
    import SimpleITK as sitk

    from napari_recist_seg.plugin.recist_layers import describe_layer

    scan = sitk.GetImageFromArray(np.zeros((4, 64, 64), np.int16))
    scan.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(scan, str(tmp_path / "ct.nii.gz"))
    header = ("lesion_id,image,slice,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,"
              "short_r1,short_c1,spacing_row,spacing_col")
    rows = ["0,ct.nii.gz,2,30,10,30,50,18,30,42,30,1.0,1.0",
            "1,ct.nii.gz,1,10,10,10,30,5,20,15,20,,"]
    (tmp_path / "marks.csv").write_text("\n".join([header, *rows]) + "\n")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "ct.nii.gz"), plugin=PLUGIN)
    (layer,) = viewer.open(str(tmp_path / "marks.csv"), plugin=PLUGIN)
    warnings = [text for level, text in notifications if level == "warning"]
    assert warnings == ["marks.csv: pixel size 1 x 1 mm given for lesion(s) 0 of ct.nii.gz, "
                        "whose header says 0.7 x 0.7 mm. The lines lie on the scan's pixels "
                        "and are measured with the file's sizes, as recist-seg's commands "
                        "measure them."]
    # The lines lie on the scan's grid; each lesion has the length the commands give it.
    assert tuple(layer.scale) == pytest.approx((2.5, 0.7, 0.7))
    lengths = {info.lesion_id: info.recist.long_mm
               for info in describe_layer(layer, (0.7, 0.7))}
    assert lengths == pytest.approx({0: 40.0, 1: 14.0})
    # Saved again, the file keeps the pixel size it gave.
    path = napari.save_layers(str(tmp_path / "again.csv"), [layer], plugin=PLUGIN)[0]
    assert [r.spacing for r in read_recists(path).recists] == [
        (1.0, 1.0), pytest.approx((0.7, 0.7))]
