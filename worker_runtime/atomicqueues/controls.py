"""An entity's limits, or its type's: max backlog, rate, a rate the type shares, concurrency.

Limits are part of an entity's controls, one field of its summary (`ctl`, lua/include/entity.lua)
that the claim and finish scripts read anyway, so an entity without controls costs nothing per
job; a type's limits are its buckets' `defaults`, copied to every entity of the type
(`limit.lua`). A rate the whole type shares is one key of its own, which workers read at each
heartbeat. Pausing and resuming, the other controls, are on `Client`, where producers call them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .base_client import BaseClient
from .errors import InvalidInput
from .jobs import is_integer, is_seconds
from .keys import check_entity_id, check_entity_type, encode_id, in_bucket, of_entity


@dataclass(frozen=True)
class Limits:
    """What `Controls.limits` reads."""

    concurrency: int | None
    """Jobs of the entity that may run at once (None for a type: set per entity)."""
    max_backlog: int
    """Jobs waiting or delayed past which enqueue refuses (0: no limit)."""
    rate: tuple[int, float] | None = None
    """At most this many job starts in this many seconds (None: no limit)."""
    shared_rate: tuple[int, float] | None = None
    """For a type: at most this many handlers of all its entities start in this many seconds."""


def controls(summary: Mapping[str, str]) -> list[str]:
    """An entity's controls from its summary: paused, rate-limited until, own and type's max
    backlog, own and type's rate limit (n, period ms) ("0": none; lua/include/entity.lua)."""
    return (summary.get("ctl") or "0 0 0 0 0 0 0 0").split()


def _rate_ms(rate: tuple[int, float]) -> tuple[int, int]:
    """`Controls.set_limits`'s rate (starts, seconds) checked, as (starts, period in ms)."""
    try:
        n, seconds = rate
    except (TypeError, ValueError):
        raise InvalidInput("rate must be (starts, seconds), e.g. (10, 60)") from None
    if (n, seconds) == (0, 0):
        return 0, 0
    if not is_integer(n) or not 1 <= n <= 10**6 or not is_seconds(seconds) or seconds <= 0:
        raise InvalidInput("rate must be (starts, seconds): 1 to 10**6 starts, seconds > 0")
    return n, max(1, math.ceil(seconds * 1000))


def _rate_of(n: str | bytes | None, period_ms: str | bytes | None) -> tuple[int, float] | None:
    """A rate as `Limits` shows it, from its fields in Redis."""
    if not n or not int(n):
        return None
    return int(n), int(period_ms or 0) / 1000.0


class Controls:
    """An entity's limits and concurrency, or its type's, through one client."""

    def __init__(self, client: BaseClient) -> None:
        self.client = client
        self.keys = client.keys

    async def set_limits(
        self,
        entity_type: str,
        entity_id: str | None = None,
        *,
        concurrency: int | None = None,
        max_backlog: int | None = None,
        rate: tuple[int, float] | None = None,
        shared_rate: tuple[int, float] | None = None,
    ) -> None:
        """Set an entity's limits, or (without `entity_id`) its type's defaults; an option left
        out is left as it is, 0 removes a limit, and an entity's own limit comes before its
        type's. `max_backlog`: enqueue refuses a job (`BacklogFull`) while the entity has that
        many jobs waiting or delayed. `rate` (n, seconds): at most n jobs of the entity start
        in any `seconds`, across all workers; an entity that must wait is not claimable until
        it may start (no polling). `(0, 0)` removes it. `shared_rate` (n, seconds), for a type
        only: at most n handlers of all its entities together start in any `seconds` (a
        downstream API they share); a worker waits for its turn before it calls a handler, and
        learns of a change within a heartbeat. `concurrency`: see `set_concurrency` (per entity
        only)."""
        check_entity_type(entity_type)
        fields: list[str | int] = []
        if max_backlog is not None:
            if not isinstance(max_backlog, int) or not 0 <= max_backlog <= 10**9:
                raise InvalidInput("max backlog must be an integer from 0 (no limit) to 10**9")
            fields += ["mb", max_backlog]
        if rate is not None:
            n, period_ms = _rate_ms(rate)
            fields += ["rn", n, "rp", period_ms]
        if concurrency is not None:
            if entity_id is None:
                raise InvalidInput("concurrency is set per entity: give the entity id")
            await self.set_concurrency(entity_type, entity_id, concurrency)
        if shared_rate is not None:
            if entity_id is not None:
                raise InvalidInput("a shared rate is set for a whole type: give no entity id")
            n, period_ms = _rate_ms(shared_rate)
            key = self.keys.shared_rate(entity_type)
            if n:
                await self.client.call(lambda: self.client.redis.set(key, f"{n} {period_ms}"))
            else:
                await self.client.call(lambda: self.client.redis.delete(key))
        if not fields:
            return
        channel = self.keys.events(entity_type)
        if entity_id is not None:
            check_entity_id(entity_id)
            bucket = self.keys.entity_bucket(entity_type, entity_id)
            await self.client.script("limit", bucket, encode_id(entity_id), channel, *fields)
            return
        await self.client.remember_type(entity_type)
        calls = [(b, "", [channel, *fields]) for b in self.keys.buckets(entity_type)]
        await self.client.call(lambda: self.client.scripts.run_many("limit", calls))

    async def shared_rate(self, entity_type: str) -> tuple[int, float] | None:
        """The rate limit all the type's entities share (`set_limits(shared_rate=)`), if any."""
        raw = await self.client.call(
            lambda: self.client.redis.get(self.keys.shared_rate(entity_type))
        )
        if not raw:
            return None
        n, period_ms = str(raw).split()
        return _rate_of(n, period_ms)

    async def limits(self, entity_type: str, entity_id: str | None = None) -> Limits:
        """An entity's limits as they apply to it, or (without `entity_id`) its type's."""
        check_entity_type(entity_type)
        if entity_id is None:
            bucket = self.keys.buckets(entity_type)[0]
            mb, rn, rp = await self.client.call(
                lambda: self.client.redis.hmget(in_bucket(bucket, "defaults"), "mb", "rn", "rp")
            )
            shared = await self.shared_rate(entity_type)
            return Limits(None, int(mb or 0), _rate_of(rn, rp), shared)
        check_entity_id(entity_id)
        meta = of_entity(self.keys.entity(entity_type, entity_id), "meta")
        summary = await self.client.hgetall(meta)
        if not summary:  # no summary yet: its type's, once it has one
            of_type = await self.limits(entity_type)
            backlog, rate = of_type.max_backlog, of_type.rate
        else:  # "p rl mb tmb rn rp trn trp" (lua/include/entity.lua)
            _, _, mb, tmb, rn, rp, trn, trp = controls(summary)
            backlog = int(mb) or int(tmb)
            rate = _rate_of(rn, rp) or _rate_of(trn, trp)
        return Limits(await self.concurrency(entity_type, entity_id), backlog, rate)

    async def set_concurrency(self, entity_type: str, entity_id: str, n: int) -> None:
        """How many jobs of this entity may be in flight at once (default 1)."""
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        if not isinstance(n, int) or not 1 <= n <= 10_000:
            raise InvalidInput("concurrency must be an integer from 1 to 10000")
        await self.client.script(
            "set_concurrency",
            self.keys.entity_bucket(entity_type, entity_id),
            encode_id(entity_id),
            n,
            self.keys.events(entity_type),
        )

    async def concurrency(self, entity_type: str, entity_id: str) -> int:
        bucket = self.keys.entity_bucket(entity_type, entity_id)
        raw = await self.client.hget(in_bucket(bucket, "conc"), encode_id(entity_id))
        return int(raw) if raw else 1
