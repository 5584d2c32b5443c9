"""The chart's monitoring: the PrometheusRule's alerts (checked and unit-tested with Prometheus's
own promtool), the Grafana dashboard (valid, and asking only for metrics the code exports, by
labels they have), the PodMonitor of the worker pods and the operator's PodDisruptionBudget.

Why: an alert or a panel naming a metric that does not exist is silent forever, and a PodMonitor
whose selector misses the pods scrapes nothing; neither shows until the day it is needed.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import CHART, Manifest, by_kind, one, render
from prometheus_client import REGISTRY

import aq_operator.metrics
import atomicqueues.metrics
import atomicqueues.pools.health
from aq_operator.pods import METRICS_PORT, pod_body, pool_labels
from atomicqueues.pools.reconciler import StartWorker
from atomicqueues.pools.spec import PoolSpec

EXPORTERS = (atomicqueues.metrics, atomicqueues.pools.health, aq_operator.metrics)
NAMESPACE = "aq-system"
MONITORING: dict[str, Any] = {
    "watch": {"namespaces": ["team-a"]},
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Queues"}},
        "prometheusRule": {"enabled": True, "alertLabels": {"severity": "page", "team": "q"}},
    },
}
DASHBOARD = json.loads((CHART / "dashboards" / "atomicqueues.json").read_text())
ALERTS = {
    "AtomicQueuesJobsWaitingTooLong",
    "AtomicQueuesDeadLettersGrowing",
    "AtomicQueuesWorkersShort",
    "AtomicQueuesOperatorNotLeading",
    "AtomicQueuesReconcileErrors",
}


@pytest.fixture(scope="module")
def manifests(helm: Path) -> list[Manifest]:
    return render(helm, MONITORING, namespace=NAMESPACE)


def rules_file(manifests: list[Manifest], path: Path, *, annotations: bool = True) -> Path:
    spec = one(manifests, "PrometheusRule")["spec"]
    if not annotations:
        for group in spec["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    path.write_text(yaml.safe_dump(spec))
    return path


def promtool_run(promtool: Path, *args: str | Path) -> str:
    done = subprocess.run(
        [str(promtool), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"promtool {args[0]} {args[1]}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# --- alerts ---------------------------------------------------------------------------------------


def test_rules_pass_promtool(manifests: list[Manifest], promtool: Path, tmp_path: Path) -> None:
    rules = rules_file(manifests, tmp_path / "rules.yaml")
    out = promtool_run(promtool, "check", "rules", rules)
    assert "SUCCESS: 5 rules found" in out
    names = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    assert names == ALERTS


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def firing(alert: str, at: str, *labelled: dict[str, str]) -> dict[str, Any]:
    team = {"severity": "page", "team": "q"}
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {**team, **labels}} for labels in labelled],
    }


POOL = {"namespace": "team-a", "pool": "mail"}
OTHER = {"namespace": "team-a", "pool": "quiet"}
ALERT_TESTS: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            series("aq_pool_oldest_waiting_seconds", "0+60x20", **POOL),  # grows: nobody takes it
            series("aq_pool_oldest_waiting_seconds", "0+1x20", **OTHER),  # a short wait
        ],
        "alert_rule_test": [
            firing("AtomicQueuesJobsWaitingTooLong", "5m"),  # 300 s is not over 300
            firing("AtomicQueuesJobsWaitingTooLong", "8m", POOL),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            series("aq_pool_dead_letters", "2x20 3x40", **POOL),
            series("aq_pool_dead_letters", "5x60", **OTHER),  # many, but not growing
        ],
        "alert_rule_test": [
            firing("AtomicQueuesDeadLettersGrowing", "10m"),
            firing("AtomicQueuesDeadLettersGrowing", "25m", POOL),
            firing("AtomicQueuesDeadLettersGrowing", "50m"),  # flat for a whole window again
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            series("aq_operator_workers_desired", "3x30", **POOL),
            series("aq_operator_workers_ready", "1x30", **POOL),
            series("aq_operator_workers_desired", "2x30", **OTHER),
            series("aq_operator_workers_ready", "0x5 2x25", **OTHER),  # pods that started
        ],
        "alert_rule_test": [
            firing("AtomicQueuesWorkersShort", "10m"),
            firing("AtomicQueuesWorkersShort", "20m", POOL),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            series("aq_operator_leader", "1x10 0x20", namespace=NAMESPACE),
            series("aq_operator_leader", "0x30", namespace="another-install"),
        ],
        "alert_rule_test": [
            firing("AtomicQueuesOperatorNotLeading", "10m"),
            firing("AtomicQueuesOperatorNotLeading", "20m", {}),
        ],
    },
    {
        "interval": "1m",
        "input_series": [series("aq_pool_jobs_waiting", "0x30", **POOL)],  # no operator at all
        "alert_rule_test": [firing("AtomicQueuesOperatorNotLeading", "10m", {})],
    },
    {
        "interval": "1m",
        "input_series": [
            series("aq_operator_reconcile_errors_total", "0+1x30", **POOL),
            series("aq_operator_reconcile_errors_total", "0x5 1x25", **OTHER),  # one, then none
        ],
        "alert_rule_test": [
            firing("AtomicQueuesReconcileErrors", "5m"),
            firing("AtomicQueuesReconcileErrors", "15m", POOL),
        ],
    },
]


def test_alerts_fire_when_they_should_and_only_then(
    manifests: list[Manifest], promtool: Path, tmp_path: Path
) -> None:
    """promtool's rule unit tests: series in, alerts out (labels compared exactly)."""
    rules_file(manifests, tmp_path / "rules.yaml", annotations=False)
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": ALERT_TESTS}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    out = promtool_run(promtool, "test", "rules", tmp_path / "tests.yaml")
    assert "SUCCESS" in out
    tested = {t["alertname"] for case in ALERT_TESTS for t in case["alert_rule_test"]}
    assert tested == ALERTS


