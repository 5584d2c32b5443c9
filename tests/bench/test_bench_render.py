"""The report's markdown, rendered from figures alone."""

from __future__ import annotations

from typing import Any

from compare import render
from compare.systems import SYSTEMS


def results(**figures: dict[str, Any]) -> dict[str, Any]:
    keys = ["aq-1000", "aq-1", "aq-1xN", "dramatiq"]
    return {
        "command": "python bench/report.py --repeat 2",
        "date": "2026-11-30 04:00 UTC",
        "commit": "abc1234",
        "machine": {
            "cpu": "A CPU",
            "cores": 2,
            "memory": "24 GiB",
            "os": "Linux",
            "redis": "redis-server 7.0",
            "python": "3.11.7",
            "load_start": 1.0,
            "load_end": 2.0,
            "scaling": {
                "entities": 3,
                "cold": [0.4, 0.5, 0.45],
                "reaction": [0.005, 0.004, 0.006],
                "warm": [0.002, 0.003, 0.002],
                "import": [0.4, 0.41],
            },
            "podstart": {"entities": 2, "reaction": [0.020, 0.030], "post": [0.005, 0.007]},
        },
        "jobs": 20000,
        "repeat": 2,
        "versions": {"dramatiq": {"python": "3.11.7", "dramatiq": "2.2.1"}},
        "systems": [render.system_dict(s) for s in SYSTEMS if s.key in keys],
        "figures": figures,
        "limits": {"evalsha_ops": [8000.0, 6000.0], "evalsha_rtt": [0.0001, 0.00012]},
        "failures": [],
    }


def test_table_aligns_numbers_right() -> None:
    out = render.table(["name", "n"], [["a", "1"], ["b", "22"]])
    assert out.splitlines() == ["| name | n |", "| --- | ---: |", "| a | 1 |", "| b | 22 |"]


def test_spread_formats_median_and_range() -> None:
    assert render.spread([], render.fmt_rate) == "–"
    assert render.spread([1234.4], render.fmt_rate) == "1,234"
    assert render.spread([3000.0, 1000.0, 2000.0], render.fmt_rate) == "2,000 (1,000–3,000)"
    assert render.fmt_ms(0.00123) == "1.23 ms"
    assert render.fmt_ms(2.5) == "2.50 s"


def test_report_shows_ratios_within_repetitions_and_the_order_caveat() -> None:
    figures: dict[str, Any] = {
        "aq-1000": {
            "rep": [0, 1],
            "rate": [2000.0, 1000.0],
            "cmd.evalsha": [2.0, 2.0],
            "cmd.blpop": [0.5, 0.5],
        },
        "aq-1xN": {"rep": [0, 1], "rate": [4000.0, 2000.0]},
        "aq-1": {"rep": [1], "rate": [500.0]},  # repetition 0 failed
        "dramatiq": {"rep": [0, 1], "rate": [4000.0, 1000.0]},
    }
    md = render.report(results(**figures))
    # ours ÷ theirs per repetition: 0.5 and 1.0, median 0.75
    row = "| Dramatiq (Redis broker) | **none** | 2,500 (1,000–4,000) | 0.75× (0.50×–1.00×) |"
    assert row in md
    assert "no per-entity ordering" in md
    # 1 entity in order ÷ 1 entity without order, only where both ran: 500 / 2000
    assert "| AtomicQueues, 1 entity | 500 | 25% |" in md
    # 2.5 round trips per job; 8,000/s ÷ 2.5 = 3,200 jobs/s limit; 2,000 / 3,200 = 62%
    assert "| 2.5 (2.5–2.5) |" in md
    assert "62%" in md
    # pod start on a real API server: p50 25 ms over the 2 entities, the POST floor 6 ms
    assert "| Kubernetes (operator): enqueue → the entity's pod created | 25.0 ms |" in md
    assert "reference: POST of a pod → its watch event | 6.00 ms |" in md
    assert render.FINDINGS in md


def test_a_pod_start_that_could_not_be_measured_says_why() -> None:
    data = results()
    data["machine"]["podstart"] = {"skipped": "Go is not installed and core is not cached"}
    md = render.report(data)
    assert "not measured in this run: Go is not installed and core is not cached" in md


def test_findings_are_kept_when_the_report_is_rendered_again() -> None:
    first = render.report(results())
    assert render.FINDINGS_PLACEHOLDER.strip() in first
    edited = first.replace(render.FINDINGS_PLACEHOLDER, "We lose on X because Y.\n")
    again = render.report(results(), findings=render.findings_of(edited))
    assert "We lose on X because Y." in again
    assert again.count(render.FINDINGS) == 1
    assert render.findings_of("no such section") == ""


