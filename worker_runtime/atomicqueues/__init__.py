"""AtomicQueues: atomic per-entity job processing on Redis.

Every entity (a user, a session, a tenant) has its own FIFO queue; at most N jobs of an entity
run at a time across every process and machine (N = 1 by default); handlers receive a fencing
token for what they write downstream.
"""

from .client import Client, NewJob
from .config import Settings
from .context import JobContext
from .controls import Controls
from .dead_letters import DeadLetters
from .errors import (
    AtomicQueuesError,
    BacklogFull,
    InvalidInput,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimedOut,
    LeaseLost,
    LockBusy,
    LockNotOwned,
    NotReplicated,
    PayloadTooLarge,
    PermanentError,
    PoolExhausted,
    RedisOutOfMemory,
    RedisUnavailable,
    UnknownHandler,
)
from .index_reads import IndexReads
from .jobs import Backoff, Job
from .lock_types import Holder, Lock, LockResult
from .locks import Locks
from .registry import Registry
from .schedules import Schedule, Schedules
from .sync import SyncClient
from .worker import Worker

__all__ = [
    "AtomicQueuesError",
    "BacklogFull",
    "Backoff",
    "Client",
    "Controls",
    "DeadLetters",
    "Holder",
    "IndexReads",
    "InvalidInput",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobNotFound",
    "JobTimedOut",
    "LeaseLost",
    "Lock",
    "LockBusy",
    "LockNotOwned",
    "LockResult",
    "Locks",
    "NewJob",
    "NotReplicated",
    "PayloadTooLarge",
    "PermanentError",
    "PoolExhausted",
    "RedisOutOfMemory",
    "RedisUnavailable",
    "Registry",
    "Schedule",
    "Schedules",
    "Settings",
    "SyncClient",
    "UnknownHandler",
    "Worker",
]
