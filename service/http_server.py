"""How ``aeot serve`` runs uvicorn: options and an HTTP protocol that bounds request heads.

Uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` seconds, but it
restarts that clock on every byte and never arms it on a new connection, so a client that
opens a connection and trickles a request head one byte at a time (slowloris) holds it for
ever. :class:`HeadTimeoutProtocol` arms the same timer when the connection opens and no longer
resets it on partial data: a request head must be complete within ``keep_alive_timeout``
seconds of the connection opening (or of the previous response). Bodies that stall are
answered 408 by :class:`service.middleware.BodyLimit`.

A request head (request line and headers) over :data:`MAX_HEAD_BYTES` answers 431 and the
connection closes, however the head arrives: h11 refuses a head that is still incomplete past
that size (one arriving in pieces), and :class:`HeadLimitedConnection` one that arrived whole
in a single read.

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are read only from the proxies named in
``Settings.forwarded_allow_ips`` (none by default, where uvicorn alone would trust loopback), so
the client address the request gate throttles is the connection's real peer unless that peer
is a named proxy.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from service.settings import Settings

# Request heads (request line + headers) over this many bytes are refused with a 431.
MAX_HEAD_BYTES = 16 * 1024
_TOO_LARGE = 431


def head_bytes(request: h11.Request) -> int:
    """Bytes of a request head as sent: request line, ``name: value`` lines, blank line."""
    line = len(request.method) + len(request.target) + len(request.http_version) + 9
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers) + 2


class HeadLimitedConnection(h11.Connection):
    """An h11 server connection that refuses request heads over ``MAX_HEAD_BYTES``.

    h11 bounds only the bytes it buffers while an event is incomplete, so a long head that
    arrives in one read is parsed whole; this checks the parsed head too. The status of the
    refusal (431 for a head too large, else h11's hint) is kept in :attr:`refusal`.
    """

    def __init__(self) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.refusal = 400

    def next_event(self) -> Any:
        """The next event; a head over the limit raises ``RemoteProtocolError`` (431)."""
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = exc.error_status_hint
            raise
        if isinstance(event, h11.Request) and head_bytes(event) > MAX_HEAD_BYTES:
            self.refusal = _TOO_LARGE
            raise h11.RemoteProtocolError("request head too large", _TOO_LARGE)
        return event


class HeadTimeoutProtocol(H11Protocol):
    """Uvicorn's h11 protocol with a deadline and a size limit on each request head.

    See the module docstring.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = HeadLimitedConnection()

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

    def send_400_response(self, msg: str) -> None:
        """Refuse a malformed request (400) or a head over the limit (431), then close."""
        status = self.conn.refusal if isinstance(self.conn, HeadLimitedConnection) else 400
        if status == _TOO_LARGE:
            msg = f"request head (request line and headers) exceeds {MAX_HEAD_BYTES} bytes"
        body = json.dumps({"detail": msg}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (
            h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def server_options(settings: Settings) -> dict[str, Any]:
    """Uvicorn options of every server process: address, protocol, limits, trusted proxies."""
    proxies = list(settings.forwarded_allow_ips)
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "http": HeadTimeoutProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        # Without named proxies the forwarding headers are ignored whoever sends them.
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
    }
