"""The chart rendered with default and non-default values: valid Kubernetes, secure, and with
RBAC that grants exactly what the operator uses.

Why: `helm install` into a real API server is the control-plane tier's; here every rendered
manifest is checked offline against the Kubernetes 1.37 JSON schemas (kubernetes-validate,
strict: an unknown field is an error), and the parts a mistake would make dangerous or broken
(security context, RBAC, the operator's command line, names that must match) are asserted on.
"""

from __future__ import annotations

import json
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_render import CHART, REPO, HelmFailed, Manifest, by_kind, helm_run, one, render
from rbac_uses import KOPF_HANDLERS, KOPF_USES, kopf_handler_kinds, kube_py_uses, operator_uses

from aq_operator.crd import crd

K8S_VERSION = "1.37.0"
RELEASE, NAMESPACE = "aq", "aq-system"
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())

NON_DEFAULT: dict[str, Any] = {
    "fullnameOverride": "queues",
    "crds": {"install": True, "keep": False},
    "watch": {"clusterWide": True, "namespaces": ["ignored-when-cluster-wide"]},
    "operator": {
        "replicas": 2,
        "image": {"repository": "registry.example/aq/operator", "tag": "1.2.3"},
        "imagePullSecrets": ["pull-secret"],
        "leaseName": "queues-leader",
        "leaseDurationSeconds": 7.5,
        "port": 9090,
        "defaultRedisUrl": "redis://redis.data:6379/0",
        "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"cpu": 1}},
        "livenessProbe": {"periodSeconds": 20},
        "extraEnv": [{"name": "AQ_PREFIX", "value": "team"}],
        "extraArgs": ["--worker-image", "example/handlers:1"],
        "podAnnotations": {"example.com/note": "yes"},
        "podLabels": {"team": "payments", "app.kubernetes.io/component": "not-this"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "aq"}],
        "affinity": {"podAntiAffinity": {}},
        "priorityClassName": "system-cluster-critical",
    },
    "worker": {"image": {"repository": "example/handlers", "tag": "7"}},
    "serviceAccount": {"annotations": {"example.com/role": "aq"}},
    "metrics": {
        "service": {"port": 8443, "annotations": {"prometheus.io/scrape": "true"}},
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "dashboard": {"enabled": True},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
    },
    "commonLabels": {"env": "test", "app.kubernetes.io/name": "not-this"},
}
EXTRA_NAMESPACES: dict[str, Any] = {"watch": {"namespaces": ["team-a", NAMESPACE, "team-b"]}}
BRING_YOUR_OWN: dict[str, Any] = {
    "crds": {"install": False},
    "rbac": {"create": False},
    "serviceAccount": {"create": False, "name": "my-operator"},
    "metrics": {"service": {"enabled": False}},
}
PROMETHEUS_OPERATOR = {
    "ServiceMonitor": {"selector", "namespaceSelector", "endpoints"},
    "PodMonitor": {"selector", "namespaceSelector", "podMetricsEndpoints"},
    "PrometheusRule": {"groups"},
}
"""The Prometheus Operator's kinds the chart may render, with the keys of their spec."""
VALUE_SETS = [
    pytest.param({}, id="default"),
    pytest.param(EXTRA_NAMESPACES, id="extra-namespaces"),
    pytest.param(NON_DEFAULT, id="non-default"),
    pytest.param(BRING_YOUR_OWN, id="bring-your-own"),
]


@cache
def _rendered(helm: Path, values_json: str) -> list[Manifest]:
    return render(helm, json.loads(values_json), release=RELEASE, namespace=NAMESPACE)


def rendered(helm: Path, values: dict[str, Any]) -> list[Manifest]:
    return _rendered(helm, json.dumps(values, sort_keys=True))


