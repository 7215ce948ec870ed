"""/docs and /redoc work offline, and the OpenAPI schema explains every operation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service_helpers import make_settings


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = tmp_path_factory.mktemp("docs") / "store"
    app = create_app(make_settings(Path(store)), start_worker=False, poll=False)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_reference_only_served_local_assets(client, page):
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", r.text)
    assert urls, "the page loads no asset at all?"
    assert not [u for u in urls if "//" in u], "a page asset points off the server"
    assert "fonts.googleapis" not in r.text and "cdn." not in r.text
    policy = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data: blob:" in policy
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, "no script referenced"
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".js"):
            assert len(asset.content) > 100_000, url  # the real bundle, not a stub


def test_api_key_security_scheme(client):
    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["APIKey"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, method in [("/models/{name}/fit", "post"), ("/models", "post")]:
        assert {"APIKey": []} in spec["paths"][path][method]["security"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def _resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def _has_example(spec: dict, op: dict) -> bool:
    params = op.get("parameters", [])
    if any("examples" in p.get("schema", {}) or "example" in p for p in params):
        return True
    for content in op.get("requestBody", {}).get("content", {}).values():
        schema = _resolve(spec, content["schema"])
        if "examples" in schema or any("examples" in p for p in schema["properties"].values()):
            return True
    ok = op["responses"].get("200", {}).get("content", {}).get("application/json", {})
    return "examples" in _resolve(spec, ok.get("schema", {}))


def test_every_operation_has_examples_and_described_parameters(client):
    spec = client.get("/openapi.json").json()
    ops = [(p, m, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert len(ops) >= 15
    for path, method, op in ops:
        where = f"{method.upper()} {path}"
        assert op.get("description") or op.get("summary"), where
        assert _has_example(spec, op), f"{where} has no example"
        for param in op.get("parameters", []):
            assert param.get("description"), f"{where}: parameter {param['name']} undescribed"
        for content in op.get("requestBody", {}).get("content", {}).values():
            schema = _resolve(spec, content["schema"])
            for name, prop in schema["properties"].items():
                assert prop.get("description"), f"{where}: body field {name} undescribed"
