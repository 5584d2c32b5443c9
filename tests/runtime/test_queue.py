"""Queue semantics against a real Redis, through `Client` and `Leases` (no worker processes).

Why: these are the promises people build on (README.md, "What is guaranteed"): FIFO per
entity with priorities, at most N jobs of an entity in flight, a retrying job blocks its
successors, fencing tokens that refuse a former lease holder, expired leases recovered to the
head of the queue, retries and dead letters, results that wake their waiters at once, and an
index of entities with work that never drifts from the queues. Every test drives the scripts
directly and then checks Redis itself; `check_index` recomputes the index from the per-entity
keys after each step (tests/runtime/recompute.py), so a script that forgets to update it fails
here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from atomicqueues import (
    BacklogFull,
    Backoff,
    Client,
    InvalidInput,
    JobCancelled,
    JobFailed,
    JobNotFound,
    LeaseLost,
    NewJob,
    PayloadTooLarge,
    Settings,
)
from atomicqueues.controls import Controls, Limits
from atomicqueues.dead_letters import DeadLetters
from atomicqueues.index_reads import IndexReads
from atomicqueues.keys import AUTO_JOB_ID_RE, BUCKETS, bucket_of, encode_id, job_key
from atomicqueues.leases import Idle, Lease, Leases, Started, sweep
from helpers import Connect
from runtime import recompute

T = "user"  # entity type of most tests
SHORT_LEASES = {"heartbeat_ttl": 0.4, "heartbeat_interval": 0.2}
EXPIRED = 0.5  # seconds after which a lease of SHORT_LEASES has surely expired


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def client_settings(redis_url: str) -> Settings:
    """The defaults (tests/runtime/conftest.py gives the other modules short heartbeats)."""
    return Settings(redis_url=redis_url)


# --- helpers ----------------------------------------------------------------------------------
async def server_now(client: Client) -> float:
    sec, usec = await client.redis.time()
    return sec + usec / 1e6


async def started(leases: Leases, eid: str, lease: Lease | None = None, t: str = T) -> Started:
    got = await leases.claim(t, eid, lease)
    assert isinstance(got, Started), f"expected a job of {eid!r} to start, got {got}"
    return got


async def idle(leases: Leases, eid: str, lease: Lease | None = None, t: str = T) -> Idle:
    got = await leases.claim(t, eid, lease)
    assert isinstance(got, Idle), f"expected nothing of {eid!r} to start, got {got}"
    return got


async def waiting_ids(client: Client, eid: str, t: str = T) -> list[str]:
    """The entity's wait queue in claim order (job slots; for generated ids, the id)."""
    return list(await client.redis.zrange(client.keys.entity(t, eid) + "wait", 0, -1))


def slot(client: Client, eid: str, job_id: str, t: str = T) -> str:
    return client.keys.job_slot(t, eid, job_id)


async def snapshot(client: Client) -> dict[str, Any]:
    """Every key and its content (TTLs aside): to show that a refused call changed nothing."""
    r = client.redis
    out: dict[str, Any] = {}
    async for key in r.scan_iter(count=1000):
        kind = await r.type(key)
        if kind == "hash":
            out[key] = await r.hgetall(key)
        elif kind == "zset":
            out[key] = await r.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[key] = await r.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = sorted(await r.smembers(key))
        else:
            out[key] = await r.get(key)
    return out


async def check_index(
    client: Client, t: str = T, *, completed: int | None = None
) -> dict[str, Any]:
    return await recompute.check_index(client, t, completed=completed)


# --- enqueue ----------------------------------------------------------------------------------
async def test_enqueue_returns_a_generated_id_that_locates_the_job(client: Client) -> None:
    first = await client.enqueue(T, "u1", "send", {"text": "hi"})
    second = await client.enqueue(T, "u1", "send", {"text": "again"})
    assert first != second
    m = AUTO_JOB_ID_RE.match(first)
    assert m is not None
    assert (m.group(1), int(m.group(2))) == (T, bucket_of(T, "u1"))
    job = await client.job(first)  # found from the id alone
    assert (job.entity_id, job.name, job.payload, job.state) == (
        "u1",
        "send",
        {"text": "hi"},
        "waiting",
    )
    assert await waiting_ids(client, "u1") == [first, second]
    await check_index(client)


async def test_custom_job_id_is_idempotent_per_entity(client: Client) -> None:
    leases = Leases(client, "w1")
    jid = await client.enqueue(T, "u1", "charge", {"cents": 100}, job_id="order-42")
    assert jid == "order-42"
    before = (await IndexReads(client).counts(T), await snapshot(client))

    again = await client.enqueue(T, "u1", "charge", {"cents": 999}, job_id="order-42")
    assert again == "order-42"
    assert (await IndexReads(client).counts(T), await snapshot(client)) == before
    job = await client.job("order-42", entity=(T, "u1"))
    assert job.payload == {"cents": 100}

    # Still idempotent while it runs and after it completed (within its retention).
    run = await started(leases, "u1")
    assert await client.enqueue(T, "u1", "charge", job_id="order-42") == "order-42"
    assert (await IndexReads(client).counts(T))["waiting"] == 0
    await leases.finish(run, "completed", "null", claim_next="none")
    assert await client.enqueue(T, "u1", "charge", job_id="order-42") == "order-42"
    assert (await IndexReads(client).counts(T))["waiting"] == 0

    # The same id on another entity is another job.
    await client.enqueue(T, "u2", "charge", {"cents": 5}, job_id="order-42")
    assert (await client.job("order-42", entity=(T, "u2"))).payload == {"cents": 5}
    assert await IndexReads(client).pending_entities(T) == {"u2": 1}
    await check_index(client, completed=1)


def _same_bucket_ids(t: str, n: int) -> list[str]:
    first = "e0"
    ids = [first]
    i = 1
    while len(ids) < n:
        if bucket_of(t, f"e{i}") == bucket_of(t, first):
            ids.append(f"e{i}")
        i += 1
    return ids


async def test_custom_job_ids_of_entities_in_one_bucket_never_collide(client: Client) -> None:
    a, b = _same_bucket_ids(T, 2)
    await client.enqueue(T, a, "x", 1, job_id="same")
    await client.enqueue(T, b, "x", 2, job_id="same")
    assert await IndexReads(client).pending_entities(T) == {a: 1, b: 1}
    assert (await client.job("same", entity=(T, a))).payload == 1
    assert (await client.job("same", entity=(T, b))).payload == 2


HEX = "0123456789abcdef" * 2


@pytest.mark.parametrize(
    "job_id",
    [
        pytest.param(f"{T}.3.{HEX}", id="own-type-and-bucket"),
        pytest.param(f"other.0.{HEX}", id="other-type"),
        pytest.param(f"{T}.{BUCKETS}.{HEX}", id="bucket-out-of-range"),
        pytest.param(f"{T}.999.{HEX}", id="bucket-999"),
    ],
)
async def test_reserved_generated_id_form_is_rejected(client: Client, job_id: str) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        await client.enqueue(T, "u1", "x", job_id=job_id)
    assert await client.redis.dbsize() == 0


@pytest.mark.parametrize(
    "job_id",
    [pytest.param("", id="empty"), pytest.param("x" * 513, id="513-chars")],
)
async def test_invalid_custom_job_id_is_rejected(client: Client, job_id: str) -> None:
    with pytest.raises(InvalidInput):
        await client.enqueue(T, "u1", "x", job_id=job_id)


async def test_payload_size_limit(connect: Connect) -> None:
    client = await connect(max_payload_bytes=64)
    fits = "x" * 62  # '"' + 62 + '"' = 64 bytes
    await client.enqueue(T, "u1", "x", fits)
    with pytest.raises(PayloadTooLarge) as info:
        await client.enqueue(T, "u1", "x", fits + "x")
    assert (info.value.size, info.value.limit) == (65, 64)
    with pytest.raises(PayloadTooLarge):
        await client.enqueue(T, "u1", "x", "é" * 32)  # 64 characters, 66 bytes of UTF-8
    assert (await IndexReads(client).counts(T))["waiting"] == 1


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(object(), id="object"),
        pytest.param({1, 2}, id="set"),
        pytest.param(b"bytes", id="bytes"),
        pytest.param(float("nan"), id="nan"),
        pytest.param({"x": float("inf")}, id="inf"),
    ],
)
async def test_non_json_payload_is_rejected(client: Client, payload: Any) -> None:
    with pytest.raises(InvalidInput, match="JSON"):
        await client.enqueue(T, "u1", "x", payload)
    assert await client.redis.dbsize() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"priority": 1001}, "priority", id="priority-too-high"),
        pytest.param({"priority": -1001}, "priority", id="priority-too-low"),
        pytest.param({"delay": -1}, "delay", id="negative-delay"),
        pytest.param({"attempts": 0}, "attempts", id="zero-attempts"),
        pytest.param({"backoff": {"type": "linear"}}, "backoff", id="bad-backoff"),
        pytest.param({"timeout": 0}, "timeout", id="zero-timeout"),
        pytest.param({"timeout": float("nan")}, "timeout", id="nan-timeout"),
    ],
)
async def test_invalid_enqueue_options_are_rejected(
    client: Client, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        await client.enqueue(T, "u1", "x", **kwargs)
    assert await client.redis.dbsize() == 0


# --- order ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("jobs", "order"),
    [
        pytest.param([("a", 0), ("b", 0), ("c", 0), ("d", 0)], "abcd", id="fifo"),
        pytest.param(
            [("l", -5), ("a", 0), ("h", 7), ("b", 0), ("t", 1000), ("z", -1000)],
            "thablz",
            id="priority-then-fifo",
        ),
        pytest.param([("a", 1), ("b", 2), ("c", 1), ("d", 2)], "bdac", id="fifo-within-bands"),
    ],
)
async def test_claim_order(client: Client, jobs: list[tuple[str, int]], order: str) -> None:
    for name, prio in jobs:
        await client.enqueue(T, "u1", name, priority=prio)
    leases = Leases(client, "w1")
    run: Started | None = await started(leases, "u1")
    seen = []
    while run is not None:
        seen.append(run.job.name)
        run = await leases.finish(run, "completed", "null")
    assert "".join(seen) == order
    await check_index(client, completed=len(jobs))


