"""The reconciler core: a table of cases, a few sequences in time, and property tests.

Why: `plan` decides every start, close and forget of both backends (`aq up` and the operator).
The table pins each rule of its docstring to a small state; the property tests let hypothesis
build odd states (strange entity ids, duplicate slots, workers of the other placement mode,
stale backoff, tight caps) and check what must hold for all of them: no slot is held twice,
concurrency 1 never gets two workers, caps and backoff hold, and the plan is pure and
level-based (carried out, it asks for nothing more). No Redis is needed.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from atomicqueues.pools.reconciler import (
    PACKED,
    Action,
    Backoff,
    CloseWorker,
    EntityWork,
    ForgetWorker,
    Plan,
    StartPacked,
    StartWorker,
    WorkerState,
    plan,
)
from atomicqueues.pools.spec import PoolSpec

NOW = 1000.0
LIVE = ("starting", "running", "closing")


def make_spec(
    *,
    max_per_entity: int = 1,
    jobs_per_worker: int = 10,
    max_total: int = 100,
    mode: str = "dedicated",
    slots: int = 16,
    restart_backoff: float = 1.0,
    max_restart_backoff: float = 300.0,
) -> PoolSpec:
    return PoolSpec.model_validate(
        {
            "entityType": "acct",
            "handlers": "app.handlers:registry",
            "workers": {
                "maxPerEntity": max_per_entity,
                "jobsPerWorker": jobs_per_worker,
                "maxTotal": max_total,
            },
            "placement": {"mode": mode, "slots": slots},
            "timing": {
                "restartBackoffSeconds": restart_backoff,
                "maxRestartBackoffSeconds": max_restart_backoff,
            },
        }
    )


def ent(
    entity_id: str,
    waiting: int = 1,
    since: float = 0.0,
    concurrency: int = 1,
    claimable: bool = True,
) -> EntityWork:
    return EntityWork(entity_id, waiting, since, concurrency, claimable)


def wk(
    name: str,
    entity_id: str | None,
    slot: int = 0,
    phase: Any = "running",
    started_at: float = 0.0,
) -> WorkerState:
    return WorkerState(name, entity_id, slot, phase, started_at)


def apply(result: Plan, workers: list[WorkerState], now: float) -> list[WorkerState]:
    """The state after a backend carried the plan out: forgotten workers are gone, closed ones
    are closing, and every start is a new worker in phase "starting"."""
    forgotten = {a.name for a in result.actions if isinstance(a, ForgetWorker)}
    closed = {a.name for a in result.actions if isinstance(a, CloseWorker)}
    after = [
        replace(w, phase="closing") if w.name in closed else w
        for w in workers
        if w.name not in forgotten
    ]
    names = {w.name for w in workers}
    counter = 0
    for action in result.actions:
        if isinstance(action, StartWorker | StartPacked):
            while f"new-{counter}" in names:
                counter += 1
            name = f"new-{counter}"
            names.add(name)
            if isinstance(action, StartWorker):
                after.append(WorkerState(name, action.entity_id, action.slot, "starting", now))
            else:
                after.append(WorkerState(name, None, action.index, "starting", now))
    return after


def starts_of(result: Plan) -> list[Action]:
    return [a for a in result.actions if isinstance(a, StartWorker | StartPacked)]


def closes_of(result: Plan) -> list[CloseWorker]:
    return [a for a in result.actions if isinstance(a, CloseWorker)]


# ---------------------------------------------------------------------------------------------
# The table


@dataclass
class Case:
    entities: list[EntityWork]
    workers: list[WorkerState]
    actions: list[Action]
    spec: PoolSpec = field(default_factory=make_spec)
    backoff: dict[str | None, Backoff] = field(default_factory=dict)
    budget: int = 100
    now: float = NOW
    expect_backoff: dict[str | None, Backoff] | None = None
    expect_waiting: list[str] = field(default_factory=list)


CASES = [
    pytest.param(Case([], [], []), id="empty"),
    pytest.param(Case([ent("a")], [], [StartWorker("a", 0)]), id="one-entity-one-start"),
    pytest.param(
        Case(
            [ent("a", waiting=1000, concurrency=1)],
            [],
            [StartWorker("a", 0)],
            spec=make_spec(max_per_entity=5),
        ),
        id="concurrency-1-never-two-workers",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=1000, concurrency=1)],
            [wk("w1", "a", 0)],
            [],
            spec=make_spec(max_per_entity=5),
        ),
        id="concurrency-1-with-worker-nothing-more",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=25, concurrency=3)],
            [],
            [StartWorker("a", 0), StartWorker("a", 1), StartWorker("a", 2)],
            spec=make_spec(max_per_entity=5, jobs_per_worker=10),
        ),
        id="concurrency-3-25-waiting-3-slots",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=15, concurrency=5)],
            [wk("w1", "a", 0)],
            [StartWorker("a", 1)],
            spec=make_spec(max_per_entity=5, jobs_per_worker=10),
        ),
        id="jobs-per-worker-decides",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=100, concurrency=8)],
            [],
            [StartWorker("a", 0), StartWorker("a", 1)],
            spec=make_spec(max_per_entity=2, jobs_per_worker=1),
        ),
        id="max-per-entity-decides",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=0, concurrency=3)],
            [],
            [StartWorker("a", 0)],
            spec=make_spec(max_per_entity=3),
        ),
        id="all-jobs-in-flight-still-one-worker",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=25, concurrency=3, claimable=False)],
            [],
            [StartWorker("a", 0)],
            spec=make_spec(max_per_entity=5),
        ),
        id="not-claimable-first-worker-only",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=25, concurrency=3, claimable=False)],
            [wk("w1", "a", 0)],
            [],
            spec=make_spec(max_per_entity=5),
        ),
        id="not-claimable-no-extra-worker",
    ),
    pytest.param(Case([ent("a")], [wk("w1", "a", 0)], []), id="existing-worker-nothing"),
    pytest.param(
        Case([ent("a")], [wk("w1", "a", 0, "starting")], []), id="starting-worker-fills-slot"
    ),
    pytest.param(
        Case([ent("a")], [wk("w1", "a", 1)], []), id="worker-in-odd-slot-counts-nothing-more"
    ),
    pytest.param(
        Case(
            [ent("a", waiting=20, concurrency=3)],
            [wk("w1", "a", 1)],
            [StartWorker("a", 0)],
            spec=make_spec(max_per_entity=3),
        ),
        id="lowest-free-slot-first",
    ),
    pytest.param(
        Case([ent("a")], [wk("w1", "a", 0, "closing")], [StartWorker("a", 0)]),
        id="closing-worker-does-not-fill-its-slot",
    ),
    pytest.param(
        Case(
            [ent("a"), ent("b", since=1)],
            [wk("w1", "a", 0, "closing")],
            [StartWorker("a", 0)],
            spec=make_spec(max_total=2),
        ),
        id="closing-worker-counts-for-the-cap",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("w1", "a", 0, "failed")],
            [ForgetWorker("w1", failed=True)],
            expect_backoff={"a": Backoff(1, NOW + 1.0)},
            expect_waiting=["a"],
        ),
        id="failed-worker-forget-backoff-no-restart",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [],
            [],
            backoff={"a": Backoff(1, NOW + 0.5)},
            expect_backoff={"a": Backoff(1, NOW + 0.5)},
            expect_waiting=["a"],
        ),
        id="backing-off-until-retry-at",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [],
            [StartWorker("a", 0)],
            backoff={"a": Backoff(1, NOW)},
            expect_backoff={"a": Backoff(1, NOW)},
        ),
        id="restart-at-retry-at-keeps-count",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("w1", "a", 0, "failed")],
            [ForgetWorker("w1", failed=True)],
            backoff={"a": Backoff(3, NOW - 1)},
            expect_backoff={"a": Backoff(4, NOW + 8.0)},
            expect_waiting=["a"],
        ),
        id="backoff-doubles",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("w1", "a", 0, "failed")],
            [ForgetWorker("w1", failed=True)],
            backoff={"a": Backoff(9, NOW - 1)},
            expect_backoff={"a": Backoff(10, NOW + 300.0)},
            expect_waiting=["a"],
        ),
        id="backoff-capped",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("w1", "a", 0, "failed")],
            [ForgetWorker("w1", failed=True)],
            backoff={"a": Backoff(100_000, NOW - 1)},
            expect_backoff={"a": Backoff(100_001, NOW + 300.0)},
            expect_waiting=["a"],
        ),
        id="backoff-huge-count-no-overflow",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=30, concurrency=3)],
            [wk("w1", "a", 0, "failed", 1.0), wk("w2", "a", 1, "failed", 2.0)],
            [ForgetWorker("w1", failed=True), ForgetWorker("w2", failed=True)],
            spec=make_spec(max_per_entity=3),
            expect_backoff={"a": Backoff(2, NOW + 2.0)},
            expect_waiting=["a"],
        ),
        id="each-failure-counts",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("w1", "a", 0, "succeeded")],
            [ForgetWorker("w1", failed=False), StartWorker("a", 0)],
            backoff={"a": Backoff(4, NOW - 1)},
            expect_backoff={},
        ),
        id="succeeded-worker-forget-reset-backoff",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("w2", "a", 0, "succeeded", 2.0), wk("w1", "a", 1, "failed", 1.0)],
            [
                ForgetWorker("w1", failed=True),
                ForgetWorker("w2", failed=False),
                StartWorker("a", 0),
            ],
            backoff={"a": Backoff(4, NOW - 1)},
            expect_backoff={},
        ),
        id="later-success-wins-over-earlier-failure",
    ),
    pytest.param(
        Case(
            [ent("b")],
            [],
            [StartWorker("b", 0)],
            backoff={
                "gone": Backoff(2, NOW - 1),
                "later": Backoff(2, NOW + 5),
                "b": Backoff(2, NOW - 1),
            },
            expect_backoff={"later": Backoff(2, NOW + 5), "b": Backoff(2, NOW - 1)},
        ),
        id="stale-backoff-dropped",
    ),
    pytest.param(
        Case(
            [ent("a", since=3), ent("b", since=1), ent("c", since=2), ent("d", since=4)],
            [],
            [StartWorker("b", 0), StartWorker("c", 0), StartWorker("a", 0)],
            spec=make_spec(max_total=3),
        ),
        id="cap-binds-oldest-first",
    ),
    pytest.param(
        Case(
            [
                ent("a", waiting=30, since=3, concurrency=3),
                ent("b", waiting=30, since=1, concurrency=3),
                ent("c", waiting=30, since=2, concurrency=3),
            ],
            [],
            [
                StartWorker("b", 0),
                StartWorker("c", 0),
                StartWorker("a", 0),
                StartWorker("b", 1),
                StartWorker("c", 1),
            ],
            spec=make_spec(max_total=5, max_per_entity=3),
        ),
        id="cap-binds-first-slots-before-second",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=30, since=1, concurrency=3), ent("b", since=2)],
            [wk("w1", "a", 0)],
            [StartWorker("b", 0)],
            spec=make_spec(max_total=2, max_per_entity=3),
        ),
        id="cap-binds-no-second-worker-while-another-has-none",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=30, since=1, concurrency=3), ent("b", since=2)],
            [wk("w1", "a", 0)],
            [StartWorker("a", 1)],
            spec=make_spec(max_total=2, max_per_entity=3),
            backoff={"b": Backoff(1, NOW + 1)},
            expect_backoff={"b": Backoff(1, NOW + 1)},
            expect_waiting=["b"],
        ),
        id="backing-off-entity-does-not-hold-others-back",
    ),
    pytest.param(
        Case(
            [ent("a"), ent("b", since=1)],
            [wk("w1", "x", 0), wk("w2", "y", 0), wk("w3", "z", 0, "closing")],
            [],
            spec=make_spec(max_total=2),
        ),
        id="over-cap-no-starts",
    ),
    pytest.param(
        Case(
            [ent("a", since=1), ent("b", since=0)],
            [wk("w1", "a", 0, "failed"), wk("w2", "c", 0), wk("w3", "c", 1)],
            [ForgetWorker("w1", failed=True)],
            budget=0,
            expect_backoff={"a": Backoff(1, NOW + 1)},
            expect_waiting=["a"],
        ),
        id="start-budget-0-no-starts",
    ),
    pytest.param(
        Case(
            [ent("a", since=1), ent("b", since=0), ent("c", since=2)],
            [],
            [StartWorker("b", 0), StartWorker("a", 0)],
            budget=2,
        ),
        id="start-budget-binds-oldest-first",
    ),
    pytest.param(
        Case([], [wk("w1", "a", 0), wk("w2", "a", 1)], []),
        id="workers-without-work-left-alone",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=50, concurrency=1)],
            [
                wk("w0", "a", 0, started_at=1),
                wk("w1", "a", 1, started_at=2),
                wk("w2", "a", 2, started_at=3),
            ],
            [CloseWorker("w2", "scale down"), CloseWorker("w1", "scale down")],
            spec=make_spec(max_per_entity=3),
        ),
        id="scale-down-when-concurrency-drops-newest-first",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=5, concurrency=3)],
            [wk("w0", "a", 0, started_at=1), wk("w1", "a", 1, started_at=2)],
            [CloseWorker("w1", "scale down")],
            spec=make_spec(max_per_entity=3, jobs_per_worker=10),
        ),
        id="scale-down-when-queue-shrinks",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=50, concurrency=1)],
            [wk("w0", "a", 0, started_at=5), wk("w1", "a", 1, started_at=1)],
            [CloseWorker("w1", "scale down")],
            spec=make_spec(max_per_entity=3),
        ),
        id="scale-down-closes-high-slots-even-if-older",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=50, concurrency=1)],
            [wk("w1", "a", 1, started_at=5), wk("w2", "a", 2, started_at=1)],
            [CloseWorker("w1", "scale down")],
            spec=make_spec(max_per_entity=3),
        ),
        id="scale-down-never-closes-the-last-worker",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=50, concurrency=1)],
            [wk("w0", "a", 0), wk("w1", "a", 1, "closing")],
            [],
            spec=make_spec(max_per_entity=3),
        ),
        id="closing-worker-not-closed-again",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("w2", "a", 0, started_at=2), wk("w1", "a", 0, started_at=1)],
            [CloseWorker("w2", "duplicate")],
        ),
        id="duplicate-slot-newer-closed",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("p0", None, 0)],
            [CloseWorker("p0", "placement changed"), StartWorker("a", 0)],
        ),
        id="packed-worker-in-dedicated-pool-closed",
    ),
    pytest.param(
        Case(
            [ent("a:b{c}", since=1), ent("", since=2), ent("日本 😀", since=3), ent("*", since=4)],
            [],
            [
                StartWorker("a:b{c}", 0),
                StartWorker("", 0),
                StartWorker("日本 😀", 0),
                StartWorker("*", 0),
            ],
        ),
        id="strange-entity-ids",
    ),
    pytest.param(
        Case(
            [ent("a", since=5), ent("a", since=1, concurrency=3, waiting=100)],
            [],
            [StartWorker("a", 0)],
            spec=make_spec(max_per_entity=3),
        ),
        id="entity-listed-twice-first-counts",
    ),
    pytest.param(
        Case(
            [ent("a", waiting=50, concurrency=1), ent("b", since=1)],
            [
                wk("w9", "b", 0, "succeeded"),
                wk("w1", "a", 0, started_at=1),
                wk("w2", "a", 1, started_at=2),
            ],
            [
                ForgetWorker("w9", failed=False),
                CloseWorker("w2", "scale down"),
                StartWorker("b", 0),
            ],
            spec=make_spec(max_per_entity=3),
        ),
        id="order-forgets-closes-starts",
    ),
    pytest.param(
        Case(
            [ent(f"e{i:02}", since=i) for i in range(33)],
            [],
            [StartPacked(0), StartPacked(1), StartPacked(2)],
            spec=make_spec(mode="packed", slots=16),
        ),
        id="packed-33-entities-16-slots-3-workers",
    ),
    pytest.param(
        Case(
            [ent(f"e{i:02}") for i in range(33)],
            [],
            [StartPacked(0), StartPacked(1)],
            spec=make_spec(mode="packed", slots=16, max_total=2),
        ),
        id="packed-capped-by-max-total",
    ),
    pytest.param(
        Case(
            [ent(f"e{i:02}") for i in range(33)],
            [wk("p1", None, 1)],
            [StartPacked(0), StartPacked(2)],
            spec=make_spec(mode="packed", slots=16),
        ),
        id="packed-lowest-free-indexes",
    ),
    pytest.param(
        Case(
            [ent(f"e{i}") for i in range(10)],
            [wk("p0", None, 0), wk("p1", None, 1)],
            [],
            spec=make_spec(mode="packed", slots=16),
        ),
        id="packed-surplus-of-one-kept",
    ),
    pytest.param(
        Case(
            [ent(f"e{i}") for i in range(10)],
            [wk("p0", None, 0), wk("p1", None, 1), wk("p2", None, 2)],
            [CloseWorker("p2", "scale down"), CloseWorker("p1", "scale down")],
            spec=make_spec(mode="packed", slots=16),
        ),
        id="packed-surplus-closed-highest-first",
    ),
    pytest.param(
        Case(
            [ent(f"e{i}") for i in range(10)],
            [wk("p0", None, 0), wk("p1", None, 1, "closing"), wk("p2", None, 2)],
            [],
            spec=make_spec(mode="packed", slots=16),
        ),
        id="packed-closing-workers-not-counted-for-surplus",
    ),
    pytest.param(
        Case(
            [],
            [wk("p0", None, 0)],
            [],
            spec=make_spec(mode="packed"),
        ),
        id="packed-no-work-one-left-to-idle-out",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("p0", None, 0, "failed")],
            [ForgetWorker("p0", failed=True)],
            spec=make_spec(mode="packed"),
            expect_backoff={PACKED: Backoff(1, NOW + 1)},
            expect_waiting=[PACKED],
        ),
        id="packed-failure-backs-off",
    ),
    pytest.param(
        Case(
            [ent("a")],
            [wk("w1", "a", 0)],
            [CloseWorker("w1", "placement changed"), StartPacked(0)],
            spec=make_spec(mode="packed"),
        ),
        id="dedicated-worker-in-packed-pool-closed",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_plan(case: Case) -> None:
    result = plan(case.spec, case.entities, case.workers, case.backoff, case.now, case.budget)
    assert result.actions == case.actions
    if case.expect_backoff is not None:
        assert result.backoff == case.expect_backoff
    assert result.waiting_for_backoff == case.expect_waiting
    # Carried out, the plan asks for nothing more.
    after = apply(result, case.workers, case.now)
    budget = case.budget - len(starts_of(result))
    again = plan(case.spec, case.entities, after, result.backoff, case.now, budget)
    assert again.actions == []
    assert again.backoff == result.backoff


def test_plan_does_not_change_its_input() -> None:
    backoff = {"a": Backoff(1, NOW + 5)}
    entities = [ent("a"), ent("b")]
    workers = [wk("w1", "b", 0, "failed")]
    plan(make_spec(), entities, workers, backoff, NOW, 10)
    assert backoff == {"a": Backoff(1, NOW + 5)}
    assert entities == [ent("a"), ent("b")]
    assert workers == [wk("w1", "b", 0, "failed")]


def test_crash_loop_backs_off_then_restarts() -> None:
    """A worker that keeps failing is restarted after 1, 2, 4, ... seconds, never sooner."""
    spec = make_spec(restart_backoff=1.0, max_restart_backoff=8.0)
    entities = [ent("a")]
    workers: list[WorkerState] = []
    backoff: Mapping[str | None, Backoff] = {}
    now = NOW
    restarts: list[float] = []
    for _ in range(200):
        # Every worker crashes one tick (0.25 s) after it starts.
        workers = [replace(w, phase="failed") if w.started_at < now else w for w in workers]
        result = plan(spec, entities, workers, backoff, now, 10)
        if starts_of(result):
            restarts.append(now)
        assert len(starts_of(result)) <= 1
        workers = apply(result, workers, now)
        backoff = result.backoff
        now += 0.25
    gaps = [b - a for a, b in itertools.pairwise(restarts)]
    # Seen failed one tick after its start, it is restarted 1, 2, 4, 8, 8 ... s later.
    assert gaps[:6] == [1.25, 2.25, 4.25, 8.25, 8.25, 8.25]
    assert backoff["a"].failures in (len(restarts) - 1, len(restarts))


def test_success_after_failures_resets_backoff() -> None:
    spec = make_spec()
    result = plan(spec, [ent("a")], [wk("w1", "a", 0, "failed")], {"a": Backoff(5, 0)}, NOW, 5)
    assert result.backoff == {"a": Backoff(6, NOW + 32)}
    # Restarted after the backoff, the worker runs and ends well (idle exit): reset.
    later = NOW + 32
    result = plan(spec, [ent("a")], [wk("w2", "a", 0, "succeeded")], result.backoff, later, 5)
    assert result.backoff == {}
    assert result.actions == [ForgetWorker("w2", failed=False), StartWorker("a", 0)]


def test_closing_worker_replaced_only_within_the_cap() -> None:
    spec = make_spec(max_total=1)
    closing = [wk("w1", "a", 0, "closing")]
    assert plan(spec, [ent("a")], closing, {}, NOW, 5).actions == []
    gone = plan(spec, [ent("a")], [], {}, NOW, 5)
    assert gone.actions == [StartWorker("a", 0)]


# ---------------------------------------------------------------------------------------------
# Properties

IDS = ["a", "b", "c", "a:b{c}", "", "*", "日本 😀", "{x}", "%25", "x y"]


@st.composite
def specs(draw: st.DrawFn) -> PoolSpec:
    return make_spec(
        max_per_entity=draw(st.integers(1, 4)),
        jobs_per_worker=draw(st.integers(1, 5)),
        max_total=draw(st.integers(0, 8)),
        mode=draw(st.sampled_from(["dedicated", "packed"])),
        slots=draw(st.integers(1, 4)),
        restart_backoff=draw(st.sampled_from([0.5, 1.0, 3.0])),
        max_restart_backoff=draw(st.sampled_from([1.0, 10.0, 300.0])),
    )


entity_lists = st.lists(
    st.builds(
        EntityWork,
        entity_id=st.sampled_from(IDS),
        waiting=st.integers(0, 40),
        since=st.integers(0, 50).map(float),
        concurrency=st.integers(1, 4),
        claimable=st.booleans(),
    ),
    max_size=6,
    unique_by=lambda e: e.entity_id,
)


@st.composite
def worker_lists(draw: st.DrawFn, entities: list[EntityWork]) -> list[WorkerState]:
    """Workers of entities with work and without, packed or not, in any phase; mostly one per
    slot, but now and then two in one slot (a backend race) or more than the entity wants."""
    count = draw(st.integers(0, 10))
    known = [e.entity_id for e in entities]
    workers: list[WorkerState] = []
    for i in range(count):
        entity_id = draw(
            st.one_of(st.sampled_from(known), st.sampled_from(IDS), st.none())
            if known
            else st.one_of(st.sampled_from(IDS), st.none())
        )
        workers.append(
            WorkerState(
                name=f"w{i}",
                entity_id=entity_id,
                slot=draw(st.integers(0, 4)),
                phase=draw(
                    st.sampled_from(["starting", "running", "closing", "succeeded", "failed"])
                ),
                started_at=float(draw(st.integers(0, 100))),
            )
        )
    return workers


backoffs = st.dictionaries(
    st.sampled_from([*IDS, PACKED]),
    st.builds(Backoff, failures=st.integers(0, 8), retry_at=st.integers(0, 150).map(float)),
    max_size=4,
)


@dataclass
class State:
    spec: PoolSpec
    entities: list[EntityWork]
    workers: list[WorkerState]
    backoff: dict[str | None, Backoff]
    now: float
    budget: int


@st.composite
def states(draw: st.DrawFn) -> State:
    entities = draw(entity_lists)
    return State(
        spec=draw(specs()),
        entities=entities,
        workers=draw(worker_lists(entities)),
        backoff=draw(backoffs),
        now=float(draw(st.integers(0, 150))),
        budget=draw(st.integers(0, 6)),
    )


def run(state: State) -> Plan:
    return plan(state.spec, state.entities, state.workers, state.backoff, state.now, state.budget)


def non_closing(workers: list[WorkerState]) -> list[WorkerState]:
    return [w for w in workers if w.phase in ("starting", "running")]


@dataclass
class Outcome:
    """One state, its plan, the state after carrying the plan out, and the plan after that."""

    state: State
    plan: Plan
    after: list[WorkerState]
    again: Plan

    @classmethod
    def of(cls, state: State) -> Outcome:
        result = run(state)
        after = apply(result, state.workers, state.now)
        left = state.budget - len(starts_of(result))
        again = plan(state.spec, state.entities, after, result.backoff, state.now, left)
        return cls(state, result, after, again)

    def backing_off(self, key: str) -> bool:
        entry = self.plan.backoff.get(key)
        return entry is not None and entry.retry_at > self.state.now

    def workers_per_entity(self) -> Counter[str | None]:
        return Counter(w.entity_id for w in non_closing(self.after))

    def first_listings(self) -> list[EntityWork]:
        return list({e.entity_id: e for e in reversed(self.state.entities)}.values())


def check_no_slot_held_twice(o: Outcome) -> None:  # (a)
    held = Counter((w.entity_id, w.slot) for w in non_closing(o.after))
    assert all(n == 1 for n in held.values()), held


def check_concurrency_1_never_two_workers(o: Outcome) -> None:  # (b)
    per_entity = o.workers_per_entity()
    for entity in o.first_listings():
        if entity.concurrency == 1:
            assert per_entity[entity.entity_id] <= 1, entity


def check_caps(o: Outcome) -> None:  # (c)
    live_before = sum(w.phase in LIVE for w in o.state.workers)
    live_after = sum(w.phase in LIVE for w in o.after)
    assert live_after <= max(o.state.spec.workers.max_total, live_before)
    assert len(starts_of(o.plan)) <= max(0, o.state.budget)


def check_no_start_while_backing_off(o: Outcome) -> None:  # (d)
    for action in starts_of(o.plan):
        assert not o.backing_off(action.entity_id if isinstance(action, StartWorker) else PACKED)


def check_carried_out_plan_asks_for_nothing_more(o: Outcome) -> None:  # (e)
    assert o.again.actions == []
    assert o.again.backoff == o.plan.backoff
    assert o.again.waiting_for_backoff == o.plan.waiting_for_backoff


def check_pure(o: Outcome) -> None:  # (f)
    assert run(o.state) == o.plan


def check_actions_name_real_workers_and_slots(o: Outcome) -> None:  # (g)
    spec = o.state.spec
    phases = {w.name: w.phase for w in o.state.workers}
    named = [a.name for a in o.plan.actions if isinstance(a, CloseWorker | ForgetWorker)]
    assert len(named) == len(set(named))
    wants = {
        e.entity_id: min(
            spec.workers.max_per_entity,
            e.concurrency,
            max(1, math.ceil(e.waiting / spec.workers.jobs_per_worker)),
        )
        for e in o.first_listings()
    }
    dedicated = spec.placement.mode == "dedicated"
    for action in o.plan.actions:
        if isinstance(action, ForgetWorker):
            assert phases.get(action.name) in ("succeeded", "failed")
            assert action.failed == (phases[action.name] == "failed")
        elif isinstance(action, CloseWorker):
            assert phases.get(action.name) in ("starting", "running")
        elif isinstance(action, StartWorker):
            assert dedicated
            assert 0 <= action.slot < wants[action.entity_id]
        else:
            assert not dedicated
            assert 0 <= action.index < spec.workers.max_total


def check_action_order(o: Outcome) -> None:
    rank = {ForgetWorker: 0, CloseWorker: 1, StartWorker: 2, StartPacked: 2}
    kinds = [rank[type(a)] for a in o.plan.actions]
    assert kinds == sorted(kinds)


def check_fair_and_never_strands_work(o: Outcome) -> None:
    """No entity gets a second worker while another that could have one has none; and when
    neither cap binds, every entity with work that is not backing off has a worker."""
    spec = o.state.spec
    per_entity = o.workers_per_entity()
    eligible = [e.entity_id for e in o.state.entities if not o.backing_off(e.entity_id)]
    starts = starts_of(o.plan)
    live_after = sum(w.phase in LIVE for w in o.after)
    cap_bound = len(starts) >= o.state.budget or live_after >= spec.workers.max_total
    if spec.placement.mode == "dedicated":
        started = {a.entity_id for a in starts if isinstance(a, StartWorker)}
        if any(per_entity[e] >= 2 for e in started):
            assert all(per_entity[e] >= 1 for e in eligible)
        if not cap_bound:
            assert all(per_entity[e] >= 1 for e in eligible)
    elif not cap_bound and not o.backing_off(PACKED):
        slots = spec.placement.slots
        assert per_entity[None] >= min(
            spec.workers.max_total, math.ceil(len(o.first_listings()) / slots)
        )


def check_no_extra_worker_unless_claimable(o: Outcome) -> None:
    per_entity = o.workers_per_entity()
    started = {a.entity_id for a in starts_of(o.plan) if isinstance(a, StartWorker)}
    for entity in o.first_listings():
        if entity.entity_id in started and not entity.claimable:
            assert per_entity[entity.entity_id] == 1, entity


def check_backoff_stays_small(o: Outcome) -> None:
    keys = {e.entity_id for e in o.state.entities}
    if o.state.spec.placement.mode == "packed" and keys:
        keys.add(PACKED)
    for key, entry in o.plan.backoff.items():
        assert key in keys or entry.retry_at > o.state.now, (key, entry)


@settings(max_examples=1500, deadline=None)
@given(states())
def test_invariants(state: State) -> None:
    """One random state, every invariant: generating the state is what costs, so it is shared."""
    o = Outcome.of(state)
    check_no_slot_held_twice(o)
    check_concurrency_1_never_two_workers(o)
    check_caps(o)
    check_no_start_while_backing_off(o)
    check_carried_out_plan_asks_for_nothing_more(o)
    check_pure(o)
    check_actions_name_real_workers_and_slots(o)
    check_action_order(o)
    check_fair_and_never_strands_work(o)
    check_no_extra_worker_unless_claimable(o)
    check_backoff_stays_small(o)
