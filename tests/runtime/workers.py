"""Real `aq worker` processes for the fault and life-cycle tests, and what they left on record.

Why: the guarantees that matter most (nothing lost, no overlap per entity, fencing) are about
processes that die, pause and get signals, so these tests run the real command line in
subprocesses: `python -m atomicqueues.cli worker ...` with the repository root on PYTHONPATH so
they can load `tests.runtime.handlers:registry`. `Workers` starts them with short heartbeat
settings, waits until they are registered, and always cleans up (SIGCONT, then SIGKILL). Each
worker's output goes to a file the assertion messages quote.

`load_runs` and `check_history` read what the `record` handler wrote (see handlers.py) and check
that every job of every entity completed, in order, with no two runs of an entity overlapping in
their effects; a job may run again only after a run that did not complete (killed, cancelled,
fenced out). A run with no end record must belong to a process the test killed (its interval
ends at the kill) or have been fenced out. `Workers.assert_completed_once` then checks in Redis
that each job's recorded completion is its last run's (token and attempt).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from atomicqueues import SyncClient
from atomicqueues.index_reads import IndexReads
from atomicqueues.jobs import Job
from atomicqueues.keys import EntityKey, Keys, in_bucket, job_key, of_entity
from helpers import REPO_ROOT, wait_until

HANDLERS = "tests.runtime.handlers:registry"
LOG_KEY = "test:log"  # the same names as in handlers.py (not imported: it is the workers' module)
REJECTED_KEY = "test:rejected"
EFFECTS_KEY = "test:effects"

TTL = 1.0
INTERVAL = 0.25

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a worker must not outlive a killed pytest (start from the main thread).
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)


def ended(client: SyncClient, total: int, entity_type: str) -> bool:
    """Whether `total` jobs of the type completed and none waits, runs or retries."""
    counts = client.run(lambda c: IndexReads(c).counts(entity_type))
    busy = sum(counts.get(s, 0) for s in ("waiting", "delayed", "active", "retrying"))
    return counts.get("completed", 0) == total and busy == 0


def base_env(redis_url: str, **settings: str | float) -> dict[str, str]:
    """The environment of a worker subprocess: ours, plus PYTHONPATH and AQ_* settings."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["AQ_REDIS_URL"] = redis_url
    for name, value in settings.items():
        env[f"AQ_{name.upper()}"] = str(value)
    return env


def start_aq(args: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start the `aq` command line as a child that dies with the test, its output in log_path."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "atomicqueues.cli", *args],
            env=dict(env),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


@dataclass
class WorkerProc:
    """One `aq worker` subprocess."""

    name: str
    node: str
    entity_id: str | None
    proc: subprocess.Popen[bytes]
    log_path: Path
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        tail = "\n".join(self.output().splitlines()[-25:])
        return f"worker {self.name} (pid {self.pid}, exit {self.proc.poll()}):\n{tail}"

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self) -> float:
        """SIGKILL and reap; returns (and remembers) when it was certainly dead."""
        self.proc.kill()
        self.proc.wait()
        self.killed_at = time.time()
        return self.killed_at

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not exit within {timeout}s: {self.describe()}") from None