async def test_delayed_job_joins_when_due_not_before(client: Client) -> None:
    leases = Leases(client, "w1")
    jid = await client.enqueue(T, "u1", "later", delay=0.4)
    job = await client.job(jid)
    assert job.state == "delayed"
    assert await IndexReads(client).pending_entities(T) == {}
    assert set(await IndexReads(client).entities_with_work(T)) == set()  # nothing waits or runs yet
    got = await idle(leases, "u1")
    assert got.lease is None
    assert got.next_due is not None
    assert got.next_due == pytest.approx(job.enqueued_at + 0.4, abs=0.0015)
    await check_index(client)

    await asyncio.sleep(0.15)
    if await server_now(client) < got.next_due - 0.02:  # (unless this machine is very slow)
        await idle(leases, "u1")  # still not due

    await asyncio.sleep(max(0.0, got.next_due - await server_now(client)) + 0.02)
    run = await started(leases, "u1")
    assert run.job.id == jid
    assert run.job.started_at is not None
    assert run.job.started_at >= got.next_due - 0.001
    await check_index(client)


async def test_delayed_job_joins_behind_jobs_waiting_when_it_falls_due(client: Client) -> None:
    leases = Leases(client, "w1")
    later = await client.enqueue(T, "u1", "later", delay=0.2)
    first = await client.enqueue(T, "u1", "now")
    await asyncio.sleep(0.25)
    after = await client.enqueue(T, "u1", "after")  # enqueued once `later` was due
    order = []
    run: Started | None = await started(leases, "u1")
    while run is not None:
        order.append(run.job.id)
        run = await leases.finish(run, "completed", "null")
    assert order == [first, later, after]
    await check_index(client)


async def test_sweep_promotes_a_due_delayed_job_and_makes_its_entity_claimable(
    client: Client,
) -> None:
    await client.enqueue(T, "u1", "later", delay=0.5)
    assert await sweep(client, T) == (0, 0)
    assert await IndexReads(client).claimable_entities(T) == {}
    await asyncio.sleep(0.55)
    assert await sweep(client, T) == (0, 1)
    assert set(await IndexReads(client).claimable_entities(T)) == {"u1"}
    assert await IndexReads(client).pending_entities(T) == {"u1": 1}
    await check_index(client)


async def test_with_concurrency_one_a_job_never_starts_before_its_predecessor_ends(
    client: Client,
) -> None:
    a, b = Leases(client, "a"), Leases(client, "b")
    j1 = await client.enqueue(T, "u1", "first", attempts=2)
    j2 = await client.enqueue(T, "u1", "second")

    run = await started(a, "u1")
    assert run.job.id == j1
    assert (await idle(b, "u1")).lease is None  # active job blocks successors, no 2nd lease
    await check_index(client)

    # A job waiting for its retry blocks its successors too (message-group semantics). The
    # delay outlasts the checks below even on a loaded machine (0.3 s did not, once, in CI).
    assert await a.finish(run, "retry", "boom", retry_delay=1.5) is None
    assert (await client.job(j1)).state == "retrying"
    assert await IndexReads(client).pending_entities(T) == {"u1": 1}
    held = await idle(a, "u1", run.lease)
    assert held.lease == run.lease
    assert held.next_due is not None
    await idle(b, "u1")
    assert await IndexReads(client).claimable_entities(T) == {}
    await check_index(client)

    # Release the lease: still nothing claimable while the retry is pending.
    assert await a.release(run.lease, "idle") == "released"
    await idle(b, "u1")
    await check_index(client)

    await asyncio.sleep(max(0.0, held.next_due - await server_now(client)) + 0.02)
    retry = await started(b, "u1")
    assert (retry.job.id, retry.job.attempt) == (j1, 2)

    # Dead-lettered: only now does the successor start, under the same lease.
    nxt = await b.finish(retry, "dead", "boom again")
    assert nxt is not None
    assert nxt.job.id == j2
    assert (await client.job(j1)).state == "dead"
    await check_index(client)


# --- concurrency N ----------------------------------------------------------------------------
async def test_concurrency_n_runs_n_jobs_of_an_entity_at_once(client: Client) -> None:
    owners = [Leases(client, f"w{i}") for i in range(4)]
    ids = [await client.enqueue(T, "u1", f"j{i}") for i in range(5)]
    await Controls(client).set_concurrency(T, "u1", 3)
    assert await Controls(client).concurrency(T, "u1") == 3

    runs = [await started(w, "u1") for w in owners[:3]]
    assert [r.job.id for r in runs] == ids[:3]
    assert len({r.lease.token for r in runs}) == 3
    assert (await idle(owners[3], "u1")).lease is None
    # One lease runs one job at a time.
    assert (await idle(owners[0], "u1", runs[0].lease)).lease == runs[0].lease
    assert await IndexReads(client).claimable_entities(T) == {}
    await check_index(client)

    nxt = await owners[1].finish(runs[1], "completed", "null")
    assert nxt is not None
    assert nxt.job.id == ids[3]
    await check_index(client, completed=1)
    for w, r in ((owners[0], runs[0]), (owners[1], nxt), (owners[2], runs[2])):
        assert await w.finish(r, "completed", "null", claim_next="none") is None
        assert await w.release(r.lease, "shutdown") == "released"
    await check_index(client, completed=4)

    # Back to one: one job in flight at a time, whoever asks.
    await Controls(client).set_concurrency(T, "u1", 1)
    assert await Controls(client).concurrency(T, "u1") == 1
    await client.enqueue(T, "u1", "j5")
    last = await started(owners[3], "u1")
    assert last.job.id == ids[4]
    for w in owners[:3]:
        assert (await idle(w, "u1")).lease is None
    await check_index(client, completed=4)
    assert await IndexReads(client).counts(T) == {
        "waiting": 1,
        "delayed": 0,
        "active": 1,
        "retrying": 0,
        "completed": 4,
        "cancelled": 0,
        "dead": 0,
    }


async def test_lowering_concurrency_stops_new_starts_until_in_flight_drops(
    client: Client,
) -> None:
    owners = [Leases(client, f"w{i}") for i in range(3)]
    for i in range(4):
        await client.enqueue(T, "u1", f"j{i}")
    await Controls(client).set_concurrency(T, "u1", 2)
    r0, r1 = await started(owners[0], "u1"), await started(owners[1], "u1")
    await Controls(client).set_concurrency(T, "u1", 1)
    await idle(owners[2], "u1")
    assert await owners[0].finish(r0, "completed", "null") is None  # still 1 in flight
    nxt = await owners[1].finish(r1, "completed", "null")
    assert nxt is not None  # now none in flight: the next job may start
    await check_index(client, completed=2)


@pytest.mark.parametrize("n", [pytest.param(0, id="zero"), pytest.param(10_001, id="too-many")])
async def test_invalid_concurrency_is_rejected(client: Client, n: int) -> None:
    with pytest.raises(InvalidInput):
        await Controls(client).set_concurrency(T, "u1", n)


# --- leases and fencing -----------------------------------------------------------------------
async def test_fencing_tokens_grow_on_every_grant(client: Client) -> None:
    owners = [Leases(client, f"w{i}") for i in range(3)]
    tokens: list[int] = []
    await Controls(client).set_concurrency(T, "u1", 3)
    for round_ in range(3):
        for _ in range(3):
            await client.enqueue(T, "u1", f"r{round_}")
        runs = [await started(w, "u1") for w in owners]
        tokens += [r.lease.fencing_token for r in runs]
        for w, r in zip(owners, runs, strict=True):
            assert r.job.fencing_token == r.lease.fencing_token
            await w.finish(r, "completed", "null", claim_next="none")
            assert await w.release(r.lease, "idle") == "released"
    # The entity went fully idle in between (its bookkeeping dropped, all but its concurrency):
    # tokens still grow, from the time floor.
    await Controls(client).set_concurrency(T, "u1", 1)
    assert await client.redis.exists(client.keys.entity(T, "u1") + "meta") == 0
    await client.enqueue(T, "u1", "last")
    tokens.append((await started(owners[0], "u1")).lease.fencing_token)
    assert tokens == sorted(set(tokens)), tokens
    await check_index(client, completed=9)


