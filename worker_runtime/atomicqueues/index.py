"""What the index of entities with work tells a scaler about one entity.

`IndexReads.work_index` reads it from Redis; the pools' reconciler (`pools/reconciler.py`), which is
pure, plans from it. It lives here, below both, so the reconciler needs nothing of the client.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EntityIndex:
    """What the index holds about one entity with work."""

    entity_id: str
    waiting: int
    """Jobs waiting to start."""
    since: float
    """When it began to have work (epoch seconds, Redis clock): the oldest is served first."""
    concurrency: int = 1
    claimable: bool = True
    """A job could start now if a new lease holder came (no holder is idle on it)."""
