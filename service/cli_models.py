"""``aeot models``: list, show, register, train, refit and delete models of a running server.

Everything goes through the HTTP API (:class:`service.client.AEOTClient`), so it works against
a remote server as well as a local one; the mutating commands need the server's API key
(``--api-key`` or ``AEOT_API_KEY``). ``register`` packs a bundle directory as ``.tar.gz``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import typer

from models.options import DataOptions, TrainOptions, values_of
from service.cli_options import run_options
from service.cli_support import CliError, calls, connect, friendly
from service.names import sanitise_name

models_app = typer.Typer(help="Manage the models of a running server (over its HTTP API).")

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="AEOT_URL", help="server URL")
API_KEY = typer.Option(
    None, "--api-key", envvar="AEOT_API_KEY", help="the server's key (mutating commands)"
)
NAME = typer.Argument(..., help="model name")


def pack_bundle(directory: Path) -> bytes:
    """A bundle directory as ``.tar.gz`` bytes (files under ``bundle/``), the upload format."""
    if not directory.exists():
        raise CliError(f"{directory} does not exist")
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory: a bundle is a directory")
    if not (directory / "config.json").is_file():
        raise CliError(
            f"{directory} is not a model bundle (no config.json): `aeot train` writes bundles "
            "into the store, `models.save_bundle` anywhere"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(directory.iterdir()):
            if path.is_file():
                tar.add(path, arcname=f"bundle/{path.name}")
    return buf.getvalue()


def _job_line(job: dict[str, Any] | None) -> str:
    """One-line progress of a job: epoch/loss for training, iteration/L1/ETA for a fit."""
    if job is None:
        return "-"
    head = f"{job['kind']} {job['status']}"
    training = job.get("training")
    if job["kind"] == "train":
        if training is None:
            return head
        return (
            f"{head}, epoch {training['epoch']}/{training['epochs']} ({training['phase']}), "
            f"loss {training['loss']:.5f}"
        )
    acc = job.get("accuracy")
    l1 = f", L1 {acc['l1']:.4f}" if acc else ""
    eta = f", ETA {job['eta']:.0f} s" if job.get("eta") is not None else ""
    reason = f" ({job['reason']})" if job.get("reason") else ""
    return f"{head}{reason}, iteration {job['iteration']}{l1}{eta}"


# Classes listed by `models show` at most (a dataset may name up to a thousand).
_SHOWN_CLASSES = 50


def _classes_line(classes: list[int], names: list[str] | None) -> str:
    """``"0 T-shirt/top, 1 Trouser, ..."`` (the label= values, each with its name if known)."""
    shown = [
        f"{c} {name}" if names else str(c)
        for c, name in zip(classes, names or classes, strict=True)
    ][:_SHOWN_CLASSES]
    more = f" and {len(classes) - _SHOWN_CLASSES} more" if len(classes) > _SHOWN_CLASSES else ""
    return ", ".join(shown) + more


@models_app.command(name="list")
@friendly
@calls("GET", "/models")
def list_models(url: str = URL, api_key: str = API_KEY) -> None:
    """Every model: size, served version, accuracy and its latest job; trainings underway."""
    with connect(url, api_key) as client:
        listing = client.models()
    names = set()
    for m in listing["models"]:
        names.add(m["name"])
        star = "*" if m["default"] else " "
        served = f"v{m['served_version']}" if m["served_version"] else "not served"
        acc = m["accuracy"]
        l1 = f"L1 {acc['l1']:.4f}" if acc else "no potential"
        typer.echo(
            f"{star} {m['name']:<20} N={m['n_latents']:<6} d={m['dim']:<4} {served:<10} "
            f"{l1:<14} {_job_line(m['job'])}"
        )
    for job in listing["jobs"]:
        if job["kind"] == "train" and job["model"] not in names:
            typer.echo(f"  {job['model']:<20} (training) {_job_line(job)}")
    if not listing["models"] and not listing["jobs"]:
        typer.echo("no models yet: `aeot models register DIR` or `aeot models train NAME DATA`")


@models_app.command()
@friendly
@calls("GET", "/models/{name}")
def show(name: str = NAME, url: str = URL, api_key: str = API_KEY) -> None:
    """One model's status: versions, accuracy of the published potential, job progress."""
    with connect(url, api_key) as client:
        m = client.model(name)
    acc = m["accuracy"]
    typer.echo(f"model {m['name']}{' (default)' if m['default'] else ''}")
    typer.echo(f"  latents       {m['n_latents']} in d={m['dim']}")
    typer.echo(f"  published     v{m['published_version']}, served {m['served_version']}")
    if acc:
        typer.echo(
            f"  accuracy      L1 {acc['l1']:.4f} (noise floor {acc['noise_floor']:.4f}), "
            f"max relative error {acc['max_rel_error']:.3f}, empty cells {acc['empty_cells']}"
        )
    if m.get("classes"):
        typer.echo(f"  classes       {_classes_line(m['classes'], m.get('class_names'))}")
    typer.echo(f"  job           {_job_line(m['job'])}")


