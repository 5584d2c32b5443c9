#!/usr/bin/env python3
"""Write the table of values into a chart's README.md, from the comments of its values.yaml.

A `# -- TEXT` comment (continued by the `#` lines under it) documents the key below it; its
row gives the key's path, its default (values.yaml's own value, as JSON) and the text. A key
with no `# --` comment is a mapping whose keys have theirs; a leaf value that no comment
covers is an error. The table goes between the README's two markers below; the rest of the
README is written by hand.

Usage: scripts/chart-readme.py [--check] [CHART]    (CHART: default helm/atomicqueues)
--check writes nothing and exits 1 when the README is not what this script would write
(tests/chart/test_chart_readme.py runs it so).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BEGIN = "<!-- values: written by scripts/chart-readme.py from values.yaml; do not edit -->"
END = "<!-- end of values -->"
DEFAULT_CHART = Path(__file__).resolve().parents[1] / "helm" / "atomicqueues"

KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*):(.*)$")
DOC = re.compile(r"^(\s*)# --(?: (.*))?$")
MORE = re.compile(r"^(\s*)#(?: (.*))?$")


class Undocumented(Exception):
    """values.yaml holds a value that no `# --` comment describes."""


@dataclass(frozen=True)
class Row:
    path: str
    default: Any
    text: str


def described_keys(values_text: str) -> dict[str, str]:
    """The path of each key with a `# --` comment, and its text (lines joined)."""
    found: dict[str, str] = {}
    parents: list[tuple[int, str]] = []  # (indent, key) of the mappings around a line
    pending: list[str] | None = None
    pending_indent = -1
    for line in values_text.splitlines():
        if doc := DOC.match(line):
            pending, pending_indent = [doc.group(2) or ""], len(doc.group(1))
            continue
        more = MORE.match(line)
        if more and pending is not None and len(more.group(1)) == pending_indent:
            pending.append(more.group(2) or "")
            continue
        key = KEY.match(line)
        if not key:
            if line.strip() and not line.lstrip().startswith(("#", "-")):
                pending = None
            continue
        indent, name = len(key.group(1)), key.group(2)
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = ".".join([*(k for _, k in parents), name])
        if pending is not None and pending_indent == indent:
            found[path] = " ".join(part.strip() for part in pending if part.strip())
        pending = None
        parents.append((indent, name))
    return found


def rows(values_text: str) -> list[Row]:
    """One row per described key, in the file's order; Undocumented names a value that none
    covers (itself or a mapping around it)."""
    described = described_keys(values_text)
    values = yaml.safe_load(values_text) or {}

    def walk(node: Any, path: str) -> list[Row]:
        if path in described:
            return [Row(path, node, described[path])]
        if isinstance(node, dict) and node:
            return [r for k, v in node.items() for r in walk(v, f"{path}.{k}" if path else k)]
        raise Undocumented(f"values.yaml: {path} has no `# --` comment above it")

    return walk(values, "")


def _cell(text: str) -> str:
    """Text for a table cell: a | would end the cell, and <release> would read as a tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(found: list[Row]) -> str:
    lines = ["| key | default | description |", "|---|---|---|"]
    for row in found:
        default = json.dumps(row.default, ensure_ascii=False)
        lines.append(f"| `{row.path}` | `{_cell(default)}` | {_cell(row.text)} |")
    return "\n".join(lines) + "\n"


def readme_with(readme: str, values_text: str) -> str:
    """The README with its values section (between BEGIN and END) written anew."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise Undocumented(f"README.md: no values section (a line {BEGIN} and a line {END})")
    return readme[: start + len(BEGIN)] + "\n\n" + table(rows(values_text)) + "\n" + readme[end:]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chart-readme.py", description=__doc__)
    parser.add_argument("chart", nargs="?", type=Path, default=DEFAULT_CHART)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    readme_file = args.chart / "README.md"
    try:
        old = readme_file.read_text(encoding="utf-8")
        new = readme_with(old, (args.chart / "values.yaml").read_text(encoding="utf-8"))
    except (OSError, Undocumented) as exc:
        print(f"chart-readme: {exc}", file=sys.stderr)
        return 1
    if new == old:
        return 0
    if args.check:
        print(
            f"chart-readme: {readme_file} is out of date with values.yaml: run "
            "scripts/chart-readme.py",
            file=sys.stderr,
        )
        return 1
    readme_file.write_text(new, encoding="utf-8")
    print(f"wrote {readme_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
