"""The `aq` command line: what a person types, and what a person gets back when it is wrong.

Every mistake a person can make ends in exactly one line on stderr, a non-zero exit code, no
traceback — and leaves Redis as it was.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from atomicqueues import Settings, SyncClient
from helpers import aq, assert_one_line_error

HERE = os.path.dirname(os.path.abspath(__file__))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "entity_id",
    [
        pytest.param("alice@example.com", id="email"),
        pytest.param("a:b{c}", id="hash-tag-breaker"),
        pytest.param("üñí 😀 ☃", id="unicode"),
        pytest.param("x" * 1000, id="1000-chars"),
        pytest.param("-dash-first", id="leading-dash"),
    ],
)
def test_enqueue_strange_ids_then_status(redis_url: str, entity_id: str) -> None:
    args = ["enqueue", "--payload", '{"n": 1}', "user", "--", entity_id, "send"]
    if not entity_id.startswith("-"):
        args = ["enqueue", "user", entity_id, "send", "--payload", '{"n": 1}']
    result = aq(*args, url=redis_url)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert job_id.startswith("user.")
    status = aq("status", "--json", url=redis_url)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["types"]["user"]["pending"] == {entity_id: 1}
    assert report["types"]["user"]["counts"]["waiting"] == 1


def test_enqueue_is_idempotent_with_job_id(redis_url: str) -> None:
    first = aq("enqueue", "user", "bob", "send", "--job-id", "order-42", url=redis_url)
    second = aq("enqueue", "user", "bob", "send", "--job-id", "order-42", url=redis_url)
    assert first.stdout.strip() == second.stdout.strip() == "order-42"
    report = json.loads(aq("status", "--json", url=redis_url).stdout)
    assert report["types"]["user"]["counts"]["waiting"] == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["enqueue", "user", "bob", "send", "--payload", "{bad"], ["JSON"], id="json"),
        pytest.param(["enqueue", "user", "bob", "send", "--bogus"], ["--bogus"], id="flag"),
        pytest.param(["enqueue", "us er", "bob", "send"], ["entity type"], id="type"),
        pytest.param(["enqueue", "user", "", "send"], ["entity id"], id="empty-id"),
        pytest.param(["enqueue", "user", "y" * 5000, "send"], ["entity id"], id="huge-id"),
        pytest.param(
            ["enqueue", "user", "bob", "send", "--priority", "5000"], ["priority"], id="priority"
        ),
        pytest.param(["enqueue", "user", "bob", "send", "--delay", "-1"], ["negative"], id="delay"),
        pytest.param(["enqueue", "user", "bob", "send", "--attempts", "0"], ["attempts"], id="att"),
        pytest.param(["frobnicate"], ["frobnicate"], id="command"),
        pytest.param(["dlq", "purge", "user", "--job-id", "j1"], ["entity id"], id="dlq-no-id"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    redis_url: str, args: list[str], words: list[str]
) -> None:
    before = sorted(redis.Redis.from_url(redis_url).keys("*"))
    assert_one_line_error(aq(*args, url=redis_url), *words)
    assert sorted(redis.Redis.from_url(redis_url).keys("*")) == before


def test_payload_from_file_and_size_limit(redis_url: str, tmp_path: Path) -> None:
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    small.write_text('{"n": 7}')
    big.write_text(json.dumps({"blob": "z" * (1024 * 1024)}))
    assert_one_line_error(
        aq("enqueue", "user", "bob", "send", "--payload", f"@{big}", url=redis_url), "limit"
    )
    assert redis.Redis.from_url(redis_url).dbsize() == 0
    assert_one_line_error(
        aq("enqueue", "user", "bob", "send", "--payload", f"@{tmp_path}/none", url=redis_url),
        "cannot read",
    )
    ok = aq("enqueue", "user", "bob", "send", "--payload", f"@{small}", url=redis_url)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["enqueue", "user", "bob", "send"], id="enqueue"),
        pytest.param(["status"], id="status"),
        pytest.param(["dlq", "list", "user"], id="dlq"),
        pytest.param(
            ["worker", "--handlers", "cli_handlers:registry", "--entity-type", "user"],
            id="worker",
        ),
    ],
)
def test_unreachable_redis_is_one_line(command: list[str]) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    assert_one_line_error(aq(*command, url=url), "cannot reach Redis")


def test_bad_handlers_spec_is_one_line(redis_url: str) -> None:
    for spec, word in [
        ("no_such_module_xyz:registry", "cannot import"),
        ("atomicqueues:Client", "not a Registry"),
        ("nocolon", "MODULE:ATTRIBUTE"),
    ]:
        result = aq("worker", "--handlers", spec, "--entity-type", "user", url=redis_url)
        assert_one_line_error(result, word)


def test_worker_handlers_default_to_aq_handlers(redis_url: str) -> None:
    # The worker image's entrypoint is plain `aq worker`: its handlers come from AQ_HANDLERS.
    base = ("worker", "--entity-type", "user", "--entity-id", "bob", "--idle-timeout", "0.3")
    assert_one_line_error(aq(*base, url=redis_url, AQ_HANDLERS=""), "needs --handlers")
    bad = aq(*base, url=redis_url, AQ_HANDLERS="no_such_module_xyz:registry")
    assert_one_line_error(bad, "cannot import", "no_such_module_xyz")
    ok = aq(*base, url=redis_url, AQ_HANDLERS="cli_handlers:registry")
    assert ok.returncode == 0, ok.stderr
    flag_wins = aq(*base, "--handlers", "cli_handlers:registry", url=redis_url, AQ_HANDLERS="x:y")
    assert flag_wins.returncode == 0, flag_wins.stderr


def test_worker_freezes_what_it_holds_before_its_first_job(redis_url: str) -> None:
    # A full collection then traces only what jobs allocate: no 15-20 ms stop of every job.
    job_id = aq("enqueue", "user", "bob", "frozen", url=redis_url).stdout.strip()
    base = ("worker", "--entity-type", "user", "--entity-id", "bob", "--idle-timeout", "0.3")
    worker = aq(*base, "--handlers", "cli_handlers:registry", url=redis_url)
    assert worker.returncode == 0, worker.stderr
    with SyncClient(Settings(redis_url=redis_url)) as client:
        assert client.job(job_id).result > 10_000


def test_dlq_commands_round_trip(redis_url: str) -> None:
    job_id = aq("enqueue", "user", "bob", "nosuch", url=redis_url).stdout.strip()
    worker = aq(
        "worker",
        "--handlers",
        "cli_handlers:registry",
        "--entity-type",
        "user",
        "--entity-id",
        "bob",
        "--idle-timeout",
        "0.5",
        url=redis_url,
    )
    assert worker.returncode == 0, worker.stderr
    listed = json.loads(aq("dlq", "list", "user", "--json", url=redis_url).stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert "no handler registered" in listed[0]["error"]
    assert aq("dlq", "requeue", "user", "bob", url=redis_url).stdout.strip() == "1 job(s) requeued"
    report = json.loads(aq("status", "--json", url=redis_url).stdout)
    assert report["types"]["user"]["counts"]["waiting"] == 1
    assert report["types"]["user"]["counts"]["dead"] == 0


def test_worker_serves_prometheus_metrics(redis_url: str) -> None:
    import urllib.request

    port = closed_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atomicqueues.cli",
            "--redis-url",
            redis_url,
            "worker",
            "--handlers",
            "cli_handlers:registry",
            "--entity-type",
            "user",
            "--entity-id",
            "bob",
            "--idle-timeout",
            "30",
            "--metrics-port",
            str(port),
        ],
        env={**os.environ, "PYTHONPATH": HERE},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        aq("enqueue", "user", "bob", "nosuch", url=redis_url)
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                if 'aq_jobs_dead_total{entity_type="user",job="nosuch"} 1.0' in body:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert 'aq_jobs_dead_total{entity_type="user",job="nosuch"} 1.0' in body
        assert "aq_job_wait_seconds_bucket" in body
        assert "bob" not in body  # never an entity id in a label
    finally:
        proc.terminate()
        proc.wait(30)


AQ_SCRIPT = str(Path(sys.executable).with_name("aq"))
"""The installed `aq` script (not `python -m`, which puts the working directory on the path)."""

HANDLERS_NEXT_TO_IT = """\
from atomicqueues import JobContext, Registry

