"""Redis connections from a URL: one server, a Redis Cluster, or a master
found through Sentinel. Every client gets explicit timeouts and explicit,
bounded retries: redis-py 8 retries several times by default, which hides an
outage and blows past callers' deadlines.

    redis://[user:pass@]host:port[/db]            one server (rediss:// for TLS)
    redis+cluster://[user:pass@]host:port[,host:port...]   Redis Cluster (rediss+cluster://)
    redis+sentinel://[:pass@]host:port[,host:port...]/service_name[/db]
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.maint_notifications import MaintNotificationsConfig

from budgetd.errors import BudgetdError

# Connections per node (or per server): bounds sockets, and with them how
# many calls can be in flight to one Redis.
MAX_CONNECTIONS = 256
MAX_SEED_NODES = 32
# In a cluster a MOVED/ASK/CLUSTERDOWN or a dead node makes redis-py refresh
# the slot map and try again: at most this many times, with a short backoff,
# so a failover costs a call at most ~0.3 s before it fails UNAVAILABLE (and
# the budgetd client retries with the same request_id).
CLUSTER_RETRIES = 2
CLUSTER_BACKOFF_CAP_S = 0.2
CLUSTER_BACKOFF_BASE_S = 0.05

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}


class RedisUrlError(BudgetdError):
    """A Redis URL budgetd cannot use."""

    def __init__(self, message: str) -> None:
        super().__init__(f"redis_url: {message}")


class _SendGuard:
    """A connection whose send fails as a lost connection when the socket is
    closed under it. A slot-map refresh (redis-py's own after a node error,
    or the batcher's after a failover) closes every pooled connection of
    every node, also one a concurrent command or pipeline is about to write
    on; redis-py then fails with AttributeError on the vanished writer, which
    budgetd would answer UNKNOWN. As a ConnectionError it is retried like any
    lost connection (reads, and budgetd's scripts, idempotent by request_id,
    are safe to send again)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except AttributeError as e:
            raise RedisConnectionError("connection closed while sending (slot-map refresh)") from e


class _GuardedConnection(_SendGuard, aioredis.Connection):
    pass


class _GuardedSSLConnection(_SendGuard, aioredis.SSLConnection):
    pass


class SafeRedisCluster(RedisCluster):
    """RedisCluster whose node connections are guarded (_SendGuard)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        guarded = (_GuardedSSLConnection if self.connection_kwargs["connection_class"]
                   is aioredis.SSLConnection else _GuardedConnection)
        # One dict, shared with the nodes manager: nodes found later use it.
        self.connection_kwargs["connection_class"] = guarded
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = guarded


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


def _endpoints(netloc_hosts: str, url: str) -> list[Endpoint]:
    out: list[Endpoint] = []
    for part in netloc_hosts.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port_s = part.rpartition(":")
        if not sep:
            host, port_s = part, "6379"
        host = host.strip("[]")
        try:
            port = int(port_s)
        except ValueError:
            raise RedisUrlError(f"bad port {port_s!r} in {url!r}") from None
        if not host or not 0 < port < 65536:
            raise RedisUrlError(f"bad host:port {part!r} in {url!r}")
        out.append(Endpoint(host, port))
    if not out:
        raise RedisUrlError(f"no host:port in {url!r}")
    if len(out) > MAX_SEED_NODES:
        raise RedisUrlError(f"at most {MAX_SEED_NODES} host:port entries, got {len(out)}")
    return out


def _split(url: str) -> tuple[str, str | None, str | None, str, str]:
    """scheme, username, password, hosts part, path (without query)."""
    scheme, rest = url.split("://", 1)
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, _, path = rest.partition("/")
    user = password = None
    if "@" in netloc:
        cred, netloc = netloc.rsplit("@", 1)
        u, sep, p = cred.partition(":")
        user = urllib.parse.unquote(u) or None
        password = urllib.parse.unquote(p) if sep else None
    return scheme.lower(), user, password, netloc, path


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def connect_redis(url: str, timeout_s: float) -> Any:
    """A redis.asyncio client (Redis or RedisCluster) for `url`."""
    if "://" not in url:
        raise RedisUrlError(f"{url!r} has no scheme (redis://, rediss://, redis+cluster://, "
                            "redis+sentinel://)")
    scheme, user, password, hosts, path = _split(url)
    if scheme in CLUSTER_SCHEMES:
        if path.strip("/"):
            raise RedisUrlError("a cluster has only db 0: drop the /path")
        nodes = [ClusterNode(e.host, e.port) for e in _endpoints(hosts, url)]
        return SafeRedisCluster(
            startup_nodes=nodes,
            # Keep the configured seeds: after a failover the old master may
            # be gone, and discovered nodes may not be reachable names.
            dynamic_startup_nodes=False,
            require_full_coverage=True,
            retry=Retry(ExponentialBackoff(cap=CLUSTER_BACKOFF_CAP_S,
                                           base=CLUSTER_BACKOFF_BASE_S), CLUSTER_RETRIES),
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=0,
            max_connections=MAX_CONNECTIONS,
            username=user,
            password=password,
            ssl=CLUSTER_SCHEMES[scheme],
        )
    if scheme in SENTINEL_SCHEMES:
        parts = [p for p in path.split("/") if p]
        if not 1 <= len(parts) <= 2:
            raise RedisUrlError("expected redis+sentinel://host:port[,host:port]/service_name"
                                f"[/db], got {url!r}")
        service = parts[0]
        try:
            db = int(parts[1]) if len(parts) == 2 else 0
        except ValueError:
            raise RedisUrlError(f"db {parts[1]!r} is not a number") from None
        no_retry: dict[str, Any] = {
            "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0)}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [(e.host, e.port) for e in _endpoints(hosts, url)],
            # The sentinels themselves usually have no password; the data
            # nodes get the URL's credentials.
            sentinel_kwargs=dict(no_retry),
            **no_retry,
        )
        master_kwargs: dict[str, Any] = {
            "db": db, "username": user, "password": password, "ssl": SENTINEL_SCHEMES[scheme],
            "health_check_interval": 0, "max_connections": MAX_CONNECTIONS, **no_retry}
        return sentinel.master_for(service, redis_class=aioredis.Redis, **master_kwargs)
    if scheme in ("redis", "rediss", "unix"):
        return aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            max_connections=MAX_CONNECTIONS,
            # redis-py 8.1's default ("auto") counts as enabled, and then its
            # pool hands out connections the server closed (a restart, CLIENT
            # KILL, an idle timeout): the first command on each failed. These
            # notifications need RESP3; budgetd speaks RESP2.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
    raise RedisUrlError(f"unknown scheme {scheme!r} in {url!r}")
