"""`Client.enqueue_many`, `SyncClient.enqueue_many` and `aq enqueue --from FILE.jsonl`.

Why: enqueueing many jobs in one go must keep every promise of `enqueue` — ids in the order
given, FIFO per entity (also across the script calls a large batch is split into), idempotent
per job id — and add nothing at all when one job of the batch is bad. The command line checks
every line before it sends any, and says which line is wrong in one line on stderr.

What is checked in Redis is the public API (`Client.job`, `counts`, `pending_entities`) and
each entity's wait queue (`...e:<id>:wait`, lua/include/keys.lua).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from atomicqueues import Client, InvalidInput, NewJob, PayloadTooLarge, Settings, SyncClient
from atomicqueues.client import ENQUEUE_BATCH
from atomicqueues.index_reads import IndexReads
from atomicqueues.keys import AUTO_JOB_ID_RE, bucket_of
from helpers import aq, assert_one_line_error

T = "user"


async def waiting(client: Client, entity_id: str, entity_type: str = T) -> list[str]:
    """The job slots in the entity's wait queue, first to start first."""
    key = client.keys.entity(entity_type, entity_id) + "wait"
    return [str(s) for s in await client.redis.zrange(key, 0, -1)]


def slots(client: Client, entity_id: str, job_ids: list[str], entity_type: str = T) -> list[str]:
    return [client.keys.job_slot(entity_type, entity_id, j) for j in job_ids]


async def state(client: Client, job_id: str, entity_id: str) -> str:
    return (await client.job(job_id, entity=(T, entity_id))).state


# --- Client.enqueue_many ----------------------------------------------------------------------
async def test_ids_in_order_and_each_entity_fifo(client: Client) -> None:
    entities = ["alice", "bob", "a:b{c}", "üñí 😀"]
    jobs = [
        NewJob(T, e, "send", {"e": e, "n": n}, job_id=f"{e}-{n}" if n % 2 else None)
        for n in range(6)
        for e in entities
    ]
    ids = await client.enqueue_many(jobs)
    assert len(ids) == len(jobs)
    for job, job_id in zip(jobs, ids, strict=True):
        if job.job_id is not None:
            assert job_id == job.job_id
        else:
            assert AUTO_JOB_ID_RE.fullmatch(job_id)
            assert job_id.startswith(f"{T}.{bucket_of(T, job.entity_id)}.")
    for e in entities:
        mine = [j for job, j in zip(jobs, ids, strict=True) if job.entity_id == e]
        assert await waiting(client, e) == slots(client, e, mine)
        record = await client.job(mine[3], entity=(T, e))
        assert (record.state, record.name, record.payload) == ("waiting", "send", {"e": e, "n": 3})
        assert record.entity_id == e
    assert await IndexReads(client).pending_entities(T) == dict.fromkeys(entities, 6)
    assert (await IndexReads(client).counts(T))["waiting"] == 6 * len(entities)
    assert await IndexReads(client).entity_types() == [T]


async def test_options_of_each_job_are_kept(client: Client) -> None:
    ids = await client.enqueue_many(
        [
            NewJob(T, "carol", "low", job_id="low-1"),
            NewJob(T, "carol", "high", job_id="high-1", priority=5, attempts=7),
            NewJob(T, "carol", "low", job_id="low-2"),
            NewJob(T, "carol", "high", job_id="high-2", priority=5, backoff={"type": "fixed"}),
        ]
    )
    assert ids == ["low-1", "high-1", "low-2", "high-2"]
    # Higher priority first, FIFO within a priority: as with enqueue.
    order = ["high-1", "high-2", "low-1", "low-2"]
    assert await waiting(client, "carol") == slots(client, "carol", order)
    high = await client.job("high-1", entity=(T, "carol"))
    assert (high.priority, high.max_attempts) == (5, 7)
    assert (await client.job("high-2", entity=(T, "carol"))).backoff.type == "fixed"
    assert (await client.job("low-1", entity=(T, "carol"))).max_attempts == 3  # the default


