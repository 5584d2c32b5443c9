"""What tests of every tier do the same way: wait for a condition, run the `aq` command line and
check that a mistake ends in one line.

Why one module: a wait that polls differently, or an `aq` run with another environment, in
each test file made the same check behave differently from file to file.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from atomicqueues import Client

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_TESTS = REPO_ROOT / "tests" / "runtime"

Connect = Callable[..., Awaitable[Client]]
"""The `connect` fixture: a new client with the test's `client_settings`, any of them changed."""


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, *, every: float = 0.05
) -> Any:
    """Poll until `condition()` is truthy and return it; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def eventually(
    condition: Callable[[], Any], timeout: float, what: str, *, every: float = 0.05
) -> Any:
    """`wait_until` in an event loop: `condition()` may return an awaitable, which is awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


def aq_env(**variables: str) -> dict[str, str]:
    """The environment `aq` runs with by default: the test's own without its AQ_* settings,
    with the repository (tests.runtime.handlers) and tests/runtime (cli_handlers, handlers) on
    PYTHONPATH, unbuffered, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
    paths = [str(RUNTIME_TESTS), str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", **variables}


def aq(
    *args: str,
    url: str | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: Path | str = REPO_ROOT,
    timeout: float = 60.0,
    **variables: str,
) -> subprocess.CompletedProcess[str]:
    """Run the `aq` command line of this interpreter to its end and capture its output:
    `aq --redis-url URL ARGS` with `url`. It runs with `env` (default `aq_env()`) plus
    `variables`, reads `input` (else nothing) and is killed after `timeout` seconds."""
    command = [sys.executable, "-m", "atomicqueues.cli", *(["--redis-url", url] if url else [])]
    return subprocess.run(
        [*command, *args],
        env={**(aq_env() if env is None else env), **variables},
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """`aq` failed with one line on stderr, `aq: ...`, holding every one of `words`; the line."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aq: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]
