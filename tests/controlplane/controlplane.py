"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager.

Why: the mock API of tier 3 is not an API server. Only a real one evaluates the CRD's schema and
CEL rules, enforces RBAC (the operator must work with exactly the permissions the chart grants),
binds pods, makes deletion graceful and, with the controller manager, garbage-collects pods whose
pool is gone. The binaries come from scripts/build-controlplane.sh (built from Go modules and
cached outside the repository); `ControlPlane` starts them on free loopback ports in a temp dir,
with the flags that scripts/controlplane-smoke.sh shows work, writes an admin kubeconfig and
always stops them again. No kubelet runs with it: kubelet.py plays its part for worker pods,
or node.py adds a real node (kubelet, kube-scheduler, containerd) for the tests that ask.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from redis_servers import free_port
from runtime.workers import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN = "aq-test-admin"
CORE = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")


Diagnostics = list[Callable[[], str]]
"""Reports a test's fixtures leave, printed when the test fails."""
Reaper = list[Callable[[], None]]
"""Checks run when the session's tests are done (a process a test stopped, once it has ended)."""


def die_with_parent() -> None:
    # The control plane must not outlive a killed pytest (start it from the main thread).
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = ["(no log)"]
        return f"---- {self.name} (pid {self.proc.pid}, exit {self.proc.poll()}): {self.log}\n" + (
            "\n".join(text)
        )


