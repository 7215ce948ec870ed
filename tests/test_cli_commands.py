"""The command line as a user meets it: one-line errors, settings as options, train, models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import httpx
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from models import DataOptions, TrainOptions, load_bundle
from models.options import DECODER_SCHEDULES, options_of
from models.train import checkpoint_progress
from service.cli import app as cli_app
from service.cli_train import epoch_total, queue_served_dataset
from service.schemas import TrainRequest
from service.settings import Settings
from service.store import ModelStore
from tests.service_helpers import (
    API_KEY,
    ROOT,
    copy_store,
    fitted_template,
    free_port,
    live_server,
    make_settings,
    wait_for,
    write_bundle,
)
from tests.test_training import write_idx, write_npz


def invoke(*args: str):  # noqa: ANN201
    return CliRunner().invoke(cli_app, list(args))


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AEOT_STORE", raising=False)
    return tmp_path


def test_fit_in_an_empty_directory_explains_and_creates_nothing(empty_cwd):
    run = invoke("fit", "digits")
    assert run.exit_code == 1
    assert run.stderr.splitlines() == [
        "error: no model store at store: train a model first (`aeot train`), or pass --store DIR"
    ]
    assert list(empty_cwd.iterdir()) == []


def test_no_server_is_one_line_and_debug_shows_the_exception(empty_cwd):
    url = f"http://127.0.0.1:{free_port()}"
    run = invoke("sample", "x.png", "--url", url)
    assert run.exit_code == 1
    assert run.stderr.splitlines() == [
        f"error: no server at {url}: start it with `aeot serve` (or pass --url)"
    ]
    debug = invoke("--debug", "sample", "x.png", "--url", url)
    assert debug.exit_code == 1 and isinstance(debug.exception, httpx.ConnectError)


def test_every_setting_is_a_serve_and_worker_option():
    group = typer.main.get_command(cli_app)
    for command in ("serve", "worker", "fit"):
        names = {p.name for p in group.commands[command].params}  # type: ignore[attr-defined]
        assert set(Settings.model_fields) <= names, command


def test_options_override_the_environment(empty_cwd, monkeypatch):
    monkeypatch.setenv("AEOT_STORE", str(empty_cwd / "from-env"))
    run = invoke("fit", "digits", "--store", str(empty_cwd / "from-option"))
    assert run.exit_code == 1 and "from-option" in run.stderr and "from-env" not in run.stderr
    hosts = invoke("fit", "x", "--store", "s", "--allowed-hosts", "a.test", "--allowed-hosts", "b")
    assert hosts.exit_code == 1 and "no model store at s" in hosts.stderr  # the hosts parsed
    bad = invoke("fit", "digits", "--store", "s", "--target-l1", "5")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: invalid setting: target_l1: Input should be less than 2")


def _option_names(command) -> set[str]:  # noqa: ANN001
    return {p.name for p in command.params}


def test_every_door_to_training_takes_the_options_declared_once():
    group = typer.main.get_command(cli_app)
    every = {o.name for cls in (DataOptions, TrainOptions) for o in options_of(cls)}
    api = {o.name for cls in (DataOptions, TrainOptions) for o in options_of(cls) if o.api}
    assert every - api == {"device", "threads"}  # the server's own
    assert every <= _option_names(group.commands["train"])  # type: ignore[attr-defined]
    assert api <= _option_names(group.commands["serve"])  # type: ignore[attr-defined]
    remote = group.commands["models"].commands["train"]  # type: ignore[attr-defined]
    assert _option_names(remote) - {"name", "dataset", "url", "api_key"} == api
    assert set(TrainRequest.model_fields) == api | {"dataset"}
    schedule = TrainRequest.model_json_schema()["properties"]["decoder_schedule"]
    assert schedule["anyOf"][0]["enum"] == list(DECODER_SCHEDULES)


def test_training_options_are_checked_where_they_are_typed(empty_cwd):
    for args, message in (
        (("--channels", "2"), "--channels must be 1 or 3, got 2"),
        (("--image-size", "2x2"), "--image-size must be (H, W) with H, W >= 4, got (2, 2)"),
        (("--image-size", "big"), "--image-size must look like 28x28, got 'big'"),
        (("--split", "val"), "--split must be train, test or all, got 'val'"),
        (("--epochs", "0"), "--epochs must be >= 1, got 0"),
        (("--class-names", "a,,b"), "--class-names must be names of 1 to 64 characters, got ''"),
    ):
        for command in (("train", "digits"), ("models", "train", "m", "mnist")):
            run = invoke(*command, *args)
            assert run.exit_code == 1 and run.stderr.splitlines() == [f"error: {message}"], args
    assert list(empty_cwd.iterdir()) == []


def test_the_epoch_bar_total_follows_a_plateau_and_never_grows():
    # The recipe plans 30 joint + 10 decoder epochs.
    total = 40
    for epoch in range(31, 41):  # the joint phase ran to its cap
        total = epoch_total(total, epoch, 10)
    assert total == 40
    total = 40
    for epoch in range(13, 23):  # a plateau ended the joint phase after 12 epochs
        total = epoch_total(total, epoch, 10)
        assert total == 22
    assert epoch_total(40, 36, 10) == 40  # resumed in the decoder phase after the cap


def test_train_registers_the_bundle_with_labels_and_queues_its_fit(empty_cwd):
    data = write_npz(empty_cwd / "shapes.npz", n=40)
    bad = invoke("train", str(data), "--decoder-schedule", "step")
    assert bad.exit_code == 1 and "--decoder-schedule must be constant or cosine" in bad.stderr
    run = invoke(
        "train", str(data), "--epochs", "1", "--decoder-epochs", "1", "--decoder-schedule",
        "cosine", "--device", "cpu",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "shapes: 40 images of 1x8x8, 4 classes" in run.stdout
    assert "model shapes: 40 latents in d=8" in run.stdout
    store = ModelStore(empty_cwd / "store")
    assert [j.kind for j in store.jobs("shapes")] == ["fit"]
    labels = load_bundle(store.bundle_dir("shapes")).labels
    assert labels is not None and labels.shape == (40,)
    again = invoke("train", str(data), "--epochs", "1")
    assert again.exit_code == 1 and "model 'shapes' already exists" in again.stderr
    missing = invoke("train", str(empty_cwd / "nope"))
    assert missing.exit_code == 1 and "nope" in missing.stderr and "Traceback" not in missing.output


def test_serve_data_queues_the_training_once_and_serves_that_model(empty_cwd, capsys):
    write_idx(empty_cwd / "data" / "mnist")
    overrides = {"store": empty_cwd / "store", "worker": False}
    options = {"train_options": TrainOptions(subset=20, epochs=1), "data_options": DataOptions()}
    served = queue_served_dataset(overrides, "data/mnist", name=None, **options)
    assert served["default_model"] == "mnist" and served["embedded_default"] is False
    (job,) = ModelStore(empty_cwd / "store").jobs("mnist")
    assert job.kind == "train" and job.train_plan is not None
    assert job.train_plan.data.path == str(empty_cwd / "data" / "mnist")  # absolute
    assert job.train_plan.subset == 20
    queue_served_dataset(overrides, "data/mnist", name=None, **options)
    out = capsys.readouterr()
    assert "being trained already" in out.out and "--no-worker" in out.err


@pytest.mark.slow
def test_models_commands_over_a_live_server(tmp_path_factory, tmp_path):
    store = copy_store(fitted_template(tmp_path_factory.getbasetemp()), tmp_path / "store")
    bundle = write_bundle(tmp_path / "extra-bundle")
    with live_server(make_settings(store.root)) as url:
        key = ("--url", url, "--api-key", API_KEY)
        listed = invoke("models", "list", "--url", url)
        assert listed.exit_code == 0 and "* tiny" in listed.stdout and "fit done" in listed.stdout
        shown = invoke("models", "show", "tiny", "--url", url)
        assert shown.exit_code == 0 and "latents       200 in d=4" in shown.stdout
        for args in (("models", "show", "nope"), ("sample", "x.png", "--model", "nope")):
            unknown = invoke(*args, "--url", url)
            assert unknown.exit_code == 1
            assert unknown.stderr.splitlines() == [
                "error: unknown model 'nope'; known models: tiny"
            ]
        no_key = invoke("models", "delete", "tiny", "-y", "--url", url)
        assert no_key.exit_code == 1 and "--api-key" in no_key.stderr
        registered = invoke("models", "register", str(bundle), "--name", "extra", *key)
        assert registered.exit_code == 0, registered.output
        assert "registered extra: 200 latents in d=4; fit queued" in registered.stdout
        refit = invoke("models", "refit", "tiny", "--target-l1", "0.09", "--replace", *key)
        assert refit.exit_code == 0 and "refit of tiny queued (target L1 0.09)" in refit.stdout
        remote = invoke("models", "train", "t", "mnist", *key)
        assert remote.exit_code == 1 and "no data root" in remote.stderr
        deleted = invoke("models", "delete", "extra", "-y", *key)
        assert deleted.exit_code == 0 and "deleted extra" in deleted.stdout
        names = [m["name"] for m in httpx.get(f"{url}/models").json()["models"]]
        assert names == ["tiny"]
        sample = invoke("sample", str(tmp_path / "s.npy"), "--n", "5", "--url", url)
        assert sample.exit_code == 0 and np.load(tmp_path / "s.npy").shape == (5, 4)


def test_declining_to_delete_is_no_error(empty_cwd):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the command must not call
    run = CliRunner().invoke(cli_app, ["models", "delete", "x", "--url", url], input="n\n")
    assert run.exit_code == 0
    assert run.output.splitlines()[-1] == "not deleted: x" and "error" not in run.output


def _interrupt_after(proc: subprocess.Popen[str], ready) -> tuple[str, str]:  # noqa: ANN001
    """Send Ctrl-C (SIGINT) to ``proc`` once ``ready()`` holds; its output after it ends."""
    assert wait_for(lambda: ready() or proc.poll() is not None, timeout=120)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return out, err


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_rerun_names_the_epoch_it_resumes_after(empty_cwd):
    data = write_npz(empty_cwd / "shapes.npz", n=40)
    command = [sys.executable, "-m", "service.cli", "train", str(data), "--epochs", "5000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def train() -> subprocess.Popen[str]:
        return subprocess.Popen(
            command, cwd=empty_cwd, env=env, text=True, stdout=PIPE, stderr=PIPE
        )

    def checkpoints() -> list[Path]:
        return list((empty_cwd / "store" / "training").glob("shapes-*.pt"))

    out, err = _interrupt_after(train(), lambda: bool(checkpoints()))
    assert err.splitlines()[-1] == (
        "error: interrupted: the same command resumes from the last finished epoch"
    )
    (checkpoint,) = checkpoints()
    epoch, phase = checkpoint_progress(checkpoint)
    assert epoch >= 1 and phase == "joint"
    again = train()
    assert again.stdout is not None
    lines: list[str] = []

    def resumed() -> bool:
        lines.append(again.stdout.readline())  # type: ignore[union-attr]
        return lines[-1].startswith("resuming")

    _interrupt_after(again, resumed)
    assert again.returncode == 130
    assert lines[-1].startswith(f"resuming after epoch {epoch} (joint phase) from the checkpoint")
