"""Choosing the torch device: CUDA, Apple MPS or the CPU."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Device names usable on this machine, best first, always ending with "cpu"."""
    names = []
    if torch.cuda.is_available():
        names.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    names.append("cpu")
    return names


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for ``name`` ("auto" picks CUDA, then MPS, then the CPU).

    Raises
    ------
    ValueError
        When the named device is unknown or not available here.
    """
    name = (name or "auto").lower()
    base = name.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {DEVICE_CHOICES}")
    usable = available_devices()
    if base == "auto":
        return torch.device(usable[0])
    if base not in usable:
        raise ValueError(f"device {name!r} is not available here (available: {usable})")
    return torch.device(name)
