"""Memory: what Redis keeps per job, and whether a long-lived worker's memory stays flat.

Why this exists: a queue that holds millions of waiting jobs, or keeps every completed job for a
day, costs Redis memory per job, and a worker that runs for weeks must not grow with the jobs it
has run. This script measures both on a private redis-server (loopback, temporary directory, no
persistence), with the library's defaults:

1. Redis bytes per job, from INFO memory `used_memory`: before and after one producer enqueues
   `--jobs` no-op jobs over `--entities` entities (`Client.enqueue_many`, chunks of 1,000): bytes
   per waiting job; after one packed `aq worker` has run them all, the default retention keeping
   every completed job (an hour, at most 1,000 per entity): bytes per retained completed job; the
   same again with `keep_completed=0` on every job: what is left per job without retention.
2. Worker memory: VmRSS of that one `aq worker --slots 16` process (`/proc/PID/status`) after the
   first `--rss-jobs` A no-op jobs and after B (fed A at a time, each batch run before the next
   is enqueued), and B's reading ÷ A's.

    python bench/memory.py                       # 20,000 jobs; RSS after 20,000 and 200,000 jobs
    python bench/memory.py --quick               # 2,000 jobs; RSS after 2,000 and 20,000
    python bench/memory.py --jobs 5000 --rss-jobs 5000,50000

`bench/report.py` runs the same measurement on its own server and shows it in its report.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

import hotpath
from atomicqueues.client import NewJob
from compare.render import RSS_TARGET
from compare.stats import bytes_per_job

CHUNK = 1000
"""Jobs per `Client.enqueue_many` call."""
SETTLE = 0.5
"""Seconds the worker idles after a batch before its memory is read."""


@dataclass(frozen=True)
class Options:
    jobs: int = 20_000
    """Jobs of the Redis bytes-per-job readings."""
    entities: int = 1000
    rss_jobs: tuple[int, int] = (20_000, 200_000)
    """The worker's RSS is read after this many jobs, and after this many."""


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in KiB, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class Memory:
    """The measurement, on one server (the report's, or this script's own)."""

    def __init__(self, server: hotpath.RedisServer, options: Options) -> None:
        self.server = server
        self.options = options
        sizes = hotpath.Sizes(options.jobs, options.entities, 1, 1, 1)
        self.bench = hotpath.Bench(server, sizes)
        self.enqueued = 0
        self.logs: list[Path] = []

    async def used_memory(self) -> int:
        return int((await self.bench.control.info("memory"))["used_memory"])

    async def enqueue(self, count: int, keep_completed: float | None = None) -> None:
        """`count` no-op jobs, round-robin over the entities, `CHUNK` a call."""
        client = self.bench.client()
        try:
            for start in range(0, count, CHUNK):
                jobs = [
                    NewJob(
                        hotpath.ENTITY_TYPE,
                        f"user-{(self.enqueued + i) % self.options.entities}",
                        "noop",
                        keep_completed=keep_completed,
                    )
                    for i in range(min(CHUNK, count - start))
                ]
                await client.enqueue_many(jobs)
                self.enqueued += len(jobs)
        finally:
            await client.close()

    async def worker(self, name: str) -> asyncio.subprocess.Process:
        log = self.server.dir / f"{name}.log"
        self.logs.append(log)
        return await hotpath.spawn_worker(self.server.url, name, log)

    async def drained(self, proc: asyncio.subprocess.Process, total: int) -> None:
        """Until `total` jobs have completed since the server was emptied, then a short idle."""

        def alive() -> None:
            if proc.returncode is not None:
                tail = self.logs[-1].read_text(errors="replace").splitlines()[-5:]
                raise hotpath.BenchError(f"aq worker exited with {proc.returncode}: {tail}")

        await self.bench.wait_completed(total, alive)
        await asyncio.sleep(SETTLE)

    async def redis_bytes(self, keep_completed: float | None) -> tuple[float, float]:
        """Bytes per waiting job, and per job once run (with that retention); the worker is
        stopped before the last reading, so nothing of it is counted."""
        n = self.options.jobs
        await self.bench.reset()
        self.enqueued = 0
        empty = await self.used_memory()
        await self.enqueue(n, keep_completed)
        waiting = await self.used_memory()
        proc = await self.worker(f"memory-keep-{keep_completed}")
        try:
            await self.drained(proc, n)
        finally:
            await hotpath.stop_process(proc)
        done = await self.used_memory()
        return bytes_per_job(empty, waiting, n), bytes_per_job(empty, done, n)

    async def worker_rss(self) -> dict[str, Any]:
        """One packed `aq worker` fed `first` jobs at a time; its memory after the first batch
        and after the last."""
        first, last = self.options.rss_jobs
        await self.bench.reset()
        self.enqueued = 0
        proc = await self.worker("memory-rss")
        readings: dict[str, Any] = {"jobs": [first, last]}
        began = time.perf_counter()
        try:
            while self.enqueued < last:
                await self.enqueue(min(first, last - self.enqueued))
                await self.drained(proc, self.enqueued)
                if self.enqueued == first:
                    readings["first"] = rss_kib(proc.pid)
            readings["last"] = rss_kib(proc.pid)
        finally:
            await hotpath.stop_process(proc)
        readings["seconds"] = time.perf_counter() - began
        return readings

    async def run(self) -> dict[str, Any]:
        try:
            await self.bench.learn_connection_settings()
            waiting, retained = await self.redis_bytes(None)
            waiting0, left = await self.redis_bytes(0.0)
            rss = await self.worker_rss()
        finally:
            await self.bench.control.aclose()
        return {
            "jobs": self.options.jobs,
            "entities": self.options.entities,
            "waiting_bytes": waiting,
            "retained_bytes": retained,
            "waiting_bytes_keep0": waiting0,
            "left_bytes_keep0": left,
            "rss": rss,
        }


