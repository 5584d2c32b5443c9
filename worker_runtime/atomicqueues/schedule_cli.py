"""The `aq schedule` commands: add, list and remove scheduled jobs (schedules.py), and run a
ticker where neither `aq up` nor the operator runs one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from datetime import UTC, datetime
from typing import Any

from .cliargs import json_arg, positive
from .client import Client
from .errors import InvalidInput
from .schedules import Schedule, Schedules, Ticker, time_zone

ADD_EPILOG = """\
Without ID, the jobs go to the entity named after the schedule (NAME), so runs of one
schedule never overlap. Adding a NAME the type already has replaces that schedule. A cron
expression has 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first),
read in --tz (an IANA name, default UTC). Ticks missed while nothing ticked fire once, not
in a burst. `aq up` and the operator fire the schedules of their pools' entity types; where
neither runs, run `aq schedule run TYPE`.
examples:
  aq schedule add report --name nightly --job build --cron "0 3 * * *" --tz Europe/Berlin
  aq schedule add user 42 --name ping --job ping --every 60 --payload '{"deep": true}'
"""


def add_parser(sub: Any) -> None:
    """The `schedule` command and its actions, on the `aq` parser's subcommands."""
    p = sub.add_parser("schedule", help="scheduled jobs: every N seconds or on a cron expression")
    actions = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    a = actions.add_parser(
        "add",
        help="add (or replace) a schedule",
        epilog=ADD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("entity_type", metavar="TYPE")
    a.add_argument("entity_id", metavar="ID", nargs="?", help="the entity its jobs go to")
    a.add_argument("--name", required=True, help="unique per entity type")
    a.add_argument("--job", required=True, help="the handler's name")
    a.add_argument("--payload", type=json_arg, default=None, help="JSON (or @FILE, or -)")
    when = a.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=positive, metavar="SECONDS", help="interval")
    when.add_argument("--cron", metavar="EXPR", help='cron expression, e.g. "0 3 * * *"')
    a.add_argument("--tz", help="time zone of --cron and of a --start without one (default UTC)")
    a.add_argument("--start", help="ISO time of the first tick at the earliest")
    a.add_argument("--priority", type=int, default=0)
    a.add_argument("--attempts", type=int, help="attempts of each job (default: AQ setting)")
    a.add_argument(
        "--timeout", type=float, metavar="S", help="each job's time limit (default: its handler's)"
    )
    a = actions.add_parser("list", help="the schedules, their next and last ticks")
    a.add_argument("entity_type", metavar="TYPE", nargs="?", help="only this type")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = actions.add_parser("remove", help="stop a schedule (jobs it fired stay)")
    a.add_argument("entity_type", metavar="TYPE")
    a.add_argument("name", metavar="NAME")
    a = actions.add_parser("run", help="fire the schedules of these types until Ctrl-C")
    a.add_argument("entity_types", metavar="TYPE", nargs="+")
    a.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")


def _start(text: str | None, tz: str | None) -> float | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"invalid --start {text!r}: use an ISO time, e.g. 2026-12-01T03:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=time_zone(tz or "UTC"))
    return when.timestamp()


def _when(seconds: float | None, tz: str) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, time_zone(tz)).isoformat(timespec="seconds")


def schedule_line(s: Schedule) -> str:
    where = f"{s.entity_type}/{s.entity_id!r}" + (" (type)" if s.per_type else "")
    tz = s.tz if s.cron is not None else "UTC"
    return (
        f"{s.name:<20} {where:<30} {s.job:<16} {s.describe():<28}"
        f" next {_when(s.next_at, tz)}  fired {s.fired}  last {_when(s.last_at, tz)}"
    )


async def cmd_schedule(args: argparse.Namespace, client: Client) -> int:
    schedules = Schedules(client)
    if args.action == "add":
        added = await schedules.add(
            args.entity_type,
            args.name,
            args.job,
            args.payload,
            entity_id=args.entity_id,
            every=args.every,
            cron=args.cron,
            tz=args.tz,
            start=_start(args.start, args.tz),
            priority=args.priority,
            attempts=args.attempts,
            timeout=args.timeout,
        )
        print(f"schedule {added.name} added: {schedule_line(added)}")
        return 0
    if args.action == "list":
        found = await schedules.list(args.entity_type)
        if args.json:
            print(json.dumps([s.to_dict() for s in found], indent=2, ensure_ascii=False))
            return 0
        for s in found:
            print(schedule_line(s))
        print(f"{len(found)} schedule(s)")
        return 0
    if args.action == "remove":
        if not await schedules.remove(args.entity_type, args.name):
            raise InvalidInput(f"no schedule {args.name!r} of type {args.entity_type!r}")
        print(f"schedule {args.name} of {args.entity_type} removed")
        return 0
    return await _run(args, client)


async def _run(args: argparse.Namespace, client: Client) -> int:
    from .metrics import serve

    tickers = [Ticker(client, t) for t in args.entity_types]
    if args.metrics_port:
        serve(args.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(t.run()) for t in tickers]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"firing the schedules of {', '.join(args.entity_types)} (since {started})", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return 0
