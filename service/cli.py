"""Command line of the service: ``aeot serve`` (the main command) and its companions.

Commands: serve, worker, train, fit, sample, interpolate, singularities, and ``demo`` (a 2D
OT fit with accuracy and time).

Server-side commands (serve, worker, train, fit) read the ``AEOT_*`` settings, with options
overriding them; client commands (sample, interpolate, singularities) talk to a running server.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from tqdm import tqdm

from service.client import AEOTClient
from service.settings import Settings

app = typer.Typer(help="AE-OT: autoencoder + semi-discrete optimal transport generative model.")

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="AEOT_URL", help="server URL")
MODEL = typer.Option(None, "--model", help="model name (default: the server's default)")
_SAMPLES_PNG = Path("samples.png")
_STRIP_PNG = Path("interpolation.png")
STORE = typer.Option(None, "--store", help="store directory (default: AEOT_STORE or ./store)")


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.callback()
def main() -> None:
    """AE-OT command line."""


@app.command()
def serve(
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 8000)"),
    store: Path = STORE,
    worker: bool = typer.Option(None, "--worker/--no-worker", help="run the fit worker"),
    web_workers: int = typer.Option(None, "--web-workers", help="server processes (default 1)"),
) -> None:
    """Serve the API and web page; with an empty store, train the digits model and fit it."""
    import uvicorn  # noqa: PLC0415 - only this command needs the server

    from service.app import create_app  # noqa: PLC0415
    from service.logs import configure_logging  # noqa: PLC0415

    settings = _settings(host=host, port=port, store=store, worker=worker, web_workers=web_workers)
    configure_logging(settings.log_level, settings.log_format)
    typer.echo(f"AE-OT service on http://{settings.host}:{settings.port}/ (store {settings.store})")
    if settings.web_workers > 1:
        _serve_processes(settings)
        return
    from service.server import server_options  # noqa: PLC0415
    from service.store import CatalogueLost  # noqa: PLC0415

    try:
        app_ = create_app(settings)
    except CatalogueLost as exc:  # never start over a store whose catalogue is gone
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(app_, **server_options(settings))


def _serve_processes(settings: Settings) -> None:
    """``web_workers`` uvicorn processes on one port, plus this process's one fit worker."""
    import uvicorn  # noqa: PLC0415

    from service.process import WorkerProcess  # noqa: PLC0415
    from service.server import server_options  # noqa: PLC0415

    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    metrics_dir = tempfile.mkdtemp(prefix="aeot-metrics-") if own_dir else None
    env = settings.to_env()
    # The server processes rebuild these settings from the environment; they start no worker.
    env.update(AEOT_STORE=str(settings.store.resolve()), AEOT_WORKER="false")
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ.update(env)
    fit_worker = WorkerProcess(settings) if settings.worker else None
    try:
        if fit_worker is not None:
            fit_worker.start()
        uvicorn.run(
            "service.app:app_from_env",
            factory=True,
            workers=settings.web_workers,
            **server_options(settings),
            # A process imports torch and the solver before it answers the supervisor's
            # health check, which takes longer than uvicorn's 5 s on a busy 2-core machine.
            timeout_worker_healthcheck=60,
        )
    finally:
        if fit_worker is not None:
            fit_worker.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command(name="worker")
def worker_cmd(store: Path = STORE) -> None:
    """Run a fit worker on the store (scale-out; several may share one store)."""
    from service.logs import configure_logging  # noqa: PLC0415
    from service.ranks import lead_or_follow  # noqa: PLC0415
    from service.worker import run_worker  # noqa: PLC0415

    settings = _settings(store=store)
    configure_logging(settings.log_level, settings.log_format)
    followed = lead_or_follow(lambda: run_worker(settings))
    if followed is not None:
        typer.echo(f"rank {os.environ.get('RANK')} followed {followed} fit(s)")


@app.command()
def train(
    name: str = typer.Option("digits", help="model name"),
    seed: int = typer.Option(0, help="training seed"),
    store: Path = STORE,
) -> None:
    """Train the default autoencoder on scikit-learn digits into the store (fit is queued)."""
    from service.store import ModelStore  # noqa: PLC0415
    from service.worker import train_into_store  # noqa: PLC0415

    settings = _settings(store=store)
    with tqdm(total=1, desc=f"training {name}", bar_format="{desc}: {elapsed}") as bar:
        record = train_into_store(ModelStore(settings.store), name, seed)
        bar.update(1)
    typer.echo(f"model {record.name}: {record.n_latents} latents in d={record.dim}")


@app.command(name="fit")
def fit_cmd(
    name: str = typer.Argument(..., help="model name in the store"),
    target_l1: float = typer.Option(None, help="stop at this independent L1"),
    store: Path = STORE,
) -> None:
    """Fit (or refit) a model's OT map in the foreground, with a progress bar.

    Under ``torchrun --nproc-per-node K`` the fit runs over K processes (see docs/solver.md).
    """
    from service.ranks import lead_or_follow  # noqa: PLC0415

    followed = lead_or_follow(lambda: _fit_foreground(name, target_l1, store))
    if followed is not None:
        typer.echo(f"rank {os.environ.get('RANK')} followed {followed} fit(s)")


