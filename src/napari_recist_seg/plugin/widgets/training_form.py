"""The Training widget's settings form: a magicgui form whose values are remembered.

The form's fields are those of ``training_job.TrainingJob`` that a user chooses, with the same
defaults (``TrainingJob``'s own, which follow the trainer's ``TrainConfig``). Every change is
saved (``remembered_settings``), and a new form starts from the saved values, so reopening
the dock, or napari, keeps the user's choices.
"""

# No ``from __future__ import annotations``: magicgui reads the form's types at run time.
import contextlib
import importlib.util
import inspect
import sys
from dataclasses import fields
from pathlib import Path

from magicgui import magicgui
from qtpy.QtCore import QEvent, QObject

from ...learning.model_kinds import MODEL_KINDS, MODEL_REGISTRY, colour_of
from ...learning.pretrained import PRETRAINED_ENCODERS, packaged_encoder
from ...learning.train_config import (
    AUGMENTATIONS,
    DEFAULT_CRF_WEIGHT,
    MAX_ROUNDS,
    SELECT_METRICS,
)
from ..remembered_settings import load_settings, save_settings
from ..training_job import TrainingJob, prepare_torch_import

__all__ = ["ENCODERS", "SETTINGS_NAME", "TrainingForm", "default_output_folder",
           "encoder_and_weights"]

#: Encoders offered in the list, trained from random weights.
ENCODERS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet-b0")
#: Name of the remembered settings (``remembered_settings``).
SETTINGS_NAME = "training"
_DEFAULTS = {f.name: f.default for f in fields(TrainingJob)}
_DEFAULT_OUTPUT = Path.home() / "recist-seg-models"
#: Devices offered before torch has been asked; filled in when the list is first opened.
_devices: list[str] = ["auto", "cpu"]


def default_output_folder() -> str:
    """The output folder offered at first: ``recist-seg-models`` in the home folder."""
    return str(_DEFAULT_OUTPUT)


def _device_choices(_widget=None) -> list[str]:
    return list(_devices)


def _encoder_choices(_widget=None) -> list[tuple[str, str]]:
    """The encoder list: (shown text, value). Pretrained weights shipped in an installed
    package are offered under their ``PRETRAINED_ENCODERS`` name; nothing is downloaded."""
    choices = [(name, name) for name in ENCODERS]
    for name, spec in PRETRAINED_ENCODERS.items():
        if importlib.util.find_spec(spec.module) is not None:
            choices.append((f"{spec.encoder.removeprefix('tu-')} ({name})", name))
    return choices


def encoder_and_weights(choice: str) -> tuple[str, str | None]:
    """The encoder and encoder weights an entry of the encoder list stands for."""
    encoder = packaged_encoder(choice)
    return (encoder, choice) if encoder is not None else (choice, None)


def _torch_is_loaded() -> bool:
    return "torch" in sys.modules


def _lookup_devices() -> list[str]:
    prepare_torch_import()
    from ...learning.devices import available_devices

    return ["auto", *[d for d in available_devices() if d != "auto"]]


#: The Augmentation list's entries.
_AUGMENTATION_TEXT = {"auto": "auto (flips for prompted models)", "none": "none",
                      "flips": "flips, quarter turns, brightness",
                      "affine": "flips, any rotation, scale, shift"}
#: The edge-aware loss field's lowest value, shown as "auto": the trainer's default.
_AUTO = -1.0


def _settings(**values) -> None:
    """Fields of the form (magicgui builds one widget per parameter of the signature below)."""


