"""The paper's autoencoder training recipe, as a plain loop.

Adam (lr 3e-3, betas (0.5, 0.999)) on the L2 (MSE per pixel) reconstruction loss, in two
phases:

1. **joint**: encoder and decoder train together. After every epoch the epoch-level mean
   training loss is compared with the best so far; an epoch that does not improve on the best
   by at least ``min_rel_improvement`` (relative) counts as a bad epoch, and ``patience``
   consecutive bad epochs mean the loss has stopped falling (plateau). The phase also ends
   after ``max_joint_epochs`` epochs.
2. **decoder**: the encoder is frozen (eval mode, no gradients), the training set is encoded
   once, and the decoder alone trains on (latent, image) pairs for ``decoder_epochs``. The
   latents it trains on are exactly the ones shipped in the bundle as OT targets. Its step
   size is the recipe's ``lr`` throughout (``decoder_schedule="constant"``, the paper's) or
   falls from ``lr`` to zero along a half cosine over the phase's steps (``"cosine"``).

The L2 over the training set (eval mode) is recorded when the encoder freezes and at the end
(paper Table 1: MNIST 0.0013 -> 0.0005, Fashion-MNIST 0.0026 -> 0.0011). Training is seeded
(initial weights and each epoch's shuffle depend only on ``seed`` and the epoch) and resumable:
a checkpoint carrying model, optimiser, phase, plateau counters and configs is written
atomically after every epoch, and a run given the same checkpoint path continues from it.

How the steps compute is chosen from the device and changes none of the above: the forward
pass in bfloat16 autocast where the device has native bfloat16 (``precision="auto"``),
channels-last convolutions, a fused Adam step, the epoch loss summed on the device.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models.autoencoder import Autoencoder, AutoencoderConfig, build_autoencoder
from models.bundle import Bundle, EpochRecord, TrainMetrics, batched_apply, load_bundle, save_bundle
from models.datasets import ImageDataset, load_digits_dataset
from models.options import DECODER_SCHEDULES, DecoderSchedule
from models.runtime import (
    PRECISIONS,
    Precision,
    TorchDevice,
    cpu_threads,
    resolve_device,
    resolve_precision,
    retained_heap,
)
from solver import atomic_write_bytes

CHECKPOINT_FORMAT = "aeot-ae-train/1"
# A phase's step size: constant, or cosine from the phase's step to zero.
Schedule = DecoderSchedule
EpochCallback = Callable[[EpochRecord], bool | None]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training settings (the paper's optimiser by default).

    Attributes:
        max_joint_epochs: epochs of the joint phase at most (it ends earlier on a plateau).
        decoder_epochs: epochs of the decoder-only phase after freezing the encoder.
        batch_size: images per step; the last partial batch of an epoch is dropped, since
            BatchNorm needs more than one image and tiny batches give noisy statistics.
        lr: Adam step size (paper: 3e-3).
        joint_schedule: the joint phase's step size: ``"constant"`` (``lr`` throughout, the
            paper's) or ``"cosine"`` (``lr * (1 + cos(pi * t)) / 2`` at the fraction ``t`` of
            ``max_joint_epochs``' steps done).
        decoder_schedule: the decoder phase's step size: ``"constant"`` (its first step
            throughout, the paper's) or ``"cosine"`` (falling from it along a half cosine
            over the phase's steps, so it ends near zero).
        decoder_lr_factor: the decoder phase's first step is ``lr * decoder_lr_factor``
            (paper: 1).
        decoder_batch_stats: in the decoder phase, BatchNorm normalises with each batch's
            statistics and updates its running ones (``True``, the paper's), or keeps the
            running statistics it had when the encoder froze (``False``): the decoder then
            trains as the function it is evaluated and served as.
        betas: Adam betas (paper: (0.5, 0.999)).
        patience: consecutive non-improving epochs that make a plateau.
        min_rel_improvement: relative drop of the epoch loss below the best that counts as
            an improvement (0.01: 1 %).
        seed: seeds the initial weights and every epoch's shuffle.
        precision: arithmetic of the training steps: ``"float32"``, ``"bfloat16"`` (matrix
            products and convolutions in bfloat16 under ``torch.autocast``; weights, optimiser
            state, loss and every evaluation stay float32) or ``"auto"`` (bfloat16 where the
            device computes it natively, see :func:`models.runtime.native_bfloat16`).
        device: ``"auto"`` (``cuda`` when available, else ``cpu``), ``"cpu"`` or ``"cuda"``.
        progress: show tqdm progress bars.
        threads: CPU threads (torch and BLAS) while training (restored afterwards), or ``None``
            to keep the current settings (see :func:`models.runtime.cpu_threads`).

    """

    max_joint_epochs: int = 30
    decoder_epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    joint_schedule: Schedule = "constant"
    decoder_schedule: Schedule = "constant"
    decoder_lr_factor: float = 1.0
    decoder_batch_stats: bool = True
    betas: tuple[float, float] = (0.5, 0.999)
    patience: int = 2
    min_rel_improvement: float = 0.01
    seed: int = 0
    precision: Precision = "auto"
    device: str = "auto"
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_joint_epochs < 1 or self.decoder_epochs < 0:
            raise ValueError(
                f"need max_joint_epochs >= 1 and decoder_epochs >= 0, got "
                f"{self.max_joint_epochs} and {self.decoder_epochs}"
            )
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (BatchNorm), got {self.batch_size}")
        if self.lr <= 0 or self.patience < 1 or self.min_rel_improvement < 0:
            raise ValueError(
                f"need lr > 0, patience >= 1, min_rel_improvement >= 0; got {self.lr}, "
                f"{self.patience}, {self.min_rel_improvement}"
            )
        for name in ("joint_schedule", "decoder_schedule"):
            if getattr(self, name) not in DECODER_SCHEDULES:
                raise ValueError(
                    f"{name} must be one of {DECODER_SCHEDULES}, got {getattr(self, name)!r}"
                )
        if self.decoder_lr_factor <= 0:
            raise ValueError(f"decoder_lr_factor must be > 0, got {self.decoder_lr_factor}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """Output of :func:`train_autoencoder`.

    Attributes:
        model: the trained autoencoder, eval mode, on the CPU.
        latents: training-set latents from the frozen encoder, shape ``(N, d)``, float32
            (``None`` if a callback stopped training before the encoder froze).
        metrics: L2 before/after freezing, epochs, time, device, history.
        completed: both phases ran to the end (``False`` when a callback stopped training).

    """

    model: Autoencoder
    latents: np.ndarray | None
    metrics: TrainMetrics
    completed: bool


@dataclass(frozen=True, kw_only=True)
class _State:
    """Loop counters that a checkpoint must carry besides the weights."""

    phase: str = "joint"  # "joint", "decoder" or "done"
    epoch: int = 0
    joint_epochs: int = 0
    best: float = float("inf")
    bad_epochs: int = 0
    freeze_reason: str = ""
    l2_before: float = float("nan")
    l2_after: float = float("nan")
    seconds: float = 0.0
    history: tuple[EpochRecord, ...] = ()


def train_autoencoder(
    data: ImageDataset,
    model_config: AutoencoderConfig,
    config: TrainConfig | None = None,
    *,
    checkpoint: str | Path | None = None,
    callback: EpochCallback | None = None,
) -> TrainResult:
    """Train an autoencoder with the paper's recipe (see module docstring).

    Args:
        data: training images; their shape must match ``model_config.image_shape``.
        model_config: the architecture.
        config: the recipe; defaults to :class:`TrainConfig`.
        checkpoint: file for per-epoch checkpoints; when it exists, training resumes from it
            (its configs must match) and continues exactly as an uninterrupted run would.
        callback: called with each epoch's record; returning ``False`` stops training.

    Returns:
        The trained model, the training latents and the metrics.

    """
    config = config or TrainConfig()
    with cpu_threads(config.threads), retained_heap():
        return _train(data, model_config, config, checkpoint, callback)


def _train(
    data: ImageDataset,
    model_config: AutoencoderConfig,
    config: TrainConfig,
    checkpoint: str | Path | None,
    callback: EpochCallback | None,
) -> TrainResult:
    if data.image_shape != model_config.image_shape:
        raise ValueError(
            f"data images have shape {data.image_shape}, the model expects "
            f"{model_config.image_shape}"
        )
    if len(data) < 2:
        raise ValueError(f"need at least 2 training images, got {len(data)}")
    device = resolve_device(config.device)
    arith = _Arithmetic(
        device=device,
        bfloat16=resolve_precision(config.precision, device) == "bfloat16",
        channels_last=model_config.arch == "conv",
    )
    images = torch.from_numpy(data.images).to(device)
    model = arith.place(build_autoencoder(model_config, seed=config.seed))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=config.betas, fused=arith.fused_adam
    )
    state, latents = _State(), None
    digest = _digest(data)
    if checkpoint is not None and Path(checkpoint).is_file():
        state, latents = _load_checkpoint(Path(checkpoint), model, optimizer, config, digest)
    if state.phase != "joint":
        _freeze(model.encoder)
    stopped = False
    while state.phase != "done" and not stopped:
        start = time.perf_counter()
        if state.phase == "joint":
            loss = _joint_epoch(model, optimizer, images, config, state.epoch, arith)
        else:
            codes = _frozen_codes(latents)
            loss = _decoder_epoch(model.decoder, optimizer, codes, images, config, state, arith)
        record = EpochRecord(
            epoch=state.epoch + 1,
            phase=state.phase,
            loss=loss,
            seconds=time.perf_counter() - start,
        )
        state, latents = _advance(state, record, model, images, latents, config)
        state = replace(state, seconds=state.seconds + time.perf_counter() - start)
        if checkpoint is not None:
            _save_checkpoint(Path(checkpoint), model, optimizer, state, latents, config, digest)
        stopped = callback is not None and callback(record) is False
    metrics = TrainMetrics(
        l2_before_freeze=state.l2_before,
        l2_after_freeze=state.l2_after,
        joint_epochs=state.joint_epochs,
        decoder_epochs=state.epoch - state.joint_epochs,
        freeze_reason=state.freeze_reason,
        seconds=state.seconds,
        device=device,
        n_train=len(data),
        history=state.history,
    )
    latents_np = None if latents is None else latents.cpu().numpy()
    return TrainResult(
        model=_with_layout(model, torch.contiguous_format).cpu().eval(),
        latents=latents_np,
        metrics=metrics,
        completed=state.phase == "done",
    )


@dataclass(frozen=True)
class _Arithmetic:
    """How the training steps compute; none of it changes what the recipe computes.

    Attributes:
        device: where the model, images and latents live.
        bfloat16: run the forward pass under bfloat16 autocast (``TrainConfig.precision``).
        channels_last: keep image-shaped tensors and convolution weights channels-last, the
            layout oneDNN's (and cuDNN's) fastest convolutions take; a layout, not arithmetic.

    """

    device: TorchDevice
    bfloat16: bool
    channels_last: bool

    @property
    def fused_adam(self) -> bool:
        """One kernel per Adam step instead of a dozen passes over every parameter."""
        return self.device in ("cpu", "cuda")

    def place(self, model: Autoencoder) -> Autoencoder:
        """The model on the device, in the layout of the steps."""
        model = model.to(self.device)
        return _with_layout(model, torch.channels_last) if self.channels_last else model

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images ``(B, C, H, W)`` in the layout of the steps."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> torch.autocast:
        """The forward pass's autocast context (disabled in float32)."""
        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bfloat16)


