"""Example handlers for `aq up pool.yaml`: one command, one query, per user account."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from atomicqueues import JobContext, PermanentError, Registry

registry = Registry()


class Deposit(BaseModel):
    cents: int


@registry.command("deposit")
async def deposit(ctx: JobContext, payload: Deposit) -> None:
    if payload.cents <= 0:
        raise PermanentError("a deposit must be positive")  # dead-lettered, not retried
    # A real handler writes to a store here, passing ctx.fencing_token along with the write
    # so that the store can refuse a late write from a worker that lost its lease.
    balance = int(await ctx.client.redis.get(f"example:balance:{ctx.entity_id}") or 0)
    await asyncio.sleep(0.01)  # some work; no other job of this account runs meanwhile
    await ctx.client.redis.set(f"example:balance:{ctx.entity_id}", balance + payload.cents)


@registry.query("balance")
async def balance(ctx: JobContext, payload: None) -> int:
    return int(await ctx.client.redis.get(f"example:balance:{ctx.entity_id}") or 0)
