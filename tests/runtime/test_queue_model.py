"""A stateful test: random sequences of queue operations on Redis against a model in Python.

Why: the example tests in test_queue.py check the paths someone thought of; this one lets
hypothesis interleave enqueue, claim, finish (completed / retry / dead, with or without claiming
the next job), cancel, concurrency changes, releases, sweeps and dead-letter requeues across a
few entities and owners, and after every step compares everything Redis holds with a simple
model: each entity's wait queue (ids and order), delayed, retrying, running and dead jobs, its
lease holders, every job's state and attempt count, the per-state counts and the index
(pending, with work, claimable). A script that orders, blocks, counts or indexes wrongly on
some path nobody wrote down fails here, shrunk to a short sequence of steps.

Nothing depends on time: leases live for minutes, retries are due at once and delayed jobs
(one hour) never fall due during a run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from atomicqueues import BacklogFull, Client, Settings
from atomicqueues.controls import Controls
from atomicqueues.dead_letters import DeadLetters
from atomicqueues.jobs import STATES
from atomicqueues.keys import decode_id, encode_id, in_bucket, job_key, of_entity
from atomicqueues.leases import Idle, Lease, Leases, Started
from runtime import recompute

T = "acct"
ENTITIES = ("a:b{c}", "ü 😀", "Zoë")  # the first and last share a bucket: handovers
OWNERS = ("w1", "w2", "w3")
LATER = 3600.0  # a delay that never falls due during a run
R = TypeVar("R")


@dataclass
class MJob:
    id: str
    eid: str
    prio: int
    seq: int  # enqueue order in the model (the script's sequence is per entity)
    state: str  # waiting delayed active retrying completed cancelled dead gone
    attempt: int = 0
    cancel_asked: bool = False  # cancelled while it ran: it ends cancelled unless completed

    @property
    def order(self) -> tuple[int, int]:
        return (-self.prio, self.seq)


class QueueMachine(RuleBasedStateMachine):
    redis_url = ""  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        cfg = Settings(redis_url=self.redis_url, heartbeat_ttl=600, heartbeat_interval=1)
        self.client: Client = self.run(Client.connect(cfg))
        self.run(self.client.redis.flushall())
        self.leases = {o: Leases(self.client, o) for o in OWNERS}
        # The model.
        self.jobs: dict[str, MJob] = {}
        self.seq = 0
        self.conc = dict.fromkeys(ENTITIES, 1)
        self.held: dict[tuple[str, str], Lease] = {}
        self.running: dict[tuple[str, str], Started] = {}
        self.last_token: dict[str, int] = {}
        self.completed = 0
        self.cancelled = 0
        self.paused: set[str] = set()  # entities paused themselves
        self.type_paused = False
        self.own_cap: dict[str, int] = {}  # max backlogs (0: none)
        self.type_cap = 0

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.client.close())
        finally:
            self.loop.close()

    # --- model helpers ------------------------------------------------------------------------
    def of(self, e: str, state: str) -> list[MJob]:
        return sorted(
            (j for j in self.jobs.values() if j.eid == e and j.state == state),
            key=lambda j: j.order,
        )

    def inflight(self, e: str) -> int:
        return len(self.of(e, "active")) + len(self.of(e, "retrying"))

    def holders(self, e: str) -> int:
        return sum(1 for (_, he) in self.held if he == e)

    def bucket(self, e: str) -> str:
        return self.client.keys.entity_bucket(T, e)

    def is_paused(self, e: str) -> bool:
        return self.type_paused or e in self.paused

    def claimable(self, e: str) -> bool:
        return (
            bool(self.of(e, "waiting"))
            and max(self.inflight(e), self.holders(e)) < self.conc[e]
            and not self.is_paused(e)
        )

    def promote(self, e: str) -> None:
        """Retries are due at once (delay 0); delayed jobs never are."""
        for j in self.of(e, "retrying"):
            j.state = "waiting"

    def start_head(self, owner: str, e: str) -> MJob | None:
        """start_next(): the head job starts under owner's lease if a slot is free."""
        if (owner, e) in self.running:
            return None
        waiting = self.of(e, "waiting")
        if not waiting or self.inflight(e) >= self.conc[e] or self.is_paused(e):
            return None
        head = waiting[0]
        head.state = "active"
        head.attempt += 1
        return head

    def took(self, owner: str, e: str, expected: MJob | None, got: Started | None) -> None:
        """Compare a started job with the model's and record it."""
        if expected is None:
            assert got is None, f"{owner} started {got.job.id if got else None} on {e!r}"
            return
        assert got is not None, f"{owner} should have started {expected.id} on {e!r}"
        assert (got.job.id, got.job.attempt, got.job.state) == (
            expected.id,
            expected.attempt,
            "active",
        )
        assert self.inflight(e) <= self.conc[e], "more jobs in flight than the concurrency"
        self.running[(owner, e)] = got

    # --- rules --------------------------------------------------------------------------------
    @rule(
        e=st.sampled_from(ENTITIES),
        prio=st.sampled_from([0, 0, 1, -1]),
        delay=st.sampled_from([None, None, None, 0, LATER]),
    )
    def enqueue(self, e: str, prio: int, delay: float | None) -> None:
        cap = self.own_cap.get(e) or self.type_cap
        full = cap > 0 and len(self.of(e, "waiting")) + len(self.of(e, "delayed")) >= cap
        try:
            jid = self.run(
                self.client.enqueue(T, e, "job", {"n": self.seq}, priority=prio, delay=delay)
            )
        except BacklogFull:
            assert full, f"{e!r} refused a job below its max backlog {cap}"
            return
        assert not full, f"{e!r} took a job past its max backlog {cap}"
        assert jid not in self.jobs
        self.promote(e)
        state = "delayed" if delay else "waiting"
        self.jobs[jid] = MJob(jid, e, prio, self.seq, state)
        self.seq += 1

    @rule(owner=st.sampled_from(OWNERS), e=st.sampled_from(ENTITIES))
    def claim(self, owner: str, e: str) -> None:
        lease = self.held.get((owner, e))
        got = self.run(self.leases[owner].claim(T, e, lease))
        self.promote(e)
        if lease is not None:
            expected = self.start_head(owner, e)
            assert got.lease == lease, "a claim under a held lease keeps it"
        else:
            expected = self.start_head(owner, e) if self.claimable(e) else None
            if expected is None:
                assert isinstance(got, Idle)
                assert got.lease is None, "a lease was granted with nothing to start"
            else:
                assert isinstance(got, Started)
                token = got.lease.fencing_token
                assert token > self.last_token.get(e, 0), "fencing token did not grow"
                self.last_token[e] = token
                self.held[(owner, e)] = got.lease
        self.took(owner, e, expected, got if isinstance(got, Started) else None)

    @precondition(lambda self: self.running)
    @rule(
        pick=st.integers(0, 8),
        outcome=st.sampled_from(["completed", "retry", "dead"]),
        claim_next=st.sampled_from(["same", "any", "release", "none"]),
    )
    def finish(self, pick: int, outcome: str, claim_next: str) -> None:
        owner, e = key = sorted(self.running)[pick % len(self.running)]
        run = self.running.pop(key)
        value = '{"ok":1}' if outcome == "completed" else "error"
        got = self.run(
            self.leases[owner].finish(
                run,
                outcome,  # type: ignore[arg-type]
                value,
                retry_delay=0,
                claim_next=claim_next,  # type: ignore[arg-type]
            )
        )
        job = self.jobs[run.job.id]
        job.state = {"completed": "completed", "retry": "retrying", "dead": "dead"}[outcome]
        self.completed += outcome == "completed"
        if job.cancel_asked and outcome != "completed":
            job.state = "cancelled"
            self.cancelled += 1
        expected = None
        if claim_next != "none":
            self.promote(e)
            expected = self.start_head(owner, e)
        if expected is not None or claim_next in ("same", "none"):
            self.took(owner, e, expected, got)
            if got is not None:
                assert got.lease == run.lease
            return
        # The entity ran dry: the lease is let go and, with "any", the oldest claimable entity
        # of the bucket taken.
        del self.held[key]
        if claim_next == "any":
            self.took_any(owner, e, got)
        else:
            assert got is None, f"{owner} took {got} with 'release'"

    def took_any(self, owner: str, e: str, got: Started | None) -> None:
        """What claim_any in the bucket of `e` (or a handover there) must have done."""
        mates = [x for x in ENTITIES if self.bucket(x) == self.bucket(e)]
        for x in mates:
            self.promote(x)
        can = [x for x in mates if (owner, x) not in self.held and self.claimable(x)]
        if not can:
            assert got is None, f"{owner} took {got} though nothing was claimable"
            return
        assert got is not None, can
        assert got.lease.entity_id in can, (got, can)
        other = got.lease.entity_id
        token = got.lease.fencing_token
        assert token > self.last_token.get(other, 0), "fencing token did not grow"
        self.last_token[other] = token
        self.held[(owner, other)] = got.lease
        self.took(owner, other, self.start_head(owner, other), got)

    @rule(owner=st.sampled_from(OWNERS), e=st.sampled_from(ENTITIES))
    def claim_any(self, owner: str, e: str) -> None:
        """A packed worker claims in the bucket of `e`."""
        self.took_any(owner, e, self.run(self.leases[owner].claim_any(T, self.bucket(e))))

    @precondition(lambda self: self.running)
    @rule(pick=st.integers(0, 8))
    def hand_over(self, pick: int) -> None:
        """What a packed worker meets when its entity runs dry while another entity of the
        bucket has a job: a job for that other entity, then the last job of this one finished
        with "any" (a handover, unless the other is held or this one has more)."""
        _, e = sorted(self.running)[pick % len(self.running)]
        mate = next((x for x in ENTITIES if x != e and self.bucket(x) == self.bucket(e)), None)
        if mate is not None:
            self.enqueue(mate, 0, None)
        self.finish(pick, "completed", "any")

    @precondition(lambda self: self.running)
    @rule(pick=st.integers(0, 8), outcome=st.sampled_from(["completed", "retry", "dead"]))
    def finish_and_let_go(self, pick: int, outcome: str) -> None:
        """What a packed worker does after a job: record it, then let go unless work is due."""
        key = sorted(self.running)[pick % len(self.running)]
        self.finish(pick, outcome, claim_next="none")
        self.release(sorted(self.held).index(key), "idle")

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 50))
    def cancel(self, pick: int) -> None:
        job = list(self.jobs.values())[pick % len(self.jobs)]
        ok = self.run(self.client.cancel(job.id))
        assert ok == (job.state in ("waiting", "delayed", "retrying", "active")), (job, ok)
        if job.state == "active":
            job.cancel_asked = True  # it runs on until its worker stops it
        elif ok:
            job.state = "gone"

    @rule(e=st.sampled_from([*ENTITIES, None]), pause=st.booleans())
    def pause(self, e: str | None, pause: bool) -> None:
        """Pause or resume one entity, or (None) the type."""
        call = self.client.pause if pause else self.client.resume
        self.run(call(T, e))
        if e is None:
            self.type_paused = pause
        elif pause:
            self.paused.add(e)
        else:
            self.paused.discard(e)
        got = self.run(self.client.paused(T))
        assert (got.entity_type, set(got.entities)) == (self.type_paused, self.paused)

    @rule(e=st.sampled_from([*ENTITIES, None]), n=st.sampled_from([0, 1, 2, 3]))
    def limit(self, e: str | None, n: int) -> None:
        """Set an entity's max backlog, or (None) the type's."""
        self.run(Controls(self.client).set_limits(T, e, max_backlog=n))
        if e is None:
            self.type_cap = n
        else:
            self.own_cap[e] = n

    @rule(e=st.sampled_from(ENTITIES), n=st.integers(1, 3))
    def set_concurrency(self, e: str, n: int) -> None:
        self.run(Controls(self.client).set_concurrency(T, e, n))
        self.conc[e] = n

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 8), mode=st.sampled_from(["idle", "idle", "shutdown"]))
    def release(self, pick: int, mode: str) -> None:
        owner, e = key = sorted(self.held)[pick % len(self.held)]
        got = self.run(self.leases[owner].release(self.held[key], mode))  # type: ignore[arg-type]
        self.promote(e)
        busy = key in self.running or (
            self.of(e, "waiting") and self.inflight(e) < self.conc[e] and not self.is_paused(e)
        )
        if mode == "idle" and busy:
            assert got == "busy"
            return
        assert got == "released"
        del self.held[key]
        run = self.running.pop(key, None)
        if run is not None:  # shutdown: the job goes back to its place, attempt given back
            job = self.jobs[run.job.id]
            if job.cancel_asked:  # unless its cancellation was asked for: then it ends so
                job.state = "cancelled"
                self.cancelled += 1
            else:
                job.state = "waiting"
                job.attempt -= 1

    @rule()
    def sweep(self) -> None:
        # What leases.sweep() runs on each of the type's 32 buckets, on the entities' buckets.
        events = self.client.keys.events(T)
        buckets = sorted({self.client.keys.entity_bucket(T, e) for e in ENTITIES})
        got = [self.run(self.client.script("sweep", bb, 500, events)) for bb in buckets]
        due = [e for e in ENTITIES if self.of(e, "retrying")]
        assert [sum(x) for x in zip(*got, strict=True)] == [0, len(due)]
        for e in due:
            self.promote(e)

    @rule(e=st.sampled_from(ENTITIES), purge=st.sampled_from([False, False, True]))
    def dead_letters(self, e: str, purge: bool) -> None:
        dead = self.of(e, "dead")
        if purge:
            n = self.run(DeadLetters(self.client).purge(T, e))
        else:
            n = self.run(DeadLetters(self.client).requeue(T, e))
        assert n == len(dead)
        for j in dead:
            j.state = "gone" if purge else "waiting"
            j.attempt = 0

    # --- invariants ---------------------------------------------------------------------------
    @invariant()
    def redis_matches_model(self) -> None:
        self.run(self._compare())

    async def _compare(self) -> None:
        c = self.client
        p = c.redis.pipeline(transaction=False)
        for e in ENTITIES:
            base = c.keys.entity(T, e)
            for suffix in ("wait", "delayed", "retry", "dlq"):
                p.zrange(base + suffix, 0, -1)
            p.hgetall(of_entity(base, "meta"))
        job_list = list(self.jobs.values())
        for j in job_list:
            p.hmget(job_key(c.keys.entity_bucket(T, j.eid), j.id), "d", "s", "m")
        got = iter(await p.execute())

        for e in ENTITIES:
            wait, delayed, retry, dlq, meta = (next(got) for _ in range(5))
            lease_of = {f[2:]: v.split(" ", 3) for f, v in meta.items() if f.startswith("l:")}
            leases = {o: v[0] for o, v in lease_of.items()}
            run = {o: v[3] for o, v in lease_of.items() if len(v) == 4}
            assert wait == [j.id for j in self.of(e, "waiting")], f"wait queue of {e!r}"
            assert set(delayed) == {j.id for j in self.of(e, "delayed")}
            assert set(retry) == {j.id for j in self.of(e, "retrying")}
            assert set(dlq) == {j.id for j in self.of(e, "dead")}
            assert run == {o: r.job.id for (o, re), r in self.running.items() if re == e}
            assert leases == {o: lease.token for (o, le), lease in self.held.items() if le == e}
            assert len(run) <= len(leases)
        for j in job_list:
            d, state, made = next(got)
            if j.state == "gone":
                assert d is None, f"cancelled or purged job {j.id} still exists"
            else:
                assert (state or "waiting", int(made or 0)) == (j.state, j.attempt), j

        # The index and the counts, raw, in one round trip (test_queue.py checks that the
        # client's readers decode them faithfully), of the buckets the entities live in: the
        # scripts touch no other (that is what the hash tags are for), and reading all 32 on
        # every step would make this test several times slower.
        buckets = sorted({c.keys.entity_bucket(T, e) for e in ENTITIES})
        p = c.redis.pipeline(transaction=False)
        for bb in buckets:
            p.hgetall(in_bucket(bb, "counts"))
            p.hgetall(in_bucket(bb, "pending"))
            p.zrange(in_bucket(bb, "work"), 0, -1)
            p.zrange(in_bucket(bb, "ready"), 0, -1)
            p.hgetall(in_bucket(bb, "dead"))
            p.zrange(in_bucket(bb, "delayed"), 0, -1)
            p.zrange(in_bucket(bb, "leases"), 0, -1)
        raw = iter(await p.execute())
        counts = dict.fromkeys(STATES, 0)
        pending: dict[str, int] = {}
        work: set[str] = set()
        ready: set[str] = set()
        dead: dict[str, int] = {}
        due: set[str] = set()
        lease_index: set[str] = set()
        for _ in buckets:
            for state, n in next(raw).items():
                counts[state] += int(n)
            pending |= {decode_id(e): int(n) for e, n in next(raw).items()}
            counts["waiting"] = sum(pending.values())
            work |= {decode_id(e) for e in next(raw)}
            ready |= {decode_id(e) for e in next(raw)}
            dead |= {decode_id(e): int(n) for e, n in next(raw).items()}
            due |= {decode_id(e) for e in next(raw)}
            lease_index |= set(next(raw))

        want = dict.fromkeys(("waiting", "delayed", "active", "retrying", "dead"), 0)
        for j in job_list:
            if j.state in want:
                want[j.state] += 1
        assert counts == {**want, "completed": self.completed, "cancelled": self.cancelled}
        want_pending = {e: len(self.of(e, "waiting")) for e in ENTITIES if self.of(e, "waiting")}
        assert pending == want_pending
        assert work == {e for e in ENTITIES if self.of(e, "waiting") or self.inflight(e)}
        assert ready == {
            e
            for e in want_pending
            if self.inflight(e) < self.conc[e]
            and self.holders(e) < self.conc[e]
            and not self.is_paused(e)
        }
        assert dead == {e: len(self.of(e, "dead")) for e in ENTITIES if self.of(e, "dead")}
        assert due == {e for e in ENTITIES if self.of(e, "delayed") or self.of(e, "retrying")}
        assert lease_index == {f"{o}|{encode_id(e)}" for o, e in self.held}
        # And the index and summaries recomputed from the queues alone.
        await recompute.check_index(c, T, buckets=buckets)


def run_model(redis_url: str, examples: int, steps: int) -> None:
    """Run the state machine against the Redis (or Redis Cluster) at `redis_url`."""

    class Machine(QueueMachine):
        pass

    Machine.redis_url = redis_url
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_queue_behaves_like_its_model(redis_url: str) -> None:
    run_model(redis_url, examples=100, steps=40)
