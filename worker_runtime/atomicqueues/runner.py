"""Running jobs under leases: the part of a worker that both of its loops share.

A `JobRunner` knows the leases its worker holds and the handlers running under them. It runs
one job's handler (with its time limit, cancellation and the shared rate limit), records the
outcome in the script that also starts the next job, and stops a handler whose lease is lost.
The loops that decide what to claim (`entity_loop.py`, `packed_loop.py`) and the worker's life
cycle with its heartbeat (`worker.py`) are built on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel

from . import logs, metrics, tracing
from .aio import wait_any
from .base_client import MAX_BLOCK_SECONDS
from .client import Client
from .config import Settings
from .context import JobContext
from .controls import Controls
from .errors import JobTimedOut, LeaseLost, PermanentError, RedisUnavailable, UnknownHandler
from .jobs import Job, to_json
from .leases import Lease, Leases, Next, Outcome, Started
from .registry import Registry
from .watchdog import Watchdog

log = logging.getLogger("atomicqueues.worker")  # a worker's one logger, whichever module logs
T = TypeVar("T")

MAX_ERROR_CHARS = 4000
RETRY_PAUSE = 0.2
"""Seconds between tries of a Redis call that failed while a lease is still held."""


class _Stuck(Exception):
    """A handler that was cancelled did not end in time."""


class JobRunner:
    """The leases a worker holds and the jobs it runs under them."""

    def __init__(
        self,
        client: Client,
        registry: Registry,
        entity_type: str,
        name: str,
        close: Callable[[str], None],
    ) -> None:
        self.client = client
        self.settings: Settings = client.settings
        self.registry = registry
        self.entity_type = entity_type
        self.name = name
        self.close = close
        """Asks the worker to close (a handler that did not stop when cancelled)."""
        self.closing = asyncio.Event()
        self.leases = Leases(client, name)
        self.held: dict[str, Lease] = {}
        self.running: dict[str, tuple[JobContext, asyncio.Task[Any]]] = {}
        self.margin = self.settings.lease_margin
        # It ends the process when a job runs on after the lease guard cancelled it: by a
        # quarter of the margin before the lease may expire at the latest.
        self.watchdog = Watchdog(every=min(0.05, self.margin / 8), reaction=self.margin / 2)
        self.finishing: set[int] = set()
        """Leases (ids) whose job's outcome is being recorded."""
        self.stuck: dict[str, Lease] = {}
        """Leases of jobs whose handler did not stop when cancelled: their outcome is recorded
        and they are renewed, never released, until the process ends (`_finish_stuck`)."""
        self.clock_offset = 0.0
        """Redis's clock minus this process's, as read when the worker started."""
        self._shared_rate: tuple[int, int] | None = None
        """The rate limit the whole type shares (n, period ms), as last read (heartbeat)."""
        self._in_flight = metrics.IN_FLIGHT.labels(entity_type)

    async def release_all(self) -> None:
        for lease in list(self.held.values()):
            await self.give_back(lease)

    async def give_back(self, lease: Lease) -> None:
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

    async def while_held(self, lease: Lease, attempt: Callable[[], Awaitable[T]]) -> T:
        """Call `attempt` until Redis answers it; `LeaseLost` once the lease is held no more
        (lost, or past its deadline while Redis could not be reached)."""
        while self.held.get(lease.entity_id) is lease:
            try:
                return await attempt()
            except RedisUnavailable as exc:
                log.warning("worker %s: %s", self.name, exc)
                await asyncio.sleep(RETRY_PAUSE)
        raise LeaseLost(lease.entity_type, lease.entity_id, lease.fencing_token)

    async def read_shared_rate(self) -> None:
        shared = await Controls(self.client).shared_rate(self.entity_type)
        self._shared_rate = None if shared is None else (shared[0], round(shared[1] * 1000))

    async def _permitted(self, run: Started) -> bool:
        """Wait until the rate limit the whole type shares lets this job's handler start (no
        wait without one). False when the worker closes meanwhile (the job is given back) or
        its lease is lost (the job goes back once the lease has expired)."""
        lease, key = run.lease, self.client.keys.permits(self.entity_type)
        while (rate := self._shared_rate) is not None:
            try:
                wait_ms = await self.while_held(
                    lease, partial(self.client.script, "permit", key, *rate)
                )
            except LeaseLost:
                return False
            if not wait_ms:
                return True
            if await wait_any([self.closing], wait_ms / 1000):
                await self.give_back(lease)
                return False
        return True

    def cancel_job(self, job_id: str) -> None:
        """Stop the handler of `job_id` if this worker runs it: it ends cancelled."""
        for ctx, task in list(self.running.values()):
            if ctx.job.id == job_id and not task.done():
                ctx.stop("cancelled")

    def cancel_running(self, lease: Lease) -> None:
        """The job `lease` runs is to be cancelled (its renewal said so)."""
        running = self.running.get(lease.entity_id)
        if running is not None and not running[1].done():
            running[0].stop("cancelled")

    def lost(self, lease: Lease, why: str) -> None:
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

    async def wait_for_work(
        self, bells: list[str], timeout: float, instead: asyncio.Event | None = None
    ) -> str | None:
        """Block until one of the doorbells `bells` rings (or, given `instead`, until that
        event is set: a packed worker on Redis Cluster, which cannot block on keys of several
        slots at once, waits for its work events), the timeout passes, or the worker closes.
        Returns the doorbell key that rang, if any."""
        timeout = max(0.01, min(timeout, MAX_BLOCK_SECONDS))
        waiter: asyncio.Future[Any] = asyncio.ensure_future(
            instead.wait() if instead is not None else self.client.blpop(bells, timeout)
        )
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

    def server_now(self) -> float:
        return time.time() + self.clock_offset

    async def run_serially(self, run: Started | None) -> None:
        while run is not None:
            run = await self.run_job(run, "same")

    @logs.job_context
    async def run_job(self, run: Started, claim_next: Next) -> Started | None:
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
            self.stuck[lease.entity_id] = lease
        self.close(f"the handler of {where} did not stop when cancelled")

    async def _interrupted_job(self, run: Started, ctx: JobContext, where: str) -> None:
        if ctx.lost.is_set():
            log.warning("%s abandoned: lease lost, the job is back in the queue", where)
            return
        log.warning("%s interrupted by shutdown: given back to the head of the queue", where)
        await self.give_back(run.lease)

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
        self.finishing.add(id(run.lease))
        try:
            nxt = await self.while_held(run.lease, finish)
        except LeaseLost:
            self.lost(run.lease, "its outcome was refused")
            log.warning("%s: outcome %s not recorded, lease lost; it runs again", where, outcome)
            return None
        finally:
            self.finishing.discard(id(run.lease))
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
