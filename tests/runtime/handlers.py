"""Handlers for the fault and life-cycle tests' worker processes.

Loaded by real `aq worker` subprocesses as `--handlers tests.runtime.handlers:registry` (the
tests put the repository root on PYTHONPATH). Why: to tell overlap and loss apart we need every
run of every job on record, outside the library under test. The `record` handler writes a JSON
line at the start and at the end of each run (or when it is cancelled) to a Redis list, through
its own Redis connection (AQ_TEST_STORE_URL, else AQ_REDIS_URL: a test that cuts the worker off
from Redis keeps the store reachable, as a downstream store would be) and through a *fenced
store*: a write whose fencing
token is lower than the highest one the entity's store has seen is refused and goes to a
separate list instead. So `LOG_KEY` holds the effects that counted and `REJECTED_KEY` those a
stale worker tried to make after losing its lease. `EFFECTS_KEY` gets every record, refused or
not, as a downstream effect without fencing (a sent e-mail) would happen.

Payload of `record`: {"seq": k, "sleep": s, "first_sleep": s1 (optional)}; the first run of a
job id sleeps `first_sleep` (when given), every later run sleeps `sleep`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import redis as sync_redis
import redis.asyncio as aioredis

from atomicqueues import JobContext, Registry

LOG_KEY = "test:log"
REJECTED_KEY = "test:rejected"
EFFECTS_KEY = "test:effects"
FENCE_KEY = "test:fence"
FIRST_RUN_KEY = "test:first:"
LOCK_LOG_KEY = "test:joblocks"
STUBBORN_KEY = "test:stubborn"

# KEYS[1] log, KEYS[2] rejected, KEYS[3] fence hash, KEYS[4] effects; ARGV entity, token, record.
# Appends the record to the effects, and to the log when token >= the highest token seen for the
# entity (and raises that mark), else to the rejected list. Returns 1 (accepted) or 0 (refused).
FENCED_WRITE = """
redis.call('RPUSH', KEYS[4], ARGV[3])
local cur = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
local tok = tonumber(ARGV[2])
if tok >= cur then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('RPUSH', KEYS[1], ARGV[3])
  return 1
end
redis.call('RPUSH', KEYS[2], ARGV[3])
return 0
"""

registry = Registry()

not_a_registry = {"record": "this is a dict, not a Registry"}  # for the CLI error test

_redis: aioredis.Redis | None = None


def _store() -> aioredis.Redis:
    global _redis
    if _redis is None:
        url = os.environ.get("AQ_TEST_STORE_URL") or os.environ["AQ_REDIS_URL"]
        _redis = aioredis.Redis.from_url(url, decode_responses=True)
    return _redis


async def _fenced_write(ctx: JobContext, ev: str, seq: Any) -> bool:
    record = {
        "ev": ev,
        "entity": ctx.entity_id,
        "job": ctx.job.id,
        "seq": seq,
        "t": time.time(),
        "pid": os.getpid(),
        "worker": ctx.worker,
        "token": ctx.fencing_token,
        "attempt": ctx.attempt,
    }
    accepted = await _store().eval(
        FENCED_WRITE,
        4,
        LOG_KEY,
        REJECTED_KEY,
        FENCE_KEY,
        EFFECTS_KEY,
        f"{ctx.entity_type}/{ctx.entity_id}",
        str(ctx.fencing_token),
        json.dumps(record),
    )
    return bool(accepted)


async def _write(ctx: JobContext, ev: str, seq: Any) -> bool:
    """A fenced write that a cancellation cannot cut in half: a write that was begun is
    finished (and kept on record) before the CancelledError goes on."""
    write = asyncio.ensure_future(_fenced_write(ctx, ev, seq))
    try:
        return await asyncio.shield(write)
    except asyncio.CancelledError:
        await write
        raise


@registry.command("record")
async def record(ctx: JobContext, payload: dict[str, Any]) -> None:
    seq = payload.get("seq")
    pause = float(payload.get("sleep", 0.0))
    if "first_sleep" in payload and await _store().set(FIRST_RUN_KEY + ctx.job.id, 1, nx=True):
        pause = float(payload["first_sleep"])
    try:
        await _write(ctx, "start", seq)
        await asyncio.sleep(pause)
    except asyncio.CancelledError:
        # Lease lost or shutdown grace over: this run's effects end here.
        await _write(ctx, "cancel", seq)
        raise
    await _write(ctx, "end", seq)


registry.command("record_limited", timeout=0.5)(record)
"""`record` with a time limit of half a second set where it is registered."""


@registry.command("stubborn")
def stubborn(ctx: JobContext, payload: dict[str, Any]) -> None:
    """A sync handler: it runs in a thread, which cannot be cancelled. Its first run sleeps
    `first_sleep` seconds whatever happens; later runs return at once. Every run pushes
    {"job", "attempt", "pid", "t"} to STUBBORN_KEY when it starts.
    Payload: {"first_sleep": s}."""
    store = sync_redis.Redis.from_url(
        os.environ.get("AQ_TEST_STORE_URL") or os.environ["AQ_REDIS_URL"]
    )
    run = {"job": ctx.job.id, "attempt": ctx.attempt, "pid": os.getpid(), "t": time.time()}
    store.rpush(STUBBORN_KEY, json.dumps(run))
    if store.set(FIRST_RUN_KEY + ctx.job.id, 1, nx=True):
        time.sleep(float(payload["first_sleep"]))


@registry.command("block")
async def block(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Like `record`, but its first run blocks the event loop (a blocking call in async code)
    for `first_block` seconds. Payload: {"seq": k, "sleep": s, "first_block": s1}."""
    seq = payload.get("seq")
    await _write(ctx, "start", seq)
    if await _store().set(FIRST_RUN_KEY + ctx.job.id, 1, nx=True):
        time.sleep(float(payload["first_block"]))
    await asyncio.sleep(float(payload.get("sleep", 0.0)))
    await _write(ctx, "end", seq)


@registry.command("hold_lock")
async def hold_lock(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Take a resource lock for the job, note it in LOCK_LOG_KEY, sleep, maybe fail.

    Payload: {"type": T, "id": ID, "ttl": s, "sleep": s, "fail": bool}."""
    lock = await ctx.lock(payload["type"], payload["id"], ttl=payload.get("ttl"))
    note = {"job": ctx.job.id, "token": lock.token, "owner": lock.owner_id, "pid": os.getpid()}
    await _store().rpush(LOCK_LOG_KEY, json.dumps(note))
    await asyncio.sleep(float(payload.get("sleep", 0.0)))
    if payload.get("fail"):
        raise RuntimeError("failing on purpose, holding a lock")


@registry.query("wait_for_file")
async def wait_for_file(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Run until the file `payload["path"]` exists, writing nothing to Redis (so it runs the same
    while Redis refuses writes); returns who ran it: {"pid": ..., "worker": ...}."""
    path = Path(payload["path"])
    while not await asyncio.to_thread(path.exists):
        await asyncio.sleep(0.02)
    return {"pid": os.getpid(), "worker": ctx.worker}
