"""The `aq` command line.

Every error a person can cause (bad JSON, an unknown handler, Redis down, a strange entity id)
ends in one line on stderr and a non-zero exit code, never a traceback.

This module is the top of the layers (docs/design.md): nothing imports it. The commands of the
layers above the runtime (`aq up`, `aq demo`, `aq dashboard`, `aq operator`, `aq crd`) are
reached by module name only when asked for (`LAZY_COMMANDS`), so a worker image without their
dependencies still runs `aq worker`; they parse with `cliargs`, not with this module.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any, BinaryIO

import redis.exceptions

from . import logs
from .cliargs import EXIT_ERROR, EXIT_USAGE, Parser, json_arg, positive
from .client import Client, NewJob
from .config import Settings
from .connection import permission_denied
from .controls import Controls
from .dead_letters import DeadLetters
from .errors import AtomicQueuesError, ConfigError, InvalidInput, JobNotFound
from .extras import missing_extra
from .index_reads import IndexReads
from .jobs import Job
from .lock_types import Lock
from .locks import Locks
from .memory import eviction_warning
from .presence import Presence
from .schedule_cli import add_parser as add_schedule_parser
from .schedule_cli import cmd_schedule
from .schedules import Schedules

LAZY_COMMANDS = {
    "up": "run the workers of an EntityWorkerPool manifest on this machine until Ctrl-C",
    "demo": "see it work: a private Redis, a local pool, 432 jobs, a killed worker, a check",
    "operator": "run the Kubernetes operator for EntityWorkerPools (the operator extra)",
    "crd": "print (or --write) the EntityWorkerPool CustomResourceDefinition",
    "dashboard": "serve a web dashboard of this Redis (the dashboard extra)",
}
"""Commands of the layers above the runtime, imported only when asked for, and what they do."""

FROM_CHUNK = 10_000
"""Lines of `aq enqueue --from` sent per `Client.enqueue_many` call (held in memory at once)."""

JOB_KEYS = ("entity_type", "entity_id", "name")
"""Keys every line of `aq enqueue --from` has."""
OPTIONAL_JOB_KEYS = (
    "payload",
    "job_id",
    "delay",
    "priority",
    "attempts",
    "keep_completed",
    "timeout",
    "backoff",
)
"""Keys a line of `aq enqueue --from` may have (absent or null: the default)."""

ENQUEUE_FROM_HELP = f"""\
--from FILE.jsonl (or --from - for standard input) enqueues many jobs: one JSON object
per line (blank lines are skipped), with the keys
  entity_type, entity_id, name   required (each line names its own entity)
  payload                        any JSON (default null)
  job_id                         idempotency key, unique per entity
  delay, keep_completed          seconds (numbers, not negative)
  timeout                        the job's time limit, seconds (default: the handler's)
  priority, attempts             integers
  backoff                        an object, e.g. {{"type": "fixed", "delay": 5}}
for example
  {{"entity_type": "user", "entity_id": "42", "name": "send", "payload": {{"n": 1}}}}

