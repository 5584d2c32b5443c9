"""What the browser tests share: their constants, screenshots kept as artefacts, a running
`aq dashboard`, and a way to run async set-up steps from the sync tests.

Screenshots go to AQ_TEST_ARTIFACTS (default tests/artifacts)/dashboard; conftest.py names
them at the end of the run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from atomicqueues import Client, Settings
from helpers import REPO_ROOT

HANDLERS = "tests.dashboard.handlers:registry"
TYPE = "user"
TOKEN = "s3cret-token"
REFRESH = 0.5
"""Seconds between the pages' live updates in these tests."""
CHROMIUM_ARGS = [
    # As root (CI runs as root) Chromium needs --no-sandbox; the rest keep it off the network,
    # which this machine does not reach.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
T = TypeVar("T")
SAVED: list[Path] = []
"""The screenshots this run kept."""


def artifacts_dir() -> Path:
    found = Path(os.environ.get("AQ_TEST_ARTIFACTS") or REPO_ROOT / "tests" / "artifacts")
    path = found / "dashboard"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot of what the browser shows, kept as a test artefact."""
    path = artifacts_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if path not in SAVED:
        SAVED.append(path)
    return path


def run(action: Callable[[Client], Awaitable[T]], redis_url: str) -> T:
    """Run one async step of a test's set-up with a client of its own, in a thread of its own
    (the tests are sync, and Playwright's sync API runs an event loop in this thread)."""

    async def go() -> T:
        client = await Client.connect(Settings(redis_url=redis_url))
        try:
            return await action(client)
        finally:
            await client.close()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, go()).result()


@dataclass
class Dashboard:
    url: str
    token: str | None
    proc: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")
