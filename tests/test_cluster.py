"""budgetd on a real local Redis Cluster (3 masters + 3 replicas): the core
behaviours through a real budgetd, orgs spread over shards, and a master
failover in the middle of traffic."""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from budgetd.redis_conn import connect_redis
from budgetd_client import AlreadyExists, BudgetClient, BudgetError, CallPolicy, Usage
from cluster import LocalCluster, wait_until
from conftest import Budgetd, start_budgetd

DAY = "d20270315"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=1).start()
    yield c
    c.stop()


@pytest.fixture()
def rc(cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
    client = cluster.client()
    for m in cluster.masters:
        if m.alive():
            m.r.flushall()
    yield client
    client.close()


@pytest.fixture()
def b(cluster: LocalCluster, rc: redis.RedisCluster) -> Iterator[Budgetd]:
    bd = start_budgetd(cluster.url, redis_timeout_s=2.0)
    yield bd
    bd.close()


def counter(rc: redis.RedisCluster, org: str, field: str) -> int:
    return int(rc.hget(f"bd:{{{org}}}:w:{DAY}", field) or 0)


def orgs_on_distinct_masters(cluster: LocalCluster, n: int) -> list[str]:
    """n orgs whose keys live on n different masters."""
    out: list[str] = []
    ports: set[int] = set()
    for i in range(1000):
        org = f"org{i}"
        port = cluster.node_for_key(f"bd:{{{org}}}:cfg").port
        if port not in ports:
            ports.add(port)
            out.append(org)
        if len(out) == n:
            return out
    raise AssertionError("could not spread orgs")


def test_orgs_spread_over_shards_and_hierarchy_denies(cluster: LocalCluster, b: Budgetd,
                                                      rc: redis.RedisCluster) -> None:
    orgs = orgs_on_distinct_masters(cluster, 3)
    for org in orgs:
        b.admin.set_budget(f"{org}/search", "day", "tokens", 1000)
        ok = b.client.reserve(f"{org}/search/rerank", "m", tokens=600, cost_micros=1)
        assert ok.allowed
        denied = b.client.reserve(f"{org}/search/other", "m", tokens=600, cost_micros=1)
        assert not denied.allowed and denied.denial is not None
        assert str(denied.denial.scope) == f"{org}/search"
        assert counter(rc, org, f"r|{org}/search|t") == 600
        # The org level has no rule but counts too.
        assert counter(rc, org, f"r|{org}|t") == 600
    # Every org's keys are on one master, and the three orgs on three masters.
    masters = {cluster.node_for_key(f"bd:{{{org}}}:w:{DAY}").port for org in orgs}
    assert len(masters) == 3
    for org in orgs:
        port = cluster.node_for_key(f"bd:{{{org}}}:w:{DAY}").port
        node = next(n for n in cluster.nodes if n.port == port)
        assert node.r.exists(f"bd:{{{org}}}:w:{DAY}", f"bd:{{{org}}}:exp",
                             f"bd:{{{org}}}:rules") == 3


def test_race_of_64_reservers_on_one_hard_budget(b: Budgetd, rc: redis.RedisCluster) -> None:
    b.admin.set_budget("racer", "day", "tokens", 40)

    def one(_: int) -> bool:
        return b.client.reserve("racer/t", "m", tokens=1, cost_micros=1).allowed

    with ThreadPoolExecutor(64) as pool:
        granted = sum(pool.map(one, range(64)))
    assert granted == 40
    assert counter(rc, "racer", "r|racer|t") == 40


def test_idempotency(b: Budgetd, rc: redis.RedisCluster) -> None:
    rid = uuid.uuid4().hex
    first = b.client.reserve("idem/t", "m", tokens=100, cost_micros=5, request_id=rid)
    again = b.client.reserve("idem/t", "m", tokens=100, cost_micros=5, request_id=rid)
    assert first.allowed and again.reservation_id == first.reservation_id
    assert counter(rc, "idem", "r|idem|t") == 100
    with pytest.raises(AlreadyExists):
        b.client.reserve("idem/t", "m", tokens=101, cost_micros=5, request_id=rid)
    s1 = b.client.reconcile(first.reservation_id, Usage(input_tokens=30), cost_micros=3)
    s2 = b.client.reconcile(first.reservation_id, Usage(input_tokens=30), cost_micros=3)
    assert s1.state == s2.state == "reconciled"
    assert (counter(rc, "idem", "u|idem|t"), counter(rc, "idem", "r|idem|t")) == (30, 0)


def test_expiry_by_the_sweeper_on_every_shard(cluster: LocalCluster, b: Budgetd,
                                              rc: redis.RedisCluster) -> None:
    orgs = orgs_on_distinct_masters(cluster, 3)
    for org in orgs:
        b.admin.set_org_settings(org, expiry_policy="release")
        b.client.reserve(f"{org}/t", "m", tokens=50, cost_micros=5, ttl_seconds=5)
        assert counter(rc, org, f"r|{org}|t") == 50
    b.clock.advance_s(6)
    # No calls: the server's background sweeper walks bd:orgs (one slot) and
    # runs the expire script on each org's own shard.
    wait_until(lambda: all(counter(rc, org, f"r|{org}|t") == 0 for org in orgs), 10,
               "sweeper expired every org")
    for org in orgs:
        assert rc.zcard(f"bd:{{{org}}}:exp") == 0
        assert counter(rc, org, f"u|{org}|t") == 0


def test_zones_and_usage_reports_on_every_shard(cluster: LocalCluster, b: Budgetd,
                                               rc: redis.RedisCluster) -> None:
    """A zone change (settings hash and its copy in the rules hash, one
    script) and a usage report (the window's report fields and the report
    hash of earlier versions, one pipeline) on each org's own shard."""
    orgs = orgs_on_distinct_masters(cluster, 3)
    for org in orgs:
        b.admin.set_org_settings(org, time_zone="Pacific/Auckland")
        b.admin.set_budget(f"{org}/t", "day", "tokens", 1000)
        res = b.client.reserve(f"{org}/t", "m", tokens=10, cost_micros=1)
        b.client.reconcile(res.reservation_id, Usage(input_tokens=7), cost_micros=2)
        # T0 is 2027-03-15 12:00 UTC: the 16th in Auckland.
        assert counter(rc, org, f"u|{org}/t|t") == 0
        assert int(rc.hget(f"bd:{{{org}}}:w:d20270316", f"u|{org}/t|t") or 0) == 7
        rep = b.admin.get_usage_report(org, "day", "team")
        assert rep.period_id == "2027-03-16"
        assert [(x.group, x.input_tokens, x.requests, x.cost_micros) for x in rep.rows] == [
            ("t", 7, 1, 2)]


def test_reserve_batch_spans_shards(cluster: LocalCluster, b: Budgetd,
                                    rc: redis.RedisCluster) -> None:
    orgs = orgs_on_distinct_masters(cluster, 3)
    items = [{"scope": f"{orgs[i % 3]}/t", "model": "m", "tokens": 10, "cost_micros": 1}
             for i in range(30)]
    out = b.client.reserve_batch(items)
    assert all(not isinstance(x, BudgetError) and x.allowed for x in out)
    for org in orgs:
        assert counter(rc, org, f"r|{org}|t") == 100


def test_noscript_after_script_flush_on_every_node(cluster: LocalCluster, b: Budgetd) -> None:
    """A promoted replica or restarted master has an empty script cache."""
    assert b.client.reserve("ns/t", "m", tokens=1, cost_micros=1).allowed
    for n in cluster.masters:
        n.r.script_flush()
    assert b.client.reserve("ns/t", "m", tokens=1, cost_micros=1).allowed
    batcher = b.thread.app.batcher
    assert batcher is not None and batcher.stats.noscript >= 1


def test_a_slot_map_refresh_fails_calls_in_flight_only_as_lost_connections(
        cluster: LocalCluster, rc: redis.RedisCluster) -> None:
    """A slot-map refresh (redis-py's after a node error, or budgetd's batcher
    after a failover) closes every pooled connection, also one a concurrent
    command or pipeline is writing on. Such a call must fail as a lost
    connection (retried by redis-py, else answered UNAVAILABLE and retried by
    the client with its request_id), never with redis-py's AttributeError on
    the closed writer, which reached a caller as UNKNOWN in a failover."""
    rc.hset("bd:{refresh}:x", "f", "v")

    async def run() -> tuple[int, list[BaseException]]:
        client = connect_redis(cluster.url, timeout_s=2.0)
        errors: list[BaseException] = []
        ok = 0

        async def reads(worker: int) -> None:
            nonlocal ok
            for _ in range(150):
                try:
                    if worker % 2:
                        got = await client.hmget("bd:{refresh}:x", "f")
                    else:
                        pipe = client.pipeline(transaction=False)
                        pipe.hmget("bd:{refresh}:x", "f")
                        got = (await pipe.execute())[0]
                    assert got == [b"v"]
                    ok += 1
                except Exception as e:  # every kind is collected and checked below
                    errors.append(e)

        async def refreshes() -> None:
            for _ in range(150):
                await client.aclose()
                await client.initialize()
                await asyncio.sleep(0.002)

        await client.initialize()
        await asyncio.gather(*(reads(i) for i in range(16)), refreshes())
        await client.aclose()
        return ok, errors

    ok, errors = asyncio.run(run())
    assert ok > 0
    unexpected = [e for e in errors if type(e) not in (redis.ConnectionError, redis.TimeoutError)]
    assert not unexpected, unexpected[:3]


@pytest.fixture()
def failover_cluster(tmp_path: pathlib.Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "fc", masters=3, replicas=1, node_timeout_ms=2000).start()
    yield c
    c.stop()


def test_master_failover_mid_traffic_loses_no_acknowledged_reconcile(
        failover_cluster: LocalCluster) -> None:
    """A master is SIGKILLed in the middle of traffic and its replica takes
    over (CLUSTER FAILOVER TAKEOVER). budgetd runs with --redis-wait-replicas 1:
    a Reserve/Reconcile is acknowledged only after WAIT saw it on the replica,
    so whatever was acknowledged survives the promotion. (Without WAIT,
    replication is asynchronous and the last writes before the kill can be
    lost: that is the trade the option exists for.)"""
    cluster = failover_cluster
    b = start_budgetd(cluster.url, redis_timeout_s=2.0, redis_wait_replicas=1,
                      redis_wait_timeout_ms=1000)
    policy = CallPolicy(timeout_s=3, total_timeout_s=20, retries=20, backoff_s=0.05)
    client = BudgetClient(b.address, policy=policy)
    orgs = orgs_on_distinct_masters(cluster, 3)
    victim = cluster.node_for_key(f"bd:{{{orgs[0]}}}:cfg")
    replica = cluster.replica_of(victim)
    acked: list[tuple[str, str, float]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        i = 0
        while not stop.is_set():
            org = orgs[(worker + i) % len(orgs)]
            i += 1
            try:
                res = client.reserve(f"{org}/t", "m", tokens=10, cost_micros=10)
                client.reconcile(res.reservation_id, Usage(input_tokens=7), cost_micros=7)
                acked.append((org, res.request_id, time.monotonic()))
            except BudgetError as e:
                failures.append(e)

    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(6)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 30, 20, "traffic before the failover")
        victim.kill()
        killed_at = time.monotonic()
        replica.r.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        cluster.wait_ok(20)
        # With WAIT 1 the promoted master refuses to acknowledge writes until
        # it has a replica again (UNAVAILABLE, retried by the client): the
        # operator's restart of the lost node brings it back as its replica.
        victim.restart()
        wait_until(lambda: victim.info("replication").get("master_link_status") == "up", 20,
                   "old master back as a replica")
        # Traffic on the victim's org resumes, with no budgetd restart.
        wait_until(lambda: sum(1 for o, _, t in acked if o == orgs[0] and t > killed_at) >= 10,
                   20, "acknowledged calls on the promoted master")
        first = min(t for o, _, t in acked if o == orgs[0] and t > killed_at)
        print(f"failover: first acknowledged call on the promoted shard "
              f"{first - killed_at:.2f} s after the kill; {len(acked)} acknowledged in all")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        assert not failures, failures[:3]
        rc = cluster.client()
        try:
            for org, rid, _ in acked:
                assert rc.hget(f"bd:{{{org}}}:q:{rid}", "state") == "reconciled", (org, rid)
            for org in orgs:
                states = [rc.hget(k, "state") for k in
                          rc.scan_iter(match=f"bd:{{{org}}}:q:*", count=1000)]
                # The counters agree with the records: nothing half-applied.
                assert counter(rc, org, f"u|{org}|t") == 7 * states.count("reconciled")
                assert counter(rc, org, f"r|{org}|t") == 10 * states.count("held")
                assert states.count("reconciled") >= sum(1 for o, _, _ in acked if o == org)
        finally:
            rc.close()
    finally:
        client.close()
        b.close()
