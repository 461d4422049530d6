"""Real local Redis Cluster and Sentinel setups for tests and benchmarks.

The cluster is assembled by hand (no redis-cli --cluster): nodes started with
`--cluster-enabled yes` on free ports, joined with CLUSTER MEET, slots split
evenly with CLUSTER ADDSLOTSRANGE, replicas attached with CLUSTER REPLICATE,
then we wait for cluster_state:ok on every node."""

from __future__ import annotations

import pathlib
import subprocess
import time
from collections.abc import Callable

import redis
from budgetd.embedded import EmbeddedRedis, find_redis_server, free_port

SLOTS = 16384
READY_TIMEOUT_S = 30.0


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Polls pred; returns the seconds it took, fails after timeout_s."""
    start = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - start
        except redis.RedisError:
            pass
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


class Node:
    def __init__(self, base: pathlib.Path, i: int, node_timeout_ms: int) -> None:
        self.dir = base / f"node{i}"
        self.node_timeout_ms = node_timeout_ms
        self.bus_port = 0
        self.server = EmbeddedRedis(self.dir, appendonly=False)
        self.client: redis.Redis | None = None
        self.id = ""

    def _args(self) -> list[str]:
        return ["--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # The default bus port (port + 10000) can be taken or beyond
                # 65535 for an ephemeral port.
                "--cluster-port", str(self.bus_port),
                # A replica may be promoted even right after a restart.
                "--cluster-replica-validity-factor", "0"]

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        for attempt in range(3):
            # A free port can be taken between probe and bind: new ports.
            if not self.bus_port or attempt:
                self.bus_port = free_port()
            self.server.extra_args = self._args()
            try:
                self.server.start()
                break
            except Exception:
                if attempt == 2:
                    raise
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                                  decode_responses=True)
        self.id = str(self.client.execute_command("CLUSTER", "MYID"))

    @property
    def r(self) -> redis.Redis:
        assert self.client is not None
        return self.client

    def alive(self) -> bool:
        return self.server.proc is not None and self.server.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save."""
        assert self.server.proc is not None
        self.server.proc.kill()
        self.server.proc.wait()
        if self.client is not None:
            self.client.close()

    def restart(self) -> None:
        """Start again on the same ports with the same nodes.conf: the node
        rejoins the cluster (as a replica if its replica took over)."""
        self.server.extra_args = self._args()
        self.server.start()
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                                  decode_responses=True)

    def stop(self) -> None:
        # Test data is disposable: SIGKILL, so no SHUTDOWN waits for replicas.
        if self.alive():
            self.kill()
        elif self.client is not None:
            self.client.close()

    def cluster_info(self) -> dict[str, str]:
        raw = self.r.execute_command("CLUSTER", "INFO")
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)

    def info(self, section: str) -> dict[str, str]:
        raw = self.r.execute_command("INFO", section)
        return {str(k): str(v) for k, v in raw.items()}


