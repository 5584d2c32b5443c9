"""Time limits and cancelling a running job, with real `aq worker` processes.

A handler past its job's time limit is cancelled and the attempt fails (retried, or
dead-lettered once its attempts are used up); one that does not give control back (a sync
handler in its thread, an async one that blocks the event loop) still frees its entity: the
worker ends its process and the lease expires. `Client.cancel` and `aq cancel` reach a running
job: its handler is cancelled, the job ends `cancelled`, and the entity goes on.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from atomicqueues import Client, JobCancelled
from atomicqueues.watchdog import EXIT_LEASE_OVERRUN
from helpers import aq, wait_until
from runtime.handlers import STUBBORN_KEY
from runtime.workers import TTL, Workers, runs_of

pytestmark = pytest.mark.slow

T = "acct"
LIMIT = 0.5


def state(workers: Workers, entity_id: str, job_id: str) -> str | None:
    job = workers.job(entity_id, job_id)
    return None if job is None else job.state


@pytest.mark.parametrize("where", ["enqueue", "handler", "worker"])
async def test_a_job_past_its_time_limit_is_cancelled_and_fails(
    workers: Workers, client: Client, where: str
) -> None:
    """The limit set at enqueue, where the handler is registered, or as the worker's default:
    the handler is cancelled at it, the attempt fails with JobTimedOut (here the last one, so
    the job is dead-lettered), and the entity's next job runs at once."""
    name = "record_limited" if where == "handler" else "record"
    timeout = LIMIT if where == "enqueue" else None
    slow = await client.enqueue(T, "e1", name, {"seq": 0, "sleep": 30}, attempts=1, timeout=timeout)
    after = await client.enqueue(T, "e1", "record", {"seq": 1, "sleep": 0})
    began = time.monotonic()
    workers.start("e1", **({"job_timeout": LIMIT} if where == "worker" else {}))
    wait_until(lambda: state(workers, "e1", after) == "completed", 30, "the next job to run")
    took = time.monotonic() - began
    job = workers.job("e1", slow)
    assert job is not None
    assert job.state == "dead"
    assert job.error is not None
    assert job.error.startswith("JobTimedOut: ")
    assert f"time limit of {LIMIT:g}s" in job.error
    (run,) = runs_of(workers, job=slow)
    assert run.how == "cancel"
    assert run.end is not None
    assert LIMIT - 0.05 <= run.end - run.start < 10, run
    assert took < 20, f"the entity waited {took:.1f}s for a job that sleeps 30s"


async def test_a_timed_out_attempt_is_retried_under_the_same_limit(
    workers: Workers, client: Client
) -> None:
    slow = await client.enqueue(
        T, "e1", "record", {"seq": 0, "first_sleep": 30, "sleep": 0}, timeout=LIMIT, attempts=2
    )
    workers.start("e1")
    wait_until(lambda: state(workers, "e1", slow) == "completed", 30, "the retry to complete")
    runs = runs_of(workers, job=slow)
    assert [(r.attempt, r.how) for r in runs] == [(1, "cancel"), (2, "end")]


async def test_a_sync_handler_that_never_returns_frees_its_entity(
    workers: Workers, client: Client
) -> None:
    """A thread cannot be stopped: the worker records the timed-out attempt, keeps the lease
    while the thread may still run, and ends its process; the lease expires after it, and the
    job runs again elsewhere, never while the first run could still be going."""
    stuck = await client.enqueue(
        T, "e1", "stubborn", {"first_sleep": 3600}, timeout=LIMIT, attempts=2
    )
    after = await client.enqueue(T, "e1", "record", {"seq": 1, "sleep": 0})
    first = workers.start("e1")
    code = first.wait(LIMIT + 3 * TTL + 20)
    exited = time.time()
    assert code == EXIT_LEASE_OVERRUN, first.describe()
    assert "did not stop" in first.output()
    job = workers.job("e1", stuck)
    assert job is not None
    assert job.state in ("retrying", "waiting"), job
    assert job.error is not None
    assert job.error.startswith("JobTimedOut: ")

    workers.start(slots=1)
    wait_until(lambda: state(workers, "e1", after) == "completed", 30, "the entity to go on")
    runs = [json.loads(r) for r in workers.redis.lrange(STUBBORN_KEY, 0, -1)]  # type: ignore[union-attr]
    assert [r["attempt"] for r in runs] == [1, 2]
    assert runs[1]["t"] > exited, "the second attempt began while the first one's process lived"
    assert state(workers, "e1", stuck) == "completed"


