"""A stand-in for the kubelet: runs a namespace's worker pods, as containers of their image or
as local processes.

Why: the control-plane tier has a real API server but no nodes, and the tests need jobs to run
end to end (pool applied, jobs enqueued, pods created, jobs processed, pods gone when idle). So
`Kubelet` watches the pods with the pool label in one namespace and does for each what a kubelet
does, as far as the operator can see:

- binds the new pod to a node name (the `binding` subresource), so that deleting it is graceful
  and waits for us, as it does for a scheduled pod;
- resolves the container's env as tests/pod_container.py does (`value`, `secretKeyRef` read
  from the API, `fieldRef` such as `metadata.name` or `spec.nodeName`), expands `$(VAR)` in
  command and args as the kubelet does, and starts the container through its `Runtime`:
  - `Containers`: the pod's image, run by docker or podman (tests/container_engine.py) in the
    foreground with the pod's command and args, env, security context (user, read-only root,
    capabilities, no privilege escalation, seccomp), emptyDir volumes and termination grace;
  - `Processes` (where no container engine can be had): the command as a local process, `aq`
    from this Python environment with the repository on PYTHONPATH; the image is never used;
- reports the pod's status: Running with a Ready condition and a running container, then
  Succeeded or Failed with the exit code (137 after SIGKILL) when the container ends; an env it
  cannot resolve leaves the pod Pending with `CreateContainerConfigError`, as a kubelet would;
- when the pod gets a deletionTimestamp: SIGTERM, up to the pod's grace period, SIGKILL (the
  engine's `stop`, for a container), then deletes the pod for good (`gracePeriodSeconds: 0`).

It runs in a thread with its own event loop, so a test can block as it likes. When stopped, it
kills everything it started and removes its containers (by name, through the engine: killing a
podman client does not end its container). `runs` is what it started, numbered in order.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import redis

from container_engine import Engine
from controlplane import REPO_ROOT, ControlPlane
from pod_container import PodConfigError, command_line, resolve_env, secret_refs
from runtime import workers

POOL_LABEL = "atomicqueues.io/pool"  # every worker pod carries it (aq_operator.pods.LABEL_POOL)
ENTITY_ANNOTATION = "atomicqueues.io/entity-id"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Run:
    """One pod as the kubelet ran it."""

    pod: str
    entity_id: str | None
    number: int
    """Its place in the order the kubelet saw its pods: what `kill_times` and `load_runs` know
    it by (a container's worker is PID 1 of its own PID namespace, as every other one is)."""
    argv: list[str] = field(default_factory=list)
    """The container's command line (`$(VAR)` expanded)."""
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    """The local process: the worker itself, or the engine's client that runs its container."""
    exit_code: int | None = None
    killed_at: float | None = None
    """When a test SIGKILLed the container (`Kubelet.kill`)."""
    stopped_by_deletion: bool = False
    """The pod was deleted while its process ran (SIGTERM, then SIGKILL after the grace)."""
    owners: list[dict[str, Any]] = field(default_factory=list)
    """The pod's ownerReferences."""
    deleting: asyncio.Event = field(default_factory=asyncio.Event)
    grace: float = 30.0
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None


class Runtime(Protocol):
    """How the kubelet runs a pod's container: one local process per pod, which ends with the
    container's exit code."""

    image: str
    """The image worker pools must name for their pods to run here."""

    def container_id(self, run: Run) -> str:
        """The containerID of the pod's status (`containerd://...` in a cluster)."""
        ...

    def command(self, pod: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
        """The local process that runs the pod's container, with `env` its env."""
        ...

    def process_env(self, pod: str, env: Mapping[str, str]) -> dict[str, str]:
        """That process's own env."""
        ...

    async def stop(self, run: Run, exited: asyncio.Task[int], grace: float) -> None:
        """SIGTERM to the container, SIGKILL after `grace` seconds; returns once it ended."""
        ...

    def kill(self, run: Run) -> None:
        """SIGKILL the container (a crash)."""
        ...

    async def end_all(self, runs: list[Run]) -> None:
        """End every container of `runs` still running, and their processes (the kubelet
        stops)."""
        ...

    def remove_all(self) -> list[str]:
        """After its processes ended: remove what is left of every container started since
        the last call; the names of those that could not be removed."""
        ...


@dataclass
class Processes:
    """Pods as local processes: the container's command, `aq` of this Python environment, the
    repository on PYTHONPATH (so `tests.runtime.handlers` imports). The image is never used."""

    image: str = "atomicqueues-test-worker:never-pulled"

    def container_id(self, run: Run) -> str:
        return f"local://{run.pid}"

    def command(self, pod: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
        return command_line(pod["spec"]["containers"][0], env)

    def process_env(self, pod: str, env: Mapping[str, str]) -> dict[str, str]:
        """Ours without AQ_* settings, `aq` of this Python first on PATH, the repository on
        PYTHONPATH, then the container's env."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
        base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
        base["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, base.get("PYTHONPATH", "").split(os.pathsep))]
        )
        return {**base, "PYTHONUNBUFFERED": "1", "HOSTNAME": pod, **env}

    async def stop(self, run: Run, exited: asyncio.Task[int], grace: float) -> None:
        assert run.process is not None
        run.process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(exited), grace)
        except TimeoutError:
            run.process.kill()
            await exited

    def kill(self, run: Run) -> None:
        assert run.pid is not None
        os.kill(run.pid, signal.SIGKILL)

    async def end_all(self, runs: list[Run]) -> None:
        for run in _alive(runs):
            assert run.process is not None
            run.process.kill()

    def remove_all(self) -> list[str]:
        return []


@dataclass
class Containers:
    """Pods as containers of their image: the engine's `run` in the foreground (its client is
    the local process, passing SIGTERM on and exiting with the container's code). Stop, kill
    and removal go through the engine by the container's name (the pod's): a podman client
    that is killed leaves its container running."""

    engine: Engine
    """An engine of the kubelet's own: the containers it remembers are the kubelet's."""
    image: str
    """The tests' handler image (tests/containers/Dockerfile)."""

    def container_id(self, run: Run) -> str:
        return f"{'podman' if self.engine.podman else 'docker'}://{run.pod}"

    def command(self, pod: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
        return self.engine.foreground(pod, env)

    def process_env(self, pod: str, env: Mapping[str, str]) -> dict[str, str]:
        return dict(os.environ)  # the container's env is in the command

    async def stop(self, run: Run, exited: asyncio.Task[int], grace: float) -> None:
        deadline = time.monotonic() + grace + 30
        while not exited.done():
            done = await asyncio.to_thread(
                self.engine, "stop", "--time", str(math.ceil(grace)), run.pod,
                check=False, timeout=grace + 30,
            )  # fmt: skip
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            await asyncio.wait([exited], timeout=0.2)  # not created yet, or being removed
        if time.monotonic() > deadline and run.process is not None:
            run.process.kill()
        await exited

    def kill(self, run: Run) -> None:
        self.engine.kill(run.pod)

    async def end_all(self, runs: list[Run], within: float = 20) -> None:
        """Remove the containers by name while their clients run: a client killed first may
        still leave a container it was creating, and one in the middle of creating its
        container only ends once that container is removed."""
        deadline = time.monotonic() + within
        while _alive(runs) and time.monotonic() < deadline:
            names = [run.pod for run in _alive(runs)]
            await asyncio.to_thread(self.engine, "rm", "--force", *names, check=False)
            for _ in range(20):
                if not _alive(runs):
                    break
                await asyncio.sleep(0.1)
        for run in _alive(runs):
            assert run.process is not None
            run.process.kill()

    def remove_all(self) -> list[str]:
        return self.engine.remove_all()


def _alive(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.process is not None and r.process.returncode is None]


class Kubelet:
    """Runs the worker pods of `namespace` on the fake node `node` (see the module docstring)."""

    def __init__(
        self,
        control_plane: ControlPlane,
        namespace: str,
        log_dir: Path,
        runtime: Runtime,
        node: str = "node-1",
    ) -> None:
        self.cp = control_plane
        self.namespace = namespace
        self.log_dir = log_dir
        self.runtime = runtime
        self.node = node
        self.runs: dict[str, Run] = {}
        self.journal: list[str] = []
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._thread_main, name="kubelet", daemon=True)
        self._started = threading.Event()

    # --- the test's side ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the test kubelet did not start")

    @property
    def image(self) -> str:
        """The image a pool must name for its pods to run here."""
        return self.runtime.image

    def stop(self) -> None:
        """Kill every process it started, end its thread, and remove every container it
        started (whatever happened before: a failed test, a broken watch)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self._thread.is_alive():
            self.errors.append("its thread did not end within 30 s")
        left = self.runtime.remove_all()
        if left:
            self.errors.append(f"containers it could not remove: {left}")

    def kill(self, pod: str) -> float:
        """SIGKILL the container of `pod` (a crash, as the OOM killer would do it); returns
        when."""
        run = self.runs[pod]
        assert run.pid is not None, f"{pod} has not started"
        assert run.exit_code is None, f"{pod} has ended"
        self.runtime.kill(run)
        run.killed_at = time.time()
        return run.killed_at

    @property
    def kill_times(self) -> dict[int, float]:
        """When each killed pod was killed, by its number (see `load_runs`)."""
        return {r.number: r.killed_at for r in self.runs.values() if r.killed_at is not None}

    def load_runs(self, store: redis.Redis) -> list[workers.Run]:
        """The `record` handler's runs (`runtime.workers.load_runs`), each with the number of
        its worker's pod for a pid, as `kill_times` knows them."""
        numbers = {run.pod: run.number for run in list(self.runs.values())}
        found = workers.load_runs(store)
        strangers = {r.worker for r in found} - set(numbers)
        assert not strangers, f"runs by workers of no pod of this kubelet: {strangers}"
        return [dataclasses.replace(r, pid=numbers[r.worker]) for r in found]

    def running(self) -> list[Run]:
        return [r for r in list(self.runs.values()) if r.pid is not None and r.exit_code is None]

    def output(self, pod: str) -> str:
        """What the pod's process wrote (stdout and stderr)."""
        try:
            return (self.log_dir / f"{pod}.log").read_text(errors="replace")
        except OSError:
            return ""

    def report(self, lines: int = 15) -> str:
        """What it did, and the last lines of each process's output (for a failure message)."""
        parts = ["---- test kubelet", *self.journal[-60:]]
        for run in list(self.runs.values()):
            parts.append(f"---- pod {run.pod} #{run.number} (pid {run.pid}, exit {run.exit_code})")
            parts += self.output(run.pod).splitlines()[-lines:]
        return "\n".join(parts)

    # --- the kubelet's side (its own thread and event loop) ----------------------------------
    def _thread_main(self) -> None:
        asyncio.run(self._main())

    def _note(self, message: str) -> None:
        self.journal.append(f"{datetime.now().strftime('%H:%M:%S.%f')[:-3]} {message}")

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        headers = {"Authorization": f"Bearer {self.cp.token}"}
        connector = aiohttp.TCPConnector(ssl=self.cp.ssl_context())
        async with aiohttp.ClientSession(headers=headers, connector=connector) as http:
            self._http = http
            self._started.set()
            watcher = asyncio.create_task(self._watch())
            await self._stop.wait()
            # No new pod from here on (the watch first), then every container ended (removed).
            watcher.cancel()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.runtime.end_all(list(self.runs.values()))
            for run in self.runs.values():
                if run.process is not None:
                    await run.process.wait()

    async def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        gone: tuple[int, ...] = (404,),
    ) -> Any:
        """One API request; None when the object is gone (a status of `gone`)."""
        async with self._http.request(
            method,
            self.cp.server + path,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type},
            params=params,
        ) as reply:
            text = await reply.text()
            if reply.status in gone:
                return None
            if reply.status >= 400:
                raise RuntimeError(f"{method} {path}: {reply.status} {text[:500]}")
            return json.loads(text) if text else {}

    def _pods(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    async def _watch(self) -> None:
        """List, then watch from there; list again whenever the watch ends or breaks."""
        while True:
            try:
                await self._list_and_watch()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._note(f"watch broke ({exc!r}): list again")
                await asyncio.sleep(0.2)
            except Exception as exc:
                self.errors.append(f"watch: {exc!r}")
                raise

    async def _list_and_watch(self) -> None:
        params = {"labelSelector": POOL_LABEL}
        while True:
            listing = await self._call("GET", self._pods(), params=params)
            for pod in listing["items"]:
                self._seen(pod)
            watch = {
                **params,
                "watch": "1",
                "resourceVersion": listing["metadata"]["resourceVersion"],
            }
            async with self._http.get(
                self.cp.server + self._pods(), params=watch, timeout=aiohttp.ClientTimeout()
            ) as reply:
                async for line in reply.content:
                    event = json.loads(line)
                    if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                        break
                    self._seen(event["object"], deleted=event["type"] == "DELETED")

    def _seen(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        run = self.runs.get(name)
        if run is None:
            if deleted or meta.get("deletionTimestamp") or pod["spec"].get("nodeName"):
                return  # not ours to start
            annotations = meta.get("annotations") or {}
            run = Run(name, annotations.get(ENTITY_ANNOTATION), len(self.runs))
            self.runs[name] = run
            run.owners = list(meta.get("ownerReferences") or [])
            run.task = asyncio.create_task(self._guarded(run, pod))
        elif deleted or meta.get("deletionTimestamp"):
            run.grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            run.deleting.set()

    async def _guarded(self, run: Run, pod: Mapping[str, Any]) -> None:
        try:
            await self._run_pod(run, pod)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.append(f"pod {run.pod}: {exc!r}")
            self._note(f"{run.pod}: ERROR {exc!r}")

    async def _run_pod(self, run: Run, pod: Mapping[str, Any]) -> None:
        name = run.pod
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        # 409: deleted before it was bound (a pod of a deleted pool): no node will run it
        path = f"{self._pods()}/{name}/binding"
        if await self._call("POST", path, binding, gone=(404, 409)) is None:
            self._note(f"{name}: gone before it was bound")
            return
        bound = await self._call("GET", f"{self._pods()}/{name}")
        if bound is None:
            return
        container = bound["spec"]["containers"][0]
        try:
            run.env = await self._env(bound, container)
        except PodConfigError as exc:
            self._note(f"{name}: CreateContainerConfigError: {exc}")
            await self._status(name, self._waiting(container, str(exc)))
            await run.deleting.wait()
            await self._call("DELETE", f"{self._pods()}/{name}", {"gracePeriodSeconds": 0})
            return
        run.argv = command_line(container, run.env)
        if run.deleting.is_set():  # deleted before it started
            await self._call("DELETE", f"{self._pods()}/{name}", {"gracePeriodSeconds": 0})
            return
        started = _now()
        with open(self.log_dir / f"{name}.log", "wb") as log:  # noqa: ASYNC230 (a local file)
            run.process = await asyncio.create_subprocess_exec(
                *self.runtime.command(bound, run.env),
                env=self.runtime.process_env(name, run.env),
                cwd=self.log_dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        run.pid = run.process.pid
        self._note(f"{name}: started pid {run.pid}: {container['image']} {' '.join(run.argv)}")
        await self._status(name, self._running(container, started, run))

        exited = asyncio.create_task(run.process.wait())
        deleting = asyncio.create_task(run.deleting.wait())
        await asyncio.wait([exited, deleting], return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            run.stopped_by_deletion = True
            self._note(f"{name}: deleted: SIGTERM, SIGKILL after a grace of {run.grace:g}s")
            await self.runtime.stop(run, exited, run.grace)
        code = exited.result()
        run.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
        self._note(f"{name}: exited {run.exit_code}")
        if not run.deleting.is_set():
            await self._status(name, self._terminated(container, started, run))
            await deleting
        await self._call("DELETE", f"{self._pods()}/{name}", {"gracePeriodSeconds": 0})
        self._note(f"{name}: removed")

    async def _env(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        secrets: dict[tuple[str, str], str | None] = {}
        for name, key in secret_refs(container):
            path = f"/api/v1/namespaces/{self.namespace}/secrets/{name}"
            data = ((await self._call("GET", path)) or {}).get("data") or {}
            secrets[name, key] = base64.b64decode(data[key]).decode() if key in data else None
        return resolve_env(pod, container, secrets)

    # --- pod status ----------------------------------------------------------------------------
    async def _status(self, name: str, status: dict[str, Any]) -> None:
        patch = {"status": status}
        path = f"{self._pods()}/{name}/status"
        await self._call("PATCH", path, patch, content_type="application/merge-patch+json")

    @staticmethod
    def _conditions(ready: bool, reason: str | None = None) -> list[dict[str, Any]]:
        now = _now()
        out = []
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
            ok = ready or kind in ("PodScheduled", "Initialized")
            condition = {
                "type": kind,
                "status": "True" if ok else "False",
                "lastTransitionTime": now,
            }
            if not ok and reason:
                condition["reason"] = reason
            out.append(condition)
        return out

    @staticmethod
    def _container(
        container: Mapping[str, Any], state: dict[str, Any], ready: bool
    ) -> dict[str, Any]:
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": ready,
            "restartCount": 0,
            "state": state,
        }

    def _running(self, container: Mapping[str, Any], started: str, run: Run) -> dict[str, Any]:
        state = {"running": {"startedAt": started}}
        return {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": started,
            "conditions": self._conditions(True),
            "containerStatuses": [
                {
                    **self._container(container, state, True),
                    "containerID": self.runtime.container_id(run),
                }
            ],
        }

    def _terminated(self, container: Mapping[str, Any], started: str, run: Run) -> dict[str, Any]:
        code = run.exit_code or 0
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": _now(),
            "containerID": self.runtime.container_id(run),
        }
        return {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": self._conditions(False, "PodCompleted" if code == 0 else "PodFailed"),
            "containerStatuses": [self._container(container, {"terminated": terminated}, False)],
        }

    def _waiting(self, container: Mapping[str, Any], message: str) -> dict[str, Any]:
        waiting = {"reason": "CreateContainerConfigError", "message": message}
        return {
            "phase": "Pending",
            "conditions": self._conditions(False, "ContainersNotReady"),
            "containerStatuses": [self._container(container, {"waiting": waiting}, False)],
        }
