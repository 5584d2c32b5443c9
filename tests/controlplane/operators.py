"""The chart installed in a test's namespace and operators run from it, and the pools they
serve: what the end-to-end tests share, whichever kubelet runs their pods (kubelet.py's
stand-in in test_operator_e2e.py, a real one in test_real_kubelet.py).

The operator runs as a local process with the chart's own command line (its Deployment's args,
`--listen` on a free loopback port) and a token of the chart's ServiceAccount, so a call the
chart does not allow fails; or as the operator image, run as the Deployment's pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from container_engine import Engine
from controlplane import REPO_ROOT, ControlPlane, Diagnostics, Helm, Reaper, die_with_parent
from pod_container import command_line, resolve_env
from redis_servers import free_port

CHART = REPO_ROOT / "helm" / "atomicqueues"
RELEASE = "aq"
POOL = "accounts"
TYPE = "acct"
POOL_LABEL = "atomicqueues.io/pool"
TIMING = {
    "idleTimeoutSeconds": 1,
    "heartbeatTTLSeconds": 1,
    "heartbeatIntervalSeconds": 0.25,
    "shutdownGraceSeconds": 2,
    "resyncIntervalSeconds": 1,
    "restartBackoffSeconds": 0.2,
    "maxRestartBackoffSeconds": 1,
}


@dataclass
class Operator:
    """`aq operator` as a local process."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str
    killed: bool = False

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        head = f"---- operator {self.name} (pid {self.proc.pid}, exit {self.proc.poll()})\n"
        return head + "\n".join(text)

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=2) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def leading(self) -> bool:
        assert self.proc.poll() is None, f"the operator exited:\n{self.tail()}"
        return self.metric("aq_operator_leader") == 1

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()
        self.proc.wait()

    def refused(self) -> list[str]:
        """Log lines of calls the API server refused because the chart's RBAC did not allow
        them (not a quota's refusals, which a test provokes)."""
        lines = self.tail(100_000).splitlines()
        return [line for line in lines if "forbidden" in line and "exceeded quota" not in line]

    def finish(self) -> None:
        """Wait for it to stop (SIGKILL after 30 s); check it exited 0 and was refused nothing.
        Run once the session's tests are done (`reaper`): a test need not wait for the stop
        (5 s when this was written: kopf waited for the leader's tasks)."""
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        code = self.proc.returncode
        assert self.killed or code == 0, f"exited {code} on SIGTERM:\n{self.tail()}"
        assert not self.refused(), f"operator {self.name} was refused:\n" + "\n".join(
            self.refused()[:10]
        )


