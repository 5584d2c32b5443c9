"""docs/benchmarks.md from the figures of one run (docs/benchmarks.json).

Why this exists: the report's tables are made from the figures alone, so a run can be rendered
again (`python bench/report.py --render-only`) and the rendering tested without running
anything. The "Findings" section is written by people: it is kept from the previous file.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from compare.stats import Spread, by_rep, meets, percentile, ratios, round_trip_limit
from compare.systems import CONCURRENCY, PROCESSES, System

FINDINGS = "## Findings"
FINDINGS_PLACEHOLDER = (
    "_Not written yet: read the tables above, investigate with the Redis command counts, and "
    "write here why we lose where we lose and what would fix it. This section is kept when the "
    "report is regenerated._\n"
)
MAIN = "aq-1000"
"""The AtomicQueues run the competitors are compared with."""
UNORDERED = "aq-1xN"
KEDA_POLLING_SECONDS = 30.0
ENQUEUE_RIVAL = "dramatiq"
"""The competitor our one-call-at-a-time enqueue rate is set against in the targets."""

# The lean data path's targets (section 7).
BULK_TARGET = 20_000.0
"""`Client.enqueue_many` from one producer: at least this many jobs/s."""
CLUSTER_TARGET = 1.2
"""Redis CPU per job on a Cluster ÷ standalone, summed over the masters: at most this."""
TRIPS_TARGET = 1.5
"""Round trips per job of the workers, every job for a new entity: at most this."""
RSS_TARGET = 1.10
"""A worker's RSS after the last reading ÷ after the first: at most this."""

Figures = Mapping[str, Sequence[float]]


def bulk_key(key: str) -> str:
    """Where the figures of a run's bulk enqueue are kept (repetitions of their own)."""
    return f"{key}:bulk"


def system_dict(system: System) -> dict[str, Any]:
    return asdict(system)


def findings_of(markdown: str) -> str:
    """The Findings section of an earlier report (from its heading to the end), if any."""
    at = markdown.find("\n" + FINDINGS + "\n")
    if at < 0:
        return ""
    return markdown[at + 1 :].rstrip() + "\n"


# --- formatting ------------------------------------------------------------------------------
def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    if x >= 1:
        return f"{x:,.2f} s"
    return f"{x * 1000:,.1f} ms" if x >= 0.01 else f"{x * 1000:.2f} ms"


def fmt_times(x: float) -> str:
    return f"{x:.2f}×" if x < 10 else f"{x:,.1f}×"


def fmt_num(x: float) -> str:
    return f"{x:,.1f}"


def fmt_pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def fmt_trips(x: float) -> str:
    return f"{x:.3f}"


def fmt_bytes(x: float) -> str:
    return f"{x:,.0f} B"


def fmt_mib(kib: float) -> str:
    return f"{kib / 1024:,.1f} MiB"


def verdict(values: Sequence[float], target: float, *, at_most: bool) -> str:
    """Whether the median of a figure meets its target: "yes", "**no**", or a dash."""
    if not values:
        return "–"
    return "yes" if meets(statistics.median(values), target, at_most=at_most) else "**no**"


def spread(values: Sequence[float] | None, fmt: Callable[[float], str]) -> str:
    """`median (low–high)` over the repetitions, or the value alone, or a dash."""
    if not values:
        return "–"
    s = Spread.of(values)
    if s.n == 1:
        return fmt(s.median)
    return f"{fmt(s.median)} ({fmt(s.low)}–{fmt(s.high)})"


