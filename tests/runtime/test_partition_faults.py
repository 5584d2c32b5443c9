"""Workers and lock holders cut off from Redis by a real partition, not a reset.

Why: a worker that is alive and busy but cannot reach Redis is the case a kill or a pause does
not show. Its lease expires while its handler runs on; another worker takes the entity and runs
the job again. Unless the cut-off worker stops the job on its own clock before the lease may
pass, the entity's jobs overlap, and a downstream store without fencing sees both. Each worker
here reaches Redis through its own `Partition` proxy, which the test cuts (silence, every socket
open; held bytes arrive after the heal, as TCP would deliver them), while the handlers write
their records straight to Redis, as a store the partition does not reach would take them.
Heartbeat TTL 1 s, cuts of 3 s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from atomicqueues import Client, Locks, Settings
from helpers import REPO_ROOT, wait_until
from partition import Partition
from runtime.lock_contender import STATE_KEY
from runtime.workers import (
    REJECTED_KEY,
    TTL,
    WorkerProc,
    Workers,
    assert_effects_never_overlap,
    base_env,
    check_history,
    load_runs,
    records,
)

pytestmark = pytest.mark.slow

T = "acct"
CUT = 3 * TTL
CUTS = 4


class Proxies:
    """One `Partition` per worker, closed at the end of the test."""

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        self.redis_url = redis_url
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.made: list[Partition] = []

    def new(self) -> Partition:
        proxy = Partition(*self.upstream)
        self.made.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self.made:
            proxy.close()


@pytest.fixture
def proxies(redis_url: str) -> Iterator[Proxies]:
    made = Proxies(redis_url)
    try:
        yield made
    finally:
        made.close()


def busy_worker(workers: Workers, started: dict[int, WorkerProc]) -> WorkerProc:
    """A worker that has just started a job (its start, less than 0.3 s ago, is on record and
    its end is not): cut now, its handler is still running when its lease runs out."""

    def find() -> WorkerProc | None:
        now = time.time()
        fresh = [r for r in load_runs(workers.redis) if r.end is None and now - r.start < 0.3]
        live = [started[r.pid] for r in fresh if r.pid in started]
        return next((w for w in live if w.alive()), None)

    found: WorkerProc = wait_until(find, 30, "a worker to start a job", every=0.02)
    return found


@pytest.mark.parametrize("packed", [False, True], ids=["entity-bound", "packed"])
async def test_cut_off_worker_stops_its_job_before_another_may_start_it(
    workers: Workers, client: Client, proxies: Proxies, packed: bool
) -> None:
    entities = ["p1", "p2", "p3", "p4"] if packed else ["e1"]
    n = 12 if packed else 16  # jobs of 1.5 s: a cut always finds a handler running
    total = n * len(entities)
    for k in range(n):
        for e in entities:
            await client.enqueue(T, e, "record", {"seq": k, "sleep": 1.5}, attempts=10)
    by_proxy: dict[int, Partition] = {}
    started: dict[int, WorkerProc] = {}
    for _ in range(2):
        proxy = proxies.new()
        w = workers.start(
            None if packed else "e1",
            slots=4 if packed else None,
            redis_url=proxy.url_for(workers.redis_url),
        )
        by_proxy[w.pid] = proxy
        started[w.pid] = w

    cut_workers = []
    for _ in range(CUTS):
        victim = busy_worker(workers, started)
        cut_workers.append(victim)
        losses = victim.output().count("lost its lease")
        by_proxy[victim.pid].cut_for(CUT)
        noticed = lambda v=victim, n=losses: v.output().count("lost its lease") > n  # noqa: E731
        wait_until(noticed, 20, "the cut worker to count its lease lost")

    workers.wait_all_done(total, timeout=120)
    runs = load_runs(workers.redis)
    per_entity = check_history(
        runs, dict.fromkeys(entities, n), workers.kill_times, lost_jobs=workers.lost_jobs()
    )
    workers.assert_completed_once(per_entity)
    assert assert_effects_never_overlap(workers.redis, workers.kill_times) >= total + CUTS
    counts = workers.counts()
    assert counts.get("completed") == total, counts
    assert counts.get("dead", 0) == 0, counts
    # Every cut cost the cut worker its leases, and its running job stopped (cancelled) before
    # the lease could pass: a run of the same job by the other worker began after it ended.
    cancelled = [r for r in runs if r.how == "cancel"]
    assert len(cancelled) >= CUTS, [(r.pid, r.seq, r.how) for r in runs if r.how != "end"]
    for run in cancelled:
        after = [r for r in runs if r.job == run.job and r.start > run.start]
        assert after, f"a cancelled run was never run again: {run}"
        assert after[0].token > run.token
    # Late writes of the cut-off handlers (if any) were all refused by the fenced store.
    for late in records(workers.redis, REJECTED_KEY):
        assert late["pid"] in {w.pid for w in cut_workers}, late
    for w in started.values():
        assert w.alive(), w.describe()
    workers.stop_all()
    for w in started.values():
        assert w.proc.returncode == 0, w.describe()


async def test_a_handler_that_blocks_the_event_loop_ends_its_worker_before_the_lease_can_pass(
    workers: Workers, client: Client
) -> None:
    job_id = await client.enqueue(T, "e1", "block", {"seq": 0, "sleep": 0.05, "first_block": 30})
    follower = await client.enqueue(T, "e1", "record", {"seq": 1, "sleep": 0.05})
    a = workers.start("e1")
    wait_until(lambda: load_runs(workers.redis), 30, "A to start the blocking job")
    b = workers.start("e1")

    # A's event loop is blocked: no heartbeat, no guard. Its watchdog thread ends it.
    wait_until(lambda: not a.alive(), 10, "the watchdog to end A")
    a.killed_at = time.time()  # the moment we saw it gone: no later than it was
    assert a.proc.returncode == 70, a.describe()
    assert "did not give control back" in a.output()

    workers.wait_all_done(2, timeout=30)
    runs = load_runs(workers.redis)
    per_entity = check_history(runs, {"e1": 2}, workers.kill_times)
    workers.assert_completed_once(per_entity)
    assert assert_effects_never_overlap(workers.redis, workers.kill_times) == 3
    first, again = per_entity["e1"][0], per_entity["e1"][1]
    assert (first.pid, first.end) == (a.pid, None)
    assert (again.pid, again.attempt, again.job) == (b.pid, 2, job_id)
    assert again.start > a.killed_at - 0.2  # B only began once A was gone
    assert workers.job("e1", follower).state == "completed"
    workers.stop_all()
    assert b.proc.returncode == 0, b.describe()


def test_a_lock_holder_cut_off_gives_up_its_block_before_another_may_take_the_lock(
    redis_url: str, proxies: Proxies, tmp_path: Path
) -> None:
    proxy = proxies.new()
    env = base_env(proxy.url_for(redis_url))
    env["AQ_TEST_STORE_URL"] = redis_url
    ttl = 1.0
    log = (tmp_path / "holder.log").open("wb")
    holder = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.runtime.lock_contender", "hold"),
            *(proxy.url_for(redis_url), "modem", "m1", str(ttl)),
        ],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    direct = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        wait_until(lambda: direct.llen(STATE_KEY) >= 1, 30, "the holder to take the lock")
        acquired = json.loads(direct.lindex(STATE_KEY, 0))  # type: ignore[arg-type]
        proxy.cut()

        async def take_over() -> tuple[float, int]:
            async with await Client.connect(Settings(redis_url=redis_url)) as c:
                locks = Locks(c)
                while True:
                    result = await locks.acquire("modem", "m1", "taker", "proc", ttl)
                    if result.lock is not None:
                        return time.time(), result.lock.token
                    await asyncio.sleep(0.01)

        taken_at, token = asyncio.run(take_over())
        proxy.heal()
        wait_until(lambda: direct.llen(STATE_KEY) >= 2, 30, "the holder to report its end")
        ended = json.loads(direct.lindex(STATE_KEY, 1))  # type: ignore[arg-type]
        assert ended["how"] == f"LockNotOwned {acquired['token']}", ended
        assert ended["lost"] is True
        assert ended["cancelled_at"] < taken_at, (ended, taken_at)
        assert token > acquired["token"]
        assert holder.wait(30) == 0
    finally:
        holder.kill()
        holder.wait()
        log.close()
        direct.close()
