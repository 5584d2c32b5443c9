"""Tests of the test infrastructure itself (redis_servers.py and the conftest fixtures).

Why: every other Redis test trusts these servers; if they break, this file says so plainly.
"""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import RedisClusterException

from redis_servers import RedisCluster, RedisServer


async def test_standalone_server_answers_and_is_empty(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.ping()
        assert await client.dbsize() == 0
        await client.set("left-behind", 1)  # the next test must not see it
    finally:
        await client.aclose()


def test_each_test_starts_empty(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_aof_restart_keeps_data_on_same_port() -> None:
    with RedisServer(appendonly=True) as server:
        port, pid = server.port, server.pid
        with server.client() as client:
            client.set("k", "v")
        server.restart()
        assert (server.port, server.url) == (port, f"redis://127.0.0.1:{port}/0")
        assert server.pid != pid
        with server.client() as client:
            assert client.get("k") == "v"
        server.kill()
        server.start()
        with server.client() as client:
            assert client.ping()


@pytest.mark.cluster
def test_cluster_has_three_ok_masters(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.urls) == 3
    for url in redis_cluster.urls:
        with redis.Redis.from_url(url, decode_responses=True) as node:
            info = node.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_known_nodes"]) == 3
            assert int(info["cluster_size"]) == 3  # masters serving slots


@pytest.mark.cluster
async def test_cluster_client_reads_writes_and_runs_lua(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    client = AsyncRedisCluster.from_url(cluster_url, decode_responses=True)
    try:
        for i in range(30):
            await client.set(f"key:{i}", i)
        assert [await client.get(f"key:{i}") for i in range(30)] == [str(i) for i in range(30)]
        assert len(client.get_primaries()) == 3

        script = """
            redis.call('SET', KEYS[1], ARGV[1])
            redis.call('RPUSH', KEYS[2], ARGV[1])
            return redis.call('LLEN', KEYS[2])
        """
        assert await client.eval(script, 2, "{entity:1}:state", "{entity:1}:queue", "job") == 1
        assert await client.lrange("{entity:1}:queue", 0, -1) == ["job"]
        with pytest.raises(RedisClusterException, match="same key slot"):  # cross-slot
            await client.eval(script, 2, "{entity:1}:state", "{entity:2}:queue", "job")
    finally:
        await client.aclose()

    for url in redis_cluster.urls:  # the 30 keys spread over all three masters
        with redis.Redis.from_url(url) as node:
            assert node.dbsize() > 0
