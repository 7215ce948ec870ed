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

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models.autoencoder import Autoencoder, AutoencoderConfig, build_autoencoder
from models.bundle import Bundle, EpochRecord, TrainMetrics, batched_apply, load_bundle, save_bundle
from models.datasets import ImageDataset, load_digits_dataset
from models.options import DECODER_SCHEDULES, DecoderSchedule
from models.runtime import cpu_threads, resolve_device
from solver import atomic_write_bytes

CHECKPOINT_FORMAT = "aeot-ae-train/1"
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
        decoder_schedule: the decoder phase's step size: ``"constant"`` (``lr`` throughout,
            the paper's) or ``"cosine"`` (``lr * (1 + cos(pi * t)) / 2`` at the fraction
            ``t`` of the phase's steps done, so it ends near zero).
        betas: Adam betas (paper: (0.5, 0.999)).
        patience: consecutive non-improving epochs that make a plateau.
        min_rel_improvement: relative drop of the epoch loss below the best that counts as
            an improvement (0.01: 1 %).
        seed: seeds the initial weights and every epoch's shuffle.
        device: ``"auto"`` (``cuda`` when available, else ``cpu``), ``"cpu"`` or ``"cuda"``.
        progress: show tqdm progress bars.
        threads: CPU threads (torch and BLAS) while training (restored afterwards), or ``None``
            to keep the current settings (see :func:`models.runtime.cpu_threads`).

    """

    max_joint_epochs: int = 30
    decoder_epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    decoder_schedule: DecoderSchedule = "constant"
    betas: tuple[float, float] = (0.5, 0.999)
    patience: int = 2
    min_rel_improvement: float = 0.01
    seed: int = 0
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
        if self.decoder_schedule not in DECODER_SCHEDULES:
            raise ValueError(
                f"decoder_schedule must be one of {DECODER_SCHEDULES}, got "
                f"{self.decoder_schedule!r}"
            )
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
    with cpu_threads(config.threads):
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
    images = torch.from_numpy(data.images).to(device)
    model = build_autoencoder(model_config, seed=config.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
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
            loss = _joint_epoch(model, optimizer, images, config, state.epoch)
        else:
            codes = _frozen_codes(latents)
            loss = _decoder_epoch(
                model.decoder, optimizer, codes, images, config, state.epoch, state.joint_epochs
            )
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
        model=model.cpu().eval(),
        latents=latents_np,
        metrics=metrics,
        completed=state.phase == "done",
    )


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
) -> float:
    model.train()
    total, count = 0.0, 0
    batches = _batches(images.shape[0], config.batch_size, config.seed, epoch)
    bar = tqdm(batches, desc=f"epoch {epoch + 1} joint", disable=not config.progress, leave=False)
    for idx in bar:
        x = images[idx.to(images.device)]
        loss = nn.functional.mse_loss(model(x)[0], x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(idx), count + len(idx)
        bar.set_postfix(l2=f"{total / count:.5f}", refresh=False)
    return total / count


def _decoder_epoch(
    decoder: nn.Module,
    optimizer: torch.optim.Optimizer,
    latents: torch.Tensor,
    images: torch.Tensor,
    config: TrainConfig,
    epoch: int,
    joint_epochs: int,
) -> float:
    decoder.train()
    total, count = 0.0, 0
    batches = _batches(images.shape[0], config.batch_size, config.seed, epoch)
    bar = tqdm(batches, desc=f"epoch {epoch + 1} decoder", disable=not config.progress, leave=False)
    for step, idx in enumerate(bar):
        lr = decoder_lr(config, epoch - joint_epochs, step, len(batches))
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = idx.to(images.device)
        loss = nn.functional.mse_loss(decoder(latents[idx]), images[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()  # encoder parameters have no gradients and stay untouched
        total, count = total + loss.item() * len(idx), count + len(idx)
        bar.set_postfix(l2=f"{total / count:.5f}", refresh=False)
    return total / count


def decoder_lr(config: TrainConfig, phase_epoch: int, step: int, steps_per_epoch: int) -> float:
    """Step size of one decoder-phase step (see :class:`TrainConfig`'s ``decoder_schedule``).

    Args:
        config: the recipe.
        phase_epoch: epochs of the decoder phase done before this one (0 for its first).
        step: the step's index within its epoch.
        steps_per_epoch: steps in each epoch.

    A function of the step's position only, so a resumed run takes the same steps.
    """
    if config.decoder_schedule == "constant":
        return config.lr
    done = (phase_epoch * steps_per_epoch + step) / (config.decoder_epochs * steps_per_epoch)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * done))


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


def _load_checkpoint(
    path: Path,
    model: Autoencoder,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    digest: str,
) -> tuple[_State, torch.Tensor | None]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a readable training checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT!r}")
    if payload["model_config"] != model.config.to_dict():
        raise ValueError(f"{path} was written for {payload['model_config']}, not {model.config}")
    # checkpoints from before the decoder schedule existed trained with a constant step
    saved_config = {"decoder_schedule": "constant", **payload["train_config"]}
    ours, theirs = _resumable(asdict(config)), _resumable(saved_config)
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
# fit cheap (1797 cells); one thread because the model is tiny (about 10 s on one core).
DIGITS_AUTOENCODER = AutoencoderConfig(
    arch="mlp", image_shape=(1, 8, 8), latent_dim=8, mlp_hidden=(256, 128)
)
DIGITS_RECIPE = TrainConfig(
    max_joint_epochs=120,
    decoder_epochs=40,
    batch_size=64,
    patience=5,
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
