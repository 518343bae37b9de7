"""The DeepLesion-like generator: synthetic lesions in CT hosts, DeepLesion's layout, true masks."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage

from napari_recist_seg.core.pseudo_masks import pseudo_mask
from napari_recist_seg.core.recist import recist_from_mask
from napari_recist_seg.data.deeplesion import read_deeplesion, read_deeplesion_slice
from napari_recist_seg.data.synthetic_lesions import (
    HOST_WINDOW,
    HostPose,
    LesionAppearance,
    host_to_hu,
    paint_lesion,
    random_shape,
    render_key_slice,
)

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "make_deeplesion_like.py"
SIZE = 128
# HU of the fake hosts' tissues, as a 0..255 value in the hosts' window.
SOFT_HU, FAT_HU, BONE_HU = 40.0, -100.0, 600.0


def _load_script():
    name = "make_deeplesion_like"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        # Registered first so that worker processes can find its functions by name.
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _to_8bit(hu):
    lo, hi = HOST_WINDOW
    return np.clip(np.rint((hu - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def _fake_host(seed: int) -> np.ndarray:
    """A body disc of soft tissue with a fat rim and a bone disc, in air: HU, then 8-bit."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:SIZE, :SIZE]
    centre = SIZE / 2 + rng.uniform(-4, 4, size=2)
    dist = np.hypot(rr - centre[0], cc - centre[1])
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[dist < 58] = FAT_HU
    hu[dist < 50] = SOFT_HU
    bone = np.hypot(rr - centre[0] - 25, cc - centre[1]) < 9
    hu[bone] = BONE_HU
    hu += rng.normal(0, 6, hu.shape)
    return _to_8bit(hu)


@pytest.fixture
def hosts(tmp_path):
    folder = tmp_path / "hosts"
    folder.mkdir()
    for i in range(3):
        iio.imwrite(folder / f"{i:03d}_score_{i - 1:.2f}_host.png", _fake_host(i))
    return folder


def _make(hosts, out, n=10, seed=3, extra=()):
    module = _load_script()
    return module.main(["--hosts", str(hosts), "--out", str(out), "--lesions", str(n),
                        "--seed", str(seed), *extra])


def _own_component(mask: np.ndarray, record) -> np.ndarray:
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    r, c = np.rint(record.recist.long_axis[0]).astype(int)
    assert labels[r, c] > 0, f"{record.file_name}: the RECIST does not start on a lesion"
    return labels == labels[r, c]


@pytest.fixture
def made(hosts, tmp_path, capsys):
    out = tmp_path / "set"
    assert _make(hosts, out) == 0
    return out, capsys.readouterr().out


def test_reader_reads_the_set_and_slices_exist(made):
    out, text = made
    records = read_deeplesion(out, invalid="raise")
    assert len(records) == 10
    with open(out / "DL_info.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[:18] == list(_load_script().COLUMNS)
    names = {r.file_name for r in records}
    assert len(names) < len(records), "no key slice holds several lesions"
    for record in records:
        assert record.image_path == out / "Images_png" / record.series_name / \
            f"{record.key_slice:03d}.png"
        for number in (record.key_slice - 1, record.key_slice, record.key_slice + 1):
            image = iio.imread(record.image_path.parent / f"{number:03d}.png")
            assert image.dtype == np.uint16 and image.shape == (SIZE, SIZE)
        stack = read_deeplesion_slice(record, neighbours=1, slice_gap_mm=record.spacing_mm[2])
        assert stack.shape == (3, SIZE, SIZE)
        assert not np.array_equal(stack[0], stack[1])  # the neighbours are other slices
        assert record.image_size == (SIZE, SIZE)
        assert record.window == HOST_WINDOW
    for name in names:
        mask = iio.imread(out / "masks" / name)
        assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE)
        assert set(np.unique(mask)) == {0, 255}
    assert "quarter_ellipse: mean" in text and "disk:" in text and "time:" in text


