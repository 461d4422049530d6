"""The budgetd server: grpc.aio + redis.asyncio, health and reflection, the
expiry sweeper, graceful shutdown, and the embedded Redis when no URL is
given."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from budgetd_client._proto.budget.v1 import admin_pb2, admin_pb2_grpc, budget_pb2, budget_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from redis.exceptions import RedisError

from budgetd import metrics
from budgetd.admin import Admin
from budgetd.auth import Authorizer, check_protected_mode, load_tokens
from budgetd.batching import ScriptBatcher
from budgetd.clock import Clock, SystemClock
from budgetd.config import Settings
from budgetd.drift import DriftChecker, DriftConfig
from budgetd.embedded import EmbeddedRedis
from budgetd.interceptors import CallHooks, ServiceRegistrar
from budgetd.ledger import MAX_WALK_LEASE_MS, Ledger, PricingSource
from budgetd.redis_conn import connect_redis
from budgetd.service import BudgetAdminService, BudgetService
from budgetd.tls import server_credentials
from budgetd.webhook import WebhookConfig, WebhookSender

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
    metrics_server: metrics.MetricsServer | None = None
    # The plaintext health-only listener (--health-listen) and its port.
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    # The expiry sweeper, webhook sender and drift check. With --workers N
    # only worker 0 runs them: N sweepers or senders would duplicate work
    # (and webhook POSTs).
    background_jobs: bool = True
    # This process's name in the walk lease (bd:walker), unique among replicas.
    walker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    async def start(self) -> None:
        s = self.settings
        # Configuration errors first: nothing starts on a bad config.
        authorizer = Authorizer(load_tokens(s.auth_tokens_file) if s.auth_tokens_file else {})
        if check_protected_mode(s.listen, authorizer.enabled, s.insecure_no_auth):
            log.warning("no auth tokens configured: anyone who can connect may spend and "
                        "change any budget; set --auth-tokens-file",
                        extra={"listen": s.listen})
        creds = server_credentials(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
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
        self.drift: DriftChecker | None = None
        # Checked before serving: a bad mapping stops the start.
        if s.drift_provider and self.background_jobs:
            self.drift = DriftChecker(self.redis, self.ledger, self.clock, DriftConfig(
                provider=s.drift_provider, mapping_file=s.drift_mapping_file,
                org=s.drift_org or None, interval_s=s.drift_interval_s,
                threshold_percent=s.drift_threshold_percent, base_url=s.drift_base_url))
        # Off unless --workers > 1: a second budgetd on a taken port must fail,
        # not silently share it. With workers the kernel spreads connections.
        reuseport = 1 if s.workers > 1 else 0
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", reuseport),
        ])
        # Every service's handlers wrapped once with auth, metrics and the
        # access log; malformed bytes reach budgetd's own servicers, which
        # answer INVALID_ARGUMENT.
        services = ServiceRegistrar(self.server, CallHooks(
            authorizer, metrics.TeamLabels(s.metrics_per_team), SERVICE_NAMES))
        reg: Any = services  # the generated code asks for a server, and uses these two methods
        budget_pb2_grpc.add_BudgetServiceServicer_to_server(BudgetService(self.ledger), reg)
        # A blocking XREAD must return before the Redis socket timeout.
        self.admin_service = BudgetAdminService(
            admin, watch_block_ms=int(s.redis_timeout_s * 1000 / 2))
        admin_pb2_grpc.add_BudgetAdminServiceServicer_to_server(self.admin_service, reg)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, reg)
        # What reflection.enable_server_reflection does for an aio server.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
                (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)), reg)
        if creds is not None:
            self.port = self.server.add_secure_port(s.listen, creds)
        else:
            self.port = self.server.add_insecure_port(s.listen)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {s.listen}")
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._set_ready(await self._redis_ok())
        if s.health_listen:
            await self._start_health_listener(s.health_listen)
        await self.server.start()
        if s.metrics_listen:
            self.metrics_server = metrics.MetricsServer(s.metrics_listen)
            log.info("metrics serving", extra={"metrics_listen": s.metrics_listen,
                                               "port": self.metrics_server.port})
        # Every worker sweeps the orgs it reserved in; the full walk runs in
        # the one with the background jobs (_sweep_loop).
        self._tasks = [asyncio.create_task(self._sweep_loop())]
        self._tasks.append(asyncio.create_task(self._health_loop()))
        self.webhook: WebhookSender | None = None
        if s.webhook_url and self.background_jobs:
            self.webhook = WebhookSender(self.redis, WebhookConfig(
                url=s.webhook_url, timeout_s=s.webhook_timeout_s,
                max_attempts=s.webhook_max_attempts, backoff_s=s.webhook_backoff_s,
                poll_interval_s=s.webhook_poll_interval_s, max_age_s=s.webhook_max_age_s))
            self._tasks.append(asyncio.create_task(self.webhook.run()))
            log.info("alert webhook enabled")  # Never the URL: it often holds a secret.
        if self.drift is not None:
            self._tasks.append(asyncio.create_task(self.drift.run()))
            log.info("drift check enabled", extra={"provider": s.drift_provider,
                                                   "interval_s": s.drift_interval_s})
        if s.workers > 1 and self.background_jobs:
            log.info("background jobs run in this worker", extra={
                "jobs": ["expiry", *(["webhook"] if self.webhook else []),
                         *(["drift"] if self.drift else [])]})
        log.info("budgetd serving", extra={"listen": s.listen, "port": self.port,
                                           "tls": creds is not None,
                                           "mtls": bool(s.tls_client_ca_file),
                                           "auth_tokens": len(authorizer.tokens)})

    async def _start_health_listener(self, listen: str) -> None:
        """The kubelet's gRPC probe cannot speak TLS: a second, plaintext server
        with the same health servicer (same statuses), and nothing else: no
        budget or admin service, no reflection, so it needs no auth."""
        self.health_server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", 4096),
            # Every worker answers probes on the shared port (same statuses).
            ("grpc.so_reuseport", 1 if self.settings.workers > 1 else 0),
        ], maximum_concurrent_rpcs=64)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        self.health_port = self.health_server.add_insecure_port(listen)
        if self.health_port == 0:
            raise RuntimeError(f"cannot listen on {listen} (health)")
        await self.health_server.start()
        log.info("health serving", extra={"health_listen": listen, "port": self.health_port})

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
        """Expiry happens here, with or without traffic: every interval in the
        orgs this process reserved in, and, in the process that runs the
        background jobs and holds the walk lease (one of all replicas), a
        share of the walk over every org, so that each full-sweep period
        visits them all (a replica that died leaves its reservations to the
        others). Walking every org every second would
        cost a busy event loop at 100k orgs."""
        assert self.ledger is not None
        interval_s = self.settings.expiry_interval_s
        share = min(1.0, interval_s / self.settings.expiry_full_sweep_s)
        # One walker among all replicas: renewed every interval, taken over by
        # another process when it lapses.
        lease_ms = min(MAX_WALK_LEASE_MS, max(1000, int(3000 * interval_s)))
        while True:
            try:
                n = await self.ledger.expire_active()
                if self.background_jobs and await self.ledger.hold_walk(self.walker_id, lease_ms):
                    n += await self.ledger.expire_walk(share)
                if n:
                    metrics.EXPIRED_RESERVATIONS.inc(n)
                    log.info("reservations expired", extra={"count": n})
            except (RedisError, OSError) as e:
                log.warning("expiry sweep failed: %s", e)
            except Exception:
                log.exception("expiry sweep crashed")
            await asyncio.sleep(self.settings.expiry_interval_s)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain, then close everything. Each step is bounded: a stuck step is
        logged and skipped, so shutdown always ends."""
        drain_s = self.settings.drain_s if grace_s is None else grace_s
        if self.metrics_server is not None:
            await _bounded("metrics server stop", asyncio.to_thread(self.metrics_server.stop))
            self.metrics_server = None
        if self.server is not None:
            self.admin_service.shutdown()
            with contextlib.suppress(Exception):
                await _bounded("health shutdown", self.health.enter_graceful_shutdown())
            await _bounded("grpc server stop", self.server.stop(drain_s), drain_s + STEP_S)
        if self.health_server is not None:
            # After the main server: probes see NOT_SERVING while calls drain.
            await _bounded("health server stop", self.health_server.stop(0))
            self.health_server = None
        tasks = getattr(self, "_tasks", [])
        for t in tasks:
            t.cancel()
        if tasks:
            await _bounded("background tasks", asyncio.gather(*tasks, return_exceptions=True))
        if self.redis is not None:
            await _bounded("redis close", self.redis.aclose())
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            log.info("embedded redis stopped")


