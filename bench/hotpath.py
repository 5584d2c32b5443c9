"""Runtime benchmark: Redis round trips per job, jobs/s and enqueue-to-start latency.

Why this exists: the design sets goals for the hot path (an enqueue is one round trip, a busy
worker finishes a job and starts the next in one, an idle worker blocks on Redis instead of
polling). This script checks those goals and measures what the runtime costs on top of Redis.
It starts a private redis-server (loopback, temporary directory, no persistence), runs every
measurement `--repeat` times, prints one table and stops the server.

Absolute figures move with the machine's load, so each is put next to a baseline measured in
the same repetition: a loop of no-op EVALSHA calls (`return 1`) from one asyncio client, the
fastest this client library talks to this server. See bench/README.md for what each figure
means.

    python bench/hotpath.py [--jobs N] [--repeat R] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import shutil
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from atomicqueues.client import Client
from atomicqueues.config import Settings
from atomicqueues.connection import connect
from atomicqueues.context import JobContext
from atomicqueues.errors import AtomicQueuesError
from atomicqueues.keys import Keys, in_bucket
from atomicqueues.leases import Leases, Started
from atomicqueues.pools.embedded import EmbeddedRedis
from atomicqueues.registry import Registry
from atomicqueues.scripts import NAMES, library, sha, source
from atomicqueues.worker import Worker
from compare.render import fmt_pct, fmt_trips
from compare.stats import percentile
from noop_handlers import registry as noop_registry

BENCH_DIR = Path(__file__).resolve().parent
ENTITY_TYPE = "bench"
PREFIX = "aqbench"
PACKED_PROCESSES = 2
PACKED_SLOTS = 16
PREFILL_CONCURRENCY = 32
BASELINE_SCRIPT = "return 1"
TIMEOUT = 600.0
"""Seconds any one measurement may take before the benchmark gives up."""
CONNECTION_SETTINGS = (
    "decode_responses",
    "protocol",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
    "retry_on_timeout",
)
"""What our clients copy from one made by the library's `connect()`, so they behave alike."""


class BenchError(RuntimeError):
    """A measurement could not be made (a worker died, jobs did not complete)."""


