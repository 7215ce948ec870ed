"""``aeot train`` (foreground training into a store) and the training half of ``serve --data``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from models.options import DataOptions, TrainOptions
from service.cli_options import run_options
from service.cli_support import CliError, build_settings, friendly

if TYPE_CHECKING:  # the runtime imports are inside the commands: torch loads slowly
    from models import EpochRecord, ImageDataset, TrainPlan
    from service.catalog import ModelRecord
    from service.jobs import TrainProgress
    from service.settings import Settings
    from service.store import ModelStore

_PANEL = "Model"
DATA_HELP = (
    "digits (scikit-learn, no files), mnist or fashion-mnist (found under ./data, "
    "~/.cache/aeot/datasets or /usr/share/datasets), an IDX directory, a .npy/.npz file "
    "(images, optional labels) or an image folder (one sub-folder per class for labels)"
)


@friendly
@run_options()
def train(
    train_options: TrainOptions,
    data_options: DataOptions,
    data: str = typer.Argument("digits", help=DATA_HELP),
    name: str = typer.Option(None, help="model name (default: the dataset's name)"),
    fresh: bool = typer.Option(False, "--fresh", help="discard the checkpoint, start over"),
    store: Path = typer.Option(None, help="store directory (default: AEOT_STORE or ./store)"),  # noqa: B008
) -> None:
    """Train an autoencoder on a dataset into the store (resumable); its fit is queued."""
    from models import TrainPlan, dataset_config_for, load_plan_data
    from service.names import sanitise_name
    from service.store import ModelStore
    from service.training import checkpoint_path

    plan = TrainPlan.of(train_options, dataset_config_for(data, data_options))
    images = load_plan_data(plan)
    model_name = name or sanitise_name(images.name)
    shape = "x".join(map(str, images.image_shape))
    typer.echo(f"{images.name}: {len(images)} images of {shape}{_classes(images)}")
    settings = build_settings(store=store)
    model_store = ModelStore(settings.store)
    if any(m.name == model_name for m in model_store.catalog.models()):
        raise CliError(
            f"model {model_name!r} already exists in {settings.store}: pass another --name, or "
            f"delete it (`aeot models delete {model_name}` on the running server)"
        )
    checkpoint = checkpoint_path(model_store, model_name, plan)
    if checkpoint.exists():
        if fresh:
            checkpoint.unlink()
        else:
            typer.echo(_resume_line(checkpoint))
    record = _train_with_bars(model_store, model_name, plan, images, settings)
    typer.echo(
        f"model {record.name}: {record.n_latents} latents in d={record.dim}, registered in "
        f"{settings.store}; fit queued: `aeot serve --store {settings.store}` fits and serves "
        f"it (or `aeot fit {record.name} --store {settings.store}` fits it here)"
    )


def _resume_line(checkpoint: Path) -> str:
    """What the run resumes from: the epochs its checkpoint holds."""
    from models.train import checkpoint_progress

    try:
        epoch, phase = checkpoint_progress(checkpoint)
    except ValueError as exc:
        raise CliError(f"{exc}: --fresh discards it and starts over") from None
    return (
        f"resuming after epoch {epoch} ({phase} phase) from the checkpoint of an earlier run "
        "(--fresh starts over)"
    )


# Class names printed when training starts at most (a folder may hold a thousand classes).
_SHOWN_NAMES = 12


def _classes(images: ImageDataset) -> str:
    """``", 10 classes (T-shirt/top, Trouser, ...)"``, or ``", no labels"``."""
    if images.labels is None:
        return ", no labels"
    n = images.n_classes
    if images.class_names is None:
        return f", {n} classes"
    more = f" and {n - _SHOWN_NAMES} more" if n > _SHOWN_NAMES else ""
    return f", {n} classes ({', '.join(images.class_names[: min(n, _SHOWN_NAMES)])}{more})"


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
    from tqdm import tqdm

    from service.job_config import job_config
    from service.training import train_into_store

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
        except KeyboardInterrupt:  # exit code 130, with what to do next
            raise KeyboardInterrupt(
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
    train_options: TrainOptions,
    data_options: DataOptions,
) -> dict[str, Any]:
    """``aeot serve --data``: queue the model's training for the worker; settings to serve it.

    Returns the overrides with the model as the default and the embedded digits model off.
    Nothing is queued when the model is registered already or being trained.
    """
    from models import TrainPlan, dataset_config_for
    from service.job_config import job_config
    from service.names import sanitise_name
    from service.store import ModelStore
    from service.training import queue_training

    config = dataset_config_for(data, data_options)
    if config.path is not None:  # the worker may run in another directory
        config = type(config).from_dict(
            {**config.to_dict(), "path": str(Path(config.path).resolve())}
        )
    model_name = name or sanitise_name(config.title)
    settings = build_settings(**{**overrides, "embedded_default": False})
    plan = TrainPlan.of(train_options, config, device=settings.device)
    store = ModelStore(settings.store)
    if any(m.name == model_name for m in store.catalog.models()):
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
