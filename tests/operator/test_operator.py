"""The operator (kopf) against a mock Kubernetes API and a real Redis.

Why: this is the second backend of the one reconciler, and what it must hold is Kubernetes'
part of the design: a pod within milliseconds of an entity's first job (the event path, not
the resync); nothing for an empty queue, and nothing more on a second pass; ended pods removed;
a failing entity replaced only after its backoff; surplus workers closed through Redis before
their pods go; a status people can read; and a pool that cannot work (its Secret missing, its
Redis unreachable) shown as such while the operator goes on serving the others.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from aq_operator.pods import (
    ANNOTATION_CLOSING,
    ANNOTATION_ENTITY,
    LABEL_ENTITY,
    pod_body,
)
from atomicqueues import Client, Settings
from atomicqueues.index_reads import IndexReads
from atomicqueues.pools.names import entity_hash
from atomicqueues.pools.reconciler import StartWorker
from atomicqueues.pools.spec import PoolSpec
from atomicqueues.presence import Presence, WorkerInfo
from atomicqueues.schedules import Schedules
from helpers import eventually
from mock_cluster import NAMESPACE, Api, RunningOperator

PREFIX = "optest"
SLOW = {
    # No resync and no sweep for a minute: only an event can wake the pool.
    "heartbeatTTLSeconds": 120,
    "heartbeatIntervalSeconds": 60,
    "resyncIntervalSeconds": 60,
    "shutdownGraceSeconds": 2,
}
FAST = {
    "heartbeatTTLSeconds": 2,
    "heartbeatIntervalSeconds": 0.5,
    "resyncIntervalSeconds": 0.5,
    "shutdownGraceSeconds": 1,
    "restartBackoffSeconds": 1,
}


def pool_spec(redis_url: str | None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "entityType": "account",
        "handlers": "app.handlers:registry",
        "image": "example/worker:1",
        "redis": {"url": redis_url, "prefix": PREFIX} if redis_url else {"prefix": PREFIX},
        "timing": FAST,
    }
    spec.update(extra)
    return spec


@pytest.fixture
def client_settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, prefix=PREFIX)


async def ready(api: Api, pool: str) -> dict[str, Any]:
    """The pool's status once a pass has written it (Ready True)."""

    async def check() -> dict[str, Any] | None:
        if (await api.condition(pool, "Ready")).get("status") == "True":
            return dict((await api.pool(pool))["status"])
        return None

    return await eventually(check, 10, f"pool {pool} to be Ready")


async def test_an_entity_with_work_gets_a_pod_at_once(
    operator: RunningOperator, api: Api, client: Client, redis_url: str
) -> None:
    await api.add_pool("accounts", pool_spec(redis_url, timing=SLOW))
    await ready(api, "accounts")
    assert await api.pods("accounts") == []
    started = time.monotonic()
    await client.enqueue("account", "a:b{c}", "step")
    [pod] = await eventually(lambda: api.pods("accounts"), 5, "a pod")
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"the event path took {elapsed:.3f}s (resync is 60 s)"

    expected = pod_body(
        await api.pool("accounts"),
        PoolSpec.model_validate(pool_spec(redis_url, timing=SLOW)),
        StartWorker("a:b{c}", 0),
        redis_url,
        image="example/worker:1",
        suffix=pod["metadata"]["name"][-5:],
        created_at=float(pod["metadata"]["annotations"]["atomicqueues.io/created-at"]),
    )
    assert pod["metadata"]["labels"] == expected["metadata"]["labels"]
    assert pod["metadata"]["annotations"][ANNOTATION_ENTITY] == "a:b{c}"
    assert pod["metadata"]["labels"][LABEL_ENTITY] == entity_hash("a:b{c}")[:40]
    assert pod["metadata"]["ownerReferences"] == expected["metadata"]["ownerReferences"]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-accounts"
    assert pod["spec"] == expected["spec"]
    [event] = await eventually(lambda: api.events("ScaledUp", "accounts"), 10, "a ScaledUp event")
    assert event["type"] == "Normal"

    # Idempotent: more passes (pod changes, a forced wake-up) start nothing more.
    await api.set_phase(pod["metadata"]["name"], "Running")
    operator.poke("accounts")
    status = await eventually(
        lambda: _status_with(api, "accounts", workersReady=1), 10, "workersReady 1"
    )
    assert status["activeEntities"] == 1
    assert len(await api.pods("accounts")) == 1


async def _status_with(api: Api, pool: str, **expected: Any) -> dict[str, Any] | None:
    status = (await api.pool(pool)).get("status") or {}
    if all(status.get(k) == v for k, v in expected.items()):
        return dict(status)
    return None


