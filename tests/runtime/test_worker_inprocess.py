"""The worker in-process: handlers, results, retries, metrics, the sync facade, settings.

Fault tests with real processes live in test_faults.py; these drive `Worker` on the test's own
event loop, which makes handler behaviour easy to observe.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel

from atomicqueues import (
    Backoff,
    Client,
    InvalidInput,
    JobContext,
    JobFailed,
    PermanentError,
    Registry,
    Settings,
    SyncClient,
    Worker,
)
from atomicqueues.controls import Controls
from atomicqueues.dead_letters import DeadLetters
from atomicqueues.errors import ConfigError
from atomicqueues.index_reads import IndexReads
from atomicqueues.keys import in_bucket, of_entity
from atomicqueues.leases import Leases, Started
from atomicqueues.runner import MAX_ERROR_CHARS

FAST = {"heartbeat_ttl": 0.6, "heartbeat_interval": 0.2, "idle_timeout": 0.5, "shutdown_grace": 0.5}


class Add(BaseModel):
    a: int
    b: int


def make_registry(log: list[tuple[str, int]]) -> Registry:
    registry = Registry()

    @registry.query("add")
    async def add(ctx: JobContext, payload: Add) -> int:
        log.append(("add", ctx.fencing_token))
        return payload.a + payload.b

    @registry.command("flaky")
    async def flaky(ctx: JobContext, payload: dict[str, int]) -> None:
        log.append(("flaky", ctx.attempt))
        if ctx.attempt < payload["succeed_on"]:
            raise RuntimeError(f"attempt {ctx.attempt} fails")

    @registry.command("refuse")
    async def refuse(ctx: JobContext, payload: None) -> None:
        log.append(("refuse", ctx.attempt))
        raise PermanentError("not allowed")

    @registry.query("sync_query")
    def sync_query(ctx: JobContext, payload: Add) -> int:  # runs in a thread
        return payload.a * payload.b

    return registry


@pytest.fixture
def client_settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, **FAST)  # type: ignore[arg-type]


async def run_until_idle(client: Client, registry: Registry, entity_id: str) -> str:
    worker = Worker(client, registry, "user", entity_id=entity_id)
    return await asyncio.wait_for(worker.run(), timeout=30)


async def test_query_result_and_fencing_token(client: Client) -> None:
    log: list[tuple[str, int]] = []
    first = await client.enqueue("user", "alice", "add", {"a": 2, "b": 3})
    second = await client.enqueue("user", "alice", "sync_query", {"a": 4, "b": 5})
    assert await run_until_idle(client, make_registry(log), "alice") == "idle"
    assert await client.result(first, timeout=1) == 5
    assert await client.result(second, timeout=1) == 20
    job = await client.job(first)
    assert job.fencing_token == log[0][1]
    assert (job.state, job.attempt) == ("completed", 1)


async def test_retries_with_backoff_then_success(client: Client) -> None:
    log: list[tuple[str, int]] = []
    fast = Backoff(type="fixed", delay=0.05, jitter=0)
    job_id = await client.enqueue(
        "user", "bob", "flaky", {"succeed_on": 3}, attempts=3, backoff=fast
    )
    follower = await client.enqueue("user", "bob", "add", {"a": 1, "b": 1})
    await run_until_idle(client, make_registry(log), "bob")
    assert log == [("flaky", 1), ("flaky", 2), ("flaky", 3), ("add", log[3][1])]
    assert (await client.job(job_id)).state == "completed"
    assert await client.result(follower, timeout=1) == 2


async def test_exhausted_and_permanent_errors_dead_letter(client: Client) -> None:
    log: list[tuple[str, int]] = []
    fast = Backoff(type="fixed", delay=0.01, jitter=0)
    exhausted = await client.enqueue(
        "user", "carol", "flaky", {"succeed_on": 9}, attempts=2, backoff=fast
    )
    refused = await client.enqueue("user", "carol", "refuse", None, attempts=5)
    await run_until_idle(client, make_registry(log), "carol")
    assert log == [("flaky", 1), ("flaky", 2), ("refuse", 1)]
    with pytest.raises(JobFailed, match="attempt 2 fails"):
        await client.result(exhausted, timeout=1)
    with pytest.raises(JobFailed, match="not allowed"):
        await client.result(refused, timeout=1)
    assert {j.id for j in await DeadLetters(client).list("user", "carol")} == {exhausted, refused}
    dead = await client.job(exhausted)
    assert dead.error_line == "RuntimeError: attempt 2 fails"
    assert dead.error is not None
    assert "Traceback (most recent call last)" in dead.error
    assert "in flaky" in dead.error  # the frame that raised


async def test_a_long_traceback_keeps_its_start_and_its_end(client: Client) -> None:
    registry = Registry()

    def deep(n: int) -> None:
        try:
            if n == 0:
                raise ValueError("at the bottom")
            deep(n - 1)
        except ValueError as exc:
            raise ValueError(f"level {n}") from exc  # a chain of tracebacks, each one longer

    @registry.command("deep")
    async def run_deep(ctx: JobContext, payload: None) -> None:
        deep(40)

    job_id = await client.enqueue("user", "erin", "deep", attempts=1)
    await run_until_idle(client, registry, "erin")
    error = (await client.job(job_id)).error
    assert error is not None
    assert len(error) <= MAX_ERROR_CHARS
    assert error.startswith("ValueError: level 40\nTraceback")
    assert "\n[...]\n" in error
    assert error.endswith("ValueError: level 40\n")


@pytest.mark.parametrize("packed", [False, True], ids=["entity-bound", "packed"])
async def test_a_rate_limit_spaces_the_starts_of_an_entity(redis_url: str, packed: bool) -> None:
    """At most 3 starts in any 0.6 s: the entity-bound worker waits for the due time its claim
    returns, a packed one for the sweep to make the entity claimable again (an idle timeout
    longer than the waits: a worker that goes idle meanwhile leaves it to its pool)."""
    settings = Settings(redis_url=redis_url, **{**FAST, "idle_timeout": 5.0})  # type: ignore[arg-type]
    client = await Client.connect(settings)
    registry = Registry()
    starts: list[float] = []

    @registry.command("tick")
    async def tick(ctx: JobContext, payload: None) -> None:
        assert ctx.job.started_at is not None
        starts.append(ctx.job.started_at)

    await Controls(client).set_limits("user", "gus", rate=(3, 0.6))
    ids = [await client.enqueue("user", "gus", "tick") for _ in range(7)]
    worker = Worker(client, registry, "user", **({"slots": 2} if packed else {"entity_id": "gus"}))
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(client.result(ids[-1], timeout=20), 25)
    worker.close("done")
    await run
    await client.close()
    assert len(starts) == 7
    for i in range(3, 7):
        assert starts[i] - starts[i - 3] >= 0.6 - 0.002, starts  # Redis ms: rounding
    assert starts[-1] - starts[0] < 5.0, "the limit let jobs wait far longer than it asks"


async def test_a_shared_rate_spaces_the_handlers_of_a_whole_type(redis_url: str) -> None:
    """At most 3 handlers of the type start in any 0.6 s, whichever entities they belong to,
    while a packed worker has slots for 4 at once."""
    client = await Client.connect(Settings(redis_url=redis_url, **FAST))  # type: ignore[arg-type]
    registry = Registry()
    starts: list[float] = []

    @registry.command("call_api")
    async def call_api(ctx: JobContext, payload: None) -> None:
        starts.append(time.time())

    with SyncClient(Settings(redis_url=redis_url)) as sync:  # the same calls, without async
        sync.run(lambda c: Controls(c).set_limits("user", shared_rate=(3, 0.6)))
        assert sync.run(lambda c: Controls(c).limits("user")).shared_rate == (3, 0.6)
    ids = [await client.enqueue("user", f"u{i % 4}", "call_api") for i in range(8)]
    worker = Worker(client, registry, "user", slots=4)
    run = asyncio.create_task(worker.run())
    for job_id in ids:
        await client.result(job_id, timeout=20)
    worker.close("done")
    await run
    await Controls(client).set_limits("user", shared_rate=(0, 0))
    assert await Controls(client).shared_rate("user") is None
    await client.close()
    starts.sort()
    assert len(starts) == 8
    for i in range(3, 8):
        assert starts[i] - starts[i - 3] >= 0.6 - 0.05, starts  # the server's clock grants
    assert starts[-1] - starts[0] < 5.0


async def test_progress_is_shown_on_the_job_and_only_its_lease_holder_may_set_it(
    client: Client,
) -> None:
    registry = Registry()
    reported = asyncio.Event()
    go_on = asyncio.Event()

    @registry.command("report")
    async def report(ctx: JobContext, payload: None) -> None:
        assert await ctx.progress(0.5)
        assert await ctx.progress({"done": 3, "of": 4})
        reported.set()
        await go_on.wait()

    job_id = await client.enqueue("user", "fay", "report")
    worker = asyncio.create_task(run_until_idle(client, registry, "fay"))
    await asyncio.wait_for(reported.wait(), 10)
    job = await client.job(job_id)
    assert job.progress == {"done": 3, "of": 4}
    bucket = client.keys.entity_bucket("user", "fay")
    jslot = client.keys.job_slot("user", "fay", job_id)
    assert await client.script("progress", bucket, jslot, job.fencing_token + 1, "1") == 0
    assert (await client.job(job_id)).progress == {"done": 3, "of": 4}
    go_on.set()
    await worker
    assert (await client.job(job_id)).progress == {"done": 3, "of": 4}  # kept with the job
    assert await client.script("progress", bucket, jslot, job.fencing_token, "1") == 0


async def test_metrics_count_by_type_and_name_never_by_entity(client: Client) -> None:
    def completed() -> float:
        value = REGISTRY.get_sample_value(
            "aq_jobs_completed_total", {"entity_type": "user", "job": "add"}
        )
        return value or 0.0

    before = completed()
    for i in range(3):
        await client.enqueue("user", "dave", "add", {"a": i, "b": i})
    await run_until_idle(client, make_registry([]), "dave")
    assert completed() == before + 3
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            assert "dave" not in sample.labels.values()
            assert "entity_id" not in sample.labels


async def test_lost_lease_cancels_the_handler(client: Client) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    lost_seen: list[bool] = []
    registry = Registry()

    @registry.command("slow")
    async def slow(ctx: JobContext, payload: None) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            lost_seen.append(ctx.lost.is_set())
            cancelled.set()
            raise

    job_id = await client.enqueue("user", "erin", "slow")
    worker = Worker(client, registry, "user", entity_id="erin")
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    # The lease expires as if the worker's renewals had stopped reaching Redis: its expiry (in
    # the entity's meta and in the bucket's lease index) is set in the past.
    lease = worker.held["erin"]
    meta, field = of_entity(client.keys.entity("user", "erin"), "meta"), f"l:{worker.name}"
    token, _, running = (await client.redis.hget(meta, field)).split(" ", 2)
    await client.redis.hset(meta, field, f"{token} 0 {running}")
    await client.redis.zadd(
        in_bucket(client.keys.entity_bucket("user", "erin"), "leases"), {f"{worker.name}|erin": 0}
    )
    await asyncio.wait_for(cancelled.wait(), 10)
    assert lost_seen == [True]
    worker.close("test")
    await asyncio.wait_for(runner, 10)
    job = await client.job(job_id)
    assert job.state == "waiting"
    assert job.error is not None
    assert "stalled" in job.error
    # The former holder can change nothing any more.
    taker = Leases(client, "taker")
    again = await taker.claim("user", "erin", None)
    assert isinstance(again, Started)
    assert again.lease.fencing_token > lease.fencing_token


def entities_in(client: Client, bucket: int, prefix: str) -> Iterator[str]:
    """Entity ids of type "user" (`prefix` and a number) that fall in bucket number `bucket`."""
    base = client.keys.buckets("user")[bucket]
    return (
        e
        for e in (f"{prefix}{i}" for i in range(100_000))
        if client.keys.entity_bucket("user", e) == base
    )


async def run_steps(client: Client, pause: float) -> list[str]:
    """Run the waiting "step" jobs with one packed slot until it is idle; the entity of each job,
    in the order they started (each step sleeps `pause`)."""
    started: list[str] = []
    registry = Registry()

    @registry.command("step")
    async def step(ctx: JobContext, payload: None) -> None:
        started.append(ctx.job.entity_id)
        await asyncio.sleep(pause)

    worker = Worker(client, registry, "user", slots=1)
    assert await asyncio.wait_for(worker.run(), 60) == "idle"
    return started


async def test_a_busy_bucket_does_not_keep_a_packed_worker_from_the_others(client: Client) -> None:
    """A packed worker's slot takes entities of one bucket one after another (each handed over
    by the script that finished the last job) only `HANDOVERS` times, then listens to the
    doorbells again, which it hears in turn: with one slot, 200 entities waiting in one bucket
    do not keep a job of another bucket waiting until they are all through."""
    crowd = list(itertools.islice(entities_in(client, 0, "c"), 200))
    lone = next(entities_in(client, -1, "c"))
    for e in [*crowd, lone]:
        await client.enqueue("user", e, "step")
    started = await run_steps(client, 0.005)
    assert sorted(started) == sorted([*crowd, lone])
    # Before, the slot went through the whole crowd first (index 200).
    assert started.index(lone) < 100, started.index(lone)


async def test_a_packed_worker_is_idle_from_the_end_of_a_drain_not_its_start(
    client: Client,
) -> None:
    """A drain that lasts longer than the idle timeout (here one entity's jobs back to back)
    does not make the worker leave as idle when it ends: the job of another bucket runs too."""
    first, other = next(entities_in(client, 0, "d")), next(entities_in(client, -1, "d"))
    for e in [first] * 8 + [other]:
        await client.enqueue("user", e, "step")
    # 8 steps of 0.1 s: longer than the idle timeout (0.5 s)
    assert await run_steps(client, 0.1) == [first] * 8 + [other]


def test_sync_client_from_plain_threads(redis_url: str) -> None:
    with SyncClient(Settings(redis_url=redis_url)) as sync:
        ids: list[str] = []

        def produce(n: int) -> None:
            for i in range(10):
                ids.append(sync.enqueue("user", f"t{n}", "add", {"a": i, "b": 0}))

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(ids)) == 40
        assert sync.run(lambda c: IndexReads(c).pending_entities("user")) == {
            f"t{n}": 10 for n in range(4)
        }
        assert sync.run(lambda c: IndexReads(c).counts("user"))["waiting"] == 40
        assert sync.job(ids[0]).state == "waiting"
        assert sync.cancel(ids[0])
        with pytest.raises(TimeoutError):
            sync.result(ids[1], timeout=0.2)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"AQ_HEARTBEAT_TTL": "abc"}, "AQ_HEARTBEAT_TTL", id="not-a-number"),
        pytest.param({"AQ_PREFIX": "a{b}"}, "AQ_PREFIX", id="prefix-with-braces"),
        pytest.param(
            {"AQ_HEARTBEAT_TTL": "1", "AQ_HEARTBEAT_INTERVAL": "1"}, "half", id="interval"
        ),
        pytest.param({"AQ_MAX_ATTEMPTS": "0"}, "attempts", id="attempts"),
        pytest.param({"AQ_JOB_TIMEOUT": "-1"}, "job timeout", id="negative-job-timeout"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), "5"])
def test_a_handler_time_limit_must_be_positive_seconds(timeout: object) -> None:
    with pytest.raises(InvalidInput, match="timeout"):
        Registry().command("x", timeout=timeout)  # type: ignore[arg-type]


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "AQ_REDIS_URL": "redis://h:1/2",
            "AQ_PREFIX": "p",
            "AQ_IDLE_TIMEOUT": "7",
            "AQ_METRICS_PORT": "9100",
            "AQ_NODE_NAME": "n1",
        }
    )
    assert (s.redis_url, s.prefix, s.idle_timeout, s.metrics_port, s.node) == (
        "redis://h:1/2",
        "p",
        7.0,
        9100,
        "n1",
    )
