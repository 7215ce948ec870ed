"""The OpenAPI schema is true: every answer's status, media type and body are documented."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service import schemas
from service.app import create_app
from tests.service_helpers import (
    API_KEY,
    bundle_archive,
    copy_store,
    fitted_template,
    make_settings,
    write_bundle,
)

KEY = {"X-API-Key": API_KEY}
FIT = "/models/{name}/fit"

# (method, documented path, request path, request arguments)
CALLS = [
    ("get", "/healthz", "/healthz", {}),
    ("get", "/readyz", "/readyz", {}),
    ("get", "/sample", "/sample", {"params": {"n": 4}}),
    ("get", "/sample", "/sample", {"params": {"n": 4, "format": "npy"}}),
    ("get", "/sample", "/sample", {"params": {"n": 4, "format": "png"}}),
    ("get", "/sample", "/sample", {"params": {"n": "x"}}),
    ("get", "/sample", "/sample", {"params": {"model": "nosuch"}}),
    ("post", "/sample", "/sample", {"json": {"n": 4, "seed": 2}}),
    ("post", "/sample", "/sample", {"json": {"n": 10**5}}),
    ("get", "/interpolate", "/interpolate", {"params": {"start_index": 0, "end_index": 3}}),
    (
        "get",
        "/interpolate",
        "/interpolate",
        {"params": {"start_index": 0, "end_index": 3, "format": "png"}},
    ),
    (
        "post",
        "/interpolate",
        "/interpolate",
        {"json": {"start": [0] * 4, "end": [0.1] * 4, "images": True}},
    ),
    ("post", "/interpolate", "/interpolate", {"json": {"start": [0] * 4, "end": [9] * 4}}),
    ("get", "/singularities", "/singularities", {"params": {"limit": 3}}),
    ("get", "/singularities", "/singularities", {"params": {"format": "png"}}),  # d = 4 picture
    ("get", "/models", "/models", {}),
    ("get", "/models/{name}", "/models/tiny", {}),
    ("get", "/models/{name}", "/models/nosuch", {}),
    ("post", FIT, "/models/tiny/fit", {"json": {}}),
    ("post", FIT, "/models/tiny/fit", {"json": {}, "headers": {"X-API-Key": "x"}}),
    ("post", FIT, "/models/tiny/fit", {"json": {"target_l1": 0.2}, "headers": KEY}),
    ("post", FIT, "/models/tiny/fit", {"json": {}, "headers": KEY}),  # 409: one is queued
    ("post", "/models", "/models", {"data": {"name": "tiny"}, "headers": KEY, "files": "bundle"}),
    ("post", "/models", "/models", {"data": {"name": "other"}, "headers": KEY, "files": "bundle"}),
    ("delete", "/models/{name}", "/models/other", {"headers": KEY}),
    ("delete", "/models/{name}", "/models/other", {"headers": KEY}),  # 404 now
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    store = copy_store(fitted_template(base), base / "openapi-store")
    archive = bundle_archive(write_bundle(base / "openapi-bundle", n=30, d=4))
    with TestClient(create_app(make_settings(store.root), store=store)) as client:
        yield client, client.get("/openapi.json").json(), archive


def _validate(spec: dict, content: dict, body: object) -> None:
    ref = content.get("schema", {}).get("$ref")
    if ref is not None:
        model = getattr(schemas, ref.rsplit("/", 1)[-1])
        model.model_validate(body)


def test_no_fastapi_default_error_schema(setup):
    _, spec, _ = setup
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (method, path, status)


@pytest.mark.parametrize(("method", "documented", "path", "kwargs"), CALLS)
def test_answer_is_documented(setup, method, documented, path, kwargs):
    client, spec, archive = setup
    kwargs = dict(kwargs)
    if kwargs.get("files") == "bundle":
        kwargs["files"] = {"bundle": ("b.tar.gz", archive)}
    r = client.request(method.upper(), path, **kwargs)
    op = spec["paths"][documented][method]
    assert str(r.status_code) in op["responses"], (r.status_code, r.text)
    answer = op["responses"][str(r.status_code)]
    if r.status_code == 204:
        assert not r.content
        return
    media = r.headers["content-type"].split(";")[0]
    assert media in answer["content"], (media, list(answer["content"]))
    if media == "application/json":
        _validate(spec, answer["content"][media], r.json())
