"""Qt pieces shared by the dock widgets: layer pickers and event bookkeeping."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QEvent, Signal
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QVBoxLayout, QWidget

from ..layer_units import (
    META_KEY,
    MM,
    grid_mismatch,
    length_unit,
    slice_spacing_of,
    spacing_of,
    unproxied,
)
from ..recist_layers import is_recist_layer, sync_after_edit

# Data events that end an edit; napari also reports the moves of a vertex being dragged.
_SETTLED = ("added", "removed", "changed")

__all__ = ["Connections", "LayerCombo", "add_under_lines", "drawn_for", "enable_if_alive",
           "follow_image", "follow_lines", "is_settled_edit", "recist_preference",
           "scrolling_body", "show_lines", "source_file", "start_model_load", "undocked",
           "viewer_camera"]


def viewer_camera(viewer):
    """The viewer's camera: napari 0.9 moved it to ``viewer.scene``; older versions have
    ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def show_lines(viewer, layer, lines, centre=None) -> None:
    """Select ``lines`` of a Shapes layer, go to their slice and centre the view on them.

    Whatever the viewer shows: the sliders of the axes not displayed go to the centre, and
    the camera centres on it along the displayed ones, in 2D or 3D and in any order of the
    axes (after napari's Roll or Transpose buttons).

    Parameters
    ----------
    viewer : napari.Viewer
    layer : napari.layers.Shapes
    lines : iterable of int
        Positions of the lines in the layer.
    centre : array_like, optional
        A point in the layer's data coordinates (default: the lines' mean vertex).
    """
    lines = sorted(int(i) for i in lines)
    viewer.layers.selection.active = layer
    if layer.mode not in ("select", "direct"):
        layer.mode = "select"
    layer.selected_data = set(lines)
    if centre is None:
        centre = np.concatenate([np.asarray(layer.data[i], float) for i in lines]).mean(axis=0)
    world = np.asarray(layer.data_to_world(np.asarray(centre, dtype=float)))
    _go_to_world_point(viewer, world)


def _go_to_world_point(viewer, world) -> None:
    """Put the sliders and the camera on ``world``, a point in world coordinates of the
    last ``len(world)`` axes of the viewer (a layer may have fewer axes than the viewer)."""
    dims = viewer.dims
    offset = dims.ndim - len(world)
    # The camera's centre is in the order of the displayed axes (dims.displayed), which is
    # not the data's once the axes are rolled or transposed, and has three values in 3D.
    displayed = list(dims.displayed)
    for axis in range(offset, dims.ndim):
        if axis not in displayed:
            dims.set_point(axis, float(world[axis - offset]))
    camera = viewer_camera(viewer)
    # An axis shown but not the layer's (a layer with fewer axes than the viewer) keeps
    # its place.
    current = list(camera.center)[-len(displayed):]
    camera.center = tuple(
        float(world[axis - offset]) if axis >= offset else float(current[k])
        for k, axis in enumerate(displayed)
    )


def undocked(widget, event) -> bool:
    """Whether ``event`` tells ``widget`` that its dock was closed: napari takes a closed
    dock's widget out of the window (its parent becomes None) instead of deleting it, so
    nothing else tells a widget to stop what it follows."""
    return event.type() == QEvent.Type.ParentChange and widget.parent() is None


def is_settled_edit(event) -> bool:
    """Whether a Shapes data event ends an edit (None, as from a direct call, counts)."""
    action = getattr(getattr(event, "action", None), "value", None)
    return action is None or action in _SETTLED


class Connections:
    """Remembers napari event connections so a widget can drop them all at once.

    napari's events outlive a dock widget (layers stay when the widget closes); a callback
    into a deleted Qt widget would fail, so widgets call ``clear`` when they are destroyed.
    """

    def __init__(self):
        self._items: list = []

    def connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._items.append((emitter, callback))

    def disconnect_from(self, source) -> None:
        """Drop the connections made to emitters of ``source`` (a layer or event group)."""
        keep = []
        for emitter, callback in self._items:
            if getattr(emitter, "source", None) is source:
                with contextlib.suppress(Exception):
                    emitter.disconnect(callback)
            else:
                keep.append((emitter, callback))
        self._items = keep

    def clear(self) -> None:
        for emitter, callback in self._items:
            with contextlib.suppress(Exception):
                emitter.disconnect(callback)
        self._items = []


def bind_lifetime(widget, connections: Connections) -> None:
    """Clear ``connections`` when ``widget``'s Qt object is destroyed."""
    # The slot captures the bookkeeping, not the widget, so it does not keep the widget alive.
    widget.destroyed.connect(lambda *_: connections.clear())


