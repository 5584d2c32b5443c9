"""A process that takes resource locks for the lock tests: `python -m tests.runtime.lock_contender`.

Why: mutual exclusion and fencing are about separate processes that race, pause and die, so the
tests run this in subprocesses. What each one did goes to Redis lists (through its own plain
connection, outside the library under test) that the test reads afterwards.

    contend URL TYPE SECONDS ID...   loop for SECONDS: take the lock (one ID) or any of the pool
                                     (several), note when it began and ended (wall clock), hold
                                     it 1-5 ms, release; one JSON record per grant to CONTEND_KEY
    pause URL TYPE ID TTL            take the lock, report it to STATE_KEY, block until an element
                                     arrives on GO_KEY, then try to extend and to release it and
                                     report how each went
    hold URL TYPE ID TTL             hold the lock with `Locks.hold`, report it, sleep in the
                                     block; report how the block ended (and when it was
                                     cancelled, wall clock)

Reports go to AQ_TEST_STORE_URL when it is set (a test that cuts the process off from Redis
keeps its reports flowing), else to URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from atomicqueues import Client, LockNotOwned, Locks, Settings

CONTEND_KEY = "test:contend"
STATE_KEY = "test:lockstate"
GO_KEY = "test:go"


async def report(url: str, key: str, record: dict[str, Any]) -> None:
    async with aioredis.Redis.from_url(os.environ.get("AQ_TEST_STORE_URL") or url) as r:
        await r.rpush(key, json.dumps(record | {"pid": os.getpid()}))


async def contend(
    locks: Locks, url: str, resource_type: str, seconds: float, ids: list[str]
) -> None:
    owner = f"p{os.getpid()}"
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(ids) == 1:
            result = await locks.acquire(resource_type, ids[0], owner, "proc", 10.0)
        else:
            result = await locks.acquire_any(resource_type, ids, owner, "proc", 10.0, "random")
        lock = result.lock
        if lock is None:
            await asyncio.sleep(random.uniform(0, 0.003))
            continue
        start = time.time()
        await asyncio.sleep(random.uniform(0.001, 0.005))
        end = time.time()
        try:
            await locks.release(lock)
            released = True
        except LockNotOwned:  # never, unless exclusion is broken: the test says how
            released = False
        records.append(
            {
                "r": lock.resource_id,
                "token": lock.token,
                "start": start,
                "end": end,
                "released": released,
            }
        )
    async with aioredis.Redis.from_url(url) as r:
        if records:
            await r.rpush(CONTEND_KEY, *(json.dumps(x | {"pid": os.getpid()}) for x in records))


async def pause(locks: Locks, url: str, resource_type: str, resource_id: str, ttl: float) -> None:
    result = await locks.acquire(resource_type, resource_id, f"p{os.getpid()}", "proc", ttl)
    assert result.lock is not None, result
    lock = result.lock
    await report(url, STATE_KEY, {"ev": "acquired", "token": lock.token})
    async with aioredis.Redis.from_url(url) as r:
        await r.blpop([GO_KEY], 60)
    outcome: dict[str, Any] = {"ev": "woke"}
    for name, call in (
        ("extend", lambda: locks.extend(lock, ttl)),
        ("release", lambda: locks.release(lock)),
    ):
        try:
            await call()
            outcome[name] = "ok"
        except LockNotOwned as exc:
            outcome[name] = f"LockNotOwned {exc.token}"
    await report(url, STATE_KEY, outcome)


async def hold(locks: Locks, url: str, resource_type: str, resource_id: str, ttl: float) -> None:
    outcome: dict[str, Any] = {"ev": "ended"}
    try:
        async with locks.hold(resource_type, resource_id, f"p{os.getpid()}", "proc", ttl) as lock:
            await report(url, STATE_KEY, {"ev": "acquired", "token": lock.token})
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                outcome["cancelled_at"] = time.time()
                raise
            outcome["how"] = "slept"
    except LockNotOwned as exc:
        outcome["how"] = f"LockNotOwned {exc.token}"
    outcome["lost"] = lock.lost.is_set()
    await report(url, STATE_KEY, outcome)


async def main(argv: list[str]) -> None:
    mode, url, resource_type, *rest = argv
    client = await Client.connect(Settings(redis_url=url))
    locks = Locks(client)
    try:
        if mode == "contend":
            await contend(locks, url, resource_type, float(rest[0]), rest[1:])
        elif mode == "pause":
            await pause(locks, url, resource_type, rest[0], float(rest[1]))
        else:
            await hold(locks, url, resource_type, rest[0], float(rest[1]))
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
