"""Life-cycle tests with real `aq worker` processes: graceful shutdown, close signals through
Redis, idle exit (and its race with new work), the worker registry, and start-up errors.

Why: a scaler (the operator, `aq up`) relies on exactly these behaviours: SIGTERM never loses or
double-runs a job, a close signal reaches the right workers only (and is not missed when pub/sub
is), an idle worker exits without stranding a job enqueued at that instant, and the registry
tells live workers from dead ones. Settings are short (heartbeat TTL 1 s, interval 0.25 s); all
waits poll with generous deadlines.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any

import pytest

from atomicqueues import Client, JobContext, Registry, Settings, Worker
from atomicqueues.aio import cancel_and_wait
from atomicqueues.index_reads import IndexReads
from atomicqueues.presence import Presence
from helpers import aq, wait_until
from redis_servers import free_port
from runtime.workers import (
    HANDLERS,
    INTERVAL,
    TTL,
    Workers,
    base_env,
    check_history,
    load_runs,
    runs_of,
)

T = "acct"


def lease_index(workers: Workers, entity_id: str) -> list[str]:
    """Members of the bucket's lease-expiry index that belong to the entity."""
    bucket = workers.keys.entity_bucket(T, entity_id)
    members: list[str] = workers.redis.zrange(f"{bucket}leases", 0, -1)  # type: ignore[assignment]
    return [m for m in members if m.endswith("|" + entity_id)]


def assert_gone(workers: Workers, name: str, node: str) -> None:
    """Deregistered: no registration key, not in the registry's indexes."""
    r = workers.redis
    assert not r.exists(workers.keys.worker(name))
    assert r.zscore(workers.keys.workers(), name) is None
    assert not r.sismember(workers.keys.node_workers(node), name)


def start(workers: Workers, packed: bool, entity_id: str = "e1", **options: Any) -> Any:
    return workers.start(slots=2, **options) if packed else workers.start(entity_id, **options)


both_kinds = pytest.mark.parametrize("packed", [False, True], ids=["entity-bound", "packed"])


# --- 4. graceful shutdown -----------------------------------------------------------------------
@pytest.mark.slow
@both_kinds
async def test_sigterm_during_a_short_job_finishes_it_and_deregisters(
    workers: Workers, client: Client, packed: bool
) -> None:
    first = await client.enqueue(T, "e1", "record", {"seq": 0, "sleep": 1.0})
    second = await client.enqueue(T, "e1", "record", {"seq": 1, "sleep": 0.0})
    w = start(workers, packed, shutdown_grace=20)
    wait_until(lambda: runs_of(workers, pid=w.pid), 30, "the job to start")

    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.describe()

    assert [(r.seq, r.how) for r in load_runs(workers.redis)] == [(0, "end")]
    assert workers.job("e1", first).state == "completed"
    # Closing means taking no new job: the second one waits, no attempt used, for the next worker.
    waiting = workers.job("e1", second)
    assert (waiting.state, waiting.attempt) == ("waiting", 0)
    assert_gone(workers, w.name, w.node)
    assert workers.holders("e1") == {}, "lease not released"
    assert lease_index(workers, "e1") == []
    assert "e1" in await IndexReads(client).claimable_entities(T), (
        "a new worker must be able to take it"
    )


@pytest.mark.slow
@both_kinds
async def test_sigterm_during_a_long_job_gives_it_back_at_once(
    workers: Workers, client: Client, packed: bool
) -> None:
    # A long TTL: giving the job back must not wait for the lease to expire.
    workers.ttl, workers.interval = 20.0, 1.0
    first = await client.enqueue(T, "e1", "record", {"seq": 0, "sleep": 0.1, "first_sleep": 120})
    await client.enqueue(T, "e1", "record", {"seq": 1, "sleep": 0.0})
    a = start(workers, packed, shutdown_grace=0.5)
    wait_until(lambda: runs_of(workers, pid=a.pid), 30, "the job to start")

    signalled = time.monotonic()
    a.signal(signal.SIGTERM)
    assert a.wait(15) == 0, a.describe()
    took = time.monotonic() - signalled
    assert took < workers.ttl / 2, f"took {took:.1f}s; the TTL is {workers.ttl}s"
    record = workers.job("e1", first)
    assert (record.state, record.attempt) == ("waiting", 0), record  # attempt given back
    assert workers.holders("e1") == {}
    assert lease_index(workers, "e1") == []
    assert_gone(workers, a.name, a.node)
    assert [(r.pid, r.how) for r in load_runs(workers.redis)] == [(a.pid, "cancel")]

    b = start(workers, packed)
    workers.wait_all_done(2, timeout=30)
    runs = load_runs(workers.redis)
    workers.assert_completed_once(check_history(runs, {"e1": 2}, {}))
    # Head of the queue, same attempt number: the re-run is attempt 1 again.
    expected = [(a.pid, 0, 1), (b.pid, 0, 1), (b.pid, 1, 1)]
    assert [(r.pid, r.seq, r.attempt) for r in runs] == expected
    assert workers.job("e1", first).attempt == 1


