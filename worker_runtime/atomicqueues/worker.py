"""The worker: runs the jobs of one entity (or, packed, of many), one at a time per entity.

An entity-bound worker (`entity_id` given) runs its entity's jobs (`EntityLoop`,
entity_loop.py); a packed worker (`entity_id` None, `slots` K) runs those of up to K entities
of its type that have work and no holder (`PackedLoop`, packed_loop.py). Both run each job in
the worker's `JobRunner` (runner.py), which finishes a job and starts the next one in one round
trip.

This module is the worker's life cycle. A heartbeat renews the leases and the registration
every interval. A lease the worker can no longer be sure of counts as lost before Redis could
give it to anyone else: when its renewal was refused, or when, on the worker's own clock, it has
come within `Settings.lease_margin` of the moment it may expire (leases.py) because Redis could
not be reached. A lost lease cancels the handler it covered (`ctx.lost` is set; Redis gives the
job back once the lease has expired); a handler that does not give control back ends the
process (watchdog.py). Every loop of the worker retries what Redis could not do or ends the
worker (exit code 1) so its leases end: none dies silently while its leases are renewed. On
SIGTERM/SIGINT or a close signal the worker stops taking jobs, lets the running ones finish
within the grace period, gives back any that do not (at once, to the head of the queue),
releases its leases and deregisters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Coroutine
from contextlib import suppress
from dataclasses import replace
from typing import Any

from .aio import cancel_and_wait
from .client import Client
from .connection import pubsub_client
from .entity_loop import EntityLoop
from .errors import RedisUnavailable
from .keys import decode_id
from .leases import sweep
from .memory import eviction_warning
from .packed_loop import PackedLoop
from .presence import Presence, WorkerInfo, close_message_applies
from .registry import Registry
from .runner import JobRunner

log = logging.getLogger(__name__)

LISTEN_BACKOFF = (0.1, 5.0)
"""First and longest pause before the pub/sub listener subscribes again after an outage."""


def default_name(node: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in node)[:40] or "node"
    return f"{safe}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs jobs of `entity_type`: of one entity, or of up to `slots` entities (packed).

    Its jobs run in its `runner` (runner.py); its loop (`EntityLoop` or `PackedLoop`) decides
    what to claim; the worker itself runs that loop to its end, renews the leases, and listens
    for close signals.
    """

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
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.slots = 1 if entity_id is not None else slots
        self.name = name or default_name(self.settings.node)
        self.runner = JobRunner(client, registry, entity_type, self.name, self.close)
        self.held = self.runner.held
        """The leases the worker holds, by entity id (the runner's)."""
        self.closing = self.runner.closing
        self.loop: EntityLoop | PackedLoop = (
            EntityLoop(self.runner, entity_id)
            if entity_id is not None
            else PackedLoop(self.runner, self.slots, self._spawn)
        )
        self.presence = Presence(client)
        self.close_reason: str | None = None
        self.failed: BaseException | None = None
        """The error a loop of the worker ended with; the worker then stops (exit code 1)."""
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
        self.runner.clock_offset = started - time.time()
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
        await self.runner.read_shared_rate()
        self.runner.watchdog.start()
        helpers = [
            self._spawn(self._heartbeat(), "heartbeat"),
            self._spawn(self._guard(), "lease guard"),
            self._spawn(self._listen(), "pub/sub listener"),
        ]
        work = self._spawn(self.loop.run(), "work loop")
        try:
            await self._until_done(work)
        finally:
            await cancel_and_wait(helpers)
            await self.runner.release_all()
            try:
                await self.presence.leave(replace(self.info, entities=list(self.held)))
            except RedisUnavailable as exc:
                log.warning("worker %s could not deregister: %s", self.name, exc)
            self.runner.watchdog.stop()
        reason = self.close_reason or self.loop.exit_reason or "done"
        log.info("worker %s stopped: %s", self.name, reason)
        if self.runner.stuck:
            self.runner.watchdog.end(
                f"worker {self.name}: a handler did not stop when cancelled ({reason}); the "
                f"process ends, and the lease on {sorted(self.runner.stuck)} expires after it"
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
                    for _, task in list(self.runner.running.values()):
                        task.cancel()
                    done, _ = await asyncio.wait({work}, timeout=self.settings.heartbeat_ttl)
                    if not done:
                        work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        finally:
            closing.cancel()

    # --- heartbeat, lease guard, close signals, sweeping -----------------------------------------
    async def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                # First: nothing may delay the renewal.
                leases = [*self.held.values(), *self.runner.stuck.values()]
                for lease in await self.runner.leases.renew(leases, self.runner.cancel_running):
                    if id(lease) not in self.runner.finishing:
                        self.runner.lost(lease, "its renewal was refused")
                info = replace(self.info, entities=list(self.held))
                await self.presence.beat(info, self.settings.heartbeat_ttl)
                reason = await self.presence.close_requested(info)
                if reason:
                    self.close(reason)
                await self.runner.read_shared_rate()
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
                deadline = lease.valid_until - self.runner.margin
                if deadline <= now:
                    self.runner.lost(lease, "it could not be renewed in time")
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
        if isinstance(self.loop, PackedLoop) and self.loop.cluster:
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
            if isinstance(self.loop, PackedLoop):
                self.loop.hint(None)  # work events may have been missed while unsubscribed
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                if message["channel"] != channels[0]:
                    if isinstance(self.loop, PackedLoop):
                        self.loop.hint(decode_id(message["data"]))
                    continue
                try:
                    body = json.loads(message["data"])
                except ValueError:
                    continue
                if not isinstance(body, dict):
                    continue
                if "cancel" in body:
                    self.runner.cancel_job(str(body["cancel"]))
                elif close_message_applies(body, self.info):
                    self.close("close signal")
        finally:
            with suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with suppress(Exception):
                await redis.aclose()
