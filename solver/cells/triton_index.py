"""Exact cell queries with a fused Triton kernel: low-precision candidates, fp32 answers.

The cell of x is argmax_i <x, y_i> + h_i (:mod:`solver.cells.index`). Existing GPU paths write the
whole ``M x N`` score matrix and are memory-bound (docs/gpu.md). The kernel in
:mod:`solver.cells._triton_kernels` instead streams the keys through tensor cores and keeps a
running top-``KP`` per query in registers, so only ``M x k`` results leave the chip.

Precision and exactness:

- ``precision="tf32"`` (default) or ``"bf16"`` picks ``KP = next_pow2(k + margin)`` candidates
  with a tensor-core dot (fp32 accumulation; h is added in fp32, never rounded), then re-scores
  the candidates exactly in fp32 and returns the best k of those.
- Each query carries a rigorous bound ``eps`` on |approximate - exact| score:
  ``|<x,y> - <x~,y~>| <= |x - x~| max|y| + |x~| max|y - y~|`` plus fp32 accumulation terms
  (tf32 counted as truncation to 10 mantissa bits, bf16 rounding measured exactly). If the
  ``KP``-th best approximate score is at least the k-th best minus ``2 eps``, a better cell may
  have been left out; such queries are flagged and re-answered by an exact matmul (float64,
  rounded to fp32). So the result equals an fp32 reference except where fp32 rounding itself
  decides (near-ties), at any margin; the margin only trades registers against how often the
  fallback runs (``fallbacks`` counts it). tf32's error is 4-8x smaller than bf16's, so it
  needs fewer candidates (:data:`DEFAULT_MARGIN`); bf16 halves key traffic and doubles the
  tensor-core rate.
- ``precision="fp32"`` forces an ieee fp32 dot (no candidates beyond k, no fallback): the
  slow reference path of the same kernel.

How to measure the mismatch rate (target <= 1e-6 vs fp32): compare top-1 cells with the torch
fp32 backend on >= 3e6 queries of the source measure (0 mismatches in n queries bounds the rate
by 3/n at 95 %), at fitted heights, and count separately the queries whose fp32 reference
top-2 gap is below the fp32 rounding bound (ties, which any two fp32 backends may order
differently). ``bench/gpu.py`` reports both.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import torch

from solver.cells.ties import check_finite, check_queries, topk_lowest_index

Precision = Literal["tf32", "bf16", "fp32"]
Array = np.ndarray | torch.Tensor

# Candidates beyond k, per precision: KP = 8 (tf32) and 16 (bf16) for the fit's k <= 2. The CPU
# emulation in bench/gpu.py (N = 60000, d = 64, Voronoi start) sends 0.7 % (tf32, KP = 8) and
# 0.08 % (bf16, KP = 16) of k = 2 queries to the fallback; bf16 at KP = 8 would send 8.7 %.
DEFAULT_MARGIN = {"tf32": 6, "bf16": 14, "fp32": 0}
# The running list lives in registers; beyond 8 cells per query the kernel spills.
MAX_K = 8
# Queries are held whole in registers/shared memory; larger d should use the torch-cuda backend.
MAX_DIM = 256
# Score-matrix budget of the exact (float64) fallback: 128 MiB per chunk.
_FALLBACK_CHUNK_ELEMENTS = 1 << 24
_TF32_U = 2.0**-10


@dataclass(frozen=True, kw_only=True)
class TileConfig:
    """Launch shape of the kernel.

    Attributes:
        block_m: queries per program (rows of the dot tile).
        block_n: keys per streamed tile.
        num_warps: warps per program.
        num_stages: software-pipelining depth of the key loads.

    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")


# Defaults for H100 (64 x 64 tiles keep the score tile and the running list in registers);
# not yet tuned on hardware. The interpreter uses the smallest legal tiles.
GPU_TILES = TileConfig()
INTERPRETER_TILES = TileConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)


# tf32 and bf16 tensor-core dots need Ampere (compute capability 8.0) or newer.
_MIN_CAPABILITY = (8, 0)


