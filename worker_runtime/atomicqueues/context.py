"""What a handler receives besides its payload: the job, the lease, the fencing token."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .jobs import Job

if TYPE_CHECKING:
    from .client import Client


@dataclass
class JobContext:
    job: Job
    fencing_token: int
    """Pass this to every store the handler writes: it grows with every lease grant, so a
    store that rejects writes with a token lower than the last one it saw is safe from a
    paused former holder (fencing)."""
    worker: str
    client: Client
    """For enqueueing follow-up jobs."""
    log: logging.LoggerAdapter[logging.Logger]
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the lease was lost mid-job: the job has been given back to the queue, and the
    handler is cancelled right after this is set."""

    @property
    def entity_type(self) -> str:
        return self.job.entity_type

    @property
    def entity_id(self) -> str:
        return self.job.entity_id

    @property
    def attempt(self) -> int:
        return self.job.attempt
