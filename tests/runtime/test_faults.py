"""Fault tests with real `aq worker` processes: SIGKILL, SIGSTOP past the lease TTL, a storm.

Why: the promises that matter most ("nothing is lost", "no two runs of an entity at once", "a
paused former holder can change nothing") are about processes that die or freeze, which only
real processes show. Heartbeat TTL 1 s and interval 0.25 s keep recovery fast; every wait is a
poll with a generous deadline, so a loaded machine is slow but not flaky.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from atomicqueues import Client
from atomicqueues.jobs import Job
from atomicqueues.keys import job_key
from helpers import wait_until
from runtime.workers import (
    INTERVAL,
    REJECTED_KEY,
    TTL,
    Workers,
    check_history,
    load_runs,
    records,
    reruns,
    runs_of,
)

pytestmark = pytest.mark.slow

T = "acct"
RECOVERY_BOUND = TTL + INTERVAL + 3.0  # TTL + one sweep, plus slack for a loaded machine


def dead_seqs(workers: Workers, entities: list[str]) -> dict[str, set[int]]:
    """Seqs of dead-lettered jobs per entity (payloads carry the seq)."""
    dead: dict[str, set[int]] = {}
    for e in entities:
        for jslot in workers.redis.zrange(workers.entity_key(e, "dlq"), 0, -1):  # type: ignore[union-attr]
            bucket = workers.keys.entity_bucket(T, e)
            fields = workers.redis.hgetall(job_key(bucket, jslot))
            job = Job.from_fields(T, fields)  # type: ignore[arg-type]
            dead.setdefault(e, set()).add(job.payload["seq"])
    return dead


# --- 1. SIGKILL mid-job ---------------------------------------------------------------------------
@pytest.mark.parametrize("packed", [False, True], ids=["entity-bound", "packed"])
async def test_sigkill_mid_job_returns_job_to_head_and_it_completes_once(
    workers: Workers, client: Client, packed: bool
) -> None:
    entities = ["p1", "p2", "p3"] if packed else ["e1"]
    n = 4
    job_ids: dict[tuple[str, int], str] = {}
    for k in range(n):
        for e in entities:
            payload: dict[str, object] = {"seq": k, "sleep": 0.05}
            if k == 1:
                payload["first_sleep"] = 30.0  # the run that gets killed
            job_ids[e, k] = await client.enqueue(T, e, "record", payload)

    a = workers.start(slots=len(entities)) if packed else workers.start("e1")
    # A is mid-job (seq 1, a long first run) on every entity before anyone else exists.
    wait_until(
        lambda: {r.entity for r in runs_of(workers, pid=a.pid, seq=1)} == set(entities),
        30,
        "worker A to start seq 1 of every entity",
    )
    b = workers.start(slots=len(entities)) if packed else workers.start("e1")
    assert not runs_of(workers, pid=b.pid), "B must find every entity held by A"

    killed_at = a.kill()
    workers.wait_all_done(len(job_ids), timeout=30 + RECOVERY_BOUND)

    runs = load_runs(workers.redis)
    per_entity = check_history(runs, dict.fromkeys(entities, n), workers.kill_times)
    workers.assert_completed_once(per_entity)
    for e in entities:
        history = per_entity[e]
        i = next(i for i, r in enumerate(history) if r.pid == a.pid and r.end is None)
        killed, after = history[i], history[i + 1]
        # Back at the head of its queue, one attempt used: the very next run is its re-run.
        assert (killed.seq, killed.attempt) == (1, 1), killed
        assert (after.seq, after.attempt, after.pid) == (1, 2, b.pid), after
        assert after.token > killed.token
        assert after.start - killed_at < RECOVERY_BOUND, (
            f"recovered {after.start - killed_at:.2f}s after the kill (TTL {TTL}s)"
        )
        record = workers.job(e, job_ids[e, 1])
        assert (record.state, record.attempt) == ("completed", 2)
        assert "stalled" in (record.error or "")
        assert workers.job(e, job_ids[e, 0]).attempt == 1
    counts = workers.counts()
    assert counts.get("completed") == len(job_ids), counts
    assert counts.get("dead", 0) == 0, counts
    assert records(workers.redis, REJECTED_KEY) == []

    workers.stop_all()
    assert b.proc.returncode == 0, b.describe()


# --- 2. SIGSTOP past the TTL ----------------------------------------------------------------------
async def test_sigstop_past_ttl_late_completion_is_refused_and_fenced(
    workers: Workers, client: Client
) -> None:
    first_sleep = 3.0
    job_id = await client.enqueue(
        T, "e1", "record", {"seq": 0, "sleep": 0.2, "first_sleep": first_sleep}
    )
    a = workers.start("e1")
    (a_run,) = wait_until(lambda: runs_of(workers, pid=a.pid), 30, "A to start the job")
    b = workers.start("e1")

    a.signal(signal.SIGSTOP)
    # A's lease expires, B's heartbeat sweeps it back to the queue, B runs it to completion.
    b_run = wait_until(
        lambda: [r for r in runs_of(workers, pid=b.pid) if r.how == "end"],
        30,
        "B to complete the job",
    )[0]
    assert (b_run.attempt, b_run.seq) == (2, 0)
    assert b_run.token > a_run.token
    assert workers.job("e1", job_id).state == "completed"
    # Let A's own sleep run out while it is frozen, so it finishes the moment it wakes.
    while time.time() < a_run.start + first_sleep + 0.3:
        time.sleep(0.05)
    a.signal(signal.SIGCONT)

    # A's late effect reaches the fenced store and is refused there.
    late = wait_until(lambda: records(workers.redis, REJECTED_KEY), 20, "A's late write")
    wait_until(lambda: "lease lost" in a.output(), 20, "A to notice its lease is lost")
    time.sleep(2 * INTERVAL)  # anything else A might still do
    late = records(workers.redis, REJECTED_KEY)
    assert len(late) == 1, late
    assert late[0]["pid"] == a.pid
    assert late[0]["ev"] in ("end", "cancel")
    assert late[0]["token"] == a_run.token < b_run.token

    # A's completion was refused: the job completed once, by B, under B's token.
    record = workers.job("e1", job_id)
    assert record.state == "completed"
    assert record.fencing_token == b_run.token > a_run.token
    assert record.attempt == 2
    assert workers.counts().get("completed") == 1, workers.counts()
    # No overlap in effects: every accepted write of A precedes B's run.
    runs = load_runs(workers.redis)
    assert [(r.pid, r.how) for r in runs] == [(a.pid, None), (b.pid, "end")]
    assert a.alive(), a.describe()

    workers.stop_all()
    assert (a.proc.returncode, b.proc.returncode) == (0, 0), workers.logs()


# --- 3. a storm of workers, two of them killed -------------------------------------------------
async def test_storm_with_random_kills_loses_nothing(workers: Workers, client: Client) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    entities = [f"s{i:02d}" for i in range(30)]
    n = 10
    bound = entities[:2]
    started = [workers.start(slots=4, wait=False) for _ in range(3)]
    started += [workers.start(e, wait=False) for e in bound]
    for w in started:
        workers.wait_registered(w)

    for k in range(n):
        for e in entities:
            await client.enqueue(T, e, "record", {"seq": k, "sleep": rng.uniform(0.01, 0.08)})
    total = n * len(entities)

    def completed() -> int:
        return int(workers.counts().get("completed", 0))

    victims = []
    for fraction in (0.25, 0.6):
        wait_until(
            lambda f=fraction: completed() >= f * total,
            60,  # type: ignore[misc]
            f"{fraction:.0%} of the jobs to complete",
        )
        live = workers.alive()
        busy_pids = {r.pid for r in load_runs(workers.redis) if r.end is None}
        victim = rng.choice([w for w in live if w.pid in busy_pids] or live)
        victim.kill()
        victims.append(victim)
        if victim.entity_id is None:
            workers.start(slots=4)
        else:
            workers.start(victim.entity_id)

    workers.wait_all_done(total, timeout=60)
    dead = dead_seqs(workers, entities)
    runs = load_runs(workers.redis)
    lost = workers.lost_jobs()  # leases lost by live workers: only on a badly starved machine
    per_entity = check_history(
        runs, dict.fromkeys(entities, n), workers.kill_times, dead=dead, lost_jobs=lost
    )
    workers.assert_completed_once(per_entity)
    again = reruns(runs)
    for first, second in again:
        # Re-run only after its worker was killed (or lost the lease), with one more attempt.
        assert first.pid in workers.kill_times or first.job in lost or first.fenced, first
        assert second.attempt == first.attempt + 1, (first, second, seed)
    if any(v.entity_id is None for v in victims):  # a packed victim had several jobs running
        assert any(first.pid in workers.kill_times for first, _ in again), f"seed {seed}"
    counts = workers.counts()
    # Two kills use at most two of a job's three attempts: nothing may be dead-lettered.
    assert counts.get("completed") == total, (counts, seed)
    assert counts.get("dead", 0) == 0, (counts, seed)

    workers.stop_all()
    for w in workers.started:
        if w not in victims:
            assert w.proc.returncode == 0, w.describe()