registry = Registry()


@registry.query("hello")
async def hello(ctx: JobContext, payload: None) -> str:
    return f"hello {ctx.entity_id}"
"""


def test_worker_imports_handlers_from_the_working_directory(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS_NEXT_TO_IT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AQ_HANDLERS")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AQ_SCRIPT, "--redis-url", redis_url, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    job_id = run("enqueue", "user", "bob", "hello").stdout.strip()
    worker = run(
        "worker", "--handlers", "handlers:registry", "--entity-type", "user", "--entity-id", "bob",
        "--idle-timeout", "0.3",
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    assert f"job {job_id} of user/'bob' attempt 1 completed" in worker.stderr
    report = json.loads(run("status", "--json").stdout)
    assert report["types"]["user"]["counts"]["completed"] == 1


def test_handlers_that_fail_to_import_are_one_line(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("from atomicqueues import Registry\nregistry = mail_api\n")
    worker = subprocess.run(
        [AQ_SCRIPT, "--redis-url", redis_url, "worker", "--handlers", "broken:registry",
         "--entity-type", "user"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert_one_line_error(worker, "cannot import 'broken'", "NameError", "mail_api")


def test_version_and_help_describe_every_command(redis_url: str) -> None:
    from importlib.metadata import version

    shown = aq("--version", url=redis_url)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"aq {version('atomicqueues')}"
    helped = aq("--help", url=redis_url)
    assert helped.returncode == 0
    assert "(see `aq" not in helped.stdout
    for command, words in [
        ("up", "EntityWorkerPool manifest"),
        ("demo", "killed worker"),
        ("operator", "Kubernetes operator"),
        ("crd", "CustomResourceDefinition"),
        ("job", "attempts"),
        ("result", "result"),
    ]:
        line = next(ln for ln in helped.stdout.splitlines() if ln.strip().startswith(command))
        assert words in " ".join(helped.stdout.split()), (command, line)


@pytest.mark.parametrize(
    ("hidden", "args", "words"),
    [
        pytest.param("yaml", ["up", "pool.yaml"], ["`aq up` needs pyyaml", "[local]"], id="up"),
        pytest.param("yaml", ["crd"], ["`aq crd` needs pyyaml", "[local]"], id="crd"),
        pytest.param("kopf", ["operator"], ["needs kopf", "[operator]"], id="operator"),
        pytest.param("aiohttp", ["operator"], ["needs aiohttp", "[operator]"], id="aiohttp"),
        pytest.param("jinja2", ["dashboard"], ["needs jinja2", "[dashboard]"], id="dashboard"),
        pytest.param(
            "aiohttp", ["dashboard"], ["needs aiohttp", "[dashboard]"], id="dashboard-aiohttp"
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    tmp_path: Path, hidden: str, args: list[str], words: list[str]
) -> None:
    """The module is made unimportable in the child (as if its distribution were absent)."""
    (tmp_path / "pool.yaml").write_text("kind: EntityWorkerPool\n")
    program = (
        f"import sys; sys.modules[{hidden!r}] = None; from atomicqueues.cli import main; "
        f"sys.exit(main({args!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("AQ_")},
    )
    assert_one_line_error(result, *words)


def test_dashboard_mistakes_are_one_line(redis_url: str) -> None:
    assert_one_line_error(aq("dashboard", "--port", "70000", url=redis_url), "--port 70000")
    assert_one_line_error(aq("dashboard", "--refresh", "-1", url=redis_url), "--refresh")
    unreachable = f"redis://127.0.0.1:{closed_port()}/0"
    assert_one_line_error(aq("dashboard", url=unreachable), "cannot reach Redis")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_one_line_error(aq("dashboard", "--port", port, url=redis_url), "cannot listen on")


def test_close_an_unknown_worker_is_an_error(redis_url: str) -> None:
    assert_one_line_error(aq("close", "--worker", "nosuch", url=redis_url), "no such worker")
    entity = aq("close", "--entity", "user", "bob", url=redis_url)
    assert entity.returncode == 0, entity.stderr
    assert "0 live worker(s)" in entity.stdout


def test_job_show_and_result(redis_url: str) -> None:
    worker_args = ("worker", "--handlers", "cli_handlers:registry", "--entity-type", "user")
    query = aq("enqueue", "user", "bob", "echo", "--payload", '{"n": 7}', url=redis_url)
    job_id = query.stdout.strip()
    shown = aq("job", "show", job_id, url=redis_url)
    assert shown.returncode == 0, shown.stderr
    assert "state     waiting" in shown.stdout
    assert "attempts  0 of 3" in shown.stdout
    assert_one_line_error(aq("result", job_id, url=redis_url), "has not ended yet", "waiting")
    dead = aq("enqueue", "user", "bob", "nosuch", "--job-id", "mine", url=redis_url)
    assert dead.stdout.strip() == "mine"
    worker = aq(*worker_args, "--entity-id", "bob", "--idle-timeout", "0.3", url=redis_url)
    assert worker.returncode == 0, worker.stderr
    assert aq("result", job_id, url=redis_url).stdout.strip() == '{"n": 7}'
    assert aq("result", job_id, "--wait", "5", url=redis_url).stdout.strip() == '{"n": 7}'
    shown = aq("job", "show", job_id, url=redis_url).stdout
    assert "state     completed" in shown
    assert "attempts  1 of 3" in shown
    assert 'result    {"n":7}' in shown
    as_json = json.loads(aq("job", "show", job_id, "--json", url=redis_url).stdout)
    assert as_json["state"] == "completed"
    assert as_json["result_json"] == '{"n":7}'
    failed = aq("job", "show", "mine", "--entity", "user", "bob", url=redis_url).stdout
    assert "state     dead" in failed
    assert "error     " in failed
    assert "no handler registered under 'nosuch'" in failed
    assert_one_line_error(
        aq("result", "mine", "--entity", "user", "bob", url=redis_url), "failed", "nosuch"
    )
    assert_one_line_error(aq("job", "show", "user.7." + "0" * 32, url=redis_url), "no job")
    assert_one_line_error(aq("job", "show", "mine", url=redis_url), "pass the entity")


def test_dlq_list_without_a_type_lists_every_type(redis_url: str) -> None:
    for entity_type in ("user", "device"):
        aq("enqueue", entity_type, "x", "nosuch", url=redis_url)
        worker = aq(
            "worker", "--handlers", "cli_handlers:registry", "--entity-type", entity_type,
            "--entity-id", "x", "--idle-timeout", "0.3", url=redis_url,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr
    listed = aq("dlq", "list", url=redis_url)
    assert listed.returncode == 0, listed.stderr
    assert "device/'x'" in listed.stdout
    assert "user/'x'" in listed.stdout
    assert listed.stdout.strip().endswith("2 dead job(s)")
    only_one = aq("dlq", "list", "--limit", "1", "--json", url=redis_url)
    assert len(json.loads(only_one.stdout)) == 1
    assert_one_line_error(aq("dlq", "purge", url=redis_url), "required")


def test_limit_pause_and_resume_from_the_command_line(redis_url: str) -> None:
    shown = aq("limit", "acct", "a1", url=redis_url)
    assert (shown.returncode, shown.stdout) == (
        0,
        "concurrency  1\nmax backlog  none\nrate         none\n",
    )
    done = aq(
        "limit", "acct", "a1", "--max-backlog", "1", "--concurrency", "2", "--rate", "5/60",
        url=redis_url,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (
        0,
        "concurrency  2\nmax backlog  1\nrate         5/60s\n",
    ), done.stderr
    assert_one_line_error(aq("limit", "acct", "--rate", "five", url=redis_url), "N/SECONDS")
    assert aq("enqueue", "acct", "a1", "x", url=redis_url).returncode == 0
    assert_one_line_error(
        aq("enqueue", "acct", "a1", "x", url=redis_url), "backlog of acct/'a1' is full"
    )
    assert_one_line_error(aq("limit", "acct", "--concurrency", "2", url=redis_url), "per entity")
    typed = aq("limit", "acct", "--max-backlog", "5", "--shared-rate", "100/60", url=redis_url)
    assert (typed.returncode, typed.stdout) == (
        0,
        "max backlog  5\nrate         none\nshared rate  100/60s\n",
    )
    assert_one_line_error(
        aq("limit", "acct", "a1", "--shared-rate", "1/1", url=redis_url), "whole type"
    )

    assert aq("pause", "acct", url=redis_url).stdout == "acct paused\n"
    assert aq("pause", "acct", "a2", url=redis_url).stdout == "acct/'a2' paused\n"
    status = json.loads(aq("status", "--json", url=redis_url).stdout)["types"]["acct"]
    assert (status["paused"], status["paused_entities"]) == (True, ["a2"])
    assert status["limits"] == {
        "concurrency": None,
        "max_backlog": 5,
        "rate": None,
        "shared_rate": [100, 60.0],
    }
    assert "PAUSED" in aq("status", url=redis_url).stdout
    assert aq("resume", "acct", url=redis_url).stdout == "acct resumed\n"
    status = json.loads(aq("status", "--json", url=redis_url).stdout)["types"]["acct"]
    assert (status["paused"], status["paused_entities"]) == (False, ["a2"])
