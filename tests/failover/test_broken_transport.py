"""A connection closed under a call is `RedisUnavailable`, not a stray AttributeError.

Why: when a Cluster node dies, redis-py's cluster client drops every connection, also those
other tasks are sending on; such a task then fails with AttributeError (or TypeError) from inside
redis-py instead of a ConnectionError (redis-py #4287). Seen in the Cluster failover test: it
ended a worker's drain loop, and the worker with it.
"""

from __future__ import annotations

import pytest

from atomicqueues import Client, RedisUnavailable, Settings
from atomicqueues.connection import broken_transport


async def test_a_connection_dropped_while_a_call_is_sent_is_redis_unavailable(
    redis_url: str,
) -> None:
    client = await Client.connect(Settings(redis_url=redis_url))
    try:
        pool = client.redis.connection_pool  # type: ignore[union-attr]
        conn = await pool.get_connection()
        await pool.release(conn)

        async def dropped_meanwhile() -> None:  # another task closes it while this one sends
            await conn.disconnect()
            conn._reader = object()  # still looks connected to the sending task

        conn.check_health = dropped_meanwhile  # type: ignore[method-assign]
        with pytest.raises(RedisUnavailable, match=r"connection to Redis at .* broke"):
            await client.call(lambda: client.redis.ping())
        del conn.check_health  # type: ignore[method-assign]
        assert await client.call(lambda: client.redis.ping())  # a fresh connection serves
    finally:
        await client.close()


def test_only_errors_from_inside_redis_py_count_as_a_broken_transport() -> None:
    with pytest.raises(AttributeError) as caught:
        None.writelines  # type: ignore[attr-defined]  # noqa: B018
    assert not broken_transport(caught.value)  # a bug of ours stays a bug
    assert not broken_transport(ValueError("x"))
