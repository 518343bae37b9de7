"""Make a DeepLesion-like CT set whose lesions have true masks, for benchmarks.

Real CT slices without labels (8-bit, soft-tissue window) receive synthetic lesions with
lobulated outlines, a density above or below the tissue around them, texture and soft edges,
placed in soft tissue only. The result is laid out exactly as DeepLesion is:

    DIR/DL_info.csv                        one row per lesion, DeepLesion's columns
    DIR/Images_png/PPPPPP_SS_ss/NNN.png    16-bit key slices (HU + 32768) and slices NNN-1, NNN+1
    DIR/masks/PPPPPP_SS_ss_NNN.png         true masks, 8-bit, 255 inside any lesion of the slice
    DIR/synthetic_lesions.csv              how each lesion was made (host, contrast, ...)

The RECIST of each row is measured on its lesion's own mask. About three lesions share a key
slice, which keeps the full size (32,735 lesions) near 3-4 GB, and a neighbour slice on which
no lesion shows is a hard link to an identical earlier file. The same seed gives the same set,
whatever the number of --workers:

    python examples/make_deeplesion_like.py --hosts ../shared/data/ct_hosts/deeplesion_8bit \\
        --out /tmp/dl_like --lesions 300 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_recist_seg.data.synthetic_lesions import (
    HOST_WINDOW,
    HostPose,
    host_to_hu,
    random_pose,
    render_key_slice,
)

COLUMNS = (
    "File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
    "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
    "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range",
    "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age",
    "Train_Val_Test",
)
INFO_COLUMNS = (
    "File_name", "lesion", "host", "host_rotation_deg", "host_scale", "host_shift_row",
    "host_shift_col", "local_hu", "contrast_hu", "core_hu", "texture_hu", "edge_sigma_px",
    "area_px", "on_previous_slice", "on_next_slice",
)
# DeepLesion pads the endpoints' extent by 5 pixels to make Bounding_boxes.
BOX_PAD = 5.0
# 16-bit PNGs store HU + 32768.
PNG16_OFFSET = 32768
# Poses per host: each host appears in this many positions, and neighbour slices without a
# lesion repeat within a pose, so they are stored once.
POSES_PER_HOST = 8
# Long axis in pixels: log-normal around DeepLesion's median (23.6 px, quartiles 15 and 39).
LONG_MEDIAN_PX, LONG_LOG_SD = 23.6, 0.71
# Lesions per key slice (DeepLesion has about one; more keep the disk use down).
PER_SLICE = (1, 2, 3, 4, 5, 6)
PER_SLICE_P = (0.2, 0.2, 0.2, 0.2, 0.1, 0.1)
SPLITS = (1, 2, 3)
SPLIT_SHARES = (0.70, 0.15, 0.15)
MAX_LESIONS = 10_000_000
_SCORE_RE = re.compile(r"_score_(-?\d+(?:\.\d+)?)_")


@dataclass(frozen=True)
class Host:
    """A host slice: its file name, pixels in HU and body-part position (0 neck, 1 thigh)."""

    name: str
    hu: np.ndarray
    z: float


@dataclass(frozen=True)
class KeySlice:
    """What one key slice will hold: who, where, which host, how many lesions of what size."""

    index: int
    patient: int
    study: int
    series: int
    number: int
    host: int
    pose: int
    long_px: tuple
    pixel_mm: float
    interval_mm: float
    gender: str
    age: int

    @property
    def series_name(self) -> str:
        return f"{self.patient:06d}_{self.study:02d}_{self.series:02d}"

    @property
    def file_name(self) -> str:
        return f"{self.series_name}_{self.number:03d}.png"


# -- inputs -----------------------------------------------------------------------------------
def load_hosts(folder) -> list[Host]:
    """The 8-bit host slices of ``folder`` (or of its ``images`` subfolder), in name order."""
    import imageio.v3 as iio

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--hosts {folder}: no such folder")
    if (folder / "images").is_dir():
        folder = folder / "images"
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file())
    if not files:
        raise ValueError(f"--hosts {folder}: holds no .png or .jpg slices")
    hosts = []
    for path in files:
        try:
            image = iio.imread(path)
        except Exception as exc:  # imageio raises many types for a broken file
            raise ValueError(f"--hosts: cannot read {path} ({exc})") from None
        try:
            hu = host_to_hu(image)
        except ValueError as exc:
            raise ValueError(f"--hosts: {path}: {exc}") from None
        if min(hu.shape) < 64:
            raise ValueError(f"--hosts: {path} is {hu.shape[1]} x {hu.shape[0]} pixels; "
                             "hosts need at least 64 x 64")
        match = _SCORE_RE.search(path.name)
        # The body-part regressor's score runs from about -12 (neck) to 12 (thigh).
        z = float(np.clip((float(match.group(1)) + 15) / 30, 0, 1)) if match else 0.5
        hosts.append(Host(path.name, hu, z))
    return hosts


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output that exists unless it is empty or ``overwrite`` replaces a set."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {out}: exists and is not empty; pass --overwrite to "
                             "replace it")
        if not (out / "DL_info.csv").is_file():
            # --overwrite deletes the folder: only ever one this script made.
            raise ValueError(f"--out {out}: has no DL_info.csv, so it is not a generated set; "
                             "refusing to replace it even with --overwrite")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: parent folder {out.parent} does not exist")


# -- plan -------------------------------------------------------------------------------------
def plan(rng: np.random.Generator, n_lesions: int, n_hosts: int, shape_min: int,
         first_patient: int = 1, first_index: int = 0) -> list[KeySlice]:
    """Patients, studies, series and key slices holding exactly ``n_lesions`` lesions."""
    slices: list[KeySlice] = []
    left = n_lesions
    patient = first_patient - 1
    while left > 0:
        patient += 1
        gender = str(rng.choice(["F", "M"]))
        age = int(rng.integers(18, 90))
        for study in range(1, int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])) + 1):
            if left <= 0:
                break
            series = int(rng.integers(1, 9))
            pixel_mm = round(float(rng.uniform(0.6, 0.98)), 6)
            interval = float(rng.choice([5.0, 1.0, 2.0, 2.5], p=[0.5, 0.4, 0.05, 0.05]))
            number = int(rng.integers(5, 200))
            for _ in range(int(rng.choice([1, 2], p=[0.7, 0.3]))):
                if left <= 0:
                    break
                n = min(left, int(rng.choice(PER_SLICE, p=PER_SLICE_P)))
                sizes = np.exp(rng.normal(math.log(LONG_MEDIAN_PX), LONG_LOG_SD, size=n))
                sizes = np.clip(sizes, 6.0, 0.3 * shape_min)
                slices.append(KeySlice(
                    first_index + len(slices), patient, study, series, number,
                    int(rng.integers(n_hosts)), int(rng.integers(POSES_PER_HOST)),
                    tuple(float(s) for s in sizes), pixel_mm, interval, gender, age))
                left -= n
                # Keys of one series are far enough apart that their neighbours never meet.
                number += int(rng.integers(4, 40))
    return slices


def assign_splits(rng: np.random.Generator, patients) -> dict[int, int]:
    """Train/val/test (1/2/3) by patient: 70 / 15 / 15 % of the patients in a random order."""
    order = list(patients)
    rng.shuffle(order)
    n = len(order)
    n_train = int(round(SPLIT_SHARES[0] * n))
    n_val = int(round(SPLIT_SHARES[1] * n))
    split = {}
    for i, p in enumerate(order):
        split[p] = 1 if i < n_train else 2 if i < n_train + n_val else 3
    return split


# -- rendering (runs in worker processes) ----------------------------------------------------
_HOSTS: list[Host] = []
_SEED = 0


def _init_worker(hosts, seed) -> None:
    global _HOSTS, _SEED
    _HOSTS, _SEED = hosts, seed


def host_pose(seed: int, host: int, pose: int) -> tuple[HostPose, tuple[HostPose, HostPose]]:
    """The key slice's pose of a host and its neighbours', fixed by (seed, host, pose)."""
    key = random_pose(np.random.default_rng([seed, 1, host, pose]))
    sides = tuple(key.drifted(np.random.default_rng([seed, 2, host, pose, side]))
                  for side in (0, 1))
    return key, sides


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 or uint16 grey image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def hu_to_png16(hu: np.ndarray) -> bytes:
    """DeepLesion's encoding: uint16 = round(HU) + 32768."""
    values = np.clip(np.rint(hu) + PNG16_OFFSET, 0, 65535).astype(np.uint16)
    return encode_png(values)


