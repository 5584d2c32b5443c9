"""`aq demo`'s live table fits the terminal it runs in: in 80 columns nothing is cut (before,
`progr…` and `432/4…`); narrower, its headers wrap instead (by word down to 60 columns)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from atomicqueues.pools.demo import LIVE_COLUMNS, Figures, live_table

FIGURES = Figures(
    done=432,
    total=432,
    active=36,
    workers=12,
    rate=1234,
    counts={"waiting": 1180, "active": 12, "retrying": 1, "dead": 0},
)


@pytest.mark.parametrize("width", [80, 60, 45, 120])
def test_the_live_table_fits_the_terminal(width: int) -> None:
    out = io.StringIO()
    console = Console(width=width, file=out, color_system=None, force_terminal=False)
    console.print(live_table(FIGURES, console.width))
    text = out.getvalue()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    assert "…" not in text
    assert "432/432 jobs done  1234 jobs/s" in text
    assert "1180" in text
    if width < 60:
        return  # it fits; words of the headers may break
    words = " ".join(text.replace("┃", " ").split())
    for column in LIVE_COLUMNS:
        for word in column.split():
            assert word in words, (column, text)
    if width >= 80:
        assert all(column in text for column in LIVE_COLUMNS), text  # whole, on one line
