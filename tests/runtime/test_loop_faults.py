"""Redis failures injected at each call site of the worker's loops, in-process.

Why: a Redis error that hits a loop of the worker at the wrong moment (between two jobs of a
packed worker, during the idle release, in the heartbeat) once killed that loop silently while
the heartbeat kept renewing the entity's lease, so the entity's later jobs waited until the
worker exited. Random kills do not find such holes; failing each call site on purpose does.
`FaultyClient` makes the next N calls of one site fail as a dropped connection would (a redis-py
ConnectionError inside `Client.call`), and the tests check that every job still completes, in
order, never two runs of an entity at once, and that the worker goes on (or ends cleanly).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis.exceptions

from atomicqueues import Client, JobContext, Registry, Settings, Worker
from atomicqueues.connection import connect
from atomicqueues.index_reads import IndexReads

T = TypeVar("T")
TYPE = "acct"
SETTINGS = {"heartbeat_ttl": 1.0, "heartbeat_interval": 0.25, "shutdown_grace": 2.0}


class FaultyClient(Client):
    """A client whose calls fail on demand, by site: a script's name, "blpop", or "call" (any
    other call: the registration pipeline, close checks, the index read, the sweep lock)."""

    def __init__(self, redis: Any, settings: Settings) -> None:
        super().__init__(redis, settings)
        self.armed: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        self.outage_until = 0.0
        self._site = "call"

    def arm(self, site: str, times: int) -> None:
        self.armed[site] = times

    def outage(self, seconds: float) -> None:
        """Every call fails for `seconds`."""
        self.outage_until = time.monotonic() + seconds

    def _hit(self, site: str) -> None:
        if time.monotonic() < self.outage_until:
            self.hits["outage"] += 1
        elif self.armed[site] > 0:
            self.armed[site] -= 1
            self.hits[site] += 1
        else:
            return
        raise redis.exceptions.ConnectionError(f"injected failure at {site}")

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        site, self._site = self._site, "call"

        async def faulty() -> T:
            self._hit(site)
            return await make()

        return await super().call(faulty)

    async def script(self, name: str, *args: Any, **options: Any) -> Any:
        self._site = name  # read by `call`, which the script's call reaches before any await
        return await super().script(name, *args, **options)

    async def blpop(self, keys: list[str], seconds: float) -> tuple[str, str] | None:
        self._hit("blpop")
        return await super().blpop(keys, seconds)


@dataclass
class Run:
    entity: str
    seq: int
    attempt: int
    token: int
    start: float
    end: float | None = None
    lost: bool = False


def recording_registry(runs: list[Run]) -> Registry:
    registry = Registry()

    @registry.command("record")
    async def record(ctx: JobContext, payload: dict[str, Any]) -> None:
        run = Run(ctx.entity_id, payload["seq"], ctx.attempt, ctx.fencing_token, time.monotonic())
        runs.append(run)
        pause = payload.get("first_sleep", payload["sleep"]) if ctx.attempt == 1 else None
        try:
            await asyncio.sleep(payload["sleep"] if pause is None else pause)
        finally:
            run.end = time.monotonic()
            run.lost = ctx.lost.is_set()

    return registry


def check_runs(runs: list[Run], expected: dict[str, int]) -> None:
    """Per entity: no two runs overlap, seqs never go back, every seq's last run completed."""
    for entity, n in expected.items():
        mine = sorted((r for r in runs if r.entity == entity), key=lambda r: r.start)
        for a, b in itertools.pairwise(mine):
            assert a.end is not None, a
            assert b.start >= a.end, f"overlap on {entity}: {a} {b}"
            assert b.seq >= a.seq, f"order broken on {entity}: {a} {b}"
            assert b.token >= a.token, (a, b)
            if b.seq == a.seq:
                assert a.lost, f"{entity}: ran again after a run that kept its lease: {a} {b}"
        assert sorted({r.seq for r in mine}) == list(range(n)), (entity, mine)


@pytest.fixture
def client_settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, **SETTINGS)  # type: ignore[arg-type]


@pytest.fixture
async def faulty_client(client_settings: Settings) -> AsyncIterator[FaultyClient]:
    """A FaultyClient with `client_settings`, closed after the test."""
    settings = client_settings
    c = FaultyClient(await connect(settings.redis_url, settings.call_timeout), settings)
    yield c
    await c.close()


async def enqueue(client: Client, entities: list[str], seqs: range, sleep: float) -> int:
    observer = Client(client.redis, client.settings)  # no faults on the producer's side
    for seq in seqs:
        for e in entities:
            await observer.enqueue(TYPE, e, "record", {"seq": seq, "sleep": sleep})
    return len(seqs) * len(entities)