class LocalCluster:
    """`masters` masters, each with `replicas` replicas, on 127.0.0.1."""

    def __init__(self, base: pathlib.Path, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 2000) -> None:
        self.base = base
        self.masters = [Node(base, i, node_timeout_ms) for i in range(masters)]
        self.replicas = [Node(base, masters + i, node_timeout_ms)
                         for i in range(masters * replicas)]
        self.replicas_per_master = replicas

    @property
    def nodes(self) -> list[Node]:
        return self.masters + self.replicas

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> LocalCluster:
        try:
            for n in self.nodes:
                n.start()
            first = self.nodes[0]
            for n in self.nodes[1:]:
                n.r.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port, first.bus_port)
            per = SLOTS // len(self.masters)
            for i, m in enumerate(self.masters):
                lo = i * per
                hi = SLOTS - 1 if i == len(self.masters) - 1 else lo + per - 1
                m.r.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
            total = len(self.nodes)
            wait_until(lambda: all(len(str(n.r.execute_command("CLUSTER", "NODES")).splitlines())
                                   == total for n in self.nodes),
                       READY_TIMEOUT_S, "every node knows every other")
            for i, rep in enumerate(self.replicas):
                master = self.masters[i // self.replicas_per_master]
                rep.r.execute_command("CLUSTER", "REPLICATE", master.id)
            self.wait_ok()
            for rep in self.replicas:
                wait_until(lambda rep=rep: rep.info("replication").get("master_link_status")
                           == "up", READY_TIMEOUT_S, f"replica {rep.port} in sync")
            return self
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        return wait_until(
            lambda: all(n.cluster_info().get("cluster_state") == "ok"
                        for n in self.nodes if n.alive()),
            timeout_s, "cluster_state:ok")

    def client(self) -> redis.RedisCluster:
        live = [n for n in self.nodes if n.alive()]
        return redis.RedisCluster(host="127.0.0.1", port=live[0].port, decode_responses=True,
                                  socket_timeout=5)

    def node_for_key(self, key: str) -> Node:
        """The live master that serves `key`'s slot now."""
        rc = self.client()
        try:
            port = int(rc.get_node_from_key(key).port)
        finally:
            rc.close()
        return next(n for n in self.nodes if n.port == port)

    def replica_of(self, master: Node) -> Node:
        for n in self.replicas:
            if n.alive() and n.info("replication").get("master_port") == str(master.port):
                return n
        raise LookupError(f"no live replica of {master.port}")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class LocalSentinel:
    """A master, a replica and one sentinel (quorum 1) watching them."""

    SERVICE = "budgetd-master"

    def __init__(self, base: pathlib.Path, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000) -> None:
        self.base = base
        self.master = EmbeddedRedis(base / "master", appendonly=False)
        self.replica: EmbeddedRedis | None = None
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinel_port = 0
        self.sentinel_proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}"

    def start(self) -> LocalSentinel:
        try:
            self.master.start()
            self.replica = EmbeddedRedis(self.base / "replica", appendonly=False,
                                         extra_args=["--replicaof", "127.0.0.1",
                                                     str(self.master.port)])
            self.replica.start()
            rep = redis.Redis(port=self.replica.port, decode_responses=True)
            wait_until(lambda: rep.info("replication").get("master_link_status") == "up",
                       READY_TIMEOUT_S, "replica in sync")
            rep.close()
            sdir = self.base / "sentinel"
            sdir.mkdir(parents=True, exist_ok=True)
            self.sentinel_port = free_port()
            conf = sdir / "sentinel.conf"
            conf.write_text("\n".join([
                f"port {self.sentinel_port}",
                "bind 127.0.0.1",
                f"dir {sdir}",
                f"logfile {sdir / 'sentinel.log'}",
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1",
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {self.SERVICE} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.SERVICE} 1",
                "",
            ]))
            self.sentinel_proc = subprocess.Popen(
                [find_redis_server(), str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            s = redis.Redis(port=self.sentinel_port, decode_responses=True, socket_timeout=1)
            try:
                wait_until(lambda: s.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE) is not None
                    and len(s.execute_command("SENTINEL", "REPLICAS", self.SERVICE)) == 1,
                    READY_TIMEOUT_S, "sentinel sees master and replica")
            finally:
                s.close()
            return self
        except BaseException:
            self.stop()
            raise

    def master_port(self) -> int:
        s = redis.Redis(port=self.sentinel_port, decode_responses=True, socket_timeout=1)
        try:
            addr = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
            return int(addr[1])
        finally:
            s.close()

    def stop(self) -> None:
        if self.sentinel_proc is not None and self.sentinel_proc.poll() is None:
            self.sentinel_proc.kill()
            self.sentinel_proc.wait()
        for server in (self.replica, self.master):
            if server is not None and server.proc is not None and server.proc.poll() is None:
                server.stop()