async def test_empty_batch_adds_nothing(client: Client) -> None:
    assert await client.enqueue_many([]) == []
    assert await client.redis.dbsize() == 0


async def test_idempotent_per_job_id(client: Client) -> None:
    first = [NewJob(T, "dave", "send", {"n": n}, job_id=f"j{n}") for n in range(3)]
    assert await client.enqueue_many(first) == ["j0", "j1", "j2"]
    assert await client.enqueue_many(first) == ["j0", "j1", "j2"]
    assert await waiting(client, "dave") == slots(client, "dave", ["j0", "j1", "j2"])

    # New and existing ids mixed, an id enqueued by enqueue, and one id twice in one batch.
    await client.enqueue(T, "dave", "send", {"n": 9}, job_id="single")
    mixed = ["j1", "j3", "j0", "single", "j4", "j3"]
    again = [NewJob(T, "dave", "send", {"n": 100}, job_id=j) for j in mixed]
    assert await client.enqueue_many(again) == mixed
    expected = ["j0", "j1", "j2", "single", "j3", "j4"]
    assert await waiting(client, "dave") == slots(client, "dave", expected)
    assert (await IndexReads(client).counts(T))["waiting"] == 6
    # A job already there is left as it was: its payload is the first one's.
    assert (await client.job("j1", entity=(T, "dave"))).payload == {"n": 1}
    assert (await client.job("single", entity=(T, "dave"))).payload == {"n": 9}
    # Job ids are unique per entity: the same id on another entity is another job.
    assert await client.enqueue_many([NewJob(T, "erin", "send", job_id="j0")]) == ["j0"]
    assert await waiting(client, "erin") == slots(client, "erin", ["j0"])


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        pytest.param(NewJob("us er", "x", "send"), "entity type", id="type"),
        pytest.param(NewJob(T, "", "send"), "entity id", id="empty-id"),
        pytest.param(NewJob(T, "y" * 5000, "send"), "entity id", id="huge-id"),
        pytest.param(NewJob(T, "x", ""), "job name", id="name"),
        pytest.param(NewJob(T, "x", "send", priority=5000), "priority", id="priority"),
        pytest.param(NewJob(T, "x", "send", delay=-1), "negative", id="delay"),
        pytest.param(NewJob(T, "x", "send", attempts=0), "attempts", id="attempts"),
        pytest.param(NewJob(T, "x", "send", job_id=""), "job id", id="empty-job-id"),
        pytest.param(
            NewJob(T, "x", "send", job_id=f"{T}.1.{'a' * 32}"), "reserved", id="reserved-id"
        ),
        pytest.param(NewJob(T, "x", "send", payload={1, 2}), "JSON", id="payload"),
        pytest.param(NewJob(T, "x", "send", backoff={"type": "nope"}), "backoff", id="backoff"),
    ],
)
async def test_one_bad_job_adds_nothing(client: Client, bad: NewJob, words: str) -> None:
    good = [NewJob(T, f"e{n}", "send", {"n": n}, job_id=f"j{n}") for n in range(10)]
    with pytest.raises(InvalidInput, match=words):
        await client.enqueue_many([*good[:5], bad, *good[5:]])
    assert await client.redis.dbsize() == 0


async def test_too_large_payload_adds_nothing(client: Client) -> None:
    jobs = [NewJob(T, "x", "send", n) for n in range(5)]
    jobs.insert(3, NewJob(T, "x", "send", "z" * (client.settings.max_payload_bytes + 1)))
    with pytest.raises(PayloadTooLarge):
        await client.enqueue_many(jobs)
    assert await client.redis.dbsize() == 0


