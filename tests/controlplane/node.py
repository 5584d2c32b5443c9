"""A real node for the control-plane tier: the kubelet and kube-scheduler built from Go modules,
containerd from Debian's packages as the container runtime, and no stand-in anywhere.

Why: kubelet.py plays the kubelet's part well enough for the operator, but it is our own reading
of what a kubelet does. Here the kubelet is Kubernetes' own: it pulls nothing (no registry is
reachable: the pod's image and the sandbox image are imported into containerd), creates the
pod's sandbox and network through CRI and CNI, runs the container with the pod's security
context through runc, reports the status, and carries out graceful deletion. So what the
operator asks of pods is checked by the component that runs them in a cluster.

`Node` starts, in a directory of its own:

- containerd with a private root, state dir and socket, and a config of its own: the CRI
  plugin with runc (cgroupfs, as this machine has cgroup v1), `restrict_oom_score_adj` (the
  kubelet asks for scores a process in a container may not set), the sandbox image made here
  from scripts/build-controlplane.sh's `pause` (`ctr images import` of a docker archive written
  below), and CNI's `bridge` plugin (Debian's containernetworking-plugins) on a bridge of its
  own with a private address range; the node's IP is the bridge's, which the pods reach the host
  by (a Redis for pods must listen there: `ip`);
- the kubelet, registered to the test API server as `name`, tainted with `TAINT` so that only
  pods that tolerate it land here (the stand-in's tests' pods never do), with `failCgroupV1:
  false` (this machine's hierarchy is v1) and evictions and image GC out of the way;
- kube-scheduler (to place pods on it) and a second kube-controller-manager that runs only the
  node lifecycle controller (it lifts the `not-ready` taint the kubelet registers with).

`stop()` removes everything: the pods on the node (deleted, so the kubelet stops their
sandboxes), the processes, leftover shims, mounts, the bridge and the Node object.

What it needs (`missing()` says what is not there): root, Linux, containerd, runc and the CNI
plugins (scripts/test installs them with apt-get when it can), and the `node` binaries.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from controlplane import ADMIN, ControlPlane, Process, spawn, terminate
from helpers import wait_until
from redis_servers import free_port

PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "ip": "iproute2",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
}
"""Debian's package of each tool a node needs."""
CNI_BIN = Path("/usr/lib/cni")
"""Where Debian's containernetworking-plugins puts the plugins."""
PAUSE_IMAGE = "localhost/atomicqueues/pause:test"
TAINT = "atomicqueues.io/real-node"
"""The node's NoSchedule taint: pods must tolerate it (`pod_template`)."""
NAMESPACE = "k8s.io"
"""containerd's namespace of the CRI plugin: images the kubelet can use are imported there."""


class NodeUnavailable(RuntimeError):
    """This machine does not let a node run (a network bridge cannot be made here)."""


def missing() -> list[str]:
    """What this machine lacks for a node (empty: a node can start), each tool with its Debian
    package (scripts/test installs them)."""
    found = []
    if os.uname().sysname != "Linux":
        found.append("Linux")
    elif os.geteuid() != 0:
        found.append("root (containerd, the kubelet and CNI need it)")
    tools = [tool for tool in ("containerd", "ctr", "runc", "ip") if shutil.which(tool) is None]
    if not (CNI_BIN / "bridge").is_file():
        tools.append(str(CNI_BIN / "bridge"))
    return found + [f"{tool} (Debian: {PACKAGES[tool]})" for tool in tools]


def overlay_works(scratch: Path) -> bool:
    """Can we mount an overlay here (containerd's default snapshotter)? Else `native`."""
    probe = Path(tempfile.mkdtemp(dir=scratch))
    dirs = [probe / d for d in ("lower", "upper", "work", "merged")]
    for d in dirs:
        d.mkdir()
    options = f"lowerdir={dirs[0]},upperdir={dirs[1]},workdir={dirs[2]}"
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(dirs[3])],
        capture_output=True,
        check=False,
    )
    if mounted.returncode == 0:
        subprocess.run(["umount", str(dirs[3])], check=False)
    shutil.rmtree(probe, ignore_errors=True)
    return mounted.returncode == 0


