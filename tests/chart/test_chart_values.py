"""values.yaml and values.schema.json: every value documented, every key and type checked.

Why: a mistyped value (`replicsa: 2`, `clusterWide: "yes"`) must fail the install with the
key's name, not be ignored, so the schema closes every object (`additionalProperties: false`)
except the free-form maps Kubernetes defines (labels, annotations, node selectors) and the
Kubernetes objects the API server checks itself (affinity terms, an env var's valueFrom).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_render import CHART, HelmFailed, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)

FREE_FORM = {
    # string -> string maps
    "operator.podAnnotations",
    "operator.podLabels",
    "operator.nodeSelector",
    "serviceAccount.annotations",
    "metrics.service.annotations",
    "metrics.serviceMonitor.labels",
    "metrics.podMonitor.labels",
    "metrics.dashboard.labels",
    "metrics.dashboard.annotations",
    "metrics.prometheusRule.labels",
    "metrics.prometheusRule.alertLabels",
    "commonLabels",
    # Kubernetes objects, checked by the API server
    "operator.affinity.nodeAffinity",
    "operator.affinity.podAffinity",
    "operator.affinity.podAntiAffinity",
    "operator.extraEnv[].valueFrom",
    # Helm's own: a parent chart's global values
    "global",
}


def object_nodes(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)] if node.get("type") == "object" else []
    for name, child in node.get("properties", {}).items():
        found += object_nodes(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        found += object_nodes(node["items"], f"{path}[]")
    for variant in node.get("anyOf", []):
        found += object_nodes(variant, path)
    return found


def test_schema_closes_every_object() -> None:
    nodes = object_nodes(SCHEMA)
    assert len(nodes) > 20
    for path, node in nodes:
        if path in FREE_FORM:
            assert node.get("additionalProperties") in (None, {"type": "string"}), path
        else:
            assert node.get("additionalProperties") is False, f"{path or '<root>'} is not closed"
    assert {path for path, _ in nodes} >= FREE_FORM  # no stale exception


def leaves(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict) and value and path not in FREE_FORM:  # a map's keys are data
        return [leaf for k, v in value.items() for leaf in leaves(v, f"{path}.{k}" if path else k)]
    return [path]


def schema_at(path: str) -> dict[str, Any]:
    node = SCHEMA
    for part in path.split("."):
        node = node["properties"][part]
    return node


def test_default_values_match_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


OPTIONAL_INSIDE = ("global", "operator.resources.", "operator.affinity.")
"""Schema keys that may be absent from values.yaml (optional parts of Kubernetes objects)."""


def test_every_value_is_in_the_schema_and_every_schema_key_has_a_default() -> None:
    for path in leaves(VALUES):
        node = schema_at(path)  # a KeyError names a value the schema does not know
        assert "type" in node or "anyOf" in node, path
    documented = {p for p, _ in object_nodes(SCHEMA)} | set(leaves(VALUES))
    for path, node in object_nodes(SCHEMA):
        for name in node.get("properties", {}):
            key = f"{path}.{name}" if path else name
            if "[]" in key or key.startswith(OPTIONAL_INSIDE) or path in FREE_FORM:
                continue
            assert key in documented, f"{key} is in the schema but has no default in values.yaml"


KUBERNETES_SHAPED = {"resources"}
"""Values given to Kubernetes as they are: their own comment covers the keys inside."""


def test_every_value_has_a_comment() -> None:
    """Each key of values.yaml has a comment on the line just above it, or beside it; a mapping
    may go without when each of its keys has one."""
    lines = VALUES_TEXT.splitlines()
    key_line = re.compile(r"^(\s*)([A-Za-z][\w-]*):(.*)$")
    undocumented = []
    covered_below: int | None = None  # indent of a commented Kubernetes-shaped value
    for i, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        if covered_below is not None and indent > covered_below:
            continue
        covered_below = None
        commented = "#" in rest or (i > 0 and lines[i - 1].strip().startswith("#"))
        if commented and key in KUBERNETES_SHAPED:
            covered_below = indent
        if not commented and rest.strip():
            undocumented.append(key)
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"


TYPOS = [
    pytest.param({"operator": {"replicsa": 2}}, "'replicsa' not allowed", id="unknown-key"),
    pytest.param({"crd": {"install": False}}, "'crd' not allowed", id="unknown-top-level"),
    pytest.param({"operator": {"replicas": "two"}}, "want integer", id="string-for-integer"),
    pytest.param({"watch": {"clusterWide": "yes"}}, "want boolean", id="string-for-boolean"),
    pytest.param({"watch": {"namespaces": "team-a"}}, "want array", id="string-for-list"),
    pytest.param({"watch": {"namespaces": ["Team_A"]}}, "does not match", id="bad-namespace"),
    pytest.param(
        {"operator": {"image": {"pullPolicy": "Sometimes"}}}, "must be one of", id="bad-enum"
    ),
    pytest.param({"operator": {"port": 70000}}, "maximum", id="port-out-of-range"),
    pytest.param({"operator": {"leaseDurationSeconds": 0.5}}, "minimum", id="short-lease"),
    pytest.param(
        {"operator": {"resources": {"requests": {"cpus": "1"}}}}, "'cpus' not allowed", id="cpus"
    ),
    pytest.param(
        {"operator": {"defaultRedisUrl": "redis://:secret@redis:6379/0"}},
        "does not match",
        id="password-in-default-url",
    ),
    pytest.param(
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        "does not match",
        id="bad-duration",
    ),
    pytest.param({"commonLabels": {"n": 1}}, "want string", id="label-not-a-string"),
    pytest.param(
        {"metrics": {"prometheusRule": {"oldestWaitingSeconds": 0}}},
        "exclusiveMinimum",
        id="alert-threshold-zero",
    ),
    pytest.param(
        {"metrics": {"dashboard": {"enable": True}}}, "'enable' not allowed", id="dashboard-typo"
    ),
    pytest.param(
        {"operator": {"podDisruptionBudget": {"maxUnavailable": "half"}}},
        "maxUnavailable",
        id="bad-budget",
    ),
]


@pytest.mark.parametrize(("values", "message"), TYPOS)
def test_mistyped_values_are_rejected(helm: Path, values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmFailed) as caught:
        render(helm, values)
    error = str(caught.value)
    assert "values don't meet the specifications of the schema" in error
    assert message in error, error


def test_a_values_file_with_a_typo_is_rejected(helm: Path, tmp_path: Path) -> None:
    """As a person would do it: `helm template -f my-values.yaml`."""
    values = tmp_path / "my-values.yaml"
    values.write_text("operator:\n  replicas: 2\nwatch:\n  clusterwide: true\n")
    with pytest.raises(HelmFailed, match="at '/watch': additional properties 'clusterwide'"):
        render(helm, sets=(), values=None, extra_args=("-f", str(values)))
