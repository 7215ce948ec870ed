"""JSON request bodies read with every parse failure answered 422, none with a 400 or 500.

FastAPI reads a JSON body with ``json.loads`` and answers 422 only for a syntax error; a body
nested deeper than Python's recursion limit (``RecursionError``) or holding an integer of more
than 4300 digits (``ValueError``) fell through to a bare 400 "There was an error parsing the
body". :class:`JSONRoute` is the route class of the API routers: its requests turn both into
the same 422 as a syntax error, with a message naming the cause.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class JSONRequest(Request):
    """A request whose :meth:`json` raises only ``json.JSONDecodeError`` on a bad body."""

    async def json(self) -> Any:
        """The parsed body; too deep, or a number too long, is a ``JSONDecodeError``."""
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body)
            except RecursionError:
                raise json.JSONDecodeError("nested too deeply", "", 0) from None
            except json.JSONDecodeError:
                raise
            except ValueError:  # an integer over Python's digit limit
                limit = sys.get_int_max_str_digits()
                raise json.JSONDecodeError(f"an integer has over {limit} digits", "", 0) from None
        return self._json


class JSONRoute(APIRoute):
    """An API route that reads its request through :class:`JSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, given a :class:`JSONRequest` instead of the plain request."""
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(JSONRequest(request.scope, request.receive))

        return handle