async def wait_done(client: Client, total: int, timeout: float = 30.0) -> dict[str, int]:
    observer = Client(client.redis, client.settings)
    deadline = time.monotonic() + timeout
    while True:
        counts = await IndexReads(observer).counts(TYPE)
        busy = sum(counts.get(s, 0) for s in ("waiting", "delayed", "active", "retrying"))
        if counts.get("completed", 0) + counts.get("dead", 0) >= total and busy == 0:
            return counts
        assert time.monotonic() < deadline, f"jobs did not end: {counts}"
        await asyncio.sleep(0.05)


def start_worker(client: Client, runs: list[Run], kind: str) -> tuple[Worker, asyncio.Task[str]]:
    """A worker of entity "a" (entity-bound) or of any entity with 2 slots (packed), running."""
    entity_id = None if kind == "packed" else "a"
    worker = Worker(client, recording_registry(runs), TYPE, entity_id=entity_id, slots=2)
    return worker, asyncio.create_task(worker.run())


SITES = {
    # site: (worker kinds where the loops reach it while these tests run)
    "claim": ("entity-bound",),
    "claim_any": ("packed",),
    "finish": ("entity-bound", "packed"),
    "renew": ("entity-bound", "packed"),
    # (No "release": a packed worker lets go of an entity that ran dry inside finish, and an
    # entity-bound one only when idle past its timeout, longer than these tests.)
    "sweep": ("entity-bound", "packed"),
    "blpop": ("entity-bound", "packed"),
    "call": ("entity-bound", "packed"),
}
CASES = [
    pytest.param(site, kind, id=f"{kind}-{site}") for site, kinds in SITES.items() for kind in kinds
]


@pytest.mark.parametrize(("site", "kind"), CASES)
async def test_a_failure_at_each_call_site_loses_nothing_and_stalls_nothing(
    faulty_client: FaultyClient, site: str, kind: str
) -> None:
    runs: list[Run] = []
    entities = ["a", "b", "c"] if kind == "packed" else ["a"]
    worker, runner = start_worker(faulty_client, runs, kind)
    await asyncio.sleep(0.3)  # the worker is up, idle, blocked waiting for work
    faulty_client.arm(site, 2)
    total = await enqueue(faulty_client, entities, range(4), sleep=0.25)
    await wait_done(faulty_client, total)
    assert faulty_client.hits[site] == 2, f"the loops never reached {site}: {faulty_client.hits}"
    # The entity is not held by a dead loop: jobs enqueued now run at once.
    faulty_client.arm(site, 2)
    total += await enqueue(faulty_client, entities, range(4, 6), sleep=0.05)
    counts = await wait_done(faulty_client, total)
    assert counts.get("completed") == total, counts
    assert not runner.done(), runner
    assert worker.failed is None
    worker.close("test over")
    assert await asyncio.wait_for(runner, 10) == "test over"
    assert worker.failed is None
    check_runs(runs, dict.fromkeys(entities, 6))


@pytest.mark.parametrize("kind", ["entity-bound", "packed"])
async def test_an_outage_longer_than_the_lease_stops_the_job_before_the_lease_can_pass(
    faulty_client: FaultyClient, kind: str
) -> None:
    """Redis unreachable for 2.5 TTLs while a job runs: the worker's own clock ends the job
    (ctx.lost) before its lease may expire; once Redis is back the job runs again, once, and
    the worker goes on with the rest."""
    runs: list[Run] = []
    worker, runner = start_worker(faulty_client, runs, kind)
    observer = Client(faulty_client.redis, faulty_client.settings)
    await observer.enqueue(TYPE, "a", "record", {"seq": 0, "sleep": 0.05, "first_sleep": 30})
    await observer.enqueue(TYPE, "a", "record", {"seq": 1, "sleep": 0.05})
    while not runs:
        await asyncio.sleep(0.02)
    lease = worker.held["a"]
    faulty_client.outage(2.5 * SETTINGS["heartbeat_ttl"])
    first = runs[0]
    while first.end is None:
        await asyncio.sleep(0.02)
    assert first.lost, first
    # Stopped before the moment the lease may expire, on the worker's clock (the last renewal
    # that got through was sent before it, plus the TTL).
    assert first.end < lease.valid_until, (first, lease)
    await wait_done(faulty_client, 2)
    assert faulty_client.hits["outage"] > 0
    assert not runner.done(), runner
    assert worker.failed is None
    worker.close("test over")
    await asyncio.wait_for(runner, 10)
    again = [r for r in runs if r.seq == 0 and r is not first]
    assert [(r.attempt, r.lost) for r in again] == [(2, False)], runs
    assert again[0].token > first.token
    assert again[0].start >= first.end
    check_runs(runs, {"a": 2})
