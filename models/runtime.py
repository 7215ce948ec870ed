"""Where and how work runs: device, arithmetic precision and CPU thread counts, shared by all."""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from threadpoolctl import threadpool_limits

TorchDevice = Literal["cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")
_OPENBLAS_ENV = "OPENBLAS_NUM_THREADS"


def resolve_device(device: str = "auto") -> TorchDevice:
    """Return ``"cuda"`` for ``"auto"`` when CUDA is available, else ``"cpu"``.

    Raises:
        ValueError: for an unknown device or ``"cuda"`` without CUDA.

    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return "cuda" if device == "cuda" else "cpu"


def native_bfloat16(device: TorchDevice) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware.

    CPU: AMX tiles or AVX-512-BF16 (as torch detects them; oneDNN then runs bfloat16
    convolutions and matrix products on them). CUDA: a GPU that supports bfloat16 (Ampere on).
    Elsewhere bfloat16 is emulated and slower than float32.
    """
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(precision: str, device: TorchDevice) -> Literal["float32", "bfloat16"]:
    """``"auto"``: ``"bfloat16"`` where :func:`native_bfloat16` holds, else ``"float32"``.

    Raises:
        ValueError: for a precision other than ``"auto"``, ``"float32"``, ``"bfloat16"``.

    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return "bfloat16" if precision == "bfloat16" else "float32"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` CPU threads, then restore the previous counts.

    Sets torch's intra-op thread count and the thread pools of every OpenBLAS loaded in the
    process (numpy's, scipy's and FAISS's own copies, through threadpoolctl): torch's setting
    does not reach them, and the singular set's eigenpairs, k-means and nearest-neighbour
    graph run in them. On shared CPUs one thread is often much faster than several contending
    ones (measured here, two cores busy with another process: a 64-image MLP step took 2.6 ms
    on 1 torch thread and 43 ms on 2; a dense 600 x 600 ``eigh`` 0.06 s on 1 BLAS thread and
    4.7 s on 2). Torch's count is process-wide; the BLAS caps hold in the calling thread and in
    threads started inside the block (a server's request threads, a fit's helpers). An OpenBLAS
    loaded inside the block (the solver loads scipy and FAISS with their first use) starts with
    ``threads`` too: the block sets ``OPENBLAS_NUM_THREADS``, which OpenBLAS reads when it loads.
    ``None`` keeps both.
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    previous_env = os.environ.get(_OPENBLAS_ENV)
    torch.set_num_threads(threads)
    os.environ[_OPENBLAS_ENV] = str(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)
        if previous_env is None:
            os.environ.pop(_OPENBLAS_ENV, None)
        else:
            os.environ[_OPENBLAS_ENV] = previous_env


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# The largest mmap threshold glibc accepts on 64-bit systems (and the highest its adaptive
# threshold reaches): blocks up to this size come from the heap.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TOP_PAD = 256 * 1024 * 1024


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def retained_heap() -> Iterator[None]:
    """Run a block whose freed memory glibc keeps for its next allocations, then give it back.

    A training step allocates and frees the same activation buffers (up to tens of MB) every
    step. glibc's defaults hand large blocks to the kernel on ``free`` (``mmap`` above a
    threshold, heap trimming above another), so the next step faults every page in again,
    zeroed by the kernel: measured on a 2-vCPU AMD EPYC, a joint epoch of the conv recipe spent
    about 13 % of its CPU time in the kernel with 1.4-1.8 M page faults per 12,800 images, and
    9-20 % of its wall time. Inside the block, blocks up to 32 MiB come from the heap and freed
    memory stays there (up to the block's high-water mark, which the step reaches anyway). On
    exit the heap's free pages go back (``malloc_trim``) and the thresholds stay where glibc's
    own adaptive ones end after large frees (``mmap`` above 32 MiB, trimming above 64 MiB), so
    what runs after (a fit in the same worker) allocates as it would have. A no-op where the C
    library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    libc.mallopt(_M_TOP_PAD, _TOP_PAD)
    try:
        yield
    finally:
        libc.mallopt(_M_TOP_PAD, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)
