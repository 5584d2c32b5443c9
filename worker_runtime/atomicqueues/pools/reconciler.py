"""The reconciler core: from what is (work, workers) to what to do. Pure: no I/O, no clock.

One function, `plan`, serves both backends: `aq up` carries its actions out with local
processes, the operator with pods. It is level-based and idempotent: given the same state it
returns the same actions, and once they are carried out it returns none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..index import EntityIndex
from .spec import PoolSpec

Phase = Literal["starting", "running", "closing", "succeeded", "failed"]
PACKED: None = None
"""Backoff key of a pool's packed workers: None, which no entity id can be."""


EntityWork = EntityIndex
"""One entity that has work, as the Redis index shows it (`IndexReads.work_index`)."""


@dataclass(frozen=True)
class WorkerState:
    """One worker the backend knows of (a process, or a pod)."""

    name: str
    entity_id: str | None
    """The entity of a dedicated worker; None for a packed one."""
    slot: int
    """Dedicated: which of the entity's workers (0, 1, ...). Packed: the worker's index."""
    phase: Phase
    started_at: float


@dataclass(frozen=True)
class Backoff:
    """Failures of an entity's workers (or of the packed workers, key PACKED) in a row."""

    failures: int = 0
    retry_at: float = 0.0

    def after_failure(self, spec: PoolSpec, now: float) -> Backoff:
        """One more failure: the next start waits `restartBackoffSeconds`, doubled for each
        failure in a row before it, up to `maxRestartBackoffSeconds`."""
        failures = self.failures + 1
        return Backoff(failures, now + _delay(spec, failures))


@dataclass(frozen=True)
class StartWorker:
    entity_id: str
    slot: int


@dataclass(frozen=True)
class StartPacked:
    index: int


@dataclass(frozen=True)
class CloseWorker:
    """Ask a worker to shut down gracefully (through Redis); it releases its lease first."""

    name: str
    reason: str


@dataclass(frozen=True)
class ForgetWorker:
    """Remove what is left of a worker that has ended (reap a process, delete a pod)."""

    name: str
    failed: bool


Action = StartWorker | StartPacked | CloseWorker | ForgetWorker


@dataclass(frozen=True)
class Plan:
    actions: list[Action]
    backoff: dict[str | None, Backoff] = field(default_factory=dict)
    """The backoff state to keep for the next call (entities absent from it have none)."""
    waiting_for_backoff: list[str | None] = field(default_factory=list)
    """Entities (or PACKED) that need a worker but are backing off."""


_ENDED = frozenset({"succeeded", "failed"})
_LIVE = frozenset({"starting", "running", "closing"})


