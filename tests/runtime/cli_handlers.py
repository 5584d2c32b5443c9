"""Handlers for the command-line tests: one query, `echo`, which returns its payload; every
other job name is unknown (dead-lettered at once)."""

import gc
from typing import Any

from atomicqueues import JobContext, Registry

registry = Registry()


@registry.query("echo")
async def echo(ctx: JobContext, payload: Any) -> Any:
    return payload


@registry.query("locked")
async def locked(ctx: JobContext, payload: Any) -> int:
    lock = await ctx.lock("modem", "m1")  # released by the worker when the job ends
    return lock.token


@registry.query("frozen")
async def frozen(ctx: JobContext, payload: Any) -> int:
    """How many objects the worker process froze out of the cyclic collector's reach (cli.py)."""
    return gc.get_freeze_count()