@models_app.command()
@friendly
@calls("POST", "/models", bundle="directory")
def register(
    directory: Path = typer.Argument(..., help="bundle directory (config.json, latents.npy...)"),  # noqa: B008
    name: str = typer.Option(None, "--name", help="model name (default: the directory's)"),
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """Upload a bundle directory as a model; the server's worker fits its OT map."""
    archive = pack_bundle(directory)
    chosen = name or sanitise_name(directory.resolve().name)
    with connect(url, api_key) as client:
        m = client.register(chosen, archive)
    typer.echo(f"registered {m['name']}: {m['n_latents']} latents in d={m['dim']}; fit queued")


@models_app.command(name="train")
@friendly
@calls("POST", "/models/{name}/train")
@run_options(api=True)
def train_remote(
    train_options: TrainOptions,
    data_options: DataOptions,
    name: str = NAME,
    dataset: str = typer.Argument(..., help="dataset path relative to the server's data root"),
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """Ask the server to train a model on a dataset under its data root (AEOT_DATA_ROOT)."""
    options = {
        **values_of(data_options, DataOptions, api=True),
        **values_of(train_options, TrainOptions, api=True),
    }
    with connect(url, api_key) as client:
        job = client.train(name, dataset, **options)
    typer.echo(
        f"job {job['id']}: training {name} on {dataset!r} queued; "
        "`aeot models list` shows epoch and loss"
    )


@models_app.command()
@friendly
@calls("POST", "/models/{name}/fit")
def refit(
    name: str = NAME,
    target_l1: float = typer.Option(None, help="stop at this independent L1"),
    seed: int = typer.Option(None, help="fit seed"),
    max_iter: int = typer.Option(None, help="iterations at most"),
    time_budget: float = typer.Option(None, help="seconds at most"),
    method: str = typer.Option(None, help="auto, exact (d = 2, 3), newton or adam"),
    singular_rule: str = typer.Option(
        None, help="auto, gap[:min_regular], quantile[:q], fixed:radians or clusters"
    ),
    replace: bool = typer.Option(False, "--replace", help="cancel an active fit first"),
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """Queue a refit of a model's OT map (the served potential stays until a better one)."""
    options: dict[str, object] = {"target_l1": target_l1, "seed": seed, "max_iter": max_iter}
    options.update(time_budget=time_budget, method=method, singular_rule=singular_rule)
    options.update(replace=replace)
    with connect(url, api_key) as client:
        job = client.refit(name, **{k: v for k, v in options.items() if v is not None})
    typer.echo(f"job {job['id']}: refit of {name} queued (target L1 {job['target_l1']})")


@models_app.command()
@friendly
@calls("DELETE", "/models/{name}")
def delete(
    name: str = NAME,
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """Delete a model, its potentials and checkpoints (or cancel its training)."""
    if not yes and not typer.confirm(f"delete model {name!r} and its potentials?"):
        typer.echo(f"not deleted: {name}")
        return
    with connect(url, api_key) as client:
        cancelled = client.delete(name)
    if cancelled is not None:
        typer.echo(f"{name} was being trained: training job {cancelled['id']} cancelled")
    else:
        typer.echo(f"deleted {name}")
