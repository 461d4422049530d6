"""Server settings: command-line flags, each with a matching BUDGETD_* env var."""

from __future__ import annotations

import argparse
import os
import pathlib
from dataclasses import dataclass


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(pathlib.Path.home() / ".local" / "share")
    return str(pathlib.Path(base) / "budgetd")


@dataclass(slots=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    # Empty: start the embedded Redis.
    redis_url: str = ""
    data_dir: str = ""
    # Every Redis command gives up after this; a call fails fast, not late.
    redis_timeout_s: float = 1.0
    expiry_interval_s: float = 1.0
    # Graceful shutdown: in-flight calls get this long to finish.
    drain_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "json"
    # After each write script, WAIT for this many replicas (0: don't wait).
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 100
    # Most script calls coalesced into one pipeline (0: no batching, each
    # call its own round trip).
    redis_batch_max: int = 512


_FLAGS: list[tuple[str, str, type, str]] = [
    ("listen", "BUDGETD_LISTEN", str, "gRPC listen address host:port"),
    ("redis_url", "BUDGETD_REDIS_URL", str,
     "Redis URL: redis://, rediss://, redis+cluster://host:port[,host:port], "
     "redis+sentinel://host:port[,host:port]/service[/db]; empty: start an embedded Redis"),
    ("data_dir", "BUDGETD_DATA_DIR", str, "data dir of the embedded Redis"),
    ("redis_timeout_s", "BUDGETD_REDIS_TIMEOUT_S", float, "timeout of each Redis command (s)"),
    ("expiry_interval_s", "BUDGETD_EXPIRY_INTERVAL_S", float,
     "how often expired reservations are swept (s)"),
    ("drain_s", "BUDGETD_DRAIN_S", float, "graceful shutdown drain time (s)"),
    ("log_level", "BUDGETD_LOG_LEVEL", str, "DEBUG, INFO, WARNING, ERROR"),
    ("log_format", "BUDGETD_LOG_FORMAT", str, "json or text"),
    ("redis_wait_replicas", "BUDGETD_REDIS_WAIT_REPLICAS", int,
     "after each write, WAIT until this many replicas have it (0: off)"),
    ("redis_wait_timeout_ms", "BUDGETD_REDIS_WAIT_TIMEOUT_MS", int,
     "WAIT timeout (ms); a write not replicated in time answers UNAVAILABLE"),
    ("redis_batch_max", "BUDGETD_REDIS_BATCH_MAX", int,
     "most concurrent script calls sent in one pipeline (0: no batching)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for name, env, typ, help_ in _FLAGS:
        default = os.environ.get(env, getattr(defaults, name))
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ,
                            default=typ(default) if default != "" else "",
                            help=f"{help_} [env {env}, default {getattr(defaults, name)!r}]")


def from_args(ns: argparse.Namespace) -> Settings:
    s = Settings(**{name: getattr(ns, name) for name, *_ in _FLAGS})
    if not s.data_dir:
        s.data_dir = default_data_dir()
    return s
