"""Widget settings remembered between napari sessions, as small JSON files.

Each form's values live in ``<config folder>/<name>.json``: the user's configuration folder of
the plugin (``platformdirs.user_config_dir``), or the folder named by the environment variable
``NAPARI_RECIST_SEG_SETTINGS_DIR``. JSON rather than magicgui's own ``persist`` (a pickle):
reading a settings file must never run code.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

__all__ = ["SETTINGS_DIR_VARIABLE", "load_settings", "save_settings", "settings_file"]

#: Environment variable that overrides the folder of the settings files.
SETTINGS_DIR_VARIABLE = "NAPARI_RECIST_SEG_SETTINGS_DIR"


def settings_file(name: str) -> Path:
    """The JSON file that holds the settings called ``name``."""
    folder = os.environ.get(SETTINGS_DIR_VARIABLE)
    if not folder:
        import platformdirs

        folder = platformdirs.user_config_dir("napari-recist-seg")
    return Path(folder) / f"{name}.json"


def load_settings(name: str) -> dict:
    """The remembered settings ``name`` (an empty dict when there are none or they are
    unreadable: a damaged file only costs the user their remembered choices)."""
    try:
        values = json.loads(settings_file(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def save_settings(name: str, values: dict) -> None:
    """Remember ``values`` (JSON-compatible) as the settings ``name``.

    Written to a temporary file then renamed, so a crash never leaves half a file; a folder
    that cannot be written is not an error (the settings are then not remembered).
    """
    path = settings_file(name)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(values, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
