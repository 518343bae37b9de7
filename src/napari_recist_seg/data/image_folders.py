"""Folders of 2D images with lesion masks (ISIC, HAM10000, PH2 and the like).

Masks are paired with images by name: ``X.jpg`` goes with ``X_segmentation.png``,
``X_Segmentation.png``, ``X_lesion.png``/``.bmp`` or ``X_mask.png``, whether the two sit side by
side, in ``images/`` and ``masks/`` subfolders, or in PH2's nested layout
(``IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` with ``IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp``).
A file with the image's own name inside a folder called ``masks``, ``labels``, ``ground_truth``
(and similar) is a mask too.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.recist import Recist, recist_from_mask

__all__ = [
    "SOFT_MASK_LEVELS",
    "ImageMaskPair",
    "load_image",
    "load_mask",
    "load_pair",
    "read_image_mask_folder",
    "simulate_recists",
]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_MASK_NAME_RE = re.compile(r"^(?P<key>.+)_(?:segmentation|lesion|mask)$", re.IGNORECASE)
_MASK_FOLDERS = {
    "mask",
    "masks",
    "label",
    "labels",
    "segmentation",
    "segmentations",
    "groundtruth",
    "gt",
    "annotation",
    "annotations",
}
# Files that live among dermoscopy images but are neither image nor mask: ISIC 2017's
# superpixel maps and PH2's per-colour region masks (IMDxxx_roi/ folders).
_IGNORED_NAME_RE = re.compile(r"_superpixels$", re.IGNORECASE)
_IGNORED_FOLDER_RE = re.compile(r"_roi$", re.IGNORECASE)
_LIST_MAX = 10


@dataclass(frozen=True)
class ImageMaskPair:
    """An image file and the lesion mask drawn on it.

    Attributes
    ----------
    image_path, mask_path : Path
    name : str
        The shared stem, e.g. ``"ISIC_0000000"``.
    """

    image_path: Path
    mask_path: Path
    name: str


def _is_mask_folder(folder: Path, root: Path) -> bool:
    try:
        parts = folder.relative_to(root).parts
    except ValueError:
        parts = folder.parts
    for part in parts:
        flat = part.lower().replace("_", "").replace("-", "").replace(" ", "")
        if flat in _MASK_FOLDERS or "groundtruth" in flat:
            return True
    return False


def _classify(path: Path, root: Path) -> tuple[str, str] | None:
    """("image" | "mask", key) for a file, None for files to skip."""
    stem = path.stem
    if _IGNORED_NAME_RE.search(stem) or stem.startswith("."):
        return None
    rel_parts = path.relative_to(root).parts[:-1]
    if any(_IGNORED_FOLDER_RE.search(p) for p in rel_parts):
        return None
    match = _MASK_NAME_RE.match(stem)
    if match:
        return "mask", match.group("key")
    if _is_mask_folder(path.parent, root):
        return "mask", stem
    return "image", stem


def list_images(path) -> list[Path]:
    """The images under the folder ``path``, sorted, by the rules that pair a folder: masks
    (by name or folder), ISIC's superpixel maps and PH2's region masks are left out."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    return [p for p in files if (_classify(p, root) or ("",))[0] == "image"]


