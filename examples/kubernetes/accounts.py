"""Handlers of the Kubernetes example: one command that records the order jobs ran in.

`record` appends the job's sequence number to a list per account and counts how many jobs of
the account run at that moment, so `walkthrough.py` can check what AtomicQueues promises: every
job ran, in order per account, and never two of an account at once.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from atomicqueues import JobContext, Registry

registry = Registry()


class Record(BaseModel):
    seq: int


def seen_key(account: str) -> str:
    return f"example:seen:{account}"


def running_key(account: str) -> str:
    return f"example:running:{account}"


OVERLAPS_KEY = "example:overlaps"


@registry.command("record")
async def record(ctx: JobContext, payload: Record) -> None:
    redis = ctx.client.redis
    if await redis.incr(running_key(ctx.entity_id)) > 1:
        await redis.rpush(OVERLAPS_KEY, f"{ctx.entity_id}:{payload.seq}")
    try:
        await asyncio.sleep(0.05)  # some work; no other job of this account runs meanwhile
        await redis.rpush(seen_key(ctx.entity_id), payload.seq)
    finally:
        await redis.decr(running_key(ctx.entity_id))
