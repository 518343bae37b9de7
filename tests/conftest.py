"""Shared fixtures for the napari plugin tests (napari's own fixtures come from its plugin)."""

from __future__ import annotations

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    """Leave ``slow`` tests out of the default run; ``-m slow`` selects them."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(autouse=True)
def _triton_loads_beside_mesa():
    """Tests run in one process in any order: once a viewer has drawn with Mesa, torch's
    first use of triton (by the trainer, not at import) would crash it, so each test starts
    as the plugin does before it loads a model (``prepare_torch_import``)."""
    from napari_recist_seg.plugin.training_job import prepare_torch_import

    prepare_torch_import()


@pytest.fixture
def notifications(monkeypatch):
    """Messages the plugin shows in napari's notification area, as (level, text) pairs."""
    import napari.utils.notifications as nn

    shown: list[tuple[str, str]] = []
    for level in ("error", "warning", "info"):
        monkeypatch.setattr(
            nn, f"show_{level}", lambda message, _level=level: shown.append((_level, message))
        )
    return shown


@pytest.fixture
def empty_model_registry():
    """The plugin's list of trained and loaded models, empty before and after the test."""
    from napari_recist_seg.plugin.model_registry import MODEL_REGISTRY

    MODEL_REGISTRY.clear()
    yield MODEL_REGISTRY
    MODEL_REGISTRY.clear()


@pytest.fixture
def ct_image():
    """A small 2D CT-like slice in HU: air around a soft-tissue disc."""
    rr, cc = np.mgrid[:64, :80]
    img = np.where((rr - 32) ** 2 + (cc - 40) ** 2 < 28**2, 40.0, -1000.0)
    return img.astype(np.float32)


@pytest.fixture
def viewer_2d(make_napari_viewer, ct_image):
    """A viewer with a 2D CT image whose pixels are 0.5 mm (rows) by 0.8 mm (columns)."""
    viewer = make_napari_viewer()
    viewer.add_image(ct_image, name="ct", scale=(0.5, 0.8))
    return viewer


@pytest.fixture
def viewer_3d(make_napari_viewer, ct_image):
    """A viewer with a 5-slice CT stack, 0.7 mm pixels and 2.5 mm slices."""
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([ct_image] * 5), name="ct stack", scale=(2.5, 0.7, 0.7))
    return viewer


def add_line(layer, points) -> None:
    """Add one line to a Shapes layer, the way napari's line tool ends a drawing."""
    layer.add(np.asarray(points, dtype=float), shape_type="line")


@pytest.fixture
def draw():
    """``draw(layer, points)`` adds a line as napari's line tool does."""
    return add_line


@pytest.fixture
def mouse_draw():
    """``mouse_draw(layer, start, end)`` drags a line with the line tool on a 2D layer.

    Runs napari's own mouse callbacks (press, drag, release), so the layer emits the events
    of a line drawn by hand. Points are in the layer's data coordinates.
    """
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    def drag(layer, start, end):
        layer.mode = "add_line"
        w0 = tuple(layer.data_to_world(np.asarray(start, dtype=float)))
        w1 = tuple(layer.data_to_world(np.asarray(end, dtype=float)))
        mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=w0))
        mouse_move_callbacks(
            layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=w1)
        )
        mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=w1))

    return drag


_DL_HEADER = (
    "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,"
    "Bounding_boxes,Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,"
    "Possibly_noisy,Slice_range,Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,"
    "Patient_age,Train_Val_Test"
)
#: DeepLesion rows of the ``deeplesion_folder`` fixture: file, 1-based x,y coordinates.
DL_ROWS = [
    ("000001_01_01_109.png", (11, 21, 41, 21, 26, 16, 26, 26)),
    ("000001_01_01_109.png", (51, 31, 61, 31, 56, 28, 56, 34)),
    ("000002_01_01_020.png", (21, 11, 21, 31, 16, 21, 26, 21)),
]


@pytest.fixture
def deeplesion_folder(tmp_path):
    """A DeepLesion-style folder: DL_info.csv and 16-bit PNG key slices (HU + 32768).

    Key slice ``k`` (in order of first appearance) is filled with HU ``100 * k - 50``; images
    are 48 rows by 64 columns with 0.7 mm pixels.
    """
    import imageio.v3 as iio

    root = tmp_path / "deeplesion"
    files = []
    lines = [_DL_HEADER]
    for i, (name, xy) in enumerate(DL_ROWS):
        if name not in files:
            files.append(name)
            series, number = name[:-8], name[-7:]
            folder = root / "Images_png" / series
            folder.mkdir(parents=True, exist_ok=True)
            hu = 100 * (len(files) - 1) - 50
            iio.imwrite(folder / number, np.full((48, 64), 32768 + hu, dtype=np.uint16))
        coords = ", ".join(str(v) for v in xy)
        xs, ys = xy[0::2], xy[1::2]
        box = f"{min(xs) - 2}, {min(ys) - 2}, {max(xs) + 2}, {max(ys) + 2}"
        lines.append(
            f'{name},1,1,1,{name[-7:-4]},"{coords}","{box}","10, 5","0.5, 0.5, 0.5",'
            f'4,0,"100, 110","0.7, 0.7, 5","64, 48","-175, 275",F,60,{1 + i % 3}'
        )
    (root / "DL_info.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def fail_on_unhandled_gui_errors():
    """Fail any test in which an exception reached napari's error handler or sys.excepthook.

    napari turns exceptions raised in Qt slots (a button's click handler, a layer event) into
    an ``ErrorNotification`` instead of raising them, so a click that fails would otherwise
    leave the test green.
    """
    import sys

    from napari.utils.notifications import ErrorNotification, notification_manager

    caught: list[str] = []

    def on_notification(event):
        notification = getattr(event, "value", event)
        if isinstance(notification, ErrorNotification):
            caught.append(f"{notification.message}")

    notification_manager.notification_ready.connect(on_notification)
    previous_hook = sys.excepthook

    def hook(kind, value, tb):
        caught.append(f"{kind.__name__}: {value}")
        previous_hook(kind, value, tb)

    sys.excepthook = hook
    yield caught
    sys.excepthook = previous_hook
    notification_manager.notification_ready.disconnect(on_notification)
    if caught:
        pytest.fail("unhandled exception(s) in the GUI: " + "; ".join(caught), pytrace=False)


@pytest.fixture(autouse=True)
def remembered_settings_folder(tmp_path_factory, monkeypatch):
    """Each test's widgets remember their settings in a fresh folder, never the user's."""
    folder = tmp_path_factory.mktemp("settings")
    monkeypatch.setenv("NAPARI_RECIST_SEG_SETTINGS_DIR", str(folder))
    return folder
