"""Many calls at once on one client: the connection pool is bounded, calls beyond it wait for
a connection, and a call that waits too long says so (not "cannot reach Redis").

Why: a producer that awaits hundreds of enqueues at once (asyncio.gather) used to fail with
"cannot reach Redis ... Too many connections" past redis-py's 100 connections, naming a cause
that was not the server's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from atomicqueues import Client, PoolExhausted, Settings
from atomicqueues.connection import MAX_CONNECTIONS, POOL_WAIT
from atomicqueues.index_reads import IndexReads
from redis_servers import RedisServer


@pytest.fixture(scope="module")
def own_server() -> Iterator[RedisServer]:
    """A server of its own: its client count is this module's alone."""
    with RedisServer() as server:
        yield server


def connected(server: RedisServer) -> int:
    return len(server.client().client_list())


async def test_thousands_of_calls_at_once_on_one_client(own_server: RedisServer) -> None:
    before = connected(own_server)
    async with await Client.connect(Settings(redis_url=own_server.url)) as client:
        calls = 20 * MAX_CONNECTIONS
        ids = await asyncio.gather(
            *(client.enqueue("user", f"u{n}", "send", {"n": n}) for n in range(calls))
        )
        assert len(set(ids)) == calls
        assert sum((await IndexReads(client).counts("user")).values()) == calls
        assert connected(own_server) - before <= MAX_CONNECTIONS  # bounded, not one per call


async def test_a_call_that_waits_too_long_for_a_connection_names_the_pool(
    own_server: RedisServer,
) -> None:
    async with await Client.connect(Settings(redis_url=own_server.url)) as client:
        # Every connection of the pool taken (as calls in flight hold them), connected with the
        # default timeouts (a loaded machine may take longer than a short one to connect).
        pool = client.redis.connection_pool  # type: ignore[union-attr]
        assert pool.timeout == POOL_WAIT * client.settings.call_timeout
        taken = [await pool.get_connection() for _ in range(MAX_CONNECTIONS)]
        pool.timeout = 0.5  # the wait for a free connection, shortened for the test
        started = asyncio.get_running_loop().time()
        with pytest.raises(PoolExhausted, match=rf"all {MAX_CONNECTIONS} connections .* busy"):
            await client.enqueue("user", "bob", "send")
        waited = asyncio.get_running_loop().time() - started
        assert waited >= 0.5  # it waited for its turn first
        for connection in taken:
            await pool.release(connection)
        assert await client.enqueue("user", "bob", "send")  # a free connection: it goes through
