"""Fixtures of the chart tests (fast tier): helm, promtool, and the chart rendered with values.

helm is built from Go modules and cached by scripts/build-controlplane.sh. When it is not cached
and Go is missing, the tests that need it are skipped with a loud reason (repeated at the end of
the run); with CI set, that is a failure instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from go_tools import built, skip_or_fail


@pytest.fixture(scope="session")
def helm() -> Path:
    return built("HELM CHART TESTS", "helm")["helm"]


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Prometheus's promtool (Debian's `prometheus` package; scripts/test installs it)."""
    found = shutil.which("promtool")
    if found is None:
        skip_or_fail(
            "ALERT RULE TESTS",
            "promtool not found: install it (apt-get install prometheus), as scripts/test does",
        )
    return Path(found)
