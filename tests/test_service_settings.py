"""Settings from the environment, JSON logs, device mapping, worker scheduling and ETA."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from pydantic import ValidationError

from models import resolve_device
from service.logs import JsonFormatter
from service.settings import Settings
from service.store import ModelStore
from service.worker import Worker, _eta
from solver import (
    DEFAULT_RULE,
    FixedThreshold,
    GapThreshold,
    QuantileThreshold,
    available_backends,
    backend_for_device,
    parse_rule,
)
from tests.service_helpers import ROOT, make_settings


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
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    assert backend_for_device("cpu") == available_backends("cpu")[0]
    assert set(available_backends("cpu")) <= {"amx", "simd", "faiss", "torch"}
    assert backend_for_device(resolve_device("auto")) == available_backends()[0]


def _pthread_blas_threads() -> set[int]:
    """Threads of each pthreads-built OpenBLAS (numpy's, scipy's) loaded in this process."""
    from threadpoolctl import threadpool_info

    pools = [
        p
        for p in threadpool_info()
        if p["user_api"] == "blas" and p.get("threading_layer") == "pthreads"
    ]
    if not pools:
        pytest.skip("numpy and scipy load no pthreads-built OpenBLAS here (another BLAS)")
    return {p["num_threads"] for p in pools}


def test_cpu_threads_sets_torch_and_blas_and_restores_them():
    import threading

    import scipy.linalg  # noqa: F401 - loads scipy's own OpenBLAS

    from models import cpu_threads

    torch_before, blas_before = torch.get_num_threads(), _pthread_blas_threads()
    seen: list[set[int]] = []
    with cpu_threads(3):
        assert torch.get_num_threads() == 3 and _pthread_blas_threads() == {3}
        # Threads started inside the block (a server's request threads) run with the cap.
        thread = threading.Thread(target=lambda: seen.append(_pthread_blas_threads()))
        thread.start()
        thread.join()
    assert seen == [{3}]
    assert torch.get_num_threads() == torch_before and _pthread_blas_threads() == blas_before
    with cpu_threads(None):
        assert torch.get_num_threads() == torch_before and _pthread_blas_threads() == blas_before


_LATE_BLAS = """
import os
from threadpoolctl import threadpool_info
from models import cpu_threads
before = {p["filepath"] for p in threadpool_info()}
with cpu_threads(1):
    import scipy.linalg  # scipy's own OpenBLAS loads here, inside the block
late = [p for p in threadpool_info() if p["user_api"] == "blas" and p["filepath"] not in before]
print(sorted({p["num_threads"] for p in late}), os.environ.get("OPENBLAS_NUM_THREADS"))
"""


def test_cpu_threads_reaches_an_openblas_loaded_inside_the_block():
    """A BLAS the block loads (the lazy solver loads scipy and FAISS late) starts capped too."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(
        [sys.executable, "-c", _LATE_BLAS], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    counts, after = run.stdout.rsplit(" ", 1)
    if counts == "[]":
        pytest.skip("scipy shares numpy's BLAS here: nothing loads inside the block")
    assert counts == "[1]" and after.strip() == "None"


def test_empty_store_schedules_the_default_training_once(tmp_path):
    settings = make_settings(tmp_path / "store", embedded_default=True, default_model="digits")
    store = ModelStore(settings.store)
    worker = Worker(store, settings)
    worker.schedule()
    worker.schedule()
    jobs = store.queue.jobs()
    assert [(j.kind, j.model, j.status) for j in jobs] == [("train", "digits", "queued")]


def test_eta_extrapolates_log_l1():
    assert _eta([], 0.05, 1.0) is None
    assert _eta([(0.0, 0.4), (10.0, 0.2)], 0.05, 10.0) == pytest.approx(20.0)
    assert _eta([(0.0, 0.2), (10.0, 0.3)], 0.05, 10.0) is None  # not improving
    assert _eta([(0.0, 0.2), (10.0, 0.04)], 0.05, 10.0) == 0.0


def test_singular_rule_setting_is_one_value_checked_up_front(tmp_path):
    assert parse_rule(Settings(store=tmp_path).singular_rule) == DEFAULT_RULE
    cases = {
        "fixed:0.75": FixedThreshold(radians=0.75),
        "quantile": QuantileThreshold(q=0.9),
        "quantile:0.8": QuantileThreshold(q=0.8),
        "gap": GapThreshold(),
        "gap:0.6": GapThreshold(min_regular=0.6),
    }
    for text, rule in cases.items():
        assert parse_rule(Settings(store=tmp_path, singular_rule=text).singular_rule) == rule
    for bad, message in [
        ("fixed", "fixed:radians"),  # a fixed rule needs its angle
        ("fixed:4.0", "radians"),  # radians, below pi
        ("largest", "singular rule must be"),
        ("quantile:x", "not a number"),
        ("quantile:1.5", "quantile must be"),
    ]:
        with pytest.raises(ValidationError, match=message):
            Settings(store=tmp_path, singular_rule=bad)


def test_retired_singular_variables_are_refused_not_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("AEOT_SINGULAR_THRESHOLD", "0.75")
    with pytest.raises(ValidationError, match="AEOT_SINGULAR_RULE=fixed"):
        Settings(store=tmp_path)


def test_solver_settings_as_json_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("AEOT_FIT_NEWTON", '{"growth": 2, "max_stage_iters": 4}')
    settings = Settings(store=tmp_path)
    assert settings.fit_newton == {"growth": 2, "max_stage_iters": 4}
    assert json.loads(settings.to_env()["AEOT_FIT_NEWTON"]) == settings.fit_newton
    with pytest.raises(ValidationError, match="grwoth"):
        Settings(store=tmp_path, fit_newton={"grwoth": 2})


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
