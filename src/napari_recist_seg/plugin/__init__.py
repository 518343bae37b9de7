"""napari front end: reader, writer, sample data and dock widgets (listed in napari.yaml)."""
