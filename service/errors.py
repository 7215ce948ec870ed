"""Service errors and their HTTP status codes, mapped in exactly one place."""

from __future__ import annotations

import logging
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


class InvalidRequest(ValueError):
    """A well-typed request the service cannot honour (over a limit, wrong for the model)."""


class Conflict(Exception):
    """The request conflicts with the current state (an active job, ...): 409."""


_MEANING = {
    401: "missing API key (X-API-Key)",
    403: "wrong API key, or none configured on the server (training: no data root)",
    404: "unknown model",
    409: "conflicts with the current state (name taken, active job)",
    413: "request body over the configured limit",
    422: "invalid request: wrong type, out of range, over a limit, wrong for the model",
    503: "no fitted potential yet (Retry-After says when to try again)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error codes a route can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorResponse, "description": _MEANING[code]}
        if code == 503:
            out[code]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return out


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every service error to its status code and a ``{"detail": message}`` body."""

    @app.exception_handler(UnknownModel)
    async def _unknown(_: Request, exc: UnknownModel) -> JSONResponse:
        return _error(404, f"unknown model {exc.args[0]!r}")

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
        headers = {"WWW-Authenticate": "X-API-Key"} if exc.status_code == 401 else None
        return _error(exc.status_code, str(exc), headers)

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

    @app.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError) -> JSONResponse:
        # Boundary validation in solver/models raises ValueError naming the bad value.
        log.info("invalid request: %s", exc)
        return _error(422, str(exc))
