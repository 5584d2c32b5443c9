"""Soak: many entities, producers and real workers for minutes, with faults mixed in, then a check.

Why this exists: the fault tests each provoke one failure a few times. A user trusts a job system
after it has run for a while under everything at once: 1,000 entities, producers enqueueing at a
steady rate, packed and entity-bound `aq worker` processes, and meanwhile workers killed
(SIGKILL) and frozen past their lease (SIGSTOP, SIGCONT), Redis killed with -9 and restarted on
its port, one worker cut off from Redis for 2-3 lease TTLs (a silent partition). Afterwards the
producers stop, the workers drain, and the history is checked: nothing acknowledged is lost, no
job completes twice, no two runs of an entity overlap, no entity's jobs start out of order, and
the long-lived workers' memory stays flat. It prints one table and exits 1 when any of that
fails (2 when the soak could not run).

    python bench/soak.py                  # 10 minutes, 1,000 entities
    python bench/soak.py --minutes 1      # a short run
    python bench/soak.py --smoke          # 30 s, 100 entities, faults every 2.5 s (tested)

The queues' Redis is private and appends every write to its AOF with `appendfsync always`, so a
kill -9 loses nothing it acknowledged. The handlers (`record`, tests/runtime/handlers.py) write
start and end records to a second private Redis that is never killed nor cut off, as a
downstream store would be: through a store fenced by the lease's token, and unfenced. The checks
are the fault tests' own (tests/runtime/workers.py). See bench/README.md, "Soak".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS)]

from atomicqueues.client import Client  # noqa: E402
from atomicqueues.config import Settings  # noqa: E402
from atomicqueues.errors import RedisUnavailable  # noqa: E402
from partition import Partition  # noqa: E402
from redis_servers import RedisServer  # noqa: E402
from runtime.workers import (  # noqa: E402
    EFFECTS_KEY,
    INTERVAL,
    REJECTED_KEY,
    TTL,
    EffectSpan,
    Violation,
    WorkerProc,
    Workers,
    effect_overlaps,
    effect_spans,
    history_violations,
    load_runs,
)

ENTITY_TYPE = "soak"
FAULTS = ("kill", "pause", "partition", "redis")
MEMORY_GROWTH_MIB = 8.0
"""A long-lived worker's RSS may grow by at most this much from its reading after the warm-up to
its reading after the drain (the bound the exit code checks)."""
DRAIN_TIMEOUT = 180.0
KEEP_COMPLETED = 10**6
"""Completed jobs kept per entity: all of them (a bound worker's entity gets over 1,000 jobs in
ten minutes, and the default keeps the last 1,000)."""


@dataclass(frozen=True)
class Options:
    minutes: float
    entities: int
    rate: float
    packed: int
    slots: int
    bound: int
    fault_every: float
    attempts: int
    seed: int
    json_path: Path | None
    keep: bool


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long producers run")
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="jobs enqueued per second")
    parser.add_argument("--packed", type=int, default=4, help="packed worker processes")
    parser.add_argument("--slots", type=int, default=8, help="slots of each packed worker")
    parser.add_argument("--bound", type=int, default=3, help="entity-bound worker processes")
    parser.add_argument("--fault-every", type=float, default=6.0, help="seconds between faults")
    parser.add_argument("--attempts", type=int, default=10, help="attempts per job")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    parser.add_argument(
        "--smoke", action="store_true", help="30 s, 100 entities, a fault every 2.5 s"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.minutes, args.entities, args.rate, args.fault_every = 0.5, 100, 30.0, 2.5
        args.packed, args.bound = 2, 2
    return Options(
        args.minutes,
        args.entities,
        args.rate,
        args.packed,
        args.slots,
        min(args.bound, args.entities),
        args.fault_every,
        args.attempts,
        random.randrange(1 << 30) if args.seed is None else args.seed,
        args.json,
        args.keep,
    )


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int | None:
    """The process's resident set size (VmRSS, KiB), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# --- the worker pool ----------------------------------------------------------------------------
@dataclass
class Slot:
    """A place in the pool: one worker at a time, replaced when it dies, behind its own proxy."""

    name: str
    entity_id: str | None  # None: packed
    mortal: bool  # the faults may SIGKILL its workers; the others live from start to end
    proxy: Partition
    worker: WorkerProc | None = None
    generation: int = 0
    rss: dict[str, int | None] = field(default_factory=dict)


