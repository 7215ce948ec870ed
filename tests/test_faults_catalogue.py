"""A lost or damaged catalogue: rebuilt from the model directories, at start and while serving.

Each damage is done to a real file of a real store (copied from a fitted template): the
catalogue deleted, truncated to 0 bytes or garbled, and stray SQLite side files (``-wal``,
``-shm``, ``-journal``) appearing, truncated and deleted beside it. Reads keep answering 200
from what is loaded, ``/readyz`` says the store is degraded, and the catalogue comes back with
the same models and version numbers without a restart.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.catalog import CatalogueDamaged
from service.cli import app as cli_app
from service.job_config import JobConfig
from service.store import CatalogueLost, ModelStore
from tests.service_helpers import (
    API_KEY,
    copy_store,
    fill_disk,
    fitted_template,
    live_server,
    make_settings,
    tmpfs,
    wait_for,
)

KEY = {"X-API-Key": API_KEY}
READS = ("/sample?n=4&seed=1", "/models", "/models/tiny", "/readyz", "/singularities")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def _versions(store: ModelStore) -> dict[int, tuple[str, int | None, object]]:
    """Every potential row of model tiny: version -> (path, job, accuracy)."""
    newest = max(store.catalog.published_versions()["tiny"], 1)
    rows = {}
    for version in range(1, newest + 3):
        record = store.catalog.potential("tiny", version)
        if record is not None:
            rows[version] = (record.path, record.job_id, record.accuracy)
    return rows


def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(b"")
    else:  # garbled: the header page overwritten
        with open(path, "r+b") as f:
            f.write(os.urandom(4096))


# A lost catalogue at start is rebuilt, not refused and not re-initialised over the models.
@pytest.mark.parametrize("damage", ["truncated", "deleted", "garbled"])
def test_lost_catalogue_at_start_is_rebuilt_from_the_model_directories(base, tmp_path, damage):
    store = copy_store(fitted_template(base), tmp_path / "store")
    versions, published = _versions(store), store.catalog.published_versions()
    path = store.root / "catalog.sqlite3"
    _damage(path, damage)
    rebuilt = ModelStore(store.root)
    assert rebuilt.catalog.published_versions() == published
    assert _versions(rebuilt) == versions  # same numbers, files, jobs and accuracies
    record = rebuilt.last_rebuild
    assert record["models"] == ["tiny"] and record["skipped"] == []
    kept = list((store.root / "catalog-old").glob("*/catalog.sqlite3"))
    assert len(kept) == (1 if damage == "garbled" else 0)  # nothing worth keeping otherwise
    assert (store.root / "models" / "tiny" / "bundle" / "config.json").exists()
    assert list((store.root / "trash").iterdir()) == []
    # New jobs take ids past every job the files name: none meets an older checkpoint.
    job = rebuilt.enqueue_fit("tiny", JobConfig(), replace=True)
    assert job.id > max(j for _, j, _ in versions.values())


def test_rebuild_numbers_potentials_named_before_versions_were(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    versions = _versions(store)
    assert len(versions) >= 2
    for path, _, _ in versions.values():  # the names an older release wrote
        old = store.root / path
        old.rename(old.with_name(old.name.split("-", 1)[1]))
    (store.root / "catalog.sqlite3").unlink()
    rebuilt = ModelStore(store.root)
    again = _versions(rebuilt)
    assert [(v, j, a) for v, (_, j, a) in again.items()] == [
        (v, j, a) for v, (_, j, a) in versions.items()
    ]


def test_rebuild_withdraws_an_unreadable_newest_potential(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    newest = store.catalog.published_versions()["tiny"]
    (store.root / store.catalog.potential("tiny", newest).path).write_bytes(b"garbage" * 9)
    (store.root / "catalog.sqlite3").unlink()
    rebuilt = ModelStore(store.root)
    assert rebuilt.catalog.published_versions() == {"tiny": newest - 1}
    version, reason = rebuilt.catalog.damage("tiny")
    assert version == newest and "unreadable" in reason
    queued = rebuilt.ensure_fit_jobs(JobConfig())  # the repair the worker queues
    assert [j.model for j in queued] == ["tiny"] and rebuilt.ensure_fit_jobs(JobConfig()) == []


# A catalogue that cannot be rebuilt here stops every command with status 2.
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_foreign_catalogue_outside_a_store_exits_2(tmp_path, command, monkeypatch):
    # The commands configure the process's logging onto the runner's stream, closed after.
    root_logger = logging.getLogger()
    monkeypatch.setattr(root_logger, "handlers", list(root_logger.handlers))
    monkeypatch.setattr(root_logger, "level", root_logger.level)
    root = tmp_path / "not-a-store"
    root.mkdir()
    (root / "catalog.sqlite3").write_bytes(b"this is not sqlite" * 64)
    with pytest.raises(CatalogueLost, match="no store"):
        ModelStore(root)
    assert sorted(p.name for p in root.iterdir()) == ["catalog.sqlite3"]  # nothing created
    monkeypatch.setenv("AEOT_EMBEDDED_DEFAULT", "false")
    result = CliRunner().invoke(cli_app, [command, "--store", str(root), "--no-worker"])
    assert result.exit_code == 2, result.output
    assert "catalog.sqlite3" in result.output and "rebuild" in result.output
    assert (root / "catalog.sqlite3").read_bytes().startswith(b"this is not sqlite")


def test_damaged_catalogue_of_a_read_only_store_exits_2(base, tmp_path):
    import shutil
    import subprocess

    with tmpfs(tmp_path / "fs", "24m") as fs:
        shutil.copytree(fitted_template(base), fs / "store")
        (fs / "store" / "catalog.sqlite3").write_bytes(b"")
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        with pytest.raises(CatalogueLost, match="read-only"):
            ModelStore(fs / "store")
        result = CliRunner().invoke(cli_app, ["store", "rebuild", "--store", str(fs / "store")])
        assert result.exit_code == 2, result.output


def _reads_answer(client: TestClient, rounds: int) -> None:
    for _ in range(rounds):
        for path in READS:
            r = client.get(path)
            assert r.status_code == 200, (path, r.text)


# The catalogue deleted, truncated or garbled under a serving app: reads answer, /readyz says
# degraded, a write answers 503 (not 500), and the health check rebuilds it.
@pytest.mark.parametrize("how", ["deleted", "truncated", "garbled"])
def test_catalogue_damaged_while_serving_is_served_around_and_rebuilt(base, tmp_path, how):
    store = copy_store(fitted_template(base), tmp_path / "store")
    versions = _versions(store)
    app = create_app(make_settings(store.root), store=store, poll=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        _reads_answer(client, 2)
        served = client.get("/sample", params={"n": 4}).headers["x-potential-version"]
        _damage(store.root / "catalog.sqlite3", how)
        _reads_answer(client, 5)
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["store"]["status"] == "degraded", ready
        assert "catalog.sqlite3" in ready["store"]["problem"]
        assert "rebuilt from the model directories" in ready["reason"]
        listing = client.get("/models").json()
        assert [m["name"] for m in listing["models"]] == ["tiny"]
        r = client.post("/models/tiny/fit", json={"replace": True}, headers=KEY)
        assert r.status_code == 503 and "rebuilt" in r.json()["detail"], r.text
        assert store.heal_if_due() is not None  # what the server's poller runs
        ready = client.get("/readyz").json()
        assert ready["store"]["status"] == "ok" and ready["store"]["rebuilt"], ready
        assert ready["reason"] is None
        assert _versions(store) == versions
        r = client.get("/sample", params={"n": 4})
        assert r.headers["x-potential-version"] == served
        r = client.post("/models/tiny/fit", json={"replace": True}, headers=KEY)
        assert r.status_code == 202, r.text


def test_catalogue_damaged_while_serving_is_rebuilt_by_the_poller(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    app = create_app(make_settings(store.root), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        _reads_answer(client, 1)
        with open(store.root / "catalog.sqlite3", "r+b") as f:
            f.seek(2 * 4096)  # a page no poll reads: found by the periodic check
            f.write(os.urandom(4096))

        def healed():
            _reads_answer(client, 1)
            return client.get("/readyz").json()["store"]["rebuilt"] is not None

        assert wait_for(healed, timeout=30, interval=0.2)
        assert client.get("/readyz").json()["store"]["status"] == "ok"


# SQLite's side files appear, shrink and vanish beside the catalogue (an older release's WAL
# files, a tool that opened it in WAL mode, a journal left by a crash): nothing breaks.
@pytest.mark.parametrize("side", ["-wal", "-shm", "-journal"])
def test_stray_side_files_of_the_catalogue_break_nothing(base, tmp_path, side):
    store = copy_store(fitted_template(base), tmp_path / "store")
    versions = _versions(store)
    app = create_app(make_settings(store.root), store=store, poll=False)
    path = Path(f"{store.root / 'catalog.sqlite3'}{side}")
    with TestClient(app, raise_server_exceptions=False) as client:
        for how in ("garbled", "truncated", "deleted"):
            if how == "garbled":
                path.write_bytes(os.urandom(32768))
            elif how == "truncated" and path.exists():
                path.write_bytes(b"")
            elif path.exists():
                path.unlink()
            _reads_answer(client, 3)
            r = client.post("/models/tiny/fit", json={"replace": True}, headers=KEY)
            assert r.status_code == 202, (how, r.text)
            assert store.catalog.check() is None, how
            assert client.get("/readyz").json()["store"]["status"] == "ok"
    assert _versions(store) == versions
    assert len(store.queue.jobs("tiny")) == 1 + 3  # the template's fit and the three refits


def test_wal_catalogue_of_an_older_release_is_converted_without_losing_rows(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    path = store.root / "catalog.sqlite3"
    held = sqlite3.connect(path, isolation_level=None)
    held.execute("PRAGMA journal_mode=WAL")
    held.execute("PRAGMA wal_autocheckpoint=0")
    held.execute("UPDATE models SET created = 12345.0")  # a row only the -wal holds
    sides = {s: Path(f"{path}{s}").read_bytes() for s in ("-wal", "-shm")}
    main = path.read_bytes()
    held.close()
    path.write_bytes(main)  # as a crashed older release left them: the row in the -wal only
    for side, data in sides.items():
        Path(f"{path}{side}").write_bytes(data)
    reopened = ModelStore(store.root)
    assert reopened.catalog.models()[0].created == 12345.0
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    assert reopened.last_rebuild is None


def test_store_rebuild_command(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    published = store.catalog.published_versions()
    runner = CliRunner()
    args = ["store", "rebuild", "--store", str(store.root)]
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert len(store.queue.jobs()) == 1
    result = runner.invoke(cli_app, [*args, "--force"])
    assert result.exit_code == 0 and "rebuilt with 1 models (tiny)" in result.output
    assert store.queue.jobs() == [] and store.catalog.published_versions() == published
    _damage(store.root / "catalog.sqlite3", "garbled")
    with pytest.raises(CatalogueDamaged):
        store.catalog.models()
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 0 and "unreadable" in result.output, result.output
    assert "old catalogue is kept" in result.output
    assert ModelStore(store.root).catalog.published_versions() == published


def _hundred_reads(http: httpx.Client) -> list[int]:
    """100 reads of every kind a client makes; the status codes that were not 200."""
    bad = []
    for k in range(100):
        path = READS[k % len(READS)]
        r = http.get(path)
        if r.status_code != 200:
            bad.append(r.status_code)
    return bad


# Live damage: the catalogue emptied then garbled, the current potential emptied then garbled,
# under a running `aeot serve` (real process, its worker included): every read answers 200 and
# the store heals without a restart.
@pytest.mark.slow
def test_live_damage_is_served_around_and_healed_without_a_restart(base, tmp_path):
    store = copy_store(fitted_template(base), tmp_path / "store")
    settings = make_settings(store.root, worker=True, poll_interval=0.2)
    catalogue = store.root / "catalog.sqlite3"
    procs: list[subprocess.Popen[bytes]] = []
    healed_in = {}
    with live_server(settings, procs=procs) as url, httpx.Client(base_url=url, timeout=30) as http:

        def healthy() -> bool:
            ready = http.get("/readyz").json()
            return ready["store"]["status"] == "ok" and ready["reason"] is None

        def served() -> int:
            return int(http.get("/sample", params={"n": 2}).headers["x-potential-version"])

        assert wait_for(healthy, timeout=60, interval=0.2)
        for how in ("truncated", "garbled"):
            _damage(catalogue, how)
            start = time.monotonic()
            assert _hundred_reads(http) == [], how
            assert wait_for(lambda: http.get("/readyz").json()["store"]["rebuilt"], timeout=30)
            assert wait_for(healthy, timeout=30, interval=0.2), http.get("/readyz").text
            healed_in[f"catalogue {how}"] = time.monotonic() - start
            catalogue_rebuilt = http.get("/readyz").json()["store"]["rebuilt"]
            assert catalogue_rebuilt is not None
        for how in ("truncated", "garbled"):
            version = served()
            path = store.root / ModelStore(store.root).catalog.potential("tiny", version).path
            _damage(path, how)
            start = time.monotonic()
            assert _hundred_reads(http) == [], how
            # Withdrawn, served around, repaired by the worker: a newer version, no problem.
            assert wait_for(lambda v=version: served() > v, timeout=120, interval=0.2)
            assert wait_for(healthy, timeout=60, interval=0.2), http.get("/readyz").text
            assert http.get("/models/tiny").json()["problem"] is None
            healed_in[f"potential {how}"] = time.monotonic() - start
        assert http.get("/readyz").json()["worker"]["restarts"] == 0
        assert procs[0].poll() is None  # the same server process all along
    print("healed in (s):", {k: round(v, 1) for k, v in healed_in.items()})


# Damaged on a full disk: no room for a new catalogue; reads still answer; rebuilt once space
# returns.
def test_catalogue_damaged_on_a_full_disk_is_rebuilt_when_space_returns(base, tmp_path):
    with tmpfs(tmp_path / "fs", "24m") as fs:
        store = copy_store(fitted_template(base), fs / "store")
        app = create_app(make_settings(store.root), store=store, poll=False)
        with TestClient(app, raise_server_exceptions=False) as client:
            _reads_answer(client, 1)
            fill_disk(fs)
            _damage(store.root / "catalog.sqlite3", "garbled")
            _reads_answer(client, 3)
            assert store.heal_if_due() is None  # no room: tried, logged, tried again later
            assert client.get("/readyz").json()["store"]["status"] == "degraded"
            assert list(store.root.glob(".catalog.sqlite3.rebuild-*")) == []  # nothing left
            (fs / "filler").unlink()
            assert store.heal() is not None
            assert client.get("/readyz").json()["store"]["status"] == "ok"
            _reads_answer(client, 1)
