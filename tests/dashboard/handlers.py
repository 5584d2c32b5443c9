"""Handlers of the dashboard tests' worker processes (`tests.dashboard.handlers:registry`).

Why: the browser tests need jobs in every state a page shows, made by real workers: one that
runs long enough to be seen active, one that fails until the test heals it (a dead letter that
then runs once requeued from the page), and a query with a result.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio as aioredis

from atomicqueues import JobContext, Registry

HEALED_KEY = "test:dashboard:healed"
"""While this key exists, `flaky` succeeds."""

registry = Registry()


@registry.command("sleep")
async def sleep(ctx: JobContext, payload: dict[str, Any]) -> None:
    await asyncio.sleep(float(payload.get("seconds", 0)))


@registry.command("flaky")
async def flaky(ctx: JobContext, payload: dict[str, Any]) -> None:
    store = aioredis.Redis.from_url(os.environ["AQ_REDIS_URL"])
    try:
        if not await store.exists(HEALED_KEY):
            raise RuntimeError(f"flaky failed as asked: {payload.get('why', '')}")
    finally:
        await store.aclose()


@registry.query("answer")
async def answer(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"echo": payload, "attempt": ctx.job.attempt}