@dataclass
class Fault:
    kind: str
    target: str  # a worker's name, or "redis"
    pid: int | None
    start: float
    end: float = 0.0
    note: str = ""


class Pool:
    """The worker processes: started, watched, replaced, frozen, killed."""

    def __init__(self, workers: Workers, options: Options, upstream: tuple[str, int]) -> None:
        self.workers = workers
        self.options = options
        self.slots: list[Slot] = []
        self.exits: list[tuple[str, int, int, float]] = []  # name, pid, code, noticed at
        self.killed: set[int] = set()  # pids this soak killed
        self.paused: dict[int, list[tuple[float, float]]] = {}  # pid -> frozen windows
        life = options.minutes * 60 + DRAIN_TIMEOUT + 600  # never idle out during the soak
        self.idle_timeout = life
        for i in range(options.packed):
            self.slots.append(Slot(f"p{i}", None, i % 2 == 1, Partition(*upstream)))
        for i in range(options.bound):
            self.slots.append(Slot(f"b{i}", entity_name(i), i == 0, Partition(*upstream)))

    def start_all(self) -> None:
        for slot in self.slots:
            self._start(slot, wait=False)
        for slot in self.slots:
            assert slot.worker is not None
            self.workers.wait_registered(slot.worker)
            slot.rss["registered"] = rss_kib(slot.worker.pid)

    def _start(self, slot: Slot, *, wait: bool) -> None:
        slot.generation += 1
        slot.worker = self.workers.start(
            slot.entity_id,
            slots=self.options.slots if slot.entity_id is None else None,
            name=f"{slot.name}g{slot.generation}-{os.getpid()}",
            idle_timeout=self.idle_timeout,
            redis_url=slot.proxy.url_for(self.workers.redis_url),
            wait=wait,
        )

    def supervise(self) -> None:
        """Replace every worker that has ended; note the ones that ended on their own."""
        for slot in self.slots:
            w = slot.worker
            if w is None or w.alive():
                continue
            if w.pid not in self.killed:
                now = time.time()
                w.killed_at = now  # its runs end by now at the latest (for the checks)
                code = w.proc.returncode
                self.exits.append((w.name, w.pid, code, now))
                say(f"worker {w.name} (pid {w.pid}) exited by itself, code {code}")
            self._start(slot, wait=False)

    def kill(self, slot: Slot) -> int:
        assert slot.worker is not None
        pid = slot.worker.pid
        self.killed.add(pid)
        slot.worker.kill()
        self._start(slot, wait=False)
        return pid

    def long_lived(self) -> list[Slot]:
        return [s for s in self.slots if s.generation == 1]

    def read_memory(self, label: str) -> None:
        for slot in self.long_lived():
            assert slot.worker is not None
            slot.rss[label] = rss_kib(slot.worker.pid)

    def close(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(Exception):
                slot.proxy.heal()
            slot.proxy.close()


def entity_name(i: int) -> str:
    return f"e{i:04d}"


def job_name(entity: str, seq: int) -> str:
    return f"{entity}-{seq}"


# --- producers ----------------------------------------------------------------------------------
class Producers:
    """Enqueue `rate` jobs a second, each for a random entity (a tenth of them for the entities
    that have a bound worker), with seq numbers per entity; a failed enqueue is tried again with
    the same job id (idempotent) until Redis acknowledges it, and the entity's next job waits
    for that, so each entity's acknowledged seqs are 0..n-1."""

    def __init__(self, client: Client, options: Options, rng: random.Random) -> None:
        self.client = client
        self.options = options
        self.rng = rng
        self.entities = [entity_name(i) for i in range(options.entities)]
        self.acked: dict[str, int] = dict.fromkeys(self.entities, 0)
        self.next_seq: dict[str, int] = dict.fromkeys(self.entities, 0)
        self.locks = {e: asyncio.Lock() for e in self.entities}
        self.retries = 0
        self.pending: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        bound = self.entities[: self.options.bound]
        for i in range(10**12):
            due = began + i / self.options.rate
            if due > loop.time():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), due - loop.time())
            if stop.is_set():
                break
            hot = bound and self.rng.random() < 0.1
            entity = self.rng.choice(bound if hot else self.entities)
            seq = self.next_seq[entity]
            self.next_seq[entity] = seq + 1
            sleep = round(self.rng.uniform(0.01, 0.2), 3)
            task = asyncio.create_task(self._enqueue(entity, seq, sleep))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
        while self.pending:
            await asyncio.gather(*list(self.pending))

    async def _enqueue(self, entity: str, seq: int, sleep: float) -> None:
        async with self.locks[entity]:  # the entity's earlier seqs are acknowledged first
            while True:
                try:
                    await self.client.enqueue(
                        ENTITY_TYPE,
                        entity,
                        "record",
                        {"seq": seq, "sleep": sleep},
                        job_id=job_name(entity, seq),
                        attempts=self.options.attempts,
                    )
                    break
                except RedisUnavailable:
                    self.retries += 1
                    await asyncio.sleep(0.2)
            assert self.acked[entity] == seq
            self.acked[entity] = seq + 1

    @property
    def total(self) -> int:
        return sum(self.acked.values())


