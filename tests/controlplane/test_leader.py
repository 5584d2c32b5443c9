"""Leader election (operator/aq_operator/leader.py) against a real API server's Leases.

Why: the mock API never bumps `resourceVersion`, so conditional writes — what makes two
candidates unable to both win — can only be checked here. What must hold: of candidates racing
for a new Lease exactly one wins; a standby never takes a Lease before it has been silent for
its duration; a leader that was silent finds out (`leading()` turns False at once, `hold`
raises) instead of acting beside the new one; a released Lease is taken at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import kopf
import pytest

from aq_operator.kube import Kube
from aq_operator.leader import LeaderElection, LeadershipLost, LeaseTiming
from controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

TIMING = LeaseTiming.scaled(3.0)  # renew every 0.4 s, step down after 2 s, expire after 3 s


@pytest.fixture
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    info = kopf.ConnectionInfo(
        server=control_plane.server, token=control_plane.token, ca_path=str(control_plane.ca)
    )
    k = Kube(lambda: info)
    yield k
    await k.close()


def candidate(kube: Kube, namespace: str, identity: str, lease: str = "op") -> LeaderElection:
    return LeaderElection(kube, namespace, lease, identity, TIMING)


async def holder(kube: Kube, namespace: str, lease: str = "op") -> str | None:
    found = await kube.get_lease(namespace, lease)
    assert found is not None
    return (found.get("spec") or {}).get("holderIdentity")


async def test_of_racing_candidates_exactly_one_wins(kube: Kube, namespace: str) -> None:
    racers = [candidate(kube, namespace, f"c{i}") for i in range(8)]
    won = await asyncio.gather(*(c.try_acquire() for c in racers))
    assert sum(won) == 1, won
    winner = racers[won.index(True)]
    assert await holder(kube, namespace) == winner.identity
    assert [c.leading() for c in racers] == won
    # And again, on the existing Lease, once it is free.
    await winner.release()
    assert await holder(kube, namespace) is None
    again = await asyncio.gather(*(c.try_acquire() for c in racers))
    assert sum(again) == 1, again


async def test_a_silent_leader_is_replaced_only_after_the_lease_duration(
    kube: Kube, namespace: str
) -> None:
    a, b = candidate(kube, namespace, "a"), candidate(kube, namespace, "b")
    stop = asyncio.Event()
    assert await a.acquire(stop)
    last_renewal = time.monotonic()  # a goes silent now (nobody calls a.hold)
    assert a.leading()

    taken = asyncio.create_task(b.acquire(stop))
    await asyncio.sleep(TIMING.renew_deadline + 0.1)
    assert not a.leading(), "a leader silent past its renew deadline must stop acting"
    assert not taken.done(), "b took the Lease before it expired"
    assert await asyncio.wait_for(taken, TIMING.duration * 3)
    waited = time.monotonic() - last_renewal
    assert waited >= TIMING.duration, f"b took over {waited:.2f}s after a's last renewal"
    assert await holder(kube, namespace) == "b"
    found = await kube.get_lease(namespace, "op")
    assert found is not None
    assert found["spec"]["leaseTransitions"] == 1

    with pytest.raises(LeadershipLost, match="held by another replica"):
        await a.hold(stop)
    assert not a.is_leader
    await a.release()  # not the holder: leaves b's Lease alone
    assert await holder(kube, namespace) == "b"


async def test_a_leader_keeps_its_lease_while_it_renews(kube: Kube, namespace: str) -> None:
    a, b = candidate(kube, namespace, "a"), candidate(kube, namespace, "b")
    stop = asyncio.Event()
    assert await a.acquire(stop)
    holding = asyncio.create_task(a.hold(stop))
    waiting = asyncio.create_task(b.acquire(stop))
    await asyncio.sleep(TIMING.duration * 2)
    assert a.leading()
    assert not waiting.done()
    stop.set()
    await holding  # returns quietly when stopped
    assert not await waiting


async def test_a_released_lease_is_taken_at_once(kube: Kube, namespace: str) -> None:
    slow = LeaseTiming.scaled(60.0)
    a = LeaderElection(kube, namespace, "op", "a", slow)
    b = LeaderElection(kube, namespace, "op", "b", slow)
    stop = asyncio.Event()
    assert await a.acquire(stop)
    assert not await b.try_acquire()
    await a.release()
    assert not a.leading()
    assert await b.try_acquire(), "a released Lease must not wait out its 60 s"
    assert await holder(kube, namespace) == "b"
