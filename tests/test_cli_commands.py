"""The command line as a user meets it: one-line errors, settings as options, train, models."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from models import load_bundle
from service.cli import app as cli_app
from service.cli_train import epoch_total, queue_served_dataset
from service.settings import Settings
from service.store import ModelStore
from tests.service_helpers import (
    API_KEY,
    copy_store,
    fitted_template,
    free_port,
    live_server,
    make_settings,
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
    served = queue_served_dataset(
        overrides, "data/mnist", name=None, subset=20, epochs=1, latent_dim=None
    )
    assert served["default_model"] == "mnist" and served["embedded_default"] is False
    (job,) = ModelStore(empty_cwd / "store").jobs("mnist")
    assert job.kind == "train" and job.train_plan is not None
    assert job.train_plan.data.path == str(empty_cwd / "data" / "mnist")  # absolute
    assert job.train_plan.subset == 20
    queue_served_dataset(overrides, "data/mnist", name=None, subset=20, epochs=1, latent_dim=None)
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


def test_a_declined_confirmation_aborts_without_an_error_line(empty_cwd):
    run = CliRunner().invoke(cli_app, ["models", "delete", "x"], input="n\n")
    assert run.exit_code == 1
    assert run.output.splitlines()[-1] == "Aborted." and "error" not in run.output