def table(head: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> str:
    """A markdown table; columns from `right` on are right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- the sections ----------------------------------------------------------------------------
class Renderer:
    def __init__(self, results: Mapping[str, Any]) -> None:
        self.r = results
        self.figures: Mapping[str, Figures] = results["figures"]
        self.systems = [System(**s) for s in results["systems"]]
        self.labels = {s.key: s.label for s in self.systems}
        self.standalone = [s for s in self.systems if not s.on_cluster]
        """The runs on the standalone server: sections 1 to 5 compare these."""

    def fig(self, key: str, name: str) -> list[float]:
        return list(self.figures.get(key, {}).get(name, []))

    def reps(self, key: str, name: str) -> dict[int, float]:
        """A figure of a system by repetition (`rep` lists the repetitions that succeeded)."""
        figures = self.figures.get(key, {})
        values = list(figures.get(name, []))
        reps = [int(r) for r in figures.get("rep", range(len(values)))]
        return by_rep(values, reps[: len(values)]) if values else {}

    def vs(self, a: str, b: str, name: str, fmt: Callable[[float], str]) -> str:
        """Figure `name` of system a ÷ that of system b, per repetition, as a spread."""
        if a == b:
            return ""
        return spread(ratios(self.reps(a, name), self.reps(b, name)), fmt)

    def ratio(self, a: str, name_a: str, b: str, name_b: str) -> list[float]:
        """Figure `name_a` of run a ÷ figure `name_b` of run b, per repetition."""
        return ratios(self.reps(a, name_a), self.reps(b, name_b))

    def versions_of(self, key: str) -> str:
        v = self.r.get("versions", {}).get(key, {})
        return ", ".join(f"{k} {ver}" for k, ver in v.items() if k != "python")

    def header(self) -> str:
        m = self.r["machine"]
        reps = self.r["repeat"]
        lines = [
            "# Benchmarks: AtomicQueues against the job queues people pick instead, and Redis",
            "",
            "Generated by the command below; do not edit by hand except the Findings section.",
            "",
            "```",
            self.r["command"],
            "```",
            "",
            f"- When: {self.r['date']}, commit {self.r['commit']}.",
            f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}; shared with "
            f"other work (load average {m['load_start']:.2f} at start, "
            f"{m.get('load_end', 0):.2f} at end).",
            f"- {m['redis']}; Python {m['python']}. One Redis for every system; emptied "
            "(FLUSHALL, SCRIPT FLUSH, and FUNCTION FLUSH on Redis 7) before each run."
            + (
                f' The runs named "Redis Cluster": a private Cluster of {cluster} masters '
                "from the same binary, emptied likewise (section 7)."
                if (cluster := self.r.get("cluster", {}).get("masters"))
                else ""
            ),
            f"- {self.r['jobs']:,} jobs per run (fewer where the table below says so); every "
            f"figure is the **median of {reps} "
            "repetitions (lowest–highest)**. Ratios are taken within each repetition, then the "
            "median of those: the machine is shared and noisy, absolute figures move, ratios "
            "much less.",
            f"- Every system: {PROCESSES} worker processes; {CONCURRENCY} jobs in flight per "
            "process where the system runs jobs concurrently within a process; everything else "
            "at its documented defaults (retries, acknowledgements, result storage, polling).",
            "- The handler of every system does nothing but append one line (enqueue time, start "
            "time) to a file with one `write`; nothing else touches Redis.",
            "",
            "Systems, versions (each competitor from PyPI into a virtualenv of its own, never a "
            "dependency of the project) and how their workers ran:",
            "",
        ]
        jobs = self.r["jobs"]
        rows = [
            [self.labels[s.key], self.versions_of(s.key) or "–", s.runs, f"{s.jobs(jobs):,}"]
            for s in self.systems
        ]
        lines.append(table(["system", "versions", "workers", "jobs per run"], rows, right=3))
        if self.r.get("failures"):
            lines += ["", "**Runs that failed** (left out of the figures):", ""]
            lines += [f"- {f}" for f in self.r["failures"]]
        return "\n".join(lines)

    def throughput(self) -> str:
        rows = []
        for s in self.standalone:
            if s.key in (UNORDERED, "aq-10"):
                continue
            rate = self.fig(s.key, "rate")
            vs = self.vs(MAIN, s.key, "rate", fmt_times)
            order = "yes, per entity" if s.ordered else "**none**"
            rows.append(
                [
                    self.labels[s.key],
                    order,
                    spread(rate, fmt_rate),
                    vs,
                    spread(self.fig(s.key, "enqueue_rate"), fmt_rate),
                ]
            )
        head = [
            "system",
            "order kept",
            "jobs/s (drain)",
            f"{self.labels.get(MAIN, MAIN)} ÷ this",
            "enqueue jobs/s (1 producer)",
        ]
        return "\n".join(
            [
                "## 1. Throughput: no-op jobs",
                "",
                f"{self.r['jobs']:,} jobs enqueued by one producer (one call at a time) before any "
                "worker runs, then drained; jobs/s from the first handler start to the last "
                "(worker start-up not counted). **The other systems give no per-entity ordering "
                "and no per-entity concurrency limit**: they run any job on any free worker. "
                "AtomicQueues keeps every entity's jobs in order, one at a time.",
                "",
                table(head, rows, right=2),
            ]
        )

    def atomicity(self) -> str:
        rows = []
        for key in ("aq-1", "aq-10", MAIN, "aq-new", UNORDERED):
            rate = self.fig(key, "rate")
            if not rate:
                continue
            vs = self.vs(key, UNORDERED, "rate", fmt_pct) or "= 100%"
            rows.append([self.labels.get(key, key), spread(rate, fmt_rate), vs])
        return "\n".join(
            [
                "## 2. Cost of atomicity",
                "",
                "Our throughput with per-entity order (concurrency 1 per entity) over 1, 10 and "
                "1,000 entities (the jobs spread evenly), and with every job for an entity of its "
                "own (each job an entity switch), divided by our throughput with one entity of "
                f"concurrency {PROCESSES * CONCURRENCY} (no order), in the same repetition.",
                "",
                table(["run", "jobs/s", "÷ 1 entity, no order"], rows, right=1),
            ]
        )

    def cost(self) -> str:
        rows = []
        for s in self.standalone:
            if s.key in (UNORDERED, "aq-10"):
                continue
            cpu = self.fig(s.key, "cpu_us_per_job")
            vs = self.vs(MAIN, s.key, "cpu_us_per_job", fmt_times)
            rows.append(
                [
                    self.labels[s.key],
                    spread(self.fig(s.key, "commands_per_job"), fmt_num),
                    spread(self.fig(s.key, "scripts_per_job"), fmt_num),
                    spread(cpu, fmt_num),
                    vs,
                    spread(self.fig(s.key, "script_us_per_job"), fmt_num),
                    spread(self.fig(s.key, "worker_cpu_us_per_job"), fmt_num),
                    self.top_commands(s.key),
                ]
            )
        head = [
            "system",
            "commands/job",
            "of them Lua calls",
            "Redis CPU µs/job",
            "ours ÷ this",
            "in Lua scripts µs/job",
            "worker CPU µs/job",
            "most frequent commands per job",
        ]
        return "\n".join(
            [
                "## 3. Redis cost per job",
                "",
                "From `INFO commandstats` and `INFO cpu` (main thread, user + system) before the "
                "enqueue and after the drain of section 1: everything Redis did for the jobs, "
                "polling by idle workers included. Redis counts the commands a Lua script runs as "
                "commands too, so a script call and the commands inside it are all in "
                '"commands/job". "In Lua scripts" is the time `INFO commandstats` gives the '
                'script calls (the commands they ran included), part of the CPU time. "Worker CPU" '
                "is not Redis's: the CPU time of all the system's worker processes (from "
                "`/proc`, with the children they reaped) from the first job's start to the last "
                "one's, per job: what the client side costs.",
                "",
                table(head, rows, right=1),
            ]
        )

    def top_commands(self, key: str, n: int = 5) -> str:
        figures = self.figures.get(key, {})
        per_job = {
            name.removeprefix("cmd."): statistics.median(values)
            for name, values in figures.items()
            if name.startswith("cmd.") and values
        }
        ranked = sorted(per_job.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return ", ".join(f"{name.upper()} {count:.1f}" for name, count in ranked)

    def limits(self) -> str:
        lim: Mapping[str, Sequence[float]] = self.r.get("limits", {})
        loops = [
            ("evalsha_ops", "no-op `EVALSHA` (`return 1`), one redis-py asyncio client, serial"),
            ("lpush_blmove_ops", "`LPUSH` + `BLMOVE` pairs, the same client, serial"),
            ("server_evalsha_ops", "no-op `EVALSHA`, `redis-benchmark`, 32 connections"),
            ("server_lpush_ops", "`LPUSH`, `redis-benchmark`, 32 connections"),
        ]
        rows = [[label, spread(lim.get(key), fmt_rate)] for key, label in loops if lim.get(key)]
        if lim.get("evalsha_rtt"):
            rows.insert(1, ["  one such round trip, p50", spread(lim["evalsha_rtt"], fmt_ms)])
        lines = [
            "## 4. The physical limit",
            "",
            "Round trips per second on the same server, measured at the start of each "
            "repetition. The one-client loops are what one client of this library can do one "
            "call at a time; `redis-benchmark` (C, pipelining off) shows the server's ceiling.",
            "",
            table(["loop", "round trips/s"], rows, right=1),
        ]
        rate = self.reps(MAIN, "rate")
        trips = self.our_trips()
        if not (rate and trips and lim.get("evalsha_ops")):
            return "\n".join(lines)
        label = self.labels.get(MAIN, MAIN)
        rows2 = [
            [
                f"{label}: round trips per job (`EVALSHA` + `BLPOP` calls ÷ jobs: enqueue, "
                "claims, finishes, releases, waits)",
                spread(list(trips.values()), fmt_num),
            ]
        ]
        for key, what in (
            ("evalsha_ops", "one-client `EVALSHA` round trips/s"),
            ("server_evalsha_ops", "the server's `EVALSHA` ceiling"),
        ):
            if not lim.get(key):
                continue
            ops = by_rep(lim[key])
            limit = {r: round_trip_limit(ops[r], t) for r, t in trips.items() if r in ops}
            rows2.append(
                [f"  limit: {what} ÷ round trips per job", spread(list(limit.values()), fmt_rate)]
            )
            rows2.append(
                ["  our jobs/s (section 1) ÷ that limit", spread(ratios(rate, limit), fmt_pct)]
            )
        lines += [
            "",
            f"Our jobs/s against them. The producer and the {PROCESSES} worker processes run at "
            "the same time, so more than 100% of the one-client limit is possible; the "
            "server's ceiling is not.",
            "",
            table(["", ""], rows2, right=1),
        ]
        return "\n".join(lines)

    def our_trips(self) -> dict[int, float]:
        """Client round trips per job of the main run: every script call (EVALSHA, or FCALL on
        Redis 7 and later) and BLPOP is a request of its own (no project script calls another;
        heartbeat pipelines are a rounding error)."""
        calls = [self.reps(MAIN, f"cmd.{name}") for name in ("evalsha", "fcall", "blpop")]
        return {r: sum(c.get(r, 0.0) for c in calls) for r in set().union(*calls)}

    def latency(self) -> str:
        rows = []
        for s in self.standalone:
            p50 = self.fig(s.key, "latency_p50")
            if not p50:
                continue
            vs = self.vs(s.key, MAIN, "latency_p50", fmt_times)
            rows.append(
                [
                    self.labels[s.key],
                    spread(self.fig(s.key, "latency_rate"), fmt_rate),
                    spread(p50, fmt_ms),
                    spread(self.fig(s.key, "latency_p99"), fmt_ms),
                    vs,
                ]
            )
        head = ["system", "jobs/s offered", "p50", "p99", f"p50 ÷ {self.labels.get(MAIN, MAIN)}"]
        return "\n".join(
            [
                "## 5. Latency: enqueue call to handler start",
                "",
                "After the drain of section 1, with the same workers idle, one producer enqueues "
                "at half of the peak that system just reached: half the lesser of its drain "
                "rate (section 1) and its producer's enqueue rate, as one producer cannot "
                "offer more (about 4 s, 200 to 4,000 jobs); "
                "each job is timed from just before its enqueue call to its handler's first "
                "statement (one clock: same machine). How each system waits for work is its "
                "default: AtomicQueues' idle workers block (`BLPOP` on a doorbell), others block "
                "or poll as they do.",
                "",
                table(head, rows, right=1),
            ]
        )

    def scaling(self) -> str:
        sc = self.r["machine"].get("scaling")
        lines = [
            "## 6. Scaling: first job of an idle entity to a running worker",
            "",
        ]

        def row(label: str, values: Sequence[float], note: str) -> list[str]:
            if not values:
                return [label, "–", "–", note]
            p50 = statistics.median(values)
            return [label, fmt_ms(p50), fmt_ms(percentile(values, 99)), note]

        local = "local mode (`aq up`): enqueue → handler start in a new worker process"
        rows = (
            [
                row(
                    local,
                    sc["cold"],
                    f"{sc['entities']} entities, one at a time (`bench/scaling.py`)",
                ),
                row(
                    "  of which the pool's reaction: enqueue → `StartWorker`",
                    sc["reaction"],
                    "the rest is the process starting",
                ),
                row(
                    '  reference: `python -c "import atomicqueues.cli"`',
                    sc["import"],
                    "a process start a worker cannot avoid",
                ),
                row("warm: the entity's worker idles on its doorbell", sc["warm"], ""),
            ]
            if sc
            else [[local, "–", "–", "not measured in this run (`--scaling-entities 0`)"]]
        )
        rows += [
            *self.pod_rows(row),
            [
                "KEDA, default `pollingInterval` 30 s (documented, not measured)",
                fmt_ms(KEDA_POLLING_SECONDS / 2),
                fmt_ms(KEDA_POLLING_SECONDS * 0.99),
                "work is seen up to 30 s after it arrives, before a pod is even asked for",
            ],
        ]
        return "\n".join([*lines, table(["", "p50", "p99", "note"], rows, right=1)])

    def pod_rows(self, row: Callable[[str, Sequence[float], str], list[str]]) -> list[list[str]]:
        ps = self.r["machine"].get("podstart")
        label = "Kubernetes (operator): enqueue → the entity's pod created"
        if not ps or "skipped" in ps:
            why = ps["skipped"] if ps else "`--pod-entities 0`"
            return [[label, "–", "–", f"not measured in this run: {why}"]]
        return [
            row(
                label,
                ps["reaction"],
                f"{ps['entities']} entities, one at a time, a real kube-apiserver, seen by a"
                " watch on pods (`bench/podstart.py`)",
            ),
            row(
                "  reference: POST of a pod → its watch event",
                ps["post"],
                "the API server's own floor, same run",
            ),
        ]

    # --- 7. the lean data path ----------------------------------------------------------------
    def cluster_runs(self) -> list[System]:
        return [s for s in self.systems if s.on_cluster]

    def memory_figures(self) -> Mapping[str, Any]:
        return self.r.get("memory") or {}

    def rss_ratio(self) -> list[float]:
        rss = self.memory_figures().get("rss")
        if not rss:
            return []
        return [rss["last"]["VmRSS"] / rss["first"]["VmRSS"]]

    def targets(self) -> str:
        missing = "not measured in this run"
        bulk = self.fig(bulk_key(MAIN), "enqueue_bulk_rate")
        chunk = self.r.get("bulk_chunk", 1000)
        rows = [
            [
                f"`Client.enqueue_many`, one producer, {chunk:,} jobs a call, 1,000 entities: "
                "jobs/s",
                spread(bulk, fmt_rate) if bulk else missing,
                f"≥ {fmt_rate(BULK_TARGET)}",
                verdict(bulk, BULK_TARGET, at_most=False),
            ]
        ]
        rival = self.labels.get(ENQUEUE_RIVAL, ENQUEUE_RIVAL)
        single = self.ratio(MAIN, "enqueue_rate", ENQUEUE_RIVAL, "enqueue_rate")
        rows.append(
            [
                f"`Client.enqueue`, one call at a time, jobs/s: ours ÷ {rival}",
                spread(single, fmt_times) if single else missing,
                "(no target: shown)",
                "–",
            ]
        )
        pairs = [(c.key, c.cluster_of) for c in self.cluster_runs()] or [("", MAIN)]
        for key, of in pairs:
            cpu = self.ratio(key, "cpu_us_per_job", of, "cpu_us_per_job")
            base = self.labels.get(of, of)
            rows.append(
                [
                    f"Redis Cluster ÷ standalone, Redis CPU per job (all masters): {base}",
                    spread(cpu, fmt_times) if cpu else missing,
                    f"≤ {fmt_times(CLUSTER_TARGET)}",
                    verdict(cpu, CLUSTER_TARGET, at_most=True),
                ]
            )
        trips = list(self.r.get("worker_trips", {}).get("per_job", []))
        rows.append(
            [
                "round trips per job of the workers, every job for a new entity",
                spread(trips, fmt_trips) if trips else missing,
                f"≤ {TRIPS_TARGET}",
                verdict(trips, TRIPS_TARGET, at_most=True),
            ]
        )
        rss = self.rss_ratio()
        if rss:
            first, last = self.memory_figures()["rss"]["jobs"]
            what = f"after {last:,} no-op jobs ÷ after {first:,}"
        else:
            what = "after 10× the jobs ÷ after the first batch"
        rows.append(
            [
                f"RSS of one `aq worker` {what}",
                spread(rss, fmt_times) if rss else missing,
                f"≤ {fmt_times(RSS_TARGET)}",
                verdict(rss, RSS_TARGET, at_most=True),
            ]
        )
        return "\n\n".join(
            [
                "## 7. Lean data path: figures against their targets",
                "Each figure measured in this run; a ratio is taken within one repetition (ours ÷ "
                'the baseline of the same repetition), then the median; "met" compares that '
                "median with the target. The details follow.",
                table(["figure", "measured", "target", "met"], rows, right=1),
                self.enqueue(),
                self.cluster(),
                self.worker_trips(),
                self.memory(),
            ]
        )

    def enqueue(self) -> str:
        chunk = self.r.get("bulk_chunk", 1000)
        rows = []

        def row(label: str, key: str, name: str) -> None:
            values = self.fig(key, name)
            if values:
                base = (key, name) == (MAIN, "enqueue_rate")
                vs = (
                    "= 1"
                    if base
                    else spread(self.ratio(key, name, MAIN, "enqueue_rate"), fmt_times)
                )
                rows.append([label, spread(values, fmt_rate), vs])

        ours = "AtomicQueues, 1,000 entities"
        row(f"{ours}: `Client.enqueue`, one call at a time", MAIN, "enqueue_rate")
        bulk = f"`Client.enqueue_many`, {chunk:,} jobs a call"
        row(f"{ours}: {bulk}", bulk_key(MAIN), "enqueue_bulk_rate")
        for c in self.cluster_runs():
            if c.cluster_of == MAIN:
                row(f"{ours}, Redis Cluster: one call at a time", c.key, "enqueue_rate")
                row(f"{ours}, Redis Cluster: {bulk}", bulk_key(c.key), "enqueue_bulk_rate")
        for s in self.standalone:
            if s.competitor:
                row(f"{s.label}: one call at a time", s.key, "enqueue_rate")
        bulk_cpu = self.fig(bulk_key(MAIN), "enqueue_bulk_cpu_us_per_job")
        commands = self.fig(bulk_key(MAIN), "enqueue_bulk_commands_per_job")
        cost = (
            f" Redis spends {spread(bulk_cpu, fmt_num)} µs of CPU per job of the bulk enqueue "
            f"({spread(commands, fmt_num)} commands per "
            "job, the script calls and what they run)."
            if bulk_cpu
            else ""
        )
        return "\n".join(
            [
                "### Enqueue: one call at a time and in bulk",
                "",
                f"One producer, {self.r['jobs']:,} no-op jobs spread round-robin over 1,000 "
                "entities, before any worker runs: one call at a time (the enqueue of section 1) "
                f"and, on an empty server just before, `Client.enqueue_many` with {chunk:,} jobs a "
                "call (the client groups them by bucket: one script call per bucket and batch, all "
                "in one pipeline, one round trip per Redis node). The others' enqueue is their "
                "one-job call, as in section 1; their bulk APIs, where they have one, are not "
                f"measured.{cost}",
                "",
                table(["producer", "jobs/s", "÷ ours one call at a time"], rows, right=1),
            ]
        )

    def cluster(self) -> str:
        runs = self.cluster_runs()
        lines = ["### Redis Cluster beside standalone", ""]
        if not runs:
            return "\n".join([*lines, "Not measured in this run (no Cluster run selected)."])
        masters = self.r.get("cluster", {}).get("masters", 3)
        rows = []
        for c in runs:
            base = c.cluster_of
            label = self.labels.get(base, base)
            for key, where in ((base, "standalone"), (c.key, f"Cluster, {masters} masters")):
                rows.append(
                    [
                        label,
                        where,
                        spread(self.fig(key, "rate"), fmt_rate),
                        spread(self.fig(key, "commands_per_job"), fmt_num),
                        spread(self.fig(key, "cpu_us_per_job"), fmt_num),
                        spread(self.fig(key, "worker_cpu_us_per_job"), fmt_num),
                        self.vs(key, base, "rate", fmt_times),
                        self.vs(key, base, "cpu_us_per_job", fmt_times),
                    ]
                )
        head = [
            "run",
            "Redis",
            "jobs/s",
            "commands/job",
            "Redis CPU µs/job",
            "worker CPU µs/job",
            "jobs/s ÷ standalone",
            "Redis CPU/job ÷ standalone",
        ]
        return "\n".join(
            [
                *lines,
                f"The same runs as section 1 on a private Redis Cluster of {masters} masters (no "
                "replicas) on this machine, started from the same redis-server binary, in the same "
                "repetition. The producer and the workers are given the redis:// URL of one node; "
                "the library sees cluster mode and switches to its Cluster client. Commands and "
                "Redis CPU are `INFO commandstats` and `INFO cpu` of every master, summed. The "
                f"{masters} servers share the machine's cores with the workers and the producer.",
                "",
                table(head, rows, right=2),
            ]
        )

    def worker_trips(self) -> str:
        wt = self.r.get("worker_trips") or {}
        lines = ["### Round trips of the workers, every job for a new entity", ""]
        if not wt.get("per_job"):
            return "\n".join([*lines, "Not measured in this run."])
        rows = [
            [
                f"{wt['jobs']:,} jobs, each of an entity of its own",
                spread(wt["per_job"], fmt_trips),
                f"≤ {TRIPS_TARGET}",
            ]
        ]
        return "\n".join(
            [
                *lines,
                f"{PROCESSES} packed `Worker`s of {CONCURRENCY} slots each, in one process (the "
                "benchmark's), drain jobs that were all enqueued before; every request they write "
                "is counted on their connections (`bench/hotpath.py`'s counter): one per command, "
                "one per whole pipeline; `EVALSHA`, `BLPOP`, pipelines, connection handshakes and "
                "heartbeats alike. The enqueues are not the workers' and are not counted.",
                "",
                table(["drain", "round trips per job", "target"], rows, right=1),
                "",
                f"What they were (last repetition): {wt.get('breakdown', '–')}.",
            ]
        )

    def memory(self) -> str:
        mem = self.memory_figures()
        lines = ["### Memory", ""]
        if not mem or "skipped" in mem:
            why = mem.get("skipped", "`--memory-jobs 0`") if mem else "`--memory-jobs 0`"
            return "\n".join([*lines, f"Not measured in this run: {why}."])
        n, entities = mem["jobs"], mem["entities"]
        redis_rows = [
            ["a waiting job (enqueued, not run)", fmt_bytes(mem["waiting_bytes"])],
            [
                "a completed job kept by the default retention (`keep_completed`)",
                fmt_bytes(mem["retained_bytes"]),
            ],
            ["a waiting job, `keep_completed=0`", fmt_bytes(mem["waiting_bytes_keep0"])],
            ["left per job once run, `keep_completed=0`", fmt_bytes(mem["left_bytes_keep0"])],
        ]
        rss = mem["rss"]
        first, last = rss["jobs"]
        worker_rows = [
            [f"after {first:,} jobs", fmt_mib(rss["first"]["VmRSS"]), ""],
            [
                f"after {last:,} jobs",
                fmt_mib(rss["last"]["VmRSS"]),
                f"peak (VmHWM) {fmt_mib(rss['last']['VmHWM'])}",
            ],
            [
                f"after {last:,} ÷ after {first:,}",
                spread(self.rss_ratio(), fmt_times),
                f"target ≤ {fmt_times(RSS_TARGET)}",
            ],
        ]
        return "\n".join(
            [
                *lines,
                f"Redis: `used_memory` (INFO memory) of an emptied server, after one producer "
                f"enqueued {n:,} no-op jobs over {entities:,} entities (`Client.enqueue_many`), "
                "and after one packed `aq worker` ran them all and stopped; ÷ the jobs. The "
                "entities' own keys are in the figures. Then the same with `keep_completed=0` on "
                "every job.",
                "",
                table(["Redis bytes per job", ""], redis_rows, right=1),
                "",
                f"Worker: VmRSS (`/proc/PID/status`) of one `aq worker --slots {CONCURRENCY}` "
                f"process, fed {first:,} no-op jobs at a time (each batch run before the next is "
                "enqueued), read when the first batch and when the last had run (then idle for "
                "half a second). Measured once per report.",
                "",
                table(["worker RSS", "", ""], worker_rows, right=1),
            ]
        )

    def chart(self) -> str:
        return "![Throughput, Redis CPU per job, latency and the cost of order](benchmarks.png)"


def report(results: Mapping[str, Any], findings: str = "") -> str:
    r = Renderer(results)
    parts = [
        r.header(),
        r.chart(),
        r.throughput(),
        r.atomicity(),
        r.cost(),
        r.limits(),
        r.latency(),
        r.scaling(),
        r.targets(),
        findings.rstrip() + "\n" if findings else f"{FINDINGS}\n\n{FINDINGS_PLACEHOLDER}",
    ]
    return "\n\n".join(p.rstrip() for p in parts) + "\n"
