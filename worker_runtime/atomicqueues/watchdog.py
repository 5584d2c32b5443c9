"""The last line of the lease guarantee: end the process when a job outlives its lease.

A worker stops a job whose lease it can no longer be sure of by cancelling its handler
(worker.py). That needs the event loop, and a handler that blocks it (a blocking call in async
code) or swallows the cancellation would run on after Redis gave the entity to another worker.
This thread watches the deadline of every running job on the monotonic clock and, when a job
is still running `reaction` seconds after it first saw its deadline passed, ends the process at
once, before the lease can pass on: the job runs again elsewhere under a new lease, and whoever
supervises the worker (`aq up`, Kubernetes) starts a new one. The reaction time is the
handler's chance to give control back once cancelled; it is also what a process that was
frozen (SIGSTOP, a suspended VM) gets on waking before it is ended.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable

EXIT_LEASE_OVERRUN = 70
"""Exit code of a worker ended by the watchdog (EX_SOFTWARE)."""


class Watchdog:
    """A daemon thread that ends the process when a watched deadline passes."""

    def __init__(
        self, every: float, reaction: float, end: Callable[[str], None] | None = None
    ) -> None:
        self.every = every
        self.reaction = reaction
        self.end = end or end_process
        """What happens to an overrun (default: `end_process`; tests that run workers in their
        own process put something gentler here)."""
        self._watched: dict[Hashable, tuple[Callable[[], float], str]] = {}
        self._overdue: dict[Hashable, float] = {}  # key -> when it was first seen overdue
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aq-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def watch(self, key: Hashable, deadline: Callable[[], float], what: str) -> None:
        """End the process if `key` is still watched `reaction` seconds after `deadline()`
        (`time.monotonic()` seconds, read anew at every check, so a renewal moves it on) was
        first seen passed."""
        with self._lock:
            self._watched[key] = (deadline, what)

    def unwatch(self, key: Hashable) -> None:
        with self._lock:
            self._watched.pop(key, None)
            self._overdue.pop(key, None)

    def _run(self) -> None:
        while not self._stopped.wait(self.every):
            now = time.monotonic()
            with self._lock:
                for key, (deadline, what) in self._watched.items():
                    if now < deadline():
                        self._overdue.pop(key, None)
                        continue
                    seen = self._overdue.setdefault(key, now)
                    if now - seen >= self.reaction:
                        self.end(
                            f"{what} is still running {now - deadline():.3f}s past the moment "
                            "its lease may end; the handler did not give control back, so the "
                            "worker exits now and the job runs again under a new lease"
                        )
                        self._overdue[key] = now  # once per reaction time, if `end` returns


def end_process(why: str) -> None:
    """End the process at once (exit code `EXIT_LEASE_OVERRUN`), saying why."""
    # Straight to the file descriptor, without logging's locks: the thread that holds them may
    # be the one that is stuck.
    message = f"aq worker: {why} (exit code {EXIT_LEASE_OVERRUN})\n"
    os.write(2, message.encode("utf-8", "replace"))
    os._exit(EXIT_LEASE_OVERRUN)
