"""The arithmetic of the report: medians and spreads over repetitions, percentiles, ratios taken
within one repetition, and what Redis spent per job.

Why this exists: these are the parts of the benchmark that can be wrong without anything
crashing, so they are pure functions, tested in tests/bench/ without Redis or competitors.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

BENCH_COMMANDS = frozenset(
    {
        "info",
        "flushall",
        "script|flush",
        "script|load",
        "function|flush",
        "function|load",
        "config|resetstat",
        "ping",
        "hello",
    }
)
"""Commands the benchmark's own control connection sends; never charged to a system.
(`script|load` and `function|load` too: loading scripts is a one-time cost, as after a Redis
restart.)"""
SCRIPT_CALLS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear between the two nearest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over the repetitions."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    @property
    def relative(self) -> float:
        """Half the range over the median: ±this much."""
        return (self.high - self.low) / 2 / self.median if self.median else 0.0


def ratios(numerators: Mapping[int, float], denominators: Mapping[int, float]) -> list[float]:
    """Per repetition: numerator ÷ denominator of the same repetition, never across (a
    repetition that one of them lacks, or where the denominator is 0, gives none)."""
    return [a / denominators[rep] for rep, a in numerators.items() if denominators.get(rep)]


def by_rep(values: Sequence[float], reps: Sequence[int] | None = None) -> dict[int, float]:
    """Values keyed by their repetition (`reps`, or 0, 1, 2, ... when every one succeeded)."""
    if reps is None:
        reps = range(len(values))
    if len(reps) != len(values):
        raise ValueError("one repetition number per value")
    return dict(zip(reps, values, strict=True))


def throughput(starts: Sequence[float]) -> float:
    """Jobs per second from the handler start times of a drain: jobs after the first one over
    the time from the first start to the last (worker start-up is not counted)."""
    if len(starts) < 2:
        raise ValueError("need at least two starts")
    first, last = min(starts), max(starts)
    if last <= first:
        raise ValueError("all starts at one instant")
    return (len(starts) - 1) / (last - first)


@dataclass(frozen=True)
class ServerSnapshot:
    """What INFO says at one moment: calls and µs per command (commandstats), and the CPU
    seconds of Redis's main thread (INFO cpu)."""

    calls: Mapping[str, int]
    usec: Mapping[str, int]
    cpu: float

    @classmethod
    def from_info(
        cls, commandstats: Mapping[str, Mapping[str, float]], cpu: Mapping[str, float]
    ) -> ServerSnapshot:
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in commandstats.items()}
        usec = {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in commandstats.items()}
        if "used_cpu_sys_main_thread" in cpu:
            seconds = cpu["used_cpu_sys_main_thread"] + cpu["used_cpu_user_main_thread"]
        else:
            seconds = cpu["used_cpu_sys"] + cpu["used_cpu_user"]
        return cls(calls, usec, float(seconds))

    @classmethod
    def total(cls, snapshots: Sequence[ServerSnapshot]) -> ServerSnapshot:
        """Several servers read one after another (a Cluster's masters) as one server: calls,
        microseconds and CPU seconds summed."""
        if not snapshots:
            raise ValueError("no snapshots")
        calls: dict[str, int] = {}
        usec: dict[str, int] = {}
        for snap in snapshots:
            for name, n in snap.calls.items():
                calls[name] = calls.get(name, 0) + n
            for name, n in snap.usec.items():
                usec[name] = usec.get(name, 0) + n
        return cls(calls, usec, sum(snap.cpu for snap in snapshots))


@dataclass(frozen=True)
class RedisCost:
    """What Redis did for `jobs` jobs between two snapshots (enqueue, run, and any polling of
    the workers meanwhile), the benchmark's own commands left out. Commands that Lua scripts
    run are counted by Redis as commands too."""

    jobs: int
    calls: Mapping[str, int]
    cpu: float
    """Seconds of CPU of Redis's main thread."""
    usec: Mapping[str, int] = field(default_factory=dict)
    """Microseconds Redis spent in each command (a script call's include its commands)."""

    @classmethod
    def between(cls, before: ServerSnapshot, after: ServerSnapshot, jobs: int) -> RedisCost:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        calls: dict[str, int] = {}
        usec: dict[str, int] = {}
        for name, n in after.calls.items():
            delta = n - before.calls.get(name, 0)
            if delta > 0 and name not in BENCH_COMMANDS:
                calls[name] = delta
                usec[name] = max(0, after.usec.get(name, 0) - before.usec.get(name, 0))
        return cls(jobs, calls, max(0.0, after.cpu - before.cpu), usec)

    @property
    def commands_per_job(self) -> float:
        return sum(self.calls.values()) / self.jobs

    @property
    def scripts_per_job(self) -> float:
        """Lua script calls (EVALSHA and kin) per job."""
        return sum(self.calls.get(name, 0) for name in SCRIPT_CALLS) / self.jobs

    @property
    def cpu_us_per_job(self) -> float:
        return self.cpu * 1e6 / self.jobs

    @property
    def script_us_per_job(self) -> float:
        """Microseconds of Lua script calls per job, the commands they ran included."""
        return sum(self.usec.get(name, 0) for name in SCRIPT_CALLS) / self.jobs

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The most frequent commands, per job."""
        ranked = sorted(self.calls.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(name, count / self.jobs) for name, count in ranked]


def bytes_per_job(before: int, after: int, jobs: int) -> float:
    """Bytes of Redis memory (INFO memory `used_memory`) per job between two readings."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    return (after - before) / jobs


def meets(value: float, target: float, *, at_most: bool) -> bool:
    """Whether a figure meets its target: at most it (a cost), or at least it (a speed)."""
    return value <= target if at_most else value >= target


def round_trip_limit(ops_per_second: float, trips_per_job: float) -> float:
    """Jobs/s a system could reach if a job cost nothing but its round trips, each as fast as
    the baseline's: ops/s ÷ round trips per job."""
    if trips_per_job <= 0:
        raise ValueError("round trips per job must be positive")
    return ops_per_second / trips_per_job