def image_archive(path: Path, name: str, files: Mapping[str, Path], entrypoint: list[str]) -> Path:
    """A docker archive (what `docker save` writes) of one image of one layer: `files`, by
    their path in the image, mode 0755. `ctr images import` takes it."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for inside, source in files.items():
            info = tar.gettarinfo(str(source), arcname=inside.lstrip("/"))
            info.mode, info.uid, info.gid, info.uname, info.gname = 0o755, 0, 0, "", ""
            info.mtime = 0
            with open(source, "rb") as data:
                tar.addfile(info, data)
    layer_bytes = layer.getvalue()
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "amd64"),
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha256(layer_bytes)}"]},
    }
    config_bytes = json.dumps(config).encode()
    manifest = [{"Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"]}]
    with tarfile.open(path, "w") as archive:
        for member, content in [
            ("layer.tar", layer_bytes),
            ("config.json", config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            info = tarfile.TarInfo(member)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pod_template(node: str) -> dict[str, Any]:
    """The pool's podTemplate that puts its pods on node `node`: a nodeSelector, the toleration
    of `TAINT`, and `imagePullPolicy: Never` (the image is imported, never pulled)."""
    return {
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "worker", "imagePullPolicy": "Never"}],
        }
    }


class Node:
    """containerd, kubelet, kube-scheduler and a node lifecycle controller in `root` (see the
    module docstring); a context manager."""

    def __init__(
        self,
        control_plane: ControlPlane,
        binaries: Mapping[str, Path],
        root: Path,
        name: str = "aq-real-node",
    ) -> None:
        self.cp = control_plane
        self.bin = dict(binaries)
        self.root = root
        self.name = name
        self.processes: list[Process] = []
        self.containerd_socket = root / "containerd" / "containerd.sock"
        tag = os.urandom(2).hex()
        self.bridge = f"aqbr{tag}"
        used = _used_networks()
        subnets = (ipaddress.ip_network(f"10.{n}.{m}.0/24") for n in (213, 214) for m in range(256))
        free = [net for net in subnets if not any(net.overlaps(u) for u in used)]
        self.subnet = random.choice(free)
        self.ip = str(next(self.subnet.hosts()))
        """The node's IP: the bridge's address, the pods' gateway to the host."""
        self._bridge_made = False
        self.snapshotter = "overlayfs"
        """containerd's snapshotter: overlayfs, or native where an overlay cannot be mounted."""

    # --- start and stop ------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start everything, once the Node is Ready; when that fails, stop what started."""
        try:
            self._make_bridge()
            self._start_containerd()
            self._import_pause()
            self._start_kubelet()
            self._start_node_controllers()
            wait_until(self.ready, 90, f"node {self.name} to be Ready and schedulable", every=0.2)
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        """The Node is Ready, and carries no taint but ours (not-ready is lifted)."""
        for p in self.processes:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited:\n{p.tail()}")
        done = self.cp.kubectl("get", "node", self.name, "-o", "json", check=False)
        if done.returncode != 0:
            return False
        node = json.loads(done.stdout)
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        taints = {t["key"] for t in node["spec"].get("taints") or []}
        return conditions.get("Ready") == "True" and taints == {TAINT}

    def stop(self) -> None:
        """Delete the pods on the node and wait (30 s at most) for the kubelet to end their
        sandboxes; stop the processes; then end what is left (shims, mounts, the bridge) and
        delete the Node."""
        kubelet = next((p for p in self.processes if p.name == "kubelet"), None)
        if kubelet is not None and kubelet.proc.poll() is None:
            self.cp.kubectl(
                "delete", "pods", "-A", "--field-selector", f"spec.nodeName={self.name}",
                "--grace-period=0", "--force", "--wait=false", check=False,
            )  # fmt: skip
            with contextlib.suppress(AssertionError):
                wait_until(
                    lambda: not self.running(), 30, "the node's containers to end", every=0.5
                )
        terminate(self.processes)
        self.processes.clear()
        self._kill_shims()
        self._unmount()
        if self._bridge_made:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
            self._bridge_made = False
        self.cp.kubectl("delete", "node", self.name, "--wait=false", check=False)

    def logs(self, lines: int = 30) -> str:
        return "\n".join(p.tail(lines) for p in self.processes)

    # --- containerd ----------------------------------------------------------------------------
    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """`ctr` against this node's containerd, in the CRI plugin's namespace."""
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", NAMESPACE, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}:\n{done.stderr}")
        return done.stdout

    def tasks(self) -> dict[str, tuple[int, str]]:
        """containerd's tasks (the processes of sandboxes and containers): id -> (host pid,
        status)."""
        lines = self.ctr("tasks", "ls", check=False).splitlines()[1:]
        return {f[0]: (int(f[1]), f[2]) for f in (line.split() for line in lines) if len(f) >= 3}

    def running(self) -> list[str]:
        """The ids of containerd's running tasks."""
        return [task for task, (_, status) in self.tasks().items() if status == "RUNNING"]

    def import_image(self, engine: str, image: str) -> str:
        """Copy `image` from a container engine (docker, or build-images.sh's podman wrapper)
        into containerd (`ENGINE save`, then `ctr images import`); the name the kubelet finds
        it by (podman's names start with `localhost/`, docker's get `docker.io/`)."""
        archive = self.root / "image.tar"
        saved = subprocess.run(
            [engine, "save", "--output", str(archive), image],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if saved.returncode != 0:
            raise RuntimeError(f"{engine} save {image}: {saved.stderr}")
        try:
            with tarfile.open(archive) as tar:
                manifest = tar.extractfile("manifest.json")
                assert manifest is not None, f"{engine} save wrote no manifest.json"
                [entry] = json.load(manifest)
            self.ctr("images", "import", "--snapshotter", self.snapshotter, str(archive))
        finally:
            archive.unlink()
        [ref] = {normalized(tag) for tag in entry["RepoTags"]}
        assert ref in self.ctr("images", "ls", "--quiet").split(), f"{ref} not imported"
        return ref

    def _start_containerd(self) -> None:
        base = self.root / "containerd"
        base.mkdir(parents=True, exist_ok=True)
        self.snapshotter = "overlayfs" if overlay_works(self.root) else "native"
        cni_conf, cni_state = base / "cni-conf", base / "cni-state"
        cni_conf.mkdir()
        bridge = {
            "cniVersion": "0.4.0",
            "name": self.bridge,
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local", "subnet": str(self.subnet), "gateway": self.ip,
                    "dataDir": str(cni_state), "routes": [{"dst": "0.0.0.0/0"}],
                },
            }],
        }  # fmt: skip
        (cni_conf / "10-aq-bridge.conflist").write_text(json.dumps(bridge, indent=2))
        runc = shutil.which("runc") or "runc"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "{free_port()}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "{self.snapshotter}"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{runc}"
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
"""
        (base / "config.toml").write_text(config)
        process = spawn(
            "containerd",
            ["containerd", "--config", str(base / "config.toml")],
            self.root / "containerd.log",
        )
        self.processes.append(process)

        def up() -> bool:
            if process.proc.poll() is not None:
                raise RuntimeError(f"containerd exited while starting:\n{process.tail()}")
            return bool(self.ctr("version", check=False))

        wait_until(up, 30, "containerd to answer on its socket", every=0.1)

    def _import_pause(self) -> None:
        archive = image_archive(
            self.root / "pause.tar", PAUSE_IMAGE, {"/pause": self.bin["pause"]}, ["/pause"]
        )
        self.ctr("images", "import", "--snapshotter", self.snapshotter, str(archive))

    # --- network -------------------------------------------------------------------------------
    def _make_bridge(self) -> None:
        """The bridge the CNI plugin attaches pods to, made first: the kubelet's node IP must be
        on an interface when it starts."""
        for argv in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{self.ip}/{self.subnet.prefixlen}", "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise NodeUnavailable(
                    f"cannot make the pods' network bridge: {' '.join(argv)}: {done.stderr.strip()}"
                )
            self._bridge_made = True

    # --- kubelet, scheduler, node lifecycle ----------------------------------------------------
    def _start_kubelet(self) -> None:
        base = self.root / "kubelet"
        base.mkdir()
        kubeconfig = self.cp.write_kubeconfig(base / "kubeconfig", self.cp.token, ADMIN)
        healthz = free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # this machine's cgroup hierarchy is v1, which the kubelet refuses by default
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.ip,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "failSwapOn": False,
            "registerWithTaints": [{"key": TAINT, "value": "true", "effect": "NoSchedule"}],
            "resolvConf": "/etc/resolv.conf",
            # a shared test machine: never evict for its disk or memory, never GC the images
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "5s",
        }
        (base / "config.yaml").write_text(json.dumps(config, indent=2))
        process = spawn("kubelet", [
            str(self.bin["kubelet"]), "--config", str(base / "config.yaml"),
            "--kubeconfig", str(kubeconfig), "--root-dir", str(base / "root"),
            "--cert-dir", str(base / "pki"), "--hostname-override", self.name,
            "--node-ip", self.ip, "--v", "2",
        ], self.root / "kubelet.log")  # fmt: skip
        self.processes.append(process)
        self.cp.wait_http(process, f"http://127.0.0.1:{healthz}/healthz", lambda b: b == "ok", 60)

    def _start_node_controllers(self) -> None:
        kubeconfig = self.cp.kubeconfig
        port = free_port()
        scheduler = spawn("kube-scheduler", [
            str(self.bin["kube-scheduler"]), "--kubeconfig", str(kubeconfig),
            "--authentication-kubeconfig", str(kubeconfig),
            "--authorization-kubeconfig", str(kubeconfig),
            "--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", str(port),
        ], self.root / "kube-scheduler.log")  # fmt: skip
        self.processes.append(scheduler)
        self.cp.wait_http(scheduler, f"https://127.0.0.1:{port}/healthz", lambda b: b == "ok", 60)
        port = free_port()
        # the node lifecycle controller only: the session's controller manager runs the rest
        lifecycle = spawn("node-lifecycle", [
            str(self.bin["kube-controller-manager"]), "--kubeconfig", str(kubeconfig),
            "--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", str(port),
            "--cert-dir", str(self.root / "kcm-certs"), "--controllers", "nodelifecycle",
        ], self.root / "node-lifecycle.log")  # fmt: skip
        self.processes.append(lifecycle)
        self.cp.wait_http(lifecycle, f"https://127.0.0.1:{port}/healthz", lambda b: b == "ok", 60)

    # --- what is left after the processes ------------------------------------------------------
    def _kill_shims(self) -> None:
        """containerd's shims outlive it: end those of this node's containerd (their command
        line names its socket), which ends their containers."""
        address = str(self.containerd_socket)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"containerd-shim" in argv[0] and address.encode() in argv:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), 9)
        time.sleep(0.2)

    def _unmount(self) -> None:
        """Unmount what containerd and the kubelet left mounted under `root` (deepest first)."""
        prefix = str(self.root) + "/"
        with open("/proc/self/mountinfo") as mountinfo:
            points = [line.split()[4] for line in mountinfo]
        for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def normalized(image: str) -> str:
    """An image reference as containerd and the kubelet name it (docker's rule): a first part
    that is no registry host means Docker Hub."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if rest else f"docker.io/library/{image}"


def _used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of this machine's interfaces (a new bridge must not overlap them)."""
    done = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
    )
    found = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            found.append(ipaddress.IPv4Network(fields[fields.index("inet") + 1], strict=False))
    return found


