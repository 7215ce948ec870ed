"""Fault cases 10-15 of the reliability review: hostile uploads, lax types, a false schema,
the request gate (Host, key before body, throttle, headers, stalled bodies).

Each test failed on the code before the fix and names its case number.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import Throttled
from service.security import KeyThrottle, host_allowed
from tests.service_helpers import (
    API_KEY,
    bundle_archive,
    copy_store,
    fitted_template,
    live_server,
    make_settings,
    write_bundle,
)

KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


@pytest.fixture
def app_and_store(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    settings = make_settings(
        store.root,
        max_bundle_bytes=1 << 20,
        max_bundle_members=12,
        max_parameters=100_000,
        max_n=100,
        max_steps=32,
        body_timeout=0.3,
        auth_max_failures=3,
    )
    return create_app(settings, store=store, poll=False), store


@pytest.fixture
def client(app_and_store):
    with TestClient(app_and_store[0], raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def bundle_dir(base):
    return write_bundle(base / "faults-bundle", n=30, d=4)


def _tweaked(bundle_dir: Path, tmp: Path, edit) -> bytes:
    copy = tmp / "tweaked"
    shutil.copytree(bundle_dir, copy)
    edit(copy)
    return bundle_archive(copy)


def _upload(client: TestClient, data: bytes, name: str = "new", filename: str = "b.tar.gz"):
    return client.post(
        "/models", data={"name": name}, files={"bundle": (filename, data)}, headers=KEY
    )


def _set_config(path: Path, **arch: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config["autoencoder"].update(arch)
    if "image_shape" in arch:
        config["image_shape"] = arch["image_shape"]
    (path / "config.json").write_text(json.dumps(config))


# Case 10: metrics.json of the wrong JSON type, absurd architectures -> 422 before allocation.
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: (p / "metrics.json").write_text("[1, 2]"), "metrics.json"),
        (lambda p: (p / "metrics.json").write_text('{"history": 5}'), "history"),
        (lambda p: (p / "config.json").write_text("[]"), "config.json"),
        (lambda p: _set_config(p, mlp_hidden=[10**12]), "parameters"),
        (lambda p: _set_config(p, image_shape=[1, 100000, 100000]), "parameters"),
        (lambda p: _set_config(p, latent_dim="x"), "config"),
    ],
)
def test_case10_bad_bundle_json_and_architecture(client, bundle_dir, tmp_path, edit, message):
    r = _upload(client, _tweaked(bundle_dir, tmp_path, edit))
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert client.get("/models/new").status_code == 404


# Case 11: an archive bomb (tiny zip, big member) and too many members -> 422, nothing stored.
def test_case11_zip_bomb_and_member_count(client, app_and_store, bundle_dir):
    store = app_and_store[1]
    staging = sorted((store.root / "staging").iterdir())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in bundle_dir.iterdir():
            zf.write(f, f"bundle/{f.name}")
        zf.writestr("bundle/zeros.bin", bytes(4 << 20))  # 4 MiB over a 1 MiB limit
    assert len(buf.getvalue()) < 64 * 1024
    r = _upload(client, buf.getvalue(), filename="b.zip")
    assert r.status_code == 422 and "unpacks to over" in r.json()["detail"]
    many = io.BytesIO()
    with tarfile.open(fileobj=many, mode="w:gz") as tf:
        for i in range(20):
            info = tarfile.TarInfo(f"bundle/f{i}.txt")
            tf.addfile(info, io.BytesIO(b""))
    r = _upload(client, many.getvalue())
    assert r.status_code == 422 and "members" in r.json()["detail"]
    assert sorted((store.root / "staging").iterdir()) == staging
    assert not (store.root / "models" / "new").exists()


# Case 12: the key is checked before one byte of the body is read.
def test_case12_key_checked_before_body(app_and_store):
    app = app_and_store[0]
    reads = []
    sent = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message):
        sent.append(message)

    async def call(headers):
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/models",
            "raw_path": b"/models",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"content-length", b"60000000"), *headers],
            "client": ("10.0.0.9", 1),
            "server": ("testserver", 80),
            "scheme": "http",
            "http_version": "1.1",
            "root_path": "",
        }
        await app(scope, receive, send)

    asyncio.run(call([]))
    assert sent[0]["status"] == 401 and reads == []
    asyncio.run(call([(b"x-api-key", b"wrong")]))
    assert sent[2]["status"] == 403 and reads == []


# Case 13: strict JSON types and a documented answer to a body that is not UTF-8.
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/sample", {"n": "5"}, "n"),
        ("/sample", {"extended": "yes"}, "extended"),
        ("/sample", {"extended": 1}, "extended"),
        ("/interpolate", {"start_index": "0", "end_index": 3}, "start_index"),
        ("/models/tiny/fit", {"replace": 0}, "replace"),
        ("/models/tiny/fit", {"seed": "1"}, "seed"),
    ],
)
def test_case13_strict_json_types(client, path, body, field):
    r = client.post(path, json=body, headers=KEY)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_case13_query_strings_still_parse_and_invalid_utf8_is_422(client):
    assert client.get("/sample", params={"n": "5", "extended": "true"}).status_code == 200
    r = client.post("/sample", content=b"\xff{}", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"]
    spec = client.get("/openapi.json").json()
    assert "422" in spec["paths"]["/sample"]["post"]["responses"]


# Case 14: the schema's bounds are standard JSON Schema and equal the server's limits.
def test_case14_schema_bounds_are_the_server_limits(client):
    spec = client.get("/openapi.json").json()
    text = json.dumps(spec)
    assert '"ge"' not in text and '"le"' not in text
    props = spec["components"]["schemas"]
    assert props["SampleRequest"]["properties"]["n"]["maximum"] == 100
    assert props["InterpolateRequest"]["properties"]["steps"]["maximum"] == 32
    params = {p["name"]: p for p in spec["paths"]["/sample"]["get"]["parameters"]}
    assert params["n"]["schema"]["maximum"] == 100
    assert client.get("/sample", params={"n": 100}).status_code == 200
    assert client.get("/sample", params={"n": 101}).status_code == 422
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "400" in op["responses"], (method, path)  # Host refused
            if method in ("post", "delete") and path.startswith("/models"):
                assert {"401", "403", "429"} <= set(op["responses"]), (method, path)
            if method == "post":
                assert {"408", "413", "422"} <= set(op["responses"]), (method, path)


# Case 15: Host allow-list, security headers, throttled keys, stalled bodies, no server paths.
def test_case15_host_allow_list_and_security_headers(client):
    assert client.get("/healthz", headers={"host": "evil.example:8000"}).status_code == 400
    ok = client.get("/healthz", headers={"host": "localhost:8000"})
    assert ok.status_code == 200
    assert ok.headers["x-content-type-options"] == "nosniff"
    assert ok.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in ok.headers["content-security-policy"]
    # The docs pages load the server's own bundled assets under their own policy.
    docs_policy = client.get("/docs").headers["content-security-policy"]
    assert "default-src 'self'" in docs_policy and "https:" not in docs_policy


def test_case15_wrong_keys_are_throttled_and_the_right_key_never_is(client):
    for _ in range(3):
        assert client.delete("/models/tiny", headers={"X-API-Key": "guess"}).status_code == 403
    r = client.delete("/models/tiny", headers={"X-API-Key": "guess"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert client.get("/models/tiny").status_code == 200  # reads stay open
    # The operator at the same address still gets through, again and again.
    for _ in range(3):
        r = client.post("/models/tiny/fit", json={"replace": True}, headers=KEY)
        assert r.status_code == 202
    assert client.delete("/models/tiny", headers={"X-API-Key": "guess"}).status_code == 429
    assert client.post("/models/tiny/fit", json={}, headers={}).status_code == 401  # no key: 401


def test_case15_stalled_body_times_out(app_and_store):
    app = app_and_store[0]
    sent = []

    async def receive():
        await asyncio.sleep(30)  # a client that never sends its body
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/sample",
        "raw_path": b"/sample",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("10.0.0.8", 1),
        "server": ("testserver", 80),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))
    assert sent[0]["status"] == 408


def test_case15_no_server_paths_in_errors(client, app_and_store, bundle_dir, tmp_path):
    store = app_and_store[1]
    data = _tweaked(bundle_dir, tmp_path, lambda p: (p / "latents.npy").write_bytes(b"junk"))
    r = _upload(client, data)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "latents.npy" in detail
    assert str(store.root) not in detail and "/staging" not in detail and "/tmp" not in detail


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (sending ``trickle`` bytewise)."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.25)
    for byte in trickle or b"\0" * 10_000:
        if time.monotonic() > deadline:
            return False
        try:
            if trickle:
                sock.send(bytes([byte]))
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset by the server
            return True
    return False


# Case 15, over real sockets: idle and trickled heads are cut, a stalled body gets a 408.
@pytest.mark.slow
def test_case15_stalled_connections_time_out_on_a_live_server(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    settings = make_settings(store.root, keep_alive_timeout=1.0, body_timeout=1.0)
    with live_server(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as idle:
            assert _closed_within(idle, 5.0)
        with socket.create_connection(("127.0.0.1", port)) as slow:
            head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200
            assert _closed_within(slow, 5.0, trickle=head)
        with socket.create_connection(("127.0.0.1", port)) as stalled:
            stalled.sendall(
                b"POST /sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"n": '
            )
            stalled.settimeout(5.0)
            assert stalled.recv(4096).startswith(b"HTTP/1.1 408")
        r = httpx.get(f"{url}/healthz", headers={"host": "rebind.example"})
        assert r.status_code == 400


def test_throttle_window_slides_with_a_fake_clock():
    now = [0.0]
    throttle = KeyThrottle(max_failures=2, window=10.0, clock=lambda: now[0])
    throttle.failed("a")
    now[0] = 4.0
    throttle.failed("a")
    with pytest.raises(Throttled) as err:
        throttle.check("a")
    assert err.value.retry_after == pytest.approx(6.0)
    throttle.check("b")  # other clients are not affected
    now[0] = 10.5  # the first failure left the window
    throttle.check("a")


@pytest.mark.parametrize(
    ("host", "names", "allowed"),
    [
        ("localhost:8000", ("localhost",), True),
        ("[::1]:8000", ("::1",), True),
        ("127.0.0.1", ("127.0.0.1",), True),
        ("LOCALHOST", ("localhost",), True),
        ("attacker.example", ("127.0.0.1", "localhost", "::1"), False),
        ("api.example.org", ("*.example.org",), True),
        ("example.org.evil", ("*.example.org",), False),
        ("", ("localhost",), False),
        ("anything", ("*",), True),
    ],
)
def test_host_allow_list(host, names, allowed):
    assert host_allowed(host, names) is allowed
