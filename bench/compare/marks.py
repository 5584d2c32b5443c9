"""Marks: every benchmark handler, of every system, records its start in a file the same way.

Why this exists: the systems report completion in different ways, and asking each one would
cost Redis commands that are not the system's own. Instead every handler appends one line,
`SENT START\n` (seconds since the epoch: when the producer called enqueue, and when the
handler began), to the file named by `AQ_BENCH_MARKS`, with one `write` on a descriptor opened
with O_APPEND, so lines of concurrent processes and threads never interleave. The benchmark
counts lines to know how many jobs have started, and reads the times for throughput and
latency. The same few microseconds of file I/O are in every system's handler. Redis is not
touched, so the server's counters hold only the system's own commands.

Standard library only: this module is imported inside the competitors' virtualenvs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

ENV_MARKS = "AQ_BENCH_MARKS"
ENV_REDIS_URL = "AQ_BENCH_REDIS_URL"
ENV_CONCURRENCY = "AQ_BENCH_CONCURRENCY"
ENV_OPTIONS = "AQ_BENCH_OPTIONS"
"""JSON options of a driver (for example AtomicQueues' entities and concurrency)."""

_fd: int | None = None
_fd_pid = 0


def mark(sent: float) -> None:
    """Record that a job enqueued at `sent` starts now. The first statement of every handler."""
    global _fd, _fd_pid
    now = time.time()
    if _fd is None or _fd_pid != os.getpid():
        _fd = os.open(os.environ[ENV_MARKS], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fd_pid = os.getpid()
    os.write(_fd, f"{sent:.6f} {now:.6f}\n".encode())


@dataclass
class MarkReader:
    """Reads a marks file as it grows (the benchmark's side)."""

    path: Path
    marks: list[tuple[float, float]] = field(default_factory=list)
    _offset: int = 0
    _rest: bytes = b""

    def read(self) -> int:
        """Take in what was appended since the last call; returns the number of marks."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return len(self.marks)
        self._offset += len(data)
        data = self._rest + data
        lines = data.split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            sent, start = line.split()
            self.marks.append((float(sent), float(start)))
        return len(self.marks)
