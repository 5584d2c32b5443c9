"""The project's own files: the licence pyproject.toml names, a changelog for this version,
a pre-commit config that runs the checks scripts/test runs, and Python classifiers that match
requires-python."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_licence_is_the_apache_2_text() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(re.findall(r"^\s+\d\. \w", text, re.M)) == 9  # its nine sections


def test_the_changelog_has_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(PROJECT['version'])}\b", text, re.M), PROJECT["version"]


def test_classifiers_name_every_supported_python() -> None:
    oldest = re.fullmatch(r">=3\.(\d+)", PROJECT["requires-python"])
    assert oldest is not None
    named = {int(m) for c in PROJECT["classifiers"] for m in re.findall(r":: 3\.(\d+)$", c)}
    assert min(named) == int(oldest.group(1))
    assert named == set(range(min(named), max(named) + 1))


def test_pre_commit_runs_the_checks_of_scripts_test() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    before_commit = {h["entry"] for h in hooks if h["stages"] == ["pre-commit"]}
    script = (ROOT / "scripts" / "test").read_text()
    in_script = {
        "python " + line.strip().removeprefix('"$PYTHON" ')
        for line in script.splitlines()
        if re.match(r'\s*"\$PYTHON" (-m (ruff|mypy)\b|-c .*importlinter)', line)
    }
    assert len(in_script) == 4, in_script
    assert before_commit == in_script
    assert [h["entry"] for h in hooks if h["stages"] == ["pre-push"]] == [
        "env PYTHON=python scripts/test"
    ]


def test_pre_commit_accepts_the_config() -> None:
    if importlib.util.find_spec("pre_commit") is None:
        pytest.fail("pre-commit not found: install the test extra (pip install -e '.[test]')")
    done = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", ".pre-commit-config.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
