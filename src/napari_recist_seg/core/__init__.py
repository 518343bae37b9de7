"""Pure geometry: RECIST measurements, pseudo-masks, lesion grouping and metrics.

Nothing here imports torch, Qt or napari.
"""
