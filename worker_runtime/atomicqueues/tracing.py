"""OpenTelemetry tracing of jobs, optional: `pip install 'atomicqueues[tracing]'` and
`AQ_TRACING=1` (`Settings.tracing`).

Enqueue puts the caller's current trace context (W3C `traceparent`, `tracestate`, through the
globally configured propagator) in the job's header; the worker runs the handler in a span of
kind CONSUMER named `process <job name>`, with the job id, entity type, job name and attempt as
attributes. The entity id is left out (it is often a person's e-mail or account) and so is the
payload.

The handler's span starts a trace of its own and *links* to the enqueue's span instead of being
its child: a job may run minutes or days after the request that enqueued it, once per attempt,
and one request may enqueue thousands of jobs; as children they would stretch the request's
trace over all of that. A link keeps each trace to one piece of work and still leads from a job
to the request that caused it, as OpenTelemetry's messaging conventions advise. The handler's
own instrumented calls (HTTP, databases) are children of the job's span.

Nothing of OpenTelemetry is imported until tracing is on: with it off, enqueue and the worker
check one boolean and do nothing more.
"""

from __future__ import annotations

from collections.abc import Coroutine
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from .errors import ConfigError
from .extras import missing_extra
from .jobs import Job

T = TypeVar("T")
TRACER = "atomicqueues"


def require() -> None:
    """Import OpenTelemetry's API now; `ConfigError` naming the extra when it is missing."""
    try:
        import opentelemetry.propagate
        import opentelemetry.trace  # noqa: F401
    except ModuleNotFoundError as exc:
        line = missing_extra(exc, "AQ_TRACING=1")
        if line is None:
            raise
        raise ConfigError(line) from None


def carrier() -> dict[str, str] | None:
    """The current trace context as text fields, or None when there is none to carry."""
    from opentelemetry import propagate

    fields: dict[str, str] = {}
    propagate.inject(fields)
    return fields or None


def _tracer_version() -> str:
    try:
        return version("atomicqueues")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"


def attributes(job: Job) -> dict[str, str | int]:
    """What the job's span says of it: never the payload or the entity id."""
    return {
        "messaging.system": "atomicqueues",
        "messaging.operation.type": "process",
        "messaging.message.id": job.id,
        "atomicqueues.job.id": job.id,
        "atomicqueues.entity_type": job.entity_type,
        "atomicqueues.job.name": job.name,
        "atomicqueues.job.attempt": job.attempt,
    }


async def traced(job: Job, handler: Coroutine[Any, Any, T]) -> T:
    """Await `handler` inside the job's span (current for it, so its own spans are children),
    linked to the context enqueue carried in the job."""
    from opentelemetry import context, propagate, trace

    enqueued = trace.get_current_span(propagate.extract(dict(job.trace_context or {})))
    origin = enqueued.get_span_context()
    links = [trace.Link(origin)] if origin.is_valid else []
    tracer = trace.get_tracer(TRACER, _tracer_version())
    with tracer.start_as_current_span(
        f"process {job.name}",
        context=context.Context(),  # a trace of its own: linked, not a child (see above)
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes=attributes(job),
    ):
        return await handler
