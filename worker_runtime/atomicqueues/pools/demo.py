"""`aq demo`: the product in one command, on a fresh machine.

It starts an embedded Redis and a local pool of entity-bound workers, enqueues a few jobs for
each of a few dozen entities, shows live progress, kills a worker in the middle of a job (the
point of the product: that job comes back and runs again, nothing is lost, nothing overlaps),
then checks from what the jobs recorded that every job completed once, in order per entity,
with no two jobs of an entity running at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client import Client
from ..index_reads import IndexReads
from .embedded import EmbeddedRedis
from .local import LocalPool, settings_for
from .spec import Pool, parse_pool

ENTITY_TYPE = "account"
CHAOS_JOB_SECONDS = 1.5


@dataclass(frozen=True)
class DemoOptions:
    entities: int = 36
    jobs: int = 12
    chaos: bool = True
    job_seconds: float = 0.05
    plain: bool = False


@dataclass
class Chaos:
    target: str | None = None
    """The job whose worker is killed while it runs it."""
    killed_pid: int | None = None
    killed_job: str | None = None
    killed_entity: str | None = None
    killed_at: float = 0.0


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    runs: int = 0
    recovered_attempt: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def demo_pool(prefix: str) -> Pool:
    return parse_pool(
        {
            "apiVersion": "atomicqueues.io/v1alpha1",
            "kind": "EntityWorkerPool",
            "metadata": {"name": "demo"},
            "spec": {
                "entityType": ENTITY_TYPE,
                "handlers": "atomicqueues.pools.demo_handlers:registry",
                "redis": {"prefix": prefix},
                "workers": {"maxTotal": 12, "maxStartsPerSecond": 50},
                "timing": {
                    "idleTimeoutSeconds": 0.5,
                    "heartbeatTTLSeconds": 1.0,
                    "heartbeatIntervalSeconds": 0.25,
                    "shutdownGraceSeconds": 2.0,
                    "resyncIntervalSeconds": 1.0,
                },
            },
        },
        "demo pool",
    )


async def demo(options: DemoOptions) -> int:
    url = os.environ.get("AQ_REDIS_URL")
    if url:
        return await _run(options, url)
    with EmbeddedRedis() as redis:
        return await _run(options, redis.url)


async def _run(options: DemoOptions, url: str) -> int:
    # The pool's own lines (workers started, recovered leases) would break the live table;
    # the verdict at the end says what happened.
    logging.getLogger("atomicqueues").setLevel(logging.WARNING if options.plain else logging.ERROR)
    prefix = f"aqdemo-{uuid.uuid4().hex[:8]}"
    pool = demo_pool(prefix)
    client = await Client.connect(settings_for(pool, url))
    log_key = f"{prefix}:demo:log"
    total = options.entities * options.jobs
    workdir = Path(tempfile.mkdtemp(prefix="aq-demo-"))
    out = (workdir / "workers.log").open("wb")
    local = LocalPool(pool, client, worker_output=out)
    index = IndexReads(client)
    stop = asyncio.Event()
    chaos = Chaos()
    view = _view(options.plain)
    view.say(
        f"AtomicQueues demo: {options.entities} entities x {options.jobs} jobs, "
        f"one worker process per active entity (at most 12 at once), Redis at {url}"
    )
    try:
        runner = asyncio.create_task(local.run(stop))
        started = time.monotonic()
        # The chaos victim: one job in the middle of one entity's queue works long enough
        # for its worker to be caught in the act.
        victim = (options.entities - 1, options.jobs // 2) if options.chaos else None
        for seq in range(options.jobs):
            for n in range(options.entities):
                seconds = CHAOS_JOB_SECONDS if (n, seq) == victim else options.job_seconds
                job_id = await client.enqueue(
                    ENTITY_TYPE,
                    f"acct-{n:03d}",
                    "step",
                    {"seq": seq, "seconds": seconds, "log_key": log_key},
                )
                if (n, seq) == victim:
                    chaos.target = job_id
        done = 0
        while done < total:
            await asyncio.sleep(0.25)
            counts = await index.counts(ENTITY_TYPE)
            done = counts["completed"]
            active = len(await index.entities_with_work(ENTITY_TYPE))
            live = sum(1 for w in local.workers.values() if w.proc.returncode is None)
            elapsed = time.monotonic() - started
            view.progress(done, total, active, live, done / elapsed if elapsed else 0.0, counts)
            if chaos.target and chaos.killed_pid is None:
                await _kill_victim(client, log_key, chaos)
                if chaos.killed_pid is not None:
                    view.say(
                        f"chaos: killed worker pid {chaos.killed_pid} (SIGKILL) while it ran "
                        f"job {chaos.killed_job} of entity {chaos.killed_entity!r}"
                    )
            if elapsed > 120 + total * options.job_seconds:
                view.say("the demo took too long; stopping")
                break
        elapsed = time.monotonic() - started
        stop.set()
        await runner
        view.done()
        verdict = await _verify(client, log_key, options, chaos)
        view.say(
            f"{done} of {total} jobs completed in {elapsed:.1f}s ({done / elapsed:.0f} jobs/s),"
            f" {verdict.runs} handler runs"
        )
        if chaos.killed_job:
            view.say(
                f"the killed job {chaos.killed_job} came back and completed "
                f"(attempt {verdict.recovered_attempt})"
            )
        for line in verdict.problems:
            view.say(f"PROBLEM: {line}")
        if verdict.ok:
            view.say(
                "check passed: every job completed once, in order per entity, "
                "no two jobs of an entity overlapped"
            )
        view.say(f"worker logs: {workdir / 'workers.log'}")
        return 0 if verdict.ok else 1
    finally:
        stop.set()
        out.close()
        await client.close()


async def _kill_victim(client: Client, log_key: str, chaos: Chaos) -> None:
    """SIGKILL the worker running the victim job, once it has started it."""
    records = [json.loads(r) for r in await client.redis.lrange(log_key, 0, -1)]
    mine = [r for r in records if r["job"] == chaos.target]
    if not mine or mine[-1]["event"] != "start":
        return
    victim = mine[-1]
    try:
        os.kill(victim["pid"], signal.SIGKILL)
    except ProcessLookupError:
        return
    chaos.killed_pid = victim["pid"]
    chaos.killed_job = victim["job"]
    chaos.killed_entity = victim["entity"]
    chaos.killed_at = time.time()


async def _verify(client: Client, log_key: str, options: DemoOptions, chaos: Chaos) -> Verdict:
    verdict = Verdict()
    records = [json.loads(r) for r in await client.redis.lrange(log_key, 0, -1)]
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        run = runs.setdefault((r["job"], r["attempt"]), {"entity": r["entity"], "seq": r["seq"]})
        run[r["event"]] = r["t"]
        run["pid"] = r["pid"]
    verdict.runs = len(runs)
    by_entity: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ends: dict[str, int] = defaultdict(int)
    for (job, attempt), run in runs.items():
        if "end" not in run:
            if chaos.killed_job != job:
                verdict.problems.append(f"job {job} attempt {attempt} started and never ended")
            run["end"], run["killed"] = chaos.killed_at, True
        else:
            ends[job] += 1
            if job == chaos.killed_job:
                verdict.recovered_attempt = attempt
        by_entity[run["entity"]].append(run)
    for job, n in ends.items():
        if n != 1:
            verdict.problems.append(f"job {job} completed {n} times")
    expected = list(range(options.jobs))
    for entity, entity_runs in sorted(by_entity.items()):
        entity_runs.sort(key=lambda run: run["start"])
        finished = sorted(
            (run for run in entity_runs if not run.get("killed")), key=lambda run: run["end"]
        )
        completed = [run["seq"] for run in finished]
        if completed != expected:
            verdict.problems.append(f"entity {entity}: jobs completed in order {completed}")
        for a, b in itertools.pairwise(entity_runs):
            if b["start"] < a["end"]:
                verdict.problems.append(
                    f"entity {entity}: seq {a['seq']} and {b['seq']} overlapped"
                )
    if len(by_entity) != options.entities:
        verdict.problems.append(f"{len(by_entity)} entities ran, expected {options.entities}")
    if chaos.killed_job and verdict.recovered_attempt is None:
        verdict.problems.append(f"the killed job {chaos.killed_job} never completed")
    return verdict


class _PlainView:
    def __init__(self) -> None:
        self._last = 0.0

    def say(self, text: str) -> None:
        print(text, flush=True)

    def progress(
        self, done: int, total: int, active: int, workers: int, rate: float, counts: dict[str, int]
    ) -> None:
        if time.monotonic() - self._last >= 1.0 or done == total:
            self._last = time.monotonic()
            print(
                f"  {done:>5}/{total} jobs done  {active:>3} entities with work  "
                f"{workers:>3} workers  {rate:>6.0f} jobs/s  "
                f"waiting {counts['waiting']}  active {counts['active']}",
                flush=True,
            )

    def done(self) -> None:
        pass


@dataclass(frozen=True)
class Figures:
    """What the live view shows at one moment."""

    done: int
    total: int
    active: int
    workers: int
    rate: float
    counts: dict[str, int]


LIVE_COLUMNS = ("entities with work", "workers", "waiting", "running", "retrying", "dead")


def live_table(figures: Figures, width: int) -> Any:
    """The live view for a terminal `width` columns wide: a progress line (the bar takes what
    the figures leave) over a table of six columns that fits 80 columns; narrower, its headers
    wrap rather than being cut."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    f, counts = figures, figures.counts
    line = f"{f.done}/{f.total} jobs done  {f.rate:.0f} jobs/s"
    progress = Table.grid(padding=(0, 2))
    progress.add_column(no_wrap=True)
    progress.add_column()
    bar_width = max(5, min(40, width - len(line) - 2))
    progress.add_row(line, ProgressBar(total=f.total, completed=f.done, width=bar_width))
    table = Table()
    for column in LIVE_COLUMNS:
        table.add_column(column, justify="right", overflow="fold")
    table.add_row(
        str(f.active),
        str(f.workers),
        str(counts["waiting"]),
        str(counts["active"]),
        str(counts["retrying"]),
        str(counts["dead"]),
    )
    return Group(Text("AtomicQueues demo", style="bold"), progress, table)


class _RichView:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def say(self, text: str) -> None:
        self.console.print(text)

    def progress(
        self, done: int, total: int, active: int, workers: int, rate: float, counts: dict[str, int]
    ) -> None:
        figures = Figures(done, total, active, workers, rate, counts)
        self.live.update(live_table(figures, self.console.width))

    def done(self) -> None:
        with contextlib.suppress(Exception):
            self.live.stop()


def _view(plain: bool) -> _PlainView | _RichView:
    if plain or not os.isatty(1):
        return _PlainView()
    try:
        return _RichView()
    except ImportError:
        return _PlainView()
