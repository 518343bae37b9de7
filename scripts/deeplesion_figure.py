"""Real DeepLesion CT with its real RECIST: a napari screenshot and a montage of every lesion.

Reads ``recist_DL_info_rows.csv`` of a DeepLesion sample folder through the plugin's reader
(the same path a user takes with File > Open), so the figure shows where the reader puts the
lines. Run under a virtual display:

    xvfb-run -a .venv/bin/python scripts/deeplesion_figure.py \\
        --data ../shared/data/deeplesion_samples --out docs/images
"""

import argparse
from pathlib import Path

import numpy as np


def montage(records, images, path):
    """One panel per lesion: a 2x-long-axis crop of its key slice with the RECIST lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(records)
    cols = 8
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, rec, img in zip(axes.flat, records, images):
        r = rec.recist
        half = max(12.0, r.long_length)
        cr, cc = r.centre
        ax.imshow(np.clip((img + 160) / 400, 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.plot(r.long_axis[:, 1], r.long_axis[:, 0], "-", color="#ff4040", lw=1.5)
        ax.plot(r.short_axis[:, 1], r.short_axis[:, 0], "-", color="#40c0ff", lw=1.5)
        ax.set_xlim(cc - half, cc + half)
        ax.set_ylim(cr + half, cr - half)
        ax.set_title(f"{rec.lesion_type_name}\n{r.long_mm:.0f} x {r.short_mm:.0f} mm",
                     fontsize=7)
    fig.suptitle("DeepLesion key slices (soft-tissue window) with their RECIST "
                 "(red long axis, blue short axis)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="deeplesion_samples folder")
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = Path(args.data) / "recist_DL_info_rows.csv"

    from napari_recist_seg.data.deeplesion import read_deeplesion, read_deeplesion_slice

    records = read_deeplesion(table)
    images = [read_deeplesion_slice(rec) for rec in records]
    montage(records, images, out / "deeplesion_recist_montage.png")

    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1100, 800)
    viewer.open(str(table), plugin="napari-recist-seg")
    shapes = next(layer for layer in viewer.layers if layer._type_string == "shapes")
    # Show the kidney slice with two lesions, zoomed on them.
    target = max(range(len(records)), key=lambda i: records[i].recist.long_mm)
    first_line = 2 * target
    verts = np.asarray(shapes.data[first_line])
    if verts.shape[1] == 3:
        viewer.dims.set_current_step(0, int(round(verts[0, 0])))
    centre = verts[:, -2:].mean(axis=0) * np.asarray(shapes.scale[-2:])
    viewer.camera.center = (0, *centre) if verts.shape[1] == 3 else tuple(centre)
    viewer.camera.zoom = 4.0
    shot = viewer.screenshot(path=str(out / "deeplesion_recist_napari.png"), canvas_only=False)
    print(f"{len(records)} lesions; screenshot {shot.shape} and montage in {out}")
    viewer.close()


if __name__ == "__main__":
    main()