def test_rule_thresholds_come_from_values(helm: Path) -> None:
    values = json.loads(json.dumps(MONITORING))
    values["metrics"]["prometheusRule"].update(oldestWaitingSeconds=60, workersShortFor="3m")
    rules = {
        r["alert"]: r
        for r in one(render(helm, values, namespace=NAMESPACE), "PrometheusRule")["spec"]["groups"][
            0
        ]["rules"]
    }
    assert rules["AtomicQueuesJobsWaitingTooLong"]["expr"].endswith("> 60")
    assert rules["AtomicQueuesWorkersShort"]["for"] == "3m"
    assert "3m" in rules["AtomicQueuesWorkersShort"]["annotations"]["description"]


# --- metrics the expressions name must exist ------------------------------------------------------


def exported() -> dict[str, set[str]]:
    """Every series name the worker, the pools and the operator export, with its labels."""
    assert all(EXPORTERS)  # imported: their metrics are registered
    names: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("aq_"):
            continue
        labels = set(getattr(REGISTRY._names_to_collectors.get(family.name), "_labelnames", ()))
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
        }.get(family.type, [""])
        for suffix in suffixes:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


TARGET_LABELS = {"namespace"}
"""Added by the scrape: the target's namespace (where a series has none of its own)."""
SELECTOR = re.compile(r"\b(aq_[a-z_]+)(?:\{([^}]*)\})?")
GROUPING = re.compile(r"\bby \(([^)]*)\)")