def lean_results() -> dict[str, Any]:
    """Two repetitions with the lean data path's figures: bulk enqueue, Cluster runs, worker
    round trips and memory."""
    figures: dict[str, Any] = {
        "aq-1000": {
            "rep": [0, 1],
            "rate": [2000.0, 1000.0],
            "enqueue_rate": [2000.0, 3000.0],
            "commands_per_job": [50.0, 50.0],
            "cpu_us_per_job": [200.0, 300.0],
        },
        "aq-1000:bulk": {
            "rep": [1],  # repetition 0's bulk enqueue failed
            "enqueue_bulk_rate": [24_000.0],
            "enqueue_bulk_cpu_us_per_job": [30.0],
            "enqueue_bulk_commands_per_job": [11.0],
        },
        "aq-1000-cluster": {
            "rep": [0, 1],
            "rate": [1000.0, 900.0],
            "enqueue_rate": [1500.0, 1500.0],
            "commands_per_job": [55.0, 55.0],
            "cpu_us_per_job": [220.0, 420.0],
        },
        "aq-new": {"rep": [0], "rate": [500.0], "cpu_us_per_job": [400.0]},
        "aq-new-cluster": {"rep": [0, 1], "rate": [400.0, 410.0], "cpu_us_per_job": [600.0, 1.0]},
        "dramatiq": {"rep": [0, 1], "rate": [3000.0, 3000.0], "enqueue_rate": [4000.0, 4000.0]},
    }
    data = results(**figures)
    keys = ["aq-1000", "aq-new", "aq-1000-cluster", "aq-new-cluster", "dramatiq"]
    data["systems"] = [render.system_dict(s) for s in SYSTEMS if s.key in keys]
    data["bulk_chunk"] = 1000
    data["cluster"] = {"masters": 3, "nodes": 3}
    data["worker_trips"] = {
        "rep": [0, 1],
        "per_job": [1.4, 1.6],
        "jobs": 20000,
        "breakdown": "EVALSHA finish ×20000",
    }
    data["memory"] = {
        "jobs": 20000,
        "entities": 1000,
        "waiting_bytes": 812.4,
        "retained_bytes": 1150.0,
        "waiting_bytes_keep0": 800.0,
        "left_bytes_keep0": 15.0,
        "rss": {
            "jobs": [20000, 200000],
            "first": {"VmRSS": 44_000, "VmHWM": 44_100},
            "last": {"VmRSS": 45_100, "VmHWM": 45_200},
            "seconds": 90.0,
        },
    }
    return data


def test_lean_data_path_targets_are_measured_figures_and_ratios_within_repetitions() -> None:
    md = render.report(lean_results())
    # bulk: only repetition 1 succeeded; 24,000 ≥ 20,000
    assert "1,000 jobs a call, 1,000 entities: jobs/s | 24,000 | ≥ 20,000 | yes |" in md
    # one call at a time, ours ÷ Dramatiq's per repetition: 0.5 and 0.75
    assert "ours ÷ Dramatiq (Redis broker) | 0.62× (0.50×–0.75×) | (no target: shown) | – |" in md
    # Cluster ÷ standalone Redis CPU per job, per repetition: 1.1 and 1.4 → median 1.25
    assert (
        "(all masters): AtomicQueues, 1,000 entities | 1.25× (1.10×–1.40×) | ≤ 1.20× | **no** |"
        in md
    )
    # aq-new ran on standalone in repetition 0 only: one ratio, 600 / 400
    assert "every job for a new entity | 1.50× | ≤ 1.20× | **no** |" in md
    assert "every job for a new entity | 1.500 (1.400–1.600) | ≤ 1.5 | yes |" in md
    # RSS 45,100 KiB ÷ 44,000 KiB
    assert "after 200,000 no-op jobs ÷ after 20,000 | 1.02× | ≤ 1.10× | yes |" in md


def test_lean_data_path_details_enqueue_cluster_and_memory() -> None:
    md = render.report(lean_results())
    ours = "AtomicQueues, 1,000 entities"
    assert f"| {ours}: `Client.enqueue`, one call at a time | 2,500 (2,000–3,000) | = 1 |" in md
    # bulk ÷ one call at a time of the same repetition (1): 24,000 / 3,000
    assert f"| {ours}: `Client.enqueue_many`, 1,000 jobs a call | 24,000 | 8.00× |" in md
    dramatiq = "| Dramatiq (Redis broker): one call at a time | 4,000 (4,000–4,000) |"
    assert f"{dramatiq} 1.67× (1.33×–2.00×) |" in md
    assert "Redis spends 30.0 µs of CPU per job of the bulk enqueue (11.0 commands" in md
    # the Cluster runs beside their standalone runs, and nowhere in sections 1 to 5
    assert f"| {ours} | Cluster, 3 masters | 950 (900–1,000) | 55.0 (55.0–55.0) |" in md
    assert "0.70× (0.50×–0.90×) | 1.25× (1.10×–1.40×) |" in md
    throughput = md[md.index("## 1.") : md.index("## 2.")]
    assert "Redis Cluster" not in throughput
    cost = md[md.index("## 3.") : md.index("## 4.")]
    assert "Redis Cluster" not in cost
    # memory
    assert "| a waiting job (enqueued, not run) | 812 B |" in md
    assert "| left per job once run, `keep_completed=0` | 15 B |" in md
    assert "| after 200,000 jobs | 44.0 MiB | peak (VmHWM) 44.1 MiB |" in md
    assert "What they were (last repetition): EVALSHA finish ×20000." in md


def test_a_report_without_the_lean_figures_says_they_were_not_measured() -> None:
    md = render.report(results())  # an older run's figures: none of section 7's
    targets = md[md.index("## 7.") : md.index(render.FINDINGS)]
    assert targets.count("not measured in this run") == 5
    assert "Not measured in this run: `--memory-jobs 0`." in targets