def operator_container(manifests: list[Manifest]) -> dict[str, Any]:
    deployment = one(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


# --- lint and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict(helm: Path, values: dict[str, Any]) -> None:
    out = helm_run(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=values)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out, out
    assert "[ERROR]" not in out, out


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes(helm: Path, values: dict[str, Any]) -> None:
    manifests = rendered(helm, values)
    assert manifests
    for manifest in manifests:
        where = f"{manifest['kind']} {manifest['metadata'].get('name')}"
        if manifest["kind"] in PROMETHEUS_OPERATOR:  # its CRDs: no schema here
            assert manifest["apiVersion"] == "monitoring.coreos.com/v1", where
            assert set(manifest["spec"]) == PROMETHEUS_OPERATOR[manifest["kind"]], where
            continue
        try:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            pytest.fail(f"{where}: {path}: {exc.message}")


def test_schema_validation_has_teeth() -> None:
    """The strict schemas reject an unknown field and a mistyped one (else the test above
    would pass anything)."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}},
        },
    }
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    for bad in ({"replicas": "two"}, {"replicaz": 2}):
        broken = {**deployment, "spec": {**deployment["spec"], **bad}}
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_manifest_is_in_the_release_namespace_or_cluster_scoped(helm: Path) -> None:
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for values in (p.values[0] for p in VALUE_SETS):
        manifests = rendered(helm, values)
        for m in manifests:
            namespace = m["metadata"].get("namespace")
            if m["kind"] in cluster_scoped:
                assert namespace is None, m["metadata"]
            elif m["kind"] not in ("Role", "RoleBinding"):  # those go where the pools are
                assert namespace == NAMESPACE, m["metadata"]
        names = [
            (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]) for m in manifests
        ]
        assert len(names) == len(set(names)), names


# --- the operator Deployment --------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS)
def test_operator_pod_is_secure(helm: Path, values: dict[str, Any]) -> None:
    pod = one(rendered(helm, values), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("hostNetwork") is not True
    assert pod.get("hostPID") is not True
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # a read-only root filesystem with a writable /tmp
    (tmp,) = (m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert {"name": tmp["name"], "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert "limits" in container["resources"]
    assert "requests" in container["resources"]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_operator_probes_and_port(helm: Path, values: dict[str, Any]) -> None:
    container = operator_container(rendered(helm, values))
    port = values.get("operator", {}).get("port", 8080)
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    period = values.get("operator", {}).get("livenessProbe", {}).get("periodSeconds", 10)
    assert container["livenessProbe"]["periodSeconds"] == period
    assert f"0.0.0.0:{port}" == container["args"][container["args"].index("--listen") + 1]


def _namespaces_flag(args: list[str]) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == "--namespace"]


def test_default_command_line_and_environment(helm: Path) -> None:
    manifests = rendered(helm, {})
    container = operator_container(manifests)
    assert container["command"] == ["aq"]
    assert container["args"] == [
        "operator",
        "--namespace",
        NAMESPACE,
        "--leader-elect",
        "--lease-name",
        f"{RELEASE}-atomicqueues-operator",
        "--lease-duration",
        "15",
        "--listen",
        "0.0.0.0:8080",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "AQ_WORKER_IMAGE" not in env
    assert "AQ_REDIS_URL" not in env
    assert container["image"] == f"atomicqueues/operator:{CHART_META['appVersion']}"
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True  # the operator needs its token


def test_extra_namespaces_are_watched_once_each(helm: Path) -> None:
    args = operator_container(rendered(helm, EXTRA_NAMESPACES))["args"]
    assert _namespaces_flag(args) == [NAMESPACE, "team-a", "team-b"]


def test_non_default_command_line_and_environment(helm: Path) -> None:
    manifests = rendered(helm, NON_DEFAULT)
    container = operator_container(manifests)
    args = container["args"]
    assert _namespaces_flag(args) == []  # cluster-wide: no --namespace at all
    assert args[args.index("--lease-name") + 1] == "queues-leader"
    assert args[args.index("--lease-duration") + 1] == "7.5"
    assert args[-2:] == ["--worker-image", "example/handlers:1"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AQ_WORKER_IMAGE"] == "example/handlers:7"
    assert env["AQ_REDIS_URL"] == "redis://redis.data:6379/0"
    assert env["AQ_PREFIX"] == "team"
    assert container["image"] == "registry.example/aq/operator:1.2.3"
    deployment = one(manifests, "Deployment")
    assert deployment["metadata"]["name"] == "queues-operator"
    assert deployment["spec"]["replicas"] == 2
    pod_meta = deployment["spec"]["template"]["metadata"]
    assert pod_meta["labels"]["team"] == "payments"
    assert pod_meta["labels"]["app.kubernetes.io/component"] == "operator"  # the chart's wins
    assert pod_meta["annotations"] == {"example.com/note": "yes"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "pull-secret"}]
    assert pod["tolerations"] == NON_DEFAULT["operator"]["tolerations"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    for m in manifests:
        assert m["metadata"]["labels"]["env"] == "test"
        assert m["metadata"]["labels"]["app.kubernetes.io/name"] == "atomicqueues"


def test_names_fit(helm: Path) -> None:
    """With the longest release name Helm allows (53): a Service name is a DNS label (63), and
    so, in practice, is a Deployment's (its pods' names derive from it); the rest are DNS
    subdomains (253)."""
    release = "r" + "-x" * 26
    manifests = render(helm, {"watch": {"clusterWide": True}}, release=release)
    for m in manifests:
        name = m["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
        assert len(name) <= 253, name
        if m["kind"] in ("Service", "Deployment", "ServiceAccount"):
            assert len(name) <= 63, name


# --- RBAC ----------------------------------------------------------------------------------

Rules = dict[tuple[str, str, str | None], set[str]]


def rules_table(rules: list[dict[str, Any]]) -> Rules:
    """(group, resource, resourceName or None) -> verbs; no wildcards anywhere."""
    table: Rules = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule, rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [None]:
                    table.setdefault((group, resource, name), set()).update(rule["verbs"])
    return table


def as_uses(table: Rules) -> dict[tuple[str, str], set[str]]:
    uses: dict[tuple[str, str], set[str]] = {}
    for (group, resource, _), verbs in table.items():
        uses.setdefault((group, resource), set()).update(verbs)
    return uses


def bound_rules(manifests: list[Manifest], namespace: str | None) -> Rules:
    """The rules granted to the operator's ServiceAccount in `namespace` (None: cluster-wide),
    following each binding to its role."""
    account = one(manifests, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    table: Rules = {}
    binding_kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    for binding in by_kind(manifests, binding_kind):
        if binding["metadata"].get("namespace") != namespace:
            continue
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
        ]
        ref = binding["roleRef"]
        role_kind = "Role" if namespace else "ClusterRole"
        assert ref["kind"] == role_kind
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        (role,) = (
            r
            for r in by_kind(manifests, role_kind)
            if r["metadata"]["name"] == ref["name"] and r["metadata"].get("namespace") == namespace
        )
        for key, verbs in rules_table(role["rules"]).items():
            table.setdefault(key, set()).update(verbs)
    return table


def test_rbac_grants_exactly_what_the_operator_uses(helm: Path) -> None:
    """Release namespace: the pools' rules and the Lease's; each other watched namespace: the
    pools' rules only; nothing cluster-wide."""
    manifests = rendered(helm, EXTRA_NAMESPACES)
    lease = f"{RELEASE}-atomicqueues-operator"
    lease_rules = {
        ("coordination.k8s.io", "leases", None): {"create"},
        ("coordination.k8s.io", "leases", lease): {"get", "update"},
    }
    pools_rules = {(g, r, None): verbs for (g, r), verbs in operator_uses().items()}
    for key in lease_rules:
        pools_rules.pop((key[0], key[1], None), None)
    assert bound_rules(manifests, NAMESPACE) == pools_rules | lease_rules
    for namespace in ("team-a", "team-b"):
        assert bound_rules(manifests, namespace) == pools_rules
    assert not by_kind(manifests, "ClusterRole")
    assert not by_kind(manifests, "ClusterRoleBinding")
    assert as_uses(bound_rules(manifests, NAMESPACE)) == operator_uses()
    args = operator_container(manifests)["args"]
    assert args[args.index("--lease-name") + 1] == lease