@dataclass(frozen=True)
class Sizes:
    jobs: int
    """Jobs drained in the throughput runs; also the number of baseline EVALSHA calls."""
    entities: int
    """Entities the packed-worker run spreads its jobs over."""
    trip_jobs: int
    """Jobs over which round trips are counted."""
    latency_samples: int
    repeat: int

    @property
    def jobs_per_entity(self) -> int:
        return max(1, self.jobs // self.entities)


# --- a private redis-server --------------------------------------------------------------------
class RedisServer(EmbeddedRedis):
    """The library's embedded redis-server, keeping its directory (and log) when a run failed."""

    def stop(self, *, keep_dir: bool = False) -> None:
        super().stop()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# --- counting round trips on the client side ---------------------------------------------------
SCRIPT_NAMES = {sha(name): name for name in NAMES}
SCRIPT_NAMES[hashlib.sha1(BASELINE_SCRIPT.encode()).hexdigest()] = "return 1"
SCRIPT_NAMES.update({library().function(name): name for name in NAMES})


def command_names(packed: bytes | str | Iterable[bytes | memoryview]) -> list[str]:
    """Names of the commands in one request as the client writes it (RESP arrays); an
    EVALSHA is named after the project script it runs."""
    if isinstance(packed, str):
        data = packed.encode()
    elif isinstance(packed, bytes):
        data = packed
    else:
        data = b"".join(packed)
    names: list[str] = []
    i = 0
    while i < len(data) and data[i : i + 1] == b"*":
        end = data.index(b"\r\n", i)
        argc, i = int(data[i + 1 : end]), end + 2
        head: list[bytes] = []
        for _ in range(argc):
            end = data.index(b"\r\n", i)
            size, i = int(data[i + 1 : end]), end + 2
            if len(head) < 2:
                head.append(data[i : i + size])
            i += size + 2
        name = head[0].decode().upper()
        if name in ("EVALSHA", "FCALL") and len(head) > 1:
            name += " " + SCRIPT_NAMES.get(head[1].decode(), head[1][:8].decode())
        names.append(name)
    return names


@dataclass
class RoundTrips:
    """Requests a client wrote: one round trip per command or per whole pipeline."""

    detail: bool = False
    """Also name each request (costs a parse per request: off where time is measured)."""
    total: int = 0
    commands: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def record(self, packed: bytes | str | Iterable[bytes | memoryview]) -> None:
        self.total += 1
        if self.detail:
            names = command_names(packed)
            self.commands += len(names)
            kind = names[0] if len(names) == 1 else f"pipeline of {len(names)}"
            self.kinds[kind] += 1

    def reset(self) -> None:
        self.total = self.commands = 0
        self.kinds.clear()

    def breakdown(self) -> str:
        return ", ".join(f"{kind} ×{n}" for kind, n in self.kinds.most_common())


def counting_connection(trips: RoundTrips) -> type[Connection]:
    """A connection class that records every request before writing it (handshakes too)."""

    class CountingConnection(Connection):
        async def send_packed_command(
            self, command: bytes | str | Iterable[bytes], check_health: bool = True
        ) -> None:
            trips.record(command)
            await super().send_packed_command(command, check_health)

    return CountingConnection


# --- statistics --------------------------------------------------------------------------------
@dataclass
class ServerStats:
    """Calls and microseconds per command, from INFO commandstats. Commands a Lua script runs
    count too; an EVALSHA's time includes everything its script did."""

    calls: Counter[str] = field(default_factory=Counter)
    usec: Counter[str] = field(default_factory=Counter)

    def minus(self, before: ServerStats) -> ServerStats:
        calls, usec = Counter(self.calls), Counter(self.usec)
        calls.subtract(before.calls)
        usec.subtract(before.usec)
        skip = {"info", "script|load", "script|flush", "flushall"}
        return ServerStats(
            Counter({k: n for k, n in calls.items() if n > 0 and k not in skip}),
            Counter({k: n for k, n in usec.items() if n > 0 and k not in skip}),
        )

    @property
    def commands(self) -> int:
        return sum(self.calls.values())

    def script_calls(self) -> int:
        return self.calls["evalsha"] + self.calls["fcall"]

    def script_usec(self) -> float:
        """Server time of one script call (EVALSHA or FCALL), scripts included, in seconds."""
        return (self.usec["evalsha"] + self.usec["fcall"]) / max(1, self.script_calls()) / 1e6

    def per_job(self, jobs: int, top: int = 6) -> str:
        common = self.calls.most_common(top)
        return ", ".join(f"{cmd.upper()} {n / jobs:.1f}" for cmd, n in common)


# --- the benchmark -----------------------------------------------------------------------------
class Bench:
    """One run: the server, the sizes, and the figures of every repetition."""

    def __init__(self, server: RedisServer, sizes: Sizes) -> None:
        self.server = server
        self.sizes = sizes
        self.settings = Settings(redis_url=server.url, prefix=PREFIX)
        self.keys = Keys(PREFIX)
        self.control = aioredis.Redis.from_url(server.url, decode_responses=True)
        self.connection_settings: dict[str, Any] = {}
        self.figures: defaultdict[str, list[float]] = defaultdict(list)
        self.details: dict[str, str] = {}
        """Breakdowns of the last repetition, printed under the table."""
        self.rep = 0

    def add(self, key: str, value: float) -> None:
        self.figures[key].append(value)

    async def learn_connection_settings(self) -> None:
        model = await connect(self.server.url, self.settings.call_timeout)
        kwargs = model.connection_pool.connection_kwargs
        self.connection_settings = {k: kwargs[k] for k in CONNECTION_SETTINGS if k in kwargs}
        await model.aclose()

    def redis(self, trips: RoundTrips | None = None) -> aioredis.Redis:
        """A redis-py client on its own pool, set up as the library's `connect()` sets one up,
        counting its round trips if asked."""
        extra: dict[str, Any] = {}
        if trips is not None:
            extra["connection_class"] = counting_connection(trips)
        return aioredis.Redis.from_url(self.server.url, **self.connection_settings, **extra)

    def client(self, trips: RoundTrips | None = None, **settings: Any) -> Client:
        """A project Client (see `redis`) with the bench's settings, changed by `settings`."""
        return Client(self.redis(trips), replace(self.settings, **settings))

    # --- reading the server ---------------------------------------------------------------------
    async def reset(self) -> None:
        """An empty server before each measurement, its scripts (and on Redis 7 and later its
        function library) loaded as a running deployment's are (loading is a one-time cost)."""
        await self.control.flushall()
        await self.control.script_flush()
        for text in [source(name) for name in NAMES] + [BASELINE_SCRIPT]:
            await self.control.script_load(text)
        with suppress(redis.exceptions.ResponseError):  # before 7.0: no functions
            await self.control.function_load(library().code, replace=True)

    async def commandstats(self) -> ServerStats:
        info = await self.control.info("commandstats")
        stats = ServerStats()
        for key, value in info.items():
            name = key.removeprefix("cmdstat_")
            stats.calls[name] = int(value["calls"])
            stats.usec[name] = int(value["usec"])
        stats.calls["info"] += 1  # the INFO asking for these counts is counted once it has run
        return stats

    async def server_delta(self, before: ServerStats) -> ServerStats:
        after = await self.commandstats()
        return after.minus(before)

    async def completed(self) -> int:
        """Jobs completed so far: the same counters `IndexReads.counts` reads, in one round trip
        (it would make one per bucket), so polling costs the server little."""
        pipe = self.control.pipeline(transaction=False)
        for bucket in self.keys.buckets(ENTITY_TYPE):
            pipe.hget(in_bucket(bucket, "counts"), "completed")
        return sum(int(v) for v in await pipe.execute() if v)

    async def wait_completed(self, total: int, alive: Callable[[], None]) -> float:
        """Poll until `total` jobs have completed; returns perf_counter when that was seen."""
        deadline = time.perf_counter() + TIMEOUT
        while True:
            done = await self.completed()
            now = time.perf_counter()
            if done >= total:
                return now
            alive()
            if now > deadline:
                raise BenchError(f"only {done} of {total} jobs completed in {TIMEOUT:.0f}s")
            await asyncio.sleep(0.002 if total - done <= total // 20 else 0.02)

    async def wait_blocked(self, clients: int, alive: Callable[[], None]) -> None:
        """Wait until `clients` connections are blocked in Redis (BLPOP, or held by a pause)."""
        deadline = time.perf_counter() + 60
        while int((await self.control.info("clients"))["blocked_clients"]) < clients:
            alive()
            if time.perf_counter() > deadline:
                raise BenchError(f"{clients} clients did not block within 60s")
            await asyncio.sleep(0.0005)

    # --- producing jobs -------------------------------------------------------------------------
    async def enqueue_all(self, entity_ids: Sequence[str], concurrency: int = 1) -> float:
        """Enqueue one no-op job per item (in order per entity); returns the seconds taken."""
        client = self.client()
        items = iter(entity_ids)

        async def produce() -> None:
            for entity_id in items:
                await client.enqueue(ENTITY_TYPE, entity_id, "noop")

        try:
            began = time.perf_counter()
            await asyncio.gather(*(produce() for _ in range(concurrency)))
            return time.perf_counter() - began
        finally:
            await client.close()

    # --- 1. round trips -------------------------------------------------------------------------
    async def trips_enqueue(self) -> None:
        n = self.sizes.trip_jobs
        await self.reset()
        trips = RoundTrips(detail=True)
        client = self.client(trips)
        try:
            await client.redis.ping()  # the connection's handshake is no enqueue's cost
            await self.control.script_flush()  # as after a Redis restart
            trips.reset()
            await client.enqueue(ENTITY_TYPE, "first", "noop")
            self.add("trips.enqueue.first", trips.total)
            self.details["trips.enqueue.first"] = trips.breakdown()
            trips.reset()
            before = await self.commandstats()
            for i in range(n):
                await client.enqueue(ENTITY_TYPE, f"user-{i % 10}", "noop")
            delta = await self.server_delta(before)
        finally:
            await client.close()
        self.add("trips.enqueue", trips.total / n)
        self.add("server.enqueue", delta.commands / n)
        self.add("server.enqueue.lua", (delta.commands - trips.commands) / n)
        self.add("server.enqueue.usec", delta.script_usec())
        self.details["server.enqueue"] = delta.per_job(n)

    async def trips_finish_loop(self) -> None:
        n = self.sizes.trip_jobs
        await self.reset()
        await self.enqueue_all(["busy"] * n)
        trips = RoundTrips(detail=True)
        client = self.client(trips)
        leases = Leases(client, "bench-loop")
        try:
            await client.redis.ping()
            trips.reset()
            before = await self.commandstats()
            await busy_loop(leases, "busy", n)
            delta = await self.server_delta(before)
            kinds = trips.breakdown()
        finally:
            await client.close()
        self.add("trips.finish", trips.total / n)
        self.add("server.finish", delta.commands / n)
        self.add("server.finish.lua", (delta.commands - trips.commands) / n)
        self.add("server.finish.usec", delta.script_usec())
        self.details["trips.finish"] = kinds
        self.details["server.finish"] = delta.per_job(n)

    async def trips_entity_worker(self) -> None:
        n = self.sizes.trip_jobs
        await self.reset()
        await self.enqueue_all(["busy"] * n)
        trips = RoundTrips(detail=True)
        client = self.client(trips, idle_timeout=0.0)
        worker = Worker(client, noop_registry, ENTITY_TYPE, entity_id="busy", name="bench-entity")
        try:
            await client.redis.ping()
            trips.reset()
            await worker.run()
        finally:
            await client.close()
        if (done := await self.completed()) != n:
            raise BenchError(f"entity-bound worker completed {done} of {n} jobs")
        self.add("trips.worker", trips.total / n)
        self.details["trips.worker"] = trips.breakdown()

    async def trips_packed_worker(self) -> None:
        per = self.sizes.jobs_per_entity
        entities = max(1, self.sizes.trip_jobs // per)
        n = entities * per
        trips, delta = await self.packed_trips([f"user-{k % entities}" for k in range(n)])
        self.add("trips.packed", trips.total / n)
        self.add("server.packed", delta.commands / n)
        self.details["trips.packed"] = f"{entities} entities × {per} jobs: {trips.breakdown()}"
        self.details["server.packed"] = delta.per_job(n)

    async def packed_trips(
        self, entity_ids: Sequence[str], workers: int = 1, prefill_concurrency: int = 1
    ) -> tuple[RoundTrips, ServerStats]:
        """One no-op job per item enqueued (in order per entity with `prefill_concurrency` 1),
        then drained by `workers` in-process packed `Worker`s (`PACKED_SLOTS` slots each, a
        client of its own each); every round trip of theirs is counted, until the counters show
        all completed. Returns the count and the server's commands meanwhile."""
        n = len(entity_ids)
        await self.reset()
        await self.enqueue_all(entity_ids, prefill_concurrency)
        trips = RoundTrips(detail=True)
        clients = [self.client(trips, idle_timeout=60.0) for _ in range(workers)]
        pack = [
            Worker(c, noop_registry, ENTITY_TYPE, slots=PACKED_SLOTS, name=f"bench-packed-{i}")
            for i, c in enumerate(clients)
        ]
        before = await self.commandstats()
        tasks = [asyncio.create_task(w.run()) for w in pack]

        def alive() -> None:
            for task in tasks:
                if task.done():
                    raise BenchError(f"packed worker stopped early: {task.result()!r}")

        ended: list[object] = []
        try:
            await self.wait_completed(n, alive)
            counted = RoundTrips(True, trips.total, trips.commands, Counter(trips.kinds))
            delta = await self.server_delta(before)
        finally:
            for worker in pack:
                worker.close("benchmark done")
            ended = await asyncio.gather(*tasks, return_exceptions=True)
            for client in clients:
                await client.close()
        for outcome in ended:
            if isinstance(outcome, BaseException):
                raise outcome
        return counted, delta

    # --- 2. throughput --------------------------------------------------------------------------
    async def baseline(self) -> float:
        """No-op EVALSHA round trips from one asyncio client; returns ops/s."""
        n = self.sizes.jobs
        conn = self.redis()
        script = conn.register_script(BASELINE_SCRIPT)
        keys = [self.keys.bucket(ENTITY_TYPE, 0)]
        try:
            for _ in range(100):
                await script(keys=keys)
            before = await self.commandstats()
            times: list[float] = []
            began = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                await script(keys=keys)
                times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - began
            delta = await self.server_delta(before)
        finally:
            await conn.aclose()
        self.add("baseline.ops", n / elapsed)
        self.add("baseline.rtt_p50", statistics.median(times))
        self.add("baseline.usec", delta.script_usec())
        return n / elapsed

    async def throughput_leases(self, ideal_rate: float) -> None:
        """The busy loop alone (scripts and reply parsing, no Worker around it)."""
        n = self.sizes.jobs
        await self.reset()
        await self.enqueue_all(["busy"] * n, PREFILL_CONCURRENCY)
        client = self.client()
        try:
            await client.redis.ping()
            began = time.perf_counter()
            await busy_loop(Leases(client, "bench-loop"), "busy", n)
            elapsed = time.perf_counter() - began
        finally:
            await client.close()
        self.add("leases.rate", n / elapsed)
        self.add("leases.ratio", (n / elapsed) / ideal_rate)

    async def throughput_entity(self, ideal_rate: float) -> None:
        n = self.sizes.jobs
        await self.reset()
        seconds = await self.enqueue_all(["busy"] * n)
        self.add("enqueue.rate", n / seconds)
        self.add("enqueue.ratio", (n / seconds) / ideal_rate)
        trips = RoundTrips()  # counting only: no parsing while the clock runs
        client = self.client(trips, idle_timeout=0.0)
        worker = Worker(client, noop_registry, ENTITY_TYPE, entity_id="busy", name="bench-entity")
        try:
            await client.redis.ping()
            trips.reset()
            began = time.perf_counter()
            await worker.run()
            elapsed = time.perf_counter() - began
        finally:
            await client.close()
        if (done := await self.completed()) != n:
            raise BenchError(f"entity-bound worker completed {done} of {n} jobs")
        rate, per = n / elapsed, trips.total / n
        self.add("entity.rate", rate)
        self.add("entity.trips", per)
        self.add("entity.ratio", rate / (ideal_rate / per))

    async def throughput_packed(self, ideal_rate: float) -> None:
        n, entities = self.sizes.jobs, min(self.sizes.entities, self.sizes.jobs)
        await self.reset()
        await self.enqueue_all([f"user-{k % entities}" for k in range(n)], PREFILL_CONCURRENCY)
        procs: list[asyncio.subprocess.Process] = []
        logs = [self.server.dir / f"worker-{self.rep}-{i}.log" for i in range(PACKED_PROCESSES)]

        def alive() -> None:
            for proc, log in zip(procs, logs, strict=True):
                if proc.returncode is not None:
                    tail = log.read_text(errors="replace").splitlines()[-5:]
                    raise BenchError(f"aq worker exited with {proc.returncode}: {tail}")

        # Start gate: writes are paused while the processes start, so each stops at its first
        # write (its registration) and all begin together when the pause is lifted.
        await self.control.execute_command("CLIENT", "PAUSE", "120000", "WRITE")
        try:
            for i, log in enumerate(logs):
                procs.append(await spawn_worker(self.server.url, f"bench-packed-{i}", log))
            await self.wait_blocked(PACKED_PROCESSES, alive)
            before = await self.commandstats()
            began = time.perf_counter()
            await self.control.execute_command("CLIENT", "UNPAUSE")
            ended = await self.wait_completed(n, alive)
            delta = await self.server_delta(before)
        finally:
            await self.control.execute_command("CLIENT", "UNPAUSE")
            await asyncio.gather(*(stop_process(p) for p in procs))
        rate = n / (ended - began)
        per = (delta.script_calls() + delta.calls["blpop"]) / n
        self.add("packed.rate", rate)
        self.add("packed.trips", per)
        self.add("packed.ratio", rate / (ideal_rate / per))
        self.add("server.packed2", delta.commands / n)
        self.details["packed.server"] = delta.per_job(n)

    # --- 3. latency -----------------------------------------------------------------------------
    async def latency(self, rtt_p50: float) -> None:
        await self.reset()
        registry = Registry()
        started: list[asyncio.Future[float]] = []

        @registry.command("mark")
        async def mark(ctx: JobContext, payload: None) -> None:
            started[-1].set_result(time.perf_counter())

        worker_client = self.client(idle_timeout=3600.0)
        producer = self.client()
        worker = Worker(worker_client, registry, ENTITY_TYPE, entity_id="idle", name="bench-idle")
        task = asyncio.create_task(worker.run())

        def alive() -> None:
            if task.done():
                raise BenchError(f"idle worker stopped early: {task.result()!r}")

        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        enqueues: list[float] = []
        try:
            await producer.redis.ping()
            for i in range(5 + self.sizes.latency_samples):  # 5 to warm up
                await self.wait_blocked(1, alive)  # the worker waits on its doorbell
                started.append(loop.create_future())
                t0 = time.perf_counter()
                await producer.enqueue(ENTITY_TYPE, "idle", "mark")
                t1 = time.perf_counter()
                t_start = await asyncio.wait_for(started[-1], 10)
                if i >= 5:
                    latencies.append(t_start - t0)
                    enqueues.append(t1 - t0)
        finally:
            worker.close("benchmark done")
            await task
            await worker_client.close()
            await producer.close()
        p50 = statistics.median(latencies)
        self.add("latency.p50", p50)
        self.add("latency.p99", percentile(latencies, 99))
        self.add("latency.max", max(latencies))
        self.add("latency.enqueue_p50", statistics.median(enqueues))
        self.add("latency.ratio", p50 / rtt_p50)

    # --- one repetition -------------------------------------------------------------------------
    async def repetition(self) -> None:
        # The baseline is taken before and after; ratios use their mean, so a change of the
        # machine's load during the repetition shows up in both.
        first = await self.baseline()
        await self.trips_enqueue()
        await self.trips_finish_loop()
        await self.trips_entity_worker()
        await self.trips_packed_worker()
        await self.baseline()
        rate = (first + self.figures["baseline.ops"][-1]) / 2
        await self.throughput_leases(rate)
        await self.throughput_entity(rate)
        await self.throughput_packed(rate)
        rtt = statistics.mean(self.figures["baseline.rtt_p50"][-2:])
        await self.latency(rtt)

    async def run(self) -> None:
        try:
            await self.learn_connection_settings()
            for rep in range(self.sizes.repeat):
                self.rep = rep
                began = time.perf_counter()
                await self.repetition()
                took = time.perf_counter() - began
                print(
                    f"  repetition {rep + 1}/{self.sizes.repeat} done in {took:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            await self.control.aclose()


async def busy_loop(leases: Leases, entity_id: str, jobs: int) -> None:
    """Claim the entity's first job, then finish each job and start the next in one call, as a
    busy worker does; the jobs are no-ops that complete at once."""
    claimed = await leases.claim(ENTITY_TYPE, entity_id, None)
    run = claimed if isinstance(claimed, Started) else None
    done = 0
    while run is not None:
        run = await leases.finish(run, "completed", "null", claim_next="same")
        done += 1
    if done != jobs:
        raise BenchError(f"busy loop completed {done} of {jobs} jobs")


# --- worker processes --------------------------------------------------------------------------
def aq_command() -> list[str]:
    """The `aq` console script of this interpreter (else on PATH, else `python -m`)."""
    beside = Path(sys.executable).with_name("aq")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("aq")
    return [found] if found else [sys.executable, "-m", "atomicqueues.cli"]


def open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


async def spawn_worker(url: str, name: str, log: Path) -> asyncio.subprocess.Process:
    env = dict(os.environ, AQ_REDIS_URL=url, AQ_PREFIX=PREFIX)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p)
    with open_log(log) as out:
        return await asyncio.create_subprocess_exec(
            *aq_command(),
            "worker",
            "--handlers",
            "noop_handlers:registry",
            "--entity-type",
            ENTITY_TYPE,
            "--slots",
            str(PACKED_SLOTS),
            "--name",
            name,
            "--idle-timeout",
            "120",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()  # SIGTERM: the worker shuts down gracefully
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- the table ---------------------------------------------------------------------------------
def fmt_count(x: float) -> str:
    return f"{x:,.0f}"


def fmt_per_s(x: float) -> str:
    return f"{x:,.0f}/s"


def fmt_ms(x: float) -> str:
    return f"{x * 1000:.3f} ms"


def fmt_us(x: float) -> str:
    return f"{x * 1e6:.1f} µs"


def fmt_times(x: float) -> str:
    return f"{x:.2f}×"


@dataclass(frozen=True)
class Row:
    key: str
    """The figure's key in `Bench.figures`."""
    label: str
    fmt: Callable[[float], str] = fmt_trips
    note: str = ""


def section_rows(sizes: Sizes) -> list[tuple[str, list[Row]]]:
    n, per, jobs = sizes.trip_jobs, sizes.jobs_per_entity, sizes.jobs
    ents = min(sizes.entities, jobs)
    packed = f"{PACKED_PROCESSES} × aq worker --slots {PACKED_SLOTS}"
    loop = "busy loop Leases.finish(claim_next='same')"
    return [
        (
            "1. Redis round trips per operation, counted on the client's connection",
            [
                Row("trips.enqueue", f"enqueue, steady state ({n} enqueues)", note="goal 1"),
                Row(
                    "trips.enqueue.first",
                    "first enqueue of a new Client, cold script cache",
                    fmt_count,
                ),
                Row("trips.finish", f"{loop}, per job ({n})", note="goal 1"),
                Row(
                    "trips.worker",
                    f"entity-bound Worker, per job ({n} jobs, whole life)",
                    note="goal 1",
                ),
                Row(
                    "trips.packed",
                    f"packed Worker, {PACKED_SLOTS} slots, per job ({per} jobs/entity)",
                    note="until all completed",
                ),
            ],
        ),
        (
            "   What Redis runs for them (server INFO commandstats, commands inside Lua included)",
            [
                Row("server.enqueue", "commands per enqueue"),
                Row("server.enqueue.lua", "  of them inside the script"),
                Row("server.enqueue.usec", "  server time of the script", fmt_us),
                Row("server.finish", "commands per job, busy loop (finish + start next)"),
                Row("server.finish.lua", "  of them inside the script"),
                Row("server.finish.usec", "  server time of the script", fmt_us),
                Row("baseline.usec", "server time of the baseline script 'return 1'", fmt_us),
                Row("server.packed", "commands per job, packed Worker above"),
            ],
        ),
        (
            "2. Throughput, no-op async handler (jobs/s)",
            [
                Row(
                    "baseline.ops",
                    "(c) baseline: EVALSHA 'return 1' loop, one asyncio client",
                    fmt_per_s,
                    "ops/s, 1 round trip",
                ),
                Row("enqueue.rate", f"enqueue, one Client, sequential ({jobs})", fmt_per_s),
                Row("enqueue.ratio", "  of baseline ops/s (1 round trip each)", fmt_pct),
                Row("leases.rate", f"{loop}, no Worker ({jobs})", fmt_per_s),
                Row("leases.ratio", "  of baseline ops/s (1 round trip each)", fmt_pct),
                Row(
                    "entity.rate",
                    f"(a) 1 entity, entity-bound Worker in-process ({jobs})",
                    fmt_per_s,
                ),
                Row("entity.trips", "  round trips per job, whole run"),
                Row("entity.ratio", "  of baseline ops/s / round trips per job", fmt_pct),
                Row("packed.rate", f"(b) {ents} entities, {packed} ({jobs})", fmt_per_s),
                Row("packed.trips", "  EVALSHA + BLPOP per job (server side)"),
                Row(
                    "packed.ratio",
                    "  of baseline ops/s / round trips per job",
                    fmt_pct,
                    f"{PACKED_PROCESSES} processes vs 1 client",
                ),
                Row("server.packed2", "  Redis commands per job"),
            ],
        ),
        (
            "3. Enqueue-to-start latency, idle entity-bound Worker blocked on its doorbell",
            [
                Row("baseline.rtt_p50", "baseline: one EVALSHA 'return 1' round trip, p50", fmt_ms),
                Row(
                    "latency.p50",
                    f"enqueue call → handler start, p50 ({sizes.latency_samples})",
                    fmt_ms,
                ),
                Row("latency.p99", "  p99", fmt_ms),
                Row("latency.max", "  max", fmt_ms),
                Row("latency.enqueue_p50", "  the enqueue call alone, p50", fmt_ms),
                Row("latency.ratio", "  p50 in baseline round trips", fmt_times, "ideal ≈ 2"),
            ],
        ),
    ]


def print_table(bench: Bench, header: list[str]) -> None:
    print()
    print("\n".join(header))
    repeats = bench.sizes.repeat
    print(f"figures: median [min – max] of {repeats} repetition{'s' if repeats > 1 else ''}")
    for title, rows in section_rows(bench.sizes):
        print()
        print(title)
        for row in rows:
            values = bench.figures.get(row.key)
            if not values:
                continue
            fmt = row.fmt
            spread = f"[{fmt(min(values))} – {fmt(max(values))}]" if len(values) > 1 else ""
            median = fmt(statistics.median(values))
            line = f"   {row.label:<66} {median:>11} {spread:<25} {row.note}"
            print(line.rstrip())
    print()
    print("Breakdowns (last repetition):")
    labels = {
        "trips.enqueue.first": "first enqueue, round trips",
        "trips.finish": "busy loop, round trips",
        "trips.worker": "entity-bound Worker, round trips",
        "trips.packed": "packed Worker, round trips",
        "server.enqueue": "commands per enqueue",
        "server.finish": "commands per job, busy loop",
        "server.packed": "commands per job, packed Worker",
        "packed.server": "commands per job, (b)",
    }
    for key, label in labels.items():
        if key in bench.details:
            print(f"   {label}: {bench.details[key]}")


# --- entry point -------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> Sizes:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (default 20000)")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        sizes = Sizes(jobs=600, entities=30, trip_jobs=100, latency_samples=20, repeat=1)
    else:
        sizes = Sizes(jobs=20_000, entities=1000, trip_jobs=1000, latency_samples=200, repeat=3)
    if args.jobs is not None:
        if args.jobs < 1:
            parser.error("--jobs must be at least 1")
        sizes = replace(sizes, jobs=args.jobs, trip_jobs=min(sizes.trip_jobs, args.jobs))
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        sizes = replace(sizes, repeat=args.repeat)
    return sizes


def header(server: RedisServer, load: tuple[float, float, float]) -> list[str]:
    with redis.Redis(port=server.port, decode_responses=True) as r:
        version = r.info("server")["redis_version"]
    try:
        import hiredis  # noqa: F401

        parser = " + hiredis"
    except ImportError:
        parser = ""
    end = os.getloadavg()[0]
    return [
        "AtomicQueues runtime benchmark",
        f"redis-server {version} (private, 127.0.0.1:{server.port}, no persistence), "
        f"Python {platform.python_version()}, redis-py {redis.__version__}{parser}",
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at start, {end:.2f} at end",
    ]


def run_on_private_redis(name: str, measure: Callable[[RedisServer], None]) -> int:
    """Start a private redis-server, `measure` on it, stop it; its log is kept on failure.
    Returns the exit code (1 with one line on stderr when it could not be done)."""
    try:
        server = RedisServer()
    except AtomicQueuesError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    failed = True
    try:
        server.start()
        measure(server)
        failed = False
    except (BenchError, AtomicQueuesError) as exc:
        print(f"{name}: {exc} (logs kept in {server.dir})", file=sys.stderr)
        return 1
    finally:
        server.stop(keep_dir=failed)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    sizes = parse_args(argv)

    def measure(server: RedisServer) -> None:
        load = os.getloadavg()
        bench = Bench(server, sizes)
        asyncio.run(bench.run())
        print_table(bench, header(server, load))

    return run_on_private_redis("hotpath.py", measure)


if __name__ == "__main__":
    sys.exit(main())
