"""How ``aeot serve`` runs uvicorn: options and an HTTP protocol that times out slow heads.

Uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` seconds, but it
restarts that clock on every byte and never arms it on a new connection, so a client that
opens a connection and trickles a request head one byte at a time (slowloris) holds it for
ever. :class:`HeadTimeoutProtocol` arms the same timer when the connection opens and no longer
resets it on partial data: a request head must be complete within ``keep_alive_timeout``
seconds of the connection opening (or of the previous response). Bodies that stall are
answered 408 by :class:`service.middleware.BodyLimit`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings

# Request heads (request line + headers) over this many bytes are refused by h11 with a 400.
MAX_HEAD_BYTES = 16 * 1024


class HeadTimeoutProtocol(H11Protocol):
    """Uvicorn's h11 protocol with a deadline on each request head (see the module doc)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Open the connection with the head deadline armed."""
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        """Parse bytes; only a complete request head (in ``handle_events``) stops the clock."""
        self.conn.receive_data(data)
        self.handle_events()


def server_options(settings: Settings) -> dict[str, Any]:
    """Uvicorn options of every server process: address, protocol, idle and head limits."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "http": HeadTimeoutProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
    }