async def test_a_finish_sent_again_after_its_reply_was_lost_answers_as_the_first(
    client: Client,
) -> None:
    w = Leases(client, "w")
    for name in ("a", "b"):
        await client.enqueue(T, "u1", name)
    run = await started(w, "u1")
    nxt = await w.finish(run, "completed", "null")
    assert nxt is not None
    before = await snapshot(client)
    again = await w.finish(run, "completed", "null")  # what a worker does when a reply is lost
    assert again is not None
    assert (again.lease, again.jslot, again.job.attempt) == (nxt.lease, nxt.jslot, 1)
    assert await snapshot(client) == before
    assert await w.finish(nxt, "completed", "null") is None
    assert await w.finish(nxt, "completed", "null") is None  # again: nothing to start
    await check_index(client, completed=2)


async def _former_owner_setup(client: Client) -> tuple[Leases, Leases, Started, Started]:
    """a ran job 1 and let go; b now holds the lease and runs job 2."""
    a, b = Leases(client, "a"), Leases(client, "b")
    for i in range(3):
        await client.enqueue(T, "u1", f"j{i}")
    old = await started(a, "u1")
    await a.finish(old, "completed", "null", claim_next="none")
    assert await a.release(old.lease, "shutdown") == "released"
    new = await started(b, "u1")
    assert new.lease.fencing_token > old.lease.fencing_token
    return a, b, old, new


def _with_token(run: Started, token: int) -> Started:
    lease = Lease(run.lease.entity_type, run.lease.entity_id, str(token))
    return Started(lease, run.jslot, run.job)


Refused = Callable[[Leases, Leases, Started, Started], Awaitable[None]]


async def _finish_old_run(a: Leases, b: Leases, old: Started, new: Started) -> None:
    with pytest.raises(LeaseLost):
        await a.finish(old, "completed", "null")


async def _finish_new_run_as_former_owner(a: Leases, b: Leases, old: Started, new: Started) -> None:
    with pytest.raises(LeaseLost):
        await a.finish(new, "dead", "x")


async def _finish_with_stale_token(a: Leases, b: Leases, old: Started, new: Started) -> None:
    with pytest.raises(LeaseLost):
        await b.finish(_with_token(new, old.lease.fencing_token), "completed", "null")


async def _finish_with_forged_token(a: Leases, b: Leases, old: Started, new: Started) -> None:
    with pytest.raises(LeaseLost):
        await b.finish(_with_token(new, new.lease.fencing_token + 1), "retry", "x")


async def _finish_a_job_not_running(a: Leases, b: Leases, old: Started, new: Started) -> None:
    with pytest.raises(LeaseLost):
        await b.finish(Started(new.lease, old.jslot, old.job), "completed", "null")


async def _renew_old(a: Leases, b: Leases, old: Started, new: Started) -> None:
    assert await a.renew([old.lease]) == [old.lease]


async def _renew_stale_token(a: Leases, b: Leases, old: Started, new: Started) -> None:
    stale = _with_token(new, old.lease.fencing_token).lease
    assert await b.renew([stale]) == [stale]


async def _release_old(a: Leases, b: Leases, old: Started, new: Started) -> None:
    for mode in ("idle", "shutdown"):
        assert await a.release(old.lease, mode) == "lost"  # type: ignore[arg-type]


async def _release_stale_token(a: Leases, b: Leases, old: Started, new: Started) -> None:
    stale = _with_token(new, old.lease.fencing_token).lease
    assert await b.release(stale, "shutdown") == "lost"


async def _claim_with_old(a: Leases, b: Leases, old: Started, new: Started) -> None:
    with pytest.raises(LeaseLost):
        await a.claim(T, "u1", old.lease)


@pytest.mark.parametrize(
    "act",
    [
        pytest.param(_finish_old_run, id="finish-old-run"),
        pytest.param(_finish_new_run_as_former_owner, id="finish-as-former-owner"),
        pytest.param(_finish_with_stale_token, id="finish-stale-token"),
        pytest.param(_finish_with_forged_token, id="finish-forged-token"),
        pytest.param(_finish_a_job_not_running, id="finish-other-job"),
        pytest.param(_renew_old, id="renew-former-owner"),
        pytest.param(_renew_stale_token, id="renew-stale-token"),
        pytest.param(_release_old, id="release-former-owner"),
        pytest.param(_release_stale_token, id="release-stale-token"),
        pytest.param(_claim_with_old, id="claim-former-owner"),
    ],
)
async def test_stale_lease_is_refused_and_changes_nothing(client: Client, act: Refused) -> None:
    a, b, old, new = await _former_owner_setup(client)
    before = await snapshot(client)
    await act(a, b, old, new)
    assert await snapshot(client) == before
    # The rightful holder carries on.
    nxt = await b.finish(new, "completed", "null")
    assert nxt is not None
    assert nxt.job.name == "j2"
    await check_index(client, completed=2)


async def test_expired_lease_is_swept_back_to_the_head_with_the_attempt_counted(
    connect: Connect,
) -> None:
    client = await connect(**SHORT_LEASES)
    a, b = Leases(client, "a"), Leases(client, "b")
    j1 = await client.enqueue(T, "u1", "first")
    j2 = await client.enqueue(T, "u1", "second")
    run = await started(a, "u1")
    assert await sweep(client, T) == (0, 0)  # not expired yet
    await asyncio.sleep(EXPIRED)
    assert await sweep(client, T) == (1, 0)

    job = await client.job(j1)
    assert (job.state, job.attempt) == ("waiting", 1)
    assert job.error is not None
    assert job.error.startswith("stalled")
    assert await waiting_ids(client, "u1") == [j1, j2]
    assert set(await IndexReads(client).claimable_entities(T)) == {"u1"}
    await check_index(client)

    before = await snapshot(client)
    with pytest.raises(LeaseLost):
        await a.finish(run, "completed", "null")
    assert await a.renew([run.lease]) == [run.lease]
    assert await snapshot(client) == before

    again = await started(b, "u1")
    assert (again.job.id, again.job.attempt) == (j1, 2)
    assert again.lease.fencing_token > run.lease.fencing_token
    await check_index(client)


async def test_leases_of_many_buckets_are_renewed_in_one_round_trip(client: Client) -> None:
    """A packed worker's heartbeat renews the leases of every bucket it holds one in: the calls
    go together (auto-pipelining), not one round trip per bucket."""
    a = Leases(client, "a")
    eids = [f"u{n}" for n in range(200)]
    one_per_bucket = list({bucket_of(T, e): e for e in eids}.values())[:8]
    runs = []
    for eid in one_per_bucket:
        await client.enqueue(T, eid, "first")
        runs.append(await started(a, eid))
    sends = 0
    redis = client.scripts._redis
    real_execute, real_pipeline = redis.execute_command, redis.pipeline

    async def execute_command(*args: Any, **kwargs: Any) -> Any:
        nonlocal sends
        sends += 1
        return await real_execute(*args, **kwargs)

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal sends
        sends += 1
        return real_pipeline(*args, **kwargs)

    before = [run.lease.valid_until for run in runs]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis, "execute_command", execute_command)
        patch.setattr(redis, "pipeline", pipeline)
        assert await a.renew([run.lease for run in runs]) == []
    assert sends <= 2, f"{sends} round trips to renew leases in 8 buckets"  # 8, one by one
    assert all(run.lease.valid_until > b for run, b in zip(runs, before, strict=True))


async def test_expired_lease_is_recovered_when_its_former_holder_calls(connect: Connect) -> None:
    client = await connect(**SHORT_LEASES)
    a = Leases(client, "a")
    j1 = await client.enqueue(T, "u1", "first")
    run = await started(a, "u1")
    await asyncio.sleep(EXPIRED)
    with pytest.raises(LeaseLost):
        await a.finish(run, "completed", "null")  # too late: recovered on the spot, not counted
    job = await client.job(j1)
    assert (job.state, job.attempt) == ("waiting", 1)
    assert await IndexReads(client).counts(T) == {
        "waiting": 1,
        "delayed": 0,
        "active": 0,
        "retrying": 0,
        "completed": 0,
        "cancelled": 0,
        "dead": 0,
    }
    assert await sweep(client, T) == (0, 0)
    await check_index(client)


async def test_renewed_lease_does_not_expire(connect: Connect) -> None:
    client = await connect(**SHORT_LEASES)
    a = Leases(client, "a")
    await client.enqueue(T, "u1", "first")
    run = await started(a, "u1")
    for _ in range(6):
        await asyncio.sleep(0.1)
        assert await a.renew([run.lease]) == []
    assert await sweep(client, T) == (0, 0)
    assert await a.finish(run, "completed", "null") is None
    await check_index(client, completed=1)