async def test_an_empty_queue_gets_no_pod(
    operator: RunningOperator, api: Api, redis_url: str
) -> None:
    await api.add_pool("accounts", pool_spec(redis_url))
    status = await ready(api, "accounts")
    assert status["activeEntities"] == 0
    assert status["waitingJobs"] == 0
    assert status["workersDesired"] == 0
    passes = operator.passes("accounts")
    await eventually(lambda: _true(operator.passes("accounts") >= passes + 2), 5, "two more passes")
    assert await api.pods() == []


async def test_a_paused_entity_gets_no_pod_and_the_status_counts_it(
    operator: RunningOperator, api: Api, client: Client, redis_url: str
) -> None:
    await api.add_pool("accounts", pool_spec(redis_url))
    await client.pause("account", "u1")
    await client.enqueue("account", "u1", "step")
    status = await eventually(
        lambda: _status_with(api, "accounts", pausedEntities=1), 10, "pausedEntities 1"
    )
    assert (status["activeEntities"], status["workersDesired"]) == (0, 0)
    assert await api.pods() == []
    await client.resume("account", "u1")
    await eventually(lambda: api.pods("accounts"), 10, "a pod once it is resumed")
    await eventually(
        lambda: _status_with(api, "accounts", pausedEntities=0), 10, "pausedEntities 0"
    )


async def _true(value: bool) -> bool:
    return value


async def test_succeeded_pods_are_deleted(
    operator: RunningOperator, api: Api, client: Client, redis_url: str
) -> None:
    await api.add_pool("accounts", pool_spec(redis_url))
    job = await client.enqueue("account", "u1", "step")
    [pod] = await eventually(lambda: api.pods("accounts"), 10, "a pod")
    name = pod["metadata"]["name"]
    assert await client.cancel(job)  # the entity has no work any more: the worker exits idle
    await api.set_phase(name, "Succeeded")
    await eventually(lambda: _none(api.pods("accounts")), 10, "the Succeeded pod to be deleted")
    status = await eventually(
        lambda: _status_with(api, "accounts", activeEntities=0, workersDesired=0), 10, "status"
    )
    assert (await api.condition("accounts", "Degraded"))["status"] == "False"
    assert status["workersReady"] == 0


async def _none(pods: Any) -> bool:
    return not await pods


async def test_a_failed_pod_is_replaced_only_after_backoff(
    operator: RunningOperator, api: Api, client: Client, redis_url: str
) -> None:
    await api.add_pool("accounts", pool_spec(redis_url))  # restartBackoffSeconds 1
    await client.enqueue("account", "u1", "step")
    [first] = await eventually(lambda: api.pods("accounts"), 10, "a pod")
    failed_at = time.monotonic()
    terminated = {"terminated": {"reason": "Error", "exitCode": 1}}
    await api.set_phase(
        first["metadata"]["name"], "Failed", containerStatuses=[{"state": terminated}]
    )

    async def replaced() -> list[dict[str, Any]]:
        pods = await api.pods("accounts")
        return [p for p in pods if p["metadata"]["name"] != first["metadata"]["name"]]

    degraded = await eventually(
        lambda: _condition_is(api, "accounts", "Degraded", "CrashLoop"), 10, "Degraded/CrashLoop"
    )
    assert "u1" in degraded["message"]
    [failed] = await eventually(lambda: api.events("WorkerFailed", "accounts"), 10, "an event")
    assert failed["type"] == "Warning"
    assert "Error (exit code 1)" in failed["message"]
    assert (await api.condition("accounts", "Ready"))["status"] == "True"  # others are served
    [second] = await eventually(replaced, 10, "a replacement pod")
    waited = time.monotonic() - failed_at
    assert waited >= 0.95, f"replaced after {waited:.3f}s, before the 1 s backoff"
    assert first["metadata"]["name"] not in [p["metadata"]["name"] for p in await api.pods()]
    assert second["metadata"]["labels"]["atomicqueues.io/slot"] == "0"

    # A second failure in a row doubles the wait (2 s).
    failed_at = time.monotonic()
    await api.set_phase(second["metadata"]["name"], "Failed")
    names = {first["metadata"]["name"], second["metadata"]["name"]}

    async def third() -> list[dict[str, Any]]:
        return [p for p in await api.pods("accounts") if p["metadata"]["name"] not in names]

    await eventually(third, 10, "a third pod")
    assert time.monotonic() - failed_at >= 1.95


async def _condition_is(api: Api, pool: str, kind: str, reason: str) -> dict[str, Any] | None:
    condition = await api.condition(pool, kind)
    return condition if condition.get("reason") == reason else None


