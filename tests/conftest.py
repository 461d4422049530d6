"""Test fixtures: a real Redis server process started by the tests on a free
port (found the way `budgetd serve` finds one), and a real budgetd gRPC
server on its own event loop thread, with a manual clock."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from budgetd.clock import ManualClock  # noqa: E402
from budgetd.config import Settings  # noqa: E402
from budgetd.embedded import EmbeddedRedis  # noqa: E402
from budgetd.server import ServerThread  # noqa: E402
from budgetd.windows import WALKER_KEY  # noqa: E402
from budgetd_client import AdminClient, BudgetClient, CallPolicy  # noqa: E402

# Tests run in the future: Redis applies EXPIREAT in real time, so window keys
# dated in the past would vanish at once.
T0 = dt.datetime(2027, 3, 15, 12, 0, 0, tzinfo=dt.timezone.utc)


def ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def r(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


class Budgetd:
    """A running budgetd and clients for it."""

    def __init__(self, thread: ServerThread, clock: ManualClock) -> None:
        self.thread = thread
        self.clock = clock
        self.address = thread.address
        policy = CallPolicy(timeout_s=10, total_timeout_s=20, retries=0)
        self.client = BudgetClient(self.address, policy=policy)
        self.admin = AdminClient(self.address, policy=policy)

    def expire_now(self) -> int:
        """One expiry sweep, as the server's background loop runs it."""
        ledger = self.thread.app.ledger
        assert ledger is not None
        return int(self.thread.call(ledger.expire_all()))

    def close(self) -> None:
        self.client.close()
        self.admin.close()
        self.thread.stop()


def start_budgetd(redis_url: str, **settings: Any) -> Budgetd:
    """A budgetd on a free port, its clock stopped at T0; `settings` override
    the test defaults (expiry sweep every 0.2 s, Redis timeout 5 s)."""
    clock = ManualClock(ms(T0))
    s = Settings(**{"listen": "127.0.0.1:0", "redis_url": redis_url,
                    "expiry_interval_s": 0.2, "redis_timeout_s": 5.0, **settings})
    return Budgetd(ServerThread(s, clock).start(), clock)


@pytest.fixture()
def budgetd(r: redis.Redis, redis_server: EmbeddedRedis) -> Iterator[Budgetd]:
    b = start_budgetd(redis_server.url)
    yield b
    b.close()


WALKER_KEY_BYTES = WALKER_KEY.encode()


def keyspace(client: redis.Redis) -> dict[bytes, Any]:
    """Every key with its exact content (bytes) and whether it has a TTL, but
    the expiry walk's lease (bd:walker: the servers' background loop takes and
    renews it on its own schedule; it holds no budget data).

    Content, not DUMP: a hashtable-encoded hash may dump its fields in another
    order after a mere read (incremental rehashing)."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        if key == WALKER_KEY_BYTES:
            continue
        kind = client.type(key)
        value: Any
        if kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"string":
            value = client.get(key)
        elif kind == b"set":
            value = client.smembers(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"stream":
            value = client.xrange(key)
        else:
            value = client.dump(key)
        out[key] = (kind, value, client.ttl(key) >= 0)
    return out


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
