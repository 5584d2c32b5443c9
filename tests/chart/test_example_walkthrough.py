"""The Kubernetes example's handlers and walkthrough, run locally against a real Redis.

Why: the kind walkthrough (scripts/kind-e2e.sh) cannot run here, but its verdict comes from
examples/kubernetes/walkthrough.py and the jobs from accounts.py: run both the way the cluster
runs them (a packed `aq worker` process with the example folder on PYTHONPATH, as /app is in
the image) and check that the walkthrough passes, and that it fails when order is broken.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chart_render import REPO

EXAMPLE = REPO / "examples" / "kubernetes"


def example_env(redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "AQ_REDIS_URL": redis_url,
    }


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "worker.log").open("wb")
    command = ["worker", "--handlers", "accounts:registry", "--entity-type", "account"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomicqueues.cli", *command, "--slots", "8"],
        env=example_env(redis_url),
        cwd=tmp_path,  # not the example folder: the handlers come from PYTHONPATH, as in /app
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def walkthrough(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "walkthrough", *args],
        env=example_env(redis_url),
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_walkthrough_passes_when_the_worker_runs_the_jobs(
    redis_url: str, worker: subprocess.Popen[bytes]
) -> None:
    done = walkthrough(redis_url, "--accounts", "3", "--jobs", "4", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: 12 jobs ran once each, in order per account" in done.stdout
    assert worker.poll() is None


def test_walkthrough_fails_without_workers_in_one_line(redis_url: str) -> None:
    done = walkthrough(redis_url, "--accounts", "2", "--jobs", "2", "--timeout", "1")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line == "FAILED: 0/4 jobs done after 1s (are workers up?)"


@pytest.mark.parametrize(
    ("seen", "overlaps", "problem"),
    [
        pytest.param({"a": [0, 1, 2], "b": [0, 1, 2]}, [], None, id="all-in-order"),
        pytest.param({"a": [0, 2, 1]}, [], "a ran [0, 2, 1]", id="out-of-order"),
        pytest.param({"a": [0, 1, 1, 2]}, [], "a ran [0, 1, 1, 2]", id="twice"),
        pytest.param({"a": [0, 1]}, [], "a ran [0, 1]", id="missing"),
        pytest.param({"a": [0, 1, 2]}, ["a:1"], "overlapped: ['a:1']", id="overlap"),
    ],
)
def test_walkthrough_verdict(
    seen: dict[str, list[int]], overlaps: list[str], problem: str | None
) -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from walkthrough import verdict
    finally:
        sys.path.remove(str(EXAMPLE))
    found = verdict(seen, overlaps, jobs=3)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
