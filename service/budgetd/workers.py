"""`budgetd serve --workers N`: N server processes on one address.

One grpc.aio process serves on one core. With N > 1 the parent starts N
workers (`python -m budgetd.workers <index>`), each an ordinary App whose gRPC
servers bind --listen (and --health-listen) with SO_REUSEPORT, so the kernel
spreads incoming connections over them. The parent serves no gRPC; it

- starts the embedded Redis (no --redis-url) once and gives every worker its URL;
- serves --metrics-listen itself, summed over the workers (prometheus_client
  multiprocess mode, in a directory it creates and removes);
- starts worker 0 alone first: it runs the background jobs (expiry sweeper,
  webhook sender, drift check), and a bad config stops it before the others
  start, so the error is printed once;
- forwards SIGTERM/SIGINT as SIGTERM to every worker, which drains as a single
  server does, and exits 0 when all of them exited 0;
- restarts nothing: when a worker exits unasked it stops the others and exits
  non-zero, so whatever supervises budgetd (Kubernetes) restarts it whole.

A worker gets its settings as one JSON line on stdin (not argv: `ps` shows
argv to everyone, and the settings may hold a webhook URL). The parent keeps
that pipe open, so a worker whose parent died reads EOF and stops. A worker
says it is serving by writing one line on a second pipe."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from budgetd.auth import ConfigError
from budgetd.config import MAX_WORKERS, Settings

log = logging.getLogger("budgetd.workers")

READY_LINE = b"ready\n"
MAX_SETTINGS_BYTES = 1 << 20
# A worker connects to Redis and binds its ports: seconds, not minutes.
START_TIMEOUT_S = 60.0
# Beyond --drain-s: a worker's App.stop has a few more bounded steps
# (server.STEP_S each); past this it is killed.
STOP_GRACE_S = 30.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

__all__ = ["MAX_WORKERS", "check_settings", "supervise", "worker_main"]


def check_settings(s: Settings) -> None:
    """What cannot work with several processes on one address."""
    if not 1 <= s.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers {s.workers}: expected 1 to {MAX_WORKERS}")
    for flag, listen in (("--listen", s.listen), ("--health-listen", s.health_listen)):
        if not listen:
            continue
        if listen.startswith("unix:"):
            raise ConfigError(f"{flag} {listen!r}: a unix socket cannot be shared by "
                              f"--workers {s.workers}; use host:port")
        if listen.rpartition(":")[2] == "0":
            raise ConfigError(f"{flag} {listen!r}: port 0 would give each of the "
                              f"--workers {s.workers} its own port; name the port")


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: killed by signal n -> 128 + n."""
    return 128 - returncode if returncode < 0 else returncode


@dataclasses.dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    ready: asyncio.StreamReader
    ready_transport: asyncio.BaseTransport
    # Its unasked exit was logged (and decides the parent's status).
    reported: bool = False

    async def wait_ready(self) -> bool:
        """True once it serves; False if it exited first (EOF on the pipe)."""
        line = await self.ready.readline()
        if line == READY_LINE:
            return True
        await self.proc.wait()
        return False


