"""Worker pods, both ways: a reconciler action into a Pod body, and a Pod back into a worker.

Pure functions, no I/O and no clock (the caller passes the random suffix and the time), so the
whole mapping is checked by table tests. The operator's other modules never build or read pod
fields themselves.

Names and labels are safe for any entity id: an id appears only hashed in them, raw in an
annotation and in the container's environment (`AQ_ENTITY_ID`, which the command line takes as
`$(AQ_ENTITY_ID)`). The kubelet expands `$(VAR)` in env values as well as in the command, and
`$$` to `$`, so every `$` of the id is doubled in the value; the command's expansion happens
once, so what the worker gets is the id as it was.

The pool's `podTemplate` is a PodTemplateSpec (`metadata`, `spec`) of which only the keys below
are honoured (`ignored_template_keys` names the others, so the operator can warn):

- `metadata.labels`, `metadata.annotations`: added; the operator's own keys win.
- `spec`: the keys in `POD_SPEC_KEYS` are taken as given, except `securityContext` (merged key by
  key over the secure defaults: the template wins where it speaks) and `volumes` (added to the
  operator's `tmp` volume; one of the same name replaces it).
- `spec.containers`: one container (named `worker`, or the only one) gives the keys in
  `CONTAINER_KEYS`; `env` entries are added after the operator's, except those naming a variable
  the operator sets (dropped: the runtime must see what the operator planned); `securityContext`
  and `volumeMounts` merge as above, and `ports` are added to the worker's `metrics` port
  (`METRICS_PORT`, where the worker serves Prometheus metrics; an `AQ_METRICS_PORT` of the
  template's container moves it). Its image, command and args
  are never used: the image is `spec.image`, the command is the worker's.

Secure defaults: non-root (uid 65532 unless the template says otherwise), read-only root
filesystem with a writable emptyDir at /tmp, no privilege escalation, every capability dropped,
the RuntimeDefault seccomp profile, and no service-account token unless the template sets
`automountServiceAccountToken: true`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from atomicqueues.pools.names import entity_hash, worker_name
from atomicqueues.pools.reconciler import Phase, StartPacked, StartWorker, WorkerState
from atomicqueues.pools.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    PoolSpec,
    SecretKeyRef,
    TimingSpec,
)

APP = "atomicqueues"
MANAGED_BY = "atomicqueues-operator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_POOL = "atomicqueues.io/pool"
LABEL_ENTITY = "atomicqueues.io/entity-hash"
LABEL_SLOT = "atomicqueues.io/slot"
LABEL_PLACEMENT = "atomicqueues.io/placement"
ANNOTATION_ENTITY = "atomicqueues.io/entity-id"
ANNOTATION_CREATED = "atomicqueues.io/created-at"
"""When the operator created the pod (epoch seconds, sub-second: orders workers of one slot)."""
ANNOTATION_CLOSING = "atomicqueues.io/closing"
"""Set by the operator when it asked the worker to close (epoch seconds)."""

CONTAINER = "worker"
METRICS_PORT = 9090
"""The worker's Prometheus port in its pod (`AQ_METRICS_PORT`, unless the pod template sets it),
declared as the container port named "metrics", which the chart's PodMonitor scrapes."""
ENTITY_HASH_IN_LABEL = 40
GRACE_MARGIN_SECONDS = 5.0
"""Added to shutdown grace + heartbeat TTL: time for the worker to give its job back and exit."""
NON_ROOT_UID = 65532

POD_SPEC_KEYS = frozenset({
    "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints",
    "priorityClassName", "runtimeClassName", "serviceAccountName",
    "automountServiceAccountToken", "imagePullSecrets", "securityContext", "volumes",
})  # fmt: skip
"""Keys of the template's pod `spec` that are honoured."""
CONTAINER_KEYS = frozenset({
    "resources", "env", "envFrom", "volumeMounts", "imagePullPolicy", "securityContext", "ports",
})  # fmt: skip
"""Keys of the template's worker container that are honoured."""
METADATA_KEYS = frozenset({"labels", "annotations"})

Pod = dict[str, Any]
Start = StartWorker | StartPacked


pod_name = worker_name
"""A pod's name is its worker's name (see `atomicqueues.pools.names`)."""


def pool_labels(pool: str) -> dict[str, str]:
    """The labels every pod of a pool carries, and by which the operator finds them."""
    return {
        LABEL_NAME: APP,
        LABEL_COMPONENT: "worker",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_POOL: pool,
    }


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def termination_grace(spec: PoolSpec) -> int:
    """Seconds Kubernetes waits after SIGTERM: the worker's shutdown grace (a job may finish),
    its heartbeat TTL (a job given back is seen), and a margin."""
    t = spec.timing
    return math.ceil(t.shutdown_grace_seconds + t.heartbeat_ttl_seconds + GRACE_MARGIN_SECONDS)


