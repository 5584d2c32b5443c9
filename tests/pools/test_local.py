"""`aq up` and `aq demo`: a pool of real local worker processes on a real Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from atomicqueues import Client, Settings
from atomicqueues.index_reads import IndexReads
from atomicqueues.pools.local import LocalPool, settings_for
from atomicqueues.pools.spec import API_GROUP, API_VERSION, KIND, Pool
from atomicqueues.schedules import Schedules
from helpers import aq, aq_env, wait_until

MANIFEST = {
    "apiVersion": "atomicqueues.io/v1alpha1",
    "kind": "EntityWorkerPool",
    "metadata": {"name": "accounts"},
    "spec": {
        "entityType": "account",
        "handlers": "atomicqueues.pools.demo_handlers:registry",
        "redis": {"prefix": "uptest"},
        "workers": {"maxTotal": 6},
        "timing": {
            "idleTimeoutSeconds": 0.5,
            "heartbeatTTLSeconds": 1.0,
            "heartbeatIntervalSeconds": 0.25,
            "shutdownGraceSeconds": 2.0,
            "resyncIntervalSeconds": 1.0,
        },
    },
}


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(MANIFEST))
    return path


@pytest.fixture
def aq_up(redis_url: str, manifest: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomicqueues.cli", "up", str(manifest)],
        env=aq_env(AQ_REDIS_URL=redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def live_workers(r: redis.Redis) -> list[str]:
    names = r.zrange("uptest:workers", 0, -1)
    return [n for n in names if r.exists(f"uptest:worker:{n.decode()}")]


def test_aq_up_scales_up_on_work_and_down_to_zero(
    redis_url: str, aq_up: subprocess.Popen[str]
) -> None:
    from atomicqueues import SyncClient
    from atomicqueues.config import Settings

    r = redis.Redis.from_url(redis_url)
    time.sleep(1.0)  # the pool is up and idle
    assert live_workers(r) == []
    with SyncClient(Settings(redis_url=redis_url, prefix="uptest")) as client:
        for n in range(4):
            for seq in range(3):
                client.enqueue(
                    "account",
                    f"a{n}",
                    "step",
                    {"seq": seq, "seconds": 0.05, "log_key": "uptest:log"},
                )
        wait_until(lambda: len(live_workers(r)) >= 1, 30, "a worker to start")
        wait_until(
            lambda: client.run(lambda c: IndexReads(c).counts("account"))["completed"] == 12,
            60,
            "all jobs to complete",
        )
    wait_until(lambda: live_workers(r) == [], 30, "the pool to scale to zero")
    starts = [line for line in r.lrange("uptest:log", 0, -1) if b'"start"' in line]
    assert len(starts) == 12
    aq_up.send_signal(signal.SIGINT)
    out, _ = aq_up.communicate(timeout=30)
    assert aq_up.returncode == 0, out
    assert "started worker" in out
    assert "Traceback" not in out


def test_aq_up_starts_no_worker_for_a_paused_entity(
    redis_url: str, aq_up: subprocess.Popen[str]
) -> None:
    from atomicqueues import SyncClient
    from atomicqueues.config import Settings

    r = redis.Redis.from_url(redis_url)
    step = {"seq": 0, "seconds": 0.01, "log_key": "uptest:log"}
    with SyncClient(Settings(redis_url=redis_url, prefix="uptest")) as client:
        client.pause("account", "a1")
        client.enqueue("account", "a1", "step", step)
        client.enqueue("account", "a2", "step", step)
        wait_until(
            lambda: client.run(lambda c: IndexReads(c).counts("account"))["completed"] == 1,
            30,
            "a2's job to run",
        )
        time.sleep(2.0)  # two resyncs of the pool: still nothing for a1
        assert client.run(lambda c: IndexReads(c).counts("account"))["completed"] == 1
        assert client.run(lambda c: IndexReads(c).pending_entities("account")) == {"a1": 1}
        assert all(b"a1" not in name for name in live_workers(r))
        client.resume("account", "a1")
        wait_until(
            lambda: client.run(lambda c: IndexReads(c).counts("account"))["completed"] == 2,
            30,
            "a1's job to run",
        )


async def test_aq_up_announces_its_desired_and_ready_workers(
    redis_url: str, aq_up: subprocess.Popen[str]
) -> None:
    from atomicqueues import Client
    from atomicqueues.config import Settings
    from atomicqueues.pools import health

    client = await Client.connect(Settings(redis_url=redis_url, prefix="uptest"))
    try:
        step = {"seq": 0, "seconds": 5, "log_key": "uptest:log"}
        await client.enqueue("account", "a1", "step", step)
        deadline = time.monotonic() + 30
        while True:
            found = await health.pools(client, time.time())
            if (found and found[0].ready == 1) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert [(p.namespace, p.name, p.entity_type, p.desired, p.ready) for p in found] == [
            ("default", "accounts", "account", 1, 1)
        ]
    finally:
        await client.close()


def test_aq_up_stops_busy_workers_gracefully(redis_url: str, aq_up: subprocess.Popen[str]) -> None:
    from atomicqueues import SyncClient
    from atomicqueues.config import Settings

    r = redis.Redis.from_url(redis_url)
    with SyncClient(Settings(redis_url=redis_url, prefix="uptest")) as client:
        job = client.enqueue(
            "account", "slow", "step", {"seq": 0, "seconds": 0.8, "log_key": "uptest:log"}
        )
        wait_until(lambda: client.job(job).state == "active", 30, "the job to start")
        aq_up.send_signal(signal.SIGINT)
        out, _ = aq_up.communicate(timeout=30)
        assert aq_up.returncode == 0, out
        assert client.job(job).state == "completed"  # it finished within the grace
    assert live_workers(r) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        pytest.param({"kind": "Pod"}, ["kind"], id="kind"),
        pytest.param(
            {"spec": {"entityType": "a b", "handlers": "m:r"}},
            ["spec.entityType"],
            id="entity-type",
        ),
        pytest.param(
            {"spec": {"entityType": "t", "handlers": "m:r", "placement": {"slots": 0}}},
            ["spec.placement.slots"],
            id="slots",
        ),
        pytest.param(
            {"spec": {"entityType": "t", "handlers": "m:r", "bogus": 1}},
            ["spec.bogus"],
            id="unknown-field",
        ),
        pytest.param(
            {
                "spec": {
                    "entityType": "t",
                    "handlers": "m:r",
                    "redis": {"url": "redis://:secret@h:6379/0"},
                }
            },
            ["password"],
            id="password-in-url",
        ),
    ],
)
def test_invalid_manifest_is_one_line_naming_the_field(
    tmp_path: Path, change: dict[str, object], words: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MANIFEST, **change}))
    result = aq("up", str(path), env=aq_env(AQ_REDIS_URL="redis://127.0.0.1:1/0"), timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_aq_up_refuses_handlers_that_cannot_be_imported(redis_url: str, tmp_path: Path) -> None:
    """Checked once at start, with one line, instead of workers restarted in a backoff loop."""
    (tmp_path / "handlers.py").write_text("import no_such_module_xyz\n")
    for handlers, words in [
        ("handlers:registry", ["cannot import 'handlers'", "no_such_module_xyz"]),
        ("atomicqueues:Client", ["not a Registry"]),
    ]:
        path = tmp_path / "pool.yaml"
        path.write_text(
            yaml.safe_dump({**MANIFEST, "spec": {**MANIFEST["spec"], "handlers": handlers}})
        )
        started = time.monotonic()
        result = aq("up", str(path), cwd=tmp_path, env=aq_env(AQ_REDIS_URL=redis_url), timeout=30)
        assert result.returncode != 0
        assert time.monotonic() - started < 10  # refused, not run until stopped
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        for word in words:
            assert word in lines[0], lines[0]


def test_unreadable_manifest(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("spec: [unclosed")
    for path in (tmp_path / "missing.yaml", tmp_path / "broken.yaml"):
        result = aq("up", str(path), env=aq_env(), timeout=30)
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_demo_runs_to_the_end_on_an_embedded_redis() -> None:
    result = aq("demo", "--plain", "--entities", "8", "--jobs", "4", env=aq_env(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check passed" in result.stdout
    assert "came back and completed (attempt 2)" in result.stdout
    assert "32 of 32 jobs completed" in result.stdout


async def test_a_wake_up_during_a_reconcile_is_not_lost(redis_url: str) -> None:
    """An "entity has work" event that arrives while a reconcile runs triggers another one at
    once, not at the next resync (here 5 s away)."""
    import asyncio

    from atomicqueues import Client, Settings
    from atomicqueues.pools.local import LocalPool
    from atomicqueues.pools.reconciler import Plan
    from atomicqueues.pools.spec import parse_pool

    slow = {
        **MANIFEST["spec"],
        "timing": {
            "heartbeatTTLSeconds": 10,  # type: ignore[dict-item]
            "heartbeatIntervalSeconds": 5,
            "resyncIntervalSeconds": 5,
        },
    }
    pool = parse_pool({**MANIFEST, "spec": slow})
    client = await Client.connect(Settings(redis_url=redis_url, prefix="uptest"))
    local = LocalPool(pool, client)
    calls: list[float] = []

    async def reconcile_once() -> Plan:
        calls.append(time.monotonic())
        if len(calls) == 1:
            await asyncio.sleep(0.3)
            local.wake.set()  # as the event watcher would, mid-reconcile
        return Plan([])

    local.reconcile_once = reconcile_once  # type: ignore[method-assign]
    stop = asyncio.Event()
    runner = asyncio.create_task(local.run(stop))
    try:
        for _ in range(100):
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(calls) >= 2
        assert calls[1] - calls[0] < 2.0
    finally:
        stop.set()
        await runner
        await client.close()


def test_aq_up_fires_a_schedule_and_starts_a_worker_for_it(
    redis_url: str, aq_up: subprocess.Popen[str]
) -> None:
    """No worker runs when the schedule is added: the pool's ticker fires it, and the fired job
    (like any enqueue) makes the pool start a worker, which runs it."""
    from atomicqueues import SyncClient
    from atomicqueues.config import Settings

    r = redis.Redis.from_url(redis_url)
    time.sleep(1.0)  # the pool is up and idle
    assert live_workers(r) == []
    with SyncClient(Settings(redis_url=redis_url, prefix="uptest")) as client:
        payload = {"seq": 0, "seconds": 0.01, "log_key": "uptest:log"}
        added = client.run(
            lambda c: Schedules(c).add("account", "tick", "step", payload, every=0.5)
        )
        assert added.entity_id == "tick"
        wait_until(lambda: r.llen("uptest:log") >= 4, 30, "two scheduled jobs to run")
        client.run(lambda c: Schedules(c).remove("account", "tick"))
    starts = [json.loads(line) for line in r.lrange("uptest:log", 0, -1) if b'"start"' in line]
    assert all(s["entity"] == "tick" and s["job"].startswith("tick@") for s in starts)
    assert len({s["job"] for s in starts}) == len(starts)
    aq_up.send_signal(signal.SIGINT)
    out, _ = aq_up.communicate(timeout=30)
    assert aq_up.returncode == 0, out
    assert "started worker" in out


def test_a_pools_timing_is_what_its_local_workers_are_set_to() -> None:
    """The manifest's timing reaches a worker through the environment `aq worker` reads (the
    same variables the operator puts in a pod's spec)."""
    pool = Pool.model_validate(
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "metadata": {"name": "timed"},
            "spec": {
                "entityType": "user",
                "handlers": "handlers:registry",
                "timing": {
                    "heartbeatTTLSeconds": 4,
                    "heartbeatIntervalSeconds": 1.5,
                    "idleTimeoutSeconds": 12,
                    "shutdownGraceSeconds": 7.5,
                },
            },
        }
    )
    worker = Settings.from_env(pool.spec.timing.worker_env())
    pool_side = settings_for(pool, "redis://127.0.0.1:1/0")
    for settings in (worker, pool_side):
        assert (settings.heartbeat_ttl, settings.heartbeat_interval) == (4, 1.5)
        assert (settings.idle_timeout, settings.shutdown_grace) == (12, 7.5)


async def test_local_workers_get_the_pools_redis_but_not_one_metrics_port(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`aq up` run with AQ_METRICS_PORT set: its workers share one host, where all but the
    first would fail to serve on that port, so none inherits it."""
    monkeypatch.setenv("AQ_METRICS_PORT", "9100")
    monkeypatch.setenv("AQ_LOG_LEVEL", "DEBUG")
    pool = Pool.model_validate(
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "metadata": {"name": "ported"},
            "spec": {"entityType": "user", "handlers": "handlers:registry"},
        }
    )
    async with await Client.connect(settings_for(pool, redis_url)) as client:
        env = LocalPool(pool, client)._env()
    assert "AQ_METRICS_PORT" not in env
    assert env["AQ_LOG_LEVEL"] == "DEBUG"  # the rest of the environment is passed on
    assert (env["AQ_REDIS_URL"], env["AQ_PREFIX"]) == (redis_url, pool.spec.redis.prefix)
