"""Handlers of the operations tests' worker processes (`--handlers tests.ops.handlers:registry`).

`note` logs one line through `ctx.log` and returns; `boom` raises, so the worker logs a retry
and then a dead letter with the traceback.
"""

from __future__ import annotations

from typing import Any

from atomicqueues import JobContext, Registry

registry = Registry()


@registry.command("note")
async def note(ctx: JobContext, payload: Any) -> None:
    ctx.log.info("handler says %s", payload)


@registry.command("boom")
async def boom(ctx: JobContext, payload: Any) -> None:
    raise RuntimeError(f"boom {payload}")
