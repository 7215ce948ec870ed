"""Service errors and their HTTP status codes, mapped in exactly one place."""

from __future__ import annotations

import errno
import logging
import math
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.schemas import ErrorResponse
from service.store import ModelExists, StoreError, UnknownModel
from service.training import DataRootError

log = logging.getLogger("aeot.http")


class NotReady(Exception):
    """The model exists but has no published potential yet (503 with Retry-After)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthError(Exception):
    """Missing (401) or wrong / unconfigured (403) API key."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class UnknownVersion(Exception):
    """A ``version=`` that the model never published (or published for a replaced bundle): 404."""


class InvalidRequest(ValueError):
    """A well-typed request the service cannot honour (over a limit, wrong for the model)."""


class Conflict(Exception):
    """The request conflicts with the current state (an active job, ...): 409."""


class Throttled(Exception):
    """Too many wrong API keys from this client lately (429 with Retry-After)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_MEANING = {
    400: "Host header not in the server's allow-list",
    408: "the request body stalled longer than the server's body timeout",
    401: "missing API key (X-API-Key)",
    403: "wrong API key, or none configured on the server (training: no data root)",
    404: "unknown model, or unknown potential version",
    409: "conflicts with the current state (name taken, active job)",
    413: "request body over the configured limit",
    422: "invalid request: wrong type, out of range, over a limit, wrong for the model, "
    "body not UTF-8 JSON",
    429: "too many wrong API keys from this client (Retry-After says when to try again)",
    503: "no fitted potential yet (Retry-After says when to try again)",
    507: "the store cannot be written (disk full or read-only); reads keep working",
}

_STORAGE_ERRNOS = {
    errno.ENOSPC: "the store's disk is full",
    errno.EDQUOT: "the store's disk quota is exhausted",
    errno.EROFS: "the store is read-only",
}


def storage_problem(exc: BaseException) -> str | None:
    """Say why a write failed when the store cannot take writes (full, read-only), else None."""
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return _STORAGE_ERRNOS[exc.errno]
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "disk is full" in text:
            return _STORAGE_ERRNOS[errno.ENOSPC]
        if "readonly" in text or "read-only" in text:
            return _STORAGE_ERRNOS[errno.EROFS]
    return None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error codes a route can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorResponse, "description": _MEANING[code]}
        if code in (429, 503):
            out[code]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return out


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one shape of every error answer: ``{"detail": message}`` (middleware uses it too)."""
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


_error = error_response


def auth_response(exc: AuthError | Throttled) -> JSONResponse:
    """401/403 for a missing or wrong key, 429 for a throttled client."""
    if isinstance(exc, Throttled):
        retry = str(max(1, math.ceil(exc.retry_after)))
        return _error(429, str(exc), {"Retry-After": retry})
    headers = {"WWW-Authenticate": "X-API-Key"} if exc.status_code == 401 else None
    return _error(exc.status_code, str(exc), headers)


# A 404 for an unknown model names at most this many known ones (a typo's neighbours).
_KNOWN_LISTED = 20


def _known_models(request: Request) -> str:
    """``"; known models: a, b"`` for a 404, or ``""`` when the catalogue cannot list them."""
    try:
        names = [m.name for m in request.app.state.store.models()]
    except Exception:  # a damaged catalogue must not turn the 404 into a 500
        return ""
    if not names:
        return "; no model is registered yet"
    more = f" and {len(names) - _KNOWN_LISTED} more" if len(names) > _KNOWN_LISTED else ""
    return f"; known models: {', '.join(names[:_KNOWN_LISTED])}{more}"


def install_error_handlers(app: FastAPI) -> None:
    """Map every service error to its status code and a ``{"detail": message}`` body."""

    @app.exception_handler(UnknownModel)
    async def _unknown(request: Request, exc: UnknownModel) -> JSONResponse:
        return _error(404, f"unknown model {exc.args[0]!r}{_known_models(request)}")

    @app.exception_handler(UnknownVersion)
    async def _unknown_version(_: Request, exc: UnknownVersion) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(ModelExists)
    async def _exists(_: Request, exc: ModelExists) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(NotReady)
    async def _not_ready(_: Request, exc: NotReady) -> JSONResponse:
        retry = str(max(1, round(exc.retry_after)))
        return _error(503, str(exc), {"Retry-After": retry})

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        return auth_response(exc)

    @app.exception_handler(Throttled)
    async def _throttled(_: Request, exc: Throttled) -> JSONResponse:
        return auth_response(exc)

    @app.exception_handler(DataRootError)
    async def _no_data_root(_: Request, exc: DataRootError) -> JSONResponse:
        return _error(403, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                parts.append(f"request body is not valid JSON: {err.get('ctx', {}).get('error')}")
                continue
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.OperationalError)
    async def _storage(_: Request, exc: Exception) -> JSONResponse:
        problem = storage_problem(exc)
        if problem is None:
            log.error("internal error", exc_info=exc)
            return _error(500, "internal error (logged on the server)")
        log.warning("write refused: %s (%s)", problem, exc)
        return _error(507, f"{problem}: the change was not made; reads keep working")

    @app.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError) -> JSONResponse:
        # Boundary validation in solver/models raises ValueError naming the bad value.
        log.info("invalid request: %s", exc)
        return _error(422, str(exc))
