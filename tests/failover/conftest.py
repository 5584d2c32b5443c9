"""Fixtures of the failover tests: a Sentinel group, a store for the runs, worker processes.

Each test gets a fresh deployment (its failovers change who is primary); the store that the
handlers write their runs to is the session's plain redis-server, which no test kills here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from failover.load import Fleet
from redis_servers import SentinelGroup


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    """A primary, one replica and three sentinels (primary called down after 1 s)."""
    with SentinelGroup() as group:
        yield group


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    """The (emptied) Redis the handlers record their runs in."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def make_fleet(url: str, store_url: str, log_dir: Path, **settings: str | float) -> Fleet:
    return Fleet(url, store_url, log_dir, dict(settings))
