"""The loop of a packed worker: up to `slots` entities of a type at a time, each one's jobs in
order.

It waits for a doorbell of any bucket with a slot in hand, claims in the bucket that rang, and
runs what it got to its end in a task of its own (a *drain*), so that the next wait begins at
once. A drain whose entity runs dry is handed the next claimable entity of the same bucket by
the script that finished its last job. An entity is let go of when it runs dry; the loop ends
after `idle_timeout` without work.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio.cluster import RedisCluster

from .errors import RedisUnavailable
from .keys import in_bucket
from .leases import Next, Started
from .runner import JobRunner

log = logging.getLogger("atomicqueues.worker")

QUICK_LOOK = 0.05
"""Seconds a packed worker waits for a doorbell after a look at every bucket found work."""
HANDOVERS = (32, 0.5)
"""How many entities of one bucket, and for how many seconds, a packed worker's slot goes on
taking one after another (each handed over by the script that finished the last job) before it
waits for a doorbell again, whichever comes first: a bucket whose work never runs dry must not
keep slots from the others, and a wait costs two round trips."""
HINTS = 256
"""Entities named by work events kept for a packed worker that cannot use doorbells (Cluster)."""

Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]
"""Runs a coroutine as a task of the worker (a failure closes the worker)."""


class PackedLoop:
    """Runs the jobs of up to `slots` entities of the runner's type at a time until idle for
    `idle_timeout` or the worker closes; `exit_reason` then says why it ended by itself."""

    def __init__(self, runner: JobRunner, slots: int, spawn: Spawn) -> None:
        self.runner = runner
        self.slots = slots
        self.spawn = spawn
        self.cluster = isinstance(runner.client.redis, RedisCluster)
        self.exit_reason = ""
        self._scan = True
        """Look at every bucket before the next wait for a doorbell."""
        self._busy: list[str] = []
        """Buckets the index showed work in at the last look at every bucket."""
        self._last_work = 0.0
        """When the loop last had work (event loop time): it ends `idle_timeout` after."""
        self._hints: deque[str] = deque(maxlen=HINTS)
        self._work_hint = asyncio.Event()

    def hint(self, entity_id: str | None) -> None:
        """A work event named `entity_id` (on Redis Cluster, which has no doorbells for a
        packed worker to block on); None: events may have been missed, look everywhere."""
        if entity_id is not None:
            self._hints.append(entity_id)
        self._work_hint.set()

    async def run(self) -> None:
        """Wait for a doorbell with a slot in hand, and hand the slot to a task that claims in
        the bucket that rang and drains what it got, so that the next wait begins at once.
        Every bucket is looked at (the index read) only at start, after a wait that timed out,
        and after a failed claim; after a look that found work, the next wait is short
        (`QUICK_LOOK`; none on Cluster, which has no doorbells), so that work without a
        doorbell (one popped by a worker killed before it claimed, or lost in a failover) is
        all found at once, not one entity per wait."""
        runner = self.runner
        loop = asyncio.get_running_loop()
        buckets = runner.client.keys.buckets(runner.entity_type)
        bells = [in_bucket(b, "bell") for b in buckets]
        # On Cluster the doorbells of several slots cannot be waited for at once: work events.
        instead = self._work_hint if self.cluster and len(bells) > 1 else None
        free = asyncio.Semaphore(self.slots)
        drains: set[asyncio.Task[None]] = set()

        def drain(work: Coroutine[Any, Any, None]) -> None:
            task = self.spawn(work, "drain of an entity")
            drains.add(task)
            task.add_done_callback(drains.discard)
            task.add_done_callback(lambda _: free.release())

        self._last_work = loop.time()
        quick = False
        while not runner.closing.is_set():
            if free.locked():
                await self._wait_for_slot(free)
                continue
            await free.acquire()
            # Cleared before a claim that may come up empty, not before the wait: an event
            # that arrives from now on must end the next wait at once.
            self._work_hint.clear()
            if self._scan:
                self._scan = False
                try:
                    started = await self._claim_any(None)
                except RedisUnavailable as exc:
                    log.warning("worker %s: %s", runner.name, exc)
                    free.release()
                    self._scan = True
                    await asyncio.sleep(1.0)
                    continue
                if started is not None:
                    drain(self._drain(started))
                    # More may be there without a doorbell: look again, at once where there
                    # are no doorbells (Cluster), else after a short wait for one.
                    self._scan = self.cluster
                    quick = not self.cluster
                    continue
                free.release()
                continue
            if drains:
                self._last_work = loop.time()
            elif loop.time() - self._last_work >= runner.settings.idle_timeout:
                free.release()
                self.exit_reason = "idle"
                break
            bucket = self._hinted_bucket()
            if bucket is None:
                idle_for = loop.time() - self._last_work
                wait = QUICK_LOOK if quick else runner.settings.idle_timeout - idle_for
                quick = False
                bell = await runner.wait_for_work(bells, wait, instead)
                if bell in bells:
                    rang = bells.index(bell)
                    bucket = buckets[rang]
                    # BLPOP pops the first bell it is given that has rung: the buckets after
                    # this one go first next time, or the first few would be served alone
                    # whenever their bells ring faster than the worker claims.
                    bells = bells[rang + 1 :] + bells[: rang + 1]
                    buckets = buckets[rang + 1 :] + buckets[: rang + 1]
                elif (bucket := self._hinted_bucket()) is None:
                    self._scan = not runner.closing.is_set()  # timed out: every bucket, once
                    free.release()
                    continue
            drain(self._claim_and_drain(bucket))
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)

    async def _claim_and_drain(self, bucket: str) -> None:
        """Claim in `bucket` and run what was claimed to its end."""
        try:
            started = await self._claim_any(bucket)
        except RedisUnavailable as exc:
            # The doorbell that rang is used up: look at every bucket once Redis answers.
            log.warning("worker %s: %s", self.runner.name, exc)
            self._scan = True
            await asyncio.sleep(1.0)
            return
        if started is not None:
            await self._drain(started)

    async def _wait_for_slot(self, free: asyncio.Semaphore) -> None:
        acquired = asyncio.ensure_future(free.acquire())
        closing = asyncio.ensure_future(self.runner.closing.wait())
        await asyncio.wait({acquired, closing}, return_when=asyncio.FIRST_COMPLETED)
        closing.cancel()
        if acquired.done() and not acquired.cancelled():
            free.release()
        else:
            acquired.cancel()

    async def _claim_any(self, bucket: str | None) -> Started | None:
        """Claim in `bucket`; without one, in the buckets the index showed work in at the last
        look (`_busy`), the first first, until one gives work; the index is read again once
        they are all used up."""
        leases, entity_type = self.runner.leases, self.runner.entity_type
        if bucket is not None:
            return await leases.claim_any(entity_type, bucket)
        looked = False
        while True:
            if not self._busy:
                if looked:
                    return None
                self._busy = await leases.busy_buckets(entity_type)
                looked = True
                continue
            started = await leases.claim_any(entity_type, self._busy[0])
            if started is not None:
                return started  # the bucket stays first: it may have more
            self._busy.pop(0)

    def _hinted_bucket(self) -> str | None:
        """The bucket of an entity a work event named, if any (on Redis Cluster, where a
        packed worker cannot block on the doorbells of every bucket)."""
        if self._hints:
            keys = self.runner.client.keys
            return keys.entity_bucket(self.runner.entity_type, self._hints.pop())
        return None

    async def _drain(self, run: Started) -> None:
        """Run jobs one after another: the entity's until it runs dry, then, handed over in the
        same script that finished the last one, those of the next claimable entity of the
        bucket, until there is none, the worker closes, or `HANDOVERS` are used up (then the
        last entity's lease is released when it runs dry, and the slot waits for a doorbell)."""
        runner = self.runner
        loop = asyncio.get_running_loop()
        most, seconds = HANDOVERS
        hand_over_until = loop.time() + seconds
        try:
            while True:
                lease = run.lease
                runner.held[lease.entity_id] = lease
                then: Next = "any" if most > 0 and loop.time() < hand_over_until else "release"
                nxt = await runner.run_job(run, then)
                if nxt is not None and nxt.lease is lease:
                    run = nxt
                    continue
                most -= 1
                if runner.held.get(lease.entity_id) is lease:
                    if runner.closing.is_set():
                        await runner.give_back(lease)  # finished with "none": the lease was kept
                    else:
                        del runner.held[lease.entity_id]  # released by the script that finished
                if nxt is None:
                    return
                run = nxt
        finally:
            self._last_work = loop.time()  # idle from the end of a drain, however long it was
