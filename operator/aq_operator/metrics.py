"""Prometheus metrics of the operator, labelled by pool (namespace and name), never by entity.

Served on /metrics by `endpoints.py`, with the pools' health gauges (jobs waiting, the oldest
waiting job's age, entities with work, dead letters: `atomicqueues.pools.health`), which the
pools set on every pass. The pool gauges are removed when the operator stops
serving a pool (`forget_pool`), so a deleted pool leaves no stale series behind.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from atomicqueues.pools import health

_POOL = ("namespace", "pool")

RECONCILE_SECONDS = Histogram(
    "aq_operator_reconcile_seconds",
    "Time one reconcile pass of a pool took (Redis index, pod list, plan, API calls)",
    _POOL,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter(
    "aq_operator_reconcile_errors_total",
    "Reconcile passes that could not finish (the reason is in the pool's Degraded condition)",
    _POOL,
)
WORKERS_DESIRED = Gauge("aq_operator_workers_desired", "Worker pods the pool wants", _POOL)
WORKERS_ACTUAL = Gauge(
    "aq_operator_workers_actual", "Worker pods starting, running or closing", _POOL
)
WORKERS_READY = Gauge("aq_operator_workers_ready", "Worker pods running", _POOL)
PODS_CREATED = Counter("aq_operator_pods_created_total", "Worker pods created", _POOL)
PODS_DELETED = Counter(
    "aq_operator_pods_deleted_total", "Worker pods deleted (ended, failed or closed)", _POOL
)
WORK_TO_POD_SECONDS = Histogram(
    "aq_operator_work_to_pod_seconds",
    "From an entity having work (its index entry, Redis clock) to its worker pod created",
    _POOL,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LEADER = Gauge("aq_operator_leader", "1 while this replica holds the leader Lease (or runs alone)")

_POOL_SERIES = (
    RECONCILE_SECONDS,
    RECONCILE_ERRORS,
    WORKERS_DESIRED,
    WORKERS_ACTUAL,
    WORKERS_READY,
    PODS_CREATED,
    PODS_DELETED,
    WORK_TO_POD_SECONDS,
)


def forget_pool(namespace: str, pool: str) -> None:
    """Drop every series of one pool (the health gauges too)."""
    health.forget(namespace, pool)
    for metric in _POOL_SERIES:
        with contextlib.suppress(KeyError):  # never observed for this pool
            metric.remove(namespace, pool)
