"""The benchmark report: AtomicQueues against RQ, arq, Celery, Dramatiq, taskiq, Huey and BullMQ,
and against Redis itself, on one machine, one local Redis, one run.

Why this exists: people choose a job system on evidence, and we need to know where we are slow.
This command builds the competitors' virtualenvs (cached, outside the repository), starts one
private redis-server, runs every system `--repeat` times (throughput, Redis cost per job,
enqueue-to-start latency), the round-trip limits of Redis, the cost of per-entity order, and
the local scaling benchmark (`bench/scaling.py`); AtomicQueues also on a private 3-master Redis
Cluster, its bulk enqueue, its workers' round trips per job and its memory (`bench/memory.py`).
It writes docs/benchmarks.md (markdown tables), docs/benchmarks.png (chart) and
docs/benchmarks.json (every figure). See bench/README.md, "Comparison report".

    python bench/report.py [--jobs N] [--repeat R] [--only KEY,...] [--quick]
    python bench/report.py --render-only     # docs/benchmarks.md and .png from the .json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

import hotpath
import memory
import podstart
import scaling
from atomicqueues.errors import AtomicQueuesError
from compare import measure, render, venvs
from compare.systems import BULK_CHUNK, CHART_REQUIREMENTS, CLUSTER_MASTERS, SYSTEMS, System

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path.append(str(TESTS))  # last: a module of the tests never hides one of bench/
from redis_servers import RedisCluster  # noqa: E402  (the test suite's Cluster starter)

DOCS = REPO / "docs"
RESULTS = DOCS / "benchmarks.json"
REPORT = DOCS / "benchmarks.md"
CHART = DOCS / "benchmarks.png"
CHART_SCRIPT = Path(__file__).resolve().parent / "compare" / "chart.py"
LIMIT_CLIENTS = 32
"""Connections of redis-benchmark: as many as the workers' slots (2 processes × 16)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--only", help="comma-separated system keys (default all): " + ",".join(SYSTEMS_KEYS)
    )
    parser.add_argument(
        "--scaling-entities",
        type=int,
        default=100,
        help="entities of the scaling benchmark (default 100; 0 skips it)",
    )
    parser.add_argument(
        "--pod-entities",
        type=int,
        default=100,
        help="entities of the pod-start benchmark on a real API server (default 100; 0 skips"
        " it; needs the control-plane binaries, see tests/controlplane/README.md)",
    )
    parser.add_argument(
        "--memory-jobs",
        type=int,
        default=20_000,
        help="jobs of the memory readings (default 20000; the worker's RSS is read after that"
        " many and 10 times that many; 0 skips them)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1000 jobs, 1 repetition, 10 scaling entities, 1000 memory jobs",
    )
    parser.add_argument("--out", type=Path, default=DOCS, help="where the report goes (docs/)")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the .md and .png from the .json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.repeat = 1000, 1
        args.scaling_entities = min(args.scaling_entities, 10)
        args.pod_entities = min(args.pod_entities, 10)
        args.memory_jobs = min(args.memory_jobs, 1000)
    if args.jobs < 10 or args.repeat < 1 or args.scaling_entities < 0 or args.pod_entities < 0:
        parser.error("--jobs must be at least 10, --repeat at least 1")
    if args.memory_jobs < 0:
        parser.error("--memory-jobs must not be negative")
    return args


SYSTEMS_KEYS = [s.key for s in SYSTEMS]


def selected(only: str | None) -> list[System]:
    if not only:
        return list(SYSTEMS)
    keys = [k.strip() for k in only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SYSTEMS_KEYS]
    if unknown:
        raise SystemExit(f"report.py: unknown system {', '.join(unknown)}")
    return [s for s in SYSTEMS if s.key in keys]


# --- the machine -------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def total_memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return "?"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine(server: hotpath.RedisServer) -> dict[str, Any]:
    with redis.Redis(port=server.port, decode_responses=True) as r:
        info = r.info("server")
    return {
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory": total_memory(),
        "redis": f"redis-server {info['redis_version']} (private, loopback, no persistence)",
        "python": platform.python_version(),
        "load_start": os.getloadavg()[0],
    }


# --- the run -----------------------------------------------------------------------------------
WORKER_TRIPS_OF = "aq-new"
"""The run whose workers' round trips per job are counted on their connections."""


