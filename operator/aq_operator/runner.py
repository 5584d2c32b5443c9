"""The kopf operator: one reconcile loop per EntityWorkerPool, and the handlers that wake it.

An `Operator` owns its own kopf registry (nothing is registered at import time, so tests run
several side by side) and the one API client its pools share. kopf does the watching and the
Kubernetes Events; each pool's `KubePool` does the reconciling, one pass at a time, in a task
the operator starts when the pool's first watch event arrives and stops when it is deleted.
With several replicas, a Lease elects the one that runs kopf (leader.py); the others wait as
standbys. The HTTP port (endpoints.py) serves the probes and the metrics, standby or not.

Wake-ups: a change of one of a pool's pods (a kopf watch on pods with the pool label) and a new
generation of the pool's spec set the pool's wake event; the pool's own Redis subscription does
the same for "entity has work"; the resync interval catches anything missed.

Only watch-event handlers (no kopf daemons or change handlers): kopf puts no finalizer on a
pool and writes no annotations, so deleting a pool never waits for an operator, and its pods go
by garbage collection. Namespace and CRD scanning are off: the operator watches the namespaces
it is given (exact names) or the whole cluster, with no permission to list namespaces or CRDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Collection, Iterator
from typing import Any, NamedTuple

import kopf

from atomicqueues.aio import cancel_and_wait, wait_any
from atomicqueues.pools.spec import API_GROUP, API_VERSION

from . import metrics, pods
from .config import Config
from .crd import PLURAL
from .endpoints import Endpoints, Health
from .kube import Kube
from .leader import LeaderElection
from .login import default_login
from .pool import KubePool

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0
"""How long a pool's current pass may take to end when the pool stops being served."""
RESTART_DELAY = 5.0
LoginFn = Callable[..., kopf.ConnectionInfo | None]


class Served(NamedTuple):
    """A pool being served: its reconcile loop runs in `task` until `stop` is set."""

    pool: KubePool
    stop: asyncio.Event
    task: asyncio.Task[None]