def render(spec: KeySlice) -> dict:
    """Draw a key slice and return its files as PNG bytes and its lesions' measurements."""
    host = _HOSTS[spec.host]
    pose, sides = host_pose(_SEED, spec.host, spec.pose)
    rng = np.random.default_rng([_SEED, 3, spec.index])
    out = render_key_slice(host.hu, pose, sides, len(spec.long_px), list(spec.long_px),
                           spec.interval_mm, spec.pixel_mm, rng)
    return {
        "key": hu_to_png16(out.key),
        "neighbours": [None if n is None else hu_to_png16(n) for n in out.neighbours],
        "mask": encode_png(np.where(out.mask, 255, 0).astype(np.uint8)),
        "shape": out.key.shape,
        "pose": pose,
        "lesions": out.lesions,
    }


def _results(specs, hosts, seed, workers):
    if workers <= 1:
        _init_worker(hosts, seed)
        yield from map(render, specs)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(hosts, seed)) as pool:
        yield from pool.map(render, specs, chunksize=4)


# -- writing ----------------------------------------------------------------------------------
def _fmt(values) -> str:
    return ", ".join(f"{float(v):.6g}" for v in values)


def deeplesion_row(spec: KeySlice, lesion, shape, host: Host, split: int) -> dict:
    """A DL_info.csv row for one lesion, in DeepLesion's conventions (x before y, 1-based)."""
    recist = lesion.recist
    coords = recist.to_deeplesion(one_based=True)
    xs, ys = coords[0::2], coords[1::2]
    rows, cols = shape
    centre = recist.centre
    return {
        "File_name": spec.file_name,
        "Patient_index": spec.patient,
        "Study_index": spec.study,
        "Series_ID": spec.series,
        "Key_slice_index": spec.number,
        "Measurement_coordinates": _fmt(coords),
        "Bounding_boxes": _fmt([min(xs) - BOX_PAD, min(ys) - BOX_PAD,
                                max(xs) + BOX_PAD, max(ys) + BOX_PAD]),
        "Lesion_diameters_Pixel_": _fmt([recist.long_length, recist.short_length]),
        "Normalized_lesion_location": _fmt([(centre[1] + 1) / cols, (centre[0] + 1) / rows,
                                            host.z]),
        # The generator does not know which organ a lesion sits in.
        "Coarse_lesion_type": -1,
        "Possibly_noisy": 0,
        "Slice_range": f"{spec.number - 1}, {spec.number + 1}",
        "Spacing_mm_px_": f"{spec.pixel_mm:.6g}, {spec.pixel_mm:.6g}, {spec.interval_mm:g}",
        "Image_size": f"{cols}, {rows}",
        "DICOM_windows": f"{HOST_WINDOW[0]:g}, {HOST_WINDOW[1]:g}",
        "Patient_gender": spec.gender,
        "Patient_age": spec.age,
        "Train_Val_Test": split,
    }