# --- 5. close signals through Redis --------------------------------------------------------------
def expect_closed(workers: Workers, closed: list[Any], still: list[Any]) -> None:
    for w in closed:
        assert w.wait(20) == 0, w.describe()
        assert "close signal" in w.output(), w.describe()
        assert_gone(workers, w.name, w.node)
    time.sleep(6 * INTERVAL)  # several heartbeats: the signal must not reach anyone else
    for w in still:
        assert w.alive(), w.describe()
        assert workers.registered(w), w.describe()


@pytest.mark.slow
async def test_close_signals_reach_only_their_workers(workers: Workers, client: Client) -> None:
    presence = Presence(client)
    w1 = workers.start("e1", node="n1", name="w1", wait=False)
    w2 = workers.start("e2", node="n1", name="w2", wait=False)
    w3 = workers.start("e1", node="n2", name="w3", wait=False)
    w4 = workers.start(slots=2, node="n2", name="w4", wait=False)
    w5 = workers.start("e3", node="n3", name="w5", wait=False)
    for w in (w1, w2, w3, w4, w5):
        workers.wait_registered(w)

    await presence.close_worker("w5")
    expect_closed(workers, [w5], [w1, w2, w3, w4])
    await presence.close_entity(T, "e1")
    expect_closed(workers, [w1, w3], [w2, w4])
    await presence.close_node("n2")
    expect_closed(workers, [w4], [w2])
    workers.stop_all()
    assert w2.proc.returncode == 0


@pytest.mark.slow
async def test_close_signal_by_pubsub_does_not_wait_for_a_heartbeat(
    workers: Workers, client: Client
) -> None:
    workers.ttl, workers.interval = 30.0, 10.0  # the heartbeat path would take up to 10 s
    w = workers.start("e1", node="n1", name="target")
    channel = client.keys.close_channel()
    wait_until(
        lambda: dict(workers.redis.pubsub_numsub(channel)).get(channel, 0) >= 1,
        20,
        "the worker to subscribe to close signals",
    )
    signalled = time.monotonic()
    await Presence(client).close_worker("target")
    assert w.wait(20) == 0, w.describe()
    took = time.monotonic() - signalled
    assert took < 5.0, f"closed {took:.2f}s after the published signal: pub/sub not used?"


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["worker", "entity", "node"])
async def test_close_signal_missed_on_pubsub_is_seen_at_the_next_heartbeat(
    workers: Workers, client: Client, scope: str
) -> None:
    w = workers.start("e1", node="n1", name="target")
    bystander = workers.start("e2", node="n2", name="bystander")
    key = {
        "worker": client.keys.close_worker("target"),
        "entity": client.keys.close_entity(T, "e1"),
        "node": client.keys.close_node("n1"),
    }[scope]
    now = await Presence(client).server_time()
    set_at = time.monotonic()
    workers.redis.set(key, repr(now), px=60_000)  # the key only: no PUBLISH
    assert w.wait(20) == 0, w.describe()
    took = time.monotonic() - set_at
    assert f"close signal for this {scope}" in w.output(), w.describe()
    assert took < 3.0, f"closed {took:.2f}s after the signal (heartbeat every {INTERVAL}s)"
    assert bystander.alive(), bystander.describe()
    assert workers.registered(bystander)


@pytest.mark.slow
async def test_worker_started_after_a_close_signal_is_not_closed_by_it(
    workers: Workers, client: Client
) -> None:
    presence = Presence(client)
    await presence.close_worker("late")
    await presence.close_entity(T, "e1")
    await presence.close_node("n1")
    await presence.close_type(T)
    w = workers.start("e1", node="n1", name="late")
    p = workers.start(slots=1, node="n1", name="late-packed")
    time.sleep(8 * INTERVAL)
    assert w.alive(), w.describe()
    assert p.alive(), p.describe()
    assert "close signal" not in w.output() + p.output()
    await presence.close_worker("late")  # a signal given now does apply
    expect_closed(workers, [w], [p])


