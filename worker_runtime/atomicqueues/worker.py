"""The worker: runs the jobs of one entity (or, packed, of many), one at a time per entity.

An entity-bound worker (`entity_id` given) claims its entity's jobs under a lease, blocks on the
entity's doorbell list when there is nothing to do (no polling), and exits after `idle_timeout`
without work, releasing its lease in the same script that checks the queue is empty. A packed
worker (`entity_id` None, `slots` K) claims any entities of its type that have work and no
holder, up to K at a time, runs each one's jobs serially, and lets go of an entity when it runs
dry. Both finish a job and start the next one in one round trip.

A heartbeat renews the leases and the registration every interval; a lost lease cancels the
handler it covered (its job is already back in the queue). On SIGTERM/SIGINT or a close signal
the worker stops taking jobs, lets the running ones finish within the grace period, gives back
any that do not (at once, to the head of the queue), releases its leases and deregisters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import traceback
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster

from . import metrics
from .aio import cancel_and_wait
from .client import Client
from .connection import pubsub_client
from .context import JobContext
from .errors import LeaseLost, PermanentError, RedisUnavailable, UnknownHandler
from .leases import Idle, Lease, Leases, Outcome, Started, sweep
from .presence import Presence, WorkerInfo, close_message_applies
from .registry import Registry

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000
MAX_BLOCK_SECONDS = 30.0


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
        self._work_hint = asyncio.Event()
        self._clock_offset = 0.0
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
        helpers = [
            asyncio.create_task(self._heartbeat(), name="aq-heartbeat"),
            asyncio.create_task(self._listen(), name="aq-close-listener"),
        ]
        loop: Coroutine[Any, Any, None] = (
            self._entity_loop(self.entity_id) if self.entity_id is not None else self._packed_loop()
        )
        work = asyncio.create_task(loop, name="aq-work")
        try:
            await self._until_done(work)
        finally:
            await cancel_and_wait(helpers)
            await self._release_all()
            try:
                await self.presence.leave(replace(self.info, entities=list(self.held)))
            except RedisUnavailable as exc:
                log.warning("worker %s could not deregister: %s", self.name, exc)
        reason = self.close_reason or self.exit_reason or "done"
        log.info("worker %s stopped: %s", self.name, reason)
        return reason

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
            if work.done() and not work.cancelled() and work.exception():
                raise work.exception()  # type: ignore[misc]
        finally:
            closing.cancel()

    async def _release_all(self) -> None:
        for eid, lease in list(self.held.items()):
            try:
                await self.leases.release(lease, "shutdown")
            except RedisUnavailable as exc:
                log.warning(
                    "lease on %s/%r not released (%s); it expires", lease.entity_type, eid, exc
                )
            self.held.pop(eid, None)

    # --- heartbeat, close signals, sweeping ------------------------------------------------------
    async def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                info = replace(self.info, entities=list(self.held))
                await self.presence.beat(info, self.settings.heartbeat_ttl)
                leases = list(self.held.values())
                for lease in await self.leases.renew(leases):
                    self._lost(lease)
                reason = await self.presence.close_requested(info)
                if reason:
                    self.close(reason)
                await self._sweep_if_due()
            except RedisUnavailable as exc:
                log.warning("worker %s heartbeat failed: %s", self.name, exc)

    async def _sweep_if_due(self) -> None:
        """One process per type and interval recovers expired leases and due delayed jobs."""
        lock = self.client.keys.sweep_lock(self.entity_type)
        ms = int(self.settings.heartbeat_interval * 1000)
        if await self.client.call(lambda: self.client.redis.set(lock, self.name, nx=True, px=ms)):
            recovered, _ = await sweep(self.client, self.entity_type)
            if recovered:
                log.warning("recovered %d expired lease(s) of %s", recovered, self.entity_type)

    async def _listen(self) -> None:
        """Close signals by pub/sub (fast path); the heartbeat also checks the signal keys."""
        redis = pubsub_client(self.settings.redis_url)
        pubsub = redis.pubsub()
        channels = [self.client.keys.close_channel()]
        if self.entity_id is None:
            channels.append(self.client.keys.events(self.entity_type))
        try:
            await pubsub.subscribe(*channels)
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                if message["channel"] != channels[0]:
                    self._work_hint.set()
                    continue
                try:
                    body = json.loads(message["data"])
                except ValueError:
                    continue
                if isinstance(body, dict) and close_message_applies(body, self.info):
                    self.close("close signal")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pub/sub is only the fast path: the heartbeat still works
            log.warning("worker %s close listener stopped: %s", self.name, exc)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await redis.aclose()

    def _lost(self, lease: Lease) -> None:
        if self.held.get(lease.entity_id) is not lease:
            return
        del self.held[lease.entity_id]
        metrics.LEASES_LOST.labels(self.entity_type).inc()
        log.warning(
            "worker %s lost its lease on %s/%r (token %s)",
            self.name,
            lease.entity_type,
            lease.entity_id,
            lease.token,
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
            self._work_hint.clear()
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
        bell = self.client.keys.entity(self.entity_type, entity_id) + "bell"
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
        outcome = await self.leases.release(lease, "idle")
        if outcome == "busy":
            return False
        self.held.pop(entity_id, None)
        return True

    # --- a packed worker -------------------------------------------------------------------------
    async def _packed_loop(self) -> None:
        loop = asyncio.get_running_loop()
        keys = self.client.keys
        buckets = keys.buckets(self.entity_type)
        bells = [b + "bell" for b in buckets]
        free = asyncio.Semaphore(self.slots)
        drains: set[asyncio.Task[None]] = set()
        idle_since = loop.time()
        first = random.randrange(len(buckets))
        while not self.closing.is_set():
            if free.locked():
                await self._wait_for_slot(free)
                continue
            await free.acquire()
            started, first = await self._claim_any(buckets, first)
            if started is not None:
                task = asyncio.create_task(self._drain(started))
                drains.add(task)
                task.add_done_callback(drains.discard)
                task.add_done_callback(lambda _: free.release())
                continue
            free.release()
            if drains:
                idle_since = loop.time()
            elif loop.time() - idle_since >= self.settings.idle_timeout:
                self.exit_reason = "idle"
                break
            rang = await self._wait_for_work(
                bells, self.settings.idle_timeout - (loop.time() - idle_since)
            )
            first = bells.index(rang) if rang in bells else random.randrange(len(buckets))
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)

    async def _wait_for_slot(self, free: asyncio.Semaphore) -> None:
        acquired = asyncio.ensure_future(free.acquire())
        closing = asyncio.ensure_future(self.closing.wait())
        await asyncio.wait({acquired, closing}, return_when=asyncio.FIRST_COMPLETED)
        closing.cancel()
        if acquired.done() and not acquired.cancelled():
            free.release()
        else:
            acquired.cancel()

    async def _claim_any(self, buckets: list[str], first: int) -> tuple[Started | None, int]:
        """Claim from the first bucket that has work, starting at bucket `first`.

        Returns what was claimed and the bucket to start from next time: the one that just gave
        work (it likely has more). Only buckets the index shows work in are tried.
        """
        try:
            busy = set(await self.leases.busy_buckets(self.entity_type))
            for i in range(len(buckets)):
                index = (first + i) % len(buckets)
                if buckets[index] not in busy:
                    continue
                started = await self.leases.claim_any(self.entity_type, buckets[index])
                if started is not None:
                    return started, index
        except RedisUnavailable as exc:
            log.warning("worker %s: %s", self.name, exc)
            await asyncio.sleep(1.0)
        return None, first

    async def _drain(self, started: Started) -> None:
        """Run one entity's jobs until it runs dry, then let go of it."""
        entity_id = started.lease.entity_id
        self.held[entity_id] = started.lease
        run: Started | Idle = started
        while isinstance(run, Started):
            await self._run_serially(run)
            if self.closing.is_set() or entity_id not in self.held:
                return
            if await self._release_if_idle(entity_id):
                return
            try:
                run = await self.leases.claim(self.entity_type, entity_id, self.held[entity_id])
            except LeaseLost:
                self.held.pop(entity_id, None)
                return
        self._hold(entity_id, run)
        lease = self.held.pop(entity_id, None)
        if lease is not None:
            await self.leases.release(lease, "shutdown")

    # --- running jobs ----------------------------------------------------------------------------
    async def _run_serially(self, run: Started | None) -> None:
        while run is not None:
            run = await self._run_job(run)

    async def _run_job(self, run: Started) -> Started | None:
        """Run one job's handler and record its outcome; returns the next job, if started."""
        job, lease = run.job, run.lease
        labels = (job.entity_type, job.name)
        where = f"job {job.id} of {job.entity_type}/{job.entity_id!r} attempt {job.attempt}"
        metrics.JOBS_STARTED.labels(*labels).inc()
        if job.started_at:
            metrics.JOB_WAIT.labels(*labels).observe(max(0.0, job.started_at - job.enqueued_at))
        outcome: Outcome
        retry_delay = 0.0
        began = time.perf_counter()
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
            task = asyncio.create_task(ctx.locks.run(handler(ctx, payload)))
            self.running[lease.entity_id] = (ctx, task)
            metrics.IN_FLIGHT.labels(self.entity_type).inc()
            try:
                result = await task
                value = _result_json(result) if handler.is_query else "null"
                outcome = "completed"
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    task.cancel()
                    raise
                await self._interrupted_job(run, ctx, where)
                return None
            except PermanentError as exc:
                log.error("%s failed permanently: %s", where, exc)
                outcome, value = "dead", f"PermanentError: {exc}"
            except Exception as exc:
                value = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                tb = traceback.format_exc()
                metrics.JOBS_FAILED.labels(*labels).inc()
                if job.attempt >= job.max_attempts:
                    log.error("%s failed, no attempts left (dead-lettered): %s", where, tb)
                    outcome = "dead"
                else:
                    retry_delay = job.backoff.seconds(job.attempt)
                    log.warning("%s failed, retry in %.2fs: %s", where, retry_delay, tb)
                    outcome = "retry"
            finally:
                self.running.pop(lease.entity_id, None)
                await ctx.locks.release_all()  # before the outcome: the next job may want them
                metrics.IN_FLIGHT.labels(self.entity_type).dec()
                metrics.JOB_DURATION.labels(*labels).observe(time.perf_counter() - began)
        return await self._finish(run, outcome, value, retry_delay, where)

    async def _interrupted_job(self, run: Started, ctx: JobContext, where: str) -> None:
        if ctx.lost.is_set():
            log.warning("%s abandoned: lease lost, the job is back in the queue", where)
            return
        log.warning("%s interrupted by shutdown: given back to the head of the queue", where)
        lease = self.held.pop(run.lease.entity_id, None)
        if lease is not None:
            await self.leases.release(lease, "shutdown")

    async def _finish(
        self, run: Started, outcome: Outcome, value: str, retry_delay: float, where: str
    ) -> Started | None:
        labels = (run.job.entity_type, run.job.name)
        deadline = time.monotonic() + self.settings.heartbeat_ttl
        while True:
            try:
                nxt = await self.leases.finish(
                    run,
                    outcome,
                    value,
                    retry_delay=retry_delay,
                    claim_next=not self.closing.is_set(),
                )
                break
            except LeaseLost:
                self._lost(run.lease)
                log.warning("%s: outcome %s refused, lease lost", where, outcome)
                return None
            except RedisUnavailable as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "%s: outcome %s not recorded (%s); the job will run again",
                        where,
                        outcome,
                        exc,
                    )
                    self.held.pop(run.lease.entity_id, None)
                    return None
                await asyncio.sleep(0.2)
        {
            "completed": metrics.JOBS_COMPLETED,
            "retry": metrics.JOBS_RETRIED,
            "dead": metrics.JOBS_DEAD,
        }[outcome].labels(*labels).inc()
        return nxt


def _result_json(result: Any) -> str:
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    try:
        return json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"query result is not JSON-serialisable: {exc}") from None