def info_row(spec: KeySlice, number: int, lesion, pose: HostPose, host: Host) -> dict:
    look = lesion.appearance
    return {
        "File_name": spec.file_name, "lesion": number, "host": host.name,
        # Full precision: the host's pose can be redone exactly from this file.
        "host_rotation_deg": repr(pose.rotation_deg), "host_scale": repr(pose.scale),
        "host_shift_row": repr(pose.shift[0]), "host_shift_col": repr(pose.shift[1]),
        "local_hu": f"{lesion.local_hu:.4g}", "contrast_hu": f"{look.contrast_hu:.4g}",
        "core_hu": f"{look.core_hu:.4g}", "texture_hu": f"{look.texture_hu:.4g}",
        "edge_sigma_px": f"{look.edge_sigma:.4g}", "area_px": lesion.area_px,
        "on_previous_slice": int(lesion.on_neighbours[0]),
        "on_next_slice": int(lesion.on_neighbours[1]),
    }


class _Writer:
    """Writes slices into the (not yet visible) output folder, linking repeated neighbours."""

    def __init__(self, root: Path, hosts, seed):
        self.root, self.hosts, self.seed = root, hosts, seed
        self.backgrounds: dict[tuple, Path] = {}
        self.links = 0
        (root / "Images_png").mkdir()
        (root / "masks").mkdir()

    def write(self, spec: KeySlice, result: dict) -> None:
        folder = self.root / "Images_png" / spec.series_name
        folder.mkdir(exist_ok=True)
        (folder / f"{spec.number:03d}.png").write_bytes(result["key"])
        for side, data in enumerate(result["neighbours"]):
            target = folder / f"{spec.number - 1 + 2 * side:03d}.png"
            if data is not None:
                target.write_bytes(data)
                continue
            key = (spec.host, spec.pose, side)
            first = self.backgrounds.get(key)
            if first is not None:
                try:
                    os.link(first, target)
                    self.links += 1
                    continue
                except OSError:  # no hard links on this file system: a copy then
                    shutil.copyfile(first, target)
                    continue
            _, sides = host_pose(self.seed, spec.host, spec.pose)
            target.write_bytes(hu_to_png16(sides[side].apply(self.hosts[spec.host].hu)))
            self.backgrounds[key] = target
        (self.root / "masks" / spec.file_name).write_bytes(result["mask"])


