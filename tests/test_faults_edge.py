"""The request edge, in process: the contract of each refusal and the parsers under it.

Pictures judged by their header, JSON that is too deep or too long, integers written as
``154.0``, 405s that name every method, messages without the store's path, lying ``.npy`` and
safetensors headers, tar and zip headers refused before they are expanded, the trusted-proxy
setting, the throttle's client key and the request-head limit of the HTTP protocol. The same
cases against a real server, with their memory, are in ``tests/test_faults_hostile.py``.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path

import h11
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError
from safetensors.numpy import save_file

from models.bundle import load_bundle
from service.app import create_app
from service.archive import ArchiveError, UploadLimits, extract_archive
from service.errors import redact
from service.http_server import MAX_HEAD_BYTES, HeadLimitedConnection, server_options
from service.images import from_png
from service.security import client_of
from service.settings import Settings
from tests.hostile import (
    claim_latents,
    deep_json,
    png_bytes,
    tar_link,
    tar_meta_bomb,
    tar_sparse,
    text_bomb_png,
    zip_directory_bomb,
)
from tests.service_helpers import API_KEY, copy_store, fitted_template, make_settings, write_bundle

KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


@pytest.fixture
def app_and_store(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    return create_app(make_settings(store.root), store=store, poll=False), store


@pytest.fixture
def client(app_and_store):
    with TestClient(app_and_store[0], raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def bundle_dir(base):
    return write_bundle(base / "edge-bundle", n=30, d=4)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# Pictures -------------------------------------------------------------------------------
def test_png_of_the_wrong_size_is_refused_from_its_header():
    # IHDR says 13,000 x 13,000, and the pixel data is not even there: nothing is decoded.
    header_only = png_bytes(13_000, 13_000)[:33] + b"\0\0\0\0IEND\xaeB`\x82"
    with pytest.raises(ValueError, match="must be 8x8 pixels .* got 13000x13000"):
        from_png(header_only, (1, 8, 8))


def test_png_text_chunks_are_dropped_and_the_pixels_kept():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    clean = _png(Image.fromarray(pixels, mode="L"))
    bomb = text_bomb_png()  # zeros, with 60 compressed text chunks
    np.testing.assert_array_equal(from_png(clean, (1, 8, 8))[0], pixels / np.float32(255))
    np.testing.assert_array_equal(from_png(bomb, (1, 8, 8)), np.zeros((1, 8, 8), np.float32))
    rgb = _png(Image.fromarray(np.stack([pixels] * 3, axis=-1), mode="RGB"))
    assert from_png(rgb, (3, 8, 8)).shape == (3, 8, 8)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a....", "no PNG signature"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\x0dIDAT", "truncated"),
        (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 0) + b"tEXt" + b"\0" * 4, "start with IHDR"),
        (png_bytes(8, 8)[:-12], "no IEND"),
    ],
)
def test_damaged_pngs_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        from_png(data, (1, 8, 8))


def test_encode_names_the_size_of_a_huge_png(client):
    body = {"png": [base64.b64encode(png_bytes(13_000, 200)).decode()]}
    r = client.post("/encode", json=body)
    assert r.status_code == 422 and "got 13000x200" in r.json()["detail"]


# JSON bodies ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"n": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested too deeply"),
        (b'{"n": ' + b"1" * 100_000 + b"}", "an integer has over 4300 digits"),
        (b'{"n": ' + b"1" * 100_000 + b".5}", "n: Input should be a valid integer"),
        (b'{"n": 5', "not valid JSON"),
    ],
)
def test_unparseable_json_bodies_are_422(client, body, message):
    r = client.post("/sample", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_integral_floats_are_integers_as_the_schema_says(client):
    r = client.post("/sample", json={"n": 154.0, "seed": 3.0})
    assert r.status_code == 200 and len(r.json()["latents"]) == 154
    assert (
        r.json()["latents"] == client.post("/sample", json={"n": 154, "seed": 3}).json()["latents"]
    )
    for bad in (b'{"n": 154.5}', b'{"n": true}', b'{"n": "154"}', b'{"n": 1e400}'):
        r = client.post("/sample", content=bad, headers={"content-type": "application/json"})
        assert r.status_code == 422, bad
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SampleRequest"]
    assert schema["properties"]["n"]["type"] == "integer"


def test_a_million_wrong_values_make_one_problem(client):
    r = client.post("/encode", json={"images": [[[["x"] * 1000] * 100] * 10]})
    assert r.status_code == 422
    assert r.json()["detail"] == "images.0.0.0.0: Input should be a valid number"


# Methods and messages -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/sample", "GET, POST"),
        ("PUT", "/interpolate", "GET, POST"),
        ("PUT", "/models/tiny", "DELETE, GET"),
        ("PATCH", "/models", "GET, POST"),
        ("GET", "/encode", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_405_names_every_allowed_method(client, method, path, allow):
    r = client.request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allow
    assert r.json()["detail"] == "Method Not Allowed"


def test_no_store_path_in_answers_about_damaged_files(client, app_and_store):
    store = app_and_store[1]
    decoder = store.bundle_dir("tiny") / "decoder.safetensors"
    decoder.write_bytes(decoder.read_bytes()[:100])
    root = str(store.root.resolve())
    answers = [
        client.get("/sample", params={"n": 2}),
        client.get("/sample", params={"n": 2, "version": 1}),
        client.get("/models/tiny"),
        client.get("/models"),
        client.get("/readyz"),
    ]
    assert [a.status_code for a in answers] == [503, 404, 200, 200, 503]
    for answer in answers:
        assert root not in answer.text and "<store>/models/tiny/bundle" in answer.text


def test_redact_keeps_paths_inside_the_store(tmp_path):
    text = f"{tmp_path}/models/x/potentials/a.npz is torn; {tmp_path} is the store"
    assert (
        redact(text, tmp_path) == "<store>/models/x/potentials/a.npz is torn; <store> is the store"
    )
    assert redact("nothing here", tmp_path) == "nothing here"


# Bundles --------------------------------------------------------------------------------
def _copy(bundle: Path, tmp: Path) -> Path:
    import shutil

    dest = tmp / "copy"
    shutil.copytree(bundle, dest)
    return dest


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            claim_latents(1_875_000_000),
            "holds 64 bytes of data; its header promises 30,000,000,000",
        ),
        (claim_latents(187_500_000_000), "promises 3,000,000,000,000"),
        (
            deep_json("config.json"),
            "config.json is not a valid bundle config (JSON nested too deeply)",
        ),
        (
            deep_json("metrics.json"),
            "metrics.json is not a valid metrics file (JSON nested too deeply)",
        ),
        (
            lambda p: (p / "metrics.json").write_text('{"x": ' + "1" * 5000 + "}"),
            "digits",
        ),
        (lambda p: (p / "config.json").write_text(" " * (2 << 20)), "at most 1,048,576"),
    ],
)
def test_lying_bundle_files_are_refused_before_allocation(bundle_dir, tmp_path, edit, message):
    copy = _copy(bundle_dir, tmp_path)
    edit(copy)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_bundle(copy)


def test_npy_header_of_another_shape_or_dtype_is_refused(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    np.save(copy / "latents.npy", np.zeros((30, 4), np.float64))
    with pytest.raises(ValueError, match=r"must hold float32 \(30, 4\), its header says float64"):
        load_bundle(copy)


def test_weights_of_the_wrong_shape_are_refused_from_their_header(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    from safetensors.numpy import load_file

    weights = load_file(str(copy / "encoder.safetensors"))
    name = next(k for k in weights if k.endswith("weight"))
    weights[name] = np.zeros((4, 4), np.float32)
    save_file(weights, str(copy / "encoder.safetensors"))
    with pytest.raises(ValueError, match=f"tensor '{name}' is \\(4, 4\\), expected"):
        load_bundle(copy)


# Archives -------------------------------------------------------------------------------
LIMITS = UploadLimits(max_bytes=1 << 20, max_members=12)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (tar_meta_bomb("gnu", 1 << 20), "extension header .* of 1,048,576 bytes"),
        (tar_meta_bomb("pax", 1 << 20), "extension header .* of 1,048,576 bytes"),
        (tar_link(tarfile.SYMTYPE), "not a plain file or directory"),
        (tar_link(tarfile.LNKTYPE), "not a plain file or directory"),
        (tar_sparse(), "not a plain file or directory"),
        (
            zip_directory_bomb(1000),
            r"central directory is [\d,]+ bytes; 12 members need at most 12,288",
        ),
        (b"BZh91AY&SY" + b"\0" * 64, "not a readable"),
    ],
)
def test_archives_are_judged_by_their_headers(tmp_path, data, message):
    with pytest.raises(ArchiveError, match=message):
        extract_archive(data, tmp_path, LIMITS)
    assert list(tmp_path.iterdir()) == []


def test_a_chain_of_extension_headers_is_refused(tmp_path):
    buf = io.BytesIO()
    for k in range(20):
        info = tarfile.TarInfo(f"././@LongLink{k}")
        info.type = tarfile.GNUTYPE_LONGNAME
        name = f"bundle/{'n' * 200}{k}".encode() + b"\0"
        info.size = len(name)
        buf.write(info.tobuf(tarfile.GNU_FORMAT) + name + b"\0" * (-len(name) % 512))
    buf.write(b"\0" * 1024)
    with pytest.raises(ArchiveError, match="over 8 extension headers"):
        extract_archive(buf.getvalue(), tmp_path, LIMITS)


def test_zip64_and_unknown_compression_are_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("bundle/a", b"a" * 100)
    data = buf.getvalue()
    end = data.rfind(b"PK\x05\x06")
    locator = b"PK\x06\x07" + bytes(16)
    with pytest.raises(ArchiveError, match="zip64"):
        extract_archive(data[:end] + locator + data[end:], tmp_path, LIMITS)
    # Compression method 99 (AES) in both the local header and the directory entry.
    odd = bytearray(data)
    for sig, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        pos = odd.find(sig)
        odd[pos + at : pos + at + 2] = struct.pack("<H", 99)
    with pytest.raises(ArchiveError, match="not a readable zip archive"):
        extract_archive(bytes(odd), tmp_path, LIMITS)


def test_a_valid_archive_still_unpacks(bundle_dir, tmp_path):
    from tests.service_helpers import bundle_archive

    extract_archive(bundle_archive(bundle_dir), tmp_path, UploadLimits())
    assert (tmp_path / "bundle" / "config.json").is_file()


def test_hostile_upload_answers_422_over_http(client, bundle_dir):
    r = client.post(
        "/models",
        data={"name": "new"},
        files={"bundle": ("b.tar.bz2", tar_meta_bomb("gnu", 1 << 20))},
        headers=KEY,
    )
    assert r.status_code == 422 and "extension header" in r.json()["detail"]


# Clients and proxies --------------------------------------------------------------------
def test_forwarded_headers_are_trusted_only_from_named_proxies(tmp_path):
    plain = server_options(Settings(store=tmp_path))
    assert plain["proxy_headers"] is False
    named = Settings(store=tmp_path, forwarded_allow_ips=("10.0.0.2", "10.1.0.0/16"))
    assert server_options(named)["proxy_headers"] is True
    assert server_options(named)["forwarded_allow_ips"] == ["10.0.0.2", "10.1.0.0/16"]
    from_env = Settings(store=tmp_path, forwarded_allow_ips='["::1"]')  # JSON, as in the env
    assert from_env.forwarded_allow_ips == ("::1",)
    for bad in ("*", "proxy.example", "10.0.0.0/33"):
        with pytest.raises(ValidationError, match="not an IP address or network"):
            Settings(store=tmp_path, forwarded_allow_ips=(bad,))


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::7", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("testclient", "testclient"),
    ],
)
def test_throttle_counts_a_client_by_address_and_ipv6_by_its_64(peer, key):
    assert client_of({"client": (peer, 1234)}) == key


# Request heads --------------------------------------------------------------------------
def _head(size: int) -> bytes:
    pad = b"a" * (size - 60)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + pad + b"\r\n\r\n"
    return head


@pytest.mark.parametrize("pieces", [1, 16])
def test_request_heads_over_the_limit_are_431_however_they_arrive(pieces):
    data = _head(MAX_HEAD_BYTES + 1000)
    conn = HeadLimitedConnection()
    step = -(-len(data) // pieces)
    with pytest.raises(h11.RemoteProtocolError):
        for start in range(0, len(data), step):
            conn.receive_data(data[start : start + step])
            while conn.next_event() is not h11.NEED_DATA:
                pass
    assert conn.refusal == 431


def test_the_schema_documents_the_431(client):
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "431" in op["responses"], (method, path)


def test_request_heads_under_the_limit_parse():
    conn = HeadLimitedConnection()
    conn.receive_data(_head(MAX_HEAD_BYTES - 200))
    event = conn.next_event()
    assert isinstance(event, h11.Request) and conn.refusal == 400


def test_every_setting_is_documented():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text()
    missing = [n for n in Settings.model_fields if f"`AEOT_{n.upper()}`" not in docs]
    assert missing == []
    env = Settings(forwarded_allow_ips=("10.0.0.2",)).to_env()
    assert json.loads(env["AEOT_FORWARDED_ALLOW_IPS"]) == ["10.0.0.2"]
