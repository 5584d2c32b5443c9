"""Resource locks: exclusive use of something beyond an entity, safe when holders pause or die.

An entity's lease says who runs its jobs; some work also needs a resource that other entities
share: a connection, an account context, a device. A lock on `(resource_type, resource_id)` has
one owner, a TTL and a fencing token, with the leases' guarantees: every change is one Lua
script that checks the owner's token and the expiry against the server clock (an expired lock is
free even before anything cleans it up), so a holder that was paused or cut off past its TTL can
neither release nor extend what is no longer its own (`LockNotOwned`). Tokens grow on every
grant and are never reused, also across a Redis restart with AOF; pass `lock.token` to the
resource so it can refuse a stale holder's writes.

Every lock of one resource type lives under one hash tag, so `acquire_any` takes the first free
resource of a pool in one script, also on Redis Cluster. This module is the client's side: take,
extend, release and list locks (the records are in lock_types.py). `hold()` keeps a lock renewed
while a block runs, with the machinery of lock_holding.py; `JobContext.lock` (context.py) gives
a job locks the worker releases when it ends.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from typing import Any

from .base_client import BaseClient
from .errors import InvalidInput, LockNotOwned
from .keys import (
    ENTITY_TYPE_RE,
    check_resource_id,
    check_resource_type,
    decode_id,
    encode_id,
)
from .lock_holding import Hold
from .lock_types import SPREADS, Holder, Lock, LockResult, Spread

log = logging.getLogger(__name__)

MAX_CANDIDATES = 1000
MAX_OWNER_BYTES = 1024
MAX_LISTED = 10_000


def _seconds(ms: str) -> float:
    return int(ms) / 1000.0


def _ttl_ms(ttl: float) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise InvalidInput(f"lock ttl must be a number of seconds, not {ttl!r}")
    ms = round(ttl * 1000)
    if ms < 1:
        raise InvalidInput(f"lock ttl must be positive (at least 0.001 s), not {ttl!r}")
    return ms


def _check_owner(owner_id: str, owner_type: str) -> None:
    if not isinstance(owner_id, str) or not owner_id:
        raise InvalidInput("lock owner id must be a non-empty string")
    try:
        size = len(owner_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("lock owner id is not valid unicode (lone surrogate)") from None
    if size > MAX_OWNER_BYTES:
        raise InvalidInput(f"lock owner id is over the limit of {MAX_OWNER_BYTES} bytes")
    if not isinstance(owner_type, str) or not ENTITY_TYPE_RE.fullmatch(owner_type):
        raise InvalidInput(
            f"invalid lock owner type {owner_type!r}: use 1-63 letters, digits, '_' or '-'"
        )


class Locks:
    """Resource locks through one `Client`. Public methods validate; `_script` does the I/O."""

    def __init__(self, client: BaseClient) -> None:
        self.client = client
        self.keys = client.keys

    async def _script(self, name: str, resource_type: str, *args: str | int) -> Any:
        return await self.client.script(name, self.keys.lock_base(resource_type), *args)

    # --- acquire, extend, release ------------------------------------------------------------
    async def acquire(
        self, resource_type: str, resource_id: str, owner_id: str, owner_type: str, ttl: float
    ) -> LockResult:
        """Take the lock if it is free (never held, released or expired); else say who holds it.

        Not re-entrant: an owner asking again for a lock it holds is told it is held (by itself).
        """
        check_resource_type(resource_type)
        check_resource_id(resource_id)
        _check_owner(owner_id, owner_type)
        ms = _ttl_ms(ttl)
        await self.client.remember(self.keys.lock_types(), resource_type)
        sent = time.monotonic()
        reply = await self._script(
            "lock_acquire", resource_type, encode_id(resource_id), owner_id, owner_type, ms
        )
        if reply[0] != 1:
            return LockResult(None, (Holder(resource_id, reply[1], reply[2], _seconds(reply[3])),))
        lock = Lock(
            resource_type,
            resource_id,
            owner_id,
            owner_type,
            int(reply[1]),
            _seconds(reply[2]),
            _seconds(reply[3]),
            valid_until=sent + ms / 1000.0,
        )
        return LockResult(lock)

    async def acquire_any(
        self,
        resource_type: str,
        candidate_ids: Sequence[str],
        owner_id: str,
        owner_type: str,
        ttl: float,
        spread: Spread = "first",
    ) -> LockResult:
        """Take the first free resource of a pool, atomically (one script).

        `spread` orders the candidates: "first" as given (fill the pool from the front),
        "random" as given but from a random starting point (spread the load), "lru" least
        recently acquired or released first (rotate through the pool). Duplicates count once.
        """
        check_resource_type(resource_type)
        if isinstance(candidate_ids, str):
            raise InvalidInput("candidate ids must be a list of resource ids, not one string")
        ids = list(dict.fromkeys(check_resource_id(r) for r in candidate_ids))
        if not ids:
            raise InvalidInput("a pool needs at least one candidate resource id")
        if len(ids) > MAX_CANDIDATES:
            raise InvalidInput(f"{len(ids)} candidates, over the limit of {MAX_CANDIDATES}")
        if spread not in SPREADS:
            raise InvalidInput(f"spread must be one of {', '.join(SPREADS)}, not {spread!r}")
        _check_owner(owner_id, owner_type)
        ms = _ttl_ms(ttl)
        offset = random.randrange(len(ids)) if spread == "random" else 0
        await self.client.remember(self.keys.lock_types(), resource_type)
        sent = time.monotonic()
        reply = await self._script(
            "lock_acquire_any",
            resource_type,
            owner_id,
            owner_type,
            ms,
            spread,
            offset,
            *(encode_id(r) for r in ids),
        )
        if reply[0] != 1:
            rest = reply[1:]
            holders = tuple(
                Holder(decode_id(rest[i]), rest[i + 1], rest[i + 2], _seconds(rest[i + 3]))
                for i in range(0, len(rest), 4)
            )
            return LockResult(None, holders)
        lock = Lock(
            resource_type,
            decode_id(reply[1]),
            owner_id,
            owner_type,
            int(reply[2]),
            _seconds(reply[3]),
            _seconds(reply[4]),
            valid_until=sent + ms / 1000.0,
        )
        return LockResult(lock)

    async def extend(self, lock: Lock, ttl: float) -> Lock:
        """Make the lock expire `ttl` seconds from now; `LockNotOwned` if it is no longer held
        under its token (nothing is changed then). Updates and returns `lock`."""
        ms = _ttl_ms(ttl)
        sent = time.monotonic()
        reply = await self._script(
            "lock_extend",
            lock.resource_type,
            encode_id(lock.resource_id),
            lock.owner_id,
            str(lock.token),
            ms,
        )
        if reply[0] != 1:
            raise LockNotOwned(lock.resource_type, lock.resource_id, lock.token)
        lock.expires_at = _seconds(reply[1])
        lock.valid_until = max(lock.valid_until, sent + ms / 1000.0)
        return lock

    async def release(self, lock: Lock) -> None:
        """Give the lock up; `LockNotOwned` if it is no longer held under its token (expired,
        force-released or taken over: nothing is changed then)."""
        reply = await self._script(
            "lock_release",
            lock.resource_type,
            encode_id(lock.resource_id),
            lock.owner_id,
            str(lock.token),
            "0",
        )
        if reply[0] != 1:
            raise LockNotOwned(lock.resource_type, lock.resource_id, lock.token)

    async def force_release(self, resource_type: str, resource_id: str) -> Lock | None:
        """Free a resource whoever holds it (for operators); returns what was released, or None
        when it was free. The former holder's next extend or release fails with LockNotOwned."""
        check_resource_type(resource_type)
        check_resource_id(resource_id)
        reply = await self._script(
            "lock_release", resource_type, encode_id(resource_id), "", "", "1"
        )
        if reply[0] != 1:
            return None
        _, owner, otype, token, at, exp = reply
        return Lock(
            resource_type, resource_id, owner, otype, int(token), _seconds(at), _seconds(exp)
        )

    # --- listing ---------------------------------------------------------------------------------
    async def types(self) -> list[str]:
        """Resource types that were ever locked."""
        return sorted(await self.client.smembers(self.keys.lock_types()))

    async def held(self, resource_type: str | None = None) -> list[Lock]:
        """The locks held now (of one type, or of every type), soonest expiry first per type."""
        types = [check_resource_type(resource_type)] if resource_type else await self.types()
        found: list[Lock] = []
        for t in types:
            reply = await self._script("lock_list", t, MAX_LISTED)
            for i in range(0, len(reply), 6):
                r, owner, otype, token, at, exp = reply[i : i + 6]
                found.append(
                    Lock(t, decode_id(r), owner, otype, int(token), _seconds(at), _seconds(exp))
                )
        return found

    # --- holding a lock while a block runs ---------------------------------------------------
    def hold(
        self,
        resource_type: str,
        resource_id: str,
        owner_id: str,
        owner_type: str,
        ttl: float,
        *,
        cancel_on_loss: bool = True,
        wait: float = 0.0,
    ) -> Hold:
        """`async with locks.hold(...) as lock:` holds the lock while the block runs.

        The lock is renewed in the background every ttl/3 and released when the block ends
        (whatever the outcome). `LockBusy` when it is held by someone else for `wait` seconds
        (default: do not wait). If renewal finds the lock gone (its holder was paused or cut
        off past the TTL, or an operator force-released it), `lock.lost` is set and, with
        `cancel_on_loss` (the default), the task running the block is cancelled at its next
        await and the `async with` raises `LockNotOwned` (as `asyncio.timeout` turns its own
        cancellation into TimeoutError); a cancellation from elsewhere still propagates. With
        `cancel_on_loss=False` the block runs on: check `lock.lost` before acting on the
        resource. Either way pass `lock.token` to the resource so a late write is refused.
        """
        ms = _ttl_ms(ttl)
        return Hold(
            self,
            resource_type,
            ms / 1000.0,
            cancel_on_loss,
            wait,
            lambda: self.acquire(resource_type, resource_id, owner_id, owner_type, ttl),
        )

    def hold_any(
        self,
        resource_type: str,
        candidate_ids: Sequence[str],
        owner_id: str,
        owner_type: str,
        ttl: float,
        *,
        spread: Spread = "first",
        cancel_on_loss: bool = True,
        wait: float = 0.0,
    ) -> Hold:
        """`hold` for the first free resource of a pool (see `acquire_any`); `lock.resource_id`
        says which one was taken."""
        ms = _ttl_ms(ttl)
        return Hold(
            self,
            resource_type,
            ms / 1000.0,
            cancel_on_loss,
            wait,
            lambda: self.acquire_any(
                resource_type, candidate_ids, owner_id, owner_type, ttl, spread
            ),
        )
