"""The container engine of the test tiers that run the project's images (tests/containers, and
the operator image in tests/controlplane): the images, built by scripts/build-images.sh, and
containers started from pod bodies as a kubelet would start them.

Why: the tests must run the images the project ships, from its own Dockerfiles, with what the
operator's pods ask for (tests/pod_container.py turns a pod into `run` arguments). The build
script picks docker where an engine answers, else podman with settings of its own, and prints
the command to use (for podman a wrapper that carries those settings); everything here goes
through that command.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pod_container import run_args

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-images.sh"
NO_ENGINE = 3
"""build-images.sh's exit code when no container engine can be had here."""


class EngineMissing(RuntimeError):
    """No container engine here, and none can be installed."""


@dataclass(frozen=True)
class Images:
    engine: str
    """The engine's command (docker, or build-images.sh's podman wrapper)."""
    worker: str
    operator: str
    example: str


def build_images() -> Images:
    """Build (or find up to date) every image; the build's progress goes to our stderr."""
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if done.returncode == NO_ENGINE:
        raise EngineMissing(
            "no container engine: no Docker engine answers, and podman cannot be installed"
            " (needs root and apt-get; see scripts/build-images.sh --help)"
        )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build-images.sh failed (exit {done.returncode})")
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return Images(found["ENGINE"], found["worker"], found["operator"], found["example"])


@dataclass
class Container:
    name: str
    started: float
    killed_at: float | None = None


@dataclass
class Engine:
    """Runs the engine's command; remembers the containers it started, to report and remove."""

    command: str
    containers: dict[str, Container] = field(default_factory=dict)

    @property
    def podman(self) -> bool:
        return Path(self.command).name != "docker"

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.command, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{self.command} {' '.join(args)}: exit {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def build(self, image: str, context: Path, dockerfile: Path, **build_args: str) -> str:
        args = [a for key, value in build_args.items() for a in ("--build-arg", f"{key}={value}")]
        self(
            "build", "--quiet", *args, "-f", str(dockerfile), "-t", image, str(context), timeout=600
        )
        return image

    def run(self, pod: Mapping[str, Any], env: Mapping[str, str]) -> Container:
        """Start the pod's container, detached."""
        container = Container(pod["metadata"]["name"], time.time())
        self.containers[container.name] = container
        self("run", "--detach", *run_args(pod, env, podman=self.podman))
        return container

    def foreground(self, pod: Mapping[str, Any], env: Mapping[str, str], **kw: Any) -> list[str]:
        """The command that runs the pod's container in the foreground: the engine passes
        signals on to it and exits with its exit code, so it can be run as a local process.
        Killing that process does not end the container (with podman): `stop`, `kill` and
        `remove_all` do, by name, so the container counts as started here."""
        kw.setdefault("podman", self.podman)
        container = Container(pod["metadata"]["name"], time.time())
        self.containers[container.name] = container
        return [self.command, "run", "--rm", "--sig-proxy=true", *run_args(pod, env, **kw)]

    def state(self, name: str) -> dict[str, Any]:
        done = self("inspect", "--format", "{{json .State}}", name)
        state: dict[str, Any] = json.loads(done.stdout)
        return state

    def stop(self, name: str, grace: float) -> float:
        """SIGTERM to PID 1, SIGKILL after `grace` seconds (as a kubelet deleting the pod);
        returns how long the container took to end."""
        t0 = time.monotonic()
        self("stop", "--time", str(int(grace)), name, timeout=grace + 60)
        return time.monotonic() - t0

    def kill(self, name: str) -> float:
        """SIGKILL the container's PID 1 (a crash); returns when."""
        self("kill", "--signal", "KILL", name)
        self.containers[name].killed_at = killed = time.time()
        return killed

    def wait(self, name: str, timeout: float) -> int:
        """The container's exit code, once it has ended."""
        return int(self("wait", name, timeout=timeout).stdout.strip())

    def logs(self, name: str, lines: int = 30) -> str:
        done = self("logs", "--tail", str(lines), name, check=False)
        return done.stdout + done.stderr

    def report(self) -> str:
        """The last lines of every container's output (for a failure message)."""
        return "\n".join(f"---- container {name}\n{self.logs(name)}" for name in self.containers)

    def remove_all(self, within: float = 15) -> list[str]:
        """Remove every container started here, running or not; returns those still there
        after `within` seconds (none, unless the engine failed). Again while one is left: a
        container that was being created or removed (`run --rm`) at the first try may still
        be listed after it."""
        names = list(self.containers)
        deadline = time.monotonic() + within
        while names:
            self("rm", "--force", *names, check=False)
            listed = self("ps", "--all", "--format", "{{.Names}} {{.State}}").stdout.splitlines()
            states = dict(line.split(" ", 1) for line in listed if " " in line)
            left = [name for name in names if name in states]
            if not left or time.monotonic() > deadline:
                names = [f"{name} ({states[name]})" for name in left]
                break
            names = left
            time.sleep(0.5)
        self.containers.clear()
        return names
