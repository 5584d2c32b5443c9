"""The script loader and what Lua and Python must agree on.

Why: the scripts are assembled from helpers (`-- @include X`), and a job's reply is read by
position in Python: a helper included twice (a redefined local), a missing one, or a reply
field added on one side only would break every claim, in ways a unit test of either side
cannot see.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import pytest

from atomicqueues import Client
from atomicqueues.jobs import REPLY_FIELDS
from atomicqueues.scripts import INCLUDE, NAMES, source

LUA = resources.files("atomicqueues").joinpath("lua")


def test_the_job_reply_fields_are_the_same_in_lua_and_python() -> None:
    text = LUA.joinpath("include", "job.lua").read_text()
    m = re.search(r"local JOB_REPLY = \{([^}]*)\}", text)
    assert m is not None
    assert tuple(re.findall(r"'([^']+)'", m.group(1))) == REPLY_FIELDS


@pytest.mark.parametrize("name", NAMES)
def test_every_include_is_resolved_once(name: str) -> None:
    text = source(name)
    assert INCLUDE not in text
    functions = re.findall(r"^local function (\w+)", text, flags=re.M)
    assert len(functions) == len(set(functions)), f"{name}: a helper was included twice"


async def test_a_script_the_server_forgot_is_loaded_again(client: Client) -> None:
    """After a restart or a failover the server has no scripts: the call answered NOSCRIPT
    loads its script and runs again."""
    sha = hashlib.sha1(source("sweep").encode()).hexdigest()
    bucket = client.keys.entity_bucket("user", "ann")
    await client.redis.script_flush()
    assert await client.redis.script_exists(sha) == [False]
    assert await client.script("sweep", bucket, 10, client.keys.events("user")) == [0, 0]
    assert await client.redis.script_exists(sha) == [True]


def test_every_script_file_is_listed() -> None:
    on_disk = {p.name[:-4] for p in LUA.iterdir() if p.name.endswith(".lua")}
    assert on_disk == set(NAMES)


async def test_every_script_loads_on_a_real_redis(client: Client) -> None:
    for name in NAMES:
        sha = await client.redis.script_load(source(name))
        assert len(sha) == 40, name
