"""Service errors and their HTTP status codes, mapped in exactly one place."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from service.catalog import CatalogueDamaged
from service.schemas import ErrorResponse
from service.store import ModelExists, StoreError, UnknownModel, storage_problem
from service.training import DataRootError

log = logging.getLogger("aeot.http")
M = TypeVar("M", bound=BaseModel)
# Validation problems named in one 422 message at most (the rest are counted).
_MAX_PROBLEMS = 10


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
    405: "method not allowed on this path (Allow lists the allowed ones)",
    408: "the request body stalled longer than the server's body timeout",
    401: "missing API key (X-API-Key)",
    403: "wrong API key, or none configured on the server (training: no data root)",
    404: "unknown model, or unknown potential version",
    409: "conflicts with the current state (name taken, active job)",
    413: "request body over the configured limit",
    422: "invalid request: wrong type, out of range, over a limit, wrong for the model, "
    "body not UTF-8 JSON",
    429: "too many wrong API keys from this client (Retry-After says when to try again)",
    431: "request head (request line and headers) over 16 KiB; the connection closes",
    503: "no fitted potential yet, or the catalogue is being rebuilt (Retry-After says when "
    "to try again)",
    507: "the store cannot be written (disk full or read-only); reads keep working",
}


def _store_forms(root: Path) -> set[str]:
    """The ways a message may spell the store's absolute path."""
    return {form for form in (str(root.resolve()), str(root.absolute())) if form != "/"}


def redact(text: str, root: Path) -> str:
    """``text`` with the store's absolute path written ``<store>`` (files inside stay named).

    Messages of damaged files name the file the server could not read; a client learns which
    one (``<store>/models/x/potentials/job3-it40.npz``) but not where the store lives.
    """
    for form in _store_forms(root):
        text = text.replace(form, "<store>")
    return text


def redact_model(body: M, root: Path) -> M:
    """A response model with :func:`redact` applied to every string in it."""
    text = body.model_dump_json()
    clean = text
    for form in _store_forms(root):
        clean = clean.replace(json.dumps(form)[1:-1], "<store>")
    return body if clean == text else type(body).model_validate_json(clean)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path, sorted."""
    methods: set[str] = set()
    # The routers' routes as declared (the app's own list wraps each included router).
    routes = [*request.app.router.routes, *getattr(request.app.state, "api_routes", ())]
    for route in routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


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
        names = [m.name for m in request.app.state.store.catalog.models()]
    except Exception:  # a damaged catalogue must not turn the 404 into a 500
        return ""
    if not names:
        return "; no model is registered yet"
    more = f" and {len(names) - _KNOWN_LISTED} more" if len(names) > _KNOWN_LISTED else ""
    return f"; known models: {', '.join(names[:_KNOWN_LISTED])}{more}"


def install_error_handlers(app: FastAPI) -> None:
    """Map every service error to its status code and a ``{"detail": message}`` body."""

    def public(request: Request, exc: BaseException) -> str:
        """The exception's message without the store's absolute path."""
        return redact(str(exc), request.app.state.store.root)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # the router names one route's methods; name them all
            headers["Allow"] = ", ".join(allowed_methods(request))
        return _error(exc.status_code, str(exc.detail), headers or None)

    @app.exception_handler(UnknownModel)
    async def _unknown(request: Request, exc: UnknownModel) -> JSONResponse:
        return _error(404, f"unknown model {exc.args[0]!r}{_known_models(request)}")

    def answer(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            return _error(status, public(request, exc))

        return handler

    # The message as it is (store path redacted); a subclass's entry wins over its base's.
    plain = {UnknownVersion: 404, ModelExists: 409, Conflict: 409, StoreError: 422}
    for kind, status in plain.items():
        app.add_exception_handler(kind, answer(status))

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady) -> JSONResponse:
        retry = str(max(1, round(exc.retry_after)))
        return _error(503, public(request, exc), {"Retry-After": retry})

    @app.exception_handler(AuthError)
    @app.exception_handler(Throttled)
    async def _auth(_: Request, exc: AuthError | Throttled) -> JSONResponse:
        return auth_response(exc)

    @app.exception_handler(CatalogueDamaged)
    async def _catalogue(_: Request, exc: CatalogueDamaged) -> JSONResponse:
        # Reads are answered from what is loaded; this is a write, or a read of something
        # never loaded, while the catalogue is rebuilt from the model directories.
        return _error(
            503,
            f"{exc}; it is being rebuilt from the model directories, try again",
            {"Retry-After": "2"},
        )

    @app.exception_handler(DataRootError)
    async def _no_data_root(_: Request, exc: DataRootError) -> JSONResponse:
        return _error(403, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = []
        for err in errors[:_MAX_PROBLEMS]:
            if err.get("type") == "json_invalid":
                parts.append(f"request body is not valid JSON: {err.get('ctx', {}).get('error')}")
                continue
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        if len(errors) > _MAX_PROBLEMS:
            parts.append(f"and {len(errors) - _MAX_PROBLEMS} more problems")
        return _error(422, "; ".join(parts) or "invalid request")

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
    async def _value(request: Request, exc: ValueError) -> JSONResponse:
        # Boundary validation in solver/models raises ValueError naming the bad value.
        log.info("invalid request: %s", exc)
        return _error(422, public(request, exc))
