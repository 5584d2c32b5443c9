"""Celery with the Redis broker: `task.delay` from the producer; `celery worker` processes with
the thread pool at the benchmark's concurrency (one process each, as the others), no result
backend (Celery's default)."""

from __future__ import annotations

import os

from celery import Celery

from compare.driver import Driver, console_script
from compare.marks import ENV_REDIS_URL, mark

app = Celery("bench", broker=os.environ.get(ENV_REDIS_URL, "redis://127.0.0.1"))


@app.task
def noop(sent: float) -> None:
    mark(sent)


class CeleryDriver(Driver):
    name = "celery"
    packages = ("celery", "kombu", "redis")

    async def enqueue(self, sent: float) -> None:
        noop.delay(sent)

    async def close(self) -> None:
        app.close()

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        return [
            [
                console_script("celery"),
                "-A",
                "compare.drivers.celery_driver",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"bench{i}@%h",
            ]
            for i in range(processes)
        ]


DRIVER = CeleryDriver
