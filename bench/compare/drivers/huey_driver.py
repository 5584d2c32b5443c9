"""Huey with `RedisHuey` (blocking reads, its default): calling the task enqueues it;
`huey_consumer` processes with the benchmark's concurrency in worker threads."""

from __future__ import annotations

import os

from huey import RedisHuey

from compare.driver import Driver, console_script
from compare.marks import ENV_REDIS_URL, mark

huey = RedisHuey("bench", url=os.environ.get(ENV_REDIS_URL, "redis://127.0.0.1"))


@huey.task()
def noop(sent: float) -> None:
    mark(sent)


class Huey(Driver):
    name = "huey"
    packages = ("huey", "redis")

    async def enqueue(self, sent: float) -> None:
        noop(sent)

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        argv = [console_script("huey_consumer"), "compare.drivers.huey_driver.huey"]
        return [[*argv, "--workers", str(concurrency), "--worker-type", "thread"]] * processes


DRIVER = Huey
