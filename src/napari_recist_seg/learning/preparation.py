"""From images and RECIST to training and validation sets, with groups fitted on training only."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.grouping import LesionGrouping, group_lesions
from ..core.recist import Recist
from ..core.training_targets import DEFAULT_TARGET
from ..data.dataset import LesionDataset
from .model_kinds import model_kind

__all__ = [
    "AUTO_CROP",
    "DEFAULT_CROP_PX",
    "crop_px_for",
    "PreparedData",
    "default_k",
    "prepare_crops",
    "prepare_from_table",
    "prepare_table_for_kinds",
    "prepare_whole_images",
    "split_indices",
    "split_table",
]

#: Side of a CT lesion patch in source pixels: the scale of the DeepLesion models (120 px).
DEFAULT_CROP_PX = 120.0
#: ``crop_px`` of the front ends by default: each model kind's own (``crop_px_for``).
AUTO_CROP = "auto"


def crop_px_for(kind: str, crop_px) -> float | None:
    """The lesion-table patch side a model of ``kind`` trains on.

    ``crop_px`` is a side in source pixels, None (each patch sized to its lesion: the long
    axis times ``1 + 2 margin``) or ``AUTO_CROP``: lesion-sized for prompted models, which
    always know the lesion's extent from its RECIST (on the CT-like set's validation split
    this lifted them from 0.887 to 0.904 Dice: a small lesion in a 120 px patch is a few
    pixels across at the network's input), and ``DEFAULT_CROP_PX`` for the others, the
    scale of the DeepLesion models.
    """
    if isinstance(crop_px, str):
        if crop_px != AUTO_CROP:
            raise ValueError(f"crop_px must be a number of pixels, None or {AUTO_CROP!r}, got "
                             f"{crop_px!r}")
        from .model_kinds import model_kind

        return None if model_kind(kind).prompted else DEFAULT_CROP_PX
    return crop_px


def default_k(n_train: int) -> int:
    """A number of groups for ``n_train`` lesions: about 20 lesions a group, 2 to 45 groups.

    The paper used K=45 for HAM10000 and K=40 for LiTS; small sets need fewer groups so each
    still has enough members for its class to be learnable.
    """
    return int(max(2, min(45, n_train // 20)))


def split_indices(n: int, val_fraction: float = 0.15, seed: int = 0):
    """Seeded split of ``range(n)`` into sorted (train, validation) index arrays."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if n < 3:
        raise ValueError(f"{n} lesions are too few to split into training and validation")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = min(n - 2, max(1, int(round(n * val_fraction))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class PreparedData:
    """Training and validation sets and the grouping fitted on the training lesions."""

    train_set: LesionDataset
    val_set: LesionDataset
    grouping: LesionGrouping
    train_indices: np.ndarray
    val_indices: np.ndarray
    table: object = None

    @property
    def preprocessing(self) -> dict:
        """How inputs were made; stored in checkpoints so inference does the same."""
        return dict(self.train_set.preprocessing)


def _fit_groups(recists, train_idx, k, features, seed) -> LesionGrouping:
    train_recists = [recists[i] for i in train_idx]
    n = len(train_recists)
    k = default_k(n) if k is None else int(k)
    if k > n:
        # The training split is a fraction of what the user counted, so the k they chose
        # can exceed it; say so rather than train with fewer groups than asked.
        warnings.warn(f"k={k} groups is more than the {n} training lesions (validation "
                      f"lesions are held out); using k={n}", stacklevel=3)
        k = n
    return group_lesions(train_recists, k, features=features, seed=seed)


def check_input_size(size) -> int:
    """The network input side in px, checked before any image is resized to it.

    Raises
    ------
    ValueError
        Unless ``size`` is a multiple of 16 from 16 to ``MAX_INPUT_SIZE`` (4096).
    """
    from .train_config import MAX_INPUT_SIZE

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not (
            16 <= size <= MAX_INPUT_SIZE) or size % 16:
        raise ValueError(f"input size must be a multiple of 16 from 16 to {MAX_INPUT_SIZE} "
                         f"pixels, got {size!r}")
    return int(size)


def prepare_whole_images(
    images: Sequence,
    recists: Sequence[Recist],
    *,
    size: int = 128,
    val_fraction: float = 0.15,
    k: int | None = None,
    features: str = "standardised",
    pseudo_mask_method: str = DEFAULT_TARGET,
    normalise: str | None = "image",
    augment: bool = False,
    seed: int = 0,
    lazy: bool = False,
) -> PreparedData:
    """Whole-image sets (dermoscopy, the paper's HAM10000 protocol): one lesion per image.

    Real masks are never used: the pseudo-masks drawn from ``recists`` are the only targets,
    for validation too.

    Parameters
    ----------
    images : sequence
        Arrays or paths, one per lesion.
    recists : sequence of Recist
    size : int
        Network input side (a multiple of 16).
    val_fraction : float
        Share of lesions held out for early stopping and checkpoint selection.
    k : int, optional
        Number of RECIST groups (default ``default_k``).
    features, pseudo_mask_method, normalise, augment, seed, lazy
        See ``group_lesions`` and ``LesionDataset.from_whole_images``.
    """
    check_input_size(size)
    recists = list(recists)
    if len(images) != len(recists):
        raise ValueError(f"{len(images)} images but {len(recists)} RECIST measurements")
    train_idx, val_idx = split_indices(len(recists), val_fraction, seed)
    grouping = _fit_groups(recists, train_idx, k, features, seed)

    def subset(idx, aug):
        return LesionDataset.from_whole_images(
            [images[i] for i in idx], [recists[i] for i in idx], size=size,
            pseudo_mask_method=pseudo_mask_method, groups=grouping, augment=aug, seed=seed,
            normalise=normalise, lazy=lazy,
        )

    return PreparedData(subset(train_idx, augment), subset(val_idx, False), grouping,
                        train_idx, val_idx)


def prepare_crops(
    images: Sequence,
    recists: Sequence[Recist],
    *,
    image_index=None,
    slices=None,
    context: int = 0,
    size: int = 128,
    margin: float = 0.5,
    window=None,
    val_fraction: float = 0.15,
    k: int | None = None,
    features: str = "standardised",
    pseudo_mask_method: str = DEFAULT_TARGET,
    normalise: str | None = None,
    augment: bool = False,
    seed: int = 0,
) -> PreparedData:
    """Lesion-crop sets (CT, the paper's DeepLesion protocol); see ``prepare_whole_images``.

    ``image_index[i]`` names the image lesion ``i`` lies on (default: one image per lesion);
    ``slices[i]`` its slice in a volume, with ``context`` neighbouring slices as channels.
    """
    recists = list(recists)
    n = len(recists)
    image_index = list(range(n)) if image_index is None else [int(i) for i in image_index]
    if len(image_index) != n:
        raise ValueError(f"image_index has {len(image_index)} entries for {n} lesions")
    train_idx, val_idx = split_indices(n, val_fraction, seed)
    grouping = _fit_groups(recists, train_idx, k, features, seed)
    if isinstance(window, list | np.ndarray) and len(window) == 2 and all(
            np.isscalar(v) and not isinstance(v, str) for v in window):
        window = tuple(float(v) for v in window)  # one (lo, hi) pair, not one per lesion
    windows = None if window is None or isinstance(window, str | tuple) else list(window)

    def subset(idx, aug):
        return LesionDataset.from_crops(
            images, [recists[i] for i in idx], size=size, margin=margin,
            window=window if windows is None else [windows[i] for i in idx],
            image_index=[image_index[i] for i in idx], pseudo_mask_method=pseudo_mask_method,
            groups=grouping, augment=aug, seed=seed, normalise=normalise,
            slices=None if slices is None else [slices[i] for i in idx], context=context,
        )

    return PreparedData(subset(train_idx, augment), subset(val_idx, False), grouping,
                        train_idx, val_idx)


def split_table(table, val_fraction: float = 0.15, seed: int = 0):
    """Training and validation rows of a ``LesionTable`` (index arrays, sorted).

    DeepLesion, and RECIST files with a ``Train_Val_Test`` or ``split`` column: it decides
    (1 training, 2 validation); rows of the test split (3) are in neither. Other tables: a
    seeded split of the patients (or, without a patient column, of the images), so the
    lesions of one image, or of one patient, all fall on one side. A table without
    validation rows is split that way among its training rows.

    Raises
    ------
    ValueError
        When fewer than two patients (or images) are there to split.
    """
    rows = table.rows
    if table.kind == "deeplesion" or any(r.split is not None for r in rows):
        train = np.array([i for i, r in enumerate(rows) if r.split == "train"], dtype=np.int64)
        val = np.array([i for i, r in enumerate(rows) if r.split == "val"], dtype=np.int64)
        if len(train) == 0:
            raise ValueError(f"{table.path}: no training rows (split 1)")
        if len(val):
            return train, val
        candidates = train
    else:
        candidates = np.arange(len(rows))
    keys = sorted({rows[i].patient for i in candidates})
    if len(keys) < 2:
        what = "patient" if table.kind == "deeplesion" else "patient or image"
        raise ValueError(f"{table.path}: all {len(candidates)} training lesions are on one "
                         f"{what}; a validation set needs at least two")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = min(len(keys) - 1, max(1, int(round(len(keys) * val_fraction))))
    val_keys = {keys[i] for i in order[:n_val]}
    val = np.array([i for i in candidates if rows[i].patient in val_keys], dtype=np.int64)
    train = np.array([i for i in candidates if rows[i].patient not in val_keys], dtype=np.int64)
    return np.sort(train), np.sort(val)


def table_crop_sets(table, indices, *, size: int, crop_px, margin: float, window, groups,
                    pseudo_mask_method: str, augment: bool = False, seed: int = 0,
                    cache_size: int = 8) -> LesionDataset:
    """Streamed lesion-crop dataset of the rows ``indices`` of a ``LesionTable``.

    Only the stacks of those rows are referenced; each is read when one of its lesions is
    asked for (the ``cache_size`` most recent ones are kept).
    """
    indices = [int(i) for i in indices]
    rows = [table.rows[i] for i in indices]
    used = sorted({r.stack for r in rows})
    local = {s: k for k, s in enumerate(used)}
    windows = table.windows(window)
    return LesionDataset.from_crops(
        [table.stacks[s] for s in used], [r.recist for r in rows], size=size, margin=margin,
        window=[windows[i] for i in indices],
        image_index=np.asarray([local[r.stack] for r in rows], dtype=np.int64),
        pseudo_mask_method=pseudo_mask_method, groups=groups, augment=augment, seed=seed,
        field_of_view_px=crop_px, channel_axis=0, lazy=True, cache_size=cache_size,
    )


def table_source_settings(table, window, crop_px) -> dict:
    """What inference needs to rebuild a table's inputs: stored under ``preprocessing``."""
    fixed = None if window is None or window == "auto" else [float(v) for v in
                                                            _parse_window(window)]
    return {"kind": table.kind, "neighbours": int(table.neighbours),
            "slice_gap_mm": float(table.slice_gap_mm), "colour": bool(table.colour),
            "window": fixed, "in_channels": int(table.in_channels),
            "field_of_view_px": None if crop_px is None else float(crop_px)}


def _parse_window(window):
    from ..data.recist_sources import parse_window

    return parse_window(window)


def prepare_from_table(
    path,
    images=None,
    *,
    size: int = 128,
    crop_px: float | None = DEFAULT_CROP_PX,
    margin: float = 0.5,
    neighbours: int = 1,
    slice_gap_mm: float = 2.0,
    window=None,
    val_fraction: float = 0.15,
    k: int | None = None,
    features: str = "standardised",
    pseudo_mask_method: str = DEFAULT_TARGET,
    augment: bool = False,
    seed: int = 0,
    cache_size: int = 8,
    refuse_mixed_units: bool = True,
) -> PreparedData:
    """Training and validation sets from RECIST rows alone: no mask is read or needed.

    ``path`` is DeepLesion's ``DL_info.csv`` or a RECIST ``.csv``/``.json`` naming its
    images (see ``read_lesion_table``). Each lesion becomes a patch around it, the key slice
    and its neighbours as channels, windowed in HU; patches are cut from the files when a
    batch needs them, so memory does not grow with the number of lesions. Pseudo-masks and
    the K-means groups (fitted on the training rows only) are computed here, once.

    Parameters
    ----------
    path : str or Path
    images : str or Path, optional
        The image folder (see ``read_lesion_table``).
    size : int
        Network input side in px (a multiple of 16).
    crop_px : float or None
        Patch side in source px (widened for lesions longer than ``crop_px / (1 + 2 margin)``);
        None: ``long axis * (1 + 2 margin)`` for every lesion.
    margin : float
        Context around the long axis, as a fraction of its length.
    neighbours, slice_gap_mm
        Neighbouring slices as channels (see ``read_lesion_table``).
    window : str or (lo, hi), optional
        One HU window for all lesions (``"soft-tissue"``, ``"lung"``, ``"-160,240"`` ...);
        default each row's window (DeepLesion's ``DICOM_windows``, a RECIST file's
        ``DICOM_windows`` or ``window`` column), else soft tissue for CT.
    val_fraction, seed
        The split of non-DeepLesion tables (see ``split_table``); ``seed`` also seeds K-means.
    k, features, pseudo_mask_method, augment
        As in ``prepare_whole_images``.
    cache_size : int
        Key-slice stacks kept in memory by each dataset.
    refuse_mixed_units : bool
        Refuse a table where some rows give a pixel size and others do not: the groups
        would then compare mm with px. Models without a group head can pass False.

    Returns
    -------
    PreparedData
        With ``table`` set; its indices are rows of the table.
    """
    from ..data.recist_files import mixed_units
    from ..data.recist_sources import read_lesion_table

    check_input_size(size)
    if window is not None and window != "auto":
        _parse_window(window)  # a bad window fails before any file is listed
    table = read_lesion_table(path, images, neighbours=neighbours, slice_gap_mm=slice_gap_mm)
    mixed = mixed_units([r.spacing_known for r in table.rows], [r.row for r in table.rows])
    if mixed and refuse_mixed_units:
        # K-means on lengths half in mm and half in pixels would group the lesions by unit.
        raise ValueError(f"{path}: {mixed}; the RECIST groups compare the lesions' lengths")
    train_idx, val_idx = split_table(table, val_fraction, seed)
    recists = table.recists
    grouping = _fit_groups(recists, train_idx, k, features, seed)
    common = dict(size=size, crop_px=crop_px, margin=margin, window=window, groups=grouping,
                  pseudo_mask_method=pseudo_mask_method, seed=seed, cache_size=cache_size)
    train_set = table_crop_sets(table, train_idx, augment=augment, **common)
    val_set = table_crop_sets(table, val_idx, **common)
    source = table_source_settings(table, window, crop_px)
    for ds in (train_set, val_set):
        ds.preprocessing["source"] = dict(source)
    return PreparedData(train_set, val_set, grouping, train_idx, val_idx, table)


def prepare_table_for_kinds(path, kinds, images=None, *, crop_px=AUTO_CROP,
                            **settings) -> dict[str, PreparedData]:
    """``prepare_from_table`` for each model kind of ``kinds``, on its own patch side.

    Kinds that train on the same side (``crop_px_for``) share one ``PreparedData``, read and
    prepared once.

    Parameters
    ----------
    path, images
        As in ``prepare_from_table``.
    kinds : sequence of str
    crop_px : float, None or ``AUTO_CROP``
        See ``crop_px_for``.
    **settings
        The other arguments of ``prepare_from_table``.

    Returns
    -------
    dict
        Kind -> its training and validation sets, in the order of ``kinds``.
    """
    by_side: dict = {}
    out = {}
    for kind in kinds:
        side = crop_px_for(kind, crop_px)
        if side not in by_side:
            by_side[side] = prepare_from_table(
                path, images, crop_px=side,
                refuse_mixed_units=any(model_kind(k).groups for k in kinds), **settings)
        out[kind] = by_side[side]
    return out