Every line is checked before anything is sent: a bad line (its number is named) enqueues
nothing. The jobs are then sent {FROM_CHUNK:,} lines at a time, so a huge file is never held
in memory whole; if Redis fails part-way, the earlier chunks stay enqueued. Running the same
file again is then safe for lines with a job_id (enqueue is idempotent per job id); lines
without one would be enqueued twice. Prints "N job(s) enqueued".
"""


ENTITY_HELP = "the job's entity: needed for a job id chosen by the producer (--job-id)"


def build_parser() -> Parser:
    parser = Parser(
        prog="aq",
        description="AtomicQueues: atomic per-entity job processing on Redis.",
        epilog="`aq COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--redis-url", help="Redis URL (default: $AQ_REDIS_URL)")
    parser.add_argument("--prefix", help="key prefix (default: $AQ_PREFIX or 'aq')")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser(
        "enqueue",
        help="add a job to an entity's queue (or many: --from FILE.jsonl)",
        usage="%(prog)s TYPE ID NAME [options]\n       %(prog)s --from FILE.jsonl [--json]",
        description="Add one job (TYPE ID NAME; prints its id) or many (--from FILE.jsonl).",
        epilog=ENQUEUE_FROM_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("entity_type", nargs="?", metavar="TYPE", help="entity type")
    p.add_argument("entity_id", nargs="?", metavar="ID", help="entity id")
    p.add_argument("name", nargs="?", metavar="NAME", help="handler name")
    p.add_argument(
        "--payload",
        type=json_arg,
        default=argparse.SUPPRESS,
        help="JSON payload, @FILE, or - for stdin",
    )
    p.add_argument("--job-id", help="idempotency key, unique per entity")
    p.add_argument("--delay", type=positive, help="seconds before the job may start")
    p.add_argument("--priority", type=int, help="-1000..1000, higher first (default 0)")
    p.add_argument("--attempts", type=int, help="maximum attempts")
    p.add_argument(
        "--timeout",
        type=positive,
        metavar="S",
        help="the job's time limit in seconds (default: its handler's, else $AQ_JOB_TIMEOUT)",
    )
    p.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE.jsonl",
        help="enqueue the jobs of a JSON Lines file (- for stdin), one job per line; see below",
    )
    p.add_argument(
        "--json", action="store_true", help='print {"enqueued": N, "job_ids": [...]} instead'
    )

    p = sub.add_parser("worker", help="run a worker")
    p.add_argument(
        "--handlers",
        default=os.environ.get("AQ_HANDLERS") or None,
        help="MODULE:ATTRIBUTE of a Registry (default: $AQ_HANDLERS)",
    )
    p.add_argument("--entity-type", required=True)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--entity-id", help="serve this one entity (dedicated)")
    group.add_argument("--slots", type=int, help="serve any entities, K at a time (packed)")
    p.add_argument("--name", help="worker name (default: NODE-PID-RANDOM)")
    p.add_argument("--idle-timeout", type=positive, help="seconds without work before exit")
    p.add_argument("--shutdown-grace", type=positive, help="seconds a job may finish in")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")

    p = sub.add_parser("status", help="queues, entities and workers")
    p.add_argument("--entity-type", help="only this type")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("job", help="one job: its state, attempts, result or error")
    job = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    a = job.add_parser("show", help="state, attempts, times, payload, result or error of a job")
    a.add_argument("job_id", metavar="JOB_ID", help="the id `aq enqueue` printed")
    a.add_argument("--entity", nargs=2, metavar=("TYPE", "ID"), help=ENTITY_HELP)
    a.add_argument("--json", action="store_true", help="machine-readable output")

    for action, text in (
        ("pause", "start no more jobs of an entity, or of every entity of a type"),
        ("resume", "start jobs again after `aq pause`"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("entity_type", metavar="TYPE", help="entity type")
        p.add_argument("entity_id", nargs="?", metavar="ID", help="one entity (default: all)")

    p = sub.add_parser(
        "limit",
        help="set an entity's limits, or its type's defaults; without options, print them",
    )
    p.add_argument("entity_type", metavar="TYPE", help="entity type")
    p.add_argument("entity_id", nargs="?", metavar="ID", help="one entity (default: the type)")
    p.add_argument("--concurrency", type=int, metavar="N", help="jobs at once (per entity)")
    p.add_argument(
        "--max-backlog",
        type=int,
        metavar="N",
        help="enqueue refuses past N jobs waiting or delayed (0: no limit)",
    )
    p.add_argument(
        "--rate",
        type=_rate,
        metavar="N/SECONDS",
        help="at most N job starts per SECONDS, e.g. 10/60 (0: no limit)",
    )
    p.add_argument(
        "--shared-rate",
        type=_rate,
        metavar="N/SECONDS",
        help="for a type: at most N handlers of all its entities start per SECONDS (0: none)",
    )

    p = sub.add_parser(
        "cancel", help="cancel a job: remove it if it has not started, else stop its handler"
    )
    p.add_argument("job_id", metavar="JOB_ID", help="the id `aq enqueue` printed")
    p.add_argument("--entity", nargs=2, metavar=("TYPE", "ID"), help=ENTITY_HELP)

    p = sub.add_parser("result", help="print a job's result as JSON (what its query returned)")
    p.add_argument("job_id", metavar="JOB_ID", help="the id `aq enqueue` printed")
    p.add_argument("--entity", nargs=2, metavar=("TYPE", "ID"), help=ENTITY_HELP)
    p.add_argument(
        "--wait",
        type=positive,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for the job to end (default: do not wait)",
    )

    p = sub.add_parser("dlq", help="dead-letter lists")
    dlq = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    for action, text in (
        ("list", "show dead jobs (of every entity type unless one is given)"),
        ("requeue", "put dead jobs back"),
        ("purge", "delete dead jobs"),
    ):
        a = dlq.add_parser(action, help=text)
        a.add_argument("entity_type", nargs="?" if action == "list" else None)
        a.add_argument("entity_id", nargs="?", help="one entity (default: all of the type)")
        if action != "list":
            a.add_argument("--job-id", action="append", dest="job_ids", help="only these jobs")
        else:
            a.add_argument("--limit", type=int, default=100)
            a.add_argument("--json", action="store_true")

    p = sub.add_parser("locks", help="resource locks")
    locks = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    a = locks.add_parser("list", help="show held locks")
    a.add_argument("--type", dest="resource_type", help="only this resource type")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = locks.add_parser("release", help="free a lock whoever holds it (operators)")
    a.add_argument("resource_type")
    a.add_argument("resource_id")
    a.add_argument(
        "--force",
        action="store_true",
        required=True,
        help="required: the holder loses the lock while it may still be working",
    )

    p = sub.add_parser("close", help="ask workers to shut down gracefully")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--worker", help="one worker by name")
    target.add_argument("--entity", nargs=2, metavar=("TYPE", "ID"), help="an entity's workers")
    target.add_argument("--node", help="every worker of a node")

    add_schedule_parser(sub)

    for name, text in LAZY_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atomicqueues")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _split_lazy(argv: list[str]) -> tuple[list[str], str, list[str]] | None:
    """(global options, command, its own arguments) when the command is a lazy one."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("--redis-url", "--prefix"):
            i += 2
        elif token.startswith("-"):
            i += 1
        else:
            return (argv[:i], token, argv[i + 1 :]) if token in LAZY_COMMANDS else None
    return None


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if args.redis_url:
        settings = replace(settings, redis_url=args.redis_url)
    if args.prefix:
        settings = replace(settings, prefix=args.prefix)
    return settings


