"""Checkpoints: safetensors weights plus JSON, never pickle.

A checkpoint is a folder::

    model.safetensors       the model's state dict
    optimizer.safetensors   tensors of the optimizer/scheduler/training state (optional)
    training_state.json     the non-tensor structure of that state (optional)
    config.json             written last: format marker, model kind and build arguments, the
                            caller's extra configuration (e.g. the lesion grouping), the training
                            history, and the size and SHA-256 of every other file

Loading reads tensors only through safetensors, whose format holds raw tensor bytes and a JSON
header: no code can run from a checkpoint, and a pickle (``torch.save`` output) renamed to
``model.safetensors`` is refused. The model is rebuilt with :func:`build_model` from the recorded
arguments and its weights are loaded with ``strict=True``.

Crash safety. Every file is written to a temporary file in its folder, flushed to disk and moved
into place with ``os.replace``. The files are written into a fresh hidden sibling folder
(``.<name>.tmp-<random>``), ``config.json`` last, so a folder with a consistent ``config.json`` is
complete. The sibling is then renamed to ``<name>`` in one atomic step; an existing checkpoint of
that name is first renamed aside (``.<name>.old-<random>``) and deleted only after the new one is in
place. A kill at any moment therefore leaves either the old or the new checkpoint complete under
``<name>`` - except between the two renames of a replacement, when ``<name>`` is briefly absent
and both complete versions sit in the hidden siblings. Loading a missing ``<name>`` then reads the
newest complete sibling, with a warning (:func:`interrupted_save_copy`), and the next save
creates ``<name>`` again. Hidden siblings left by a killed process can be deleted by hand.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.recist_prompt import PRIOR_EDGES
from ..data._atomic import fsync_folder, plain_permissions
from .model_kinds import MODEL_REGISTRY
from .models import MODEL_KINDS, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "interrupted_save_copy",
    "load_checkpoint",
    "load_optimizer_state",
    "read_checkpoint_config",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "napari-recist-seg-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_STATE_FILE = "training_state.json"
CONFIG_FILE = "config.json"

_RESERVED_KEYS = frozenset({
    "format", "format_version", "kind", "model_config", "history", "package_version", "files",
    "has_training_state",
})
_MAX_HEADER_BYTES = 100 * 1024 * 1024
# config.json and training_state.json hold settings, history and the nesting of optimizer state:
# kilobytes, even for long runs with a large grouping.
_MAX_JSON_BYTES = 64 * 1024 * 1024

# Markers of the JSON encoding of nested state: they cannot clash with plain dict keys because
# dicts with keys starting with "__" are themselves stored as item lists.
_TENSOR, _NDARRAY, _TUPLE, _ITEMS = "__tensor__", "__ndarray__", "__tuple__", "__items__"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-recist-seg")
    except PackageNotFoundError:
        return "unknown"


# --- atomic writes -------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _temp_path(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(tmp)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _temp_path(path.parent, path.name)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        plain_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor],
                         metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = _temp_path(path.parent, path.name)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        _fsync_file(tmp)
        plain_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any, what: str) -> bytes:
    try:
        return json.dumps(obj, indent=2, default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} cannot be written as JSON: {exc}") from None


def _file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


# --- nested state <-> (JSON tree, tensors) ---------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor], prefix: str, what: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        # clone: optimizer states may share storage, which safetensors refuses to write
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        key = f"{prefix}.{len(tensors)}"
        try:
            tensors[key] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        except TypeError as exc:
            raise ValueError(f"{what}: numpy array of dtype {obj.dtype} cannot be saved: {exc}"
                             ) from None
        return {_NDARRAY: key}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, prefix, what) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors, prefix, what) for v in obj]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, prefix, what) for k, v in obj.items()}
        return {_ITEMS: [[_encode(k, tensors, prefix, what), _encode(v, tensors, prefix, what)]
                         for k, v in obj.items()]}
    raise ValueError(f"{what} holds a value of type {type(obj).__name__}, which a checkpoint "
                     f"cannot store (tensors, arrays, numbers, strings, lists, tuples and dicts "
                     f"only)")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (marker, value), = obj.items()
        if marker in (_TENSOR, _NDARRAY):
            if value not in tensors:
                raise ValueError(f"{where}: tensor {value!r} is missing from {OPTIMIZER_FILE}")
            return tensors[value] if marker == _TENSOR else tensors[value].numpy()
        if marker == _TUPLE:
            return tuple(_decode(v, tensors, where) for v in value)
        if marker == _ITEMS:
            result = {}
            for key, item in value:
                result[_decode(key, tensors, where)] = _decode(item, tensors, where)
            return result
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


# --- saving ----------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    """Parse a JSON file of a checkpoint; ValueError for anything that is not small valid JSON.

    The size is checked before reading (a checkpoint's JSON files are kilobytes; a huge or
    endless file is refused, not read into memory), and nesting too deep for the parser is an
    error like any other malformed content.
    """
    size = path.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise ValueError(f"{str(path)!r} is {size:,} bytes, more than any checkpoint file of "
                         f"this kind ({_MAX_JSON_BYTES:,}): refusing to read it")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON: {exc}") from None


def _is_checkpoint_folder(folder: Path) -> bool:
    try:
        config = _read_json(folder / CONFIG_FILE)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == CHECKPOINT_FORMAT


def save_checkpoint(folder: str | os.PathLike, model: nn.Module, extra_config: dict | None,
                    history: list, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, state: dict | None = None) -> Path:
    """Write a checkpoint folder (see the module docstring for layout and crash safety).

    Parameters
    ----------
    folder : path-like
        Checkpoint folder. Created, or replaced when it already holds a checkpoint; an existing
        folder with other content is never overwritten.
    model : torch.nn.Module
        A model from :func:`build_model` (it needs the ``kind`` and ``config`` attributes).
    extra_config : dict or None
        More JSON-serialisable configuration stored at the top level of ``config.json``, such as
        the lesion grouping's centres and scaling (numpy arrays are stored as lists). Its keys
        must not clash with the reserved keys (format, format_version, kind, model_config,
        history, package_version, files, has_training_state).
    history : list
        Training history (e.g. one dict of losses and metrics per epoch), JSON-serialisable.
    optimizer, scheduler : optional
        Objects with ``state_dict()``; their state is stored to resume training.
    state : dict, optional
        Further training state to resume (epoch, best validation loss, RNG state tensors...).

    Returns
    -------
    pathlib.Path
        The checkpoint folder.

    Raises
    ------
    ValueError
        The model was not built by :func:`build_model`, a key is reserved, something cannot be
        stored, or ``folder`` exists and is not a checkpoint.
    """
    target = Path(folder).expanduser().absolute()
    kind = getattr(model, "kind", None)
    model_config = getattr(model, "config", None)
    if kind not in MODEL_KINDS or not isinstance(model_config, dict):
        raise ValueError("model must come from build_model (it needs 'kind' and 'config' "
                         "attributes)")
    extra_config = dict(extra_config or {})
    clash = sorted(_RESERVED_KEYS & set(extra_config))
    if clash:
        raise ValueError(f"extra_config uses reserved keys {clash}")
    if not all(isinstance(k, str) for k in extra_config):
        raise ValueError("extra_config keys must be strings")
    if not isinstance(history, list):
        raise ValueError(f"history must be a list, got {type(history).__name__}")
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"checkpoint folder {str(target)!r} exists and is not a folder")
        if any(target.iterdir()) and not _is_checkpoint_folder(target):
            raise ValueError(f"folder {str(target)!r} exists and is not a checkpoint; "
                             f"refusing to overwrite it")

    config = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "kind": kind,
        "model_config": model_config,
        **extra_config,
        "history": history,
        "package_version": _package_version(),
    }
    _dumps(config, "extra_config/history")  # fail before touching the disk

    training = None
    training_tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None or scheduler is not None or state is not None:
        training = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "optimizer": None if optimizer is None else _encode(
                optimizer.state_dict(), training_tensors, "optimizer", "optimizer state"),
            "scheduler": None if scheduler is None else _encode(
                scheduler.state_dict(), training_tensors, "scheduler", "scheduler state"),
            "state": None if state is None else _encode(
                dict(state), training_tensors, "state", "state"),
        }

    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    plain_permissions(staging)
    try:
        files = {}
        _atomic_save_tensors(staging / MODEL_FILE, weights,
                             {"format": "pt", "checkpoint": CHECKPOINT_FORMAT})
        files[MODEL_FILE] = _file_record(staging / MODEL_FILE)
        if training is not None:
            _atomic_save_tensors(staging / OPTIMIZER_FILE, training_tensors,
                                 {"format": "pt", "checkpoint": CHECKPOINT_FORMAT})
            files[OPTIMIZER_FILE] = _file_record(staging / OPTIMIZER_FILE)
            _atomic_write_bytes(staging / TRAINING_STATE_FILE,
                                _dumps(training, "training state"))
            files[TRAINING_STATE_FILE] = _file_record(staging / TRAINING_STATE_FILE)
        config["files"] = files
        config["has_training_state"] = training is not None
        _atomic_write_bytes(staging / CONFIG_FILE, _dumps(config, "config"))
        fsync_folder(staging)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        fsync_folder(target.parent)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    aside.rmdir()  # only the unique name is wanted; rename needs it absent on Windows
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    fsync_folder(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


# --- loading ---------------------------------------------------------------------------------


def _leftover_hint(folder: Path) -> str:
    siblings = sorted(p.name for p in folder.parent.glob(f".{glob.escape(folder.name)}.*-*")
                      if p.is_dir() and (p / CONFIG_FILE).is_file())
    if not siblings:
        return ""
    return f" (an interrupted save left complete copies in {siblings} next to it)"


def interrupted_save_copy(folder: str | os.PathLike) -> Path | None:
    """The newest complete copy of ``folder`` that an interrupted save left next to it.

    Between the two renames of a replacement (see the module docstring) the checkpoint folder
    is absent and complete versions sit in hidden siblings: the new one (``.<name>.tmp-*``)
    and the one it replaces (``.<name>.old-*``). Copies from earlier interrupted saves may sit
    there too. A copy counts when its config is of this format and every file matches its
    recorded size and SHA-256; the newest config wins, i.e. the save that was in progress.

    Returns None when ``folder`` exists or no complete copy is found.
    """
    path = Path(folder).expanduser().absolute()
    if path.exists() or not path.parent.is_dir():
        return None
    found, newest = None, -1
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*-*"):
        try:
            if not (sibling.is_dir() and (sibling / CONFIG_FILE).is_file()):
                continue
            config = _read_json(sibling / CONFIG_FILE)
            if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
                continue
            files = config.get("files")
            if not isinstance(files, dict) or MODEL_FILE not in files:
                continue
            for name in files:
                _check_file(sibling, name, config)
            stamp = (sibling / CONFIG_FILE).stat().st_mtime_ns
        except (OSError, ValueError):
            continue
        if stamp > newest:
            found, newest = sibling, stamp
    return found


def _resolve_folder(folder: str | os.PathLike) -> Path:
    """``folder``, or the complete copy an interrupted save left when it is absent."""
    path = Path(folder).expanduser()
    copy = interrupted_save_copy(path)
    if copy is None:
        return path
    warnings.warn(
        f"checkpoint folder {str(path)!r} is missing because a save was interrupted; reading "
        f"the complete copy {copy.name!r} next to it (rename it to {path.name!r} to keep it)",
        UserWarning, stacklevel=3,
    )
    return copy


def read_checkpoint_config(folder: str | os.PathLike) -> dict:
    """Read and validate ``config.json`` of a checkpoint folder, without loading tensors.

    A missing folder is read from the complete copy an interrupted save left next to it, with
    a warning (see :func:`interrupted_save_copy`); so are ``load_checkpoint`` and
    ``load_optimizer_state``.

    Raises
    ------
    ValueError
        The folder or its config is missing, unreadable, not of this format, or of a newer
        format version.
    """
    path = _resolve_folder(folder)
    if not path.is_dir():
        raise ValueError(f"checkpoint folder {str(path)!r} does not exist or is not a folder"
                         f"{_leftover_hint(path.absolute())}")
    config_path = path / CONFIG_FILE
    if config_path.exists() and not config_path.is_file():
        raise ValueError(f"{str(config_path)!r} is not a regular file")
    if not config_path.is_file():
        raise ValueError(f"checkpoint folder {str(path)!r} has no {CONFIG_FILE}; it is not a "
                         f"(complete) checkpoint")
    try:
        config = _read_json(config_path)
    except OSError as exc:
        raise ValueError(f"{str(config_path)!r} cannot be read: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(config_path)!r} is not a napari-recist-seg checkpoint config "
                         f"(format marker {CHECKPOINT_FORMAT!r} missing)")
    version = config.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{str(config_path)!r} has format_version {version!r}; this version "
                         f"reads versions 1 to {CHECKPOINT_FORMAT_VERSION}")
    return config


def _check_file(folder: Path, name: str, config: dict) -> Path:
    path = folder / name
    if not path.is_file():
        if path.exists():  # a device, a FIFO (which would block a reader forever), a folder
            raise ValueError(f"checkpoint file {str(path)!r} is not a regular file")
        raise ValueError(f"checkpoint file {str(path)!r} is missing")
    files = config.get("files")
    record = files.get(name) if isinstance(files, dict) else None
    if isinstance(record, dict):
        # The size first: a file of the wrong size is not worth hashing (it may be huge).
        size = path.stat().st_size
        actual = {"size": size} if size != record.get("size") else _file_record(path)
        if actual["size"] != record.get("size") or actual["sha256"] != record.get("sha256"):
            what = (f"size {actual['size']} instead of {record.get('size')}"
                    if actual["size"] != record.get("size") else
                    "its content differs from the checksum recorded")
            raise ValueError(
                f"checkpoint file {str(path)!r} does not match {CONFIG_FILE} ({what}): it "
                f"is truncated, corrupt or was replaced"
            )
    return path


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} is truncated or corrupt: {exc}") from None


def _check_safetensors_header(path: Path) -> None:
    """Refuse, naming the problem, a file that does not start like a safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    # A safetensors file starts with the little-endian length of its JSON header, then "{".
    # safetensors itself never runs code from a file; these checks only name the problem.
    header_len = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    if not 0 < header_len <= min(size - 8, _MAX_HEADER_BYTES) or head[8:9] != b"{":
        if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
            raise ValueError(f"{str(path)!r} is a pickle or torch.save file, not safetensors; "
                             f"pickles are never loaded because they can run code")
        raise ValueError(f"{str(path)!r} is not a safetensors file (invalid header): it is "
                         f"truncated, corrupt, or in another format (a pickle is never loaded)")


