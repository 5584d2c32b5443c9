"""Rendering the Helm chart for the tests: `helm template` with values, parsed into dicts.

helm comes from scripts/build-controlplane.sh (built from Go modules and cached, as the
control-plane tier's binaries are); `find_helm` says why when it cannot be had.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "atomicqueues"
BUILD_SCRIPT = REPO / "scripts" / "build-controlplane.sh"
GO_MISSING = 3
"""build-controlplane.sh's exit code when Go is missing and helm is not cached."""

Manifest = dict[str, Any]


class HelmMissing(RuntimeError):
    """helm is not cached and cannot be built here (no Go)."""


class HelmFailed(RuntimeError):
    """helm refused the chart or its values; the message is helm's stderr."""


def find_helm() -> Path:
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "helm"], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode == GO_MISSING:
        raise HelmMissing(
            "Go is not installed and helm is not cached: install Go >= 1.22 and run"
            " scripts/build-controlplane.sh helm"
        )
    if done.returncode != 0:
        raise RuntimeError("scripts/build-controlplane.sh helm failed (see its output above)")
    return Path(done.stdout.strip().partition("=")[2])


def helm_run(helm: Path, *args: str, values: Mapping[str, Any] | None = None) -> str:
    """helm's stdout; `HelmFailed` with its stderr when it exits non-zero."""
    extra: list[str] = []
    if values is not None:
        extra = ["--values", "-"]
    done = subprocess.run(
        [str(helm), *args, *extra],
        input=yaml.safe_dump(dict(values)) if values is not None else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise HelmFailed(done.stderr.strip())
    return done.stdout


def render(
    helm: Path,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "aq",
    namespace: str = "aq-system",
    sets: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[Manifest]:
    """Every manifest `helm template` renders, in order."""
    args = ["template", release, str(CHART), "--namespace", namespace, *extra_args]
    for item in sets:
        args += ["--set", item]
    text = helm_run(helm, *args, values=values)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(manifests: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: Sequence[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in by_kind(manifests, kind) if name is None or m["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}: {[m['metadata'] for m in found]}"
    return found[0]