@dataclass
class Workers:
    """Starts worker subprocesses for one test and kills what is left at the end."""

    redis_url: str
    log_dir: Path
    entity_type: str = "acct"
    ttl: float = TTL
    interval: float = INTERVAL
    prefix: str = "aq"
    store_url: str | None = None
    """Where the `record` handler's fenced store is (default: `redis_url`). A separate server
    keeps the records when the queues' Redis is killed, as a downstream store would."""
    handlers: str = HANDLERS
    """The registry the workers load (MODULE:ATTR, importable from the repository root)."""
    started: list[WorkerProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = Keys(self.prefix)
        # surrogateescape: an entity's meta holds its packed summary (summary.py)
        self.redis = redis.Redis.from_url(
            self.redis_url, decode_responses=True, encoding_errors="surrogateescape"
        )

    def env(self, **settings: str | float) -> dict[str, str]:
        values: dict[str, str | float] = {
            "prefix": self.prefix,
            "heartbeat_ttl": self.ttl,
            "heartbeat_interval": self.interval,
        }
        values.update(settings)
        return base_env(self.redis_url, **values)

    def start(
        self,
        entity_id: str | None = None,
        *,
        slots: int | None = None,
        name: str | None = None,
        node: str = "node-1",
        idle_timeout: float = 120.0,
        shutdown_grace: float = 10.0,
        entity_type: str | None = None,
        wait: bool = True,
        redis_url: str | None = None,
        **settings: str | float,
    ) -> WorkerProc:
        """Start `aq worker` (entity-bound when `entity_id`, else packed) and, with `wait`,
        return once it has registered (it heartbeats, claims and listens from then on).
        `redis_url` (e.g. through a `Partition`) is where the worker reaches Redis; its handlers
        write their records straight to the store (`store_url`, else the test's Redis)."""
        name = name or f"w{len(self.started)}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        args = [
            "worker",
            "--handlers",
            self.handlers,
            "--entity-type",
            entity_type or self.entity_type,
            "--name",
            name,
            "--idle-timeout",
            str(idle_timeout),
            "--shutdown-grace",
            str(shutdown_grace),
        ]
        if entity_id is not None:
            args += ["--entity-id", entity_id]
        else:
            args += ["--slots", str(slots or 1)]
        log_path = self.log_dir / f"{name}.log"
        env = self.env(node_name=node, test_store_url=self.store_url or self.redis_url, **settings)
        if redis_url is not None:
            env["AQ_REDIS_URL"] = redis_url
        proc = start_aq(args, env, log_path)
        worker = WorkerProc(name, node, entity_id, proc, log_path)
        self.started.append(worker)
        if wait:
            self.wait_registered(worker)
        return worker

    def registered(self, worker: WorkerProc) -> bool:
        return bool(self.redis.exists(self.keys.worker(worker.name)))

    def wait_registered(self, worker: WorkerProc, timeout: float = 30.0) -> None:
        def up() -> bool:
            if not worker.alive():
                raise AssertionError(f"exited before registering: {worker.describe()}")
            return self.registered(worker)

        wait_until(up, timeout, f"worker {worker.name} to register")

    @property
    def kill_times(self) -> dict[int, float]:
        return {w.pid: w.killed_at for w in self.started if w.killed_at is not None}

    def alive(self) -> list[WorkerProc]:
        return [w for w in self.started if w.alive()]

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM every live worker and wait for each (graceful end of a test)."""
        for w in self.alive():
            w.signal(signal.SIGCONT)
            w.signal(signal.SIGTERM)
        for w in self.started:
            if w.proc.poll() is None:
                w.wait(timeout)

    def close(self) -> None:
        for w in self.started:
            if w.alive():
                w.signal(signal.SIGCONT)
                w.proc.kill()
            w.proc.wait()
        self.redis.close()

    def logs(self) -> str:
        return "\n\n".join(w.describe() for w in self.started)

    # --- Redis state --------------------------------------------------------------------------
    def entity_key(self, entity_id: str, name: EntityKey) -> str:
        return of_entity(self.keys.entity(self.entity_type, entity_id), name)

    def holders(self, entity_id: str) -> dict[str, str]:
        """Owner -> fencing token of the entity's leases (its meta's 'l:' fields)."""
        meta: dict[str, str] = self.redis.hgetall(self.entity_key(entity_id, "meta"))  # type: ignore[assignment]
        return {f[2:]: v.split(" ")[0] for f, v in meta.items() if f.startswith("l:")}

    def job(self, entity_id: str, job_id: str) -> Job | None:
        """The job's record (an auto-generated id, or one the caller gave for `entity_id`)."""
        located = self.keys.locate_auto_job(job_id)
        if located is None:
            located = (
                self.keys.entity_bucket(self.entity_type, entity_id),
                self.keys.job_slot(self.entity_type, entity_id, job_id),
            )
        bucket, jslot = located
        fields: dict[str, str] = self.redis.hgetall(job_key(bucket, jslot))  # type: ignore[assignment]
        return Job.from_fields(self.entity_type, fields) if fields else None

    def completion_violations(self, per_entity: Mapping[str, list[Run]]) -> list[Violation]:
        """Jobs whose record does not show a completion by their last run (that run's token and
        attempt), dead-lettered jobs aside: an earlier run's completion was recorded, or none."""
        found = []
        for entity, history in per_entity.items():
            last = {run.job: run for run in history}
            for job_id, run in last.items():
                record = self.job(entity, job_id)
                if record is not None and record.state == "dead":
                    continue
                if record is None or record.state != "completed":
                    found.append(Violation("incomplete", entity, f"{record} {run}", (run,)))
                elif (record.fencing_token, record.attempt) != (run.token, run.attempt):
                    found.append(Violation("rerun", entity, f"{record} {run}", (run,)))
        return found

    def assert_completed_once(self, per_entity: Mapping[str, list[Run]]) -> None:
        """Each job's record shows it completed, by its last run (that run's token and attempt):
        whatever ran before it was not recorded as a completion."""
        found = self.completion_violations(per_entity)
        assert not found, describe(found)

    def lost_jobs(self) -> set[str]:
        """Ids of jobs whose worker logged that it lost the lease while running them."""
        return {
            m.group(1)
            for w in self.started
            for m in re.finditer(r"job (\S+) of .* lease lost", w.output())
        }

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for bucket in self.keys.buckets(self.entity_type):
            for state, n in self.redis.hgetall(in_bucket(bucket, "counts")).items():  # type: ignore[union-attr]
                total[state] += int(n)
        return dict(total)

    def wait_all_done(self, total: int, timeout: float) -> dict[str, int]:
        """Wait until `total` jobs of the type have ended (completed, cancelled or dead)."""

        def done() -> dict[str, int] | None:
            c = self.counts()
            ended = c.get("completed", 0) + c.get("cancelled", 0) + c.get("dead", 0)
            busy = sum(c.get(s, 0) for s in ("waiting", "delayed", "active", "retrying"))
            return c if ended >= total and busy == 0 else None

        try:
            return wait_until(done, timeout, f"{total} jobs to end", every=0.1)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; counts {self.counts()}\n{self.logs()}") from None


