"""Autoencoder modules and the training recipe on tiny data."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.autoencoder import AutoencoderConfig, build_autoencoder
from models.datasets import ImageDataset, load_digits_dataset
from models.runtime import native_bfloat16, resolve_precision
from models.train import (
    TrainConfig,
    checkpoint_configs,
    decoder_lr,
    joint_lr,
    train_and_save,
    train_autoencoder,
)

MLP = AutoencoderConfig(arch="mlp", image_shape=(1, 8, 8), latent_dim=4, mlp_hidden=(32, 16))
TINY = TrainConfig(
    max_joint_epochs=2, decoder_epochs=1, batch_size=32, patience=5, progress=False, threads=1
)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits_dataset(split="all").subset(128, seed=0)


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (AutoencoderConfig(latent_dim=7), (1, 28, 28)),
        (
            AutoencoderConfig(
                image_shape=(3, 32, 32), latent_dim=5, fc_hidden=64, conv_channels=(8, 16)
            ),
            (3, 32, 32),
        ),
        (MLP, (1, 8, 8)),
    ],
)
def test_shapes_and_output_range(config: AutoencoderConfig, shape: tuple[int, int, int]) -> None:
    model = build_autoencoder(config, seed=0).eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        recon, z = model(x)
    assert z.shape == (3, config.latent_dim)
    assert recon.shape == (3, *shape)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


def test_conv_decoder_follows_the_infogan_layout() -> None:
    model = build_autoencoder(AutoencoderConfig(latent_dim=32), seed=0)
    linear = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    deconv = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_features, m.out_features) for m in linear] == [(32, 1024), (1024, 7 * 7 * 128)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in deconv] == [
        (128, 64, (4, 4), (2, 2)),
        (64, 1, (4, 4), (2, 2)),
    ]


def test_config_validation_and_roundtrip() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        AutoencoderConfig(image_shape=(1, 30, 30))
    with pytest.raises(ValueError, match="latent_dim"):
        AutoencoderConfig(latent_dim=0)
    with pytest.raises(ValueError, match="unknown autoencoder config keys"):
        AutoencoderConfig.from_dict({"bogus": 1})
    assert AutoencoderConfig.from_dict(MLP.to_dict()) == MLP


def test_same_seed_same_weights() -> None:
    a, b = (build_autoencoder(MLP, seed=3).state_dict() for _ in range(2))
    c = build_autoencoder(MLP, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_reduces_loss_and_freezes(digits: ImageDataset) -> None:
    config = replace(TINY, max_joint_epochs=4, decoder_epochs=2)
    result = train_autoencoder(digits, MLP, config)
    losses = [r.loss for r in result.metrics.history]
    assert result.completed
    assert losses[-1] < 0.7 * losses[0]
    assert [r.phase for r in result.metrics.history] == ["joint"] * 4 + ["decoder"] * 2
    m = result.metrics
    assert m.freeze_reason == "max_joint_epochs" and m.joint_epochs == 4 and m.decoder_epochs == 2
    assert m.l2_after_freeze < m.l2_before_freeze
    assert result.latents.shape == (128, 4) and result.latents.dtype == np.float32
    with torch.no_grad():
        encoded = result.model.encoder(torch.from_numpy(digits.images)).numpy()
    np.testing.assert_allclose(result.latents, encoded, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in result.model.encoder.parameters())
    assert all(p.requires_grad for p in result.model.decoder.parameters())


def test_plateau_freezes_early(digits: ImageDataset) -> None:
    # A huge improvement threshold makes every epoch after the first a bad one.
    config = replace(TINY, max_joint_epochs=10, patience=1, min_rel_improvement=0.99)
    result = train_autoencoder(digits, MLP, config)
    assert result.metrics.freeze_reason == "plateau"
    assert result.metrics.joint_epochs == 2


def test_decoder_phase_leaves_encoder_untouched(digits: ImageDataset) -> None:
    stop_early = train_autoencoder(digits, MLP, replace(TINY, decoder_epochs=0))
    frozen_at = {k: v.clone() for k, v in stop_early.model.encoder.state_dict().items()}
    full = train_autoencoder(digits, MLP, replace(TINY, decoder_epochs=2))
    after = full.model.encoder.state_dict()
    assert all(torch.equal(frozen_at[k], after[k]) for k in after)
    np.testing.assert_array_equal(stop_early.latents, full.latents)


def test_same_seed_same_training(digits: ImageDataset) -> None:
    a = train_autoencoder(digits, MLP, TINY)
    b = train_autoencoder(digits, MLP, TINY)
    assert [r.loss for r in a.metrics.history] == [r.loss for r in b.metrics.history]
    np.testing.assert_array_equal(a.latents, b.latents)


@pytest.mark.parametrize("stop_after", [1, 2])
def test_resume_continues_identically(
    digits: ImageDataset, tmp_path: Path, stop_after: int
) -> None:
    reference = train_autoencoder(digits, MLP, TINY)
    ckpt = tmp_path / "ae.pt"
    partial = train_autoencoder(
        digits, MLP, TINY, checkpoint=ckpt, callback=lambda r: r.epoch < stop_after
    )
    assert not partial.completed and len(partial.metrics.history) == stop_after
    resumed = train_autoencoder(digits, MLP, TINY, checkpoint=ckpt)
    assert resumed.completed
    assert [r.loss for r in resumed.metrics.history] == [r.loss for r in reference.metrics.history]
    np.testing.assert_array_equal(resumed.latents, reference.latents)
    ref_state = reference.model.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in resumed.model.state_dict().items())
    assert resumed.metrics.l2_after_freeze == reference.metrics.l2_after_freeze


def test_resume_rejects_other_config(digits: ImageDataset, tmp_path: Path) -> None:
    ckpt = tmp_path / "ae.pt"
    train_autoencoder(digits, MLP, TINY, checkpoint=ckpt, callback=lambda r: False)
    with pytest.raises(ValueError, match="train config"):
        train_autoencoder(digits, MLP, replace(TINY, lr=1e-3), checkpoint=ckpt)
    with pytest.raises(ValueError, match="written for"):
        train_autoencoder(digits, replace(MLP, latent_dim=5), TINY, checkpoint=ckpt)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable"):
        train_autoencoder(digits, MLP, TINY, checkpoint=ckpt)


def test_shape_mismatch_raises(digits: ImageDataset) -> None:
    with pytest.raises(ValueError, match="the model expects"):
        train_autoencoder(digits, AutoencoderConfig(), TINY)


def test_resume_rejects_other_data(digits: ImageDataset, tmp_path: Path) -> None:
    ckpt = tmp_path / "ae.pt"
    train_autoencoder(digits, MLP, TINY, checkpoint=ckpt, callback=lambda r: False)
    other = load_digits_dataset(split="all").subset(128, seed=1)
    with pytest.raises(ValueError, match="other training data"):
        train_autoencoder(other, MLP, TINY, checkpoint=ckpt)
    resumed = train_autoencoder(digits, MLP, replace(TINY, threads=2), checkpoint=ckpt)
    assert resumed.completed


def test_decoder_schedule_steps() -> None:
    constant = replace(TINY, decoder_epochs=4)
    cosine = replace(constant, decoder_schedule="cosine")
    steps = [(e, s) for e in range(4) for s in range(10)]
    assert {decoder_lr(constant, e, s, 10) for e, s in steps} == {constant.lr}
    lrs = [decoder_lr(cosine, e, s, 10) for e, s in steps]
    assert lrs[0] == cosine.lr
    assert lrs[20] == pytest.approx(cosine.lr / 2)  # halfway through the phase
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert 0 < lrs[-1] < 0.002 * cosine.lr
    with pytest.raises(ValueError, match="decoder_schedule"):
        replace(TINY, decoder_schedule="linear")  # type: ignore[arg-type]


def test_cosine_schedule_changes_only_the_decoder_phase_and_resumes(
    digits: ImageDataset, tmp_path: Path
) -> None:
    constant = replace(TINY, decoder_epochs=2)
    cosine = replace(constant, decoder_schedule="cosine")
    a = train_autoencoder(digits, MLP, constant)
    b = train_autoencoder(digits, MLP, cosine)
    assert [r.loss for r in a.metrics.history[:2]] == [r.loss for r in b.metrics.history[:2]]
    np.testing.assert_array_equal(a.latents, b.latents)  # the encoder froze in the same state
    assert a.metrics.history[3].loss != b.metrics.history[3].loss
    ckpt = tmp_path / "ae.pt"
    stop = train_autoencoder(digits, MLP, cosine, checkpoint=ckpt, callback=lambda r: r.epoch < 3)
    assert [r.phase for r in stop.metrics.history] == ["joint", "joint", "decoder"]
    with pytest.raises(ValueError, match="train config"):
        train_autoencoder(digits, MLP, constant, checkpoint=ckpt)
    resumed = train_autoencoder(digits, MLP, cosine, checkpoint=ckpt)
    assert [r.loss for r in resumed.metrics.history] == [r.loss for r in b.metrics.history]
    assert resumed.metrics.l2_after_freeze == b.metrics.l2_after_freeze


def test_checkpoints_from_before_the_schedule_resume_as_constant(
    digits: ImageDataset, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ae.pt"
    train_autoencoder(digits, MLP, TINY, checkpoint=ckpt, callback=lambda r: False)
    payload = torch.load(ckpt, weights_only=True)
    del payload["train_config"]["decoder_schedule"]
    torch.save(payload, ckpt)
    with pytest.raises(ValueError, match="train config"):
        train_autoencoder(digits, MLP, replace(TINY, decoder_schedule="cosine"), checkpoint=ckpt)
    resumed = train_autoencoder(digits, MLP, TINY, checkpoint=ckpt)
    reference = train_autoencoder(digits, MLP, TINY)
    assert [r.loss for r in resumed.metrics.history] == [r.loss for r in reference.metrics.history]


# A conv autoencoder small enough for tests: 8x8 digits, two stride-2 convolutions.
CONV = AutoencoderConfig(image_shape=(1, 8, 8), latent_dim=4, conv_channels=(8, 16), fc_hidden=32)


def test_precision_resolves_by_what_the_device_computes_natively() -> None:
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    native = native_bfloat16("cpu")
    assert resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("half", "cpu")
    with pytest.raises(ValueError, match="precision"):
        replace(TINY, precision="half")  # type: ignore[arg-type]


def test_bfloat16_training_tracks_float32_and_returns_a_float32_model(
    digits: ImageDataset, tmp_path: Path
) -> None:
    config = replace(TINY, max_joint_epochs=4, decoder_epochs=2, batch_size=16)
    runs = {
        p: train_autoencoder(digits, CONV, replace(config, precision=p))
        for p in ("float32", "bfloat16")
    }
    f32, bf16 = (runs[p].metrics for p in ("float32", "bfloat16"))
    # The bfloat16 path is live (other losses), and lands where float32 does.
    assert [r.loss for r in f32.history] != [r.loss for r in bf16.history]
    assert bf16.l2_after_freeze == pytest.approx(f32.l2_after_freeze, rel=0.05)
    assert bf16.l2_after_freeze < 0.7 * bf16.history[0].loss
    model = runs["bfloat16"].model
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    bundle = train_and_save(digits, CONV, replace(config, precision="bfloat16"), tmp_path / "b")
    np.testing.assert_array_equal(bundle.latents, runs["bfloat16"].latents)


def test_checkpoints_from_before_the_precision_resume_in_float32(
    digits: ImageDataset, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ae.pt"
    f32 = replace(TINY, precision="float32")
    train_autoencoder(digits, MLP, f32, checkpoint=ckpt, callback=lambda r: False)
    payload = torch.load(ckpt, weights_only=True)
    del payload["train_config"]["precision"]
    torch.save(payload, ckpt)
    model_config, recipe = checkpoint_configs(ckpt)  # type: ignore[misc]
    assert model_config == MLP and recipe == f32
    with pytest.raises(ValueError, match="train config"):
        train_autoencoder(digits, MLP, replace(TINY, precision="bfloat16"), checkpoint=ckpt)
    resumed = train_autoencoder(digits, MLP, f32, checkpoint=ckpt)
    reference = train_autoencoder(digits, MLP, f32)
    assert [r.loss for r in resumed.metrics.history] == [r.loss for r in reference.metrics.history]
    assert checkpoint_configs(tmp_path / "none.pt") is None


@pytest.mark.gpu
def test_cuda_training_lands_where_the_cpu_does(digits: ImageDataset) -> None:
    # The GPU path (bfloat16 where the card has it, channels-last, fused Adam, losses summed
    # on the device) trains the same recipe to the same error as float32 on the CPU.
    config = replace(TINY, max_joint_epochs=4, decoder_epochs=2, batch_size=16)
    cpu = train_autoencoder(digits, CONV, replace(config, precision="float32")).metrics
    cuda = train_autoencoder(digits, CONV, replace(config, device="cuda", precision="auto"))
    assert cuda.metrics.device == "cuda" and cuda.completed
    assert cuda.metrics.l2_after_freeze == pytest.approx(cpu.l2_after_freeze, rel=0.05)
    assert next(cuda.model.parameters()).device.type == "cpu"


def test_joint_schedule_and_the_decoder_phases_first_step() -> None:
    constant = replace(TINY, max_joint_epochs=4)
    cosine = replace(constant, joint_schedule="cosine")
    steps = [(e, s) for e in range(4) for s in range(10)]
    assert {joint_lr(constant, e, s, 10) for e, s in steps} == {constant.lr}
    lrs = [joint_lr(cosine, e, s, 10) for e, s in steps]
    assert lrs[0] == cosine.lr and lrs[20] == pytest.approx(cosine.lr / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] > 0
    low = replace(TINY, decoder_epochs=2, decoder_lr_factor=0.25, decoder_schedule="cosine")
    assert decoder_lr(low, 0, 0, 10) == pytest.approx(0.25 * low.lr)
    assert decoder_lr(replace(low, decoder_schedule="constant"), 1, 9, 10) == 0.25 * low.lr
    with pytest.raises(ValueError, match="joint_schedule"):
        replace(TINY, joint_schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decoder_lr_factor"):
        replace(TINY, decoder_lr_factor=0)


def test_decoder_phase_can_keep_the_batchnorm_statistics_of_the_freeze(
    digits: ImageDataset,
) -> None:
    config = replace(TINY, max_joint_epochs=2, batch_size=16, precision="float32")

    def norm_buffers(decoder_epochs: int, batch_stats: bool) -> dict[str, torch.Tensor]:
        run = replace(config, decoder_epochs=decoder_epochs, decoder_batch_stats=batch_stats)
        model = train_autoencoder(digits, CONV, run).model.decoder
        return {k: v for k, v in model.state_dict().items() if "running" in k}

    frozen_at = norm_buffers(0, True)
    kept = norm_buffers(2, False)
    moved = norm_buffers(2, True)
    assert all(torch.equal(frozen_at[k], kept[k]) for k in frozen_at)
    assert not all(torch.equal(frozen_at[k], moved[k]) for k in frozen_at)


# The training loop frees and allocates the same activation buffers every step: inside
# retained_heap glibc keeps them (no page faults on reuse); after it the memory goes back.
_HEAP_PROBE = """
import platform, resource, sys
import numpy as np
from models.runtime import retained_heap

def faults(rounds):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):  # a step: buffers of several sizes alive together, then freed
        step = [np.ones(size << 18, dtype=np.float32) for size in (24, 20, 28, 12, 2, 1)]
        del step
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

with retained_heap():
    faults(1)  # the heap grows to the high-water mark once
    inside = faults(10)
    np.ones(28 << 18, dtype=np.float32)
    held = rss()
after = rss()
print(platform.libc_ver()[0], inside, held - after)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc (Linux)")
def test_retained_heap_reuses_freed_buffers_and_returns_them_after() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    if out[0] != "glibc":
        pytest.skip("the C library is not glibc: retained_heap is a no-op")
    inside, returned = int(out[1]), int(out[2])
    # Ten steps of 87 MiB are 223,000 pages; glibc's defaults fault about 23,000 of them in
    # again (measured on the team's box), the retained heap none.
    assert inside < 2000, inside
    assert returned > 16 << 20, returned  # the freed buffers went back on exit