def enable_if_alive(button) -> None:
    """Enable ``button`` unless its widget was closed meanwhile."""
    with contextlib.suppress(RuntimeError):
        button.setEnabled(True)


def start_model_load(path, button, on_error, on_loaded=None):
    """Load the checkpoint folder ``path`` in a worker and add it to the session's models.

    ``button`` is disabled while loading; ``on_error(message)`` reports an empty path or a
    failed load; ``on_loaded(entry)`` runs with the new registry entry. Returns the started
    worker, or None when no path was given.
    """
    from ...learning.model_kinds import display_name
    from ..model_registry import MODEL_REGISTRY, load_entry
    from ..notifications import notify_info
    from ..workers import create_worker

    path = str(path).strip()
    if not path:
        on_error("Load model: choose a checkpoint folder.")
        return None

    def loaded(result) -> None:
        kind, folder, model = result
        entry = MODEL_REGISTRY.add(kind, folder, model)
        notify_info(f"Loaded the {display_name(kind)} model {entry.name!r} from {folder}")
        if on_loaded is not None:
            on_loaded(entry)

    worker = create_worker(load_entry, path, "cpu", _start_thread=False, _ignore_errors=True)
    worker.returned.connect(loaded)
    worker.errored.connect(lambda exc: on_error(f"Load model: {exc}"))
    worker.finished.connect(lambda: enable_if_alive(button))
    button.setEnabled(False)
    worker.start()
    return worker


class LayerCombo(QComboBox):
    """A drop-down of the viewer's layers of one type, kept in step with the layer list.

    Parameters
    ----------
    viewer : napari.Viewer
    layer_type : type
        e.g. ``napari.layers.Image``.
    allow_none : bool
        Offer an empty choice ("(none)").
    prefer : callable, optional
        ``prefer(layer) -> bool`` or a rank (higher is better, 0 or False is refused).
        Without a choice already made, the list starts on the topmost layer of the highest
        rank; with ``allow_none``, on "(none)" when no layer is accepted (so that no layer
        is taken over without the user choosing it). A "(none)" the user picked stays chosen
        when layers come and go.
    """

    layer_changed = Signal(object)

    def __init__(self, viewer, layer_type, allow_none: bool = False, prefer=None, parent=None):
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._allow_none = allow_none
        self._prefer = prefer
        self._layers: list = []
        self._none_chosen = False
        self._connections = Connections()
        bind_lifetime(self, self._connections)
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                self._connections.connect(emitter, self.refresh)
        self.currentIndexChanged.connect(self._emit)
        # The list's own refreshes block signals, so this sees the user's choices only.
        self.currentIndexChanged.connect(self._remember_none)
        self.refresh()

    def _remember_none(self, index: int) -> None:
        self._none_chosen = self._allow_none and index == 0

    def layer(self):
        """The chosen layer, or None."""
        i = self.currentIndex()
        if 0 <= i < len(self._layers):
            return self._layers[i]
        return None

    def layers(self) -> list:
        """The layers offered, in the viewer's order (the topmost last)."""
        return [layer for layer in self._layers if layer is not None]

    @property
    def viewer(self):
        """The viewer whose layers are offered."""
        return self._viewer

    def set_layer(self, layer) -> None:
        """Choose ``layer`` (refreshing the list first, so a just-added layer is there)."""
        layer = unproxied(layer)
        self.refresh()
        for i, candidate in enumerate(self._layers):
            if candidate is layer:
                self.setCurrentIndex(i)
                return

    def choose_again(self) -> None:
        """Go to the default choice when ``prefer`` (which may depend on another choice, such
        as the image) ranks another layer above the chosen one, or no longer accepts it, or
        may now accept one where none is chosen; a "(none)" the user picked stays."""
        current = self.layer()
        if self._prefer is None or (current is None and self._none_chosen):
            return
        if current is not None:
            rank = self._prefer(current)
            if rank and rank >= max((self._prefer(layer) for layer in self.layers()),
                                    default=0):
                return
        self.setCurrentIndex(self._default_index(self._layers))
        self._none_chosen = False  # chosen here, not by the user

    def refresh(self, event=None) -> None:
        current = self.layer()
        layers = [layer for layer in self._viewer.layers if isinstance(layer, self._type)]
        if self._allow_none:
            layers = [None, *layers]
        for layer in layers:
            if layer is not None:
                # Re-connecting is harmless: napari ignores a callback already connected.
                layer.events.name.connect(self._rename)
        self.blockSignals(True)
        try:
            self.clear()
            self._layers = layers
            for layer in layers:
                self.addItem("(none)" if layer is None else layer.name)
            if current is not None and current in layers:
                self.setCurrentIndex(layers.index(current))
            elif layers:
                self.setCurrentIndex(self._default_index(layers))
        finally:
            self.blockSignals(False)
        if self.layer() is not current:
            self.layer_changed.emit(self.layer())

    def _default_index(self, layers) -> int:
        if self._none_chosen:
            return 0
        candidates = [i for i, layer in enumerate(layers) if layer is not None]
        if self._prefer is not None:
            ranks = {i: self._prefer(layers[i]) for i in candidates}
            best = max(ranks.values(), default=0)
            candidates = [i for i in candidates if best and ranks[i] == best]
        if candidates:
            return candidates[-1]
        return 0 if self._allow_none else len(layers) - 1

    def _rename(self, event=None) -> None:
        with contextlib.suppress(RuntimeError):  # the combo's Qt object may be gone
            for i, layer in enumerate(self._layers):
                if layer is not None:
                    self.setItemText(i, layer.name)

    def _emit(self, _index) -> None:
        self.layer_changed.emit(self.layer())