def wants_cluster(systems: Sequence[System]) -> bool:
    return any(s.on_cluster for s in systems)


class Report:
    def __init__(
        self,
        server: hotpath.RedisServer,
        args: argparse.Namespace,
        cluster: RedisCluster | None = None,
    ) -> None:
        self.server = server
        self.cluster = cluster
        self.args = args
        self.systems = selected(args.only)
        self.sizes = measure.Sizes(args.jobs, args.repeat, args.jobs, args.scaling_entities)
        self.pods: int = args.pod_entities
        self.memory_jobs: int = args.memory_jobs
        self.figures: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.limits: dict[str, list[float]] = defaultdict(list)
        self.worker_trips: dict[str, Any] = {"rep": [], "per_job": [], "jobs": self.sizes.jobs}
        self.failures: list[str] = []
        self.console = Console(stderr=True)

    @property
    def count_worker_trips(self) -> bool:
        return any(s.key == WORKER_TRIPS_OF for s in self.systems)

    def steps(self) -> int:
        per_rep = 1 + len(self.systems) + (1 if self.count_worker_trips else 0)
        once = sum(map(bool, (self.sizes.scaling_entities, self.pods, self.memory_jobs)))
        return 1 + self.sizes.repeat * per_rep + once

    async def pythons(self) -> dict[str, str]:
        """Each system's interpreter: the project's for AtomicQueues, else its virtualenv's."""
        needed = {s.driver: s.requirements for s in self.systems if s.requirements}
        built = await asyncio.gather(
            *(venvs.ensure(name, reqs) for name, reqs in needed.items()),
            venvs.ensure("chart", CHART_REQUIREMENTS),
        )
        pythons = dict(zip(needed, map(str, built), strict=False))
        pythons["chart"] = str(built[-1])
        return pythons

    async def run(self) -> dict[str, Any]:
        started = datetime.now(UTC)
        meta = machine(self.server)
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description:<46}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        work = self.server.dir / "report"
        work.mkdir(exist_ok=True)
        bench = hotpath.Bench(
            self.server, hotpath.Sizes(self.sizes.limit_ops, 1, 1, 1, self.sizes.repeat)
        )
        await bench.learn_connection_settings()
        m = measure.Measure(self.server.url, self.sizes, work)
        meta_memory: dict[str, Any] = {}
        on_cluster = None
        if self.cluster is not None:
            masters = self.cluster.urls[: self.cluster.size]
            on_cluster = measure.Measure(self.cluster.url, self.sizes, work, nodes=masters)
        with Progress(*columns, console=self.console) as progress:
            overall = progress.add_task("virtualenvs (cached after the first run)", total=None)
            jobs = progress.add_task("", total=None, visible=False)
            try:
                pythons = await self.pythons()
            except (OSError, RuntimeError) as exc:
                raise hotpath.BenchError(f"could not build a virtualenv: {exc}") from None
            progress.update(overall, total=self.steps(), completed=1)
            try:
                for rep in range(self.sizes.repeat):
                    progress.update(overall, description=f"[{rep + 1}] Redis round-trip limits")
                    await m.reset()
                    for key, value in (await measure.client_loops(bench)).items():
                        self.limits[key].append(value)
                    server = await measure.redis_benchmark(
                        self.server.port, self.sizes.limit_ops * 5, LIMIT_CLIENTS
                    )
                    for key, value in server.items():
                        self.limits[key].append(value)
                    progress.advance(overall)
                    for system in self.systems:
                        target = on_cluster if system.on_cluster else m
                        if target is None:
                            raise hotpath.BenchError(f"{system.key}: no Redis Cluster started")
                        await self.one(target, system, pythons, rep, progress, overall, jobs)
                    if self.count_worker_trips:
                        progress.update(
                            overall, description=f"[{rep + 1}] worker round trips, new entities"
                        )
                        await self.trips(bench, rep)
                        progress.advance(overall)
                if self.sizes.scaling_entities:
                    progress.update(overall, description="scaling: bench/scaling.py (local)")
                    meta["scaling"] = await self.scaling()
                    progress.advance(overall)
                if self.pods:
                    progress.update(overall, description="pod start: bench/podstart.py (real API)")
                    meta["podstart"] = await self.pod_starts()
                    progress.advance(overall)
                if self.memory_jobs:
                    progress.update(overall, description="memory: bench/memory.py")
                    meta_memory = await self.memory()
                    progress.advance(overall)
            finally:
                await m.close()
                if on_cluster is not None:
                    await on_cluster.close()
                await bench.control.aclose()
        meta["load_end"] = os.getloadavg()[0]
        return {
            "command": command_line(),
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(),
            "machine": meta,
            "jobs": self.sizes.jobs,
            "repeat": self.sizes.repeat,
            "versions": {**m.versions, **(on_cluster.versions if on_cluster else {})},
            "systems": [render.system_dict(s) for s in self.systems],
            "figures": {k: dict(v) for k, v in self.figures.items()},
            "limits": dict(self.limits),
            "bulk_chunk": BULK_CHUNK,
            "cluster": self.cluster_info(),
            "worker_trips": self.worker_trips if self.worker_trips["rep"] else {},
            "memory": meta_memory,
            "failures": self.failures,
        }

    def cluster_info(self) -> dict[str, Any]:
        if self.cluster is None:
            return {}
        return {"masters": self.cluster.size, "nodes": len(self.cluster.nodes)}

    async def trips(self, bench: hotpath.Bench, rep: int) -> None:
        """Round trips per job of the packed workers when every job is a new entity's, counted
        on their connections (`measure.worker_trips`); on the standalone server."""
        try:
            per_job, kinds = await measure.worker_trips(bench, self.sizes.jobs)
        except Exception as exc:  # in-process workers: any error of theirs ends up here
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.failures.append(f"repetition {rep + 1}: worker round trips: {why}")
            self.console.print(f"[red]worker round trips failed:[/red] {why}")
            return
        self.worker_trips["rep"].append(rep)
        self.worker_trips["per_job"].append(per_job)
        self.worker_trips["breakdown"] = kinds
        self.console.print(f"worker round trips rep {rep + 1}: {per_job:.3f} per job")

    async def memory(self) -> dict[str, Any]:
        """bench/memory.py's measurement, on this server (emptied first)."""
        n = self.memory_jobs
        options = memory.Options(n, 1000, (n, 10 * n))
        try:
            return await memory.measure(self.server, options)
        except (hotpath.BenchError, AtomicQueuesError, redis.RedisError) as exc:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.failures.append(f"memory: {why}")
            return {"skipped": f"failed: {why}"}

    async def one(
        self,
        m: measure.Measure,
        system: System,
        pythons: dict[str, str],
        rep: int,
        progress: Progress,
        overall: TaskID,
        jobs: TaskID,
    ) -> None:
        progress.update(overall, description=f"[{rep + 1}] {system.label}")
        progress.update(jobs, description="  jobs started", completed=0, visible=True)

        def seen(done: int, total: int) -> None:
            progress.update(jobs, completed=done, total=total)

        python = pythons.get(system.driver, sys.executable)
        if system.bulk:
            await self.bulk(m, system, python, rep)
        began = time.perf_counter()
        try:
            figures = await m.system(system, python, rep, seen)
        except measure.BenchError as exc:
            self.failures.append(f"repetition {rep + 1}: {exc}")
            progress.console.print(f"[red]{system.key} failed:[/red] {exc}")
        else:
            for key, value in figures.items():
                self.figures[system.key][key].append(value)
            self.figures[system.key]["rep"].append(rep)
            figures["seconds"] = time.perf_counter() - began
            progress.console.print(
                f"{system.key:>9} rep {rep + 1}: {figures['rate']:,.0f} jobs/s, "
                f"{figures['commands_per_job']:.1f} commands/job, "
                f"{figures['cpu_us_per_job']:.0f} µs Redis CPU/job"
                + (
                    f", latency p50 {figures['latency_p50'] * 1000:.1f} ms"
                    if "latency_p50" in figures
                    else ""
                )
            )
        progress.update(jobs, visible=False)
        progress.advance(overall)

    async def bulk(self, m: measure.Measure, system: System, python: str, rep: int) -> None:
        """The bulk enqueue of a system (`Measure.bulk`), before its run; its figures go under
        `KEY:bulk` with repetitions of their own, so a failure of one leaves the other."""
        try:
            figures = await m.bulk(system, python, system.jobs(self.sizes.jobs))
        except measure.BenchError as exc:
            first = str(exc).splitlines()[0]
            self.failures.append(f"repetition {rep + 1}: bulk enqueue of {first}")
            self.console.print(f"[red]{system.key} bulk enqueue failed:[/red] {first}")
            return
        key = render.bulk_key(system.key)
        for name, value in figures.items():
            self.figures[key][name].append(value)
        self.figures[key]["rep"].append(rep)
        rate = figures["enqueue_bulk_rate"]
        self.console.print(f"{system.key:>9} rep {rep + 1}: enqueue_many {rate:,.0f} jobs/s")

    async def scaling(self) -> dict[str, Any]:
        """bench/scaling.py's measurement, reused: cold and warm starts of the local pool."""
        await self.server_flush()
        options = scaling.Options(self.sizes.scaling_entities, 0.5, 20)
        run, figures = await scaling.bench(self.server, options)
        samples = run.samples
        return {
            "entities": len(samples),
            "cold": scaling.spans(samples, "enqueue", "start"),
            "reaction": scaling.spans(samples, "enqueue", "action"),
            "warm": scaling.spans(samples, "warm_enqueue", "warm_start"),
            "import": figures["baseline.import"],
        }

    async def pod_starts(self) -> dict[str, Any]:
        """bench/podstart.py's measurement, reused: first job to pod created on a real API
        server; or why it could not be made (no Go and no cached binaries, or it failed: then
        the run's other figures are still written, and the exit code says it)."""
        await self.server_flush()
        url = f"redis://127.0.0.1:{self.server.port}/0"
        try:
            reaction, floor = await asyncio.to_thread(
                podstart.pod_starts, url, self.pods, 0.1, True
            )
        except podstart.BinariesMissing as exc:
            return {"skipped": str(exc)}
        except (TimeoutError, RuntimeError, OSError, AssertionError) as exc:
            self.failures.append(f"pod start: {exc}")
            return {"skipped": f"failed: {str(exc).splitlines()[0]}"}
        return {"entities": len(reaction), "reaction": reaction, "post": floor}

    async def server_flush(self) -> None:
        with redis.Redis(port=self.server.port) as r:
            r.flushall()


