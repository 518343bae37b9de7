"""Tiny lesion tables written by the tests: a DeepLesion folder and RECIST files over 2D images
and a NIfTI volume. Lesions are bright discs (HU 60) on a darker background (HU -100)."""

from __future__ import annotations

import numpy as np

DL_HEADER = (
    "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,"
    "Bounding_boxes,Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,"
    "Possibly_noisy,Slice_range,Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,"
    "Patient_age,Train_Val_Test"
)
SIDE = 64

#: (patient, key slice, neighbours present, lesions as (row, col, radius), split)
DL_SLICES = [
    (1, 10, (9, 11), [(20, 20, 7), (44, 40, 6)], 1),
    (2, 31, (32,), [(30, 30, 9)], 1),
    (3, 5, (), [(24, 40, 8), (45, 18, 5)], 1),
    (4, 12, (11, 13), [(32, 32, 10)], 2),
    (5, 7, (6, 8), [(30, 26, 7)], 3),
]


def disc_slice(lesions, hu_lesion=60, hu_background=-100, side=SIDE, offset=0.0):
    """A (side, side) HU slice with a disc per (row, col, radius)."""
    rr, cc = np.mgrid[:side, :side]
    img = np.full((side, side), float(hu_background))
    for r, c, rad in lesions:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= rad ** 2] = hu_lesion + offset
    return img


def disc_axes(r, c, rad):
    """0-based (row, col) long and short axis of a disc: horizontal long, vertical short."""
    long_axis = ((r, c - rad), (r, c + rad))
    short_axis = ((r - rad + 1, c), (r + rad - 1, c))
    return long_axis, short_axis


def write_deeplesion(root, slices=DL_SLICES, masks: bool = False, spacing=0.8,
                     side=SIDE):
    """A DeepLesion folder: ``DL_info.csv`` and ``Images_png/PPPPPP_01_01/NNN.png`` slices
    (16-bit, HU + 32768), the key slice's neighbours where listed. Neighbour slices have
    their discs 200 HU brighter, so a test can tell the channels apart. With ``masks``, a
    ``masks/`` folder holds the true disc masks named by File_name."""
    import imageio.v3 as iio

    lines = [DL_HEADER]
    for patient, key, neighbours, lesions, split in slices:
        series = f"{patient:06d}_01_01"
        folder = root / "Images_png" / series
        folder.mkdir(parents=True, exist_ok=True)
        iio.imwrite(folder / f"{key:03d}.png",
                    (disc_slice(lesions, side=side) + 32768).astype(np.uint16))
        for n in neighbours:
            iio.imwrite(folder / f"{n:03d}.png",
                        (disc_slice(lesions, side=side, offset=200) + 32768).astype(np.uint16))
        name = f"{series}_{key:03d}.png"
        if masks:
            (root / "masks").mkdir(exist_ok=True)
            iio.imwrite(root / "masks" / name,
                        ((disc_slice(lesions, side=side) > 0) * 255).astype(np.uint8))
        for r, c, rad in lesions:
            (l0, l1), (s0, s1) = disc_axes(r, c, rad)
            xy = [l0[1] + 1, l0[0] + 1, l1[1] + 1, l1[0] + 1,
                  s0[1] + 1, s0[0] + 1, s1[1] + 1, s1[0] + 1]
            coords = ", ".join(str(v) for v in xy)
            box = f"{c - rad + 1}, {r - rad + 1}, {c + rad + 1}, {r + rad + 1}"
            lines.append(
                f'{name},{patient},1,1,{key},"{coords}","{box}","{2 * rad}, {2 * rad - 2}",'
                f'"0.5, 0.5, 0.5",4,0,"{key - 1}, {key + 1}","{spacing}, {spacing}, 2",'
                f'"{side}, {side}","-175, 275",F,60,{split}'
            )
    (root / "DL_info.csv").write_text("\n".join(lines) + "\n")
    return root / "DL_info.csv"


def recist_csv(path, rows, extra_columns=()):
    """A RECIST csv: rows of (image, slice or None, (r, c, radius), extra values...)."""
    header = ["lesion_id", "image", "slice", "long_r0", "long_c0", "long_r1", "long_c1",
              "short_r0", "short_c0", "short_r1", "short_c1", "spacing_row", "spacing_col",
              *extra_columns]
    lines = ["# napari-recist-seg recist csv v1", ",".join(header)]
    for i, (image, slc, (r, c, rad), *extra) in enumerate(rows):
        (l0, l1), (s0, s1) = disc_axes(r, c, rad)
        coords = [*l0, *l1, *s0, *s1]
        lines.append(",".join([str(i), image, "" if slc is None else str(slc),
                               *(str(v) for v in coords), "", "", *(str(e) for e in extra)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_png_folder(folder, n=6, colour_every=2):
    """``n`` 8-bit 64x64 PNGs, every ``colour_every``-th one RGB, one disc each; returns the
    RECIST rows for ``recist_csv``."""
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        lesion = (24 + 3 * i, 28 + 2 * i, 7 + i % 3)
        grey = np.clip(disc_slice([lesion]) + 100, 0, 255).astype(np.uint8)
        name = f"case{i}.png"
        if colour_every and i % colour_every == 1:
            img = np.stack([grey, grey // 2, 255 - grey], axis=-1)
        else:
            img = grey
        iio.imwrite(folder / name, img)
        rows.append((name, None, lesion))
    return rows


def write_nifti(path, n_slices=9, spacing=(0.7, 0.7, 1.0), lesions_by_slice=None):
    """A (z, row, col) int16 HU volume; slice z has the discs of ``lesions_by_slice[z]`` and
    its HU level raised by 10 z, so channels can be told apart."""
    import SimpleITK as sitk

    vol = np.stack([disc_slice((lesions_by_slice or {}).get(z, []), offset=10 * z)
                    for z in range(n_slices)]).astype(np.int16)
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing(spacing)  # (x, y, z) mm
    sitk.WriteImage(image, str(path))
    return vol
