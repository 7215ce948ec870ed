"""The images in a real Docker engine: build, serve, stop, resume, compose, two nodes, GPU image.

Runs where a Docker engine answers and either ``CI=true`` or ``AEOT_TEST_DOCKER=1``: it builds
both images (minutes, and the GPU image downloads several GB of CUDA wheels on a cold cache),
so an engine alone does not start it on a developer's machine. Under ``CI=true`` a missing
engine fails the run instead of skipping. The base image ``python:3.11-slim`` is pulled, or on
a machine without a container registry built by ``docker/stand-in-base.sh`` beforehand (as
``.ci/run`` does).

Every container, volume and network carries the label ``aeot.test=<run>`` and is removed at
the end. ``AEOT_DOCKER_FIGURES=PATH`` appends the measured figures (build seconds, image
sizes, seconds to ready, seconds to stop) to PATH as JSON lines; the tests assert no timing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
WANTED = IN_CI or os.environ.get("AEOT_TEST_DOCKER") == "1"
RUN = f"aeot-test-{os.getpid()}"  # names this run's containers, volumes and network
LABEL = f"aeot.test={RUN}"
API_KEY = "docker-test-key"
# The image's health start period: a server not ready by then is marked unhealthy.
READY_WITHIN = 180.0
# docker stop's grace before SIGKILL (s): exit code 0 means the server stopped inside it.
STOP_GRACE = 10
# Seconds a build may take on a cold cache (the GPU image downloads ~4 GB of wheels).
BUILD_TIMEOUT = 3600

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run the docker CLI; a failure raises with its output."""
    run = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and run.returncode != 0:
        output = f"{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
        raise AssertionError(f"docker {' '.join(args)} -> {run.returncode}\n{output}")
    return run


