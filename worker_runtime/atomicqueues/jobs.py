"""What a job is: its states, its record as the scripts return it, and retry backoff."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInput, PayloadTooLarge

JobState = Literal["waiting", "delayed", "active", "retrying", "completed", "cancelled", "dead"]
STATES: tuple[JobState, ...] = (
    "waiting",
    "delayed",
    "active",
    "retrying",
    "completed",
    "cancelled",
    "dead",
)

MIN_PRIORITY, MAX_PRIORITY = -1000, 1000

to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
"""Compact JSON of a payload or a result; `ValueError` for NaN or infinity. One encoder made
once: `json.dumps` with options makes a new one per call."""
_header_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def is_integer(value: object) -> bool:
    """An int, not a bool (a job's priority and attempts, a rate's starts)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_seconds(value: object) -> bool:
    """A finite number of seconds, not negative (a delay, a time limit, a rate's period)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf


REPLY_FIELDS = ("d", "s", "m", "t", "st", "er", "r", "f")
"""The fields of a job in a script's reply, in this order, after its slot (JOB_REPLY in
lua/include/job.lua; lua/include/keys.lua says what each holds)."""


class Backoff(BaseModel):
    """How long a failed job waits before its next attempt.

    `fixed`: always `delay` seconds. `exponential`: `delay * 2**(attempt-1)`, capped at
    `max_delay`. `jitter` spreads each wait uniformly by up to that fraction (0.2 = ±20%), so
    jobs that failed together do not retry together; an exponential wait stays within the cap.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["fixed", "exponential"] = "exponential"
    delay: float = Field(default=1.0, ge=0)
    max_delay: float = Field(default=300.0, ge=0)
    jitter: float = Field(default=0.2, ge=0, le=1)

    def seconds(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        if self.type == "fixed":
            base = self.delay
        else:
            # The exponent is bounded: 2.0 ** 1024 overflows, and any cap is reached long before.
            base = min(self.max_delay, self.delay * 2.0 ** min(max(0, attempt - 1), 1000))
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
            if self.type == "exponential":
                base = min(self.max_delay, base)  # jitter never lifts a wait above the cap
        return max(0.0, base)


DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True)
class Job:
    """One job as read from Redis."""

    id: str
    entity_type: str
    entity_id: str
    name: str
    payload_json: str
    state: str
    priority: int
    attempt: int
    """Attempts made so far (during a run: the number of the running attempt)."""
    max_attempts: int
    backoff: Backoff
    enqueued_at: float
    """Seconds since the epoch, Redis server clock."""
    started_at: float | None
    fencing_token: int | None
    error: str | None
    result_json: str | None
    finished_at: float | None

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_json)

    @property
    def result(self) -> Any:
        return None if self.result_json in (None, "") else json.loads(self.result_json)

    keep_ms: int = 0
    """How long the job is kept once completed, in milliseconds (0: not kept)."""
    keep_count: int = 0
    """At most this many completed jobs of its entity are kept."""
    timeout: float | None = None
    """The time limit its enqueue gave it, in seconds (None: the handler's or the worker's)."""
    progress_json: str | None = None
    """What its handler last reported with `JobContext.progress` (JSON), if anything."""

    @property
    def progress(self) -> Any:
        return None if self.progress_json is None else json.loads(self.progress_json)

    @property
    def error_line(self) -> str | None:
        """The first line of `error`: the error's type and message, without the traceback."""
        return None if self.error is None else self.error.partition("\n")[0]

    trace_context: Mapping[str, str] | None = None
    """The trace context enqueue carried (tracing.py), when tracing was on there."""

    @classmethod
    def from_fields(cls, entity_type: str, f: Mapping[str, str | None]) -> Job:
        """A job from its hash in Redis (or a script's reply, `REPLY_FIELDS`)."""

        def ms(key: str) -> float | None:
            v = f.get(key)
            return float(v) / 1000.0 if v not in (None, "") else None

        enqueued, rest = (f.get("d") or "0 []\nnull").split(" ", 1)
        head, payload = rest.split("\n", 1)
        job_id, eid, name, prio, max_attempts, backoff, keep_ms, keep_n, _, *more = json.loads(head)
        return cls(
            id=job_id,
            entity_type=entity_type,
            entity_id=eid,
            name=name,
            payload_json=payload,
            state=f.get("s") or "waiting",
            priority=prio,
            attempt=int(f.get("m") or 0),
            max_attempts=max_attempts,
            backoff=DEFAULT_BACKOFF if backoff is None else Backoff.model_validate(backoff),
            enqueued_at=float(enqueued) / 1000.0,
            started_at=ms("st"),
            fencing_token=int(token) if (token := f.get("t")) else None,
            error=f.get("er") or None,
            result_json=f.get("r") or None,
            finished_at=ms("f"),
            keep_ms=keep_ms,
            keep_count=keep_n,
            timeout=more[0] if more else None,
            progress_json=f.get("pg") or None,
            trace_context=_text_fields(more[1]) if len(more) > 1 else None,
        )

    @classmethod
    def from_reply(cls, entity_type: str, values: list[str | None]) -> Job:
        return cls.from_fields(entity_type, dict(zip(REPLY_FIELDS, values, strict=True)))


def job_header(
    job_id: str,
    entity_id: str,
    name: str,
    priority: int,
    max_attempts: int,
    backoff: Backoff,
    keep_ms: int,
    keep_count: int,
    keep_failed_ms: int,
    timeout: float | None = None,
    trace: Mapping[str, str] | None = None,
) -> str:
    """What a job's hash holds of it from its enqueue on (lua/include/queue.lua reads it): one
    line of JSON; the default backoff as null, which keeps a job's hash small. The time limit
    and a trace context (tracing.py) come last, only when there is one."""
    header: list[Any] = [
        job_id,
        entity_id,
        name,
        priority,
        max_attempts,
        None if backoff is DEFAULT_BACKOFF or backoff == DEFAULT_BACKOFF else backoff.model_dump(),
        keep_ms,
        keep_count,
        keep_failed_ms,
    ]
    if timeout is not None or trace:
        header.append(timeout)
    if trace:
        header.append(dict(trace))
    return _header_json(header)


def _text_fields(value: object) -> Mapping[str, str] | None:
    """A trace context read back from a header: text fields only, else None."""
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return value
    return None


def encode_payload(payload: Any, limit: int) -> str:
    """The payload as compact JSON, or a clear error when it is not JSON or too large."""
    if isinstance(payload, BaseModel):
        text = payload.model_dump_json()
    else:
        try:
            text = to_json(payload)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"payload is not JSON-serialisable: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(size, limit)
    return text