# --- 6. idle exit ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("with_job", [False, True], ids=["never-busy", "after-a-job"])
async def test_idle_entity_worker_exits_and_releases_its_lease(
    workers: Workers, client: Client, with_job: bool
) -> None:
    if with_job:
        await client.enqueue(T, "e1", "record", {"seq": 0, "sleep": 0.1})
    launched = time.time()
    w = workers.start("e1", idle_timeout=1.0, wait=False)
    assert w.wait(30) == 0, w.describe()
    exited = time.time()
    assert "stopped: idle" in w.output(), w.describe()
    if with_job:
        (run,) = load_runs(workers.redis)
        assert run.how == "end"
        assert exited - run.end >= 0.9, "exited before the idle timeout"  # type: ignore[operator]
    else:
        assert exited - launched >= 1.0
    assert workers.holders("e1") == {}
    assert lease_index(workers, "e1") == []
    assert await IndexReads(client).entities_with_work(T) == {}
    assert_gone(workers, w.name, w.node)


def has_work(workers: Workers, entity_id: str) -> bool:
    bucket = workers.keys.entity_bucket(T, entity_id)
    return workers.redis.zscore(f"{bucket}work", entity_id) is not None


@pytest.mark.slow
async def test_idle_exit_racing_new_jobs_never_strands_one(
    workers: Workers, client: Client
) -> None:
    """Jobs arrive just before, at and just after the moment the worker goes idle; a scaler loop
    starts a fresh worker whenever the last one has exited while the entity has work."""
    idle = 0.3
    rng = random.Random()
    current = [workers.start("e1", idle_timeout=idle, wait=False)]
    restarts = 0
    seq = 0

    def scale() -> None:
        nonlocal restarts
        w = current[0]
        if w.alive():
            return
        assert w.proc.returncode == 0, w.describe()
        # It let go on its way out: a new worker can take the entity at once, no TTL to wait.
        assert workers.holders("e1") == {}, w.describe()
        if has_work(workers, "e1"):
            current[0] = workers.start("e1", idle_timeout=idle, wait=False)
            restarts += 1

    def all_done() -> bool:
        scale()
        return int(workers.counts().get("completed", 0)) == seq

    for _ in range(14):
        wait_until(all_done, 30, f"job {seq - 1} to complete", every=0.01)
        last_end = max(r.end for r in load_runs(workers.redis) if r.end) if seq else time.time()
        target = last_end + idle + rng.uniform(-0.12, 0.12)
        while time.time() < target:
            scale()
            time.sleep(0.005)
        for _ in range(rng.randint(1, 3)):
            await client.enqueue(T, "e1", "record", {"seq": seq, "sleep": 0.0})
            seq += 1
            time.sleep(rng.uniform(0, 0.01))
    wait_until(all_done, 30, "the last jobs to complete", every=0.01)

    workers.assert_completed_once(check_history(load_runs(workers.redis), {"e1": seq}, {}))
    assert restarts >= 1, "no repetition caught the worker after its idle exit"
    workers.stop_all()


@pytest.mark.slow
async def test_idle_exit_race_in_process_many_repetitions(redis_url: str) -> None:
    """The same race with Worker objects in this process: cheap enough for many repetitions."""
    idle = 0.05
    settings = Settings(
        redis_url=redis_url, heartbeat_ttl=TTL, heartbeat_interval=INTERVAL, idle_timeout=idle
    )
    done: list[int] = []
    registry = Registry()

    @registry.command("note")
    async def note(ctx: JobContext, payload: dict[str, int]) -> None:
        done.append(payload["seq"])

    producer = await Client.connect(settings)
    clients: list[Client] = []
    rng = random.Random()
    reps, seq, restarts = 150, 0, 0

    async def new_worker() -> asyncio.Task[str]:
        while clients:  # the previous worker's, once it has stopped
            await clients.pop().close()
        c = await Client.connect(settings)
        clients.append(c)
        return asyncio.create_task(Worker(c, registry, T, entity_id="e1").run())

    async def has_work_now() -> bool:
        # The stopped worker let go of its lease on the way out (no TTL for the next to wait).
        assert await producer.redis.hlen(producer.keys.entity(T, "e1") + "leases") == 0
        return "e1" in await IndexReads(producer).entities_with_work(T)

    try:
        task = await new_worker()
        for _ in range(reps):
            # Wait for the previous jobs, restarting the worker like a scaler would.
            deadline = time.monotonic() + 20
            while len(done) < seq:
                if task.done():
                    assert task.result() == "idle"
                    if await has_work_now():
                        task = await new_worker()
                        restarts += 1
                assert time.monotonic() < deadline, f"stranded: done {len(done)} of {seq}"
                await asyncio.sleep(0.002)
            await asyncio.sleep(idle + rng.uniform(-0.02, 0.02))
            for _ in range(rng.randint(1, 2)):
                await producer.enqueue(T, "e1", "note", {"seq": seq})
                seq += 1
            if task.done() and await has_work_now():
                task = await new_worker()
                restarts += 1
        deadline = time.monotonic() + 20
        while len(done) < seq:
            if task.done() and await has_work_now():
                task = await new_worker()
            assert time.monotonic() < deadline, f"stranded: done {len(done)} of {seq}"
            await asyncio.sleep(0.002)
        assert done == list(range(seq))
        assert restarts >= 1
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for c in clients:
            await c.close()
        await producer.close()