async def test_stalled_past_max_attempts_is_dead_lettered(connect: Connect) -> None:
    client = await connect(**SHORT_LEASES)
    a = Leases(client, "a")
    j1 = await client.enqueue(T, "u1", "stalls", attempts=2)
    j2 = await client.enqueue(T, "u1", "next")
    for attempt in (1, 2):
        run = await started(a, "u1")
        assert (run.job.id, run.job.attempt) == (j1, attempt)
        await asyncio.sleep(EXPIRED)
        assert await sweep(client, T) == (1, 0)
        await check_index(client)
    dead = await client.job(j1)
    assert (dead.state, dead.attempt) == ("dead", 2)
    assert dead.error is not None
    assert dead.error.startswith("stalled")
    assert [j.id for j in await DeadLetters(client).list(T, "u1")] == [j1]
    assert await DeadLetters(client).entities(T) == {"u1": 1}
    nxt = await started(a, "u1")
    assert nxt.job.id == j2
    await check_index(client)


async def test_shutdown_release_gives_the_running_job_back_without_using_an_attempt(
    client: Client,
) -> None:
    a, b = Leases(client, "a"), Leases(client, "b")
    j1 = await client.enqueue(T, "u1", "first")
    j2 = await client.enqueue(T, "u1", "second")
    run = await started(a, "u1")
    assert await a.release(run.lease, "shutdown") == "released"
    job = await client.job(j1)
    assert (job.state, job.attempt) == ("waiting", 0)
    assert await waiting_ids(client, "u1") == [j1, j2]
    with pytest.raises(LeaseLost):
        await a.finish(run, "completed", "null")
    again = await started(b, "u1")
    assert (again.job.id, again.job.attempt) == (j1, 1)
    await check_index(client)


# --- packed workers: claim any entity of a bucket, hand over when one runs dry ----------------
def same_bucket(n: int, t: str = T) -> list[str]:
    """n entity ids that share one bucket."""
    by_bucket: dict[int, list[str]] = {}
    for i in range(10_000):
        ids = by_bucket.setdefault(bucket_of(t, f"e{i}"), [])
        ids.append(f"e{i}")
        if len(ids) == n:
            return ids
    raise AssertionError("no bucket with enough entities")


async def test_finish_hands_over_to_the_next_claimable_entity_of_the_bucket(
    client: Client,
) -> None:
    a, b, c = same_bucket(3)
    w = Leases(client, "w")
    first = await client.enqueue(T, a, "a1")
    await client.enqueue(T, b, "b1")
    await client.enqueue(T, c, "c1")
    other = Leases(client, "other")
    held = await started(other, c)  # c has a holder: not claimable, not handed over
    await client.enqueue(T, c, "c2")
    run = await w.claim_any(T, client.keys.entity_bucket(T, a))
    assert run is not None
    assert run.job.id == first
    nxt = await w.finish(run, "completed", "null", claim_next="any")
    assert nxt is not None
    assert (nxt.lease.entity_id, nxt.job.name) == (b, "b1")
    assert nxt.lease.fencing_token > run.lease.fencing_token
    # a was let go in the same script: its lease is gone, it is idle.
    assert await client.redis.exists(client.keys.entity(T, a) + "meta") == 0
    await check_index(client, completed=1)
    assert await w.finish(nxt, "completed", "null", claim_next="any") is None  # c is held
    await check_index(client, completed=2)
    assert await IndexReads(client).claimable_entities(T) == {}
    assert await other.finish(held, "completed", "null", claim_next="same") is not None
    await check_index(client, completed=3)


async def test_finish_keeps_the_entity_while_it_has_jobs(client: Client) -> None:
    a, b = same_bucket(2)
    w = Leases(client, "w")
    ids = [await client.enqueue(T, a, f"a{i}") for i in range(3)]
    await client.enqueue(T, b, "b1")
    run = await w.claim_any(T, client.keys.entity_bucket(T, a))
    assert run is not None
    assert run.lease.entity_id == a
    seen = []
    while run is not None and run.lease.entity_id == a:
        seen.append(run.job.id)
        run = await w.finish(run, "completed", "null", claim_next="any")
    assert seen == ids
    assert run is not None
    assert run.lease.entity_id == b
    await check_index(client, completed=3)


# --- idle release -----------------------------------------------------------------------------
async def test_idle_release_is_refused_while_work_is_there(client: Client) -> None:
    a = Leases(client, "a")
    await client.enqueue(T, "u1", "first")
    run = await started(a, "u1")
    assert await a.release(run.lease, "idle") == "busy"  # its own job still runs
    j2 = await client.enqueue(T, "u1", "second")
    assert await a.finish(run, "completed", "null", claim_next="none") is None
    assert await a.release(run.lease, "idle") == "busy"  # a job waits: lease kept
    lease = await client.redis.hget(client.keys.entity(T, "u1") + "meta", "l:a")
    assert lease.split(" ")[0] == run.lease.token
    nxt = await started(a, "u1", run.lease)
    assert (nxt.job.id, nxt.lease) == (j2, run.lease)
    await a.finish(nxt, "completed", "null", claim_next="none")
    assert await a.release(run.lease, "idle") == "released"
    assert await client.redis.hlen(client.keys.entity(T, "u1") + "leases") == 0
    await check_index(client, completed=2)


async def test_idle_release_sees_a_delayed_job_that_fell_due(client: Client) -> None:
    a = Leases(client, "a")
    await client.enqueue(T, "u1", "first")
    run = await started(a, "u1")
    await a.finish(run, "completed", "null", claim_next="none")
    j2 = await client.enqueue(T, "u1", "later", delay=0.1)
    await asyncio.sleep(0.15)
    assert await a.release(run.lease, "idle") == "busy"
    await check_index(client, completed=1)  # the promoted job is in the index
    nxt = await started(a, "u1", run.lease)
    assert nxt.job.id == j2


# --- retries, backoff, dead letters -----------------------------------------------------------
@pytest.mark.parametrize(
    ("backoff", "attempt", "expected"),
    [
        pytest.param({"type": "fixed", "delay": 2.5}, 1, 2.5, id="fixed-1"),
        pytest.param({"type": "fixed", "delay": 2.5}, 7, 2.5, id="fixed-7"),
        pytest.param({"delay": 1.0}, 1, 1.0, id="exp-1"),
        pytest.param({"delay": 1.0}, 2, 2.0, id="exp-2"),
        pytest.param({"delay": 0.5}, 4, 4.0, id="exp-4"),
        pytest.param({"delay": 1.0, "max_delay": 10}, 5, 10.0, id="exp-capped"),
        pytest.param({"delay": 1.0, "max_delay": 10}, 5000, 10.0, id="exp-huge-attempt"),
        pytest.param({"delay": 0.0}, 3, 0.0, id="zero-delay"),
        pytest.param({"delay": 1.0}, 0, 1.0, id="attempt-0"),
    ],
)
def test_backoff_seconds(backoff: dict[str, Any], attempt: int, expected: float) -> None:
    assert Backoff(jitter=0, **backoff).seconds(attempt) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("backoff", "attempt", "low", "high"),
    [
        pytest.param(Backoff(type="fixed", delay=10, jitter=0.2), 3, 8.0, 12.0, id="fixed"),
        pytest.param(Backoff(delay=1, jitter=0.5), 3, 2.0, 6.0, id="exponential"),
        pytest.param(Backoff(delay=1, jitter=1.0), 2, 0.0, 4.0, id="full"),
        pytest.param(Backoff(delay=1, max_delay=5, jitter=0.2), 10, 4.0, 5.0, id="capped"),
    ],
)
def test_backoff_jitter_stays_in_bounds_and_spreads(
    backoff: Backoff, attempt: int, low: float, high: float
) -> None:
    rng = random.Random(1234)
    values = [backoff.seconds(attempt, rng) for _ in range(2000)]
    assert all(low <= v <= high for v in values), (min(values), max(values))
    # Spread over the range, not stuck at one value.
    span = high - low
    assert min(values) < low + span * 0.1
    assert max(values) > high - span * 0.1
    assert len(set(values)) > 500
    assert backoff.seconds(attempt, random.Random(7)) == backoff.seconds(attempt, random.Random(7))


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"delay": -1}, id="negative-delay"),
        pytest.param({"jitter": 1.5}, id="jitter-over-1"),
        pytest.param({"type": "linear"}, id="unknown-type"),
        pytest.param({"delays": 1}, id="unknown-field"),
    ],
)
def test_backoff_rejects_bad_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Backoff(**bad)