def plan(
    spec: PoolSpec,
    entities: list[EntityWork],
    workers: list[WorkerState],
    backoff: Mapping[str | None, Backoff],
    now: float,
    start_budget: int,
) -> Plan:
    """Decide what to start, close and forget. Pure: the same input gives the same plan.

    Rules (tests/pools/test_reconciler.py checks each, and their invariants by property tests):

    1. Ended workers ("succeeded", "failed") are forgotten. They are taken in start order; each
       failure raises its key's backoff (key: the entity id, or PACKED for a packed worker):
       failures + 1, retry at now + restartBackoffSeconds * 2**(failures - 1), at most
       maxRestartBackoffSeconds later. A success removes the key's backoff. An entry whose key
       has no work any more and whose retry time has passed is dropped.
    2. Live workers are "starting", "running" and "closing". Closing workers count for the
       pool-wide cap but are never asked for anything again and fill no slot: a replacement
       may start beside a closing worker when the cap allows.
    3. Dedicated: an entity with work wants min(maxPerEntity, concurrency,
       max(1, ceil(waiting / jobsPerWorker))) workers (so never more than one at concurrency
       1). Missing workers start in the lowest free slots, unless the entity is backing off
       (then it is listed in `waiting_for_backoff`); a worker beyond an entity's first starts
       only when the entity is `claimable`. An entity with more live non-closing workers than
       it wants has the surplus closed ("scale down"), newest first among those in slots >= the
       wanted number; its last worker is never closed. Workers of entities without work are
       left alone: they exit when idle.
    4. Packed: ceil(entities with work / slots) workers, at most maxTotal, at the lowest free
       indexes, unless PACKED is backing off. Surplus is closed (highest index first) only when
       the non-closing count exceeds the wanted number + 1, and then down to the wanted number.
    5. Caps: after the plan, live workers (closing included) never exceed maxTotal, and there
       are at most `start_budget` starts. When a cap binds, the first worker of every entity
       comes before the second of any, and among equals the entity whose work began earliest
       (`since`, then id) comes first.
    6. Actions come in order: forgets (by name), closes, starts (in fairness order).

    Also, so that any state converges: workers of the other placement mode are closed
    ("placement changed"); of two live non-closing workers in one (entity, slot) or packed
    index, the newer is closed ("duplicate"); an entity listed twice counts once (the first).
    Level-based: once the actions are carried out (starts are live, forgets gone, closes
    closing), planning again with the returned backoff and the rest of the start budget
    yields no start and no close.
    """
    mode = spec.placement.mode
    max_total = spec.workers.max_total
    work: dict[str, EntityWork] = {}
    for entity in entities:
        work.setdefault(entity.entity_id, entity)

    # 1. Forget ended workers; their outcomes move the backoff.
    ended = sorted((w for w in workers if w.phase in _ENDED), key=lambda w: (w.started_at, w.name))
    new_backoff = dict(backoff)
    for worker in ended:
        key = PACKED if worker.entity_id is None else worker.entity_id
        if worker.phase == "failed":
            new_backoff[key] = new_backoff.get(key, Backoff()).after_failure(spec, now)
        else:
            new_backoff.pop(key, None)
    has_work: set[str | None] = set(work)
    if mode == "packed" and work:
        has_work.add(PACKED)
    new_backoff = {
        key: entry for key, entry in new_backoff.items() if key in has_work or entry.retry_at > now
    }
    forgets: list[Action] = [
        ForgetWorker(w.name, w.phase == "failed") for w in sorted(ended, key=lambda w: w.name)
    ]

    # 2. Live workers; those not closing are the ones that fill slots.
    live = [w for w in workers if w.phase in _LIVE]
    closes: list[Action] = []
    current: list[WorkerState] = []  # of this placement mode
    for worker in sorted(
        (w for w in live if w.phase != "closing"), key=lambda w: (w.started_at, w.name)
    ):
        if (worker.entity_id is None) != (mode == "packed"):
            closes.append(CloseWorker(worker.name, "placement changed"))
        else:
            current.append(worker)
    holders: dict[tuple[str | None, int], WorkerState] = {}
    for worker in current:  # oldest first: the oldest holder of a slot stays
        held = holders.setdefault((worker.entity_id, worker.slot), worker)
        if held is not worker:
            closes.append(CloseWorker(worker.name, "duplicate"))
    by_entity: dict[str | None, list[WorkerState]] = {}
    for worker in holders.values():
        by_entity.setdefault(worker.entity_id, []).append(worker)

    allowance = max(0, min(start_budget, max_total - len(live)))
    waiting_for_backoff: list[str | None] = []

    def backing_off(key: str | None) -> bool:
        entry = new_backoff.get(key)
        return entry is not None and entry.retry_at > now

    starts: list[Action] = []
    if mode == "dedicated":
        # 3. Each entity with work, earliest work first.
        candidates: list[tuple[int, float, str, int]] = []
        for entity in sorted(work.values(), key=lambda e: (e.since, e.entity_id)):
            want = _wanted(spec, entity)
            present = by_entity.get(entity.entity_id, [])
            if len(present) > want:
                surplus = sorted(
                    (w for w in present if w.slot >= want),
                    key=lambda w: (w.started_at, w.name),
                    reverse=True,
                )
                closes.extend(
                    CloseWorker(w.name, "scale down") for w in surplus[: len(present) - want]
                )
                continue
            free = _lowest_free({w.slot for w in present}, want - len(present))
            wanted_starts = [
                (rank, entity.since, entity.entity_id, slot)
                for rank, slot in enumerate(free, start=len(present))
                if rank == 0 or entity.claimable
            ]
            if not wanted_starts:
                continue
            if backing_off(entity.entity_id):
                waiting_for_backoff.append(entity.entity_id)
                continue
            candidates.extend(wanted_starts)
        # 5. First workers before second ones, then earliest work first.
        candidates.sort()
        starts = [StartWorker(entity_id, slot) for _, _, entity_id, slot in candidates]
    else:
        # 4. Packed workers.
        want = min(max_total, -(-len(work) // spec.placement.slots))
        present = by_entity.get(None, [])
        if len(present) > want + 1:
            surplus = sorted(present, key=lambda w: (w.slot, w.started_at, w.name), reverse=True)
            closes.extend(CloseWorker(w.name, "scale down") for w in surplus[: len(present) - want])
        elif len(present) < want:
            if backing_off(PACKED):
                waiting_for_backoff.append(PACKED)
            else:
                free = _lowest_free({w.slot for w in present}, want - len(present))
                starts = [StartPacked(index) for index in free]

    return Plan(
        actions=forgets + closes + starts[:allowance],
        backoff=new_backoff,
        waiting_for_backoff=waiting_for_backoff,
    )


def _delay(spec: PoolSpec, failures: int) -> float:
    """Wait before restarting after `failures` failures in a row (no overflow however many)."""
    timing = spec.timing
    delay = timing.restart_backoff_seconds * 2.0 ** min(failures - 1, 1000)
    return min(delay, timing.max_restart_backoff_seconds)


def _wanted(spec: PoolSpec, entity: EntityWork) -> int:
    """How many dedicated workers an entity with work wants (at least 1)."""
    by_jobs = max(1, -(-max(0, entity.waiting) // spec.workers.jobs_per_worker))
    return max(1, min(spec.workers.max_per_entity, entity.concurrency, by_jobs))


def _lowest_free(taken: set[int], count: int) -> list[int]:
    """The `count` lowest non-negative numbers not in `taken`."""
    free: list[int] = []
    number = 0
    while len(free) < count:
        if number not in taken:
            free.append(number)
        number += 1
    return free


def desired_workers(
    spec: PoolSpec,
    entities: list[EntityIndex],
    states: list[WorkerState],
    backoff: Mapping[str | None, Backoff],
    now: float,
) -> int:
    """Workers the pool wants: what the plan would have with no start budget limit."""
    ideal = plan(spec, entities, states, backoff, now, start_budget=spec.workers.max_total)
    packed = spec.placement.mode == "packed"
    keeping = sum(
        1 for s in states if s.phase in ("starting", "running") and (s.entity_id is None) == packed
    )
    closes = sum(1 for a in ideal.actions if isinstance(a, CloseWorker))
    starts = sum(1 for a in ideal.actions if isinstance(a, StartWorker | StartPacked))
    return min(
        spec.workers.max_total, max(0, keeping - closes + starts + len(ideal.waiting_for_backoff))
    )
