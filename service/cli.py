"""Command line of the service: ``aeot serve`` (the main command) and its companions.

Commands: serve, worker, train, fit, models (list, show, register, train, refit, delete),
store (rebuild), sample, interpolate, singularities, and ``demo`` (a 2D OT fit with accuracy
and time).

Server-side commands (serve, worker, fit) take every ``AEOT_*`` setting as an option that
overrides the variable; ``train`` trains into a store in the foreground; client commands
(models, sample, interpolate, singularities) talk to a running server over HTTP and need only
the client install (``pip install aeot``), where the server commands say what to install.
Failures print one line saying what to do (``aeot --debug ...`` shows the traceback).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from models.options import DataOptions, TrainOptions
from service.cli_models import API_KEY, URL, models_app
from service.cli_options import run_options, settings_options
from service.cli_store import store_app
from service.cli_support import (
    CliError,
    build_settings,
    calls,
    connect,
    friendly,
    open_existing_store,
    server_command,
    set_debug,
)
from service.cli_train import queue_served_dataset, train
from service.client import AEOTClient

if TYPE_CHECKING:
    from service.settings import Settings

app = typer.Typer(
    help="AE-OT: autoencoder + semi-discrete optimal transport generative model.",
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")
app.add_typer(store_app, name="store")
server_command(app)(train)

MODEL = typer.Option(None, "--model", help="model name (default: the server's default)")
VERSION = typer.Option(
    None, "--version", help="published potential version (default: the one served now)"
)
_SAMPLES_PNG = Path("samples.png")
_DATA_PANEL = "Training (--data)"
_STRIP_PNG = Path("interpolation.png")


@app.callback()
def main(
    debug: bool = typer.Option(
        False, "--debug", envvar="AEOT_DEBUG", help="show tracebacks instead of one-line errors"
    ),
) -> None:
    """AE-OT command line."""
    set_debug(debug)


@server_command(app)
@friendly
@settings_options
@run_options(api=True, panel=_DATA_PANEL)
def serve(
    overrides: dict[str, Any],
    train_options: TrainOptions,
    data_options: DataOptions,
    data: str = typer.Option(
        None,
        "--data",
        help="train a model on this dataset first (IDX directory such as MNIST's, .npy/.npz, "
        "image folder, or mnist / fashion-mnist / digits), then fit and serve it",
        rich_help_panel=_DATA_PANEL,
    ),
    name: str = typer.Option(
        None,
        "--name",
        help="name of the --data model (default: the dataset's)",
        rich_help_panel=_DATA_PANEL,
    ),
) -> None:
    """Serve the API and web page; an empty store trains digits (or --data) and fits it."""
    import uvicorn  # only this command needs the server

    from service.app import create_app
    from service.logs import configure_logging

    if data is not None:
        overrides = queue_served_dataset(
            overrides, data, name=name, train_options=train_options, data_options=data_options
        )
    settings = build_settings(**overrides)
    _check_port(settings.host, settings.port)
    configure_logging(settings.log_level, settings.log_format)
    typer.echo(f"AE-OT service on http://{settings.host}:{settings.port}/ (store {settings.store})")
    if settings.web_workers > 1:
        _serve_processes(settings)
        return
    from service.http_server import server_options

    # A catalogue that cannot be read or rebuilt raises CatalogueLost: exit status 2.
    uvicorn.run(create_app(settings), **server_options(settings))


def _check_port(host: str, port: int) -> None:
    """Refuse in one line a port another process holds, before the banner and the models load.

    Bound and released at once, with the options uvicorn binds with (``SO_REUSEADDR``); a
    host that does not resolve is left for uvicorn to report.
    """
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror:
        return
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(
                    f"port {port} on {host} is in use (another server?): pass --port with a "
                    "free one, or stop the other"
                ) from None
            raise CliError(f"cannot listen on {host} port {port}: {exc.strerror}") from None


def _serve_processes(settings: Settings) -> None:
    """``web_workers`` uvicorn processes on one port, plus this process's one fit worker."""
    import uvicorn

    from service.http_server import server_options
    from service.store import ModelStore
    from service.worker_process import WorkerProcess

    # Opened (checked, rebuilt if need be) once here, before any server process starts: a
    # catalogue that cannot be read or rebuilt stops the command with status 2.
    store = ModelStore(settings.store)

    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    metrics_dir = tempfile.mkdtemp(prefix="aeot-metrics-") if own_dir else None
    env = settings.to_env()
    # The server processes rebuild these settings from the environment; they start no worker.
    env.update(AEOT_STORE=str(settings.store.resolve()), AEOT_WORKER="false")
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ.update(env)
    fit_worker = WorkerProcess(settings, store) if settings.worker else None
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