class Operator:
    """The operator's handlers, registry and shared state."""

    def __init__(self, config: Config | None = None, *, login: LoginFn = default_login) -> None:
        self.config = config or Config.from_env()
        self.registry = kopf.OperatorRegistry()
        self._served: dict[tuple[str, str], Served] = {}
        self._kopf_stop: asyncio.Event | None = None
        self.connection: kopf.ConnectionInfo | None = None
        self.health = Health()
        self.endpoints = Endpoints(self.health)
        self.leading: Callable[[], bool] = lambda: True
        """False when this replica may have lost the leader Lease: pools change nothing."""
        self.kube = Kube(lambda: self.connection)
        self._login = login
        self._register()

    def settings(self) -> kopf.OperatorSettings:
        settings = kopf.OperatorSettings()
        settings.scanning.disabled = True
        settings.posting.level = logging.INFO
        settings.watching.reconnect_backoff = 1.0
        return settings

    def pool(self, namespace: str | None, name: str | None) -> KubePool | None:
        """The pool this operator serves by that name, if any."""
        served = self._served.get((namespace or "default", name or ""))
        return None if served is None else served.pool

    def _serve(self, key: tuple[str, str], pool: KubePool) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(_serve(pool, stop), name=f"pool {key[0]}/{key[1]}")
        self._served[key] = Served(pool, stop, task)

    async def _stop_serving(self, key: tuple[str, str]) -> None:
        """Stop serving a pool: its current pass ends first (30 s at most)."""
        served = self._served.pop(key, None)
        if served is not None:
            served.stop.set()
            await asyncio.wait([served.task], timeout=STOP_TIMEOUT)
            await cancel_and_wait([served.task])
        metrics.forget_pool(*key)

    def poke(self, namespace: str | None, pool: str | None) -> None:
        found = self.pool(namespace, pool)
        if found is not None:
            found.wake.set()

    def _register(self) -> None:
        registry = self.registry

        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            info = self._login(**kwargs)
            if info is not None:
                self.connection = info
            return info

        @kopf.on.cleanup(registry=registry)
        async def cleanup(**_: Any) -> None:
            # Raised here too when kopf stops on a signal: else kopf waits 5 s for its own task
            # that waits for the flag, among what it takes for hung tasks.
            if self._kopf_stop is not None:
                self._kopf_stop.set()
            # And the HTTP port's connections (a scraper's keep-alive) would count as hung too.
            await self.endpoints.stop()
            await asyncio.gather(*(self._stop_serving(key) for key in list(self._served)))

        @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
        async def pool_event(type: str | None, body: kopf.Body, **_: Any) -> None:
            key = (body.metadata.namespace or "default", body.metadata.name or "")
            if type == "DELETED":
                await self._stop_serving(key)
                return
            pool = self.pool(*key)
            if pool is not None and pool.uid != body.metadata.uid:  # deleted and made anew
                await self._stop_serving(key)
                pool = None
            if pool is None:
                self._serve(key, KubePool(body, self.kube, self.config, lambda: self.leading()))
                return
            pool.body = body
            if pool.generation_seen != body.metadata.get("generation"):
                pool.wake.set()

        @kopf.on.event(
            "",
            "v1",
            "pods",
            registry=registry,
            labels={pods.LABEL_MANAGED_BY: pods.MANAGED_BY, pods.LABEL_POOL: kopf.PRESENT},
        )
        async def pod_changed(body: kopf.Body, **_: Any) -> None:
            self.poke(body.metadata.namespace, body.metadata.labels.get(pods.LABEL_POOL))

    async def run(
        self,
        *,
        namespaces: Collection[str] = (),
        leader: LeaderElection | None = None,
        listen: str | None = None,
        stop_flag: asyncio.Event | None = None,
        ready_flag: asyncio.Event | None = None,
    ) -> None:
        """Run until stopped (SIGTERM/SIGINT, or `stop_flag`). No namespaces: the whole cluster.

        With `leader`, wait as a standby until this replica holds the Lease, then run; raises
        `LeadershipLost` (after stopping every pool) when the Lease is lost."""
        stop = stop_flag if stop_flag is not None else asyncio.Event()
        if listen:
            await self.endpoints.start(listen)
        try:
            if leader is None:
                await self._run_kopf(namespaces, stop, ready_flag)
                return
            with _stop_on_signals(stop):
                self.health.set("standby")
                if not await leader.acquire(stop):
                    return
            self.leading = leader.leading
            # One event ends both kopf and the renewing: set by `stop`, by a lost Lease, and by
            # kopf's cleanup when kopf stops on a signal.
            kopf_stop = asyncio.Event()
            forwarding = asyncio.create_task(_forward(stop, kopf_stop))
            holding = asyncio.create_task(leader.hold(kopf_stop))
            holding.add_done_callback(lambda _: kopf_stop.set())
            try:
                await self._run_kopf(namespaces, kopf_stop, ready_flag)
            finally:
                kopf_stop.set()
                await cancel_and_wait([forwarding])
                await asyncio.gather(holding, return_exceptions=True)
                await leader.release()
            lost = None if holding.cancelled() else holding.exception()
            if lost is not None:
                raise lost
        finally:
            self.health.set("stopping")
            metrics.LEADER.set(0)
            await self.endpoints.stop()
            await self.kube.close()  # last: the leader releases its Lease through it

    async def _run_kopf(
        self, namespaces: Collection[str], stop: asyncio.Event, ready_flag: asyncio.Event | None
    ) -> None:
        self._kopf_stop = stop
        ready = asyncio.Event()

        async def when_ready() -> None:
            await ready.wait()
            self.health.set("active")
            metrics.LEADER.set(1)
            if ready_flag is not None:
                ready_flag.set()

        announcing = asyncio.create_task(when_ready())
        try:
            await kopf.operator(
                registry=self.registry,
                settings=self.settings(),
                clusterwide=not namespaces,
                namespaces=list(namespaces),
                standalone=True,
                stop_flag=stop,
                ready_flag=ready,
            )
        finally:
            announcing.cancel()


async def _forward(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop` while a standby waits (kopf handles them once it runs)."""
    loop = asyncio.get_running_loop()
    handled = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def _serve(pool: KubePool, stop: asyncio.Event) -> None:
    """Run a pool until `stop`; should its loop itself fail, log and start it again."""
    while not stop.is_set():
        try:
            await pool.run(stop)
        except Exception:
            log.exception("pool %s/%s: its loop failed; again in %gs", *pool.key, RESTART_DELAY)
            await wait_any([stop], RESTART_DELAY)
