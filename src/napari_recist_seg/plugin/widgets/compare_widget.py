"""Compare models: predict with several trained models and see, side by side, how they differ.

Each chosen model (trained in the Training widget, or loaded from a checkpoint folder) predicts
the chosen image in a worker (``plugin.comparison.predict_models``, at the chosen probability
threshold, 0.5 by default as ``recist-seg predict``): whole-image models see
the whole image (each slice of a volume), lesion-crop models a patch around each lesion of the
chosen RECIST layer (on its slice). Every prediction becomes a Labels layer of its own, named
after the model ("multitask prediction") and drawn as a contour in the model's fixed colour
(``learning.report.MODEL_COLOURS``); predicting again replaces that layer's data. A chosen
ground-truth Labels layer is shown the same way, on a copy: the user's layers are never changed.

With a ground truth, a table gives the metrics of ``core.metrics.segmentation_metrics`` per
model: for the whole image (a volume: the mean over the slices that were predicted) and per
lesion. A lesion is one label of the ground truth (one connected component when the ground
truth is a plain 0/1 mask) on one slice; it is scored in a window around it (its bounding box
grown by half its size on each side), where the other lesions' pixels are left out of the
prediction. A lesion-crop model is scored on the lesions that have a RECIST on that slice
(the only ones it is asked about). The multitask model's predicted RECIST group is shown for
each lesion (that of the RECIST lesion whose centre lies in it; in whole-image mode, the
image's group). A metric an empty prediction does not define (a distance, a centre or
orientation error) is left blank, and the row's note says "empty prediction".

"Side by side" switches napari's grid mode on: one view per model (the image under that
model's contour, and one for the ground truth), all sharing one camera, so zoom, pan and slice
stay linked; each view is labelled with its model's name, in the model's colour. The layer
order and visibility are put back when it is switched off.

The checks of the chosen layers, the predictions and the metrics live in ``plugin.comparison``
(no Qt); this module wires the controls to them and shows the results.
"""

from __future__ import annotations

import contextlib
import csv
import re
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Layer, Shapes
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...learning.report import MODEL_COLOURS
from ..comparison import (
    DEFAULT_THRESHOLD,
    ID_COLUMNS,
    NOTE,
    ROW_COLUMNS,
    THRESHOLD_RANGE,
    collect_inputs,
    format_metric,
    predict_models,
    prediction_name,
)
from ..layer_units import (
    META_KEY,
    MM,
    PX,
    derived_units,
    grid_mismatch,
    pixel_size_known,
    spacing_of,
    spatial_shape,
)
from ..model_registry import MODEL_REGISTRY
from ..notifications import notify_error, notify_info
from ..training_job import KIND_NAMES
from ._common import (
    Connections,
    LayerCombo,
    add_under_lines,
    bind_lifetime,
    follow_image,
    follow_lines,
    recist_preference,
    scrolling_body,
    start_model_load,
    undocked,
    viewer_camera,
)

__all__ = ["CompareWidget", "prediction_name", "predict_models"]

#: Metrics shown in the table (all of METRIC_NAMES go to the CSV file).
TABLE_METRICS = (
    ("dice", "Dice", 3), ("iou", "IoU", 3), ("hausdorff", "Hausdorff px", 1),
    ("centre_error", "centre err px", 1), ("orientation_error", "orient. err deg", 1),
    ("size_error", "size err", 3), ("shape_error", "shape err", 3),
)
#: Widest the model column is drawn (px); the full name is in each cell's tooltip.
MODEL_COLUMN_PX = 130
#: The table's distance columns, whose titles say px or mm.
_DISTANCES = ("hausdorff", "centre_error")


def metric_titles(unit: str = PX) -> list[str]:
    """The metric columns' titles, distances in ``unit`` ("px" or "mm")."""
    return [title.replace(" px", f" {unit}") if key in _DISTANCES else title
            for key, title, _ in TABLE_METRICS]
_CONTOUR = 2
_TRUTH = "ground truth"
#: Layers the side-by-side view adds, removed when it is switched off.
_GRID_ROLES = ("grid copy",)


