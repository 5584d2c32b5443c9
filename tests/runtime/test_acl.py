"""The least-privilege Redis user of the README, tested as written.

The test creates that very ACL user (the README's `ACL SETUSER` line) on the suite's real
redis-server and runs what an application runs as it: a packed worker process whose jobs take
resource locks, producers (`aq enqueue`, `SyncClient`), and `aq status`, `aq job show`,
`aq result`, `aq dlq`, `aq locks list`, `aq close`. Redis's own ACL log must then show no
refusal but the one the README names (redis-py's CLIENT SETINFO, optional and ignored). A user
lacking a command gets one line from `aq`, not a traceback.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from atomicqueues import Settings, SyncClient
from atomicqueues.schedules import Schedules
from helpers import aq, aq_env, assert_one_line_error
from redis_servers import RedisCluster

README = Path(__file__).resolve().parents[2] / "README.md"
OPTIONAL_REFUSALS = {"client", "config", "config|get"}
"""Refusals the README says are harmless: CLIENT SETINFO (redis-py goes on) and CONFIG GET
(the eviction policy check is skipped; Redis 7 names the subcommand)."""


def readme_acls() -> list[list[str]]:
    """The README's ACL SETUSER lines, as the words of each command: the user, then what Redis
    7 and later add (functions)."""
    found = re.findall(r"^```text\n(ACL SETUSER .*?)\n```$", README.read_text(), re.M)
    assert len(found) == 2, "the README shows the user and what Redis 7 adds to it"
    return [shlex.split(line) for line in found]


def readme_acl() -> list[str]:
    return readme_acls()[0]


def has_functions(r: redis.Redis) -> bool:
    return int(str(r.info("server")["redis_version"]).split(".")[0]) >= 7


def create_user(admin: redis.Redis, functions: bool = True) -> tuple[str, str]:
    """The README's user on `admin`'s server (with what Redis 7 adds where it can, unless
    `functions` is False); returns its name and password."""
    base, addition = readme_acls()
    admin.execute_command(*base)
    if functions and has_functions(admin):
        admin.execute_command(*addition)
    return base[2], next(w[1:] for w in base if w.startswith(">"))


@pytest.fixture
def acl_user(redis_url: str) -> Iterator[tuple[str, redis.Redis]]:
    """The README's user on the test's (empty) Redis, and an admin client to inspect it."""
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    name, password = create_user(admin)
    admin.acl_log_reset()
    parts = urlsplit(redis_url)
    url = f"redis://{name}:{password}@{parts.hostname}:{parts.port}/0"
    try:
        yield url, admin
    finally:
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()


def refused(admin: redis.Redis) -> set[str]:
    """What Redis's ACL log says it refused (commands, keys or channels)."""
    return {str(entry["object"]) for entry in admin.acl_log(128)}  # type: ignore[union-attr]


