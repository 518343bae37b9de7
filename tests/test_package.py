"""Packaging and layering: the manifest, the console script, and what imports what."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True,
                         encoding="utf-8", errors="replace")
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_manifest_at_top_level_is_the_packaged_one():
    top = ROOT / "napari.yaml"
    packaged = ROOT / "src" / "napari_recist_seg" / "napari.yaml"
    assert top.read_text() == packaged.read_text()


def test_manifest_validates_through_the_entry_point():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-recist-seg")
    assert manifest.name == "napari-recist-seg"
    # Qt may have switched this process' locale to ASCII; npe2 prints a check mark.
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([str(Path(sys.executable).parent / "npe2"), "validate",
                             "napari-recist-seg"], capture_output=True, encoding="utf-8",
                            errors="replace", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_version():
    exe = Path(sys.executable).parent / "recist-seg"
    out = subprocess.run([str(exe), "--version"], capture_output=True, check=True,
                         encoding="utf-8", errors="replace")
    assert out.stdout.startswith("recist-seg ")


def test_core_imports_no_torch_qt_or_napari():
    mods = _imported_after(
        "import napari_recist_seg, napari_recist_seg.core.recist, "
        "napari_recist_seg.core.pseudo_masks, napari_recist_seg.core.grouping, "
        "napari_recist_seg.core.metrics, napari_recist_seg.core.annotation"
    )
    for heavy in ("torch", "napari", "qtpy", "PyQt6"):
        assert heavy not in mods, f"{heavy} imported by the core"


def test_learning_layer_imports_no_qt_or_napari():
    mods = _imported_after(
        "import napari_recist_seg.learning.models, napari_recist_seg.learning.trainer, "
        "napari_recist_seg.learning.checkpoints"
    )
    assert "torch" in mods
    for gui in ("napari", "qtpy", "PyQt6"):
        assert gui not in mods, f"{gui} imported by the learning layer"
