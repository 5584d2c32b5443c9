"""How a client made by `connect()` sends: without a task per call, and still within its timeout.

Why: redis-py sends every command under `asyncio.wait_for` once a socket timeout is set, and on
Python 3.11 that makes a task per call, a quarter to a third of the client's CPU time for a
small call. Our connections send under `asyncio.timeout` instead (connection.py `_QuickSend`);
a send to a server that stopped reading must still fail after the timeout, not hang. Commands
are packed by hiredis where it is installed: the bytes must be redis-py's own.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import redis.exceptions
from redis.asyncio.connection import Connection

from atomicqueues import Client, RedisUnavailable, Settings, connection
from atomicqueues.index_reads import IndexReads
from redis_servers import RedisServer


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_a_call_makes_no_task(redis_url: str) -> None:
    loop = asyncio.get_running_loop()
    made = 0

    def count(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        nonlocal made
        made += 1
        return asyncio.Task(coro, loop=loop)

    async with await Client.connect(Settings(redis_url=redis_url)) as client:
        await client.enqueue("user", "ann", "send")  # connected, scripts loaded
        loop.set_task_factory(count)  # type: ignore[arg-type]
        try:
            for n in range(20):
                await client.enqueue("user", "ann", "send", {"n": n})
        finally:
            loop.set_task_factory(None)
    assert made == 0


async def test_a_send_to_a_server_that_stopped_reading_fails_after_the_timeout(
    own_server: RedisServer,
) -> None:
    settings = Settings(redis_url=own_server.url, redis_timeout=1.0)
    async with await Client.connect(settings) as client:
        await client.redis.ping()
        assert own_server.pid is not None
        os.kill(own_server.pid, signal.SIGSTOP)
        try:
            started = asyncio.get_running_loop().time()
            big = "x" * (64 << 20)  # more than the socket buffers hold: the send itself blocks
            with pytest.raises(RedisUnavailable):
                async with asyncio.timeout(10):  # a send without a timeout would hang here
                    await client.call(lambda: client.redis.set("big", big))
            assert 0.9 <= asyncio.get_running_loop().time() - started < 5
        finally:
            os.kill(own_server.pid, signal.SIGCONT)
        assert await client.redis.ping()  # a fresh connection once the server answers again


async def test_a_connection_the_server_dropped_costs_the_caller_nothing(
    own_server: RedisServer,
) -> None:
    async with await Client.connect(Settings(redis_url=own_server.url)) as client:
        first = await client.enqueue("user", "ann", "send")
        # Dropped by the server while this loop does not run: the client learns of it only
        # when it sends on the connection (the call is tried once more, on a new connection).
        assert own_server.client().client_kill_filter(_type="normal", skipme=True) >= 1
        second = await client.enqueue("user", "ann", "send")
        assert await client.smembers(client.keys.types()) == {"user"}  # a plain read too
        assert first != second
        assert (await IndexReads(client).counts("user"))["waiting"] == 2


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(
            ("EVALSHA", "0" * 40, 1, "aq:{user:3}:", "e%3A1", 17, 0.1, 1 / 3), id="script"
        ),
        pytest.param(("SET", "ü{}", b"\xff\x00", -(2**70), 1e20), id="unicode bytes big"),
        pytest.param(("CONFIG GET", "maxmemory"), id="two words"),
    ],
)
async def test_a_command_packs_as_redis_py_packs_it(redis_url: str, args: tuple[Any, ...]) -> None:
    async with await Client.connect(Settings(redis_url=redis_url)) as client:
        ours = client.redis.connection_pool.make_connection()  # type: ignore[union-attr]
        assert type(ours) is not Connection
        assert b"".join(ours.pack_command(*args)) == b"".join(Connection().pack_command(*args))
        with pytest.raises(redis.exceptions.DataError):
            ours.pack_command("SET", "k", None)


async def test_a_command_is_packed_by_hiredis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hiredis = pytest.importorskip("hiredis")
    packed: list[tuple[Any, ...]] = []

    def counting(args: tuple[Any, ...]) -> bytes:
        packed.append(args)
        return bytes(hiredis.pack_command(args))

    monkeypatch.setattr(connection, "_hiredis_pack", counting)
    async with await Client.connect(Settings(redis_url=redis_url)) as client:
        await client.redis.set("k", "v")
    assert ("SET", "k", "v") in packed


async def test_bytes_read_back_as_surrogates_are_sent_as_those_bytes(redis_url: str) -> None:
    # The connection decodes with surrogateescape (an entity's packed summary, summary.py): a
    # value that is not UTF-8 reads as a str, and that str is sent as the bytes it came from.
    async with await Client.connect(Settings(redis_url=redis_url)) as client:
        await client.redis.set("k", b"a\xf0b")
        value = await client.redis.get("k")
        assert value == "a\udcf0b"
        await client.redis.set("k2", value)
        assert await client.redis.get("k2") == value
        assert await client.redis.strlen("k2") == 3