class Chart:
    """The chart installed in a namespace, and operators run as its Deployment would run them:
    its command line and env, under its ServiceAccount."""

    def __init__(
        self, cp: ControlPlane, helm: Helm, namespace: str, tmp_path: Path, *values: str
    ) -> None:
        self.namespace = namespace
        self.tmp_path = tmp_path
        self.operators: list[Operator] = []
        # crds.install=false: the CRD from crds/ is installed for the session already.
        # operator.replicas=0: nothing runs Deployments here; operators run as processes.
        sets = ["crds.install=false", "operator.replicas=0", *values]
        helm("install", RELEASE, str(CHART), "-n", namespace,
             *(arg for value in sets for arg in ("--set", value)))  # fmt: skip
        objects = chart_objects(helm, namespace)
        self.cp = cp
        self.account = objects["ServiceAccount"]["metadata"]["name"]
        self.kubeconfig = cp.service_account_kubeconfig(
            namespace, self.account, tmp_path / "operator.kubeconfig"
        )
        # the token is the ServiceAccount's: what the chart does not grant is refused
        can = cp.kubectl("auth", "can-i", "list", "secrets", "-n", namespace,
                         kubeconfig=self.kubeconfig, check=False)  # fmt: skip
        assert can.stdout.strip() == "no", can
        self.pod_spec = objects["Deployment"]["spec"]["template"]["spec"]
        [self.container] = self.pod_spec["containers"]

    def _pod(self, name: str, port: int) -> dict[str, Any]:
        """The Deployment's pod, called `name`, with `--listen` on a free loopback port."""
        args = list(self.container["args"])
        args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
        container = {**self.container, "args": args}
        spec = {**self.pod_spec, "containers": [container], "nodeName": "node-1"}
        return {"metadata": {"name": name, "namespace": self.namespace}, "spec": spec}

    def start_operator(self, name: str) -> Operator:
        """`aq operator` as a local process, with the Deployment's command, args and env
        (fieldRefs resolved), and a kubeconfig of the chart's ServiceAccount."""
        port = free_port()
        pod = self._pod(name, port)
        (container,) = pod["spec"]["containers"]
        argv = command_line(container, {})
        assert argv[0] == "aq", argv
        env = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
        env |= resolve_env(pod, container, {})
        env["KUBECONFIG"] = str(self.kubeconfig)
        return self._start(name, [str(Path(sys.executable).parent / "aq"), *argv[1:]], env, port)

    def start_operator_image(self, name: str, engine: Engine, image: str) -> Operator:
        """The operator image run as the Deployment's pod: its security context, command,
        args and env, the ServiceAccount's token mounted where a pod has it, and the API
        server's address in KUBERNETES_SERVICE_HOST/PORT, as the kubelet gives every pod."""
        assert self.container["image"].endswith(image.removeprefix("localhost/")), image
        port = free_port()
        pod = self._pod(name, port)
        (container,) = pod["spec"]["containers"]
        container["image"] = image
        host, api_port = self.cp.server.removeprefix("https://").rsplit(":", 1)
        env = resolve_env(pod, container, {})
        env |= {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": api_port}
        token = self.cp.service_account_dir(
            self.namespace, self.account, self.tmp_path / f"{name}-serviceaccount"
        )
        argv = engine.foreground(pod, env, service_account=token)
        return self._start(name, argv, dict(os.environ), port)

    def _start(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Operator:
        log = self.tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # never outlives a killed pytest
            )
        operator = Operator(name, proc, log, f"http://127.0.0.1:{port}")
        self.operators.append(operator)
        return operator

    def stop(self, reaper: Reaper) -> None:
        """SIGTERM every operator; the reaper waits for them at the end of the session."""
        for operator in self.operators:
            if operator.proc.poll() is None:
                operator.proc.send_signal(signal.SIGTERM)
            reaper.append(operator.finish)


def chart_objects(helm: Helm, namespace: str) -> dict[str, dict[str, Any]]:
    """The release's objects by kind (the first of each kind)."""
    manifest = helm("get", "manifest", RELEASE, "-n", namespace)
    found: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(manifest):
        if doc:
            found.setdefault(doc["kind"], doc)
    return found


@contextmanager
def installed(
    cp: ControlPlane,
    helm: Helm,
    namespace: str,
    tmp_path: Path,
    diagnostics: Diagnostics,
    reaper: Reaper,
    *values: str,
) -> Iterator[Chart]:
    """The chart installed, for operators to start; at the end, no operator may have been
    refused a call, and every operator is stopped (and checked once stopped, by `reaper`)."""
    if not (CHART / "Chart.yaml").is_file():
        pytest.fail(f"no chart at {CHART}: the operator's RBAC comes from it")
    chart = Chart(cp, helm, namespace, tmp_path, *values)
    diagnostics.append(lambda: "\n".join(op.tail() for op in chart.operators))
    try:
        yield chart
        for operator in chart.operators:
            assert not operator.refused(), f"{operator.name} was refused (RBAC):\n" + "\n".join(
                operator.refused()[:10]
            )
    finally:
        chart.stop(reaper)


def pool_manifest(
    namespace: str,
    image: str,
    name: str = POOL,
    entity_type: str = TYPE,
    secret: str = "redis",
    timing: Mapping[str, float] | None = None,
    pod_template: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A pool of `record` workers in `image` (`Kubelet.image`) that reads its Redis URL from
    `secret`, with `pod_template` as its podTemplate if given."""
    manifest = {
        "apiVersion": "atomicqueues.io/v1alpha1",
        "kind": "EntityWorkerPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "entityType": entity_type,
            "handlers": "tests.runtime.handlers:registry",
            "image": image,
            "redis": {"secretRef": {"name": secret}},
            "timing": {**TIMING, **(timing or {})},
        },
    }
    if pod_template is not None:
        manifest["spec"]["podTemplate"] = dict(pod_template)
    return manifest


def create_secret(cp: ControlPlane, namespace: str, redis_url: str, name: str = "redis") -> None:
    cp.kubectl("-n", namespace, "create", "secret", "generic", name,
               f"--from-literal=url={redis_url}")  # fmt: skip


def apply_pool(
    cp: ControlPlane,
    namespace: str,
    redis_url: str,
    image: str,
    pod_template: Mapping[str, Any] | None = None,
    **timing: float,
) -> dict[str, Any]:
    """The Redis URL in a Secret, and a pool of `image` that reads it; the pool as stored."""
    create_secret(cp, namespace, redis_url)
    cp.apply(pool_manifest(namespace, image, timing=timing, pod_template=pod_template))
    stored: dict[str, Any] = cp.get("-n", namespace, "ewp", POOL)
    return stored


def client_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def pods(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cp.get("-n", namespace, "pods", "-l", POOL_LABEL)["items"]
    return found
