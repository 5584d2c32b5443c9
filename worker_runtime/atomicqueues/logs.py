"""How the command line logs: readable text by default, one JSON object per line on request.

`AQ_LOG_FORMAT=json` makes every line on stderr one JSON object (time, level, logger, message,
and the exception's traceback when there is one), which log collectors parse without rules. A
line about a job carries its entity type, entity id, job id, job name and attempt as fields of
their own: the worker runs each job inside `job_context`, which puts the job in a context
variable, and every line logged meanwhile (the worker's own and the handler's `ctx.log`, whose
task inherits the variable) reads it from there. The payload is never logged.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from .errors import ConfigError
from .jobs import Job

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

CURRENT_JOB: ContextVar[Job | None] = ContextVar("atomicqueues_current_job", default=None)
"""The job the current task runs, while it runs it (see `job_context`)."""


class _Run(Protocol):
    @property
    def job(self) -> Job: ...


S = TypeVar("S")
R = TypeVar("R")
RunT = TypeVar("RunT", bound=_Run)
P = ParamSpec("P")


def job_context(
    method: Callable[Concatenate[S, RunT, P], Awaitable[R]],
) -> Callable[Concatenate[S, RunT, P], Awaitable[R]]:
    """Decorate a method whose first argument carries a `job`: while it runs, `CURRENT_JOB` is
    that job (a context variable: other tasks, running other jobs, keep theirs)."""

    @functools.wraps(method)
    async def wrapper(self: S, run: RunT, /, *args: P.args, **kwargs: P.kwargs) -> R:
        token = CURRENT_JOB.set(run.job)
        try:
            return await method(self, run, *args, **kwargs)
        finally:
            CURRENT_JOB.reset(token)

    return wrapper


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, with the time's text made once a second: a busy worker logs a line per
    job, and formatting the same second over again was most of what a line cost."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """What `logging.Formatter` writes (`2026-01-02 03:04:05,678`)."""
        second = int(record.created)
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = (second, text)  # one assignment: safe between threads
        return f"{text},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = CURRENT_JOB.get()
        if job is not None:
            line.update(
                entity_type=job.entity_type,
                entity_id=job.entity_id,
                job_id=job.id,
                job_name=job.name,
                attempt=job.attempt,
            )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def log_format(value: str | None) -> str:
    """The format `AQ_LOG_FORMAT` names (empty or unset: text); `ConfigError` for another."""
    chosen = (value or "text").strip().lower()
    if chosen not in FORMATS:
        raise ConfigError(f"AQ_LOG_FORMAT={value!r} is not one of: {', '.join(FORMATS)}")
    return chosen


def configure(level: int, fmt: str) -> None:
    """Log records of `level` and above to stderr in `fmt` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler])
