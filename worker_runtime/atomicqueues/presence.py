"""Which workers exist, and how to ask them to close.

Each worker keeps a registration key (name, entity, node, pid, start time) alive with a TTL that
its heartbeat refreshes; a worker that dies simply expires. Close signals are kept in keys as
well as published: a worker that missed the pub/sub message still sees the key at its next
heartbeat. A signal only applies to workers that started before it was given, so a worker
started right after a scale-down is not closed by it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .base_client import BaseClient
from .keys import check_entity_id, check_entity_type

CLOSE_SIGNAL_TTL_MS = 120_000


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    entity_type: str
    entity_id: str | None
    """None for a packed worker (it serves any entity of its type)."""
    slots: int
    node: str
    pid: int
    started_at: float
    entities: list[str]
    """Entities it holds a lease on right now."""

    def to_fields(self) -> dict[str, str]:
        return {
            "name": self.name,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id if self.entity_id is not None else "",
            "packed": "0" if self.entity_id is not None else "1",
            "slots": str(self.slots),
            "node": self.node,
            "pid": str(self.pid),
            "started_at": repr(self.started_at),
            "entities": json.dumps(self.entities),
        }

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> WorkerInfo:
        return cls(
            name=f["name"],
            entity_type=f.get("entity_type", ""),
            entity_id=None if f.get("packed") == "1" else f.get("entity_id", ""),
            slots=int(f.get("slots", "1")),
            node=f.get("node", ""),
            pid=int(f.get("pid", "0")),
            started_at=float(f.get("started_at", "0")),
            entities=json.loads(f.get("entities", "[]")),
        )


class Presence:
    """Registration, heartbeat keys and close signals under one client."""

    def __init__(self, client: BaseClient) -> None:
        self.client = client
        self.keys = client.keys
        self.redis = client.redis

    async def server_time(self) -> float:
        secs, micros = await self.client.call(lambda: self.redis.time())
        return float(secs) + micros / 1e6

    # --- the worker's side ---------------------------------------------------------------
    async def beat(self, info: WorkerInfo, ttl: float) -> None:
        """Write (or refresh) the registration; the sets let others find it by entity/node."""
        ttl_ms = int(ttl * 1000)
        pipe = self.redis.pipeline(transaction=False)
        key = self.keys.worker(info.name)
        pipe.hset(key, mapping=info.to_fields())  # type: ignore[arg-type]
        pipe.pexpire(key, ttl_ms)
        pipe.zadd(self.keys.workers(), {info.name: time.time()})
        groups = [self.keys.node_workers(info.node)]
        groups += [self.keys.entity_workers(info.entity_type, e) for e in info.entities]
        if info.entity_id is not None:
            groups.append(self.keys.entity_workers(info.entity_type, info.entity_id))
        for group in groups:
            pipe.sadd(group, info.name)
            pipe.pexpire(group, ttl_ms * 10)
        await self.client.call(pipe.execute)

    async def leave(self, info: WorkerInfo) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.worker(info.name))
        pipe.zrem(self.keys.workers(), info.name)
        pipe.srem(self.keys.node_workers(info.node), info.name)
        entities = set(info.entities)
        if info.entity_id is not None:
            entities.add(info.entity_id)
        for e in entities:
            pipe.srem(self.keys.entity_workers(info.entity_type, e), info.name)
        await self.client.call(pipe.execute)

    async def close_requested(self, info: WorkerInfo) -> str | None:
        """The reason a close signal given after `info.started_at` applies to this worker."""
        candidates = {
            "worker": self.keys.close_worker(info.name),
            "node": self.keys.close_node(info.node),
            "type": self.keys.close_type(info.entity_type),
        }
        if info.entity_id is not None:
            candidates["entity"] = self.keys.close_entity(info.entity_type, info.entity_id)
        pipe = self.redis.pipeline(transaction=False)
        for key in candidates.values():
            pipe.get(key)
        values = await self.client.call(pipe.execute)
        for scope, value in zip(candidates, values, strict=True):
            if value is not None and float(value) >= info.started_at:
                return f"close signal for this {scope}"
        return None

    # --- everyone else's side -------------------------------------------------------------
    async def _signal(self, key: str, message: dict[str, Any]) -> None:
        now = await self.server_time()
        await self.client.call(lambda: self.redis.set(key, repr(now), px=CLOSE_SIGNAL_TTL_MS))
        await self.client.call(
            lambda: self.redis.publish(self.keys.close_channel(), json.dumps(message))
        )

    async def close_worker(self, name: str) -> None:
        await self._signal(self.keys.close_worker(name), {"worker": name})

    async def close_entity(self, entity_type: str, entity_id: str) -> None:
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        await self._signal(
            self.keys.close_entity(entity_type, entity_id),
            {"entity_type": entity_type, "entity_id": entity_id},
        )

    async def close_type(self, entity_type: str) -> None:
        check_entity_type(entity_type)
        await self._signal(self.keys.close_type(entity_type), {"entity_type": entity_type})

    async def close_node(self, node: str) -> None:
        await self._signal(self.keys.close_node(node), {"node": node})

    async def worker(self, name: str) -> WorkerInfo | None:
        fields = await self.client.hgetall(self.keys.worker(name))
        return WorkerInfo.from_fields(fields) if fields else None

    async def worker_exists(self, name: str) -> bool:
        return bool(await self.client.call(lambda: self.redis.exists(self.keys.worker(name))))

    async def _live(self, names: set[str]) -> list[WorkerInfo]:
        """The records of `names` that still exist, read in one pipeline."""
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name in sorted(names):
            pipe.hgetall(self.keys.worker(name))
        found: list[dict[str, str]] = await self.client.call(pipe.execute)
        return [WorkerInfo.from_fields(fields) for fields in found if fields]

    async def entity_workers(self, entity_type: str, entity_id: str) -> list[WorkerInfo]:
        key = self.keys.entity_workers(entity_type, entity_id)
        live = await self._live(await self.client.smembers(key))
        return [w for w in live if entity_id in w.entities or w.entity_id == entity_id]

    async def node_workers(self, node: str) -> list[WorkerInfo]:
        key = self.keys.node_workers(node)
        return await self._live(await self.client.smembers(key))

    async def all_workers(self) -> list[WorkerInfo]:
        return [worker for worker, _ in await self.workers_seen()]

    async def workers_seen(self) -> list[tuple[WorkerInfo, float]]:
        """Every live worker with its last heartbeat (epoch seconds, the worker's clock); the
        names of workers whose registration expired are dropped from the list on the way."""
        beats: list[Any] = await self.client.call(
            lambda: self.redis.zrange(self.keys.workers(), 0, -1, withscores=True)
        )
        last = {str(name): float(at) for name, at in beats}
        live = await self._live(set(last))
        gone = set(last) - {w.name for w in live}
        if gone:
            await self.client.call(lambda: self.redis.zrem(self.keys.workers(), *gone))
        return [(w, last[w.name]) for w in live]


def close_message_applies(message: dict[str, Any], info: WorkerInfo) -> bool:
    """Whether a published close message is meant for this worker."""
    if "worker" in message:
        return bool(message["worker"] == info.name)
    if "node" in message:
        return bool(message["node"] == info.node)
    if message.get("entity_type") != info.entity_type:
        return False
    return "entity_id" not in message or message["entity_id"] == info.entity_id
