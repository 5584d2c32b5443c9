"""Shared pytest fixtures: a real, empty Redis (and Redis Cluster) for each test that asks.

Why: atomicqueues is tested against real Redis only. The suite starts its own redis-servers on
free ports (see redis_servers.py), once per session and only when a test needs them; every test
then gets a flushed database. Set AQ_TEST_REDIS_URL to use a Redis you run yourself instead for
`redis_url` (it is FLUSHALLed before each test, so never point it at data you care about).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from atomicqueues import Client, Settings, watchdog
from container_engine import REPO_ROOT, Engine, EngineMissing, Images, build_images
from go_tools import SKIPPED, skip_or_fail
from helpers import Connect
from redis_servers import RedisCluster, RedisServer

CLUSTER_FIXTURES = {"redis_cluster", "cluster_url"}
CONTAINER_TIER = "CONTAINER TIER (tier 5)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the cluster are marked `cluster` even where the marker was forgotten,
    # so `-m "not cluster"` always skips starting it.
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for message in SKIPPED:  # a tier that could not run, said once more at the very end
        terminalreporter.write_sep("!", message, red=True, bold=True)


@pytest.fixture(autouse=True)
def watchdog_overruns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A worker run in the test's own process must never end pytest: its watchdog's overruns
    (a job still running past its lease) are recorded instead, and fail the test unless the
    test takes them out of this list."""
    overruns: list[str] = []
    monkeypatch.setattr(watchdog, "end_process", overruns.append)
    yield overruns
    assert not overruns, f"a worker's watchdog would have ended the process: {overruns}"


def flushall(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushall()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of our own for the whole session (started even with AQ_TEST_REDIS_URL:
    ask for it only to control the process; for plain Redis access use `redis_url`)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """URL of an empty standalone Redis: AQ_TEST_REDIS_URL, else the session's redis_server."""
    url = os.environ.get("AQ_TEST_REDIS_URL")
    if not url:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
    flushall(url)
    return url


@pytest.fixture
def client_settings(redis_url: str) -> Settings:
    """The settings of `client` and `connect`: the test's empty Redis, and the defaults. A test
    folder or module that needs others (short heartbeats, a prefix, the Cluster) overrides
    this fixture; `client` itself is defined here only."""
    return Settings(redis_url=redis_url)


@pytest.fixture
async def connect(client_settings: Settings) -> AsyncIterator[Connect]:
    """Make clients with `client_settings`, any of them changed (`await connect(ttl=...)`);
    every one is closed after the test."""
    made: list[Client] = []

    async def make(**changes: Any) -> Client:
        c = await Client.connect(replace(client_settings, **changes))
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


@pytest.fixture
async def client(connect: Connect) -> Client:
    """A client with `client_settings`, closed after the test."""
    return await connect()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster, started (about 2 s) by the first test that needs it."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """URL of the first node of the (emptied) cluster, for RedisCluster.from_url()."""
    for url in redis_cluster.urls:
        flushall(url)
    return redis_cluster.url


@pytest.fixture(scope="session")
def images() -> Images:
    """The project's images, built (or found up to date) by scripts/build-images.sh once per
    session: about 1 s when up to date; from a clean cache where no registry is reachable 2-4
    minutes (podman installed, a stand-in base made). Where no container engine can be had,
    the tests that need one are skipped with a loud reason; with CI set, they fail instead."""
    try:
        return build_images()
    except EngineMissing as exc:
        reason = str(exc)
    skip_or_fail(CONTAINER_TIER, reason)  # outside the except: no exception chain in the report


@pytest.fixture(scope="session")
def engine(images: Images) -> Engine:
    """The engine, once a container of the worker image has run here."""
    found = Engine(images.engine)
    done = found("run", "--rm", "--network", "host", images.worker, "--help", check=False)
    if done.returncode != 0:
        skip_or_fail(CONTAINER_TIER, f"a container cannot run here: {done.stderr.strip()[-500:]}")
    return found


@pytest.fixture(scope="session")
def handler_image(engine: Engine, images: Images) -> str:
    """The worker image plus tests/runtime/handlers.py (tests/containers/Dockerfile), as a user
    builds theirs: the worker pods of the container tier and of the control-plane tier run it."""
    return engine.build(
        images.worker.replace("/worker:", "/test-handlers:"),
        REPO_ROOT / "tests" / "runtime",
        REPO_ROOT / "tests" / "containers" / "Dockerfile",
        BASE_IMAGE=images.worker,
    )