@server_command(app, name="worker")
@friendly
@settings_options
def worker_cmd(overrides: dict[str, Any]) -> None:
    """Run a fit worker on the store (scale-out; several may share one store)."""
    from service.logs import configure_logging
    from service.ranks import lead_or_follow
    from service.worker import run_worker

    settings = build_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    followed = lead_or_follow(lambda: run_worker(settings))
    if followed is not None:
        typer.echo(f"rank {os.environ.get('RANK')} followed {followed} fit(s)")


@server_command(app, name="fit")
@friendly
@settings_options
def fit_cmd(
    overrides: dict[str, Any], name: str = typer.Argument(..., help="model name in the store")
) -> None:
    """Fit (or refit) a model's OT map in the foreground, with a progress bar.

    Under ``torchrun --nproc-per-node K`` the fit runs over K processes (see docs/solver.md).
    """
    from service.ranks import lead_or_follow

    followed = lead_or_follow(lambda: _fit_foreground(name, overrides))
    if followed is not None:
        typer.echo(f"rank {os.environ.get('RANK')} followed {followed} fit(s)")


def _fit_foreground(name: str, overrides: dict[str, Any]) -> None:
    """The fit command's body: queue a fit, run a worker here until it ends, show progress."""
    from tqdm import tqdm

    from service.job_config import job_config
    from service.worker import Worker

    settings = build_settings(**{**overrides, "embedded_default": False})
    model_store = open_existing_store(settings.store)
    known = [m.name for m in model_store.catalog.models()]
    if name not in known:
        listed = ", ".join(known) if known else "none yet (`aeot train` makes one)"
        raise CliError(f"unknown model {name!r} in {settings.store}; known models: {listed}")
    job = model_store.enqueue_fit(name, job_config(settings), replace=True)
    assert job is not None
    worker = Worker(model_store, settings)
    thread = threading.Thread(target=worker.run, kwargs={"idle_exit": True}, daemon=True)
    thread.start()
    with tqdm(desc=f"fit {name}", unit="it") as bar:
        while thread.is_alive():
            thread.join(0.5)
            current = model_store.queue.job(job.id)
            if current is not None:
                bar.update(current.iteration - bar.n)
                acc = current.accuracy
                bar.set_postfix(l1=f"{acc.l1:.4f}" if acc else "-", status=current.status)
    final = model_store.queue.job(job.id)
    potential = model_store.catalog.potential(name)
    typer.echo(
        f"job {job.id}: {final.status if final else '?'} ({final.reason if final else ''})"
        f"; published version {potential.version if potential else 0}"
    )


