"""`AQ_LOG_FORMAT=json`: a real `aq worker` process logs one JSON object per line, and the lines
about a job carry its entity, job id and attempt; the default stays readable text.

Why: log collectors parse JSON without rules, and a job's lines must be found by its entity or
id. The worker runs as a subprocess against a real Redis and its stderr is parsed line by line.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from atomicqueues import Settings, SyncClient
from atomicqueues.logs import TEXT_FORMAT, TextFormatter
from helpers import aq
from runtime.workers import base_env

HANDLERS = "tests.ops.handlers:registry"
ENTITY = 'user "7" \\ ü {x}:y'  # quotes, a backslash, unicode and key characters


def run_worker(redis_url: str, **env: str) -> tuple[str, list[str]]:
    """Enqueue a logged job and a failing one (2 attempts), run an entity-bound worker until it
    is idle; its stderr, and the ids of the two jobs."""
    with SyncClient(Settings(redis_url=redis_url)) as client:
        ok = client.enqueue("acct", ENTITY, "note", {"n": 1})
        bad = client.enqueue(
            "acct", ENTITY, "boom", 7, attempts=2, backoff={"type": "fixed", "delay": 0}
        )
    done = aq(
        "worker",
        "--handlers",
        HANDLERS,
        "--entity-type",
        "acct",
        "--entity-id",
        ENTITY,
        "--idle-timeout",
        "0.5",
        env={**base_env(redis_url), **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stderr, [ok, bad]


def test_json_lines_carry_the_job(redis_url: str) -> None:
    stderr, (ok, bad) = run_worker(redis_url, AQ_LOG_FORMAT="json")
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is one object
    assert len(lines) >= 5
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line

    def about(job_id: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("job_id") == job_id]

    handler_line, completed = about(ok)
    assert handler_line["message"] == "handler says {'n': 1}"
    assert completed["message"].endswith("completed")
    for line in (handler_line, completed):
        assert line["entity_type"] == "acct"
        assert line["entity_id"] == ENTITY
        assert line["job_name"] == "note"
        assert line["attempt"] == 1
    retry, dead = about(bad)
    assert (retry["level"], retry["attempt"]) == ("WARNING", 1)
    assert (dead["level"], dead["attempt"]) == ("ERROR", 2)
    assert "RuntimeError: boom 7" in dead["message"]  # the traceback, inside one line
    assert dead["entity_id"] == ENTITY
    assert not {"payload", "args"} & dead.keys()
    outside = [line for line in lines if "job_id" not in line]
    assert any("stopped" in line["message"] for line in outside)  # worker lines: no job fields


def test_text_is_the_default(redis_url: str) -> None:
    stderr, (ok, _) = run_worker(redis_url)
    lines = stderr.splitlines()
    assert not any(line.startswith("{") for line in lines)
    (completed,) = [line for line in lines if ok in line and line.endswith("completed")]
    assert " INFO atomicqueues.worker: job " in completed
    assert "Traceback (most recent call last)" in stderr  # multi-line, as people read it


@pytest.mark.parametrize(
    "created",
    [
        pytest.param(1700000000.0, id="a whole second"),
        pytest.param(1700000000.0004, id="just after it"),
        pytest.param(1700000000.9996, id="just before the next"),
        pytest.param(1700000001.5, id="the next second"),
    ],
)
def test_text_lines_read_as_the_standard_formatter_writes_them(created: float) -> None:
    """The text formatter makes a second's time once; its lines stay what logging writes."""
    ours, standard = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    for when in (created - 1, created, created):  # a second already seen, and a new one
        record = logging.LogRecord("atomicqueues.worker", logging.INFO, "f", 1, "%s", ("x",), None)
        record.created, record.msecs = when, (when - int(when)) * 1000
        assert ours.format(record) == standard.format(record)


def test_unknown_format_is_one_line(redis_url: str) -> None:
    done = aq("status", env={**base_env(redis_url), "AQ_LOG_FORMAT": "yaml"})
    assert done.returncode != 0
    assert done.stderr == "aq: AQ_LOG_FORMAT='yaml' is not one of: text, json\n"
