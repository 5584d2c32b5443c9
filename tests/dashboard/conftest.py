"""Fixtures of the browser tier (tier 6): `aq dashboard` in headless Chromium, driven by Playwright.

Why: what a person sees (escaped ids, buttons that act only with the token, live updates) is
only shown by a real browser running the page's script against a real server. The browser is
Debian's chromium (`apt-get install chromium`; AQ_TEST_CHROMIUM names another binary) started by
the `playwright` package (a test dependency), which never downloads a browser here. Where there
is no chromium, the tests are skipped loudly; with CI set they fail. Screenshots of the main
pages are kept (pages.py says where) and named at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from dashboard.pages import CHROMIUM_ARGS, HANDLERS, REFRESH, SAVED, TOKEN, TYPE, Dashboard
from go_tools import skip_or_fail
from redis_servers import free_port
from runtime.workers import Workers, base_env, start_aq

BROWSER_TIER = "BROWSER TIER (tier 6)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SAVED:
        terminalreporter.write_sep("-", f"dashboard screenshots: {SAVED[0].parent}")
        for path in SAVED:
            terminalreporter.write_line(f"  {path.name}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = os.environ.get("AQ_TEST_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        skip_or_fail(BROWSER_TIER, "chromium not found (apt-get install chromium)")
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield found
        finally:
            found.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (its own context: no token kept from another test), 1280 px wide. Dialogs
    are recorded in `page.dialogs` and dismissed, or accepted once the test sets
    `page.accept_dialogs`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    found = context.new_page()
    found.set_default_timeout(15_000)
    found.dialogs = []
    found.accept_dialogs = False

    def answer(dialog: Any) -> None:
        found.dialogs.append(dialog.message)
        if found.accept_dialogs:
            dialog.accept()
        else:
            dialog.dismiss()

    found.on("dialog", answer)
    try:
        yield found
    finally:
        context.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def start_dashboard(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Dashboard]]:
    """Starts `aq dashboard` (a real process) on a free port; stops it at the end."""
    started: list[Dashboard] = []

    def start(token: str | None = TOKEN) -> Dashboard:
        port = free_port()
        args = ["dashboard", "--port", str(port), "--refresh", str(REFRESH)]
        env = base_env(redis_url)
        env.pop("AQ_DASHBOARD_TOKEN", None)
        if token is not None:
            env["AQ_DASHBOARD_TOKEN"] = token
        log_path = tmp_path / f"dashboard-{port}.log"
        proc = start_aq(args, env, log_path)
        found = Dashboard(f"http://127.0.0.1:{port}", token, proc, log_path)
        started.append(found)
        deadline = time.monotonic() + 30
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"aq dashboard did not start: {found.output()}")
            time.sleep(0.05)
        return found

    yield start
    for found in started:
        found.proc.send_signal(signal.SIGTERM)
        try:
            found.proc.wait(10)
        except subprocess.TimeoutExpired:
            found.proc.kill()
            found.proc.wait()


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Real `aq worker` processes of type `user` running tests/dashboard/handlers.py."""
    pool = Workers(redis_url, tmp_path, entity_type=TYPE, handlers=HANDLERS)
    try:
        yield pool
    finally:
        pool.close()