def spawn(name: str, argv: Sequence[str], log: Path) -> Process:
    """Start a server process, its output to `log`; it dies with pytest."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    return Process(name, proc, log)


def terminate(processes: Sequence[Process], grace: float = 10) -> None:
    """SIGTERM in reverse start order, SIGKILL after `grace` seconds."""
    for p in reversed(processes):
        if p.proc.poll() is None:
            p.proc.terminate()
            try:
                p.proc.wait(grace)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager in `root`; a context manager."""

    def __init__(self, binaries: Mapping[str, Path], root: Path, crds: Sequence[Path] = ()) -> None:
        self.bin = dict(binaries)
        self.root = root
        self.crds = list(crds)
        """Applied before the controller manager starts: its garbage collector looks for new
        resource types only every 30 s, and would not see a dependent's owner go until then."""
        self.processes: list[Process] = []
        self.token = secrets.token_hex(24)
        self.server = ""
        self.ca = root / "apiserver-certs" / "apiserver.crt"
        self.kubeconfig = root / "admin.kubeconfig"

    # --- start and stop ------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        root = self.root
        etcd_port, peer_port = free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        # --unsafe-no-fsync: a throwaway store, no need to wait for the disk on every write.
        self._spawn("etcd", [
            str(self.bin["etcd"]), "--name", "aq", "--data-dir", str(root / "etcd"),
            "--log-level", "warn", "--unsafe-no-fsync",
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"aq={peer_url}",
        ])  # fmt: skip
        self.wait_http(
            self.processes[-1], f"{etcd_url}/health", lambda body: '"health":"true"' in body, 30
        )

        (root / "tokens.csv").write_text(f'{self.token},{ADMIN},{ADMIN},"system:masters"\n')
        key, pub = root / "sa.key", root / "sa.pub"
        subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", key, "-pubout", "-out", pub], check=True, capture_output=True
        )
        api_port = free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        # It writes its own CA and serving cert into --cert-dir (apiserver.crt holds the chain).
        # --endpoint-reconciler-type none: the `kubernetes` Service's endpoint would be
        # 127.0.0.1, which Endpoints validation refuses.
        self._spawn("kube-apiserver", [
            str(self.bin["kube-apiserver"]), "--etcd-servers", etcd_url,
            "--advertise-address", "127.0.0.1", "--bind-address", "127.0.0.1",
            "--secure-port", str(api_port), "--cert-dir", str(root / "apiserver-certs"),
            "--token-auth-file", str(root / "tokens.csv"), "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(pub), "--service-account-signing-key-file", str(key),
            "--service-cluster-ip-range", "10.0.0.0/24", "--endpoint-reconciler-type", "none",
        ])  # fmt: skip
        self.wait_http(self.processes[-1], f"{self.server}/readyz", lambda b: b == "ok", 120)
        self.write_kubeconfig(self.kubeconfig, self.token, ADMIN)
        for crd in self.crds:
            self.install_crds(crd)

        kcm_port = free_port()
        # garbagecollector: owner references; namespace: finishes namespace deletion;
        # serviceaccount: the `default` ServiceAccount that pod admission needs.
        self._spawn("kube-controller-manager", [
            str(self.bin["kube-controller-manager"]), "--kubeconfig", str(self.kubeconfig),
            "--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", str(kcm_port),
            "--cert-dir", str(root / "kcm-certs"),
            "--controllers", "garbagecollector,namespace,serviceaccount,serviceaccount-token",
            "--service-account-private-key-file", str(key), "--root-ca-file", str(self.ca),
        ])  # fmt: skip
        self.wait_http(
            self.processes[-1],
            f"https://127.0.0.1:{kcm_port}/healthz",
            lambda b: b == "ok",
            60,
        )

    def stop(self) -> None:
        """SIGTERM in reverse start order (SIGKILL after 10 s); etcd's data is deleted."""
        terminate(self.processes)
        self.processes.clear()
        shutil.rmtree(self.root / "etcd", ignore_errors=True)  # 60+ MB of preallocated WAL

    def logs(self, lines: int = 30) -> str:
        return "\n".join(p.tail(lines) for p in self.processes)

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        self.processes.append(spawn(name, argv, self.root / f"{name}.log"))

    def wait_http(
        self, process: Process, url: str, ready: Callable[[str], bool], timeout: float
    ) -> None:
        """Until `url` answers (with the admin token, any certificate) a body `ready` likes;
        RuntimeError with the end of its log when `process` exits first or the time is up."""
        name = process.name
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        headers = {"Authorization": f"Bearer {self.token}"}

        def up() -> bool:
            if process.proc.poll() is not None:
                raise RuntimeError(f"{name} exited while starting:\n{process.tail()}")
            try:
                request = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(request, timeout=2, context=context) as reply:
                    return ready(reply.read().decode())
            except OSError:
                return False

        try:
            wait_until(up, timeout, f"{name} at {url}", every=0.1)
        except AssertionError as exc:
            raise RuntimeError(f"{exc}\n{process.tail()}") from None

    # --- clients ---------------------------------------------------------------------------
    def write_kubeconfig(
        self, path: Path, token: str, user: str, *, exec_plugin: bool = False
    ) -> Path:
        """A kubeconfig for this API server with a bearer token (JSON is valid YAML). With
        `exec_plugin`, its user gets the token from a command instead, as EKS and GKE users do:
        a script beside it (`PATH.exec.py`) prints an ExecCredential and notes each call in
        `PATH.calls`."""
        credentials: dict[str, Any] = {"token": token}
        if exec_plugin:
            script = path.with_name(path.name + ".exec.py")
            credential = {
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": token},
            }
            calls = path.with_name(path.name + ".calls")
            script.write_text(
                "import json, time\n"
                f"with open({str(calls)!r}, 'a') as calls:\n"
                "    calls.write(f'{time.time()}\\n')\n"
                f"print(json.dumps({credential!r}))\n"
            )
            credentials = {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": [str(script)],
                "interactiveMode": "Never",
            }}  # fmt: skip
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "aq",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "aq", "context": {"cluster": "aq", "user": user}}],
            "current-context": "aq",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (admin unless `kubeconfig`); with `check`, a failure raises with its
        output."""
        argv = [str(self.bin["kubectl"]), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        done = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def apply(
        self, manifest: Mapping[str, Any] | str, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=text, **kwargs)

    def get(self, *args: str, **kwargs: Any) -> Any:
        """`kubectl get ... -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json", **kwargs).stdout)

    def install_crds(self, path: Path) -> list[str]:
        """`kubectl apply -f PATH`, once each CRD is Established and its resource is served;
        the CRDs' names."""
        applied = self.kubectl("apply", "-f", str(path), "-o", "name").stdout.split()
        names = [name.split("/", 1)[1] for name in applied]
        for name in names:
            self.kubectl(
                "wait", "--for", "condition=Established", "--timeout", "60s", f"crd/{name}"
            )
            # Established comes a moment before the resource's storage serves lists (429 then)
            wait_until(partial(self.served, name), 30, f"{name} to be served", every=0.1)
        return names

    def served(self, resource: str) -> bool:
        return self.kubectl("get", resource, "-A", check=False).returncode == 0

    def create_namespace(self, name: str) -> None:
        """A namespace, once its `default` ServiceAccount exists (pod admission needs it)."""
        self.kubectl("create", "namespace", name)
        wait_until(
            lambda: (
                self.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode
                == 0
            ),
            30,
            f"namespace {name}'s default ServiceAccount",
            every=0.1,
        )

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token of ServiceAccount `namespace/name` from the TokenRequest API (an hour)."""
        token = self.kubectl(
            "-n", namespace, "create", "token", name, "--duration", "1h"
        ).stdout.strip()
        claims = token.split(".")[1]
        subject = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["sub"]
        assert subject == f"system:serviceaccount:{namespace}:{name}", subject
        return token

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, *, exec_plugin: bool = False
    ) -> Path:
        """A kubeconfig that acts as ServiceAccount `namespace/name` (see write_kubeconfig)."""
        token = self.service_account_token(namespace, name)
        return self.write_kubeconfig(path, token, f"{namespace}-{name}", exec_plugin=exec_plugin)

    def service_account_dir(self, namespace: str, name: str, path: Path) -> Path:
        """What a pod of ServiceAccount `namespace/name` finds in its token mount: token,
        ca.crt, namespace (readable by any user, as a container's non-root user must)."""
        path.mkdir(parents=True)
        (path / "token").write_text(self.service_account_token(namespace, name))
        (path / "ca.crt").write_bytes(self.ca.read_bytes())
        (path / "namespace").write_text(namespace)
        for item in [path, *path.iterdir()]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        return path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


class Helm:
    """helm against the control plane, with its home dirs in a temp dir."""

    def __init__(self, binary: Path, control_plane: ControlPlane, home: Path) -> None:
        self.binary = binary
        self.cp = control_plane
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, timeout: float = 120) -> str:
        argv = [str(self.binary), "--kubeconfig", str(self.cp.kubeconfig), *args]
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done.stdout
