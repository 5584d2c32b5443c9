"""asyncio helpers the runtime and the pool layer share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until every one has ended.

    Cancel again while one is still running: on Python 3.11, `asyncio.wait_for` (which redis-py
    wraps around every send when a socket timeout is set) swallows a cancellation that arrives
    as the call it wraps completes, and the task then carries on (a heartbeat loop would never
    end, and the worker would never exit).
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    await asyncio.gather(*tasks, return_exceptions=True)


async def wait_any(events: Iterable[asyncio.Event], timeout: float | None) -> bool:
    """Wait until one of `events` is set or `timeout` seconds have passed; True when one is set.

    With `asyncio.wait` rather than `asyncio.wait_for`, so a cancellation is never swallowed
    (see `cancel_and_wait`)."""
    events = list(events)
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return any(e.is_set() for e in events)
