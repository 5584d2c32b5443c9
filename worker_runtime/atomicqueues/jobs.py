"""What a job is: its states, its record as the scripts return it, and retry backoff."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInput, PayloadTooLarge

JobState = Literal["waiting", "delayed", "active", "retrying", "completed", "dead"]
STATES: tuple[JobState, ...] = ("waiting", "delayed", "active", "retrying", "completed", "dead")

MIN_PRIORITY, MAX_PRIORITY = -1000, 1000

# The order of fields in a job reply from the scripts (JOB_FIELDS in lua/lib.lua), after jslot.
REPLY_FIELDS = (
    "id",
    "eid",
    "name",
    "payload",
    "state",
    "prio",
    "made",
    "max",
    "backoff",
    "enq",
    "start",
    "token",
    "error",
    "result",
    "fin",
)


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

    @classmethod
    def from_fields(cls, entity_type: str, f: Mapping[str, str | None]) -> Job:
        def num(key: str) -> float | None:
            v = f.get(key)
            return float(v) if v not in (None, "") else None

        def ms(key: str) -> float | None:
            v = num(key)
            return None if v is None else v / 1000.0

        backoff_raw = f.get("backoff") or "{}"
        return cls(
            id=f.get("id") or "",
            entity_type=entity_type,
            entity_id=f.get("eid") or "",
            name=f.get("name") or "",
            payload_json=f.get("payload") or "null",
            state=f.get("state") or "",
            priority=int(num("prio") or 0),
            attempt=int(num("made") or 0),
            max_attempts=int(num("max") or 1),
            backoff=Backoff.model_validate_json(backoff_raw),
            enqueued_at=ms("enq") or 0.0,
            started_at=ms("start"),
            fencing_token=int(token) if (token := f.get("token")) else None,
            error=f.get("error") or None,
            result_json=f.get("result") or None,
            finished_at=ms("fin"),
        )

    @classmethod
    def from_reply(cls, entity_type: str, values: list[str | None]) -> Job:
        return cls.from_fields(entity_type, dict(zip(REPLY_FIELDS, values, strict=True)))


def encode_payload(payload: Any, limit: int) -> str:
    """The payload as compact JSON, or a clear error when it is not JSON or too large."""
    if isinstance(payload, BaseModel):
        text = payload.model_dump_json()
    else:
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"payload is not JSON-serialisable: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(size, limit)
    return text