def load_checkpoint(folder: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint folder written by :func:`save_checkpoint`.

    Parameters
    ----------
    folder : path-like
        Checkpoint folder.
    map_location : str or torch.device
        Device to put the model on.

    Returns
    -------
    model : torch.nn.Module
        The network, in eval mode, on ``map_location``.
    config : dict
        The parsed ``config.json`` (``kind``, ``model_config``, ``history``, extra keys...).

    Raises
    ------
    ValueError
        Naming the path: missing folder or files, a config that is not of this format, an
        unknown kind, weights that do not fit the recorded architecture, truncated or corrupt
        files, or a weights file that is not safetensors (pickles are never loaded).
    """
    path = _resolve_folder(folder)
    config = read_checkpoint_config(path)
    config_path = path / CONFIG_FILE
    kind = config.get("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"{str(config_path)!r}: unknown model kind {kind!r}; valid kinds are "
                         f"{list(MODEL_KINDS)}")
    model_config = config.get("model_config")
    if not isinstance(model_config, dict):
        raise ValueError(f"{str(config_path)!r}: 'model_config' is missing or not an object")
    model_config = dict(model_config)
    if model_config.get("kind", kind) != kind:
        raise ValueError(f"{str(config_path)!r}: kind {kind!r} contradicts model_config kind "
                         f"{model_config.get('kind')!r}")
    if "encoder_weights" in model_config:
        raise ValueError(f"{str(config_path)!r}: model_config must not name encoder weights")
    check_config_fields(config, config_path, extras=False)
    model_config["kind"] = kind
    if MODEL_REGISTRY[kind].prompted and "prior_edge" not in model_config:
        model_config["prior_edge"] = "blur"  # saved before the prior's edge was a choice
    weights_path = _check_file(path, MODEL_FILE, config)
    _check_safetensors_header(weights_path)
    # The architecture is first built on the meta device, which allocates nothing, so that a
    # config describing a far larger network than the weights file holds is refused before
    # gigabytes of parameters are allocated and initialised.
    try:
        with torch.device("meta"):
            skeleton = build_model(**model_config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{str(config_path)!r}: cannot rebuild the model: {exc}") from None
    except (RuntimeError, NotImplementedError):  # an encoder computing values while built
        skeleton = None
    needed = 0 if skeleton is None else sum(
        t.numel() * t.element_size() for t in skeleton.state_dict().values())
    del skeleton
    available = weights_path.stat().st_size
    if needed > available:
        raise ValueError(f"{str(config_path)!r} describes a {kind!r} model whose weights take "
                         f"{needed / 1e6:.1f} MB, but {str(weights_path)!r} holds "
                         f"{available / 1e6:.1f} MB: the weights are truncated, or the config "
                         f"and the weights do not belong together")
    try:
        model = build_model(**model_config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{str(config_path)!r}: cannot rebuild the model: {exc}") from None

    state = _read_safetensors(weights_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{str(weights_path)!r} does not fit the {kind!r} model described in "
                         f"{CONFIG_FILE}: {exc}") from None
    model.to(map_location)
    model.eval()
    return model, config


# -- the schema of config.json -----------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _field_error(path, field: str, problem: str, value) -> ValueError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ValueError(f"{str(path)!r}: field {field!r} {problem}, got {shown}")


def _check_int_field(path, field, value, lo, hi, optional=False) -> None:
    if optional and value is None:
        return
    if not _is_int(value) or not lo <= value <= hi:
        raise _field_error(path, field, f"must be an integer from {lo} to {hi}", value)


def _check_number_field(path, field, value, lo, hi, optional=False) -> None:
    if optional and value is None:
        return
    if not _is_number(value) or not lo <= value <= hi:
        raise _field_error(path, field, f"must be a number from {lo} to {hi}", value)


def _check_text_field(path, field, value, optional=True, choices=None) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or len(value) > 200:
        raise _field_error(path, field, "must be a short text", value)
    if choices is not None and value not in choices:
        raise _field_error(path, field, f"must be one of {list(choices)}", value)


def check_config_fields(config: dict, path="config.json", *, extras: bool = True) -> None:
    """Check the fields of a checkpoint's ``config.json`` that build and feed a model.

    Called before anything is built from the file: types and bounds of the model's build
    arguments, the preprocessing record and the lesion grouping, so that a forged or damaged
    file is refused with a message naming the file and the field, never with an error from
    deep inside a library or an allocation of absurd size. Unknown extra fields are kept
    (later versions may add some).

    Parameters
    ----------
    config : dict
        The parsed ``config.json``.
    path : str or Path
        Named in the messages.
    extras : bool
        Also check ``preprocessing`` and ``grouping``, which this package's trainer stores and
        its inference reads (a checkpoint written by other code may use them otherwise).

    Raises
    ------
    ValueError
        Naming the file and the first bad field.
    """
    from ..core.grouping import LesionGrouping
    from .train_config import MAX_GROUPS, MAX_IN_CHANNELS, MAX_INPUT_SIZE

    model_config = config.get("model_config")
    if isinstance(model_config, dict):
        mc = model_config
        if "in_channels" in mc:
            _check_int_field(path, "model_config.in_channels", mc["in_channels"], 1,
                             MAX_IN_CHANNELS)
        if "input_size" in mc:
            _check_int_field(path, "model_config.input_size", mc["input_size"], 16,
                             MAX_INPUT_SIZE)
        if "n_groups" in mc:
            _check_int_field(path, "model_config.n_groups", mc["n_groups"], 2, MAX_GROUPS,
                             optional=True)
        if "encoder" in mc:
            _check_text_field(path, "model_config.encoder", mc["encoder"], optional=False)
        if "dropout" in mc:
            _check_number_field(path, "model_config.dropout", mc["dropout"], 0.0, 0.999)
        if "prior_edge" in mc:
            _check_text_field(path, "model_config.prior_edge", mc["prior_edge"],
                              optional=False, choices=PRIOR_EDGES)
        if "output_stride" in mc and mc["output_stride"] not in (8, 16):
            raise _field_error(path, "model_config.output_stride", "must be 8 or 16",
                               mc["output_stride"])
    for name, kind in (("history", list), ("train_config", dict)):
        if config.get(name) is not None and not isinstance(config[name], kind):
            raise _field_error(path, name, f"must be a JSON {'list' if kind is list else 'object'}",
                               config[name])
    if not extras:
        return
    pre = config.get("preprocessing")
    if pre is not None:
        if not isinstance(pre, dict):
            raise _field_error(path, "preprocessing", "must be a JSON object or null", pre)
        if "mode" in pre:
            _check_text_field(path, "preprocessing.mode", pre["mode"], optional=False,
                              choices=("whole_image", "crops"))
        if "size" in pre:
            _check_int_field(path, "preprocessing.size", pre["size"], 16, MAX_INPUT_SIZE)
        _check_text_field(path, "preprocessing.normalise", pre.get("normalise"))
        _check_text_field(path, "preprocessing.pseudo_mask_method",
                          pre.get("pseudo_mask_method"))
        if pre.get("channel_axis") not in (None, 0, -1, 2) or isinstance(
                pre.get("channel_axis"), bool):
            raise _field_error(path, "preprocessing.channel_axis", "must be null, 0, 2 or -1",
                               pre.get("channel_axis"))
        if "margin" in pre:
            _check_number_field(path, "preprocessing.margin", pre["margin"], 0.0, 10.0,
                                optional=True)
        _check_number_field(path, "preprocessing.field_of_view_mm",
                            pre.get("field_of_view_mm"), 1e-3, 1e4, optional=True)
        _check_int_field(path, "preprocessing.context", pre.get("context"), 0, MAX_IN_CHANNELS,
                         optional=True)
        window = pre.get("window")
        if window is not None and not (
                isinstance(window, list) and len(window) == 2 and all(map(_is_number, window))
                and window[0] < window[1]):
            raise _field_error(path, "preprocessing.window",
                               "must be null or [low, high] with low < high", window)
    grouping = config.get("grouping")
    if grouping is not None:
        try:
            LesionGrouping.from_dict(grouping)
        except ValueError as exc:
            raise ValueError(f"{str(path)!r}: field 'grouping': {exc}") from None


def load_optimizer_state(folder: str | os.PathLike, optimizer: torch.optim.Optimizer | None,
                         scheduler: Any = None) -> dict:
    """Restore optimizer (and scheduler) state saved with a checkpoint.

    Parameters
    ----------
    folder : path-like
        Checkpoint folder.
    optimizer : torch.optim.Optimizer or None
        Optimizer over the parameters of the loaded model, built like the saved one.
    scheduler : optional
        Learning-rate scheduler to restore too.

    Returns
    -------
    dict
        The ``state`` dict given to :func:`save_checkpoint` (empty if none was given).

    Raises
    ------
    ValueError
        No training state in the checkpoint, corrupt files, or a state that does not fit.
    """
    path = _resolve_folder(folder)
    config = read_checkpoint_config(path)
    if not config.get("has_training_state"):
        raise ValueError(f"checkpoint {str(path)!r} holds no optimizer or training state")
    json_path = _check_file(path, TRAINING_STATE_FILE, config)
    tensors_path = _check_file(path, OPTIMIZER_FILE, config)
    try:
        training = _read_json(json_path)
    except OSError as exc:
        raise ValueError(f"{str(json_path)!r} cannot be read: {exc}") from None
    if not isinstance(training, dict) or training.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(json_path)!r} is not a napari-recist-seg training state")
    tensors = _read_safetensors(tensors_path)
    where = str(json_path)
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is None:
            continue
        saved = training.get(name)
        if saved is None:
            raise ValueError(f"checkpoint {str(path)!r} holds no {name} state")
        try:
            target.load_state_dict(_decode(saved, tensors, where))
        except (KeyError, RuntimeError, TypeError, ValueError, AttributeError,
                RecursionError) as exc:
            raise ValueError(f"{where}: the saved {name} state does not fit: {exc}") from None
    saved_state = training.get("state")
    try:
        return {} if saved_state is None else _decode(saved_state, tensors, where)
    except (TypeError, RecursionError) as exc:
        raise ValueError(f"{where}: the saved training state is malformed: {exc}") from None
