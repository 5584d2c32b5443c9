"""Scheduled jobs on a real Redis: next times (every, cron in a time zone), the atomic fire
(compare-and-set: a stale or racing ticker fires nothing), catch-up without a burst, removal,
tickers in separate processes racing, the command line, the sync client and the metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
from prometheus_client import REGISTRY

from atomicqueues import Client, JobContext, Registry, Schedule, Settings, SyncClient, Worker
from atomicqueues.keys import in_bucket, of_entity, schedule_key
from atomicqueues.schedules import TICK, Schedules, Ticker, job_id
from helpers import aq, assert_one_line_error
from redis_servers import free_port

T = "report"


@pytest.fixture
def client_settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url, heartbeat_ttl=1.0, heartbeat_interval=0.25, keep_completed=0
    )


def ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def utc(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


# --- next times, no Redis ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "tz", "after", "expected"),
    [
        # Weekdays at 09:00 in New York (EST, UTC-5): Friday after nine -> Monday 14:00 UTC.
        pytest.param(
            "0 9 * * MON-FRI",
            "America/New_York",
            "2026-12-04T10:00:00-05:00",
            "2026-12-07T14:00:00+00:00",
            id="weekdays-new-york",
        ),
        # Noon in Berlin is 10:00 UTC in summer (CEST) and 11:00 UTC after DST ends (Oct 25).
        pytest.param(
            "0 12 * * *",
            "Europe/Berlin",
            "2026-10-24T13:00:00+02:00",
            "2026-10-25T11:00:00+00:00",
            id="berlin-dst-ends",
        ),
        pytest.param(
            "0 12 * * *",
            "Europe/Berlin",
            "2026-10-23T13:00:00+02:00",
            "2026-10-24T10:00:00+00:00",
            id="berlin-summer",
        ),
        # 02:30 does not exist in Berlin on 2026-03-29 (02:00 -> 03:00): it runs at 03:00 CEST,
        # as Debian's cron does.
        pytest.param(
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-29T00:00:00+01:00",
            "2026-03-29T01:00:00+00:00",
            id="berlin-skipped-hour",
        ),
        pytest.param(
            "0 0 1 * *",
            "Asia/Kolkata",
            "2026-12-15T00:00:00+05:30",
            "2026-12-31T18:30:00+00:00",
            id="monthly-half-hour-zone",
        ),
        pytest.param(
            "*/15 * * * * *",  # six fields: seconds first
            "UTC",
            "2026-12-01T00:00:00+00:00",
            "2026-12-01T00:00:15+00:00",
            id="seconds-field",
        ),
    ],
)
def test_cron_next_time_in_its_time_zone(cron: str, tz: str, after: str, expected: str) -> None:
    schedule = Schedule(T, "s", "s", "build", cron=cron, tz=tz)
    assert utc(schedule.next_fire_ms(ms(after))) == utc(ms(expected))


def test_every_keeps_its_grid_and_skips_missed_ticks() -> None:
    schedule = Schedule(T, "s", "s", "build", every=10, start=1000.0)
    assert schedule.next_fire_ms(500_000) == 1_000_000  # before start: start
    assert schedule.next_fire_ms(1_000_000) == 1_010_000  # strictly after
    assert schedule.next_fire_ms(1_054_321) == 1_060_000  # many ticks missed: the next one


def test_start_delays_the_first_tick_and_may_be_one() -> None:
    start = ms("2026-12-01T03:00:00+00:00")
    cron = Schedule(T, "s", "s", "build", cron="0 3 * * *", start=start / 1000)
    assert cron.next_fire_ms(start - 86_400_000 * 3) == start  # at start itself, not before
    assert cron.next_fire_ms(start) == start + 86_400_000
    every = Schedule(T, "s", "s", "build", every=60, start=start / 1000)
    assert every.next_fire_ms(start - 1) == start


def test_job_id_names_the_schedule_and_its_tick() -> None:
    assert job_id("nightly", ms("2026-12-01T03:00:00+00:00")) == "nightly@2026-12-01T03:00:00Z"
    assert job_id("p", ms("2026-12-01T03:00:00.250+00:00")) == "p@2026-12-01T03:00:00.250Z"


# --- on Redis ---------------------------------------------------------------------------------
async def waiting_jobs(client: Client, entity_id: str) -> list[str]:
    wait = await client.zrange(of_entity(client.keys.entity(T, entity_id), "wait"))
    return [jslot.split(":", 1)[1] for jslot in wait]


async def test_missed_ticks_fire_once_then_the_next_tick_after_now(client: Client) -> None:
    added = await Schedules(client).add(
        T, "ping", "ping", {"n": 1}, entity_id="e1", every=0.2, timeout=7
    )
    assert added.timeout == 7
    assert added.next_at is not None
    assert added.start is not None
    await asyncio.sleep(1.0)  # about five ticks pass with no ticker
    ticker = Ticker(client, T)
    await ticker.tick()
    first = round(added.next_at * 1000)
    assert await waiting_jobs(client, "e1") == [job_id("ping", first)]  # once, the oldest tick
    (after,) = await Schedules(client).list(T)
    now = time.time()
    assert after.next_at is not None
    assert now < after.next_at <= now + 0.2 + 0.05
    assert round((after.next_at - added.start) * 1000) % 200 == 0  # still on its grid
    assert (after.fired, after.last_at, after.last_job_id) == (
        1,
        added.next_at,
        job_id("ping", first),
    )
    job = await client.job(job_id("ping", first), entity=(T, "e1"))
    assert (job.name, job.payload, job.state, job.timeout) == ("ping", {"n": 1}, "waiting", 7)


async def test_a_stale_or_replaced_read_fires_nothing(client: Client) -> None:
    """The compare-and-set: a ticker that read a tick which another ticker has fired since (and
    whose job has completed and is gone) adds no second job; nor does a read of a schedule that
    was replaced."""
    await Schedules(client).add(T, "ping", "ping", entity_id="e1", every=0.2)
    await asyncio.sleep(0.3)
    bucket = client.keys.entity_bucket(T, "e1")
    times = in_bucket(bucket, "sched")
    due = int((await client.redis.zrange(times, 0, 0, withscores=True))[0][1])
    sid, text = await client.redis.hmget(schedule_key(bucket, "ping"), "sid", "def")
    now = int(time.time() * 1000)
    ticker = Ticker(client, T)
    args = ticker._fire_args("ping", str(sid), due, str(text), now)
    channel = client.keys.events(T)
    fired = await client.script("schedule_fire", bucket, channel, *args)
    assert fired[1:] == [str(due)]
    assert await client.cancel(job_id("ping", due), entity=(T, "e1"))  # its job is gone
    again = await client.script("schedule_fire", bucket, channel, *args)  # the same read
    assert again[1:] == []
    assert await waiting_jobs(client, "e1") == []
    assert int(again[0]) > due  # the next time stays where the first fire put it
    # Replaced (a new sid) at the very tick the old read saw: still nothing.
    await Schedules(client).add(T, "ping", "ping", entity_id="e1", every=0.2)
    await client.redis.zadd(times, {"ping": due})
    stale = await client.script("schedule_fire", bucket, channel, *args)
    assert stale[1:] == []
    assert await waiting_jobs(client, "e1") == []


async def test_a_schedule_that_cannot_fire_here_holds_up_no_other(
    client: Client, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A job this ticker cannot enqueue (its payload is over this process's limit) is logged and
    left due; the schedule beside it in the same bucket fires, and the ticker does not spin."""
    await Schedules(client).add(T, "big", "ping", "x" * 100, entity_id="e1", every=0.1)
    await Schedules(client).add(T, "small", "ping", "x", entity_id="e1", every=0.1)
    await asyncio.sleep(0.15)
    limited = await Client.connect(Settings(redis_url=redis_url, max_payload_bytes=50))
    try:
        waits = [await Ticker(limited, T).tick()]
        waits.append(await Ticker(limited, T).tick())
    finally:
        await limited.close()
    fired = await waiting_jobs(client, "e1")
    assert [j.split("@")[0] for j in fired] == ["small"]
    assert waits == [TICK, TICK]
    assert "schedule big of report not fired" in caplog.text


