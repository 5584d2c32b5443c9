"""The script loader and what Lua and Python must agree on.

Why: the scripts are assembled from helpers (`-- @include X`), and a job's reply is read by
position in Python: a helper included twice (a redefined local), a missing one, or a reply
field added on one side only would break every claim, in ways a unit test of either side
cannot see.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from importlib import resources
from typing import Any

import pytest
import redis.exceptions

from atomicqueues import Client
from atomicqueues.index_reads import IndexReads
from atomicqueues.jobs import REPLY_FIELDS
from atomicqueues.keys import BUCKET_KEYS, ENTITY_KEYS
from atomicqueues.scripts import INCLUDE, NAMES, flags, library, source
from helpers import Connect

LUA = resources.files("atomicqueues").joinpath("lua")


def test_the_job_reply_fields_are_the_same_in_lua_and_python() -> None:
    text = LUA.joinpath("include", "job.lua").read_text()
    m = re.search(r"local JOB_REPLY = \{([^}]*)\}", text)
    assert m is not None
    assert tuple(re.findall(r"'([^']+)'", m.group(1))) == REPLY_FIELDS


def test_the_keys_python_reads_are_the_keys_the_scripts_document() -> None:
    """keys.lua documents the layout once; keys.py names the same keys (the bucket's `oom` is a
    probe only the scripts touch)."""
    text = LUA.joinpath("include", "keys.lua").read_text()
    layout = "\n".join(line for line in text.splitlines() if line.startswith("--"))
    assert set(re.findall(r"bb\.\.'(\w+)'", layout)) - {"oom"} == set(BUCKET_KEYS)
    assert set(re.findall(r"ekey\(bb, e, '(\w+)'\)", layout)) == set(ENTITY_KEYS)


@pytest.mark.parametrize("name", NAMES)
def test_every_include_is_resolved_once(name: str) -> None:
    text = source(name)
    assert INCLUDE not in text
    functions = re.findall(r"^local function (\w+)", text, flags=re.M)
    assert len(functions) == len(set(functions)), f"{name}: a helper was included twice"


async def test_a_script_the_server_forgot_is_loaded_again(client: Client) -> None:
    """After a restart or a failover the server has no scripts and no functions: the call
    refused (NOSCRIPT, or function not found) loads what it runs and runs again."""
    sha = hashlib.sha1(source("sweep").encode()).hexdigest()
    bucket = client.keys.entity_bucket("user", "ann")
    await client.script("sweep", bucket, 10, client.keys.events("user"))  # learns FCALL or not
    await client.redis.script_flush()
    if client.scripts.functions:
        await client.redis.execute_command("FUNCTION", "FLUSH")
    assert await client.script("sweep", bucket, 10, client.keys.events("user")) == [0, 0]
    if client.scripts.functions:
        assert library().name in str(await client.redis.execute_command("FUNCTION", "LIST"))
    else:
        assert await client.redis.script_exists(sha) == [True]


async def test_calls_sent_together_before_the_first_answer_all_run(
    client: Client, connect: Connect
) -> None:
    """A new client's first calls go out together, before any answer says whether the server
    has functions: each refused one is sent again, whichever call learned it first."""
    if client.scripts.functions:
        await client.redis.execute_command("FUNCTION", "FLUSH")
    fresh = await connect()
    assert fresh.scripts.functions is None
    await asyncio.gather(*(fresh.redis.ping() for _ in range(20)))  # connections made before
    await asyncio.gather(*(fresh.enqueue("user", f"t{n}", "echo", {"n": n}) for n in range(20)))
    assert (await IndexReads(fresh).counts("user"))["waiting"] == 20


async def test_calls_made_together_share_a_round_trip(client: Client, connect: Connect) -> None:
    """Calls a client makes in one turn of its event loop while one is in flight go in one
    pipeline (one connection, one round trip); each gets its own answer, and a call's own error
    is its alone."""
    fresh = await connect()
    await fresh.enqueue("user", "warm", "echo", {})  # functions or not: learnt
    before = (await client.redis.info("stats"))["total_connections_received"]
    bucket = fresh.keys.entity_bucket("user", "x")
    chan = fresh.keys.events("user")
    header = '["j","x","echo",0,3,0,60000,10,0,0,null]'
    calls = [  # the 8th with a priority that is not a number
        fresh.scripts.run(
            "enqueue", bucket, chan, f"e{n}", f"j{n}", "x" if n == 7 else 0, 0, header, "{}"
        )
        for n in range(16)
    ]
    replies = await asyncio.gather(*calls, return_exceptions=True)
    made = (await client.redis.info("stats"))["total_connections_received"] - before
    assert made <= 2, f"{made} connections for 16 calls made together"  # one each, unbatched
    assert isinstance(replies[7], redis.exceptions.ResponseError)
    assert [r for n, r in enumerate(replies) if n != 7] == [[1, "waiting"]] * 15
    assert (await IndexReads(fresh).counts("user"))["waiting"] == 16  # 15 and the warm-up's


async def test_a_call_made_alone_is_sent_at_once(client: Client) -> None:
    """One call at a time (a producer awaiting each enqueue) never waits for a turn to end."""
    await client.enqueue("user", "u", "echo", {})
    sleeps = 0
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float, *args: Any) -> Any:
        nonlocal sleeps
        sleeps += 1
        return await real_sleep(delay, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "sleep", counting_sleep)
        for n in range(5):
            await client.enqueue("user", "u", "echo", {"n": n})
    assert sleeps == 0


def test_every_script_file_is_listed() -> None:
    on_disk = {p.name[:-4] for p in LUA.iterdir() if p.name.endswith(".lua")}
    assert on_disk == set(NAMES)


async def test_every_script_loads_on_a_real_redis(client: Client) -> None:
    for name in NAMES:
        sha = await client.redis.script_load(source(name))
        assert len(sha) == 40, name


@pytest.mark.parametrize("name", NAMES)
def test_a_script_that_moves_work_along_when_memory_is_full_may_run_then(name: str) -> None:
    """A function without `allow-oom` is refused before it starts when memory is full, so
    every script that calls when_full_run() (lua/include/oom.lua) must declare it."""
    own = LUA.joinpath(f"{name}.lua").read_text()
    assert ("allow-oom" in flags(name)) == ("when_full_run(" in own)


async def test_the_scripts_run_as_functions_where_redis_has_them(client: Client) -> None:
    version = int(str((await client.redis.info("server"))["redis_version"]).split(".")[0])
    if version >= 7:
        await client.redis.execute_command("FUNCTION", "FLUSH")
    await client.enqueue("user", "u1", "echo", {"n": 1})  # loads what the server lacks
    assert client.scripts.functions is (version >= 7)
    if version >= 7:
        loaded = await client.redis.execute_command("FUNCTION", "LIST")
        assert library().name in str(loaded)
        await client.redis.execute_command("FUNCTION", "FLUSH")  # as a restart without disk
    await client.enqueue("user", "u1", "echo", {"n": 2})
    assert (await IndexReads(client).counts("user"))["waiting"] == 2
