"""Scheduled jobs: a job enqueued every N seconds or on a cron expression, fired exactly once
per tick however many processes tick.

A schedule lives in Redis in the bucket of the entity its jobs go to (lua/include/keys.lua), so
firing it is one script on one hash slot (`schedule_fire.lua`): the script enqueues the job the
way enqueue.lua does and moves the schedule's next fire time on, but only while the schedule is
still due at the time the ticker read (compare-and-set). Any number of tickers may race; each
tick fires once. A fired job's id is derived from its schedule and tick (`nightly@2026-12-01T
03:00:00Z`), so it can be found, and a tick fired again could never add a second job while the
first is kept.

Next fire times are computed here, in Python (cron expressions by `cronsim`, in the schedule's
IANA time zone), and passed to the script. Ticks missed while no ticker ran are not made up in
a burst: the first ticker back fires the oldest missed tick once, then goes on with the first
tick after now.

A schedule without an entity id (a schedule of the type) sends its jobs to the entity named
after the schedule: runs of one schedule then never overlap (one entity runs one job at a time
by default), while different schedules of the type run side by side.

Who ticks: `aq up` and the operator, for the entity type of each pool they run, and
`aq schedule run TYPE...` where neither runs. A `Ticker` reads one counter per second while a
type has no schedules, and otherwise sleeps until the earliest next fire time it knows (at most
a second, to learn of changes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .client import Client, NewJob
from .errors import AtomicQueuesError, InvalidInput
from .index_reads import IndexReads
from .jobs import encode_payload
from .keys import bucket_of, check_entity_id, check_entity_type, in_bucket, schedule_key
from .metrics import SCHEDULE_FIRE_DELAY, SCHEDULE_FIRES, SCHEDULES

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
MIN_EVERY = 0.1
"""The shortest interval of an `every` schedule, in seconds."""
TICK = 1.0
"""The longest a ticker sleeps before it looks again, in seconds (it learns of a new or removed
schedule within this)."""
RESCAN = 60.0
"""Seconds between two full reads of a type's schedules by a ticker (besides those after a
change it was told of)."""
FIRE_BATCH = 100
"""Due schedules of one bucket read and fired per script call."""


@dataclass(frozen=True)
class Schedule:
    """One schedule, as added and as read back (the last fields: its state in Redis)."""

    entity_type: str
    name: str
    entity_id: str
    """The entity its jobs go to (for a schedule of the type: its name)."""
    job: str
    """The handler's name."""
    payload_json: str = "null"
    every: float | None = None
    """Seconds between ticks (or None for a cron schedule)."""
    cron: str | None = None
    tz: str = "UTC"
    """IANA time zone the cron expression is read in."""
    start: float | None = None
    """Epoch seconds: no tick before it; an `every` schedule ticks at start + k * every."""
    priority: int = 0
    attempts: int | None = None
    timeout: float | None = None
    """Each job's time limit in seconds (None: its handler's, else the worker's)."""
    per_type: bool = False
    """Added without an entity id."""
    next_at: float | None = None
    """Epoch seconds of the next tick (None: not read from Redis, or removed meanwhile)."""
    fired: int = 0
    """Jobs it has fired since it was added."""
    last_at: float | None = None
    """Epoch seconds of the tick it last fired."""

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_json)

    @property
    def last_job_id(self) -> str | None:
        return None if self.last_at is None else job_id(self.name, round(self.last_at * 1000))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["payload"] = self.payload
        del out["payload_json"]
        out["last_job_id"] = self.last_job_id
        return out

    def describe(self) -> str:
        """When it ticks, in a few words."""
        if self.cron is not None:
            return f"cron {self.cron!r} {self.tz}"
        return f"every {self.every:g}s"

    def definition(self) -> str:
        """What Redis keeps of it (schedule_set.lua's def)."""
        fields = {
            "eid": self.entity_id,
            "per_type": self.per_type,
            "job": self.job,
            "payload": self.payload_json,
            "every": self.every,
            "cron": self.cron,
            "tz": self.tz,
            "start": self.start,
            "prio": self.priority,
            "attempts": self.attempts,
            "timeout": self.timeout,
        }
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_definition(
        cls, entity_type: str, name: str, text: str, state: dict[str, str] | None = None
    ) -> Schedule:
        d = json.loads(text)
        state = state or {}
        return cls(
            entity_type=entity_type,
            name=name,
            entity_id=d["eid"],
            job=d["job"],
            payload_json=d["payload"],
            every=d["every"],
            cron=d["cron"],
            tz=d["tz"],
            start=d["start"],
            priority=d["prio"],
            attempts=d["attempts"],
            timeout=d.get("timeout"),
            per_type=d["per_type"],
            next_at=float(state["next"]) / 1000.0 if state.get("next") else None,
            fired=int(state.get("n") or 0),
            last_at=float(state["last"]) / 1000.0 if state.get("last") else None,
        )

    def next_fire_ms(self, after_ms: int) -> int:
        """The first tick strictly after `after_ms` (epoch milliseconds)."""
        start_ms = None if self.start is None else round(self.start * 1000)
        if self.every is not None:
            every_ms = round(self.every * 1000)
            anchor = after_ms if start_ms is None else start_ms
            if after_ms < anchor:
                return anchor
            return anchor + ((after_ms - anchor) // every_ms + 1) * every_ms
        assert self.cron is not None
        base = after_ms if start_ms is None else max(after_ms, start_ms - 1)
        at = datetime.fromtimestamp(base / 1000.0, ZoneInfo(self.tz))
        for when in CronSim(self.cron, at):
            ms = round(when.timestamp() * 1000)
            if ms > base:
                return ms
        raise InvalidInput(f"cron expression {self.cron!r} has no next time")  # pragma: no cover


def job_id(name: str, tick_ms: int) -> str:
    """The id of the job a schedule fires for one tick: its name and the tick, in UTC."""
    when = datetime.fromtimestamp(tick_ms / 1000.0, UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if tick_ms % 1000:
        text += f".{tick_ms % 1000:03d}"
    return f"{name}@{text}Z"


def check(schedule: Schedule) -> Schedule:
    """The schedule, checked: every mistake a person can make is one clear `InvalidInput`."""
    check_entity_type(schedule.entity_type)
    check_entity_id(schedule.entity_id)
    if not isinstance(schedule.name, str) or not NAME_RE.fullmatch(schedule.name):
        raise InvalidInput(
            f"invalid schedule name {schedule.name!r}: use 1-100 letters, digits, '_', '.' or '-'"
        )
    if (schedule.every is None) == (schedule.cron is None):
        raise InvalidInput("a schedule needs exactly one of every (seconds) or cron (expression)")
    if schedule.every is not None:
        every = schedule.every
        if isinstance(every, bool) or not isinstance(every, int | float) or not every >= MIN_EVERY:
            raise InvalidInput(f"every must be a number of seconds of at least {MIN_EVERY}")
        if every > 10 * 365 * 86400:
            raise InvalidInput("every must be at most ten years")
    zone = time_zone(schedule.tz)
    if schedule.cron is not None:
        if not isinstance(schedule.cron, str):
            raise InvalidInput("cron must be a string such as '0 3 * * *'")
        try:
            CronSim(schedule.cron, datetime.now(zone))
        except CronSimError as exc:
            raise InvalidInput(f"invalid cron expression {schedule.cron!r}: {exc}") from None
    elif schedule.tz != "UTC":
        raise InvalidInput("a time zone applies to cron schedules only")
    start = schedule.start
    if start is not None and (
        isinstance(start, bool) or not isinstance(start, int | float) or not 0 <= start < 1e11
    ):
        raise InvalidInput("start must be a time (a datetime with a time zone, or epoch seconds)")
    return schedule


def time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInput(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin'"
        ) from None


def _wall(ms: int) -> float:
    return ms / 1000.0


class Schedules:
    """Adding, listing and removing schedules, through one client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.keys = client.keys

    async def now_ms(self) -> int:
        secs, micros = await self.client.call(lambda: self.client.redis.time())
        return int(secs) * 1000 + int(micros) // 1000

    async def add(
        self,
        entity_type: str,
        name: str,
        job: str,
        payload: Any = None,
        *,
        entity_id: str | None = None,
        every: float | None = None,
        cron: str | None = None,
        tz: str | None = None,
        start: datetime | float | None = None,
        priority: int = 0,
        attempts: int | None = None,
        timeout: float | None = None,
    ) -> Schedule:
        """Add a schedule, or replace the type's schedule of the same name (its counts start
        again). Returns it with its first tick. Without `entity_id`, its jobs go to the entity
        named after it."""
        client, keys = self.client, self.keys
        if isinstance(start, datetime):
            if start.tzinfo is None:
                raise InvalidInput("start must have a time zone (an aware datetime)")
            start = start.timestamp()
        schedule = check(
            Schedule(
                entity_type,
                name,
                name if entity_id is None else entity_id,
                job,
                encode_payload(payload, client.settings.max_payload_bytes),
                every=every,
                cron=cron,
                tz="UTC" if tz is None else tz,
                start=start,
                priority=priority,
                attempts=attempts,
                timeout=timeout,
                per_type=entity_id is None,
            )
        )
        # Its jobs are checked as an enqueue checks them (name, priority, attempts, timeout),
        # once now.
        client.prepare(
            NewJob(
                entity_type,
                schedule.entity_id,
                job,
                payload,
                job_id=job_id(name, 0),
                priority=priority,
                attempts=attempts,
                timeout=timeout,
            )
        )
        t, name = schedule.entity_type, schedule.name
        now = await self.now_ms()
        if schedule.every is not None and schedule.start is None:
            # The tick grid starts now: ticks at now + k * every, whoever computes them.
            schedule = replace(schedule, start=_wall(now))
        first = schedule.next_fire_ms(now)
        await client.remember_type(t)
        old = await client.hget(keys.schedules(t), name)
        if old is not None and bucket_of(t, old) != bucket_of(t, schedule.entity_id):
            await client.script("schedule_remove", keys.entity_bucket(t, old), name)
        # The directory first: a crash after it leaves an entry without a schedule (listed as
        # nothing, removed by `remove`), never a schedule no ticker can find.
        await client.call(lambda: client.redis.hset(keys.schedules(t), name, schedule.entity_id))
        await client.script(
            "schedule_set",
            keys.entity_bucket(t, schedule.entity_id),
            name,
            secrets.token_hex(8),
            first,
            schedule.definition(),
        )
        await client.call(lambda: client.redis.hincrby(keys.schedules_changed(), t, 1))
        return replace(schedule, next_at=_wall(first))

    async def remove(self, entity_type: str, name: str) -> bool:
        """Remove a schedule (its jobs already fired stay); False when there was none."""
        client, keys = self.client, self.keys
        check_entity_type(entity_type)
        eid = await client.hget(keys.schedules(entity_type), name)
        if eid is None:
            return False
        removed = await client.script("schedule_remove", keys.entity_bucket(entity_type, eid), name)
        await client.call(lambda: client.redis.hdel(keys.schedules(entity_type), name))
        await client.call(lambda: client.redis.hincrby(keys.schedules_changed(), entity_type, 1))
        return bool(removed)

    async def list(self, entity_type: str | None = None) -> list[Schedule]:
        """The schedules of one type (or of every known type), by type and name."""
        types = [entity_type] if entity_type else await IndexReads(self.client).entity_types()
        found: list[Schedule] = []
        for t in types:
            check_entity_type(t)
            directory = await self.client.hgetall(self.keys.schedules(t))
            pipe = self.client.redis.pipeline(transaction=False)
            names = sorted(directory)
            for name in names:
                bucket = self.keys.entity_bucket(t, directory[name])
                pipe.hgetall(schedule_key(bucket, name))
                pipe.zscore(in_bucket(bucket, "sched"), name)
            replies: list[Any] = await self.client.call(pipe.execute)
            for name, fields, score in zip(names, replies[::2], replies[1::2], strict=True):
                if not fields.get("def"):
                    continue  # an add that did not finish, or a remove that did not
                state = {str(k): str(v) for k, v in fields.items()}
                if score is not None:
                    state["next"] = str(int(score))
                found.append(Schedule.from_definition(t, name, state["def"], state))
        return found


class Ticker:
    """Fires the due schedules of one entity type, as long as `run` runs.

    It keeps, per bucket that holds schedules of the type, the earliest next fire time it knows.
    That is never later than the truth: a schedule added or removed bumps the type's counter,
    which the ticker reads every tick and then reads the buckets again; a schedule fired by
    another ticker only makes the ticker look once more, find nothing due, and learn the new
    time. A full read every `RESCAN` seconds covers an add that stopped half-way.
    """

    def __init__(self, client: Client, entity_type: str) -> None:
        self.client = client
        self.keys = client.keys
        self.entity_type = check_entity_type(entity_type)
        self.next_at: dict[str, int | None] = {}
        """Bucket base -> earliest next fire ms (None: none left)."""
        self._version: str | None = None
        self._scanned_at = 0

    async def run(self) -> None:
        """Tick until cancelled; a failure is logged and the next tick tries again (this loop
        never dies silently inside a pool)."""
        while True:
            try:
                wait = await self.tick()
            except AtomicQueuesError as exc:
                log.warning("schedules of %s: %s", self.entity_type, exc)
                wait = TICK
            except Exception:
                log.exception("schedules of %s: tick failed", self.entity_type)
                wait = TICK
            await asyncio.sleep(wait)

    async def tick(self) -> float:
        """Fire what is due; returns the seconds to sleep before the next tick."""
        client, keys = self.client, self.keys
        changed, t = keys.schedules_changed(), self.entity_type
        version = await client.call(lambda: client.redis.hget(changed, t))
        if version is None:
            return TICK  # the type never had a schedule: one read a tick
        version = str(version)
        now = await Schedules(client).now_ms()
        if version != self._version or now - self._scanned_at >= RESCAN * 1000:
            await self._scan(version, now)
        for bucket, at in list(self.next_at.items()):
            if at is not None and at <= now:
                self.next_at[bucket] = await self.fire_bucket(bucket, now)
        soonest = min((at for at in self.next_at.values() if at is not None), default=None)
        if soonest is None or soonest <= now:  # still due: one that cannot fire, tried a tick on
            return TICK
        return min(TICK, (soonest - now) / 1000.0)

    async def _scan(self, version: str, now: int) -> None:
        client, keys, t = self.client, self.keys, self.entity_type
        directory = await client.hgetall(keys.schedules(t))
        SCHEDULES.labels(t).set(len(directory))
        buckets = sorted({keys.entity_bucket(t, eid) for eid in directory.values()})
        pipe = client.redis.pipeline(transaction=False)
        for bucket in buckets:
            pipe.zrange(in_bucket(bucket, "sched"), 0, 0, withscores=True)
        replies: list[Any] = await client.call(pipe.execute)
        self.next_at = {
            bucket: int(first[0][1]) if first else None
            for bucket, first in zip(buckets, replies, strict=True)
        }
        self._version, self._scanned_at = version, now

    async def fire_bucket(self, bucket: str, now: int) -> int | None:
        """Fire the schedules of one bucket due at `now` (Redis clock, ms); returns the
        bucket's next fire time."""
        client, keys, t = self.client, self.keys, self.entity_type
        times = in_bucket(bucket, "sched")
        skipped = 0  # due schedules that cannot fire here stay due: read past them
        while True:
            due = await self._due(times, now, skipped)
            if not due:
                first: list[Any] = await client.call(
                    lambda: client.redis.zrange(times, 0, 0, withscores=True)
                )
                return int(first[0][1]) if first else None
            pipe = client.redis.pipeline(transaction=False)
            for name, _ in due:
                pipe.hmget(schedule_key(bucket, str(name)), "sid", "def")
            records: list[Any] = await client.call(pipe.execute)
            args: list[str | int] = []
            for (name, score), (sid, text) in zip(due, records, strict=True):
                if sid is None or text is None:
                    continue  # removed since
                try:
                    args += self._fire_args(str(name), str(sid), int(score), str(text), now)
                except InvalidInput as exc:  # e.g. a payload over this process's size limit
                    log.warning("schedule %s of %s not fired: %s", name, t, exc)
                    skipped += 1
            reply = await client.script("schedule_fire", bucket, keys.events(t), *args)
            fired = [int(ms) for ms in reply[1:]]
            SCHEDULE_FIRES.labels(t).inc(len(fired))
            for ms in fired:
                SCHEDULE_FIRE_DELAY.labels(t).observe(max(0.0, (now - ms) / 1000.0))
            if len(due) < FIRE_BATCH:
                return int(reply[0]) if reply[0] != "" else None

    async def _due(self, times: str, now: int, skip: int) -> list[Any]:
        """Up to FIRE_BATCH (name, next ms) of a bucket due at `now`, after the first `skip`."""
        redis = self.client.redis
        due: list[Any] = await self.client.call(
            lambda: redis.zrangebyscore(
                times, "-inf", now, start=skip, num=FIRE_BATCH, withscores=True
            )
        )
        return due

    def _fire_args(self, name: str, sid: str, due: int, text: str, now: int) -> list[str | int]:
        schedule = Schedule.from_definition(self.entity_type, name, text)
        job = self.client.prepare(
            NewJob(
                self.entity_type,
                schedule.entity_id,
                schedule.job,
                schedule.payload,
                job_id=job_id(name, due),
                priority=schedule.priority,
                attempts=schedule.attempts,
                timeout=schedule.timeout,
            )
        )
        # Missed ticks are not made up: this one fires once, the next is the first after now.
        return [name, sid, due, schedule.next_fire_ms(max(now, due)), *job.args]
