"""Trained and loaded models of the session, offered to the comparison widget."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from .training_job import KIND_NAMES, prepare_torch_import

__all__ = ["MODEL_REGISTRY", "ModelEntry", "ModelRegistry", "checkpoint_label", "load_entry"]


@dataclass(eq=False)
class ModelEntry:
    """A trained model the comparison widget can use.

    ``model`` is the loaded torch module once ``load_entry`` has run (it is loaded lazily, in a
    worker, so that torch is imported only when a model is used).
    """

    name: str
    kind: str
    path: str
    model: object = None


class ModelRegistry:
    """The trained and loaded models of this session, shared by the training and comparison
    widgets. ``changed`` is emitted (in the thread that changed it) after every change."""

    changed = Signal()

    def __init__(self):
        self._entries: list[ModelEntry] = []
        self._lock = threading.Lock()

    def __iter__(self):
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def get(self, name: str) -> ModelEntry | None:
        for entry in self._entries:
            if entry.name == name:
                return entry
        return None

    def add(self, kind: str, path, model=None, name: str | None = None) -> ModelEntry:
        """Add a model (or refresh the entry of the same checkpoint folder) and return it.

        ``name`` is the display name (default: ``checkpoint_label``, which says the model's
        run and state); a name already taken by another checkpoint gets the run folder's name
        and, if still taken, a number.
        """
        path = str(Path(path).expanduser().resolve())
        base = name or checkpoint_label(kind, path)
        with self._lock:
            for entry in self._entries:
                if entry.path == path:
                    entry.kind, entry.model = kind, model
                    if name:
                        entry.name = self._free_name(base, path, exclude=entry)
                    break
            else:
                entry = ModelEntry(self._free_name(base, path), kind, path, model)
                self._entries.append(entry)
        self.changed.emit()
        return entry

    def _free_name(self, base: str, path: str, exclude: ModelEntry | None = None) -> str:
        names = {e.name for e in self._entries if e is not exclude}
        if base not in names:
            return base
        run = Path(path).parent.parent.name  # <run folder>/<kind>/<best|last>
        if run and base.endswith(")"):
            base = f"{base[:-1]}, {run})"
        name, n = base, 2
        while name in names:
            name, n = f"{base} {n}", n + 1
        return name

    def remove(self, entry: ModelEntry) -> None:
        with self._lock:
            self._entries = [e for e in self._entries if e is not entry]
        self.changed.emit()

    def clear(self) -> None:
        with self._lock:
            self._entries = []
        self.changed.emit()


MODEL_REGISTRY = ModelRegistry()


def checkpoint_label(kind: str, path) -> str:
    """A display name for a saved checkpoint folder, e.g. "A1 (best epoch 4 of 6)".

    Read from the run folder around it (``learning.run_folders.find_run``, plain JSON, no
    torch); just the kind's name when the folder says nothing more.
    """
    from ..learning.run_folders import find_run

    name = KIND_NAMES.get(kind, kind)
    folder = Path(path)
    try:
        run = find_run(folder.parent) if folder.name in ("best", "last") else find_run(folder)
    except (OSError, ValueError):
        run = None
    if run is None or run.epoch is None:
        return name
    if folder.name == "last" and not run.finished:
        return f"{name} (stopped at epoch {run.epoch})"
    return f"{name} ({'finished' if run.finished else 'stopped'} at epoch {run.epoch})"


def load_entry(path, device: str = "cpu"):
    """Load a checkpoint folder (or a training output folder) for the registry.

    Returns ``(kind, folder, model)``; raises ValueError naming the folder and the problem.
    """
    prepare_torch_import()
    from ..learning.inference import load_model, resolve_checkpoint

    folder = resolve_checkpoint(path)
    try:
        model = load_model(folder, device=device)
    except (ValueError, OSError, KeyError) as exc:
        raise ValueError(f"{folder} cannot be loaded: {exc}") from None
    return model.kind, str(folder), model
