"""The report's arithmetic: spreads, ratios within a repetition, Redis cost per job."""

from __future__ import annotations

import pytest

from compare.stats import (
    RedisCost,
    ServerSnapshot,
    Spread,
    by_rep,
    bytes_per_job,
    meets,
    percentile,
    ratios,
    round_trip_limit,
    throughput,
)


def snapshot(
    calls: dict[str, int], cpu: float, usec: dict[str, int] | None = None
) -> ServerSnapshot:
    return ServerSnapshot(calls, usec or {}, cpu)


def test_spread_is_median_and_range() -> None:
    s = Spread.of([3.0, 1.0, 2.0])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert s.relative == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        pytest.param([5.0], 99, 5.0, id="one value"),
        pytest.param([1.0, 2.0, 3.0, 4.0, 5.0], 50, 3.0, id="median"),
        pytest.param([float(i) for i in range(1, 101)], 99, 99.01, id="p99 of 1..100"),
        pytest.param([10.0, 0.0], 100, 10.0, id="max, unsorted"),
    ],
)
def test_percentile(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == pytest.approx(expected)


def test_ratios_pair_values_of_the_same_repetition_only() -> None:
    ours = by_rep([100.0, 200.0, 300.0])
    theirs = by_rep([50.0, 50.0], reps=[0, 2])  # repetition 1 failed for them
    assert ratios(ours, theirs) == [2.0, 6.0]
    assert ratios(ours, {0: 0.0}) == []
    with pytest.raises(ValueError, match="one repetition number per value"):
        by_rep([1.0], reps=[0, 1])


def test_throughput_counts_from_first_start_to_last() -> None:
    assert throughput([10.0, 12.0, 11.0, 10.5, 14.0]) == pytest.approx(4 / 4.0)
    with pytest.raises(ValueError, match="at least two"):
        throughput([1.0])


def test_redis_cost_per_job_leaves_the_benchmarks_own_commands_out() -> None:
    before = snapshot({"evalsha": 10, "info": 3, "blpop": 1}, cpu=1.0, usec={"evalsha": 100})
    after = snapshot(
        {"evalsha": 2010, "info": 9, "blpop": 201, "hget": 7000, "flushall": 1, "lpush": 0},
        cpu=1.5,
        usec={"evalsha": 200_100},
    )
    cost = RedisCost.between(before, after, jobs=1000)
    assert cost.calls == {"evalsha": 2000, "blpop": 200, "hget": 7000}
    assert cost.commands_per_job == pytest.approx(9.2)
    assert cost.scripts_per_job == pytest.approx(2.0)
    assert cost.cpu_us_per_job == pytest.approx(500.0)
    assert cost.script_us_per_job == pytest.approx(200.0)
    assert cost.top(2) == [("hget", 7.0), ("evalsha", 2.0)]
    with pytest.raises(ValueError, match="jobs"):
        RedisCost.between(before, after, jobs=0)


def test_snapshot_prefers_the_main_threads_cpu() -> None:
    stats = {"cmdstat_get": {"calls": 4, "usec": 9, "usec_per_call": 2.25}}
    cpu = {
        "used_cpu_sys": 10.0,
        "used_cpu_user": 20.0,
        "used_cpu_sys_main_thread": 1.0,
        "used_cpu_user_main_thread": 2.0,
    }
    snap = ServerSnapshot.from_info(stats, cpu)
    assert (snap.calls, snap.usec, snap.cpu) == ({"get": 4}, {"get": 9}, 3.0)
    old = ServerSnapshot.from_info(stats, {"used_cpu_sys": 10.0, "used_cpu_user": 20.0})
    assert old.cpu == 30.0


def test_round_trip_limit() -> None:
    # 8,000 round trips/s and 2 round trips per job: at most 4,000 jobs/s.
    assert round_trip_limit(8000.0, 2.0) == 4000.0
    with pytest.raises(ValueError, match="positive"):
        round_trip_limit(8000.0, 0.0)


def test_a_clusters_masters_are_summed_into_one_snapshot() -> None:
    masters = [
        snapshot({"evalsha": 10, "hget": 5}, cpu=1.0, usec={"evalsha": 100}),
        snapshot({"evalsha": 20, "cluster|slots": 1}, cpu=0.5, usec={"evalsha": 50}),
        snapshot({}, cpu=0.25),
    ]
    total = ServerSnapshot.total(masters)
    assert total.calls == {"evalsha": 30, "hget": 5, "cluster|slots": 1}
    assert total.usec == {"evalsha": 150}
    assert total.cpu == pytest.approx(1.75)
    # The cost between two summed readings is the cost of the whole Cluster.
    later = ServerSnapshot.total([snapshot({"evalsha": 40}, cpu=2.0), *masters[1:]])
    assert RedisCost.between(total, later, jobs=10).calls == {"evalsha": 30}
    with pytest.raises(ValueError, match="no snapshots"):
        ServerSnapshot.total([])


def test_bytes_per_job_and_targets() -> None:
    assert bytes_per_job(1_000_000, 21_000_000, 20_000) == 1000.0
    assert bytes_per_job(1_000_000, 999_000, 1000) == -1.0  # Redis freed more than it grew
    with pytest.raises(ValueError, match="jobs"):
        bytes_per_job(0, 1, 0)
    assert meets(1.2, 1.2, at_most=True)
    assert not meets(1.21, 1.2, at_most=True)
    assert meets(20_000.0, 20_000.0, at_most=False)
    assert not meets(19_999.0, 20_000.0, at_most=False)
