"""A training run described by the options a user types: data, architecture, recipe.

``aeot train``, ``aeot serve --data`` and the service's training jobs all describe a run as a
:class:`TrainPlan` (JSON-serialisable, so a queued job carries it), then call
:func:`load_plan_data` and :func:`train_plan`. Unset options take defaults that depend on the
image size: small images (at most 16 x 16, like the 8x8 digits) get the MLP autoencoder and
recipe of the embedded digits model; larger ones (H and W divisible by 4) the paper's
convolutional autoencoder and recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.autoencoder import AutoencoderConfig
from models.bundle import MAX_PARAMETERS, Bundle, load_bundle, parameter_count, save_bundle
from models.datasets import DatasetConfig, ImageDataset, load_dataset
from models.options import TrainOptions, values_of
from models.runtime import available_cores
from models.train import (
    DIGITS_AUTOENCODER,
    DIGITS_RECIPE,
    EpochCallback,
    TrainConfig,
    TrainResult,
    checkpoint_configs,
    train_autoencoder,
)

# Images with at most this many pixels per channel get the MLP recipe (8x8 digits: 64).
_SMALL_PIXELS = 16 * 16
# Latent dimension of the convolutional default: the AutoencoderConfig default (32).
_CONV_LATENT_DIM = AutoencoderConfig().latent_dim


@dataclass(frozen=True, kw_only=True)
class TrainPlan(TrainOptions):
    """One autoencoder training run: the data and the options of :class:`TrainOptions`.

    Attributes:
        data: which images (see :class:`models.datasets.DatasetConfig`).
        subset: train on a seeded random subset of this many images (``None``: all).
        latent_dim: latent dimension d (``None``: 8 for small images, 32 otherwise).
        arch: ``"conv"`` or ``"mlp"`` (``None``: by image size, see the module docstring).
        epochs: joint-phase epochs at most (a plateau ends it earlier); ``None``: the recipe's
            (120 for small images, 30 otherwise).
        decoder_epochs: decoder-only epochs after the encoder freezes (``None``: the recipe's,
            40 for small images, 10 otherwise, scaled by ``epochs`` when it is given).
        decoder_schedule: the decoder phase's step size, ``"constant"`` or ``"cosine"``
            (``None``: the recipe's, constant; see :class:`models.train.TrainConfig`).
        seed: seeds the subset, the initial weights and every epoch's shuffle.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        threads: torch and BLAS threads while training (``None``: every core for the conv
            recipe, whose large steps gain from them; the caller's count for the small MLP).

    The options' allowed values and defaults are declared once in :mod:`models.options`;
    a bad value is a ``ValueError`` naming it.
    """

    data: DatasetConfig

    @classmethod
    def of(cls, options: TrainOptions, data: DatasetConfig, **changes: Any) -> TrainPlan:
        """The plan of ``options`` on ``data``; ``changes`` set options instead (the device)."""
        return cls(data=data, **{**values_of(options, TrainOptions), **changes})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {"data": self.data.to_dict(), **values_of(self, TrainOptions)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainPlan:
        """Build from :meth:`to_dict`'s output (``ValueError`` on unknown or bad keys)."""
        rest = dict(data)
        try:
            dataset = DatasetConfig.from_dict(rest.pop("data"))
            return cls(data=dataset, **rest)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a training plan: {exc}") from exc

    def resolve(self, image_shape: tuple[int, int, int]) -> tuple[AutoencoderConfig, TrainConfig]:
        """The architecture and recipe for images of shape ``(C, H, W)``."""
        c, h, w = image_shape
        small = h * w <= _SMALL_PIXELS
        arch = self.arch or ("conv" if not small and h % 4 == 0 and w % 4 == 0 else "mlp")
        if arch == "mlp":
            base = replace(DIGITS_AUTOENCODER, image_shape=(c, h, w))
            recipe = replace(DIGITS_RECIPE, progress=True, threads=None)
        else:
            base = AutoencoderConfig(
                arch="conv", image_shape=(c, h, w), latent_dim=_CONV_LATENT_DIM
            )
            recipe = TrainConfig()
        latent_dim = self.latent_dim or (base.latent_dim if small else _CONV_LATENT_DIM)
        model = replace(base, latent_dim=latent_dim)
        joint = self.epochs or recipe.max_joint_epochs
        if self.decoder_epochs is not None:
            decoder = self.decoder_epochs
        elif self.epochs is not None:  # keep the recipe's joint : decoder ratio (3 : 1)
            decoder = max(1, round(self.epochs * recipe.decoder_epochs / recipe.max_joint_epochs))
        else:
            decoder = recipe.decoder_epochs
        config = replace(
            recipe,
            max_joint_epochs=joint,
            decoder_epochs=decoder,
            decoder_schedule=self.decoder_schedule or recipe.decoder_schedule,
            seed=self.seed,
            device=self.device,
            threads=self._threads(arch, recipe),
        )
        return model, config

    def _threads(self, arch: str, recipe: TrainConfig) -> int | None:
        """This plan's threads, else the recipe's; the conv recipe's steps use every core."""
        if self.threads is not None:
            return self.threads
        return available_cores() if arch == "conv" and recipe.threads is None else recipe.threads

    def as_started(
        self,
        resolved: tuple[AutoencoderConfig, TrainConfig],
        started: tuple[AutoencoderConfig, TrainConfig],
    ) -> tuple[AutoencoderConfig, TrainConfig]:
        """The architecture and recipe a resumed run of this plan continues with.

        ``resolved`` is :meth:`resolve`'s answer today, ``started`` what the checkpoint was
        started with (:func:`models.train.checkpoint_configs`). Defaults may have changed since
        (a larger batch, bfloat16): the run goes on as it started, on today's device and
        thread count. Only the options this plan sets must agree with the checkpoint.

        Raises:
            ValueError: an option set in this plan differs from the checkpoint's.

        """
        (_, recipe), (model, before) = resolved, started
        explicit = {
            "latent_dim": (self.latent_dim, model.latent_dim),
            "arch": (self.arch, model.arch),
            "epochs": (self.epochs, before.max_joint_epochs),
            "decoder_epochs": (self.decoder_epochs, before.decoder_epochs),
            "decoder_schedule": (self.decoder_schedule, before.decoder_schedule),
            "seed": (self.seed, before.seed),
        }
        for option, (asked, was) in explicit.items():
            if asked is not None and asked != was:
                raise ValueError(
                    f"the checkpoint was started with {option} {was!r}, this run asks for "
                    f"{asked!r}: start over (a fresh run) or keep the option"
                )
        return model, replace(
            before, device=recipe.device, threads=recipe.threads, progress=recipe.progress
        )


def load_plan_data(plan: TrainPlan) -> ImageDataset:
    """Load the plan's images (and the seeded subset when it asks for one)."""
    data = load_dataset(plan.data)
    return data if plan.subset is None else data.subset(plan.subset, seed=plan.seed)


def train_plan(
    plan: TrainPlan,
    data: ImageDataset,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    callback: EpochCallback | None = None,
    progress: bool = False,
) -> tuple[Bundle | None, TrainResult]:
    """Train the plan on ``data`` and write a bundle (labels kept when the data has them).

    Args:
        plan: the run.
        data: its images, from :func:`load_plan_data`.
        out_dir: bundle directory to write.
        checkpoint: per-epoch checkpoint file; an existing one is resumed (same plan and data)
            under the architecture and recipe it was started with (:meth:`TrainPlan.as_started`).
        callback: called after each epoch; returning ``False`` stops training.
        progress: show tqdm bars over each epoch's batches.

    Returns:
        The bundle (``None`` when a callback stopped training before the end) and the result.

    Raises:
        ValueError: the architecture for these images has more than ``MAX_PARAMETERS``.

    """
    model_config, config = plan.resolve(data.image_shape)
    config = replace(config, progress=progress)
    started = None if checkpoint is None else checkpoint_configs(checkpoint)
    if started is not None:
        model_config, config = plan.as_started((model_config, config), started)
    n_params = parameter_count(model_config)
    if n_params > MAX_PARAMETERS:  # a bundle this big would be refused when loaded
        raise ValueError(
            f"images of shape {data.image_shape} make an autoencoder of {n_params:,} "
            f"parameters, over the limit of {MAX_PARAMETERS:,}: use a smaller image size"
        )
    result = train_autoencoder(data, model_config, config, checkpoint=checkpoint, callback=callback)
    if not result.completed or result.latents is None:
        return None, result
    save_bundle(
        out_dir,
        model=result.model,
        latents=result.latents,
        dataset=data.name,
        labels=data.labels,
        class_names=data.class_names,
        metrics=result.metrics,
    )
    return load_bundle(out_dir), result
