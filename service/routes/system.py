"""Operational endpoints: liveness, readiness, Prometheus metrics and the web page."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.catalog import ACTIVE
from service.deps import (
    MetricsDep,
    ServingDep,
    SettingsDep,
    StoreDep,
    WorkerDep,
    default_model,
)
from service.errors import redact
from service.process import WorkerState
from service.schemas import HealthResponse, ReadyResponse
from service.store import ModelStore

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

    The body also reports the supervised worker: a dead worker does not stop serving, so it
    does not make the server unready, but its state and last exit are shown here.
    """
    name = default_model(settings, store)
    served = serving.current(name) if name else None
    version = served.version if served else None
    reason = _reason(name, version, store, worker, serving.problem(name) if name else None)
    reason = reason and redact(reason, store.root)  # no absolute store path to clients
    body = ReadyResponse.model_validate(
        {
            "ready": version is not None,
            "default_model": name,
            "version": version,
            "reason": reason,
            "worker": worker,
        }
    )
    headers = None if body.ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503, headers=headers)


def _reason(
    name: str | None,
    version: int | None,
    store: ModelStore,
    worker: WorkerState | None,
    problem: str | None,
) -> str | None:
    """Why the server is not ready, and what is degraded (``None``: all is well)."""
    parts = []
    if name is not None and problem is not None:
        parts.append(f"model {name!r}: {problem}")
    if name is None:
        training = [j for j in store.jobs(limit=20) if j.kind == "train" and j.status in ACTIVE]
        parts.append(
            f"no model registered yet; the default model is training (job {training[0].id})"
            if training
            else "no model registered yet; upload one (POST /models)"
        )
    elif version is None and problem is None:
        job = store.active_job(name)
        state = f"fit job {job.id} {job.status}" if job else "no fit job"
        parts.append(f"model {name!r} has no fitted potential yet ({state})")
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