@pytest.mark.parametrize(
    ("backoff", "waits"),
    [
        pytest.param({"type": "fixed", "delay": 0.15, "jitter": 0}, [0.15, 0.15], id="fixed"),
        pytest.param(
            {"delay": 0.1, "max_delay": 0.25, "jitter": 0}, [0.1, 0.2, 0.25], id="exponential"
        ),
    ],
)
async def test_retries_wait_their_backoff_then_dead_letter(
    client: Client, backoff: dict[str, Any], waits: list[float]
) -> None:
    a = Leases(client, "a")
    attempts = len(waits) + 1
    jid = await client.enqueue(T, "u1", "flaky", attempts=attempts, backoff=backoff)
    assert (await client.job(jid)).backoff == Backoff(**backoff)
    run = await started(a, "u1")
    for expected in waits:
        job = run.job
        assert job.attempt < job.max_attempts
        delay = job.backoff.seconds(job.attempt)
        assert delay == pytest.approx(expected)
        t0 = await server_now(client)
        assert await a.finish(run, "retry", f"fail {job.attempt}", retry_delay=delay) is None
        t1 = await server_now(client)
        info = await client.job(jid)
        assert (info.state, info.error) == ("retrying", f"fail {job.attempt}")
        held = await idle(a, "u1", run.lease)
        assert held.next_due is not None
        assert t0 + expected - 0.002 <= held.next_due <= t1 + expected + 0.002
        await check_index(client)
        await asyncio.sleep(max(0.0, held.next_due - await server_now(client)) + 0.01)
        run = await started(a, "u1", run.lease)
        assert (run.job.id, run.job.attempt) == (jid, job.attempt + 1)
    assert run.job.attempt == run.job.max_attempts == attempts
    await a.finish(run, "dead", "gave up")
    dead = await client.job(jid)
    assert (dead.state, dead.error, dead.attempt) == ("dead", "gave up", attempts)
    assert dead.finished_at is not None
    await check_index(client)


async def test_dead_letter_list_requeue_and_purge(client: Client) -> None:
    a = Leases(client, "a")
    ids = [await client.enqueue(T, "u1", f"j{i}", {"i": i}) for i in range(4)]
    other = await client.enqueue(T, "u2", "o")
    run = await started(a, "u1")
    run = await a.finish(run, "dead", "err 0")  # j0 dead, j1 starts
    assert run is not None
    run = await a.finish(run, "dead", "err 1")  # j1 dead, j2 starts
    assert run is not None
    assert run.job.id == ids[2]
    await a.finish(run, "completed", "null", claim_next="none")
    await a.release(run.lease, "shutdown")
    b = Leases(client, "b")
    orun = await started(b, "u2")
    await b.finish(orun, "dead", "other err", claim_next="none")
    await check_index(client, completed=1)

    dlq = await DeadLetters(client).list(T, "u1")
    assert [(j.id, j.error, j.state) for j in dlq] == [
        (ids[0], "err 0", "dead"),
        (ids[1], "err 1", "dead"),
    ]
    assert [j.id for j in await DeadLetters(client).list(T)] == [ids[0], ids[1], other]
    assert [j.id for j in await DeadLetters(client).list(T, limit=1)] == [ids[0]]
    assert await DeadLetters(client).entities(T) == {"u1": 2, "u2": 1}

    # Requeue keeps the job's original place (before j3, enqueued after it), attempts reset.
    assert await DeadLetters(client).requeue(T, "u1", [ids[1]]) == 1
    assert await DeadLetters(client).requeue(T, "u1", [ids[1]]) == 0  # not dead any more
    assert await waiting_ids(client, "u1") == [ids[1], ids[3]]
    job = await client.job(ids[1])
    assert (job.state, job.attempt, job.finished_at) == ("waiting", 0, None)
    assert await DeadLetters(client).entities(T) == {"u1": 1, "u2": 1}
    await check_index(client, completed=1)

    assert await DeadLetters(client).purge(T, "u1") == 1
    with pytest.raises(JobNotFound):
        await client.job(ids[0])
    assert await DeadLetters(client).purge(T) == 1  # every entity of the type
    with pytest.raises(JobNotFound):
        await client.job(other)
    assert await DeadLetters(client).list(T) == []
    assert await DeadLetters(client).entities(T) == {}
    await check_index(client, completed=1)


async def test_requeued_dead_job_goes_before_jobs_enqueued_after_it(client: Client) -> None:
    a = Leases(client, "a")
    await client.enqueue(T, "u1", "j0")
    j1 = await client.enqueue(T, "u1", "j1")
    run = await started(a, "u1")
    run = await a.finish(run, "completed", "null")
    assert run is not None
    await a.finish(run, "dead", "boom", claim_next="none")
    await a.release(run.lease, "idle")  # nothing waits, runs or is due: the entity is idle
    later = [await client.enqueue(T, "u1", f"k{i}") for i in range(3)]
    assert await DeadLetters(client).requeue(T, "u1") == 1
    assert await waiting_ids(client, "u1") == [j1, *later]
    await check_index(client, completed=1)


async def test_dlq_requeue_of_every_entity(client: Client) -> None:
    a = Leases(client, "a")
    for eid in ("u1", "u2"):
        await client.enqueue(T, eid, "x")
        run = await started(a, eid)
        await a.finish(run, "dead", "boom", claim_next="none")
        await a.release(run.lease, "idle")
    assert await DeadLetters(client).requeue(T) == 2
    assert await IndexReads(client).pending_entities(T) == {"u1": 1, "u2": 1}
    assert set(await IndexReads(client).claimable_entities(T)) == {"u1", "u2"}
    await check_index(client)


# --- cancel -----------------------------------------------------------------------------------
async def test_cancel_waiting_and_delayed_jobs(client: Client) -> None:
    a = Leases(client, "a")
    active = await client.enqueue(T, "u1", "active")
    waiting = await client.enqueue(T, "u1", "waiting")
    custom = await client.enqueue(T, "u1", "custom", job_id="mine")
    delayed = await client.enqueue(T, "u1", "delayed", delay=60)
    run = await started(a, "u1")
    assert run.job.id == active

    assert await client.cancel(waiting) is True
    with pytest.raises(JobNotFound):
        await client.job(waiting)
    assert await client.cancel("mine", entity=(T, "u1")) is True
    assert custom == "mine"
    assert await client.cancel(delayed) is True
    await check_index(client)
    assert await IndexReads(client).counts(T) == {
        "waiting": 0,
        "delayed": 0,
        "active": 1,
        "retrying": 0,
        "completed": 0,
        "cancelled": 0,
        "dead": 0,
    }
    assert await client.redis.zcard(client.keys.bucket(T, bucket_of(T, "u1")) + "delayed") == 0

    # Refused for a cancelled job and one that never existed.
    assert await client.cancel(waiting) is False
    assert await client.cancel(f"{T}.0.{HEX}") is False
    assert await client.cancel("nope", entity=(T, "u1")) is False
    with pytest.raises(InvalidInput):
        await client.cancel("nope")  # a caller-given id needs its entity
    assert await a.finish(run, "completed", "null") is None
    await check_index(client, completed=1)


async def test_cancel_of_a_running_job_ends_it_cancelled_never_retried(client: Client) -> None:
    a = Leases(client, "a")
    asked: list[Lease] = []
    running = await client.enqueue(T, "u1", "running")
    after = await client.enqueue(T, "u1", "after")
    run = await started(a, "u1")
    assert await a.renew([run.lease], asked.append) == []
    assert asked == []

    assert await client.cancel(running, why="the user left") is True
    assert (await client.job(running)).state == "active"  # until its worker stops it
    assert await a.renew([run.lease], asked.append) == []
    assert asked == [run.lease]
    # Its attempt failed as it was stopped: it still ends cancelled, never retried, and the
    # entity's next job starts in the same call.
    nxt = await a.finish(run, "retry", "CancelledError", retry_delay=0)
    assert nxt is not None
    assert nxt.job.id == after
    job = await client.job(running)
    assert (job.state, job.error) == ("cancelled", "the user left")
    with pytest.raises(JobCancelled, match="the user left"):
        await client.result(running, timeout=1)
    assert await client.cancel(running) is False
    await a.finish(nxt, "completed", "null", claim_next="none")
    counts = await IndexReads(client).counts(T)
    assert (counts["cancelled"], counts["completed"], counts["retrying"]) == (1, 1, 0)
    await check_index(client, completed=1)


async def test_a_job_whose_cancel_was_asked_ends_cancelled_when_its_lease_ends(
    connect: Connect,
) -> None:
    client = await connect(**SHORT_LEASES)
    a, b = Leases(client, "a"), Leases(client, "b")
    for eid in ("u1", "u2"):
        await client.enqueue(T, eid, "x")
    given_back, expired = await started(a, "u1"), await started(a, "u2")
    assert await client.cancel(given_back.job.id)
    assert await client.cancel(expired.job.id)
    assert await a.release(given_back.lease, "shutdown") == "released"
    await asyncio.sleep(EXPIRED)
    await sweep(client, T)
    for run in (given_back, expired):
        assert (await client.job(run.job.id)).state == "cancelled"
    assert await IndexReads(client).pending_entities(T) == {}
    assert isinstance(await b.claim(T, "u1", None), Idle)
    await check_index(client)


