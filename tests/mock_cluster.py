"""Helpers of the operator tests (tests/operator/): what a test does to the mock Kubernetes API.

Here, not in tests/operator/conftest.py, because a test module cannot import from a package
named `operator` (the standard library's) — and fixtures alone cannot carry the helpers.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
from typing import Any, TypeVar

import kmock

from aq_operator.runner import Operator

T = TypeVar("T")
NAMESPACE = "ns1"
POOL_LABEL = "atomicqueues.io/pool"
POOLS = "atomicqueues.io/v1alpha1/entityworkerpools"


class Api:
    """What a test does to the cluster: create pools and Secrets, play the kubelet."""

    def __init__(self, cluster: kmock.KubernetesEmulator) -> None:
        self.cluster = cluster

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        request = getattr(self.cluster, method)
        kwargs = {} if body is None else {"json": body}
        async with request(path, **kwargs) as response:
            assert response.status < 400, (method, path, response.status, await response.text())
            return await response.json()

    async def add_pool(self, name: str, spec: dict[str, Any], ns: str = NAMESPACE) -> None:
        await self._json(
            "post",
            f"/apis/{POOLS.split('/', 2)[0]}/v1alpha1/namespaces/{ns}/entityworkerpools",
            {
                "apiVersion": "atomicqueues.io/v1alpha1",
                "kind": "EntityWorkerPool",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "uid": f"uid-{name}",
                    "generation": 1,
                    "resourceVersion": "1",
                },
                "spec": spec,
            },
        )

    async def pool(self, name: str, ns: str = NAMESPACE) -> dict[str, Any]:
        path = f"/apis/atomicqueues.io/v1alpha1/namespaces/{ns}/entityworkerpools/{name}"
        result: dict[str, Any] = await self._json("get", path)
        return result

    async def condition(self, pool: str, kind: str) -> dict[str, Any]:
        for condition in (await self.pool(pool)).get("status", {}).get("conditions", []):
            if condition["type"] == kind:
                return dict(condition)
        return {}

    async def add_secret(self, name: str, data: dict[str, str], ns: str = NAMESPACE) -> None:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        await self._json(
            "post",
            f"/api/v1/namespaces/{ns}/secrets",
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
             "data": encoded},
        )  # fmt: skip

    async def pods(self, pool: str | None = None, ns: str = NAMESPACE) -> list[dict[str, Any]]:
        reply = await self._json("get", f"/api/v1/namespaces/{ns}/pods")
        items = [p for p in reply.get("items", []) if p]
        if pool is not None:
            items = [
                p for p in items if p["metadata"]["labels"].get("atomicqueues.io/pool") == pool
            ]
        return sorted(items, key=lambda p: p["metadata"]["name"])

    async def create_pod(self, body: dict[str, Any], ns: str = NAMESPACE) -> None:
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        await self._json("post", f"/api/v1/namespaces/{ns}/pods", body)

    async def set_phase(self, name: str, phase: str, ns: str = NAMESPACE, **status: Any) -> None:
        await self._json(
            "patch", f"/api/v1/namespaces/{ns}/pods/{name}", {"status": {"phase": phase, **status}}
        )

    async def events(self, reason: str, pool: str) -> list[dict[str, Any]]:
        """Kubernetes Events posted about a pool with this reason (from the request log: kmock
        stores only the first of kopf's events, which all use `generateName`)."""
        return [
            r.data
            for r in self.cluster
            if r.method == kmock.method.POST
            and r.url.path.endswith("/events")
            and isinstance(r.data, dict)
            and r.data.get("reason") == reason
            and r.data.get("involvedObject", {}).get("name") == pool
        ]

    async def delete_pool(self, name: str, ns: str = NAMESPACE) -> None:
        await self._json(
            "delete", f"/apis/atomicqueues.io/v1alpha1/namespaces/{ns}/entityworkerpools/{name}"
        )

    async def delete_pod(self, name: str, ns: str = NAMESPACE) -> None:
        with contextlib.suppress(AssertionError):
            await self._json("delete", f"/api/v1/namespaces/{ns}/pods/{name}")


class RunningOperator:
    """An `Operator` running in a thread of its own (see the `operator` fixture)."""

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.loop = asyncio.new_event_loop()
        self.ready = concurrent.futures.Future[None]()
        self.error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._run())
        except BaseException as exc:
            self.error = exc
            if not self.ready.done():
                self.ready.set_exception(exc)
        finally:
            self.loop.close()

    async def _run(self) -> None:
        self._stop, ready = asyncio.Event(), asyncio.Event()
        waiter = asyncio.create_task(ready.wait())
        waiter.add_done_callback(lambda _: self.ready.set_result(None))
        await self.op.run(stop_flag=self._stop, ready_flag=ready)

    async def started(self) -> None:
        await asyncio.wrap_future(self.ready)

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)

    def poke(self, pool: str, ns: str = NAMESPACE) -> None:
        self.loop.call_soon_threadsafe(self.op.poke, ns, pool)

    def passes(self, pool: str, ns: str = NAMESPACE) -> int:
        found = self.op.pool(ns, pool)
        return 0 if found is None else found.passes