def test_rbac_cluster_wide(helm: Path) -> None:
    """Cluster-wide: a ClusterRole for the pools' rules; the Lease stays a namespaced Role."""
    manifests = rendered(helm, NON_DEFAULT)
    cluster = bound_rules(manifests, None)
    assert as_uses(cluster) == {k: v for k, v in operator_uses().items() if k[1] != "leases"}
    assert bound_rules(manifests, NAMESPACE) == {
        ("coordination.k8s.io", "leases", None): {"create"},
        ("coordination.k8s.io", "leases", "queues-leader"): {"get", "update"},
    }
    assert {m["metadata"].get("namespace") for m in by_kind(manifests, "Role")} == {NAMESPACE}


def test_operator_uses_are_read_from_the_code() -> None:
    """The table the RBAC is checked against comes from kube.py's calls plus kopf's: a wrong
    reading of kube.py would make the checks above vacuous."""
    uses = kube_py_uses()
    assert uses[("", "pods")] == {"list", "create", "patch", "delete"}
    assert uses[("", "secrets")] == {"get"}
    assert uses[("atomicqueues.io", "entityworkerpools/status")] == {"patch"}
    assert uses[("atomicqueues.io", "entityworkerpools")] == {"list"}  # is the pool still there
    assert set(KOPF_USES) <= set(operator_uses())
    kinds = kopf_handler_kinds()
    assert "event" in kinds
    assert kinds <= KOPF_HANDLERS, (
        f"runner.py registers kopf handlers {kinds - KOPF_HANDLERS}: they may need RBAC that"
        " KOPF_USES (tests/chart/rbac_uses.py) and the chart do not grant"
    )


