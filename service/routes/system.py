"""Operational endpoints: liveness, readiness, Prometheus metrics and the web page."""

from __future__ import annotations

import time
from contextlib import suppress
from importlib import resources

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep, ServingDep, SettingsDep, StoreDep, WorkerDep
from service.errors import redact
from service.jobs import ACTIVE
from service.schemas import HealthResponse, ReadyResponse, StoreOut
from service.serving_index import CATALOGUE_ERRORS, ServingIndex
from service.store import ModelStore
from service.worker_process import WorkerState

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=HealthResponse)
def healthz() -> HealthResponse:
    """Answer while the process is alive."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
def readyz(
    settings: SettingsDep, store: StoreDep, serving: ServingDep, worker: WorkerDep
) -> JSONResponse:
    """Ready (200) once the default model serves a published potential, else 503.

    The body also reports the supervised worker and the store: a dead worker or a damaged
    catalogue does not stop serving what is loaded, so neither makes the server unready, but
    both are said here (``reason``, ``worker``, ``store``).
    """
    served = None
    name = serving.default_model()
    if name is not None:
        served = serving.current(name)
        name = serving.default_model()  # the current() above may have read the catalogue
    version = served.version if served else None
    state = store_state(store, serving)
    reason = _reason(name, version, store, worker, serving.problem(name) if name else None, state)
    reason = reason and redact(reason, store.root)  # no absolute store path to clients
    body = ReadyResponse.model_validate(
        {
            "ready": version is not None,
            "default_model": name,
            "version": version,
            "reason": reason,
            "worker": worker,
            "store": state,
        }
    )
    headers = None if body.ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503, headers=headers)


def store_state(store: ModelStore, serving: ServingIndex) -> StoreOut:
    """The store's health as ``/readyz`` reports it."""
    problem = store.catalogue_problem
    if problem is None and serving.catalogue_error is not None:
        serving.try_refresh()  # the failed read may be past (rebuilt since): read again
    if problem is None and serving.catalogue_error is not None:
        problem = f"the catalogue cannot be read ({serving.catalogue_error})"
    rebuilt = store.rebuilt()
    when = None
    if rebuilt is not None:
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(rebuilt["at"])))
        when = f"{at}: the catalogue was {rebuilt['why']}; job history before it is lost"
    if problem is not None:
        return StoreOut(status="degraded", problem=redact(problem, store.root), rebuilt=when)
    if store.read_only:
        return StoreOut(status="read-only", problem="the store is read-only", rebuilt=when)
    return StoreOut(status="ok", rebuilt=when)


def _reason(
    name: str | None,
    version: int | None,
    store: ModelStore,
    worker: WorkerState | None,
    problem: str | None,
    state: StoreOut,
) -> str | None:
    """Why the server is not ready, and what is degraded (``None``: all is well)."""
    parts = []
    if name is not None and problem is not None:
        parts.append(f"model {name!r}: {problem}")
    if state.status == "degraded":
        parts.append(
            f"{state.problem}: serving what is loaded while it is rebuilt from the model "
            "directories"
        )
    with suppress(*CATALOGUE_ERRORS):  # said above
        if name is None:
            training = [
                j for j in store.queue.jobs(limit=20) if j.kind == "train" and j.status in ACTIVE
            ]
            parts.append(
                f"no model registered yet; the default model is training (job {training[0].id})"
                if training
                else "no model registered yet; upload one (POST /models)"
            )
        elif version is None and problem is None:
            job = store.queue.latest(name)
            what = f"fit job {job.id} {job.status}" if job else "no fit job"
            parts.append(f"model {name!r} has no fitted potential yet ({what})")
    if store.read_only:
        parts.append("the store is read-only: serving only, no fits, writes answer 507")
    if worker is not None and worker.status == "restarting":
        parts.append(f"fit worker died ({worker.last_exit}); restarting")
    return "; ".join(parts) or None


@router.get("/metrics", include_in_schema=False)
def metrics(m: MetricsDep) -> Response:
    """Prometheus text exposition."""
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
def index() -> HTMLResponse:
    """Serve the web page (static HTML + JS from ``service/static``)."""
    page = resources.files("service").joinpath("static/index.html").read_text()
    return HTMLResponse(page)