# --- faults -------------------------------------------------------------------------------------
class Faults:
    """One fault at a time, every `fault_every` seconds; the four kinds take turns in a shuffled
    order, so every kind happens once in each four faults."""

    def __init__(
        self, pool: Pool, server: RedisServer, options: Options, rng: random.Random, store: Any
    ) -> None:
        self.pool = pool
        self.server = server
        self.options = options
        self.rng = rng
        self.store = store
        self.done: list[Fault] = []

    def kinds(self) -> Iterator[str]:
        while True:
            order = list(FAULTS)
            self.rng.shuffle(order)
            yield from order

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(min(5.0, self.options.fault_every))
        for kind in self.kinds():
            if stop.is_set():
                return
            began = time.monotonic()
            fault = await getattr(self, kind)()
            self.done.append(fault)
            say(f"fault {fault.kind} {fault.target} {fault.note}".rstrip())
            wait = self.options.fault_every - (time.monotonic() - began)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(wait, 1.0))

    def _victim(self, mortal_only: bool) -> Slot:
        """A worker with a run under way, if one is: its handler is cut short by the fault."""
        slots = [s for s in self.pool.slots if s.worker is not None and s.worker.alive()]
        if mortal_only:
            slots = [s for s in slots if s.mortal]
        busy = busy_pids(self.store)
        return self.rng.choice([s for s in slots if s.worker.pid in busy] or slots)  # type: ignore[union-attr]

    async def kill(self) -> Fault:
        slot = self._victim(mortal_only=True)
        assert slot.worker is not None
        name = slot.worker.name
        pid = self.pool.kill(slot)
        return Fault("kill", name, pid, time.time(), time.time())

    async def pause(self) -> Fault:
        slot = self._victim(mortal_only=False)
        assert slot.worker is not None
        w, seconds = slot.worker, self.rng.uniform(2, 3) * TTL
        w.signal(signal.SIGSTOP)
        fault = Fault("pause", w.name, w.pid, time.time(), note=f"{seconds:.1f}s")
        await asyncio.sleep(seconds)
        fault.end = time.time()
        w.signal(signal.SIGCONT)
        self.pool.paused.setdefault(w.pid, []).append((fault.start, fault.end))
        return fault

    async def partition(self) -> Fault:
        slot = self._victim(mortal_only=False)
        assert slot.worker is not None
        seconds = self.rng.uniform(2, 3) * TTL
        fault = Fault("partition", slot.worker.name, slot.worker.pid, time.time())
        fault.note = f"{seconds:.1f}s"
        slot.proxy.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            slot.proxy.heal()
        fault.end = time.time()
        return fault

    async def redis(self) -> Fault:
        down = self.rng.uniform(0.5, 2.0)
        fault = Fault("redis", "redis", self.server.pid, time.time())
        self.server.kill()
        await asyncio.sleep(down)
        await asyncio.to_thread(self.server.start)
        fault.end = time.time()
        fault.note = f"down {fault.end - fault.start:.1f}s"
        return fault

    def count(self) -> Counter[str]:
        return Counter(f.kind for f in self.done)


def busy_pids(store: Any) -> set[int]:
    """Processes with a run under way, from the store's last few hundred effect records."""
    running: dict[tuple[Any, ...], int] = {}
    for line in store.lrange(EFFECTS_KEY, -400, -1):
        r = json.loads(line)
        key = (r["entity"], r["job"], r["token"], r["attempt"])
        if r["ev"] == "start":
            running[key] = r["pid"]
        else:
            running.pop(key, None)
    return set(running.values())


