"""The dead-letter list: jobs that used up their attempts (or failed for good), per entity.

A dead job keeps its record and its place (its entity's `dlq` sorted set, counted in the
index's `dead` hash per bucket) until someone requeues it (back in its queue at its original
place, attempts reset) or purges it; `dlq.lua` does either in one script per entity. `aq dlq`
and the dashboard act through this class; `Queues.dead_letters` pages through them for people.
"""

from __future__ import annotations

import builtins

from .base_client import BaseClient
from .index_reads import hash_index
from .jobs import Job
from .keys import encode_id, job_key, of_entity


class DeadLetters:
    """The dead-lettered jobs of a type, through one client."""

    def __init__(self, client: BaseClient) -> None:
        self.client = client
        self.keys = client.keys

    async def entities(self, entity_type: str) -> dict[str, int]:
        """Entities with dead-lettered jobs, and how many each."""
        return await hash_index(self.client, entity_type, "dead")

    async def list(
        self, entity_type: str, entity_id: str | None = None, *, limit: int = 100
    ) -> builtins.list[Job]:
        """Dead-lettered jobs, oldest first, of one entity or of every entity of the type."""
        ids = [entity_id] if entity_id is not None else sorted(await self.entities(entity_type))
        jobs: builtins.list[Job] = []
        for eid in ids:
            bucket = self.keys.entity_bucket(entity_type, eid)
            dlq = of_entity(self.keys.entity(entity_type, eid), "dlq")
            for jslot in await self.client.zrange(dlq, 0, limit - 1):
                fields = await self.client.hgetall(job_key(bucket, jslot))
                if fields:
                    jobs.append(Job.from_fields(entity_type, fields))
            if len(jobs) >= limit:
                break
        return jobs[:limit]

    async def requeue(
        self,
        entity_type: str,
        entity_id: str | None = None,
        job_ids: builtins.list[str] | None = None,
    ) -> int:
        """Put dead jobs back in their queues at their original place, attempts reset; returns
        how many. Without `entity_id`, of every entity of the type; without `job_ids`, all."""
        return await self._act("requeue", entity_type, entity_id, job_ids)

    async def purge(
        self,
        entity_type: str,
        entity_id: str | None = None,
        job_ids: builtins.list[str] | None = None,
    ) -> int:
        """Delete dead jobs for good; returns how many (the same choices as `requeue`)."""
        return await self._act("purge", entity_type, entity_id, job_ids)

    async def _act(
        self,
        action: str,
        entity_type: str,
        entity_id: str | None,
        job_ids: builtins.list[str] | None,
    ) -> int:
        ids = [entity_id] if entity_id is not None else [*await self.entities(entity_type)]
        total = 0
        for eid in ids:
            jslots = [self.keys.job_slot(entity_type, eid, j) for j in job_ids or []]
            total += await self.client.script(
                "dlq",
                self.keys.entity_bucket(entity_type, eid),
                encode_id(eid),
                action,
                self.keys.events(entity_type),
                *jslots,
            )
        return total
