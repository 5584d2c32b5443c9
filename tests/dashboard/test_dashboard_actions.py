"""The dashboard's action endpoint without a browser: what it refuses, and pause/resume wiring.

Why: a forged or malformed request must be refused with a clear answer and change nothing, and
pause/resume must appear exactly when the client has them (`Client.pause(entity_type,
entity_id=None)` / `Client.resume(...)`, added to the client separately): until then the page
offers neither and the server knows no such action. The server here runs in the test's process
(aiohttp's test server) against the real Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from atomicqueues import Client, Settings
from atomicqueues.dashboard.app import Config, Dashboard

TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def http(redis_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    client = await Client.connect(Settings(redis_url=redis_url))
    await client.enqueue("user", "alice", "send")
    try:
        async with TestClient(TestServer(Dashboard(client, Config(TOKEN)).app())) as found:
            yield found
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        pytest.param("/api/nothing", {}, 404, "no action 'nothing'", id="unknown-action"),
        pytest.param("/api/cancel", "[1, 2]", 400, "JSON object of strings", id="not-an-object"),
        pytest.param("/api/cancel", "{", 400, "JSON object of strings", id="not-json"),
        pytest.param("/api/cancel", {"type": 3}, 400, "JSON object of strings", id="number"),
        pytest.param("/api/cancel", {"type": "user"}, 400, "needs 'entity'", id="no-entity"),
        pytest.param("/api/dlq-purge", {"type": "a b"}, 400, "invalid entity type", id="bad-type"),
        pytest.param("/api/close-worker", {"name": "w"}, 200, "no such worker", id="no-worker"),
    ],
)
async def test_a_malformed_action_is_refused_in_one_line(
    http: TestClient[Any, Any], path: str, body: Any, status: int, message: str
) -> None:
    data = body if isinstance(body, str) else None
    response = await http.post(path, data=data, json=None if data else body, headers=AUTH)
    answer = await response.json()
    assert response.status == status, answer
    assert message in answer["message"]
    assert answer["ok"] is (status == 200)
