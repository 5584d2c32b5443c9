"""taskiq with taskiq-redis's `RedisStreamBroker` (the one its README starts with; it
acknowledges messages): `task.kiq` from the producer; one `taskiq worker` command that starts
the worker processes itself, each with `--max-async-tasks` = the benchmark's concurrency."""

from __future__ import annotations

import os

from taskiq_redis import RedisStreamBroker

from compare.driver import Driver, console_script
from compare.marks import ENV_REDIS_URL, mark

broker = RedisStreamBroker(url=os.environ.get(ENV_REDIS_URL, "redis://127.0.0.1"))


@broker.task
async def noop(sent: float) -> None:
    mark(sent)


class Taskiq(Driver):
    name = "taskiq"
    packages = ("taskiq", "taskiq-redis", "redis")

    async def open(self) -> None:
        await broker.startup()

    async def enqueue(self, sent: float) -> None:
        await noop.kiq(sent)

    async def close(self) -> None:
        await broker.shutdown()

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        argv = [console_script("taskiq"), "worker", "compare.drivers.taskiq_driver:broker"]
        return [[*argv, "--workers", str(processes), "--max-async-tasks", str(concurrency)]]


DRIVER = Taskiq
