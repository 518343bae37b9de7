"""The training data of image/RECIST layer pairs, checked and copied (no Qt).

Which protocol the layers get:

- 2D images (RGB, or grey ``uint8``) with one lesion each: whole images
  (``prepare_whole_images``), as for dermoscopy;
- several lesions on an image, CT (grey images that are not ``uint8``) or volumes: lesion
  crops (``prepare_crops``; a volume's lesions on their slices).
"""

from __future__ import annotations

import numpy as np

from .layer_units import grid_mismatch, spacing_of
from .recist_layers import describe_layer

__all__ = ["training_data_from_layers"]


def _check_pair(image, layer) -> None:
    if layer is None:
        raise ValueError(f"{image.name!r}: choose its RECIST layer")
    if image.multiscale:
        raise ValueError(f"{image.name!r} is a multiscale image; training needs one scale")
    if image.ndim not in (2, 3):
        raise ValueError(f"{image.name!r} is {image.ndim}D; images must be 2D or 3D")
    if image.rgb and image.ndim == 3:
        raise ValueError(f"{image.name!r} is a stack of colour images; open them as "
                         "separate 2D images")
    if layer.ndim != image.ndim:
        raise ValueError(
            f"{layer.name!r} ({layer.ndim}D) does not fit {image.name!r} ({image.ndim}D)"
        )
    mismatch = grid_mismatch(image, layer)
    if mismatch:
        raise ValueError(mismatch)


def _names(names, most: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def training_data_from_layers(pairs, has_images: bool = True) -> tuple[dict, list[str]]:
    """``TrainingJob`` data fields from ticked (image layer, RECIST layer) pairs.

    Parameters
    ----------
    pairs : list of (napari Image layer, napari Shapes layer or None)
        The images to train on and each one's RECIST layer.
    has_images : bool
        Whether the viewer has any image layer (only changes the message when ``pairs`` is
        empty).

    Returns
    -------
    data : dict
        ``images`` (copies: the user may edit the layers while training), ``recists``,
        ``mode`` and ``source``; with ``mode`` "crops" also ``image_index`` and ``slices``.
    skipped : list of str
        The lesions left out and why (incomplete, breaking the RECIST rules, off the volume).

    Raises
    ------
    ValueError
        Naming the layer and the problem when a pair cannot be trained on.
    """
    if not pairs:
        if not has_images:
            raise ValueError("there is no image layer: open images and their RECIST first")
        raise ValueError("tick at least one image and choose its RECIST layer")
    is_3d = {image.ndim == 3 for image, _ in pairs}
    if len(is_3d) > 1:
        raise ValueError("the ticked images mix 2D images and volumes; train them apart")
    colour = [image.name for image, _ in pairs if image.rgb]
    grey = [image.name for image, _ in pairs if not image.rgb]
    if colour and grey:
        # A model reads one number of channels: colour pictures and grey scans are two models.
        raise ValueError(
            f"the ticked images mix colour ({_names(colour)}) and grey ({_names(grey)}) "
            "images; a model reads one kind: untick one kind and train it apart")
    images, recists, image_index, slices = [], [], [], []
    skipped: list[str] = []
    needs_crops = False
    for image, layer in pairs:
        _check_pair(image, layer)
        depth = image.data.shape[0] if image.ndim == 3 else None
        valid = []
        for info in describe_layer(layer, spacing_of(image)):
            if not info.ok:
                skipped.append(f"{layer.name} lesion {info.lesion_id}: {info.problem}")
            elif depth is not None and not (isinstance(info.slice, int)
                                            and 0 <= info.slice < depth):
                skipped.append(f"{layer.name} lesion {info.lesion_id}: outside the volume")
            else:
                valid.append(info)
        if not valid:
            detail = f" ({skipped[-1]})" if skipped else ""
            raise ValueError(
                f"{layer.name!r} has no complete lesion (a long and a short axis){detail}"
            )
        data = np.array(image.data)
        grey_ct = not image.rgb and data.dtype != np.uint8
        needs_crops |= image.ndim == 3 or len(valid) > 1 or grey_ct
        images.append(data)
        for info in valid:
            recists.append(info.recist)
            image_index.append(len(images) - 1)
            slices.append(int(info.slice) if image.ndim == 3 else None)
    source = ", ".join(image.name for image, _ in pairs)
    if needs_crops:
        return dict(images=images, recists=recists, image_index=image_index,
                    slices=slices if True in is_3d else None, mode="crops",
                    source=source), skipped
    return dict(images=images, recists=recists, mode="whole_image", source=source), skipped