async def test_cancel_of_a_retrying_job_removes_it(client: Client) -> None:
    a = Leases(client, "a")
    j1 = await client.enqueue(T, "u1", "retrying")
    j2 = await client.enqueue(T, "u2", "completed")
    run = await started(a, "u1")
    await a.finish(run, "retry", "x", retry_delay=60)
    run2 = await started(a, "u2")
    await a.finish(run2, "completed", "null")
    assert await client.cancel(j2) is False
    assert await client.cancel(j1) is True
    with pytest.raises(JobNotFound):
        await client.job(j1)
    assert (await IndexReads(client).counts(T))["retrying"] == 0
    await check_index(client, completed=1)


# --- pause and resume -------------------------------------------------------------------------
async def test_a_paused_entity_takes_jobs_and_starts_none_until_resumed(client: Client) -> None:
    a = Leases(client, "a")
    first = await client.enqueue(T, "u1", "first")
    await client.enqueue(T, "u1", "second")
    run = await started(a, "u1")
    assert await client.pause(T, "u1") == 1
    assert await client.pause(T, "u1") == 0  # already paused
    third = await client.enqueue(T, "u1", "third")  # enqueue goes on
    assert (await client.job(third)).state == "waiting"
    # The running job finishes; the next one does not start, under the lease or a new one.
    assert await a.finish(run, "completed", "null") is None
    await idle(a, "u1", run.lease)
    await idle(Leases(client, "b"), "u1")
    assert await IndexReads(client).claimable_entities(T) == {}
    assert await IndexReads(client).work_index(T) == []  # no pool starts a worker for it
    assert await a.claim_any(T, client.keys.entity_bucket(T, "u1")) is None
    assert await a.release(run.lease, "idle") == "released"
    assert (await client.paused(T)).entities == ["u1"]
    await check_index(client, completed=1)

    assert await client.resume(T, "u1") == 1
    assert set(await IndexReads(client).claimable_entities(T)) == {"u1"}
    nxt = await started(a, "u1")
    assert nxt.job.id != first
    assert (await client.paused(T)).entities == []
    await check_index(client, completed=1)


async def test_pausing_an_idle_entity_lasts_until_it_is_resumed(client: Client) -> None:
    assert await client.pause(T, "u1") == 1
    meta = client.keys.entity(T, "u1") + "meta"
    assert await client.redis.hget(meta, "ctl") == "1 0 0 0 0 0 0 0"  # kept though it has nothing
    await client.enqueue(T, "u1", "x")
    await idle(Leases(client, "a"), "u1")
    await client.resume(T, "u1")
    await started(Leases(client, "a"), "u1")
    await check_index(client)


async def test_pausing_a_type_pauses_its_entities_and_those_that_come(client: Client) -> None:
    a = Leases(client, "a")
    await client.enqueue(T, "u1", "x")
    await client.enqueue("other", "u1", "x")
    assert await client.pause(T, "u2") == 1  # paused itself as well
    await client.enqueue(T, "u2", "x")
    assert await client.pause(T) == 2  # the entities with a summary: u1 and u2
    await client.enqueue(T, "u3", "x")  # a new entity of a paused type is paused as it comes
    for eid in ("u1", "u2", "u3"):
        await idle(a, eid)
    assert await IndexReads(client).claimable_entities(T) == {}
    assert await IndexReads(client).work_index(T) == []
    assert [e.entity_id for e in await IndexReads(client).work_index("other")] == ["u1"]
    paused = await client.paused(T)
    assert (paused.entity_type, paused.entities) == (True, ["u2"])
    await check_index(client)

    await client.resume(T)
    assert set(await IndexReads(client).claimable_entities(T)) == {"u1", "u3"}  # u2 stays paused
    await started(a, "u1")
    await idle(a, "u2")
    assert await client.resume(T, "u2") == 1
    await started(a, "u2")
    await check_index(client)


async def test_resuming_wakes_a_worker_blocked_on_the_entity(client: Client) -> None:
    await client.pause(T, "u1")
    await client.enqueue(T, "u1", "x")
    bell = client.keys.entity(T, "u1") + "bell"
    await client.redis.delete(bell)
    await client.resume(T, "u1")
    assert await client.redis.llen(bell) == 1


# --- max backlog -------------------------------------------------------------------------------
async def test_an_entity_past_its_max_backlog_refuses_jobs_and_writes_nothing(
    client: Client,
) -> None:
    a = Leases(client, "a")
    await Controls(client).set_limits(T, "u1", max_backlog=2)
    assert await Controls(client).limits(T, "u1") == Limits(1, 2)
    await client.enqueue(T, "u1", "x", job_id="j1")
    await client.enqueue(T, "u1", "x", delay=60)  # delayed jobs count too
    keys = await client.redis.dbsize()
    counted = REGISTRY.get_sample_value("aq_enqueue_refused_total", {"entity_type": T}) or 0.0
    with pytest.raises(BacklogFull, match="backlog of user/'u1' is full") as refused:
        await client.enqueue(T, "u1", "x", job_id="j3")
    assert refused.value.refused == [(T, "u1", "j3")]
    assert REGISTRY.get_sample_value("aq_enqueue_refused_total", {"entity_type": T}) == counted + 1
    assert await client.redis.dbsize() == keys  # nothing written
    with pytest.raises(JobNotFound):
        await client.job("j3", entity=(T, "u1"))
    assert await client.enqueue(T, "u1", "x", job_id="j1") == "j1"  # idempotent, not refused
    await client.enqueue(T, "u2", "x")  # other entities are not limited
    await started(a, "u1")  # a job started: the backlog has room again
    await client.enqueue(T, "u1", "x", job_id="j3")
    await check_index(client)

    await Controls(client).set_limits(T, "u1", max_backlog=0)  # no limit
    for _ in range(3):
        await client.enqueue(T, "u1", "x")
    assert await Controls(client).limits(T, "u1") == Limits(1, 0)
    await check_index(client)


async def test_a_type_max_backlog_applies_to_its_entities_unless_they_have_their_own(
    client: Client,
) -> None:
    await client.enqueue(T, "u1", "x")
    await Controls(client).set_limits(T, "u2", max_backlog=3)
    await Controls(client).set_limits(T, max_backlog=1)
    assert await Controls(client).limits(T) == Limits(None, 1)
    with pytest.raises(BacklogFull):
        await client.enqueue(T, "u1", "x")  # had one already
    await client.enqueue(T, "u3", "x")  # a new entity takes the type's limit as it comes
    with pytest.raises(BacklogFull):
        await client.enqueue(T, "u3", "x")
    for _ in range(3):
        await client.enqueue(T, "u2", "x")  # its own limit comes first
    with pytest.raises(BacklogFull):
        await client.enqueue(T, "u2", "x")
    assert await Controls(client).limits(T, "u3") == Limits(1, 1)
    assert await Controls(client).limits(T, "nobody") == Limits(1, 1)
    await check_index(client)

    # enqueue_many: the jobs past a limit are refused, the others enqueued.
    jobs = [NewJob(T, e, "x", job_id=f"m-{e}") for e in ("u1", "u4", "u5")]
    with pytest.raises(BacklogFull, match=r"1 job\(s\) not enqueued.*the other 2") as refused:
        await client.enqueue_many(jobs)
    assert refused.value.refused == [(T, "u1", "m-u1")]
    assert (await client.job("m-u4", entity=(T, "u4"))).state == "waiting"

    await Controls(client).set_limits(T, max_backlog=0)
    await client.enqueue(T, "u1", "x")
    await client.enqueue(T, "u3", "x")
    await check_index(client)


async def test_a_rate_limited_entity_starts_at_most_n_jobs_in_any_period(client: Client) -> None:
    a, b = Leases(client, "a"), Leases(client, "b")
    for _ in range(4):
        await client.enqueue(T, "u1", "x")
    await Controls(client).set_limits(T, "u1", rate=(2, 0.5))
    assert (await Controls(client).limits(T, "u1")).rate == (2, 0.5)
    first = await started(a, "u1")
    t0 = await server_now(client)
    second = await a.finish(first, "completed", "null")
    assert second is not None
    assert await a.finish(second, "completed", "null") is None  # a third start is not let
    # Held: not claimable, left out of the work index, its next start a due time.
    assert await IndexReads(client).claimable_entities(T) == {}
    assert await IndexReads(client).work_index(T) == []
    assert await b.claim_any(T, client.keys.entity_bucket(T, "u1")) is None
    held = await idle(a, "u1", second.lease)
    assert held.next_due is not None
    assert t0 + 0.4 <= held.next_due <= t0 + 0.55
    await check_index(client, completed=2)

    assert await a.release(second.lease, "idle") == "released"  # nothing may start now
    await asyncio.sleep(held.next_due - await server_now(client) + 0.02)
    assert await sweep(client, T) == (0, 1)  # the sweep lets it go: claimable again
    assert set(await IndexReads(client).claimable_entities(T)) == {"u1"}
    third = await b.claim_any(T, client.keys.entity_bucket(T, "u1"))
    assert third is not None
    assert await server_now(client) - t0 >= 0.5
    await check_index(client, completed=2)


