"""Model endpoints: list and status (open), register / train / refit / delete (API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from models import TrainPlan
from models.options import DataOptions, TrainOptions, pick
from service.bodies import JSONRoute
from service.deps import (
    KeyRequired,
    ReadAccess,
    ServingDep,
    SettingsDep,
    StoreDep,
    WorkerDep,
    upload_limits,
)
from service.errors import Conflict, error_responses, redact_model
from service.job_config import job_config
from service.schemas import FitRequest, JobOut, ModelListResponse, ModelStatus, TrainRequest
from service.serving_index import CATALOGUE_ERRORS, ServingIndex
from service.store import NAME_PATTERN, ModelStore
from service.training import api_dataset, queue_training
from solver import parse_rule, resolve_method

router = APIRouter(prefix="/models", tags=["models"], route_class=JSONRoute)

NamePath = Annotated[str, Path(pattern=NAME_PATTERN, description="model name", examples=["digits"])]


def _status(name: str, store: ModelStore, serving: ServingIndex) -> ModelStatus:
    """A model's status from the catalogue, or from what is loaded while it cannot be read.

    Messages of damaged files name them inside ``<store>``.
    """
    served = serving.served(name)
    try:
        model = store.model(name)
        potential = store.catalog.potential(name)
        accuracy = potential.accuracy if potential else None
        job = store.queue.latest(name)
        problem = serving.problem(name)
    except CATALOGUE_ERRORS as exc:
        known = {m.name: m for m in serving.models()}
        if name not in known:
            raise
        model, accuracy, job = known[name], served.accuracy if served else None, None
        unreadable = store.catalogue_problem or f"the catalogue cannot be read ({exc})"
        problem = serving.problem(name) or f"{unreadable}; fit progress unknown"
    version = served.version if served is not None else None
    status = {
        **vars(model),
        "default": serving.default_model() == name,
        "served_version": version,
        "ready": version is not None,
        "accuracy": accuracy,
        "job": job,
        "problem": problem,
    }
    if served is not None:
        names = served.bundle.config.class_names
        status.update(
            served_accuracy=served.accuracy,
            classes=served.classes,
            class_names=None if names is None else [names[c] for c in served.classes],
            image_shape=list(served.bundle.config.image_shape),
        )
    return redact_model(ModelStatus.model_validate(status), store.root)


@router.get(
    "",
    response_model=ModelListResponse,
    dependencies=[ReadAccess],
    responses=error_responses(401, 403, 422, 503),
)
def list_models(store: StoreDep, serving: ServingDep, worker: WorkerDep) -> ModelListResponse:
    """Every model with its published potential and fit progress, and the worker's state.

    While the catalogue cannot be read (it is rebuilt from the model directories), the
    models the server has loaded are listed, without jobs.
    """
    serving.poll_if_due()
    try:
        names = [m.name for m in store.catalog.models()]
        active = [j for j in store.queue.jobs(limit=50) if j.status in ("queued", "running")]
    except CATALOGUE_ERRORS:
        names, active = [m.name for m in serving.models()], []
    body = ModelListResponse.model_validate(
        {
            "default_model": serving.default_model(),
            "models": [_status(name, store, serving) for name in names],
            "jobs": active,
            "worker": worker,
        }
    )
    return redact_model(body, store.root)


@router.get(
    "/{name}",
    response_model=ModelStatus,
    dependencies=[ReadAccess],
    responses=error_responses(401, 403, 404, 422, 503),
)
def model_status(name: NamePath, store: StoreDep, serving: ServingDep) -> ModelStatus:
    """One model's status: published version, accuracy, fit progress (iteration, L1, ETA)."""
    serving.poll_if_due()
    return _status(name, store, serving)


@router.post(
    "",
    response_model=ModelStatus,
    status_code=201,
    dependencies=[KeyRequired],
    responses=error_responses(401, 403, 409, 413, 422),
)
async def register_model(
    name: Annotated[
        str,
        Form(
            pattern=NAME_PATTERN,
            description="name of the new model (lowercase letters, digits, _ -)",
            examples=["mnist"],
        ),
    ],
    bundle: Annotated[
        UploadFile,
        File(
            description="bundle directory (config.json, encoder/decoder safetensors, "
            "latents.npy, optional labels.npy) as .tar, .tar.gz or .zip"
        ),
    ],
    settings: SettingsDep,
    store: StoreDep,
    serving: ServingDep,
) -> ModelStatus:
    """Upload a model bundle archive; its OT fit is queued for the worker."""
    data = await bundle.read()
    limits = upload_limits(settings)
    await run_in_threadpool(store.register_archive, name, data, job_config(settings), limits)
    return await run_in_threadpool(_status, name, store, serving)


@router.post(
    "/{name}/fit",
    response_model=JobOut,
    status_code=202,
    dependencies=[KeyRequired],
    responses=error_responses(401, 403, 404, 409, 413, 422),
)
def start_fit(name: NamePath, req: FitRequest, settings: SettingsDep, store: StoreDep) -> JobOut:
    """Queue a refit of the model (409 when a fit is active, unless ``replace``).

    422 when the method does not suit the model's latent dimension or the rule is unreadable.
    """
    if req.method is not None:
        resolve_method(req.method, store.model(name).dim)  # exact needs d = 2 or 3
    rule = None if req.singular_rule is None else parse_rule(req.singular_rule)
    config = job_config(
        settings,
        rule=rule,
        method=req.method,
        target_l1=req.target_l1,
        seed=req.seed,
        max_iter=req.max_iter,
        time_budget=req.time_budget,
    )
    job = store.enqueue_fit(name, config, replace=req.replace)
    if job is None:
        raise Conflict(f"model {name!r} already has an active job; pass replace=true")
    return JobOut.model_validate(job)


@router.post(
    "/{name}/train",
    response_model=JobOut,
    status_code=202,
    dependencies=[KeyRequired],
    responses=error_responses(401, 403, 409, 413, 422),
)
def start_training(
    name: NamePath, req: TrainRequest, settings: SettingsDep, store: StoreDep
) -> JobOut:
    """Queue the training of model ``name`` on a dataset under the data root; then its fit.

    The worker trains (epoch and loss in ``/models``), registers the bundle and fits its OT
    map. 403 when the server has no data root, 409 when the name is taken or being trained.
    """
    values = req.model_dump()
    data = api_dataset(settings.data_root, req.dataset, DataOptions(**pick(DataOptions, values)))
    plan = TrainPlan(data=data, **pick(TrainOptions, values), device=settings.device)
    job = queue_training(store, name, plan, job_config(settings))
    if job is None:
        raise Conflict(f"model {name!r} is already being trained")
    return JobOut.model_validate(job)


@router.delete(
    "/{name}",
    status_code=204,
    dependencies=[KeyRequired],
    responses={
        202: {
            "model": JobOut,
            "description": "the name was only being trained: its training is cancelled (the "
            "worker stops at its next epoch and registers nothing); the body is the job",
        },
        204: {"description": "the model, its potentials and checkpoints are deleted"},
        **error_responses(401, 403, 404, 422),
    },
)
def delete_model(name: NamePath, store: StoreDep) -> Response:
    """Delete the model, its potentials and checkpoints (204); cancel its jobs.

    A name that is being trained but not registered yet answers 202 with the cancelled
    training job; 404 when there is neither a model nor a job of that name.
    """
    deletion = store.delete(name)
    if deletion.deleted:
        return Response(status_code=204)
    training = next((j for j in deletion.cancelled if j.kind == "train"), deletion.cancelled[0])
    return JSONResponse(JobOut.model_validate(training).model_dump(), status_code=202)
