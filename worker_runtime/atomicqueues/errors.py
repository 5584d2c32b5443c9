"""One error hierarchy for the whole project.

Everything we raise on purpose derives from `AtomicQueuesError`, so callers can catch the
project's errors without catching bugs. Errors a person can cause (bad input, Redis down) carry a
message fit to print as the one line the command line shows.
"""

from __future__ import annotations


class AtomicQueuesError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidInput(AtomicQueuesError, ValueError):
    """A value given by a caller or a person is not acceptable (the message says which)."""


class PayloadTooLarge(InvalidInput):
    """A job payload exceeds the configured size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class RedisUnavailable(AtomicQueuesError):
    """Redis could not be reached, or cannot take the call right now: trying again later may
    succeed (the worker's loops do)."""


class PoolExhausted(RedisUnavailable):
    """Every connection of a client's pool stayed busy while a call waited for one: more calls
    at once than the pool holds (the server itself may be fine). Retry, or make fewer calls at
    once on one client."""

    def __init__(self, where: str, size: int | None, waited: float | None) -> None:
        connections = f"all {size} connections" if size else "every connection"
        during = f" for {waited:g}s" if waited else ""
        super().__init__(
            f"{connections} of this client to Redis at {where} stayed busy{during}: more calls "
            "at once than its connection pool holds (the server was not the problem); make "
            "fewer calls at once on one client, or retry"
        )
        self.where = where
        self.size = size


class RedisOutOfMemory(RedisUnavailable):
    """Redis refused a write because its memory is full (maxmemory reached, policy noeviction).

    Nothing of the refused call was written. New work (enqueue) is refused until memory is freed
    or maxmemory raised; what moves jobs already in Redis along (claim, finish, lease renewal
    and release, locks) still runs, so running jobs finish. A `RedisUnavailable`: retry later.
    """

    def __init__(self, where: str, written: str = "nothing was written") -> None:
        super().__init__(
            f"Redis at {where} is out of memory (maxmemory reached) and refused the write; "
            f"{written}: free memory or raise maxmemory, then retry"
        )
        self.where = where


class BacklogFull(AtomicQueuesError):
    """An enqueue refused: the entity already has its max backlog of jobs waiting or delayed
    (`Controls.set_limits`). Nothing of the refused jobs was written."""

    def __init__(self, refused: list[tuple[str, str, str]], enqueued: int = 0) -> None:
        entity_type, entity_id, job_id = refused[0]
        where = f"{entity_type}/{entity_id!r}"
        if len(refused) == 1 and not enqueued:
            text = f"job {job_id!r} not enqueued: the backlog of {where} is full (max backlog)"
        else:
            text = (
                f"{len(refused)} job(s) not enqueued, the first of {where}: their entity's "
                f"backlog is full (max backlog); the other {enqueued} job(s) were enqueued"
            )
        super().__init__(text)
        self.refused = refused
        """(entity type, entity id, job id) of each refused job."""


class NotReplicated(AtomicQueuesError):
    """A change was made on the primary, but fewer replicas than asked (`AQ_DURABLE_REPLICAS`)
    confirmed it within `AQ_DURABLE_TIMEOUT`: it holds now, and a failover before the replicas
    catch up would undo it. `reply` is what the change's script answered."""

    def __init__(
        self, what: str, acked: int, wanted: int, reply: object = None, hint: str = ""
    ) -> None:
        super().__init__(
            f"{what} was written on the primary, but only {acked} of {wanted} replicas confirmed "
            f"it in time: it may or may not survive a failover{hint}"
        )
        self.what = what
        self.acked = acked
        self.wanted = wanted
        self.reply = reply


class JobNotFound(AtomicQueuesError, LookupError):
    """No job with that id (it never existed, or its retention has passed)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} (never enqueued, or removed after its retention)")
        self.job_id = job_id


class JobFailed(AtomicQueuesError):
    """A job whose result was awaited ended in the dead-letter list."""

    def __init__(self, job_id: str, error: str) -> None:
        super().__init__(f"job {job_id!r} failed: {error.partition(chr(10))[0]}")
        self.job_id = job_id
        self.error = error


class JobCancelled(JobFailed):
    """A job whose result was awaited was cancelled while it ran (`Client.cancel`)."""

    def __init__(self, job_id: str, why: str) -> None:
        AtomicQueuesError.__init__(self, f"job {job_id!r} was cancelled: {why}")
        self.job_id = job_id
        self.error = why


class JobTimedOut(AtomicQueuesError):
    """A handler ran past its job's time limit and was stopped (the attempt failed)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the handler ran past the job's time limit of {seconds:g}s")
        self.seconds = seconds


class LeaseLost(AtomicQueuesError):
    """The worker's lease on an entity expired or was taken over; its change was refused.

    Raised to a worker that was paused or cut off past its heartbeat TTL: its job has already
    been given back to the queue, so nothing it does under the old fencing token counts.
    """

    def __init__(self, entity_type: str, entity_id: str, token: int | None) -> None:
        super().__init__(
            f"lease on {entity_type}/{entity_id!r} lost (fencing token {token}); change refused"
        )
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.token = token


class LockNotOwned(AtomicQueuesError):
    """A resource lock was released or extended by someone who no longer holds it.

    Its TTL ran out (the holder was paused or cut off), it was force-released, or another owner
    took it since: the change was refused and the lock left as it is. `token` is the fencing
    token the stale holder presented.
    """

    def __init__(self, resource_type: str, resource_id: str, token: int) -> None:
        super().__init__(
            f"lock on {resource_type}/{resource_id!r} is not held under fencing token {token} "
            "(expired, released or taken over); change refused"
        )
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.token = token


class LockBusy(AtomicQueuesError):
    """A resource (or every resource of a pool) is held by someone else.

    Raised where a lock is needed to go on (`Locks.hold`, `ctx.lock`); `acquire` reports it in
    its result instead. `holders` maps each resource asked for to who holds it. In a job it is
    an ordinary failure: the job is retried after its backoff.
    """

    def __init__(self, resource_type: str, holders: dict[str, tuple[str, str]]) -> None:
        who = ", ".join(f"{rid!r} by {owner} ({kind})" for rid, (owner, kind) in holders.items())
        super().__init__(f"{resource_type} lock busy: held {who or 'by someone else'}")
        self.resource_type = resource_type
        self.holders = holders


class HandlerError(AtomicQueuesError):
    """Base of errors about job handlers."""


class UnknownHandler(HandlerError):
    """A job names a handler that is not registered; the job is dead-lettered at once."""


class PermanentError(HandlerError):
    """Raise from a handler to fail a job without retries (straight to the dead-letter list)."""


class ConfigError(AtomicQueuesError):
    """The environment or a command-line option holds an invalid setting."""