def _role(layer) -> str:
    return (getattr(layer, "metadata", {}) or {}).get(META_KEY, {}).get("role", "")


def _is_ours(layer) -> bool:
    return _role(layer) in ("prediction", "truth", *_GRID_ROLES)


def truth_preference(image_of, viewer):
    """``prefer`` of the ground-truth picker: a Labels layer of the chosen image's size and
    grid, first one named after that image ("<image>_mask", "<image> - Labels"); never the
    plugin's own layers, one of another size or grid, or one named after another open image.

    Parameters
    ----------
    image_of : callable
        ``image_of() -> napari.layers.Image or None``, the image chosen now.
    viewer : napari.Viewer

    Returns
    -------
    callable
        ``rank(layer)``: 3, 2, or 0 for a layer not to be chosen by itself.
    """
    def rank(layer) -> int:
        image = image_of()
        if _role(layer) or image is None:
            return 0
        if (tuple(np.shape(layer.data)) != tuple(spatial_shape(image))
                or grid_mismatch(image, layer)):
            return 0
        named = [other for other in viewer.layers
                 if isinstance(other, Image) and _named_after(layer.name, other.name)]
        if not named:
            # "case12_mask" for "case1" is another scan's, open or not.
            return 0 if layer.name.startswith(image.name) else 2
        # "ct_2_mask" is named after "ct_2" rather than "ct", when both are open.
        owner = max(named, key=lambda other: len(other.name))
        return 3 if owner is image else 0
    return rank


def _named_after(name: str, image_name: str) -> bool:
    """Whether a layer called ``name`` is named after the image ``image_name``: the image's
    name followed by nothing or a separator ("case1_mask", "case1 - Labels"; not
    "case12_mask"), or an image's name without its file's suffix ("case1" of "case1.nii")."""
    stem = re.sub(r"\.(nii(\.gz)?|nrrd|mha|mhd|dcm|png|jpe?g|tiff?)$", "", image_name,
                  flags=re.IGNORECASE)
    for base in {image_name, stem}:
        if base and name.startswith(base) and (
                len(name) == len(base) or not name[len(base)].isalnum()):
            return True
    return False


def _contour_colormap(colour: str):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: colour})


