"""The operator's HTTP port (probes, metrics) and what its metrics say about a pool.

Why: a Deployment restarts a replica whose /healthz fails and routes by /readyz — a standby
that never became ready would stall every rolling update of two replicas; and the metrics are
how people see the operator's reaction (an entity has work -> its pod created) and whether the
desired and actual workers of a pool agree.
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from aq_operator.endpoints import Endpoints, Health, parse_listen
from aq_operator.leader import LeaseTiming
from atomicqueues import Client, Settings
from atomicqueues.errors import ConfigError
from helpers import eventually
from mock_cluster import NAMESPACE, Api, RunningOperator

PREFIX = "eptest"
SLOW = {  # no resync and no sweep for a minute: the event path only
    "heartbeatTTLSeconds": 120,
    "heartbeatIntervalSeconds": 60,
    "resyncIntervalSeconds": 60,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_probes_follow_the_operators_state() -> None:
    health = Health()
    endpoints = Endpoints(health)
    base = f"http://127.0.0.1:{free_port()}"
    await endpoints.start(base.removeprefix("http://"))
    try:
        async with aiohttp.ClientSession() as session:
            seen = {}
            for state in Health.STATES:
                health.set(state)
                live, _ = await _get(session, f"{base}/healthz")
                ready, text = await _get(session, f"{base}/readyz")
                assert live == 200
                assert text.strip() == state
                seen[state] = ready
            assert seen == {"starting": 503, "standby": 200, "active": 200, "stopping": 503}
            status, text = await _get(session, f"{base}/metrics")
            assert status == 200
            assert "aq_operator_leader" in text
            assert "aq_operator_workers_desired" in text
    finally:
        await endpoints.stop()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await _get(session, f"{base}/healthz")


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        (":9000", ("0.0.0.0", 9000)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_listen_addresses(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8080", "host:0", "host:65536", "a:b:c", "host:", "[::1]"])
def test_bad_listen_addresses_are_refused(listen: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen(listen)


async def test_a_taken_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--listen 127.0.0.1:{port}"):
            await Endpoints(Health()).start(f"127.0.0.1:{port}")


@pytest.mark.parametrize("timing", [(15, 15, 2), (15, 10, 10), (15, 10, 0), (10, 15, 2)], ids=str)
def test_lease_timing_must_let_a_leader_step_down_before_others_take_over(
    timing: tuple[float, float, float],
) -> None:
    duration, renew_deadline, retry_period = timing
    with pytest.raises(ConfigError, match="retry period < renew deadline < lease duration"):
        LeaseTiming(duration, renew_deadline, retry_period)


def _sample(name: str, pool: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"namespace": NAMESPACE, "pool": pool})


async def _sampled(name: str, pool: str) -> float | None:
    return _sample(name, pool)


async def test_a_pools_metrics(operator: RunningOperator, api: Api, redis_url: str) -> None:
    spec: dict[str, Any] = {
        "entityType": "meter",
        "handlers": "app.handlers:registry",
        "image": "example/worker:1",
        "redis": {"url": redis_url, "prefix": PREFIX},
        "timing": SLOW,
    }
    await api.add_pool("metered", spec)
    await eventually(
        lambda: _sampled("aq_operator_reconcile_seconds_count", "metered"), 10, "a pass"
    )
    assert _sample("aq_operator_workers_desired", "metered") == 0
    async with await Client.connect(Settings(redis_url=redis_url, prefix=PREFIX)) as client:
        await client.enqueue("meter", "m1", "step")
    [pod] = await eventually(lambda: api.pods("metered"), 5, "a pod")
    assert _sample("aq_operator_pods_created_total", "metered") == 1
    assert _sample("aq_operator_work_to_pod_seconds_count", "metered") == 1
    waited = _sample("aq_operator_work_to_pod_seconds_sum", "metered")
    assert 0 <= (waited if waited is not None else -1) < 2.0, waited
    assert _sample("aq_pool_entities_with_work", "metered") == 1
    assert _sample("aq_pool_jobs_waiting", "metered") == 1
    assert _sample("aq_pool_dead_letters", "metered") == 0
    first = _sample("aq_pool_oldest_waiting_seconds", "metered")
    assert first is not None
    assert 0 <= first < 2.0
    assert _sample("aq_operator_workers_desired", "metered") == 1
    # Counted from the pod list a pass starts with: the pass after the one that created it.
    await eventually(lambda: _sampled("aq_operator_workers_actual", "metered"), 10, "a worker")
    assert _sample("aq_operator_workers_ready", "metered") == 0

    await api.set_phase(pod["metadata"]["name"], "Running")
    await eventually(lambda: _sampled("aq_operator_workers_ready", "metered"), 10, "a ready worker")
    # No worker runs here: the job is still ready to start, and its age grew from pass to pass.
    later = _sample("aq_pool_oldest_waiting_seconds", "metered")
    assert later is not None
    assert later > first
    assert _sample("aq_operator_leader", "metered") is None  # not a per-pool series
    assert REGISTRY.get_sample_value("aq_operator_leader") == 1