# --- what the handlers recorded -------------------------------------------------------------------
@dataclass
class Run:
    """One run (attempt) of a job, as the `record` handler saw it."""

    entity: str
    job: str
    seq: int
    token: int
    attempt: int
    pid: int
    worker: str
    start: float
    end: float | None = None
    how: str | None = None
    """'end' (the handler returned), 'cancel' (cancelled), or None (no accepted end record)."""
    fenced: bool = False
    """Its end (or cancel) record came after a newer lease holder's writes and was refused by
    the fenced store: its lease was lost while it ran (it was paused or starved)."""


def records(client: redis.Redis, key: str = LOG_KEY) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.lrange(key, 0, -1)]  # type: ignore[union-attr]


def load_runs(client: redis.Redis, key: str = LOG_KEY) -> list[Run]:
    """The runs whose start the fenced store accepted, in start order (a run whose every write
    was refused had no effect at all and is left out). With `key` EFFECTS_KEY: every run, its
    writes refused or not (`fenced` still says which ends were refused)."""
    runs: dict[tuple[str, str, int, int], Run] = {}
    for r in records(client, key):
        k = (r["entity"], r["job"], r["token"], r["attempt"])
        if r["ev"] == "start":
            assert k not in runs, f"two starts of one run: {r}"
            runs[k] = Run(
                r["entity"],
                r["job"],
                r["seq"],
                r["token"],
                r["attempt"],
                r["pid"],
                r["worker"],
                r["t"],
            )
        else:
            run = runs.get(k)
            assert run is not None, f"end without a start: {r}"
            assert run.end is None, f"two ends of one run: {r}"
            run.end, run.how = r["t"], r["ev"]
    for r in records(client, REJECTED_KEY):
        run = runs.get((r["entity"], r["job"], r["token"], r["attempt"]))
        if run is not None and r["ev"] != "start":
            run.fenced = True
    return sorted(runs.values(), key=lambda run: run.start)


