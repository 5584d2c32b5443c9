"""The one interface every job system is driven through, and the child process that serves it.

Why this exists: each system has its own client, worker command line and defaults, but the
benchmark must do exactly the same things to each: enqueue N no-op jobs, start the same number
of worker processes with the same concurrency, enqueue at a paced rate, stop the workers. A
driver (`compare/drivers/NAME_driver.py`) says how its system does those few things, and
nothing else; everything around them is written once, here and in `compare/measure.py`.

A driver runs in a child process started with its system's virtualenv's Python:

    python -m compare.driver NAME URL [OPTIONS_JSON]   # NAME as in compare/drivers/NAME_driver.py

It reads one JSON request a line on stdin and answers one JSON line on stdout:

    {"op": "hello"}                                 -> {"versions": {...}}
    {"op": "enqueue", "count": N, "rate": R|null}   -> {"seconds": S}
    {"op": "enqueue_bulk", "count": N, "chunk": C}  -> {"seconds": S}   (systems with a bulk API)
    {"op": "start", "processes": P, "concurrency": C, "logs": DIR} -> {"pids": [...]}
    {"op": "check"}                                 -> {"exited": [code|null, ...]}
    {"op": "stop"}                                  -> {"exited": [...]}
    {"op": "quit"}                                  -> {}

Any failure answers {"error": "..."}. Standard library only (and the driver's own system).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, ClassVar

from compare.marks import ENV_CONCURRENCY, ENV_MARKS, ENV_OPTIONS, ENV_REDIS_URL

BENCH_DIR = Path(__file__).resolve().parent.parent
"""bench/: on PYTHONPATH of every worker process, so `compare.drivers.*` imports there."""
STOP_GRACE = 20.0
"""Seconds workers get to exit after SIGTERM (SIGINT for some) before they are killed."""


class Driver:
    """How one job system enqueues a no-op job and how its workers are started.

    The no-op task of every system takes one argument, the time the producer called enqueue,
    and its first statement is `compare.marks.mark(sent)`.
    """

    name: ClassVar[str]
    packages: ClassVar[tuple[str, ...]]
    """Distributions whose versions the report shows."""
    stop_signal: ClassVar[int] = signal.SIGTERM

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url = url
        self.options = options

    async def open(self) -> None:
        """Connect the producer."""

    async def enqueue(self, sent: float) -> None:
        raise NotImplementedError

    async def enqueue_many(self, sent: float, count: int) -> None:
        """Enqueue `count` no-op jobs with one call of the system's bulk API (the drivers of
        systems measured in bulk have one: `System.bulk`)."""
        raise NotImplementedError(f"{self.name}: no bulk enqueue in this benchmark")

    async def close(self) -> None:
        """Disconnect the producer."""

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        """The command lines to start: one per worker process, or one for a system whose
        command starts `processes` processes itself."""
        raise NotImplementedError


def console_script(name: str) -> str:
    """A console script of this interpreter's environment (the driver's virtualenv)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "?"
    return out


class Server:
    """The child process: one driver, its worker processes, and the request loop."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.procs: list[subprocess.Popen[bytes]] = []

    async def enqueue(self, count: int, rate: float | None) -> dict[str, Any]:
        """Enqueue `count` jobs one after another; paced at `rate` per second if given."""
        began = time.perf_counter()
        for i in range(count):
            if rate:
                delay = began + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.driver.enqueue(time.time())
        return {"seconds": time.perf_counter() - began}

    async def enqueue_bulk(self, count: int, chunk: int) -> dict[str, Any]:
        """Enqueue `count` jobs through the bulk API, `chunk` jobs a call, one call at a time."""
        began = time.perf_counter()
        for done in range(0, count, chunk):
            await self.driver.enqueue_many(time.time(), min(chunk, count - done))
        return {"seconds": time.perf_counter() - began}

    def start(self, processes: int, concurrency: int, logs: str, marks: str) -> dict[str, Any]:
        env = dict(os.environ)
        env[ENV_MARKS] = marks
        env[ENV_REDIS_URL] = self.driver.url
        env[ENV_CONCURRENCY] = str(concurrency)
        env[ENV_OPTIONS] = json.dumps(self.driver.options)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for i, argv in enumerate(self.driver.worker_commands(processes, concurrency)):
            with (Path(logs) / f"{self.driver.name}-worker-{i}.log").open("ab") as out:
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        env=env,
                        cwd=BENCH_DIR,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: stop() ends it whole
                    )
                )
        return {"pids": [p.pid for p in self.procs]}

    def check(self) -> dict[str, Any]:
        return {"exited": [p.poll() for p in self.procs]}

    def stop(self) -> dict[str, Any]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(self.driver.stop_signal)
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            # Whatever is left of each group: a worker's children, or a worker that hung.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        exited = [p.returncode for p in self.procs]
        self.procs = []
        return {"exited": exited}

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "hello":
            return {"versions": versions(self.driver.packages)}
        if op == "enqueue":
            return await self.enqueue(int(request["count"]), request.get("rate"))
        if op == "enqueue_bulk":
            return await self.enqueue_bulk(int(request["count"]), int(request["chunk"]))
        if op == "start":
            return self.start(
                int(request["processes"]),
                int(request["concurrency"]),
                request["logs"],
                request["marks"],
            )
        if op == "check":
            return self.check()
        if op == "stop":
            return self.stop()
        raise ValueError(f"unknown op {op!r}")

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        await self.driver.open()
        try:
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    break
                request = json.loads(line)
                if request["op"] == "quit":
                    reply(request, {})
                    break
                try:
                    answer = await self.handle(request)
                except Exception as exc:
                    answer = {"error": f"{type(exc).__name__}: {exc}", "trace": fmt_trace()}
                reply(request, answer)
        finally:
            if self.procs:
                self.stop()
            await self.driver.close()


def fmt_trace() -> str:
    return "".join(traceback.format_exc(limit=8))


_protocol = sys.stdout
"""Where answers go: the process's original stdout (`main` sends everything else to stderr)."""


def reply(request: dict[str, Any], answer: dict[str, Any]) -> None:
    _protocol.write(json.dumps({"op": request["op"], **answer}) + "\n")
    _protocol.flush()


def load(name: str, url: str, options: dict[str, Any]) -> Driver:
    """The driver `name`; its module reads the Redis URL from the environment at import."""
    os.environ[ENV_REDIS_URL] = url
    os.environ[ENV_OPTIONS] = json.dumps(options)
    module = importlib.import_module(f"compare.drivers.{name}_driver")
    driver_class: type[Driver] = module.DRIVER
    return driver_class(url, options)


def main() -> None:
    global _protocol
    # A library that prints must not break the protocol: answers get a copy of stdout, and
    # stdout itself goes to stderr.
    _protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    name, url = sys.argv[1], sys.argv[2]
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    asyncio.run(Server(load(name, url, options)).serve())


if __name__ == "__main__":
    main()
