"""Prometheus metrics of a worker, labelled by entity type and job name, never by entity id.

Entity ids are unbounded (one per user): as labels they would blow up the metrics store.
"""

from __future__ import annotations

import logging
from functools import cache

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LABELS = ("entity_type", "job")

JOBS_STARTED = Counter("aq_jobs_started_total", "Jobs started", _LABELS)
JOBS_COMPLETED = Counter("aq_jobs_completed_total", "Jobs completed", _LABELS)
JOBS_FAILED = Counter("aq_jobs_failed_total", "Job attempts that raised", _LABELS)
JOBS_RETRIED = Counter("aq_jobs_retried_total", "Jobs scheduled for another attempt", _LABELS)
JOBS_DEAD = Counter("aq_jobs_dead_total", "Jobs moved to the dead-letter list", _LABELS)
JOBS_CANCELLED = Counter("aq_jobs_cancelled_total", "Running jobs cancelled on request", _LABELS)
JOBS_TIMED_OUT = Counter(
    "aq_jobs_timed_out_total", "Job attempts stopped at their time limit", _LABELS
)
JOB_DURATION = Histogram(
    "aq_job_duration_seconds",
    "Time a handler ran",
    _LABELS,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
JOB_WAIT = Histogram(
    "aq_job_wait_seconds",
    "Time from enqueue to start (includes any delay and retries)",
    _LABELS,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 600),
)
IN_FLIGHT = Gauge("aq_jobs_in_flight", "Jobs this worker is running", ("entity_type",))
OUTCOMES_NOT_REPLICATED = Counter(
    "aq_outcomes_not_replicated_total",
    "Job outcomes fewer replicas confirmed in time than AQ_DURABLE_REPLICAS asks",
    ("entity_type",),
)
ENQUEUE_REFUSED = Counter(
    "aq_enqueue_refused_total",
    "Jobs this process enqueued that their entity's max backlog refused",
    ("entity_type",),
)
LEASES_LOST = Counter("aq_leases_lost_total", "Leases lost to expiry or takeover", ("entity_type",))


OUTCOMES = {
    "completed": JOBS_COMPLETED,
    "cancelled": JOBS_CANCELLED,
    "retry": JOBS_RETRIED,
    "dead": JOBS_DEAD,
}
"""What each outcome a worker records counts in."""


class JobMetrics:
    """The metrics of the jobs of one entity type and job name, each looked up once
    (`job_metrics`): finding a labelled metric costs more than counting in it, and a worker
    counts several times per job. A metric is looked up when first counted in, as before, so
    /metrics shows the same series."""

    def __init__(self, entity_type: str, job: str) -> None:
        self.labels = (entity_type, job)
        self.started = JOBS_STARTED.labels(*self.labels)
        self.wait = JOB_WAIT.labels(*self.labels)
        self.duration = JOB_DURATION.labels(*self.labels)
        self._outcomes: dict[str, Counter] = {}

    def outcome(self, outcome: str) -> Counter:
        """The counter of `outcome` (`OUTCOMES`)."""
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = OUTCOMES[outcome].labels(*self.labels)
        return counter


@cache
def job_metrics(entity_type: str, job: str) -> JobMetrics:
    """The metrics of (entity type, job name). Prometheus keeps every labelled metric for good,
    so keeping them here too costs nothing more."""
    return JobMetrics(entity_type, job)


# Schedules (schedules.py), of every process that ticks: `aq up`, the operator,
# `aq schedule run`. The counter and histogram add up across processes; each tick fires once.
SCHEDULES = Gauge("aq_schedules", "Schedules of the entity type", ("entity_type",))
SCHEDULE_FIRES = Counter(
    "aq_schedule_fires_total", "Jobs this process fired for schedules", ("entity_type",)
)
SCHEDULE_FIRE_DELAY = Histogram(
    "aq_schedule_fire_delay_seconds",
    "From a schedule's tick to its job enqueued (a tick missed while nothing ran counts here)",
    ("entity_type",),
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 30, 300, 3600),
)


def serve(port: int) -> None:
    """Serve /metrics on `port` (a daemon thread). A port already taken is a warning, not an
    end: the worker's jobs matter more than its metrics (pods on the host's network share
    one port)."""
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("cannot serve metrics on port %d: %s", port, exc)