def _with_layout(model: Autoencoder, memory_format: torch.memory_format) -> Autoencoder:
    """``model.to(memory_format=...)``: 4-d weights in that layout (absent from torch's stubs)."""
    to: Any = model.to
    return cast(Autoencoder, to(memory_format=memory_format))


class _RunningLoss:
    """Mean loss over an epoch, summed on the device (no host sync per step on a GPU)."""

    def __init__(self, bar: tqdm, every: int = 25) -> None:
        self.bar, self.every = bar, every
        self.total: torch.Tensor | None = None
        self.count = 0
        self.steps = 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        step_total = loss.detach().double() * n
        self.total = step_total if self.total is None else self.total + step_total
        self.count += n
        self.steps += 1
        if not self.bar.disable and self.steps % self.every == 0:
            self.bar.set_postfix(l2=f"{self.mean():.5f}", refresh=False)

    def mean(self) -> float:
        return float(self.total) / self.count if self.total is not None else float("nan")


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index batches of one epoch: a permutation that depends only on (seed, epoch)."""
    order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
    size = min(batch_size, n)
    return [order[lo : lo + size] for lo in range(0, n - size + 1, size)]


def _joint_epoch(
    model: Autoencoder,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    config: TrainConfig,
    epoch: int,
    arith: _Arithmetic,
) -> float:
    model.train()
    batches = _batches(images.shape[0], config.batch_size, config.seed, epoch)
    bar = tqdm(batches, desc=f"epoch {epoch + 1} joint", disable=not config.progress, leave=False)
    running = _RunningLoss(bar)
    for step, idx in enumerate(bar):
        _set_lr(optimizer, joint_lr(config, epoch, step, len(batches)))
        x = arith.images(images[idx.to(images.device)])
        with arith.autocast():
            recon = model(x)[0]
        loss = nn.functional.mse_loss(recon.float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.add(loss, len(idx))
    return running.mean()


def _decoder_epoch(
    decoder: nn.Module,
    optimizer: torch.optim.Optimizer,
    latents: torch.Tensor,
    images: torch.Tensor,
    config: TrainConfig,
    state: _State,
    arith: _Arithmetic,
) -> float:
    decoder.train()
    if not config.decoder_batch_stats:
        for module in decoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    epoch = state.epoch
    batches = _batches(images.shape[0], config.batch_size, config.seed, epoch)
    bar = tqdm(batches, desc=f"epoch {epoch + 1} decoder", disable=not config.progress, leave=False)
    running = _RunningLoss(bar)
    for step, idx in enumerate(bar):
        _set_lr(optimizer, decoder_lr(config, epoch - state.joint_epochs, step, len(batches)))
        idx = idx.to(images.device)
        with arith.autocast():
            recon = decoder(latents[idx])
        loss = nn.functional.mse_loss(recon.float(), arith.images(images[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()  # encoder parameters have no gradients and stay untouched
        running.add(loss, len(idx))
    return running.mean()


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _cosine(peak: float, done: float) -> float:
    """A half cosine from ``peak`` at ``done = 0`` to zero at ``done = 1``."""
    return 0.5 * peak * (1.0 + math.cos(math.pi * done))


def joint_lr(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Step size of one joint-phase step (see :class:`TrainConfig`'s ``joint_schedule``).

    Args:
        config: the recipe.
        epoch: joint epochs done before this one.
        step: the step's index within its epoch.
        steps_per_epoch: steps in each epoch.

    """
    if config.joint_schedule == "constant":
        return config.lr
    done = (epoch * steps_per_epoch + step) / (config.max_joint_epochs * steps_per_epoch)
    return _cosine(config.lr, done)