# --- the run ------------------------------------------------------------------------------------
@dataclass
class Result:
    figures: dict[str, Any]
    failures: list[str]
    memory: list[dict[str, Any]]
    faults: Counter[str]
    exits: list[tuple[str, int, int, float]]
    examples: list[str]


async def soak(options: Options, workdir: Path) -> Result:
    rng = random.Random(options.seed)
    with (
        RedisServer(appendonly=True, config=["appendfsync always"]) as server,
        RedisServer() as store_server,
    ):
        workers = Workers(
            server.url,
            workdir,
            entity_type=ENTITY_TYPE,
            ttl=TTL,
            interval=INTERVAL,
            store_url=store_server.url,
        )
        store = store_server.client()
        pool = Pool(workers, options, ("127.0.0.1", server.port))
        # Every completed job is kept (not the last 1,000 per entity), so the check finds each.
        settings = Settings(
            redis_url=server.url,
            heartbeat_ttl=TTL,
            heartbeat_interval=INTERVAL,
            keep_completed_count=KEEP_COMPLETED,
        )
        client = await Client.connect(settings)
        try:
            say(f"starting {len(pool.slots)} workers (seed {options.seed})")
            pool.start_all()
            producers = Producers(client, options, rng)
            faults = Faults(pool, server, options, rng, store)
            stop_producing, stop_faults = asyncio.Event(), asyncio.Event()
            producing = asyncio.create_task(producers.run(stop_producing))
            faulting = asyncio.create_task(faults.run(stop_faults))
            seconds = options.minutes * 60
            warm_up = min(60.0, seconds / 10)
            began = time.monotonic()
            memory_read = False
            next_note = 30.0
            while (elapsed := time.monotonic() - began) < seconds:
                pool.supervise()
                if not memory_read and elapsed >= warm_up:
                    pool.read_memory("warm")
                    memory_read = True
                if elapsed >= next_note:
                    next_note += 30
                    so_far = dict(faults.count())
                    say(f"{elapsed:.0f}s: {producers.total} jobs acknowledged, faults {so_far}")
                await asyncio.sleep(0.1)
            say("stopping producers and faults")
            stop_producing.set()
            stop_faults.set()
            while not (producing.done() and faulting.done()):
                pool.supervise()
                await asyncio.sleep(0.1)
            await producing
            await faulting
            say(f"{producers.total} jobs acknowledged; draining")
            counts = await drain(workers, pool, producers.total)
            pool.read_memory("end")
            say("stopping workers")
            workers.stop_all(timeout=60)
            graceful = {s.worker.name: s.worker.proc.returncode for s in pool.slots if s.worker}
            return analyse(options, workers, pool, producers, faults, counts, store, graceful)
        finally:
            await client.close()
            workers.close()
            pool.close()
            store.close()


async def drain(workers: Workers, pool: Pool, total: int) -> dict[str, int]:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        pool.supervise()
        counts = await asyncio.to_thread(workers.counts)
        ended = counts.get("completed", 0) + counts.get("dead", 0)
        busy = sum(counts.get(s, 0) for s in ("waiting", "delayed", "active", "retrying"))
        if (ended >= total and busy == 0) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.5)