def _fit_foreground(name: str, target_l1: float | None, store: Path | None) -> None:
    from service.job_config import job_config  # noqa: PLC0415
    from service.store import ModelStore  # noqa: PLC0415
    from service.worker import Worker  # noqa: PLC0415

    settings = _settings(store=store, target_l1=target_l1, embedded_default=False)
    model_store = ModelStore(settings.store)
    job = model_store.enqueue_fit(name, job_config(settings), replace=True)
    assert job is not None
    worker = Worker(model_store, settings)
    thread = threading.Thread(target=worker.run, kwargs={"idle_exit": True}, daemon=True)
    thread.start()
    with tqdm(desc=f"fit {name}", unit="it") as bar:
        while thread.is_alive():
            thread.join(0.5)
            current = model_store.job(job.id)
            if current is not None:
                bar.update(current.iteration - bar.n)
                acc = current.accuracy
                bar.set_postfix(l1=f"{acc.l1:.4f}" if acc else "-", status=current.status)
    final = model_store.job(job.id)
    potential = model_store.potential_record(name)
    typer.echo(
        f"job {job.id}: {final.status if final else '?'} ({final.reason if final else ''})"
        f"; published version {potential.version if potential else 0}"
    )


@app.command()
def sample(
    out: Path = typer.Argument(_SAMPLES_PNG, help="PNG (or .npy for latents)"),  # noqa: B008
    n: int = typer.Option(64, help="number of samples"),
    seed: int = typer.Option(0),
    pure: bool = typer.Option(False, "--pure", help="pure map T instead of the extended map"),
    model: str = MODEL,
    url: str = URL,
) -> None:
    """Draw samples from a running server and save them as a PNG grid or .npy latents."""
    with AEOTClient(url) as client:
        if out.suffix == ".npy":
            np.save(out, client.sample(n, seed, extended=not pure, model=model))
        else:
            client.sample_images(n, seed, extended=not pure, model=model).save(out)
    typer.echo(f"wrote {out}")


@app.command()
def interpolate(
    start: int = typer.Argument(..., help="training index of the first code"),
    end: int = typer.Argument(..., help="training index of the last code"),
    out: Path = typer.Option(_STRIP_PNG, help="PNG strip"),  # noqa: B008
    steps: int = typer.Option(16),
    model: str = MODEL,
    url: str = URL,
) -> None:
    """Interpolate between two training codes; save the strip and list singular crossings."""
    with AEOTClient(url) as client:
        result = client.interpolate(start, end, steps, model=model, images=True)
    if result.strip is not None:
        result.strip.save(out)
    for c in result.crossings:
        typer.echo(
            f"crossing at t={c['t']:.3f}: cell {c['from_cell']} -> {c['to_cell']}"
            f" (angle {c['angle']:.3f} rad)"
        )
    typer.echo(f"wrote {out} ({len(result.t)} frames, {len(result.crossings)} crossings)")


@app.command()
def singularities(
    limit: int = typer.Option(10, help="pairs to list"),
    png: Path = typer.Option(None, help="save the power diagram (2D models)"),  # noqa: B008
    model: str = MODEL,
    url: str = URL,
) -> None:
    """Print the singular set summary of a running server's model."""
    with AEOTClient(url) as client:
        s = client.singularities(model=model, limit=limit)
        if png is not None:
            client.singularities_image(model=model).save(png)
    typer.echo(
        f"model {s['model']} v{s['version']}: threshold {s['threshold']:.4f} rad "
        f"({s['rule']}), {s['n_singular']} of {s['n_pairs']} adjacent pairs singular"
    )
    for p in s["pairs"]:
        typer.echo(f"  {p['i']:6d} {p['j']:6d}  {p['angle']:.4f}")


@app.command()
def demo(
    samples: int = typer.Option(512, help="points drawn from the 25-Gaussian grid"),
    target_l1: float = typer.Option(0.02, help="stop at this L1 error (independent sample)"),
    seed: int = typer.Option(0, help="seed of the data and of the fit"),
) -> None:
    """Fit the OT map onto the 25-Gaussian grid of the paper's Table 2 and print accuracy/time."""
    from solver import FitConfig, FitProgress, fit, make_problem  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    means = np.array([(-4 + 2 * i, -4 + 2 * j) for i in range(5) for j in range(5)], float)
    points = means[rng.integers(0, 25, samples)] + 0.05 * rng.standard_normal((samples, 2))
    start = time.perf_counter()
    with tqdm(desc="fit", unit="it") as bar:

        def progress(p: FitProgress) -> None:
            bar.update(1)
            bar.set_postfix(samples=p.record.n_samples, l1_fit=f"{p.record.train_l1:.4f}")

        result = fit(
            make_problem(points), FitConfig(target_l1=target_l1, seed=seed), callback=progress
        )
    acc = result.accuracy
    summary = (
        f"L1 {acc.l1:.4f} (noise floor {acc.noise_floor:.4f}, {acc.n_samples} independent "
        f"samples), max relative error {acc.max_rel_error:.3f}, empty cells {acc.empty_cells}"
        if acc
        else "no independent check"
    )
    typer.echo(
        f"{result.reason}: {summary}, {result.iterations} iterations, "
        f"{time.perf_counter() - start:.1f} s on backend {result.backend}"
    )


if __name__ == "__main__":
    app()
