"""One version: pyproject.toml's. The chart, the plain install manifest and every image tag the
repository names agree with it, and scripts/set-version.sh changes them all together."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from importlib.metadata import version as installed_version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TAG_RE = re.compile(r"atomicqueues/(?:worker|operator|example-accounts):([0-9][0-9A-Za-z.+-]*)")


def tracked(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def mismatches(root: Path, files: list[str], *, deploy: bool = True) -> list[str]:
    """Every place whose version is not pyproject.toml's."""
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((root / "helm/atomicqueues/Chart.yaml").read_text())
    wrong = [
        f"Chart.yaml {key} {chart[key]}"
        for key in ("version", "appVersion")
        if str(chart[key]) != version
    ]
    for name in files:
        if name.startswith("deploy/") and not deploy:
            continue
        path = root / name
        if path.suffix in (".png", ".json") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        wrong += [f"{name}: image tag {tag}" for tag in TAG_RE.findall(text) if tag != version]
        if name.startswith("deploy/"):
            found = set(re.findall(r"atomicqueues-(\d[\w.+-]*)", text))
            found |= set(re.findall(r"app.kubernetes.io/version: (\S+)", text))
            wrong += [f"{name}: {v}" for v in found - {version}]
    return wrong


def test_everything_carries_the_version_of_pyproject() -> None:
    assert mismatches(ROOT, tracked(ROOT)) == []
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert installed_version("atomicqueues") == version  # what `aq --version` says
    assert (
        f"atomicqueues/operator:{version}"
        in (ROOT / "deploy/atomicqueues-operator.yaml").read_text()
    )


NEW = "9.8.7"


def test_set_version_changes_every_place(tmp_path: Path) -> None:
    files = tracked(ROOT)
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    done = subprocess.run(
        ["bash", "scripts/set-version.sh", NEW, "--no-render"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert f'version = "{NEW}"' in (tmp_path / "pyproject.toml").read_text()
    assert mismatches(tmp_path, files, deploy=False) == []
    assert f"atomicqueues/worker:{NEW}" in (tmp_path / "README.md").read_text()
    bad = subprocess.run(
        ["bash", "scripts/set-version.sh", "v1"], cwd=tmp_path, capture_output=True, text=True
    )
    assert bad.returncode != 0
    assert "not a version" in bad.stderr
