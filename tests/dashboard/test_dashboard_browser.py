"""`aq dashboard` in a real browser, against a real Redis and real `aq worker` processes.

What a person relies on: every main page renders what Redis holds (the screenshots are kept),
search finds an entity among many, a dead letter requeued from the page runs, a page without
the token cannot act (and the server refuses a forged request), and user strings (entity ids,
job ids, errors) are shown as text, never run as markup, on every page and after live updates.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from atomicqueues import Client, JobNotFound, Locks, NewJob, SyncClient
from atomicqueues.config import Settings
from atomicqueues.pools import health
from dashboard.handlers import HEALED_KEY
from dashboard.pages import TOKEN, TYPE, Dashboard, run, save_screenshot
from helpers import wait_until
from runtime.workers import Workers

pytestmark = pytest.mark.browser

LONG_ID = ("<b>&amp;\"'" + "y" * 1000)[:1000]
HOSTILE_IDS = [
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror="window.__pwned=2">',
    "' onmouseover='window.__pwned=3' x='",
    "Ωmega 🚀 名前 — ünïcödé {tag}:%41",
    LONG_ID,
]


def sync_client(redis_url: str) -> SyncClient:
    return SyncClient(Settings(redis_url=redis_url))


def post(url: str, body: dict[str, Any], token: str | None) -> tuple[int, str]:
    """A request made outside any page (as a forger would), with or without the token."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())["message"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["message"]


def entity_url(dashboard: Dashboard, entity_id: str) -> str:
    from urllib.parse import quote

    return f"{dashboard.url}/types/{TYPE}/entity?id={quote(entity_id, safe='')}"


def job_url(dashboard: Dashboard, entity_id: str, job_id: str) -> str:
    from urllib.parse import quote

    return (
        f"{dashboard.url}/types/{TYPE}/job?entity={quote(entity_id, safe='')}"
        f"&id={quote(job_id, safe='')}"
    )


