"""The chart README's table of values is written from values.yaml by scripts/chart-readme.py.

Why: a value added, removed or described anew in values.yaml must reach the README a user
reads; the test fails while the README is out of date, and a value without a `# --` comment
cannot be left out of the table.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from chart_render import CHART, REPO

SCRIPT = REPO / "scripts" / "chart-readme.py"


def chart_readme(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def copy_of_chart(tmp_path: Path) -> Path:
    chart = tmp_path / "chart"
    chart.mkdir()
    for name in ("values.yaml", "README.md"):
        shutil.copy(CHART / name, chart / name)
    return chart


def test_the_readme_is_up_to_date_with_values_yaml() -> None:
    done = chart_readme("--check")
    assert done.returncode == 0, done.stderr
    readme = (CHART / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    assert "| `operator.leaseDurationSeconds` | `15` | Seconds a silent leader" in readme
    assert '| `metrics.dashboard.labels` | `{"grafana_dashboard": "1"}` |' in readme
    assert len(rows) > 50


def test_a_changed_comment_makes_it_stale_until_the_script_runs(tmp_path: Path) -> None:
    chart = copy_of_chart(tmp_path)
    values = chart / "values.yaml"
    values.write_text(
        values.read_text().replace(
            "# -- Its tag; empty means the chart's appVersion.",
            "# -- Its tag | empty means\n    # the chart's <appVersion>.",
            1,
        )
    )
    stale = chart_readme("--check", chart)
    assert stale.returncode == 1
    assert stale.stderr.strip().endswith(
        "out of date with values.yaml: run scripts/chart-readme.py"
    )
    written = chart_readme(chart)
    assert written.returncode == 0, written.stderr
    assert chart_readme("--check", chart).returncode == 0
    readme = (chart / "README.md").read_text()
    assert (
        '| `operator.image.tag` | `""` | Its tag \\| empty means the chart\'s &lt;appVersion&gt;. |'
        in readme
    )
    # the hand-written part stays as it was
    before = (CHART / "README.md").read_text()
    assert readme.split("## Values")[0] == before.split("## Values")[0]


def test_a_value_without_a_comment_is_refused_by_name(tmp_path: Path) -> None:
    chart = copy_of_chart(tmp_path)
    values = chart / "values.yaml"
    values.write_text(
        values.read_text().replace("  port: 8080\n", "  port: 8080\n  newKnob: 3\n", 1)
    )
    done = chart_readme(chart)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "chart-readme: values.yaml: operator.newKnob has no `# --` comment above it"
    )