async def test_an_async_handler_that_blocks_the_loop_past_its_limit_frees_its_entity(
    workers: Workers, client: Client
) -> None:
    """A blocking call in async code: the time limit cannot cancel it, and the heartbeat
    stops, so the watchdog ends the process before the lease may pass on; the job's attempt
    counts and it runs again elsewhere."""
    blocked = await client.enqueue(
        T, "e1", "block", {"seq": 0, "first_block": 3600, "sleep": 0}, timeout=LIMIT
    )
    first = workers.start("e1")
    assert first.wait(3 * TTL + 20) == EXIT_LEASE_OVERRUN, first.describe()
    workers.start(slots=1)
    wait_until(lambda: state(workers, "e1", blocked) == "completed", 30, "the job to run again")
    job = workers.job("e1", blocked)
    assert job is not None
    assert job.attempt == 2


@pytest.mark.parametrize("how", ["client", "heartbeat", "cli"])
async def test_cancelling_a_running_job(
    workers: Workers, client: Client, redis_url: str, how: str
) -> None:
    """Through `Client.cancel` (pub/sub reaches the worker at once), through the cancel script
    alone (the worker's next heartbeat hears of it), and through `aq cancel`."""
    running = await client.enqueue(T, "e1", "record", {"seq": 0, "sleep": 30})
    after = await client.enqueue(T, "e1", "record", {"seq": 1, "sleep": 0})
    workers.start("e1")
    wait_until(lambda: runs_of(workers, job=running), 30, "the job to start")
    asked = time.monotonic()
    if how == "client":
        assert await client.cancel(running) is True
    elif how == "heartbeat":
        where = client.keys.locate_auto_job(running)
        assert where is not None
        bucket, jslot = where
        reply: Any = await client.script("cancel", bucket, jslot, "-", "stop it")
        assert reply == [1, "cancelling"]
    else:
        done = aq("cancel", running, env=workers.env())
        assert done.returncode == 0, done.stderr
        # "cancelling" while the handler stops; "cancelled" when the worker, told by pub/sub,
        # finished the cancel before `aq cancel` read the job's state back.
        assert done.stdout.strip().split(":")[0] in ("cancelling", "cancelled"), done.stdout
    wait_until(lambda: state(workers, "e1", after) == "completed", 30, "the entity to go on")
    assert time.monotonic() - asked < 10
    job = workers.job("e1", running)
    assert job is not None
    assert (job.state, job.attempt) == ("cancelled", 1)
    (run,) = runs_of(workers, job=running)
    assert run.how == "cancel"
    with pytest.raises(JobCancelled):
        await client.result(running, timeout=1)
    ended = aq("cancel", running, env=workers.env())
    assert ended.returncode == 1
    assert "has ended already: it is cancelled" in ended.stderr


async def test_cancelling_a_handler_that_ignores_it_ends_the_job_and_the_process(
    workers: Workers, client: Client
) -> None:
    stuck = await client.enqueue(T, "e1", "stubborn", {"first_sleep": 3600})
    first = workers.start("e1")
    wait_until(lambda: workers.redis.llen(STUBBORN_KEY), 30, "the job to start")
    assert await client.cancel(stuck) is True
    assert first.wait(3 * TTL + 20) == EXIT_LEASE_OVERRUN, first.describe()
    assert state(workers, "e1", stuck) == "cancelled"
