"""Resource locks: exclusion, fencing, pools, holding, job locks and the command line.

Why: a lock is only worth having if it holds when its holders race, pause and die. So beyond
the single-client cases, real processes contend for one resource and for a pool and their
recorded holding intervals must never overlap; a holder frozen with SIGSTOP past its TTL must be
refused after SIGCONT; tokens must keep growing across a Redis restart (AOF); and a worker killed
while a job holds a lock must let it expire by its TTL.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from atomicqueues import (
    Client,
    InvalidInput,
    JobContext,
    JobFailed,
    LockBusy,
    LockNotOwned,
    Locks,
    Registry,
    Settings,
    Worker,
)
from atomicqueues.lock_types import Lock
from helpers import REPO_ROOT, aq, assert_one_line_error, wait_until
from redis_servers import RedisServer
from runtime.lock_contender import CONTEND_KEY, GO_KEY, STATE_KEY
from runtime.workers import Workers, base_env

LOCK_LOG_KEY = "test:joblocks"  # as in handlers.py
STRANGE_IDS = ["a:b{c}", "üñí 😀 ☃", "100%", "x" * 1000, "{}"]


@pytest.fixture
def client_settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        heartbeat_ttl=0.6,
        heartbeat_interval=0.2,
        idle_timeout=0.5,
        shutdown_grace=0.5,
    )


@pytest.fixture
def locks(client: Client) -> Locks:
    return Locks(client)


async def take(locks: Locks, rid: str = "d1", owner: str = "a", ttl: float = 10.0) -> Lock:
    result = await locks.acquire("device", rid, owner, "proc", ttl)
    assert result.lock is not None, result
    return result.lock


async def lock_state(client: Client) -> dict[str, Any]:
    """Every lock key with its value, to show a refused change left everything as it was."""
    state: dict[str, Any] = {}
    async for key in client.redis.scan_iter(match="aq:lock*"):
        kind = await client.redis.type(key)
        if kind == "hash":
            state[key] = await client.redis.hgetall(key)
        elif kind == "zset":
            state[key] = await client.redis.zrange(key, 0, -1, withscores=True)
        else:
            state[key] = await client.redis.smembers(key)
    return state


# --- one client: acquire, extend, release ----------------------------------------------------
async def test_acquire_extend_release(locks: Locks) -> None:
    result = await locks.acquire("device", "d1", "alice", "proc", 5.0)
    assert result.acquired
    assert result.holder is None
    lock = result.lock
    assert lock is not None
    assert (lock.resource_type, lock.resource_id, lock.owner_id, lock.owner_type) == (
        "device",
        "d1",
        "alice",
        "proc",
    )
    assert lock.expires_at - lock.acquired_at == pytest.approx(5.0)
    assert abs(lock.acquired_at - time.time()) < 5
    assert [x.to_dict() for x in await locks.held("device")] == [lock.to_dict()]
    assert await locks.types() == ["device"]

    before = lock.expires_at
    await asyncio.sleep(0.05)
    assert await locks.extend(lock, 20.0) is lock
    assert 15.05 <= lock.expires_at - before < 15.5
    assert (await locks.held("device"))[0].expires_at == lock.expires_at

    await locks.release(lock)
    assert await locks.held() == []
    again = await take(locks, owner="bob")
    assert again.token > lock.token


async def test_refusals_leave_the_lock_as_it_is(locks: Locks, client: Client) -> None:
    lock = await take(locks, owner="alice")
    busy = await locks.acquire("device", "d1", "bob", "proc", 5.0)
    assert not busy.acquired
    assert busy.holder is not None
    assert (busy.holder.owner_id, busy.holder.owner_type) == ("alice", "proc")
    assert busy.holder.expires_at == lock.expires_at
    # Not re-entrant: the owner itself is told it is held.
    assert not (await locks.acquire("device", "d1", "alice", "proc", 5.0)).acquired

    state = await lock_state(client)
    stale = [
        Lock("device", "d1", "alice", "proc", lock.token - 1, 0.0, 0.0),  # an older token
        Lock("device", "d1", "bob", "proc", lock.token, 0.0, 0.0),  # the token, not the owner
        Lock("device", "d2", "alice", "proc", lock.token, 0.0, 0.0),  # never held
    ]
    for bad in stale:
        with pytest.raises(LockNotOwned) as caught:
            await locks.release(bad)
        assert (caught.value.resource_type, caught.value.resource_id) == ("device", bad.resource_id)
        assert caught.value.token == bad.token
        with pytest.raises(LockNotOwned):
            await locks.extend(bad, 100.0)
        assert await lock_state(client) == state
    assert (await locks.held("device"))[0].to_dict() == lock.to_dict()


async def test_an_expired_lock_is_free_though_its_key_is_there(
    locks: Locks, client: Client
) -> None:
    lock = await take(locks, owner="alice", ttl=0.2)
    await asyncio.sleep(0.3)
    key = client.keys.lock("device", "d1")
    assert await client.redis.hget(key, "owner") == "alice"  # nothing has cleaned it up yet
    assert await client.redis.pttl(key) > 3_600_000  # and its key TTL is far away
    assert await locks.held("device") == []
    with pytest.raises(LockNotOwned):
        await locks.extend(lock, 10.0)  # too late, even with nobody else there
    new = await take(locks, owner="bob")
    assert new.token > lock.token
    with pytest.raises(LockNotOwned):
        await locks.release(lock)
    assert [x.owner_id for x in await locks.held("device")] == ["bob"]


async def test_expired_locks_leave_the_index_lazily(locks: Locks, client: Client) -> None:
    for rid in ("d1", "d2", "d3"):
        await take(locks, rid, ttl=0.1)
    await asyncio.sleep(0.2)
    await take(locks, "other")  # any lock script of the type cleans up
    held = await client.redis.zrange(client.keys.lock_held("device"), 0, -1)
    assert held == ["other"]
    assert await client.redis.hget(client.keys.lock("device", "d1"), "owner") is None
    assert await client.redis.hget(client.keys.lock("device", "d1"), "token") is not None


async def test_tokens_strictly_increase(locks: Locks, client: Client) -> None:
    tokens = []
    for i in range(30):
        lock = await take(locks, owner=f"o{i % 3}", ttl=0.05 if i % 2 else 5.0)
        tokens.append(lock.token)
        if i % 2 == 0:
            await locks.release(lock)
        else:
            await asyncio.sleep(0.06)  # let it expire instead
    assert tokens == sorted(set(tokens))
    # The counter lost (as after a crash that lost the last writes): the time floor still wins.
    await client.redis.delete(client.keys.lock("device", "d1"))
    assert (await take(locks)).token > tokens[-1]


@pytest.mark.parametrize("rid", [pytest.param(r, id=f"id{i}") for i, r in enumerate(STRANGE_IDS)])
async def test_strange_resource_ids(locks: Locks, client: Client, rid: str) -> None:
    lock = await take(locks, rid)
    assert [x.resource_id for x in await locks.held("device")] == [rid]
    pool = await locks.acquire_any("device", [rid, "plain"], "b", "proc", 5.0)
    assert pool.lock is not None
    assert pool.lock.resource_id == "plain"
    released = await locks.force_release("device", rid)
    assert released is not None
    assert released.token == lock.token
    assert await client.redis.exists(client.keys.lock("device", rid))


# --- pools ------------------------------------------------------------------------------------
POOL = ["p1", "p2", "p3"]


async def test_acquire_any_first(locks: Locks) -> None:
    got = []
    for i in range(3):
        result = await locks.acquire_any("modem", POOL, f"o{i}", "proc", 5.0)
        assert result.lock is not None
        got.append(result.lock)
    assert [x.resource_id for x in got] == POOL
    full = await locks.acquire_any("modem", POOL, "late", "proc", 5.0)
    assert not full.acquired
    assert [(h.resource_id, h.owner_id) for h in full.holders] == [
        ("p1", "o0"),
        ("p2", "o1"),
        ("p3", "o2"),
    ]
    await locks.release(got[1])
    again = await locks.acquire_any("modem", POOL, "late", "proc", 5.0)
    assert again.lock is not None
    assert again.lock.resource_id == "p2"


async def test_acquire_any_random_spreads_and_takes_only_free_ones(locks: Locks) -> None:
    seen: Counter[str] = Counter()
    for _ in range(60):
        result = await locks.acquire_any("modem", POOL, "o", "proc", 5.0, spread="random")
        assert result.lock is not None
        seen[result.lock.resource_id] += 1
        await locks.release(result.lock)
    assert set(seen) == set(POOL), seen
    await locks.acquire_any("modem", ["p1"], "x", "proc", 5.0)
    await locks.acquire_any("modem", ["p3"], "x", "proc", 5.0)
    for _ in range(10):
        result = await locks.acquire_any("modem", POOL, "o", "proc", 5.0, spread="random")
        assert result.lock is not None
        assert result.lock.resource_id == "p2"
        await locks.release(result.lock)


async def test_acquire_any_lru(locks: Locks) -> None:
    for rid in ("p2", "p3", "p1"):  # used in this order: p2 is the least recently used
        await locks.release(await take(locks, rid))
        await asyncio.sleep(0.005)
    order = []
    for _ in range(3):
        result = await locks.acquire_any("device", POOL, "o", "proc", 5.0, spread="lru")
        assert result.lock is not None
        order.append(result.lock.resource_id)
        await locks.release(result.lock)
        await asyncio.sleep(0.005)
    assert order == ["p2", "p3", "p1"]
    # A resource never used comes first; ties keep the order given.
    result = await locks.acquire_any(
        "device", [*POOL, "new", "newer"], "o", "proc", 5.0, spread="lru"
    )
    assert result.lock is not None
    assert result.lock.resource_id == "new"


@pytest.mark.parametrize(
    ("call", "words"),
    [
        pytest.param(
            lambda x: x.acquire("device", "", "o", "proc", 1), "resource id", id="empty-id"
        ),
        pytest.param(lambda x: x.acquire("device", "d", "o", "proc", 0), "ttl", id="ttl-zero"),
        pytest.param(lambda x: x.acquire("device", "d", "o", "proc", -1), "ttl", id="ttl-neg"),
        pytest.param(
            lambda x: x.acquire("device", "d", "o", "proc", math.nan), "ttl", id="ttl-nan"
        ),
        pytest.param(lambda x: x.acquire("device", "d", "o", "proc", "5"), "ttl", id="ttl-str"),
        pytest.param(
            lambda x: x.acquire("dev ice", "d", "o", "proc", 1), "resource type", id="type-space"
        ),
        pytest.param(
            lambda x: x.acquire("a:b", "d", "o", "proc", 1), "resource type", id="type-colon"
        ),
        pytest.param(
            lambda x: x.acquire("a{b}", "d", "o", "proc", 1), "resource type", id="type-brace"
        ),
        pytest.param(
            lambda x: x.acquire("", "d", "o", "proc", 1), "resource type", id="type-empty"
        ),
        pytest.param(
            lambda x: x.acquire("dev\n", "d", "o", "proc", 1), "resource type", id="type-newline"
        ),
        pytest.param(
            lambda x: x.acquire("device", "\ud800", "o", "proc", 1), "unicode", id="id-surrogate"
        ),
        pytest.param(
            lambda x: x.acquire("device", "d", "\ud800", "proc", 1), "unicode", id="owner-surrogate"
        ),
        pytest.param(
            lambda x: x.acquire("device", "d", "", "proc", 1), "owner id", id="owner-empty"
        ),
        pytest.param(
            lambda x: x.acquire("device", "d", "o", "a b", 1), "owner type", id="owner-type"
        ),
        pytest.param(
            lambda x: x.acquire_any("device", [], "o", "proc", 1), "at least one", id="empty-pool"
        ),
        pytest.param(
            lambda x: x.acquire_any("device", "abc", "o", "proc", 1), "list", id="pool-string"
        ),
        pytest.param(
            lambda x: x.acquire_any("device", ["a", ""], "o", "proc", 1),
            "resource id",
            id="pool-empty-id",
        ),
        pytest.param(
            lambda x: x.acquire_any("device", ["a"], "o", "proc", 1, spread="most"),
            "spread",
            id="spread",
        ),
        pytest.param(lambda x: x.force_release("device", ""), "resource id", id="force-empty"),
        pytest.param(lambda x: x.held("a b"), "resource type", id="list-type"),
    ],
)
async def test_bad_input(locks: Locks, client: Client, call: Any, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        await call(locks)
    assert await client.redis.dbsize() == 0


async def test_bad_ttl_on_extend_changes_nothing(locks: Locks, client: Client) -> None:
    lock = await take(locks)
    state = await lock_state(client)
    with pytest.raises(InvalidInput):
        await locks.extend(lock, 0)
    assert await lock_state(client) == state


# --- hold -------------------------------------------------------------------------------------
async def test_hold_renews_past_the_ttl_and_releases(locks: Locks) -> None:
    async with locks.hold("device", "d1", "a", "proc", 0.3) as lock:
        for _ in range(4):
            await asyncio.sleep(0.25)
            (held,) = await locks.held("device")
            assert held.token == lock.token
    assert not lock.lost.is_set()
    assert await locks.held() == []


async def test_hold_releases_when_the_block_fails(locks: Locks) -> None:
    with pytest.raises(ZeroDivisionError):
        async with locks.hold("device", "d1", "a", "proc", 5.0):
            _ = 1 / 0
    assert await locks.held() == []


async def test_hold_when_busy(locks: Locks) -> None:
    other = await take(locks, owner="other")
    with pytest.raises(LockBusy, match="other") as caught:
        async with locks.hold("device", "d1", "a", "proc", 5.0):
            pytest.fail("must not run")
    assert caught.value.holders == {"d1": ("other", "proc")}

    async def release_soon() -> None:
        await asyncio.sleep(0.2)
        await locks.release(other)

    releaser = asyncio.create_task(release_soon())
    async with locks.hold("device", "d1", "a", "proc", 5.0, wait=5.0) as lock:
        assert lock.token > other.token
    await releaser


async def test_hold_lost_cancels_the_block(locks: Locks) -> None:
    began = time.monotonic()
    held: list[Lock] = []

    async def block() -> None:
        async with locks.hold("device", "d1", "a", "proc", 0.3) as lock:
            held.append(lock)
            assert await locks.force_release("device", "d1") is not None
            await asyncio.sleep(5)
            pytest.fail("the block ran on")

    with pytest.raises(LockNotOwned) as caught:
        await block()
    (lock,) = held
    assert time.monotonic() - began < 1.0
    assert lock.lost.is_set()
    assert caught.value.token == lock.token
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0  # the cancellation was withdrawn, not left behind


async def test_hold_lost_without_cancel(locks: Locks) -> None:
    async with locks.hold("device", "d1", "a", "proc", 0.3, cancel_on_loss=False) as lock:
        await locks.force_release("device", "d1")
        await asyncio.wait_for(lock.lost.wait(), 2)
        await asyncio.sleep(0.2)  # runs on
    assert await locks.held() == []


async def test_hold_any_and_outside_cancellation(locks: Locks) -> None:
    await take(locks, "p1")
    entered = asyncio.Event()
    taken: list[Lock] = []

    async def block() -> None:
        async with locks.hold_any("device", POOL, "a", "proc", 5.0) as lock:
            taken.append(lock)
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(block())
    await entered.wait()
    assert taken[0].resource_id == "p2"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [x.resource_id for x in await locks.held("device")] == ["p1"]


# --- job locks, in-process ------------------------------------------------------------------
def job_registry(events: dict[str, asyncio.Event], notes: list[Lock]) -> Registry:
    registry = Registry()

    @registry.command("use")
    async def use(ctx: JobContext, payload: dict[str, Any]) -> None:
        lock = await ctx.lock("device", payload["id"], ttl=payload.get("ttl"))
        assert await ctx.lock("device", payload["id"]) is lock  # asking again: the same lock
        assert lock.owner_id == f"{ctx.worker}:{ctx.job.id}"
        assert lock.owner_type == "job"
        notes.append(lock)
        events["locked"].set()
        await asyncio.sleep(float(payload.get("sleep", 0)))
        if payload.get("fail"):
            raise RuntimeError("boom")

    @registry.command("pool")
    async def pool(ctx: JobContext, payload: dict[str, Any]) -> None:
        lock = await ctx.lock_any("modem", POOL, spread="lru")
        notes.append(lock)

    return registry


async def run_worker(client: Client, registry: Registry, entity: str = "e1") -> Worker:
    worker = Worker(client, registry, "acct", entity_id=entity)
    await asyncio.wait_for(worker.run(), timeout=30)
    return worker


@pytest.mark.parametrize(
    "fail", [pytest.param(False, id="completes"), pytest.param(True, id="fails")]
)
async def test_job_lock_released_when_the_job_ends(
    client: Client, locks: Locks, fail: bool
) -> None:
    events = {"locked": asyncio.Event()}
    notes: list[Lock] = []
    job = await client.enqueue(
        "acct", "e1", "use", {"id": "d1", "sleep": 0.1, "fail": fail}, attempts=1
    )
    await client.enqueue("acct", "e1", "pool", None)
    await run_worker(client, job_registry(events, notes))
    assert await locks.held() == []
    assert notes[0].resource_id == "d1"
    assert notes[1].resource_id in POOL
    if fail:
        with pytest.raises(JobFailed, match="boom"):
            await client.result(job, timeout=1)


async def test_job_lock_lost_fails_the_job(client: Client, locks: Locks) -> None:
    events = {"locked": asyncio.Event()}
    notes: list[Lock] = []
    job = await client.enqueue(
        "acct", "e1", "use", {"id": "d1", "ttl": 0.3, "sleep": 30}, attempts=1
    )
    worker = asyncio.create_task(run_worker(client, job_registry(events, notes)))
    await asyncio.wait_for(events["locked"].wait(), 10)
    released = await locks.force_release("device", "d1")
    assert released is not None
    assert released.owner_type == "job"
    with pytest.raises(JobFailed, match="LockNotOwned"):
        await client.result(job, timeout=5)
    assert notes[0].lost.is_set()
    await worker


async def test_job_lock_busy_fails_the_job(client: Client, locks: Locks) -> None:
    await take(locks, "d1", owner="operator")
    job = await client.enqueue("acct", "e1", "use", {"id": "d1"}, attempts=1)
    await run_worker(client, job_registry({"locked": asyncio.Event()}, []))
    with pytest.raises(JobFailed, match="LockBusy"):
        await client.result(job, timeout=1)
    assert [x.owner_id for x in await locks.held()] == ["operator"]


# --- real processes ---------------------------------------------------------------------------
def contender(url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.lock_contender", args[0], url, *args[1:]],
        env=base_env(url),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode(errors="replace")


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


def states(r: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.lrange(STATE_KEY, 0, -1)]  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.parametrize(
    "ids", [pytest.param(["only"], id="one-resource"), pytest.param(POOL, id="pool-of-3")]
)
def test_processes_never_hold_a_resource_together(
    redis_url: str, sync_redis: redis.Redis, ids: list[str]
) -> None:
    procs = [contender(redis_url, "contend", "device", "3", *ids) for _ in range(6)]
    for proc in procs:
        finish(proc)
    grants = [json.loads(x) for x in sync_redis.lrange(CONTEND_KEY, 0, -1)]  # type: ignore[union-attr]
    per_resource: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in grants:
        per_resource[g["r"]].append(g)
    assert set(per_resource) == set(ids)
    for rid, history in per_resource.items():
        history.sort(key=lambda g: g["start"])
        for a, b in itertools.pairwise(history):
            assert b["start"] >= a["end"], f"two holders of {rid!r} at once: {a} {b}"
            assert b["token"] > a["token"], f"token of {rid!r} went backwards: {a} {b}"
    assert all(g["released"] for g in grants)
    assert len({g["pid"] for g in grants}) == 6, Counter(g["pid"] for g in grants)
    assert len(grants) > 100 * len(ids) / 3


@pytest.mark.slow
async def test_sigstopped_holder_is_refused_after_sigcont(
    redis_url: str, sync_redis: redis.Redis, locks: Locks
) -> None:
    proc = contender(redis_url, "pause", "device", "d1", "0.5")
    try:
        (first,) = await asyncio.to_thread(
            wait_until, lambda: states(sync_redis), 30, "the holder to take the lock"
        )
        proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.7)
        result = await locks.acquire("device", "d1", "taker", "proc", 30)
        assert result.lock is not None
        assert result.lock.token > first["token"]
    finally:
        proc.send_signal(signal.SIGCONT)
    sync_redis.rpush(GO_KEY, "go")
    await asyncio.to_thread(finish, proc)
    woke = states(sync_redis)[1]
    assert woke["extend"] == woke["release"] == f"LockNotOwned {first['token']}"
    holder = sync_redis.hgetall("aq:lock:{device}:l:d1")
    assert (holder["owner"], int(holder["token"])) == ("taker", result.lock.token)


@pytest.mark.slow
def test_sigstopped_hold_block_learns_it_lost(redis_url: str, sync_redis: redis.Redis) -> None:
    proc = contender(redis_url, "hold", "device", "d1", "0.5")
    try:
        (first,) = wait_until(lambda: states(sync_redis), 30, "the holder to take the lock")
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.7)
        taker = aq("locks", "list", "--json", env=base_env(redis_url))
        assert json.loads(taker.stdout) == []  # expired while frozen: listed as free
    finally:
        proc.send_signal(signal.SIGCONT)
    finish(proc, timeout=10)
    ended = states(sync_redis)[1]
    assert isinstance(ended.pop("cancelled_at"), float)  # the block was cancelled
    assert ended == {
        "ev": "ended",
        "how": f"LockNotOwned {first['token']}",
        "lost": True,
        "pid": proc.pid,
    }


async def grant(url: str) -> int:
    client = await Client.connect(Settings(redis_url=url))
    try:
        lock = await take(Locks(client))
        await Locks(client).release(lock)
        return lock.token
    finally:
        await client.close()


@pytest.mark.parametrize(
    "crash", [pytest.param(False, id="graceful-restart"), pytest.param(True, id="sigkill-restart")]
)
async def test_tokens_grow_across_restart(crash: bool) -> None:
    with RedisServer(appendonly=True) as server:
        before = [await grant(server.url) for _ in range(5)]
        if crash:
            server.kill()
            server.start()
        else:
            server.restart()
        after = [await grant(server.url) for _ in range(5)]
    assert before + after == sorted(set(before + after))


@pytest.mark.slow
@pytest.mark.parametrize(
    "fail", [pytest.param(False, id="completes"), pytest.param(True, id="fails")]
)
async def test_worker_process_releases_job_locks(
    workers: Workers, locks: Locks, client: Client, fail: bool
) -> None:
    workers.start("e1")
    await client.enqueue(
        "acct",
        "e1",
        "hold_lock",
        {"type": "device", "id": "d1", "sleep": 0.3, "fail": fail},
        attempts=1,
    )
    await asyncio.to_thread(workers.wait_all_done, 1, 30)
    assert workers.redis.llen(LOCK_LOG_KEY) == 1
    assert await locks.held() == []
    workers.stop_all()


@pytest.mark.slow
async def test_killed_worker_lock_expires_by_ttl(
    workers: Workers, locks: Locks, client: Client
) -> None:
    w = workers.start("e1")
    job = await client.enqueue(
        "acct", "e1", "hold_lock", {"type": "device", "id": "d1", "ttl": 1.0, "sleep": 60}
    )
    note = json.loads(
        await asyncio.to_thread(
            wait_until, lambda: workers.redis.lindex(LOCK_LOG_KEY, 0), 30, "the job to lock"
        )
    )
    (held,) = await locks.held("device")
    assert (held.owner_id, held.owner_type, held.token) == (f"{w.name}:{job}", "job", note["token"])
    killed = w.kill()
    assert not (await locks.acquire("device", "d1", "next", "proc", 5)).acquired
    while (result := await locks.acquire("device", "d1", "next", "proc", 5)).lock is None:
        assert time.time() - killed < 3, "the dead worker's lock did not expire"
        await asyncio.sleep(0.05)
    assert result.lock.token > note["token"]
    assert time.time() - killed < 1.0 + 0.5


# --- the command line ----------------------------------------------------------------------
async def test_cli_list_release_status(redis_url: str, locks: Locks) -> None:
    lock = await take(locks, "a:b{c}", owner="alice")
    await locks.acquire("modem", "m1", "bob", "job", 30)

    listed = await asyncio.to_thread(aq, "locks", "list", url=redis_url)
    assert listed.returncode == 0, listed.stderr
    assert "device/'a:b{c}'" in listed.stdout
    assert f"proc alice  token {lock.token}" in listed.stdout
    assert "2 lock(s) held" in listed.stdout
    only = json.loads(
        (
            await asyncio.to_thread(
                aq, "locks", "list", "--type", "device", "--json", url=redis_url
            )
        ).stdout
    )
    assert only == [lock.to_dict()]

    status = await asyncio.to_thread(aq, "status", url=redis_url)
    assert "locks: 2 held" in status.stdout
    assert "modem/'m1'" in status.stdout
    report = json.loads((await asyncio.to_thread(aq, "status", "--json", url=redis_url)).stdout)
    assert {x["resource_id"] for x in report["locks"]} == {"a:b{c}", "m1"}

    refused = await asyncio.to_thread(aq, "locks", "release", "device", "a:b{c}", url=redis_url)
    assert_one_line_error(refused, "--force")
    assert len(await locks.held("device")) == 1

    forced = await asyncio.to_thread(
        aq, "locks", "release", "device", "a:b{c}", "--force", url=redis_url
    )
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == (
        f"released device/'a:b{{c}}' held by proc alice (token {lock.token})"
    )
    assert await locks.held("device") == []
    with pytest.raises(LockNotOwned):
        await locks.release(lock)
    again = await asyncio.to_thread(
        aq, "locks", "release", "device", "a:b{c}", "--force", url=redis_url
    )
    assert "was not held" in again.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["locks", "list", "--type", "a b"], ["resource type"], id="list-type"),
        pytest.param(
            ["locks", "release", "x:y", "d", "--force"], ["resource type"], id="release-type"
        ),
        pytest.param(
            ["locks", "release", "device", "", "--force"], ["resource id"], id="release-empty-id"
        ),
        pytest.param(["locks", "release", "device"], [], id="release-no-id"),
        pytest.param(["locks"], [], id="no-action"),
    ],
)
def test_cli_bad_input(redis_url: str, args: list[str], words: list[str]) -> None:
    assert_one_line_error(aq(*args, env=base_env(redis_url)), *words)
