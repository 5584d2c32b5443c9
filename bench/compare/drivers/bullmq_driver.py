"""BullMQ's Python package: `Queue.add` from the producer; worker processes of our own (BullMQ
has no worker command line), each one `bullmq.Worker` with `concurrency` = the benchmark's."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from bullmq import Queue, Worker

from compare.driver import Driver
from compare.marks import ENV_CONCURRENCY, ENV_REDIS_URL, mark

QUEUE = "bench"


async def noop(job: Any, token: str) -> None:
    mark(job.data["sent"])


class BullMQ(Driver):
    name = "bullmq"
    packages = ("bullmq", "redis")

    async def open(self) -> None:
        self.queue = Queue(QUEUE, {"connection": self.url})

    async def enqueue(self, sent: float) -> None:
        await self.queue.add("noop", {"sent": sent})

    async def close(self) -> None:
        await self.queue.close()

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        argv = [sys.executable, "-m", "compare.drivers.bullmq_driver"]
        return [argv for _ in range(processes)]


async def work() -> None:
    """One worker process: a Worker until SIGTERM, then a graceful close."""
    options = {"connection": os.environ[ENV_REDIS_URL]}
    options["concurrency"] = int(os.environ[ENV_CONCURRENCY])  # type: ignore[assignment]
    worker = Worker(QUEUE, noop, options)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await worker.close()


DRIVER = BullMQ

if __name__ == "__main__":
    asyncio.run(work())