async def test_remove_stops_firing(client: Client) -> None:
    await Schedules(client).add(T, "ping", "ping", entity_id="e1", every=0.1)
    ticker = Ticker(client, T)
    task = asyncio.create_task(ticker.run())
    try:
        deadline = time.monotonic() + 10
        while len(await waiting_jobs(client, "e1")) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await Schedules(client).remove(T, "ping")
        await asyncio.sleep(0.05)  # a fire already under way ends
        fired = await waiting_jobs(client, "e1")
        assert len(fired) >= 3
        await asyncio.sleep(0.6)  # six ticks it would have fired
        assert await waiting_jobs(client, "e1") == fired
    finally:
        task.cancel()
    assert await Schedules(client).list(T) == []
    assert not await Schedules(client).remove(T, "ping")
    bucket = client.keys.entity_bucket(T, "e1")
    assert await client.redis.zcard(in_bucket(bucket, "sched")) == 0
    assert not await client.redis.exists(schedule_key(bucket, "ping"))


async def test_a_schedule_of_the_type_goes_to_the_entity_named_after_it(client: Client) -> None:
    added = await Schedules(client).add(T, "nightly", "build", cron="0 3 * * *", tz="Europe/Berlin")
    assert (added.entity_id, added.per_type) == ("nightly", True)
    assert added.next_at is not None
    local = datetime.fromtimestamp(added.next_at, ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute, local.second) == (3, 0, 0)
    assert added.next_at > time.time()
    # Replaced by one for an entity in another bucket: the old one is gone from its bucket.
    moved = await Schedules(client).add(T, "nightly", "build", entity_id="elsewhere-7", every=60)
    assert moved.entity_id == "elsewhere-7"
    old = client.keys.entity_bucket(T, "nightly")
    assert old != client.keys.entity_bucket(T, "elsewhere-7")
    assert not await client.redis.exists(schedule_key(old, "nightly"))
    (listed,) = await Schedules(client).list()
    assert (listed.name, listed.entity_id, listed.every, listed.cron) == (
        "nightly",
        "elsewhere-7",
        60,
        None,
    )


