"""RECIST annotation: draw long and short axes as lines, see them paired, measured and checked.

The widget keeps a RECIST Shapes layer in order: each line the user draws is paired into a
lesion (``lesion_id`` and ``axis`` features, see ``core.annotation.assign_lesions``), coloured by
axis and labelled with its length in mm (from the image layer's pixel size; in px where none is
known). A table lists the lesions with their group and measurements and flags those that break
the RECIST rules with the reason ``Recist`` gives, in a column of its own.

Keyboard shortcuts (bound on the viewer while the widget is open, listed in the tooltips):
``SHORTCUTS``. Undo covers every change of the layer's lines made while the widget follows it:
drawing, deleting, moving, and "Make perpendicular".
"""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Layer, Shapes
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDockWidget,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ...core.annotation import perpendicular_short_axis, recists_from_labels
from ...core.recist import outside_image
from ..colours import AXIS_COLOURS, UNASSIGNED_COLOUR, group_colour
from ..layer_units import (
    META_KEY,
    PX,
    derived_units,
    grid_mismatch,
    length_unit,
    slice_spacing_of,
    spacing_of,
    spatial_shape,
    unproxied,
)
from ..notifications import notify_error, notify_info, notify_warning
from ..recist_layers import (
    LABEL_LIMIT,
    RECIST_DEFAULTS,
    SAVED_ANGLE_TOLERANCE,
    describe_layer,
    recist_shapes_kwargs,
    sync_after_edit,
    table_layer_tuple,
)
from ._common import (
    Connections,
    LayerCombo,
    RecistLayerAccess,
    bind_lifetime,
    follow_image,
    follow_lines,
    is_settled_edit,
    recist_preference,
    scrolling_body,
    show_lines,
    source_file,
)

__all__ = ["SHORTCUTS", "RecistWidget"]

#: napari key bindings of the widget's actions (napari's key names).
SHORTCUTS = {"draw": "Shift-R", "perpendicular": "Shift-N", "undo": "Control-Z"}
#: How many edits Undo can go back.
UNDO_DEPTH = 50

# Short headers, the problem column early: at napari's default dock width the reason a lesion
# breaks the rules must be in view, not behind a scroll bar. "{u}" is the length unit.
_COLUMNS = (
    "lesion",
    "slice",
    "group",
    "long ({u})",
    "short ({u})",
    "status",
    "perp. (deg)",
    "long (px)",
    "short (px)",
)
STATUS_COLUMN = _COLUMNS.index("status")
_PX_COLUMNS = ("long (px)", "short (px)")
_BAD = QColor(200, 60, 60, 110)
_INCOMPLETE = QColor(200, 160, 40, 110)


def _fmt(value: float, digits: int = 1) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


class LesionTableModel(QAbstractTableModel):
    """The lesions of a RECIST layer as table rows (a model, so large layers stay quick)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.lesions: list = []
        self.groups: list = []
        self.unit = "mm"

    def set_lesions(self, lesions, groups=None, unit: str = "mm") -> None:
        """Show ``lesions`` (``LesionInfo``), their groups (None: no group), lengths in ``unit``."""
        self.beginResetModel()
        self.lesions = list(lesions)
        self.groups = list(groups) if groups is not None else [None] * len(self.lesions)
        self.unit = unit
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008 (Qt's signature)
        return 0 if parent.isValid() else len(self.lesions)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: B008
        if parent.isValid():
            return 0
        # Lengths already in pixels: the pixel columns, last, would say the same again.
        return len(_COLUMNS) - (len(_PX_COLUMNS) if self.unit == PX else 0)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return _COLUMNS[section].format(u=self.unit)
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.lesions):
            return None
        info, col = self.lesions[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            group = self.groups[index.row()]
            return (
                str(info.lesion_id),
                "" if info.slice is None else str(info.slice),
                "" if group is None else str(group),
                _fmt(info.long_mm),
                _fmt(info.short_mm),
                info.status,
                _fmt(info.perpendicularity_error),
                _fmt(info.long_px),
                _fmt(info.short_px),
            )[col]
        if role == Qt.ItemDataRole.ForegroundRole and col == 2:
            group = self.groups[index.row()]
            return None if group is None else QBrush(QColor(group_colour(group)))
        if role == Qt.ItemDataRole.TextAlignmentRole and col != STATUS_COLUMN:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.BackgroundRole and not info.ok:
            return QBrush(_INCOMPLETE if info.problem.startswith("incomplete") else _BAD)
        if role == Qt.ItemDataRole.ToolTipRole and not info.ok:
            return info.problem
        return None


class RecistWidget(RecistLayerAccess, QWidget):
    """Dock widget: RECIST drawing, live lesion table, fixes, import and export.

    napari keeps no undo history for Shapes data, so the widget keeps its own: the layer's
    lines and features as they were before each change (drawing, deleting, moving a line,
    "Make perpendicular"); Undo puts the last of them back.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._layer: Shapes | None = None
        self.lesions = []
        self._undo: list[tuple] = []
        # The layer as the last sync left it: what an edit's undo step restores.
        self._snapshot: tuple | None = None
        self._restoring = False
        self._busy = False
        self._worker = None
        self._connections = Connections()
        bind_lifetime(self, self._connections)
        self._build()
        self._bind_keys()
        self.image_combo.layer_changed.connect(self._on_image_changed)
        self.recist_combo.layer_changed.connect(self.set_recist_layer)
        self.recist_combo.layer_changed.connect(
            lambda layer: follow_lines(self.image_combo, layer))
        follow_lines(self.image_combo, self.recist_combo.layer())
        self.set_recist_layer(self.recist_combo.layer())

    def _bind_keys(self) -> None:
        """Bind the shortcuts on the viewer (so they work whichever layer is active)."""
        viewer = unproxied(self.viewer)
        if not hasattr(viewer, "bind_key"):
            return
        me = weakref.ref(self)
        actions = {
            "draw": "start_drawing", "perpendicular": "make_perpendicular", "undo": "undo",
        }
        bound = []
        for action, key in SHORTCUTS.items():
            def call(_viewer, name=actions[action]):
                widget = me()
                if widget is not None:
                    try:
                        # A closed dock's shortcuts must not draw or undo unseen.
                        if _in_open_dock(widget):
                            getattr(widget, name)()
                    except RuntimeError:  # the widget's Qt objects are gone
                        pass

            viewer.bind_key(key, call, overwrite=True)
            bound.append((key, call))

        def unbind(*_):
            for key, call in bound:
                if viewer.keymap.get(_coerce(key)) is call:
                    viewer.bind_key(key, None)

        self.destroyed.connect(unbind)

    # -- UI ---------------------------------------------------------------------------------
    def _build(self) -> None:
        v = self.viewer
        self.image_combo = LayerCombo(v, Image)
        self.recist_combo = LayerCombo(v, Shapes, allow_none=True,
                                       prefer=recist_preference(self.image_combo.layer, v))
        self.new_button = QPushButton("New")
        self.new_button.setToolTip("Add an empty RECIST layer over the chosen image")
        self.new_button.clicked.connect(self.new_recist_layer)
        self.draw_button = QPushButton("Draw lesion (long axis, then short axis)")
        self.draw_button.setToolTip(
            "Switch the RECIST layer to its line tool. Draw the long axis, then the short "
            f"axis: the two lines become one lesion. Shortcut: {SHORTCUTS['draw']}"
        )
        self.draw_button.clicked.connect(self.start_drawing)

        pick = QGridLayout()
        pick.addWidget(QLabel("Image"), 0, 0)
        pick.addWidget(self.image_combo, 0, 1, 1, 2)
        pick.addWidget(QLabel("RECIST layer"), 1, 0)
        pick.addWidget(self.recist_combo, 1, 1)
        pick.addWidget(self.new_button, 1, 2)

        self.model = LesionTableModel(self)
        self.table = QTableView()
        # Tab leaves the table for the controls below it; arrows move between cells.
        self.table.setTabKeyNavigation(False)
        self.table.setModel(self.model)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setResizeContentsPrecision(50)  # size columns from the first rows only
        header.setStretchLastSection(True)
        self.table.setMinimumHeight(150)
        self.table.clicked.connect(lambda index: self._on_cell_clicked(index.row()))

        self.perpendicular_button = QPushButton("Make perpendicular")
        self.perpendicular_button.setToolTip(
            "Turn the selected lesion's short axis about its midpoint to 90 degrees to the "
            f"long axis, keeping its length. Shortcut: {SHORTCUTS['perpendicular']}"
        )
        self.perpendicular_button.clicked.connect(self.make_perpendicular)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip(
            "Undo the last change of the RECIST lines: a line drawn, deleted or moved, or "
            f"'Make perpendicular'. Shortcut: {SHORTCUTS['undo']}"
        )
        self.undo_button.setEnabled(False)
        self.undo_button.clicked.connect(self.undo)
        self.labels_check = QCheckBox("Lengths on lines")
        self.labels_check.setToolTip(
            "Show each lesion's 'long x short mm' beside its long axis. Layers of more than "
            f"{LABEL_LIMIT} lines start without them: napari redraws every label on each "
            "edit, recolouring or zoom, which slows large layers down. The table lists "
            "every length either way."
        )
        self.labels_check.toggled.connect(self._on_labels_toggled)
        fixes = QHBoxLayout()
        fixes.addWidget(self.perpendicular_button)
        fixes.addWidget(self.undo_button)
        fixes.addWidget(self.labels_check)

        io = QGroupBox("Import and export")
        io_layout = QGridLayout(io)
        self.import_button = QPushButton("Import RECIST file...")
        self.import_button.clicked.connect(self._ask_import)
        self.export_button = QPushButton("Export RECIST file...")
        self.export_button.clicked.connect(self._ask_export)
        self.deeplesion_button = QPushButton("Import DeepLesion rows...")
        self.deeplesion_button.setToolTip(
            "Add the RECIST of a DL_info.csv's rows that belong to the chosen image: its key "
            "slice, or a NIfTI file of its series' consecutive slices (PPPPPP_SS_ss_FFF-LLL)"
        )
        self.deeplesion_button.clicked.connect(self._ask_deeplesion)
        self.labels_combo = LayerCombo(v, Labels)
        self.simulate_button = QPushButton("Simulate RECIST")
        self.simulate_button.setToolTip(
            "Measure one RECIST per label of the Labels layer (on its largest slice in 3D)"
        )
        self.simulate_button.clicked.connect(self.simulate_from_labels)
        io_layout.addWidget(self.import_button, 0, 0)
        io_layout.addWidget(self.export_button, 0, 1)
        io_layout.addWidget(self.deeplesion_button, 1, 0, 1, 2)
        io_layout.addWidget(QLabel("From labels"), 2, 0)
        io_layout.addWidget(self.labels_combo, 2, 1)
        io_layout.addWidget(self.simulate_button, 3, 0, 1, 2)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setToolTip("Colours of the lines in the RECIST layer")

        layout = QVBoxLayout(scrolling_body(self))
        layout.addLayout(pick)
        layout.addWidget(self.draw_button)
        layout.addWidget(self.legend)
        layout.addWidget(self.table)
        layout.addLayout(fixes)
        layout.addWidget(io)
        layout.addWidget(self.status)

    # -- layers -----------------------------------------------------------------------------
    def set_recist_layer(self, layer) -> None:
        """Attach to ``layer`` (a Shapes layer): pair its lines and follow its edits."""
        layer = unproxied(layer)
        if layer is self._layer and layer is not None:
            return
        if self._layer is not None:
            self._connections.disconnect_from(self._layer)
            self._connections.disconnect_from(self._layer.selected_data)
            self._connections.disconnect_from(self._layer.text)
        self._layer = layer
        self._undo.clear()
        self._snapshot = None
        self.undo_button.setEnabled(False)
        if layer is not None:
            if self.recist_combo.layer() is not layer:
                self.recist_combo.set_layer(layer)
            self._connections.connect(layer.events.data, self._on_data)
            self._connections.connect(layer.events.features, self._on_features)
            self._connections.connect(
                layer.selected_data.events.items_changed, self._on_layer_selection
            )
            # napari's own layer controls can show or hide the labels too.
            self._connections.connect(layer.text.events.visible, self._show_labels_state)
        self.sync()
        self._show_labels_state()

    def _show_labels_state(self, event=None) -> None:
        layer = self._layer
        try:
            self.labels_check.blockSignals(True)
            self.labels_check.setEnabled(layer is not None)
            self.labels_check.setChecked(layer is not None and bool(layer.text.visible))
            self.labels_check.blockSignals(False)
            self._update_status()
        except RuntimeError:  # the widget was closed
            pass

    def _on_labels_toggled(self, on: bool) -> None:
        if self._layer is not None:
            self._layer.text.visible = bool(on)

    def new_recist_layer(self):
        """Add an empty RECIST layer aligned with the chosen image and attach to it."""
        image = self.image_layer()
        if image is None:
            notify_error(
                "RECIST annotation: choose an image layer first (open an image); RECIST "
                "lengths in mm need its pixel size."
            )
            return None
        features = {
            "lesion_id": np.zeros(0, dtype=np.int64),
            "axis": np.zeros(0, dtype=object),
            "length_mm": np.zeros(0, dtype=float),
            "measurement": np.zeros(0, dtype=object),
        }
        kwargs = recist_shapes_kwargs(
            f"{image.name} RECIST", features, image.scale, image.translate, ndim=image.ndim,
            units=derived_units(image).get("units"),
        )
        kwargs["feature_defaults"] = dict(RECIST_DEFAULTS)
        kwargs["edge_color"] = "white"
        table = slice_spacing_of(image)
        if table:
            # Lines drawn on this stack take their slice's pixel size (see sync_recist_layer).
            kwargs["metadata"][META_KEY]["slice_spacing"] = [list(table[i]) for i in
                                                             sorted(table)]
        # The picture it was made for: pictures of one size share a grid, not their lesions.
        kwargs["metadata"][META_KEY]["image_id"] = str(getattr(image, "unique_id", ""))
        source = source_file(image)
        if source and not (image.metadata or {}).get("deeplesion_files"):
            # Saved, the lesions name the file they were drawn on: the table trains as it is.
            kwargs["metadata"][META_KEY]["image_file"] = source
        layer = Shapes(**kwargs)
        self.viewer.add_layer(layer)
        self.set_recist_layer(layer)
        return layer

    def start_drawing(self) -> None:
        """Select the RECIST layer (creating one if needed) and switch to its line tool.

        Where napari refuses the line tool (in 3D, on a hidden layer), or the plane shown is
        not an axial slice, the dock's status and a notification say why and what to do;
        the view itself is left as the user set it.
        """
        layer = self._layer or self.new_recist_layer()
        if layer is None:
            return
        self.viewer.layers.selection.active = layer
        layer.mode = "add_line"
        problem = _drawing_problem(self.viewer, layer)
        if problem:
            # After the counts, which the next sync rewrites: the advice lasts until then.
            self._update_status()
            self.status.setText(f"{problem} {self.status.text()}")
            notify_warning(problem)

    # -- keeping the layer in order ---------------------------------------------------------
    def _on_data(self, event=None) -> None:
        if self._restoring:
            return
        if is_settled_edit(event):
            if not self._restoring and self._snapshot is not None:
                if self._snapshot[0] is self._layer:
                    self._undo.append(self._snapshot)
                    del self._undo[:-UNDO_DEPTH]
                self._snapshot = None
            self.sync(event)

    def _on_features(self, event=None) -> None:
        if not self._busy:
            self._refresh_table()

    def sync(self, edit=None) -> None:
        """Pair new lines, update lengths, colours and labels, and refresh the table.

        ``edit`` is the layer's data event that prompted it, if any (see ``sync_after_edit``).
        """
        if self._busy:
            return
        self._busy = True
        try:
            layer = self._layer
            if layer is None:
                self.lesions = []
            else:
                spacing, unit, table = self.spacing(), self.unit(), self.slice_spacing()
                sync_after_edit(layer, edit, spacing, unit, table)
                self.lesions = _off_image_marked(
                    describe_layer(layer, spacing, unit, table), self.image_layer(), layer)
                self._snapshot = _snapshot(layer)
            self.undo_button.setEnabled(bool(self._undo))
            self._refresh_table()
            self._update_status()
        except RuntimeError:
            # The widget's Qt objects are gone (the dock was closed); nothing to show.
            pass
        finally:
            self._busy = False

    def _on_image_changed(self, layer) -> None:
        follow_image(self.recist_combo, layer, release=True)
        self.sync()

    def _update_status(self) -> None:
        layer, image = self._layer, self.image_layer()
        notes = []
        if layer is None:
            notes.append("Choose or create a RECIST layer.")
        else:
            ok = sum(1 for info in self.lesions if info.ok)
            notes.append(f"{len(self.lesions)} lesion(s), {ok} valid.")
            bad = [info for info in self.lesions if not info.ok]
            if bad:
                # The table's status column is often cut at the dock's width: the first
                # reason is repeated here, in full.
                more = f" ({len(bad) - 1} more in the table)" if len(bad) > 1 else ""
                notes.append(f"Lesion {bad[0].lesion_id}: {bad[0].problem}{more}.")
            if self.unit() == PX:
                notes.append("No pixel size is known: lengths are in px.")
            if image is None:
                notes.append("No image layer: lengths use the RECIST layer's scale.")
            elif not np.allclose(np.asarray(image.scale)[-2:], np.asarray(layer.scale)[-2:]):
                notes.append(
                    "The RECIST layer's scale differs from the image's: lengths use the "
                    "image's pixel size; lines may not sit on the image."
                )
            if layer.nshapes > LABEL_LIMIT and not layer.text.visible:
                notes.append(
                    f"Lengths on lines are off for layers over {LABEL_LIMIT} lines (napari "
                    "redraws them on every update); the table lists them."
                )
        self.status.setText(" ".join(notes))

    def _refresh_table(self) -> None:
        selected = self._selected_row_lesion()
        groups = self._groups()
        self.model.set_lesions(self.lesions, groups, self.unit())
        # A picture's lesions have no slice: the empty column would push the status out.
        self.table.setColumnHidden(_COLUMNS.index("slice"),
                                   all(info.slice is None for info in self.lesions))
        self._update_legend(groups)
        if selected is not None:
            self._select_row(selected)

    def _groups(self) -> list:
        """Each lesion's K-means group (None where it has none)."""
        layer = self._layer
        if layer is None or "group" not in layer.features:
            return [None] * len(self.lesions)
        column = layer.features["group"].tolist()
        out = []
        for info in self.lesions:
            index = info.long_index if info.long_index is not None else info.short_index
            value = column[index] if index is not None and index < len(column) else None
            try:
                group = int(value)
            except (TypeError, ValueError):
                group = -1
            out.append(group if group >= 0 else None)
        return out

    def _update_legend(self, groups) -> None:
        def swatch(colour: str, text: str) -> str:
            return f'<span style="color:{colour}">&#9632;</span>&nbsp;{text}'

        layer = self._layer
        by_group = (
            layer is not None
            and layer.metadata.get(META_KEY, {}).get("color_by") == "group"
            and "group" in layer.features
        )
        if by_group:
            present = sorted({g for g in groups if g is not None})
            parts = [swatch(group_colour(g), f"group {g}") for g in present]
            parts.append(swatch(UNASSIGNED_COLOUR, "no group"))
            text = "Lines by group: " + " &nbsp; ".join(parts)
        else:
            text = "Lines: " + " &nbsp; ".join([
                swatch(AXIS_COLOURS["long"], "long axis"),
                swatch(AXIS_COLOURS["short"], "short axis"),
                swatch(UNASSIGNED_COLOUR, "not paired"),
            ])
        self.legend.setText(text)

    def _selected_row_lesion(self):
        model = self.table.selectionModel()
        rows = model.selectedRows() if model is not None else []
        if rows and 0 <= rows[0].row() < len(self.model.lesions):
            return self.model.lesions[rows[0].row()].lesion_id
        return None

    # -- selection --------------------------------------------------------------------------
    def lesion(self, lesion_id):
        """The ``LesionInfo`` of a lesion id, or None."""
        for info in self.lesions:
            if info.lesion_id == int(lesion_id):
                return info
        return None

    def _on_cell_clicked(self, row: int, _col: int = 0) -> None:
        if 0 <= row < len(self.lesions):
            self.select_lesion(self.lesions[row].lesion_id)

    def select_lesion(self, lesion_id) -> None:
        """Select the lesion's lines in the layer, go to its slice and centre the view on it."""
        info, layer = self.lesion(lesion_id), self._layer
        if info is None or layer is None:
            return
        show_lines(self.viewer, layer, info.line_indices, info.centre)
        self._select_row(info.lesion_id)

    def _select_row(self, lesion_id) -> None:
        for row, info in enumerate(self.lesions):
            if info.lesion_id == lesion_id:
                self.table.selectRow(row)
                return

    def _on_layer_selection(self, event=None) -> None:
        layer = self._layer
        if layer is None or self._busy:
            return
        selected = set(layer.selected_data)
        for info in self.lesions:
            if selected and selected <= set(info.line_indices):
                try:
                    self._select_row(info.lesion_id)
                except RuntimeError:
                    pass
                return

    def selected_lesion(self):
        """The lesion of the table's current row, else the one whose line is selected."""
        layer = self._layer
        if layer is not None and layer.selected_data:
            for info in self.lesions:
                if set(layer.selected_data) & set(info.line_indices):
                    return info
        lesion_id = self._selected_row_lesion()
        return None if lesion_id is None else self.lesion(lesion_id)

    # -- fixes ------------------------------------------------------------------------------
    def make_perpendicular(self) -> None:
        """Turn the selected lesion's short axis to 90 degrees about its midpoint (undoable)."""
        layer, info = self._layer, self.selected_lesion()
        if layer is None or info is None:
            notify_error(
                "Make perpendicular: select a lesion first (click its row or one of its lines)."
            )
            return
        if info.long_index is None or info.short_index is None:
            notify_error(f"Make perpendicular: lesion {info.lesion_id} needs both axes.")
            return
        long_pts = np.asarray(layer.data[info.long_index], dtype=float)
        short_pts = np.asarray(layer.data[info.short_index], dtype=float)
        try:
            fixed = perpendicular_short_axis(long_pts[:, -2:], short_pts[:, -2:], self.spacing())
        except ValueError as exc:
            notify_error(f"Make perpendicular: lesion {info.lesion_id}: {exc}")
            return
        new = short_pts.copy()
        new[:, -2:] = fixed
        self._edit_line(info.short_index, new)
        self.select_lesion(info.lesion_id)

    def _edit_line(self, index: int, vertices: np.ndarray) -> None:
        # One change of the layer's data: one undo step (recorded by _on_data).
        layer = self._layer
        data = [np.array(d, dtype=float) for d in layer.data]
        data[index] = vertices
        layer.data = data

    def undo(self) -> None:
        """Put the RECIST lines back as they were before their last change.

        Covers lines drawn, deleted or moved while the widget followed the layer, and
        "Make perpendicular".
        """
        layer = self._layer
        if not self._undo or layer is None:
            notify_info("Undo: nothing to undo.")
            return
        owner, data, types, features = self._undo.pop()
        if owner is not layer:
            self._undo.clear()
            self.undo_button.setEnabled(False)
            return
        self._restoring = True
        try:
            layer.selected_data = set()
            if layer.mode.startswith("add") or layer.mode in ("vertex_insert",):
                layer.mode = "select"
            layer.data = list(zip(data, types)) if data else []
            layer.features = features
            layer.feature_defaults = {
                **{c: ("" if features[c].dtype == object else np.nan) for c in features.columns},
                **{k: v for k, v in RECIST_DEFAULTS.items() if k in features.columns},
            }
        finally:
            self._restoring = False
        self.sync()

    # -- import and export ------------------------------------------------------------------
    def _add_recist_layer(self, layer_tuple) -> Shapes:
        layer = Layer.create(*layer_tuple)
        image = self.image_layer()
        meta = layer.metadata.setdefault(META_KEY, {})
        if (image is not None and not meta.get("image_id") and not meta.get("image_file")
                and not grid_mismatch(image, layer)):
            # Lines made over the chosen picture (simulated from its mask, imported onto it)
            # are its lesions, also where other pictures share its grid.
            meta["image_id"] = str(getattr(image, "unique_id", ""))
        self.viewer.add_layer(layer)
        self.set_recist_layer(layer)
        return layer

    def _aligned(self, layer_tuple, ndim: int):
        """Give new RECIST lines the image's scale and position when they fit it."""
        image = self.image_layer()
        data, kwargs, kind = layer_tuple
        if image is not None and image.ndim == ndim:
            file_spacing = np.asarray(kwargs["scale"])[-2:]
            # An image in pixels (a stack of slices of several sizes) has no size to differ
            # from: its lesions keep their own.
            if (length_unit(image) != PX
                    and not np.allclose(file_spacing, np.asarray(image.scale)[-2:])
                    and not np.allclose(file_spacing, 1.0)):
                notify_warning(
                    f"The RECIST pixel size {_size(file_spacing)} mm differs from the image's "
                    f"{_size(spacing_of(image))} mm; lengths use the image's."
                )
            kwargs = {**kwargs, "scale": tuple(image.scale), "translate": tuple(image.translate)}
            kwargs["units"] = derived_units(image).get("units", ("pixel",) * image.ndim)
        return (data, kwargs, kind)

    def import_recist_file(self, path):
        """Add the lesions of a RECIST ``.csv``/``.json`` file as a new RECIST layer.

        When the file names its lesions' images, only those of the chosen image are added
        (matched by file name, or by the layer's name); a lesion on a slice the image does
        not have is refused, naming it."""
        from ...data.recist_files import read_recists
        from ...data.recist_sources import header_spacing

        try:
            table = read_recists(path, max_perpendicularity_error=SAVED_ANGLE_TOLERANCE,
                                 spacing_of=header_spacing(Path(path).parent))
        except ValueError as exc:
            notify_error(f"Import RECIST file: {exc}")
            return None
        if not len(table):
            notify_error(f"Import RECIST file: {path} holds no lesion.")
            return None
        table = self._lesions_of_chosen_image(table, Path(path).name)
        if table is None:
            return None
        ndim = 3 if table.slices is not None else 2
        layer_tuple = table_layer_tuple(table, name=f"{Path(path).stem} RECIST")
        return self._add_recist_layer(self._aligned(layer_tuple, ndim))

    def _lesions_of_chosen_image(self, table, file_name: str):
        """The part of ``table`` that belongs to the chosen image, or None (and a
        notification) when none of it can be placed there."""
        image = self.image_layer()
        groups = table.image_groups()
        if image is None:
            return table
        if groups:
            keys = _image_keys(image)
            mine = [i for name, rows in groups.items() if _name_keys(name) & keys for i in rows]
            if mine:
                if len(mine) < len(table):
                    notify_info(f"Import RECIST file: {len(mine)} of the {len(table)} lesions "
                                f"of {file_name} are on {image.name!r}; only those were added.")
                table = table.subset(mine)
            elif len(groups) > 1:
                shown = ", ".join(repr(n) for n in list(groups)[:4])
                more = ", ..." if len(groups) > 4 else ""
                notify_error(f"Import RECIST file: {file_name} names {len(groups)} images "
                             f"({shown}{more}), none of them {image.name!r}: choose the image "
                             f"its lesions were drawn on first.")
                return None
            else:
                notify_warning(f"Import RECIST file: {file_name}'s lesions name image "
                               f"{next(iter(groups))!r}; they were added to {image.name!r}.")
        if table.slices is not None and image.ndim == 3:
            n = int(image.data.shape[0])
            for lid, z in zip(table.lesion_ids, table.slices):
                if not 0 <= z < n:
                    notify_error(f"Import RECIST file: lesion {lid} of {file_name} is on slice "
                                 f"{z}, which {image.name!r} does not have (slices 0 to "
                                 f"{n - 1}); nothing was added.")
                    return None
        return table

    def export_recist_file(self, path):
        """Write the RECIST layer to ``.csv`` or ``.json``, features included."""
        from ..writer import write_recist_file

        layer = self._layer
        if layer is None:
            notify_error("Export RECIST file: there is no RECIST layer to export.")
            return None
        self.sync()
        data, meta, _ = layer.as_layer_data_tuple()
        try:
            written = write_recist_file(str(path), data, meta)
        except ValueError as exc:
            notify_error(f"Export RECIST file: {exc}")
            return None
        notify_info(f"Wrote {len(self.lesions)} lesion(s) to {written}")
        off = [str(info.lesion_id) for info in self.lesions if info.problem == OFF_IMAGE]
        if off:
            notify_warning(f"Export RECIST file: lesion(s) {', '.join(off)} have an endpoint "
                           f"outside {self.image_layer().name!r}; they were written as drawn, "
                           f"but training and prediction will refuse them.")
        return written

    def import_deeplesion(self, path):
        """Add the RECIST of DeepLesion rows that belong to the chosen image.

        The rows of a stack opened from a DL_info.csv go to their slices; on a NIfTI file of
        DeepLesion's consecutive slices (``PPPPPP_SS_ss_FFF-LLL.nii.gz``), the rows of its
        series whose key slices it holds, each on its plane; for a single image, the rows
        whose ``File_name`` matches the layer's name.
        """
        from dataclasses import replace

        from ...data.deeplesion import read_deeplesion, recist_on_volume, recist_table, volume_run

        image = self.image_layer()
        if image is None:
            notify_error("Import DeepLesion rows: choose the image the rows belong to first.")
            return None
        try:
            records = read_deeplesion(path, warn_missing=False)
        except ValueError as exc:
            notify_error(f"Import DeepLesion rows: {exc}")
            return None
        files = image.metadata.get("deeplesion_files")
        run = volume_run(image.name)
        grid = image.metadata.get("grid")
        if files and image.ndim == 3:
            rows = [r for r in records if r.file_name in files]
            slices = [files.index(r.file_name) for r in rows]
        elif run is not None and image.ndim == 3 and grid:
            # A NIfTI file of DeepLesion's consecutive slices: each row of its series whose key
            # slice it holds goes to that plane, turned into the file's rows and columns.
            series, first, last = run
            rows = [replace(r, volume_slice=r.key_slice - first) for r in records
                    if r.series_name == series and first <= r.key_slice <= last]
            placed = [recist_on_volume(r, grid) for r in rows]
            rows = [replace(r, recist=recist) for r, (_, recist) in zip(rows, placed)]
            slices = [plane for plane, _ in placed]
        else:
            name = image.name
            rows = [
                r
                for r in records
                if Path(r.file_name).stem == name
                or (r.image_path is not None and Path(r.image_path).stem == name)
            ]
            slices = None
            if rows and image.ndim == 3:
                current = int(round(self.viewer.dims.current_step[-3]))
                slices = [current] * len(rows)
        if not rows:
            notify_error(
                f"Import DeepLesion rows: no row of {Path(path).name} belongs to image "
                f"{image.name!r} (rows are matched by File_name); open the table with File > "
                "Open to see all of its rows."
            )
            return None
        table = recist_table(rows, slices)
        self._warn_other_spacing(image, rows, slices)
        # Each row keeps its own Spacing_mm_px_ (per-line features); the lines take the
        # image's scale so that they sit on it.
        extra = {}
        stack = slice_spacing_of(image)
        if stack:
            extra["slice_spacing"] = [list(stack[i]) for i in sorted(stack)]
        layer_tuple = table_layer_tuple(
            table, name=f"{image.name} DeepLesion RECIST",
            scale=tuple(image.scale), translate=tuple(image.translate),
            units=derived_units(image).get("units", ("pixel",) * image.ndim),
            per_line=True, metadata=extra,
        )
        return self._add_recist_layer(layer_tuple)

    def _warn_other_spacing(self, image, rows, slices) -> None:
        """Say so when rows' pixel sizes differ from the image's (the rows' are used)."""
        stack = slice_spacing_of(image)
        if stack and slices is not None:
            expected = [stack.get(z) for z in slices]
        elif length_unit(image) == PX:
            return  # the image has no pixel size to disagree with
        else:
            expected = [spacing_of(image)] * len(rows)
        odd = sorted({
            tuple(r.recist.spacing) for r, want in zip(rows, expected)
            if want is not None and not np.allclose(r.recist.spacing, want)
        })
        if odd:
            sizes = ", ".join(f"{_size(sp)} mm" for sp in odd)
            notify_warning(
                f"Import DeepLesion rows: the rows' pixel size ({sizes}) differs from the "
                f"image's; each lesion is measured with its own row's Spacing_mm_px_."
            )

    def simulate_from_labels(self) -> None:
        """Measure one RECIST per label of the chosen Labels layer (in a background thread)."""
        from ...data.recist_files import RecistTable
        from ..workers import create_worker

        labels = self.labels_combo.layer()
        if labels is None:
            notify_error("Simulate RECIST: choose a Labels layer first.")
            return
        data = np.asarray(labels.data)
        if data.ndim not in (2, 3) or not data.any():
            notify_error(
                f"Simulate RECIST: {labels.name!r} must be a 2D or 3D Labels layer with at "
                "least one label."
            )
            return
        spacing = spacing_of(labels)
        name = f"{labels.name} RECIST"
        scale, translate = tuple(labels.scale), tuple(labels.translate)
        units = derived_units(labels).get("units")

        def done(result):
            recists, values, slices, skipped = result
            if skipped:
                notify_warning("Simulate RECIST: " + "; ".join(skipped))
            if not recists:
                notify_error(f"Simulate RECIST: no label of {labels.name!r} could be measured.")
                return
            # Lesion i is label i + 1, as in the pseudo-mask preview.
            table = RecistTable(recists, [v - 1 for v in values], slices)
            layer_tuple = table_layer_tuple(
                table, name=name, scale=scale, translate=translate, units=units
            )
            self._add_recist_layer(layer_tuple)

        worker = create_worker(
            recists_from_labels, data, spacing, _start_thread=False, _ignore_errors=True
        )
        worker.returned.connect(done)
        worker.errored.connect(lambda exc: notify_error(f"Simulate RECIST: {exc}"))
        self._worker = worker
        worker.start()

    def _ask_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import RECIST file", "", "RECIST files (*.csv *.json)"
        )
        if path:
            self.import_recist_file(path)

    def _ask_export(self) -> None:
        if self._layer is None:
            notify_error("Export RECIST file: there is no RECIST layer to export.")
            return
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export RECIST file",
            f"{self._layer.name}.csv",
            "RECIST CSV (*.csv);;JSON (*.json)",
        )
        if path:
            self.export_recist_file(path)

    def _ask_deeplesion(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import DeepLesion rows", "", "DeepLesion table (*.csv)"
        )
        if path:
            self.import_deeplesion(path)


