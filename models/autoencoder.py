"""Autoencoder modules and their configuration (modules only; training lives in ``train.py``).

Two architectures:

- ``"conv"``: the paper's choice for 28x28 images. The decoder is the InfoGAN-style generator
  of Lucic et al. ("Are GANs created equal?"): FC 1024 -> FC 128 x H/4 x W/4 -> deconv 4x4
  stride 2 to 64 channels -> deconv 4x4 stride 2 to C channels, sigmoid; BatchNorm + ReLU after
  every hidden layer. The encoder mirrors it: conv 4x4 stride 2 to 64 -> conv 4x4 stride 2 to
  128 -> FC 1024 -> FC latent (linear output). Any H, W divisible by 4 works (28, 32, 64).
- ``"mlp"``: fully connected, for 8x8 digits and other small inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from models.options import ARCHES, Arch


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig:
    """Architecture of an autoencoder; stored in checkpoints and bundles as JSON.

    Attributes:
        arch: ``"conv"`` (InfoGAN-style, images with H, W divisible by 4) or ``"mlp"``.
        image_shape: ``(C, H, W)`` of the images, C in (1, 3).
        latent_dim: dimension d of the latent codes.
        conv_channels: channels of the two stride-2 convolutions (conv arch).
        fc_hidden: width of the fully connected hidden layer (conv arch).
        mlp_hidden: hidden widths of the encoder, reversed for the decoder (mlp arch).

    """

    arch: Arch = "conv"
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 32
    conv_channels: tuple[int, int] = (64, 128)
    fc_hidden: int = 1024
    mlp_hidden: tuple[int, ...] = (256, 128)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ValueError(f"arch must be 'conv' or 'mlp', got {self.arch!r}")
        c, h, w = self.image_shape
        if c not in (1, 3) or h < 1 or w < 1:
            raise ValueError(
                f"image_shape must be (C, H, W) with C in (1, 3), got {self.image_shape}"
            )
        if self.arch == "conv" and (h % 4 or w % 4):
            raise ValueError(f"conv autoencoder needs H and W divisible by 4, got {(h, w)}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if min(self.conv_channels) < 1 or self.fc_hidden < 1 or min(self.mlp_hidden, default=1) < 1:
            raise ValueError("layer widths must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown autoencoder config keys {sorted(unknown)}")
        tuples = {"image_shape", "conv_channels", "mlp_hidden"}
        values: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in data.items()}
        return cls(**values)


class ConvEncoder(nn.Module):
    """Images ``(B, C, H, W)`` in [0, 1] to latents ``(B, d)``."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        c, h, w = config.image_shape
        c1, c2 = config.conv_channels
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) * (w // 4), config.fc_hidden),
            nn.BatchNorm1d(config.fc_hidden),
            nn.ReLU(),
            nn.Linear(config.fc_hidden, config.latent_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` of shape ``(B, C, H, W)`` to ``(B, d)``."""
        return self.net(x)


class ConvDecoder(nn.Module):
    """Latents ``(B, d)`` to images ``(B, C, H, W)`` in [0, 1] (InfoGAN-style generator)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        c, h, w = config.image_shape
        c1, c2 = config.conv_channels
        self.grid = (c2, h // 4, w // 4)
        self.fc = nn.Sequential(
            nn.Linear(config.latent_dim, config.fc_hidden),
            nn.BatchNorm1d(config.fc_hidden),
            nn.ReLU(),
            nn.Linear(config.fc_hidden, math.prod(self.grid)),
            nn.BatchNorm1d(math.prod(self.grid)),
            nn.ReLU(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z`` of shape ``(B, d)`` to ``(B, C, H, W)``."""
        return self.deconv(self.fc(z).view(-1, *self.grid))


class MLPEncoder(nn.Module):
    """Flattened images to latents: Linear + ReLU per hidden width, linear output."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths = [math.prod(config.image_shape), *config.mlp_hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], config.latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` of shape ``(B, C, H, W)`` to ``(B, d)``."""
        return self.net(x)


class MLPDecoder(nn.Module):
    """Latents to images: the encoder's widths reversed, sigmoid output."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.image_shape = config.image_shape
        widths = [config.latent_dim, *reversed(config.mlp_hidden)]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers += [nn.Linear(widths[-1], math.prod(config.image_shape)), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z`` of shape ``(B, d)`` to ``(B, C, H, W)``."""
        return self.net(z).view(-1, *self.image_shape)


class Autoencoder(nn.Module):
    """An encoder and a decoder; ``forward`` returns the reconstruction and the latent."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        if config.arch == "conv":
            self.encoder: nn.Module = ConvEncoder(config)
            self.decoder: nn.Module = ConvDecoder(config)
        else:
            self.encoder = MLPEncoder(config)
            self.decoder = MLPDecoder(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(reconstruction (B, C, H, W), latent (B, d))`` for images ``x``."""
        z = self.encoder(x)
        return self.decoder(z), z


def build_autoencoder(config: AutoencoderConfig, *, seed: int | None = None) -> Autoencoder:
    """Build an :class:`Autoencoder`; with ``seed``, its initial weights depend only on it.

    The seed is applied inside a forked RNG, so the caller's global torch RNG is untouched.
    """
    if seed is None:
        return Autoencoder(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Autoencoder(config)