def _owner_reference(manifest: Mapping[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _command(spec: PoolSpec, dedicated: bool) -> list[str]:
    cmd = ["aq", "worker", "--handlers", spec.handlers, "--entity-type", spec.entity_type]
    if dedicated:
        cmd += ["--entity-id", "$(AQ_ENTITY_ID)"]
    else:
        cmd += ["--slots", str(spec.placement.slots)]
    return [*cmd, "--name", "$(POD_NAME)"]


def _env(spec: PoolSpec, redis: SecretKeyRef | str, entity_id: str | None) -> list[dict[str, Any]]:
    url: dict[str, Any] = (
        {"valueFrom": {"secretKeyRef": {"name": redis.name, "key": redis.key}}}
        if isinstance(redis, SecretKeyRef)
        else {"value": redis}
    )
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "AQ_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "AQ_REDIS_URL", **url},
        {"name": "AQ_PREFIX", "value": spec.redis.prefix},
        *({"name": name, "value": value} for name, value in spec.timing.worker_env().items()),
    ]
    if entity_id is not None:
        # The kubelet expands $(VAR) in an env value too (and `$$` to `$`): escape every `$`.
        env.append({"name": "AQ_ENTITY_ID", "value": entity_id.replace("$", "$$")})
    return env


def _template_parts(
    template: Mapping[str, Any] | None,
) -> tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]]:
    """(metadata, pod spec, worker container) of a pod template; empty where absent."""
    template = template or {}
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    containers = spec.get("containers") or []
    named = [c for c in containers if isinstance(c, Mapping) and c.get("name") == CONTAINER]
    container = named[0] if named else containers[0] if len(containers) == 1 else {}
    return meta, spec, container


def ignored_template_keys(template: Mapping[str, Any] | None) -> list[str]:
    """Paths of a pod template that `pod_body` does not honour (for a warning)."""
    if not template:
        return []
    ignored = [k for k in template if k not in ("metadata", "spec")]
    meta, spec, container = _template_parts(template)
    ignored += [f"metadata.{k}" for k in meta if k not in METADATA_KEYS]
    ignored += [f"spec.{k}" for k in spec if k not in POD_SPEC_KEYS | {"containers"}]
    containers = spec.get("containers") or []
    if containers and not container:
        ignored.append("spec.containers (give one container, or one named 'worker')")
    else:
        others = [c.get("name", "?") for c in containers if c is not container]
        ignored += [f"spec.containers[{name}]" for name in others]
    where = f"spec.containers[{container.get('name', CONTAINER)}]"
    ignored += [f"{where}.{k}" for k in container if k not in CONTAINER_KEYS | {"name"}]
    for entry in container.get("env") or []:
        if isinstance(entry, Mapping) and entry.get("name") in _OPERATOR_ENV:
            ignored.append(f"{where}.env.{entry['name']}")
    return ignored


_OPERATOR_ENV = frozenset(
    {"POD_NAME", "AQ_NODE_NAME", "AQ_REDIS_URL", "AQ_PREFIX", "AQ_ENTITY_ID"}
    | TimingSpec().worker_env().keys()
)


def _metrics_port(container: Mapping[str, Any]) -> tuple[int | None, bool]:
    """The port the worker serves metrics on, and whether the operator sets AQ_METRICS_PORT:
    `METRICS_PORT`, unless the template's container sets the variable itself (then its number,
    or None when it is not a plain port number)."""
    for entry in container.get("env") or []:
        if isinstance(entry, Mapping) and entry.get("name") == "AQ_METRICS_PORT":
            value = str(entry.get("value") or "")
            return (int(value) if value.isdigit() and 0 < int(value) < 65536 else None), False
    return METRICS_PORT, True


def _by_name(ours: list[dict[str, Any]], theirs: Any) -> list[dict[str, Any]]:
    """Our named entries, then the template's; one of theirs with the name of ours replaces it."""
    extra = [dict(e) for e in theirs or [] if isinstance(e, Mapping)]
    names = {e.get("name") for e in extra}
    return [e for e in ours if e["name"] not in names] + extra


