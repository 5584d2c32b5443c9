"""Fixtures of the chart tests (fast tier): helm, and the chart rendered with values.

helm is built from Go modules and cached by scripts/build-controlplane.sh. When it is not cached
and Go is missing, the tests that need it are skipped with a loud reason (repeated at the end of
the run); with CI set, that is a failure instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from go_tools import built


@pytest.fixture(scope="session")
def helm() -> Path:
    return built("HELM CHART TESTS", "helm")["helm"]
