"""The loop of an entity-bound worker: the jobs of one entity, one after another.

It claims the entity's jobs under a lease, blocks on the entity's doorbell list when there is
nothing to do (no polling), and ends after `idle_timeout` without work, releasing its lease in
the same script that checks the queue is empty.
"""

from __future__ import annotations

import asyncio
import logging

from .errors import LeaseLost, RedisUnavailable
from .keys import of_entity
from .leases import Idle, Started
from .runner import JobRunner

log = logging.getLogger("atomicqueues.worker")


class EntityLoop:
    """Runs the jobs of `entity_id` until it has been idle for `idle_timeout` or the worker
    closes; `exit_reason` then says why it ended by itself."""

    def __init__(self, runner: JobRunner, entity_id: str) -> None:
        self.runner = runner
        self.entity_id = entity_id
        self.exit_reason = ""

    async def run(self) -> None:
        runner, entity_id = self.runner, self.entity_id
        loop = asyncio.get_running_loop()
        bell = of_entity(runner.client.keys.entity(runner.entity_type, entity_id), "bell")
        idle_timeout = runner.settings.idle_timeout
        idle_since = loop.time()
        while not runner.closing.is_set():
            try:
                claimed = await runner.leases.claim(
                    runner.entity_type, entity_id, runner.held.get(entity_id)
                )
            except LeaseLost:
                runner.held.pop(entity_id, None)
                continue
            except RedisUnavailable as exc:
                log.warning("worker %s: %s", runner.name, exc)
                if loop.time() - idle_since >= idle_timeout:
                    runner.held.pop(entity_id, None)  # nothing runs: the lease may just expire
                    self.exit_reason = "idle (Redis unreachable: the lease expires)"
                    return
                await asyncio.sleep(1.0)
                continue
            if isinstance(claimed, Started):
                runner.held[entity_id] = claimed.lease
                await runner.run_serially(claimed)
                idle_since = loop.time()
                continue
            self._hold(claimed)
            idle_for = loop.time() - idle_since
            if idle_for >= idle_timeout:
                if await self._release_if_idle():
                    self.exit_reason = "idle"
                    return
                continue
            timeout = idle_timeout - idle_for
            if claimed.next_due is not None:
                timeout = min(timeout, claimed.next_due - runner.server_now() + 0.005)
            await runner.wait_for_work([bell], timeout)

    def _hold(self, idle: Idle) -> None:
        if idle.lease is not None:
            self.runner.held[self.entity_id] = idle.lease
        else:
            self.runner.held.pop(self.entity_id, None)

    async def _release_if_idle(self) -> bool:
        """Let go of the entity unless work arrived; True when the worker holds it no more."""
        runner = self.runner
        lease = runner.held.get(self.entity_id)
        if lease is None:
            return True
        try:
            outcome = await runner.while_held(lease, lambda: runner.leases.release(lease, "idle"))
        except LeaseLost:
            return True
        if outcome == "busy":
            return False
        if runner.held.get(self.entity_id) is lease:
            del runner.held[self.entity_id]
        return True