def unlock(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#unlock button")


def make_dead(client: SyncClient, entity_id: str, why: str = "test", **options: Any) -> str:
    """A job of `entity_id` that a running worker dead-letters (flaky, one attempt)."""
    job_id = client.enqueue(TYPE, entity_id, "flaky", {"why": why}, attempts=1, **options)
    wait_until(lambda: client.job(job_id).state == "dead", 30, f"job {job_id} to be dead-lettered")
    return job_id


def test_every_main_page_renders_what_redis_holds(
    redis_url: str, workers: Workers, start_dashboard: Callable[..., Dashboard], page: Any
) -> None:
    bound = workers.start("alice")
    packed = workers.start(slots=2, node="node-2")
    client = sync_client(redis_url)
    try:
        # alice's queue in every state: one completed (kept), one dead, one running, two
        # waiting behind it and one delayed; bob has work too.
        answered = client.enqueue(TYPE, "alice", "answer", {"n": 7}, keep_completed=3600)
        assert client.result(answered, timeout=30) == {"echo": {"n": 7}, "attempt": 1}
        dead = make_dead(client, "alice", why="card declined")
        running = client.enqueue(TYPE, "alice", "sleep", {"seconds": 60})
        waiting = [client.enqueue(TYPE, "alice", "sleep", {"seconds": 0}) for _ in range(2)]
        delayed = client.enqueue(TYPE, "alice", "sleep", {"seconds": 0}, delay=600)
        client.enqueue(TYPE, "bob", "sleep", {"seconds": 60})
        wait_until(lambda: client.job(running).state == "active", 30, "alice's job to start")
    finally:
        client.close()

    async def take_lock(c: Client) -> int:
        result = await Locks(c).acquire("printer", "printer-1", "alice", TYPE, 300)
        assert result.lock is not None
        return result.lock.token

    lock_token = run(take_lock, redis_url)

    async def announce_pool(c: Client) -> None:  # as the operator and `aq up` do every pass
        info = health.PoolInfo("prod", "accounts", TYPE, 3, 2, time.time())
        await health.announce(c, info, resync_seconds=5)

    run(announce_pool, redis_url)
    dashboard = start_dashboard()

    page.goto(dashboard.url + "/")
    row = page.locator("tr", has=page.locator(f'a[href="/types/{TYPE}"]'))
    cells = row.locator("td").all_inner_texts()
    # type, with work, claimable, waiting, delayed, active, retrying, completed, dead, ...
    assert cells[0] == TYPE
    assert cells[1] == "2", cells  # alice and bob have work
    assert cells[8] == "1", cells  # alice's dead job
    assert cells[10] == "2", cells  # two workers registered for the type
    assert page.locator("#pools td").all_inner_texts()[:4] == ["prod/accounts", TYPE, "3", "2"]
    save_screenshot(page, "overview")

    page.click(f'a[href="/types/{TYPE}"]')
    assert page.locator("table.entities a").all_inner_texts() == ["alice", "bob"]
    assert dead in page.inner_text("main")  # the type's dead letters
    save_screenshot(page, "entity-type")

    page.goto(entity_url(dashboard, "alice"))
    active = page.inner_text("table.jobs-active")
    ((holder, token),) = workers.holders("alice").items()  # the bound or the packed worker
    assert holder in active
    assert running in active
    assert re.search(rf"\b{token}\b", active), f"lease token {token} not shown"
    waiting_table = page.inner_text("table.jobs-waiting")
    assert all(job_id in waiting_table for job_id in waiting)
    assert delayed in page.inner_text("table.jobs-delayed")
    assert answered in page.inner_text("table.jobs-completed")
    assert "card declined" in page.inner_text("table.jobs-dead")
    save_screenshot(page, "entity")

    page.goto(job_url(dashboard, "alice", running))
    assert page.inner_text("#job-state") == "active"
    assert '"seconds": 60' in page.inner_text("#job-payload")
    assert holder in page.inner_text("main")
    save_screenshot(page, "job")

    page.goto(job_url(dashboard, "alice", answered))
    assert page.inner_text("#job-state") == "completed"
    assert json.loads(page.inner_text("#job-result")) == {"echo": {"n": 7}, "attempt": 1}
    page.goto(job_url(dashboard, "alice", dead))
    error = page.inner_text("#job-error").splitlines()
    assert error[0] == "RuntimeError: flaky failed as asked: card declined"
    assert error[1] == "Traceback (most recent call last):"  # the failure's traceback, kept

    page.goto(dashboard.url + "/workers")
    text = page.inner_text("main")
    for worker in (bound, packed):
        assert worker.name in text
        assert str(worker.pid) in text
    assert "node-2" in text
    assert "packed, 2 slot(s)" in text
    save_screenshot(page, "workers")

    page.goto(dashboard.url + "/locks")
    text = page.inner_text("main")
    assert "printer-1" in text
    assert re.search(rf"\b{lock_token}\b", text)
    save_screenshot(page, "locks")

    # Unlocked, the entity's page offers its actions (the README shows this screenshot).
    page.goto(entity_url(dashboard, "alice"))
    unlock(page, TOKEN)
    expect(page.locator("#flash")).to_have_text("actions unlocked")
    buttons = page.locator("button.act:visible").all_inner_texts()
    # close the worker; cancel the active, waiting and delayed jobs; requeue/purge the dead
    expected = ["Close", *["Cancel"] * 4, "Requeue all", "Purge all", "Requeue", "Purge"]
    expected += ["Pause entity", "Resume entity"]
    assert sorted(buttons) == sorted(expected)
    save_screenshot(page, "entity-unlocked")


def test_search_finds_an_entity_among_many_and_pages_go_on(
    redis_url: str, start_dashboard: Callable[..., Dashboard], page: Any
) -> None:
    client = sync_client(redis_url)
    try:
        client.enqueue_many(NewJob(TYPE, f"customer-{i}", "sleep") for i in range(300))
    finally:
        client.close()
    dashboard = start_dashboard()
    page.goto(f"{dashboard.url}/types/{TYPE}")
    assert "entities 1–50 of 300" in page.inner_text(".pager")
    first = set(page.locator("table.entities a").all_inner_texts())
    page.click("#next")
    assert "entities 51–100 of 300" in page.inner_text(".pager")
    second = set(page.locator("table.entities a").all_inner_texts())
    assert len(first) == len(second) == 50
    assert not first & second

    page.fill("input[name=q]", "customer-4")
    page.press("input[name=q]", "Enter")
    page.wait_for_url(re.compile(r"q=customer-4$"))
    found = page.locator("table.entities a").all_inner_texts()
    # customer-4 first (the exact id), then customer-40 .. customer-49
    assert found[0] == "customer-4"
    assert sorted(found[1:]) == [f"customer-4{d}" for d in range(10)]
    page.click("table.entities a >> nth=0")
    assert page.inner_text("#entity-id") == "customer-4"

    page.goto(f"{dashboard.url}/types/{TYPE}?q=no-such-entity")
    assert "No entity with work has an id containing that." in page.inner_text("main")


def test_a_dead_letter_requeued_from_the_page_runs(
    redis_url: str, workers: Workers, start_dashboard: Callable[..., Dashboard], page: Any
) -> None:
    worker = workers.start(slots=1)
    client = sync_client(redis_url)
    try:
        dead = make_dead(client, "erin", keep_completed=3600)
        delayed = client.enqueue(TYPE, "erin", "sleep", {"seconds": 0}, delay=600)
        workers.redis.set(HEALED_KEY, 1)
        dashboard = start_dashboard()
        page.goto(entity_url(dashboard, "erin"))
        assert page.locator("button.act:visible").count() == 0  # locked until the token is given
        unlock(page, TOKEN)
        expect(page.locator("#flash.ok")).to_have_text("actions unlocked")

        page.accept_dialogs = True
        page.locator("table.jobs-dead button", has_text="Requeue").click()
        expect(page.locator("#flash")).to_have_text("1 dead job(s) requeued")
        assert page.dialogs == [f"Requeue dead job {dead}?"]
        # The page updates itself: the job shows up completed without a reload.
        page.locator("table.jobs-completed", has_text=dead).wait_for()
        job = client.job(dead)
        assert job.state == "completed"
        assert job.attempt == 1
        save_screenshot(page, "entity-after-requeue")

        page.goto(job_url(dashboard, "erin", delayed))
        page.locator("button.act", has_text="Cancel job").click()
        expect(page.locator("#flash")).to_have_text("job cancelled")
        with pytest.raises(JobNotFound):
            client.job(delayed)

        page.goto(dashboard.url + "/workers")
        page.locator("tr", has_text=worker.name).locator("button", has_text="Close").click()
        assert worker.wait(30) == 0
        assert page.dialogs[-1].startswith(f"Ask worker {worker.name} to close?")
    finally:
        client.close()


def test_a_page_without_the_token_cannot_act(
    redis_url: str, workers: Workers, start_dashboard: Callable[..., Dashboard], page: Any
) -> None:
    workers.start(slots=1)
    client = sync_client(redis_url)
    try:
        dead = make_dead(client, "frank")
        dashboard = start_dashboard()
        page.goto(entity_url(dashboard, "frank"))
        assert page.locator("table.jobs-dead button.act").count() == 2  # there, but hidden
        assert page.locator("button.act:visible").count() == 0

        unlock(page, "not-the-token")
        expect(page.locator("#flash.bad")).to_have_text("the token is missing or wrong")
        assert page.locator("button.act:visible").count() == 0

        forged = """async ([auth]) => {
            const headers = {"Content-Type": "application/json"};
            if (auth) headers["Authorization"] = auth;
            const r = await fetch("/api/dlq-requeue", {method: "POST", headers,
                body: JSON.stringify({type: "user", entity: "frank"})});
            return r.status;
        }"""
        assert page.evaluate(forged, [None]) == 403
        assert page.evaluate(forged, ["Bearer wrong"]) == 403
        body = {"type": TYPE, "entity": "frank"}
        assert post(f"{dashboard.url}/api/dlq-requeue", body, None) == (
            403,
            "the token is missing or wrong",
        )
        assert post(f"{dashboard.url}/api/dlq-purge", body, "wrong")[0] == 403
        assert client.job(dead).state == "dead"

        readonly = start_dashboard(token=None)
        page.goto(entity_url(readonly, "frank"))
        assert page.inner_text("#auth") == "read-only"
        assert page.locator("button.act:visible").count() == 0
        status, message = post(f"{readonly.url}/api/dlq-purge", body, TOKEN)
        assert status == 403
        assert "read-only" in message
        assert client.job(dead).state == "dead"

        # The same request with the token does act: the refusals above were the token's doing.
        assert post(f"{dashboard.url}/api/dlq-purge", body, TOKEN) == (200, "1 dead job(s) purged")
        with pytest.raises(JobNotFound):
            client.job(dead)
    finally:
        client.close()


def _assert_inert(page: Any) -> None:
    """Nothing of a user's string ran or became markup: our one script, no other elements made
    from the ids, no dialog, no flag set, and no id wider than the window."""
    assert page.evaluate("window.__pwned") is None
    assert page.locator("script").count() == 1
    assert page.locator("img, b").count() == 0
    assert page.dialogs == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def test_hostile_ids_are_shown_as_text_everywhere(
    redis_url: str, workers: Workers, start_dashboard: Callable[..., Dashboard], page: Any
) -> None:
    hostile_job = "<script>window.__pwned=4</script>"
    bound = workers.start(HOSTILE_IDS[0])
    client = sync_client(redis_url)
    try:
        # The first id: a dead letter with markup in its error, then a job running (its worker
        # bound to the id); every other id: jobs waiting (no worker serves them).
        make_dead(client, HOSTILE_IDS[0], why="<b>boom</b>")
        for entity_id in HOSTILE_IDS:
            client.enqueue(TYPE, entity_id, "sleep", {"seconds": 60}, job_id=hostile_job)
            client.enqueue(TYPE, entity_id, "sleep", {"<i>": "</pre><b>x</b>"})
        wait_until(
            lambda: workers.holders(HOSTILE_IDS[0]), 30, "the bound worker to take its entity"
        )
    finally:
        client.close()

    async def take_lock(c: Client) -> None:
        assert (await Locks(c).acquire("printer", HOSTILE_IDS[2], HOSTILE_IDS[0], TYPE, 300)).lock

    run(take_lock, redis_url)
    dashboard = start_dashboard()

    page.goto(f"{dashboard.url}/types/{TYPE}")
    _assert_inert(page)
    links = page.locator("table.entities a")
    assert sorted(links.all_inner_texts()) == sorted(HOSTILE_IDS)
    assert sorted(a.get_attribute("title") for a in links.all()) == sorted(HOSTILE_IDS)
    save_screenshot(page, "hostile-type")

    for entity_id in HOSTILE_IDS:
        page.goto(entity_url(dashboard, entity_id))
        _assert_inert(page)
        assert page.inner_text("#entity-id") == entity_id
        assert page.locator("#live a", has_text=hostile_job).count() == 1
        page.goto(job_url(dashboard, entity_id, hostile_job))
        _assert_inert(page)
        assert page.inner_text("#job-id") == hostile_job
    page.goto(entity_url(dashboard, LONG_ID))
    save_screenshot(page, "hostile-long-id")

    # A following of the links the page made lands on the same entity (ids survive URLs).
    page.goto(f"{dashboard.url}/types/{TYPE}")
    page.locator("table.entities a", has_text="Ωmega").click()
    assert page.inner_text("#entity-id") == HOSTILE_IDS[3]

    for path in ("/workers", "/locks", "/"):
        page.goto(dashboard.url + path)
        _assert_inert(page)
    page.goto(dashboard.url + "/workers")
    assert HOSTILE_IDS[0] in page.inner_text("main")
    assert bound.name in page.inner_text("main")
    page.goto(dashboard.url + "/locks")
    assert HOSTILE_IDS[2] in page.inner_text("main")

    page.goto(f"{dashboard.url}/types/{TYPE}")
    page.fill("input[name=q]", "<script>")
    page.press("input[name=q]", "Enter")
    page.wait_for_url(re.compile(r"q=%3Cscript%3E"))
    assert page.locator("table.entities a").all_inner_texts() == [HOSTILE_IDS[0]]
    assert page.input_value("input[name=q]") == "<script>"
    # Live updates put in the server's (escaped) fragment again and again: still inert.
    page.wait_for_timeout(1500)
    _assert_inert(page)
    assert page.locator("table.entities a").all_inner_texts() == [HOSTILE_IDS[0]]


def test_an_entity_paused_from_the_page_runs_nothing_until_resumed(
    redis_url: str, workers: Workers, start_dashboard: Callable[..., Dashboard], page: Any
) -> None:
    workers.start(slots=1)
    client = sync_client(redis_url)
    try:
        first = client.enqueue(TYPE, "gina", "answer", {"n": 1}, keep_completed=3600)
        assert client.result(first, timeout=30) == {"echo": {"n": 1}, "attempt": 1}
        dashboard = start_dashboard()
        page.goto(entity_url(dashboard, "gina"))
        unlock(page, TOKEN)
        expect(page.locator("#flash")).to_have_text("actions unlocked")
        page.accept_dialogs = True
        page.locator("button.act", has_text="Pause entity").click()
        expect(page.locator("#flash")).to_have_text("paused")
        expect(page.locator("#entity-paused")).to_have_text("paused")
        held = client.enqueue(TYPE, "gina", "answer", {"n": 2}, keep_completed=3600)
        page.wait_for_timeout(2000)  # a worker is up and idle: a claimable job would have run
        assert client.job(held).state != "completed"
        page.locator("button.act", has_text="Resume entity").click()
        expect(page.locator("#flash")).to_have_text("resumed")
        assert client.result(held, timeout=30) == {"echo": {"n": 2}, "attempt": 1}
        assert page.dialogs == ["Pause entity gina?", "Resume entity gina?"]
    finally:
        client.close()
