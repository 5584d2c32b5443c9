"""RQ: `Queue.enqueue` from the producer; `rq worker` processes, each forking a work horse per
job (RQ's default `Worker`), one job at a time per process."""

from __future__ import annotations

import os

from redis import Redis
from rq import Queue

from compare.driver import Driver, console_script
from compare.marks import ENV_REDIS_URL, mark


def noop(sent: float) -> None:
    mark(sent)


class RQ(Driver):
    name = "rq"
    packages = ("rq", "redis")

    async def open(self) -> None:
        self.queue = Queue(connection=Redis.from_url(self.url))

    async def enqueue(self, sent: float) -> None:
        self.queue.enqueue(noop, sent)

    async def close(self) -> None:
        self.queue.connection.close()

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        url = os.environ.get(ENV_REDIS_URL, self.url)
        return [[console_script("rq"), "worker", "--url", url] for _ in range(processes)]


DRIVER = RQ