def decoder_lr(config: TrainConfig, phase_epoch: int, step: int, steps_per_epoch: int) -> float:
    """Step size of one decoder-phase step (see :class:`TrainConfig`'s ``decoder_schedule``).

    Args:
        config: the recipe.
        phase_epoch: epochs of the decoder phase done before this one (0 for its first).
        step: the step's index within its epoch.
        steps_per_epoch: steps in each epoch.

    A function of the step's position only, so a resumed run takes the same steps.
    """
    peak = config.lr * config.decoder_lr_factor
    if config.decoder_schedule == "constant":
        return peak
    done = (phase_epoch * steps_per_epoch + step) / (config.decoder_epochs * steps_per_epoch)
    return _cosine(peak, done)


def _advance(
    state: _State,
    record: EpochRecord,
    model: Autoencoder,
    images: torch.Tensor,
    latents: torch.Tensor | None,
    config: TrainConfig,
) -> tuple[_State, torch.Tensor | None]:
    """Book an epoch, then apply the plateau rule and the phase changes."""
    state = replace(state, epoch=record.epoch, history=(*state.history, record))
    if state.phase == "joint":
        improved = record.loss < state.best * (1.0 - config.min_rel_improvement)
        state = replace(
            state,
            joint_epochs=record.epoch,
            best=min(state.best, record.loss),
            bad_epochs=0 if improved else state.bad_epochs + 1,
        )
        reason = ""
        if state.bad_epochs >= config.patience:
            reason = "plateau"
        elif state.joint_epochs >= config.max_joint_epochs:
            reason = "max_joint_epochs"
        if reason:
            _freeze(model.encoder)
            latents = _encode(model.encoder, images)
            l2 = _l2(model.decoder, latents, images)
            state = replace(state, phase="decoder", freeze_reason=reason, l2_before=l2)
    if state.phase == "decoder" and state.epoch - state.joint_epochs >= config.decoder_epochs:
        l2_after = _l2(model.decoder, _frozen_codes(latents), images)
        state = replace(state, phase="done", l2_after=l2_after)
    return state, latents


