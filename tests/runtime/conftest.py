"""Fixtures of the tests with real worker processes (test_faults.py, test_lifecycle.py).

Modules that need a client with other settings define their own `client`, which takes
precedence over this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from atomicqueues import Settings
from runtime.workers import INTERVAL, TTL, Workers

T = "acct"


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Starts `aq worker` processes for entity type `acct`; kills what is left at the end."""
    pool = Workers(redis_url, tmp_path, entity_type=T)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def client_settings(redis_url: str) -> Settings:
    """Clients with the workers' short heartbeat (TTL 1 s, interval 0.25 s)."""
    return Settings(redis_url=redis_url, heartbeat_ttl=TTL, heartbeat_interval=INTERVAL)
