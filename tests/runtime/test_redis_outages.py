"""Workers across Redis outages: the pub/sub listener comes back, an idle worker leaves cleanly.

Why: an outage used to end the worker's pub/sub listener for good ("close listener stopped"
once, then silence): close signals waited for the heartbeat and packed workers on Cluster lost
their work wake-ups. And an entity-bound worker that reached its idle timeout during an outage
exited with code 1. Each test here runs a redis-server of its own and kills it (SIGKILL) under
real `aq worker` processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import wait_until
from redis_servers import RedisServer
from runtime.workers import Workers

pytestmark = pytest.mark.slow


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as own:
        yield own


def subscribers(workers: Workers, channel: str) -> int:
    try:
        return int(dict(workers.redis.pubsub_numsub(channel)).get(channel, 0))
    except Exception:  # the server is down or starting
        return 0


def test_the_listener_subscribes_again_after_every_outage(
    server: RedisServer, tmp_path: Path
) -> None:
    workers = Workers(server.url, tmp_path, ttl=30.0, interval=10.0)
    try:
        w = workers.start("e1", name="target")
        channel = workers.keys.close_channel()
        for _ in range(3):
            wait_until(lambda: subscribers(workers, channel) >= 1, 30, "the worker to subscribe")
            server.kill()
            time.sleep(2.0)  # longer than redis-py's own reconnection attempts
            server.start()
        wait_until(lambda: subscribers(workers, channel) >= 1, 30, "the worker to subscribe")
        # Published only (no signal key): only the listener can see it.
        workers.redis.publish(channel, json.dumps({"worker": "target"}))
        assert w.wait(30) == 0, w.describe()
        assert "close signal" in w.output(), w.describe()
        assert "subscribing again" in w.output(), w.describe()
    finally:
        workers.close()


def test_an_idle_worker_whose_redis_is_down_exits_zero_and_leaves_its_lease_to_expire(
    server: RedisServer, tmp_path: Path
) -> None:
    workers = Workers(server.url, tmp_path)
    try:
        w = workers.start("e1", idle_timeout=1.5)
        server.kill()
        assert w.wait(30) == 0, w.describe()
        assert "Redis unreachable: the lease expires" in w.output(), w.describe()
    finally:
        workers.close()