def check_expression(expr: str, names: dict[str, set[str]]) -> None:
    used = SELECTOR.findall(expr)
    assert used, expr
    labels: set[str] = set()
    for name, selector in used:
        assert name in names, f"{name} is not exported by the code: {expr}"
        own = names[name]
        labels |= own
        for matcher in filter(None, (m.strip() for m in selector.split(","))):
            label = re.split(r"[=!~]", matcher, maxsplit=1)[0].strip()
            allowed = own | (TARGET_LABELS - own if "namespace" not in own else set())
            assert label in allowed, f"{name} has no label {label!r}: {expr}"
    for group in GROUPING.findall(expr):
        for label in (g.strip() for g in group.split(",")):
            assert label in labels, f"no series of {expr!r} has label {label!r}"


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel.get("targets", [])]


def test_every_expression_names_exported_metrics_and_labels(manifests: list[Manifest]) -> None:
    names = exported()
    assert {"aq_pool_oldest_waiting_seconds", "aq_jobs_completed_total"} <= names.keys()
    rules = one(manifests, "PrometheusRule")["spec"]["groups"][0]["rules"]
    for expr in [r["expr"] for r in rules] + dashboard_expressions():
        check_expression(expr, names)
    with pytest.raises(AssertionError, match="not exported"):  # the check has teeth
        check_expression("rate(aq_jobs_finished_total[5m])", names)
    with pytest.raises(AssertionError, match="no series"):
        check_expression("sum by (entity_id) (aq_jobs_in_flight)", names)


# --- the dashboard --------------------------------------------------------------------------------


def test_dashboard_is_shipped_for_the_grafana_sidecar(manifests: list[Manifest]) -> None:
    config_map = one(manifests, "ConfigMap", "aq-atomicqueues-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Queues"}
    assert json.loads(config_map["data"]["atomicqueues.json"]) == DASHBOARD


def test_dashboard_is_well_formed() -> None:
    panels = DASHBOARD["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert variables == {"datasource", "namespace", "pool", "entity_type"}
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 12
    for panel in graphs:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for variable in re.findall(r"\$(\w+)", target["expr"]):
                assert variable in variables, (panel["title"], variable)
    titles = " ".join(p["title"] for p in graphs)
    for needed in ("Oldest waiting job", "Jobs waiting", "Dead letters", "Entities with work"):
        assert needed in titles


def test_dashboard_queries_are_valid_promql(promtool: Path, tmp_path: Path) -> None:
    """Each query, with its variables filled in, as a recording rule promtool parses."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": re.sub(r"\$\w+", ".*", expr)}
        for i, expr in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool_run(promtool, "check", "rules", path)


# --- worker pods' metrics, and the operator's disruption budget -----------------------------------


def test_pod_monitor_finds_the_worker_pods(manifests: list[Manifest], helm: Path) -> None:
    monitor = one(manifests, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    spec = PoolSpec.model_validate({"entityType": "t", "handlers": "m:r", "image": "x/y:1"})
    manifest = {"metadata": {"name": "mail", "namespace": "team-a", "uid": "u"}}
    pod = pod_body(
        manifest, spec, StartWorker("e", 0), "redis://r", image="x/y:1", suffix="s", created_at=0
    )
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert selector.items() <= pool_labels("any-pool").items()
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == METRICS_PORT
    assert endpoint["honorLabels"] is True  # the series' own `job` label (the job's name)
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE, "team-a"]}
    wide = render(helm, {**MONITORING, "watch": {"clusterWide": True}}, namespace=NAMESPACE)
    assert one(wide, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}


def test_monitoring_is_off_by_default_and_the_budget_on(helm: Path) -> None:
    manifests = render(helm, {}, namespace=NAMESPACE)
    kinds = {m["kind"] for m in manifests}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ServiceMonitor"}
    assert not [m for m in by_kind(manifests, "ConfigMap") if "dashboard" in m["metadata"]["name"]]
    budget = one(manifests, "PodDisruptionBudget")
    deployment = one(manifests, "Deployment")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    off = {"operator": {"podDisruptionBudget": {"enabled": False, "maxUnavailable": 1}}}
    assert not by_kind(render(helm, off, namespace=NAMESPACE), "PodDisruptionBudget")
