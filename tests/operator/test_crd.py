"""The EntityWorkerPool CRD: generated from the pool spec model, structural, and as strict as it.

Why: the API server and `aq up` must accept exactly the same manifests. The committed file must
be the generator's output (else a cluster validates against an old model); the schema must be
structural (else the API server refuses the CRD); and one table of manifests is judged three
ways that must agree: by the pydantic model, by the CRD's OpenAPI schema (with jsonschema) and
by its CEL rules (with cel-python), the last two on the manifest as the API server sees it
(nulls and unknown fields pruned, defaults applied, numbers as doubles). The real API server's
verdict is the control-plane tier's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from aq_operator.crd import (
    CEL_RULES,
    CHART_CRD_FILE,
    CRD_FILE,
    PRINTER_COLUMNS,
    SchemaError,
    apply_defaults,
    chart_crd_yaml,
    crd,
    crd_yaml,
    openapi_schema,
    structural_schema,
    write_crd,
)
from atomicqueues.cli import main as aq
from atomicqueues.pools import spec as spec_module
from atomicqueues.pools.spec import Pool, PoolSpec

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    path.relative_to(REPO)
    for path in (REPO / "examples").rglob("*.yaml")
    if (yaml.safe_load(path.read_text()) or {}).get("kind") == "EntityWorkerPool"
)
SCHEMA = openapi_schema()


# --- the file, the names, the structure --------------------------------------------------


def test_committed_crd_is_the_generators_output() -> None:
    committed = (REPO / CRD_FILE).read_text(encoding="utf-8")
    if committed != crd_yaml():
        pytest.fail(f"{CRD_FILE} differs from the model: run `aq crd --write` and commit it")
    chart_copy = (REPO / CHART_CRD_FILE).read_text(encoding="utf-8")
    if chart_copy != chart_crd_yaml():
        pytest.fail(f"{CHART_CRD_FILE} differs from the model: run `aq crd --write`, commit it")
    # the chart's copy is the same YAML inside its template lines (rendered: tests/chart)
    assert all(line in chart_copy.splitlines() for line in committed.splitlines())


def test_aq_crd_write_writes_both_copies(tmp_path: Path) -> None:
    chart_copy = tmp_path / CHART_CRD_FILE
    assert write_crd(tmp_path) == [tmp_path / CRD_FILE, chart_copy]
    assert chart_copy.read_text(encoding="utf-8") == chart_crd_yaml()
    chart_copy.write_text("stale", encoding="utf-8")
    assert write_crd(tmp_path) == [chart_copy]  # a stale chart copy alone is rewritten
    assert write_crd(tmp_path) == []


def test_aq_crd_prints_the_same_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert aq(["crd"]) == 0
    out = capsys.readouterr().out
    assert out == crd_yaml()
    assert yaml.safe_load(out) == crd()


def test_names_subresources_and_columns() -> None:
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == "entityworkerpools.atomicqueues.io"
    assert spec["group"] == "atomicqueues.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] | {"categories": None} == {
        "kind": "EntityWorkerPool", "listKind": "EntityWorkerPoolList",
        "plural": "entityworkerpools", "singular": "entityworkerpool", "shortNames": ["ewp"],
        "categories": None,
    }  # fmt: skip
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Entity Type": ".spec.entityType", "Active": ".status.activeEntities",
        "Waiting": ".status.waitingJobs", "Ready": ".status.workersReady",
        "Desired": ".status.workersDesired", "Age": ".metadata.creationTimestamp",
    }  # fmt: skip
    for column in PRINTER_COLUMNS:  # every column points at a field of the schema
        node: dict[str, Any] = SCHEMA
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        for part in column["jsonPath"].split(".")[1:]:
            node = node["properties"][part]
        assert node["type"] == column["type"], column


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")


def test_schema_is_structural() -> None:
    """What the API server demands of a structural schema (the parts our generator could miss)."""
    assert "$ref" not in json.dumps(SCHEMA)
    for path, node in nodes(SCHEMA):
        typed = isinstance(node.get("type"), str)
        assert typed or node.get("x-kubernetes-preserve-unknown-fields") is True, path
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title"} & set(node), path
        assert node.get("additionalProperties", True) is not False, path
        assert not ("additionalProperties" in node and "properties" in node), path
        assert "nullable" not in node, path  # nulls are pruned: see aq_operator.crd
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(flag, False), bool), f"{path}: {flag} is OpenAPI's flag"
    pod_template = SCHEMA["properties"]["spec"]["properties"]["podTemplate"]
    assert pod_template["type"] == "object"
    assert pod_template["x-kubernetes-preserve-unknown-fields"] is True
    status = SCHEMA["properties"]["status"]["properties"]
    assert {"activeEntities", "waitingJobs", "workersDesired", "workersReady", "pausedEntities",
            "observedGeneration", "conditions"} <= set(status)  # fmt: skip
    condition = status["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "lastTransitionTime"} <= set(condition)


def test_api_server_defaults_are_the_models_defaults() -> None:
    """Defaulting a minimal spec in the API server gives what the model fills in."""
    minimal = {"entityType": "account", "handlers": "handlers:registry"}
    spec_schema = SCHEMA["properties"]["spec"]
    expected = PoolSpec.model_validate(minimal).model_dump(by_alias=True, exclude_none=True)
    assert apply_defaults(spec_schema, minimal) == expected


class Union(BaseModel):
    value: int | str


class Tree(BaseModel):
    children: list[Tree] = []


class RequiredNullable(BaseModel):
    value: int | None


class Pair(BaseModel):
    value: tuple[int, str]


@pytest.mark.parametrize("model", [Union, Tree, RequiredNullable, Pair], ids=lambda m: m.__name__)
def test_generator_refuses_what_it_cannot_express(model: type[BaseModel]) -> None:
    """A model change the CRD cannot follow fails `aq crd` instead of loosening validation."""
    with pytest.raises(SchemaError):
        structural_schema(model, "spec")


def test_every_cross_field_validator_has_cel_rules() -> None:
    """A validator added to a spec model without CEL rules would let the cluster accept what
    `aq up` rejects."""
    in_spec = set(PoolSpec.model_json_schema()["$defs"]) | {"PoolSpec"}
    for model in vars(spec_module).values():
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        if model.__name__ not in in_spec:
            continue
        decorators = model.__pydantic_decorators__
        if decorators.model_validators or decorators.field_validators:
            assert CEL_RULES.get(model), f"{model.__name__} has validators but no CEL rules"


# --- one table of manifests, three judges --------------------------------------------------


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "examples/quickstart/pool.yaml").read_text())
    return data


DELETE = object()


def manifest(**changes: Any) -> dict[str, Any]:
    """The quickstart manifest with changes: `spec__placement__slots=0`, DELETE removes."""
    data = example()
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return data


SCHEMA_REJECTS, CEL_REJECTS = "schema", "cel"
"""Who rejects a manifest in the API server: its OpenAPI schema, or a CEL rule."""


def case(name: str, rejected_by: str | None, **changes: Any) -> Any:
    return pytest.param(manifest(**changes), rejected_by, id=name)


HEARTBEAT = "heartbeatIntervalSeconds"
CASES = [
    case("quickstart", None),
    case("packed", None, spec__placement={"mode": "packed", "slots": 1}),
    case("secret-ref", None, spec__redis={"secretRef": {"name": "redis"}}),
    case("url", None, spec__redis__url="redis://redis:6379/0"),
    case("url-user-only", None, spec__redis__url="redis://user@redis:6379"),
    case("empty-url-and-secret-ref", None, spec__redis={"url": "", "secretRef": {"name": "r"}}),
    case("nulls", None, spec__image=None, spec__redis__url=None),
    case("pod-template", None, spec__podTemplate={"spec": {"nodeSelector": {"a": "b"}}}),
    case("heartbeat-half", None, spec__timing={HEARTBEAT: 1.5, "heartbeatTTLSeconds": 3}),
    case("ttl-int", None, spec__timing={"heartbeatTTLSeconds": 2}),
    case("slots-0", SCHEMA_REJECTS, spec__placement__slots=0),
    case("slots-1001", SCHEMA_REJECTS, spec__placement__slots=1001),
    case("unknown-mode", SCHEMA_REJECTS, spec__placement__mode="spread"),
    case("missing-handlers", SCHEMA_REJECTS, spec__handlers=DELETE),
    case("handlers-no-attr", SCHEMA_REJECTS, spec__handlers="handlers"),
    case("bad-entity-type", SCHEMA_REJECTS, spec__entityType="a b"),
    case("missing-spec", SCHEMA_REJECTS, spec=DELETE),
    case("max-per-entity-101", SCHEMA_REJECTS, spec__workers__maxPerEntity=101),
    case("max-total-negative", SCHEMA_REJECTS, spec__workers__maxTotal=-1),
    case("int-given-float", SCHEMA_REJECTS, spec__workers__maxTotal=2.5),
    case("start-rate-0", SCHEMA_REJECTS, spec__workers__maxStartsPerSecond=0),
    case("idle-0", SCHEMA_REJECTS, spec__timing__idleTimeoutSeconds=0),
    case("grace-negative", SCHEMA_REJECTS, spec__timing__shutdownGraceSeconds=-0.5),
    case("secret-ref-no-name", SCHEMA_REJECTS, spec__redis={"secretRef": {"key": "url"}}),
    case("bad-prefix", SCHEMA_REJECTS, spec__redis__prefix="a b"),
    case(
        "url-and-secret-ref",
        CEL_REJECTS,
        spec__redis={"url": "redis://r", "secretRef": {"name": "r"}},
    ),
    case("url-password", CEL_REJECTS, spec__redis__url="redis://:hunter2@redis:6379/0"),
    case("tls-url-user-password", CEL_REJECTS, spec__redis__url="rediss://me:hunter2@redis"),
    case(
        "sentinel-url-password",
        CEL_REJECTS,
        spec__redis__url="redis+sentinel://:hunter2@s1,s2/mymaster/0",
    ),
    case("sentinel-url", None, spec__redis__url="redis+sentinel://s1:26379,s2/mymaster/0"),
    case("heartbeat-default-ttl", CEL_REJECTS, spec__timing={HEARTBEAT: 2}),
    case(
        "heartbeat-over-half", CEL_REJECTS, spec__timing={HEARTBEAT: 1, "heartbeatTTLSeconds": 1.5}
    ),
    case("name-uppercase", CEL_REJECTS, metadata__name="Accounts"),
    case("name-too-long", CEL_REJECTS, metadata__name="a" * 64),
]


@pytest.mark.parametrize(("data", "rejected_by"), CASES)
def test_model_verdict(data: dict[str, Any], rejected_by: str | None) -> None:
    if rejected_by is None:
        Pool.model_validate(data)
    else:
        with pytest.raises(ValidationError):
            Pool.model_validate(data)


def as_api_server_sees(data: dict[str, Any], defaults: bool = True) -> dict[str, Any]:
    """A manifest pruned (nulls, unknown fields) and defaulted, as stored and validated."""
    pruned = prune({k: v for k, v in data.items() if k != "metadata"}, SCHEMA)
    # metadata belongs to the API server: the CRD's schema never prunes it
    seen: dict[str, Any] = pruned | {"metadata": data.get("metadata", {})}
    return apply_defaults(SCHEMA, seen) if defaults else seen


def prune(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        keep_all = schema.get("x-kubernetes-preserve-unknown-fields", False)
        return {k: prune(v, properties.get(k, {})) for k, v in value.items()
                if v is not None and (k in properties or keep_all)}  # fmt: skip
    if isinstance(value, list):
        return [prune(v, schema.get("items", {})) for v in value]
    return value


def as_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 to JSON Schema draft 4 (whose exclusiveMinimum is OpenAPI's flag too)."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    return out


def schema_errors(data: dict[str, Any]) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft4Validator(as_json_schema(SCHEMA))
    seen = as_api_server_sees(data)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(seen)]


def cel_errors(value: Any, schema: dict[str, Any], path: str = "") -> list[tuple[str, str]]:
    """(path, message) of every CEL rule that fails, with `self` typed as Kubernetes types it.
    A rule that cannot be evaluated (a type error such as double * int) fails the test."""
    celpy = pytest.importorskip("celpy")
    errors = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", ()):
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(as_cel_value(value, schema))}):
            errors.append((path or "<root>", rule["message"]))
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                errors += cel_errors(value[name], child, f"{path}.{name}")
    return errors


def as_cel_value(value: Any, schema: dict[str, Any]) -> Any:
    """`type: number` is a CEL double even when written as 3 (the API server converts it)."""
    if schema.get("type") == "number" and isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: as_cel_value(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [as_cel_value(v, schema.get("items", {})) for v in value]
    return value


@pytest.mark.parametrize(("data", "rejected_by"), CASES)
def test_schema_verdict(data: dict[str, Any], rejected_by: str | None) -> None:
    errors = schema_errors(data)
    assert bool(errors) == (rejected_by == SCHEMA_REJECTS), errors


@pytest.mark.parametrize(
    ("data", "rejected_by"), [case for case in CASES if case.values[1] != SCHEMA_REJECTS]
)
def test_cel_verdict(data: dict[str, Any], rejected_by: str | None) -> None:
    assert not schema_errors(data)
    errors = cel_errors(as_api_server_sees(data), SCHEMA)
    assert bool(errors) == (rejected_by == CEL_REJECTS), errors
    # without defaults (as if defaulting were off): the rules' has() fallbacks say the same
    assert cel_errors(as_api_server_sees(data, defaults=False), SCHEMA) == errors
    for path, message in errors:
        if path.startswith(".spec"):  # the model's validator says the same words
            with pytest.raises(ValidationError, match=re.escape(message)):
                Pool.model_validate(data)


@pytest.mark.parametrize("path", EXAMPLES, ids=str)
def test_examples_are_accepted(path: Path) -> None:
    data = yaml.safe_load((REPO / path).read_text())
    Pool.model_validate(data)
    assert not schema_errors(data)
    assert not cel_errors(as_api_server_sees(data), SCHEMA)