# -- the widget ------------------------------------------------------------------------------------
class CompareWidget(QWidget):
    """Dock widget: predictions of several models as contours, metrics, side-by-side views.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    _closed = False  # the dock was closed: results still coming are not shown

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._load_worker = None
        self.rows: list[dict] = []
        self._distance_unit = PX  # of the rows' distances: mm where the pixel size is known
        self._grid_saved = None
        self._last_image = None
        self._last_overlays: list[str] = []
        self._connections = Connections()
        bind_lifetime(self, self._connections)
        self._build()
        self._connections.connect(MODEL_REGISTRY.changed, self.refresh_models)
        self.refresh_models()

    # -- UI ---------------------------------------------------------------------------------
    def _build(self) -> None:
        v = self.viewer
        self.image_combo = LayerCombo(v, Image, prefer=lambda layer: not _is_ours(layer))
        self.recist_combo = LayerCombo(v, Shapes, allow_none=True,
                                       prefer=recist_preference(self.image_combo.layer, v))
        self.image_combo.layer_changed.connect(
            lambda image: follow_image(self.recist_combo, image))
        self.recist_combo.layer_changed.connect(
            lambda layer: follow_lines(self.image_combo, layer))
        follow_lines(self.image_combo, self.recist_combo.layer())
        # A ground truth is offered only among the user's own Labels (not predictions, copies
        # or pseudo-mask previews, which carry the plugin's role).
        self.gt_combo = LayerCombo(v, Labels, allow_none=True,
                                   prefer=truth_preference(self.image_combo.layer, v))
        # Another scan's mask, or one of another size, is let go when the image changes.
        self.image_combo.layer_changed.connect(lambda _image: self.gt_combo.choose_again())
        pick = QGridLayout()
        pick.addWidget(QLabel("Image"), 0, 0)
        pick.addWidget(self.image_combo, 0, 1)
        pick.addWidget(QLabel("RECIST layer"), 1, 0)
        pick.addWidget(self.recist_combo, 1, 1)
        pick.addWidget(QLabel("Ground truth"), 2, 0)
        pick.addWidget(self.gt_combo, 2, 1)
        self.recist_combo.setToolTip("Needed by lesion-crop models: a patch around each lesion")
        self.gt_combo.setToolTip("Optional: shown as a contour and used for the metrics")
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(*THRESHOLD_RANGE)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(DEFAULT_THRESHOLD)
        self.threshold_spin.setToolTip(
            "Probability above which a pixel is lesion (as recist-seg predict --threshold)")
        pick.addWidget(QLabel("Threshold"), 3, 0)
        pick.addWidget(self.threshold_spin, 3, 1)
        self.tta_box = QCheckBox("Average with flips")
        self.tta_box.setToolTip(
            "Also predict the image flipped left-right and upside down and average the three "
            "(three times slower; as recist-seg predict --tta)")
        pick.addWidget(self.tta_box, 4, 1)

        self.models_list = QListWidget()
        self.models_list.setMaximumHeight(110)
        self.models_list.setToolTip("Models trained in this session or loaded from a folder")
        self.load_button = QPushButton("Load model...")
        self.load_button.clicked.connect(self._ask_load_model)
        self.predict_button = QPushButton("Predict")
        self.predict_button.clicked.connect(self.predict)
        self.side_button = QPushButton("Side by side")
        self.side_button.setCheckable(True)
        self.side_button.setToolTip("One linked view per model (napari's grid mode)")
        self.side_button.toggled.connect(self.set_side_by_side)
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.side_button)

        self.table = QTableWidget(0, len(ID_COLUMNS) + len(TABLE_METRICS) + 1)
        # Tab leaves the table for the controls below it; arrows move between cells.
        self.table.setTabKeyNavigation(False)
        self.table.setHorizontalHeaderLabels([*ID_COLUMNS, *metric_titles(), NOTE])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(140)
        self.export_button = QPushButton("Export CSV...")
        self.export_button.clicked.connect(self._ask_export)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(scrolling_body(self))
        layout.addLayout(pick)
        layout.addWidget(QLabel("Models"))
        layout.addWidget(self.models_list)
        layout.addLayout(buttons)
        layout.addWidget(self.table)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status)

    # -- models -----------------------------------------------------------------------------
    def refresh_models(self, *_args) -> None:
        """List the registry's models, keeping the ticks (new models come ticked)."""
        try:
            old = {self.models_list.item(i).text(): self.models_list.item(i).checkState()
                   for i in range(self.models_list.count())}
            self.models_list.clear()
            for entry in MODEL_REGISTRY:
                item = QListWidgetItem(entry.name)
                item.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
                item.setCheckState(old.get(entry.name, Qt.CheckState.Checked))
                item.setForeground(_qcolor(MODEL_COLOURS.get(entry.kind, "#ffffff")))
                item.setToolTip(f"{KIND_NAMES.get(entry.kind, entry.kind)}: {entry.path}")
                self.models_list.addItem(item)
        except RuntimeError:  # the widget was closed
            pass

    def chosen_models(self) -> list:
        names = {self.models_list.item(i).text() for i in range(self.models_list.count())
                 if self.models_list.item(i).checkState() == Qt.CheckState.Checked}
        return [entry for entry in MODEL_REGISTRY if entry.name in names]

    def set_models(self, names) -> None:
        """Tick exactly the models called ``names``."""
        for i in range(self.models_list.count()):
            item = self.models_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names
                               else Qt.CheckState.Unchecked)

    def load_model(self, path):
        """Load a checkpoint folder in a worker and add it to the models."""
        self._load_worker = start_model_load(path, self.load_button, notify_error)
        return self._load_worker

    # -- predicting -------------------------------------------------------------------------
    def predict(self):
        """Predict with the ticked models in a worker; returns the worker or None."""
        from ..model_planes import slice_mm_of
        from ..workers import create_worker

        if self._worker is not None:
            notify_error("Compare: a prediction is running; wait for it to finish.")
            return None
        image = self.image_combo.layer()
        gt_layer = self.gt_combo.layer()
        entries = self.chosen_models()
        try:
            inputs = collect_inputs(image, self.recist_combo.layer(), gt_layer, entries)
        except ValueError as exc:
            self.status.setText(f"Not predicted: {exc}")
            notify_error(f"Compare: {exc}")
            return None
        threshold = round(self.threshold_spin.value(), 2)
        # Distances in mm where the image's pixel size is known (Segment's areas are too).
        spacing = tuple(spacing_of(image)) if pixel_size_known(image) else None
        self._distance_unit = MM if spacing else PX
        worker = create_worker(predict_models, entries, inputs.image, inputs.lesions,
                               inputs.truth, inputs.rgb, threshold, self.tta_box.isChecked(),
                               dict(image.metadata), slice_mm_of(image),
                               lesions_problem=inputs.lesions_problem, spacing=spacing,
                               _start_thread=False, _ignore_errors=True)
        results: list = []
        failed: list = []
        worker.yielded.connect(lambda message: self._on_message(message, results))
        worker.errored.connect(lambda exc: (failed.append(exc),
                                            notify_error(f"Compare, {image.name!r}: {exc}")))
        # napari keeps every worker, and so these slots, for the rest of the session: what
        # they hold (the truth's copy, the predicted masks) is let go once shown.
        held = {"truth": inputs.truth}

        def finish() -> None:
            try:
                self._on_finished(image, held.pop("truth", None), gt_layer, results, failed)
            finally:
                results.clear()

        worker.finished.connect(finish)
        self._worker = worker
        self.predict_button.setEnabled(False)
        self.status.setText(f"Predicting {image.name!r} with "
                            f"{', '.join(e.name for e in entries)} (threshold {threshold:g})...")
        worker.start()
        return worker

    def _on_message(self, message, results) -> None:
        kind, payload = message
        if kind == "loaded":
            with contextlib.suppress(RuntimeError):
                self.status.setText(f"Loaded {payload}")
        elif kind == "result":
            results.append(payload)

    def event(self, event) -> bool:
        # Results of a run the user closed the dock on are not shown.
        if undocked(self, event):
            self._closed = True
        return super().event(event)

    def _on_finished(self, image, gt, gt_layer, results, failed) -> None:
        self._worker = None
        try:
            self.predict_button.setEnabled(True)
        except RuntimeError:  # the widget was closed: leave the viewer alone
            return
        if self._closed:
            return
        # Results are shown together once every model has predicted: one that fails leaves
        # the viewer as it was.
        if failed:
            self.status.setText(f"Prediction of {image.name!r} failed: {failed[0]}")
            return
        if image not in self.viewer.layers:
            self.status.setText(f"Not shown: {image.name!r} was removed while predicting")
            return
        if not results:
            self.status.setText("")
            return
        was_side = self.side_button.isChecked()
        if was_side:
            self._restore_layout()
        active = self.viewer.layers.selection.active
        shown = [self._show_prediction(image, result) for result in results]
        if gt is not None:
            shown.append(self._show_truth(image, gt, gt_layer))
        # Overlays of earlier runs (other models, another image, a ground truth no longer
        # chosen) would read as this image's: they are hidden, and side by side leaves them out.
        for layer in self.viewer.layers:
            if _role(layer) in ("prediction", "truth") and layer not in shown:
                layer.visible = False
        self._last_overlays = [layer.name for layer in shown]
        # The user's layer stays the one being edited (a new layer is selected when added).
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        self._last_image = image
        self.rows = [row for r in results for row in r["rows"]]
        self._fill_table()
        names = ", ".join(r["name"] for r in results)
        empty = [r["name"] for r in results if not np.any(r["mask"])]
        self.status.setText(
            f"Predicted {image.name!r} with {names}"
            + (f"; metrics against {gt_layer.name!r}" if gt is not None else "")
            + (f"; empty prediction: {', '.join(empty)}" if empty else ""))
        if was_side:
            self._arrange_side_by_side()

    def _find_ours(self, role: str, key: str):
        """The layer this widget made for ``role`` and ``key``, unless the user renamed it
        since: a renamed result is theirs to keep, and is never written over."""
        for layer in self.viewer.layers:
            meta = layer.metadata.get(META_KEY, {})
            if (meta.get("role") == role and meta.get("key") == key
                    and meta.get("given_name", layer.name) == layer.name):
                return layer
        return None

    def _put_labels(self, image, role: str, key: str, name: str, data, colour: str):
        layer = self._find_ours(role, key)
        ndim = data.ndim
        scale = tuple(image.scale)[-ndim:]
        translate = tuple(image.translate)[-ndim:]
        if layer is None or layer.data.shape != data.shape:
            if layer is not None:
                self.viewer.layers.remove(layer)
            # The image's units: a layer left in "pixel" over an image in mm makes napari
            # drop units (and the scale bar's mm) for every layer.
            units = derived_units(image).get("units", ())[-ndim:]
            layer = Labels(data, name=name, scale=scale, translate=translate, opacity=1.0,
                           colormap=_contour_colormap(colour),
                           metadata={META_KEY: {"role": role, "key": key}},
                           **({"units": units} if units else {}))
            layer.contour = _CONTOUR
            add_under_lines(self.viewer, layer, self.recist_combo.layer())
        else:
            # Each of these redraws the layer (a volume's slice): only what changed is set.
            layer.data = data
            if not np.allclose(layer.scale, scale) or not np.allclose(layer.translate,
                                                                       translate):
                layer.scale, layer.translate = scale, translate
            if layer.metadata[META_KEY].get("colour") != colour:
                layer.colormap = _contour_colormap(colour)
            layer.name = name  # another image's or ground truth's copy takes its name
        layer.metadata[META_KEY]["colour"] = colour
        # napari makes a taken name unique ("name [1]"): the name it gave is the one to
        # recognise the layer by.
        layer.metadata[META_KEY]["given_name"] = layer.name
        return layer

    def _show_prediction(self, image, result):
        colour = MODEL_COLOURS.get(result["kind"], "#ffffff")
        return self._put_labels(image, "prediction", result["name"],
                                prediction_name(result["name"]), result["mask"], colour)

    def _show_truth(self, image, gt, gt_layer):
        data = (gt > 0).astype(np.uint8)
        return self._put_labels(image, "truth", _TRUTH, f"{gt_layer.name} ({_TRUTH})", data,
                                MODEL_COLOURS["truth"])

    def prediction_layers(self) -> list:
        """The prediction layers this widget made (in layer order)."""
        return [layer for layer in self.viewer.layers if _role(layer) == "prediction"]

    # -- metrics ----------------------------------------------------------------------------
    def _fill_table(self) -> None:
        header = self.table.horizontalHeader()
        # Columns sized to their contents are measured again over every row at each new
        # cell: a volume's hundreds of lesions froze the viewer for seconds. They are sized
        # once, after the cells are in.
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.setUpdatesEnabled(False)
        try:
            self._fill_cells()
        finally:
            header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
            self.table.setUpdatesEnabled(True)
        # Models' names are long ("co-segmentation (finished at epoch 2)"): sized to fit,
        # they pushed the metrics out of the dock behind a scroll bar.
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.table.setColumnWidth(0, min(self.table.sizeHintForColumn(0), MODEL_COLUMN_PX))

    def _fill_cells(self) -> None:
        self.table.setHorizontalHeaderLabels(
            [*ID_COLUMNS, *metric_titles(self._distance_unit), NOTE])
        self.table.clearContents()
        self.table.setRowCount(len(self.rows))
        n_id = len(ID_COLUMNS)
        for r, row in enumerate(self.rows):
            note = row.get(NOTE, "")
            cells = [str(row[c]) for c in ID_COLUMNS]
            cells += [format_metric(row[key], digits) for key, _, digits in TABLE_METRICS]
            cells.append(note)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if 2 <= c < n_id + len(TABLE_METRICS):
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight
                                              | Qt.AlignmentFlag.AlignVCenter))
                if n_id <= c < n_id + len(TABLE_METRICS) and not text:
                    item.setToolTip(f"undefined: {note}" if note else "undefined")
                if c == 0:
                    item.setToolTip(text)  # the column may show it cut short
                self.table.setItem(r, c, item)
        # Columns with nothing to say (no slice on a picture, no RECIST or group) would push
        # the metrics out of view.
        for c, key in enumerate(ID_COLUMNS):
            self.table.setColumnHidden(c, bool(self.rows) and all(
                str(row.get(key, "")) == "" for row in self.rows))

    def export_csv(self, path):
        """Write the metrics rows (all metrics) to a CSV file, atomically."""
        from ...data._atomic import atomic_write

        if not self.rows:
            notify_error("Export: there are no metrics yet; choose a ground truth and predict.")
            return None
        path = Path(path)
        try:
            with atomic_write(path, newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=[*ROW_COLUMNS, "distance_unit"],
                                        extrasaction="ignore")
                writer.writeheader()
                # An undefined metric is a blank cell, as in the table; the note says why.
                writer.writerows({**{k: "" if isinstance(v, float) and np.isnan(v) else v
                                     for k, v in row.items()},
                                  "distance_unit": self._distance_unit} for row in self.rows)
        except OSError as exc:
            notify_error(f"Export: cannot write {path}: {exc.strerror or exc}")
            return None
        notify_info(f"Metrics of {len(self.rows)} rows written to {path}")
        return path

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "metrics.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def _ask_load_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Checkpoint folder")
        if folder:
            self.load_model(folder)

    # -- side by side -----------------------------------------------------------------------
    def _grid(self):
        canvas = getattr(self.viewer, "canvas", None)
        grid = getattr(canvas, "grid", None)
        return grid if grid is not None else self.viewer.grid

    def set_side_by_side(self, on: bool) -> None:
        """Grid mode with one view per model (and one for the ground truth), or back."""
        if not on:
            self._restore_layout()
            return
        if not self._arrange_side_by_side():
            self.side_button.blockSignals(True)
            self.side_button.setChecked(False)
            self.side_button.blockSignals(False)

    def _arrange_side_by_side(self) -> bool:
        image = self._last_image
        overlays = [layer for layer in self.viewer.layers
                    if _role(layer) in ("prediction", "truth")
                    and layer.name in self._last_overlays]
        if image is None or image not in self.viewer.layers or not overlays:
            notify_error("Side by side: predict first; each model then gets its own view.")
            return False
        layers = self.viewer.layers
        grid = self._grid()
        # Layers are kept by name: the viewer a plugin gets hands out a new proxy object for
        # a layer at each access, and napari keeps names unique.
        if self._grid_saved is None:
            active = layers.selection.active
            camera = viewer_camera(self.viewer)
            self._grid_saved = {
                "order": [layer.name for layer in layers],
                "visible": {layer.name: layer.visible for layer in layers},
                "grid": (grid.enabled, grid.stride, tuple(grid.shape)),
                "active": None if active is None else active.name,
                "camera": (tuple(camera.center), camera.zoom),
            }
        # Each view is the image (or a copy sharing its data) under one contour, so the
        # layers go in pairs at the bottom of the list, stride 2; the rest is hidden above.
        order = []
        for i, overlay in enumerate(overlays):
            under = image
            if i:
                data, state, kind = image.as_layer_data_tuple()
                state = {**state, "name": f"{image.name} [{overlay.name}]",
                         "metadata": {META_KEY: {"role": "grid copy"}}}
                under = layers.append(Layer.create(data, state, kind)) or layers[-1]
            under.visible = overlay.visible = True
            order += [under.name, overlay.name]
        rest = [layer.name for layer in layers if layer.name not in order]
        for name in rest:
            layers[name].visible = False
        _reorder(layers, order + rest)
        canvas_size = getattr(getattr(self.viewer, "canvas", None), "size", None)
        extent = np.asarray(image.extent.world)[:, -2:]
        shape = grid_shape(len(overlays), canvas_size, extent[1] - extent[0])
        width = None if canvas_size is None else canvas_size[1] / shape[1]
        longest = max(len(overlay.name) for overlay in overlays)
        for overlay in overlays:  # one size for all titles: that of the longest
            _show_name(overlay, True, width, longest)
        grid.stride = 2
        grid.shape = shape
        grid.enabled = True
        # The single view's zoom would show a corner of the first panel: fit them all.
        self.viewer.reset_view()
        return True

    def _restore_layout(self) -> None:
        saved, self._grid_saved = self._grid_saved, None
        layers = self.viewer.layers
        for name in [layer.name for layer in layers if _role(layer) in _GRID_ROLES]:
            layers.remove(name)
        for layer in layers:
            if _role(layer) in ("prediction", "truth"):
                _show_name(layer, False)
        if saved is None:
            return
        grid = self._grid()
        grid.enabled, grid.stride, grid.shape = saved["grid"]
        camera = viewer_camera(self.viewer)
        camera.center, camera.zoom = saved["camera"]  # back where the user was looking
        present = [layer.name for layer in layers]
        kept = [name for name in saved["order"] if name in present]
        order = kept + [name for name in present if name not in kept]
        _reorder(layers, order)
        for name in kept:
            layers[name].visible = saved["visible"].get(name, layers[name].visible)
        if saved["active"] in present:
            layers.selection.active = layers[saved["active"]]


