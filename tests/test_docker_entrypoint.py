"""The container's install and entrypoint, without a Docker engine: build the
wheel set the Dockerfile builds (`pip wheel ./client .`), install it into a
fresh venv from those wheels only (`--no-index --find-links`), and run the
image's entrypoint `budgetd serve` from that venv against a Redis the test
started. It must answer gRPC health checks, serve a real Reserve (the Lua
scripts ship in the wheel), and exit cleanly on SIGTERM."""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from budgetd.embedded import EmbeddedRedis, free_port
from budgetd_client import AdminClient, BudgetClient, CallPolicy
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
START_TIMEOUT_S = 30.0
DRAIN_S = 2.0
PIP_TIMEOUT_S = 240


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                          check=False, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc  # type: ignore[no-any-return]


def test_dockerfile_builds_and_installs_what_this_test_does() -> None:
    """Keep the test honest: the Dockerfile builds the same wheel set, installs
    it offline, runs as a numeric non-root user, and starts `budgetd serve`."""
    text = DOCKERFILE.read_text()
    assert "pip wheel --wheel-dir /wheels ./client ." in text
    assert "pip install --no-index --find-links /wheels budgetd budgetd-client" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert 'ENTRYPOINT ["budgetd"]' in text and 'CMD ["serve"]' in text
    assert re.search(r"^EXPOSE 50051 9464$", text, re.M)
    # Multi-stage: the runtime stage copies no sources and builds nothing.
    runtime = text.split("AS runtime", 1)[1]
    assert "COPY" not in runtime and "pip wheel" not in runtime


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("image")
    wheels = tmp / "wheels"
    # The dependencies come from the index (already downloaded in the pip
    # cache); the install below then sees only these wheels.
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
         "./client", "."], cwd=ROOT)
    names = {p.name.split("-")[0] for p in wheels.glob("*.whl")}
    assert {"budgetd", "budgetd_client", "grpcio", "redis", "protobuf"} <= names
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
         "--find-links", str(wheels), "budgetd", "budgetd-client"], cwd=tmp)
    return venv


@pytest.fixture()
def redis_url(tmp_path: pathlib.Path) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    yield server.url
    server.stop()


def health_status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(resp.status)


def wait_serving(address: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(address) as channel:
        while True:
            assert proc.poll() is None, "budgetd exited during start-up"
            try:
                if health_status(channel, "") == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "budgetd never reported SERVING"
            time.sleep(0.2)


def test_entrypoint_serves_and_stops_on_sigterm(installed_venv: pathlib.Path,
                                                redis_url: str,
                                                tmp_path: pathlib.Path) -> None:
    python = installed_venv / "bin" / "python"
    # The server comes from the installed wheel, not from the source tree.
    where = run([str(python), "-c", "import budgetd; print(budgetd.__file__)"],
                cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}).stdout.strip()
    assert where.startswith(str(installed_venv)), where
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        # The image's environment, on loopback (tests reach nothing else).
        "PATH": f"{installed_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "BUDGETD_LISTEN": address,
        "BUDGETD_REDIS_URL": redis_url,
        "BUDGETD_DATA_DIR": str(tmp_path / "data"),
        "BUDGETD_DRAIN_S": str(DRAIN_S),
        "BUDGETD_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(["budgetd", "serve"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_serving(address, proc)
        with grpc.insecure_channel(address) as channel:
            assert health_status(channel, "liveness") == health_pb2.HealthCheckResponse.SERVING
        policy = CallPolicy(timeout_s=5, total_timeout_s=10, retries=0)
        with AdminClient(address, policy=policy) as admin, \
                BudgetClient(address, policy=policy) as client:
            admin.set_budget("acme", "day", "tokens", 1000)
            first = client.reserve("acme/search", "test-model", tokens=600, cost_micros=1)
            second = client.reserve("acme/search", "test-model", tokens=600, cost_micros=1)
        assert first.allowed and not second.allowed
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=DRAIN_S + 15)
        assert proc.returncode == 0, out[-3000:]
        assert time.monotonic() - t0 < DRAIN_S + 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    messages = [r.get("msg") or r.get("message") for r in records]
    assert "budgetd serving" in messages and "shutting down" in messages, out[-3000:]
    assert not any(r.get("level") in ("error", "critical") for r in records), out[-3000:]


def dockerfile_env() -> dict[str, str]:
    """The BUDGETD_* variables the Dockerfile's runtime stage sets."""
    text = (ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1]
    return dict(re.findall(r"(BUDGETD_[A-Z_]+)=(\S+)", text.split("RUN", 1)[0]))


def test_the_image_environment_without_tokens_refuses_and_says_what_to_set(
        installed_venv: pathlib.Path, redis_url: str, tmp_path: pathlib.Path) -> None:
    """Like the official Postgres image without a password: the image listens
    on 0.0.0.0, so with no auth tokens `docker run` stops at once with a
    message naming the settings; BUDGETD_INSECURE_NO_AUTH=1 (a trusted
    network, as the Helm chart sets with auth off) serves."""
    image = dockerfile_env()
    assert image["BUDGETD_LISTEN"] == "0.0.0.0:50051"
    port, metrics_port = free_port(), free_port()
    env = {**image, "PATH": f"{installed_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "BUDGETD_LISTEN": f"0.0.0.0:{port}", "BUDGETD_METRICS_LISTEN": f"0.0.0.0:{metrics_port}",
           "BUDGETD_REDIS_URL": redis_url, "BUDGETD_DATA_DIR": str(tmp_path / "data")}
    refused = subprocess.run(["budgetd", "serve"], cwd=tmp_path, env=env, text=True,
                             capture_output=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    for needle in ("refusing to serve on 0.0.0.0", "BUDGETD_AUTH_TOKENS_FILE",
                   "BUDGETD_INSECURE_NO_AUTH=1"):
        assert needle in refused.stderr
    proc = subprocess.Popen(["budgetd", "serve"], cwd=tmp_path,
                            env={**env, "BUDGETD_INSECURE_NO_AUTH": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_serving(f"127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=DRAIN_S + 15)
