"""`budgetd serve --workers N` as a real process tree: the parent, N workers
sharing one port through SO_REUSEPORT, a real Redis. What is checked: calls
from many connections reach more than one worker and share one ledger, the
parent's /metrics sums the workers, background jobs run in worker 0 only,
SIGTERM drains everything to exit 0, a dead worker takes the rest down with a
non-zero status, and bad settings are refused before anything starts."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from budgetd.config import MAX_WORKERS, Settings, add_arguments, from_args
from budgetd.embedded import EmbeddedRedis, free_port
from budgetd_client import AdminClient, BudgetClient, CallPolicy
from budgetd_client._channel import CHANNEL_OPTIONS
from grpc_health.v1 import health_pb2, health_pb2_grpc

MODEL = "test-model"  # every amount is explicit: no pricing needed
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# Connections opened by the spreading tests: with 2 workers the chance that the
# kernel puts all of them on one worker is 2 / 2**16.
CHANNELS = 16
POLICY = CallPolicy(timeout_s=10, total_timeout_s=20, retries=0)


class Workers:
    """`budgetd serve --workers N` as a subprocess; its JSON log in a file."""

    def __init__(self, tmp_path: pathlib.Path, n: int, *flags: str) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.health_port = 0
        self.log_path = tmp_path / "budgetd.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "budgetd.cli", "serve", "--workers", str(n),
                 "--listen", self.address, "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                 "--drain-s", "1", "--expiry-interval-s", "0.2", "--redis-timeout-s", "2",
                 "--log-format", "json", "--log-level", "INFO", *flags],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.pids = self._wait_serving()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def _wait_serving(self) -> list[int]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for rec in self.lines():
                if rec["msg"] == "budgetd workers serving":
                    return [int(p) for p in rec["pids"]]
            if self.proc.poll() is not None:
                raise RuntimeError(f"budgetd exited {self.proc.returncode}: {self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"budgetd --workers not serving in {START_TIMEOUT_S} s: {self.tail()}")

    def tail(self) -> str:
        return self.log_path.read_text()[-4000:]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` with these labels, from the parent."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids:  # never leave a worker behind, whatever failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], timeout_s: float = STOP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "workers left running"


def clients(address: str, n: int) -> list[BudgetClient]:
    """n clients on n separate connections: grpc would otherwise share one
    subchannel (one TCP connection, one worker) between identical channels."""
    opts = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    return [BudgetClient(address, policy=POLICY, channel=grpc.insecure_channel(address, opts))
            for _ in range(n)]


@pytest.fixture()
def workers2(tmp_path: pathlib.Path, r: redis.Redis,
             redis_server: EmbeddedRedis) -> Iterator[Workers]:
    health_port = free_port()
    w = Workers(tmp_path, 2, "--redis-url", redis_server.url,
                "--health-listen", f"127.0.0.1:{health_port}")
    w.health_port = health_port
    yield w
    w.close()


def window(status: Any, window: str, unit: str) -> Any:
    return next(w for w in status.windows if w.window == window and w.unit == unit)


def test_many_connections_reach_several_workers_and_share_one_ledger(
        workers2: Workers) -> None:
    with AdminClient(workers2.address, policy=POLICY) as admin:
        admin.set_budget("wk", "day", "tokens", 10_000)
    cs = clients(workers2.address, CHANNELS)
    try:
        for i, c in enumerate(cs):
            res = c.reserve("wk/team", MODEL, tokens=100, cost_micros=1,
                            request_id=f"wk-{i}", ttl_seconds=300)
            assert res.allowed
        # Every connection reads the reservations of all the others.
        for c in cs:
            assert window(c.get_budget("wk"), "day", "tokens").reserved == 100 * CHANNELS
    finally:
        for c in cs:
            c.close()
    served = {rec["pid"] for rec in workers2.lines()
              if rec.get("logger") == "budgetd.access" and rec.get("method", "").endswith(
                  "/Reserve")}
    assert served <= set(workers2.pids)
    assert len(served) == 2, f"all {CHANNELS} connections on one worker: {served}"
    # Every worker answers probes on the shared health port.
    opts = [("grpc.use_local_subchannel_pool", 1)]
    for _ in range(CHANNELS):
        with grpc.insecure_channel(f"127.0.0.1:{workers2.health_port}", opts) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                        timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    # One /metrics, summed over the workers.
    assert workers2.metric("budgetd_grpc_requests_total", method="Reserve",
                           code="OK") == CHANNELS
    assert workers2.metric("budgetd_grpc_requests_total", method="GetBudget",
                           code="OK") == CHANNELS


def test_background_jobs_run_in_one_worker_and_each_reservation_expires_once(
        workers2: Workers) -> None:
    worker0, worker1 = workers2.pids
    jobs = [rec for rec in workers2.lines() if rec["msg"] == "background jobs run in this worker"]
    assert [(rec["worker"], rec["pid"]) for rec in jobs] == [(0, worker0)]
    cs = clients(workers2.address, CHANNELS)
    try:
        for i, c in enumerate(cs):
            assert c.reserve("wkx/team", MODEL, tokens=10, cost_micros=1,
                             request_id=f"wkx-{i}", ttl_seconds=1).allowed
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = window(cs[0].get_budget("wkx"), "day", "tokens")
            if status.reserved == 0:
                break
            time.sleep(0.1)
        # The default expiry policy keeps an abandoned estimate as spent: once.
        assert (status.reserved, status.used) == (0, 10 * CHANNELS)
    finally:
        for c in cs:
            c.close()
    # Each worker sweeps the orgs it reserved in (and worker 0 walks every
    # org): the reservations of both workers expire, each exactly once.
    assert workers2.metric("budgetd_reservations_expired_total") == CHANNELS
    sweepers = {rec["pid"] for rec in workers2.lines() if rec["msg"] == "reservations expired"}
    assert sweepers <= {worker0, worker1}


def test_sigterm_drains_every_worker_and_the_parent_exits_0(tmp_path: pathlib.Path) -> None:
    # No --redis-url: the parent owns the embedded Redis and stops it last.
    w = Workers(tmp_path, 2, "--data-dir", str(tmp_path / "data"))
    try:
        url = next(rec["url"] for rec in w.lines() if rec["msg"] == "embedded redis started")
        with AdminClient(w.address, policy=POLICY) as admin:
            admin.set_budget("wkt", "day", "tokens", 1000)
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait() == 0, w.tail()
        wait_gone(w.pids)
        stopped = {rec.get("pid") for rec in w.lines() if rec["msg"] == "shutting down"}
        assert stopped == set(w.pids)
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    finally:
        w.close()


def test_a_dead_worker_stops_the_others_and_the_parent_fails(workers2: Workers) -> None:
    os.kill(workers2.pids[1], signal.SIGKILL)
    code = workers2.wait()
    assert code == 128 + signal.SIGKILL, workers2.tail()
    wait_gone(workers2.pids)
    assert any(rec["msg"].startswith("worker exited") and rec["worker"] == 1
               for rec in workers2.lines())


def test_a_bad_config_fails_in_worker_0_once(tmp_path: pathlib.Path,
                                             redis_server: EmbeddedRedis) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "budgetd.cli", "serve", "--workers", "3",
         "--listen", f"127.0.0.1:{free_port()}", "--redis-url", redis_server.url,
         "--auth-tokens-file", str(tmp_path / "missing.yaml"), "--log-format", "text"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("budgetd: error:") == 1, proc.stderr
    assert "worker 1" not in proc.stderr


@pytest.mark.parametrize("argv,env,needle", [
    (["--workers", "0"], {}, "argument --workers: expected an integer from 1 to 64"),
    (["--workers", str(MAX_WORKERS + 1)], {}, "argument --workers"),
    (["--workers", "two"], {}, "argument --workers"),
    ([], {"BUDGETD_WORKERS": "-1"}, "argument --workers"),
    (["--workers", "2", "--listen", "127.0.0.1:0"], {}, "--listen '127.0.0.1:0': port 0"),
    (["--workers", "2", "--health-listen", "127.0.0.1:0"], {}, "--health-listen"),
    (["--workers", "2", "--listen", "unix:/tmp/budgetd.sock"], {}, "unix socket"),
])
def test_bad_workers_settings_exit_2_naming_the_flag(argv: list[str], env: dict[str, str],
                                                      needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "budgetd.cli", "serve", *argv],
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_workers_from_flag_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    def parse(argv: list[str]) -> Settings:
        p = argparse.ArgumentParser()
        add_arguments(p)
        return from_args(p.parse_args(argv))

    assert parse([]).workers == 1
    assert parse(["--workers", "4"]).workers == 4
    monkeypatch.setenv("BUDGETD_WORKERS", "3")
    assert parse([]).workers == 3
    assert parse(["--workers", "2"]).workers == 2
