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
from atomicqueues.dashboard.app import Config, Dashboard, can_pause

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


async def test_pause_and_resume_appear_only_when_the_client_has_them(
    http: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    if can_pause():  # the client has them for real now: nothing to stand in for
        pytest.skip("Client.pause and Client.resume exist: the browser tests cover them")
    page = await (await http.get("/types/user/entity", params={"id": "alice"})).text()
    assert 'data-action="pause"' not in page
    response = await http.post("/api/pause", json={"type": "user"}, headers=AUTH)
    assert response.status == 404

    calls: list[tuple[str, str, str | None]] = []

    async def pause(self: Client, entity_type: str, entity_id: str | None = None) -> None:
        calls.append(("pause", entity_type, entity_id))

    async def resume(self: Client, entity_type: str, entity_id: str | None = None) -> None:
        calls.append(("resume", entity_type, entity_id))

    # Stand-ins with the agreed signatures, for the wiring only.
    monkeypatch.setattr(Client, "pause", pause, raising=False)
    monkeypatch.setattr(Client, "resume", resume, raising=False)
    page = await (await http.get("/types/user/entity", params={"id": "alice"})).text()
    assert page.count('data-action="pause"') == page.count('data-action="resume"') == 1
    page = await (await http.get("/types/user")).text()
    assert 'data-action="pause" data-confirm="Pause every entity of type user?"' in page
    for action, body in [
        ("pause", {"type": "user", "entity": "alice"}),
        ("resume", {"type": "user", "entity": "alice"}),
        ("pause", {"type": "user"}),
    ]:
        response = await http.post(f"/api/{action}", json=body, headers=AUTH)
        assert response.status == 200, await response.text()
    refused = await http.post("/api/resume", json={"type": "user"})
    assert refused.status == 403
    assert calls == [
        ("pause", "user", "alice"),
        ("resume", "user", "alice"),
        ("pause", "user", None),
    ]
