"""Turn the ``device`` setting (auto/cpu/cuda) into a torch device and a cell-index backend."""

from __future__ import annotations

import torch

from service.settings import Device
from solver import available_backends

_CPU_BACKENDS = ("faiss", "torch")


def torch_device(device: Device) -> str:
    """Torch device for the decoder: ``cuda`` when asked for or when ``auto`` finds one.

    Raises:
        ValueError: ``cuda`` was asked for and torch sees no GPU.

    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def index_backend(device: Device) -> str:
    """Cell-index backend for the device: the solver's best GPU or CPU backend."""
    names = available_backends()
    if device == "auto":
        return names[0]
    if device == "cpu":
        return next(n for n in names if n in _CPU_BACKENDS)
    torch_device(device)  # raises without CUDA
    return next(n for n in names if n not in _CPU_BACKENDS)