@dataclass(frozen=True)
class Violation:
    """One way a history broke a guarantee. The tests assert there is none; bench/soak.py
    counts them by kind."""

    kind: str
    """'overlap' (two runs of an entity at once), 'token' (a fencing token went down), 'order'
    (a later job of an entity started before an earlier one's run), 'rerun' (a job ran again
    after a run whose completion counted), 'incomplete' (a job's last run did not complete),
    'unended' (a run without an end, of a process that was not killed), 'unknown' (a run of an
    entity not expected)."""
    entity: str
    message: str
    runs: tuple[Any, ...] = ()
    """The runs (or effect spans) concerned, the earlier first."""


def describe(found: list[Violation], limit: int = 5) -> str:
    more = f"\n... and {len(found) - limit} more" if len(found) > limit else ""
    return "\n".join(v.message for v in found[:limit]) + more


def history_violations(
    runs: Iterable[Run],
    expected: Mapping[str, int],
    kill_times: Mapping[int, float],
    *,
    dead: Mapping[str, set[int]] | None = None,
    lost_jobs: frozenset[str] | set[str] = frozenset(),
) -> tuple[dict[str, list[Run]], list[Violation]]:
    """The runs per entity, and what in them breaks a guarantee (see `check_history`)."""
    per_entity: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        per_entity[run.entity].append(run)
    found = [
        Violation("unknown", e, f"runs of an unknown entity {e!r}", tuple(per_entity[e]))
        for e in sorted(set(per_entity) - set(expected))
    ]
    dead = dead or {}
    for entity, n in expected.items():
        history = per_entity.get(entity, [])
        ends: list[tuple[float, Run]] = []
        for run in history:
            if run.end is None and run.fenced:
                ends.append((run.start, run))
            elif run.end is None:
                killed = kill_times.get(run.pid)
                if killed is None or killed < run.start:
                    why = f"run lost by a process that was not killed: {run}"
                    found.append(Violation("unended", entity, why, (run,)))
                    continue
                ends.append((killed, run))
            elif run.end < run.start:
                found.append(Violation("unended", entity, f"ends before it starts: {run}", (run,)))
            else:
                ends.append((run.end, run))
        # No overlap: each run starts after every run before it (in start order) has ended.
        latest: tuple[float, Run] | None = None
        for end_b, b in ends:
            if latest is not None and b.start < latest[0]:
                end_a, a = latest
                why = f"overlap on {entity!r}:\n {a}\n {b} (began before {end_a})"
                found.append(Violation("overlap", entity, why, (a, b)))
            if latest is None or end_b > latest[0]:
                latest = (end_b, b)
        for (end_a, a), (_, b) in itertools.pairwise(ends):
            if b.token < a.token:
                why = f"fencing token went backwards on {entity!r}: {a} -> {b}"
                found.append(Violation("token", entity, why, (a, b)))
            if b.seq < a.seq or (b.seq == a.seq and b.job != a.job):
                found.append(Violation("order", entity, f"order broken on {entity!r}: {a} -> {b}"))
            elif b.seq == a.seq and a.how == "end":
                unacked = kill_times.get(a.pid, 0.0) >= end_a or a.job in lost_jobs
                if not unacked:
                    why = f"{entity!r}: ran again after completing: {a} {b}"
                    found.append(Violation("rerun", entity, why, (a, b)))
        last = {run.seq: run for run in history}  # the last run of each job
        completed = {seq for seq, run in last.items() if run.how == "end"}
        want = set(range(n)) - dead.get(entity, set())
        for seq in sorted(completed ^ want):
            why = f"{entity!r}: completed {sorted(completed)}, want {sorted(want)} (seq {seq})"
            found.append(Violation("incomplete", entity, why, (last[seq],) if seq in last else ()))
    return dict(per_entity), found


