"""Fixtures of the chart tests (fast tier): helm, and the chart rendered with values.

helm is built from Go modules and cached by scripts/build-controlplane.sh. When it is not cached
and Go is missing, the tests that need it are skipped with a loud reason (repeated at the end of
the run); with CI set, that is a failure instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chart_render import HelmMissing, find_helm

_skipped: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for message in _skipped:
        terminalreporter.write_sep("!", message, red=True, bold=True)


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return find_helm()
    except HelmMissing as exc:
        message = f"HELM CHART TESTS NOT RUN: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: this is a failure)", pytrace=False)
        if message not in _skipped:
            _skipped.append(message)
        pytest.skip(message)