async def test_surplus_workers_are_closed_through_redis_before_their_pods_go(
    operator: RunningOperator, api: Api, client: Client, redis_url: str
) -> None:
    spec = pool_spec(redis_url, timing={**FAST, "shutdownGraceSeconds": 60})
    # Three running workers of one entity that wants one (one job waiting, concurrency 1).
    await client.enqueue("account", "u1", "step")
    manifest = {"metadata": {"name": "accounts", "namespace": NAMESPACE, "uid": "uid-accounts"}}
    parsed = PoolSpec.model_validate(spec)
    names = []
    for slot in range(3):
        body = pod_body(
            manifest, parsed, StartWorker("u1", slot), redis_url,
            image="example/worker:1", suffix=f"abcd{slot}", created_at=1000.0 + slot,
        )  # fmt: skip
        await api.create_pod(body)
        await api.set_phase(body["metadata"]["name"], "Running")
        names.append(body["metadata"]["name"])
    busy = WorkerInfo(names[2], "account", "u1", 1, "node-1", 1, time.time(), ["u1"])
    presence = Presence(client)
    await presence.beat(busy, ttl=60)  # slot 2's worker is registered (busy); slot 1's is not

    await api.add_pool("accounts", spec)
    r = redis.Redis.from_url(redis_url)

    async def slot1_gone() -> bool:
        return names[1] not in [p["metadata"]["name"] for p in await api.pods("accounts")]

    await eventually(slot1_gone, 10, "the unregistered surplus worker's pod to be deleted")
    assert r.exists(client.keys.close_worker(names[1]))
    assert r.exists(client.keys.close_worker(names[2]))
    assert not r.exists(client.keys.close_worker(names[0]))
    pods = {p["metadata"]["name"]: p for p in await api.pods("accounts")}
    assert set(pods) == {names[0], names[2]}  # the busy one stays until its worker leaves
    assert ANNOTATION_CLOSING in pods[names[2]]["metadata"]["annotations"]
    assert ANNOTATION_CLOSING not in pods[names[0]]["metadata"]["annotations"]

    [event] = await eventually(
        lambda: api.events("ScaledDown", "accounts"), 10, "a ScaledDown event"
    )
    assert "scale down" in event["message"]

    await presence.leave(busy)  # the worker gave its lease back and deregistered

    async def slot2_gone() -> bool:
        return names[2] not in [p["metadata"]["name"] for p in await api.pods("accounts")]

    await eventually(slot2_gone, 10, "the closed worker's pod to be deleted once it left")
    assert [p["metadata"]["name"] for p in await api.pods("accounts")] == [names[0]]
    assert await IndexReads(client).counts("account") == {
        **await IndexReads(client).counts("account"),
        "waiting": 1,
    }


async def test_status_counts_and_conditions(
    operator: RunningOperator, api: Api, client: Client, redis_url: str
) -> None:
    spec = pool_spec(redis_url, workers={"maxTotal": 2})
    await api.add_pool("accounts", spec)
    for entity in ("a", "b", "c"):
        for _ in range(2):
            await client.enqueue("account", entity, "step")
    await eventually(lambda: _count(api.pods("accounts"), 2), 10, "two pods (maxTotal 2)")
    for pod in await api.pods("accounts"):
        await api.set_phase(pod["metadata"]["name"], "Running")
    status = await eventually(
        lambda: _status_with(api, "accounts", workersReady=2), 10, "status workersReady 2"
    )
    assert status["activeEntities"] == 3
    assert status["waitingJobs"] == 6
    assert status["workersDesired"] == 2  # capped by maxTotal
    assert status["observedGeneration"] == 1
    ready_condition = await api.condition("accounts", "Ready")
    assert ready_condition["status"] == "True"
    assert ready_condition["reason"] == "Reconciled"
    assert ready_condition["observedGeneration"] == 1
    degraded = await api.condition("accounts", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "AsExpected")
    assert len(await api.pods("accounts")) == 2


async def _count(pods: Any, n: int) -> bool:
    return len(await pods) == n


