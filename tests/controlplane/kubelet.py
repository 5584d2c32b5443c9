"""A stand-in for the kubelet: runs a namespace's worker pods as local processes.

Why: the control-plane tier has a real API server but no nodes, and the tests need jobs to run
end to end (pool applied, jobs enqueued, pods created, jobs processed, pods gone when idle). So
`Kubelet` watches the pods with the pool label in one namespace and does for each what a kubelet
does, as far as the operator can see:

- binds the new pod to a node name (the `binding` subresource), so that deleting it is graceful
  and waits for us, as it does for a scheduled pod;
- resolves the container's env as tests/pod_container.py does (`value`, `secretKeyRef` read
  from the API, `fieldRef` such as `metadata.name` or `spec.nodeName`), expands `$(VAR)` in
  command and args as the kubelet does, and starts the command as a local process (`aq` from
  this Python environment; the repository on PYTHONPATH, so a test's handler module imports);
- reports the pod's status: Running with a Ready condition and a running container, then
  Succeeded or Failed with the exit code (137 after SIGKILL) when the process ends; an env it
  cannot resolve leaves the pod Pending with `CreateContainerConfigError`, as a kubelet would;
- when the pod gets a deletionTimestamp: SIGTERM, up to the pod's grace period, SIGKILL, then
  deletes the pod for good (`gracePeriodSeconds: 0`).

It runs in a thread with its own event loop, so a test can block as it likes, and kills every
process it started when stopped. `runs` is what it started (pid, exit code, when killed).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from controlplane import REPO_ROOT, ControlPlane
from pod_container import PodConfigError, command_line, resolve_env, secret_refs

POOL_LABEL = "atomicqueues.io/pool"  # every worker pod carries it (aq_operator.pods.LABEL_POOL)
ENTITY_ANNOTATION = "atomicqueues.io/entity-id"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Run:
    """One pod as the kubelet ran it."""

    pod: str
    entity_id: str | None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    exit_code: int | None = None
    killed_at: float | None = None
    """When a test SIGKILLed the process (`Kubelet.kill`)."""
    stopped_by_deletion: bool = False
    """The pod was deleted while its process ran (SIGTERM, then SIGKILL after the grace)."""
    owners: list[dict[str, Any]] = field(default_factory=list)
    """The pod's ownerReferences."""
    deleting: asyncio.Event = field(default_factory=asyncio.Event)
    grace: float = 30.0
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None


class Kubelet:
    """Runs the worker pods of `namespace` on the fake node `node` (see the module docstring)."""

    def __init__(
        self, control_plane: ControlPlane, namespace: str, log_dir: Path, node: str = "node-1"
    ) -> None:
        self.cp = control_plane
        self.namespace = namespace
        self.log_dir = log_dir
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

    def stop(self) -> None:
        """Kill every process it started and end its thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def kill(self, pod: str) -> float:
        """SIGKILL the process of `pod` (a crash, as the OOM killer would do it); returns when."""
        run = self.runs[pod]
        assert run.pid is not None, f"{pod} has not started"
        assert run.exit_code is None, f"{pod} has ended"
        os.kill(run.pid, signal.SIGKILL)
        run.killed_at = time.time()
        return run.killed_at

    @property
    def kill_times(self) -> dict[int, float]:
        return {r.pid: r.killed_at for r in self.runs.values() if r.pid and r.killed_at}

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
            parts.append(f"---- pod {run.pod} (pid {run.pid}, exit {run.exit_code})")
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
            watcher.cancel()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for run in self.runs.values():
                if run.process is not None and run.process.returncode is None:
                    run.process.kill()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
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
    ) -> Any:
        """One API request; None when the object is gone (404)."""
        async with self._http.request(
            method,
            self.cp.server + path,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type},
            params=params,
        ) as reply:
            text = await reply.text()
            if reply.status == 404:
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
            run = self.runs[name] = Run(name, annotations.get(ENTITY_ANNOTATION))
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
        if await self._call("POST", f"{self._pods()}/{name}/binding", binding) is None:
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
                *run.argv,
                env=self._process_env(name, run.env),
                cwd=self.log_dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        run.pid = run.process.pid
        self._note(f"{name}: started pid {run.pid}: {' '.join(run.argv)}")
        await self._status(name, self._running(container, started, run.pid))

        exited = asyncio.create_task(run.process.wait())
        deleting = asyncio.create_task(run.deleting.wait())
        await asyncio.wait([exited, deleting], return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            run.stopped_by_deletion = True
            self._note(f"{name}: deleted: SIGTERM, grace {run.grace:g}s")
            run.process.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(exited), run.grace)
            except TimeoutError:
                self._note(f"{name}: grace over: SIGKILL")
                run.process.kill()
                await exited
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

    def _process_env(self, pod: str, env: Mapping[str, str]) -> dict[str, str]:
        """Ours without AQ_* settings, `aq` of this Python first on PATH, the repository on
        PYTHONPATH, then the container's env."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
        base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
        base["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, base.get("PYTHONPATH", "").split(os.pathsep))]
        )
        return {**base, "PYTHONUNBUFFERED": "1", "HOSTNAME": pod, **env}

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

    def _running(self, container: Mapping[str, Any], started: str, pid: int) -> dict[str, Any]:
        state = {"running": {"startedAt": started}}
        return {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": started,
            "conditions": self._conditions(True),
            "containerStatuses": [
                {**self._container(container, state, True), "containerID": f"local://{pid}"}
            ],
        }

    def _terminated(self, container: Mapping[str, Any], started: str, run: Run) -> dict[str, Any]:
        code = run.exit_code or 0
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": _now(),
            "containerID": f"local://{run.pid}",
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
