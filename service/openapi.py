"""The OpenAPI schema made true to this server: its limits and the gate's answers.

The request models carry only static bounds; the limits that come from settings (``max_n``,
``max_steps``) are written here as JSON Schema ``maximum`` into both the body schemas and the
GET query parameters, so a client generated from the schema stays inside what the server
accepts. The answers of the middleware (400 bad Host, 408 stalled body, 413 body too large,
429 throttled key), of the HTTP protocol (431 request head too large) and of a store that
cannot be written (507) or whose catalogue is being rebuilt (503), on the key-protected
writes, are added to every operation that can give them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from service.deps import API_KEY_SCHEME_NAME
from service.errors import error_responses
from service.security import needs_key
from service.settings import Settings

_BODY_METHODS = ("post", "put", "patch")


def _limits(settings: Settings) -> dict[tuple[str, str], int]:
    """``{(schema name, field): maximum}`` of the limits the server checks per request."""
    return {
        ("SampleRequest", "n"): settings.max_n,
        ("InterpolateRequest", "steps"): settings.max_steps,
    }


def set_limits(app: FastAPI, settings: Settings, routes: Sequence[BaseRoute]) -> None:
    """Replace ``app.openapi`` with a generator that writes the server's limits and errors.

    Args:
        app: the app.
        settings: the limits.
        routes: the API routes as declared (paths and dependencies).

    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        _standard_bounds(spec)
        _write_limits(spec, settings)
        _write_gate_answers(spec, routes, settings)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


_BOUND_KEYS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _standard_bounds(node: Any) -> None:
    """Write every numeric bound in JSON Schema's words (and integer bounds as integers).

    Pydantic leaves ``ge``/``le``/``gt``/``lt`` on numbers whose bounds sit in a nested
    ``Annotated`` (``Seed``); validators read only ``minimum``/``maximum``/``exclusive*``.
    """
    if isinstance(node, list):
        for item in node:
            _standard_bounds(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") in ("integer", "number"):
        for short, word in _BOUND_KEYS.items():
            if short in node:
                node[word] = node.pop(short)
        if node["type"] == "integer":
            for word in _BOUND_KEYS.values():
                if isinstance(node.get(word), float) and node[word].is_integer():
                    node[word] = int(node[word])
    for value in node.values():
        _standard_bounds(value)


def _write_limits(spec: dict[str, Any], settings: Settings) -> None:
    schemas = spec.get("components", {}).get("schemas", {})
    query_of = {"SampleRequest": "/sample", "InterpolateRequest": "/interpolate"}
    for (model, field), maximum in _limits(settings).items():
        prop = schemas.get(model, {}).get("properties", {}).get(field)
        if prop is not None:
            prop["maximum"] = maximum
        get = spec["paths"].get(query_of[model], {}).get("get", {})
        for param in get.get("parameters", []):
            if param["name"] == field:
                param["schema"]["maximum"] = maximum


def _write_gate_answers(
    spec: dict[str, Any], routes: Sequence[BaseRoute], settings: Settings
) -> None:
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        path = spec["paths"].get(route.path_format, {})
        for method in route.methods or ():
            op = path.get(method.lower())
            if op is None:
                continue
            codes = [400, 431]
            if method.lower() in _BODY_METHODS:
                codes += [408, 413, 422]
            if needs_key(route, settings):  # reads too when the server requires the key
                codes += [401, 403, 429] if method.lower() == "get" else [401, 403, 429, 503, 507]
                op.setdefault("security", [{API_KEY_SCHEME_NAME: []}])
            for code, answer in error_responses(*codes).items():
                op["responses"].setdefault(str(code), _plain(answer))


def _plain(answer: dict[str, Any]) -> dict[str, Any]:
    """An ``error_responses`` entry in OpenAPI form (the model as a schema reference)."""
    out: dict[str, Any] = {
        "description": answer["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    if "headers" in answer:
        out["headers"] = answer["headers"]
    return out
