"""The FastAPI app factory: wires settings, store, serving index, metrics and the worker.

Nothing is created at import time: ``create_app(settings)`` builds everything, and tests
inject a store in a temporary directory (and a serving index or worker flag) as they need.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from models.runtime import cpu_threads
from service.deps import upload_limits
from service.errors import install_error_handlers
from service.job_config import job_config
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import BodyLimit, LatencyMetrics
from service.openapi import set_limits
from service.routes import generate, system
from service.routes import models as model_routes
from service.routes.docs import install_docs
from service.security import KeyThrottle, RequestGate
from service.serving_index import Poller, ServingIndex
from service.settings import Settings
from service.store import ModelStore
from service.worker_process import WorkerProcess

log = logging.getLogger("aeot.server")

API_DESCRIPTION = """AE-OT generative model service: samples, interpolations and the singular
set of a semi-discrete optimal transport map in an autoencoder's latent space. Read endpoints
are open (unless configured otherwise); mutating ones need the `X-API-Key` header (in the
Swagger UI at `/docs`: **Authorize**, then type the key).

Every generation answer names the potential version it came from (`X-Potential-Version`); the
same version and seed give the same bytes, and `version=` pins a published version."""

OPENAPI_TAGS = [
    {"name": "generate", "description": "samples, interpolations and the singular set"},
    {"name": "autoencoder", "description": "encode, decode and reconstruct images"},
    {"name": "models", "description": "list, register, refit and delete models"},
    {"name": "system", "description": "liveness and readiness"},
]


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
    store = store or ModelStore(settings.store, limits=upload_limits(settings))
    metrics = Metrics(store)
    serving = serving or ServingIndex(store, settings, on_swap=metrics.on_swap)
    if serving.on_swap is None:
        serving.on_swap = metrics.on_swap
    if serving.on_damaged is None:
        serving.on_damaged = lambda name, version: queue_refit(store, settings, name, version)
    run_worker = settings.worker if start_worker is None else start_worker
    worker_lock = threading.Lock()

    def start_fit_worker() -> None:
        """Start the supervised worker, unless one runs or none is wanted.

        Not on a read-only store: the store's watch starts it once it takes writes again.
        """
        with worker_lock:
            if app.state.worker is not None or not run_worker or store.read_only:
                return
            worker = WorkerProcess(settings, store)
            app.state.worker = worker
            metrics.watch_worker(worker)
            worker.start()

    def watch_store() -> None:
        """The poller's store checks: writable again (start the worker), catalogue health."""
        if store.refresh_mode() and not store.read_only:
            start_fit_worker()
        store.heal_if_due()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_worker and store.read_only:
            log.warning("store %s is read-only: serving only, no fit worker", settings.store)
        metrics.watch_worker(None)
        start_fit_worker()
        poller = Poller(serving, settings.poll_interval, [watch_store]) if poll else None
        if poller is not None:
            # Serve what is published from the first request on (the poller's own first
            # refresh raced the first requests); a failed load only logs, as in the poller.
            try:
                await asyncio.to_thread(serving.refresh)
            except Exception:  # keep starting; the poller retries
                log.exception("first catalogue load failed")
            poller.start()
        try:
            # Torch's count is process-wide (it also sizes FAISS's OpenMP team); the BLAS caps
            # reach the request threads started after this point. Both restored after.
            with cpu_threads(settings.request_threads):
                yield
        finally:
            if poller is not None:
                poller.stop()
            with worker_lock:
                worker, app.state.worker = app.state.worker, None
            if worker is not None:
                worker.stop()

    app = FastAPI(
        title="AE-OT service",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_tags=OPENAPI_TAGS,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.serving = serving
    app.state.metrics = metrics
    app.state.worker = None  # the supervised worker while the lifespan runs (run_worker)
    install_error_handlers(app)
    routers = (system.router, generate.router, generate.autoencoder, model_routes.router)
    for router in routers:
        app.include_router(router)
    # The API routes as declared (paths and dependencies): the gate and the schema read them.
    api_routes = [route for router in routers for route in router.routes]
    app.state.api_routes = api_routes
    install_docs(app)
    static = resources.files("service").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.state.throttle = KeyThrottle(settings.auth_max_failures, settings.auth_window)
    set_limits(app, settings, api_routes)
    app.add_middleware(LatencyMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    # Outermost: host and key are judged on the request head, before any body is read.
    app.add_middleware(
        RequestGate, settings=settings, routes=api_routes, throttle=app.state.throttle
    )
    return app


def queue_refit(store: ModelStore, settings: Settings, name: str, version: int) -> None:
    """Queue a refit of ``name`` to replace its damaged ``version`` (none if one is active).

    The refit runs with the configuration of the job that fitted the damaged version (its
    target, seed and method), so a deterministic fit reproduces it; with the server's
    settings when that job is no longer known. Nothing on a read-only store (the worker
    queues the repair once the store takes writes again).
    """
    if store.read_only:
        return
    record = store.catalog.potential(name, version)
    job = (
        store.queue.job(record.job_id) if record is not None and record.job_id is not None else None
    )
    config = job.config if job is not None and job.kind == "fit" else job_config(settings)
    if store.enqueue_fit(name, config) is not None:
        log.warning("model %s: refit queued to replace damaged potential v%d", name, version)


def app_from_env() -> FastAPI:
    """App factory for each server process of ``aeot serve`` with ``AEOT_WEB_WORKERS`` > 1.

    Settings and logging come from the ``AEOT_*`` variables the command exported; the command
    runs the one fit worker itself, so these apps start none.
    """
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