@app.command()
@friendly
@calls("GET", "/sample", format="out", extended="pure")
def sample(
    out: Path = typer.Argument(  # noqa: B008
        _SAMPLES_PNG, help="PNG grid, or latents as .npy (needs numpy) or .json"
    ),
    n: int = typer.Option(64, help="number of samples"),
    seed: int = typer.Option(0, help="seed: same seed, same samples"),
    offset: int = typer.Option(
        0, help="index of the first sample in the seed's stream (samples OFFSET .. OFFSET + N - 1)"
    ),
    pure: bool = typer.Option(False, "--pure", help="pure map T instead of the extended map"),
    label: int = typer.Option(
        None, help="only this class (its cells; `aeot models show` lists the classes)"
    ),
    version: int = VERSION,
    model: str = MODEL,
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """Draw samples from a running server and save them as a PNG grid or .npy/.json latents.

    A PNG is saved as the server sent it. Latents beyond the server's limit come in pages,
    joined into the samples one request for all of them would give.
    """
    options: dict[str, Any] = {"extended": not pure, "model": model, "version": version}
    options.update(label=label, offset=offset)
    with connect(url, api_key) as client:
        if out.suffix == ".npy":
            latents = client.sample(n, seed, **options)
            import numpy as np  # the client has just needed it

            np.save(out, latents)
        elif out.suffix == ".json":
            pages = list(client.iter_samples_json(n, seed, **options))
            rows = [row for page in pages for row in page["latents"]]
            out.write_text(json.dumps({**pages[0], "latents": rows}))
        else:
            out.write_bytes(client.fetch(AEOTClient.sample_images, n, seed, **options).content)
    typer.echo(f"wrote {out}")


def _endpoint(text: str | None, which: str) -> int | list[float] | None:
    """``"7"`` -> 7 (a training index); ``"0.1,-0.4"`` -> ``[0.1, -0.4]`` (a source point)."""
    if text is None:
        return None
    with suppress(ValueError):
        return int(text)
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise CliError(
            f"{which} must be a training index (7) or a source point (0.1,-0.4), got {text!r}"
        ) from None


@app.command()
@friendly
@calls("POST", "/interpolate", start_index="start", end_index="end", format="out", images="out")
def interpolate(
    start: str = typer.Argument(
        None,
        metavar="START",
        help="first endpoint: a training index (7) or a source point (0.1,0.4; after `--` when "
        "it starts with a minus); none with --label",
    ),
    end: str = typer.Argument(None, metavar="END", help="last endpoint, like START"),
    out: Path = typer.Option(_STRIP_PNG, help="PNG strip"),  # noqa: B008
    steps: int = typer.Option(16, help="frames, evenly spaced"),
    label: int = typer.Option(
        None, help="join two cells of this class instead (`aeot models show` lists them)"
    ),
    seed: int = typer.Option(None, help="with --label: chooses the two cells"),
    version: int = VERSION,
    model: str = MODEL,
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """Interpolate between two endpoints; save the strip and list singular crossings."""
    first, last = _endpoint(start, "START"), _endpoint(end, "END")
    if label is None and (first is None or last is None):
        raise CliError("give START and END (training indices or source points), or --label")
    if label is not None and (first is not None or last is not None):
        raise CliError("--label picks both endpoints: give no START or END")
    if type(first) is not type(last):
        raise CliError("START and END must both be training indices or both source points")
    options: dict[str, Any] = {"model": model, "version": version, "label": label, "seed": seed}
    with connect(url, api_key) as client:
        answer = client.fetch(AEOTClient.interpolate, first, last, steps, **options).json()
    if answer.get("strip_png"):
        out.write_bytes(base64.b64decode(answer["strip_png"]))
    unit = answer.get("unit", "rad")
    crossings = answer["crossings"]
    for c in crossings:
        typer.echo(
            f"crossing at t={c['t']:.3f}: cell {c['from_cell']} -> {c['to_cell']}"
            f" (score {c['angle']:.3f} {unit})"
        )
    typer.echo(f"wrote {out} ({len(answer['t'])} frames, {len(crossings)} crossings)")


@app.command()
@friendly
@calls("GET", "/singularities", format="png", images="pair_images")
def singularities(
    limit: int = typer.Option(10, help="pairs to list"),
    png: Path = typer.Option(None, help="save the singular-set picture"),  # noqa: B008
    pair_images: Path = typer.Option(  # noqa: B008
        None, help="save each listed pair's two decoded codes as DIR/pair-I-J.png"
    ),
    version: int = VERSION,
    model: str = MODEL,
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """Print the singular set summary of a running server's model."""
    with connect(url, api_key) as client:
        s = client.singularities(
            model=model, limit=limit, version=version, images=pair_images is not None
        )
        if png is not None:
            picture = client.fetch(AEOTClient.singularities_image, model=model, version=version)
            png.write_bytes(picture.content)
    unit = s.get("unit", "rad")
    value = s["threshold"]
    threshold = "no threshold" if value is None else f"threshold {value:.4f} {unit}"
    typer.echo(
        f"model {s['model']} v{s['version']}: {threshold} ({s['rule']} rule, "
        f"{s['frame']} frame), {s['n_singular']} of {s['n_pairs']} adjacent pairs singular"
    )
    if s["pairs"]:
        typer.echo(f"  {'cell i':>6} {'cell j':>6}  score ({unit})")
    for p in s["pairs"]:
        typer.echo(f"  {p['i']:6d} {p['j']:6d}  {p['angle']:.4f}")
    if pair_images is not None:
        pair_images.mkdir(parents=True, exist_ok=True)
        for p in s["pairs"]:
            (pair_images / f"pair-{p['i']}-{p['j']}.png").write_bytes(
                base64.b64decode(p["pair_png"])
            )
        typer.echo(f"wrote {len(s['pairs'])} pair pictures to {pair_images}")


@server_command(app)
@friendly
def demo(
    samples: int = typer.Option(512, help="points drawn from the 25-Gaussian grid"),
    target_l1: float = typer.Option(0.02, help="stop at this L1 error (exact in 2D)"),
    seed: int = typer.Option(0, help="seed of the data and of the fit"),
) -> None:
    """Fit the OT map onto the 25-Gaussian grid of the paper's Table 2 and print accuracy/time."""
    import numpy as np
    from tqdm import tqdm

    from solver import FitConfig, FitProgress, fit, make_problem

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
    if acc is None:
        summary = "no independent check"
    elif acc.n_samples == 0:  # exact geometry (2D, 3D): no sampling noise
        summary = (
            f"exact L1 {acc.l1:.2e}, max relative error {acc.max_rel_error:.2e}, "
            f"empty cells {acc.empty_cells}"
        )
    else:
        summary = (
            f"L1 {acc.l1:.4f} (noise floor {acc.noise_floor:.4f}, {acc.n_samples} independent "
            f"samples), max relative error {acc.max_rel_error:.3f}, empty cells {acc.empty_cells}"
        )
    typer.echo(
        f"{result.reason}: {summary}, {result.iterations} iterations, "
        f"{time.perf_counter() - start:.1f} s on backend {result.backend}"
    )


if __name__ == "__main__":
    app()
