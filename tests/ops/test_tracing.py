"""Tracing with OpenTelemetry: the enqueue's trace context travels in the job, and a real worker
runs the handler in a span linked to it, with the job's id, type, name and attempt (never the
payload or the entity id); with tracing off nothing is carried and no span is made.

Why: a job runs far from the request that caused it; the link is the way back. The SDK's
in-memory exporter catches the spans of a producer and of a `Worker` on this test's event loop,
against a real Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from atomicqueues import Backoff, Client, JobContext, Registry, Settings, Worker
from helpers import Connect, aq
from runtime.workers import base_env

FAST = {"heartbeat_ttl": 0.6, "heartbeat_interval": 0.2, "idle_timeout": 0.3}
EXPORTER = InMemorySpanExporter()
ENTITY = "alice@example.com"
SECRET = "card-4242"


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    """The process's tracer provider (OpenTelemetry allows one per process), exporting to
    memory."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def make_registry(seen: list[trace.SpanContext]) -> Registry:
    registry = Registry()
    tracer = trace.get_tracer("test-handler")

    @registry.command("charge")
    async def charge(ctx: JobContext, payload: dict[str, str]) -> None:
        seen.append(trace.get_current_span().get_span_context())
        with tracer.start_as_current_span("call the bank"):
            pass
        if ctx.attempt == 1 and payload.get("fail_first"):
            raise RuntimeError("the bank said no")

    return registry


@pytest.fixture
def client_settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, tracing=True, **FAST)  # type: ignore[arg-type]


async def run_worker(client: Client, registry: Registry) -> None:
    worker = Worker(client, registry, "wallet", entity_id=ENTITY)
    assert await asyncio.wait_for(worker.run(), 30) == "idle"


def ids(context: trace.SpanContext) -> tuple[int, int]:
    return context.trace_id, context.span_id


def linked(span: ReadableSpan) -> list[tuple[int, int]]:
    return [ids(link.context) for link in span.links]


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


async def test_the_handler_span_links_to_the_enqueue(
    client: Client, spans: InMemorySpanExporter
) -> None:
    with trace.get_tracer("test-producer").start_as_current_span("POST /charge") as request:
        job_id = await client.enqueue("wallet", ENTITY, "charge", {"card": SECRET})
    origin = request.get_span_context()
    job = await client.job(job_id)
    assert job.trace_context is not None
    assert f"{origin.trace_id:032x}" in job.trace_context["traceparent"]

    seen: list[trace.SpanContext] = []
    await run_worker(client, make_registry(seen))
    (span,) = named(spans, "process charge")
    assert span.kind is SpanKind.CONSUMER
    assert span.parent is None  # a trace of its own ...
    assert span.context.trace_id != origin.trace_id
    assert linked(span) == [ids(origin)]  # ... linked to the request
    assert dict(span.attributes or {}) == {
        "messaging.system": "atomicqueues",
        "messaging.operation.type": "process",
        "messaging.message.id": job_id,
        "atomicqueues.job.id": job_id,
        "atomicqueues.entity_type": "wallet",
        "atomicqueues.job.name": "charge",
        "atomicqueues.job.attempt": 1,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert seen == [span.context]  # current while the handler runs
    (inner,) = named(spans, "call the bank")
    assert inner.parent == span.context  # the handler's own spans are its children
    text = " ".join(str(s.to_json()) for s in spans.get_finished_spans())
    assert SECRET not in text
    assert ENTITY not in text


async def test_each_attempt_has_a_span_and_a_failure_is_an_error(
    client: Client, spans: InMemorySpanExporter
) -> None:
    with trace.get_tracer("test-producer").start_as_current_span("batch") as request:
        await client.enqueue(
            "wallet",
            ENTITY,
            "charge",
            {"fail_first": "yes"},
            attempts=2,
            backoff=Backoff(type="fixed", delay=0, jitter=0),
        )
    await run_worker(client, make_registry([]))
    first, second = sorted(named(spans, "process charge"), key=lambda s: s.start_time or 0)
    assert [s.attributes["atomicqueues.job.attempt"] for s in (first, second)] == [1, 2]  # type: ignore[index]
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert second.status.status_code is StatusCode.UNSET
    origin = request.get_span_context()
    assert linked(first) == linked(second) == [ids(origin)]


async def test_no_enqueue_context_no_link(client: Client, spans: InMemorySpanExporter) -> None:
    job_id = await client.enqueue("wallet", ENTITY, "charge", {})
    assert (await client.job(job_id)).trace_context is None
    await run_worker(client, make_registry([]))
    (span,) = named(spans, "process charge")
    assert span.links == ()


async def test_off_carries_nothing_and_makes_no_span(
    connect: Connect, spans: InMemorySpanExporter
) -> None:
    client = await connect(tracing=False)
    with trace.get_tracer("test-producer").start_as_current_span("POST /charge"):
        job_id = await client.enqueue("wallet", ENTITY, "charge", {})
    assert (await client.job(job_id)).trace_context is None
    seen: list[trace.SpanContext] = []
    await run_worker(client, make_registry(seen))
    assert not named(spans, "process charge")
    assert seen == [trace.INVALID_SPAN_CONTEXT]


def test_missing_extra_is_one_line(redis_url: str, tmp_path: Path) -> None:
    """Without OpenTelemetry installed (a plain module shadows the package), AQ_TRACING=1
    says which extra to install."""
    (tmp_path / "opentelemetry.py").write_text("")
    env = base_env(redis_url, tracing="1")
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    done = aq("status", env=env)
    assert done.returncode == 1
    assert done.stderr == (
        "aq: AQ_TRACING=1 needs opentelemetry-api, which is not installed: "
        "pip install 'atomicqueues[tracing]'\n"
    )


def test_a_bad_switch_is_one_line(redis_url: str) -> None:
    done = aq("status", env=base_env(redis_url, tracing="maybe"))
    assert (done.returncode, done.stderr) == (1, "aq: AQ_TRACING='maybe' is not a valid flag\n")