def test_rbac_can_be_left_to_the_installer(helm: Path) -> None:
    manifests = rendered(helm, BRING_YOUR_OWN)
    kinds = {m["kind"] for m in manifests}
    assert kinds == {"Deployment", "PodDisruptionBudget"}, kinds
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "my-operator"


def test_service_account_name_is_required_without_creating_one(helm: Path) -> None:
    with pytest.raises(HelmFailed, match=r"serviceAccount\.name is required"):
        render(helm, {"serviceAccount": {"create": False}})


# --- CRD, Service, ServiceMonitor ---------------------------------------------------------


def test_crd_template_is_the_generated_crd(helm: Path) -> None:
    manifests = rendered(helm, {})
    rendered_crd = one(manifests, "CustomResourceDefinition")
    meta = rendered_crd.pop("metadata")
    assert rendered_crd == {k: v for k, v in crd().items() if k != "metadata"}
    assert meta["name"] == crd()["metadata"]["name"]
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
    committed = yaml.safe_load((REPO / "crds" / f"{meta['name']}.yaml").read_text())
    assert committed["spec"] == rendered_crd["spec"]


def test_crd_keep_and_install_switches(helm: Path) -> None:
    unkept = one(rendered(helm, NON_DEFAULT), "CustomResourceDefinition")
    assert "annotations" not in unkept["metadata"]
    assert not by_kind(rendered(helm, BRING_YOUR_OWN), "CustomResourceDefinition")


@pytest.mark.parametrize("values", [pytest.param({}, id="default"), VALUE_SETS[2]])
def test_metrics_service_selects_the_operator_pods(helm: Path, values: dict[str, Any]) -> None:
    manifests = rendered(helm, values)
    service = one(manifests, "Service")
    deployment = one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    port = values.get("metrics", {}).get("service", {}).get("port", 8080)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}
    ]
    monitors = by_kind(manifests, "ServiceMonitor")
    if not values:
        assert not monitors
        return
    (monitor,) = monitors
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "http",
            "path": "/metrics",
            "honorLabels": True,
            "interval": "15s",
            "scrapeTimeout": "10s",
        }
    ]
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_service_monitor_needs_the_service(helm: Path) -> None:
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    with pytest.raises(HelmFailed, match=r"needs metrics\.service\.enabled"):
        render(helm, values)


def test_notes_tell_what_to_do_next(helm: Path, tmp_path: Path) -> None:
    """`helm template` leaves NOTES.txt out: render a copy of the chart where its text is a
    ConfigMap's data."""
    chart = tmp_path / "atomicqueues"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    indented = "".join(f"    {line}" for line in notes.splitlines(keepends=True))
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n" + indented
    )
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    show = ["--show-only", "templates/notes.yaml"]
    text = yaml.safe_load(helm_run(helm, *args, *show, "--set", "watch.namespaces={team-a}"))
    out = text["data"]["notes"]
    assert f"It serves EntityWorkerPools in: {NAMESPACE}, team-a." in out
    assert f"rollout status deployment/{RELEASE}-atomicqueues-operator" in out
    assert f"kubectl -n {NAMESPACE} apply -f pool.yaml" in out
    assert "every pool must set spec.image" in out
    assert "{{" not in out
    text = yaml.safe_load(helm_run(helm, *args, *show, values=NON_DEFAULT))
    out = text["data"]["notes"]
    assert "It serves EntityWorkerPools in every namespace." in out
    assert "kubectl -n NAMESPACE apply -f pool.yaml" in out
    assert "every pool must set spec.image" not in out