def check_history(
    runs: Iterable[Run],
    expected: Mapping[str, int],
    kill_times: Mapping[int, float],
    *,
    dead: Mapping[str, set[int]] | None = None,
    lost_jobs: frozenset[str] | set[str] = frozenset(),
) -> dict[str, list[Run]]:
    """Assert, per entity: runs never overlap (in their accepted effects), in start order their
    seqs never go back and their fencing tokens never go down; a job runs again only after a
    run that did not complete: it was cancelled, fenced out, or its process was killed (during
    the handler, or after the handler returned but before the outcome was recorded, which
    at-least-once delivery allows), or its worker logged that the lease was lost (`lost_jobs`);
    and the last run of every job seq 0..n-1 completed (except dead-lettered seqs). A run
    without an end must belong to a killed process (its interval ends at the kill) or have been
    fenced out (its accepted effects end with its start record). Returns the runs per entity."""
    per_entity, found = history_violations(
        runs, expected, kill_times, dead=dead, lost_jobs=lost_jobs
    )
    assert not found, describe(found)
    return per_entity


@dataclass(frozen=True)
class EffectSpan:
    """One run as its unfenced effects show it: from its start record to its end or cancel
    record (`ended`), or to its process's kill."""

    entity: str
    job: str
    token: int
    attempt: int
    pid: int
    start: float
    end: float
    ended: bool


def effect_spans(client: redis.Redis, kill_times: Mapping[int, float]) -> list[EffectSpan]:
    """Every run's span in the effects without fencing (every record a handler wrote, refused
    by the fenced store or not), in start order. A run with neither an end nor a kill of its
    process ends at infinity; one with an end but no start begins at minus infinity."""
    spans: dict[tuple[str, str, int, int], list[Any]] = {}
    for r in records(client, EFFECTS_KEY):
        span = spans.setdefault((r["entity"], r["job"], r["token"], r["attempt"]), [None, None])
        span[0 if r["ev"] == "start" else 1] = (r["t"], r["pid"])
    made = []
    for (entity, job, token, attempt), (start, end) in spans.items():
        pid = (start or end)[1]
        if end is not None:
            stop, ended = end[0], True
        else:
            stop, ended = kill_times.get(pid, math.inf), False
        begin = -math.inf if start is None else start[0]
        made.append(EffectSpan(entity, job, token, attempt, pid, begin, stop, ended))
    return sorted(made, key=lambda span: (span.entity, span.start))


def effect_overlaps(spans: Iterable[EffectSpan]) -> list[Violation]:
    """Per entity, runs whose unfenced effects overlap in time (a run that began before every
    run before it had ended), and spans that are not whole (no start, or no end nor kill: left
    out of the overlap check)."""
    found = []
    latest: dict[str, EffectSpan] = {}
    for b in spans:
        if math.isinf(b.start) or math.isinf(b.end):
            found.append(Violation("unended", b.entity, f"a run without a start or end: {b}", (b,)))
            continue
        a = latest.get(b.entity)
        if a is not None and b.start < a.end:
            why = f"overlapping effects on {b.entity!r}: {a} until {a.end}, {b}"
            found.append(Violation("overlap", b.entity, why, (a, b)))
        if a is None or b.end > a.end:
            latest[b.entity] = b
    return found


def assert_effects_never_overlap(client: redis.Redis, kill_times: Mapping[int, float]) -> int:
    """Per entity, the runs' effects without fencing (every record a handler wrote, refused by
    the fenced store or not) never overlap in time: a run's interval is from its start record to
    its end or cancel record, or to its process's kill. Returns how many runs there were."""
    spans = effect_spans(client, kill_times)
    found = effect_overlaps(spans)
    assert not found, describe(found)
    return len(spans)


def reruns(runs: Iterable[Run]) -> list[tuple[Run, Run]]:
    """(run, the next run of the same job) for every job that ran more than once."""
    by_job: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_job[run.job].append(run)
    return [pair for job_runs in by_job.values() for pair in itertools.pairwise(job_runs)]


def runs_of(workers: Workers, **match: object) -> list[Run]:
    """The recorded runs whose fields equal `match` (e.g. pid=..., seq=1)."""
    runs = load_runs(workers.redis)
    return [r for r in runs if all(getattr(r, k) == v for k, v in match.items())]
