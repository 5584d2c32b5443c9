"""The README's code runs as shown.

Every Python block of README.md is a file of examples/readme/ (its first line names the file),
and this test runs those files, the Quick start's shell block and the JSON Lines one, as a
person would: `bash` in the repository, the installed `aq` and `python` on PATH, a real Redis
and the real worker the shell block starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples" / "readme"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), re.DOTALL | re.M)


def shell_block(first_line: str) -> str:
    return next(b for b in blocks("bash") if b.startswith(first_line))


def test_every_python_block_is_an_example_file() -> None:
    found = blocks("python")
    names = []
    for block in found:
        first = block.splitlines()[0]
        assert re.fullmatch(r"# \w+\.py", first), f"a Python block names no file: {first}"
        names.append(first[2:])
        assert (EXAMPLES / first[2:]).read_text() == block, f"README differs from {first[2:]}"
    assert sorted(names) == sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_every_image_the_readme_shows_is_in_the_repository() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert images, "the README shows no image (the dashboard's screenshot is expected)"
    for image in images:
        path = ROOT / image
        assert path.is_file(), f"README shows {image}, which is not in the repository"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{image} is not a PNG"


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    """A person's shell: the venv's `aq` and `python` first on PATH, no test settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AQ_") and k != "PYTHONPATH"}
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**clean, "PATH": path, "AQ_REDIS_URL": redis_url}


@pytest.fixture
def shell(env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Runs shell blocks in sessions of their own; what they left in the background is ended."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_block(
    started: list[subprocess.Popen[bytes]], block: str, cwd: Path, env: dict[str, str], out: Path
) -> str:
    with out.open("wb") as f:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its `aq worker &` is ended with the session
        )
        started.append(proc)
        rc = proc.wait(timeout=120)
    text = out.read_text()
    assert rc == 0, text
    return text


def python(program: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["python", program], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def test_the_quick_start_runs_as_shown(
    env: dict[str, str], shell: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    quick = shell_block("cd examples/readme\n")
    output = run_block(shell, quick, ROOT, env, tmp_path / "quick.log")
    lines = output.splitlines()
    assert lines.count("42") == 2, output  # python producer.py, aq result
    assert re.search(r"^state\s+completed$", output, re.M), output
    assert re.search(r"^result\s+42$", output, re.M), output
    assert "to alice@example.com: 'hi' (fencing token" in output  # the worker ran `send`
    assert "0 dead job(s)" in output

    # The other programs, with the worker the shell block left running.
    assert python("sync_producer.py", env).strip() == "42"
    assert python("welcome.py", env).strip() == "3 jobs enqueued"
    assert python("welcome.py", env).strip() == "3 jobs enqueued"  # the same ids: no more jobs
    locks = python("locks.py", env)
    assert "got m" in locks
    assert "using m1 under fencing token" in locks

    cancelled = python("control.py", env).strip()
    cancelled_line = r"job 'user\.\d+\.[0-9a-f]+' was cancelled: cancelled on request"
    assert re.fullmatch(cancelled_line, cancelled), cancelled

    jsonl = shell_block("echo ")
    assert run_block(shell, jsonl, tmp_path, env, tmp_path / "jsonl.log").strip() == (
        "1 job(s) enqueued"
    )

    deadline = time.monotonic() + 30
    while True:
        status = subprocess.run(
            ["aq", "status", "--json"], env=env, capture_output=True, text=True, timeout=30
        )
        counts = json.loads(status.stdout)["types"]["user"]["counts"]
        if counts["completed"] >= 9 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # alice: send, send, balance; bob: balance, balance; 3 welcomes; bob's line of jobs.jsonl
    assert counts == {**counts, "completed": 9, "dead": 0, "waiting": 0, "retrying": 0}


def test_the_schedule_example_runs_as_shown(
    env: dict[str, str], shell: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(
            [*("aq", "worker", "--handlers", "handlers:registry"), "--entity-type", "user"],
            cwd=EXAMPLES,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    shell.append(worker)
    assert python("schedules.py", env).splitlines() == [
        "digest alice@example.com cron '0 8 * * *' Europe/Berlin",
        "heartbeat heartbeat every 2s",
    ]
    output = run_block(shell, shell_block("aq schedule run user &"), EXAMPLES, env, tmp_path / "s")
    assert "schedule report added" in output, output
    assert "schedule digest of user removed" in output, output
    assert re.search(r"^heartbeat\s+user/'heartbeat' \(type\)", output, re.M), output
    deadline = time.monotonic() + 30
    while "to heartbeat: 'beat'" not in worker_log.read_text():
        assert time.monotonic() < deadline, worker_log.read_text()
        time.sleep(0.1)


def _ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


def test_the_docs_links_and_named_files_exist() -> None:
    """docs/design.md and the README link to files, and name tests and modules by path: every
    one of them is in the repository."""
    for doc in (README, ROOT / "docs" / "design.md", ROOT / "CONTRIBUTING.md"):
        if not doc.exists():
            continue
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
        for named in re.findall(
            r"`((?:tests|docs|worker_runtime|operator|examples|bench)/[\w/.-]+)`", text
        ):
            if not _ignored(named):  # an output of the tests (git ignores it) may not exist yet
                assert (ROOT / named).exists(), f"{doc.name} names missing {named}"
    assert "](docs/design.md)" in README.read_text()
