"""The FastAPI app factory: wires settings, store, serving index, metrics and the worker.

Nothing is created at import time: ``create_app(settings)`` builds everything, and tests
inject a store in a temporary directory (and a serving index or worker flag) as they need.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from models.runtime import torch_threads
from service.errors import install_error_handlers
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import BodyLimit, LatencyMetrics
from service.process import WorkerProcess
from service.routes import catalogue, generate, system
from service.serving import Poller, ServingIndex
from service.settings import Settings
from service.store import ModelStore

API_DESCRIPTION = """AE-OT generative model service: samples, interpolations and the singular
set of a semi-discrete optimal transport map in an autoencoder's latent space. Read endpoints
are open (unless configured otherwise); mutating ones need the `X-API-Key` header."""


def create_app(
    settings: Settings | None = None,
    *,
    store: ModelStore | None = None,
    serving: ServingIndex | None = None,
    start_worker: bool | None = None,
    poll: bool = True,
) -> FastAPI:
    """Build the app.

    Args:
        settings: configuration (default: from ``AEOT_*`` environment variables).
        store: the model store (default: ``settings.store``).
        serving: the serving index (default: one over ``store``).
        start_worker: run the worker as a child process while the app runs
            (default: ``settings.worker``).
        poll: refresh the serving index in a background thread while the app runs (requests
            also refresh it when a poll is due, so apps without lifespan still swap).

    """
    settings = settings or Settings()
    store = store or ModelStore(settings.store)
    metrics = Metrics(store)
    serving = serving or ServingIndex(store, settings, on_swap=metrics.on_swap)
    if serving.on_swap is None:
        serving.on_swap = metrics.on_swap
    run_worker = settings.worker if start_worker is None else start_worker

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker = WorkerProcess(settings) if run_worker else None
        poller = Poller(serving, settings.poll_interval) if poll else None
        if worker is not None:
            worker.start()
        if poller is not None:
            poller.start()
        try:
            # Process-wide (torch's count also sizes the OpenMP team FAISS uses); restored after.
            with torch_threads(settings.request_threads):
                yield
        finally:
            if poller is not None:
                poller.stop()
            if worker is not None:
                worker.stop()

    app = FastAPI(
        title="AE-OT service", version="0.1.0", description=API_DESCRIPTION, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.store = store
    app.state.serving = serving
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(system.router)
    app.include_router(generate.router)
    app.include_router(catalogue.router)
    static = resources.files("service").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_middleware(LatencyMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def app_from_env() -> FastAPI:
    """App factory for each server process of ``aeot serve`` with ``AEOT_WEB_WORKERS`` > 1.

    Settings and logging come from the ``AEOT_*`` variables the command exported; the command
    runs the one fit worker itself, so these apps start none.
    """
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
