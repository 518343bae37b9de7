"""Groups and pseudo-masks: K-means groups of the lesions and a live pseudo-mask preview.

K-means (``core.grouping.group_lesions``) writes a ``group`` column into the RECIST layer's
features and recolours its lines by group; the layer's data is never changed. A scatter plot
of long against short diameter shows the groups and is linked to the layer's selection.

The pseudo-mask preview is a Labels layer of its own (label ``lesion_id + 1`` per lesion, via
``core.pseudo_masks.pseudo_mask_labels``; on a volume, per slice) that follows edits of the
RECIST layer. "Keep" turns it into an ordinary layer that no longer changes.
"""

from __future__ import annotations

import contextlib

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from napari.layers import Image, Labels, Shapes
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...core.grouping import FEATURE_SETS, group_lesions, suggest_k
from ...core.pseudo_masks import PSEUDO_MASK_METHODS, pseudo_mask_labels
from ..colours import group_colour
from ..layer_units import (
    META_KEY,
    derived_units,
    grid_metadata,
    grid_mismatch,
    length_unit,
    slice_spacing_of,
    spatial_shape,
    unproxied,
)
from ..notifications import notify_error, notify_info
from ..recist_layers import describe_layer, recolour, write_columns
from ._common import (
    Connections,
    LayerCombo,
    RecistLayerAccess,
    bind_lifetime,
    enable_if_alive,
    follow_image,
    follow_lines,
    recist_preference,
    scrolling_body,
    show_lines,
    undocked,
)

__all__ = ["GroupsWidget", "preview_name"]

#: Delay after the last edit before the plot and preview are brought up to date (ms).
DEBOUNCE_MS = 150
_NO_GROUP = "#9a9a9a"


def preview_name(method: str) -> str:
    """Name of the live preview layer for a pseudo-mask method."""
    return f"pseudo-masks ({method}) [preview]"


def _pseudo_mask_slices(jobs: dict, shape2d, method: str) -> dict:
    """Label image per slice key: ``{key: pseudo_mask_labels(...)}`` (runs in a thread)."""
    return {
        key: pseudo_mask_labels(recists, shape2d, method=method, labels=labels)
        for key, (recists, labels) in jobs.items()
    }


def _slice_signature(recists, labels) -> tuple:
    """What a preview plane depends on: each lesion's label, axes and pixel size."""
    return tuple(sorted(
        (label, r.long_axis.tobytes(), r.short_axis.tobytes(), tuple(r.spacing))
        for r, label in zip(recists, labels)
    ))


