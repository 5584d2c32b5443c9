"""AtomicQueues: `Client.enqueue` from the producer (or `Client.enqueue_many` for the bulk
phase), jobs spread round-robin over `entities` entities (`e0`, `e1`, ...), each of concurrency
`concurrency` (1: in order). The producer and the workers are given the report's redis:// URL;
on Redis Cluster (one node's URL) the library switches to its Cluster client by itself.

Two ways to run the workers, both with the benchmark's process count and concurrency:
- `packed` (the default): `aq worker --slots C` processes, as `bench/hotpath.py` runs them. A
  packed worker holds at most one lease per entity, so one entity runs at most one job per
  process.
- `bound`: C entity-bound `Worker`s of entity `e0` per process (this module's `work()`), each
  its own lease holder: how one entity of concurrency N runs N jobs at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import replace

from pydantic import BaseModel

from atomicqueues.client import Client, NewJob
from atomicqueues.config import Settings
from atomicqueues.context import JobContext
from atomicqueues.controls import Controls
from atomicqueues.registry import Registry
from atomicqueues.worker import Worker
from compare.driver import Driver, console_script
from compare.marks import ENV_CONCURRENCY, ENV_OPTIONS, ENV_REDIS_URL, mark

ENTITY_TYPE = "bench"
PREFIX = "aqcompare"
IDLE_TIMEOUT = 3600.0
"""Workers never leave for idleness during a run: the benchmark stops them."""

registry = Registry()


class Sent(BaseModel):
    sent: float


@registry.command("noop")
async def noop(ctx: JobContext, payload: Sent) -> None:
    mark(payload.sent)


class AtomicQueues(Driver):
    name = "aq"
    packages = ("atomicqueues", "redis", "hiredis", "pydantic")

    @property
    def entities(self) -> int:
        return int(self.options.get("entities", 1000))

    async def open(self) -> None:
        self.client = await Client.connect(Settings(redis_url=self.url, prefix=PREFIX))
        self.sent = 0
        concurrency = int(self.options.get("concurrency", 1))
        if concurrency > 1:
            for i in range(self.entities):
                await Controls(self.client).set_concurrency(ENTITY_TYPE, f"e{i}", concurrency)

    def next_entity(self) -> str:
        entity = f"e{self.sent % self.entities}"
        self.sent += 1
        return entity

    async def enqueue(self, sent: float) -> None:
        await self.client.enqueue(ENTITY_TYPE, self.next_entity(), "noop", {"sent": sent})

    async def enqueue_many(self, sent: float, count: int) -> None:
        jobs = [
            NewJob(ENTITY_TYPE, self.next_entity(), "noop", {"sent": sent}) for _ in range(count)
        ]
        ids = await self.client.enqueue_many(jobs)
        if len(set(ids)) != count:
            raise RuntimeError(
                f"enqueue_many returned {len(set(ids))} distinct ids for {count} jobs"
            )

    async def close(self) -> None:
        await self.client.close()

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        if self.options.get("mode", "packed") == "bound":
            return [[sys.executable, "-m", "compare.drivers.aq_driver"]] * processes
        argv = [console_script("aq"), "--redis-url", self.url, "--prefix", PREFIX, "worker"]
        argv += ["--handlers", "compare.drivers.aq_driver:registry", "--entity-type", ENTITY_TYPE]
        argv += ["--slots", str(concurrency), "--idle-timeout", str(IDLE_TIMEOUT)]
        return [argv] * processes


async def work() -> None:
    """One process of `bound` mode: C entity-bound Workers of entity e0 until SIGTERM."""
    concurrency = int(os.environ[ENV_CONCURRENCY])
    entity = json.loads(os.environ.get(ENV_OPTIONS, "{}")).get("entity", "e0")
    settings = Settings(redis_url=os.environ[ENV_REDIS_URL], prefix=PREFIX)
    settings = replace(settings, idle_timeout=IDLE_TIMEOUT)
    clients = [await Client.connect(settings) for _ in range(concurrency)]
    workers = [
        Worker(c, registry, ENTITY_TYPE, entity_id=entity, name=f"bench-{os.getpid()}-{i}")
        for i, c in enumerate(clients)
    ]

    def close_all() -> None:
        for worker in workers:
            worker.close("benchmark done")

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, close_all)
    try:
        await asyncio.gather(*(w.run() for w in workers))
    finally:
        for c in clients:
            await c.close()


DRIVER = AtomicQueues

if __name__ == "__main__":
    asyncio.run(work())