async def test_more_than_one_batch_of_a_bucket_keeps_order(client: Client) -> None:
    # Two entities of one bucket share its script calls (ENQUEUE_BATCH jobs each).
    mates = [e for e in (f"tenant-{i}" for i in range(500)) if bucket_of(T, e) == 0][:2]
    assert len(mates) == 2
    n = 1200
    assert n > 2 * ENQUEUE_BATCH
    jobs = [NewJob(T, "solo", "send", {"i": i}) for i in range(n)]
    jobs += [NewJob(T, mates[i % 2], "send", {"i": i}, job_id=f"m{i}") for i in range(n)]
    # A generator is as good as a list.
    ids = await client.enqueue_many(job for job in jobs)
    assert len(ids) == len(set(ids)) == 2 * n
    assert await waiting(client, "solo") == slots(client, "solo", ids[:n])
    for k, mate in enumerate(mates):
        assert await waiting(client, mate) == slots(client, mate, ids[n + k :: 2])
    assert await IndexReads(client).pending_entities(T) == {
        "solo": n,
        mates[0]: n // 2,
        mates[1]: n // 2,
    }
    last = await client.job(ids[n - 1])
    assert last.payload == {"i": n - 1}


async def test_delayed_jobs(client: Client) -> None:
    ids = await client.enqueue_many(
        [
            NewJob(T, "frank", "send", job_id="soon", delay=0.3),
            NewJob(T, "frank", "send", job_id="now"),
            NewJob(T, "frank", "send", job_id="later", delay=3600),
            NewJob(T, "gina", "send", job_id="later", delay=3600),
        ]
    )
    assert ids == ["soon", "now", "later", "later"]
    assert [await state(client, j, "frank") for j in ("soon", "now", "later")] == [
        "delayed",
        "waiting",
        "delayed",
    ]
    assert await state(client, "later", "gina") == "delayed"
    assert await waiting(client, "frank") == slots(client, "frank", ["now"])
    assert await waiting(client, "gina") == []
    assert (await IndexReads(client).counts(T))["delayed"] == 3
    # Once due, a delayed job joins the queue (at the entity's next change) ahead of the jobs
    # enqueued after it fell due.
    await asyncio.sleep(0.5)
    await client.enqueue_many([NewJob(T, "frank", "send", job_id="next")])
    assert await state(client, "soon", "frank") == "waiting"
    assert await waiting(client, "frank") == slots(client, "frank", ["now", "soon", "next"])
    assert await state(client, "later", "frank") == "delayed"


# --- SyncClient -------------------------------------------------------------------------------
def test_sync_client_enqueue_many(redis_url: str) -> None:
    with SyncClient(Settings(redis_url=redis_url)) as sync:
        ids = sync.enqueue_many(NewJob(T, "hal", "send", {"n": n}) for n in range(3))
        assert len(ids) == 3
        assert [sync.job(j).payload for j in ids] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert sync.enqueue_many([NewJob(T, "hal", "send", job_id="k")] * 2) == ["k", "k"]
        assert sync.run(lambda c: IndexReads(c).pending_entities(T)) == {"hal": 4}
        with pytest.raises(InvalidInput, match="priority"):
            sync.enqueue_many([NewJob(T, "ivy", "send"), NewJob(T, "ivy", "x", priority=-1001)])
        assert sync.run(lambda c: IndexReads(c).pending_entities(T)) == {"hal": 4}


# --- aq enqueue --from FILE.jsonl -------------------------------------------------------------
def jsonl(*jobs: dict[str, Any]) -> str:
    return "".join(json.dumps(job, ensure_ascii=False) + "\n" for job in jobs)


def line(entity_id: str, n: int, **more: Any) -> dict[str, Any]:
    return {"entity_type": T, "entity_id": entity_id, "name": "send", "payload": {"n": n}, **more}


