"""bench/soak.py: its smoke mode runs end to end with every fault (so the command cannot rot),
and the history checks it counts with tell each kind of finding apart."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import soak
from runtime.workers import EffectSpan, Run, Violation, history_violations

SOAK = Path(soak.__file__).resolve()


@pytest.mark.slow
def test_the_smoke_mode_mixes_every_fault_in_and_finds_nothing_wrong(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(SOAK), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    data = json.loads(out.read_text())
    figures = data["figures"]
    assert set(data["faults"]) == set(soak.FAULTS), data["faults"]
    assert figures["enqueued"] > 300, figures
    assert figures["completed"] == figures["enqueued"], figures
    assert data["memory"], "no long-lived worker's memory was read"
    assert all(m["growth_mib"] is not None for m in data["memory"]), data["memory"]
    assert done.stdout.rstrip().endswith("PASS"), done.stdout


def run(seq: int, start: float, end: float, token: int, *, attempt: int = 1) -> Run:
    return Run("e", f"e-{seq}", seq, token, attempt, 1, "w", start, end, "end")


def kinds(found: list[Violation]) -> Counter[str]:
    return Counter(v.kind for v in found)


def test_history_violations_name_overlaps_order_reruns_and_missing_jobs() -> None:
    # seq 1 starts before seq 0 has ended; then seq 0 starts again, after seq 1.
    runs = [run(0, 0.0, 1.0, 1), run(1, 0.5, 2.0, 2), run(0, 3.0, 4.0, 3, attempt=2)]
    _, found = history_violations(runs, {"e": 2}, {})
    assert kinds(found) == {"overlap": 1, "order": 1}
    # A job that ran again after a run that ended, its process alive: a duplicate...
    again = [run(0, 0.0, 1.0, 1), run(0, 2.0, 3.0, 2, attempt=2)]
    assert kinds(history_violations(again, {"e": 1}, {})[1]) == {"rerun": 1}
    # ...unless the process was killed after the handler's end, before the outcome counted.
    assert history_violations(again, {"e": 1}, {1: 1.5})[1] == []
    assert kinds(history_violations(again, {"e": 2}, {1: 1.5})[1]) == {"incomplete": 1}


def test_an_unfenced_overlap_is_put_on_a_frozen_process_only_if_the_fence_refused_it() -> None:
    a = EffectSpan("e", "e-0", 1, 1, 11, 0.0, 5.0, True)
    b = EffectSpan("e", "e-0", 2, 2, 12, 2.0, 3.0, True)
    overlap = Violation("overlap", "e", "", (a, b))
    key = ("e", "e-0", 1, 1)
    refused = {key: [(0.0, False), (5.0, True)]}
    accepted = {key: [(0.0, False), (5.0, False)]}
    assert soak.paused_and_fenced(overlap, {11: [(1.0, 4.0)]}, refused)
    assert not soak.paused_and_fenced(overlap, {11: [(1.0, 4.0)]}, accepted)
    assert not soak.paused_and_fenced(overlap, {}, refused)  # never frozen
    assert not soak.paused_and_fenced(overlap, {11: [(2.5, 4.0)]}, refused)  # frozen too late
