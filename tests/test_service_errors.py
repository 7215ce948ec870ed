"""Bad input answers 4xx with a message, never 500 or a hang."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service_helpers import API_KEY, copy_store, fitted_template, make_settings

KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    store = copy_store(fitted_template(base), base / "errors-store")
    settings = make_settings(
        store.root, max_n=100, max_images=16, max_steps=32, max_body_bytes=4096
    )
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as c:
        yield c


GETS = [
    ("/sample", {"n": "ten"}, 422, "n"),
    ("/sample", {"n": 0}, 422, "n"),
    ("/sample", {"n": 101}, 422, "limit of 100"),
    ("/sample", {"n": 10**12}, 422, "n"),
    ("/sample", {"n": 17, "format": "png"}, 422, "limit of 16"),
    ("/sample", {"seed": -1}, 422, "seed"),
    ("/sample", {"seed": "nan"}, 422, "seed"),
    ("/sample", {"format": "gif"}, 422, "format"),
    ("/sample", {"extended": "maybe"}, 422, "extended"),
    ("/sample", {"model": "nosuch"}, 404, "nosuch"),
    ("/sample", {"model": "../etc"}, 422, "model"),
    ("/sample", {"bogus": 1}, 422, "bogus"),
    ("/interpolate", {"start_index": 0}, 422, "end_index"),
    ("/interpolate", {}, 422, "either"),
    ("/interpolate", {"start_index": 0, "end_index": 10**6}, 422, "< 200"),
    ("/interpolate", {"start_index": 0, "end_index": 1, "steps": 33}, 422, "limit of 32"),
    ("/interpolate", {"start_index": 0, "end_index": 1, "steps": 1}, 422, "steps"),
    ("/interpolate", {"start": [0.1, 0.2], "end": [0.1, 0.2]}, 422, "4 coordinates"),
    ("/interpolate", {"start": ["nan"] * 4, "end": [0] * 4}, 422, "start"),
    ("/singularities", {"limit": -1}, 422, "limit"),
    ("/models/nosuch", {}, 404, "nosuch"),
    ("/models/BAD NAME", {}, 422, "name"),
]


@pytest.mark.parametrize(("path", "params", "status", "words"), GETS)
def test_bad_query(client, path, params, status, words):
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


POSTS = [
    ("/sample", '{"n": NaN}', 422),
    ("/sample", '{"n": 1.5}', 422),
    ("/sample", '{"n": "5x"}', 422),
    ("/sample", "[1, 2]", 422),
    ("/sample", "{not json", 422),
    ("/interpolate", '{"start": [NaN, 0, 0, 0], "end": [0, 0, 0, 0]}', 422),
    ("/interpolate", '{"start": [Infinity, 0, 0, 0], "end": [0, 0, 0, 0]}', 422),
    ("/interpolate", '{"start_index": 0, "end_index": 1, "start": [0, 0, 0, 0]}', 422),
]


@pytest.mark.parametrize(("path", "body", "status"), POSTS)
def test_bad_json_body(client, path, body, status):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_oversized_body_is_413(client):
    big = '{"n": 1, "model": "' + "a" * 10000 + '"}'
    r = client.post("/sample", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "exceeds 4096" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/sample", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_key_matrix(client):
    assert client.delete("/models/tiny").status_code == 401
    assert client.delete("/models/tiny", headers={"X-API-Key": ""}).status_code == 401
    assert client.delete("/models/tiny", headers={"X-API-Key": "wrong"}).status_code == 403
    assert client.delete("/models/nosuch", headers=KEY).status_code == 404
    assert client.post("/models/tiny/fit", json={"target_l1": -1}, headers=KEY).status_code == 422
    assert client.post("/models/nosuch/fit", json={}, headers=KEY).status_code == 404
    r = client.post("/models", data={"name": "x"}, files={"bundle": ("b", b"junk")}, headers=KEY)
    assert r.status_code == 422 and "archive" in r.json()["detail"]
    r = client.post("/models", data={"name": "Bad!"}, files={"bundle": ("b", b"x")}, headers=KEY)
    assert r.status_code == 422
    assert client.get("/sample", params={"n": 3}).status_code == 200  # still serving


MORE_POSTS = [
    ("/sample", '{"n": true}', "boolean"),
    ("/sample", '{"seed": false}', "boolean"),
    ("/interpolate", '{"start_index": true, "end_index": 1}', "boolean"),
    ("/interpolate", '{"start": [true, 0, 0, 0], "end": [0, 0, 0, 0]}', "boolean"),
    ("/interpolate", '{"start": [2, 0, 0, 0], "end": [0, 0, 0, 0]}', "source cube"),
    ("/interpolate", '{"start": [0, 0, 0, 0], "end": [0, 0, 0, -0.6]}', "source cube"),
    ("/sample", "{not json", "not valid JSON"),
]


@pytest.mark.parametrize(("path", "body", "words"), MORE_POSTS)
def test_bad_json_body_says_why(client, path, body, words):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
