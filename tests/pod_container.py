"""A pod's container, resolved as a kubelet resolves it: its env, its command line, and the
container engine's `run` arguments that give it the pod's security context.

Why: the container tier (tests/containers) runs the worker image exactly as the operator's pods
ask to be run, and the kubelet stand-in of the control-plane tier (tests/controlplane/kubelet.py)
resolves env and command the same way; both take it from here, so the two cannot drift.

`run_args` covers what the operator's worker pods use (`aq_operator.pods.pod_body`): user and
group, runAsNonRoot, a read-only root filesystem, no privilege escalation, dropped (and added)
capabilities, the RuntimeDefault seccomp profile (the engine's default), emptyDir volumes (as
tmpfs), env and the termination grace. Anything else it cannot honour raises `PodConfigError`
instead of being dropped silently. The pod's network is the host's (pods have an IP of their
own; here the host's loopback is where the tests' Redis and API server listen), and resource
limits are not applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXPANSION = re.compile(r"\$(\$|\(([^)]*)\))")
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class PodConfigError(Exception):
    """The container cannot be set up as the pod asks (a Secret or key is missing...)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, an undefined one stays as it
    is, `$$` is a literal `$`; the result is never expanded again."""

    def one(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        return env.get(match.group(2), match.group(0))

    return EXPANSION.sub(one, text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward-API `fieldRef` of the pod."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if keyed:
        return str((meta.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    raise PodConfigError(f"fieldRef {path} is not supported by the test kubelet")


def secret_refs(container: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(Secret name, key) of every `secretKeyRef` in the container's env."""
    refs = []
    for entry in container.get("env") or []:
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref is not None:
            refs.append((str(ref["name"]), str(ref["key"])))
    return refs


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    secrets: Mapping[tuple[str, str], str | None],
) -> dict[str, str]:
    """The container's env as its process gets it, in order: `value` (with `$(VAR)` of earlier
    entries expanded), `secretKeyRef` (from `secrets`, by (name, key); None: missing) and
    `fieldRef`."""
    if container.get("envFrom"):
        raise PodConfigError("envFrom is not supported by the test kubelet")
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        source = entry.get("valueFrom")
        if source is None:
            env[entry["name"]] = expand(str(entry.get("value", "")), env)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = secrets.get((ref["name"], ref["key"]))
            if value is None:
                raise PodConfigError(f'secret "{ref["name"]}" has no key "{ref["key"]}"')
            env[entry["name"]] = value
        elif "fieldRef" in source:
            env[entry["name"]] = field_value(pod, source["fieldRef"]["fieldPath"])
        else:
            raise PodConfigError(f"env {entry['name']}: {sorted(source)} not supported")
    return env


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The container's command and args with `$(VAR)` expanded."""
    return [expand(a, env) for a in container.get("command", []) + container.get("args", [])]


def security_context(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The worker container's effective security context: the pod's, then the container's
    keys over it (as Kubernetes merges them)."""
    (container,) = pod["spec"]["containers"]
    return {
        **(pod["spec"].get("securityContext") or {}),
        **(container.get("securityContext") or {}),
    }


def _security_args(context: Mapping[str, Any], podman: bool) -> list[str]:
    args: list[str] = []
    user, group = context.get("runAsUser"), context.get("runAsGroup")
    if context.get("runAsNonRoot") and not user:
        raise PodConfigError("runAsNonRoot needs a non-zero runAsUser here")
    if user is not None:
        args += ["--user", str(user) if group is None else f"{user}:{group}"]
    if context.get("readOnlyRootFilesystem"):
        # podman's --read-only also mounts tmpfs on /tmp, /var/tmp and /run; Kubernetes does not.
        args += ["--read-only", *(["--read-only-tmpfs=false"] if podman else [])]
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if context.get("privileged"):
        args.append("--privileged")
    capabilities = context.get("capabilities") or {}
    args += [a for cap in capabilities.get("drop") or [] for a in ("--cap-drop", cap)]
    args += [a for cap in capabilities.get("add") or [] for a in ("--cap-add", cap)]
    seccomp = (context.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":  # the engine's default profile is the runtime's default
        raise PodConfigError(f"seccompProfile {seccomp} is not supported here")
    known = {
        "runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem", "privileged",
        "allowPrivilegeEscalation", "capabilities", "seccompProfile",
    }  # fmt: skip
    if set(context) - known:
        raise PodConfigError(f"securityContext {sorted(set(context) - known)} not supported here")
    return args


def _volume_args(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    args: list[str] = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None or set(volume) != {"name", "emptyDir"}:
            raise PodConfigError(f"volume {mount['name']}: only emptyDir is supported here")
        # An emptyDir is writable by any user (0777), like a tmpfs the engine mounts.
        options = "rw,mode=1777"
        limit = str((volume["emptyDir"] or {}).get("sizeLimit", ""))
        if limit:
            size = re.fullmatch(r"(\d+)([KMG])i", limit)
            if size is None:
                raise PodConfigError(f"volume {mount['name']}: sizeLimit {limit} not supported")
            options += f",size={size.group(1)}{size.group(2).lower()}"
        args += ["--tmpfs", f"{mount['mountPath']}:{options}"]
    return args


def run_args(
    pod: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    podman: bool,
    service_account: Path | None = None,
) -> list[str]:
    """The arguments of `docker run` / `podman run` (after `run`) that start the pod's one
    container as its kubelet would: name, security context, volumes, env, grace, then the
    image and the command (its first word as the entrypoint, as Kubernetes' `command` replaces
    the image's ENTRYPOINT and CMD). A pod that mounts its service-account token gets the
    folder `service_account` (token, ca.crt, namespace) there, read-only."""
    spec = pod["spec"]
    (container,) = spec["containers"]
    name = pod["metadata"]["name"]
    args = ["--name", name, "--network", "host"]
    if spec.get("automountServiceAccountToken", True):
        if service_account is None:
            raise PodConfigError("the pod mounts a service-account token: none given")
        args += ["--volume", f"{service_account}:{SERVICE_ACCOUNT_DIR}:ro"]
    args += ["--stop-timeout", str(spec.get("terminationGracePeriodSeconds", 30))]
    args += _security_args(security_context(pod), podman)
    args += _volume_args(pod, container)
    args += [a for key, value in env.items() for a in ("--env", f"{key}={value}")]
    argv = command_line(container, env)
    if container.get("command"):
        return [*args, "--entrypoint", argv[0], container["image"], *argv[1:]]
    return [*args, container["image"], *argv]