async def _with_client(settings: Settings, action: Callable[[Client], Awaitable[int]]) -> int:
    client = await Client.connect(settings)
    try:
        return await action(client)
    finally:
        await client.close()


def _enqueue_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments of `aq enqueue` (one job or --from), if anything."""
    if args.from_file is None:
        if None in (args.entity_type, args.entity_id, args.name):
            return "enqueue needs TYPE ID NAME (one job) or --from FILE.jsonl (many)"
        return None
    if any(v is not None for v in (args.entity_type, args.entity_id, args.name)):
        return "enqueue --from takes no TYPE ID NAME: each line of the file names its entity"
    options = {
        "--payload": "payload" in args,
        "--job-id": args.job_id is not None,
        "--delay": args.delay is not None,
        "--priority": args.priority is not None,
        "--attempts": args.attempts is not None,
        "--timeout": args.timeout is not None,
    }
    given = [flag for flag, present in options.items() if present]
    if given:
        return f"enqueue --from takes no {given[0]}: give it on each line of the file instead"
    return None


def _print_enqueued(args: argparse.Namespace, count: int, job_ids: list[str]) -> None:
    if args.json:
        print(json.dumps({"enqueued": count, "job_ids": job_ids}, ensure_ascii=False))
    elif args.from_file is not None:
        print(f"{count} job(s) enqueued")
    else:
        print(job_ids[0])


async def cmd_enqueue(args: argparse.Namespace, client: Client) -> int:
    if args.from_file is not None:
        return await cmd_enqueue_from(args, client)
    job_id = await client.enqueue(
        args.entity_type,
        args.entity_id,
        args.name,
        getattr(args, "payload", None),
        job_id=args.job_id,
        delay=args.delay,
        priority=0 if args.priority is None else args.priority,
        attempts=args.attempts,
        timeout=args.timeout,
    )
    _print_enqueued(args, 1, [job_id])
    return 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _job_of(text: str) -> NewJob:
    """The job one line of `aq enqueue --from` describes (`InvalidInput` when it is not one).
    What the line's values mean is checked by the client (`Client.prepare`)."""
    try:
        fields = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise InvalidInput(f"invalid JSON ({exc})") from None
    except RecursionError:
        raise InvalidInput("invalid JSON (nested too deeply)") from None
    if not isinstance(fields, dict):
        raise InvalidInput("not a JSON object (one job per line)")
    for key in JOB_KEYS:
        if key not in fields:
            raise InvalidInput(f"missing key {key!r}")
    for key in fields:
        if key not in JOB_KEYS and key not in OPTIONAL_JOB_KEYS:
            raise InvalidInput(
                f"unknown key {key!r} (known: {', '.join(JOB_KEYS + OPTIONAL_JOB_KEYS)})"
            )
    values = {k: v for k, v in fields.items() if v is not None}
    for key in ("priority", "attempts"):
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInput(f"{key} must be an integer")
    for key in ("delay", "keep_completed", "timeout"):
        value = values.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value < float("inf")
        ):
            raise InvalidInput(f"{key} must be a number of seconds, not negative")
    if not isinstance(values.get("backoff", {}), dict):
        raise InvalidInput("backoff must be a JSON object")
    return NewJob(**values)


