"""The local backend: carries out the reconciler's plan with `aq worker` child processes.

`LocalPool` watches one pool's entity type: it wakes on the "entity has work" event (within
milliseconds), when a worker process exits, and at least every heartbeat interval; each time it
reads the index, asks `reconciler.plan` what to do, and does it. Scale-down and shutdown go
through the workers' own graceful close (a close signal in Redis, or SIGTERM), so a busy worker
finishes or gives back its job before it goes. It also sweeps expired leases, so a killed
worker's job comes back even when no other worker of the type is running, and fires the type's
scheduled jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import IO

from ..aio import cancel_and_wait, wait_any
from ..client import Client
from ..config import Settings
from ..errors import RedisUnavailable
from ..index_reads import IndexReads
from ..presence import Presence
from . import health
from .limits import StartLimiter
from .names import worker_name
from .reconciler import (
    Action,
    Backoff,
    CloseWorker,
    ForgetWorker,
    Phase,
    Plan,
    StartPacked,
    StartWorker,
    WorkerState,
    desired_workers,
    plan,
)
from .spec import Pool
from .watch import sweep_leases, tick_schedules, wake_on_work

log = logging.getLogger(__name__)


def settings_for(pool: Pool, redis_url: str) -> Settings:
    """The settings of a local pool's client and of the workers it starts: the manifest's
    Redis prefix and timing, on `redis_url`."""
    return replace(
        Settings.from_env({**os.environ, **pool.spec.timing.worker_env()}),
        redis_url=redis_url,
        prefix=os.environ.get("AQ_PREFIX") or pool.spec.redis.prefix,
    )


@dataclass
class LocalWorker:
    name: str
    entity_id: str | None
    slot: int
    proc: asyncio.subprocess.Process
    started_at: float
    closing: bool = False

    @property
    def phase(self) -> Phase:
        if self.proc.returncode is None:
            return "closing" if self.closing else "running"
        return "succeeded" if self.proc.returncode == 0 else "failed"

    def state(self) -> WorkerState:
        return WorkerState(self.name, self.entity_id, self.slot, self.phase, self.started_at)


class LocalPool:
    """Runs one EntityWorkerPool with local worker processes."""

    def __init__(
        self,
        pool: Pool,
        client: Client,
        *,
        worker_output: IO[bytes] | None = None,
        on_action: Callable[[Action], None] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.pool = pool
        self.spec = pool.spec
        self.client = client
        self.presence = Presence(client)
        self.workers: dict[str, LocalWorker] = {}
        self.backoff: dict[str | None, Backoff] = {}
        self.limiter = StartLimiter(self.spec.workers.max_starts_per_second)
        self.worker_output = worker_output
        self.on_action = on_action
        self.extra_env = extra_env or {}
        self.wake = asyncio.Event()
        self.last_plan = Plan([])
        self._watchers: set[asyncio.Task[None]] = set()

    # --- the control loop ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until `stop` is set, then shut every worker down gracefully."""
        name, entity_type = self.pool.metadata.name, self.spec.entity_type
        helpers = [
            asyncio.create_task(wake_on_work(self.client, entity_type, self.wake, name)),
            asyncio.create_task(
                sweep_leases(
                    self.client,
                    entity_type,
                    self.spec.timing.heartbeat_interval_seconds,
                    self.wake,
                    name,
                )
            ),
            asyncio.create_task(tick_schedules(self.client, entity_type)),
        ]
        try:
            while not stop.is_set():
                self.wake.clear()  # before, not after: a wake-up during the reconcile counts
                try:
                    await self.reconcile_once()
                except RedisUnavailable as exc:
                    log.warning("pool %s: %s", self.pool.metadata.name, exc)
                timing = self.spec.timing
                await wait_any(
                    (self.wake, stop),
                    min(timing.resync_interval_seconds, timing.heartbeat_interval_seconds),
                )
        finally:
            await cancel_and_wait(helpers)
            await self.shutdown()

    async def reconcile_once(self) -> Plan:
        now = time.time()
        entities = await IndexReads(self.client).work_index(self.spec.entity_type)
        states = [w.state() for w in self.workers.values()]
        desired = desired_workers(self.spec, entities, states, self.backoff, now)
        result = plan(self.spec, entities, states, self.backoff, now, self.limiter.budget())
        self.backoff = dict(result.backoff)
        for action in result.actions:
            await self._carry_out(action)
        self.last_plan = result
        namespace, name = self.pool.metadata.namespace or "default", self.pool.metadata.name
        found = await health.observe(self.client, self.spec.entity_type, entities, now)
        health.publish(namespace, name, found)
        ready = sum(1 for s in states if s.phase == "running")
        info = health.PoolInfo(namespace, name, self.spec.entity_type, desired, ready, now)
        await health.announce(self.client, info, self.spec.timing.resync_interval_seconds)
        return result

    # --- actions -----------------------------------------------------------------------------
    async def _carry_out(self, action: Action) -> None:
        if self.on_action is not None:
            self.on_action(action)
        if isinstance(action, StartWorker):
            await self._start(action.entity_id, action.slot)
        elif isinstance(action, StartPacked):
            await self._start(None, action.index)
        elif isinstance(action, CloseWorker):
            worker = self.workers.get(action.name)
            if worker is not None and not worker.closing:
                worker.closing = True
                log.info("closing worker %s (%s)", action.name, action.reason)
                await self.presence.close_worker(action.name)
        elif isinstance(action, ForgetWorker):
            worker = self.workers.pop(action.name, None)
            if worker is not None and action.failed:
                log.warning("worker %s exited with code %s", action.name, worker.proc.returncode)

    def _command(self, entity_id: str | None, name: str) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "atomicqueues.cli",
            "worker",
            "--handlers",
            self.spec.handlers,
            "--entity-type",
            self.spec.entity_type,
            "--name",
            name,
        ]
        if entity_id is None:
            return [*cmd, "--slots", str(self.spec.placement.slots)]
        return [*cmd, "--entity-id", entity_id]

    def _env(self) -> dict[str, str]:
        """A worker's environment: this process's, with the pool's Redis and timing. Not its
        AQ_METRICS_PORT: the local workers share one host, where only the first could serve
        it (the pool's own gauges are `aq up --metrics-port`'s)."""
        settings = self.client.settings
        return {
            **{k: v for k, v in os.environ.items() if k != "AQ_METRICS_PORT"},
            "AQ_REDIS_URL": settings.redis_url,
            "AQ_PREFIX": settings.prefix,
            **self.spec.timing.worker_env(),
            **self.extra_env,
        }

    async def _start(self, entity_id: str | None, slot: int) -> None:
        self.limiter.spend(1)
        name = worker_name(self.pool.metadata.name, entity_id, slot)
        out = self.worker_output if self.worker_output is not None else None
        proc = await asyncio.create_subprocess_exec(
            *self._command(entity_id, name),
            env=self._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # Ctrl-C reaches `aq up`, which closes workers gracefully
        )
        self.workers[name] = LocalWorker(name, entity_id, slot, proc, time.time())
        where = "packed" if entity_id is None else repr(entity_id)
        log.info("started worker %s for %s slot %d (pid %d)", name, where, slot, proc.pid)
        watcher = asyncio.create_task(self._wake_on_exit(proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _wake_on_exit(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self.wake.set()

    # --- shutdown ----------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """SIGTERM every worker (each finishes or gives back its job), SIGKILL stragglers."""
        live = [w for w in self.workers.values() if w.proc.returncode is None]
        for w in live:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        t = self.spec.timing
        deadline = t.shutdown_grace_seconds + t.heartbeat_ttl_seconds + 2.0
        if live:
            log.info("waiting for %d worker(s) to finish (at most %.0fs)", len(live), deadline)
            await asyncio.wait(
                [asyncio.ensure_future(w.proc.wait()) for w in live], timeout=deadline
            )
            for w in live:
                if w.proc.returncode is None:
                    log.warning("worker %s did not stop in time: killed", w.name)
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
                    await w.proc.wait()
        await cancel_and_wait(list(self._watchers))
        self.workers.clear()