async def measure(server: hotpath.RedisServer, options: Options) -> dict[str, Any]:
    """The figures (see the module's docstring); `bench/report.py` calls this on its server."""
    return await Memory(server, options).run()


def rss_ratio(figures: dict[str, Any]) -> float:
    rss = figures["rss"]
    return float(rss["last"]["VmRSS"]) / float(rss["first"]["VmRSS"])


def print_figures(figures: dict[str, Any], version: str) -> None:
    n, entities = figures["jobs"], figures["entities"]
    rss = figures["rss"]
    first, last = rss["jobs"]

    def row(label: str, value: str, note: str = "") -> str:
        return f"   {label:<52} {value:>12}   {note}".rstrip()

    def mib(kib: int) -> str:
        return f"{kib / 1024:.1f} MiB"

    lines = [
        "AtomicQueues memory",
        f"redis-server {version} (private, no persistence), Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        "",
        f"Redis used_memory per job ({n:,} jobs over {entities:,} entities, their keys included)",
        row("waiting job", f"{figures['waiting_bytes']:,.0f} B"),
        row("completed job, kept by the default retention", f"{figures['retained_bytes']:,.0f} B"),
        row("waiting job, keep_completed=0", f"{figures['waiting_bytes_keep0']:,.0f} B"),
        row(
            "left per job after the run, keep_completed=0", f"{figures['left_bytes_keep0']:,.0f} B"
        ),
        "",
        f"Worker memory (one aq worker --slots {hotpath.PACKED_SLOTS}, no-op jobs)",
        row(f"VmRSS after {first:,} jobs", mib(rss["first"]["VmRSS"])),
        row(
            f"VmRSS after {last:,} jobs",
            mib(rss["last"]["VmRSS"]),
            f"peak {mib(rss['last']['VmHWM'])}",
        ),
        row(
            f"after {last:,} ÷ after {first:,}",
            f"{rss_ratio(figures):.3f}×",
            f"target ≤ {RSS_TARGET:.2f}× ({rss['seconds']:.0f} s of jobs)",
        ),
    ]
    print("\n".join(lines))


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, help="jobs of the Redis readings (default 20000)")
    parser.add_argument("--entities", type=int, default=1000, help="entities (default 1000)")
    parser.add_argument(
        "--rss-jobs",
        help="read the worker's RSS after A and after B jobs: A,B (default 20000,200000)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2,000 jobs, RSS after 2,000 and 20,000"
    )
    args = parser.parse_args(argv)
    options = (
        Options(2000, args.entities, (2000, 20_000))
        if args.quick
        else Options(entities=args.entities)
    )
    if args.jobs is not None:
        options = Options(args.jobs, options.entities, options.rss_jobs)
    if args.rss_jobs:
        try:
            a, b = (int(x) for x in args.rss_jobs.split(","))
        except ValueError:
            parser.error("--rss-jobs takes two numbers: A,B")
        options = Options(options.jobs, options.entities, (a, b))
    a, b = options.rss_jobs
    if options.jobs < 1 or options.entities < 1 or not 0 < a < b:
        parser.error("--jobs and --entities must be at least 1, and --rss-jobs 0 < A < B")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)

    def run(server: hotpath.RedisServer) -> None:
        figures = asyncio.run(measure(server, options))
        with redis.Redis(port=server.port, decode_responses=True) as r:
            version = r.info("server")["redis_version"]
        print_figures(figures, version)

    return hotpath.run_on_private_redis("memory.py", run)


if __name__ == "__main__":
    sys.exit(main())