# Bound of one shutdown step (beyond the drain time of the gRPC server).
STEP_S = 10.0


async def _bounded(what: str, aw: Any, timeout_s: float = STEP_S) -> None:
    try:
        await asyncio.wait_for(aw, timeout_s)
    except asyncio.TimeoutError:
        log.error("shutdown step timed out", extra={"step": what, "timeout_s": timeout_s})


# Allocations between young collections (Python's default: 700). Each young
# collection promotes what the calls in flight hold at that moment; at 700 that
# is every ~1 ms under load, and the promoted garbage triggers full
# collections, which scan every cached org: with 100,000 orgs, 20 full
# collections of up to 460 ms in a 2-minute run of bench/orgs_scale.py's load
# (3.9 s), against none at 50,000 (GC 1.3 s in all, against 5.4).
GC_YOUNG_ALLOCATIONS = 50_000


def tune_gc() -> None:
    """For a started server: what it holds now (modules, descriptors,
    protos, handlers) lives as long as it, so it is moved out of the
    collector's view (a full collection scans only what came after; under the
    Reserve throughput bench full collections went from ~15 ms each, every
    ~0.5 s, to ~0.3 ms), and young collections run less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_ALLOCATIONS, middle, old)


async def serve(settings: Settings, clock: Clock | None = None) -> None:
    app = App(settings, clock or SystemClock())
    await app.start()
    tune_gc()
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
        try:
            self.call(self.app.stop(grace_s=1.0))
        except TimeoutError:
            # Say what was stuck, then go on: a test must not hang forever.
            for task in asyncio.all_tasks(self.loop):
                task.print_stack()
            raise
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
