"""Dependencies injected into routes, as ``Annotated`` aliases.

The app factory puts its collaborators on ``app.state``; these functions hand them to routes,
so tests build an app around a temporary store without touching globals.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader

from service.archive import UploadLimits
from service.errors import AuthError, NotReady
from service.metrics import Metrics
from service.serving_index import ServingIndex
from service.settings import Settings
from service.store import ModelStore
from service.worker_process import WorkerProcess, WorkerState


def _state(name: str) -> Callable[[Request], Any]:
    """A dependency returning the app's collaborator ``name`` (``app.state.<name>``)."""

    def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    return get


def get_worker_state(request: Request) -> WorkerState | None:
    """Return the supervised worker's state, or ``None`` when this process runs none."""
    worker: WorkerProcess | None = getattr(request.app.state, "worker", None)
    return worker.state if worker is not None else None


SettingsDep = Annotated[Settings, Depends(_state("settings"))]
StoreDep = Annotated[ModelStore, Depends(_state("store"))]
ServingDep = Annotated[ServingIndex, Depends(_state("serving"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
WorkerDep = Annotated[WorkerState | None, Depends(get_worker_state)]
# The OpenAPI security scheme of the key-protected routes: Swagger UI's "Authorize" sends it as
# X-API-Key. It never fails by itself (auto_error=False): check_key answers 401/403 with a
# message. Read routes take the header without the scheme (the key is optional there), and the
# schema marks them secured only when the server requires the key for reads (service.openapi).
API_KEY_SCHEME_NAME = "APIKey"
API_KEY_SCHEME = APIKeyHeader(
    name="X-API-Key",
    scheme_name=API_KEY_SCHEME_NAME,
    description="the server's AEOT_API_KEY: needed by register, refit and delete (and by "
    "every endpoint when AEOT_REQUIRE_KEY_FOR_READS is set)",
    auto_error=False,
)
ApiKeyScheme = Annotated[str | None, Security(API_KEY_SCHEME)]
ApiKeyHeader = Annotated[str | None, Header(alias="X-API-Key", include_in_schema=False)]


def check_key(settings: Settings, key: str | None) -> None:
    """Raise :class:`AuthError` unless ``key`` is the configured API key (constant time)."""
    if not settings.mutations_enabled():
        raise AuthError("this server has no API key configured (set AEOT_API_KEY)", 403)
    if not key:
        raise AuthError("missing X-API-Key header", 401)
    assert settings.api_key is not None
    if not secrets.compare_digest(key.encode(), settings.api_key.get_secret_value().encode()):
        raise AuthError("invalid API key", 403)


def require_key(settings: SettingsDep, x_api_key: ApiKeyScheme = None) -> None:
    """Mutating endpoints: a valid ``X-API-Key`` (401 missing, 403 wrong or unconfigured)."""
    check_key(settings, x_api_key)


def read_access(settings: SettingsDep, x_api_key: ApiKeyHeader = None) -> None:
    """Read endpoints: open unless ``require_key_for_reads`` is set."""
    if settings.require_key_for_reads:
        check_key(settings, x_api_key)


def resolve_model(name: str | None, serving: ServingIndex) -> str:
    """``name``, or the default model; a 503 when the store has no model yet.

    The default comes from the serving index's last catalogue read, so a request that names
    no model never waits on (or fails with) the catalogue.
    """
    if name is not None:
        return name
    chosen = serving.default_model()
    if chosen is None:
        raise NotReady("no model registered yet (the default model may be training)", 10.0)
    return chosen


def upload_limits(settings: Settings) -> UploadLimits:
    """The limits on uploaded bundles, from settings."""
    return UploadLimits(
        max_bytes=settings.max_bundle_bytes,
        max_members=settings.max_bundle_members,
        max_parameters=settings.max_parameters,
    )


KeyRequired = Depends(require_key)
ReadAccess = Depends(read_access)
