"""Reconcile benchmark: how long one pass of the operator takes for a pool with many entities.

Why this exists: the operator runs one pass per pool at a time, on every "entity has work"
event; a pass that grows slow with the number of active entities would delay every pool's
reaction. This script measures `KubePool.reconcile_once` (operator/aq_operator/pool.py) for a
pool with N active entities (10,000 by default), each with a waiting job, against the mock
Kubernetes API the operator's fast tests use (kmock, in this process) and a private
redis-server:

- steady: every entity already has its running worker pod (N pods): the pass reads the Redis
  index and the pod list, plans, and has nothing to do;
- scale-up: no pods yet: the pass plans for N entities and creates the pods its start budget
  allows (the default `maxStartsPerSecond`, 20).

Baselines, measured in the same run on the same servers: listing the N pods alone, reading the
Redis index alone, and the pure `plan()` alone, so the pass is reported as a ratio of what it
cannot avoid. See bench/README.md, "Reconcile".

    python bench/reconcile.py [--entities N] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import kmock
import kopf
from kmock._internal.apps import Server

from aq_operator.config import Config
from aq_operator.kube import Kube
from aq_operator.pods import pod_body, pool_labels, worker_state
from aq_operator.pool import KubePool
from atomicqueues.client import Client
from atomicqueues.config import Settings
from atomicqueues.index_reads import IndexReads
from atomicqueues.pools.reconciler import StartWorker, plan
from atomicqueues.pools.spec import PoolSpec
from hotpath import RedisServer, fmt_ms, run_on_private_redis

NAMESPACE = "bench"
POOL = "accounts"
PREFIX = "reconcile"


def manifest(entities: int, redis_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "atomicqueues.io/v1alpha1",
        "kind": "EntityWorkerPool",
        "metadata": {
            "name": POOL,
            "namespace": NAMESPACE,
            "uid": "uid-bench",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {
            "entityType": "account",
            "handlers": "app.handlers:registry",
            "image": "example/worker:1",
            "redis": {"url": redis_url, "prefix": PREFIX},
            "workers": {"maxTotal": entities},
            # Neither resync nor sweep during the run: only the passes this script asks for.
            "timing": {
                "heartbeatTTLSeconds": 600,
                "heartbeatIntervalSeconds": 300,
                "resyncIntervalSeconds": 600,
            },
        },
    }


def emulator() -> kmock.KubernetesEmulator:
    emulated = kmock.KubernetesEmulator()
    info, verbs = kmock.ResourceInfo, {"list", "watch", "get", "create", "patch", "delete"}
    emulated.resources["atomicqueues.io/v1alpha1/entityworkerpools"] = info(
        kind="EntityWorkerPool", namespaced=True, verbs=verbs, subresources={"status"}
    )
    emulated.resources["v1/pods"] = info(kind="Pod", namespaced=True, verbs=verbs)
    return emulated


async def timed(what: Callable[[], Awaitable[Any]], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        await what()
        times.append(time.perf_counter() - began)
    return times


class Run:
    def __init__(self, server: RedisServer, entities: int, repeat: int) -> None:
        self.url = f"redis://127.0.0.1:{server.port}/0"
        self.entities = entities
        self.repeat = repeat
        self.figures: dict[str, list[float]] = {}

    async def main(self) -> None:
        async with emulator() as api, Server(api):
            self.api = api
            server = str(api.url).rstrip("/")
            kube = Kube(lambda: kopf.ConnectionInfo(server=server))
            client = await Client.connect(Settings(redis_url=self.url, prefix=PREFIX))
            try:
                await self.measure(kube, client)
            finally:
                await client.close()
                await kube.close()

    async def post(self, path: str, body: dict[str, Any]) -> None:
        async with self.api.post(path, json=body) as response:
            if response.status >= 400:
                raise RuntimeError(f"POST {path}: {response.status} {await response.text()}")

    async def measure(self, kube: Kube, client: Client) -> None:
        body = manifest(self.entities, self.url)
        spec = PoolSpec.model_validate(body["spec"])
        ids = [f"user-{i:06d}" for i in range(self.entities)]
        print(f"enqueueing one job for each of {self.entities:,} entities ...", file=sys.stderr)
        for start in range(0, len(ids), 50):
            await asyncio.gather(
                *(client.enqueue("account", e, "step") for e in ids[start : start + 50])
            )
        await self.post(
            f"/apis/atomicqueues.io/v1alpha1/namespaces/{NAMESPACE}/entityworkerpools", body
        )
        config = Config(status_seconds=3600)

        # Scale-up: no pods; each pass creates what the start budget allows (then deleted).
        pool = KubePool(body, kube, config)
        self.figures["scale-up pass"] = []
        for _ in range(self.repeat):
            pool._limiter = None  # a full budget for every pass
            began = time.perf_counter()
            await pool.reconcile_once()
            self.figures["scale-up pass"].append(time.perf_counter() - began)
            for pod in await kube.list_pods(NAMESPACE, pool_labels(POOL)):
                await kube.delete_pod(NAMESPACE, pod["metadata"]["name"])

        # Steady: every entity has its running pod (stored straight into the mock: creating
        # 10,000 objects through its HTTP API takes minutes).
        print(f"storing {self.entities:,} running worker pods in the mock API ...", file=sys.stderr)
        now = time.time()
        for entity in ids:
            pod = pod_body(
                body,
                spec,
                StartWorker(entity, 0),
                self.url,
                image="x",
                suffix="abcde",
                created_at=now,
            )
            pod["metadata"].update(namespace=NAMESPACE, resourceVersion="1")
            pod["status"] = {"phase": "Running"}
            self.api.objects["v1/pods", NAMESPACE, pod["metadata"]["name"]] = pod
        self.figures["steady pass"] = await timed(pool.reconcile_once, self.repeat)
        await pool._disconnect()

        listed = await kube.list_pods(NAMESPACE, pool_labels(POOL))
        if len(listed) != self.entities:
            raise RuntimeError(f"the steady pass changed the pods: {len(listed)} left")
        self.figures["list pods"] = await timed(
            lambda: kube.list_pods(NAMESPACE, pool_labels(POOL)), self.repeat
        )
        self.figures["read index"] = await timed(
            lambda: IndexReads(client).work_index("account"), self.repeat
        )
        index = await IndexReads(client).work_index("account")
        states = [s for p in listed if (s := worker_state(p)) is not None]

        async def plan_once() -> None:
            plan(spec, index, states, {}, time.time(), 20)

        self.figures["plan()"] = await timed(plan_once, self.repeat)


def print_table(run: Run, load: tuple[float, float, float]) -> None:
    f = {k: statistics.median(v) for k, v in run.figures.items()}
    floor = f["list pods"] + f["read index"]
    print(f"\nAtomicQueues reconcile benchmark: one pool, {run.entities:,} active entities")
    print(
        f"Python {platform.python_version()}, kmock (in-process mock API), redis-server"
        f" (private), {os.cpu_count()} CPUs, load average {load[0]:.2f} at start"
    )
    print(
        f"median and max of {run.repeat}; ratio: to listing the pods + reading the index"
        f" ({fmt_ms(floor)})\n"
    )
    print(f"{'':<16}{'median':>12}{'max':>12}{'ratio':>10}")
    for name, values in run.figures.items():
        print(
            f"{name:<16}{fmt_ms(statistics.median(values)):>12}{fmt_ms(max(values)):>12}"
            f"{statistics.median(values) / floor:>9.2f}x"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    def measure(server: RedisServer) -> None:
        load = os.getloadavg()
        run = Run(server, args.entities, args.repeat)
        asyncio.run(run.main())
        print_table(run, load)

    return run_on_private_redis("reconcile.py", measure)


if __name__ == "__main__":
    sys.exit(main())
