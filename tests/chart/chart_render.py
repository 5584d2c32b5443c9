"""Rendering the Helm chart for the tests: `helm template` with values, parsed into dicts.

helm comes from scripts/build-controlplane.sh (built from Go modules and cached, as the
control-plane tier's binaries are): the `helm` fixture, tests/go_tools.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "atomicqueues"

Manifest = dict[str, Any]


class HelmFailed(RuntimeError):
    """helm refused the chart or its values; the message is helm's stderr."""


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
