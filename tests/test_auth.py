"""Bearer tokens over real gRPC: caller tokens scoped to orgs, admin tokens,
unauthenticated calls, open health checks, and protected mode."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
import redis
from budgetd.auth import ConfigError, load_tokens
from budgetd.embedded import EmbeddedRedis
from budgetd.server import ServerThread
from budgetd_client import (
    AdminClient,
    BudgetClient,
    CallPolicy,
    PermissionDenied,
    Unauthenticated,
)
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc
from conftest import keyspace
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import TEST_MODEL, set_test_pricing
from ops_support import start, write_tokens

A_TOKEN = "caller-token-for-org-a"
B_TOKEN = "caller-token-for-org-b"
ADMIN_A = "admin-token-for-org-a"
ROOT = "admin-token-for-everything"
POLICY = CallPolicy(timeout_s=5, total_timeout_s=10, retries=0)


@pytest.fixture()
def server(r: redis.Redis, redis_server: EmbeddedRedis,
           tmp_path: pathlib.Path) -> Iterator[ServerThread]:
    f = write_tokens(tmp_path / "tokens.json", {
        A_TOKEN: ("caller", ["orga"]), B_TOKEN: ("caller", ["orgb"]),
        ADMIN_A: ("admin", ["orga"]), ROOT: ("admin", "*")})
    t = start(redis_server.url, auth_tokens_file=f)
    yield t
    t.stop()


def client(t: ServerThread, token: str | None) -> BudgetClient:
    return BudgetClient(t.address, token=token, policy=POLICY)


def admin(t: ServerThread, token: str | None) -> AdminClient:
    return AdminClient(t.address, token=token, policy=POLICY)


def test_tokens_file_holds_hashes_only(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "t.json"
    write_tokens(f, {A_TOKEN: ("caller", ["orga"])})
    assert A_TOKEN not in f.read_text()
    f.write_text(json.dumps([{"name": "x", "sha256": A_TOKEN, "role": "caller",
                              "orgs": ["a"]}]))
    with pytest.raises(ConfigError, match=r"tokens\[0\]\.sha256"):
        load_tokens(str(f))
    y = tmp_path / "t.yaml"
    y.write_text("- {name: x, sha256: " + "a" * 64 + ", role: root, orgs: '*'}\n")
    with pytest.raises(ConfigError, match=r"tokens\[0\]\.role"):
        load_tokens(str(y))


def test_hash_token_subcommand_reads_stdin() -> None:
    budgetd = str(pathlib.Path(sys.executable).parent / "budgetd")
    out = subprocess.run([budgetd, "hash-token"], input=A_TOKEN + "\n", capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    import hashlib
    assert out.stdout.strip() == hashlib.sha256(A_TOKEN.encode()).hexdigest()
    empty = subprocess.run([budgetd, "hash-token"], input="", capture_output=True, text=True,
                           timeout=30)
    assert empty.returncode == 2


def test_caller_token_cannot_touch_another_org(server: ServerThread,
                                               r: redis.Redis) -> None:
    root = admin(server, ROOT)
    set_test_pricing(root)
    b = client(server, B_TOKEN)
    held = b.reserve("orgb/t", TEST_MODEL, tokens=100, cost_micros=1)
    held2 = b.reserve("orgb/t", TEST_MODEL, tokens=100, cost_micros=1)
    assert held.allowed and held2.allowed
    a = client(server, A_TOKEN)
    assert a.reserve("orga/t", TEST_MODEL, tokens=1, cost_micros=1).allowed
    before = keyspace(r)
    calls = {
        "Reserve": lambda: a.reserve("orgb/t", TEST_MODEL, tokens=10, cost_micros=1),
        "Reconcile": lambda: a.reconcile(held.reservation_id, {"input_tokens": 1}),
        "Release": lambda: a.release(held2.reservation_id),
        "Record": lambda: a.record("orgb/t", TEST_MODEL, {"input_tokens": 5}),
        "GetBudget": lambda: a.get_budget("orgb"),
    }
    for name, call in calls.items():
        with pytest.raises(PermissionDenied, match="orgb") as e:
            call()
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED, name
    # ReserveBatch: one foreign request refuses the whole batch.
    stub = pb_grpc.BudgetServiceStub(a.channel)
    batch = pb.ReserveBatchRequest(requests=[
        pb.ReserveRequest(request_id="x1", scope=pb.Scope(org="orga"), model=TEST_MODEL),
        pb.ReserveRequest(request_id="x2", scope=pb.Scope(org="orgb"), model=TEST_MODEL)])
    with pytest.raises(grpc.RpcError) as rpc_e:
        stub.ReserveBatch(batch, metadata=(("authorization", f"Bearer {A_TOKEN}"),), timeout=5)
    assert rpc_e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert keyspace(r) == before
    # The owner still can.
    assert b.reconcile(held.reservation_id, {"input_tokens": 1}).state == "reconciled"
    assert b.release(held2.reservation_id).state == "released"


def test_missing_or_invalid_token_is_unauthenticated(server: ServerThread,
                                                     r: redis.Redis) -> None:
    before = keyspace(r)
    for tok in (None, "wrong-token"):
        with pytest.raises(Unauthenticated):
            client(server, tok).reserve("orga/t", TEST_MODEL, tokens=1, cost_micros=1)
        with pytest.raises(Unauthenticated):
            admin(server, tok).list_budgets("orga")
    stub = pb_grpc.BudgetServiceStub(client(server, None).channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetBudget(pb.GetBudgetRequest(scope=pb.Scope(org="orga")),
                       metadata=(("authorization", f"Basic {A_TOKEN}"),), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert keyspace(r) == before


def test_admin_and_caller_roles(server: ServerThread, r: redis.Redis) -> None:
    # A caller token may not use the admin service, even for its own org.
    with pytest.raises(PermissionDenied, match="admin service"):
        admin(server, A_TOKEN).set_budget("orga", "day", "tokens", 10)
    # An org admin manages its org, not another, and not global pricing.
    adm = admin(server, ADMIN_A)
    assert adm.set_budget("orga", "day", "tokens", 10)
    with pytest.raises(PermissionDenied):
        adm.set_budget("orgb", "day", "tokens", 10)
    with pytest.raises(PermissionDenied):
        adm.list_budgets("orgb")
    # Nor read another org's usage or alerts.
    with pytest.raises(PermissionDenied):
        adm.get_usage_report("orgb")
    with pytest.raises(PermissionDenied):
        list(adm.watch_alerts("orgb", timeout_s=5))
    with pytest.raises(PermissionDenied):
        adm.get_org_settings("orgb")
    assert adm.get_usage_report("orga") is not None
    with pytest.raises(PermissionDenied, match="SetPricing"):
        set_test_pricing(adm)
    root = admin(server, ROOT)
    set_test_pricing(root)
    assert [str(x.scope) for x in root.list_budgets("orga")] == ["orga"]
    # Admin tokens may call the caller service for their orgs.
    assert client(server, ADMIN_A).reserve("orga/t", TEST_MODEL, tokens=1,
                                           cost_micros=1).allowed
    with pytest.raises(PermissionDenied):
        client(server, ADMIN_A).get_budget("orgb")
    assert client(server, ROOT).get_budget("orgb").scope.org == "orgb"


def test_health_is_open_without_token(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                    timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_budgetctl_uses_token_from_env(server: ServerThread) -> None:
    budgetctl = str(pathlib.Path(sys.executable).parent / "budgetctl")
    env = {"BUDGETD_SERVER": server.address, "BUDGETD_TOKEN": ADMIN_A, "PATH": ""}
    ok = subprocess.run([budgetctl, "orgs", "get", "orga"], env=env, capture_output=True,
                        text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    denied = subprocess.run([budgetctl, "orgs", "get", "orgb"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
    env["BUDGETD_TOKEN"] = ""
    anon = subprocess.run([budgetctl, "orgs", "get", "orga"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert anon.returncode == 1 and "UNAUTHENTICATED" in anon.stderr


def _serve(*args: str, env_extra: dict[str, str] | None = None,
           tmp: pathlib.Path) -> subprocess.CompletedProcess[str]:
    budgetd = str(pathlib.Path(sys.executable).parent / "budgetd")
    env = {"PATH": "", "HOME": str(tmp), **(env_extra or {})}
    return subprocess.run([budgetd, "serve", "--data-dir", str(tmp / "data"), *args],
                          env=env, capture_output=True, text=True, timeout=30)


def test_protected_mode_refuses_public_address_without_tokens(tmp_path: pathlib.Path) -> None:
    for listen in ("0.0.0.0:0", "[::]:0"):
        out = _serve("--listen", listen, tmp=tmp_path)
        assert out.returncode == 2
        assert "refusing to serve" in out.stderr and "--insecure-no-auth" in out.stderr
        assert "Traceback" not in out.stderr
    out = _serve(env_extra={"BUDGETD_LISTEN": "0.0.0.0:0"}, tmp=tmp_path)
    assert out.returncode == 2 and "refusing to serve" in out.stderr
    # Nothing was started: no embedded Redis data dir was created.
    assert not (tmp_path / "data").exists()


def test_protected_mode_allows_loopback_and_insecure_flag(
        redis_server: EmbeddedRedis, r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="budgetd.server"):
        t = start(redis_server.url, listen="127.0.0.1:0")
        t.stop()
    assert any("no auth tokens" in rec.getMessage() for rec in caplog.records)
    t = start(redis_server.url, listen="0.0.0.0:0", insecure_no_auth=True)
    try:
        assert client(t, None).get_budget("orga").scope.org == "orga"
    finally:
        t.stop()
