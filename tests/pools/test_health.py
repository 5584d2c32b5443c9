"""The pools' health gauges: jobs waiting, the oldest waiting job's age, entities with work and
dead letters, from the index a reconcile pass reads plus one pipeline of constant size; and
`aq up --metrics-port` serving them.

Why: "is it healthy" must be answerable by a scrape that never walks the queues: with many
entities, a read that grows with them would load Redis on every pass. Real Redis, real worker
and `aq up` processes.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis
import yaml

from atomicqueues import Client, NewJob, Settings
from atomicqueues.index_reads import IndexReads
from atomicqueues.keys import BUCKETS
from atomicqueues.pools import health
from helpers import REPO_ROOT, aq, wait_until
from runtime.workers import base_env

HANDLERS = "tests.ops.handlers:registry"


async def observe(client: Client, entity_type: str) -> health.Health:
    entities = await IndexReads(client).work_index(entity_type)
    return await health.observe(client, entity_type, entities, time.time())


async def test_counts_and_the_age_of_the_oldest_waiting_job(client: Client, redis_url: str) -> None:
    assert await observe(client, "acct") == health.Health(0, 0.0, 0, 0)
    for n in range(3):
        await client.enqueue("acct", "e1", "note", n)
    await client.enqueue("acct", "e2", "note", 0)
    await asyncio.sleep(0.3)
    seen = await observe(client, "acct")
    assert (seen.jobs_waiting, seen.entities_with_work, seen.dead_letters) == (4, 2, 0)
    assert 0.3 <= seen.oldest_waiting_seconds < 5

    # A delayed job waits from its due time on, until a worker moves it to the queue.
    await client.enqueue("later", "d", "note", None, delay=0.3)
    assert (await observe(client, "later")).oldest_waiting_seconds == 0
    await asyncio.sleep(0.6)
    assert 0.25 <= (await observe(client, "later")).oldest_waiting_seconds < 5

    # A job that failed for good is a dead letter; a run worker leaves nothing waiting.
    await client.enqueue("acct", "e3", "boom", 1, attempts=1)
    args = ["worker", "--handlers", HANDLERS, "--entity-type", "acct", "--slots", "2"]
    done = aq(*args, "--idle-timeout", "0.5", env=base_env(redis_url))
    assert done.returncode == 0, done.stderr
    assert await observe(client, "acct") == health.Health(0, 0.0, 0, 1)


async def test_reading_health_costs_the_same_with_many_entities(
    client: Client, redis_url: str
) -> None:
    """Three O(log N) reads per bucket, whatever the number of entities: 3,000 here."""
    await client.enqueue_many(NewJob("acct", f"user-{n}", "note") for n in range(3000))
    entities = await IndexReads(client).work_index("acct")
    assert len(entities) == 3000
    with redis.Redis.from_url(redis_url) as r:
        r.config_resetstat()
        found = await health.observe(client, "acct", entities, time.time())
        stats = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
    assert found.jobs_waiting == 3000
    for own in ("info", "config", "config|resetstat"):  # this test's own calls
        stats.pop(own, None)
    assert stats == {"zrange": 2 * BUCKETS, "hget": BUCKETS, "hlen": BUCKETS, "zcard": BUCKETS}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The pool's health samples on /metrics, by metric name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    labels = '{namespace="default",pool="healthy"}'
    return {
        name: float(value)
        for line in text.splitlines()
        if line.startswith("aq_pool_") and labels in line
        for name, value in [line.replace(labels, "").split(" ")]
    }


def test_aq_up_serves_the_pools_health(redis_url: str, tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "atomicqueues.io/v1alpha1",
        "kind": "EntityWorkerPool",
        "metadata": {"name": "healthy"},
        "spec": {
            "entityType": "acct",
            "handlers": HANDLERS,
            "timing": {
                "idleTimeoutSeconds": 0.5,
                "heartbeatTTLSeconds": 1.0,
                "heartbeatIntervalSeconds": 0.25,
                "resyncIntervalSeconds": 0.5,
            },
        },
    }
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(manifest))
    port = free_port()
    env = base_env(redis_url)
    env.pop("AQ_METRICS_PORT", None)
    with (tmp_path / "up.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atomicqueues.cli",
                "up",
                str(path),
                "--metrics-port",
                str(port),
            ],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        expected = {
            "aq_pool_jobs_waiting": 0.0,
            "aq_pool_entities_with_work": 0.0,
            "aq_pool_oldest_waiting_seconds": 0.0,
            "aq_pool_dead_letters": 0.0,
            "aq_pool_entities_paused": 0.0,
            "aq_pool_entities_rate_limited": 0.0,
        }
        wait_until(lambda: _scraped(port) == expected, 20, "the first pass's gauges")
        asyncio.run(_enqueue(redis_url))
        wait_until(
            lambda: _scraped(port) == {**expected, "aq_pool_dead_letters": 1.0},
            30,
            f"the dead letter on /metrics: {(tmp_path / 'up.log').read_text()}",
        )
    finally:
        proc.terminate()
        proc.wait(30)


def _scraped(port: int) -> dict[str, float] | None:
    try:
        return scrape(port)
    except OSError:
        return None  # not serving yet


async def _enqueue(redis_url: str) -> None:
    async with await Client.connect(Settings(redis_url=redis_url)) as client:
        await client.enqueue("acct", "x<'\">", "boom", 1, attempts=1)