# One check box per model kind of the registry, then the settings: a new kind needs no edit here.
_settings.__signature__ = inspect.Signature([
    *(inspect.Parameter(kind, inspect.Parameter.KEYWORD_ONLY, default=kind == "multitask",
                        annotation=bool) for kind in MODEL_KINDS),
    *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=type_)
      for name, type_, default in (
          ("encoder", str, _DEFAULTS["encoder"]),
          ("input_size", int, _DEFAULTS["input_size"]),
          ("epochs", int, _DEFAULTS["epochs"]),
          ("batch_size", int, _DEFAULTS["batch_size"]),
          ("lr", float, _DEFAULTS["lr"]),
          ("select", str, _DEFAULTS["select"]),
          ("augment", str, _DEFAULTS["augment"]),
          ("k", int, 0),
          ("self_training_rounds", int, _DEFAULTS["self_training_rounds"]),
          ("crf_weight", float, _AUTO if _DEFAULTS["crf_weight"] is None
           else _DEFAULTS["crf_weight"]),
          ("teacher", Path, None),
          ("device", str, "auto"),
          ("out_dir", Path, _DEFAULT_OUTPUT),
          ("separate_process", bool, True),
      )),
])


class _PopupWatcher(QObject):
    """Looks the devices up (in a worker: torch loads slowly) when the list is first opened."""

    def __init__(self, form):
        super().__init__(form.device.native)
        self._form = form
        self._worker = None

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        kinds = (QEvent.Type.MouseButtonPress, QEvent.Type.KeyPress)
        if event.type() in kinds and self._worker is None and len(_devices) <= 2:
            from ..workers import create_worker

            worker = create_worker(_lookup_devices, _start_thread=False, _ignore_errors=True)
            worker.returned.connect(self._fill)
            self._worker = worker
            worker.start()
        return False

    def _fill(self, devices: list[str]) -> None:
        _devices[:] = devices
        with contextlib.suppress(RuntimeError):  # the form may be gone
            self._form.device.reset_choices()


