"""What a handler receives besides its payload: the job, the lease, the fencing token, and
resource locks that last as long as the job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import LockNotOwned, RedisUnavailable
from .jobs import Job, encode_payload
from .lock_holding import Renewal, acquire_within, release_quietly, uncancel
from .lock_types import Lock, LockResult, Spread
from .locks import Locks

if TYPE_CHECKING:
    from .client import Client

T = TypeVar("T")
log = logging.getLogger(__name__)

JOB_OWNER_TYPE = "job"
MAX_PROGRESS_BYTES = 4096


class JobLocks:
    """The resource locks of one job (owner `WORKER:JOB_ID`, owner type "job").

    Each lock is renewed in the background while the job runs and released by the worker when
    the job ends, whatever the outcome; if the worker dies, its locks expire by their TTL. A
    lock found gone while the job runs sets `lock.lost` and cancels the handler, and the job
    fails with `LockNotOwned` (retried after its backoff like any error).
    """

    def __init__(self, locks: Locks, owner_id: str, default_ttl: float) -> None:
        self.locks = locks
        self.owner_id = owner_id
        self.default_ttl = default_ttl
        self._held: dict[tuple[str, str], Renewal] = {}
        self._renewals: list[Renewal] = []  # every one of the job, to count their cancellations
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0

    @property
    def held(self) -> list[Lock]:
        return [renewal.lock for renewal in self._held.values()]

    async def lock(
        self, resource_type: str, resource_id: str, *, ttl: float | None = None, wait: float = 0.0
    ) -> Lock:
        """Hold `resource_id` until the job ends (see `JobContext.lock`)."""
        mine = self._held.get((resource_type, resource_id))
        if mine is not None and not mine.lock.lost.is_set():
            return mine.lock
        seconds = self.default_ttl if ttl is None else ttl

        def attempt() -> Awaitable[LockResult]:
            return self.locks.acquire(
                resource_type, resource_id, self.owner_id, JOB_OWNER_TYPE, seconds
            )

        return self._keep(await acquire_within(resource_type, attempt, wait), seconds)

    async def lock_any(
        self,
        resource_type: str,
        candidate_ids: Sequence[str],
        *,
        ttl: float | None = None,
        spread: Spread = "first",
        wait: float = 0.0,
    ) -> Lock:
        """Hold the first free resource of a pool until the job ends (see `Locks.acquire_any`)."""
        seconds = self.default_ttl if ttl is None else ttl

        def attempt() -> Awaitable[LockResult]:
            return self.locks.acquire_any(
                resource_type, candidate_ids, self.owner_id, JOB_OWNER_TYPE, seconds, spread
            )

        return self._keep(await acquire_within(resource_type, attempt, wait), seconds)

    def _keep(self, lock: Lock, ttl: float) -> Lock:
        renewal = Renewal(self.locks, lock, ttl, self._task)
        self._held[(lock.resource_type, lock.resource_id)] = renewal
        self._renewals.append(renewal)
        return lock

    async def release(self, lock: Lock) -> None:
        """Give a lock up before the job ends."""
        renewal = self._held.pop((lock.resource_type, lock.resource_id), None)
        if renewal is not None:
            await renewal.stop()
        await self.locks.release(lock)

    async def release_all(self) -> None:
        """Release every lock of the job (the worker calls this when the job ends)."""
        while self._held:
            _, renewal = self._held.popitem()
            await renewal.stop()
            await release_quietly(self.locks, renewal.lock)

    async def run(self, handler: Coroutine[Any, Any, T]) -> T:
        """Run the handler as the task a lost lock cancels, and turn that cancellation (ours
        alone) into `LockNotOwned`, so the job fails instead of looking interrupted."""
        self._task = asyncio.current_task()
        self._cancelling = self._task.cancelling() if self._task else 0
        try:
            return await handler
        except asyncio.CancelledError:
            lost = [r.lock for r in self._renewals if r.cancels]
            if not lost or self._task is None:
                raise
            cancels = sum(r.cancels for r in self._renewals)
            if not uncancel(self._task, cancels, self._cancelling):
                raise
            first = lost[0]
            raise LockNotOwned(first.resource_type, first.resource_id, first.token) from None


@dataclass
class JobContext:
    job: Job
    fencing_token: int
    """Pass this to every store the handler writes: it grows with every lease grant, so a
    store that rejects writes with a token lower than the last one it saw is safe from a
    paused former holder (fencing)."""
    worker: str
    client: Client
    """For enqueueing follow-up jobs."""
    log: logging.LoggerAdapter[logging.Logger]
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the lease was lost mid-job: the job has been given back to the queue, and the
    handler is cancelled right after this is set."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the job is to stop early (`stop_reason` says why); an async handler is
    cancelled right after. A sync handler runs in a thread, which cannot be cancelled: it
    should check `stopping.is_set()` now and then and return."""
    stop_reason: str | None = None
    """"timeout" (past its time limit: the attempt fails) or "cancelled" (`Client.cancel`:
    the job ends cancelled)."""
    locks: JobLocks = field(init=False)
    """The job's resource locks; `lock` and `lock_any` below are shortcuts."""
    on_stop: Callable[[], None] | None = field(default=None, init=False, repr=False)
    """Called by `stop` (the worker waits on it while the handler runs)."""

    def __post_init__(self) -> None:
        self.locks = JobLocks(
            Locks(self.client), f"{self.worker}:{self.job.id}", self.client.settings.heartbeat_ttl
        )

    async def lock(
        self, resource_type: str, resource_id: str, *, ttl: float | None = None, wait: float = 0.0
    ) -> Lock:
        """Hold an exclusive resource (a connection, an account, a device) until the job ends.

        Owner is `WORKER:JOB_ID`, owner type "job". `ttl` (default: the heartbeat TTL) bounds
        how long the lock outlives a dead worker; it is renewed every ttl/3 while the job runs.
        Raises `LockBusy` when someone else holds it for `wait` seconds (the job is retried
        after its backoff). Asking again for a lock the job holds returns the same lock. Pass
        `lock.token` to the resource. A lock lost mid-job cancels the handler and fails the job
        with `LockNotOwned`.
        """
        return await self.locks.lock(resource_type, resource_id, ttl=ttl, wait=wait)

    async def lock_any(
        self,
        resource_type: str,
        candidate_ids: Sequence[str],
        *,
        ttl: float | None = None,
        spread: Spread = "first",
        wait: float = 0.0,
    ) -> Lock:
        """`lock` for the first free resource of a pool; `lock.resource_id` says which."""
        return await self.locks.lock_any(
            resource_type, candidate_ids, ttl=ttl, spread=spread, wait=wait
        )

    async def progress(self, value: Any) -> bool:
        """Report how far the job got: a number or a small JSON value (at most
        `MAX_PROGRESS_BYTES`), shown by `Client.job` and `aq job show`. Advice only: False when
        Redis could not take it (or the job's lease has passed on), and the job goes on."""
        text = encode_payload(value, MAX_PROGRESS_BYTES)
        where = self.client.keys.entity_bucket(self.job.entity_type, self.job.entity_id)
        jslot = self.client.keys.job_slot(self.job.entity_type, self.job.entity_id, self.job.id)
        try:
            return bool(
                await self.client.script("progress", where, jslot, self.fencing_token, text)
            )
        except RedisUnavailable as exc:
            self.log.warning("progress of job %s not recorded: %s", self.job.id, exc)
            return False

    def stop(self, reason: str) -> None:
        """Ask the handler to stop (the worker calls this; the first reason counts)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopping.set()
        if self.on_stop is not None:
            self.on_stop()

    @property
    def entity_type(self) -> str:
        return self.job.entity_type

    @property
    def entity_id(self) -> str:
        return self.job.entity_id

    @property
    def attempt(self) -> int:
        return self.job.attempt