def test_the_readme_user_runs_workers_producers_and_aq(
    acl_user: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    url, admin = acl_user
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "atomicqueues.cli", "--redis-url", url, "worker",
         "--handlers", "cli_handlers:registry", "--entity-type", "user", "--slots", "4"],
        env=aq_env(AQ_HEARTBEAT_TTL="1", AQ_HEARTBEAT_INTERVAL="0.25"),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with SyncClient(Settings(redis_url=url)) as client:
            ids = [client.enqueue("user", f"u{n}", "echo", {"n": n}) for n in range(5)]
            assert [client.result(i, timeout=20) for i in ids] == [{"n": n} for n in range(5)]
            locked = client.enqueue("user", "u0", "locked", delay=0.1)
            assert isinstance(client.result(locked, timeout=20), int)
        dead = aq("enqueue", "user", "u1", "nosuch", url=url).stdout.strip()
        assert aq("result", dead, "--wait", "20", url=url).returncode == 1
        echo = aq("enqueue", "user", "u2", "echo", "--payload", "7", url=url).stdout.strip()
        assert aq("result", echo, "--wait", "20", url=url).stdout.strip() == "7"
        for args in (
            ["status"],
            ["status", "--json"],
            ["job", "show", echo],
            ["dlq", "list"],
            ["dlq", "requeue", "user", "u1"],
            ["locks", "list"],
        ):
            done = aq(*args, url=url)
            assert done.returncode == 0, (args, done.stderr)
        report = json.loads(aq("status", "--json", url=url).stdout)
        assert report["types"]["user"]["counts"]["completed"] == 7
        assert len(report["workers"]) == 1
        # Schedules: added, listed, fired by a ticker (and run by the worker), removed.
        add = ["schedule", "add", "user", "s", "--name", "tick", "--job", "echo", "--every", "0.2"]
        assert aq(*add, url=url).returncode == 0
        ticker = subprocess.Popen(
            [sys.executable, "-m", "atomicqueues.cli", "--redis-url", url, "schedule", "run",
             "user"],
            env=aq_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            with SyncClient(Settings(redis_url=url)) as client:
                deadline = time.monotonic() + 20
                while not client.run(lambda c: Schedules(c).list("user"))[0].fired:
                    assert time.monotonic() < deadline, "the schedule never fired"
                    time.sleep(0.05)
        finally:
            ticker.terminate()
            _, errors = ticker.communicate(timeout=30)
        assert ticker.returncode == 0, errors
        for args in (["schedule", "list"], ["schedule", "remove", "user", "tick"]):
            done = aq(*args, url=url)
            assert done.returncode == 0, (args, done.stderr)
        name = report["workers"][0]["name"]
        assert aq("close", "--worker", name, url=url).returncode == 0
        assert worker.wait(timeout=30) == 0  # closed gracefully, as the user of the README
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
    assert refused(admin) <= OPTIONAL_REFUSALS, (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize(
    ("missing", "args"),
    [
        pytest.param("time", ["locks", "list"], id="time"),
        pytest.param("smembers", ["status"], id="smembers"),
        pytest.param("evalsha fcall", ["enqueue", "user", "bob", "send"], id="script-call"),
        pytest.param("rpush", ["enqueue", "user", "bob", "send"], id="in-a-script"),
    ],
)
def test_a_refused_command_is_one_line(
    acl_user: tuple[str, redis.Redis], missing: str, args: list[str]
) -> None:
    url, admin = acl_user
    for command in missing.split():
        if command != "fcall" or has_functions(admin):
            admin.execute_command("ACL", "SETUSER", readme_acl()[2], f"-{command}")
    assert_one_line_error(aq(*args, url=url), "the Redis user may not run", "ACL")


CLUSTER_ADDITION = "+cluster|slots +command"
"""What the README adds to the user on Redis Cluster."""


def test_the_readme_user_on_redis_cluster(redis_cluster: RedisCluster, cluster_url: str) -> None:
    assert f"`{CLUSTER_ADDITION}` on Redis Cluster" in " ".join(README.read_text().split())
    words = readme_acl()
    nodes = [redis.Redis.from_url(u, decode_responses=True) for u in redis_cluster.urls]
    for node in nodes:
        create_user(node)
        node.execute_command("ACL", "SETUSER", words[2], *CLUSTER_ADDITION.split())
        node.acl_log_reset()
    port = urlsplit(cluster_url).port
    url = f"redis://{words[2]}:CHANGE-ME@127.0.0.1:{port}/0"
    try:
        ids = [aq("enqueue", "user", f"u{n}", "echo", url=url).stdout.strip() for n in range(3)]
        for n, job_id in enumerate(ids):
            worker = aq(
                "worker", "--handlers", "cli_handlers:registry", "--entity-type", "user",
                "--entity-id", f"u{n}", "--idle-timeout", "0.3", url=url,
            )  # fmt: skip
            assert worker.returncode == 0, worker.stderr
            assert f"job {job_id} of user/'u{n}' attempt 1 completed" in worker.stderr
        assert aq("status", url=url).returncode == 0
        assert set().union(*(refused(node) for node in nodes)) <= OPTIONAL_REFUSALS
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", words[2])
            node.close()


def test_without_what_redis_7_adds_the_scripts_run_with_evalsha(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    if not has_functions(admin):
        pytest.skip("Redis before 7 has no functions: the README's first line is all there is")
    name, password = create_user(admin, functions=False)
    admin.acl_log_reset()
    url = f"redis://{name}:{password}@{urlsplit(redis_url).hostname}:{urlsplit(redis_url).port}/0"
    try:
        with SyncClient(Settings(redis_url=url)) as client:
            job_id = client.enqueue("user", "u1", "echo", {"n": 1})
            assert client.job(job_id).state == "waiting"
        assert "fcall" in refused(admin)  # tried once, then EVALSHA
        assert refused(admin) <= {*OPTIONAL_REFUSALS, "fcall"}
    finally:
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()
