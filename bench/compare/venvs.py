"""Virtualenvs for the competitors and the chart, kept in a cache outside the repository.

Why this exists: none of the systems we compare against may become a dependency of the project,
and they cannot share one environment (arq needs redis-py < 6, others want a newer one). Each
set of pinned requirements gets its own virtualenv under `$AQ_BENCH_CACHE` (default
`~/.cache/atomicqueues-bench`), named by a hash of the requirements and the interpreter, built
once with `python -m venv` and `pip install`, and reused while the pins do not change.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

READY = "installed.txt"
"""Written last, once pip succeeded: a virtualenv without it is rebuilt."""


def cache_dir() -> Path:
    configured = os.environ.get("AQ_BENCH_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "atomicqueues-bench"


def venv_dir(name: str, requirements: Sequence[str]) -> Path:
    key = "\n".join([sys.version, *sorted(requirements)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{digest}"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


async def run(argv: Sequence[str], log: Path) -> None:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
        code = await proc.wait()
    if code != 0:
        tail = log.read_bytes().decode(errors="replace").splitlines()[-3:]  # noqa: ASYNC240
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited with {code}: {tail}")


async def ensure(name: str, requirements: Sequence[str]) -> Path:
    """The Python of a virtualenv holding `requirements`, built if needed."""
    venv = venv_dir(name, requirements)
    if (venv / READY).exists() and python_of(venv).exists():
        return python_of(venv)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{venv.name}.log"
    log.unlink(missing_ok=True)
    await run([sys.executable, "-m", "venv", str(venv)], log)
    pip = [str(python_of(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    await run([*pip, *requirements], log)
    (venv / READY).write_text("\n".join(requirements) + "\n")
    return python_of(venv)
