"""Worker pods: the body built for a reconciler action, and the worker read back from a pod.

Why: a pod name or label that breaks on a strange entity id stops a whole pool; a missing
owner reference leaks pods when a pool is deleted; a weak security context runs user code as
root; a wrong phase mapping makes the reconciler start a second worker beside a live one, or
count one failure twice. All of it is pure, so every case is a row of a table.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from aq_operator.pods import (
    ANNOTATION_CLOSING,
    ANNOTATION_CREATED,
    ANNOTATION_ENTITY,
    LABEL_ENTITY,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    LABEL_SLOT,
    ignored_template_keys,
    pod_body,
    pod_name,
    termination_grace,
    worker_phase,
    worker_state,
)
from atomicqueues.pools.names import entity_hash, random_suffix
from atomicqueues.pools.reconciler import StartPacked, StartWorker, WorkerState
from atomicqueues.pools.spec import PoolSpec, SecretKeyRef

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

STRANGE_IDS = [
    pytest.param("u1", id="plain"),
    pytest.param("a:b{c}", id="hash-tag-chars"),
    pytest.param("user@example.com", id="email"),
    pytest.param("Ünïcødé 名前 🚀", id="unicode"),
    pytest.param("x" * 1000, id="1000-chars"),
    pytest.param("$(POD_NAME) `rm -rf` ; \"'", id="shell-and-expansion"),
    pytest.param("-", id="dash"),
    pytest.param("a/b=c,d", id="selector-chars"),
]


def manifest(name: str = "pool", namespace: str = "ns1") -> dict[str, Any]:
    return {
        "apiVersion": "atomicqueues.io/v1alpha1",
        "kind": "EntityWorkerPool",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-1", "generation": 3},
    }


def make_spec(**extra: Any) -> PoolSpec:
    return PoolSpec.model_validate({"entityType": "account", "handlers": "app:registry", **extra})


HASH_U1 = entity_hash("u1")[:10]
SECRET = SecretKeyRef(name="redis", key="url")


def body(action: StartWorker | StartPacked | None = None, **kw: Any) -> dict[str, Any]:
    action = action or StartWorker("u1", 0)
    spec = kw.pop("spec", None) or make_spec()
    return pod_body(
        kw.pop("manifest", None) or manifest(),
        spec,
        action,
        kw.pop("redis", SECRET),
        image="example/worker:1",
        suffix="ab12c",
        created_at=1700000000.25,
    )


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


# --- stage 1: the body ----------------------------------------------------------------------


@pytest.mark.parametrize("entity_id", STRANGE_IDS)
@pytest.mark.parametrize(
    "pool", [pytest.param("pool", id="short-pool"), pytest.param("p" * 63, id="63-char-pool")]
)
def test_names_and_labels_are_safe_for_any_entity_id(entity_id: str, pool: str) -> None:
    pod = body(StartWorker(entity_id, 12), manifest=manifest(pool))
    meta = pod["metadata"]
    assert len(meta["name"]) <= 63
    assert DNS_LABEL.match(meta["name"]), meta["name"]
    assert meta["name"].endswith(f"-{entity_hash(entity_id)[:10]}-12-ab12c")
    for key, value in meta["labels"].items():
        assert LABEL_KEY.match(key), key
        assert len(value) <= 63, (key, value)
        assert LABEL_VALUE.match(value), (key, value)
    assert entity_id not in meta["labels"].values()
    assert meta["labels"][LABEL_ENTITY] == entity_hash(entity_id)[:40]
    assert meta["annotations"][ANNOTATION_ENTITY] == entity_id
    # `$` doubled: the kubelet expands $(VAR) and `$$` in env values (the control-plane tier
    # runs the kubelet's expansion on it and checks the worker gets the id as it was)
    assert env_of(pod)["AQ_ENTITY_ID"] == {
        "name": "AQ_ENTITY_ID",
        "value": entity_id.replace("$", "$$"),
    }


def test_entity_id_never_in_a_label_value() -> None:
    pod = body(StartWorker("worker", 0))  # an id that equals a label value we use
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "worker"  # ours, not the entity's
    assert labels[LABEL_ENTITY] == entity_hash("worker")[:40]


@pytest.mark.parametrize(
    ("pool", "entity", "slot", "expected"),
    [
        pytest.param("accounts", "u1", 0, f"accounts-{HASH_U1}-0-zz9zz", id="dedicated"),
        pytest.param("accounts", None, 7, "accounts-packed-7-zz9zz", id="packed"),
        pytest.param("a" * 63, None, 12345, "a" * 44 + "-packed-12345-zz9zz", id="long-pool"),
        pytest.param("ab-" * 20 + "abc", "u", 3, None, id="truncated-at-a-dash"),
    ],
)  # fmt: skip
def test_pod_name(pool: str, entity: str | None, slot: int, expected: str | None) -> None:
    name = pod_name(pool, entity, slot, "zz9zz")
    assert len(name) <= 63
    assert DNS_LABEL.match(name), name
    if expected is not None:
        assert name == expected
    assert "--" not in name


def test_random_suffix_is_dns_safe() -> None:
    suffixes = {random_suffix() for _ in range(200)}
    assert len(suffixes) > 190
    assert all(re.fullmatch(r"[a-z0-9]{5}", s) for s in suffixes)


def test_dedicated_pod_body() -> None:
    pod = body(StartWorker("a:b{c}", 2))
    meta, spec = pod["metadata"], pod["spec"]
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert meta["namespace"] == "ns1"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "atomicqueues",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "atomicqueues-operator",
        "atomicqueues.io/pool": "pool",
        "atomicqueues.io/slot": "2",
        "atomicqueues.io/placement": "dedicated",
        "atomicqueues.io/entity-hash": entity_hash("a:b{c}")[:40],
    }
    assert meta["annotations"] == {
        ANNOTATION_ENTITY: "a:b{c}",
        ANNOTATION_CREATED: "1700000000.25",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "atomicqueues.io/v1alpha1",
            "kind": "EntityWorkerPool",
            "name": "pool",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    [container] = spec["containers"]
    assert container["image"] == "example/worker:1"
    assert container["command"] == [
        "aq", "worker", "--handlers", "app:registry", "--entity-type", "account",
        "--entity-id", "$(AQ_ENTITY_ID)", "--name", "$(POD_NAME)",
    ]  # fmt: skip
    assert spec["restartPolicy"] == "Never"
    assert spec["terminationGracePeriodSeconds"] == 25 + 3 + 5


def test_packed_pod_body() -> None:
    pod = body(StartPacked(4), spec=make_spec(placement={"mode": "packed", "slots": 8}))
    meta = pod["metadata"]
    assert meta["labels"]["atomicqueues.io/placement"] == "packed"
    assert meta["labels"][LABEL_SLOT] == "4"
    assert LABEL_ENTITY not in meta["labels"]
    assert ANNOTATION_ENTITY not in meta["annotations"]
    assert "AQ_ENTITY_ID" not in env_of(pod)
    command = pod["spec"]["containers"][0]["command"]
    assert command[command.index("--slots") + 1] == "8"
    assert "--entity-id" not in command


@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        pytest.param(
            SecretKeyRef(name="redis-conn", key="uri"),
            {"valueFrom": {"secretKeyRef": {"name": "redis-conn", "key": "uri"}}},
            id="secret",
        ),
        pytest.param("redis://redis:6379/0", {"value": "redis://redis:6379/0"}, id="url"),
    ],
)
def test_redis_url_env(redis: SecretKeyRef | str, expected: dict[str, Any]) -> None:
    assert env_of(body(redis=redis))["AQ_REDIS_URL"] == {"name": "AQ_REDIS_URL", **expected}


def test_runtime_env_from_the_spec_and_the_downward_api() -> None:
    spec = make_spec(
        redis={"prefix": "tenant-a"},
        timing={
            "heartbeatTTLSeconds": 4,
            "heartbeatIntervalSeconds": 1.5,
            "idleTimeoutSeconds": 12,
            "shutdownGraceSeconds": 7.5,
        },
    )
    env = env_of(body(spec=spec))
    values = {name: e.get("value") for name, e in env.items()}
    assert values["AQ_PREFIX"] == "tenant-a"
    assert float(values["AQ_HEARTBEAT_TTL"]) == 4
    assert float(values["AQ_HEARTBEAT_INTERVAL"]) == 1.5
    assert float(values["AQ_IDLE_TIMEOUT"]) == 12
    assert float(values["AQ_SHUTDOWN_GRACE"]) == 7.5
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["AQ_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert termination_grace(spec) == 17  # ceil(7.5 + 4 + 5)


def test_secure_defaults() -> None:
    spec = body()["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = spec["containers"][0]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {}}]


FULL_TEMPLATE = {
    "metadata": {
        "labels": {"team": "payments", "atomicqueues.io/pool": "spoofed"},
        "annotations": {"prometheus.io/scrape": "true", ANNOTATION_ENTITY: "spoofed"},
    },
    "spec": {
        "nodeSelector": {"pool": "workers"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"x": 1}},
        "serviceAccountName": "worker-sa",
        "imagePullSecrets": [{"name": "regcred"}],
        "priorityClassName": "high",
        "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
        "volumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
        "hostNetwork": True,
        "containers": [
            {
                "name": "worker",
                "image": "ignored/image",
                "command": ["sh"],
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                "env": [
                    {"name": "EXTRA", "value": "1"},
                    {"name": "AQ_REDIS_URL", "value": "redis://evil:6379/0"},
                    {"name": "AQ_MAX_ATTEMPTS", "value": "5"},
                ],
                "envFrom": [{"configMapRef": {"name": "cfg"}}],
                "volumeMounts": [{"name": "certs", "mountPath": "/certs"}],
                "imagePullPolicy": "Always",
                "securityContext": {"readOnlyRootFilesystem": False},
                "livenessProbe": {"exec": {"command": ["true"]}},
            }
        ],
    },
}


def test_pod_template_merge() -> None:
    pod = body(spec=make_spec(podTemplate=FULL_TEMPLATE))
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["team"] == "payments"
    assert meta["labels"][LABEL_POOL] == "pool"  # ours win
    assert meta["annotations"]["prometheus.io/scrape"] == "true"
    assert meta["annotations"][ANNOTATION_ENTITY] == "u1"  # ours win
    t = FULL_TEMPLATE["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "serviceAccountName"):
        assert spec[key] == t[key]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["priorityClassName"] == "high"
    assert "hostNetwork" not in spec  # not honoured
    assert spec["automountServiceAccountToken"] is False  # a service account alone: no token
    assert spec["securityContext"]["runAsUser"] == 1000  # the template wins where it speaks
    assert spec["securityContext"]["fsGroup"] == 2000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "certs"]
    [container] = spec["containers"]
    assert container["image"] == "example/worker:1"
    assert container["command"][:2] == ["aq", "worker"]
    assert container["resources"] == {"limits": {"cpu": "500m", "memory": "256Mi"}}
    assert container["envFrom"] == [{"configMapRef": {"name": "cfg"}}]
    assert container["imagePullPolicy"] == "Always"
    assert "livenessProbe" not in container
    env = env_of(pod)
    assert env["EXTRA"]["value"] == "1"
    assert env["AQ_MAX_ATTEMPTS"]["value"] == "5"
    assert "secretKeyRef" in env["AQ_REDIS_URL"]["valueFrom"]  # ours, not the template's
    assert [e["name"] for e in container["env"]].count("AQ_REDIS_URL") == 1
    assert container["securityContext"]["readOnlyRootFilesystem"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp", "certs"]
    assert sorted(ignored_template_keys(FULL_TEMPLATE)) == [
        "spec.containers[worker].command",
        "spec.containers[worker].env.AQ_REDIS_URL",
        "spec.containers[worker].image",
        "spec.containers[worker].livenessProbe",
        "spec.hostNetwork",
    ]


@pytest.mark.parametrize(
    ("template", "token"),
    [
        pytest.param(None, False, id="no-template"),
        pytest.param({"spec": {"serviceAccountName": "sa"}}, False, id="service-account-only"),
        pytest.param({"spec": {"automountServiceAccountToken": True}}, True, id="asked"),
        pytest.param({"spec": {"automountServiceAccountToken": "yes"}}, False, id="not-a-bool"),
    ],
)
def test_service_account_token_only_when_asked(template: Any, token: bool) -> None:
    spec = make_spec(podTemplate=template) if template else make_spec()
    assert body(spec=spec)["spec"]["automountServiceAccountToken"] is token


@pytest.mark.parametrize(
    ("template", "ignored"),
    [
        pytest.param({}, [], id="empty"),
        pytest.param({"spec": {"containers": [{"name": "other"}]}}, [], id="one-container"),
        pytest.param(
            {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}},
            ["spec.containers (give one container, or one named 'worker')"],
            id="two-unnamed",
        ),
        pytest.param(
            {"spec": {"containers": [{"name": "worker"}, {"name": "sidecar"}]}},
            ["spec.containers[sidecar]"],
            id="sidecar",
        ),
        pytest.param({"kind": "Pod", "metadata": {"name": "x"}}, ["kind", "metadata.name"]),
    ],
)  # fmt: skip
def test_ignored_template_keys(template: dict[str, Any], ignored: list[str]) -> None:
    assert ignored_template_keys(template) == ignored


def test_the_only_container_of_a_template_is_the_worker_whatever_its_name() -> None:
    template = {"spec": {"containers": [{"name": "app", "resources": {"limits": {"cpu": "1"}}}]}}
    container = body(spec=make_spec(podTemplate=template))["spec"]["containers"][0]
    assert container["name"] == "worker"
    assert container["resources"] == {"limits": {"cpu": "1"}}


# --- stage 2: pods back to workers ----------------------------------------------------------


def pod_in(
    phase: str | None,
    *,
    closing: str | None = None,
    deleting: bool = False,
    waiting: str | None = None,
    entity: str | None = "a:b{c}",
) -> dict[str, Any]:
    action = StartWorker(entity, 1) if entity is not None else StartPacked(1)
    pod = body(action)
    if closing is not None:
        pod["metadata"]["annotations"][ANNOTATION_CLOSING] = closing
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {}
    if phase is not None:
        status["phase"] = phase
    if waiting is not None:
        status["containerStatuses"] = [{"state": {"waiting": {"reason": waiting}}}]
    if status:
        pod["status"] = status
    return pod


@pytest.mark.parametrize(
    ("pod", "phase"),
    [
        pytest.param(pod_in(None), "starting", id="no-status"),
        pytest.param(pod_in("Pending"), "starting", id="pending"),
        pytest.param(pod_in("Pending", waiting="ContainerCreating"), "starting", id="creating"),
        pytest.param(pod_in("Pending", waiting="ErrImagePull"), "starting", id="first-pull-error"),
        pytest.param(pod_in("Pending", waiting="ImagePullBackOff"), "failed", id="image-backoff"),
        pytest.param(pod_in("Pending", waiting="InvalidImageName"), "failed", id="invalid-image"),
        pytest.param(pod_in("Pending", waiting="CreateContainerConfigError"), "failed"),
        pytest.param(pod_in("Running"), "running", id="running"),
        pytest.param(pod_in("Unknown"), "running", id="unknown-node"),
        pytest.param(pod_in("Succeeded"), "succeeded", id="succeeded"),
        pytest.param(pod_in("Failed"), "failed", id="failed"),
        pytest.param(pod_in("Running", closing="1.5"), "closing", id="closing"),
        pytest.param(pod_in("Pending", closing="1.5"), "closing", id="closing-pending"),
        pytest.param(pod_in("Succeeded", closing="1.5"), "succeeded", id="closed"),
        pytest.param(pod_in("Failed", closing="1.5"), "succeeded", id="closed-killed"),
        pytest.param(pod_in("Running", deleting=True), "closing", id="deleting"),
        pytest.param(pod_in("Failed", deleting=True), "closing", id="failed-being-deleted"),
        pytest.param(pod_in("Succeeded", deleting=True), "closing", id="done-being-deleted"),
    ],
)  # fmt: skip
def test_worker_phase(pod: dict[str, Any], phase: str) -> None:
    assert worker_phase(pod) == phase


@pytest.mark.parametrize("entity_id", STRANGE_IDS)
def test_worker_state_round_trip(entity_id: str) -> None:
    pod = body(StartWorker(entity_id, 3))
    pod["status"] = {"phase": "Running"}
    assert worker_state(pod) == WorkerState(
        pod["metadata"]["name"], entity_id, 3, "running", 1700000000.25
    )


def test_packed_worker_state() -> None:
    pod = pod_in("Pending", entity=None)
    assert worker_state(pod) == WorkerState(
        pod["metadata"]["name"], None, 1, "starting", 1700000000.25
    )


def test_started_at_falls_back_to_the_creation_timestamp() -> None:
    pod = pod_in("Running")
    del pod["metadata"]["annotations"][ANNOTATION_CREATED]
    pod["metadata"]["creationTimestamp"] = "2026-01-02T03:04:05Z"
    state = worker_state(pod)
    assert state is not None
    assert state.started_at == 1767323045.0


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: p["metadata"]["labels"].pop(LABEL_MANAGED_BY), id="unmanaged"),
        pytest.param(lambda p: p["metadata"]["labels"].pop(LABEL_SLOT), id="no-slot"),
        pytest.param(lambda p: p["metadata"]["labels"].update({LABEL_SLOT: "x"}), id="bad-slot"),
        pytest.param(lambda p: p["metadata"]["annotations"].pop(ANNOTATION_ENTITY), id="no-entity"),
    ],
)  # fmt: skip
def test_pods_that_are_not_workers(change: Any) -> None:
    pod = pod_in("Running")
    change(pod)
    assert worker_state(pod) is None


def test_worker_serves_metrics_on_a_named_port() -> None:
    """The chart's PodMonitor finds worker pods by their labels and scrapes the port named
    "metrics"; the worker serves there because the operator sets AQ_METRICS_PORT."""
    pod = body()
    [container] = pod["spec"]["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert env_of(pod)["AQ_METRICS_PORT"]["value"] == "9090"
    extra = {"name": "debug", "containerPort": 5678}
    template = {"spec": {"containers": [{"ports": [extra]}]}}
    pod = body(spec=make_spec(podTemplate=template))
    assert [p["name"] for p in pod["spec"]["containers"][0]["ports"]] == ["metrics", "debug"]


@pytest.mark.parametrize(
    ("value", "ports"),
    [
        pytest.param("9300", [{"name": "metrics", "containerPort": 9300, "protocol": "TCP"}]),
        pytest.param("", None, id="empty: no metrics"),
        pytest.param("http", None, id="not-a-number"),
    ],
)
def test_a_template_moves_the_metrics_port(value: str, ports: list[Any] | None) -> None:
    """The template's AQ_METRICS_PORT wins (a pod on the host's network needs its own port),
    and the declared port follows it."""
    template = {"spec": {"containers": [{"env": [{"name": "AQ_METRICS_PORT", "value": value}]}]}}
    pod = body(spec=make_spec(podTemplate=template))
    [container] = pod["spec"]["containers"]
    assert [e for e in container["env"] if e["name"] == "AQ_METRICS_PORT"] == [
        {"name": "AQ_METRICS_PORT", "value": value}
    ]
    assert container.get("ports") == ports
