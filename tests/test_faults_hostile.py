"""The hostile-input suite: every case against a real server process, its memory measured.

Each case of ``tests/hostile.py`` is sent to ``aeot serve`` on loopback; the answer must be the
expected 4xx (never a 500 or a dropped connection) and the server's peak resident memory may
grow by at most 50 MB for a request without the key, 200 MB for an upload with it (read from
``/proc/<pid>/status`` around the request). Then the key throttle on real sockets: a rotating
``X-Forwarded-For`` buys nothing unless the operator named the proxy, and the right key is never
refused.
"""

from __future__ import annotations

import httpx
import pytest

from tests.hostile import ANONYMOUS, BUNDLE_LIMIT, KEYED, MIB, Case, PeakRSS, warm_up
from tests.service_helpers import (
    API_KEY,
    copy_store,
    fitted_template,
    live_server,
    make_settings,
    write_bundle,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def server(base):
    """A live server on a copy of the fitted tiny store; yields (url, pid)."""
    store = copy_store(fitted_template(base), base / "hostile-store")
    settings = make_settings(store.root, max_bundle_bytes=BUNDLE_LIMIT)
    procs: list = []
    with live_server(settings, procs=procs) as url:
        warm_up(url, API_KEY)
        yield url, procs[0].pid


@pytest.fixture(scope="module")
def bundle(base):
    return write_bundle(base / "hostile-bundle", n=30, d=4)


def _run(case: Case, server, bundle, tmp_path) -> None:
    url, pid = server
    send = case.make(bundle, tmp_path)
    with PeakRSS(pid) as probe:
        statuses = send(url, API_KEY)
    assert statuses == [case.expect] * len(statuses), (case.name, statuses)
    assert probe.growth < case.budget, (
        f"{case.name}: the server grew by {probe.growth / MIB:.0f} MiB "
        f"(budget {case.budget / MIB:.0f} MiB)"
    )
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("case", ANONYMOUS, ids=[c.name for c in ANONYMOUS])
def test_anonymous_request_is_refused_cheaply(case, server, bundle, tmp_path):
    _run(case, server, bundle, tmp_path)


@pytest.mark.parametrize("case", KEYED, ids=[c.name for c in KEYED])
def test_hostile_upload_is_refused_cheaply(case, server, bundle, tmp_path):
    _run(case, server, bundle, tmp_path)
    r = httpx.get(f"{server[0]}/models/hostile", timeout=10)
    assert r.status_code == 404  # nothing was registered


def _wrong_keys(url: str, count: int, forwarded: bool) -> list[int]:
    """``count`` wrong keys, each from a different ``X-Forwarded-For`` address when asked."""
    statuses = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for k in range(count):
            headers = {"X-API-Key": f"guess-{k}"}
            if forwarded:
                headers["X-Forwarded-For"] = f"10.{k // 65536 % 256}.{k // 256 % 256}.{k % 256}"
            statuses.append(client.delete("/models/nope", headers=headers).status_code)
    return statuses


def _right_key(url: str) -> int:
    return httpx.delete(f"{url}/models/nope", headers={"X-API-Key": API_KEY}).status_code


def test_forwarded_for_is_ignored_from_an_unnamed_proxy(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    settings = make_settings(store.root, auth_max_failures=10)
    with live_server(settings) as url:
        statuses = _wrong_keys(url, 600, forwarded=True)
        assert statuses[:10] == [403] * 10 and set(statuses[10:]) == {429}
        # The operator, from the same address, is never locked out.
        assert [_right_key(url) for _ in range(5)] == [404] * 5  # admitted: unknown model
        assert httpx.delete(f"{url}/models/nope").status_code == 401  # no key: 401, not 429


def test_forwarded_for_names_the_client_behind_a_named_proxy(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    settings = make_settings(store.root, auth_max_failures=3, forwarded_allow_ips=("127.0.0.1",))
    with live_server(settings) as url:
        # Each forwarded client has its own budget ...
        assert set(_wrong_keys(url, 50, forwarded=True)) == {403}
        # ... and one client behind the proxy is throttled alone.
        with httpx.Client(base_url=url, timeout=10) as client:
            one = {"X-API-Key": "guess", "X-Forwarded-For": "192.0.2.7"}
            seen = [client.delete("/models/nope", headers=one).status_code for _ in range(5)]
            other = {"X-API-Key": "guess", "X-Forwarded-For": "192.0.2.8"}
            assert client.delete("/models/nope", headers=other).status_code == 403
        assert seen == [403, 403, 403, 429, 429]
        assert _right_key(url) == 404
