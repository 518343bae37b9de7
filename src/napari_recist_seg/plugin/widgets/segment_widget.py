"""Segment from RECIST: a RECIST-prompted model turns each drawn lesion into its mask, live.

The user picks an image, its RECIST layer (made by the RECIST annotation widget) and a model of
a prompted kind (``learning.model_kinds``: it reads the lesion's RECIST beside the image), one
of the session's models (``plugin.model_registry``) or a checkpoint folder opened with
"Load...". Choosing a prompted model (or pressing "Segment") starts the preview: every
complete lesion is segmented by ``learning.inference.predict_detailed`` with its own RECIST, on
its own slice of a volume, and its mask drawn in a preview Labels layer ("<image> prompted
preview", label ``lesion_id + 1``, as the pseudo-mask preview; just under the RECIST layer, so
the lines stay in view and editable) that follows edits of the RECIST layer. A model of another
kind, or one whose input channels the image does not give, is refused with the reason, in a
notification and in the widget's status line.

Following edits stays cheap: each lesion's prediction is cached under what it depends on (the
model, the image, the slice, the RECIST endpoints and pixel size), so after an edit only the
lesions whose lines changed are predicted again. Predictions run one lesion at a time in a
worker thread; edits that come while it runs stop it at the next lesion, and the latest state
of the lines is what gets predicted next (results already computed stay in the cache). A
change of the probability threshold measures the cached probabilities again without running
the model.

The table lists, per lesion, the drawn long and short diameters and, measured on the
predicted mask (its largest connected piece, as ``recist-seg predict`` measures it), its area
and its own long and short diameters: in mm and mm² where the pixel size is known, else in px.
"Keep" copies the preview into a new, ordinary Labels layer ("<image> prompted masks");
"Stop" stops following and removes the preview. The user's layers are never changed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels, Shapes
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ...core.recist import outside_image
from ...core.recist_refinement import DEFAULT_REFINEMENT
from ...learning.model_kinds import MODEL_REGISTRY as MODEL_KINDS
from ...learning.model_kinds import display_name
from ..comparison import DEFAULT_THRESHOLD, THRESHOLD_RANGE, format_metric
from ..layer_units import (
    META_KEY,
    MM,
    derived_units,
    grid_metadata,
    grid_mismatch,
    spatial_shape,
    unproxied,
)
from ..model_planes import LayerPlanes, context_of, slice_gap_of, slice_mm_of
from ..model_registry import MODEL_REGISTRY, load_entry
from ..notifications import notify_error
from ..recist_layers import describe_layer
from ._common import (
    Connections,
    LayerCombo,
    RecistLayerAccess,
    add_under_lines,
    bind_lifetime,
    follow_image,
    follow_lines,
    recist_preference,
    scrolling_body,
    start_model_load,
    undocked,
)

__all__ = [
    "LesionMask",
    "SegmentWidget",
    "channels_problem",
    "keep_name",
    "lesion_mask",
    "not_prompted_message",
    "predict_lesions",
    "preview_name",
]

#: Delay after the last edit before the lesions are read again (ms): a burst of events (a
#: line drawn, then paired by the RECIST widget) makes one update.
DEBOUNCE_MS = 30
#: Lesions whose cached probabilities are kept beyond those shown, for undo and moving a
#: vertex back; and the most memory the cache holds then (bytes).
CACHE_SPARE = 64
CACHE_BYTES = 256 * 2**20
_PREVIEW_ROLE = "prompted preview"
_KEPT_ROLE = "prompted masks"
_NO_MODEL = "(no model: Load...)"
_CHOOSE = "(choose a model)"

# "{u}" is the length unit (mm or px).
# Two-line titles keep the table narrow enough to read in a dock beside the canvas.
_COLUMNS = (
    "lesion", "slice", "drawn\nlong ({u})", "drawn\nshort ({u})", "mask\narea ({u}²)",
    "mask\nlong ({u})", "mask\nshort ({u})", "note",
)
_SLICE_COLUMN = 1
_TIPS = {
    4: "Area of the largest connected piece of the lesion's predicted mask",
    5: "Long diameter measured on the predicted mask (largest piece)",
    6: "Short diameter measured on the predicted mask (largest piece)",
}


def preview_name(image_name: str) -> str:
    """Name of the live preview Labels layer of an image."""
    return f"{image_name} prompted preview"


def keep_name(image_name: str) -> str:
    """Name of the Labels layer "Keep" makes from the preview."""
    return f"{image_name} prompted masks"


def _role(layer) -> str:
    return (getattr(layer, "metadata", {}) or {}).get(META_KEY, {}).get("role", "")


# -- predictions, without Qt ---------------------------------------------------------------------
@dataclass
class LesionMask:
    """One lesion's prediction, kept in a window of the image plane.

    Attributes
    ----------
    origin : (int, int)
        Row and column of the window's corner in the image plane.
    probability : ndarray of float32 or None
        The foreground probability in the window: every pixel at or above the lowest offered
        threshold lies in it (None when there is none).
    threshold : float
        The threshold ``mask`` and the measurements were made at.
    mask : ndarray of bool or None
        ``probability >= threshold``.
    area, long, short : float
        Area and RECIST diameters of the mask's largest connected piece, in the lesion's mm
        (mm², or px and px² where its pixel size is one pixel); NaN where it has none.
    """

    origin: tuple
    probability: np.ndarray | None
    threshold: float
    mask: np.ndarray | None
    area: float = float("nan")
    long: float = float("nan")
    short: float = float("nan")

    @property
    def empty(self) -> bool:
        return self.mask is None or not self.mask.any()

    @property
    def nbytes(self) -> int:
        return 0 if self.probability is None else int(self.probability.nbytes)


def _probability_window(probability: np.ndarray, floor: float):
    """(origin, window) of the pixels at or above ``floor``; (origin, None) where none is."""
    rows = np.flatnonzero((probability >= floor).any(axis=1))
    if not len(rows):
        return (0, 0), None
    cols = np.flatnonzero((probability[rows[0]:rows[-1] + 1] >= floor).any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (r0, c0), np.array(probability[r0:r1, c0:c1], dtype=np.float32)


def lesion_mask(origin, probability, threshold: float, spacing) -> LesionMask:
    """Threshold a lesion's probability window and measure its largest piece.

    Parameters
    ----------
    origin : (int, int)
        Corner of the window in the image plane.
    probability : ndarray or None
        The window's foreground probability.
    threshold : float
    spacing : (float, float)
        The lesion's pixel size (row, col) in mm (one pixel where it is unknown).

    Returns
    -------
    LesionMask
    """
    from scipy import ndimage

    from ...core.recist import recist_from_mask

    if probability is None:
        return LesionMask(tuple(origin), None, threshold, None)
    mask = probability >= threshold
    out = LesionMask(tuple(origin), probability, threshold, mask)
    labels, n = ndimage.label(mask)
    if not n:
        return out
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        piece = labels == 1 + int(np.argmax(sizes))
    else:
        piece = mask
    out.area = float(piece.sum()) * float(spacing[0]) * float(spacing[1])
    try:
        measured = recist_from_mask(piece, spacing=spacing)
    except ValueError:  # a single pixel has no diameters
        return out
    out.long, out.short = float(measured.long_mm), float(measured.short_mm)
    return out


#: The refinement choices the widget offers (``core.recist_refinement``), as listed.
REFINE_CHOICES = (
    ("random_walker", "RECIST trimap + image (random walker)"),
    ("trimap", "RECIST trimap only"),
    ("none", "None: the network's own mask"),
)


def predict_lesions(entry, image, jobs, threshold: float, rgb: bool = False, name: str = "",
                    floor: float = THRESHOLD_RANGE[0], refine: str = DEFAULT_REFINEMENT):
    """Predict (or re-threshold) lesions one by one: the work of the widget's worker.

    Parameters
    ----------
    entry : ModelEntry
        The model; it is loaded (on the CPU) when it is not yet.
    image : array_like or LayerPlanes
        The image data: 2D grey or colour, or a stack whose first axis is the slice; as
        ``LayerPlanes`` with the layer's metadata, a model that reads each slice's neighbours
        finds them where the slices came from.
    jobs : list of (key, slice, Recist, LesionMask or None)
        Lesions to segment; with a cached ``LesionMask`` only its probability is thresholded
        and measured again (the model is not run).
    threshold : float
    rgb : bool
        The image's last axis holds colours.
    name : str
        The image's name, for messages.
    floor : float
        Probabilities below it are not kept (the lowest threshold the widget offers).
    refine : str
        How each lesion's probability is refined (``core.recist_refinement.REFINEMENTS``).

    Yields
    ------
    ("loaded", name) after loading the model, then ("lesion", key, LesionMask) per job.

    Raises
    ------
    ValueError
        For a model that is not RECIST-prompted, or whose channels the image does not give.
    """
    inference = model = None
    if any(cached is None for *_, cached in jobs):
        from ..training_job import prepare_torch_import

        prepare_torch_import()
        from ...learning import inference

        model = entry.model
        if model is None:
            model = load_entry(entry.path, "cpu")[2]
            entry.model = model
            yield ("loaded", entry.name)
        if not inference.is_prompted(model):
            raise ValueError(not_prompted_message(entry.name, model.kind))
        problem = channels_problem(model, rgb, name, _is_picture(image))
        if problem:
            raise ValueError(problem)
    planes = image if isinstance(image, LayerPlanes) else LayerPlanes(image, rgb)
    for key, z, recist, cached in jobs:
        if cached is None:
            plane, channel_axis = planes.plane(z, context_of(model), slice_gap_of(model))
            # Looked up at each call: the library's one way in, wherever it is replaced.
            pred = inference.predict_detailed(model, plane, [recist], threshold=threshold,
                                              channel_axis=channel_axis, refine=refine)
            origin, window = _probability_window(pred.probability, floor)
        else:
            origin, window = cached.origin, cached.probability
        yield ("lesion", key, lesion_mask(origin, window, threshold, recist.spacing))


def not_prompted_message(name: str, kind: str) -> str:
    """Why a model cannot segment from RECIST."""
    prompted = [k.display for k in MODEL_KINDS.values() if k.prompted]
    return (f"{name!r} is a {display_name(kind)} model, which does not take the lesion's "
            f"RECIST; choose a RECIST-prompted model ({', '.join(prompted)}), or load one "
            "with 'Load...'")


def channels_problem(model, rgb: bool, name: str, picture: bool = False) -> str:
    """Why ``model`` cannot read an image's channels (grey, or colour with ``rgb``), or "".

    A grey ``picture`` (8-bit, not CT values) is read by a colour model as three equal
    channels, as the library does."""
    config = getattr(model, "config", None) or {}
    expected = config.get("in_channels")
    given = 3 if rgb else 1
    context = context_of(model)
    if expected is None or int(expected) == given:
        return ""
    if context and not rgb and int(expected) == 2 * context + 1:
        return ""  # the slice's neighbours are found for it (``LayerPlanes``)
    if picture and not context and not rgb and int(expected) == 3:
        return ""
    what = "a colour (RGB) image" if rgb else "a grey image"
    extra = f" (a CT slice with {context} neighbour(s) on each side)" if context else ""
    return (f"the model takes {int(expected)}-channel images{extra}, but {name!r} is {what} "
            f"({given} channel{'s' if given > 1 else ''})")


def _is_picture(image) -> bool:
    """Whether an image (layer, ``LayerPlanes`` or array) holds 8-bit picture values."""
    data = getattr(image, "data", image)
    return np.dtype(getattr(data, "dtype", np.float64)) == np.uint8


# -- the table ------------------------------------------------------------------------------------
class _LesionTable(QAbstractTableModel):
    """Rows of (lesion id, slice, drawn long, drawn short, area, long, short, note)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[tuple] = []
        self.unit = MM

    def set_rows(self, rows, unit: str) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.unit = unit
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008 (Qt's signature)
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(_COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return _COLUMNS[section].format(u=self.unit)
        if role == Qt.ItemDataRole.ToolTipRole:
            return _TIPS.get(section)
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.rows):
            return None
        row, col = self.rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            lesion, z, drawn_long, drawn_short, area, long, short, note = row
            return (
                str(lesion), "" if z is None else str(z), format_metric(drawn_long, 1),
                format_metric(drawn_short, 1), format_metric(area, 1), format_metric(long, 1),
                format_metric(short, 1), note,
            )[col]
        if role == Qt.ItemDataRole.TextAlignmentRole and col < len(_COLUMNS) - 1:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole and col == len(_COLUMNS) - 1 and row[-1]:
            return row[-1]
        return None


# -- the widget -----------------------------------------------------------------------------------
class SegmentWidget(RecistLayerAccess, QWidget):
    """Dock widget: live masks of a RECIST-prompted model for each drawn lesion.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    # The model registry may change in a training worker's thread; Qt brings it here.
    _registry_changed = Signal()

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._layer: Shapes | None = None
        self._image = None
        self.preview_layer: Labels | None = None
        self._live = False
        self._worker = None
        self._load_worker = None
        self._dirty = False
        self._off_image: list = []  # ids of lesions reaching past the image, not segmented
        self._cache: OrderedDict = OrderedDict()
        # Each plane of the preview as drawn: {slice or None: ((label, key, threshold), ...)}.
        self._shown: dict = {}
        # Per checkpoint path: the model object predicted with, and a count of replacements
        # (a run resumed into the same folder), which keys the cache.
        self._models_seen: dict = {}
        self._model_generation: dict = {}
        # Counts image changes (another layer, new pixels), which also key the cache.
        self._image_generation = 0
        self.lesions: list = []
        self._connections = Connections()
        bind_lifetime(self, self._connections)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.refresh)
        self._compose_timer = QTimer(self)
        self._compose_timer.setSingleShot(True)
        self._compose_timer.setInterval(0)
        self._compose_timer.timeout.connect(self._compose)
        self._build()
        self._registry_changed.connect(self._on_registry_changed)
        me = weakref.ref(self)

        def registry_changed(*_args):
            widget = me()
            if widget is not None:
                with contextlib.suppress(RuntimeError):  # the widget's Qt object is gone
                    widget._registry_changed.emit()

        self._connections.connect(MODEL_REGISTRY.changed, registry_changed)
        self._connections.connect(napari_viewer.layers.events.removed, self._on_layer_removed)
        # Workers still running when the widget is destroyed are stopped, and what they send
        # back afterwards is dropped.
        holder = self._workers_to_stop = []
        alive = self._alive = [True]

        def closed(*_args):
            alive[0] = False
            for worker in holder:
                _quit(worker)

        self.destroyed.connect(closed)
        self.image_combo.layer_changed.connect(self._on_image_changed)
        self.recist_combo.layer_changed.connect(self.set_recist_layer)
        self.recist_combo.layer_changed.connect(
            lambda layer: follow_lines(self.image_combo, layer))
        follow_lines(self.image_combo, self.recist_combo.layer())
        self.refresh_models()
        self._on_image_changed(self.image_combo.layer())
        self.set_recist_layer(self.recist_combo.layer())

    # -- UI ---------------------------------------------------------------------------------
    def _build(self) -> None:
        v = self.viewer
        # Not the copies other widgets of the plugin make (side-by-side views).
        self.image_combo = LayerCombo(v, Image, prefer=lambda layer: not _role(layer))
        self.recist_combo = LayerCombo(v, Shapes, allow_none=True,
                                       prefer=recist_preference(self.image_combo.layer, v))
        self.model_combo = QComboBox()
        self.model_combo.setToolTip(
            "A RECIST-prompted model of this session (trained or loaded); other kinds are "
            "listed for what they are but cannot segment from RECIST")
        self.model_combo.currentIndexChanged.connect(self._on_model_chosen)
        # Picking the model already chosen (the dock chose the one prompted model by itself)
        # starts it too, as picking any other does.
        self.model_combo.activated.connect(
            lambda _index: None if self._live else self._on_model_chosen())
        self.load_button = QPushButton("Load...")
        self.load_button.setToolTip("Load a prompted model from its checkpoint folder")
        self.load_button.clicked.connect(self._ask_load_model)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(*THRESHOLD_RANGE)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(DEFAULT_THRESHOLD)
        self.threshold_spin.setKeyboardTracking(False)
        self.threshold_spin.setToolTip(
            "Probability above which a pixel is lesion (as recist-seg predict --threshold); "
            "changing it does not run the model again")
        self.threshold_spin.valueChanged.connect(lambda _value: self._schedule())
        self.refine_combo = QComboBox()
        for value, text in REFINE_CHOICES:
            self.refine_combo.addItem(text, value)
        self.refine_combo.setToolTip(
            "How the network's mask is refined (as recist-seg predict --refine): averaged "
            "with a random walker on the image inside the band the RECIST leaves open, with "
            "the axes kept as lesion and what lies beyond the lesion's reach removed; or "
            "only the last two; or not at all")
        self.refine_combo.currentIndexChanged.connect(lambda _index: self._schedule())

        pick = QGridLayout()
        pick.addWidget(QLabel("Image"), 0, 0)
        pick.addWidget(self.image_combo, 0, 1, 1, 2)
        pick.addWidget(QLabel("RECIST layer"), 1, 0)
        pick.addWidget(self.recist_combo, 1, 1, 1, 2)
        pick.addWidget(QLabel("Model"), 2, 0)
        pick.addWidget(self.model_combo, 2, 1)
        pick.addWidget(self.load_button, 2, 2)
        pick.addWidget(QLabel("Threshold"), 3, 0)
        pick.addWidget(self.threshold_spin, 3, 1)
        pick.addWidget(QLabel("Refine"), 4, 0)
        pick.addWidget(self.refine_combo, 4, 1, 1, 2)
        # The lists take the width; the Load button keeps its own. Split evenly, a model's
        # name was cut before the part that tells two models apart.
        pick.setColumnStretch(1, 1)
        self.load_button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)

        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip(
            "Predict each complete lesion's mask into a preview layer that follows edits of "
            "the RECIST lines")
        self.segment_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop following the RECIST lines and remove the preview")
        self.stop_button.clicked.connect(self.stop)
        self.keep_button = QPushButton("Keep")
        self.keep_button.setToolTip(
            "Copy the preview into a new Labels layer of its own, which no longer changes")
        self.keep_button.clicked.connect(self.keep)
        buttons = QHBoxLayout()
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.keep_button)

        self.table_model = _LesionTable(self)
        self.table = QTableView()
        # Tab leaves the table for the controls below it; arrows move between cells.
        self.table.setTabKeyNavigation(False)
        self.table.setModel(self.table_model)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setResizeContentsPrecision(50)
        header.setStretchLastSection(True)
        self.table.setMinimumHeight(140)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(scrolling_body(self))
        layout.addLayout(pick)
        layout.addLayout(buttons)
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        self._update_buttons()

    def _update_buttons(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop_button.setEnabled(self._live or self.preview_layer is not None)
            self.keep_button.setEnabled(self.preview_layer is not None)

    # -- layers -----------------------------------------------------------------------------
    def set_recist_layer(self, layer) -> None:
        """Follow ``layer`` (a RECIST Shapes layer, or None)."""
        layer = unproxied(layer)
        if layer is self._layer and layer is not None:
            return
        if self._layer is not None:
            self._connections.disconnect_from(self._layer)
        self._layer = layer
        if layer is not None:
            if self.recist_combo.layer() is not layer:
                self.recist_combo.set_layer(layer)
            self._connections.connect(layer.events.data, self._on_data)
            self._connections.connect(layer.events.features, self._on_features)
            # Lines drawn while no dock followed the layer get their lesions now, as the
            # annotation dock gives them, so that masks are labelled as the layer is.
            self.sync_layer_labels()
        self._schedule()

    def _on_image_changed(self, image) -> None:
        image = unproxied(image)
        if image is self._image:
            return
        if self._image is not None:
            self._connections.disconnect_from(self._image)
        self._image = image
        self._image_generation += 1
        follow_image(self.recist_combo, image)
        if image is not None:
            # New pixels make every cached prediction stale.
            self._connections.connect(image.events.data, self._on_image_data)
        self._remove_preview()
        self._schedule()

    def _on_image_data(self, event=None) -> None:
        self._image_generation += 1
        self._cache.clear()
        self._shown = {}
        self._schedule()

    def _on_features(self, event=None) -> None:
        self._schedule()

    def _on_layer_removed(self, event=None) -> None:
        removed = unproxied(getattr(event, "value", None))
        if removed is not None and removed is self.preview_layer:
            self.preview_layer = None
            self._shown = {}
            if self._live:
                self._live = False
                self._quit_worker()
                self._set_status("The preview layer was removed: press 'Segment' to start "
                                 "again.")
            self._update_buttons()

    # -- models -----------------------------------------------------------------------------
    def refresh_models(self) -> None:
        """List the registry's models, keeping the choice."""
        combo = self.model_combo
        current = self.model_entry()
        entries = MODEL_REGISTRY.entries()
        combo.blockSignals(True)
        try:
            combo.clear()
            combo.addItem(_NO_MODEL if not entries else _CHOOSE, None)
            for entry in entries:
                prompted = _is_prompted_kind(entry.kind)
                combo.addItem(entry.name if prompted else f"{entry.name} [not prompted]",
                              entry.path)
                combo.setItemData(combo.count() - 1,
                                  f"{display_name(entry.kind)}: {entry.path}",
                                  Qt.ItemDataRole.ToolTipRole)
            index = 0
            if current is not None and current in entries:
                index = combo.findData(current.path)
            prompted = [e for e in entries if _is_prompted_kind(e.kind)]
            if current is None and len(prompted) == 1:
                # The one model this dock can use is chosen (signals blocked: nothing is
                # segmented until Segment is pressed).
                index = combo.findData(prompted[0].path)
            combo.setCurrentIndex(max(0, index))
        finally:
            combo.blockSignals(False)

    def model_entry(self):
        """The chosen ``ModelEntry`` (None when none is chosen)."""
        path = self.model_combo.currentData()
        if not path:
            return None
        for entry in MODEL_REGISTRY:
            if entry.path == path:
                return entry
        return None

    def _on_registry_changed(self) -> None:
        try:
            self.refresh_models()
        except RuntimeError:  # the widget was closed
            return
        for entry in MODEL_REGISTRY:
            seen = self._models_seen.get(entry.path)
            if seen is not None and entry.model is not seen:
                # The folder was trained again (or reloaded): its predictions are stale.
                self._models_seen.pop(entry.path)
                self._model_generation[entry.path] = self._model_generation.get(
                    entry.path, 0) + 1
        if self._live:
            self._schedule()

    def choose_model(self, entry) -> None:
        """Choose ``entry`` in the model list (as picking it does)."""
        index = self.model_combo.findData(entry.path)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)

    def _on_model_chosen(self, _index: int = 0) -> None:
        entry = self.model_entry()
        if entry is None:
            self.stop()
            return
        if not _is_prompted_kind(entry.kind):
            self.stop()
            message = not_prompted_message(entry.name, entry.kind)
            self._set_status(f"Not segmented: {message}.")
            notify_error(f"Segment from RECIST: {message}.")
            return
        self._remove_preview()
        self.start(quiet=True)

    def load_model(self, path):
        """Load a checkpoint folder in a worker, add it to the session's models, choose it."""
        worker = start_model_load(path, self.load_button, self._fail, self._on_loaded)
        if worker is not None:
            self._set_status(f"Loading the model in {str(path).strip()}...")
            alive = self._alive
            worker.finished.connect(lambda: alive[0] and self._load_finished(worker))
        self._load_worker = worker
        return worker

    def _load_finished(self, worker) -> None:
        if self._load_worker is worker:
            self._load_worker = None

    def _on_loaded(self, entry) -> None:
        if not self._alive[0]:
            return
        try:
            self.refresh_models()
            if self.model_entry() is entry:
                # Loaded again (a newer checkpoint in the same folder, say): start afresh.
                self._on_model_chosen()
            else:
                self.choose_model(entry)
        except RuntimeError:  # the widget was closed while the model loaded
            pass

    def event(self, event) -> bool:
        # A closed dock no longer follows the lines, nor leaves its preview behind.
        if undocked(self, event):
            self.stop()
        return super().event(event)

    def _model_loading(self) -> bool:
        # From the click on Load until the worker has finished (it may not have started yet).
        return self._load_worker is not None

    def _ask_load_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Prompted model checkpoint folder")
        if folder:
            self.load_model(folder)

    # -- following --------------------------------------------------------------------------
    def start(self, quiet: bool = False) -> bool:
        """Segment every complete lesion and follow edits; False (and a message) if it cannot.
        ``quiet``: with no image or no RECIST layer yet (a model loaded first), the status
        line alone says so."""
        if self.model_entry() is None and self._model_loading():
            # The load chooses its model and starts on its own once it is done.
            self._set_status("The model is still loading; the lesions are segmented as soon "
                             "as it is loaded.")
            return False
        problem = self._problem()
        if problem:
            self._live = False
            self._set_status(f"Not segmented: {problem}.")
            if not (quiet and (self._image is None or self._layer is None)):
                notify_error(f"Segment from RECIST: {problem}.")
            self._update_buttons()
            return False
        self._live = True
        self._update_buttons()
        self.refresh()
        return True

    def stop(self) -> None:
        """Stop following the RECIST lines and remove the preview."""
        self._live = False
        self._dirty = False
        self._quit_worker()
        self._remove_preview()
        with contextlib.suppress(RuntimeError):
            self._set_status("Stopped." if self.model_entry() is not None else "")
            self._update_buttons()

    def keep(self):
        """Copy the preview into a new Labels layer ("<image> prompted masks"); the layer."""
        preview, image = self.preview_layer, self._image
        if preview is None or image is None:
            notify_error("Keep: there is no preview yet; choose a prompted model and draw a "
                         "lesion first.")
            return None
        if self._worker is not None or self._timer.isActive():
            # The preview holds only the lesions finished so far: kept now, the others
            # would be missing from the kept layer without a word.
            threshold = round(self.threshold_spin.value(), 2)
            waiting = sum(1 for _info, _z, key in self._current()
                          if getattr(self._cache.get(key), "threshold", None) != threshold)
            self._set_status(f"Not kept: {waiting or 'some'} lesion(s) are still being "
                             f"segmented; press Keep when the table shows them all.")
            return None
        entry = self.model_entry()
        layer = Labels(
            _compact_labels(preview.data), name=keep_name(image.name),
            scale=tuple(image.scale),
            translate=tuple(image.translate), opacity=0.5,
            metadata={META_KEY: {"role": _KEPT_ROLE,
                                 "model": None if entry is None else entry.path,
                                 "threshold": round(self.threshold_spin.value(), 2),
                                 "refine": self.refine()},
                      **grid_metadata(image)},
            **derived_units(image),
        )
        self._add_under_lines(layer)
        self._set_status(f"Kept the masks as {layer.name!r}.")
        return layer

    def _problem(self) -> str:
        """Why the chosen layers and model cannot be segmented now ("" when they can)."""
        image, layer, entry = self._image, self._layer, self.model_entry()
        if image is None:
            return "there is no image layer; open an image first"
        if getattr(image, "multiscale", False):
            return f"{image.name!r} is a multiscale image; choose a single-scale one"
        if image.ndim not in (2, 3):
            return f"{image.name!r} is {image.ndim}D; images must be 2D or a stack of slices"
        if entry is None:
            return ("choose a RECIST-prompted model, or load one with 'Load...'"
                    if len(MODEL_REGISTRY) else
                    "there is no model; load a RECIST-prompted one with 'Load...'")
        if not _is_prompted_kind(entry.kind):
            return not_prompted_message(entry.name, entry.kind)
        if entry.model is not None:
            problem = channels_problem(entry.model, bool(image.rgb), image.name,
                                       _is_picture(image))
            if problem:
                return problem
        if layer is None:
            return ("choose the image's RECIST layer (draw one with the RECIST annotation "
                    "widget)")
        if layer.ndim != image.ndim:
            return (f"the RECIST layer {layer.name!r} ({layer.ndim}D) does not fit "
                    f"{image.name!r} ({image.ndim}D)")
        return grid_mismatch(image, layer)

    def _schedule(self) -> None:
        with contextlib.suppress(RuntimeError):  # the widget was closed
            self._timer.start()

    def _quit_worker(self) -> None:
        if self._worker is not None:
            _quit(self._worker)

    def refresh(self) -> None:
        """Read the lesions, update the table, and predict the lesions not yet predicted.

        Edits made while a prediction runs stop it at the next lesion; it starts again from
        the lines as they are when it has stopped.
        """
        try:
            self._read_lesions()
        except RuntimeError:  # the widget's Qt objects are gone
            return
        if not self._live:
            self._fill_table()
            return
        problem = self._problem()
        if problem:
            self._live = False
            self._remove_preview()
            self._fill_table()
            self._set_status(f"Stopped: {problem}.")
            self._update_buttons()
            return
        if self._worker is not None:
            self._dirty = True
            self._quit_worker()
            self._fill_table()
            return
        jobs = self._jobs()
        self._compose()
        if jobs:
            self._run(jobs)

    def _read_lesions(self) -> None:
        layer = self._layer
        if layer is None:
            self.lesions = []
            return
        self.lesions = describe_layer(layer, self.spacing(), self.unit(), self.slice_spacing())

    def _current(self) -> list:
        """(lesion info, slice, cache key) of each lesion that can be predicted."""
        image, entry = self._image, self.model_entry()
        if image is None or entry is None:
            return []
        depth = spatial_shape(image)[0] if image.ndim == 3 else None
        plane = spatial_shape(image)[-2:]
        token = (entry.path, self._model_generation.get(entry.path, 0),
                 self._image_generation, self.refine())
        out = []
        self._off_image = []
        for info in self.lesions:
            if info.recist is None:
                continue
            if outside_image(info.recist, plane):
                # Left out rather than stopping every lesion's preview for one mark.
                self._off_image.append(info.lesion_id)
                continue
            z = None
            if depth is not None:
                z = info.slice
                if not (isinstance(z, int | np.integer) and 0 <= z < depth):
                    continue
                z = int(z)
            r = info.recist
            key = (token, z, r.long_axis.tobytes(), r.short_axis.tobytes(), tuple(r.spacing))
            out.append((info, z, key))
        return out

    def _jobs(self) -> list:
        """Lesions to predict (no cached result) or re-threshold (another threshold)."""
        threshold = round(self.threshold_spin.value(), 2)
        current = self._current()
        here = self._viewed_slice()
        # The lesions of the slice in view first: those are the ones being looked at.
        current.sort(key=lambda item: (item[1] != here, item[0].lesion_id))
        jobs = []
        for info, z, key in current:
            cached = self._cache.get(key)
            if cached is None:
                jobs.append((key, z, info.recist, None))
            elif cached.threshold != threshold:
                jobs.append((key, z, info.recist, cached))
        return jobs

    def refine(self) -> str:
        """The refinement chosen (``core.recist_refinement.REFINEMENTS``)."""
        return self.refine_combo.currentData() or DEFAULT_REFINEMENT

    def _viewed_slice(self):
        image = self._image
        if image is None or image.ndim != 3:
            return None
        try:
            world = self.viewer.dims.point
            z = image.world_to_data(world)[0]
        except (AttributeError, IndexError, ValueError):
            return None
        return int(round(float(z)))

    def _run(self, jobs) -> None:
        from ..workers import create_worker

        entry, image = self.model_entry(), self._image
        threshold = round(self.threshold_spin.value(), 2)
        planes = LayerPlanes(image.data, bool(image.rgb), image.metadata, slice_mm_of(image))
        worker = create_worker(predict_lesions, entry, planes, jobs, threshold,
                               bool(image.rgb), image.name, refine=self.refine(),
                               _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_yielded)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(lambda: self._on_finished(worker, entry))
        self._worker = worker
        self._workers_to_stop.append(worker)
        n_new = sum(1 for *_, cached in jobs if cached is None)
        self._fill_table()
        off = self._off_image
        note = (f" Lesion(s) {', '.join(map(str, off))} reach past the image's edge and are "
                f"not segmented." if off else "")
        self._set_status(
            (f"Segmenting {n_new} lesion(s) with {entry.name!r}..." if n_new else
             f"Measuring the masks at threshold {threshold:g}...") + note)
        worker.start()

    def _on_yielded(self, message) -> None:
        if not self._alive[0]:
            return
        if message[0] == "loaded":
            self._set_status(f"Loaded {message[1]}; segmenting...")
            return
        _, key, result = message
        self._cache[key] = result
        self._cache.move_to_end(key)
        with contextlib.suppress(RuntimeError):
            self._compose_timer.start()

    def _on_errored(self, exc) -> None:
        if not self._alive[0]:
            notify_error(f"Segment from RECIST: {exc}")
            return
        self._live = False
        self._dirty = False
        self._fail(f"Segment from RECIST: {exc}")
        self._update_buttons()

    def _on_finished(self, worker, entry) -> None:
        if self._worker is worker:
            self._worker = None
        with contextlib.suppress(ValueError):
            self._workers_to_stop.remove(worker)
        if not self._alive[0]:
            return
        if entry.model is not None:
            self._models_seen.setdefault(entry.path, entry.model)
        if self._dirty:
            self._dirty = False
            self.refresh()
            return
        self._compose()

    # -- the preview ------------------------------------------------------------------------
    def _compose(self) -> None:
        """Draw the cached masks of the current lesions into the preview, plane by plane."""
        try:
            self._fill_table()
        except RuntimeError:
            return
        image = self._image
        if not self._live or image is None or image not in self.viewer.layers:
            return
        threshold = round(self.threshold_spin.value(), 2)
        planes: dict = {}
        done = False
        for info, z, key in self._current():
            result = self._cache.get(key)
            if result is None or result.threshold != threshold:
                continue
            done = True
            if not result.empty:
                planes.setdefault(z, []).append((int(info.lesion_id) + 1, key, result))
        wanted = {z: tuple((label, key, threshold) for label, key, _ in items)
                  for z, items in planes.items()}
        if self.preview_layer is None and not done:
            return  # nothing predicted yet: no empty layer in the user's way
        preview = self._ensure_preview(image)
        changed = [z for z in set(wanted) | set(self._shown)
                   if wanted.get(z) != self._shown.get(z)]
        if not changed:
            self._trim_cache()
            return
        data = preview.data
        for z in changed:
            plane = data if z is None else data[z]
            plane[...] = 0
            for label, _key, result in sorted(planes.get(z, ()), key=lambda item: item[0]):
                r0, c0 = result.origin
                h, w = result.mask.shape
                window = plane[r0:r0 + h, c0:c0 + w]
                window[result.mask] = label
        self._shown = wanted
        preview.refresh()
        self._trim_cache()

    def _ensure_preview(self, image):
        shape = spatial_shape(image)
        preview = self.preview_layer
        if preview is not None and preview in self.viewer.layers and preview.data.shape == shape:
            return preview
        if preview is not None:
            self._remove_preview()
        preview = Labels(
            np.zeros(shape, dtype=np.int32), name=preview_name(image.name),
            scale=tuple(image.scale), translate=tuple(image.translate), opacity=0.5,
            metadata={META_KEY: {"role": _PREVIEW_ROLE}}, **derived_units(image),
        )
        self.preview_layer = preview
        self._shown = {}
        self._add_under_lines(preview)
        self._update_buttons()
        return preview

    def _add_under_lines(self, new) -> None:
        """Add ``new`` just under the RECIST layer, which stays the active layer: its lines
        stay visible over the masks and the user goes on editing them."""
        add_under_lines(self.viewer, new, self._layer)
        if self._layer is not None and self._layer in self.viewer.layers:
            self.viewer.layers.selection.active = self._layer

    def _remove_preview(self) -> None:
        preview, self.preview_layer = self.preview_layer, None
        self._shown = {}
        if preview is not None and preview in self.viewer.layers:
            self.viewer.layers.remove(preview)
        self._update_buttons()

    def _trim_cache(self) -> None:
        """Forget the oldest predictions beyond those shown and ``CACHE_SPARE`` more."""
        keep = {key for _info, _z, key in self._current()}
        spare = [key for key in self._cache if key not in keep]
        total = sum(result.nbytes for result in self._cache.values())
        for key in spare:  # oldest first
            if len(spare) <= CACHE_SPARE and total <= CACHE_BYTES:
                break
            total -= self._cache.pop(key).nbytes
            spare = spare[1:]

    # -- table and messages -----------------------------------------------------------------
    def _fill_table(self) -> None:
        threshold = round(self.threshold_spin.value(), 2)
        predictable = {id(info): key for info, _z, key in self._current()}
        running = self._worker is not None
        rows = []
        counts = {"ok": 0, "empty": 0, "waiting": 0}
        for info in self.lesions:
            key = predictable.get(id(info))
            result = None if key is None else self._cache.get(key)
            if result is not None and result.threshold != threshold:
                result = None
            if not info.ok:
                note = info.problem
            elif key is None and not self._live:
                note = ""  # nothing is predicted yet; the status line says why
            elif key is None and info.lesion_id in self._off_image:
                note = "reaches past the image's edge"
            elif key is None:
                note = "not on the image's slices"
            elif not self._live:
                note = ""
            elif result is None:
                note = "predicting..." if running else "waiting"
                counts["waiting"] += 1
            elif result.empty:
                note = "empty prediction"
                counts["empty"] += 1
            else:
                note = ""
                counts["ok"] += 1
            shown = result if (self._live and result is not None) else None
            rows.append((
                info.lesion_id, info.slice, info.long_mm, info.short_mm,
                np.nan if shown is None else shown.area,
                np.nan if shown is None else shown.long,
                np.nan if shown is None else shown.short, note,
            ))
        self.table_model.set_rows(rows, self.unit())
        # A 2D image has no slices: its column would only take room.
        self.table.setColumnHidden(_SLICE_COLUMN, all(row[1] is None for row in rows))
        if self._live and not running:
            entry = self.model_entry()
            parts = [f"{len(self.lesions)} lesion(s): {counts['ok']} segmented"]
            if counts["empty"]:
                parts.append(f"{counts['empty']} with an empty prediction")
            others = len(self.lesions) - sum(counts.values())
            if others:
                parts.append(f"{others} not segmented (see the note)")
            name = "" if entry is None else f" with {entry.name!r}"
            self._set_status(", ".join(parts) + f"{name} at threshold {threshold:g}.")

    def _set_status(self, text: str) -> None:
        with contextlib.suppress(RuntimeError):
            self.status.setText(text)

    def _fail(self, message: str) -> None:
        self._set_status(message)
        notify_error(message)

    def rows(self) -> list[dict]:
        """The table as shown: header title (on one line) -> cell text, per row."""
        model = self.table_model
        titles = [model.headerData(c, Qt.Orientation.Horizontal).replace("\n", " ")
                  for c in range(model.columnCount())]
        return [{t: model.index(r, c).data() for c, t in enumerate(titles)}
                for r in range(model.rowCount())]


def _is_prompted_kind(kind) -> bool:
    entry = MODEL_KINDS.get(kind)
    return bool(entry is not None and entry.prompted)


def _quit(worker) -> None:
    with contextlib.suppress(RuntimeError, AttributeError):
        worker.quit()


def _compact_labels(data) -> np.ndarray:
    """A copy of labels ``data`` in the smallest unsigned type that holds them: a kept mask
    of a CT volume is 4 times smaller in uint8 than in the preview's int32 (37 against
    150 MB for 512 x 512 x 150), and saves as uint8 anyway."""
    data = np.asarray(data)
    top = int(data.max()) if data.size else 0
    for kind in (np.uint8, np.uint16):
        if top <= np.iinfo(kind).max and (data.size == 0 or int(data.min()) >= 0):
            return data.astype(kind)
    return np.array(data)
