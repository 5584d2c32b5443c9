"""Handlers for the runtime benchmark: they do nothing, so what is measured is the runtime.

Used by the `aq worker` processes that `bench/hotpath.py` starts
(`aq worker --handlers noop_handlers:registry`, with `bench/` on PYTHONPATH) and by its
in-process workers.
"""

from __future__ import annotations

from atomicqueues.context import JobContext
from atomicqueues.registry import Registry

registry = Registry()


@registry.command("noop")
async def noop(ctx: JobContext, payload: None) -> None:
    """Return at once: no I/O, no result."""
