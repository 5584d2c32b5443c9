"""Load for the failover tests: worker processes, a producer that knows what was acknowledged,
and what the runs on record say.

Why: a failover can lose what the old primary acknowledged last, so the tests must tell apart
an enqueue that was acknowledged from one that failed (and was sent again), and see every run
of every job from outside the deployment under test. `Fleet` starts real `aq worker` processes
(packed) whose `record` handler (tests/runtime/handlers.py) writes every run's start and end
to a separate Redis (AQ_TEST_STORE_URL), out of the failovers' reach; `Producer` enqueues
jobs with ids of its own, sends an enqueue again with the same id until one is acknowledged
(enqueue with a given id is idempotent), and keeps the acknowledged ids; `Outcome` compares the
two after the work has drained.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis

from atomicqueues import Client, JobNotFound, NotReplicated, RedisUnavailable
from atomicqueues.index_reads import IndexReads
from helpers import eventually
from runtime import workers
from runtime.workers import (
    EFFECTS_KEY,
    HANDLERS,
    Run,
    WorkerProc,
    base_env,
    start_aq,
)

T = "acct"
SETTINGS: dict[str, str | float] = {
    "heartbeat_ttl": 2.0,
    "heartbeat_interval": 0.5,
    "max_attempts": 50,  # every failover may cost a running job an attempt: none may die of it
}


@dataclass
class Fleet:
    """Packed `aq worker` processes on `url` (a Sentinel or Cluster URL); killed at close."""

    url: str
    store_url: str
    log_dir: Path
    settings: dict[str, str | float] = field(default_factory=dict)
    started: list[WorkerProc] = field(default_factory=list)

    def start(self, slots: int) -> WorkerProc:
        name = f"fw{len(self.started)}-{os.getpid()}"
        env = base_env(self.url, node_name="node-1", **SETTINGS, **self.settings)
        env["AQ_TEST_STORE_URL"] = self.store_url
        args = ["worker", "--handlers", HANDLERS, "--entity-type", T, "--slots", str(slots)]
        args += ["--name", name, "--shutdown-grace", "5"]
        log_path = self.log_dir / f"{name}.log"
        proc = start_aq(args, env, log_path)
        worker = WorkerProc(name, "node-1", None, proc, log_path)
        self.started.append(worker)
        return worker

    def dead(self) -> list[WorkerProc]:
        return [w for w in self.started if not w.alive()]

    def all_running(self) -> bool:
        """Every worker has started (registered, serving): a worker still starting when Redis
        fails over exits at once, as `aq worker` does when Redis cannot be reached."""
        return all(" started for " in w.log_path.read_text(errors="replace") for w in self.started)

    def logs(self) -> str:
        return "\n\n".join(w.describe() for w in self.started)

    def close(self) -> None:
        for w in self.started:
            if w.alive():
                w.proc.kill()
            w.proc.wait()


@dataclass
class Producer:
    """Enqueues `record` jobs round-robin over `entities`, each job id sent until acknowledged."""

    client: Client
    entities: list[str]
    sleep: float = 0.02
    """How long each job's handler runs."""
    pause: float = 0.05
    """Pause after each round over the entities (so the workers keep up)."""
    acked: dict[str, str] = field(default_factory=dict)
    """Acknowledged job id -> its entity (ids are ENTITY-SEQ)."""
    not_replicated: int = 0
    """Enqueues the primary took but too few replicas confirmed (sent again)."""
    unavailable: int = 0
    """Enqueues that failed with `RedisUnavailable` (sent again)."""

    async def run(self, stop: asyncio.Event) -> None:
        for seq in itertools.count():
            for entity in self.entities:
                job_id = f"{entity}-{seq}"
                while True:
                    if stop.is_set():
                        return
                    try:
                        payload = {"seq": seq, "sleep": self.sleep}
                        await self.client.enqueue(T, entity, "record", payload, job_id=job_id)
                    except NotReplicated:
                        self.not_replicated += 1
                    except RedisUnavailable:
                        self.unavailable += 1
                    else:
                        self.acked[job_id] = entity
                        break
                    await asyncio.sleep(0.05)
            await asyncio.sleep(self.pause)