def test_recist_rows_measure_their_own_lesion(made):
    out, _ = made
    records = read_deeplesion(out, invalid="raise")
    counts = {}
    for record in records:
        mask = iio.imread(out / "masks" / record.file_name) > 0
        own = _own_component(mask, record)
        measured = recist_from_mask(own)
        assert abs(measured.long_length - record.recist.long_length) <= 1.0
        assert abs(measured.short_length - record.recist.short_length) <= 1.0
        assert record.diameters_px == pytest.approx(
            (record.recist.long_length, record.recist.short_length), abs=1e-3)
        # DeepLesion's box: the endpoints' extent padded by 5 px.
        r0, c0, r1, c1 = record.recist.bbox
        assert record.box == pytest.approx((r0 - 5, c0 - 5, r1 + 5, c1 + 5), abs=1e-3)
        # The true mask is not an ellipse drawn from the RECIST.
        assert not np.array_equal(pseudo_mask(record.recist, mask.shape, "ellipse"), own)
        counts[record.file_name] = counts.get(record.file_name, 0) + 1
    # Every lesion of a slice is its own component of the slice's mask.
    for name, n in counts.items():
        mask = iio.imread(out / "masks" / name) > 0
        _, found = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        assert found == n


def test_lesions_lie_in_soft_tissue_of_the_host(made, hosts):
    out, _ = made
    records = read_deeplesion(out, invalid="raise")
    with open(out / "synthetic_lesions.csv", newline="") as fh:
        info = list(csv.DictReader(fh))
    assert len(info) == len(records)
    by_slice = {}
    for row in info:
        by_slice.setdefault(row["File_name"], row)
    for name, row in by_slice.items():
        host = host_to_hu(iio.imread(hosts / row["host"]))
        pose = HostPose(float(row["host_rotation_deg"]), float(row["host_scale"]),
                        (float(row["host_shift_row"]), float(row["host_shift_col"])))
        posed = pose.apply(host)
        mask = iio.imread(out / "masks" / name) > 0
        under = posed[mask]
        assert under.size > 0
        assert under.min() > FAT_HU / 2 and under.max() < 200, name
        key = read_deeplesion_slice(next(r for r in records if r.file_name == name),
                                    neighbours=0)
        # The lesions changed the slice there, and only near them.
        near = ndimage.binary_dilation(mask, iterations=6)
        assert np.abs(key[mask] - posed[mask]).mean() > 5
        assert np.abs(key[~near] - np.rint(posed[~near])).max() <= 1


def test_same_seed_same_set_other_seed_other_set(hosts, tmp_path):
    _make(hosts, tmp_path / "a", seed=5)
    _make(hosts, tmp_path / "b", seed=5)
    _make(hosts, tmp_path / "c", seed=6)
    first = (tmp_path / "a" / "DL_info.csv").read_bytes()
    assert first == (tmp_path / "b" / "DL_info.csv").read_bytes()
    assert first != (tmp_path / "c" / "DL_info.csv").read_bytes()
    masks_a = sorted((tmp_path / "a" / "masks").iterdir())
    assert [p.read_bytes() for p in masks_a] == [
        (tmp_path / "b" / "masks" / p.name).read_bytes() for p in masks_a]


