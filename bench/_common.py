"""Shared bench machinery: start Redis, budgetd and the echo baseline as
separate processes, and drive them with one grpc.aio load generator, so each
ratio compares two servers under the same client in the same run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import grpc.aio

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from budgetd.embedded import EmbeddedRedis, free_port  # noqa: E402
from budgetd_client import AdminClient, CallPolicy  # noqa: E402
from budgetd_client._proto.budget.v1 import budget_pb2 as pb  # noqa: E402
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc  # noqa: E402

START_TIMEOUT_S = 30.0
# Orgs the load spreads over, each with rules at 3 levels.
BENCH_ORGS = 16


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run that proves the bench works; targets are printed, not enforced")
    return p


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


@contextlib.contextmanager
def redis_server(**kw: object) -> Iterator[EmbeddedRedis]:
    with tempfile.TemporaryDirectory(prefix="budgetd-bench-") as d:
        server = EmbeddedRedis(d, appendonly=False, **kw)  # type: ignore[arg-type]
        server.start()
        try:
            yield server
        finally:
            server.stop()


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            grpc.channel_ready_future(ch).result(timeout=0.5)
            return
        except grpc.FutureTimeoutError:
            pass
        finally:
            ch.close()
    raise RuntimeError(f"server on {port} not ready in {START_TIMEOUT_S} s")


@contextlib.contextmanager
def process(args: list[str], port: int) -> Iterator[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "service"), str(ROOT / "client"), str(ROOT / "bench")]))
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            env=env)
    try:
        _wait_port(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def budgetd(redis_url: str, *flags: str) -> Iterator[str]:
    port = free_port()
    with process([sys.executable, "-m", "budgetd.cli", "serve", "--listen",
                  f"127.0.0.1:{port}", "--redis-url", redis_url, "--log-level", "WARNING",
                  "--drain-s", "1", *flags], port) as addr:
        yield addr


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    port = free_port()
    with process([sys.executable, str(ROOT / "bench" / "echo_server.py"), str(port)],
                 port) as addr:
        yield addr


def set_budgets(address: str, orgs: int = BENCH_ORGS) -> None:
    """Rules at org, team and feature level: the script checks 3 levels x
    2 windows x 2 units of counters, as a real deployment would."""
    with AdminClient(address, policy=CallPolicy(timeout_s=10, total_timeout_s=30)) as admin:
        for i in range(orgs):
            org = f"bench{i}"
            admin.set_budget(org, "month", "cost_micros", 10**15)
            admin.set_budget(f"{org}/team", "day", "tokens", 10**15)
            admin.set_budget(f"{org}/team/feat", "day", "cost_micros", 10**15)


def reserve_request(i: int, orgs: int = BENCH_ORGS) -> pb.ReserveRequest:
    req = pb.ReserveRequest(request_id=uuid.uuid4().hex,
                            scope=pb.Scope(org=f"bench{i % orgs}", team="team", feature="feat"),
                            model="bench-model", ttl_seconds=300)
    req.estimate.explicit.tokens = 100
    req.estimate.explicit.cost_micros = 10
    return req


@dataclass
class Load:
    calls: int
    seconds: float
    errors: int
    latencies_s: list[float]
    first_error: str = ""  # code and details of the first failed call

    @property
    def rps(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def pct_ms(self, p: float) -> float:
        if not self.latencies_s:
            return float("nan")
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


async def closed_loop(address: str, concurrency: int, seconds: float,
                      make: Callable[[int], pb.ReserveRequest] = reserve_request,
                      warmup_s: float = 1.0, channels: int = 1) -> Load:
    """`concurrency` calls always in flight, spread over `channels` channels
    (each its own TCP connection), for `seconds`."""
    # A local subchannel pool per channel: grpc shares one connection between
    # identical channels otherwise, and SO_REUSEPORT spreads connections.
    opts = [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else []
    chans = [grpc.aio.insecure_channel(address, options=opts) for _ in range(channels)]
    try:
        stubs = [pb_grpc.BudgetServiceStub(ch) for ch in chans]
        counter = 0
        errors = 0
        first_error = ""
        measuring = False
        done = 0
        stop_at = time.monotonic() + warmup_s + seconds

        async def worker(stub: pb_grpc.BudgetServiceStub) -> None:
            nonlocal counter, errors, done, first_error
            while time.monotonic() < stop_at:
                counter += 1
                try:
                    await stub.Reserve(make(counter), timeout=10)
                    if measuring:
                        done += 1
                except grpc.aio.AioRpcError as e:
                    errors += 1
                    first_error = first_error or f"{e.code().name}: {e.details()}"

        tasks = [asyncio.create_task(worker(stubs[i % channels])) for i in range(concurrency)]
        await asyncio.sleep(warmup_s)
        measuring = True
        t0 = time.monotonic()
        await asyncio.gather(*tasks)
        return Load(done, time.monotonic() - t0, errors, [], first_error)
    finally:
        for ch in chans:
            await ch.close()


async def open_loop(address: str, rate_per_s: float, seconds: float,
                    make: Callable[[int], pb.ReserveRequest] = reserve_request) -> Load:
    """Calls sent on a fixed schedule whatever the answers (open loop)."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.BudgetServiceStub(ch)
        for i in range(20):  # warm the channel and the server's caches
            await stub.Reserve(make(i), timeout=10)
        lat: list[float] = []
        errors = 0

        async def one(i: int) -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                await stub.Reserve(make(i), timeout=10)
                lat.append(time.perf_counter() - t)
            except grpc.aio.AioRpcError:
                errors += 1

        n = int(rate_per_s * seconds)
        t0 = time.monotonic()
        tasks = []
        for i in range(n):
            delay = t0 + i / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return Load(len(lat), time.monotonic() - t0, errors, lat)


def verdict(name: str, value: float, target: str, ok: bool, smoke: bool) -> bool:
    mark = "ok" if ok else ("MISSED (smoke: not enforced)" if smoke else "MISSED")
    print(f"RESULT {name} = {value:.3f}   target {target}   {mark}", flush=True)
    return ok or smoke


def median(xs: list[float]) -> float:
    return statistics.median(xs)