@contextmanager
def _open_jobs(path: str) -> Iterator[BinaryIO]:
    """The file of `aq enqueue --from`, or standard input for `-`, to be read twice: a stream
    that cannot go back (stdin, a pipe) is copied to a temporary file while it is read."""
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InvalidInput(f"cannot read {path!r}: {exc.strerror}") from None
    with f:
        yield f


def _numbered_jobs(stream: Iterable[bytes], source: str) -> Iterator[tuple[int, NewJob]]:
    """(line number, job) of every line that is not blank; `InvalidInput` names the line."""
    for n, raw in enumerate(stream, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"line {n} of {source}: not UTF-8 text") from None
        if n == 1:
            text = text.removeprefix("\ufeff")  # a byte order mark
        if not text.strip():
            continue
        try:
            job = _job_of(text)
        except InvalidInput as exc:
            raise InvalidInput(f"line {n} of {source}: {exc}") from None
        yield n, job


async def cmd_enqueue_from(args: argparse.Namespace, client: Client) -> int:
    """`aq enqueue --from`: check every line, then send them `FROM_CHUNK` at a time."""
    source = "standard input" if args.from_file == "-" else repr(args.from_file)
    with _open_jobs(args.from_file) as stream, tempfile.TemporaryFile() as spool:
        seekable = stream.seekable()
        start = stream.tell() if seekable else 0
        copy = None if seekable else spool
        for n, job in _numbered_jobs(_tee(stream, copy), source):
            try:
                client.prepare(job)  # the very checks of enqueue_many, nothing sent
            except InvalidInput as exc:
                # One line, also for a message of several (pydantic's, of a bad backoff).
                message = " ".join(str(exc).split())
                raise InvalidInput(f"line {n} of {source}: {message}") from None
        if seekable:
            stream.seek(start)
            again: BinaryIO = stream
        else:
            spool.seek(0)
            again = spool
        count = 0
        job_ids: list[str] = []
        chunk: list[tuple[int, NewJob]] = []
        for numbered in _numbered_jobs(again, source):
            chunk.append(numbered)
            if len(chunk) == FROM_CHUNK:
                count += await _send(client, chunk, job_ids if args.json else None)
                chunk = []
        if chunk:
            count += await _send(client, chunk, job_ids if args.json else None)
    _print_enqueued(args, count, job_ids)
    return 0


