"""The command line as a user meets it: one-line errors, settings as options, train, models."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import httpx
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from models import DataOptions, TrainOptions, load_bundle
from models.options import DECODER_SCHEDULES, options_of
from models.train import checkpoint_progress
from service.app import create_app
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
    labelled_template,
    live_server,
    make_settings,
    wait_for,
    write_bundle,
)
from tests.test_training import write_idx, write_npz


def invoke(*args: str):
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


def _option_names(command) -> set[str]:
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
        "cosine", "--device", "cpu", "--class-names", "disc, ring,square,cross",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "shapes: 40 images of 1x8x8, 4 classes (disc, ring, square, cross)" in run.stdout
    assert "model shapes: 40 latents in d=8" in run.stdout
    store = ModelStore(empty_cwd / "store")
    assert [j.kind for j in store.queue.jobs("shapes")] == ["fit"]
    bundle = load_bundle(store.bundle_dir("shapes"))
    assert bundle.labels is not None and bundle.labels.shape == (40,)
    assert bundle.config.class_names == ("disc", "ring", "square", "cross")
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
    (job,) = ModelStore(empty_cwd / "store").queue.jobs("mnist")
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
        assert "key" not in remote.stderr.lower()  # a 403 that is not about the key
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


def _interrupt_after(proc: subprocess.Popen[str], ready) -> tuple[str, str]:
    """Send Ctrl-C (SIGINT) to ``proc`` once ``ready()`` holds; its output after it ends."""
    assert wait_for(lambda: ready() or proc.poll() is not None, timeout=120)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return out, err


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_rerun_names_the_epoch_it_resumes_after(empty_cwd):
    # 400 images: epochs long enough that the signal lands in the joint phase on any machine
    # (with 40, an idle machine had reached the decoder phase by the time it was sent).
    data = write_npz(empty_cwd / "shapes.npz", n=400)
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

    _, err = _interrupt_after(again, resumed)
    assert again.returncode == 130, err
    assert lines[-1].startswith(f"resuming after epoch {epoch} (joint phase) from the checkpoint")


# ----------------------------------------------------------------------------- API parity

SERVER_COMMANDS = {"serve", "worker", "fit", "train", "demo", "store rebuild"}


def _leaf_commands(group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def _api_parameters(spec: dict, method: str, path: str) -> set[str]:
    """The query, path and body parameters of one operation of the OpenAPI schema."""
    operation = spec["paths"][path][method.lower()]
    names = {p["name"] for p in operation.get("parameters", [])}
    for media in operation.get("requestBody", {}).get("content", {}).values():
        schema = spec["components"]["schemas"][media["schema"]["$ref"].rsplit("/", 1)[-1]]
        names |= set(schema["properties"])
    return names


def test_every_client_command_sets_every_parameter_of_its_endpoint(tmp_path):
    spec = create_app(make_settings(tmp_path / "store")).openapi()
    checked = []
    for name, command in _leaf_commands(typer.main.get_command(cli_app)):
        endpoint = getattr(command.callback, "endpoint", None)
        if endpoint is None:  # only the commands that run the server call no endpoint
            assert " ".join(name) in SERVER_COMMANDS, name
            continue
        options = {p.name for p in command.params}
        for parameter in _api_parameters(spec, endpoint.method, endpoint.path):
            assert endpoint.parameter(parameter) in options, (name, parameter)
        checked.append(" ".join(name))
    assert sorted(checked) == [
        "interpolate",
        "models delete",
        "models list",
        "models refit",
        "models register",
        "models show",
        "models train",
        "sample",
        "singularities",
    ]


def test_every_option_name_is_whole_in_help_at_80_columns():
    for name, command in _leaf_commands(typer.main.get_command(cli_app)):
        run = CliRunner().invoke(cli_app, [*name, "--help"], env={"COLUMNS": "80"})
        assert run.exit_code == 0, name
        assert "…" not in run.stdout, name
        assert max(len(line) for line in run.stdout.splitlines()) <= 80, name
        for param in command.params:
            for flag in (*param.opts, *param.secondary_opts):
                if flag.startswith("--"):
                    assert flag in run.stdout, (name, flag)


def test_a_registered_path_that_does_not_exist_says_so(empty_cwd):
    run = invoke("models", "register", str(empty_cwd / "missing"))
    assert run.exit_code == 1
    assert run.stderr.splitlines() == [f"error: {empty_cwd / 'missing'} does not exist"]


def test_a_busy_port_is_one_line_with_a_port_hint_before_anything_starts(empty_cwd):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        run = invoke("serve", "--port", str(port), "--no-worker", "--no-embedded-default")
    assert run.exit_code == 1
    assert run.stdout == ""  # no banner
    assert run.stderr.splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use (another server?): pass --port with a "
        "free one, or stop the other"
    ]
    assert list(empty_cwd.iterdir()) == []


def test_bad_array_files_are_one_line_without_warnings_or_unsafe_advice(empty_cwd):
    np.save(empty_cwd / "nan.npy", np.full((5, 8, 8), np.nan, np.float32))
    (empty_cwd / "corrupt.npy").write_bytes(b"these bytes are no array")
    for file, message in (
        ("nan.npy", "float images must be finite, got 320 NaN or inf values"),
        ("corrupt.npy", "is not a readable .npy/.npz file: it has no .npy or .npz header"),
    ):
        run = CliRunner().invoke(cli_app, ["train", str(empty_cwd / file)])
        assert run.exit_code == 1
        (line,) = run.stderr.splitlines()  # one line: no numpy RuntimeWarning before it
        assert line.startswith("error: ") and message in line, line
        assert "pickle" not in line


@pytest.mark.slow
def test_client_commands_take_the_api_parameters_and_speak_in_options(tmp_path_factory, tmp_path):
    store = copy_store(labelled_template(tmp_path_factory.getbasetemp()), tmp_path / "store")
    with live_server(make_settings(store.root, default_model="lab")) as url:
        at = ("--url", url)
        version = httpx.get(f"{url}/models/lab").json()["served_version"]
        # sample: --label, --version and --offset give what the API gives for them
        params = {"n": 6, "seed": 3, "label": 2, "version": version, "offset": 4}
        expected = httpx.get(f"{url}/sample", params={**params, "format": "npy"}).content
        out = tmp_path / "s.npy"
        options = [f"--{k}={v}" for k, v in params.items()]
        assert invoke("sample", str(out), *options, *at).exit_code == 0
        np.testing.assert_array_equal(np.load(out), np.load(io.BytesIO(expected)))
        # interpolate: two cells of a class, and two source points (after `--`: a minus sign)
        body = {"label": 1, "seed": 2, "steps": 5}
        api = httpx.post(f"{url}/interpolate", json=body).json()
        strip = tmp_path / "strip.png"
        run = invoke("interpolate", "--label=1", "--seed=2", "--steps=5", f"--out={strip}", *at)
        assert run.exit_code == 0 and Image.open(strip).size[0] > 0
        for c in api["crossings"]:
            assert f"(score {c['angle']:.3f} {api['unit']})" in run.stdout
        assert run.stdout.splitlines()[-1].endswith(
            f"(5 frames, {len(api['crossings'])} crossings)"
        )
        points = invoke("interpolate", "--steps=4", *at, "--", "-0.4,-0.4,-0.4", "0.4,0.4,0.4")
        assert points.exit_code == 0 and "(4 frames," in points.stdout
        # singularities: the threshold in the frame's unit, and each pair's picture
        s = httpx.get(f"{url}/singularities", params={"limit": 3, "version": version}).json()
        pairs = tmp_path / "pairs"
        run = invoke(
            "singularities", "--limit=3", f"--version={version}", f"--pair-images={pairs}", *at
        )
        assert run.exit_code == 0, run.output
        threshold = (
            "no threshold"
            if s["threshold"] is None
            else (f"threshold {s['threshold']:.4f} {s['unit']}")
        )
        assert run.stdout.startswith(f"model lab v{version}: {threshold} ({s['rule']} rule, ")
        assert s["frame"] != "diffusion" or " rad" not in run.stdout
        assert sorted(p.name for p in pairs.iterdir()) == sorted(
            f"pair-{p['i']}-{p['j']}.png" for p in s["pairs"]
        )
        # the class names beside the labels
        show = invoke("models", "show", "lab", *at)
        assert "classes       0 south-west, 1 south-east, 2 north, 3 below" in show.stdout
        # the API's 422s in the command's words
        refit = ("models", "refit", "lab", "--target-l1", "5", "--api-key", API_KEY)
        for args, line in (
            (("sample", "x.png", "--n", "0"), "error: --n must be >= 1"),
            (("sample", "x.png", "--label", "-1"), "error: --label must be >= 0"),
            (("interpolate", "0", "1", "--steps", "1"), "error: --steps must be >= 2"),
            (refit, "error: --target-l1 must be < 2"),
        ):
            bad = invoke(*args, *at)
            assert bad.exit_code == 1 and bad.stderr.splitlines() == [line], args