def analyse(
    options: Options,
    workers: Workers,
    pool: Pool,
    producers: Producers,
    faults: Faults,
    counts: dict[str, int],
    store: Any,
    graceful: dict[str, int | None],
) -> Result:
    say("checking the history")
    states: Counter[str] = Counter()
    dead: dict[str, set[int]] = {}
    lost_ids = []
    for entity, n in producers.acked.items():
        for seq in range(n):
            job = workers.job(entity, job_name(entity, seq))
            state = job.state if job is not None else "missing"
            states[state] += 1
            if state == "dead":
                dead.setdefault(entity, set()).add(seq)
            elif state != "completed":
                lost_ids.append(job_name(entity, seq))
    runs = load_runs(store)
    kill_times = workers.kill_times
    lost_leases = workers.lost_jobs()
    per_entity, found = history_violations(
        runs, producers.acked, kill_times, dead=dead, lost_jobs=lost_leases
    )
    found += workers.completion_violations(per_entity)
    spans = effect_spans(store, kill_times)
    rejected = set(store.lrange(REJECTED_KEY, 0, -1))
    effects = [json.loads(line) for line in store.lrange(EFFECTS_KEY, 0, -1)]
    late_by_run: dict[tuple[Any, ...], list[tuple[float, bool]]] = {}
    for raw, r in zip(store.lrange(EFFECTS_KEY, 0, -1), effects, strict=True):
        key = (r["entity"], r["job"], r["token"], r["attempt"])
        late_by_run.setdefault(key, []).append((r["t"], raw in rejected))
    unfenced = effect_overlaps(spans)
    paused_overlaps = [v for v in unfenced if paused_and_fenced(v, pool.paused, late_by_run)]
    other_overlaps = [v for v in unfenced if v not in paused_overlaps]
    by_kind = Counter(v.kind for v in found)
    reruns_after_end = sum(
        1
        for history in per_entity.values()
        for a, b in itertools.pairwise(history)
        if a.job == b.job and a.how == "end"
    )
    figures: dict[str, Any] = {
        "seed": options.seed,
        "minutes": options.minutes,
        "entities": options.entities,
        "workers": len(pool.slots),
        "enqueued": producers.total,
        "enqueue_retries": producers.retries,
        "completed": states["completed"],
        "lost": len(lost_ids),
        "dead": states["dead"],
        "runs": len(runs),
        "reruns": len(runs) - len({r.job for r in runs}),
        "reruns_after_unrecorded_end": reruns_after_end - by_kind["rerun"],
        "duplicates": by_kind["rerun"],
        "overlaps_fenced": by_kind["overlap"],
        "overlaps_unfenced": len(other_overlaps),
        "overlaps_unfenced_paused": len(paused_overlaps),
        "late_writes_refused": len(rejected),
        "order_violations": by_kind["order"] + by_kind["token"],
        "incomplete_history": by_kind["incomplete"],
        "unended_runs": by_kind["unended"]
        + by_kind["unknown"]
        + sum(1 for v in unfenced if v.kind == "unended"),
        "worker_exits_unexpected": len(pool.exits),
        "graceful_stops_failed": sum(1 for code in graceful.values() if code != 0),
        "counts": counts,
    }
    failures = [
        f"{name} = {figures[name]}"
        for name in (
            "lost",
            "dead",
            "duplicates",
            "overlaps_fenced",
            "overlaps_unfenced",
            "order_violations",
            "incomplete_history",
            "unended_runs",
            "graceful_stops_failed",
        )
        if figures[name]
    ]
    memory = []
    for slot in pool.long_lived():
        assert slot.worker is not None
        warm, end = slot.rss.get("warm"), slot.rss.get("end")
        growth = None if warm is None or end is None else (end - warm) / 1024
        memory.append(
            {
                "worker": slot.worker.name,
                "kind": "packed" if slot.entity_id is None else f"bound {slot.entity_id}",
                "pid": slot.worker.pid,
                **{k: v for k, v in slot.rss.items()},
                "growth_mib": growth,
            }
        )
        if growth is None:
            failures.append(f"{slot.worker.name}: memory not read ({slot.rss})")
        elif growth > MEMORY_GROWTH_MIB:
            failures.append(f"{slot.worker.name}: RSS grew by {growth:.1f} MiB")
    if not pool.long_lived():
        failures.append("no worker lived from start to end")
    examples = [v.message for v in (found + other_overlaps)[:5]] + lost_ids[:5]
    return Result(figures, failures, memory, faults.count(), pool.exits, examples)


def paused_and_fenced(
    v: Violation,
    paused: dict[int, list[tuple[float, float]]],
    late_by_run: dict[tuple[Any, ...], list[tuple[float, bool]]],
) -> bool:
    """An unfenced overlap that a frozen process explains: the earlier run's process was frozen
    (SIGSTOP) between that run's start and the later run's start, so its lease ran out while it
    could do nothing, and every effect it made once the later run had begun was refused by the
    fenced store. No lease can stop a frozen process from acting the moment it wakes: that is
    what fencing is for."""
    if v.kind != "overlap":
        return False
    a, b = v.runs
    assert isinstance(a, EffectSpan)
    assert isinstance(b, EffectSpan)
    frozen = any(stop <= b.start and cont >= a.start for stop, cont in paused.get(a.pid, []))
    key = (a.entity, a.job, a.token, a.attempt)
    late = [refused for t, refused in late_by_run.get(key, []) if t >= b.start]
    return frozen and all(late)