async def test_a_rate_limit_outlasts_idleness_and_comes_from_the_type_by_default(
    client: Client,
) -> None:
    a = Leases(client, "a")
    await Controls(client).set_limits(T, rate=(1, 60))
    assert await Controls(client).limits(T) == Limits(None, 0, (1, 60.0))
    await client.enqueue(T, "u1", "x")
    run = await started(a, "u1")
    assert await a.finish(run, "completed", "null", claim_next="release") is None
    assert await client.redis.exists(client.keys.entity(T, "u1") + "meta") == 0  # idle
    await client.enqueue(T, "u1", "x")
    await idle(a, "u1")  # its last start is remembered: one a minute
    await Controls(client).set_limits(T, "u1", rate=(2, 60))  # its own limit comes first
    await started(a, "u1")
    await check_index(client, completed=1)
    await Controls(client).set_limits(T, rate=(0, 0))
    assert await Controls(client).limits(T) == Limits(None, 0, None)


async def test_invalid_limits_are_refused(client: Client) -> None:
    with pytest.raises(InvalidInput, match="max backlog"):
        await Controls(client).set_limits(T, "u1", max_backlog=-1)
    with pytest.raises(InvalidInput, match="per entity"):
        await Controls(client).set_limits(T, concurrency=2)
    for rate in [(0, 5), (1, 0), (1.5, 1), (1, float("inf")), "5/60"]:
        with pytest.raises(InvalidInput, match="rate"):
            await Controls(client).set_limits(T, "u1", rate=rate)  # type: ignore[arg-type]
    assert await client.redis.dbsize() == 0


# --- job info and results ---------------------------------------------------------------------
async def test_job_info_fields(client: Client) -> None:
    a = Leases(client, "a")
    t0 = await server_now(client)
    jid = await client.enqueue(
        T,
        "u1",
        "charge",
        {"cents": 5},
        priority=3,
        attempts=5,
        backoff={"type": "fixed", "delay": 2},
    )
    job = await client.job(jid)
    assert (job.id, job.entity_type, job.entity_id, job.name) == (jid, T, "u1", "charge")
    assert (job.payload, job.payload_json) == ({"cents": 5}, '{"cents":5}')
    assert (job.state, job.priority, job.attempt, job.max_attempts) == ("waiting", 3, 0, 5)
    assert job.backoff == Backoff(type="fixed", delay=2)
    assert t0 - 0.01 <= job.enqueued_at <= await server_now(client) + 0.01
    assert (job.started_at, job.fencing_token, job.error, job.result, job.finished_at) == (
        None,
        None,
        None,
        None,
        None,
    )

    run = await started(a, "u1")
    job = await client.job(jid)
    assert (job.state, job.attempt, job.fencing_token) == ("active", 1, run.lease.fencing_token)
    assert job.started_at is not None
    assert job.started_at >= job.enqueued_at
    assert run.job == job

    await a.finish(run, "completed", '{"ok":true}')
    job = await client.job(jid)
    assert (job.state, job.result, job.error) == ("completed", {"ok": True}, None)
    assert job.finished_at is not None
    assert job.finished_at >= job.started_at


async def test_result_returns_a_query_result(client: Client) -> None:
    a = Leases(client, "a")
    jid = await client.enqueue(T, "u1", "balance")
    run = await started(a, "u1")
    await a.finish(run, "completed", '{"balance":42,"currency":"€"}')
    assert await client.result(jid, timeout=1) == {"balance": 42, "currency": "€"}
    custom = await client.enqueue(T, "u1", "cmd", job_id="c1")
    run = await started(a, "u1", run.lease)
    await a.finish(run, "completed", "null")
    assert await client.result(custom, timeout=1, entity=(T, "u1")) is None


async def test_result_raises_job_failed_for_a_dead_job(client: Client) -> None:
    a = Leases(client, "a")
    jid = await client.enqueue(T, "u1", "x")
    run = await started(a, "u1")
    await a.finish(run, "dead", "ValueError: nope")
    with pytest.raises(JobFailed) as info:
        await client.result(jid, timeout=1)
    assert (info.value.job_id, info.value.error) == (jid, "ValueError: nope")


@pytest.mark.parametrize(
    ("job_id", "entity"),
    [
        pytest.param(f"{T}.5.{HEX}", None, id="generated-form"),
        pytest.param("never", (T, "u1"), id="caller-given"),
    ],
)
async def test_result_raises_job_not_found_for_an_unknown_job(
    client: Client, job_id: str, entity: tuple[str, str] | None
) -> None:
    t0 = time.monotonic()
    with pytest.raises(JobNotFound):
        await client.result(job_id, timeout=5, entity=entity)
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize(
    "timeout",
    [
        pytest.param(0.3, id="short"),
        # Longer than redis-py's default read timeout (5 s): the blocking wait must not be cut
        # short by it and surface as RedisUnavailable.
        pytest.param(5.3, id="past-socket-timeout"),
    ],
)
async def test_result_times_out(client: Client, timeout: float) -> None:
    jid = await client.enqueue(T, "u1", "x")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await client.result(jid, timeout=timeout)
    assert timeout - 0.05 <= time.monotonic() - t0 < timeout + 1.5
    assert (await client.job(jid)).state == "waiting"


@pytest.mark.parametrize(
    ("outcome", "value"),
    [
        pytest.param("completed", '"done"', id="completed"),
        pytest.param("dead", "boom", id="dead"),
        pytest.param("cancelled", "", id="cancelled"),
    ],
)
async def test_result_wakes_at_once_when_the_job_ends(
    client: Client, outcome: str, value: str
) -> None:
    a = Leases(client, "a")
    jid = await client.enqueue(T, "u1", "x")
    t0 = time.monotonic()
    waiter = asyncio.create_task(client.result(jid, timeout=10))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    if outcome == "cancelled":
        assert await client.cancel(jid) is True
    else:
        run = await started(a, "u1")
        await a.finish(run, outcome, value)  # type: ignore[arg-type]
    if outcome == "completed":
        assert await waiter == "done"
    else:
        with pytest.raises(JobFailed if outcome == "dead" else JobNotFound):
            await waiter
    elapsed = time.monotonic() - t0
    assert elapsed < 2, f"result() took {elapsed:.2f}s to notice"


async def test_result_wakes_every_waiter(client: Client) -> None:
    a = Leases(client, "a")
    jid = await client.enqueue(T, "u1", "x")
    t0 = time.monotonic()
    waiters = [asyncio.create_task(client.result(jid, timeout=10)) for _ in range(3)]
    await asyncio.sleep(0.2)
    run = await started(a, "u1")
    # A retry is not an end: the waiters keep waiting through it.
    again = await a.finish(run, "retry", "x", retry_delay=0)  # due at once: restarted
    assert again is not None
    assert (again.job.id, again.job.attempt) == (jid, 2)
    await asyncio.sleep(0.1)
    assert not any(w.done() for w in waiters)
    await a.finish(again, "completed", "7")
    assert await asyncio.gather(*waiters) == [7, 7, 7]
    assert time.monotonic() - t0 < 2


# --- retention --------------------------------------------------------------------------------
async def test_keep_completed_zero_removes_the_job_at_once(client: Client) -> None:
    a = Leases(client, "a")
    gone = await client.enqueue(T, "u1", "x", keep_completed=0)
    kept = await client.enqueue(T, "u1", "y", keep_completed=30)
    run = await started(a, "u1")
    run = await a.finish(run, "completed", "1")
    assert run is not None
    with pytest.raises(JobNotFound):
        await client.job(gone)
    await a.finish(run, "completed", "2")
    assert (await client.job(kept)).result == 2
    ttl = await client.redis.pttl(job_key(client.keys.entity_bucket(T, "u1"), kept))
    assert 25_000 < ttl <= 30_000
    await check_index(client, completed=2)


async def test_keep_completed_count_caps_jobs_kept_per_entity(connect: Connect) -> None:
    client = await connect(keep_completed_count=2)
    a = Leases(client, "a")
    ids = [await client.enqueue(T, "u1", f"j{i}") for i in range(8)]
    other = await client.enqueue(T, "u2", "o")
    run: Started | None = await started(a, "u2")
    assert run is not None
    await a.finish(run, "completed", "0", claim_next="none")
    run = await started(a, "u1")
    while run is not None:
        run = await a.finish(run, "completed", "0")
    for old in ids[:-2]:  # the newest two are kept, also when finished in one millisecond
        with pytest.raises(JobNotFound):
            await client.job(old)
    assert [(await client.job(j)).state for j in ids[-2:]] == ["completed", "completed"]
    assert (await client.job(other)).state == "completed"  # per entity: u2's is kept
    assert await client.redis.zcard(client.keys.entity(T, "u1") + "done") == 2
    await check_index(client, completed=9)