def _tee(stream: BinaryIO, copy: BinaryIO | None) -> Iterator[bytes]:
    """The lines of `stream`, written to `copy` as well when there is one."""
    for line in stream:
        if copy is not None:
            copy.write(line)
        yield line


async def _send(client: Client, chunk: list[tuple[int, NewJob]], job_ids: list[str] | None) -> int:
    """Enqueue one chunk of `aq enqueue --from`; an error says what is enqueued and what not."""
    first, last = chunk[0][0], chunk[-1][0]
    try:
        got = await client.enqueue_many(job for _, job in chunk)
    except AtomicQueuesError as exc:
        before = f"the jobs of the lines before {first} are enqueued, " if first > 1 else ""
        raise AtomicQueuesError(
            f"{exc} ({before}the jobs of lines {first}-{last} may be partly enqueued, later "
            "lines were not: running the same file again is safe for lines with a job_id)"
        ) from None
    if job_ids is not None:
        job_ids.extend(got)
    return len(got)


async def cmd_status(args: argparse.Namespace, client: Client) -> int:
    if warning := await client.call(lambda: eviction_warning(client.redis)):
        print(f"aq: warning: {warning}", file=sys.stderr)
    index, dead = IndexReads(client), DeadLetters(client)
    types = [args.entity_type] if args.entity_type else await index.entity_types()
    workers = await Presence(client).all_workers()
    held = await Locks(client).held()
    report: dict[str, Any] = {
        "types": {},
        "workers": [asdict(w) for w in workers],
        "locks": [lock.to_dict() for lock in held],
    }
    for t in types:
        paused = await client.paused(t)
        report["types"][t] = {
            "counts": await index.counts(t),
            "pending": await index.pending_entities(t),
            "with_work": len(await index.entities_with_work(t)),
            "dead_entities": len(await dead.entities(t)),
            "paused": paused.entity_type,
            "paused_entities": paused.entities,
            "limits": asdict(await Controls(client).limits(t)),
            "schedules": [s.to_dict() for s in await Schedules(client).list(t)],
        }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    if not types:
        print("no entity types yet (nothing was ever enqueued)")
    for t, info in report["types"].items():
        counts = "  ".join(f"{k} {v}" for k, v in info["counts"].items())
        state = "  (PAUSED: aq resume " + t + ")" if info["paused"] else ""
        print(f"{t}: {info['with_work']} entities with work  |  {counts}{state}")
        if info["paused_entities"]:
            shown = ", ".join(repr(e) for e in info["paused_entities"][:10])
            more = len(info["paused_entities"]) - 10
            print(f"    paused: {shown}" + (f" and {more} more" if more > 0 else ""))
        top = sorted(info["pending"].items(), key=lambda kv: -kv[1])[:10]
        for eid, n in top:
            print(f"    {eid!r:<40} {n} waiting")
        if info["schedules"]:
            print(f"    {len(info['schedules'])} schedule(s) (aq schedule list {t})")
    print(f"workers: {len(workers)}")
    for w in workers:
        where = w.entity_id if w.entity_id is not None else f"packed x{w.slots}"
        print(
            f"    {w.name:<40} {w.entity_type}/{where}  node {w.node}  pid {w.pid}"
            f"  holds {len(w.entities)}"
        )
    print(f"locks: {len(held)} held")
    now = await Presence(client).server_time()
    for lock in held[:STATUS_LOCKS]:
        print(f"    {_lock_line(lock, now)}")
    if len(held) > STATUS_LOCKS:
        print(f"    ... {len(held) - STATUS_LOCKS} more (aq locks list)")
    return 0


