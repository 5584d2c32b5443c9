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
