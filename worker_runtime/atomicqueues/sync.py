"""A thin synchronous facade over `Client`, for producers in sync code (Django, Flask).

It owns one event loop in a daemon thread and runs the async client's coroutines there, so it
is safe to share between threads and to call from code that has no event loop of its own.
The producer's operations of `Client` are methods here; anything else of the async API (the
index, dead letters, limits, schedules, locks) goes through `run`:
`sync.run(lambda client: IndexReads(client).counts("user"))`. Workers are async.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

from .client import Client, Entity, NewJob, Paused
from .config import Settings
from .jobs import Job

T = TypeVar("T")


def _deliver(outcome: Future[T], task: asyncio.Task[T]) -> None:
    if task.cancelled():
        outcome.cancel()
    elif (exc := task.exception()) is not None:
        outcome.set_exception(exc)
    else:
        outcome.set_result(task.result())


class SyncClient:
    def __init__(self, settings: Settings | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="aq-sync", daemon=True)
        self._thread.start()
        try:
            self._client = self._run(Client.connect(settings))
        except BaseException:
            self._stop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the client's loop and wait for its outcome: a task there that hands
        its outcome to this thread's future (`asyncio.run_coroutine_threadsafe` chains the two
        futures both ways, which a call from here, never cancelled, does not need: an eighth
        of what an enqueue through this facade costs)."""
        outcome: Future[T] = Future()

        def start() -> None:
            try:
                task = self._loop.create_task(coro)
            except BaseException as exc:  # the loop is closing
                outcome.set_exception(exc)
                raise
            task.add_done_callback(partial(_deliver, outcome))

        self._loop.call_soon_threadsafe(start)
        return outcome.result()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def run(self, call: Callable[[Client], Awaitable[T]]) -> T:
        """Run a call of the async API with this facade's client, and return its outcome:
        `sync.run(lambda client: Schedules(client).list("user"))`."""

        async def run() -> T:
            return await call(self._client)

        return self._run(run())

    def close(self) -> None:
        self._run(self._client.close())
        self._stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(
        self, entity_type: str, entity_id: str, name: str, payload: Any = None, **options: Any
    ) -> str:
        return self._run(self._client.enqueue(entity_type, entity_id, name, payload, **options))

    def enqueue_many(self, jobs: Iterable[NewJob]) -> list[str]:
        # Listed here, in the caller's thread: a generator must not run on the client's loop.
        return self._run(self._client.enqueue_many(list(jobs)))

    def cancel(self, job_id: str, *, entity: Entity | None = None) -> bool:
        return self._run(self._client.cancel(job_id, entity=entity))

    def pause(self, entity_type: str, entity_id: str | None = None) -> int:
        return self._run(self._client.pause(entity_type, entity_id))

    def resume(self, entity_type: str, entity_id: str | None = None) -> int:
        return self._run(self._client.resume(entity_type, entity_id))

    def paused(self, entity_type: str) -> Paused:
        return self._run(self._client.paused(entity_type))

    def job(self, job_id: str, *, entity: Entity | None = None) -> Job:
        return self._run(self._client.job(job_id, entity=entity))

    def result(
        self, job_id: str, *, timeout: float | None = None, entity: Entity | None = None
    ) -> Any:
        return self._run(self._client.result(job_id, timeout=timeout, entity=entity))