def engine_version() -> str | None:
    """The engine's version, or ``None`` when no engine answers."""
    if shutil.which("docker") is None:
        return None
    try:
        run = docker("version", "--format", "{{.Server.Version}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return None
    return run.stdout.strip() if run.returncode == 0 else None


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    """The engine's version; removes everything this run labelled when the module ends."""
    version = engine_version()
    if version is None:
        if IN_CI:
            pytest.fail("CI=true but no Docker engine answers: .ci/run installs docker.io")
        pytest.skip("no Docker engine")
    if not WANTED:
        pytest.skip("builds both images (minutes, GBs): set AEOT_TEST_DOCKER=1 (CI sets CI=true)")
    yield version
    for kind, listing in (
        ("container", ["ps", "-aq"]),
        ("volume", ["volume", "ls", "-q"]),
        ("network", ["network", "ls", "-q"]),
    ):
        ids = docker(*listing, "--filter", f"label={LABEL}", check=False).stdout.split()
        if ids:
            rm = ["rm", "-f", "-v"] if kind == "container" else [kind, "rm"]
            docker(*rm, *ids, check=False)


@pytest.fixture(scope="module")
def figures() -> Iterator[list[dict[str, Any]]]:
    """Measured figures of this run, written to ``AEOT_DOCKER_FIGURES`` (if set) at the end."""
    records: list[dict[str, Any]] = []
    yield records
    path = os.environ.get("AEOT_DOCKER_FIGURES")
    if path:
        with open(path, "a") as out:
            for record in records:
                out.write(json.dumps(record) + "\n")


def record(figures: list[dict[str, Any]], name: str, **values: Any) -> None:
    figures.append({"name": name, **values, "load": os.getloadavg()[0], "time": time.time()})


def build(variant: str, figures: list[dict[str, Any]], tmp: Path) -> str:
    """``docker build`` as docs/deployment.md gives it; returns the image's id.

    The tests run containers by id: another run on the same engine may tag ``aeot:cpu`` anew.
    """
    tag, iidfile = f"aeot:{variant}", tmp / f"{variant}.iid"
    started = time.monotonic()
    run = docker(
        *f"build -f docker/Dockerfile --build-arg VARIANT={variant} -t {tag}".split(),
        "--iidfile",
        str(iidfile),
        str(ROOT),
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, (
        f"build of {tag} failed (without a registry, build python:3.11-slim first with "
        f"docker/stand-in-base.sh):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    image = iidfile.read_text().strip()
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
    record(figures, "docker_build", image=tag, seconds=time.monotonic() - started, bytes=size)
    return image


@pytest.fixture(scope="module")
def cpu_image(engine: str, figures: list[dict[str, Any]], tmp_path_factory) -> str:
    return build("cpu", figures, tmp_path_factory.mktemp("cpu"))


@pytest.fixture(scope="module")
def gpu_image(engine: str, figures: list[dict[str, Any]], tmp_path_factory) -> str:
    return build("gpu", figures, tmp_path_factory.mktemp("gpu"))


def volume(name: str) -> str:
    docker("volume", "create", "--label", LABEL, f"{RUN}-{name}")
    return f"{RUN}-{name}"


@dataclass
class Container:
    """A running container of this run and, when it publishes the port, its base URL."""

    name: str
    url: str

    def status(self) -> dict[str, Any]:
        state = docker("inspect", "-f", "{{json .State}}", self.name).stdout
        return json.loads(state)

    def logs(self) -> str:
        run = docker("logs", self.name, check=False)
        return run.stdout + run.stderr

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, timeout=30)

    def wait_ready(self, within: float = READY_WITHIN) -> float:
        """Seconds from now until ``/readyz`` answers 200; fails if it exits or times out."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            try:
                if self.get("/readyz").status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if not self.status()["Running"]:
                pytest.fail(f"{self.name} exited:\n{self.logs()[-4000:]}")
            time.sleep(0.25)
        pytest.fail(f"{self.name} not ready after {within} s:\n{self.logs()[-4000:]}")

    def stop(self, grace: int = STOP_GRACE) -> tuple[int, float]:
        """``docker stop`` with a grace period: the exit code and the seconds it took."""
        started = time.monotonic()
        docker("stop", "-t", str(grace), self.name, timeout=grace + 60)
        return self.status()["ExitCode"], time.monotonic() - started


def run_server(name: str, image: str, *options: str, store: str | None = None) -> Container:
    """``docker run -d`` of the image's server, its port published on a free loopback port."""
    args = ["run", "-d", "--name", f"{RUN}-{name}", "--label", LABEL, "-p", "127.0.0.1::8000"]
    args += ["-e", f"AEOT_API_KEY={API_KEY}"]
    if store is not None:
        args += ["-v", f"{store}:/data"]
    docker(*args, *options, image)
    port = docker("port", f"{RUN}-{name}", "8000").stdout.split()[0].rsplit(":", 1)[1]
    return Container(f"{RUN}-{name}", f"http://127.0.0.1:{port}")


def run_once(
    image: str, *args: str, store: str | None = None, options: tuple[str, ...] = ()
) -> str:
    """``docker run --rm`` of a command (``args[0]`` the entrypoint); its stdout."""
    mount = ["-v", f"{store}:/data"] if store is not None else []
    command = ["run", "--rm", "--label", LABEL, *mount, *options, "--entrypoint", args[0], image]
    return docker(*command, *args[1:], timeout=600).stdout


def active_jobs(server: Container) -> list[dict[str, Any]]:
    return server.get("/models").json()["jobs"]


# -- the CPU image: serve, health, stop mid-fit, resume, read-only ---------------------------


@pytest.fixture(scope="module")
def store(cpu_image: str) -> str:
    """The named volume the CPU containers share."""
    return volume("store")


@pytest.fixture(scope="module")
def server(cpu_image: str, store: str, figures: list[dict[str, Any]]) -> Container:
    """The CPU image on an empty volume (health checked every 2 s), ready."""
    container = run_server("serve", cpu_image, "--health-interval", "2s", store=store)
    record(figures, "docker_cpu_ready", seconds=container.wait_ready(), store="empty")
    return container


def test_cpu_image_serves_png_and_json(server):
    json_answer = server.get("/sample", n=4, seed=1)
    assert json_answer.status_code == 200
    assert np.asarray(json_answer.json()["latents"]).shape[0] == 4
    png = server.get("/sample", n=16, seed=1, format="png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    logs = server.logs()
    assert "serving on device cpu (AEOT_DEVICE=auto" in logs


def test_cpu_container_runs_as_non_root_and_turns_healthy(server):
    assert docker("inspect", "-f", "{{.Config.User}}", server.name).stdout.strip() == "10001:10001"
    status = docker("exec", server.name, "cat", "/proc/1/status").stdout
    assert re.search(r"^Uid:\s+10001\s+10001", status, re.M), status
    deadline = time.monotonic() + 60
    while (health := server.status()["Health"]["Status"]) != "healthy":
        assert health == "starting" and time.monotonic() < deadline, server.status()["Health"]
        time.sleep(1)


def test_stop_or_kill_mid_fit_and_a_new_container_resumes_from_the_checkpoint(
    server, store, cpu_image, figures
):
    version = server.get("/readyz").json()["version"]
    # A tight target keeps the refit running for minutes: stop it once it has checkpointed.
    refit = httpx.post(
        f"{server.url}/models/digits/fit",
        json={"target_l1": 0.002, "replace": True},
        headers={"X-API-Key": API_KEY},
        timeout=30,
    )
    assert refit.status_code == 202, refit.text
    job_id = refit.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        job = next(j for j in active_jobs(server) if j["id"] == job_id)
        if job["status"] == "running" and (job["checkpoint_iteration"] or 0) >= 1:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    code, seconds = server.stop()
    record(figures, "docker_stop_mid_fit", seconds=seconds, exit_code=code)
    logs = server.logs()
    assert code == 0, logs[-3000:]
    assert "checkpointing and stopping" in logs
    # Checkpointed at the iteration's end, or (an iteration longer than the worker's stop
    # grace) handed back to resume from the last periodic checkpoint.
    assert f"job {job_id} queued (worker stopped)" in logs or "handed back" in logs, logs[-3000:]

    resumed = run_server("resume", cpu_image, store=store)
    record(figures, "docker_cpu_ready", seconds=resumed.wait_ready(), store="kept")
    assert resumed.get("/readyz").json()["version"] >= version  # the store is kept
    deadline = time.monotonic() + 120
    while True:
        job = next((j for j in active_jobs(resumed) if j["id"] == job_id), None)
        assert job is not None, "the stopped job was not handed back to the queue"
        if job["resumed_from"] is not None:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["resumed_from"] >= 1
    assert f"job {job_id} resumes from iteration {job['resumed_from']}" in resumed.logs()
    assert "training digits" not in resumed.logs()  # the trained model was kept too

    # SIGKILL: no checkpoint at the end; the job resumes from the last periodic one once its
    # heartbeat is older than AEOT_STALE_SECONDS.
    wait_for_checkpoint(resumed, job_id, after=job["resumed_from"])
    docker("kill", resumed.name)
    assert resumed.status()["ExitCode"] == 137
    checkpoint = int(run_once(cpu_image, "python", "-c", CHECKPOINT % job_id, store=store))
    reclaimed = run_server("reclaim", cpu_image, "-e", "AEOT_STALE_SECONDS=5", store=store)
    reclaimed.wait_ready()
    deadline = time.monotonic() + 120
    pattern = re.compile(rf"job {job_id} resumes from iteration (\d+)")
    while (resumed_at := pattern.search(logs := reclaimed.logs())) is None:
        assert time.monotonic() < deadline, logs[-3000:]
        time.sleep(0.5)
    # The catalogue records a checkpoint just after writing it: a kill in between leaves the
    # file one checkpoint ahead of the record.
    assert int(resumed_at.group(1)) >= checkpoint > job["resumed_from"], logs[-3000:]
    code, seconds = reclaimed.stop()
    record(figures, "docker_stop_mid_fit", seconds=seconds, exit_code=code)
    assert code == 0, reclaimed.logs()[-3000:]


CHECKPOINT = (
    "from pathlib import Path; from service.store import ModelStore; "
    "print(ModelStore(Path('/data')).queue.job(%d).checkpoint_iteration)"
)


def wait_for_checkpoint(server: Container, job_id: int, after: int) -> None:
    """Wait until the running job has checkpointed past iteration ``after``."""
    deadline = time.monotonic() + 120
    while True:
        job = next(j for j in active_jobs(server) if j["id"] == job_id)
        if (job["checkpoint_iteration"] or 0) > after:
            return
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


def test_read_only_root_filesystem_with_a_tmpfs_for_tmp(cpu_image, store):
    server = run_server("read-only", cpu_image, "--read-only", "--tmpfs", "/tmp", store=store)
    server.wait_ready()
    assert server.get("/sample", n=16, seed=2, format="png").status_code == 200
    # Matplotlib's cache goes to /tmp (MPLCONFIGDIR): the singular-set picture draws.
    assert server.get("/singularities", format="png").status_code == 200
    assert "Read-only file system" not in server.logs()
    code, _ = server.stop()
    assert code == 0, server.logs()[-3000:]


# -- compose ----------------------------------------------------------------------------------


def compose_command() -> list[str]:
    """``docker compose`` (the plugin) or Debian's ``docker-compose``."""
    if docker("compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if IN_CI:
        pytest.fail("CI=true but neither docker compose nor docker-compose: .ci/run installs it")
    pytest.skip("needs docker compose or docker-compose")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compose_validates_and_brings_the_cpu_profile_up(cpu_image):
    port = free_port()
    env = {**os.environ, "AEOT_API_KEY": API_KEY, "AEOT_PUBLISH_PORT": str(port)}
    compose = [*compose_command(), "-f", str(ROOT / "docker/compose.yml"), "-p", RUN]

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [*compose, *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done

    config = yaml.safe_load(run("--profile", "cpu", "config").stdout)
    gpu = config["services"]["aeot"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert config["services"]["aeot-cpu"]["image"] == "aeot:cpu"
    try:
        docker("tag", cpu_image, "aeot:cpu")  # this run's build, whoever tagged it since
        run("--profile", "cpu", "up", "-d", "aeot-cpu")
        server = Container(f"{RUN}-compose", f"http://127.0.0.1:{port}")
        started = time.monotonic()
        while time.monotonic() - started < READY_WITHIN:
            try:
                if server.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(run("--profile", "cpu", "logs").stdout[-4000:])
        assert server.get("/sample", n=4, seed=1).status_code == 200
    finally:
        run("--profile", "cpu", "down", "-v", timeout=180)


# -- the GPU image, built here without a GPU ---------------------------------------------------

INSPECT_GPU = """
import json, shutil, faiss, torch, triton
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
    "faiss": faiss.__version__, "gpu_resources": hasattr(faiss, "StandardGpuResources"),
    "triton": triton.__version__, "cc": shutil.which("gcc"),
}))
"""


def test_gpu_image_holds_cuda_torch_faiss_gpu_and_triton(gpu_image):
    found = json.loads(run_once(gpu_image, "python", "-c", INSPECT_GPU))
    assert found["cuda"], found  # a CUDA build of torch
    assert found["gpu_resources"], found  # faiss-gpu, not faiss-cpu
    assert found["cc"], found  # Triton compiles its launcher at run time
    assert not found["cuda_available"]  # no GPU on this machine


def test_gpu_image_serves_on_cpu_without_a_gpu_and_says_so(gpu_image):
    server = run_server("gpu-on-cpu", gpu_image)
    server.wait_ready()
    assert server.get("/sample", n=4, seed=1).status_code == 200
    assert "serving on device cpu (AEOT_DEVICE=auto" in server.logs()
    # The CUDA build of torch loads several more libraries; compose's grace is 60 s.
    code, _ = server.stop(grace=30)
    assert code == 0, server.logs()[-3000:]


# -- two containers as two nodes of one fit ----------------------------------------------------

READ_POTENTIAL = """
import json
from pathlib import Path
from service.store import ModelStore
store = ModelStore(Path("/data"))
record = store.catalog.potential("digits")
print(json.dumps({"version": record.version, "l1": record.accuracy.l1,
                  "heights": store.load_potential(record).heights.tolist()}))
"""
# The existing two-rank test's tolerance (tests/test_distributed_fit.py): the ranks see the
# single process's samples and differ only in float rounding.
HEIGHTS_ATOL = 0.01  # of the heights' spread
L1_ATOL = 0.02


def test_two_containers_fit_as_two_nodes_like_one_process(cpu_image, figures):
    trained, single, nodes = volume("trained"), volume("single"), volume("nodes")
    run_once(cpu_image, *"aeot train digits --epochs 3 --decoder-epochs 1".split(), store=trained)
    for copy in (single, nodes):  # the same bundle in two stores
        mounts = f"--label {LABEL} -v {trained}:/from:ro -v {copy}:/data"
        docker(*f"run --rm {mounts} --entrypoint cp {cpu_image} -a /from/. /data/".split())
    # Both fits publish once, at their end (a fit that outlasts the publish interval would also
    # publish on the way, depending on the machine's speed): their final heights are compared.
    once = "AEOT_PUBLISH_INTERVAL=3600"
    out = run_once(cpu_image, "aeot", "fit", "digits", store=single, options=("-e", once))
    assert "done (target); published version 1" in out, out

    network = f"{RUN}-net"
    docker("network", "create", "--label", LABEL, network)
    # c10d numbers the nodes by their address in sorted order: node0 (with the store) leads;
    # node1 needs no store, the lead sends it the problem.
    names = [f"{RUN}-node0", f"{RUN}-node1"]
    torchrun = "--nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-id aeot-fit"
    torchrun += f" --rdzv-endpoint {names[0]}:29400 -m service.cli fit digits"
    started = time.monotonic()
    for name, mount in zip(names, (f"-v {nodes}:/data", ""), strict=True):
        container = f"--name {name} --hostname {name} --network {network} --label {LABEL}"
        container += f" -e {once} {mount}"
        docker(*f"run -d {container} --entrypoint torchrun {cpu_image} {torchrun}".split())
    codes = docker("wait", *names, timeout=600).stdout.split()
    record(figures, "docker_two_node_fit", seconds=time.monotonic() - started)
    logs = [docker("logs", name).stdout for name in names]
    assert codes == ["0", "0"], [docker("logs", n, check=False).stderr[-3000:] for n in names]
    assert "done (target); published version 1" in logs[0]
    assert "rank 1 followed 1 fit(s)" in logs[1]  # the fit ran over both containers

    one, two = (
        json.loads(run_once(cpu_image, "python", "-c", READ_POTENTIAL, store=store))
        for store in (single, nodes)
    )
    h_one, h_two = np.asarray(one["heights"]), np.asarray(two["heights"])
    np.testing.assert_allclose(h_two, h_one, atol=HEIGHTS_ATOL * np.ptp(h_one))
    assert abs(one["l1"] - two["l1"]) <= L1_ATOL and max(one["l1"], two["l1"]) <= 0.05

    served = run_server("nodes-served", cpu_image, store=nodes)
    served.wait_ready()
    assert served.get("/readyz").json()["version"] == two["version"] == 1
    assert served.get("/sample", n=4, seed=1).status_code == 200