async def test_cancel_and_wait_outlasts_a_swallowed_cancellation() -> None:
    """Python 3.11's asyncio.wait_for (around every redis-py send once a socket timeout is set)
    can swallow a cancellation; the worker's helper tasks must still stop (this once left a
    worker heartbeating forever after its idle exit)."""
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # the first cancellation is lost, like wait_for's

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task]), timeout=10)
    assert swallowed.is_set()
    assert task.cancelled()


# --- 7. the registry of workers -----------------------------------------------------------------
@pytest.mark.slow
async def test_registry_lists_live_workers_and_forgets_a_killed_one(
    workers: Workers, client: Client
) -> None:
    presence = Presence(client)
    b1 = workers.start("e1", node="n1", name="b1", wait=False)
    p1 = workers.start(slots=2, node="n1", name="p1", wait=False)
    b2 = workers.start("e2", node="n2", name="b2", wait=False)
    for w in (b1, p1, b2):
        workers.wait_registered(w)

    def names(infos: list[Any]) -> list[str]:
        return sorted(i.name for i in infos)

    for name in ("b1", "p1", "b2"):
        assert await presence.worker_exists(name)
    assert not await presence.worker_exists("nobody")
    assert names(await presence.entity_workers(T, "e1")) == ["b1"]
    assert names(await presence.entity_workers(T, "e2")) == ["b2"]
    assert names(await presence.node_workers("n1")) == ["b1", "p1"]
    assert names(await presence.node_workers("n2")) == ["b2"]
    assert names(await presence.all_workers()) == ["b1", "b2", "p1"]
    info = await presence.worker("p1")
    assert info is not None
    assert (info.entity_id, info.slots, info.node, info.pid) == (None, 2, "n1", p1.pid)

    # A packed worker is listed for an entity while it holds a lease on it.
    await client.enqueue(T, "e3", "record", {"seq": 0, "sleep": 60})
    wait_until(lambda: runs_of(workers, pid=p1.pid), 30, "p1 to take e3")
    deadline = time.monotonic() + 10
    while names(await presence.entity_workers(T, "e3")) != ["p1"]:
        assert time.monotonic() < deadline, await presence.entity_workers(T, "e3")
        await asyncio.sleep(0.05)

    killed_at = time.monotonic()
    b1.kill()
    while await presence.worker_exists("b1"):
        assert time.monotonic() - killed_at < TTL + 5, "registration outlived its TTL"
        await asyncio.sleep(0.05)
    assert time.monotonic() - killed_at >= TTL / 2  # it expired, nobody deleted it
    assert names(await presence.entity_workers(T, "e1")) == []
    assert names(await presence.node_workers("n1")) == ["p1"]
    assert names(await presence.all_workers()) == ["b2", "p1"]


# --- 8. start-up errors of `aq worker` ----------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_such_module_xyz:registry", "cannot import 'no_such_module_xyz'"),
        ("tests.runtime.handlers:not_a_registry", "is not a Registry"),
        ("tests.runtime.handlers:no_such_attribute", "is not a Registry"),
        ("tests.runtime.handlers", "expected MODULE:ATTRIBUTE"),
    ],
)
def test_worker_with_bad_handlers_fails_in_one_line(
    redis_url: str, spec: str, expected: str
) -> None:
    result = aq(
        "worker",
        "--handlers",
        spec,
        "--entity-type",
        T,
        "--entity-id",
        "e1",
        env=base_env(redis_url),
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aq: "), lines[0]
    assert expected in lines[0], lines[0]


def test_worker_with_unreachable_redis_fails_in_one_line() -> None:
    env = base_env(f"redis://127.0.0.1:{free_port()}/0")
    result = aq("worker", "--handlers", HANDLERS, "--entity-type", T, "--slots", "2", env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach Redis" in lines[0], lines[0]
