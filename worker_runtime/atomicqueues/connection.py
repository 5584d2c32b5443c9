"""Connecting to Redis, standalone or Cluster, from one URL.

The same URL scheme serves both: after connecting we ask the server whether it runs in cluster
mode and, if so, switch to redis-py's cluster client. Password and TLS come through the URL
(`redis://:PASSWORD@host:6379/0`, `rediss://...`). Connection failures become
`RedisUnavailable` with one line a person can act on.
"""

from __future__ import annotations

from typing import TypeAlias
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from .errors import RedisUnavailable

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"

SOCKET_TIMEOUT = 60.0
"""Read timeout of our connections: longer than any blocking call we make (a worker blocks up
to 30 s, `result()` up to 5 s at a time). redis-py >= 8 defaults to 5 s, which cut those calls
short with a timeout error; a `socket_timeout` in the URL still wins."""

CONNECTION_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def connect(url: str) -> RedisClient:
    """A client for `url`; a Cluster client when the server runs in cluster mode."""
    try:
        plain = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT)
    except ValueError as exc:
        raise RedisUnavailable(f"invalid Redis URL {describe(url)!r}: {exc}") from None
    try:
        info = await plain.info("cluster")
    except CONNECTION_ERRORS as exc:
        await plain.aclose()
        raise RedisUnavailable(f"cannot reach Redis at {describe(url)}: {exc}") from None
    except redis.exceptions.ResponseError as exc:
        await plain.aclose()
        raise RedisUnavailable(f"Redis at {describe(url)} refused us: {exc}") from None
    if not info.get("cluster_enabled"):
        return plain
    await plain.aclose()
    cluster = RedisCluster.from_url(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT)
    try:
        await cluster.initialize()
    except (*CONNECTION_ERRORS, redis.exceptions.RedisClusterException) as exc:
        await cluster.aclose()
        raise RedisUnavailable(f"cannot reach Redis Cluster at {describe(url)}: {exc}") from None
    return cluster


def pubsub_client(url: str) -> aioredis.Redis:
    """A plain client for subscribing. On Cluster it talks to the URL's node: classic pub/sub
    messages reach every node of a cluster. The caller closes it."""
    return aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT)
