"""Fixtures of the operator tests: a mock Kubernetes API (kmock) and the operator running
in-process against it, with a real Redis (`redis_url`) for the queues.

kmock's emulator keeps objects in memory and streams watch events, but it is not an API server:
it ignores label selectors (the operator filters again), never bumps `resourceVersion` (kopf's
patches test it, so objects are created with one), runs no garbage collector and no kubelet. The
tests play the kubelet by patching a pod's `status.phase`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import kmock
import kopf
import pytest

from aq_operator.config import Config
from aq_operator.runner import Operator
from mock_cluster import POOLS, Api, RunningOperator


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    """The mock API, with the resources a cluster running the operator serves."""
    info = kmock.ResourceInfo
    resources = kmock.resources
    resources["v1/namespaces"] = info(kind="Namespace", namespaced=False, verbs={"list", "watch"})
    resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
        kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch"}
    )
    verbs = {"list", "watch", "get", "create", "patch", "delete"}
    resources[POOLS] = info(
        kind="EntityWorkerPool", namespaced=True, verbs=verbs, subresources={"status"}
    )
    resources["v1/pods"] = info(kind="Pod", namespaced=True, verbs=verbs)
    resources["v1/secrets"] = info(kind="Secret", namespaced=True, verbs=verbs)
    resources["v1/events"] = info(kind="Event", namespaced=True, verbs=verbs)
    return kmock


@pytest.fixture
async def operator(cluster: kmock.KubernetesEmulator) -> AsyncIterator[RunningOperator]:
    """`aq operator`'s Operator logged in to the mock API, in a thread with its own event loop,
    as it would be in its own process: kopf cancels every task of its loop when it stops, which
    in the tests' loop would include the test's own."""
    server = str(cluster.url).rstrip("/")
    op = Operator(
        Config(retry_seconds=0.2, status_seconds=0.05, secret_refresh_seconds=0.2),
        login=lambda **_: kopf.ConnectionInfo(server=server),
    )
    running = RunningOperator(op)
    thread = threading.Thread(target=running.main, name="operator", daemon=True)
    thread.start()
    await asyncio.wait_for(running.started(), 20)
    yield running
    running.stop()
    await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)
    assert not thread.is_alive(), "the operator did not stop within 30 s"
    assert running.error is None, running.error


@pytest.fixture
def api(cluster: kmock.KubernetesEmulator) -> Api:
    return Api(cluster)
