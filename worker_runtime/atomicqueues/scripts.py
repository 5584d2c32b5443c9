"""The Lua scripts, loaded once and called by name.

Every multi-key change is one script, so no crash leaves half a change. Each `lua/NAME.lua`
states its KEYS/ARGV/return contract at its top and names the helpers it uses
(`-- @include X`: `lua/include/X.lua`, which may include others; `lua/include/keys.lua`
documents the key layout). redis-py's Script objects call EVALSHA and load the script again
when the server answers NOSCRIPT (after a restart or SCRIPT FLUSH).

A durable call (`replicas` > 0) sends the script and a WAIT for that many replicas in one
non-transactional pipeline: one round trip, on one connection, so the WAIT covers exactly the
script's writes. Fewer confirmations than asked raise `NotReplicated`, which carries the script's
reply (the change holds on the primary).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

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


@cache
def source(name: str) -> str:
    """The full text of one script (`lua/NAME.lua`) with its helpers: each `-- @include X`
    line is replaced by `lua/include/X.lua`, itself resolved the same way, the first time X
    is included anywhere in the script, and by nothing after that."""
    lua = resources.files(__package__).joinpath("lua")
    seen: set[str] = set()

    def resolve(text: str) -> str:
        out = []
        for line in text.splitlines():
            if line.startswith(INCLUDE):
                helper = line[len(INCLUDE) :].strip()
                if helper not in seen:
                    seen.add(helper)
                    out.append(resolve(lua.joinpath("include", f"{helper}.lua").read_text()))
            else:
                out.append(line)
        return "\n".join(out)

    return resolve(lua.joinpath(f"{name}.lua").read_text())


class Scripts:
    """The project's scripts registered on one Redis client."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source(name)) for name in NAMES
        }

    async def run_many(self, name: str, calls: list[tuple[str, str, list[Any]]]) -> list[Any]:
        """Run script `name` once per (bucket, first arg, more args) in one pipeline: one round
        trip per node. Raises the first error a call met, after every call has run."""
        script = self._scripts[name]
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):  # once more after loading the script (NOSCRIPT: new primary, restart)
            pipe = self._redis.pipeline(transaction=False)
            for i in todo:
                bucket, first, args = calls[i]
                # As a plain command: the cluster pipeline refuses evalsha() by name.
                pipe.execute_command("EVALSHA", script.sha, 1, bucket, first, *args)
            for i, reply in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], redis.exceptions.NoScriptError)]
            if not todo:
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return replies
            await self._redis.script_load(script.script)  # only the calls it refused run again
        raise redis.exceptions.NoScriptError(f"script {name} could not be loaded")

    async def run(
        self, name: str, bucket: str, *args: str | int | float, replicas: int = 0, wait_ms: int = 0
    ) -> Any:
        """Run script `name` on one bucket (its only KEYS entry, which routes it on Cluster);
        with `replicas`, return only once that many replicas have its writes (within
        `wait_ms`), else raise `NotReplicated`."""
        script = self._scripts[name]
        if replicas <= 0:
            # EVALSHA itself, not through the Script object: what that adds on every call
            # (an import, a check against a typing Protocol) cost more than the call's packing.
            try:
                return await self._redis.execute_command("EVALSHA", script.sha, 1, bucket, *args)
            except redis.exceptions.NoScriptError:
                await self._redis.script_load(script.script)
                return await self._redis.execute_command("EVALSHA", script.sha, 1, bucket, *args)
        for _ in range(2):  # once more after loading the script (NOSCRIPT: new primary, restart)
            if isinstance(self._redis, RedisCluster):
                # The node that owns the bucket, on the connection its script goes through. No
                # redirection: a script moved to another node would leave this WAIT behind.
                node = self._redis.get_node_from_key(bucket)
                cpipe = self._redis.pipeline(transaction=False)
                cpipe.execute_command("EVALSHA", script.sha, 1, bucket, *args)  # evalsha: refused
                cpipe.execute_command("WAIT", replicas, wait_ms, target_nodes=node)
                reply, acked = await cpipe.execute(raise_on_error=False, allow_redirections=False)
            else:
                pipe = self._redis.pipeline(transaction=False)
                pipe.evalsha(script.sha, 1, bucket, *args)
                pipe.execute_command("WAIT", replicas, wait_ms)
                reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, redis.exceptions.NoScriptError):
                await self._redis.script_load(script.script)
                continue
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
        raise redis.exceptions.NoScriptError(f"script {name} could not be loaded")
