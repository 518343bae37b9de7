"""``recist-seg pseudo-masks`` and ``recist-seg groups``: the RECIST core on whole datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cli import command
from ..core.grouping import FEATURE_SETS, group_lesions, suggest_k
from ..core.metrics import segmentation_metrics
from ..core.pseudo_masks import PSEUDO_MASK_METHODS, pseudo_mask, pseudo_mask_labels
from ..core.recist import outside_image
from ..data._atomic import atomic_write
from ..data.recist_files import RecistTable, read_recists, write_recists
from ..data.volumes import ScanLabels, grid_shape
from ._outputs import output_stems, prepare_output_folder, refuse_existing
from ._progress import progress


def load_lesions(source, images=None) -> tuple[RecistTable, dict]:
    """RECIST from a RECIST file or DeepLesion's ``DL_info.csv``, or simulated from the masks
    of an image+mask folder.

    Returns the table and, for a folder, ``{"pairs": [...], "masks": {name: mask}}`` so that
    callers can score against the real masks without reading them twice; for a DeepLesion
    table, ``{"shapes": {file_name: (rows, cols)}}`` from its ``Image_size`` column.
    """
    from ..core.recist import recist_from_mask
    from ..data.image_folders import (
        check_mask_size,
        load_mask,
        read_image_mask_folder,
        warn_unmeasured,
    )
    from ..data.recist_sources import is_deeplesion_table

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if is_deeplesion_table(path):
        return _deeplesion_lesions(path)
    if path.is_file():
        from ..data.recist_sources import header_spacing

        # A lesion on a scan that states no pixel size takes its header's.
        base = Path(images) if images else path.parent
        return read_recists(path, spacing_of=header_spacing(base)), {}
    pairs = read_image_mask_folder(path)
    recists, names, masks, skipped = [], [], {}, []
    for pair in progress(pairs, desc="measuring masks", unit="mask"):
        mask = load_mask(pair.mask_path)
        # Pseudo-masks are drawn at the mask's size: one of another size than its image
        # would put the lesion in the wrong place.
        check_mask_size(pair, mask.shape)
        try:
            recists.append(recist_from_mask(mask))
        except ValueError:  # no lesion to measure: left out, as training leaves it out
            skipped.append(pair.name)
            continue
        # Named by the image's path in the folder, so the written table trains as it is
        # (``--images`` the folder) and still matches ``predict --recists`` by stem.
        name = pair.image_path.relative_to(path).as_posix()
        names.append(name)
        masks[name] = mask
    warn_unmeasured(path, skipped)
    if not names:
        raise ValueError(f"no usable image+mask pair in {path}")
    table = RecistTable(recists, images=names, spacing_known=[False] * len(recists))
    return table, {"pairs": pairs, "masks": masks}


def _deeplesion_lesions(path: Path) -> tuple[RecistTable, dict]:
    """The RECIST rows of a DeepLesion table; its images are not needed (nor read)."""
    from ..data.deeplesion import read_deeplesion, recist_table

    records = read_deeplesion(path, warn_missing=False)
    if not records:
        raise ValueError(f"{path}: no valid RECIST row")
    return recist_table(records), {"shapes": {r.file_name: tuple(r.image_size)
                                               for r in records}}


def _image_shape(table: RecistTable, source: Path, name: str, shape_arg, images=None):
    """The (rows, cols) of a 2D image, or the voxel grid (``volumes.read_grid``) of a scan.

    ``name`` is relative to ``images`` (default: the table's folder) and never leads outside
    it."""
    from ..data.image_folders import load_image
    from ..data.recist_sources import safe_join
    from ..data.volumes import is_medical_image_path, read_grid

    base = Path(images) if images else source.parent
    candidate = safe_join(base, name, f"{source}: lesion image")
    if candidate.exists() and is_medical_image_path(candidate):
        return read_grid(candidate)
    if shape_arg:
        return tuple(shape_arg)
    if candidate.is_file():
        return load_image(candidate).shape[:2]
    raise ValueError(
        f"cannot tell the size of image {name!r} (no such file in {base}); give the image "
        "folder with --images DIR or the size with --shape ROWS COLS"
    )


def _write_label_png(path: Path, labels: np.ndarray) -> None:
    import imageio.v3 as iio

    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    with atomic_write(path, "wb", encoding=None) as fh:
        iio.imwrite(fh, labels.astype(dtype), extension=".png")


def _configure_pseudo_masks(p) -> None:
    p.add_argument("input", help="a RECIST .csv/.json file, DeepLesion's DL_info.csv (image "
                                 "sizes from its Image_size), or an image+mask folder")
    p.add_argument("--out", required=True, help="folder for label PNGs and recists.csv")
    p.add_argument("--method", default="ellipse", choices=(*PSEUDO_MASK_METHODS, "all"),
                   help="the outline drawn from each RECIST; 'all' draws every one "
                        "(default: %(default)s, the paper's)")
    p.add_argument("--images",
                   help="RECIST file: the folder its image names are relative to (default: "
                        "the file's folder)")
    p.add_argument("--shape", type=int, nargs=2, metavar=("ROWS", "COLS"),
                   help="image size when the RECIST file's images cannot be found")
    p.add_argument("--overwrite", action="store_true",
                   help="replace label PNGs and recists.csv already in --out (default: refuse)")


@command("pseudo-masks", "draw pseudo-masks (ellipse, quarter ellipse, polygon) from RECIST",
         _configure_pseudo_masks)
def _pseudo_masks(args) -> int:
    source = Path(args.input)
    table, folder = load_lesions(source, args.images)
    out = Path(args.out)
    methods = PSEUDO_MASK_METHODS if args.method == "all" else (args.method,)
    if table.slices is not None and not table.images:
        # Drawn into one picture, lesions of different slices would pile up silently.
        raise ValueError(f"{source}: its lesions lie on slices (column slice) but name no "
                         f"scan (column image): name each lesion's scan, relative to the "
                         f"file's folder or --images, so each is drawn on its slice")
    by_image = table.image_groups() or {"image": list(range(len(table)))}
    # Every output is named and checked before anything is written.
    stems = dict(zip(by_image, output_stems(list(by_image))))
    # Sizes (and a scan's voxel grid) are known before anything is written.
    shapes = {}
    for name in by_image:
        mask = folder.get("masks", {}).get(name)
        shapes[name] = (mask.shape if mask is not None else folder.get("shapes", {}).get(name)
                        or _image_shape(table, source, name, args.shape, args.images))
    for name, idx in by_image.items():
        shape = shapes[name]
        plane = grid_shape(shape) if isinstance(shape, dict) else shape
        for i in idx:
            problem = outside_image(table.recists[i], plane, repr(name))
            if problem:
                raise ValueError(f"lesion {table.lesion_ids[i]} (row {i + 1}): {problem}")
    slices = None
    if any(isinstance(shape, dict) for shape in shapes.values()):
        from ..data.recist_sources import read_lesion_table

        # The lesion-table reader checks each scan lesion's slice (and that names stay in
        # the table's folder), as for training and prediction.
        slices = [row.slice for row in read_lesion_table(source, args.images).rows]
    targets = {(name, method): _target(out, stem, method, isinstance(shapes[name], dict))
               for name, stem in stems.items() for method in methods}
    refuse_existing([*targets.values(), out / "recists.csv"], args.overwrite)
    prepare_output_folder(out)
    scores = {m: [] for m in methods}
    for name, idx in progress(by_image.items(), desc="drawing pseudo-masks", unit="image"):
        mask = folder.get("masks", {}).get(name)
        for method in methods:
            target = targets[name, method]
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(shapes[name], dict):
                scan = ScanLabels(shapes[name], np.uint16 if len(idx) < 2 ** 16 else np.uint32)
                for number, i in enumerate(idx, start=1):
                    scan.add(pseudo_mask(table.recists[i], scan.array.shape[-2:], method),
                             number, slices[i])
                scan.write(target)
                continue
            labels = pseudo_mask_labels([table.recists[i] for i in idx], shapes[name], method,
                                        labels=[i + 1 for i in range(len(idx))])
            _write_label_png(target, labels)
            if mask is not None:
                scores[method].append(segmentation_metrics(labels > 0, mask)["dice"])
    write_recists(out / "recists.csv", table)
    print(f"{len(table)} lesions on {len(by_image)} images -> {out}")
    base = _names_relative_to(source, args.images, table)
    if base is not None and base.resolve() != out.resolve():
        import shlex

        print(f"{out / 'recists.csv'} names its images relative to {base}: give "
              f"--images {shlex.quote(str(base))} to train or predict from it")
    for method, values in scores.items():
        if values:
            print(f"{method:16s} mean Dice against the real masks: {np.mean(values):.4f}")
    return 0


def _names_relative_to(source: Path, images, table: RecistTable) -> Path | None:
    """The folder the image names of ``table``, read from ``source``, are relative to
    (None where it names no image, or for DeepLesion, whose names are its own)."""
    from ..data.recist_sources import is_deeplesion_table

    if not table.images or is_deeplesion_table(source):
        return None
    if source.is_dir():
        return source
    return Path(images) if images else source.parent


def _target(out: Path, stem, method: str, scan: bool) -> Path:
    """``<stem>_<method>.png``, or ``.nii.gz`` on a scan's voxel grid."""
    if not scan:
        return out / stem.parent / f"{stem.name}_{method}.png"
    name = stem.name[: -len(".nii")] if stem.name.lower().endswith(".nii") else stem.name
    return out / stem.parent / f"{name}_{method}.nii.gz"


def _parse_k_range(text: str) -> range:
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--suggest-k takes LOW:HIGH, e.g. 2:20, got {text!r}") from None
    return range(lo, hi + 1)


def _configure_groups(p) -> None:
    p.add_argument("input", help="a RECIST .csv/.json file, DeepLesion's DL_info.csv, or an "
                                 "image+mask folder")
    p.add_argument("--out", required=True,
                   help="RECIST file (.csv/.json) to write with groups; the fitted grouping "
                        "goes beside it as OUT.grouping.json")
    p.add_argument("--k", type=int,
                   help="number of groups: from 1 to the number of lesions (and of distinct "
                        "measurements)")
    p.add_argument("--suggest-k", metavar="LOW:HIGH",
                   help="score K in this range by silhouette (2 <= K < number of lesions); "
                        "uses the best unless --k is given")
    p.add_argument("--features", default="standardised", choices=FEATURE_SETS,
                   help="what K-means compares: standardised (centre, diameters in mm and "
                        "orientation, each z-scored) or paper (the published recipe: raw "
                        "centre, diameters in px and angle) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="K-means seed, from 0 to 4294967295 (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out and its .grouping.json if they exist (default: refuse)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


@command("groups", "group lesions by K-means on their RECIST (with a K suggestion)",
         _configure_groups)
def _groups(args) -> int:
    out = Path(args.out)
    model_path = out.with_suffix(".grouping.json")
    source = Path(args.input)
    for target in (out, model_path):
        if _same_file(target, source):
            raise ValueError(f"--out {out} would overwrite the input {source}; write the "
                             f"grouped lesions to another file")
    refuse_existing([out, model_path], args.overwrite)
    table, _ = load_lesions(args.input)
    mixed = table.mixed_units()
    if mixed:
        # K-means on lengths half in mm and half in pixels would group the lesions by unit.
        raise ValueError(f"{args.input}: {mixed}")
    if args.suggest_k:
        best, scores = suggest_k(table.recists, _parse_k_range(args.suggest_k),
                                 features=args.features, seed=args.seed)
        print("K    silhouette")
        for k, s in scores.items():
            print(f"{k:<4d} {s:.3f}{'  <- best' if k == best else ''}")
        k = args.k if args.k is not None else best
    elif args.k is not None:
        k = args.k
    else:
        raise ValueError("give --k K or --suggest-k LOW:HIGH")
    grouping = group_lesions(table.recists, k, features=args.features, seed=args.seed)
    table.features["group"] = [int(g) for g in grouping.labels_]
    write_recists(out, table)
    with atomic_write(model_path) as fh:
        json.dump(grouping.to_dict(), fh, indent=1)
    sizes = np.bincount(grouping.labels_, minlength=k)
    print(f"K={k} ({args.features} features, seed {args.seed}): group sizes {sizes.tolist()}")
    print(f"wrote {out} (column 'group') and {model_path}")
    return 0
