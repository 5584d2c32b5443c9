"""One system's run, measured the same way for every system, and the round-trip limits of Redis.

Why this exists: the fairness of the comparison lives here, written once. For each system and
repetition: an empty Redis; N no-op jobs enqueued by one producer before any worker runs; the
workers started (same process count and concurrency for all); the drain timed from the first
handler start to the last (start-up left out); Redis's commands and CPU over enqueue and drain;
then, with the same idle workers, jobs enqueued at half of the system's peak just measured (the
lesser of its drain rate and its one producer's enqueue rate), each timed from the enqueue call
to its handler's start. A system with a bulk API is also timed
enqueueing the same number of jobs through it, on an empty server (`Measure.bulk`). On Redis
Cluster the same, with every master's INFO summed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from compare.driver import BENCH_DIR
from compare.marks import MarkReader
from compare.stats import RedisCost, ServerSnapshot, percentile, throughput
from compare.systems import BULK_CHUNK, CONCURRENCY, PROCESSES, System
from hotpath import PREFILL_CONCURRENCY
from hotpath import Bench as RuntimeBench

DRAIN_TIMEOUT = 900.0
"""Seconds a drain may take before the benchmark gives up on that system."""
LATENCY_SECONDS = 4.0
LATENCY_MIN, LATENCY_MAX = 200, 4000
"""Jobs of the latency phase: LATENCY_SECONDS at half of the peak, within these bounds."""

Figures = dict[str, float]
Progress = Callable[[int, int], None]
"""Called with (jobs started, jobs expected) while a phase waits for its jobs."""


def session_cpu(sessions: set[int]) -> float:
    """CPU seconds (user + system) used so far by every process of these sessions, with the
    children they have reaped: each system's worker command runs in a session of its own, so
    this is all its worker processes (RQ's forked work horses and Dramatiq's or taskiq's
    worker processes included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        if int(fields[3]) in sessions:  # field 6 of stat: the session id
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


class BenchError(RuntimeError):
    """A system could not be measured (its workers died, jobs did not start in time)."""


@dataclass(frozen=True)
class Sizes:
    jobs: int
    repeat: int
    limit_ops: int
    """Calls of each round-trip baseline loop."""
    scaling_entities: int


class DriverProcess:
    """A `python -m compare.driver` child in the system's virtualenv (see compare/driver.py)."""

    def __init__(self, python: str, system: System, url: str, logs: Path) -> None:
        self.python, self.system, self.url, self.logs = python, system, url, logs
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> DriverProcess:
        env = dict(os.environ, PYTHONPATH=str(BENCH_DIR), PYTHONUNBUFFERED="1")
        with (self.logs / f"{self.system.key}-driver.log").open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "compare.driver",
                self.system.driver,
                self.url,
                json.dumps(self.system.options),
                cwd=BENCH_DIR,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(self.request("quit"), 60)
            await asyncio.wait_for(self.proc.wait(), 30)
        except (BenchError, TimeoutError):
            self.proc.kill()
            await self.proc.wait()

    async def request(self, op: str, timeout: float = 120.0, **fields: Any) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            log = self.logs / f"{self.system.key}-driver.log"
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise BenchError(f"{self.system.key}: driver exited: {tail}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchError(f"{self.system.key}: {op}: {answer['error']}\n{answer.get('trace')}")
        return answer


class Measure:
    """The measurements of one run of the report, against one private redis-server, or against
    the masters of a private Redis Cluster (`nodes`; the systems are given `url`, one of them)."""

    def __init__(
        self, url: str, sizes: Sizes, work_dir: Path, nodes: Sequence[str] | None = None
    ) -> None:
        self.url = url
        self.sizes = sizes
        self.work_dir = work_dir
        self.controls = [
            aioredis.Redis.from_url(node, decode_responses=True) for node in (nodes or [url])
        ]
        self.versions: dict[str, dict[str, str]] = {}

    async def close(self) -> None:
        for control in self.controls:
            await control.aclose()

    async def snapshot(self) -> ServerSnapshot:
        """INFO commandstats and cpu of the server, or of every master summed."""
        snapshots = [
            ServerSnapshot.from_info(await c.info("commandstats"), await c.info("cpu"))
            for c in self.controls
        ]
        return ServerSnapshot.total(snapshots)

    async def reset(self) -> None:
        """An empty server: no keys, no scripts or functions, no clients left from the previous
        system."""
        for control in self.controls:
            await control.flushall()
            await control.script_flush()
            with suppress(redis.exceptions.ResponseError):  # before 7.0: no functions
                await control.function_flush()

    async def wait_marks(
        self,
        reader: MarkReader,
        total: int,
        driver: DriverProcess,
        progress: Progress,
        timeout: float,
    ) -> None:
        deadline = time.monotonic() + timeout
        next_check = 0.0
        while (count := reader.read()) < total:
            progress(count, total)
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"{driver.system.key}: {count} of {total} jobs started in time")
            if now >= next_check:
                exited = (await driver.request("check"))["exited"]
                if any(code is not None for code in exited):
                    raise BenchError(
                        f"{driver.system.key}: a worker exited ({exited}); logs in {self.work_dir}"
                    )
                next_check = now + 1.0
            await asyncio.sleep(0.05 if total - count > 200 else 0.005)
        progress(total, total)

    async def system(self, system: System, python: str, rep: int, progress: Progress) -> Figures:
        """One repetition of one system; its figures by name."""
        n = system.jobs(self.sizes.jobs)
        await self.reset()
        marks = self.work_dir / f"{system.key}-{rep}.marks"
        marks.unlink(missing_ok=True)
        reader = MarkReader(marks)
        figures: Figures = {}
        async with DriverProcess(python, system, self.url, self.work_dir) as driver:
            self.versions[system.key] = (await driver.request("hello"))["versions"]
            before = await self.snapshot()
            enqueued = await driver.request("enqueue", timeout=DRAIN_TIMEOUT, count=n)
            figures["enqueue_rate"] = n / enqueued["seconds"]
            started = await driver.request(
                "start",
                processes=PROCESSES,
                concurrency=CONCURRENCY,
                logs=str(self.work_dir),
                marks=str(marks),
            )
            sessions = set(started["pids"])
            try:
                # Worker CPU from the first job's start (start-up imports left out) to the last.
                await self.wait_marks(reader, 1, driver, progress, DRAIN_TIMEOUT)
                cpu_before, jobs_before = session_cpu(sessions), len(reader.marks)
                await self.wait_marks(reader, n, driver, progress, DRAIN_TIMEOUT)
                cpu_after = session_cpu(sessions)
                cost = RedisCost.between(before, await self.snapshot(), n)
                rate = throughput([start for _, start in reader.marks[:n]])
                figures["rate"] = rate
                figures["commands_per_job"] = cost.commands_per_job
                figures["scripts_per_job"] = cost.scripts_per_job
                figures["cpu_us_per_job"] = cost.cpu_us_per_job
                figures["script_us_per_job"] = cost.script_us_per_job
                figures["jobs"] = n
                if n > jobs_before:
                    worker_cpu = (cpu_after - cpu_before) / (n - jobs_before)
                    figures["worker_cpu_us_per_job"] = worker_cpu * 1e6
                for name, per_job in cost.top(40):
                    figures[f"cmd.{name}"] = per_job
                if system.latency:
                    # Half of the peak jobs/s from one producer to the workers: the lesser of
                    # the two rates. Offered more than it can send, the producer would run flat
                    # out on a shared CPU and time its own backlog instead of the system's wait.
                    peak = min(rate, figures["enqueue_rate"])
                    figures.update(await self.latency(driver, reader, peak / 2, progress))
            finally:
                await driver.request("stop", timeout=120)
        marks.unlink(missing_ok=True)
        return figures

    async def bulk(self, system: System, python: str, n: int) -> Figures:
        """`n` jobs enqueued by one producer through the system's bulk API, `BULK_CHUNK` jobs a
        call, on an empty server (its own driver process, so the run after it starts as every
        run does); no worker runs them: the run after it empties the server first."""
        await self.reset()
        async with DriverProcess(python, system, self.url, self.work_dir) as driver:
            await driver.request("hello")
            before = await self.snapshot()
            done = await driver.request(
                "enqueue_bulk", timeout=DRAIN_TIMEOUT, count=n, chunk=BULK_CHUNK
            )
            cost = RedisCost.between(before, await self.snapshot(), n)
        return {
            "enqueue_bulk_rate": n / done["seconds"],
            "enqueue_bulk_commands_per_job": cost.commands_per_job,
            "enqueue_bulk_cpu_us_per_job": cost.cpu_us_per_job,
        }

    async def latency(
        self, driver: DriverProcess, reader: MarkReader, rate: float, progress: Progress
    ) -> Figures:
        count = int(min(LATENCY_MAX, max(LATENCY_MIN, rate * LATENCY_SECONDS)))
        first = len(reader.marks)
        await asyncio.sleep(1.0)  # the workers are idle again (blocked, or polling)
        sent = await driver.request(
            "enqueue", timeout=DRAIN_TIMEOUT, count=count, rate=round(rate, 3)
        )
        await self.wait_marks(reader, first + count, driver, progress, 120)
        waits = [start - sent_at for sent_at, start in reader.marks[first:]]
        return {
            "latency_rate": count / sent["seconds"],
            "latency_p50": statistics.median(waits),
            "latency_p99": percentile(waits, 99),
        }


# --- the physical limit: Redis round trips with the same client library --------------------
async def client_loops(bench: RuntimeBench) -> Figures:
    """One redis-py asyncio client set up as the library's `connect()` sets one up, one call at a
    time: no-op EVALSHA calls (`bench/hotpath.py`'s baseline, reused), and LPUSH + BLMOVE pairs
    (the least a reliable list queue does per job). Round trips per second of each."""
    evalsha = await bench.baseline()
    client = bench.redis()
    pairs = max(1, bench.sizes.jobs // 2)
    try:
        began = time.perf_counter()
        for _ in range(pairs):
            await client.lpush("limit:q", "x")
            await client.blmove("limit:q", "limit:active", 1, "RIGHT", "LEFT")
        lpush_blmove = 2 * pairs / (time.perf_counter() - began)
        await client.delete("limit:q", "limit:active")
    finally:
        await client.aclose()
    return {
        "evalsha_ops": evalsha,
        "evalsha_rtt": bench.figures["baseline.rtt_p50"][-1],
        "lpush_blmove_ops": lpush_blmove,
    }


async def worker_trips(bench: RuntimeBench, jobs: int) -> tuple[float, str]:
    """Round trips per job that packed workers make when every job is for an entity of its own
    (the run `aq-new`): `jobs` jobs for `jobs` entities, drained by PROCESSES in-process packed
    `Worker`s of `hotpath.PACKED_SLOTS` slots each (16, as CONCURRENCY), every request they
    write counted on their connections
    (`bench/hotpath.py`'s counter: each command, or each whole pipeline, is one; handshakes and
    heartbeats included). Returns round trips per job and what they were."""
    entity_ids = [f"new-{i}" for i in range(jobs)]
    trips, _ = await bench.packed_trips(entity_ids, PROCESSES, PREFILL_CONCURRENCY)
    return trips.total / jobs, trips.breakdown()


async def redis_benchmark(port: int, ops: int, clients: int) -> Figures:
    """The server's own ceiling, with `clients` connections of redis-benchmark (C, no client
    library in the way): no-op EVALSHA and LPUSH requests per second. Empty if redis-benchmark
    is not installed."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {}
    control = aioredis.Redis(port=port, decode_responses=True)
    try:
        sha = await control.script_load("return 1")
    finally:
        await control.aclose()
    out: Figures = {}
    tests = {"server_evalsha_ops": ["evalsha", sha, "0"], "server_lpush_ops": ["lpush", "q", "x"]}
    for key, command in tests.items():
        base = [binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(ops), "-c", str(clients)]
        proc = await asyncio.create_subprocess_exec(
            *base,
            "--csv",
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        stdout, _ = await proc.communicate()
        lines = [line for line in stdout.decode().splitlines() if line.strip()]
        if proc.returncode == 0 and len(lines) >= 2:
            out[key] = float(lines[-1].split(",")[1].strip('"'))
    return out


def describe_python() -> str:
    return f"{sys.implementation.name} {sys.version.split()[0]}"
