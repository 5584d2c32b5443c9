"""What the opt-in WAIT mode costs: enqueue and finish rates with and without it.

Why this exists: `AQ_DURABLE_REPLICAS=N` makes an enqueue and a job's outcome wait until N
replicas have them (Redis WAIT, in the same round trip as the script), so a failover cannot lose
what the caller was told is done. That costs a replica's round trip per call. This script
starts a private primary and one replica (loopback, no persistence), then in each repetition
measures, one after the other on the same servers, enqueues per second and finishes per second
(a finish that starts the entity's next job, as a busy worker does) without WAIT and with
WAIT 1, both one call at a time and with many calls in flight, and prints the rates and their
ratio (with WAIT / without). The ratios are the figure to read: absolute rates move with the
machine's load.

    python bench/durability.py [--jobs N] [--repeat R] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import redis

from atomicqueues.client import Client
from atomicqueues.config import Settings
from atomicqueues.leases import Leases, Started
from atomicqueues.pools.embedded import EmbeddedRedis

ENTITY_TYPE = "bench"
PREFIX = "aqdurable"


def make_replica(primary: EmbeddedRedis, replica: EmbeddedRedis) -> None:
    with redis.Redis(port=replica.port, decode_responses=True) as r:
        r.replicaof("127.0.0.1", primary.port)
        deadline = time.monotonic() + 30
        while r.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                sys.exit("the replica did not connect to the primary")
            time.sleep(0.05)


async def in_flight(n: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Run one(0..n-1) with `concurrency` calls in flight; returns calls per second."""
    next_i = iter(range(n))

    async def lane() -> None:
        for i in next_i:
            await one(i)

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return n / (time.perf_counter() - began)


async def measure(settings: Settings, jobs: int, concurrency: int) -> tuple[float, float]:
    """(enqueues/s, finishes/s) with these settings, on an emptied primary."""
    client = await Client.connect(settings)
    try:
        await client.redis.flushall()
        entities = [f"e{i}" for i in range(max(concurrency, 1))]
        enqueue_rate = await in_flight(
            jobs,
            concurrency,
            lambda i: client.enqueue(ENTITY_TYPE, entities[i % len(entities)], "noop", {"i": i}),
        )
        leases = Leases(client, "bench-worker")
        finished = 0

        async def drain(entity: str) -> None:
            nonlocal finished
            run = await leases.claim(ENTITY_TYPE, entity, None)
            while isinstance(run, Started):
                run = await leases.finish(run, "completed", "null")
                finished += 1

        began = time.perf_counter()
        await asyncio.gather(*(drain(e) for e in entities))
        finish_rate = finished / (time.perf_counter() - began)
        if finished != jobs:
            sys.exit(f"finished {finished} of {jobs} jobs")
        return enqueue_rate, finish_rate
    finally:
        await client.close()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (2nd row)")
    args = parser.parse_args()
    with EmbeddedRedis() as primary, EmbeddedRedis() as replica:
        make_replica(primary, replica)
        plain = Settings(redis_url=primary.url, prefix=PREFIX, keep_completed=0)
        durable = replace(plain, durable_replicas=1)
        rows: dict[tuple[str, int], dict[str, list[float]]] = {}
        for r in range(args.repeat):
            for concurrency in (1, args.concurrency):
                for mode, settings in (("plain", plain), ("wait", durable)):
                    print(f"repetition {r + 1}: {mode}, {concurrency} in flight", file=sys.stderr)
                    enq, fin = await measure(settings, args.jobs, concurrency)
                    for op, rate in (("enqueue", enq), ("finish", fin)):
                        rows.setdefault((op, concurrency), {}).setdefault(mode, []).append(rate)
    print(f"{args.jobs} jobs, {args.repeat} repetitions, primary + 1 replica on loopback")
    print(f"{'operation':<10} {'in flight':>9}  {'no WAIT /s':>22}  {'WAIT 1 /s':>22}  ratio")
    for (op, concurrency), by_mode in rows.items():
        ratios = [w / p for p, w in zip(by_mode["plain"], by_mode["wait"], strict=True)]
        print(
            f"{op:<10} {concurrency:>9}  {spread(by_mode['plain']):>22}  "
            f"{spread(by_mode['wait']):>22}  {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
