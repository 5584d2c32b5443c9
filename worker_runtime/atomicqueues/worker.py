"""The worker: runs the jobs of one entity (or, packed, of many), one at a time per entity.

An entity-bound worker (`entity_id` given) claims its entity's jobs under a lease, blocks on the
entity's doorbell list when there is nothing to do (no polling), and exits after `idle_timeout`
without work, releasing its lease in the same script that checks the queue is empty. A packed
worker (`entity_id` None, `slots` K) claims any entities of its type that have work and no
holder, up to K at a time, runs each one's jobs serially, and lets go of an entity when it runs
dry. Both finish a job and start the next one in one round trip.

A heartbeat renews the leases and the registration every interval. A lease the worker can no
longer be sure of counts as lost before Redis could give it to anyone else: when its renewal
was refused, or when, on the worker's own clock, it has come within `Settings.lease_margin` of
the moment it may expire (leases.py) because Redis could not be reached. A lost lease cancels
the handler it covered (`ctx.lost` is set; Redis gives the job back once the lease has
expired); a handler that does not give control back ends the process (watchdog.py). Every loop
of the worker retries what Redis could not do or ends the worker (exit code 1) so its leases
end: none dies silently while its leases are renewed. On SIGTERM/SIGINT or a close signal the
worker stops taking jobs, lets the running ones finish within the grace period, gives back any
that do not (at once, to the head of the queue), releases its leases and deregisters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import traceback
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster

from . import logs, metrics, tracing
from .aio import cancel_and_wait, wait_any
from .client import MAX_BLOCK_SECONDS, Client
from .connection import pubsub_client
from .context import JobContext
from .errors import JobTimedOut, LeaseLost, PermanentError, RedisUnavailable, UnknownHandler
from .jobs import Job, to_json
from .keys import decode_id, in_bucket, of_entity
from .leases import Idle, Lease, Leases, Next, Outcome, Started, sweep
from .memory import eviction_warning
from .presence import Presence, WorkerInfo, close_message_applies
from .registry import Registry
from .watchdog import Watchdog

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ERROR_CHARS = 4000
RETRY_PAUSE = 0.2
"""Seconds between tries of a Redis call that failed while a lease is still held."""
QUICK_LOOK = 0.05
"""Seconds a packed worker waits for a doorbell after a look at every bucket found work."""
HANDOVERS = (32, 0.5)
"""How many entities of one bucket, and for how many seconds, a packed worker's slot goes on
taking one after another (each handed over by the script that finished the last job) before it
waits for a doorbell again, whichever comes first: a bucket whose work never runs dry must not
keep slots from the others, and a wait costs two round trips."""
HINTS = 256
"""Entities named by work events kept for a packed worker that cannot use doorbells (Cluster)."""
LISTEN_BACKOFF = (0.1, 5.0)
"""First and longest pause before the pub/sub listener subscribes again after an outage."""


class _Stuck(Exception):
    """A handler that was cancelled did not end in time."""


def default_name(node: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in node)[:40] or "node"
    return f"{safe}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs jobs of `entity_type`: of one entity, or of up to `slots` entities (packed)."""

    def __init__(
        self,
        client: Client,
        registry: Registry,
        entity_type: str,
        *,
        entity_id: str | None = None,
        slots: int = 1,
        name: str | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.client = client
        self.settings = client.settings
        self.registry = registry
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.slots = 1 if entity_id is not None else slots
        self.name = name or default_name(self.settings.node)
        self.leases = Leases(client, self.name)
        self.presence = Presence(client)
        self.held: dict[str, Lease] = {}
        self.running: dict[str, tuple[JobContext, asyncio.Task[Any]]] = {}
        self.closing = asyncio.Event()
        self.close_reason: str | None = None
        self.exit_reason = ""
        self.failed: BaseException | None = None
        """The error a loop of the worker ended with; the worker then stops (exit code 1)."""
        self.margin = self.settings.lease_margin
        # It ends the process when a job runs on after the guard below cancelled it: by a
        # quarter of the margin before the lease may expire at the latest.
        self.watchdog = Watchdog(every=min(0.05, self.margin / 8), reaction=self.margin / 2)
        self._work_hint = asyncio.Event()
        self._hints: deque[str] = deque(maxlen=HINTS)
        self._finishing: set[int] = set()
        self._shared_rate: tuple[int, int] | None = None
        """The rate limit the whole type shares (n, period ms), as last read (heartbeat)."""
        self._stuck: dict[str, Lease] = {}
        """Leases of jobs whose handler did not stop when cancelled: their outcome is recorded
        and they are renewed, never released, until the process ends (`_finish_stuck`)."""
        self._scan = True
        """A packed worker looks at every bucket before it waits for a doorbell again."""
        self._last_work = 0.0
        """When a packed worker last had work (event loop time): it exits `idle_timeout` after."""
        self._busy: list[str] = []
        """Buckets the index showed work in at a packed worker's last look at every bucket."""
        """Leases (ids) whose job's outcome is being recorded."""
        self._clock_offset = 0.0
        self._in_flight = metrics.IN_FLIGHT.labels(entity_type)
        self.info = WorkerInfo(
            self.name, entity_type, entity_id, self.slots, self.settings.node, os.getpid(), 0.0, []
        )

    # --- life cycle ---------------------------------------------------------------------------
    def close(self, reason: str) -> None:
        """Ask the worker to stop taking jobs and shut down gracefully (idempotent)."""
        if not self.closing.is_set():
            self.close_reason = reason
            log.info("worker %s closing: %s", self.name, reason)
            self.closing.set()

    async def run(self) -> str:
        """Run until idle or closed; returns why it stopped ('idle' or the close reason)."""
        started = await self.presence.server_time()
        self._clock_offset = started - time.time()
        self.info = replace(self.info, started_at=started)
        await self.presence.beat(self.info, self.settings.heartbeat_ttl)
        log.info(
            "worker %s started for %s/%s (%d slot%s) on %s",
            self.name,
            self.entity_type,
            self.entity_id if self.entity_id is not None else "*",
            self.slots,
            "" if self.slots == 1 else "s",
            self.settings.node,
        )
        try:
            warning = await self.client.call(lambda: eviction_warning(self.client.redis))
        except RedisUnavailable as exc:  # advice only: a node failing over must not stop us
            warning = f"could not read Redis's eviction policy: {exc}"
        if warning:
            log.warning("worker %s: %s", self.name, warning)
        await self._read_shared_rate()
        self.watchdog.start()
        helpers = [
            self._spawn(self._heartbeat(), "heartbeat"),
            self._spawn(self._guard(), "lease guard"),
            self._spawn(self._listen(), "pub/sub listener"),
        ]
        loop: Coroutine[Any, Any, None] = (
            self._entity_loop(self.entity_id) if self.entity_id is not None else self._packed_loop()
        )
        work = self._spawn(loop, "work loop")
        try:
            await self._until_done(work)
        finally:
            await cancel_and_wait(helpers)
            await self._release_all()
            try:
                await self.presence.leave(replace(self.info, entities=list(self.held)))
            except RedisUnavailable as exc:
                log.warning("worker %s could not deregister: %s", self.name, exc)
            self.watchdog.stop()
        reason = self.close_reason or self.exit_reason or "done"
        log.info("worker %s stopped: %s", self.name, reason)
        if self._stuck:
            self.watchdog.end(
                f"worker {self.name}: a handler did not stop when cancelled ({reason}); the "
                f"process ends, and the lease on {sorted(self._stuck)} expires after it"
            )
        return reason

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Run one loop of the worker as a task; if it ends with an error, the worker stops."""
        task = asyncio.create_task(coro, name=f"aq-{what}")

        def ended(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            log.error("worker %s: its %s failed", self.name, what, exc_info=exc)
            if self.failed is None:
                self.failed = exc
            self.close(f"its {what} failed: {exc!r}")

        task.add_done_callback(ended)
        return task

    async def _until_done(self, work: asyncio.Task[None]) -> None:
        closing = asyncio.create_task(self.closing.wait())
        try:
            await asyncio.wait({work, closing}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                done, _ = await asyncio.wait({work}, timeout=self.settings.shutdown_grace)
                if not done:
                    log.warning(
                        "worker %s: grace of %ss over, giving running jobs back",
                        self.name,
                        self.settings.shutdown_grace,
                    )
                    for _, task in list(self.running.values()):
                        task.cancel()
                    done, _ = await asyncio.wait({work}, timeout=self.settings.heartbeat_ttl)
                    if not done:
                        work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        finally:
            closing.cancel()

    async def _release_all(self) -> None:
        for lease in list(self.held.values()):
            await self._give_back(lease)

    async def _give_back(self, lease: Lease) -> None:
        """Release a lease at once (its running job, if any, goes back to the head of the
        queue); when Redis cannot be reached the lease simply expires."""
        if self.held.get(lease.entity_id) is lease:
            del self.held[lease.entity_id]
        try:
            await self.leases.release(lease, "shutdown")
        except RedisUnavailable as exc:
            log.warning(
                "lease on %s/%r not released (%s); it expires",
                lease.entity_type,
                lease.entity_id,
                exc,
            )

    async def _while_held(self, lease: Lease, attempt: Callable[[], Awaitable[T]]) -> T:
        """Call `attempt` until Redis answers it; `LeaseLost` once the lease is held no more
        (lost, or past its deadline while Redis could not be reached)."""
        while self.held.get(lease.entity_id) is lease:
            try:
                return await attempt()
            except RedisUnavailable as exc:
                log.warning("worker %s: %s", self.name, exc)
                await asyncio.sleep(RETRY_PAUSE)
        raise LeaseLost(lease.entity_type, lease.entity_id, lease.fencing_token)

    # --- heartbeat, lease guard, close signals, sweeping -----------------------------------------
    async def _read_shared_rate(self) -> None:
        shared = await self.client.shared_rate(self.entity_type)
        self._shared_rate = None if shared is None else (shared[0], round(shared[1] * 1000))

    async def _permitted(self, run: Started) -> bool:
        """Wait until the rate limit the whole type shares lets this job's handler start (no
        wait without one). False when the worker closes meanwhile (the job is given back) or
        its lease is lost (the job goes back once the lease has expired)."""
        lease, key = run.lease, self.client.keys.permits(self.entity_type)
        while (rate := self._shared_rate) is not None:
            try:
                wait_ms = await self._while_held(
                    lease, partial(self.client.script, "permit", key, *rate)
                )
            except LeaseLost:
                return False
            if not wait_ms:
                return True
            if await wait_any([self.closing], wait_ms / 1000):
                await self._give_back(lease)
                return False
        return True

    async def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                # First: nothing may delay the renewal.
                leases = [*self.held.values(), *self._stuck.values()]
                for lease in await self.leases.renew(leases, self._cancel_running):
                    if id(lease) not in self._finishing:
                        self._lost(lease, "its renewal was refused")
                info = replace(self.info, entities=list(self.held))
                await self.presence.beat(info, self.settings.heartbeat_ttl)
                reason = await self.presence.close_requested(info)
                if reason:
                    self.close(reason)
                await self._read_shared_rate()
                await self._sweep_if_due()
            except RedisUnavailable as exc:
                log.warning("worker %s heartbeat failed: %s", self.name, exc)

    async def _guard(self) -> None:
        """Count a lease as lost once it comes within the margin of the moment it may expire
        (on this process's clock): its job is stopped before anyone else may start it."""
        while True:
            now = time.monotonic()
            wake = now + self.settings.heartbeat_interval
            for lease in list(self.held.values()):
                deadline = lease.valid_until - self.margin
                if deadline <= now:
                    self._lost(lease, "it could not be renewed in time")
                else:
                    wake = min(wake, deadline)
            await asyncio.sleep(wake - now)

    async def _sweep_if_due(self) -> None:
        """One process per type and interval recovers expired leases and due delayed jobs."""
        lock = self.client.keys.sweep_lock(self.entity_type)
        ms = int(self.settings.heartbeat_interval * 1000)
        if await self.client.call(lambda: self.client.redis.set(lock, self.name, nx=True, px=ms)):
            recovered, _ = await sweep(self.client, self.entity_type)
            if recovered:
                log.warning("recovered %d expired lease(s) of %s", recovered, self.entity_type)

    async def _listen(self) -> None:
        """Close signals (and on Redis Cluster a packed worker's work events) by pub/sub,
        subscribing again after every outage with a growing pause. Only the fast path: the
        heartbeat also checks the signal keys, and waits for work end by their timeout."""
        channels = [self.client.keys.close_channel()]
        if self.entity_id is None and isinstance(self.client.redis, RedisCluster):
            channels.append(self.client.keys.events(self.entity_type))  # no doorbells there
        first, longest = LISTEN_BACKOFF
        pause = first
        while True:
            subscribed = asyncio.Event()
            try:
                await self._listen_once(channels, subscribed)
            except Exception as exc:
                if subscribed.is_set():
                    pause = first
                log.warning(
                    "worker %s: pub/sub listener stopped (%s); subscribing again in %.1fs",
                    self.name,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)

    async def _listen_once(self, channels: list[str], subscribed: asyncio.Event) -> None:
        redis = pubsub_client(self.settings.redis_url, self.settings.call_timeout)
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(*channels)
            subscribed.set()
            self._work_hint.set()  # work events may have been missed while unsubscribed
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                if message["channel"] != channels[0]:
                    self._hints.append(decode_id(message["data"]))
                    self._work_hint.set()
                    continue
                try:
                    body = json.loads(message["data"])
                except ValueError:
                    continue
                if not isinstance(body, dict):
                    continue
                if "cancel" in body:
                    self._cancel_job(str(body["cancel"]))
                elif close_message_applies(body, self.info):
                    self.close("close signal")
        finally:
            with suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with suppress(Exception):
                await redis.aclose()

    def _cancel_job(self, job_id: str) -> None:
        """Stop the handler of `job_id` if this worker runs it: it ends cancelled."""
        for ctx, task in list(self.running.values()):
            if ctx.job.id == job_id and not task.done():
                ctx.stop("cancelled")

    def _cancel_running(self, lease: Lease) -> None:
        """The job `lease` runs is to be cancelled (its renewal said so)."""
        running = self.running.get(lease.entity_id)
        if running is not None and not running[1].done():
            running[0].stop("cancelled")

    def _lost(self, lease: Lease, why: str) -> None:
        if self.held.get(lease.entity_id) is not lease:
            return
        del self.held[lease.entity_id]
        metrics.LEASES_LOST.labels(self.entity_type).inc()
        log.warning(
            "worker %s lost its lease on %s/%r (token %s): %s",
            self.name,
            lease.entity_type,
            lease.entity_id,
            lease.token,
            why,
        )
        running = self.running.get(lease.entity_id)
        if running:
            ctx, task = running
            ctx.lost.set()
            task.cancel()

    # --- waiting without polling ---------------------------------------------------------------
    async def _wait_for_work(self, bells: list[str], timeout: float) -> str | None:
        """Block until a doorbell rings, the timeout passes, or the worker is closing.

        Returns the doorbell key that rang, if any. On Redis Cluster a packed worker cannot
        block on keys of several slots at once and waits for the pub/sub work event instead.
        """
        timeout = max(0.01, min(timeout, MAX_BLOCK_SECONDS))
        if len(bells) > 1 and isinstance(self.client.redis, RedisCluster):
            # Cleared before the claim that came up empty (`_packed_loop`), not here: an event
            # that arrived since then must end this wait at once.
            waiter: asyncio.Future[Any] = asyncio.ensure_future(self._work_hint.wait())
        else:
            waiter = asyncio.ensure_future(self.client.blpop(bells, timeout))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, closing}, timeout=timeout + 1, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fut in (waiter, closing):
                if not fut.done():
                    fut.cancel()
        if waiter in done and not waiter.cancelled() and waiter.exception() is None:
            popped = waiter.result()
            if isinstance(popped, list | tuple) and popped:
                return str(popped[0])
        elif waiter in done and isinstance(waiter.exception(), RedisUnavailable):
            log.warning("worker %s: %s", self.name, waiter.exception())
            await asyncio.sleep(1.0)
        return None

    def _server_now(self) -> float:
        return time.time() + self._clock_offset

    # --- an entity-bound worker ------------------------------------------------------------------
    async def _entity_loop(self, entity_id: str) -> None:
        loop = asyncio.get_running_loop()
        bell = of_entity(self.client.keys.entity(self.entity_type, entity_id), "bell")
        idle_since = loop.time()
        while not self.closing.is_set():
            try:
                claimed = await self.leases.claim(
                    self.entity_type, entity_id, self.held.get(entity_id)
                )
            except LeaseLost:
                self.held.pop(entity_id, None)
                continue
            except RedisUnavailable as exc:
                log.warning("worker %s: %s", self.name, exc)
                if loop.time() - idle_since >= self.settings.idle_timeout:
                    self.held.pop(entity_id, None)  # nothing runs: the lease may just expire
                    self.exit_reason = "idle (Redis unreachable: the lease expires)"
                    return
                await asyncio.sleep(1.0)
                continue
            if isinstance(claimed, Started):
                self.held[entity_id] = claimed.lease
                await self._run_serially(claimed)
                idle_since = loop.time()
                continue
            self._hold(entity_id, claimed)
            idle_for = loop.time() - idle_since
            if idle_for >= self.settings.idle_timeout:
                if await self._release_if_idle(entity_id):
                    self.exit_reason = "idle"
                    return
                continue
            timeout = self.settings.idle_timeout - idle_for
            if claimed.next_due is not None:
                timeout = min(timeout, claimed.next_due - self._server_now() + 0.005)
            await self._wait_for_work([bell], timeout)

    def _hold(self, entity_id: str, idle: Idle) -> None:
        if idle.lease is not None:
            self.held[entity_id] = idle.lease
        else:
            self.held.pop(entity_id, None)

    async def _release_if_idle(self, entity_id: str) -> bool:
        """Let go of the entity unless work arrived; True when the worker holds it no more."""
        lease = self.held.get(entity_id)
        if lease is None:
            return True
        try:
            outcome = await self._while_held(lease, lambda: self.leases.release(lease, "idle"))
        except LeaseLost:
            return True
        if outcome == "busy":
            return False
        if self.held.get(entity_id) is lease:
            del self.held[entity_id]
        return True

    # --- a packed worker -------------------------------------------------------------------------
    async def _packed_loop(self) -> None:
        """Wait for a doorbell with a slot in hand, and hand the slot to a task that claims in
        the bucket that rang and drains what it got, so that the next wait begins at once.
        Every bucket is looked at (the index read) only at start, after a wait that timed out,
        and after a failed claim; after a look that found work, the next wait is short
        (`QUICK_LOOK`; none on Cluster, which has no doorbells), so that work without a
        doorbell (one popped by a worker killed before it claimed, or lost in a failover) is
        all found at once, not one entity per wait."""
        loop = asyncio.get_running_loop()
        buckets = self.client.keys.buckets(self.entity_type)
        bells = [in_bucket(b, "bell") for b in buckets]
        free = asyncio.Semaphore(self.slots)
        drains: set[asyncio.Task[None]] = set()

        def drain(work: Coroutine[Any, Any, None]) -> None:
            task = self._spawn(work, "drain of an entity")
            drains.add(task)
            task.add_done_callback(drains.discard)
            task.add_done_callback(lambda _: free.release())

        self._last_work = loop.time()
        quick = False
        cluster = isinstance(self.client.redis, RedisCluster)
        while not self.closing.is_set():
            if free.locked():
                await self._wait_for_slot(free)
                continue
            await free.acquire()
            self._work_hint.clear()  # work announced from now on is seen by the next wait
            if self._scan:
                self._scan = False
                try:
                    started = await self._claim_any(None)
                except RedisUnavailable as exc:
                    log.warning("worker %s: %s", self.name, exc)
                    free.release()
                    self._scan = True
                    await asyncio.sleep(1.0)
                    continue
                if started is not None:
                    drain(self._drain(started))
                    # More may be there without a doorbell: look again, at once where there
                    # are no doorbells (Cluster), else after a short wait for one.
                    self._scan = cluster
                    quick = not cluster
                    continue
                free.release()
                continue
            if drains:
                self._last_work = loop.time()
            elif loop.time() - self._last_work >= self.settings.idle_timeout:
                free.release()
                self.exit_reason = "idle"
                break
            bucket = self._hinted_bucket()
            if bucket is None:
                idle_for = loop.time() - self._last_work
                wait = QUICK_LOOK if quick else self.settings.idle_timeout - idle_for
                quick = False
                bell = await self._wait_for_work(bells, wait)
                if bell in bells:
                    rang = bells.index(bell)
                    bucket = buckets[rang]
                    # BLPOP pops the first bell it is given that has rung: the buckets after
                    # this one go first next time, or the first few would be served alone
                    # whenever their bells ring faster than the worker claims.
                    bells = bells[rang + 1 :] + bells[: rang + 1]
                    buckets = buckets[rang + 1 :] + buckets[: rang + 1]
                elif (bucket := self._hinted_bucket()) is None:
                    self._scan = not self.closing.is_set()  # timed out: every bucket, once
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
            log.warning("worker %s: %s", self.name, exc)
            self._scan = True
            await asyncio.sleep(1.0)
            return
        if started is not None:
            await self._drain(started)

    async def _wait_for_slot(self, free: asyncio.Semaphore) -> None:
        acquired = asyncio.ensure_future(free.acquire())
        closing = asyncio.ensure_future(self.closing.wait())
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
        if bucket is not None:
            return await self.leases.claim_any(self.entity_type, bucket)
        looked = False
        while True:
            if not self._busy:
                if looked:
                    return None
                self._busy = await self.leases.busy_buckets(self.entity_type)
                looked = True
                continue
            started = await self.leases.claim_any(self.entity_type, self._busy[0])
            if started is not None:
                return started  # the bucket stays first: it may have more
            self._busy.pop(0)

    def _hinted_bucket(self) -> str | None:
        """The bucket of an entity a work event named, if any (on Redis Cluster, where a
        packed worker cannot block on the doorbells of every bucket)."""
        if self._hints:
            return self.client.keys.entity_bucket(self.entity_type, self._hints.pop())
        return None

    async def _drain(self, run: Started) -> None:
        """Run jobs one after another: the entity's until it runs dry, then, handed over in the
        same script that finished the last one, those of the next claimable entity of the
        bucket, until there is none, the worker closes, or `HANDOVERS` are used up (then the
        last entity's lease is released when it runs dry, and the slot waits for a doorbell)."""
        loop = asyncio.get_running_loop()
        most, seconds = HANDOVERS
        hand_over_until = loop.time() + seconds
        try:
            while True:
                lease = run.lease
                self.held[lease.entity_id] = lease
                then: Next = "any" if most > 0 and loop.time() < hand_over_until else "release"
                nxt = await self._run_job(run, then)
                if nxt is not None and nxt.lease is lease:
                    run = nxt
                    continue
                most -= 1
                if self.held.get(lease.entity_id) is lease:
                    if self.closing.is_set():
                        await self._give_back(lease)  # finished with "none": the lease was kept
                    else:
                        del self.held[lease.entity_id]  # released by the script that finished
                if nxt is None:
                    return
                run = nxt
        finally:
            self._last_work = loop.time()  # idle from the end of a drain, however long it was

    # --- running jobs ----------------------------------------------------------------------------
    async def _run_serially(self, run: Started | None) -> None:
        while run is not None:
            run = await self._run_job(run, "same")

    @logs.job_context
    async def _run_job(self, run: Started, claim_next: Next) -> Started | None:
        """Run one job's handler and record its outcome; returns the next job, if started
        (`Leases.finish`'s `claim_next`; none once the worker is closing)."""
        job, lease = run.job, run.lease
        counts = metrics.job_metrics(job.entity_type, job.name)
        where = f"job {job.id} of {job.entity_type}/{job.entity_id!r} attempt {job.attempt}"
        counts.started.inc()
        if job.started_at:
            counts.wait.observe(max(0.0, job.started_at - job.enqueued_at))
        outcome: Outcome
        retry_delay = 0.0
        stuck = False
        began = time.perf_counter()
        if self._shared_rate is not None and not await self._permitted(run):
            return None
        try:
            handler = self.registry.get(job.name)
            payload = handler.parse(job.payload_json)
        except (UnknownHandler, PermanentError) as exc:
            log.error("%s: %s (dead-lettered, no retry)", where, exc)
            outcome, value = "dead", str(exc)
        else:
            ctx = JobContext(
                job=job,
                fencing_token=lease.fencing_token,
                worker=self.name,
                client=self.client,
                log=logging.LoggerAdapter(log, {"job_id": job.id, "entity": job.entity_id}),
            )
            limit = job.timeout or handler.timeout or self.settings.job_timeout or None
            run_handler = ctx.locks.run(handler(ctx, payload))
            if self.settings.tracing:
                run_handler = tracing.traced(job, run_handler)
            task = asyncio.create_task(run_handler)
            self.running[lease.entity_id] = (ctx, task)
            self.watchdog.watch(task, lambda: lease.valid_until - self.margin, where)
            task.add_done_callback(self.watchdog.unwatch)
            self._in_flight.inc()
            try:
                result = await self._until_done_or_stopped(ctx, task, limit)
                value = _result_json(result) if handler.is_query else "null"
                outcome = "completed"
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                if ctx.lost.is_set() or ctx.stop_reason is None:
                    await self._interrupted_job(run, ctx, where)
                    return None
                outcome, value, retry_delay = self._stopped(job, ctx, limit, where)
            except _Stuck:
                stuck = True
                outcome, value, retry_delay = self._stopped(job, ctx, limit, where)
            except PermanentError as exc:
                log.error("%s failed permanently: %s", where, exc)
                outcome, value = "dead", f"PermanentError: {exc}"
            except Exception as exc:
                if ctx.stop_reason is not None:  # it turned its cancellation into an error
                    outcome, value, retry_delay = self._stopped(job, ctx, limit, where)
                else:
                    value = _error_text(exc)
                    metrics.JOBS_FAILED.labels(*counts.labels).inc()
                    outcome, retry_delay = self._failed(job, where, traceback.format_exc())
            finally:
                if not stuck:
                    self.running.pop(lease.entity_id, None)
                    await ctx.locks.release_all()  # before the outcome: the next job may want them
                self._in_flight.dec()
                counts.duration.observe(time.perf_counter() - began)
        if stuck:
            await self._finish_stuck(run, outcome, value, retry_delay, where)
            return None
        return await self._finish(run, outcome, value, retry_delay, claim_next, where)

    async def _until_done_or_stopped(
        self, ctx: JobContext, task: asyncio.Task[Any], limit: float | None
    ) -> Any:
        """The handler's return value. Past its time limit (`limit` seconds), or when its job
        is cancelled (`_cancel_running`), the handler is cancelled (`ctx.stop`); `_Stuck` when
        it has not ended a heartbeat TTL after that."""
        loop = asyncio.get_running_loop()
        # One future that the handler's end, the time limit and `ctx.stop` each resolve: a
        # waiter for `ctx.stopping` would be a task more per job.
        woken = loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        task.add_done_callback(wake)
        ctx.on_stop = wake
        timer = None if limit is None else loop.call_later(limit, wake)
        try:
            if not ctx.stopping.is_set():
                await woken
            if not task.done():
                ctx.stop("timeout")
                task.cancel()
                await asyncio.wait({task}, timeout=self.settings.heartbeat_ttl)
        except asyncio.CancelledError:
            task.cancel()  # the worker itself is being cancelled
            raise
        finally:
            ctx.on_stop = None
            task.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
        if not task.done():
            raise _Stuck
        return task.result()

    def _failed(self, job: Job, where: str, error: str) -> tuple[Outcome, float]:
        """A failed attempt's outcome: another attempt after its backoff, or the dead letters."""
        if job.attempt >= job.max_attempts:
            log.error("%s failed, no attempts left (dead-lettered): %s", where, error)
            return "dead", 0.0
        retry_delay = job.backoff.seconds(job.attempt)
        log.warning("%s failed, retry in %.2fs: %s", where, retry_delay, error)
        return "retry", retry_delay

    def _stopped(
        self, job: Job, ctx: JobContext, limit: float | None, where: str
    ) -> tuple[Outcome, str, float]:
        """The outcome of a job whose handler was stopped (`ctx.stop_reason`)."""
        labels = (job.entity_type, job.name)
        if ctx.stop_reason == "cancelled":
            log.warning("%s cancelled on request", where)
            return "cancelled", "cancelled on request", 0.0
        metrics.JOBS_TIMED_OUT.labels(*labels).inc()
        metrics.JOBS_FAILED.labels(*labels).inc()
        error = f"JobTimedOut: {JobTimedOut(limit or 0)}"
        outcome, retry_delay = self._failed(job, where, error)
        return outcome, error, retry_delay

    async def _finish_stuck(
        self, run: Started, outcome: Outcome, value: str, retry_delay: float, where: str
    ) -> None:
        """Record the outcome of a job whose handler was stopped and did not end, keeping the
        lease: the handler may still be running (a thread cannot be stopped), so the entity
        must stay held until this process has ended. The worker closes and then ends the
        process (`run`); the lease expires a heartbeat TTL later."""
        lease = run.lease
        log.error(
            "%s: the handler did not stop within %ss of being cancelled; recorded as %s, the "
            "worker closes and its process ends, and the entity is free once the lease expires",
            where,
            self.settings.heartbeat_ttl,
            outcome,
        )
        await self._finish(run, outcome, value, retry_delay, "none", where)
        if self.held.get(lease.entity_id) is lease:
            del self.held[lease.entity_id]
            self._stuck[lease.entity_id] = lease
        self.close(f"the handler of {where} did not stop when cancelled")

    async def _interrupted_job(self, run: Started, ctx: JobContext, where: str) -> None:
        if ctx.lost.is_set():
            log.warning("%s abandoned: lease lost, the job is back in the queue", where)
            return
        log.warning("%s interrupted by shutdown: given back to the head of the queue", where)
        await self._give_back(run.lease)

    async def _finish(
        self,
        run: Started,
        outcome: Outcome,
        value: str,
        retry_delay: float,
        claim_next: Next,
        where: str,
    ) -> Started | None:
        def finish() -> Awaitable[Started | None]:
            then: Next = "none" if self.closing.is_set() else claim_next
            return self.leases.finish(run, outcome, value, retry_delay=retry_delay, claim_next=then)

        # A packed worker's finish may release the lease (the entity ran dry): a renewal that
        # Redis runs after it is refused, and that is no loss.
        self._finishing.add(id(run.lease))
        try:
            nxt = await self._while_held(run.lease, finish)
        except LeaseLost:
            self._lost(run.lease, "its outcome was refused")
            log.warning("%s: outcome %s not recorded, lease lost; it runs again", where, outcome)
            return None
        finally:
            self._finishing.discard(id(run.lease))
        metrics.job_metrics(run.job.entity_type, run.job.name).outcome(outcome).inc()
        if outcome == "completed":
            log.info("%s completed", where)
        return nxt


def _error_text(exc: BaseException) -> str:
    """What a failed attempt records: "Type: message", then its traceback, trimmed to
    `MAX_ERROR_CHARS` by cutting out the middle (where the call begins and where it failed
    are kept)."""
    text = f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"
    if len(text) <= MAX_ERROR_CHARS:
        return text
    cut = "\n[...]\n"
    head = MAX_ERROR_CHARS // 4
    return text[:head] + cut + text[-(MAX_ERROR_CHARS - head - len(cut)) :]


def _result_json(result: Any) -> str:
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    try:
        return to_json(result)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"query result is not JSON-serialisable: {exc}") from None