def _freeze(encoder: nn.Module) -> None:
    """Eval mode (BatchNorm statistics fixed) and no gradients: the latents stop moving."""
    encoder.eval()
    encoder.requires_grad_(False)


def _encode(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    z = batched_apply(encoder, images.cpu().numpy(), device=str(images.device))
    return torch.from_numpy(z).to(images.device)


def _frozen_codes(latents: torch.Tensor | None) -> torch.Tensor:
    """The frozen encoder's latents, which every decoder-phase state holds."""
    if latents is None:
        raise RuntimeError("decoder phase without the frozen encoder's latents")
    return latents


def _l2(decoder: nn.Module, latents: torch.Tensor, images: torch.Tensor) -> float:
    """MSE per pixel of the decoded latents against the images, decoder in eval mode."""
    was_training = decoder.training
    recon = batched_apply(decoder, latents.cpu().numpy(), device=str(latents.device))
    decoder.train(was_training)
    return float(np.mean(np.square(recon - images.cpu().numpy()), dtype=np.float64))


def _digest(data: ImageDataset) -> str:
    """Fingerprint of the training images, so a checkpoint never resumes on other data."""
    return hashlib.blake2b(np.ascontiguousarray(data.images).data, digest_size=16).hexdigest()


def _save_checkpoint(
    path: Path,
    model: Autoencoder,
    optimizer: torch.optim.Optimizer,
    state: _State,
    latents: torch.Tensor | None,
    config: TrainConfig,
    digest: str,
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "data_digest": digest,
        "model_config": model.config.to_dict(),
        "train_config": asdict(config),
        "state": {**asdict(state), "history": [asdict(r) for r in state.history]},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "latents": None if latents is None else latents.cpu(),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


# Settings added to TrainConfig after checkpoints were first written, at the value the trainer
# used before each existed: a checkpoint without one resumes as it started.
_SETTINGS_BEFORE: dict[str, object] = {
    "joint_schedule": "constant",
    "decoder_schedule": "constant",
    "decoder_lr_factor": 1.0,
    "decoder_batch_stats": True,
    "precision": "float32",
}


def _read_checkpoint(path: Path, *, mmap: bool = False) -> dict:
    """A checkpoint's payload, its train config completed with :data:`_SETTINGS_BEFORE`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a readable training checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT!r}")
    payload["train_config"] = {**_SETTINGS_BEFORE, **payload["train_config"]}
    return payload


def checkpoint_configs(path: str | Path) -> tuple[AutoencoderConfig, TrainConfig] | None:
    """The architecture and recipe a training checkpoint was started with.

    Settings the trainer gained after the checkpoint was written take the value it used then
    (a float32 run, a constant decoder step), so a caller that adopts them resumes the run as
    it started even where today's defaults differ.

    Returns:
        ``None`` when there is no file at ``path``.

    Raises:
        ValueError: the file is not a readable training checkpoint.

    """
    path = Path(path)
    if not path.is_file():
        return None
    payload = _read_checkpoint(path, mmap=True)
    try:
        model = AutoencoderConfig.from_dict(payload["model_config"])
        saved = payload["train_config"]
        recipe = TrainConfig(**{**saved, "betas": tuple(saved["betas"])})
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} holds configs this version cannot read: {exc}") from exc
    return model, recipe


def _load_checkpoint(
    path: Path,
    model: Autoencoder,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    digest: str,
) -> tuple[_State, torch.Tensor | None]:
    payload = _read_checkpoint(path)
    if payload["model_config"] != model.config.to_dict():
        raise ValueError(f"{path} was written for {payload['model_config']}, not {model.config}")
    ours, theirs = _resumable(asdict(config)), _resumable(payload["train_config"])
    if ours != theirs:
        raise ValueError(f"{path} was written with train config {theirs}, not {ours}")
    if payload.get("data_digest") != digest:
        raise ValueError(f"{path} was written for other training data (digest differs)")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    saved = payload["state"]
    state = _State(**{**saved, "history": tuple(EpochRecord(**r) for r in saved["history"])})
    device = next(model.parameters()).device
    latents = payload["latents"]
    return state, None if latents is None else latents.to(device)


def checkpoint_progress(path: str | Path) -> tuple[int, str]:
    """Epochs a training checkpoint holds (both phases) and the phase it was in.

    Only the loop counters are read (the weights are memory-mapped, not loaded).

    Raises:
        ValueError: ``path`` is not a readable training checkpoint.

    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a readable training checkpoint: {exc}") from exc
    ours = isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT
    state = payload.get("state") if ours else None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise ValueError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT!r}")
    return state["epoch"], str(state.get("phase"))


def _resumable(config: dict) -> dict:
    """Keep the settings a resumed run must share (progress, threads, device may change)."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in config.items()
        if k not in ("progress", "threads", "device")
    }


# ----------------------------------------------------------------------------- recipes

# The embedded default: an MLP autoencoder on scikit-learn's 8x8 digits. d = 8 keeps the OT
# fit cheap (1797 cells); one thread because the model is tiny (about 10 s on one core), and
# float32 because bfloat16 gains nothing on it and float32 gives the same weights on every CPU.
DIGITS_AUTOENCODER = AutoencoderConfig(
    arch="mlp", image_shape=(1, 8, 8), latent_dim=8, mlp_hidden=(256, 128)
)
DIGITS_RECIPE = TrainConfig(
    max_joint_epochs=120,
    decoder_epochs=40,
    batch_size=64,
    patience=5,
    precision="float32",
    progress=False,
    threads=1,
)


def train_and_save(
    data: ImageDataset,
    model_config: AutoencoderConfig,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
) -> Bundle:
    """Train with :func:`train_autoencoder`, write a bundle to ``out_dir`` and load it back.

    Raises:
        ValueError: if a callback-free run did not complete (it always does) or inputs are bad.

    """
    result = train_autoencoder(data, model_config, config, checkpoint=checkpoint)
    if not result.completed or result.latents is None:
        raise ValueError("training stopped before the decoder phase finished")
    save_bundle(
        out_dir,
        model=result.model,
        latents=result.latents,
        dataset=data.name,
        labels=data.labels,
        metrics=result.metrics,
    )
    return load_bundle(out_dir)


def train_default_digits(
    out_dir: str | Path, *, seed: int = 0, device: str = "cpu", progress: bool = False
) -> Bundle:
    """Build the embedded default model: MLP autoencoder on all 1797 scikit-learn digits.

    Needs no files; takes about 10-20 s on one CPU core. The bundle's latents (1797, 8) are
    the OT targets.

    Args:
        out_dir: bundle directory to write.
        seed: training seed (same seed, same weights on the CPU).
        device: ``"cpu"`` (default: the model is too small to gain from a GPU) or ``"auto"``.
        progress: show progress bars.

    """
    config = replace(DIGITS_RECIPE, seed=seed, device=device, progress=progress)
    return train_and_save(load_digits_dataset(split="all"), DIGITS_AUTOENCODER, config, out_dir)