def _kernels():  # the module of triton kernels
    from solver.cells import _triton_kernels as _fused_kernels  # needs triton

    return _fused_kernels


def triton_installed() -> bool:
    """Whether the triton package and the kernels import (a broken install counts as absent)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        _kernels()
    except (ImportError, RuntimeError):
        return False
    return True


def interpreting() -> bool:
    """Whether triton was imported in interpreter mode (``TRITON_INTERPRET=1``: CPU tensors)."""
    if not triton_installed():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels().topk_kernel, InterpretedFunction)


def available() -> bool:
    """Whether :class:`TritonBackend` runs here: triton and an Ampere+ GPU, or the interpreter."""
    if not triton_installed():
        return False
    if interpreting():
        return True
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= _MIN_CAPABILITY


class TritonBackend:
    """Cell index backend running the fused top-k kernel (see module docstring).

    Args:
        targets: y, shape ``(N, d)`` with ``d <= MAX_DIM``, numpy or torch.
        heights: h, shape ``(N,)``.
        precision: ``"tf32"``, ``"bf16"`` (candidates, then exact fp32 re-score) or ``"fp32"``.
        margin: candidates kept beyond k, ``>= 0``; ``None`` for :data:`DEFAULT_MARGIN`.
        device: where keys live and the kernel runs; CUDA by default, the CPU under the
            interpreter.
        tiles: launch shape; :data:`GPU_TILES` or :data:`INTERPRETER_TILES` by default.

    Attributes:
        fallbacks: queries so far whose candidates could not be certified and that were
            re-answered by the exact fp32 fallback.

    """

    name = "triton"

    def __init__(
        self,
        targets: Array,
        heights: Array,
        *,
        precision: Precision = "tf32",
        margin: int | None = None,
        device: str | torch.device | None = None,
        tiles: TileConfig | None = None,
    ) -> None:
        if not available():
            raise ValueError(
                "backend 'triton' needs triton and an Ampere+ CUDA GPU (or TRITON_INTERPRET=1)"
            )
        if precision not in ("tf32", "bf16", "fp32"):
            raise ValueError(f"precision must be 'tf32', 'bf16' or 'fp32', got {precision!r}")
        margin = DEFAULT_MARGIN[precision] if margin is None else margin
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self._interpret = interpreting()
        if device is None:
            device = "cpu" if self._interpret else "cuda"
        self._device = torch.device(device)
        y = _as_tensor(targets).to(self._device, torch.float32).contiguous()
        if y.ndim != 2 or y.shape[0] == 0 or not 1 <= y.shape[1] <= MAX_DIM:
            raise ValueError(
                f"targets must have shape (N, d), N >= 1, d <= {MAX_DIM}; got {tuple(y.shape)}"
            )
        check_finite(y, "targets")
        self.precision: Precision = precision
        self.margin = int(margin)
        self.tiles = tiles or (INTERPRETER_TILES if self._interpret else GPU_TILES)
        self.fallbacks = 0
        self._y = y
        self._block_d = max(16, _next_pow2(y.shape[1]))
        key_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        keys = torch.zeros((y.shape[0], self._block_d), dtype=key_dtype, device=self._device)
        keys[:, : y.shape[1]] = y
        self._keys = keys
        ymax = float(torch.linalg.vector_norm(y.double(), dim=1).max())
        if precision == "bf16":
            err = y.double() - keys[:, : y.shape[1]].double()
            emax = float(torch.linalg.vector_norm(err, dim=1).max())
        else:
            emax = _TF32_U * ymax if precision == "tf32" else 0.0
        self._ymax, self._emax = ymax, emax
        self._h = torch.zeros(y.shape[0], dtype=torch.float32, device=self._device)
        self.set_heights(heights)

    @property
    def n_targets(self) -> int:
        """Number of cells N."""
        return int(self._y.shape[0])

    @property
    def dim(self) -> int:
        """Dimension d of queries."""
        return int(self._y.shape[1])

    @property
    def device(self) -> torch.device:
        """Device holding the keys."""
        return self._device

    @property
    def targets(self) -> np.ndarray:
        """y, shape ``(N, d)``, float32 (a host copy)."""
        return self._y.cpu().numpy()

    def set_heights(self, heights: Array) -> None:
        """Replace h (shape ``(N,)``); only N floats move, the keys are untouched."""
        h = _as_tensor(heights).to(self._device, torch.float32)
        if h.shape != (self.n_targets,):
            raise ValueError(f"heights must have shape ({self.n_targets},), got {tuple(h.shape)}")
        check_finite(h, "heights", "cell")
        self._h.copy_(h)
        self._hmax = float(h.abs().max())

    @overload
    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def search(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        """Top-k scores (descending, fp32) and cells (int64) of queries x, shape ``(M, k)`` each.

        Args:
            x: queries, shape ``(M, d)``, numpy or torch on any device.
            k: cells per query, ``1 <= k <= min(N, MAX_K)``.

        Returns:
            numpy arrays for numpy input; tensors on the input's device for torch input.
            Equal scores: the lower cell first (:mod:`solver.cells.ties`).

        Raises:
            ValueError: a bad k or shape, or a query with NaN or inf (its row is named).

        """
        check_queries(x, k, min(self.n_targets, MAX_K), self.dim)
        xt = _as_tensor(x).to(self._device, torch.float32).contiguous()
        scores, cells, flags = self._launch(xt, k)
        rows = flags.nonzero()[:, 0]
        if rows.numel():
            self.fallbacks += int(rows.numel())
            scores[rows], cells[rows] = self._exact(xt[rows], k)
        if isinstance(x, torch.Tensor):
            return scores.to(x.device), cells.to(x.device)
        return scores.cpu().numpy(), cells.cpu().numpy()

    def _launch(self, xt: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        kern = _kernels()
        m = xt.shape[0]
        mode = {"fp32": kern.MODE_FP32, "tf32": kern.MODE_TF32, "bf16": kern.MODE_BF16}
        kp = _next_pow2(k if self.precision == "fp32" else k + self.margin)
        scores = torch.empty((m, k), dtype=torch.float32, device=self._device)
        cells = torch.empty((m, k), dtype=torch.int64, device=self._device)
        flags = torch.zeros(m, dtype=torch.int32, device=self._device)
        if m == 0:
            return scores, cells, flags
        t = self.tiles
        grid = (_cdiv(m, t.block_m),)
        kern.topk_kernel[grid](
            xt,
            self._keys,
            self._h,
            self._y,
            scores,
            cells,
            flags,
            m,
            self.n_targets,
            self.dim,
            xt.stride(0),
            self._keys.stride(0),
            self._y.stride(0),
            self._ymax,
            self._emax,
            self._hmax,
            BLOCK_M=t.block_m,
            BLOCK_N=t.block_n,
            BLOCK_D=self._block_d,
            KP=kp,
            K=k,
            MODE=mode[self.precision],
            UPCAST=self._interpret,
            CERTIFY=self.precision != "fp32" and kp < self.n_targets,
            num_warps=t.num_warps,
            num_stages=t.num_stages,
        )
        return scores, cells, flags

    def _exact(self, xs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k of the few uncertified queries, chunked like the torch backend.

        Computed in float64 and rounded to fp32, so a global TF32 matmul setting cannot leak in;
        equal float64 scores keep the lower cell first.
        """
        chunk = max(1, _FALLBACK_CHUNK_ELEMENTS // self.n_targets)
        y64, h64 = self._y.double().T, self._h.double()
        values, indices = [], []
        for lo in range(0, xs.shape[0], chunk):
            top, cells = topk_lowest_index(torch.addmm(h64, xs[lo : lo + chunk].double(), y64), k)
            values.append(top.float())
            indices.append(cells)
        return torch.cat(values), torch.cat(indices)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _as_tensor(a: Array) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach()
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
