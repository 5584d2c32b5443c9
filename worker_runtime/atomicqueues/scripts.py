"""The Lua scripts, loaded once and called by name.

Every multi-key change is one script, so no crash leaves half a change. Each `.lua` file beside
this module states its KEYS/ARGV/return contract at its top. `lua/lib.lua` holds the functions
they share and is prepended to each, and `lua/lock_lib.lua` to the lock scripts. redis-py's
Script objects call EVALSHA and load the script again when the server answers NOSCRIPT (after a
restart or SCRIPT FLUSH).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

from .connection import RedisClient

NAMES = (
    "enqueue",
    "claim",
    "claim_any",
    "finish",
    "renew",
    "release",
    "sweep",
    "cancel",
    "dlq",
    "set_concurrency",
    "watch_job",
    "lock_acquire",
    "lock_acquire_any",
    "lock_extend",
    "lock_release",
    "lock_list",
)


@cache
def source(name: str) -> str:
    """The full text of one script: the shared library (and, for the lock scripts, theirs),
    then the script itself."""
    lua = resources.files(__package__).joinpath("lua")
    parts = ["lib.lua", "lock_lib.lua"] if name.startswith("lock_") else ["lib.lua"]
    return "\n".join(lua.joinpath(part).read_text() for part in [*parts, f"{name}.lua"])


class Scripts:
    """The project's scripts registered on one Redis client."""

    def __init__(self, redis: RedisClient) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source(name)) for name in NAMES
        }

    async def run(self, name: str, bucket: str, *args: str | int | float) -> Any:
        """Run script `name` on one bucket (its only KEYS entry, which routes it on Cluster)."""
        return await self._scripts[name](keys=[bucket], args=list(args))
