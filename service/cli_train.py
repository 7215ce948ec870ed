"""``aeot train`` (foreground training into a store) and the training half of ``serve --data``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from service.cli_support import CliError, build_settings, friendly

if TYPE_CHECKING:  # the runtime imports are inside the commands: torch loads slowly
    from models import EpochRecord, ImageDataset, TrainPlan
    from service.catalog import ModelRecord, TrainProgress
    from service.settings import Settings
    from service.store import ModelStore

_PANEL = "Model"
DATA_HELP = (
    "digits (scikit-learn, no files), mnist or fashion-mnist (found under ./data, "
    "~/.cache/aeot/datasets or /usr/share/datasets), an IDX directory, a .npy/.npz file "
    "(images, optional labels) or an image folder (one sub-folder per class for labels)"
)


def _image_size(text: str | None) -> tuple[int, int] | None:
    """``"32x28"`` -> ``(32, 28)`` (H, W); ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise CliError(f"--image-size must look like 28x28, got {text!r}") from exc
    return h, w


@friendly
def train(
    data: str = typer.Argument("digits", help=DATA_HELP),
    name: str = typer.Option(None, help="model name (default: the dataset's name)"),
    latent_dim: int = typer.Option(
        None, help="latent dimension d (default 8 for small images, 32 otherwise)"
    ),
    epochs: int = typer.Option(
        None, help="joint epochs at most; a plateau ends them early (default: the recipe's)"
    ),
    decoder_epochs: int = typer.Option(None, help="decoder-only epochs (default: epochs / 3)"),
    decoder_schedule: str = typer.Option(
        None, help="decoder-phase step size: constant (default) or cosine (falls to zero)"
    ),
    subset: int = typer.Option(None, help="train on a seeded random subset of this many images"),
    split: str = typer.Option("train", help="IDX split: train, test or all"),
    image_size: str = typer.Option(None, help="HxW to resize user images to (folders: 28x28)"),
    channels: int = typer.Option(None, help="1 (gray) or 3 (RGB) for user images"),
    arch: str = typer.Option(None, help="conv or mlp (default: by image size)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    seed: int = typer.Option(0, help="seed of the subset, weights and shuffles"),
    fresh: bool = typer.Option(False, "--fresh", help="discard the checkpoint, start over"),
    store: Path = typer.Option(None, help="store directory (default: AEOT_STORE or ./store)"),  # noqa: B008
) -> None:
    """Train an autoencoder on a dataset into the store (resumable); its fit is queued."""
    from models import TrainPlan, dataset_config_for, load_plan_data  # noqa: PLC0415
    from models.datasets import Split  # noqa: PLC0415
    from models.train import DECODER_SCHEDULES, DecoderSchedule  # noqa: PLC0415
    from service.names import sanitise_name  # noqa: PLC0415
    from service.store import ModelStore  # noqa: PLC0415
    from service.training import checkpoint_path  # noqa: PLC0415

    if split not in ("train", "test", "all"):
        raise CliError(f"--split must be train, test or all, got {split!r}")
    if decoder_schedule not in (None, *DECODER_SCHEDULES):
        raise CliError(
            f"--decoder-schedule must be {' or '.join(DECODER_SCHEDULES)}, got {decoder_schedule!r}"
        )
    config = dataset_config_for(
        data,
        split=cast(Split, split),
        image_size=_image_size(image_size),
        channels=channels,
    )
    plan = TrainPlan(
        data=config,
        subset=subset,
        latent_dim=latent_dim,
        arch=arch,
        epochs=epochs,
        decoder_epochs=decoder_epochs,
        decoder_schedule=cast(DecoderSchedule | None, decoder_schedule),
        seed=seed,
        device=device,
    )
    images = load_plan_data(plan)
    model_name = name or sanitise_name(images.name)
    labels = f", {images.n_classes} classes" if images.labels is not None else ", no labels"
    c, h, w = images.image_shape
    typer.echo(f"{images.name}: {len(images)} images of {c}x{h}x{w}{labels}")
    settings = build_settings(store=store)
    model_store = ModelStore(settings.store)
    if any(m.name == model_name for m in model_store.models()):
        raise CliError(
            f"model {model_name!r} already exists in {settings.store}: pass another --name, or "
            f"delete it (`aeot models delete {model_name}` on the running server)"
        )
    checkpoint = checkpoint_path(model_store, model_name, plan)
    if checkpoint.exists():
        if fresh:
            checkpoint.unlink()
        else:
            typer.echo("resuming from the checkpoint of an earlier run (--fresh starts over)")
    record = _train_with_bars(model_store, model_name, plan, images, settings)
    typer.echo(
        f"model {record.name}: {record.n_latents} latents in d={record.dim}, registered in "
        f"{settings.store}; fit queued: `aeot serve --store {settings.store}` fits and serves "
        f"it (or `aeot fit {record.name} --store {settings.store}` fits it here)"
    )


def epoch_total(current: int, decoder_epoch: int, decoder_epochs: int) -> int:
    """The run's epoch count after a decoder-phase epoch (1-based over both phases) is seen.

    A plateau may end the joint phase before its cap: the first decoder epoch then tells how
    many joint epochs ran, and the count drops to them plus ``decoder_epochs``. It never rises:
    later decoder epochs, or a run resumed in the decoder phase, keep ``current`` or lower it.
    """
    return min(current, decoder_epoch - 1 + decoder_epochs)


def _train_with_bars(
    store: ModelStore, name: str, plan: TrainPlan, images: ImageDataset, settings: Settings
) -> ModelRecord:
    """Run the training with an epoch bar (phase, loss) over the per-epoch batch bars."""
    from tqdm import tqdm  # noqa: PLC0415

    from service.job_config import job_config  # noqa: PLC0415
    from service.training import train_into_store  # noqa: PLC0415

    _, recipe = plan.resolve(images.image_shape)
    total = recipe.max_joint_epochs + recipe.decoder_epochs
    with tqdm(total=total, desc=f"train {name}", unit="epoch", position=0) as bar:

        def on_epoch(record: EpochRecord, _report: TrainProgress) -> None:
            if record.phase == "decoder":
                bar.total = epoch_total(bar.total, record.epoch, recipe.decoder_epochs)
            bar.update(record.epoch - bar.n)
            bar.set_postfix(phase=record.phase, loss=f"{record.loss:.5f}")

        try:
            record = train_into_store(
                store,
                name,
                plan,
                fit=job_config(settings),
                data=images,
                callback=on_epoch,
                progress=True,
            )
        except KeyboardInterrupt:
            raise CliError(
                "interrupted: the same command resumes from the last finished epoch"
            ) from None
    if record is None:  # on_epoch never stops training; kept for the type
        raise CliError("training stopped before it finished")
    return record


def queue_served_dataset(
    overrides: dict[str, Any],
    data: str,
    *,
    name: str | None,
    subset: int | None,
    epochs: int | None,
    latent_dim: int | None,
) -> dict[str, Any]:
    """``aeot serve --data``: queue the model's training for the worker; settings to serve it.

    Returns the overrides with the model as the default and the embedded digits model off.
    Nothing is queued when the model is registered already or being trained.
    """
    from models import TrainPlan, dataset_config_for  # noqa: PLC0415
    from service.job_config import job_config  # noqa: PLC0415
    from service.names import sanitise_name  # noqa: PLC0415
    from service.store import ModelStore  # noqa: PLC0415
    from service.training import queue_training  # noqa: PLC0415

    config = dataset_config_for(data)
    if config.path is not None:  # the worker may run in another directory
        config = type(config).from_dict(
            {**config.to_dict(), "path": str(Path(config.path).resolve())}
        )
    model_name = name or sanitise_name(config.name or config.source)
    settings = build_settings(**{**overrides, "embedded_default": False})
    plan = TrainPlan(
        data=config, subset=subset, epochs=epochs, latent_dim=latent_dim, device=settings.device
    )
    store = ModelStore(settings.store)
    if any(m.name == model_name for m in store.models()):
        typer.echo(f"model {model_name} is in the store already: serving it")
    elif queue_training(store, model_name, plan, job_config(settings)) is None:
        typer.echo(f"model {model_name} is being trained already")
    else:
        typer.echo(
            f"training {model_name} on {data} in the worker (epoch and loss in the log, "
            "/models and the page), then fitting its OT map"
        )
    if not settings.worker:
        typer.echo("warning: --no-worker: nothing trains or fits until a worker runs", err=True)
    return {**overrides, "default_model": model_name, "embedded_default": False}