def load_runs(store: redis.Redis) -> list[Run]:
    """Every run on record, fenced or not (a failover may hand a lease on early: see
    README's "Failover"), in start order."""
    return workers.load_runs(store, EFFECTS_KEY)


@dataclass
class Outcome:
    """What the runs on record and Redis say about the acknowledged enqueues."""

    acked: int
    lost: list[str]
    """Acknowledged job ids that never ran and are not in Redis: lost in a failover."""
    ran_again: list[str]
    """Job ids that ran to their end, then ran again: their completion was lost (or their
    outcome was not recorded before the lease passed)."""
    runs: list[Run]

    @property
    def longest_pause(self) -> float:
        """The longest time (s) in which no job started: what a failover stopped the work."""
        starts = [run.start for run in self.runs]
        return max((b - a for a, b in itertools.pairwise(starts)), default=0.0)

    def line(self) -> str:
        return (
            f"{self.acked} enqueues acknowledged, {len(self.lost)} lost; "
            f"{len(self.ran_again)} jobs ran again after their handler returned; "
            f"{len(self.runs)} runs; no job started for {self.longest_pause:.1f}s at most"
        )


async def outcome(client: Client, producer: Producer, store: redis.Redis) -> Outcome:
    runs = load_runs(store)
    started = {run.job for run in runs}
    lost = []
    for job_id, entity in producer.acked.items():
        if job_id in started:
            continue
        try:
            await client.job(job_id, entity=(T, entity))
        except JobNotFound:
            lost.append(job_id)
    ended: dict[str, float] = {}
    ran_again = set()
    for run in runs:
        if run.job in ended:
            ran_again.add(run.job)
        if run.how == "end":
            ended[run.job] = run.end or 0.0
    return Outcome(len(producer.acked), sorted(lost), sorted(ran_again), runs)


def check_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Per entity, in start order: every run ended or was cancelled, none began before the one
    before it ended, fencing tokens never went down and jobs first started in their order."""
    per_entity: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        per_entity[run.entity].append(run)
    for entity, history in per_entity.items():
        for a, b in itertools.pairwise(history):
            assert a.end is not None, f"a run with no end on record: {a}"
            assert b.start >= a.end, f"overlap on {entity!r}:\n {a}\n {b}"
            assert b.token >= a.token, f"fencing token went down on {entity!r}: {a} -> {b}"
        seen: set[str] = set()
        order = []
        for run in history:
            if run.job not in seen:
                seen.add(run.job)
                order.append(run.seq)
        assert order == sorted(order), f"{entity!r}: jobs first started out of order: {order}"
    return dict(per_entity)


async def settle(
    label: str,
    client: Client,
    producer: Producer,
    fleet: Fleet,
    workers: list[WorkerProc],
    store: redis.Redis,
    wait: bool,
    timeout: float,
) -> Outcome:
    """Once the producer has stopped: let the work drain, then check what must hold across
    failovers and print the figures (run with -s): the same workers live on (no restarts), no
    two runs of an entity overlap, tokens never go down, jobs first start in order, every
    acknowledged job that survived ran to its end, and with WAIT none was lost."""
    await eventually(lambda: drained(client), timeout, "the work to drain")
    assert not fleet.dead(), f"workers ended:\n{fleet.logs()}"
    assert [w.pid for w in fleet.started] == [w.pid for w in workers]  # no restarts
    result = await outcome(client, producer, store)
    print(
        f"\n{label}, {'WAIT 1' if wait else 'no WAIT'}: {result.line()}; "
        f"{producer.not_replicated} enqueues refused by WAIT, "
        f"{producer.unavailable} failed during the failover"
    )
    check_runs(result.runs)
    assert result.acked >= 40
    if wait:
        assert result.lost == [], "an enqueue acknowledged with WAIT was lost"
    ended_jobs = {run.job for run in result.runs if run.how == "end"}
    assert set(producer.acked) - set(result.lost) <= ended_jobs
    return result


async def drained(client: Client) -> bool:
    """Nothing waiting, delayed, active or retrying (Redis unreachable counts as not yet)."""
    try:
        counts = await IndexReads(client).counts(T)
    except RedisUnavailable:
        return False
    return not any(counts.get(s, 0) for s in ("waiting", "delayed", "active", "retrying"))
