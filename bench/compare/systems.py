"""The systems the report compares, what each is installed from, and how it runs.

Why this exists: one table that says, for every run of the report, which driver serves it,
which pinned packages its virtualenv gets, and the words the report prints about it, so that
adding a system is one entry here and one module in `compare/drivers/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROCESSES = 2
"""Worker processes of every system (the machine has 2 cores)."""
CONCURRENCY = 16
"""Jobs in flight per worker process, where the system runs jobs concurrently in a process
(asyncio tasks or threads); as `bench/hotpath.py`'s `aq worker --slots 16`."""


@dataclass(frozen=True)
class System:
    key: str
    """Unique name of this run in the figures (`aq-1000`, `celery`, ...)."""
    label: str
    driver: str
    """`compare/drivers/<driver>_driver.py`."""
    requirements: tuple[str, ...] = ()
    """Pinned distributions of its virtualenv; empty: the project's own interpreter."""
    options: dict[str, Any] = field(default_factory=dict)
    runs: str = ""
    """How its workers run, in the report's words."""
    ordered: bool = False
    """Jobs of one entity start in order (only AtomicQueues with concurrency 1)."""
    competitor: bool = True
    latency: bool = True
    """Also measure enqueue-to-start latency (the atomicity-only runs skip it)."""
    max_jobs: int | None = None
    """Fewer jobs than the run's for a system too slow for them in the time a run has."""
    bulk: bool = False
    """Also measure an enqueue of the run's jobs through the system's bulk API, in chunks of
    `BULK_CHUNK` (`Driver.enqueue_many`), on an empty server before the run itself."""
    cluster_of: str = ""
    """The key of the same run on the standalone server, for a run on the report's Redis
    Cluster (empty: a run on the standalone server)."""

    @property
    def on_cluster(self) -> bool:
        return bool(self.cluster_of)

    def jobs(self, jobs: int) -> int:
        return min(jobs, self.max_jobs) if self.max_jobs else jobs


RQ_JOBS = 4000
"""RQ forks a process for every job (its default worker): about 50 jobs/s here, so 20,000 jobs
would take some 7 minutes per repetition; its per-job figures are steady long before that."""

AQ_PACKED = f"{PROCESSES} × `aq worker --slots {CONCURRENCY}`"
CLUSTER_MASTERS = 3
"""Masters of the report's Redis Cluster (no replicas), from the same redis-server binary."""
BULK_CHUNK = 1000
"""Jobs per bulk enqueue call (`Client.enqueue_many`)."""
ON_CLUSTER = f"; on a {CLUSTER_MASTERS}-master Redis Cluster, given one node's redis:// URL"

SYSTEMS: tuple[System, ...] = (
    System(
        "aq-1000",
        "AtomicQueues, 1,000 entities",
        "aq",
        options={"entities": 1000},
        runs=AQ_PACKED,
        ordered=True,
        competitor=False,
        bulk=True,
    ),
    System(
        "aq-1",
        "AtomicQueues, 1 entity",
        "aq",
        options={"entities": 1},
        runs=AQ_PACKED + ", one job of the entity at a time",
        ordered=True,
        competitor=False,
    ),
    System(
        "aq-new",
        "AtomicQueues, every job for a new entity",
        "aq",
        options={"entities": 10_000_000},
        runs=AQ_PACKED + "; each job an entity switch (claim, run, release)",
        ordered=True,
        competitor=False,
    ),
    System(
        "aq-10",
        "AtomicQueues, 10 entities",
        "aq",
        options={"entities": 10},
        runs=AQ_PACKED,
        ordered=True,
        competitor=False,
        latency=False,
    ),
    System(
        "aq-1xN",
        f"AtomicQueues, 1 entity of concurrency {PROCESSES * CONCURRENCY} (no order)",
        "aq",
        options={"entities": 1, "concurrency": PROCESSES * CONCURRENCY, "mode": "bound"},
        runs=f"{PROCESSES} processes × {CONCURRENCY} entity-bound `Worker`s of the entity",
        competitor=False,
        latency=False,
    ),
    System(
        "aq-1000-cluster",
        "AtomicQueues, 1,000 entities, Redis Cluster",
        "aq",
        options={"entities": 1000},
        runs=AQ_PACKED + ON_CLUSTER,
        ordered=True,
        competitor=False,
        latency=False,
        bulk=True,
        cluster_of="aq-1000",
    ),
    System(
        "aq-new-cluster",
        "AtomicQueues, every job for a new entity, Redis Cluster",
        "aq",
        options={"entities": 10_000_000},
        runs=AQ_PACKED + ON_CLUSTER,
        ordered=True,
        competitor=False,
        latency=False,
        cluster_of="aq-new",
    ),
    System(
        "rq",
        "RQ",
        "rq",
        ("rq==2.12.0",),
        runs=f"{PROCESSES} × `rq worker` (forks a work horse per job; 1 job at a time)",
        max_jobs=RQ_JOBS,
    ),
    System(
        "arq",
        "arq",
        "arq",
        ("arq==0.28.0",),
        runs=f"{PROCESSES} × `arq`, `max_jobs={CONCURRENCY}`",
    ),
    System(
        "celery",
        "Celery (Redis broker)",
        "celery",
        ("celery[redis]==5.7.0",),
        runs=f"{PROCESSES} × `celery worker --pool threads --concurrency {CONCURRENCY}`",
    ),
    System(
        "dramatiq",
        "Dramatiq (Redis broker)",
        "dramatiq",
        ("dramatiq[redis]==2.2.1",),
        runs=f"`dramatiq --processes {PROCESSES} --threads {CONCURRENCY}`",
    ),
    System(
        "taskiq",
        "taskiq + taskiq-redis",
        "taskiq",
        ("taskiq==0.13.0", "taskiq-redis==1.2.4"),
        runs=f"`taskiq worker --workers {PROCESSES} --max-async-tasks {CONCURRENCY}`, "
        "`RedisStreamBroker`",
    ),
    System(
        "huey",
        "Huey",
        "huey",
        ("huey==3.5.4", "redis"),
        runs=f"{PROCESSES} × `huey_consumer --workers {CONCURRENCY} --worker-type thread`",
    ),
    System(
        "bullmq",
        "BullMQ (Python)",
        "bullmq",
        ("bullmq==3.4.4",),
        runs=f"{PROCESSES} processes × `bullmq.Worker(concurrency={CONCURRENCY})`",
    ),
)

CHART_REQUIREMENTS = ("matplotlib==3.11.2",)
"""The chart is drawn in a virtualenv of its own: matplotlib is no dependency of the project."""


def by_key(key: str) -> System:
    for system in SYSTEMS:
        if system.key == key:
            return system
    raise KeyError(key)
