"""Pod-start benchmark: from an idle entity's first job to its worker pod created, on a real
Kubernetes API server.

Why this exists: the design promises scaling that reacts to the "entity has work" event in
milliseconds, where KEDA polls every 30 s by default. This script measures that reaction on
the Kubernetes backend: it starts the control-plane tier's etcd, kube-apiserver and
kube-controller-manager (tests/controlplane/controlplane.py; the binaries come from
scripts/build-controlplane.sh), a private redis-server and `aq operator` as a process, applies
the CRD and one pool, then enqueues the first job of N idle entities one at a time and times,
from a watch on the namespace's pods, when each entity's pod is created (the watch event's
arrival). No kubelet runs: the pods stay Pending, which does not matter for this figure.

Baseline, measured in the same run, before each entity: the same watch seeing a pod that this
script creates itself (one POST from this process), so the reaction is reported as a multiple
of the API's own floor.

    python bench/podstart.py [--entities N] [--spacing S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from aq_operator.crd import CRD_NAME
from aq_operator.pods import ANNOTATION_ENTITY
from atomicqueues.client import Client
from atomicqueues.config import Settings
from atomicqueues.errors import AtomicQueuesError
from atomicqueues.pools.embedded import EmbeddedRedis
from compare.stats import percentile

# The control-plane tier's helpers.
TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS / "controlplane"), str(TESTS)]

from controlplane import REPO_ROOT, ControlPlane  # noqa: E402
from go_tools import BinariesMissing as BinariesMissing  # noqa: E402
from go_tools import build  # noqa: E402
from redis_servers import free_port  # noqa: E402

NAMESPACE = "bench"
POOL = "podstart"
PREFIX = "podstart"
BASELINE = "baseline"


class Watch:
    """Arrival times of ADDED pod events in the namespace, by entity id (or pod name)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.seen: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        url = f"{self.cp.server}/api/v1/namespaces/{NAMESPACE}/pods"
        headers = {"Authorization": f"Bearer {self.cp.token}"}
        connector = aiohttp.TCPConnector(ssl=self.cp.ssl_context())
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with (
            aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as s,
            s.get(url, params={"watch": "1", "allowWatchBookmarks": "false"}) as reply,
        ):
            reply.raise_for_status()
            ready.set()
            async for line in reply.content:
                now = time.perf_counter()
                event = json.loads(line)
                if event.get("type") != "ADDED":
                    continue
                meta = event["object"]["metadata"]
                key = (meta.get("annotations") or {}).get(ANNOTATION_ENTITY) or meta["name"]
                self.seen.setdefault(key, now)
                self.changed.set()

    async def wait_for(self, key: str, timeout: float = 60.0) -> float:
        deadline = time.perf_counter() + timeout
        while key not in self.seen:
            self.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no pod for {key!r} within {timeout:g}s")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                continue
        return self.seen[key]


def pool(redis_url: str, entities: int) -> dict[str, Any]:
    return {
        "apiVersion": "atomicqueues.io/v1alpha1",
        "kind": "EntityWorkerPool",
        "metadata": {"name": POOL, "namespace": NAMESPACE},
        "spec": {
            "entityType": "account",
            "handlers": "app.handlers:registry",
            "image": "example/worker:never-pulled",
            "redis": {"url": redis_url, "prefix": PREFIX},
            "workers": {"maxTotal": entities + 10},
            # The resync is long: a pod within it can only come from the event path.
            "timing": {"resyncIntervalSeconds": 300},
        },
    }


def bare_pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{BASELINE}-{i}", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "c", "image": "example/none:1"}]},
    }


Seconds = list[float]


