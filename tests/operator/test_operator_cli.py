"""`aq operator` as a person meets it, and the layer rule that keeps worker images small.

Why: without credentials the operator must say so in one line, not a kopf traceback; and the
runtime (what every worker image runs) must never import kopf or the operator's HTTP client,
or a worker image would need the operator's dependencies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import aq, assert_one_line_error


def operator_error(env: dict[str, str], *flags: str) -> str:
    """The one line `aq operator` exits 1 with."""
    result = aq("operator", *flags, env=env)
    assert result.returncode == 1, result.stderr
    return assert_one_line_error(result)


def test_no_credentials_is_one_line(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
    }
    for kubeconfig in (None, str(tmp_path / "missing")):
        if kubeconfig:
            env["KUBECONFIG"] = kubeconfig
        line = operator_error({**env, "HOME": str(tmp_path)}, "--listen", "")
        assert "Kubernetes credentials" in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--listen", "8080"], "--listen '8080': expected HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "expected HOST:PORT"),
        (["--lease-duration", "0.5"], "lease duration must be at least 1 second"),
    ],
    ids=["port-only", "port-too-big", "lease-too-short"],
)
def test_bad_flags_are_one_line(flags: list[str], expected: str, tmp_path: Path) -> None:
    # Refused before any login: no credentials are needed to find out.
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing")}
    assert expected in operator_error(env, *flags)


def test_the_runtime_never_imports_the_operators_dependencies() -> None:
    code = (
        "import sys\n"
        "import atomicqueues, atomicqueues.cli, atomicqueues.worker, atomicqueues.pools.local\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'aiohttp', 'kmock',"
        " 'aq_operator', 'kubernetes', 'kubernetes_asyncio', 'lightkube'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
