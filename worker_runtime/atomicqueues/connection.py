"""Connecting to Redis, standalone or Cluster, from one URL.

The same URL scheme serves both: after connecting we ask the server whether it runs in cluster
mode and, if so, switch to redis-py's cluster client. Password and TLS come through the URL
(`redis://:PASSWORD@host:6379/0`, `rediss://...`). Connection failures become
`RedisUnavailable` with one line a person can act on.

Every client is made with a timeout (`Settings.redis_timeout`): a call on a connection that
stopped answering (a partition, a frozen server) fails after that many seconds instead of
hanging, and a timed-out call is never re-sent behind the caller's back (a script may have run:
the caller decides). A connection that turns out to be broken when a call is sent is retried
once on a fresh one, so a restarted Redis costs the caller nothing.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .errors import RedisUnavailable

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"

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


def _options(timeout: float) -> dict[str, Any]:
    """Client options; a `socket_timeout` given in the URL still wins."""
    return {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }


async def connect(url: str, timeout: float) -> RedisClient:
    """A client for `url` whose calls fail after `timeout` seconds without an answer; a Cluster
    client when the server runs in cluster mode."""
    broken_once = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    try:
        plain = aioredis.Redis.from_url(url, retry=broken_once, **_options(timeout))
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
    cluster = RedisCluster.from_url(url, **_options(timeout))
    try:
        await cluster.initialize()
    except (*CONNECTION_ERRORS, redis.exceptions.RedisClusterException) as exc:
        await cluster.aclose()
        raise RedisUnavailable(f"cannot reach Redis Cluster at {describe(url)}: {exc}") from None
    return cluster


def pubsub_client(url: str, timeout: float) -> aioredis.Redis:
    """A plain client for subscribing (its reads of messages wait without limit). On Cluster it
    talks to the URL's node: classic pub/sub messages reach every node of a cluster. The caller
    closes it."""
    return aioredis.Redis.from_url(url, **_options(timeout))