def _write_csv(path: Path, columns, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def disk_use(root: Path) -> tuple[int, int, int]:
    """(bytes on disk counting each hard-linked file once, files, hard links to earlier files)."""
    seen = set()
    used = files = links = 0
    for folder, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            files += 1
            if (st.st_dev, st.st_ino) in seen:
                links += 1
                continue
            seen.add((st.st_dev, st.st_ino))
            used += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return used, files, links


# -- checking the result ------------------------------------------------------------------------
def pseudo_mask_dice(root: Path, expected: int, progress) -> dict[str, np.ndarray]:
    """Dice of the quarter-ellipse and ellipse pseudo-masks of each row's RECIST, as the reader
    reads it back, against that lesion's true mask."""
    import imageio.v3 as iio
    from scipy import ndimage

    from napari_recist_seg.core.pseudo_masks import pseudo_mask
    from napari_recist_seg.data.deeplesion import read_deeplesion

    records = read_deeplesion(root, invalid="raise")
    if len(records) != expected:
        raise RuntimeError(f"{root}: DL_info.csv reads back as {len(records)} lesions, "
                           f"{expected} were written")
    dice: dict[str, list] = {"quarter_ellipse": [], "ellipse": []}
    cached = (None, None)
    for record in progress(records, "pseudo-mask Dice"):
        if cached[0] != record.file_name:
            mask = iio.imread(root / "masks" / record.file_name) > 0
            labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
            cached = (record.file_name, labels)
        labels = cached[1]
        # A long-axis endpoint is the centre of a pixel on the lesion's own outline.
        r, c = np.rint(record.recist.long_axis[0]).astype(int)
        own = labels == labels[r, c]
        if labels[r, c] == 0:
            raise RuntimeError(f"{record.file_name}: row {record.csv_row}'s RECIST does not "
                               "start on a lesion of the mask")
        for method, values in dice.items():
            drawn = pseudo_mask(record.recist, own.shape, method)
            values.append(2 * np.count_nonzero(drawn & own)
                          / (np.count_nonzero(drawn) + np.count_nonzero(own)))
    return {k: np.asarray(v) for k, v in dice.items()}


# -- main -------------------------------------------------------------------------------------
def _progress(iterable, desc, total=None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5)


def generate(hosts, root: Path, n_lesions: int, seed: int, workers: int) -> dict:
    """Write the whole set into ``root`` (an empty folder); return counts for the summary."""
    rng = np.random.default_rng([seed, 0])
    shape_min = min(min(h.hu.shape) for h in hosts)
    writer = _Writer(root, hosts, seed)
    rows, info, splits = [], [], {}
    specs_done = 0
    patient = 1
    placed = 0
    bar = _progress(None, "lesions", total=n_lesions)
    with contextlib.closing(bar):
        # Lesions that find no room on their slice are made up for on extra slices.
        for _ in range(20):
            if placed >= n_lesions:
                break
            specs = plan(rng, n_lesions - placed, len(hosts), shape_min, patient, specs_done)
            patients = sorted({s.patient for s in specs})
            splits.update(assign_splits(rng, patients))
            patient = patients[-1] + 1
            specs_done += len(specs)
            for spec, result in zip(specs, _results(specs, hosts, seed, workers)):
                host = hosts[spec.host]
                if not result["lesions"]:
                    continue
                writer.write(spec, result)
                for i, lesion in enumerate(result["lesions"], start=1):
                    rows.append(deeplesion_row(spec, lesion, result["shape"], host,
                                               splits[spec.patient]))
                    info.append(info_row(spec, i, lesion, result["pose"], host))
                placed += len(result["lesions"])
                bar.update(len(result["lesions"]))
        if placed < n_lesions:
            raise RuntimeError(f"only {placed} of {n_lesions} lesions found room in the hosts' "
                               "soft tissue")
    rows.sort(key=lambda r: r["File_name"])
    info.sort(key=lambda r: r["File_name"])
    _write_csv(root / "DL_info.csv", COLUMNS, rows)
    _write_csv(root / "synthetic_lesions.csv", INFO_COLUMNS, info)
    key_slices = len({r["File_name"] for r in rows})
    per_split = {s: sum(1 for r in rows if r["Train_Val_Test"] == s) for s in SPLITS}
    return {"key_slices": key_slices, "per_split": per_split, "links": writer.links}


def _replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished set at ``out``; an old set there is removed only after that."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", required=True,
                        help="folder of 8-bit CT slices, soft-tissue window -175..275 HU")
    parser.add_argument("--out", required=True, help="output folder (DeepLesion layout)")
    parser.add_argument("--lesions", required=True, type=int, help="number of lesions")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes drawing slices (default 1; the result is the same)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing set at --out")
    args = parser.parse_args(argv)
    if not 1 <= args.lesions <= MAX_LESIONS:
        parser.error(f"--lesions must be between 1 and {MAX_LESIONS:,}, got {args.lesions}")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    if args.workers < 1:
        parser.error(f"--workers must be 1 or more, got {args.workers}")
    out = Path(args.out).absolute()
    try:
        check_output(out, args.overwrite)
        hosts = load_hosts(args.hosts)
    except ValueError as exc:
        parser.error(str(exc))

    start = time.perf_counter()
    # Everything is written into a hidden sibling and moved into place when complete, so an
    # interrupted run leaves no half-made set and an old one is replaced only by a whole one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        counts = generate(hosts, tmp, args.lesions, args.seed, args.workers)
        made = time.perf_counter() - start
        dice = pseudo_mask_dice(tmp, args.lesions, _progress)
        check_output(out, args.overwrite)
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    used, files, links = disk_use(out)
    n = args.lesions
    split = counts["per_split"]
    print(f"{n} lesions on {counts['key_slices']} key slices "
          f"({n / counts['key_slices']:.2f} per slice) from {len(hosts)} hosts, seed {args.seed}")
    print(f"split (lesions): train {split[1]}, val {split[2]}, test {split[3]}")
    print(f"time: {made:.1f} s to make ({1e3 * made / n:.1f} ms per lesion), "
          f"{time.perf_counter() - start - made:.1f} s to check")
    print(f"disk: {used / 2**20:.1f} MiB in {files} files ({links} hard links), "
          f"{used / n / 1024:.1f} KiB per lesion, about {used / n * 32735 / 2**30:.1f} GiB "
          f"for 32,735 lesions")
    for method, values in dice.items():
        print(f"pseudo-mask Dice against the true masks, {method}: mean {values.mean():.4f}, "
              f"median {np.median(values):.4f}, std {values.std():.4f}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