async def test_cli_from_file(client: Client, redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    text = jsonl(
        line("alice", 0, job_id="a0"),
        line("a:b{c}", 0),
        line("alice", 1, job_id="a1", priority=0, attempts=5, keep_completed=0, delay=None),
        {"entity_type": T, "entity_id": "bob", "name": "ping"},  # no payload: null
        line("bob", 1, delay=3600, backoff={"type": "fixed", "delay": 2}),
    )
    path.write_text(text[:-1] + "\n\n   \n")  # blank lines are skipped
    result = aq("enqueue", "--from", str(path), url=redis_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "5 job(s) enqueued\n"
    assert await waiting(client, "alice") == slots(client, "alice", ["a0", "a1"])
    assert len(await waiting(client, "a:b{c}")) == 1
    assert (await client.job("a1", entity=(T, "alice"))).max_attempts == 5
    assert await IndexReads(client).pending_entities(T) == {"alice": 2, "a:b{c}": 1, "bob": 1}
    assert (await IndexReads(client).counts(T))["delayed"] == 1

    # Again, with --json: the same ids for the lines with a job id, nothing added twice for them.
    again = aq("enqueue", "--from", str(path), "--json", url=redis_url)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["enqueued"] == 5
    assert report["job_ids"][0] == "a0"
    assert report["job_ids"][2] == "a1"
    assert all(AUTO_JOB_ID_RE.fullmatch(j) for j in report["job_ids"][1:2] + report["job_ids"][3:])
    assert await waiting(client, "alice") == slots(client, "alice", ["a0", "a1"])
    assert await IndexReads(client).pending_entities(T) == {"alice": 2, "a:b{c}": 2, "bob": 2}
    bob = report["job_ids"][3:]
    assert (await client.job(bob[0])).payload is None
    assert (await client.job(bob[1])).state == "delayed"


async def test_cli_from_stdin(client: Client, redis_url: str) -> None:
    text = jsonl(*(line(f"e{n % 3}", n, job_id=f"j{n}") for n in range(30)))
    result = aq("enqueue", "--from", "-", "--json", url=redis_url, input=text)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"enqueued": 30, "job_ids": [f"j{n}" for n in range(30)]}
    for k in range(3):
        expected = [f"j{n}" for n in range(k, 30, 3)]
        assert await waiting(client, f"e{k}") == slots(client, f"e{k}", expected)


FROM_STDIN = ("enqueue", "--from", "-")


def test_cli_from_stdin_redirected_from_a_file(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(jsonl(*(line("x", n) for n in range(3))))
    with path.open() as f:
        result = subprocess.run(
            [sys.executable, "-m", "atomicqueues.cli", "--redis-url", redis_url, *FROM_STDIN],
            stdin=f,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3 job(s) enqueued\n"


GOOD = json.dumps(line("alice", 0))


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        pytest.param('{"entity_type": "user", "entity_id": ', ["invalid JSON"], id="json"),
        pytest.param('["user", "bob", "send"]', ["JSON object"], id="not-object"),
        pytest.param('{"entity_type": "user", "name": "x"}', ["missing", "entity_id"], id="key"),
        pytest.param(json.dumps(line("bob", 1, dealy=5)), ["unknown key", "dealy"], id="typo"),
        pytest.param(json.dumps(line("", 1)), ["entity id"], id="empty-id"),
        pytest.param(json.dumps(line("y" * 5000, 1)), ["entity id"], id="huge-id"),
        pytest.param(json.dumps(line(42, 1)), ["entity id"], id="id-not-string"),  # type: ignore[arg-type]
        pytest.param(json.dumps(line("bob", 1) | {"entity_type": "us er"}), ["type"], id="type"),
        pytest.param(json.dumps(line("bob", 1, priority=5000)), ["priority"], id="priority"),
        pytest.param(json.dumps(line("bob", 1, priority=True)), ["priority"], id="prio-bool"),
        pytest.param(json.dumps(line("bob", 1, delay=-1)), ["delay"], id="delay"),
        pytest.param(json.dumps(line("bob", 1, delay="5")), ["delay"], id="delay-string"),
        pytest.param(GOOD[:-1] + ', "delay": 1e999}', ["delay"], id="delay-inf"),
        pytest.param(json.dumps(line("bob", 1, attempts=0)), ["attempts"], id="attempts"),
        pytest.param(json.dumps(line("bob", 1, keep_completed=-1)), ["keep"], id="keep"),
        pytest.param(json.dumps(line("bob", 1, job_id=7)), ["job id"], id="job-id"),
        pytest.param(json.dumps(line("bob", 1, backoff={"type": "x"})), ["backoff"], id="bo"),
        pytest.param(json.dumps(line("bob", 1, backoff=[])), ["backoff"], id="backoff-list"),
        pytest.param('{"entity_type": "user", "entity_id": "b", "name": NaN}', ["JSON"], id="nan"),
        pytest.param(json.dumps(line("bob", 1, payload="z" * 2_000_000)), ["limit"], id="size"),
    ],
)
def test_cli_bad_line_is_one_line_and_enqueues_nothing(
    redis_url: str, tmp_path: Path, bad: str, words: list[str]
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join([GOOD, GOOD, "", GOOD, bad, GOOD]) + "\n")
    assert_one_line_error(aq("enqueue", "--from", str(path), url=redis_url), "line 5", *words)
    assert redis.Redis.from_url(redis_url).dbsize() == 0
    # The same from standard input.
    result = aq("enqueue", "--from", "-", url=redis_url, input=path.read_text())
    assert_one_line_error(result, "line 5 of standard input", *words)
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def test_cli_bad_line_late_in_a_big_file_enqueues_nothing(redis_url: str, tmp_path: Path) -> None:
    # More lines than one chunk: the bad line is after the first chunk, and still nothing is sent.
    path = tmp_path / "jobs.jsonl"
    with path.open("w") as f:
        for n in range(12_000):
            f.write(json.dumps(line(f"e{n % 50}", n)) + "\n")
        f.write('{"entity_type": "user"}\n')
    assert_one_line_error(aq("enqueue", "--from", str(path), url=redis_url), "line 12001")
    assert redis.Redis.from_url(redis_url).dbsize() == 0


async def test_cli_big_file_in_chunks_keeps_order(
    client: Client, redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    n = 12_000  # more than one chunk of aq enqueue --from (10,000 lines)
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps(line(f"e{i % 4}", i, job_id=f"j{i}")) + "\n")
    result = aq("enqueue", "--from", str(path), url=redis_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{n} job(s) enqueued\n"
    for k in range(4):
        expected = [f"j{i}" for i in range(k, n, 4)]
        assert await waiting(client, f"e{k}") == slots(client, f"e{k}", expected)


def test_cli_file_errors_are_one_line(redis_url: str, tmp_path: Path) -> None:
    assert_one_line_error(
        aq("enqueue", "--from", str(tmp_path / "none.jsonl"), url=redis_url), "cannot read"
    )
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(GOOD.encode() + b"\n" + '{"entity_id": "é"}'.encode("latin-1") + b"\n")
    assert_one_line_error(aq("enqueue", "--from", str(latin), url=redis_url), "line 2", "UTF-8")
    assert redis.Redis.from_url(redis_url).dbsize() == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["enqueue", "user", "bob"], ["TYPE ID NAME"], id="missing-name"),
        pytest.param(["enqueue"], ["TYPE ID NAME"], id="nothing"),
        pytest.param(["enqueue", "user", "--from", "-"], ["TYPE ID NAME"], id="from-and-type"),
        pytest.param(["enqueue", "--from", "-", "--job-id", "j"], ["--job-id"], id="from-job-id"),
        pytest.param(["enqueue", "--from", "-", "--payload", "1"], ["--payload"], id="payload"),
    ],
)
def test_cli_enqueue_usage_errors(redis_url: str, args: list[str], words: list[str]) -> None:
    result = aq(*args, url=redis_url, input=GOOD + "\n")
    assert result.returncode == 2
    assert_one_line_error(result, *words)
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def test_cli_from_with_redis_down_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "jobs.jsonl"
    path.write_text(GOOD + "\n")
    url = f"redis://127.0.0.1:{port}/0"
    assert_one_line_error(aq("enqueue", "--from", str(path), url=url), "cannot reach Redis")


def test_cli_single_job_form_still_works(redis_url: str) -> None:
    result = aq("enqueue", "user", "bob", "send", "--job-id", "one", url=redis_url)
    assert (result.returncode, result.stdout) == (0, "one\n"), result.stderr
    as_json = aq("enqueue", "user", "bob", "send", "--job-id", "one", "--json", url=redis_url)
    assert json.loads(as_json.stdout) == {"enqueued": 1, "job_ids": ["one"]}
