"""The operator's one HTTP port: /healthz (liveness), /readyz (readiness), /metrics.

- /healthz answers 200 while the event loop runs: a stuck loop cannot answer, and a crashed
  kopf ends the process anyway.
- /readyz answers 200 once the replica is of use: the active one when kopf is watching, a
  standby while it waits for the Lease (a standby that never became ready would stall every
  rolling update of a two-replica Deployment), 503 before that and while stopping.
- /metrics is the Prometheus text format of this process's registry (metrics.py).
"""

from __future__ import annotations

import re

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from atomicqueues.errors import ConfigError

LISTEN_RE = re.compile(r"^(?:\[(?P<ip6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


class Health:
    """What the probes report; the operator sets `state` as it goes."""

    STATES = ("starting", "standby", "active", "stopping")

    def __init__(self) -> None:
        self.state = "starting"

    def set(self, state: str) -> None:
        assert state in self.STATES, state
        self.state = state

    @property
    def ready(self) -> bool:
        return self.state in ("standby", "active")


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::]:8080` for IPv6, `:8080` for every address) to (host, port)."""
    found = LISTEN_RE.match(listen)
    port = int(found["port"]) if found else 0
    if found is None or not 0 < port < 65536:
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT, for example 0.0.0.0:8080")
    return found["ip6"] or found["host"] or "0.0.0.0", port


class Endpoints:
    """The HTTP server, started and stopped by the operator."""

    def __init__(self, health: Health) -> None:
        self.health = health
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        self._serving = False

    async def start(self, listen: str) -> None:
        host, port = parse_listen(listen)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"--listen {listen}: {exc.strerror or exc}") from None
        self._serving = True

    async def stop(self) -> None:
        """Close the port and its connections (a second call does nothing)."""
        if self._serving:
            self._serving = False
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self.health.ready
        return web.Response(text=f"{self.health.state}\n", status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