def _drawing_problem(viewer, layer) -> str:
    """Why lines drawn now on ``layer`` would not be RECIST, or "" when they would be.

    napari refuses the line tool without a word in 3D and on a hidden layer (the layer stays
    in pan_zoom mode). A view whose plane is not the data's last two axes (after napari's
    Roll button) draws lines across slices, which are not measured
    (``core.annotation.ACROSS_SLICES``).
    """
    if layer.mode != "add_line":
        if viewer.dims.ndisplay == 3:
            return ("Draw lesion: RECIST are drawn in 2D; switch the viewer to 2D (the 2D/3D "
                    "button).")
        if not layer.visible:
            return (f"Draw lesion: the RECIST layer {layer.name!r} is hidden; show it (its eye "
                    "in the layer list).")
        return f"Draw lesion: napari refused the line tool on {layer.name!r}."
    ndim = viewer.dims.ndim
    # Layers are aligned on their last axes: the image plane is the viewer's last two.
    if ndim > 2 and set(viewer.dims.displayed) != {ndim - 2, ndim - 1}:
        return ("Draw lesion: the view is not an axial slice, and RECIST are measured on one; "
                "press napari's Roll dimensions button until the slices are on the slider.")
    return ""


def _snapshot(layer) -> tuple:
    """What an undo step puts back: the layer's lines, their shape types and features."""
    return (
        layer,
        [np.array(d, dtype=float) for d in layer.data],
        list(layer.shape_type),
        layer.features.copy(),
    )


