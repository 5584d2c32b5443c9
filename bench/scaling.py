"""Scaling benchmark: how soon the local pool starts a worker for an idle entity's first job.

Why this exists: the design says scaling reacts to an "entity has work" event within
milliseconds. This script measures what that means
end to end on the local backend (`LocalPool`, the backend of `aq up`): the time from enqueueing
the first job of an entity that has no worker to its handler starting in a fresh worker
process, and where that time goes.

It starts a private redis-server (loopback, temporary directory, no persistence) and a
`LocalPool` in this process (dedicated placement, the demo handler
`atomicqueues.pools.demo_handlers:registry`). Then, one entity at a time, it enqueues one
`step` job for an entity that has never had work (cold), and once that job has started, a
second one while the fresh worker idles (warm). Baselines, measured in the same run: how long a
bare `python -c` and a `python -c "import atomicqueues.cli"` take to start. See bench/README.md,
"Scaling".

    python bench/scaling.py [--entities N] [--spacing S] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from atomicqueues.client import Client
from atomicqueues.index_reads import IndexReads
from atomicqueues.pools.local import LocalPool, settings_for
from atomicqueues.pools.reconciler import Action, Plan, StartWorker
from atomicqueues.pools.spec import Pool, parse_pool
from compare.stats import percentile
from hotpath import BenchError, RedisServer, run_on_private_redis

ENTITY_TYPE = "scale"
PREFIX = "aqscale"
HANDLERS = "atomicqueues.pools.demo_handlers:registry"
IDLE_TIMEOUT = 1.0
"""Seconds a worker idles before it exits (the pool's idleTimeoutSeconds)."""
WARM_GAP = 0.25
"""Seconds between the cold job's start and the warm job's enqueue: the fresh worker has
finished the cold job and blocks on its doorbell, well before its idle timeout."""
WARMUP = 2
"""Entities measured first and left out of the figures (first process starts fill caches)."""
START_TIMEOUT = 60.0
"""Seconds a job may take to start before the benchmark gives up."""
KEDA_POLLING_INTERVAL = 30.0
"""KEDA's default ScaledObject pollingInterval (keda.sh/docs/latest/reference/scaledobject-spec)."""


@dataclass(frozen=True)
class Options:
    entities: int
    spacing: float
    process_samples: int
    """Starts of each baseline process, half before the pool runs and half after."""


@dataclass
class Sample:
    """One entity's cold and warm start; times are time.time(), comparable across processes
    on this machine (the worker records its handler start with time.time() too)."""

    entity: str
    enqueue: float = 0.0
    """Just before the cold enqueue call."""
    event: float | None = None
    """This process's subscriber received the entity's "has work" message."""
    reconcile: float | None = None
    """The pool's reconcile that started the worker began."""
    action: float | None = None
    """The pool carried out StartWorker (its on_action hook, before the process is spawned)."""
    spawned: float | None = None
    """`create_subprocess_exec` returned (LocalWorker.started_at)."""
    registered: float | None = None
    """The worker's Redis TIME just before it registered (its registration's started_at)."""
    start: float = 0.0
    """The handler started the cold job."""
    warm_enqueue: float = 0.0
    warm_start: float = 0.0
    pids: tuple[int, int] = (0, 0)
    """Processes that ran the cold and the warm job (the same one, or the warm is not warm)."""


@dataclass
class Recorder:
    """What the pool did, seen through its hooks: StartWorker times, reconcile spans."""

    actions: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    reconciles: list[tuple[float, float]] = field(default_factory=list)
    events: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    most_workers: int = 0

    def on_action(self, action: Action) -> None:
        if isinstance(action, StartWorker):
            self.actions[action.entity_id].append(time.time())

    def timed(
        self, reconcile: Callable[[], Coroutine[Any, Any, Plan]]
    ) -> Callable[[], Coroutine[Any, Any, Plan]]:
        async def reconcile_once() -> Plan:
            began = time.time()
            try:
                return await reconcile()
            finally:
                self.reconciles.append((began, time.time()))

        return reconcile_once

    def reconcile_of(self, at: float) -> float | None:
        """Start of the reconcile during which `at` fell."""
        for began, ended in reversed(self.reconciles):
            if began <= at <= ended:
                return began
        return None


def pool_manifest(entities: int) -> Pool:
    return parse_pool(
        {
            "apiVersion": "atomicqueues.io/v1alpha1",
            "kind": "EntityWorkerPool",
            "metadata": {"name": "scaling"},
            "spec": {
                "entityType": ENTITY_TYPE,
                "handlers": HANDLERS,
                "redis": {"prefix": PREFIX},
                "placement": {"mode": "dedicated"},
                "workers": {"maxTotal": entities + WARMUP, "maxStartsPerSecond": 1000},
                "timing": {"idleTimeoutSeconds": IDLE_TIMEOUT, "shutdownGraceSeconds": 2.0},
            },
        },
        "scaling pool",
    )


# --- baselines: process start ------------------------------------------------------------------
async def process_start(imports: str) -> tuple[float, float]:
    """Spawn `python -c "<imports>"` as LocalPool spawns a worker; seconds until its imports
    are done (the child prints time.time() right after them) and until the process has exited
    (interpreter teardown included)."""
    code = (
        f"{imports}; import time; print(time.time())"
        if imports
        else "import time; print(time.time())"
    )
    began = time.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    exited = time.time()
    if proc.returncode != 0:
        raise BenchError(f"python -c {code!r} exited with {proc.returncode}")
    return float(out) - began, exited - began


BASELINES = {"bare": "", "import": "import atomicqueues.cli"}


async def baselines(figures: dict[str, list[float]], samples: int) -> None:
    for _ in range(samples):
        for key, imports in BASELINES.items():
            ready, exited = await process_start(imports)
            figures[f"baseline.{key}"].append(ready)
            figures[f"baseline.{key}.exit"].append(exited)


# --- the pool run ------------------------------------------------------------------------------
class Run:
    def __init__(self, server: RedisServer, options: Options) -> None:
        self.server = server
        self.options = options
        self.pool = pool_manifest(options.entities)
        self.recorder = Recorder()
        self.samples: list[Sample] = []
        self.log_prefix = f"{PREFIX}:bench:log"

    async def run(self) -> None:
        settings = settings_for(self.pool, self.server.url)
        client = await Client.connect(settings)
        control = aioredis.Redis.from_url(self.server.url, decode_responses=True)
        waiter = aioredis.Redis.from_url(  # blocks in BLPOP up to START_TIMEOUT
            self.server.url, decode_responses=True, socket_timeout=START_TIMEOUT + 10
        )
        out = (self.server.dir / "workers.log").open("wb")
        local = LocalPool(self.pool, client, worker_output=out, on_action=self.recorder.on_action)
        local.reconcile_once = self.recorder.timed(local.reconcile_once)  # type: ignore[method-assign]
        stop = asyncio.Event()
        runner = asyncio.create_task(local.run(stop))
        listener = asyncio.create_task(self.listen(client))
        try:
            await self.wait_subscribed(control, client.keys.events(ENTITY_TYPE), runner, listener)
            names = [f"warmup-{i}" for i in range(WARMUP)]
            names += [f"entity-{i:04d}" for i in range(self.options.entities)]
            next_at = time.monotonic()
            for i, entity in enumerate(names):
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = time.monotonic() + self.options.spacing
                sample = await self.measure(client, control, waiter, local, entity)
                if i >= WARMUP:
                    self.samples.append(sample)
                if runner.done():
                    raise BenchError(f"the pool stopped: {runner.result()!r}")
                done = f"{i + 1 - WARMUP}/{self.options.entities}" if i >= WARMUP else "warm-up"
                took = (sample.start - sample.enqueue) * 1000
                print(f"  {done}: {entity} started in {took:.0f} ms", file=sys.stderr, flush=True)
        finally:
            stop.set()
            listener.cancel()
            await asyncio.gather(runner, listener, return_exceptions=True)
            out.close()
            await client.close()
            await control.aclose()
            await waiter.aclose()

    async def listen(self, client: Client) -> None:
        """The "entity has work" messages, timed as this process receives them."""
        async for entity_id in IndexReads(client).events(ENTITY_TYPE):
            self.recorder.events[entity_id].append(time.time())

    async def wait_subscribed(
        self, control: aioredis.Redis, channel: str, *tasks: asyncio.Task[None]
    ) -> None:
        """Until the pool and our listener are both subscribed to the events channel."""
        deadline = time.monotonic() + 30
        while True:
            for task in tasks:
                if task.done():
                    raise BenchError(f"stopped before subscribing: {task.exception()!r}")
            subscribed = await control.pubsub_numsub(channel)
            if subscribed and subscribed[0][1] >= 2:
                return
            if time.monotonic() > deadline:
                raise BenchError("the pool did not subscribe to its events within 30s")
            await asyncio.sleep(0.01)

    async def measure(
        self,
        client: Client,
        control: aioredis.Redis,
        waiter: aioredis.Redis,
        local: LocalPool,
        entity: str,
    ) -> Sample:
        sample = Sample(entity)
        cold_key, warm_key = f"{self.log_prefix}:{entity}:cold", f"{self.log_prefix}:{entity}:warm"
        sample.enqueue = time.time()
        await client.enqueue(
            ENTITY_TYPE, entity, "step", {"seq": 0, "seconds": 0, "log_key": cold_key}
        )
        cold = await self.started(waiter, cold_key, entity)
        sample.start = cold["t"]
        live = [w for w in local.workers.values() if w.proc.returncode is None]
        self.recorder.most_workers = max(self.recorder.most_workers, len(live))
        mine = [w for w in local.workers.values() if w.entity_id == entity]
        if mine:
            worker = mine[-1]
            sample.spawned = worker.started_at
            registered = await control.hget(client.keys.worker(worker.name), "started_at")
            sample.registered = float(registered) if registered else None
        # The warm job: the worker that ran the cold one now idles on its doorbell.
        await asyncio.sleep(WARM_GAP)
        sample.warm_enqueue = time.time()
        await client.enqueue(
            ENTITY_TYPE, entity, "step", {"seq": 1, "seconds": 0, "log_key": warm_key}
        )
        warm = await self.started(waiter, warm_key, entity)
        sample.warm_start = warm["t"]
        sample.pids = (cold["pid"], warm["pid"])
        actions = self.recorder.actions.get(entity, [])
        if actions:
            sample.action = actions[0]
            sample.reconcile = self.recorder.reconcile_of(actions[0])
        events = [t for t in self.recorder.events.get(entity, []) if t >= sample.enqueue]
        sample.event = events[0] if events else None
        return sample

    async def started(self, waiter: aioredis.Redis, key: str, entity: str) -> dict[str, Any]:
        """The handler's start record of the job that logs to `key` (no polling: BLPOP)."""
        popped = await waiter.blpop([key], timeout=START_TIMEOUT)
        if popped is None:
            raise BenchError(
                f"the job of {entity} did not start within {START_TIMEOUT:.0f}s "
                f"(worker logs: {self.server.dir / 'workers.log'})"
            )
        record: dict[str, Any] = json.loads(popped[1])
        return record


# --- the table ---------------------------------------------------------------------------------
def spans(samples: Sequence[Sample], start: str, end: str) -> list[float]:
    """end − start over the samples that have both times."""
    out: list[float] = []
    for s in samples:
        a, b = getattr(s, start), getattr(s, end)
        if a is not None and b is not None:
            out.append(b - a)
    return out


def fmt_ms(x: float) -> str:
    return f"{x * 1000:,.1f} ms"


def row(label: str, values: Sequence[float], baseline: float | None, note: str = "") -> str:
    if not values:
        return f"   {label:<58} {'(none)':>10}"
    p50, p99, worst = statistics.median(values), percentile(values, 99), max(values)
    ratio = f"{p50 / baseline:.2f}×" if baseline else ""
    line = (
        f"   {label:<58} {fmt_ms(p50):>10} {fmt_ms(p99):>10} {fmt_ms(worst):>10} {ratio:>7}  {note}"
    )
    return line.rstrip()


def print_table(run: Run, figures: dict[str, list[float]], header: list[str]) -> None:
    samples = run.samples
    base = statistics.median(figures["baseline.import"])
    n = len(samples)
    print()
    print("\n".join(header))
    print()
    cols = f"   {'':<58} {'p50':>10} {'p99':>10} {'max':>10} {'p50 / baseline':>15}"
    print(cols.rstrip())
    runs = len(figures["baseline.import"])
    print(f"Baselines: a process spawned as LocalPool spawns workers ({runs} each)")
    print(row("bare python: spawn → first statement", figures["baseline.bare"], base))
    label = 'python -c "import atomicqueues.cli": spawn → imported'
    print(row(label, figures["baseline.import"], base, "= baseline"))
    print(
        row(
            "  the same, spawn → process exited",
            figures["baseline.import.exit"],
            base,
            "teardown included",
        )
    )
    print()
    outside = [
        (s.start - s.enqueue) - (s.registered - s.spawned)
        for s in samples
        if s.spawned is not None and s.registered is not None
    ]
    cold: list[tuple[str, list[float], str]] = [
        ("enqueue call → handler start", spans(samples, "enqueue", "start"), ""),
        ("  enqueue call → event received (pub/sub)", spans(samples, "enqueue", "event"), ""),
        ("  event received → reconcile began", spans(samples, "event", "reconcile"), ""),
        ("  reconcile began → StartWorker carried out", spans(samples, "reconcile", "action"), ""),
        (
            "  StartWorker → process spawned",
            spans(samples, "action", "spawned"),
            "create_subprocess_exec",
        ),
        (
            "  process spawned → worker registered",
            spans(samples, "spawned", "registered"),
            "interpreter, imports, connect",
        ),
        (
            "  worker registered → handler start",
            spans(samples, "registered", "start"),
            "register, claim, run",
        ),
        ("  reaction: enqueue call → StartWorker", spans(samples, "enqueue", "action"), ""),
        ("  all but the worker's own start-up", outside, "total − (spawned → registered)"),
    ]
    print(f"Cold start: first job of an idle entity, no worker ({n} entities)")
    for label, values, note in cold:
        print(row(label, values, base, note))
    print()
    print("Warm: the entity's worker exists and idles on its doorbell")
    warm = spans(samples, "warm_enqueue", "warm_start")
    print(row(f"enqueue call → handler start ({n})", warm, base))
    print()
    print("Reference, documented, not measured: KEDA")
    print(
        f"   default pollingInterval {KEDA_POLLING_INTERVAL:.0f} s: new work is seen up to "
        f"{KEDA_POLLING_INTERVAL:.0f} s (about {KEDA_POLLING_INTERVAL / 2:.0f} s on average) "
        "after it arrives,"
    )
    print("   before the pod is even created (then scheduling, image, container start)")
    print()
    rec = run.recorder
    durations = [b - a for a, b in rec.reconciles]
    starts = sum(len(v) for v in rec.actions.values())
    not_warm = sum(1 for s in samples if s.pids[0] != s.pids[1])
    missing = {
        k: sum(1 for s in samples if getattr(s, k) is None)
        for k in ("event", "reconcile", "action", "spawned", "registered")
    }
    print("Details:")
    print(
        f"   StartWorker actions: {starts} for {n + WARMUP} entities (warm-up included); "
        f"most live workers seen: {rec.most_workers}"
    )
    print(
        f"   reconciles: {len(durations)}, each p50 {fmt_ms(statistics.median(durations))}, "
        f"max {fmt_ms(max(durations))}"
    )
    print(f"   warm jobs run by another process than the cold one: {not_warm}")
    gaps = ", ".join(f"{k} {v}" for k, v in missing.items() if v)
    if gaps:
        print(f"   samples without a time for: {gaps}")
    slow = sorted(samples, key=lambda s: s.start - s.enqueue)[-3:]
    for s in reversed(slow):
        parts = [
            ("event", s.enqueue, s.event),
            ("reconcile", s.event, s.reconcile),
            ("action", s.reconcile, s.action),
            ("spawned", s.action, s.spawned),
            ("registered", s.spawned, s.registered),
            ("start", s.registered, s.start),
        ]
        steps = " ".join(
            f"{k} +{fmt_ms(b - a)}" if a is not None and b is not None else f"{k} ?"
            for k, a, b in parts
        )
        print(f"   slowest: {s.entity} {fmt_ms(s.start - s.enqueue)}: {steps}")


def header(server: RedisServer, pool: Pool, options: Options, load: float) -> list[str]:
    with redis.Redis(port=server.port, decode_responses=True) as r:
        version = r.info("server")["redis_version"]
    t = pool.spec.timing
    return [
        "AtomicQueues scaling benchmark: local backend (LocalPool), dedicated placement",
        f"redis-server {version} (private, 127.0.0.1:{server.port}, no persistence), "
        f"Python {platform.python_version()}, redis-py {redis.__version__}",
        f"{os.cpu_count()} CPUs, load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end",
        f"{options.entities} entities, one at a time, at least {options.spacing:g} s apart "
        f"(+{WARMUP} warm-up); handler {HANDLERS} step (0 s)",
        f"pool: idleTimeout {t.idle_timeout_seconds:g} s, resync {t.resync_interval_seconds:g} s, "
        f"heartbeat {t.heartbeat_interval_seconds:g} s, maxStartsPerSecond "
        f"{pool.spec.workers.max_starts_per_second:g}, maxTotal {pool.spec.workers.max_total}",
    ]


# --- entry point -------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--entities", type=int, help="entities to start (default 100)")
    parser.add_argument(
        "--spacing",
        type=float,
        default=0.5,
        help="least seconds between two entities' first jobs (default 0.5)",
    )
    parser.add_argument("--quick", action="store_true", help="10 entities, for a smoke test")
    args = parser.parse_args(argv)
    entities = args.entities if args.entities is not None else (10 if args.quick else 100)
    if entities < 1:
        parser.error("--entities must be at least 1")
    if args.spacing < 0:
        parser.error("--spacing must not be negative")
    return Options(entities, args.spacing, 6 if args.quick else 20)


async def bench(server: RedisServer, options: Options) -> tuple[Run, dict[str, list[float]]]:
    figures: dict[str, list[float]] = defaultdict(list)
    await baselines(figures, options.process_samples // 2)
    run = Run(server, options)
    await run.run()
    await baselines(figures, options.process_samples - options.process_samples // 2)
    return run, figures


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def measure(server: RedisServer) -> None:
        load = os.getloadavg()[0]
        run, figures = asyncio.run(bench(server, options))
        print_table(run, figures, header(server, run.pool, options, load))

    return run_on_private_redis("scaling.py", measure)


if __name__ == "__main__":
    sys.exit(main())