async def test_a_ticker_of_a_type_without_schedules_reads_one_field_a_tick(
    client: Client, redis_url: str
) -> None:
    plain = redis.Redis.from_url(redis_url)
    ticker = Ticker(client, T)
    plain.config_resetstat()
    waits = [await ticker.tick() for _ in range(5)]
    stats = plain.info("commandstats")
    calls = {
        name: s["calls"]
        for name, s in stats.items()
        if name not in ("cmdstat_info", "cmdstat_config", "cmdstat_config|resetstat")
    }  # this test's own calls (Redis 7 names the subcommand)
    assert calls == {"cmdstat_hget": 5}
    assert waits == [TICK] * 5


async def test_metrics_count_schedules_and_fires_by_type(client: Client) -> None:
    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"entity_type": T}) or 0.0

    before = sample("aq_schedule_fires_total")
    await Schedules(client).add(T, "a", "ping", entity_id="e1", every=0.1)
    await Schedules(client).add(T, "b", "ping", entity_id="e2", every=0.1)
    await asyncio.sleep(0.15)
    ticker = Ticker(client, T)
    await ticker.tick()
    assert sample("aq_schedules") == 2
    assert sample("aq_schedule_fires_total") == before + 2
    for metric in REGISTRY.collect():
        for s in metric.samples:
            assert "entity_id" not in s.labels
            assert "e1" not in s.labels.values()


def test_sync_client_adds_lists_and_removes(redis_url: str) -> None:
    with SyncClient(Settings(redis_url=redis_url)) as client:
        added = client.run(
            lambda c: Schedules(c).add(T, "hourly", "build", [1, 2], cron="0 * * * *")
        )
        assert [s.name for s in client.run(lambda c: Schedules(c).list(T))] == ["hourly"]
        assert client.run(lambda c: Schedules(c).list(T))[0].payload == [1, 2]
        assert added.next_at is not None
        assert added.next_at % 3600 == 0
        assert client.run(lambda c: Schedules(c).remove(T, "hourly"))
        assert client.run(lambda c: Schedules(c).list()) == []


# --- tickers in separate processes ------------------------------------------------------------
def metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(f'{name}{{entity_type="{T}"}}'):
                return float(line.split()[-1])
    return 0.0