class TrainingForm:
    """The settings form of the Training widget.

    ``widget`` is the magicgui container to put in a layout; ``values()`` gives the
    ``TrainingJob`` keyword arguments it stands for. Attributes named after the fields give
    the magicgui widgets (``form.epochs``, ``form.device``...).
    """

    def __init__(self):
        gui = magicgui(
            _settings,
            call_button=False,
            auto_call=False,
            **{entry.name: {"text": entry.display, "tooltip": entry.description}
               for entry in MODEL_REGISTRY.values()},
            encoder={"label": "Encoder", "widget_type": "ComboBox", "choices": _encoder_choices,
                     "tooltip": "The network's encoder: random weights, or (in brackets) "
                                "ImageNet weights shipped in an installed package"},
            input_size={"label": "Input size", "min": 16, "max": 1024, "step": 16,
                        "tooltip": "Network input side in pixels (a multiple of 16)"},
            epochs={"label": "Epochs", "min": 1, "max": 10000,
                    "tooltip": "At most this many epochs (early stopping ends sooner when "
                               "validation stops improving)"},
            batch_size={"label": "Batch", "min": 2, "max": 1024},
            lr={"label": "Learning rate", "min": 1e-6, "max": 1.0, "step": 1e-4},
            select={"label": "Best epoch by", "widget_type": "ComboBox",
                    "choices": [(f"validation {m}", m) for m in SELECT_METRICS],
                    "tooltip": "What picks the kept (best) checkpoint and stops training "
                               "early: the validation loss, or the validation Dice against "
                               "the pseudo-masks"},
            augment={"label": "Augmentation", "widget_type": "ComboBox",
                     "choices": [(_AUGMENTATION_TEXT[a], a) for a in AUGMENTATIONS],
                     "tooltip": "How the training images vary from epoch to epoch"},
            k={"label": "K (0: auto)", "min": 0, "max": 500,
               "tooltip": "Number of RECIST groups (0: about 20 lesions a group)"},
            self_training_rounds={
                "label": "Self-training rounds", "min": 0, "max": MAX_ROUNDS,
                "tooltip": "After training, retrain this many times on the last network's "
                           "masks, kept within what each RECIST allows (0: off)"},
            crf_weight={
                "label": "Edge-aware loss", "min": _AUTO, "max": 10000.0, "step": 10.0,
                "tooltip": "Weight of a loss that makes outlines follow the image's edges "
                           f"(auto: {DEFAULT_CRF_WEIGHT:g} for prompted models on colour "
                           f"images, else off; 0: off)"},
            teacher={"label": "Teacher", "mode": "d", "nullable": True,
                     "tooltip": "Optional: a trained model's folder (usually a prompted one). "
                                "The models train towards the masks it draws from each "
                                "lesion's RECIST, kept within what the RECIST allows, instead "
                                "of the pseudo-masks. Empty: off"},
            device={"label": "Device", "widget_type": "ComboBox", "choices": _device_choices,
                    "tooltip": "auto: CUDA, then Apple MPS, then the CPU"},
            out_dir={"label": "Output", "mode": "d",
                     "tooltip": "One subfolder per model kind, each with best/ and last/"},
            separate_process={"text": "Separate process", "tooltip":
                              "Train in a child process, so that the viewer stays responsive "
                              "(recommended)"},
        )
        self.widget = gui
        gui.lr.native.setDecimals(6)
        gui.crf_weight.native.setSpecialValueText("auto")  # shown at the minimum, _AUTO
        for name in ("teacher", "out_dir"):
            # "Choose directory" took the room of the path in a narrow dock (and was cut);
            # "..." as beside the data folder and table fields.
            button = gui[name].choose_btn
            button.text = "..."
            button.tooltip = f"Choose the {gui[name].label.lower()} folder"
            button.native.setMaximumWidth(32)
        for name in ("input_size", "epochs", "batch_size", "k", "lr", "self_training_rounds",
                     "crf_weight"):
            # Read the number when typing ends: tracking each key clamps "3" of "32" to the
            # minimum 16 at once, and "32" becomes "162".
            gui[name].native.setKeyboardTracking(False)
        for kind in MODEL_KINDS:
            gui[kind].native.setStyleSheet(f"QCheckBox {{ color: {colour_of(kind)}; }}")
        self._watcher = _PopupWatcher(gui)
        gui.device.native.installEventFilter(self._watcher)
        if _torch_is_loaded():  # no wait: asking torch costs nothing now
            _devices[:] = _lookup_devices()
            gui.device.reset_choices()
        self._restore()
        gui.changed.connect(self._remember)

    def __getattr__(self, name):
        return self.widget[name]

    def __getitem__(self, name):
        return self.widget[name]

    def _restore(self) -> None:
        for name, value in load_settings(SETTINGS_NAME).items():
            with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):
                widget = self.widget[name]
                if name == "device" and value not in _devices:
                    continue  # a device of another machine or session: keep "auto"
                widget.value = Path(value) if name == "out_dir" else value

    def _remember(self, *_args) -> None:
        values = {w.name: w.value for w in self.widget}
        values["out_dir"] = str(values["out_dir"])
        values["teacher"] = self.widget.teacher.line_edit.value.strip() or None
        save_settings(SETTINGS_NAME, values)

    def values(self) -> dict:
        """The chosen settings as ``TrainingJob`` keyword arguments."""
        gui = self.widget
        k = int(gui.k.value)
        encoder, weights = encoder_and_weights(str(gui.encoder.value))
        return dict(
            kinds=tuple(kind for kind in MODEL_KINDS if gui[kind].value),
            # an emptied field means no folder, not the current one
            out_dir=gui.out_dir.line_edit.value.strip(),
            encoder=encoder,
            encoder_weights=weights,
            input_size=int(gui.input_size.value),
            epochs=int(gui.epochs.value),
            batch_size=int(gui.batch_size.value),
            lr=float(gui.lr.value),
            select=str(gui.select.value),
            augment=str(gui.augment.value),
            device=str(gui.device.value),
            k=None if k < 2 else k,
            self_training_rounds=int(gui.self_training_rounds.value),
            crf_weight=None if gui.crf_weight.value <= _AUTO else float(gui.crf_weight.value),
            teacher=gui.teacher.line_edit.value.strip() or None,
        )