# --- the report ---------------------------------------------------------------------------------
def report(options: Options, result: Result, seconds: float, load: tuple[float, float]) -> str:
    f = result.figures
    lines = [
        "AtomicQueues soak",
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load[0]:.2f} at start, {load[1]:.2f} at end; took {seconds / 60:.1f} min",
        f"{options.minutes:g} min of producing at {options.rate:g} jobs/s over "
        f"{options.entities} entities; {options.packed} packed workers x {options.slots} slots "
        f"+ {options.bound} entity-bound, each behind its own proxy; heartbeat TTL {TTL:g} s, "
        f"every {INTERVAL:g} s; {options.attempts} attempts per job; seed {options.seed}",
        "faults: "
        + ", ".join(f"{k} {result.faults.get(k, 0)}" for k in FAULTS)
        + f"; worker exits not caused by the soak: {len(result.exits)}",
        "",
    ]

    def row(label: str, value: Any, note: str = "") -> None:
        lines.append(f"   {label:<58}{value!s:>10}   {note}".rstrip())

    retried = f"enqueue calls retried: {f['enqueue_retries']}"
    row("jobs enqueued (acknowledged)", f["enqueued"], retried)
    row("jobs completed", f["completed"])
    row("lost (acknowledged, never completed)", f["lost"], "must be 0")
    row("dead-lettered", f["dead"], "must be 0 (the handler never fails)")
    row("runs (handler starts on record)", f["runs"], f"of them runs again: {f['reruns']}")
    row(
        "  again after an end whose outcome was not recorded",
        f["reruns_after_unrecorded_end"],
        "at least once: killed or lease lost before the ack",
    )
    row("duplicates (ran again after a recorded completion)", f["duplicates"], "must be 0")
    row("overlapping runs, fenced store", f["overlaps_fenced"], "must be 0")
    row("overlapping runs, unfenced effects", f["overlaps_unfenced"], "must be 0")
    row(
        "  of a frozen process on waking, refused by the fence",
        f["overlaps_unfenced_paused"],
        "SIGSTOP: only fencing can stop these",
    )
    row("late writes refused by the fenced store", f["late_writes_refused"])
    row("order violations (seq or token went back)", f["order_violations"], "must be 0")
    other = f["incomplete_history"] + f["unended_runs"]
    row("other history findings (incomplete, unended)", other, "must be 0")
    row("workers that did not stop gracefully at the end", f["graceful_stops_failed"], "must be 0")
    bound = f"bound: +{MEMORY_GROWTH_MIB:g} MiB from warm-up to end"
    lines += ["", f"Memory of the long-lived workers (VmRSS, MiB; {bound})"]
    for m in result.memory:

        def mib(kib: int | None) -> str:
            return "-" if kib is None else f"{kib / 1024:.1f}"

        growth = "-" if m["growth_mib"] is None else f"{m['growth_mib']:+.1f}"
        lines.append(
            f"   {m['worker']:<28}{m['kind']:<14} registered {mib(m.get('registered')):>6}"
            f"  warm {mib(m.get('warm')):>6}  end {mib(m.get('end')):>6}  growth {growth:>6}"
        )
    for name, pid, code, _ in result.exits:
        lines.append(f"   exited by itself: {name} (pid {pid}) code {code}")
    if result.examples:
        lines += ["", "Examples:"] + [f"   {e}" for e in result.examples]
    lines += ["", "PASS" if not result.failures else "FAIL: " + "; ".join(result.failures)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="aq-soak-"))
    load_start = os.getloadavg()[0]
    began = time.monotonic()
    try:
        result = asyncio.run(soak(options, workdir))
    except Exception as exc:
        traceback.print_exc()
        say(f"the soak could not run: {exc!r}; worker logs kept in {workdir}")
        return 2
    text = report(options, result, time.monotonic() - began, (load_start, os.getloadavg()[0]))
    print(text, flush=True)
    if options.json_path is not None:
        data = {
            "figures": result.figures,
            "faults": dict(result.faults),
            "memory": result.memory,
            "failures": result.failures,
            "exits": result.exits,
        }
        options.json_path.write_text(json.dumps(data, indent=2))
    if result.failures or options.keep:
        say(f"worker logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