def grid_shape(n_views: int, canvas_size, image_size) -> tuple[int, int]:
    """Rows and columns of the side-by-side grid that show ``n_views`` views of an image of
    ``image_size`` (height, width) largest on a canvas of ``canvas_size`` (height, width).

    napari's own choice is a square-ish grid whatever the canvas: on a tall dock-narrowed
    canvas that makes thin columns, small images and cut-off titles. Without a canvas size
    (no window) it is napari's automatic shape, (-1, -1)."""
    if canvas_size is None or n_views < 1:
        return (-1, -1)
    canvas_h, canvas_w = (float(v) for v in canvas_size)
    image_h, image_w = (max(float(v), 1e-9) for v in image_size)
    best, best_scale = (-1, -1), -1.0
    for cols in range(1, n_views + 1):
        rows = -(-n_views // cols)
        scale = min(canvas_h / rows / image_h, canvas_w / cols / image_w)
        if scale > best_scale + 1e-9:  # ties keep fewer columns: wider titles
            best, best_scale = (rows, cols), scale
    return best


# Width of a character of the name overlay's font, in screen pixels per point of font
# size (measured on napari's default font); it sizes the titles to their views.
_CHAR_WIDTH_PER_POINT = 1.0
_TITLE_POINTS = (8.0, 12.0)


def _show_name(layer, on: bool, view_width: float | None = None,
               n_chars: int | None = None) -> None:
    """Write (or stop writing) ``layer``'s name in the corner of its grid view, in its colour,
    in a font small enough (down to 8 pt) for ``n_chars`` characters (default: the name's)
    to fit a view ``view_width`` pixels wide.

    napari draws a layer's name overlay in the view that holds the layer (from napari 0.6);
    without it, the views are told apart by the layer list only."""
    overlay = getattr(layer, "name_overlay", None)
    if overlay is None:
        return
    if on:
        overlay.color = layer.colormap.map(np.array([1]))[0]
        low, high = _TITLE_POINTS
        fit = high if view_width is None else (
            0.9 * view_width / (max(n_chars or len(layer.name), 1) * _CHAR_WIDTH_PER_POINT))
        overlay.font_size = float(min(high, max(low, fit)))
    overlay.visible = on


def _reorder(layers, names) -> None:
    """Put the layers called ``names`` in that order (bottom first), one move at a time
    (napari's ``move_multiple`` mishandles some orders)."""
    for target, name in enumerate(names):
        current = layers.index(name)
        if current != target:
            layers.move(current, target)


def _qcolor(colour: str):
    from qtpy.QtGui import QColor

    return QColor(colour)
