"""Handler marks: one line per job start, read back as the file grows."""

from __future__ import annotations

from pathlib import Path

import pytest

from compare import marks


def test_marks_are_appended_and_read_incrementally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.marks"
    monkeypatch.setenv(marks.ENV_MARKS, str(path))
    monkeypatch.setattr(marks, "_fd", None)
    reader = marks.MarkReader(path)
    assert reader.read() == 0  # no file yet
    marks.mark(100.0)
    marks.mark(101.5)
    assert reader.read() == 2
    with path.open("ab") as f:
        f.write(b"102.000000 10")  # a line still being written
    assert reader.read() == 2
    with path.open("ab") as f:
        f.write(b"3.000000\n")
    assert reader.read() == 3
    sent = [s for s, _ in reader.marks]
    assert sent == [100.0, 101.5, 102.0]
    assert reader.marks[2][1] == 103.0
    assert all(start >= s for s, start in reader.marks[:2])
