"""--health-listen: a plaintext port serving only grpc.health.v1.Health, so
the kubelet's gRPC probes work while the main port speaks TLS (the Helm chart
points its probes there when tls.enabled)."""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Iterator

import grpc
import pytest
from budgetd.config import Settings, add_arguments, from_args
from budgetd.embedded import EmbeddedRedis
from budgetd.server import ServerThread
from budgetd_client import BudgetClient, CallPolicy
from budgetd_client._proto.budget.v1 import budget_pb2, budget_pb2_grpc
from conftest import Budgetd
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ops_support import start, write_tokens
from test_tls import Pki

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POLICY = CallPolicy(timeout_s=5, total_timeout_s=5, retries=0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture()
def own_redis(tmp_path: pathlib.Path) -> Iterator[EmbeddedRedis]:
    """A Redis this test may stop without disturbing the session's."""
    r = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    r.start()
    yield r
    r.stop()


def _start_tls(pki: Pki, redis_url: str, tmp_path: pathlib.Path) -> ServerThread:
    # Auth on as in production: the health port must still answer without a token.
    tokens = write_tokens(tmp_path / "tokens.json", {"caller-secret": ("caller", ["acme"])})
    return start(redis_url, tls_cert_file=str(pki.files["server.crt"]),
                 tls_key_file=str(pki.files["server.key"]), auth_tokens_file=tokens,
                 health_listen="127.0.0.1:0", redis_timeout_s=0.5)


@pytest.fixture()
def tls_server(pki: Pki, redis_server: EmbeddedRedis,
               tmp_path: pathlib.Path) -> Iterator[ServerThread]:
    t = _start_tls(pki, redis_server.url, tmp_path)
    yield t
    t.stop()


def _check(ch: grpc.Channel, service: str) -> int:
    resp = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(resp.status)


def test_plaintext_health_port_beside_a_tls_main_port(tls_server: ServerThread,
                                                      pki: Pki) -> None:
    app = tls_server.app
    assert app.health_port not in (0, app.port)
    health_addr = f"127.0.0.1:{app.health_port}"
    with grpc.insecure_channel(health_addr) as ch:
        assert _check(ch, "") == SERVING
        assert _check(ch, "liveness") == SERVING
        assert _check(ch, "budget.v1.BudgetService") == SERVING
        with pytest.raises(grpc.RpcError) as info:
            _check(ch, "no.such.Service")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # No budget service here, and no reflection to discover one.
        stub = budget_pb2_grpc.BudgetServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Reserve(budget_pb2.ReserveRequest(), timeout=5,
                         metadata=[("authorization", "Bearer caller-secret")])
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # The main port still speaks only TLS, and still serves the budget API.
    with grpc.insecure_channel(f"localhost:{app.port}") as plain, \
            pytest.raises(grpc.RpcError) as info:
        _check(plain, "")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with BudgetClient(f"localhost:{app.port}", root_certificates=pki.read("ca"),
                      token="caller-secret", policy=POLICY) as c:
        assert c.get_budget("acme").scope.org == "acme"


def test_health_port_readiness_follows_redis(pki: Pki, own_redis: EmbeddedRedis,
                                             tmp_path: pathlib.Path) -> None:
    t = _start_tls(pki, own_redis.url, tmp_path)
    try:
        _readiness_follows(t, own_redis)
    finally:
        t.stop()


def _readiness_follows(t: ServerThread, own_redis: EmbeddedRedis) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{t.app.health_port}") as ch:
        assert _check(ch, "") == SERVING
        own_redis.stop()
        deadline = time.monotonic() + 10
        status = _check(ch, "")
        while status != NOT_SERVING and time.monotonic() < deadline:
            time.sleep(0.2)
            status = _check(ch, "")
        assert status == NOT_SERVING
        # Liveness does not follow Redis: the process is fine, no restart.
        assert _check(ch, "liveness") == SERVING


def test_health_port_closes_with_the_server(pki: Pki, redis_server: EmbeddedRedis) -> None:
    t = start(redis_server.url, tls_cert_file=str(pki.files["server.crt"]),
              tls_key_file=str(pki.files["server.key"]), health_listen="127.0.0.1:0")
    addr = f"127.0.0.1:{t.app.health_port}"
    with grpc.insecure_channel(addr) as ch:
        assert _check(ch, "") == SERVING
    t.stop()
    with grpc.insecure_channel(addr) as ch, pytest.raises(grpc.RpcError) as info:
        _check(ch, "")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_off_by_default_and_set_from_flag_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().health_listen == ""

    def parse(argv: list[str]) -> Settings:
        p = argparse.ArgumentParser()
        add_arguments(p)
        return from_args(p.parse_args(argv))

    monkeypatch.delenv("BUDGETD_HEALTH_LISTEN", raising=False)
    assert parse([]).health_listen == ""
    assert parse(["--health-listen", "0.0.0.0:8081"]).health_listen == "0.0.0.0:8081"
    monkeypatch.setenv("BUDGETD_HEALTH_LISTEN", "0.0.0.0:8082")
    assert parse([]).health_listen == "0.0.0.0:8082"


def test_no_health_port_without_the_setting(budgetd: Budgetd) -> None:
    assert budgetd.thread.app.health_server is None
    assert budgetd.thread.app.health_port == 0
