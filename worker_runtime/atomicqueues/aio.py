"""asyncio helpers the runtime and the pool layer share."""

from __future__ import annotations

import asyncio
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