async def measure(
    cp: ControlPlane, redis_url: str, entities: int, spacing: float, quiet: bool = False
) -> tuple[Seconds, Seconds]:
    """(first job -> pod created, baseline POST -> watch event), one of each per entity."""
    watch = Watch(cp)
    ready = asyncio.Event()
    watching = asyncio.create_task(watch.run(ready))
    await asyncio.wait_for(ready.wait(), 30)
    client = await Client.connect(Settings(redis_url=redis_url, prefix=PREFIX))
    api = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=cp.ssl_context()),
        headers={"Authorization": f"Bearer {cp.token}"},
    )
    reaction, floor = [], []
    try:
        for i in range(entities):
            began = time.perf_counter()
            path = f"{cp.server}/api/v1/namespaces/{NAMESPACE}/pods"
            async with api.post(path, json=bare_pod(i)) as reply:
                reply.raise_for_status()
            floor.append(await watch.wait_for(f"{BASELINE}-{i}") - began)
            entity = f"user-{i:04d}"
            began = time.perf_counter()
            await client.enqueue("account", entity, "step")
            reaction.append(await watch.wait_for(entity) - began)
            if not quiet:
                print(f"\r{i + 1}/{entities} entities", end="", file=sys.stderr, flush=True)
            await asyncio.sleep(spacing)
        if not quiet:
            print(file=sys.stderr)
    finally:
        await client.close()
        await api.close()
        watching.cancel()
    return reaction, floor


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(reaction: list[float], floor: list[float]) -> None:
    print(f"\nAtomicQueues pod-start benchmark: {len(reaction)} idle entities, one job each")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end\n")
    print(f"{'':<44}{'p50':>11}{'p99':>11}{'max':>11}")
    rows = [
        ("first job -> its pod created (watch event)", reaction),
        ("baseline: POST of a pod -> its watch event", floor),
    ]
    for label, values in rows:
        p50, p99 = statistics.median(values), percentile(values, 99)
        print(f"{label:<44}{fmt_ms(p50):>11}{fmt_ms(p99):>11}{fmt_ms(max(values)):>11}")
    ratio = statistics.median(reaction) / statistics.median(floor)
    print(f"\nmedian reaction / median baseline: {ratio:.2f}x  (KEDA polls every 30 s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=100)
    parser.add_argument("--spacing", type=float, default=0.1, help="seconds between entities")
    args = parser.parse_args(argv)
    redis = EmbeddedRedis()
    try:
        redis.start()
        report(*pod_starts(redis.url, args.entities, args.spacing))
    except (BinariesMissing, AtomicQueuesError, TimeoutError) as exc:
        print(f"podstart.py: {exc}", file=sys.stderr)
        return 1
    finally:
        redis.stop()
    return 0


def pod_starts(
    redis_url: str, entities: int, spacing: float = 0.1, quiet: bool = False
) -> tuple[Seconds, Seconds]:
    """The whole measurement on the Redis at `redis_url`: a control plane and an operator are
    started for it and stopped after. `BinariesMissing` when they cannot be had."""
    binaries = build("core")
    with tempfile.TemporaryDirectory() as tmp, ControlPlane(binaries, Path(tmp)) as cp:
        cp.kubectl("apply", "-f", str(REPO_ROOT / "crds"))
        cp.kubectl("wait", "--for", "condition=Established", f"crd/{CRD_NAME}")
        cp.create_namespace(NAMESPACE)
        log = Path(tmp) / "operator.log"
        with open(log, "wb") as out:
            operator = subprocess.Popen(
                ["aq", "operator", "-n", NAMESPACE, "--listen", f"127.0.0.1:{free_port()}"],
                env={**os.environ, "KUBECONFIG": str(cp.kubeconfig)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            cp.apply(pool(redis_url, entities))
            return asyncio.run(measure(cp, redis_url, entities, spacing, quiet))
        except TimeoutError as exc:
            tail = log.read_text(errors="replace")[-3000:]
            raise TimeoutError(f"{exc}; the operator's log ends:\n{tail}") from None
        finally:
            operator.terminate()
            operator.wait(30)


if __name__ == "__main__":
    sys.exit(main())
