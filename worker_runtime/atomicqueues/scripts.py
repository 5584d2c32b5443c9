"""The Lua scripts, loaded once and called by name.

Every multi-key change is one script, so no crash leaves half a change. Each `lua/NAME.lua`
states its KEYS/ARGV/return contract at its top, names the helpers it uses (`-- @include X`:
`lua/include/X.lua`, which may include others; `lua/include/keys.lua` documents the key layout)
and the function flags it needs (`-- @flags ...`). The loader defines one local for them all:
`FUNCTION`, true when the scripts run as functions, false when called with EVALSHA.

Where the server has Redis functions (7.0 and later) and the user may load them, every script
is one function of one library (`library()`), called with FCALL: the helpers are then defined
once, when the library is loaded, not on every call (a few µs of every call of a script). Else
(Redis 6.2, or an ACL without `fcall` and `function|load`) each script is called with EVALSHA.
The client learns which from the server's first answer; a function or script the server does
not have (a restart without persistence, a new primary, FLUSH) is loaded and the call sent
again.

A durable call (`replicas` > 0) sends the script and a WAIT for that many replicas in one
non-transactional pipeline: one round trip, on one connection, so the WAIT covers exactly the
script's writes. Fewer confirmations than asked raise `NotReplicated`, which carries the script's
reply (the change holds on the primary).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from .connection import RedisClient
from .errors import NotReplicated

TOPOLOGY = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
)
"""Errors of a durable call on Cluster after which the slot map is read again."""

NAMES = (
    "enqueue",
    "claim",
    "claim_any",
    "finish",
    "renew",
    "release",
    "sweep",
    "cancel",
    "progress",
    "dlq",
    "set_concurrency",
    "pause",
    "limit",
    "permit",
    "watch_job",
    "lock_acquire",
    "lock_acquire_any",
    "lock_extend",
    "lock_release",
    "lock_list",
    "schedule_set",
    "schedule_remove",
    "schedule_fire",
)


INCLUDE = "-- @include "
FLAGS = "-- @flags "


def _lua(path: str) -> str:
    return resources.files(__package__).joinpath("lua", path).read_text()


def _resolve(text: str, seen: set[str]) -> str:
    """`text` with each `-- @include X` line replaced by `lua/include/X.lua`, itself resolved
    the same way, unless X is in `seen` (then by nothing); adds what it resolves to `seen`."""
    out = []
    for line in text.splitlines():
        if line.startswith(INCLUDE):
            helper = line[len(INCLUDE) :].strip()
            if helper not in seen:
                seen.add(helper)
                out.append(_resolve(_lua(f"include/{helper}.lua"), seen))
        else:
            out.append(line)
    return "\n".join(out)


@cache
def source(name: str) -> str:
    """The full text of one script (`lua/NAME.lua`) with its helpers, each included once."""
    return "local FUNCTION = false\n" + _resolve(_lua(f"{name}.lua"), set())


@cache
def sha(name: str) -> str:
    """The SHA1 by which EVALSHA calls the script."""
    return hashlib.sha1(source(name).encode()).hexdigest()


def flags(name: str) -> list[str]:
    """The function flags a script declares: `allow-oom` for those that move work along when
    memory is full (lua/include/oom.lua), `no-writes` for those that only read."""
    for line in _lua(f"{name}.lua").splitlines():
        if line.startswith(FLAGS):
            return line[len(FLAGS) :].split()
    return []


@dataclass(frozen=True)
class Library:
    """Every script as a function of one library. Its name carries a digest of its code, so
    that workers of two versions find their own functions during a rolling upgrade."""

    name: str
    code: str

    def function(self, script: str) -> str:
        return f"{self.name}_{script}"


@cache
def library() -> Library:
    seen: set[str] = set()
    helpers: list[str] = []
    bodies: list[tuple[str, str]] = []
    for name in NAMES:
        own = _lua(f"{name}.lua").splitlines()
        helpers += [_resolve(line, seen) for line in own if line.startswith(INCLUDE)]
        bodies.append((name, "\n".join(line for line in own if not line.startswith(INCLUDE))))
    digest = hashlib.sha1("\n".join(helpers + [b for _, b in bodies]).encode()).hexdigest()
    lib = Library(f"atomicqueues_{digest[:16]}", "")
    functions = [
        f"redis.register_function{{function_name = '{lib.function(name)}', "
        f"callback = function(KEYS, ARGV)\n{body}\nend, "
        f"flags = {{{', '.join(repr(f) for f in flags(name))}}}}}"
        for name, body in bodies
    ]
    return Library(
        lib.name,
        "\n".join([f"#!lua name={lib.name}", "local FUNCTION = true", *helpers, *functions]),
    )


def _refused_fcall(error: Exception) -> bool:
    """The server has no FCALL (before 7.0), or the user may not call or load functions."""
    text = str(error).lower()
    return ("unknown command" in text and "fcall" in text) or any(
        f"to run the '{command}' command" in text for command in ("fcall", "function|load")
    )


Call = tuple[list[Any], dict[str, Any]]
"""A command and where it goes (`Scripts._call`)."""
Joined = tuple[list[Any], dict[str, Any], asyncio.Future[Any]]
"""A call that joined another one to be sent with it, and the future its answer goes to."""


class Scripts:
    """The project's scripts on one Redis client."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._library = library()
        self.functions: bool | None = None
        """FCALL (True) or EVALSHA (False); None until the server's first answer tells."""
        self._recovered = 0
        """How many times `_recover` loaded the library or gave up FCALL (calls refused before
        that are sent again without doing it again)."""
        self._recovering = asyncio.Lock()
        self._joining: list[Joined] | None = None
        """The calls that joined the one waiting for this turn of the event loop to end."""
        self._in_flight = 0
        """Calls sent and not yet answered."""

    def _call(self, name: str, bucket: str) -> tuple[list[Any], dict[str, Any]]:
        """The head of the command that runs script `name` on `bucket`, and where it goes."""
        if self.functions is False:
            return ["EVALSHA", sha(name), 1, bucket], {}
        # On Cluster, to the bucket's node (redirections are followed): redis-py would ask the
        # server for an FCALL's keys before every call.
        head = ["FCALL", self._library.function(name), 1, bucket]
        if isinstance(self._redis, RedisCluster):
            return head, {"target_nodes": self._redis.get_node_from_key(bucket)}
        return head, {}

    async def _recover(self, name: str, error: Exception, recovered: int) -> bool:
        """After a call (sent when `_recovered` was `recovered`) was refused with `error`: make
        it possible (the library is loaded once however many calls were refused alike at the
        same time), and say whether it is worth sending again (False: the error is the call's
        own)."""
        if isinstance(error, redis.exceptions.NoScriptError):
            await self._redis.script_load(source(name))
            return True
        if not isinstance(error, redis.exceptions.ResponseError):
            return False
        refused = _refused_fcall(error)
        if not refused and "function not found" not in str(error).lower():
            return False
        if self.functions is False:
            return True  # an FCALL sent before another call learned there is none: EVALSHA now
        async with self._recovering:
            if self._recovered != recovered:
                return True  # another call did it meanwhile
            self._recovered += 1
            try:
                if not refused:
                    await self._redis.function_load(self._library.code, replace=True)
            except redis.exceptions.ResponseError as exc:
                if not _refused_fcall(exc):
                    raise
                refused = True
            if refused:
                self.functions = False
        return True

    async def run_many(self, name: str, calls: Sequence[tuple[str, str, list[Any]]]) -> list[Any]:
        """Run script `name` once per (bucket, first arg, more args) in one pipeline: one round
        trip per node. Raises the first error a call met, after every call has run."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(4):  # again after learning FCALL's fate, and after loading
            recovered = self._recovered
            pipe = self._redis.pipeline(transaction=False)
            for i in todo:
                bucket, first, args = calls[i]
                head, where = self._call(name, bucket)
                pipe.execute_command(*head, first, *args, **where)
            for i, reply in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
            errors = [i for i in todo if isinstance(replies[i], Exception)]
            if not errors or not await self._recover(name, replies[errors[0]], recovered):
                break
            todo = [i for i in errors if type(replies[i]) is type(replies[errors[0]])]
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def run(
        self, name: str, bucket: str, *args: str | int | float, replicas: int = 0, wait_ms: int = 0
    ) -> Any:
        """Run script `name` on one bucket (its only KEYS entry, which routes it on Cluster);
        with `replicas`, return only once that many replicas have its writes (within
        `wait_ms`), else raise `NotReplicated`."""
        for attempt in range(4):  # again after learning FCALL's fate, and after loading
            recovered = self._recovered
            head, where = self._call(name, bucket)
            try:
                if replicas <= 0:
                    reply = await self._send([*head, *args], where)
                    if self.functions is None:
                        self.functions = head[0] == "FCALL"
                    return reply
                return await self._durable(name, bucket, [*head, *args], replicas, wait_ms)
            except redis.exceptions.ResponseError as exc:
                if attempt == 3 or not await self._recover(name, exc, recovered):
                    raise
        raise AssertionError("unreachable")

    async def _send(self, command: list[Any], where: dict[str, Any]) -> Any:
        """Send one command; the commands sent in the same turn of the event loop go together
        in one pipeline (auto-pipelining): while another call is in flight, a call waits for
        the turn to end, then sends those that joined it with its own; a call made alone goes
        at once. A round trip costs Redis about as much CPU as a script (on a 2-core VM about
        18 µs per call one at a time, 2 µs per call in a pipeline): the slots of a packed
        worker, whose jobs end and start together, so share them. On Cluster
        the pipeline goes to each bucket's node (one round trip per node)."""
        if self._joining is not None:  # another call of this turn sends it
            future = asyncio.get_running_loop().create_future()
            self._joining.append((command, where, future))
            return await future
        self._in_flight += 1
        try:
            joined = await self._joiners() if self._in_flight > 1 else []
            if not joined:  # alone (as a call made one at a time always is): no pipeline
                return await self._redis.execute_command(*command, **where)
            return await self._send_joined((command, where), joined)
        finally:
            self._in_flight -= 1

    async def _joiners(self) -> list[Joined]:
        """The calls made in the rest of this turn of the event loop."""
        self._joining = []
        try:
            await asyncio.sleep(0)
        except BaseException as exc:
            _fail(self._joining, exc)
            raise
        finally:
            joined, self._joining = self._joining, None
        return joined

    async def _send_joined(self, call: Call, joined: list[Joined]) -> Any:
        pipe = self._redis.pipeline(transaction=False)
        for command, where in [call] + [(c, w) for c, w, _ in joined]:
            pipe.execute_command(*command, **where)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            _fail(joined, exc)  # the connection's fate is theirs
            raise
        for (_, _, future), reply in zip(joined, replies[1:], strict=True):
            if future.done():  # its caller gave up waiting
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if isinstance(replies[0], Exception):
            raise replies[0]
        return replies[0]

    async def _durable(
        self, name: str, bucket: str, command: list[Any], replicas: int, wait_ms: int
    ) -> Any:
        if isinstance(self._redis, RedisCluster):
            # The node that owns the bucket, on the connection its script goes through. No
            # redirection: a script moved to another node would leave this WAIT behind.
            node = self._redis.get_node_from_key(bucket)
            cpipe = self._redis.pipeline(transaction=False)
            cpipe.execute_command(*command, target_nodes=node)
            cpipe.execute_command("WAIT", replicas, wait_ms, target_nodes=node)
            reply, acked = await cpipe.execute(raise_on_error=False, allow_redirections=False)
        else:
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command(*command)
            pipe.execute_command("WAIT", replicas, wait_ms)
            reply, acked = await pipe.execute(raise_on_error=False)
        for answer in (reply, acked):
            if isinstance(answer, Exception):
                if isinstance(self._redis, RedisCluster) and isinstance(answer, TOPOLOGY):
                    # What the cluster client does itself when a plain call meets these:
                    # read the slot map again before the next call.
                    await self._redis.aclose()
                raise answer
        if int(acked) < replicas:
            raise NotReplicated(f"script {name}", int(acked), replicas, reply)
        return reply


def _fail(calls: list[Joined], error: BaseException) -> None:
    """Give the calls that joined another one its error; when that one was cancelled, an
    error of the connection (the call may or may not have run, as when a connection breaks)."""
    if not isinstance(error, Exception):
        error = redis.exceptions.ConnectionError("the call it was sent with was cancelled")
    for _, _, future in calls:
        if not future.done():
            future.set_exception(error)
