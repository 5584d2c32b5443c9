"""Holding a resource lock while work runs: renewal in the background, and what a loss means.

A held lock is extended every ttl/3 (`Renewal`); when it is found gone, or cannot be renewed
before it may expire on this process's clock, it is marked lost and the task that holds it is
cancelled. `Hold` is the context manager of `Locks.hold` and `Locks.hold_any`; `JobLocks`
(context.py) keeps a job's locks with the same pieces. They need of `Locks` (locks.py, which
builds on this module) only its extend and release: `LockKeeper`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from .aio import cancel_and_wait
from .config import SAFETY_MARGIN
from .errors import InvalidInput, LockBusy, LockNotOwned
from .lock_types import Lock, LockResult

log = logging.getLogger(__name__)


class LockKeeper(Protocol):
    """What holding a lock needs: `Locks.extend` and `Locks.release`."""

    async def extend(self, lock: Lock, ttl: float) -> Lock: ...

    async def release(self, lock: Lock) -> None: ...


async def acquire_within(
    resource_type: str, attempt: Callable[[], Awaitable[LockResult]], wait: float
) -> Lock:
    """Call `attempt` until it acquires or `wait` seconds pass (then `LockBusy`).

    Waiting polls with a growing, jittered pause (up to 0.5 s): locks are held briefly or
    renewed, and a waiter that missed a release only waits a little longer.
    """
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
        raise InvalidInput(f"wait must be zero or a positive number of seconds, not {wait!r}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    pause = 0.02
    while True:
        result = await attempt()
        if result.lock is not None:
            return result.lock
        left = deadline - loop.time()
        if left <= 0:
            holders = {h.resource_id: (h.owner_id, h.owner_type) for h in result.holders}
            raise LockBusy(resource_type, holders)
        await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.0)))
        pause = min(pause * 2, 0.5)


async def release_quietly(locks: LockKeeper, lock: Lock) -> None:
    """Release at the end of a hold: a lock found gone is marked lost, a Redis outage only
    logged (the lock then expires by its TTL)."""
    if lock.lost.is_set():
        return
    try:
        await locks.release(lock)
    except LockNotOwned:
        lock.lost.set()
    except Exception as exc:
        log.warning(
            "lock on %s/%r (token %s) not released (%s); it expires by its TTL",
            lock.resource_type,
            lock.resource_id,
            lock.token,
            exc,
        )


class Renewal:
    """Extends one lock every ttl/3 in the background until stopped.

    When the lock is gone (LockNotOwned), or no extend has been answered by the time it comes
    within the safety margin (a fifth of the TTL) of the moment it may expire on this process's
    clock (`Lock.valid_until`; an extend stuck on a cut-off connection counts as unanswered), it
    sets `lock.lost` and, when given a `target` task, cancels it once; `cancels` counts that, so
    whoever runs the target can tell its own cancellation from another.
    """

    def __init__(
        self, locks: LockKeeper, lock: Lock, ttl: float, target: asyncio.Task[Any] | None
    ) -> None:
        self.locks = locks
        self.lock = lock
        self.ttl = ttl
        self.target = target
        self.cancels = 0
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"aq-lock-renewal-{lock.token}")

    async def _run(self) -> None:
        interval = self.ttl / 3
        margin = self.ttl * SAFETY_MARGIN
        delay = interval
        while not self._stopping:
            await asyncio.sleep(delay)
            if self._stopping:
                return
            left = self.lock.valid_until - margin - time.monotonic()
            if left <= 0:
                self._lose("could not be renewed before it may expire")
                return
            extend = asyncio.ensure_future(self.locks.extend(self.lock, self.ttl))
            await asyncio.wait({extend}, timeout=left)
            if not extend.done():
                self._lose("could not be renewed before it may expire (no answer from Redis)")
                await cancel_and_wait([extend])
                return
            try:
                extend.result()
            except LockNotOwned:
                self._lose("is gone (expired, force-released or taken over)")
                return
            except Exception as exc:  # Redis unreachable: try again before it may expire
                log.warning(
                    "lock on %s/%r not renewed: %s",
                    self.lock.resource_type,
                    self.lock.resource_id,
                    exc,
                )
                left = self.lock.valid_until - margin - time.monotonic()
                delay = max(0.0, min(interval, left))
                continue
            delay = interval

    def _lose(self, why: str) -> None:
        if self._stopping:
            return
        lock = self.lock
        log.warning(
            "lock on %s/%r of %s %s (token %s) %s",
            lock.resource_type,
            lock.resource_id,
            lock.owner_type,
            lock.owner_id,
            lock.token,
            why,
        )
        lock.lost.set()
        if self.target is not None and not self.target.done():
            self.target.cancel()
            self.cancels += 1

    async def stop(self) -> None:
        """Stop renewing (and never cancel the target from now on)."""
        self._stopping = True
        await cancel_and_wait([self._task])


def uncancel(task: asyncio.Task[Any], cancels: int, before: int) -> bool:
    """Withdraw our `cancels` cancellations of `task`; True when no other cancellation than
    those present `before` ours is left (so the CancelledError was ours alone)."""
    remaining = task.cancelling()
    for _ in range(cancels):
        remaining = task.uncancel()
    return remaining <= before


class Hold:
    """The context manager `Locks.hold` and `Locks.hold_any` return."""

    def __init__(
        self,
        locks: LockKeeper,
        resource_type: str,
        ttl: float,
        cancel_on_loss: bool,
        wait: float,
        attempt: Callable[[], Awaitable[LockResult]],
    ) -> None:
        self.locks = locks
        self.resource_type = resource_type
        self.ttl = ttl
        self.cancel_on_loss = cancel_on_loss
        self.wait = wait
        self.attempt = attempt
        self.lock: Lock | None = None
        self._renewal: Renewal | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0

    async def __aenter__(self) -> Lock:
        self.lock = await acquire_within(self.resource_type, self.attempt, self.wait)
        if self.cancel_on_loss:
            self._task = asyncio.current_task()
            self._cancelling = self._task.cancelling() if self._task else 0
        self._renewal = Renewal(self.locks, self.lock, self.ttl, self._task)
        return self.lock

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self.lock is not None
        assert self._renewal is not None
        lock, renewal = self.lock, self._renewal
        interrupted = False
        try:
            await renewal.stop()
        except asyncio.CancelledError:  # ours (the block ended as the loss was found) or not
            interrupted = True
        await release_quietly(self.locks, lock)
        ours_alone = False  # the only cancellation of the task is the one renewal made
        if self._task is not None and renewal.cancels:
            ours_alone = uncancel(self._task, renewal.cancels, self._cancelling)
        if interrupted and not ours_alone:
            raise asyncio.CancelledError
        if not (self.cancel_on_loss and lock.lost.is_set()):
            return False
        if typ is not None and not issubclass(typ, asyncio.CancelledError):
            return False  # the block's own error says more
        if typ is not None and not ours_alone:
            return False  # cancelled from elsewhere too: let that cancellation go on
        raise LockNotOwned(lock.resource_type, lock.resource_id, lock.token) from None