# --- the index and its events -----------------------------------------------------------------
async def test_index_stays_exact_through_every_path(connect: Connect) -> None:
    client = await connect(heartbeat_ttl=120, heartbeat_interval=1)
    short = await connect(**SHORT_LEASES)
    a, b, c = Leases(client, "a"), Leases(client, "b"), Leases(client, "c")
    b_short = Leases(short, "b")  # only b's lease on u:2 will expire
    done = 0

    async def check() -> dict[str, Any]:
        return await check_index(client, completed=done)

    # enqueue: waiting, delayed, several entities and priorities
    j = {n: await client.enqueue(T, "u1", n) for n in ("a1", "a2", "a3")}
    j["b1"] = await client.enqueue(T, "u:2", "b1", priority=5)
    j["d1"] = await client.enqueue(T, "u3", "d1", delay=0.15)
    truth = await check()
    assert truth["pending"] == {"u1": 3, "u%3A2": 1}
    assert truth["ready"] == {"u1", "u%3A2"}

    # claim
    r1 = await started(a, "u1")
    rb = await started(b, "u:2")
    truth = await check()
    assert truth["ready"] == set()
    assert truth["work"] == {"u1", "u%3A2"}

    # complete and start the next in one call
    r1 = await a.finish(r1, "completed", "null")
    done += 1
    assert r1 is not None
    await check()

    # retry (pending: holds the slot), then promoted by a claim
    assert await a.finish(r1, "retry", "x", retry_delay=0.1) is None
    truth = await check()
    assert truth["work"] == {"u1", "u%3A2"}
    await asyncio.sleep(0.12)
    r1 = await started(a, "u1", r1.lease)
    await check()

    # dead, and the next starts
    r1 = await a.finish(r1, "dead", "boom")
    assert r1 is not None
    truth = await check()
    assert truth["dead"] == {"u1": 1}

    # cancel a waiting and a delayed job
    extra = await client.enqueue(T, "u1", "extra")
    await check()
    assert await client.cancel(extra) is True
    await check()
    gone = await client.enqueue(T, "u4", "gone", delay=30)
    await check()
    assert await client.cancel(gone) is True
    await check()

    # the delayed job falls due: a sweep promotes it
    await asyncio.sleep(0.05)
    assert (await sweep(client, T))[1] >= 1
    truth = await check()
    assert "u3" in truth["ready"]

    # releases: shutdown gives the running job back
    assert await b.release(rb.lease, "shutdown") == "released"
    truth = await check()
    assert "u%3A2" in truth["ready"]

    # sweep: b's new lease on u:2 expires; its job goes back, the others' leases are kept
    rc = await started(c, "u3")
    await started(b_short, "u:2")
    await check()
    await asyncio.sleep(EXPIRED)
    assert await sweep(client, T) == (1, 0)
    truth = await check()
    assert "u%3A2" in truth["ready"]

    # release idle lets go of an empty entity
    assert await c.finish(rc, "completed", "null", claim_next="none") is None
    done += 1
    assert await c.release(rc.lease, "idle") == "released"
    truth = await check()
    assert "u3" not in truth["work"]

    # dead letters back, concurrency up and down
    assert await DeadLetters(client).requeue(T, "u1") == 1
    await check()
    await Controls(client).set_concurrency(T, "u1", 2)
    truth = await check()
    assert "u1" in truth["ready"]
    r2 = await started(b, "u1")
    await check()
    await Controls(client).set_concurrency(T, "u1", 1)
    await check()
    for w, r in ((a, r1), (b, r2)):
        nxt: Started | None = r
        while nxt is not None:
            nxt = await w.finish(nxt, "completed", "null")
            done += 1
            await check()
        assert await w.release(r.lease, "idle") == "released"
        await check()
    rb = await started(b, "u:2")
    assert await b.finish(rb, "completed", "null") is None
    done += 1
    assert await b.release(rb.lease, "idle") == "released"
    truth = await check()
    assert truth == {"pending": {}, "work": set(), "ready": set(), "dead": {}}


async def _collect_events(client: Client, t: str, into: asyncio.Queue[tuple[float, str]]) -> None:
    async for eid in IndexReads(client).events(t):
        into.put_nowait((time.monotonic(), eid))


async def _subscribed(client: Client, t: str) -> None:
    channel = client.keys.events(t)
    for _ in range(200):
        ((_, n),) = await client.redis.pubsub_numsub(channel)
        if n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("events() never subscribed")


async def test_entity_has_work_event(client: Client) -> None:
    events: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
    listener = asyncio.create_task(_collect_events(client, T, events))
    try:
        await _subscribed(client, T)
        a = Leases(client, "a")
        t0 = time.monotonic()
        await client.enqueue(T, "a:b{c}", "x")
        at, eid = await asyncio.wait_for(events.get(), 1)
        assert eid == "a:b{c}"
        assert at - t0 < 1

        # A second job of an entity that already has work, or is held: no event.
        await client.enqueue(T, "a:b{c}", "y")
        run = await started(a, "a:b{c}")
        await client.enqueue(T, "a:b{c}", "z")
        await a.finish(run, "completed", "null", claim_next="none")
        await client.enqueue(T, "u2", "x")  # a marker after the silent steps
        assert (await asyncio.wait_for(events.get(), 1))[1] == "u2"
        assert events.empty()

        # Claimable again once its holder lets go with work waiting: event.
        assert await a.release(run.lease, "shutdown") == "released"
        assert (await asyncio.wait_for(events.get(), 1))[1] == "a:b{c}"
        await asyncio.sleep(0.1)
        assert events.empty()
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


# --- entity ids -------------------------------------------------------------------------------
STRANGE_IDS = [
    "a:b{c}",
    "{",
    "}",
    "}{",
    "%7B",
    "%",
    "%25",
    "a:b",
    "a%3Ab",
    "a%253Ab",
    "üñí 😀",
    "x" * 1000,
    "ü" * 2048,
    " ",
    "a|b",
    "j:1",
    "*",
    "e:x:wait",
    "\n\t",
]


async def test_strange_entity_ids_never_collide_or_break_hash_tags(client: Client) -> None:
    assert len(set(STRANGE_IDS)) == len(STRANGE_IDS)
    a = Leases(client, "a")
    ids = {eid: await client.enqueue(T, eid, "x", {"eid": eid}) for eid in STRANGE_IDS}
    custom = {
        eid: await client.enqueue(T, eid, "y", {"eid": eid}, job_id="k:1") for eid in STRANGE_IDS
    }
    assert await IndexReads(client).pending_entities(T) == dict.fromkeys(STRANGE_IDS, 2)
    assert set(await IndexReads(client).claimable_entities(T)) == set(STRANGE_IDS)
    await check_index(client)

    # Every key carries exactly its bucket's hash tag (one slot per script, Cluster-safe).
    async for key in client.redis.scan_iter(count=1000):
        if key in (client.keys.types(),):
            continue
        start = key.index("{")
        tag = key[start + 1 : key.index("}", start)]
        t, bucket = tag.split(":")
        assert t == T
        assert 0 <= int(bucket) < BUCKETS

    for eid in STRANGE_IDS:
        assert (await client.job(ids[eid])).entity_id == eid
        assert (await client.job(custom[eid], entity=(T, eid))).payload == {"eid": eid}
        run = await started(a, eid)
        assert (run.lease.entity_id, run.job.entity_id, run.job.payload) == (eid, eid, {"eid": eid})
        run = await a.finish(run, "completed", "null")
        assert run is not None
        assert run.job.payload == {"eid": eid}
        await a.finish(run, "dead", "x", claim_next="none")
        assert await a.release(run.lease, "idle") == "released"
    assert await DeadLetters(client).entities(T) == dict.fromkeys(STRANGE_IDS, 1)
    assert {j.entity_id for j in await DeadLetters(client).list(T, limit=1000)} == set(STRANGE_IDS)
    await check_index(client, completed=len(STRANGE_IDS))


@pytest.mark.parametrize(
    ("entity_type", "entity_id"),
    [
        pytest.param(T, "", id="empty-id"),
        pytest.param(T, "x" * 5000, id="5000-byte-id"),
        pytest.param(T, "ü" * 2049, id="4098-utf8-bytes"),
        pytest.param(T, "\ud800", id="lone-surrogate"),
        pytest.param(T, 5, id="not-a-string"),
        pytest.param("", "u1", id="empty-type"),
        pytest.param("a b", "u1", id="type-with-space"),
        pytest.param("a:b", "u1", id="type-with-colon"),
        pytest.param("a{b}", "u1", id="type-with-braces"),
        pytest.param("t" * 64, "u1", id="type-64-chars"),
    ],
)
async def test_invalid_entities_are_rejected(
    client: Client, entity_type: Any, entity_id: Any
) -> None:
    with pytest.raises(InvalidInput):
        await client.enqueue(entity_type, entity_id, "x")
    with pytest.raises(InvalidInput):
        await Controls(client).set_concurrency(entity_type, entity_id, 2)
    with pytest.raises(InvalidInput):
        await client.job("j", entity=(entity_type, entity_id))
    assert await client.redis.dbsize() == 0


def test_encoded_ids_are_distinct() -> None:
    encoded = [encode_id(e) for e in STRANGE_IDS]
    assert len(set(encoded)) == len(encoded)
    assert all(c not in e for e in encoded for c in "{}:")
