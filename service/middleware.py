"""ASGI middleware: request body limit and latency metrics (plain ASGI, no per-request task)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import Metrics


class BodyLimit:
    """Read the body whole before the app: 413 over ``max_bytes``, 408 when it stalls.

    A declared length over the limit is refused before the body is read. Otherwise the body
    is read here (bounded by the limit) and replayed to the app, so a chunked or lying body
    is refused with a 413 as soon as it passes the limit, never half-parsed by a route. A
    client that stops sending for ``timeout`` seconds (slowloris) gets a 408 and the
    connection is freed. A JSON body that is not UTF-8 (RFC 8259) answers 422.

    Args:
        app: the wrapped app.
        max_bytes: body size limit.
        timeout: seconds to wait for each chunk of the body.

    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then read and count the body before the app sees it."""
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(413, scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                await self._refuse(408, scope, receive, send)
                return
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._refuse(413, scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and headers.get(b"content-type", b"").startswith(b"application/json"):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                detail = f"request body is not UTF-8 JSON: byte {exc.start} is invalid"
                await error_response(422, detail)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, status: int, scope: Scope, receive: Receive, send: Send) -> None:
        if status == 413:
            message = f"request body exceeds {self.max_bytes} bytes"
        else:
            message = f"request body stalled for {self.timeout:g} s"
        # The unread rest of the body makes the connection unusable: close it.
        response = error_response(status, message, {"Connection": "close"})
        await response(scope, receive, send)


class LatencyMetrics:
    """Observe each request's latency under its route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request from its first byte to its last."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - start
            )