def pod_body(
    manifest: Mapping[str, Any],
    spec: PoolSpec,
    action: Start,
    redis: SecretKeyRef | str,
    *,
    image: str,
    suffix: str,
    created_at: float,
) -> Pod:
    """The Pod that carries out `action` for the pool `manifest` (its metadata gives name,
    namespace and uid; `spec` is its parsed spec). `redis` is the Secret holding the Redis URL,
    or the URL itself when it carries no password."""
    pool = manifest["metadata"]["name"]
    namespace = manifest["metadata"].get("namespace")
    entity_id = action.entity_id if isinstance(action, StartWorker) else None
    slot = action.slot if isinstance(action, StartWorker) else action.index
    t_meta, t_spec, t_container = _template_parts(spec.pod_template)

    labels = {
        **(t_meta.get("labels") or {}),
        **pool_labels(pool),
        LABEL_SLOT: str(slot),
        LABEL_PLACEMENT: "packed" if entity_id is None else "dedicated",
    }
    annotations = {**(t_meta.get("annotations") or {}), ANNOTATION_CREATED: repr(created_at)}
    if entity_id is not None:
        labels[LABEL_ENTITY] = entity_hash(entity_id)[:ENTITY_HASH_IN_LABEL]
        annotations[ANNOTATION_ENTITY] = entity_id

    env = _env(spec, redis, entity_id)
    port, set_port = _metrics_port(t_container)
    if set_port:
        env.append({"name": "AQ_METRICS_PORT", "value": str(port)})
    env += [
        dict(e)
        for e in t_container.get("env") or []
        if isinstance(e, Mapping) and e.get("name") not in _OPERATOR_ENV
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": _command(spec, entity_id is not None),
        "env": env,
    }
    for key in ("resources", "envFrom", "imagePullPolicy"):
        if key in t_container:
            container[key] = t_container[key]
    ours = [] if port is None else [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    if ours or t_container.get("ports"):
        container["ports"] = _by_name(ours, t_container.get("ports"))
    container["securityContext"] = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        **(t_container.get("securityContext") or {}),
    }
    container["volumeMounts"] = _by_name(
        [{"name": "tmp", "mountPath": "/tmp"}], t_container.get("volumeMounts")
    )

    pod_spec: dict[str, Any] = {
        key: t_spec[key]
        for key in sorted(POD_SPEC_KEYS - {"securityContext", "volumes"})
        if key in t_spec
    }
    pod_spec.update(
        {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": termination_grace(spec),
            "enableServiceLinks": False,
            "automountServiceAccountToken": t_spec.get("automountServiceAccountToken") is True,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": NON_ROOT_UID,
                "runAsGroup": NON_ROOT_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
                **(t_spec.get("securityContext") or {}),
            },
            "containers": [container],
            "volumes": _by_name([{"name": "tmp", "emptyDir": {}}], t_spec.get("volumes")),
        }
    )
    metadata: dict[str, Any] = {
        "name": pod_name(pool, entity_id, slot, suffix),
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": [_owner_reference(manifest)],
    }
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


# --- from pods back to workers -------------------------------------------------------------

STUCK_REASONS = frozenset({
    "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError",
})  # fmt: skip
"""Waiting reasons of a Pending pod that never ends by itself: the worker counts as failed, so
it is replaced under the entity's backoff (a broken image never becomes a pod storm)."""


def _phase_of(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def waiting_reason(pod: Mapping[str, Any]) -> str | None:
    """Why the worker container waits (ImagePullBackOff...), if it does."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
    return None


def closing_since(pod: Mapping[str, Any]) -> float | None:
    """When the operator asked this pod's worker to close, if it did."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CLOSING)
    try:
        return None if value is None else float(value)
    except ValueError:
        return 0.0  # closing, since some unknown time: the grace has passed


def _started_at(meta: Mapping[str, Any]) -> float:
    annotations = meta.get("annotations") or {}
    try:
        return float(annotations[ANNOTATION_CREATED])
    except (KeyError, ValueError):
        pass
    stamp = meta.get("creationTimestamp")
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return 0.0


def worker_phase(pod: Mapping[str, Any]) -> Phase:
    """The reconciler's phase of a pod.

    Pending -> starting (failed when stuck, see STUCK_REASONS), Running -> running, Succeeded ->
    succeeded, Failed -> failed. A pod the operator asked to close is closing while it lives and
    succeeded when it has ended, even when it was killed (it was told to go). A pod being
    deleted is closing: it is on its way out, and is forgotten only once (its outcome must not
    move the backoff twice).
    """
    meta = pod.get("metadata") or {}
    phase = _phase_of(pod)
    ended = phase in ("Succeeded", "Failed")
    if meta.get("deletionTimestamp"):
        return "closing"
    if closing_since(pod) is not None:
        return "succeeded" if ended else "closing"
    if phase == "Succeeded":
        return "succeeded"
    if phase == "Failed":
        return "failed"
    if phase == "Pending":
        return "failed" if waiting_reason(pod) in STUCK_REASONS else "starting"
    return "running"  # Running, or Unknown (the node is unreachable: the pod still exists)


def worker_state(pod: Mapping[str, Any]) -> WorkerState | None:
    """The worker a pod of a pool stands for; None when the pod is not one of the operator's."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) != MANAGED_BY or LABEL_POOL not in labels:
        return None
    try:
        slot = int(labels[LABEL_SLOT])
    except (KeyError, ValueError):
        return None
    if labels.get(LABEL_PLACEMENT) == "packed":
        entity_id = None
    else:
        entity_id = (meta.get("annotations") or {}).get(ANNOTATION_ENTITY)
        if not isinstance(entity_id, str) or not entity_id:
            return None
    return WorkerState(str(meta["name"]), entity_id, slot, worker_phase(pod), _started_at(meta))
