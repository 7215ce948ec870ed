"""Settings from the environment, JSON logs, device mapping, worker scheduling and ETA."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from service.device import index_backend, torch_device
from service.logs import JsonFormatter
from service.settings import Settings
from service.store import ModelStore
from service.worker import Worker, _eta
from tests.service_helpers import make_settings


def test_settings_read_aeot_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AEOT_PORT", "9123")
    monkeypatch.setenv("AEOT_STORE", str(tmp_path))
    monkeypatch.setenv("AEOT_API_KEY", "s3cr3t-value")
    monkeypatch.setenv("AEOT_WORKER", "false")
    monkeypatch.setenv("AEOT_LOG_FORMAT", "json")
    s = Settings()
    assert (s.port, s.store, s.worker, s.log_format) == (9123, tmp_path, False, "json")
    assert s.mutations_enabled() and s.api_key.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t" not in repr(s)  # the key is a secret
    env = s.to_env()
    assert env["AEOT_API_KEY"] == "s3cr3t-value" and env["AEOT_PORT"] == "9123"
    assert Settings(**{k[5:].lower(): v for k, v in env.items()}) == s


def test_settings_defaults_and_validation(monkeypatch):
    for key in ("AEOT_PORT", "AEOT_API_KEY", "AEOT_HOST"):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert (s.host, s.port, s.device, s.default_model) == ("127.0.0.1", 8000, "auto", "digits")
    assert not s.mutations_enabled()
    monkeypatch.setenv("AEOT_DEVICE", "tpu")
    with pytest.raises(ValidationError, match="device"):
        Settings()
    with pytest.raises(ValidationError):
        Settings(target_l1=0)


def test_json_log_lines():
    record = logging.LogRecord("aeot.test", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    record.model = "tiny"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello x" and line["level"] == "INFO" and line["model"] == "tiny"
    assert line["time"].endswith("Z")


def test_device_mapping():
    assert torch_device("cpu") == "cpu"
    assert index_backend("cpu") in ("faiss", "torch")
    assert torch_device("auto") in ("cpu", "cuda")


def test_empty_store_schedules_the_default_training_once(tmp_path):
    settings = make_settings(tmp_path / "store", embedded_default=True, default_model="digits")
    store = ModelStore(settings.store)
    worker = Worker(store, settings)
    worker.schedule()
    worker.schedule()
    jobs = store.jobs()
    assert [(j.kind, j.model, j.status) for j in jobs] == [("train", "digits", "queued")]


def test_eta_extrapolates_log_l1():
    assert _eta([], 0.05, 1.0) is None
    assert _eta([(0.0, 0.4), (10.0, 0.2)], 0.05, 10.0) == pytest.approx(20.0)
    assert _eta([(0.0, 0.2), (10.0, 0.3)], 0.05, 10.0) is None  # not improving
    assert _eta([(0.0, 0.2), (10.0, 0.04)], 0.05, 10.0) == 0.0


def test_singular_rule_settings_are_checked_up_front(tmp_path):
    assert Settings(store=tmp_path).singular_rule is None  # the solver's default (gap)
    assert Settings(store=tmp_path, singular_threshold=0.75).singular_threshold == 0.75
    assert Settings(store=tmp_path, singular_rule="quantile", singular_quantile=0.8)
    with pytest.raises(ValidationError, match="needs singular_threshold"):
        Settings(store=tmp_path, singular_rule="fixed")
    with pytest.raises(ValidationError, match="only used by rule 'fixed'"):
        Settings(store=tmp_path, singular_rule="gap", singular_threshold=0.5)
    with pytest.raises(ValidationError):
        Settings(store=tmp_path, singular_rule="largest")
    with pytest.raises(ValidationError):
        Settings(store=tmp_path, singular_threshold=4.0)  # radians, below pi


def _threads_in_a_new_thread() -> int:
    import threading

    import torch

    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_server_runs_requests_with_its_thread_count_and_restores_it(tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app

    # The count set at startup is what threads started later (the request threadpool) get.
    before = _threads_in_a_new_thread()
    settings = make_settings(tmp_path / "store", request_threads=before + 1)
    with TestClient(create_app(settings, poll=False)):
        assert _threads_in_a_new_thread() == before + 1
    assert _threads_in_a_new_thread() == before
