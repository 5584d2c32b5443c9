"""Handlers of the failover tests' worker processes.

Loaded by real `aq worker` subprocesses as `--handlers tests.failover.handlers:registry`. Why a
module of its own: the runs must be on record somewhere a failover cannot touch, so `record`
writes to a separate standalone Redis (`AQ_TEST_STORE_URL`), never to the deployment under
test (whose primary the tests kill). Each run appends a JSON line at its start and at its end
(or when it is cancelled) to `RUNS_KEY`.

Payload of `record`: {"seq": k, "sleep": s}.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis.asyncio as aioredis

from atomicqueues import JobContext, Registry

RUNS_KEY = "failover:runs"

registry = Registry()

_redis: aioredis.Redis | None = None


def _store() -> aioredis.Redis:
    global _redis
    if _redis is None:
        _redis = aioredis.Redis.from_url(os.environ["AQ_TEST_STORE_URL"], decode_responses=True)
    return _redis


async def _note(ctx: JobContext, ev: str, seq: Any) -> None:
    record = {
        "ev": ev,
        "entity": ctx.entity_id,
        "job": ctx.job.id,
        "seq": seq,
        "t": time.time(),
        "pid": os.getpid(),
        "token": ctx.fencing_token,
        "attempt": ctx.attempt,
    }
    # Shielded: a cancellation never leaves a run's record half written.
    await asyncio.shield(_store().rpush(RUNS_KEY, json.dumps(record)))


@registry.command("record")
async def record(ctx: JobContext, payload: dict[str, Any]) -> None:
    seq = payload.get("seq")
    await _note(ctx, "start", seq)
    try:
        await asyncio.sleep(float(payload.get("sleep", 0.0)))
    except asyncio.CancelledError:
        await _note(ctx, "cancel", seq)
        raise
    await _note(ctx, "end", seq)
