"""AtomicQueues: atomic per-entity job processing on Redis.

Every entity (a user, a session, a tenant) has its own FIFO queue; at most N jobs of an entity
run at a time across every process and machine (N = 1 by default); handlers receive a fencing
token for what they write downstream.
"""

from .client import Client
from .config import Settings
from .context import JobContext
from .errors import (
    AtomicQueuesError,
    InvalidInput,
    JobFailed,
    JobNotFound,
    LeaseLost,
    PayloadTooLarge,
    PermanentError,
    RedisUnavailable,
    UnknownHandler,
)
from .jobs import Backoff, Job
from .registry import Registry
from .sync import SyncClient
from .worker import Worker

__all__ = [
    "AtomicQueuesError",
    "Backoff",
    "Client",
    "InvalidInput",
    "Job",
    "JobContext",
    "JobFailed",
    "JobNotFound",
    "LeaseLost",
    "PayloadTooLarge",
    "PermanentError",
    "RedisUnavailable",
    "Registry",
    "Settings",
    "SyncClient",
    "UnknownHandler",
    "Worker",
]
