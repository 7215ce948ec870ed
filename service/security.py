"""The request gate: Host allow-list, API key before the body, failed-key throttle, headers.

One plain ASGI middleware, outermost, so that a request is judged on its head alone:

- a ``Host`` header outside ``Settings.host_names()`` answers 400 (a web page that rebinds a
  public name to 127.0.0.1 cannot reach a loopback server);
- a route that needs the API key (its dependencies name :func:`service.deps.require_key`, or
  :func:`service.deps.read_access` with ``require_key_for_reads``) is refused with 401/403
  before one byte of its body is read, so unauthenticated uploads cost no memory;
- a client that sent ``auth_max_failures`` wrong keys within ``auth_window`` seconds has its
  further wrong keys answered 429 until the oldest failure leaves the window; the right key is
  always admitted, so nobody can lock the operator out by guessing from the same address. The
  client is the connection's peer (uvicorn rewrites it from ``X-Forwarded-For`` only for the
  proxies named in ``forwarded_allow_ips``: :mod:`service.http_server`), an IPv6 peer counted by
  its /64 (one host holds a whole /64);
- every answer carries security headers (no sniffing, no framing, no referrer, a content
  security policy; the interactive docs set their own, which admits their inline start-up
  script and still loads nothing from another origin: :mod:`service.routes.docs`).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import check_key, read_access, require_key
from service.errors import AuthError, Throttled, auth_response, error_response
from service.settings import Settings

# Clients remembered by the throttle at most (oldest forgotten first): bounds its memory.
_MAX_CLIENTS = 4096
_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
# The web page loads only its own script and style and shows PNGs from data: URLs.
_CSP = (
    b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    b"frame-ancestors 'none'; form-action 'self'"
)
_DOCS = ("/docs", "/redoc")


class KeyThrottle:
    """Counts wrong API keys per client address in a sliding window.

    Args:
        max_failures: wrong keys allowed per client within ``window``.
        window: seconds a failure counts.
        clock: monotonic seconds (tests pass a fake clock).

    """

    def __init__(
        self, max_failures: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, client: str) -> None:
        """Raise :class:`Throttled` while ``client`` is over its failure budget."""
        times = self._recent(client)
        if times is not None and len(times) >= self.max_failures:
            wait = times[0] + self.window - self._clock()
            raise Throttled(f"too many wrong API keys; retry in {wait:.0f} s", max(wait, 1.0))

    def failed(self, client: str) -> None:
        """Record a wrong key from ``client``."""
        times = self._recent(client) or deque()
        times.append(self._clock())
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > _MAX_CLIENTS:
            self._failures.popitem(last=False)

    def _recent(self, client: str) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        horizon = self._clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        return times


def host_allowed(host_header: str, names: Sequence[str]) -> bool:
    """Whether a ``Host`` value (port and IPv6 brackets stripped) is in ``names``.

    ``"*"`` allows any host; ``"*.example.org"`` any subdomain of example.org.
    """
    if "*" in names:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    wanted = [name.lower() for name in names]
    return any(host == n or (n.startswith("*.") and host.endswith(n[1:])) for n in wanted)


class RequestGate:
    """The gate described in the module docstring.

    Args:
        app: the wrapped ASGI app.
        settings: allowed hosts, key, throttle limits.
        routes: the API routes as declared (paths and dependencies).
        throttle: the failed-key counter (the app's, shared with tests).

    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        routes: Sequence[BaseRoute],
        throttle: KeyThrottle,
    ) -> None:
        self.app = app
        self.settings = settings
        self.routes = routes
        self.throttle = throttle
        self.hosts = settings.host_names()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check host and key on the request head, then pass on with security headers."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send, csp=not str(scope.get("path", "")).startswith(_DOCS))
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not host_allowed(host, self.hosts):
            response = error_response(400, f"host {host!r} is not served here (allowed_hosts)")
            await response(scope, receive, send)
            return
        if self._needs_key(scope):
            key = headers.get(b"x-api-key")
            try:
                check_key(self.settings, key.decode("latin-1") if key is not None else None)
            except AuthError as exc:
                refusal: AuthError | Throttled = exc
                if exc.status_code == 403 and key and self.settings.mutations_enabled():
                    refusal = self._wrong_key(client_of(scope))
                await auth_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _wrong_key(self, client: str) -> AuthError | Throttled:
        """Count a wrong key from ``client``: 403, or 429 once it is over its budget."""
        try:
            self.throttle.check(client)
        except Throttled as exc:
            return exc
        self.throttle.failed(client)
        return AuthError("invalid API key", 403)

    def _needs_key(self, scope: Scope) -> bool:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return needs_key(route, self.settings)
        return False


def client_of(scope: Scope) -> str:
    """The throttle's name for the request's client: its address, an IPv6 one by its /64."""
    host = str((scope.get("client") or ("unknown", 0))[0])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def needs_key(route: BaseRoute, settings: Settings) -> bool:
    """Whether ``route`` answers only with the API key (from the dependencies it declares)."""
    if not isinstance(route, APIRoute):
        return False
    deps = {d.dependency for d in route.dependencies}
    return require_key in deps or (settings.require_key_for_reads and read_access in deps)


def _with_headers(send: Send, *, csp: bool) -> Send:
    """Wrap ``send`` to add the security headers to the response head."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in _HEADERS if k not in present]
            if csp and b"content-security-policy" not in present:
                extra.append((b"content-security-policy", _CSP))
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers
