"""Tests of the partition proxy (partition.py) against a real redis-server.

Why: the fault tests trust this proxy to behave like a real network partition (silence, then
late delivery in order), not like a reset. If it dropped, reordered, reset or leaked bytes
during a cut, a fault test could pass for the wrong reason. Waits on the proxy's own thread are
polls with a deadline; the short socket timeouts (0.3 s) are the "nothing arrives" checks.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from helpers import wait_until
from partition import Partition
from redis_servers import RedisServer, free_port

SILENCE = 0.3  # how long "nothing arrives" is watched for
# redis-py's default retries timeouts and connection errors on new connections, with backoff:
# these tests want to see the first error.
NO_RETRY = Retry(NoBackoff(), 0)


def resp(*args: str | bytes) -> bytes:
    """One command in RESP, as a client sends it."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrives for SILENCE seconds, and the socket is neither closed nor reset."""
    sock.settimeout(SILENCE)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(5)


@pytest.fixture(scope="module")
def own_server() -> Iterator[RedisServer]:
    """A redis-server of this module's own: the tests count the clients connected to it, which
    the connections other tests left to the session's server (closing late) would upset."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(own_server: RedisServer) -> str:
    """Its URL, emptied for each test."""
    with redis.Redis.from_url(own_server.url) as client:
        client.flushall()
    return own_server.url


@pytest.fixture
def upstream(redis_url: str) -> tuple[str, int]:
    parts = urlsplit(redis_url)
    assert parts.hostname
    return parts.hostname, parts.port or 6379


@pytest.fixture
def proxy(upstream: tuple[str, int]) -> Iterator[Partition]:
    with Partition(*upstream) as p:
        yield p


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


def other_clients(direct: redis.Redis) -> int:
    """Clients connected to the upstream Redis other than `direct` (the proxy's, here)."""
    return len(direct.client_list()) - 1


def raw(proxy: Partition) -> socket.socket:
    """A plain socket through the proxy, its upstream connection proven open by a PING."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(resp("PING"))
    assert recv_exactly(sock, 7) == b"+PONG\r\n"
    return sock


# --- forwarding -------------------------------------------------------------------------------
def test_commands_and_a_1_mib_value_flow_through_the_proxy(
    proxy: Partition, redis_url: str, direct: redis.Redis
) -> None:
    big = os.urandom(1 << 20)
    with redis.Redis.from_url(proxy.url_for(redis_url)) as r:
        assert r.set("big", big)
        assert r.get("big") == big
        assert direct.get("big") == big  # it really went to the upstream
        pipe = r.pipeline(transaction=False)
        for _ in range(1000):
            pipe.incr("n")
        assert pipe.execute() == list(range(1, 1001))
        assert proxy.connections == 1
        assert other_clients(direct) == 1
    # The client closed: the proxy closes the upstream side too.
    wait_until(lambda: proxy.connections == 0, 5, "the proxy to drop the closed connection")
    wait_until(lambda: other_clients(direct) == 0, 5, "the upstream connection to be closed")


def test_50_connections_with_large_values_at_once(proxy: Partition, direct: redis.Redis) -> None:
    clients = [redis.Redis(host="127.0.0.1", port=proxy.port) for _ in range(50)]
    try:
        for c in clients:
            assert c.ping()
        assert proxy.connections == 50
        assert other_clients(direct) == 50

        def round_trip(i: int) -> bool:
            value = os.urandom(256 * 1024) + b"%d" % i
            clients[i].set(f"k{i}", value)
            return clients[i].get(f"k{i}") == value

        with ThreadPoolExecutor(50) as pool:
            assert all(pool.map(round_trip, range(50)))
    finally:
        for c in clients:
            c.close()
    wait_until(lambda: proxy.connections == 0, 5, "the proxy to drop 50 closed connections")
    wait_until(lambda: other_clients(direct) == 0, 5, "50 upstream connections to be closed")


def test_a_slow_reader_gets_a_4_mib_reply_whole_through_partial_writes(
    proxy: Partition, direct: redis.Redis
) -> None:
    big = os.urandom(4 << 20)
    direct.set("big", big)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the proxy's sends fill it
    sock.settimeout(5)
    sock.connect(("127.0.0.1", proxy.port))
    sock.sendall(resp("GET", "big") + resp("PING"))
    header = b"$%d\r\n" % len(big)
    expected = header + big + b"\r\n+PONG\r\n"
    received = bytearray()
    while len(received) < len(expected):
        chunk = sock.recv(4096)
        assert chunk, "closed early"
        received += chunk
    assert received == expected
    sock.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("redis://localhost:6379/0", "redis://127.0.0.1:{port}/0", id="plain"),
        pytest.param("redis://10.0.0.5", "redis://127.0.0.1:{port}", id="no-port-no-db"),
        pytest.param(
            "rediss://user:p%40ss@redis.example:6380/3?socket_timeout=2&health_check_interval=1",
            "rediss://user:p%40ss@127.0.0.1:{port}/3?socket_timeout=2&health_check_interval=1",
            id="auth-db-query",
        ),
    ],
)
def test_url_for_points_a_url_at_the_proxy(url: str, expected: str) -> None:
    with Partition("127.0.0.1", free_port()) as p:
        assert p.url_for(url) == expected.format(port=p.port)
        with pytest.raises(ValueError, match="not a TCP"):
            p.url_for("unix:///tmp/redis.sock")


# --- cut and heal -----------------------------------------------------------------------------
def test_cut_times_a_client_out_and_keeps_every_socket_open(
    proxy: Partition, direct: redis.Redis
) -> None:
    sock = raw(proxy)
    with redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=0.5, retry=NO_RETRY) as r:
        assert r.ping()
        proxy.cut()
        assert proxy.is_cut
        with pytest.raises(redis.TimeoutError):  # a timeout, not a connection error
            r.ping()
        assert direct.ping()  # only the proxied path is cut
        sock.sendall(resp("PING"))
        assert_silent(sock)  # neither closed (b"") nor reset (an error): silent
        # Nothing was closed towards the upstream, and the FIN of the connection redis-py gave
        # up on is not seen during the cut.
        assert other_clients(direct) == 2
        assert proxy.connections == 2

        proxy.heal()
        assert not proxy.is_cut
        assert recv_exactly(sock, 7) == b"+PONG\r\n"  # held, then delivered
        wait_until(lambda: proxy.connections == 1, 5, "the FIN held by the cut to be seen")
        assert r.ping()  # redis-py reconnects
    sock.close()


def test_a_command_sent_during_a_cut_runs_after_heal_and_replies_in_order(
    proxy: Partition, direct: redis.Redis
) -> None:
    sock = raw(proxy)
    big = os.urandom(1 << 20)
    proxy.cut()
    sock.sendall(resp("SET", "k", "v") + resp("INCR", "n") + resp("INCR", "n"))
    # 1 MiB more may not fit in the kernel's buffers while nothing is read: send it aside.
    sender = threading.Thread(
        target=sock.sendall, args=(resp("SET", "big", big) + resp("INCR", "n"),)
    )
    sender.start()
    assert_silent(sock)  # no reply before heal ...
    assert direct.get("k") is None  # ... because the command has not reached Redis
    assert direct.get("n") is None
    assert not direct.exists("big")

    proxy.heal()
    expected = b"+OK\r\n:1\r\n:2\r\n+OK\r\n:3\r\n"
    assert recv_exactly(sock, len(expected)) == expected
    sender.join(5)
    assert not sender.is_alive()
    assert direct.get("k") == b"v"
    assert direct.get("big") == big
    sock.close()


def test_a_connection_opened_during_a_cut_gets_nothing_until_heal(
    proxy: Partition, direct: redis.Redis
) -> None:
    proxy.cut()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(resp("PING"))
    wait_until(lambda: proxy.connections == 1, 5, "the proxy to accept (and hold) the connection")
    assert_silent(sock)
    assert other_clients(direct) == 0  # its upstream connection is opened at heal
    proxy.heal()
    assert recv_exactly(sock, 7) == b"+PONG\r\n"
    assert other_clients(direct) == 1
    sock.close()


def test_cut_for_holds_then_delivers(proxy: Partition) -> None:
    sock = raw(proxy)
    cutter = threading.Thread(target=proxy.cut_for, args=(0.4,))
    start = time.monotonic()
    cutter.start()
    wait_until(lambda: proxy.is_cut, 5, "the cut")
    sock.sendall(resp("PING"))
    assert recv_exactly(sock, 7) == b"+PONG\r\n"
    assert time.monotonic() - start >= 0.4
    cutter.join(5)
    assert not proxy.is_cut
    sock.close()


async def test_runs_while_the_tests_own_event_loop_blocks(proxy: Partition, redis_url: str) -> None:
    url = proxy.url_for(redis_url)
    r = redis.asyncio.Redis.from_url(url)
    try:
        assert await r.ping()
        # A blocking call from inside the loop: it would hang if the proxy needed this loop.
        with redis.Redis.from_url(url, socket_timeout=5) as blocking:
            assert blocking.ping()
        proxy.cut()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.ping(), SILENCE)
        proxy.heal()
        assert await r.ping()
    finally:
        await r.aclose()


# --- closing ----------------------------------------------------------------------------------
def test_reset_all_gives_a_blocked_client_a_connection_error(
    proxy: Partition, direct: redis.Redis
) -> None:
    r = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10, retry=NO_RETRY)
    errors: list[BaseException] = []

    def blpop() -> None:
        try:
            r.blpop(["nothing"], timeout=10)
        except redis.RedisError as e:
            errors.append(e)

    waiter = threading.Thread(target=blpop)
    waiter.start()
    wait_until(
        lambda: any(c["cmd"] == "blpop" for c in direct.client_list()), 5, "the BLPOP to block"
    )
    start = time.monotonic()
    proxy.reset_all()
    waiter.join(5)
    assert not waiter.is_alive()
    assert time.monotonic() - start < 5  # not the BLPOP's own timeout
    assert len(errors) == 1
    assert isinstance(errors[0], redis.ConnectionError)
    assert proxy.connections == 0
    wait_until(lambda: other_clients(direct) == 0, 5, "the upstream side to be closed too")
    r.close()
    assert raw(proxy)  # the proxy still accepts new connections


def test_the_upstream_closing_closes_the_client_side(proxy: Partition, direct: redis.Redis) -> None:
    sock = raw(proxy)
    assert direct.client_kill_filter(_type="normal", skipme=True) == 1
    assert sock.recv(16) == b""  # a FIN, passed on
    wait_until(lambda: proxy.connections == 0, 5, "the proxy to drop the connection")
    sock.close()


def test_an_upstream_that_refuses_closes_the_client_side() -> None:
    with Partition("127.0.0.1", free_port()) as p:  # nothing listens there
        sock = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        assert sock.recv(16) == b""
        wait_until(lambda: p.connections == 0, 5, "the proxy to drop the connection")
        sock.close()


def test_close_stops_the_thread_and_closes_every_socket(upstream: tuple[str, int]) -> None:
    p = Partition(*upstream)
    name = f"partition-proxy:{p.port}"
    assert name in {t.name for t in threading.enumerate()}
    sock = raw(p)
    p.close()
    assert name not in {t.name for t in threading.enumerate()}
    assert sock.recv(16) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p.port), timeout=5)
    p.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        p.cut()
    sock.close()


def test_control_calls_back_to_back_never_lose_a_wake_up(upstream: tuple[str, int]) -> None:
    # A call sent while the thread was still handling the one before used to have its wake-up
    # drained with the earlier one's: it then waited forever (within a few calls).
    p = Partition(*upstream)
    done: list[int] = []

    def spin() -> None:
        for _ in range(5000):
            p.cut()
            p.heal()
        done.append(1)

    caller = threading.Thread(target=spin, daemon=True)
    caller.start()
    caller.join(60)
    assert done, "a control call never returned"
    p.close()