class Supervisor:
    """The parent process of `budgetd serve --workers N`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: list[_Worker] = []
        self.stop_requested = asyncio.Event()
        self._embedded: Any = None
        self._metrics_server: Any = None
        self._metrics_dir = ""

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop_requested.is_set():
            log.info("stopping workers", extra={"signal": sig.name})
        self.stop_requested.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run()
        finally:
            await self._cleanup()

    async def _run(self) -> int:
        s = self.settings
        # Workers serve no metrics themselves: the parent serves their sum.
        worker_settings = dataclasses.replace(s, metrics_listen="")
        env = {k: v for k, v in os.environ.items() if k.upper() != MULTIPROC_ENV}
        if not s.redis_url:
            from budgetd.embedded import EmbeddedRedis

            self._embedded = EmbeddedRedis(s.data_dir)
            await asyncio.to_thread(self._embedded.start)
            worker_settings.redis_url = self._embedded.url
            log.info("embedded redis started", extra={"url": self._embedded.url,
                                                      "data_dir": s.data_dir})
        if s.metrics_listen:
            self._start_metrics(s.metrics_listen)
            env[MULTIPROC_ENV] = self._metrics_dir
        # Worker 0 (background jobs) alone first, then the rest together.
        for group in ((0,), range(1, s.workers)):
            if self.stop_requested.is_set():
                return await self._shutdown(None)
            started = [await self._spawn(i, worker_settings, env) for i in group]
            failed = await self._wait_ready(started)
            if failed is not None:
                return await self._shutdown(failed)
        if self.stop_requested.is_set():
            return await self._shutdown(None)
        log.info("budgetd workers serving", extra={
            "listen": s.listen, "workers": s.workers,
            "pids": [w.proc.pid for w in self.workers]})
        return await self._shutdown(await self._wait_first_exit())

    def _start_metrics(self, listen: str) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        from budgetd.metrics import MetricsServer

        self._metrics_dir = tempfile.mkdtemp(prefix="budgetd-metrics-")
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._metrics_dir)  # type: ignore[no-untyped-call]
        self._metrics_server = MetricsServer(listen, registry)
        log.info("metrics serving (sum over workers)",
                 extra={"metrics_listen": listen, "port": self._metrics_server.port})

    async def _spawn(self, index: int, settings: Settings, env: dict[str, str]) -> _Worker:
        loop = asyncio.get_running_loop()
        ready_r, ready_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "budgetd.workers", str(index),
                stdin=asyncio.subprocess.PIPE, pass_fds=(ready_w,), env=env)
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)  # The worker holds the only write end: EOF when it exits.
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(ready_r, "rb", 0))
        worker = _Worker(index, proc, reader, transport)
        self.workers.append(worker)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"index": index, "ready_fd": ready_w,
                                     "settings": dataclasses.asdict(settings)}).encode() + b"\n")
        with contextlib.suppress(ConnectionError):  # Died at once: wait_ready says so.
            await proc.stdin.drain()
        return worker

    async def _wait_ready(self, workers: list[_Worker]) -> int | None:
        """None once all serve (or a stop was asked); else the status to exit with."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        tasks = {asyncio.create_task(w.wait_ready()): w for w in workers}
        stop = asyncio.create_task(self.stop_requested.wait())
        pending: set[asyncio.Task[Any]] = set(tasks)
        try:
            while pending:
                done, _ = await asyncio.wait(pending | {stop}, timeout=deadline - loop.time(),
                                             return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return None
                if not done:
                    log.error("workers not serving in time", extra={
                        "workers": sorted(tasks[t].index for t in pending),
                        "timeout_s": START_TIMEOUT_S})
                    return 1
                for t in done:
                    pending.discard(t)
                    if not t.result():
                        w = tasks[t]
                        w.reported = True
                        rc = w.proc.returncode or 0
                        log.error("worker exited before serving", extra={
                            "worker": w.index, "pid": w.proc.pid, "returncode": rc})
                        return exit_status(rc) or 1
            return None
        finally:
            for t in (*pending, stop):
                t.cancel()

    async def _wait_first_exit(self) -> int | None:
        """Waits for a stop request (None) or a worker's exit (the status to
        exit with: never 0, as no worker may stop unasked)."""
        waits = {asyncio.create_task(w.proc.wait()): w for w in self.workers}
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            done, _ = await asyncio.wait({*waits, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (*waits, stop):
                t.cancel()
        exited = [waits[t] for t in done if t in waits]
        if not exited:
            return None
        w = exited[0]
        w.reported = True
        rc = w.proc.returncode or 0
        log.error("worker exited: stopping the others (nothing is restarted)", extra={
            "worker": w.index, "pid": w.proc.pid, "returncode": rc})
        return exit_status(rc) or 1

    async def _shutdown(self, failed: int | None) -> int:
        """SIGTERM to every worker, wait (bounded), SIGKILL what remains. The
        status: `failed` if set, else the first non-zero status of a worker."""
        live = [w for w in self.workers if w.proc.returncode is None]
        for w in live:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        status = 0
        if live:
            grace_s = self.settings.drain_s + STOP_GRACE_S
            _, slow = await asyncio.wait([asyncio.create_task(w.proc.wait()) for w in live],
                                         timeout=grace_s)
            if slow:
                stuck = [w for w in live if w.proc.returncode is None]
                log.error("workers did not stop in time: killed", extra={
                    "workers": [w.index for w in stuck], "timeout_s": grace_s})
                for w in stuck:
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
                    await w.proc.wait()
                status = 1
        for w in self.workers:
            rc = w.proc.returncode or 0
            # A worker our SIGTERM hit before it set its handler had nothing to drain.
            if w.reported or (w in live and rc == -signal.SIGTERM):
                continue
            if rc and not status:
                log.error("worker failed", extra={"worker": w.index, "pid": w.proc.pid,
                                                  "returncode": rc})
                status = exit_status(rc)
        if failed is not None:
            return failed
        if status == 0:
            log.info("workers stopped", extra={"workers": len(self.workers)})
        return status

    async def _cleanup(self) -> None:
        for w in self.workers:
            if w.proc.returncode is None:  # Only after an error in this process.
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
            if w.proc.stdin is not None:
                w.proc.stdin.close()
            w.ready_transport.close()
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.stop)
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            log.info("embedded redis stopped")
        if self._metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def supervise(settings: Settings) -> int:
    """Runs the workers until a signal or a worker's exit; the exit status."""
    check_settings(settings)
    return asyncio.run(Supervisor(settings).run())


# --- the worker side ---------------------------------------------------------


async def _serve_worker(settings: Settings, index: int, ready_fd: int) -> None:
    from budgetd.clock import SystemClock
    from budgetd.server import App, tune_gc

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = App(settings, SystemClock(), background_jobs=index == 0)
    await app.start()
    tune_gc()

    def parent_pipe() -> None:
        if not os.read(0, 4096):
            loop.remove_reader(0)
            log.warning("parent process gone: stopping")
            stop.set()

    loop.add_reader(0, parent_pipe)
    os.write(ready_fd, READY_LINE)
    os.close(ready_fd)
    await stop.wait()
    log.info("shutting down", extra={"drain_s": settings.drain_s})
    await app.stop()


def worker_main() -> int:
    if sys.stdin.isatty():
        print("budgetd.workers: started by `budgetd serve --workers N`, not by hand",
              file=sys.stderr)
        return 2
    line = sys.stdin.buffer.readline(MAX_SETTINGS_BYTES)
    if not line.endswith(b"\n"):
        print("budgetd.workers: no settings on stdin", file=sys.stderr)
        return 2
    msg = json.loads(line)
    index, ready_fd = int(msg["index"]), int(msg["ready_fd"])
    settings = Settings(**msg["settings"])
    from budgetd import logs

    logs.setup(settings.log_level, settings.log_format, worker=index)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    try:
        asyncio.run(_serve_worker(settings, index, ready_fd))
    except ConfigError as e:
        print(f"budgetd: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