class PodWatch:
    """Every state a namespace's pods pass through, as the API server reports them (`kubectl
    get pods --watch`): a pod the operator deletes at once after it ended is still seen with
    its end (a poll could miss it). Runs in a thread; a context manager."""

    def __init__(self, cp: ControlPlane, namespace: str, selector: str) -> None:
        argv = [
            str(cp.bin["kubectl"]), "--kubeconfig", str(cp.kubeconfig), "-n", namespace,
            "get", "pods", "-l", selector, "--watch", "--output-watch-events", "-o", "json",
        ]  # fmt: skip
        self.seen: dict[str, list[dict[str, Any]]] = {}
        """Each pod's bodies in the order they came, by name."""
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._thread = threading.Thread(target=self._read, name="pod-watch", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._proc.kill()
        self._proc.wait()
        self._thread.join(5)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._proc.stdout:
            buffer += line
            try:
                event, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                continue
            buffer = buffer.lstrip()[end:]
            pod = event["object"]
            with self._lock:
                self.seen.setdefault(pod["metadata"]["name"], []).append(pod)

    def pods(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {name: list(bodies) for name, bodies in self.seen.items()}

    def container(self, pod: str) -> dict[str, Any] | None:
        """The last status of the pod's (only) container that names its container id."""
        for body in reversed(self.pods().get(pod, [])):
            for status in (body.get("status") or {}).get("containerStatuses") or []:
                if status.get("containerID"):
                    return dict(status)
        return None

    def exit_code(self, pod: str) -> int | None:
        """The container's exit code, once a status reported it terminated."""
        for body in self.pods().get(pod, []):
            for status in (body.get("status") or {}).get("containerStatuses") or []:
                terminated = status["state"].get("terminated")
                if terminated is not None:
                    return int(terminated["exitCode"])
        return None
