"""The dashboard's reads (`Queues`) and pages on a real 3-master Redis Cluster.

Why: a page reads the buckets of a type in one pipeline and scans them with ZSCAN and HSCAN;
the buckets live on every master, so these reads are only proven where they are spread.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from atomicqueues import Client, Settings
from atomicqueues.dashboard.app import Config, Dashboard
from atomicqueues.leases import Leases, Started
from atomicqueues.queues import Queues

pytestmark = pytest.mark.cluster

ENTITIES = [f"tenant-{i}" for i in range(40)] + ["a:b{c}", "üñí 😀", "x" * 1000]


async def test_pages_search_and_queues_read_across_the_masters(cluster_url: str) -> None:
    client = await Client.connect(Settings(redis_url=cluster_url))
    try:
        for e in ENTITIES:
            for n in range(3):
                await client.enqueue("user", e, "send", {"n": n})
        leases = Leases(client, "w1")
        started = await leases.claim("user", "a:b{c}", None)
        assert isinstance(started, Started)
        running = await leases.finish(started, "dead", "boom")
        assert isinstance(running, Started)  # the next job of a:b{c} runs under w1's lease

        queues = Queues(client)
        summary = await queues.summary("user")
        assert (summary.with_work, summary.dead_entities) == (len(ENTITIES), 1)
        seen, cursor = [], None
        while True:
            page = await queues.entities_page("user", cursor, limit=10)
            seen += [row.entity_id for row in page.rows]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert sorted(seen) == sorted(ENTITIES)
        assert [r.entity_id for r in await queues.search("user", "{c}")] == ["a:b{c}"]
        assert [r.entity_id for r in await queues.search("user", "😀")] == ["üñí 😀"]
        queue = await queues.entity("user", "a:b{c}")
        (active,) = queue.active
        assert (active.worker, active.token) == ("w1", running.lease.fencing_token)
        assert [j.error for j in queue.dead] == ["boom"]
        assert [j.entity_id for j in await queues.dead_letters("user")] == ["a:b{c}"]

        app = Dashboard(client, Config(None)).app()
        async with TestClient(TestServer(app)) as http:
            for path, params in [
                ("/", {}),
                ("/types/user", {}),
                ("/types/user", {"q": "tenant-1"}),
                ("/types/user/entity", {"id": "a:b{c}"}),
                ("/workers", {}),
                ("/locks", {}),
            ]:
                response: Any = await http.get(path, params=params)
                assert response.status == 200, (path, await response.text())
    finally:
        await client.close()