async def test_racing_tickers_in_processes_fire_each_tick_once(
    client: Client, redis_url: str, tmp_path: Path
) -> None:
    """Three `aq schedule run` processes tick the same schedule every 0.2 s; a worker runs each
    job, which is deleted as it completes (kept 0 s), so a tick fired twice would run twice."""
    ran: list[str] = []
    registry = Registry()

    @registry.command("ping")
    async def ping(ctx: JobContext, payload: None) -> None:
        ran.append(ctx.job.id)

    env = {**os.environ, "AQ_REDIS_URL": redis_url, "AQ_KEEP_COMPLETED": "0"}
    ports = [free_port() for _ in range(3)]
    procs = [
        await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "atomicqueues.cli", "schedule", "run", T),
            *("--metrics-port", str(port)),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for port in ports
    ]
    worker = Worker(client, registry, T, entity_id="e1")
    task = asyncio.create_task(worker.run())
    try:
        for proc in procs:  # every ticker is up before the schedule exists
            assert proc.stdout is not None
            assert b"firing the schedules" in await proc.stdout.readline()
        await Schedules(client).add(T, "ping", "ping", entity_id="e1", every=0.2)
        await asyncio.sleep(4.0)
        await Schedules(client).remove(T, "ping")
        await asyncio.sleep(0.5)
        fires = [await asyncio.to_thread(metric, port, "aq_schedule_fires_total") for port in ports]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [(await asyncio.wait_for(proc.communicate(), 30))[0] for proc in procs]
        worker.close("test over")
        await asyncio.wait_for(task, 30)
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert len(ran) >= 10, ran
    assert len(set(ran)) == len(ran), sorted(ran)  # no tick ran twice
    ticks = sorted(datetime.fromisoformat(j.split("@")[1]).timestamp() for j in ran)
    gaps = {round((b - a) * 1000) % 200 for a, b in itertools.pairwise(ticks)}
    assert gaps == {0}  # every job is a tick of the grid
    assert sum(fires) == len(ran), (fires, len(ran))  # no process fired one the others did


# --- the command line -------------------------------------------------------------------------
def test_cli_add_list_remove_and_status(redis_url: str) -> None:
    added = aq(
        "schedule",
        "add",
        T,
        "--name",
        "nightly",
        "--job",
        "build",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Berlin",
        "--payload",
        '{"full": true}',
        url=redis_url,
    )
    assert added.returncode == 0, added.stderr
    assert "nightly" in added.stdout
    assert "+01:00" in added.stdout
    added = aq(
        "schedule",
        "add",
        T,
        "42",
        "--name",
        "ping",
        "--job",
        "ping",
        "--every",
        "30",
        url=redis_url,
    )
    assert added.returncode == 0, added.stderr
    listed = aq("schedule", "list", "--json", url=redis_url)
    assert listed.returncode == 0, listed.stderr
    found = {s["name"]: s for s in json.loads(listed.stdout)}
    assert found["nightly"]["payload"] == {"full": True}
    assert (found["nightly"]["entity_id"], found["nightly"]["tz"]) == ("nightly", "Europe/Berlin")
    assert (found["ping"]["entity_id"], found["ping"]["every"]) == ("42", 30)
    text = aq("schedule", "list", T, url=redis_url)
    assert "2 schedule(s)" in text.stdout
    status = json.loads(aq("status", "--json", url=redis_url).stdout)
    assert {s["name"] for s in status["types"][T]["schedules"]} == {"nightly", "ping"}
    removed = aq("schedule", "remove", T, "nightly", url=redis_url)
    assert removed.returncode == 0, removed.stderr
    assert [
        s["name"] for s in json.loads(aq("schedule", "list", "--json", url=redis_url).stdout)
    ] == ["ping"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["--cron", "61 * * * *"], ["cron", "61 * * * *"], id="bad-cron"),
        pytest.param(["--cron", "0 3 * *"], ["cron"], id="cron-fields"),
        pytest.param(["--cron", "0 3 * * *", "--tz", "Mars/Base"], ["time zone"], id="bad-tz"),
        pytest.param(["--every", "60", "--tz", "Europe/Berlin"], ["time zone"], id="tz-every"),
        pytest.param(["--every", "0"], ["every"], id="every-zero"),
        pytest.param(["--every", "60", "--payload", "{bad"], ["JSON"], id="bad-json"),
        pytest.param(["--every", "60", "--start", "tomorrow"], ["--start"], id="bad-start"),
        pytest.param(["--every", "60", "--name", "a b"], ["schedule name"], id="bad-name"),
        pytest.param(["--every", "60", "--cron", "0 3 * * *"], ["not allowed"], id="both"),
        pytest.param([], ["--every", "--cron"], id="neither"),
    ],
)
def test_cli_bad_input_is_one_line_and_adds_nothing(
    redis_url: str, args: list[str], words: list[str]
) -> None:
    base = ["schedule", "add", T, "--name", "x", "--job", "build"]
    if "--name" in args:
        base = ["schedule", "add", T, "--job", "build"]
    result = aq(*base, *args, url=redis_url)
    assert_one_line_error(result, *words)
    assert redis.Redis.from_url(redis_url).keys("*schedules*") == []


def test_cli_remove_of_an_unknown_schedule_is_one_line(redis_url: str) -> None:
    assert_one_line_error(aq("schedule", "remove", T, "nope", url=redis_url), "no schedule")
