"""Health checking and server reflection, as grpcurl and Kubernetes use them."""

from __future__ import annotations

import grpc
from conftest import Budgetd
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def test_health_and_reflection(budgetd: Budgetd) -> None:
    with grpc.insecure_channel(budgetd.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "liveness", "budget.v1.BudgetService",
                        "budget.v1.BudgetAdminService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {"budget.v1.BudgetService", "budget.v1.BudgetAdminService",
                "grpc.health.v1.Health"} <= services
        reserve = db.FindFileContainingSymbol("budget.v1.BudgetService")
        assert reserve.name == "budget/v1/budget.proto"
        assert "ReserveRequest" in [m.name for m in reserve.message_type]


def test_readiness_follows_redis_and_calls_fail_fast(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import time

    from budgetd.clock import SystemClock
    from budgetd.config import Settings
    from budgetd.embedded import EmbeddedRedis
    from budgetd.server import ServerThread
    from budgetd_client import BudgetClient, BudgetUnavailable, CallPolicy

    redis_proc = EmbeddedRedis(tmp_path, appendonly=False)
    redis_proc.start()
    thread = ServerThread(Settings(listen="127.0.0.1:0", redis_url=redis_proc.url,
                                   redis_timeout_s=0.5), SystemClock()).start()
    try:
        redis_proc.stop()
        with grpc.insecure_channel(thread.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 10
            status = None
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.2)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            live = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
            assert live.status == health_pb2.HealthCheckResponse.SERVING
        with BudgetClient(thread.address, policy=CallPolicy(timeout_s=2, total_timeout_s=2,
                                                            retries=0)) as c:
            t0 = time.monotonic()
            try:
                c.reserve("acme", "claude-haiku-4-5", tokens=1, cost_micros=1)
                raise AssertionError("reserve succeeded with Redis down")
            except BudgetUnavailable as e:
                assert "UNAVAILABLE" in str(e)
            assert time.monotonic() - t0 < 2.0
    finally:
        thread.stop()
        redis_proc.stop()
