"""The budgetd server: grpc.aio + redis.asyncio, health and reflection, the
expiry sweeper, graceful shutdown, and the embedded Redis when no URL is
given."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

from budgetd.admin import Admin
from budgetd.batching import ScriptBatcher
from budgetd.clock import Clock, SystemClock
from budgetd.config import Settings
from budgetd.embedded import EmbeddedRedis
from budgetd.ledger import Ledger, PricingSource
from budgetd.redis_conn import connect_redis
from budgetd.service import BudgetAdminService, BudgetService
from budgetd_client._proto.budget.v1 import admin_pb2, admin_pb2_grpc, budget_pb2, budget_pb2_grpc

log = logging.getLogger("budgetd.server")

# Kubernetes liveness probes ask for this service name: it says the process
# runs, whatever Redis does. "" (readiness) follows Redis reachability.
LIVENESS_SERVICE = "liveness"
SERVICE_NAMES = (
    budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["BudgetAdminService"].full_name,
)
MAX_MESSAGE_BYTES = 1 << 20

__all__ = ["App", "ServerThread", "connect_redis", "serve"]


@dataclass
class App:
    settings: Settings
    clock: Clock
    redis: Any = None
    server: grpc.aio.Server | None = None
    embedded: EmbeddedRedis | None = None
    port: int = 0
    ledger: Ledger | None = None
    batcher: ScriptBatcher | None = None

    async def start(self) -> None:
        s = self.settings
        url = s.redis_url
        if not url:
            self.embedded = EmbeddedRedis(s.data_dir)
            await asyncio.to_thread(self.embedded.start)
            url = self.embedded.url
            log.info("embedded redis started", extra={"url": url, "data_dir": s.data_dir,
                                                      "binary": self.embedded.binary})
        self.redis = connect_redis(url, s.redis_timeout_s)
        pricing = PricingSource(self.redis)
        self.ledger = Ledger(self.redis, self.clock, pricing)
        if s.redis_batch_max > 0 or s.redis_wait_replicas > 0:
            self.batcher = ScriptBatcher(self.redis, max_batch=max(s.redis_batch_max, 1),
                                         wait_replicas=s.redis_wait_replicas,
                                         wait_timeout_ms=s.redis_wait_timeout_ms)
            self.ledger.scripts.attach(self.batcher)
        admin = Admin(self.redis, self.ledger)
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        budget_pb2_grpc.add_BudgetServiceServicer_to_server(BudgetService(self.ledger),
                                                            self.server)
        admin_pb2_grpc.add_BudgetAdminServiceServicer_to_server(BudgetAdminService(admin),
                                                                self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(s.listen)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {s.listen}")
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._set_ready(await self._redis_ok())
        await self.server.start()
        self._tasks = [asyncio.create_task(self._sweep_loop()),
                       asyncio.create_task(self._health_loop())]
        log.info("budgetd serving", extra={"listen": s.listen, "port": self.port})

    async def _redis_ok(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def _set_ready(self, ok: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if ok
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            await self._set_ready(await self._redis_ok())

    async def _sweep_loop(self) -> None:
        """Expiry happens here, with or without traffic."""
        assert self.ledger is not None
        while True:
            try:
                n = await self.ledger.expire_all()
                if n:
                    log.info("reservations expired", extra={"count": n})
            except (RedisError, OSError) as e:
                log.warning("expiry sweep failed: %s", e)
            except Exception:
                log.exception("expiry sweep crashed")
            await asyncio.sleep(self.settings.expiry_interval_s)

    async def stop(self, grace_s: float | None = None) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.health.enter_graceful_shutdown()
            await self.server.stop(self.settings.drain_s if grace_s is None else grace_s)
        for t in getattr(self, "_tasks", []):
            t.cancel()
        for t in getattr(self, "_tasks", []):
            with contextlib.suppress(BaseException):
                await t
        if self.redis is not None:
            await self.redis.aclose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            log.info("embedded redis stopped")


async def serve(settings: Settings, clock: Clock | None = None) -> None:
    app = App(settings, clock or SystemClock())
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"drain_s": settings.drain_s})
    await app.stop()


class ServerThread:
    """Runs an App on its own event loop in a thread (tests, embedding)."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.app = App(settings, clock or SystemClock())
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.app.start(), self.loop).result(timeout=60)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def stop(self) -> None:
        self.call(self.app.stop(grace_s=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