def add_under_lines(viewer, new, lines) -> None:
    """Add the layer ``new`` just under the RECIST layer ``lines``, so that masks and outlines
    do not hide the lines the user draws; on top where ``lines`` is None or not shown."""
    layers = viewer.layers
    if lines is not None and lines in layers:
        layers.insert(layers.index(lines), new)
    else:
        viewer.add_layer(new)


class _DockScrollArea(QScrollArea):
    """A dock's scroll area, as wide as its controls need (as a dock without one is): the
    scroll area's own small hint let napari make the dock narrower than its buttons."""

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is not None:
            bar = self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()
            hint.setWidth(max(hint.width(), inner.minimumSizeHint().width() + bar))
        return hint

    def eventFilter(self, watched, event):  # noqa: N802 (Qt's name)
        # Controls that grow later (a model's long name in a list) must widen the dock too.
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)


def scrolling_body(widget):
    """A widget filling ``widget`` inside a vertical scroll area, to hold a dock's controls.

    napari stacks docks opened one after the other in its side column; docks that cannot
    shrink made the window taller than a laptop's screen (two docks: 1,072 px on a 768 px
    screen), with their lower buttons out of reach. In a scroll area a dock shrinks to what
    the column leaves it and scrolls the rest.

    Parameters
    ----------
    widget : QWidget
        The dock's widget, still without a layout.

    Returns
    -------
    QWidget
        The body: give it the dock's layout.
    """
    area = _DockScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    body = QWidget()
    area.setWidget(body)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return body


def source_file(layer) -> str | None:
    """The file (or DICOM folder) a layer was opened from, if any."""
    source = getattr(getattr(layer, "source", None), "path", None) or (
        (getattr(layer, "metadata", None) or {}).get("source"))
    return str(source) if source else None


def drawn_for(layer, image) -> bool | None:
    """Whether the RECIST ``layer`` was made for ``image``: True or False where the layer
    says (the image it was made over, the file it names, or its name "<image> RECIST"),
    None where nothing does."""
    if layer is None or image is None:
        return None
    meta = ((getattr(layer, "metadata", None) or {}).get(META_KEY)) or {}
    if meta.get("image_id"):
        return meta["image_id"] == str(getattr(image, "unique_id", ""))
    named, source = meta.get("image_file"), source_file(image)
    if named and source:
        with contextlib.suppress(OSError):
            return Path(named).resolve() == Path(source).resolve()
    return True if layer.name == f"{image.name} RECIST" else None


def recist_preference(image_of, viewer=None):
    """``prefer`` of a RECIST layer picker: the chosen image's own RECIST layer first, then
    layers on its grid that no other open image claims.

    Parameters
    ----------
    image_of : callable
        ``image_of() -> napari.layers.Image or None``, the image chosen now.
    viewer : napari.Viewer, optional
        Its other images' RECIST layers rank below the chosen image's (pictures of one
        size share a grid, but not their lesions).

    Returns
    -------
    callable
        ``rank(layer)``: 3 for a RECIST layer made for the image, 2 for one on its grid
        that no other image claims, 1 for one on another grid or made for another image, 0
        for other layers.
    """
    def rank(layer) -> int:
        if not is_recist_layer(layer):
            return 0
        image = unproxied(image_of())
        if grid_mismatch(image, layer):
            return 1
        mine = drawn_for(layer, image)
        if mine is not None:
            return 3 if mine else 1
        others = [other for other in (viewer.layers if viewer is not None else ())
                  if other is not image and isinstance(other, Image)]
        return 1 if any(drawn_for(layer, other) for other in others) else 2
    return rank


