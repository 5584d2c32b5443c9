"""The Go-built tools some test tiers need (the control plane, helm), and the one rule for when
they cannot be had.

scripts/build-controlplane.sh builds them from Go modules into a cache outside the repository
(about 20 ms when cached). When they are not cached and Go is missing, the tests that need them
are skipped with a loud reason, repeated in red at the end of the run (tests/conftest.py); with
CI set, that is a failure instead: CI must run every tier.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-controlplane.sh"
GO_MISSING = 3
"""build-controlplane.sh's exit code when Go is missing and nothing is cached."""

SKIPPED: list[str] = []
"""The reasons tiers were skipped for, for the end of the run."""


class BinariesMissing(RuntimeError):
    """The binaries are not cached and cannot be built here (no Go)."""


def build(*targets: str) -> dict[str, Path]:
    """Paths of the binaries of `targets` (core, helm, ...), building them when not cached.

    The build script prints `NAME=/abs/path` lines on stdout; its progress goes to our stderr (a
    cold build of core takes about 13 minutes). Exit 3 (no Go) raises `BinariesMissing`."""
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *targets], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode == GO_MISSING:
        raise BinariesMissing(
            f"Go is not installed and {' '.join(targets)} is not cached: install Go >= 1.26"
            f" and run scripts/build-controlplane.sh {' '.join(targets)}"
        )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build-controlplane.sh {' '.join(targets)} failed")
    paths = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {name: Path(path) for name, path in paths.items()}


def skip_or_fail(tier: str, reason: str) -> NoReturn:
    """Skip the test loudly because `tier` cannot run; under CI, fail it."""
    message = f"{tier} NOT RUN: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: this is a failure)", pytrace=False)
    if message not in SKIPPED:
        SKIPPED.append(message)
    pytest.skip(message)


def built(tier: str, *targets: str) -> dict[str, Path]:
    """`build(*targets)`, or `skip_or_fail` with the reason."""
    try:
        return build(*targets)
    except BinariesMissing as exc:
        missing = str(exc)
    skip_or_fail(tier, missing)  # outside the except: no exception chain in the report
