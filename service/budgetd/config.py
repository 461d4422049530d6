"""Server settings: command-line flags, each with a matching BUDGETD_* env var."""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
    # Each interval sweeps the orgs this process reserved in; every org (also
    # those whose reserving replica died) is walked this often.
    expiry_full_sweep_s: float = 30.0
    # Graceful shutdown: in-flight calls get this long to finish.
    drain_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "json"
    # Prometheus endpoint host:port; empty: off.
    metrics_listen: str = ""
    # Label denials with the team id (bounded, see metrics.MAX_TEAM_LABELS).
    metrics_per_team: bool = False
    # Plaintext host:port serving only grpc.health.v1.Health, for kubelet gRPC
    # probes when the main port speaks TLS; empty: off.
    health_listen: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Set: clients must present a certificate signed by this CA (mTLS).
    tls_client_ca_file: str = ""
    # YAML/JSON list of token hashes; empty: no auth (loopback only).
    auth_tokens_file: str = ""
    # Serve without tokens on a non-loopback address.
    insecure_no_auth: bool = False
    # Alerts are POSTed here (Slack-compatible JSON); empty: no webhook.
    webhook_url: str = ""
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 0.5
    webhook_poll_interval_s: float = 1.0
    # Alerts older than this are acknowledged unsent (a stream's history when
    # a webhook is first configured, or what piled up in a long outage).
    webhook_max_age_s: float = 86_400.0
    # Scheduled drift check (docs/drift.md); empty provider: off.
    drift_provider: str = ""
    drift_mapping_file: str = ""
    drift_org: str = ""
    drift_interval_s: float = 86_400.0
    drift_threshold_percent: float = 1.0
    drift_base_url: str = ""
    # After each write script, WAIT for this many replicas (0: don't wait).
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 100
    # Most script calls coalesced into one pipeline (0: no batching, each
    # call its own round trip).
    redis_batch_max: int = 512
    # Server processes sharing --listen through SO_REUSEPORT (budgetd/workers.py).
    workers: int = 1


# Explicit bound of --workers: each worker holds its own Redis connections and
# memory; far more processes than cores only adds context switches.
MAX_WORKERS = 64


def workers_count(text: str) -> int:
    """argparse type of --workers: an integer 1..MAX_WORKERS, else a usage
    error naming the flag (argparse prefixes 'argument --workers:')."""
    try:
        n = int(text.strip())
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"expected an integer from 1 to {MAX_WORKERS} (flag or BUDGETD_WORKERS), "
            f"got {text!r}")
    return n


def positive_seconds(text: str) -> float:
    """argparse type of an interval: a number of seconds > 0 (0 would make
    the loop that uses it spin)."""
    try:
        v = float(text.strip())
    except ValueError:
        v = 0.0
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return v


_FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("listen", "BUDGETD_LISTEN", str, "gRPC listen address host:port"),
    ("redis_url", "BUDGETD_REDIS_URL", str,
     "Redis URL: redis://, rediss://, redis+cluster://host:port[,host:port], "
     "redis+sentinel://host:port[,host:port]/service[/db]; empty: start an embedded Redis"),
    ("data_dir", "BUDGETD_DATA_DIR", str, "data dir of the embedded Redis"),
    ("redis_timeout_s", "BUDGETD_REDIS_TIMEOUT_S", float, "timeout of each Redis command (s)"),
    ("expiry_interval_s", "BUDGETD_EXPIRY_INTERVAL_S", positive_seconds,
     "how often expired reservations are swept in the orgs this process reserved in (s)"),
    ("expiry_full_sweep_s", "BUDGETD_EXPIRY_FULL_SWEEP_S", positive_seconds,
     "how often every org is swept, also those of a replica that died (s)"),
    ("drain_s", "BUDGETD_DRAIN_S", float, "graceful shutdown drain time (s)"),
    ("log_level", "BUDGETD_LOG_LEVEL", str, "DEBUG, INFO, WARNING, ERROR"),
    ("log_format", "BUDGETD_LOG_FORMAT", str, "json or text"),
    ("metrics_listen", "BUDGETD_METRICS_LISTEN", str,
     "Prometheus metrics HTTP address host:port (e.g. 0.0.0.0:9464); empty: off"),
    ("metrics_per_team", "BUDGETD_METRICS_PER_TEAM", bool,
     "label denial metrics with the team id (bounded number of teams)"),
    ("health_listen", "BUDGETD_HEALTH_LISTEN", str,
     "plaintext gRPC address host:port serving only the health service (probes when "
     "the main port uses TLS); empty: off"),
    ("tls_cert_file", "BUDGETD_TLS_CERT_FILE", str, "server certificate chain (PEM)"),
    ("tls_key_file", "BUDGETD_TLS_KEY_FILE", str, "server private key (PEM)"),
    ("tls_client_ca_file", "BUDGETD_TLS_CLIENT_CA_FILE", str,
     "CA bundle (PEM) for client certificates; set: mTLS required"),
    ("auth_tokens_file", "BUDGETD_AUTH_TOKENS_FILE", str,
     "YAML/JSON file of bearer token SHA-256 hashes; empty: no auth, loopback only"),
    ("insecure_no_auth", "BUDGETD_INSECURE_NO_AUTH", bool,
     "serve on a non-loopback address without tokens"),
    ("webhook_url", "BUDGETD_WEBHOOK_URL", str,
     "POST alerts here (Slack-compatible JSON); empty: no webhook"),
    ("webhook_timeout_s", "BUDGETD_WEBHOOK_TIMEOUT_S", float, "timeout of one webhook POST (s)"),
    ("webhook_max_attempts", "BUDGETD_WEBHOOK_MAX_ATTEMPTS", int,
     "POST attempts per alert before it waits for the next poll"),
    ("webhook_backoff_s", "BUDGETD_WEBHOOK_BACKOFF_S", float,
     "first retry delay (s), doubled per attempt"),
    ("webhook_poll_interval_s", "BUDGETD_WEBHOOK_POLL_INTERVAL_S", float,
     "how often the alert streams are read for the webhook (s)"),
    ("webhook_max_age_s", "BUDGETD_WEBHOOK_MAX_AGE_S", positive_seconds,
     "alerts older than this are skipped, not POSTed (counted as too_old) (s)"),
    ("drift_provider", "BUDGETD_DRIFT_PROVIDER", str,
     "scheduled drift check against anthropic or openai (admin key from "
     "ANTHROPIC_ADMIN_KEY / OPENAI_ADMIN_KEY); empty: off"),
    ("drift_mapping_file", "BUDGETD_DRIFT_MAPPING_FILE", str,
     "budgets YAML with orgs.<org>.providers (the file budgetctl apply reads)"),
    ("drift_org", "BUDGETD_DRIFT_ORG", str, "the org, when several orgs map the provider"),
    ("drift_interval_s", "BUDGETD_DRIFT_INTERVAL_S", float, "how often the check runs (s)"),
    ("drift_threshold_percent", "BUDGETD_DRIFT_THRESHOLD_PERCENT", float,
     "alert when a day/scope/model drifts more than this percent"),
    ("drift_base_url", "BUDGETD_DRIFT_BASE_URL", str,
     "the provider API base URL; empty: the provider's own"),
    ("redis_wait_replicas", "BUDGETD_REDIS_WAIT_REPLICAS", int,
     "after each write, WAIT until this many replicas have it (0: off)"),
    ("redis_wait_timeout_ms", "BUDGETD_REDIS_WAIT_TIMEOUT_MS", int,
     "WAIT timeout (ms); a write not replicated in time answers UNAVAILABLE"),
    ("redis_batch_max", "BUDGETD_REDIS_BATCH_MAX", int,
     "most concurrent script calls sent in one pipeline (0: no batching)"),
    ("workers", "BUDGETD_WORKERS", workers_count,
     f"server processes sharing --listen via SO_REUSEPORT (1..{MAX_WORKERS}); >1: a parent "
     "process supervises them, see docs/scaling.md"),
]

_TRUE = {"1", "true", "yes", "on"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for name, env, typ, help_ in _FLAGS:
        if typ is bool:
            on = os.environ.get(env, "").strip().lower() in _TRUE
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name,
                                action="store_true", default=on,
                                help=f"{help_} [env {env}=1]")
            continue
        default = os.environ.get(env)
        if default is None:
            default = getattr(defaults, name)
        # A set env value stays a string: argparse converts it with `typ` when
        # the flag is absent, so a bad value is a usage error naming the flag.
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ,
                            default=default,
                            help=f"{help_} [env {env}, default {getattr(defaults, name)!r}]")


def from_args(ns: argparse.Namespace) -> Settings:
    s = Settings(**{name: getattr(ns, name) for name, *_ in _FLAGS})
    if not s.data_dir:
        s.data_dir = default_data_dir()
    return s
