"""The connection every part of AtomicQueues talks to Redis through: one Redis, one key prefix.

`BaseClient` holds the Redis client, the settings, the key names (`keys.py`) and the scripts
(`scripts.py`), and makes every call: a failure a person can act on (Redis unreachable, failing
over, out of memory, the pool of connections exhausted) becomes one `AtomicQueuesError`.
Why a module of its own, below the rest: the producer's `Client` (client.py) is built on it, and
so are the reads and controls that wrap a client (`IndexReads`, `DeadLetters`, `Controls`,
`Locks`, `Queues`, ...), which need the connection but nothing of the producer's API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Self, TypeVar

import redis.exceptions

from . import tracing
from .config import Settings
from .connection import CONNECTION_ERRORS, RedisClient, broken_transport, connect, describe
from .errors import PoolExhausted, RedisOutOfMemory, RedisUnavailable
from .keys import Keys
from .memory import refused_for_memory
from .scripts import Scripts

T = TypeVar("T")
MAX_BLOCK_SECONDS = 30.0
"""The longest a blocking call waits before it returns empty (the caller may call again)."""
FAILING_OVER = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
)
"""Answers of a server that is not (or no longer) the one to take the call."""


class BaseClient:
    """Connection to one AtomicQueues deployment (one Redis, one key prefix)."""

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        if settings.tracing:
            tracing.require()
        self.keys = Keys(settings.prefix)
        self.scripts = Scripts(redis)
        self._remembered: set[tuple[str, str]] = set()
        self._blocking: RedisClient | None = None
        self._blocking_made = asyncio.Lock()

    @classmethod
    async def connect(cls, settings: Settings | None = None) -> Self:
        settings = settings or Settings.from_env()
        return cls(await connect(settings.redis_url, settings.call_timeout), settings)

    async def close(self) -> None:
        if self._blocking is not None:
            await self._blocking.aclose()
        await self.redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation, turning connection failures into `RedisUnavailable` and a
        refusal for full memory into `RedisOutOfMemory`."""
        try:
            return await make()
        except redis.exceptions.MaxConnectionsError:  # a ConnectionError that is not one
            raise PoolExhausted(describe(self.settings.redis_url), None, None) from None
        except CONNECTION_ERRORS as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe(self.settings.redis_url)}: {exc}"
            ) from None
        except redis.exceptions.ClusterDownError as exc:
            raise RedisUnavailable(f"Redis Cluster is down: {exc}") from None
        except (TypeError, AttributeError) as exc:
            if not broken_transport(exc):
                raise
            raise RedisUnavailable(
                f"connection to Redis at {describe(self.settings.redis_url)} broke: {exc!r}"
            ) from None
        except FAILING_OVER as exc:
            # A demoted primary (READONLY) or a slot that moved: the call did not run; once the
            # failover is over, the same call reaches the new primary.
            raise RedisUnavailable(
                f"Redis at {describe(self.settings.redis_url)} is failing over: {exc}"
            ) from None
        except redis.exceptions.ResponseError as exc:
            if not refused_for_memory(exc):
                raise
            raise RedisOutOfMemory(describe(self.settings.redis_url)) from None

    async def script(
        self, name: str, bucket: str, *args: str | int | float, durable: bool = False
    ) -> Any:
        """Run a script; a `durable` one waits for `Settings.durable_replicas` (`NotReplicated`
        when fewer confirm it in time)."""
        if not durable or self.settings.durable_replicas <= 0:
            return await self.call(lambda: self.scripts.run(name, bucket, *args))
        replicas, wait_ms = self.settings.durable_replicas, self.settings.durable_wait_ms
        return await self.call(
            lambda: self.scripts.run(name, bucket, *args, replicas=replicas, wait_ms=wait_ms)
        )

    # Typed reads: the client decodes replies, so every value is a str.
    async def blpop(self, keys: list[str], seconds: float) -> tuple[str, str] | None:
        """Block until one of `keys` has an element (popped and returned) or `seconds` pass
        (at most `MAX_BLOCK_SECONDS`). Blocking calls have connections of their own, whose
        read timeout is the longest block plus the call timeout."""
        seconds = min(max(seconds, 0.01), MAX_BLOCK_SECONDS)
        async with self._blocking_made:
            if self._blocking is None:
                timeout = MAX_BLOCK_SECONDS + self.settings.call_timeout
                self._blocking = await connect(self.settings.redis_url, timeout)
        blocking = self._blocking
        value = await self.call(lambda: blocking.blpop(keys, timeout=seconds))
        return None if value is None else (str(value[0]), str(value[1]))

    async def hget(self, key: str, field: str) -> str | None:
        value = await self.call(lambda: self.redis.hget(key, field))
        return None if value is None else str(value)

    async def hgetall(self, key: str) -> dict[str, str]:
        value = await self.call(lambda: self.redis.hgetall(key))
        return {str(k): str(v) for k, v in value.items()}

    async def smembers(self, key: str) -> set[str]:
        value = await self.call(lambda: self.redis.smembers(key))
        return {str(v) for v in value}

    async def zrange(self, key: str, start: int = 0, stop: int = -1) -> list[str]:
        value = await self.call(lambda: self.redis.zrange(key, start, stop))
        return [str(v) for v in value]

    async def remember(self, key: str, member: str) -> None:
        """Add `member` to the set `key` once per client (the sets of known entity and resource
        types only grow, so a second SADD would change nothing). When Redis's memory is full it
        is left to a later call: the sets only list, and what needs memory is refused anyway."""
        if (key, member) not in self._remembered:
            with suppress(RedisOutOfMemory):
                await self.call(lambda: self.redis.sadd(key, member))
                self._remembered.add((key, member))

    async def remember_type(self, entity_type: str) -> None:
        """Add `entity_type` to the set of known entity types (`IndexReads.entity_types`)."""
        await self.remember(self.keys.types(), entity_type)