class GroupsWidget(RecistLayerAccess, QWidget):
    """Dock widget: K-means groups of the lesions and pseudo-mask previews.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._layer: Shapes | None = None
        self._grouped_text = ""  # the status K-means last gave
        self.preview_layer: Labels | None = None
        # What each plane of the preview layer shows now: {slice key: signature}, so that an
        # edit recomputes only the slices whose lesions changed.
        self._preview_shown: dict = {}
        self._preview_seq = 0
        self._preview_image = None  # the image layer the preview is drawn on
        self._preview_running = False
        self._preview_dirty = False
        self._plot_ids: list[int] = []
        self._picking = False
        self._worker = None
        self._preview_worker = None
        self._connections = Connections()
        bind_lifetime(self, self._connections)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._refresh)
        self._build()
        self._connections.connect(napari_viewer.layers.events.removed, self._on_layer_removed)
        self.recist_combo.layer_changed.connect(self.set_recist_layer)
        self.image_combo.layer_changed.connect(self._on_image_changed)
        self.recist_combo.layer_changed.connect(
            lambda layer: follow_lines(self.image_combo, layer))
        follow_lines(self.image_combo, self.recist_combo.layer())
        self.set_recist_layer(self.recist_combo.layer())

    # -- UI ---------------------------------------------------------------------------------
    def _build(self) -> None:
        v = self.viewer
        self.image_combo = LayerCombo(v, Image)
        self.recist_combo = LayerCombo(v, Shapes, allow_none=True,
                                       prefer=recist_preference(self.image_combo.layer, v))
        pick = QGridLayout()
        pick.addWidget(QLabel("RECIST layer"), 0, 0)
        pick.addWidget(self.recist_combo, 0, 1)
        pick.addWidget(QLabel("Image"), 1, 0)
        pick.addWidget(self.image_combo, 1, 1)

        groups = QGroupBox("Groups (K-means)")
        g = QGridLayout(groups)
        self.features_combo = QComboBox()
        self.features_combo.addItems(list(FEATURE_SETS))
        self.features_combo.setToolTip(
            "standardised: z-scored centre, diameters in mm and orientation as (cos 2t, "
            "sin 2t); paper: the published recipe (raw centre, lengths in px, angle in degrees)"
        )
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 500)
        self.k_spin.setValue(3)
        self.suggest_button = QPushButton("Suggest K")
        self.suggest_button.setToolTip("Pick K in 2..10 by the silhouette score")
        self.suggest_button.clicked.connect(self.suggest)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(0)
        self.run_button = QPushButton("Run K-means")
        self.run_button.clicked.connect(self.run_kmeans)
        g.addWidget(QLabel("Features"), 0, 0)
        g.addWidget(self.features_combo, 0, 1, 1, 2)
        g.addWidget(QLabel("K"), 1, 0)
        g.addWidget(self.k_spin, 1, 1)
        g.addWidget(self.suggest_button, 1, 2)
        g.addWidget(QLabel("Seed"), 2, 0)
        g.addWidget(self.seed_spin, 2, 1)
        g.addWidget(self.run_button, 2, 2)

        self.figure = Figure(figsize=(3.2, 2.6))
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.axes = self.figure.add_subplot(111)
        self.canvas.mpl_connect("pick_event", self._on_pick)
        # Fixed margins in inches, set again when the plot changes size: a tight layout at
        # every redraw measures every tick label again.
        self._fit_margins()
        self.canvas.mpl_connect("resize_event", lambda _event: self._fit_margins())
        self._scatter = None
        self._highlight = None
        g.addWidget(self.canvas, 3, 0, 1, 3)

        masks = QGroupBox("Pseudo-masks")
        m = QHBoxLayout(masks)
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(PSEUDO_MASK_METHODS))
        self.method_combo.currentTextChanged.connect(self._on_method_changed)
        self.preview_button = QPushButton("Live preview")
        self.preview_button.setCheckable(True)
        self.preview_button.setToolTip(
            "Show the pseudo-masks as a Labels layer that follows edits of the RECIST layer"
        )
        self.preview_button.toggled.connect(self._on_preview_toggled)
        self.keep_button = QPushButton("Keep")
        self.keep_button.setToolTip("Turn the preview into an ordinary Labels layer")
        self.keep_button.clicked.connect(self.keep_preview)
        m.addWidget(self.method_combo)
        m.addWidget(self.preview_button)
        m.addWidget(self.keep_button)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(scrolling_body(self))
        layout.addLayout(pick)
        layout.addWidget(groups)
        layout.addWidget(masks)
        layout.addWidget(self.status)
        self._draw_plot([])

    # -- layers -----------------------------------------------------------------------------
    def unit(self) -> str:
        """Unit of the plotted diameters: "mm" where a pixel size is known, else "px"."""
        layer = self._layer
        if layer is not None and (slice_spacing_of(layer) or "spacing_row" in layer.features):
            return "mm"
        return length_unit(self.image_layer(), layer)

    def _on_image_changed(self, image) -> None:
        follow_image(self.recist_combo, image, release=True)
        self._schedule()

    def set_recist_layer(self, layer) -> None:
        """Read ``layer`` and follow its edits."""
        layer = unproxied(layer)
        if layer is self._layer and layer is not None:
            return
        if self._layer is not None:
            self._connections.disconnect_from(self._layer)
            self._connections.disconnect_from(self._layer.selected_data)
        self._layer = layer
        if layer is not None:
            if self.recist_combo.layer() is not layer:
                self.recist_combo.set_layer(layer)
            self._connections.connect(layer.events.data, self._on_data)
            self._connections.connect(layer.events.features, self._on_features)
            self._connections.connect(
                layer.selected_data.events.items_changed, self._on_layer_selection
            )
            # Lines drawn while no dock followed the layer get their lesions now, as the
            # annotation dock gives them: groups are written per line of a lesion.
            self.sync_layer_labels()
        elif self.preview_layer is not None:
            # Masks of lesions no layer holds any more would pass for current ones.
            with contextlib.suppress(RuntimeError):
                self.preview_button.setChecked(False)
                self.status.setText("Pseudo-mask preview stopped: no RECIST layer is chosen "
                                    "(was it removed?).")
        self._refresh()

    def lesions(self):
        """All lesions of the RECIST layer (``LesionInfo``), valid or not."""
        if self._layer is None:
            return []
        return describe_layer(self._layer, self.spacing())

    def _valid(self, action: str):
        """Valid lesions, or None after telling the user why there are too few."""
        layer = self._layer
        if layer is None:
            notify_error(f"{action}: choose a RECIST layer first.")
            return None
        infos = self.lesions()
        valid = [info for info in infos if info.ok]
        if len(valid) < 2:
            bad = [f"lesion {i.lesion_id}: {i.problem}" for i in infos if not i.ok][:3]
            detail = f" ({'; '.join(bad)})" if bad else ""
            notify_error(
                f"{action}: {layer.name!r} needs at least two complete lesions (a long and a "
                f"short axis each); it has {len(valid)}{detail}."
            )
            return None
        return valid

    # -- grouping ---------------------------------------------------------------------------
    def run_kmeans(self) -> None:
        """Group the valid lesions with seeded K-means (in a background thread)."""
        from ..workers import create_worker

        valid = self._valid("Run K-means")
        if valid is None:
            return
        k = int(self.k_spin.value())
        if k > len(valid):
            notify_error(
                f"Run K-means: K={k} is more than the {len(valid)} complete lesions; lower K."
            )
            return
        layer = self._layer
        worker = create_worker(
            group_lesions,
            [info.recist for info in valid],
            k,
            features=self.features_combo.currentText(),
            seed=int(self.seed_spin.value()),
            _start_thread=False,
            _ignore_errors=True,
        )
        ids = [info.lesion_id for info in valid]
        worker.returned.connect(lambda grouping: self._apply_groups(layer, ids, grouping))
        worker.errored.connect(lambda exc: notify_error(f"Run K-means: {exc}"))
        self._start_grouping(worker)

    def _apply_groups(self, layer, lesion_ids, grouping) -> None:
        if layer is None or layer not in self.viewer.layers:
            return
        by_id = dict(zip(lesion_ids, (int(g) for g in grouping.labels_)))
        feats = layer.features
        ids = feats["lesion_id"].tolist() if "lesion_id" in feats else [-1] * layer.nshapes
        groups = np.array([by_id.get(int(i), -1) for i in ids], dtype=np.int64)
        write_columns(layer, {"group": groups}, defaults={"group": -1})
        meta = layer.metadata.setdefault(META_KEY, {})
        meta["color_by"] = "group"
        meta["grouping"] = grouping.to_dict()
        recolour(layer)
        counts = np.bincount(grouping.labels_, minlength=grouping.k)
        self._grouped_text = (f"K-means: {len(lesion_ids)} lesions in {grouping.k} groups "
                              f"(sizes {', '.join(str(c) for c in counts)}).")
        self.status.setText(self._grouped_text)
        self._refresh()

    def suggest(self) -> None:
        """Pick K by the silhouette score (in a background thread) and set the K box."""
        from ..workers import create_worker

        valid = self._valid("Suggest K")
        if valid is None:
            return
        if len(valid) < 3:
            notify_error("Suggest K: the silhouette score needs at least three complete lesions.")
            return
        k_max = min(10, len(valid) - 1)
        worker = create_worker(
            suggest_k,
            [info.recist for info in valid],
            range(2, k_max + 1),
            features=self.features_combo.currentText(),
            seed=int(self.seed_spin.value()),
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.returned.connect(self._on_suggested)
        worker.errored.connect(lambda exc: notify_error(f"Suggest K: {exc}"))
        self._start_grouping(worker)

    def _start_grouping(self, worker) -> None:
        # One at a time: a K suggested while K-means runs with the old K would set the K
        # box and the status line after the groups were drawn with another K.
        controls = (self.suggest_button, self.run_button, self.k_spin)
        for control in controls:
            control.setEnabled(False)
        self._worker = worker
        worker.finished.connect(lambda: [enable_if_alive(c) for c in controls])
        worker.start()

    def _on_suggested(self, result) -> None:
        best, scores = result
        try:
            self.k_spin.setValue(int(best))
            text = ", ".join(f"K={k}: {s:.2f}" for k, s in sorted(scores.items()))
            self.status.setText(f"Suggested K={best} (silhouette {text}).")
        except RuntimeError:
            pass
        notify_info(f"Suggested K={best} by the silhouette score.")

    # -- plot -------------------------------------------------------------------------------
    def _lesion_groups(self, infos) -> list:
        feats = self._layer.features if self._layer is not None else None
        if feats is None or "group" not in feats:
            return [None] * len(infos)
        col = feats["group"].tolist()
        return [col[i.long_index] if i.long_index is not None else None for i in infos]

    def _draw_plot(self, infos) -> None:
        ax = self.axes
        ax.clear()
        unit = self.unit()
        ax.set_xlabel(f"long diameter ({unit})", fontsize=8)
        ax.set_ylabel(f"short diameter ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
        # Diameters alike to many digits would read as "1e-5 + 2.0014e1": plain numbers.
        ax.ticklabel_format(useOffset=False, style="plain")
        self._plot_ids = [i.lesion_id for i in infos]
        self._highlight = None
        if infos:
            groups = self._lesion_groups(infos)
            palette = {}
            for g in groups:
                if g not in palette:
                    no_group = g is None or g != g or int(g) < 0
                    palette[g] = to_rgba(_NO_GROUP if no_group else group_colour(g))
            self._scatter = ax.scatter(
                np.fromiter((i.long_mm for i in infos), float, len(infos)),
                np.fromiter((i.short_mm for i in infos), float, len(infos)),
                c=np.array([palette[g] for g in groups]), s=28, picker=True, pickradius=5,
                edgecolors="none",
            )
        else:
            self._scatter = None
            ax.text(0.5, 0.5, "no complete lesion", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="grey")
        self._update_highlight(redraw=False)
        self.canvas.draw_idle()

    def _fit_margins(self) -> None:
        width, height = self.figure.get_size_inches()
        if width <= 0 or height <= 0:
            return
        # Room for four-digit tick labels and the axis titles at the plot's font sizes.
        self.figure.subplots_adjust(
            left=min(0.45, 0.62 / width), right=1 - min(0.2, 0.12 / width),
            bottom=min(0.45, 0.5 / height), top=1 - min(0.2, 0.1 / height),
        )

    def _on_pick(self, event) -> None:
        if event.artist is not self._scatter or not len(event.ind):
            return
        self.select_lesion(self._plot_ids[int(event.ind[0])])

    def select_lesion(self, lesion_id) -> None:
        """Select a lesion's lines in the RECIST layer, go to its slice and centre the view
        on it (as clicking its point does)."""
        layer = self._layer
        if layer is None:
            return
        ids = layer.features["lesion_id"].tolist() if "lesion_id" in layer.features else []
        lines = {i for i, lid in enumerate(ids) if int(lid) == int(lesion_id)}
        if not lines:
            return
        show_lines(self.viewer, layer, lines)

    def highlighted(self) -> list[int]:
        """Lesion ids whose points are highlighted (those with a selected line)."""
        layer = self._layer
        if layer is None or "lesion_id" not in layer.features:
            return []
        ids = layer.features["lesion_id"].tolist()
        chosen = {int(ids[i]) for i in layer.selected_data if i < len(ids)}
        return [lid for lid in self._plot_ids if lid in chosen]

    def _update_highlight(self, redraw: bool = True) -> None:
        if self._highlight is not None:
            self._highlight.remove()
            self._highlight = None
        chosen = self.highlighted()
        if chosen and self._scatter is not None:
            offsets = self._scatter.get_offsets()
            idx = [self._plot_ids.index(lid) for lid in chosen]
            pts = np.asarray(offsets)[idx]
            self._highlight = self.axes.scatter(
                pts[:, 0], pts[:, 1], s=110, facecolors="none", edgecolors="black",
                linewidths=1.5,
            )
        if redraw:
            self.canvas.draw_idle()

    def _on_layer_selection(self, event=None) -> None:
        try:
            self._update_highlight()
        except RuntimeError:
            pass

    # -- following the RECIST layer ---------------------------------------------------------
    def _on_features(self, event=None) -> None:
        self._schedule()

    def _schedule(self) -> None:
        try:
            self._timer.start()
        except RuntimeError:  # the widget was closed
            pass

    def _refresh(self) -> None:
        try:
            infos = self.lesions()
            self._draw_plot([i for i in infos if i.ok])
            self._note_ungrouped(infos)
        except RuntimeError:
            return
        if self.preview_layer is not None:
            self.update_preview(quiet=True, infos=infos)

    def _note_ungrouped(self, infos) -> None:
        """Say, after the K-means status, how many complete lesions drawn since have no
        group (they keep none until K-means runs again)."""
        text = self.status.text()
        if not self._grouped_text or not text.startswith(self._grouped_text):
            return
        feats = self._layer.features if self._layer is not None else {}
        if "group" not in feats or "lesion_id" not in feats:
            return
        grouped = {int(i) for i, g in zip(feats["lesion_id"], feats["group"])
                   if g == g and int(g) >= 0}  # g == g: not NaN
        new = sum(1 for i in infos if i.ok and int(i.lesion_id) not in grouped)
        note = (f" Not grouped: {new} lesion(s) drawn or mended since; run K-means again."
                if new else "")
        self.status.setText(self._grouped_text + note)

    def _on_layer_removed(self, event=None) -> None:
        removed = getattr(event, "value", None)
        if (self.preview_layer is not None and removed is not None
                and removed is self._preview_image):
            # The masks took that image's size: a preview without it follows nothing.
            with contextlib.suppress(RuntimeError):
                self.preview_button.setChecked(False)
                self.status.setText(f"Pseudo-mask preview stopped: its image {removed.name!r} "
                                    "was removed.")
            return
        if removed is not None and removed is self.preview_layer:
            self.preview_layer = None
            self._preview_shown = {}
            try:
                self.preview_button.setChecked(False)
            except RuntimeError:
                pass

    def event(self, event) -> bool:
        # A closed dock no longer draws pseudo-masks, nor leaves its preview behind.
        if undocked(self, event):
            with contextlib.suppress(RuntimeError):
                self.preview_button.setChecked(False)
        return super().event(event)

    # -- pseudo-mask preview ----------------------------------------------------------------
    def _on_preview_toggled(self, on: bool) -> None:
        if on:
            if not self.update_preview():
                self.preview_button.blockSignals(True)
                self.preview_button.setChecked(False)
                self.preview_button.blockSignals(False)
            return
        self._preview_seq += 1  # results still on their way are dropped
        if self.preview_layer is not None:
            layer, self.preview_layer = self.preview_layer, None
            self._preview_shown = {}
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    def _on_method_changed(self, method: str) -> None:
        if self.preview_layer is not None:
            self.preview_layer.name = preview_name(method)
            self.update_preview(quiet=True)

    def update_preview(self, quiet: bool = False, infos=None) -> bool:
        """Compute the pseudo-masks of the valid lesions into the preview layer (in a thread).

        The preview layer is created when the first result arrives; afterwards only the
        slices whose lesions changed are computed again. ``infos`` are the layer's lesions
        when the caller has them already. Returns False (after a notification, unless
        ``quiet``) when there is nothing to preview.
        """
        from ..workers import create_worker

        def fail(message: str) -> bool:
            if not quiet:
                notify_error(f"Pseudo-mask preview: {message}")
            elif self.preview_layer is not None:
                # A live preview that can no longer follow the lines stops and says why,
                # rather than leave the masks of earlier lines on screen.
                with contextlib.suppress(RuntimeError):
                    self.preview_button.setChecked(False)
                    self.status.setText(f"Pseudo-mask preview stopped: {message}")
            return False

        layer, image = self._layer, self.image_layer()
        if image is None:
            return fail("choose an image layer; the masks take its size and pixel size.")
        self._preview_image = image
        if layer is None:
            return fail("choose a RECIST layer first.")
        if image.ndim not in (2, 3) or layer.ndim != image.ndim:
            return fail(
                f"the RECIST layer ({layer.ndim}D) and the image ({image.ndim}D) must both be "
                "2D or both 3D."
            )
        mismatch = grid_mismatch(image, layer)
        if mismatch:
            return fail(mismatch + ".")
        valid = [i for i in (self.lesions() if infos is None else infos) if i.ok]
        if not valid and self.preview_layer is None:
            return fail(f"{layer.name!r} has no complete lesion (a long and a short axis).")
        if self._preview_running:
            self._preview_dirty = True
            return True
        shape = spatial_shape(image)
        jobs: dict = {}
        for info in valid:
            key = None if image.ndim == 2 else int(info.slice)
            if key is not None and not 0 <= key < shape[0]:
                continue
            recists, labels = jobs.setdefault(key, ([], []))
            recists.append(info.recist)
            labels.append(int(info.lesion_id) + 1)
        method = self.method_combo.currentText()
        signatures = {key: (method, _slice_signature(*job)) for key, job in jobs.items()}
        preview = self.preview_layer
        shown = self._preview_shown
        if preview is None or preview.data.shape != shape or preview not in self.viewer.layers:
            shown = {}
        todo = {key: job for key, job in jobs.items() if shown.get(key) != signatures[key]}
        cleared = set(shown) - set(jobs)
        if preview is not None and shown and not todo and not cleared:
            return True
        self._preview_seq += 1
        seq = self._preview_seq
        worker = create_worker(
            _pseudo_mask_slices, todo, shape[-2:], method, _start_thread=False,
            _ignore_errors=True,
        )
        worker.returned.connect(
            lambda planes: self._apply_preview(seq, planes, cleared, signatures, image, method)
        )
        worker.errored.connect(lambda exc: notify_error(f"Pseudo-mask preview: {exc}"))
        worker.finished.connect(self._preview_finished)
        self._preview_running = True
        self._preview_worker = worker
        worker.start()
        return True

    def _preview_finished(self) -> None:
        self._preview_running = False
        if self._preview_dirty:
            self._preview_dirty = False
            if self.preview_layer is not None or self._wants_preview():
                self.update_preview(quiet=True)

    def _wants_preview(self) -> bool:
        try:
            return self.preview_button.isChecked()
        except RuntimeError:
            return False

    def _apply_preview(self, seq, planes: dict, cleared, signatures, image, method) -> None:
        if seq != self._preview_seq or image not in self.viewer.layers:
            return
        shape = spatial_shape(image)
        preview = self.preview_layer
        if preview is None or preview.data.shape != shape or preview not in self.viewer.layers:
            if preview is not None and preview in self.viewer.layers:
                # Drawn for the image chosen before: this widget's own layer, now stale. It is
                # let go first, or its removal would read as the user's and end the preview.
                self.preview_layer = None
                self.viewer.layers.remove(preview)
            preview = Labels(
                np.zeros(shape, dtype=np.int32), name=preview_name(method), scale=image.scale,
                translate=image.translate, opacity=0.45,
                metadata={META_KEY: {"role": "pseudo-mask preview"}, **grid_metadata(image)},
                **derived_units(image),
            )
            self.preview_layer = preview
            self.viewer.add_layer(preview)
            # Keep the RECIST lines on top of the masks.
            if self._layer is not None and self._layer in self.viewer.layers:
                self.viewer.layers.selection.active = self._layer
        data = preview.data
        if image.ndim == 2:
            if planes or cleared:
                data[...] = planes.get(None, 0)
        else:
            for key in cleared:
                data[key] = 0
            for key, plane in planes.items():
                data[key] = plane
        self._preview_shown = dict(signatures)
        preview.refresh()

    def keep_preview(self):
        """Turn the preview into an ordinary Labels layer (renamed, no longer updated)."""
        preview = self.preview_layer
        if preview is None:
            notify_error("Keep: there is no pseudo-mask preview; press 'Live preview' first.")
            return None
        method = self.method_combo.currentText()
        self.preview_layer = None
        self._preview_shown = {}
        self._preview_seq += 1  # a result still on its way must not touch the kept layer
        preview.name = f"pseudo-masks ({method})"
        preview.metadata[META_KEY] = {"role": "pseudo-masks", "method": method}
        self.preview_button.blockSignals(True)
        self.preview_button.setChecked(False)
        self.preview_button.blockSignals(False)
        return preview