def _size(spacing) -> str:
    """A (row, col) pixel size as plain text, e.g. "0.7 x 0.7"."""
    return " x ".join(f"{float(v):g}" for v in np.ravel(spacing))


def _coerce(key: str):
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(key)


def _name_keys(name: str) -> set[str]:
    """Ways a table's image name can match a layer: its file name and its stem (both
    without case)."""
    from ...data.recist_sources import image_stem

    path = Path(str(name).replace("\\", "/"))
    return {path.name.lower(), image_stem(path).lower()}


def _image_keys(layer) -> set[str]:
    """The file name of the file an image layer was opened from, and the layer's name."""
    keys = {str(layer.name).lower()}
    source = source_file(layer)
    if source:
        keys |= _name_keys(source)
    return keys


#: The lesion table's status of a lesion with an endpoint beyond its image's edge.
OFF_IMAGE = "endpoint outside the image"


def _off_image_marked(lesions: list, image, layer) -> list:
    """``lesions`` with those whose RECIST leaves ``image`` marked as such (new records: the
    measured ones are cached with their layer). Only on the image's own pixel grid, where
    the layer's coordinates are the image's pixels."""
    if image is None or layer is None or grid_mismatch(image, layer):
        return lesions
    shape = spatial_shape(image)[-2:]
    return [dataclasses.replace(info, problem=OFF_IMAGE)
            if info.ok and info.recist is not None and outside_image(info.recist, shape)
            else info for info in lesions]


def _in_open_dock(widget) -> bool:
    """Whether ``widget`` sits in a dock the user has not closed or hidden (napari's x takes
    the widget out of its dock); a widget never docked counts when shown."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    if parent is None:
        return widget.isVisible()
    return not parent.isHidden()