def read_image_mask_folder(path) -> list[ImageMaskPair]:
    """Pair every image under ``path`` with its mask.

    Parameters
    ----------
    path : str or Path
        A folder, searched recursively.

    Returns
    -------
    list of ImageMaskPair
        Sorted by name.

    Raises
    ------
    ValueError
        When ``path`` is not a folder, holds no images, no image has a mask, or two files
        claim the same name (e.g. ``X.jpg`` and ``X.png``).

    Warns
    -----
    UserWarning
        Once, listing images without masks and masks without images.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )
    if not files:
        raise ValueError(f"{root}: no image files ({', '.join(_IMAGE_SUFFIXES)}) in this folder")
    for file in files:
        kind = _classify(file, root)
        if kind is None:
            continue
        role, key = kind
        table = images if role == "image" else masks
        if key in table:
            raise ValueError(
                f"{root}: two {role}s named {key!r}: {table[key].relative_to(root)} and "
                f"{file.relative_to(root)}"
            )
        table[key] = file

    pairs = [
        ImageMaskPair(image_path=images[k], mask_path=masks[k], name=k)
        for k in sorted(images)
        if k in masks
    ]
    unpaired = sorted(
        [str(images[k].relative_to(root)) for k in images if k not in masks]
        + [str(masks[k].relative_to(root)) for k in masks if k not in images]
    )
    if not pairs:
        raise ValueError(
            f"{root}: no image/mask pairs found among {len(images)} image(s) and "
            f"{len(masks)} mask(s); masks are matched by name (X.jpg with X_segmentation.png, "
            "X_lesion.png, X_mask.png, or X.png in a masks/ folder)"
        )
    if unpaired:
        shown = ", ".join(unpaired[:_LIST_MAX]) + (", ..." if len(unpaired) > _LIST_MAX else "")
        warnings.warn(
            f"{root}: {len(unpaired)} file(s) without a partner, skipped: {shown}", stacklevel=2
        )
    return pairs


def _imread(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        return np.asarray(iio.imread(path))
    except Exception as exc:  # imageio and its plugins raise many types for a broken file
        # One short line: some plugins put whole tracebacks or binary junk in the message.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"{path}: cannot read image: not a readable image ({reason})"
                         ) from None


def load_image(path) -> np.ndarray:
    """An image as ``uint8``: ``(H, W, 3)`` for colour, ``(H, W)`` for grey; alpha dropped."""
    img = _imread(Path(path))
    if img.ndim == 3 and img.shape[-1] in (2, 4):
        img = img[..., :-1]  # drop alpha
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise ValueError(f"{path}: expected a 2D grey or RGB image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * np.uint8(255)
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    data = img.astype(np.float64)
    top = 1.0 if np.nanmax(data) <= 1.0 else 255.0
    return np.clip(np.nan_to_num(data) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


#: More distinct nonzero values than this, and a mask is taken for a probability map (a
#: label image of many lesions has one value a lesion).
SOFT_MASK_LEVELS = 64


def load_mask(path) -> np.ndarray:
    """A lesion mask as a bool ``(H, W)`` array.

    1-bit PNGs read as bool, 0/255 and 0/1 masks as integers: any nonzero pixel is lesion
    (NaN in a float mask is not).
    JPEG masks are thresholded at half the maximum instead, since lossy compression leaves
    faint nonzero noise around the edge. In colour masks a pixel is lesion if any colour
    channel is. A mask of more than ``SOFT_MASK_LEVELS`` grey levels (a probability map) is
    read the same way, with a warning naming the file.
    """
    path = Path(path)
    m = _imread(path)
    if np.issubdtype(m.dtype, np.floating):
        # NaN marks "no data" in float images, never lesion.
        m = np.where(np.isnan(m), 0, m)
    if m.ndim == 3:
        channels = m[..., :3] if m.shape[-1] >= 3 else m[..., :1]
        m = channels.max(axis=-1)
    if m.ndim != 2:
        raise ValueError(f"{path}: expected a 2D mask, got shape {m.shape}")
    if m.dtype == np.bool_:
        return m
    if path.suffix.lower() in (".jpg", ".jpeg") and m.size:
        top = float(m.max())
        return m > top / 2.0 if top > 0 else np.zeros(m.shape, dtype=bool)
    lesion = m != 0
    levels = np.unique(m[lesion]).size
    if levels > SOFT_MASK_LEVELS:
        # A probability map read as nonzero = lesion covers all its faint margin: every
        # figure scored on it is wrong, and nothing else would say so.
        warnings.warn(f"{path}: {levels} grey levels in a mask, read as lesion wherever "
                      f"nonzero; a probability or soft mask should be thresholded first "
                      f"(for example at half its maximum)", stacklevel=2)
    return lesion


def load_pair(pair: ImageMaskPair) -> tuple[np.ndarray, np.ndarray]:
    """Read a pair: (image ``uint8`` ``(H, W, 3)`` or ``(H, W)``, mask bool ``(H, W)``).

    Raises
    ------
    ValueError
        When a file cannot be read, or the mask's size differs from the image's (both files
        are named).
    """
    image = load_image(pair.image_path)
    mask = load_mask(pair.mask_path)
    check_mask_size(pair, mask.shape, image.shape[:2])
    return image, mask


def check_mask_size(pair: ImageMaskPair, mask_shape, image_shape=None) -> None:
    """Refuse (ValueError naming both files) a mask whose (rows, cols) differ from its
    image's; ``image_shape`` defaults to the image file's, read from its header."""
    if image_shape is None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(pair.image_path) as im:
                image_shape = (im.height, im.width)
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"{pair.image_path}: cannot read image ({exc})") from None
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        raise ValueError(
            f"mask {pair.mask_path} is {mask_shape[0]}x{mask_shape[1]} but image "
            f"{pair.image_path} is {image_shape[0]}x{image_shape[1]} (rows x columns)"
            f"{_turned_note(pair.image_path, mask_shape, image_shape)}"
        )


def _turned_note(path, mask_shape, image_shape) -> str:
    """What to say of an image whose EXIF orientation turns it by a quarter: viewers show
    it turned, pixels are read as stored (as napari reads them), so a mask drawn on what
    viewers show has its rows and columns swapped ("" for any other image)."""
    if tuple(mask_shape[:2]) != tuple(image_shape[:2])[::-1]:
        return ""
    from PIL import Image

    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(0x0112, 1))  # EXIF Orientation
    except (OSError, ValueError, TypeError):
        return ""
    if orientation not in (5, 6, 7, 8):
        return ""
    return (f": the image's EXIF orientation tag ({orientation}) has viewers show it turned "
            f"by a quarter, while its pixels are read as stored, as napari shows them; save "
            f"the image with its rotation applied (or the mask turned back)")


def warn_unmeasured(folder, names, stacklevel: int = 3) -> None:
    """One warning naming the pairs of ``folder`` left out because their mask is empty or
    too small to measure (a picture without a lesion)."""
    if names:
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        one = len(names) == 1
        warnings.warn(f"{len(names)} mask{'' if one else 's'} in {folder} "
                      f"{'is' if one else 'are'} empty or too small to measure and "
                      f"{'was' if one else 'were'} skipped: {shown}", stacklevel=stacklevel)


def simulate_recists(pairs: Iterable[ImageMaskPair], spacing=(1.0, 1.0)) -> list[Recist]:
    """The RECIST a reader would draw on each mask (see ``recist_from_mask``).

    Only the masks are read. An empty (or single-pixel) mask raises rather than being skipped,
    so the caller decides what to do with it.

    Raises
    ------
    ValueError
        Naming the mask file, when it is unreadable, empty or too small to measure.
    """
    out = []
    for pair in pairs:
        mask = load_mask(pair.mask_path)
        try:
            out.append(recist_from_mask(mask, spacing=spacing))
        except ValueError as exc:
            raise ValueError(f"{pair.mask_path}: {exc}") from None
    return out