STATUS_LOCKS = 10
"""Locks `aq status` shows; `aq locks list` shows them all."""


def _lock_line(lock: Lock, now: float) -> str:
    where = f"{lock.resource_type}/{lock.resource_id!r}"
    return (
        f"{where:<40} {lock.owner_type} {lock.owner_id}  token {lock.token}"
        f"  expires in {max(0.0, lock.expires_at - now):.1f}s"
    )


async def cmd_locks(args: argparse.Namespace, client: Client) -> int:
    locks = Locks(client)
    if args.action == "list":
        held = await locks.held(args.resource_type)
        if args.json:
            print(json.dumps([lock.to_dict() for lock in held], indent=2, ensure_ascii=False))
            return 0
        now = await Presence(client).server_time()
        for lock in held:
            print(_lock_line(lock, now))
        print(f"{len(held)} lock(s) held")
        return 0
    released = await locks.force_release(args.resource_type, args.resource_id)
    where = f"{args.resource_type}/{args.resource_id!r}"
    if released is None:
        print(f"{where} was not held: nothing released")
    else:
        print(
            f"released {where} held by {released.owner_type} {released.owner_id}"
            f" (token {released.token})"
        )
    return 0


def _job_json(job: Job) -> dict[str, Any]:
    return asdict(job) | {"backoff": job.backoff.model_dump()}


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).isoformat(sep=" ", timespec="milliseconds")


