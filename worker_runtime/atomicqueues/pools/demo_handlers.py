"""The handler `aq demo` runs: each job records when it started and ended, so the demo can
check afterwards that every job ran once, in order per entity, and never overlapped."""

from __future__ import annotations

import asyncio
import json
import os
import time

from pydantic import BaseModel

from ..context import JobContext
from ..registry import Registry

registry = Registry()


class Step(BaseModel):
    seq: int
    seconds: float
    log_key: str


@registry.command("step")
async def step(ctx: JobContext, payload: Step) -> None:
    record = {
        "entity": ctx.entity_id,
        "job": ctx.job.id,
        "seq": payload.seq,
        "pid": os.getpid(),
        "attempt": ctx.attempt,
        "token": ctx.fencing_token,
    }
    redis = ctx.client.redis
    await redis.rpush(payload.log_key, json.dumps({**record, "event": "start", "t": time.time()}))
    await asyncio.sleep(payload.seconds)
    await redis.rpush(payload.log_key, json.dumps({**record, "event": "end", "t": time.time()}))
