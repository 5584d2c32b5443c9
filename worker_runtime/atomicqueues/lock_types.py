"""What a resource lock is, as `Locks` (locks.py) hands it out and lists it: `Lock`, `Holder`,
`LockResult`, and how `acquire_any` may order a pool's candidates (`Spread`).

Why a module of its own, below the others: the holding machinery (lock_holding.py) and the
client-side API (locks.py) both speak of these records, and the API builds on the machinery.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

Spread = Literal["first", "random", "lru"]
SPREADS: tuple[Spread, ...] = ("first", "random", "lru")


@dataclass
class Lock:
    """A lock held (or, in listings, seen held) by `owner_id`. Times are epoch seconds on the
    Redis server's clock."""

    resource_type: str
    resource_id: str
    owner_id: str
    owner_type: str
    token: int
    """Fencing token: grows with every grant of this resource; pass it to what you write."""
    acquired_at: float
    expires_at: float
    """Moved on by `extend` (and by the renewal of `hold`)."""
    lost: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)
    """Set by `hold` and job locks when renewal found the lock gone (expired or taken)."""
    valid_until: float = field(default=0.0, repr=False, compare=False)
    """Until when (`time.monotonic()`) the lock holds for certain: the send time of the last
    acquire or extend plus its TTL (the script sets the expiry, never before the send)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "owner_id": self.owner_id,
            "owner_type": self.owner_type,
            "token": self.token,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True)
class Holder:
    """Who holds a resource someone else asked for."""

    resource_id: str
    owner_id: str
    owner_type: str
    expires_at: float


@dataclass(frozen=True)
class LockResult:
    """What `acquire` and `acquire_any` did: the lock, or who holds what was asked for."""

    lock: Lock | None
    holders: tuple[Holder, ...] = ()
    """When not acquired: the holder of each resource asked for (every candidate of a pool)."""

    @property
    def acquired(self) -> bool:
        return self.lock is not None

    @property
    def holder(self) -> Holder | None:
        """The holder, when a single resource was asked for and is held."""
        return self.holders[0] if self.holders else None