def follow_lines(image_combo: LayerCombo, layer) -> None:
    """Move ``image_combo`` to the open image the RECIST ``layer`` was made for, when another
    image is chosen: a widget opened over several pictures then starts on one picture's
    image and lesions, and picking a picture's RECIST layer picks the picture."""
    layer, image = unproxied(layer), image_combo.layer()
    if layer is None or drawn_for(layer, image):
        return
    owners = [candidate for candidate in image_combo.layers() if drawn_for(layer, candidate)]
    if owners:
        image_combo.set_layer(owners[-1])


def follow_image(recist_combo: LayerCombo, image, *, release: bool = False) -> None:
    """Move ``recist_combo`` to ``image``'s own RECIST layer, or to one on its grid, when the
    chosen one ranks lower (``recist_preference``): made for another image, or on another
    grid, whose lesions would land on this image's pixels. ``release``: with no better
    layer, choose none rather than another image's (a widget that draws makes a new one)."""
    image, current = unproxied(image), recist_combo.layer()
    if image is None:
        return
    rank = recist_preference(lambda: image, recist_combo.viewer)
    # None chosen (let go of another picture's layer): this picture's own layer if it has one.
    now = 1 if current is None else rank(current)
    better = [layer for layer in recist_combo.layers() if rank(layer) > now]
    if better:
        best = max(rank(layer) for layer in better)
        recist_combo.set_layer([layer for layer in better if rank(layer) == best][-1])
    elif release and now == 1 and (not grid_mismatch(image, current)
                                   or _claimed_elsewhere(current, image, recist_combo.viewer)):
        recist_combo.set_layer(None)


def _claimed_elsewhere(layer, image, viewer) -> bool:
    """Whether another open image owns the RECIST ``layer``: it was made for that image or
    lies on its grid (its lengths would take ``image``'s pixel size here)."""
    return viewer is not None and any(
        other is not image and isinstance(other, Image)
        and (drawn_for(layer, other) or not grid_mismatch(other, layer))
        for other in viewer.layers)


class RecistLayerAccess:
    """The image and RECIST layers a widget works on, and the pixel size and length unit they
    give. The widget holds ``image_combo`` (a ``LayerCombo``) and ``_layer`` (the RECIST
    Shapes layer it follows, or None)."""

    _layer = None

    def image_layer(self):
        """The chosen image layer (None when there is none)."""
        return self.image_combo.layer()

    def recist_layer(self):
        """The RECIST Shapes layer the widget follows (None when there is none)."""
        return self._layer

    def spacing(self) -> tuple[float, float]:
        """Pixel size (row, col) in mm: the image layer's, else the RECIST layer's."""
        if self.image_layer() is not None:
            return spacing_of(self.image_layer())
        if self._layer is not None:
            return spacing_of(self._layer)
        return (1.0, 1.0)

    def slice_spacing(self):
        """``{slice: (row, col)}`` of a stack whose slices differ in pixel size, else None."""
        return slice_spacing_of(self._layer, self.image_layer())

    def unit(self) -> str:
        """Unit of the lengths shown: "mm" where a pixel size is known, else "px"."""
        layer = self._layer
        if layer is not None and (self.slice_spacing() or "spacing_row" in layer.features):
            return MM
        return length_unit(self.image_layer(), layer)

    def sync_layer_labels(self, edit=None) -> None:
        """Pair new lines and bring lengths, colours and text labels of the followed RECIST
        layer up to date after ``edit`` (the layer's data event, if any).

        Every widget that follows edits does this, not only the RECIST widget: a layer opened
        from a file and edited with only this widget docked would otherwise keep showing the
        lengths it was opened with. Widgets docked together share the work of one edit (see
        ``sync_after_edit``).
        """
        layer = self._layer
        if layer is None:
            return
        try:
            sync_after_edit(layer, edit, self.spacing(), self.unit(), self.slice_spacing())
        except RuntimeError:
            pass  # the widget's Qt objects are gone (its dock was closed mid-event)

    def _on_data(self, event=None) -> None:
        """Follow an edit of the RECIST layer: labels now, the widget's own work debounced
        (``_schedule``)."""
        if is_settled_edit(event):
            self.sync_layer_labels(event)
            self._schedule()