def _job_report(job: Job) -> list[tuple[str, str]]:
    """What `aq job show` prints of a job, line by line."""
    lines = [
        ("job", job.id),
        ("entity", f"{job.entity_type}/{job.entity_id!r}"),
        ("name", job.name),
        ("state", job.state),
        ("attempts", f"{job.attempt} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("enqueued", _when(job.enqueued_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("payload", job.payload_json),
    ]
    if job.state == "completed":
        lines.append(("result", job.result_json or "null"))
    if job.timeout:
        lines.append(("timeout", f"{job.timeout:g}s"))
    if job.progress_json is not None:
        lines.append(("progress", job.progress_json))
    if job.error:
        lines.append(("error", job.error))
    return lines


def _entity(args: argparse.Namespace) -> tuple[str, str] | None:
    return (args.entity[0], args.entity[1]) if args.entity else None


async def cmd_job(args: argparse.Namespace, client: Client) -> int:
    job = await client.job(args.job_id, entity=_entity(args))
    if args.json:
        print(json.dumps(_job_json(job), indent=2, ensure_ascii=False))
    else:
        for label, value in _job_report(job):
            print(f"{label:<9} {value}".replace("\n", "\n" + " " * 10))  # a traceback
    return 0


async def cmd_pause(args: argparse.Namespace, client: Client) -> int:
    paused = args.command == "pause"
    call = client.pause if paused else client.resume
    await call(args.entity_type, args.entity_id)
    what = args.entity_type if args.entity_id is None else f"{args.entity_type}/{args.entity_id!r}"
    print(f"{what} {'paused' if paused else 'resumed'}")
    return 0


async def cmd_limit(args: argparse.Namespace, client: Client) -> int:
    options = (args.concurrency, args.max_backlog, args.rate, args.shared_rate)
    if options != (None, None, None, None):
        await Controls(client).set_limits(
            args.entity_type,
            args.entity_id,
            concurrency=args.concurrency,
            max_backlog=args.max_backlog,
            rate=args.rate,
            shared_rate=args.shared_rate,
        )
    limits = await Controls(client).limits(args.entity_type, args.entity_id)
    if limits.concurrency is not None:
        print(f"concurrency  {limits.concurrency}")
    print(f"max backlog  {limits.max_backlog or 'none'}")
    print(f"rate         {_rate_text(limits.rate)}")
    if args.entity_id is None:
        print(f"shared rate  {_rate_text(limits.shared_rate)}")
    return 0


def _rate_text(rate: tuple[int, float] | None) -> str:
    return f"{rate[0]}/{rate[1]:g}s" if rate else "none"


def _rate(text: str) -> tuple[int, float]:
    """`--rate N/SECONDS` (or 0: no limit)."""
    if text.strip() == "0":
        return 0, 0
    n, _, seconds = text.partition("/")
    try:
        return int(n), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N/SECONDS, e.g. 10/60") from None


async def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    entity = _entity(args)
    cancelled = await client.cancel(args.job_id, entity=entity)
    state = await _state_or_gone(client, args.job_id, entity)
    if not cancelled:
        if state == "gone":
            raise JobNotFound(args.job_id)
        raise AtomicQueuesError(f"job {args.job_id!r} has ended already: it is {state}")
    print("cancelling: its worker is stopping its handler" if state == "active" else "cancelled")
    return 0


async def _state_or_gone(client: Client, job_id: str, entity: tuple[str, str] | None) -> str:
    try:
        return (await client.job(job_id, entity=entity)).state
    except JobNotFound:
        return "gone"


async def cmd_result(args: argparse.Namespace, client: Client) -> int:
    entity = _entity(args)
    try:
        value = await client.result(args.job_id, timeout=args.wait, entity=entity)
    except TimeoutError:
        job = await client.job(args.job_id, entity=entity)
        waited = f"after {args.wait:g}s" if args.wait else "yet (--wait SECONDS waits for it)"
        raise AtomicQueuesError(
            f"job {args.job_id!r} has not ended {waited}: it is {job.state}"
        ) from None
    print(json.dumps(value, ensure_ascii=False))
    return 0


def _job_line(job: Job) -> str:
    where = f"{job.entity_type}/{job.entity_id!r}"
    return f"{job.id}  {where}  {job.name}  attempts {job.attempt}  {job.error_line}"


async def cmd_dlq(args: argparse.Namespace, client: Client) -> int:
    dead = DeadLetters(client)
    if args.action == "list":
        types = [args.entity_type] if args.entity_type else await IndexReads(client).entity_types()
        jobs: list[Job] = []
        for entity_type in types:
            limit = args.limit - len(jobs)
            if limit > 0:
                jobs += await dead.list(entity_type, args.entity_id, limit=limit)
        if args.json:
            print(json.dumps([_job_json(j) for j in jobs], indent=2, ensure_ascii=False))
        else:
            for job in jobs:
                print(_job_line(job))
            print(f"{len(jobs)} dead job(s)")
        return 0
    if args.entity_type is None:
        raise InvalidInput(f"dlq {args.action} needs the entity type")
    if args.job_ids and args.entity_id is None:
        raise InvalidInput("--job-id needs the entity id too")
    fn = dead.requeue if args.action == "requeue" else dead.purge
    n = await fn(args.entity_type, args.entity_id, args.job_ids)
    print(f"{n} job(s) {'requeued' if args.action == 'requeue' else 'purged'}")
    return 0


async def cmd_close(args: argparse.Namespace, client: Client) -> int:
    presence = Presence(client)
    if args.worker:
        if not await presence.worker_exists(args.worker):
            raise InvalidInput(f"no such worker {args.worker!r} (`aq status` lists the workers)")
        await presence.close_worker(args.worker)
        print(f"close signal sent to worker {args.worker}")
        return 0
    if args.entity:
        live = await presence.entity_workers(*args.entity)
        await presence.close_entity(*args.entity)
        where = f"{args.entity[0]}/{args.entity[1]!r}"
    else:
        live = await presence.node_workers(args.node)
        await presence.close_node(args.node)
        where = f"node {args.node}"
    print(f"close signal sent to {where} ({len(live)} live worker(s))")
    return 0


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from .metrics import serve
    from .registry import load_registry
    from .worker import Worker

    if not args.handlers:
        raise ConfigError("aq worker needs --handlers MODULE:ATTRIBUTE (or AQ_HANDLERS)")
    registry = load_registry(args.handlers)
    if args.idle_timeout is not None:
        settings = replace(settings, idle_timeout=args.idle_timeout)
    if args.shutdown_grace is not None:
        settings = replace(settings, shutdown_grace=args.shutdown_grace)
    if args.metrics_port is not None:
        settings = replace(settings, metrics_port=args.metrics_port)
    if args.slots is not None and args.slots < 1:
        raise InvalidInput("--slots must be at least 1")
    client = await Client.connect(settings)
    try:
        worker = Worker(
            client,
            registry,
            args.entity_type,
            entity_id=args.entity_id,
            slots=args.slots or 1,
            name=args.name,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.close, signal.Signals(sig).name)
        if settings.metrics_port:
            serve(settings.metrics_port)
        # What the process holds by now (modules, handlers, the connection) stays for its whole
        # life: frozen, the cyclic collector stops tracing it, and a full collection, which
        # stops every running job, takes about 1 ms instead of 15-20.
        gc.collect()
        gc.freeze()
        await worker.run()
    finally:
        await client.close()
    return EXIT_ERROR if worker.failed else 0


def _lazy(command: str, rest: list[str]) -> int:
    """Commands of the other layers (operator, pools, dashboard), imported only when asked for."""
    import importlib

    module = {
        "operator": "aq_operator.cli",
        "crd": "aq_operator.cli",
        "up": "atomicqueues.pools.cli",
        "demo": "atomicqueues.pools.cli",
        "dashboard": "atomicqueues.dashboard.cli",
    }[command]
    entry = importlib.import_module(module)
    result: int = entry.main([command, *rest])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    lazy = _split_lazy(argv)
    parser = build_parser()
    args = parser.parse_args(lazy[0] + [lazy[1]] if lazy else argv)
    if args.command == "enqueue" and (usage := _enqueue_usage(args)):
        parser.exit(EXIT_USAGE, f"aq: {usage} (see `aq enqueue --help`)\n")
    try:
        logs.configure(
            logging.DEBUG if args.verbose else logging.INFO,
            logs.log_format(os.environ.get("AQ_LOG_FORMAT")),
        )
        if args.command in LAZY_COMMANDS:
            for flag, var in ((args.redis_url, "AQ_REDIS_URL"), (args.prefix, "AQ_PREFIX")):
                if flag:
                    os.environ[var] = flag
            assert lazy is not None
            return _lazy(args.command, lazy[2])
        settings = _settings(args)
        if args.command == "worker":
            return asyncio.run(cmd_worker(args, settings))
        handler = {
            "enqueue": cmd_enqueue,
            "status": cmd_status,
            "dlq": cmd_dlq,
            "close": cmd_close,
            "job": cmd_job,
            "cancel": cmd_cancel,
            "limit": cmd_limit,
            "pause": cmd_pause,
            "resume": cmd_pause,
            "result": cmd_result,
            "locks": cmd_locks,
            "schedule": cmd_schedule,
        }[args.command]
        return asyncio.run(_with_client(settings, lambda c: handler(args, c)))
    except AtomicQueuesError as exc:
        print(f"aq: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except redis.exceptions.ResponseError as exc:
        if (line := permission_denied(exc)) is None:
            raise
        print(f"aq: {line}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as exc:
        # An optional dependency a lazily imported layer needs; anything else is a bug.
        if (line := missing_extra(exc, f"`aq {args.command}`", args.command)) is None:
            raise
        print(f"aq: {line}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
