"""The background loops every pool backend runs beside its reconcile passes.

`wake_on_work` sets the pool's wake event whenever an entity becomes claimable (the Redis
"entity has work" event), so a pass runs within milliseconds; `sweep_leases` recovers expired
leases every heartbeat interval, so the job of a killed worker comes back even when no worker
of the type is alive, and wakes the pool when it did; `tick_schedules` fires the type's
scheduled jobs (schedules.py), whose enqueue then wakes the pool like any other. All only log
what fails: the pool's resync interval still runs.
"""

from __future__ import annotations

import asyncio
import logging

from ..client import Client
from ..errors import AtomicQueuesError
from ..index_reads import IndexReads
from ..leases import sweep
from ..schedules import Ticker

log = logging.getLogger(__name__)


async def wake_on_work(client: Client, entity_type: str, wake: asyncio.Event, pool: str) -> None:
    """Set `wake` on every "entity has work" event; subscribe again after a failure."""
    while True:
        try:
            async for _ in IndexReads(client).events(entity_type):
                wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dropped subscription only delays: resync still runs
            log.warning("pool %s: event stream: %s", pool, exc)
        await asyncio.sleep(1.0)


async def sweep_leases(
    client: Client, entity_type: str, interval: float, wake: asyncio.Event, pool: str
) -> None:
    """Every `interval` seconds, recover expired leases; set `wake` when some were."""
    while True:
        await asyncio.sleep(interval)
        try:
            recovered, _ = await sweep(client, entity_type)
        except AtomicQueuesError as exc:
            log.warning("pool %s: sweep: %s", pool, exc)
            continue
        if recovered:
            log.warning("pool %s: recovered %d expired lease(s)", pool, recovered)
            wake.set()


async def tick_schedules(client: Client, entity_type: str) -> None:
    """Fire the type's due schedules until cancelled (exactly once per tick, however many
    pools of the type run)."""
    await Ticker(client, entity_type).run()
