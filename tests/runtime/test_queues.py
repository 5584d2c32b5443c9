"""`Queues`: the index page by page, search by id, and one entity's queue, for people.

Why: the dashboard leans on these reads staying cheap with many entities (a page reads a few
entries of each bucket, never the whole index) and on them being right: every entity exactly
once across the pages, in the order they are served, ids with glob characters found literally.
"""

from __future__ import annotations

import time

import pytest

from atomicqueues import Client, NewJob, Settings
from atomicqueues.index_reads import IndexReads
from atomicqueues.queues import Queues
from helpers import wait_until
from runtime.workers import Workers

T = "acct"


@pytest.fixture
def queues(client: Client) -> Queues:
    return Queues(client)


async def _net_out(client: Client) -> int:
    info = await client.call(lambda: client.redis.info("stats"))
    return int(info["total_net_output_bytes"])


async def test_pages_list_every_entity_once_oldest_first(client: Client, queues: Queues) -> None:
    expected: list[str] = []
    for batch in range(3):  # three enqueue times, so "since" differs between batches
        ids = [f"e{batch}-{i}" for i in range(40)]
        await client.enqueue_many(NewJob(T, e, "record") for e in ids)
        expected += ids
        time.sleep(0.01)
    seen: list[str] = []
    sinces: list[float] = []
    cursor = None
    starts = []
    while True:
        page = await queues.entities_page(T, cursor, limit=7)
        assert page.total == 120
        starts.append(page.start)
        seen += [row.entity_id for row in page.rows]
        sinces += [row.since for row in page.rows]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(expected)  # each once
    assert sinces == sorted(sinces)
    assert starts == list(range(0, 120, 7))
    # the batches come in the order they got work
    assert [e.split("-")[0] for e in seen] == [e.split("-")[0] for e in expected]
    row = (await queues.entities_page(T, limit=1)).rows[0]
    assert (row.waiting, row.concurrency, row.claimable, row.dead) == (1, 1, True, 0)


async def test_a_cursor_that_is_not_one_starts_at_the_beginning(
    client: Client, queues: Queues
) -> None:
    await client.enqueue(T, "only", "record")
    for cursor in ("", "1.2.3", "x" * 40, ".".join(["99999999999"] * 32)):
        page = await queues.entities_page(T, cursor)
        assert [r.entity_id for r in page.rows] == ["only"]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        pytest.param("*", ["a*b"], id="star"),
        pytest.param("?", ["a?c"], id="question-mark"),
        pytest.param("[1]", ["x[1]"], id="brackets"),
        pytest.param("\\", ["back\\slash"], id="backslash"),
        pytest.param("%q{r}:", ["p%q{r}:s"], id="key-characters"),
        pytest.param("user-1", ["user-1", "user-10", "user-11"], id="exact-first"),
        pytest.param("<script>", ["<script>alert(1)</script>"], id="markup"),
        pytest.param("名", ["名前"], id="unicode"),
        pytest.param("nobody", [], id="none"),
    ],
)
async def test_search_finds_ids_containing_the_text_literally(
    client: Client, queues: Queues, text: str, found: list[str]
) -> None:
    ids = ["a*b", "a?c", "x[1]", "back\\slash", "p%q{r}:s", "user-11", "user-10", "user-1"]
    ids += ["<script>alert(1)</script>", "名前", "plain"]
    await client.enqueue_many(NewJob(T, e, "record") for e in ids)
    rows = await queues.search(T, text)
    assert [r.entity_id for r in rows][:1] == found[:1]  # the exact id first
    assert sorted(r.entity_id for r in rows) == sorted(found)


async def test_an_entity_queue_shows_its_running_job_with_worker_and_token(
    client: Client, queues: Queues, workers: Workers
) -> None:
    worker = workers.start("e1")
    running = await client.enqueue(T, "e1", "record", {"seq": 0, "sleep": 30})
    waiting = [await client.enqueue(T, "e1", "record", {"seq": k}) for k in (1, 2)]
    delayed = await client.enqueue(T, "e1", "record", {"seq": 3}, delay=300)
    wait_until(lambda: workers.job("e1", running).state == "active", 30, "the job to start")
    queue = await queues.entity(T, "e1")
    ((holder, token),) = workers.holders("e1").items()
    (active,) = queue.active
    assert (active.job.id, active.worker, active.token) == (running, worker.name, int(token))
    assert active.worker == holder
    assert active.lease_expires > time.time() - 5
    assert [j.id for j in queue.waiting] == waiting
    assert [j.id for j in queue.delayed] == [delayed]
    assert queue.due[delayed] > time.time() + 200
    assert queue.counts == {
        "waiting": 2,
        "delayed": 1,
        "active": 1,
        "retrying": 0,
        "completed": 0,
        "dead": 0,
    }
    assert queue.holders == [(worker.name, int(token), active.lease_expires)]
    nobody = await queues.entity(T, "never-used")
    assert not nobody.exists
    assert nobody.waiting == nobody.active == []


async def test_reads_of_ten_thousand_entities_never_load_the_index(redis_url: str) -> None:
    client = await Client.connect(Settings(redis_url=redis_url))
    try:
        queues = Queues(client)
        ids = [f"tenant-{i:05d}" for i in range(10_000)]
        await client.enqueue_many(NewJob(T, e, "record") for e in ids)
        summary = await queues.summary(T)
        assert (summary.with_work, summary.waiting_entities) == (10_000, 10_000)

        before = await _net_out(client)
        began = time.perf_counter()
        page = await queues.entities_page(T, limit=50)
        page_seconds = time.perf_counter() - began
        page_bytes = await _net_out(client) - before
        assert len(page.rows) == 50
        assert page.total == 10_000

        before = await _net_out(client)
        await IndexReads(client).work_index(T)
        whole_bytes = await _net_out(client) - before
        # A page reads at most 50 entries of each of 32 buckets and 4 facts of 50 entities.
        assert page_bytes < whole_bytes / 5, (page_bytes, whole_bytes)

        began = time.perf_counter()
        rows = await queues.search(T, "tenant-04242")
        search_seconds = time.perf_counter() - began
        assert [r.entity_id for r in rows] == ["tenant-04242"]
        print(
            f"10,000 entities: a page of 50 in {page_seconds * 1000:.1f} ms ({page_bytes} bytes"
            f" from Redis; the whole index {whole_bytes}), a search in"
            f" {search_seconds * 1000:.1f} ms"
        )
    finally:
        await client.close()


async def test_dead_letters_are_read_a_few_entities_at_a_time(
    client: Client, queues: Queues, workers: Workers
) -> None:
    workers.handlers = "tests.dashboard.handlers:registry"  # its `flaky` always fails here
    workers.start(slots=4)
    ids = [f"d{i}" for i in range(30)]
    jobs = [
        NewJob(T, e, "flaky", {"why": k}, attempts=1, job_id=f"{e}-{k}")
        for e in ids
        for k in (1, 2)
    ]
    await client.enqueue_many(jobs)
    wait_until(lambda: workers.counts().get("dead") == 60, 60, "60 dead letters")
    every = await queues.dead_letters(T, limit=100)
    assert sorted(j.id for j in every) == sorted(j.job_id or "" for j in jobs)
    assert {j.state for j in every} == {"dead"}
    assert {j.error_line for j in every} == {
        f"RuntimeError: flaky failed as asked: {k}" for k in (1, 2)
    }
    few = await queues.dead_letters(T, limit=5)
    assert len(few) == 5
    first = few[0].entity_id
    assert [j.id for j in few[:2]] == [f"{first}-1", f"{first}-2"]  # oldest first per entity
