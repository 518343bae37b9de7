"""RECIST CSV/JSON files, atomic writes, and Shapes layer conversion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_recist_seg.core.recist import Recist
from napari_recist_seg.data import recist_files
from napari_recist_seg.data._atomic import atomic_write
from napari_recist_seg.data.recist_files import (
    RecistTable,
    read_recists,
    recist_layer_data,
    table_from_layer_data,
    write_recists,
)


def _recists():
    # Awkward floats on purpose: the round trip must be exact, not just close.
    a = Recist([[10.1, 20.3], [30.7, 40.9]], [[30.0, 15.0], [12.0, 35.0]], spacing=(0.7, 0.7))
    t = 0.1 + 0.2
    b = Recist([[t, 1 / 3], [t + 50, 1 / 3]], [[25.0, -10.0], [25.0, 10.0]], spacing=(1.0, 1.0))
    c = Recist(
        [[100.0, 100.0], [100.0, 160.0]],
        [[90.0, 130.0], [110.0, 130.0]],
        spacing=(0.123456789012345, 0.987654321),
    )
    return [a, b, c]


FEATURES = {
    "group": ["liver", "lung", "node, with comma"],
    "count": [3, -1, 0],
    "score": [0.1 + 0.2, 1e-300, -2.5],
    "note": ["", "x", 'quote "y"\nand # a second line'],
}


def _table():
    return RecistTable(
        _recists(),
        lesion_ids=[4, 7, 9],
        slices=[0, 12, 3],
        images=["ct.nii.gz", "ct.nii.gz", "other scan"],
        features={k: list(v) for k, v in FEATURES.items()},
    )


def _assert_same(a: RecistTable, b: RecistTable):
    assert a.recists == b.recists  # exact equality of coordinates and spacing
    for ra, rb in zip(a.recists, b.recists):
        assert ra.spacing == rb.spacing
    assert a.lesion_ids == b.lesion_ids
    assert a.slices == b.slices
    assert a.images == b.images
    assert a.features == b.features
    for name in a.features:
        assert [type(v) for v in a.features[name]] == [type(v) for v in b.features[name]], name


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_round_trip_exact(tmp_path, suffix):
    table = _table()
    path = write_recists(tmp_path / f"marks{suffix}", table)
    _assert_same(read_recists(path), table)
    # Writing what was read gives the same bytes.
    first = path.read_bytes()
    write_recists(path, read_recists(path))
    assert path.read_bytes() == first


def test_csv_layout(tmp_path):
    path = write_recists(tmp_path / "m.csv", _table())
    lines = path.read_text().splitlines()
    assert lines[0] == "# napari-recist-seg recist csv v1"
    assert lines[1].split(",")[:13] == list(recist_files.CSV_COLUMNS)
    assert lines[1].endswith("group,count,score,note")


def test_json_keeps_types_exactly(tmp_path):
    features = {"flag": [True, False, None], "code": ["007", "1", "x"], "mixed": [1, 2.5, "a"]}
    path = write_recists(tmp_path / "m.json", _recists(), features=features)
    table = read_recists(path)
    assert table.features == features
    assert table.slices is None and table.images is None
    assert table.lesion_ids == [0, 1, 2]
    doc = json.loads(path.read_text())
    assert doc["format"] == "napari-recist-seg-recist" and doc["format_version"] == 1


def test_csv_2d_without_optional_columns(tmp_path):
    path = write_recists(tmp_path / "m.csv", _recists(), lesion_ids=[1, 2, 3])
    table = read_recists(path)
    assert table.slices is None and table.images is None and table.features == {}
    assert table.recists == _recists()


def test_csv_written_by_hand(tmp_path):
    # No version line, no spacing columns (1 mm assumed), extra numeric feature with a gap.
    path = tmp_path / "hand.csv"
    path.write_text(
        "lesion_id,long_r0,long_c0,long_r1,long_c1,short_r0,short_c0,short_r1,short_c1,size\n"
        "1,0,0,0,10,-3,5,3,5,2\n"
        "2,0,0,10,0,5,-2,5,2,\n"
    )
    table = read_recists(path)
    assert table.lesion_ids == [1, 2]
    assert table.recists[0].spacing == (1.0, 1.0)
    assert table.features == {"size": [2, None]}


def test_numpy_values_are_written_plainly(tmp_path):
    feats = {"v": [np.float32(1.5), np.int64(2), np.float64(0.1)]}
    for suffix in (".csv", ".json"):
        path = write_recists(
            tmp_path / f"n{suffix}", _recists(), lesion_ids=np.arange(3), features=feats
        )
        assert read_recists(path).features["v"] == [1.5, 2, 0.1]


def test_newer_versions_refused(tmp_path):
    path = write_recists(tmp_path / "m.json", _table())
    doc = json.loads(path.read_text())
    doc["format_version"] = 2
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="format_version 2 is newer than this version"):
        read_recists(path)
    csv_path = write_recists(tmp_path / "m.csv", _table())
    text = csv_path.read_text().replace("csv v1", "csv v3", 1)
    csv_path.write_text(text)
    with pytest.raises(ValueError, match="version 3 is newer"):
        read_recists(csv_path)


def test_missing_column_and_key(tmp_path):
    path = write_recists(tmp_path / "m.csv", _table())
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("short_c1", "shortc1")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"m\.csv: missing required column\(s\) short_c1"):
        read_recists(path)
    jpath = write_recists(tmp_path / "m.json", _table())
    doc = json.loads(jpath.read_text())
    del doc["lesions"][1]["short_axis"]
    jpath.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"m\.json: lesion entry 2 is missing required key"):
        read_recists(jpath)
    doc = {"format": "something else", "format_version": 1, "lesions": []}
    jpath.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not a napari-recist-seg RECIST file"):
        read_recists(jpath)
    # Lesions written without the object around them: the message shows that object.
    jpath.write_text(json.dumps([{"lesion_id": 0, "long_axis": [[0, 0], [0, 9]],
                                  "short_axis": [[-2, 4], [2, 4]]}]))
    with pytest.raises(ValueError, match=r"its lesions go in a list under 'lesions' of one "
                                         r"object, \{\"format\": \"napari-recist-seg-recist\", "
                                         r"\"format_version\": 1, \"lesions\": \[\.\.\.\]\}"):
        read_recists(jpath)


def test_invalid_rows_name_row_and_lesion(tmp_path):
    path = write_recists(tmp_path / "m.csv", _table())
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[3:7] = ["0", "0", "0", "0"]  # zero-length long axis for lesion 7 (data row 2)
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"row 2 \(lesion 7\): invalid RECIST.*zero length"):
        read_recists(path)
    cells[3] = "abc"
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"row 2 \(lesion 7\): column long_r0 is not a number"):
        read_recists(path)
    jpath = write_recists(tmp_path / "m.json", _table())
    doc = json.loads(jpath.read_text())
    doc["lesions"][2]["short_axis"] = [[0, 0], [500, 500]]
    jpath.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"lesion entry 3 \(lesion 9\): invalid RECIST"):
        read_recists(jpath)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_corrupt_and_truncated_files(tmp_path, suffix):
    path = write_recists(tmp_path / f"m{suffix}", _table())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"m\\{suffix}"):
        read_recists(path)
    path.write_bytes(b"\x00\xff\xfe garbage \x81")
    with pytest.raises(ValueError, match=f"m\\{suffix}"):
        read_recists(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=f"m\\{suffix}"):
        read_recists(path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"\.txt"):
        write_recists(tmp_path / "m.txt", _recists())
    with pytest.raises(ValueError, match="no such file"):
        read_recists(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="reserved"):
        write_recists(tmp_path / "m.csv", _recists(), features={"axis": [1, 2, 3]})
    with pytest.raises(ValueError, match="2 values for 3 lesions"):
        write_recists(tmp_path / "m.csv", _recists(), features={"f": [1, 2]})
    with pytest.raises(ValueError, match="feature 'f'"):
        write_recists(tmp_path / "m.json", _recists(), features={"f": [1, 2, object()]})
    with pytest.raises(ValueError, match="not a Recist"):
        write_recists(tmp_path / "m.json", [1, 2])
    assert list(tmp_path.iterdir()) == []


# -- atomic writes --------------------------------------------------------------------------------
def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out.csv"
    with atomic_write(target, "w") as fh:
        fh.write("hello")
    assert target.read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    with atomic_write(target, "wb") as fh:
        fh.write(b"bytes")
    assert target.read_bytes() == b"bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("original")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as fh:
            fh.write("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "original"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(ValueError, match="does not exist"):
        with atomic_write(tmp_path / "no" / "x.txt"):
            pass
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(target, "a"):
            pass


def test_write_recists_failure_midway_keeps_old_file(tmp_path, monkeypatch):
    path = write_recists(tmp_path / "m.csv", _table())
    before = path.read_bytes()
    calls = {"n": 0}
    real = recist_files._num

    def failing(value):
        calls["n"] += 1
        if calls["n"] > 15:
            raise OSError("disk full")
        return real(value)

    monkeypatch.setattr(recist_files, "_num", failing)
    with pytest.raises(OSError, match="disk full"):
        write_recists(path, _recists())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


# -- Shapes layer ---------------------------------------------------------------------------------
def test_layer_round_trip_3d():
    table = _table()
    uniform = RecistTable(
        [r.with_spacing((0.7, 0.7)) for r in table.recists],
        table.lesion_ids,
        table.slices,
        table.images,
        table.features,
    )
    data, features, scale = recist_layer_data(uniform)
    assert len(data) == 6 and data[0].shape == (2, 3)
    np.testing.assert_array_equal(data[2][:, 0], [12, 12])
    assert features["lesion_id"] == [4, 4, 7, 7, 9, 9]
    assert features["axis"] == ["long", "short"] * 3
    assert features["group"][:2] == ["liver", "liver"]
    assert features["image"][4] == "other scan"
    assert "spacing_row" not in features
    assert scale == (1.0, 0.7, 0.7)
    _assert_same(table_from_layer_data(data, features, scale), uniform)


def test_layer_round_trip_mixed_spacing_and_dataframe():
    import pandas as pd

    table = _table()
    data, features, scale = recist_layer_data(table)
    assert scale == (1.0, 1.0, 1.0)
    assert "spacing_row" in features
    # A Shapes layer keeps features as a DataFrame, with numpy scalars inside.
    frame = pd.DataFrame(features)
    _assert_same(table_from_layer_data(data, frame, scale), table)


def test_layer_2d_and_lines_in_any_order():
    table = RecistTable(_recists()[:2], lesion_ids=[5, 6], features={"f": ["a", "b"]})
    table = RecistTable(
        [r.with_spacing((0.5, 0.5)) for r in table.recists], [5, 6], features=table.features
    )
    data, features, scale = recist_layer_data(table)
    assert data[0].shape == (2, 2) and scale == (0.5, 0.5)
    order = [3, 1, 2, 0]  # short before long, lesions interleaved
    shuffled = [data[i] for i in order]
    feats = {k: [v[i] for i in order] for k, v in features.items()}
    out = table_from_layer_data(shuffled, feats, scale)
    assert sorted(out.lesion_ids) == [5, 6]
    by_id = dict(zip(out.lesion_ids, out.recists))
    assert by_id[5] == table.recists[0] and by_id[6] == table.recists[1]
    assert dict(zip(out.lesion_ids, out.features["f"])) == {5: "a", 6: "b"}
    with pytest.raises(ValueError, match="lesion 5 has no short axis"):
        table_from_layer_data(data[:1] + data[2:], {k: v[:1] + v[2:] for k, v in features.items()})


def test_lesions_drawn_on_a_stack_take_the_image_name_of_their_slice(tmp_path):
    import pandas as pd

    def lesion(z, r, c):
        return [np.array([[z, r, c - 10], [z, r, c + 10]], float),
                np.array([[z, r - 5, c], [z, r + 5, c]], float)]

    data = lesion(0, 20, 20) + lesion(0, 50, 50) + lesion(1, 30, 30) + lesion(2, 40, 40)
    # Read from a table (first lesion), drawn in the viewer: NaN in a DataFrame, or empty.
    frame = pd.DataFrame({
        "lesion_id": [0, 0, 1, 1, 2, 2, 3, 3],
        "axis": ["long", "short"] * 4,
        "image": ["a_012.png", "a_012.png", np.nan, np.nan, "b_007.png", "b_007.png", "", ""],
    })
    table = table_from_layer_data(data, frame, (1.0, 0.8, 0.8))
    # Slice 2 shows no lesion with a name: its lesion keeps none rather than "nan".
    assert table.images == ["a_012.png", "a_012.png", "b_007.png", ""]
    written = tmp_path / "out.csv"
    write_recists(written, table)
    assert "nan" not in written.read_text()
    assert read_recists(written).images == table.images


def test_a_2d_layer_read_from_a_table_saves_again_with_its_image_name(tmp_path):
    import pandas as pd

    data = [np.array([[20, 10], [20, 30]], float), np.array([[15, 20], [25, 20]], float),
            np.array([[50, 40], [50, 70]], float), np.array([[45, 55], [55, 55]], float)]
    # The first lesion came from the table (its image named), the second was drawn.
    frame = pd.DataFrame({"lesion_id": [0, 0, 1, 1], "axis": ["long", "short"] * 2,
                          "image": ["ISIC_1.jpg", "ISIC_1.jpg", np.nan, np.nan]})
    table = table_from_layer_data(data, frame, (1.0, 1.0))
    assert table.slices is None and table.images == ["ISIC_1.jpg", "ISIC_1.jpg"]
    write_recists(tmp_path / "again.csv", table)
    assert read_recists(tmp_path / "again.csv").images == ["ISIC_1.jpg", "ISIC_1.jpg"]
