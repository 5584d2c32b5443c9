"""arq: `ArqRedis.enqueue_job` from the producer; `arq` worker processes (asyncio), each with
`max_jobs` = the benchmark's concurrency, polling at arq's default `poll_delay` (0.5 s)."""

from __future__ import annotations

import os
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from compare.driver import Driver, console_script
from compare.marks import ENV_CONCURRENCY, ENV_REDIS_URL, mark


async def noop(ctx: dict[str, Any], sent: float) -> None:
    mark(sent)


class WorkerSettings:
    functions = [noop]  # noqa: RUF012 (arq reads plain class attributes)
    redis_settings = RedisSettings.from_dsn(os.environ.get(ENV_REDIS_URL, "redis://127.0.0.1"))
    max_jobs = int(os.environ.get(ENV_CONCURRENCY, "10"))


class Arq(Driver):
    name = "arq"
    packages = ("arq", "redis")

    async def open(self) -> None:
        self.pool = await create_pool(RedisSettings.from_dsn(self.url))

    async def enqueue(self, sent: float) -> None:
        await self.pool.enqueue_job("noop", sent)

    async def close(self) -> None:
        await self.pool.aclose()

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        argv = [console_script("arq"), "compare.drivers.arq_driver.WorkerSettings"]
        return [argv for _ in range(processes)]


DRIVER = Arq