def test_worker_processes_make_the_same_set(hosts, tmp_path):
    _make(hosts, tmp_path / "one", n=8, seed=2)
    _make(hosts, tmp_path / "two", n=8, seed=2, extra=("--workers", "2"))
    for name in ("DL_info.csv", "synthetic_lesions.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    assert one == two
    assert all((tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes()
               for p in one)


def test_existing_output_needs_overwrite(hosts, tmp_path, capsys):
    out = tmp_path / "set"
    _make(hosts, out, seed=1)
    before = (out / "DL_info.csv").read_bytes()
    with pytest.raises(SystemExit):
        _make(hosts, out, seed=2)
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "DL_info.csv").read_bytes() == before
    _make(hosts, out, seed=2, extra=("--overwrite",))
    assert (out / "DL_info.csv").read_bytes() != before
    assert len(read_deeplesion(out, invalid="raise")) == 10
    # No partial or old folder is left next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts", "set"]


def test_overwrite_never_deletes_a_folder_that_is_not_a_set(hosts, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit):
        _make(hosts, out, extra=("--overwrite",))
    assert "not a generated set" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("args, message", [
    (["--lesions", "0"], "--lesions must be between"),
    (["--seed", "-1"], "--seed must be 0 or more"),
])
def test_bad_numbers_are_refused(hosts, tmp_path, capsys, args, message):
    module = _load_script()
    base = {"--hosts": str(hosts), "--out": str(tmp_path / "o"), "--lesions": "3"}
    base.update(dict(zip(args[::2], args[1::2])))
    with pytest.raises(SystemExit):
        module.main([x for kv in base.items() for x in kv])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_hosts_are_named(tmp_path, capsys):
    folder = tmp_path / "hosts"
    folder.mkdir()
    iio.imwrite(folder / "deep.png", np.zeros((96, 96), np.uint16))
    with pytest.raises(SystemExit):
        _make(folder, tmp_path / "o")
    err = capsys.readouterr().err
    assert "deep.png" in err and "8-bit" in err
    with pytest.raises(SystemExit):
        _make(tmp_path / "nowhere", tmp_path / "o")
    assert "no such folder" in capsys.readouterr().err


# -- the lesion-drawing module --------------------------------------------------------------
def test_host_to_hu_maps_the_window_and_refuses_other_images():
    hu = host_to_hu(np.array([[0, 255]], np.uint8))
    assert hu.tolist() == [[HOST_WINDOW[0], HOST_WINDOW[1]]]
    with pytest.raises(ValueError, match="8-bit"):
        host_to_hu(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="2D"):
        host_to_hu(np.zeros((4, 4, 4, 4), np.uint8))


def test_shapes_are_lobulated_not_ellipses():
    rng = np.random.default_rng(0)
    quarter = []
    for _ in range(120):
        long_px = float(rng.uniform(15, 60))
        mask, origin = random_shape(rng, long_px).rasterise((80.0, 80.0), (160, 160))
        full = np.zeros((160, 160), bool)
        full[origin[0]:origin[0] + mask.shape[0], origin[1]:origin[1] + mask.shape[1]] = mask
        labels, n = ndimage.label(full, structure=np.ones((3, 3), dtype=bool))
        assert n == 1 and ndimage.binary_fill_holes(full).sum() == full.sum()
        recist = recist_from_mask(full)
        assert 0.5 * long_px <= recist.long_length <= 1.3 * long_px
        drawn = pseudo_mask(recist, full.shape, "quarter_ellipse")
        quarter.append(2 * (drawn & full).sum() / (drawn.sum() + full.sum()))
    quarter = np.asarray(quarter)
    # Real CT lesions give 0.909; near-ellipses would give over 0.93.
    assert 0.84 < quarter.mean() < 0.93
    assert quarter.std() > 0.02 and quarter.min() < 0.85


def test_paint_lesion_sets_the_contrast_and_keeps_the_rest():
    rng = np.random.default_rng(1)
    hu = np.full((60, 60), 50.0, np.float32) + rng.normal(0, 3, (60, 60)).astype(np.float32)
    before = hu.copy()
    mask = np.zeros((20, 20), bool)
    mask[4:16, 5:15] = True
    look = LesionAppearance(contrast_hu=-40.0, texture_hu=1.0, texture_sigma=1.0,
                            edge_sigma=0.8)
    paint_lesion(hu, mask, (20, 20), look, 50.0, rng)
    inside = np.zeros_like(mask, shape=hu.shape)
    inside[20:40, 20:40] = mask
    core = ndimage.binary_erosion(inside, iterations=3)
    assert hu[core].mean() == pytest.approx(10.0, abs=3)
    far = ~ndimage.binary_dilation(inside, iterations=8)
    assert np.array_equal(hu[far], before[far])


def test_render_key_slice_avoids_air_fat_and_bone():
    hu = host_to_hu(_fake_host(7))
    rng = np.random.default_rng(4)
    poses = (HostPose(), HostPose())
    out = render_key_slice(hu, HostPose(), poses, 5, [20.0] * 5, 5.0, 0.7, rng)
    assert len(out.lesions) == 5
    assert hu[out.mask].min() > FAT_HU / 2 and hu[out.mask].max() < 200
    # A lesion that shows on no neighbour leaves that neighbour as the host itself.
    for side in (0, 1):
        if out.neighbours[side] is None:
            assert not any(lesion.on_neighbours[side] for lesion in out.lesions)
        else:
            assert not np.array_equal(out.neighbours[side], hu)