def command_line() -> str:
    """The command as run, with the redis-server it was told to use (`AQ_REDIS_SERVER`)."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    server = os.environ.get("AQ_REDIS_SERVER")
    env = [f"AQ_REDIS_SERVER={shlex.quote(server)}"] if server else []
    return " ".join([*env, shlex.join(["python", str(script), *sys.argv[1:]])])


# --- output ------------------------------------------------------------------------------------
def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS.name).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    draw(out)


def draw(out: Path) -> None:
    results = json.loads((out / RESULTS.name).read_text())
    report = out / REPORT.name
    old = report.read_text() if report.exists() else ""
    report.write_text(render.report(results, findings=render.findings_of(old)))
    try:
        python = asyncio.run(venvs.ensure("chart", CHART_REQUIREMENTS))
        subprocess.run(
            [str(python), str(CHART_SCRIPT), str(out / RESULTS.name), str(out / CHART.name)],
            check=True,
        )
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"report.py: no chart drawn: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        draw(args.out)
        print(f"wrote {args.out / REPORT.name} and {args.out / CHART.name}")
        return 0
    holder: dict[str, Any] = {}

    def measure_all(server: hotpath.RedisServer) -> None:
        if not wants_cluster(selected(args.only)):
            holder["results"] = asyncio.run(Report(server, args).run())
            return
        # Started from this (the main) thread: its nodes die with this process. The same binary
        # as the standalone server's.
        cluster = RedisCluster(CLUSTER_MASTERS, binary=server.binary)
        try:
            cluster.start()
        except (OSError, RuntimeError) as exc:
            cluster.close()
            raise hotpath.BenchError(f"the Redis Cluster did not start: {exc}") from None
        try:
            holder["results"] = asyncio.run(Report(server, args, cluster).run())
        finally:
            cluster.close()

    try:
        code = hotpath.run_on_private_redis("report.py", measure_all)
    except KeyboardInterrupt:  # the server and every worker are stopped by then
        print("report.py: interrupted; nothing written", file=sys.stderr)
        return 130
    if code != 0 or "results" not in holder:
        return code or 1
    write(holder["results"], args.out)
    failures = holder["results"]["failures"]
    for failure in failures:
        print(f"report.py: {failure}", file=sys.stderr)
    print(f"wrote {args.out / REPORT.name}, {args.out / CHART.name} and {args.out / RESULTS.name}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