async def test_a_missing_secret_degrades_one_pool_and_the_others_are_served(
    operator: RunningOperator, api: Api, client: Client, redis_url: str
) -> None:
    broken = pool_spec(None, redis={"secretRef": {"name": "nope"}, "prefix": PREFIX})
    await api.add_pool("broken", broken)
    await api.add_pool("accounts", pool_spec(redis_url))
    ready_cond = await eventually(
        lambda: _condition_is(api, "broken", "Ready", "SecretNotFound"), 10, "Ready/SecretNotFound"
    )
    assert ready_cond["status"] == "False"
    assert "nope" in ready_cond["message"]
    degraded = await api.condition("broken", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "SecretNotFound")

    await client.enqueue("account", "u1", "step")
    await eventually(lambda: api.pods("accounts"), 10, "a pod of the working pool")

    # The Secret appears: the broken pool recovers, and its pods get the URL from it.
    await api.add_secret("nope", {"url": redis_url})
    await eventually(lambda: _condition_is(api, "broken", "Ready", "Reconciled"), 10, "recovery")
    broken_pods = await eventually(lambda: api.pods("broken"), 10, "a pod of the recovered pool")
    env = {e["name"]: e for e in broken_pods[0]["spec"]["containers"][0]["env"]}
    assert env["AQ_REDIS_URL"]["valueFrom"] == {"secretKeyRef": {"name": "nope", "key": "url"}}


async def test_an_unreachable_redis_is_a_condition(operator: RunningOperator, api: Api) -> None:
    await api.add_pool("lost", pool_spec("redis://127.0.0.1:1/0"))
    condition = await eventually(
        lambda: _condition_is(api, "lost", "Ready", "RedisUnreachable"),
        10,
        "Ready/RedisUnreachable",
    )
    assert condition["status"] == "False"
    assert "127.0.0.1:1" in condition["message"]
    assert await api.pods() == []


async def test_the_job_of_a_killed_worker_comes_back_without_a_live_worker(
    operator: RunningOperator, api: Api, client: Client, redis_url: str
) -> None:
    """The operator sweeps expired leases (every heartbeat interval): a worker killed with its
    pod mid-job gives no job back itself, yet the job returns to the head of its queue and a
    new pod is started for it."""
    from atomicqueues.leases import Leases, Started

    await api.add_pool("accounts", pool_spec(redis_url))
    await ready(api, "accounts")
    job = await client.enqueue("account", "u1", "step")
    [pod] = await eventually(lambda: api.pods("accounts"), 10, "a pod")
    short = Settings(redis_url=redis_url, prefix=PREFIX, heartbeat_ttl=0.4, heartbeat_interval=0.2)
    async with await Client.connect(short) as doomed:
        started = await Leases(doomed, pod["metadata"]["name"]).claim("account", "u1", None)
        assert isinstance(started, Started)
    await api.set_phase(pod["metadata"]["name"], "Failed")  # killed: never renews, never acks

    async def back() -> bool:
        found = await client.job(job)
        return found.state == "waiting" and "stalled" in found.error

    await eventually(back, 10, "the job to come back to its queue")
    await eventually(
        lambda: _other_pod(api, pod["metadata"]["name"]), 10, "a new pod after the backoff"
    )


async def _other_pod(api: Api, old: str) -> bool:
    return any(p["metadata"]["name"] != old for p in await api.pods("accounts"))


async def test_a_schedule_fires_without_a_pod_and_its_job_gets_one(
    operator: RunningOperator, api: Api, client: Client, redis_url: str
) -> None:
    """The operator ticks the schedules of its pools' entity types: a schedule's job is enqueued
    with no worker alive, and the pool starts a pod for the entity it goes to."""
    await api.add_pool("accounts", pool_spec(redis_url))
    await ready(api, "accounts")
    assert await api.pods("accounts") == []
    added = await Schedules(client).add("account", "nightly", "step", every=0.5)
    [pod] = await eventually(lambda: api.pods("accounts"), 10, "a pod for the scheduled job")
    assert pod["metadata"]["annotations"][ANNOTATION_ENTITY] == added.entity_id == "nightly"
    [fired] = await Schedules(client).list("account")
    assert fired.fired >= 1
    assert fired.last_job_id is not None
    assert (await client.job(fired.last_job_id, entity=("account", "nightly"))).name == "step"


async def test_a_pool_gets_no_finalizer_and_deleting_it_ends_its_loop(
    operator: RunningOperator, api: Api, redis_url: str
) -> None:
    # Nothing of the operator's must hold a pool back: without it running, deleting one would
    # hang (a finalizer), and its pods go by garbage collection anyway.
    await api.add_pool("plain", pool_spec(redis_url, timing=SLOW))
    await ready(api, "plain")
    meta = (await api.pool("plain"))["metadata"]
    assert not meta.get("finalizers")
    assert not [k for k in meta.get("annotations") or {} if "kopf" in k]
    assert operator.op.pool(NAMESPACE, "plain") is not None
    await api.delete_pool("plain")

    async def gone() -> bool:
        return operator.op.pool(NAMESPACE, "plain") is None

    await eventually(gone, 10, "the pool's loop to end")
