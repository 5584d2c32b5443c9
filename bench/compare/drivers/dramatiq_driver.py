"""Dramatiq with the Redis broker: `actor.send` from the producer; one `dramatiq` command that
starts the worker processes itself, each with the benchmark's concurrency in threads."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from compare.driver import Driver, console_script
from compare.marks import ENV_REDIS_URL, mark

dramatiq.set_broker(RedisBroker(url=os.environ.get(ENV_REDIS_URL, "redis://127.0.0.1")))


@dramatiq.actor
def noop(sent: float) -> None:
    mark(sent)


class Dramatiq(Driver):
    name = "dramatiq"
    packages = ("dramatiq", "redis")

    async def enqueue(self, sent: float) -> None:
        noop.send(sent)

    async def close(self) -> None:
        dramatiq.get_broker().close()

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        argv = [console_script("dramatiq"), "compare.drivers.dramatiq_driver"]
        return [[*argv, "--processes", str(processes), "--threads", str(concurrency)]]


DRIVER = Dramatiq
