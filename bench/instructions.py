"""Instructions Redis executes per job: a figure that does not move with the machine's load.

Why this exists: Redis CPU per job (docs/benchmarks.md, section 3) is a time, and on a shared
machine two runs of the same code differ by 20-40%, more than most changes to the scripts make.
This script runs a private redis-server under valgrind's callgrind and counts the instructions
the server executes (user space: parsing, the scripts, the commands they run, replies; not the
kernel) for each step of a job, from the library's own calls:

- enqueue: `Client.enqueue`, one job per call (100 calls in flight at a time);
- drain: 16 slots of one owner, each taking a job (`Leases.claim_any`) and finishing it with
  the next one started (`Leases.finish(..., claim_next="any")`), as a packed worker does;

for jobs spread over 1,000 entities and for every job of a new entity (each one an entity
switch). Each figure is put next to a no-op EVALSHA measured in the same server (`return 1`):
what one round trip and a script call cost before the script does anything.

    python bench/instructions.py [--jobs N]    # needs valgrind (apt-get install valgrind)

Counts are exact for a given build of Redis and barely move between runs; callgrind makes the
server about 50 times slower: the default 20,000 jobs per case (as in bench/report.py) take
about 5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import redis.asyncio as aioredis
import redis.exceptions

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from atomicqueues.client import Client  # noqa: E402
from atomicqueues.config import Settings  # noqa: E402
from atomicqueues.leases import Leases  # noqa: E402
from redis_servers import free_port  # noqa: E402

ENTITY_TYPE = "bench"
SLOTS = 16
IN_FLIGHT = 100
NOOP = "return 1"


class Counted:
    """redis-server under callgrind, counting only between `start()` and `stop()`."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={workdir}/callgrind.%p",
                binary,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.dumps = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )

    def start(self) -> None:
        self._control("--zero")
        self._control("--instr=on")

    def stop(self) -> int:
        """Instructions counted since `start()`."""
        self._control("--instr=off")
        self._control("--dump")
        self.dumps += 1
        dump = self.workdir / f"callgrind.{self.proc.pid}.{self.dumps}"
        for _ in range(100):
            if dump.exists() and "totals:" in (text := dump.read_text()):
                return next(
                    int(line.split()[1]) for line in text.splitlines() if line.startswith("totals:")
                )
            time.sleep(0.1)
        raise RuntimeError(f"callgrind wrote no {dump.name}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


async def commands(r: aioredis.Redis) -> int:
    """Commands run since CONFIG RESETSTAT, which counts itself (INFO does not)."""
    stats = await r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if "config" not in k)


async def measure(
    server: Counted, r: aioredis.Redis, step: Callable[[], Awaitable[int]]
) -> tuple[float, float]:
    """(instructions, commands) per job of one step; `step` returns the jobs it did."""
    await r.config_resetstat()
    server.start()
    jobs = await step()
    instructions = server.stop()
    return instructions / jobs, await commands(r) / jobs


async def enqueue(client: Client, entities: list[str]) -> int:
    for i in range(0, len(entities), IN_FLIGHT):
        chunk = entities[i : i + IN_FLIGHT]
        await asyncio.gather(*(client.enqueue(ENTITY_TYPE, e, "noop", None) for e in chunk))
    return len(entities)


async def drain(client: Client, jobs: int) -> int:
    leases = Leases(client, "bench-owner")
    buckets = await leases.busy_buckets(ENTITY_TYPE)
    done = 0

    async def slot() -> None:
        nonlocal done
        while buckets:
            bucket = buckets[0]
            run = await leases.claim_any(ENTITY_TYPE, bucket)
            # Nothing claimable left there: what is held drains by hand-over.
            if run is None and buckets and buckets[0] == bucket:
                buckets.pop(0)
            while run is not None:
                done += 1
                run = await leases.finish(run, "completed", "null", claim_next="any")

    await asyncio.gather(*(slot() for _ in range(SLOTS)))
    if done != jobs:
        raise RuntimeError(f"{done} of {jobs} jobs ran")
    return done


async def noop(r: aioredis.Redis, sha: str, n: int) -> int:
    for i in range(0, n, IN_FLIGHT):
        await asyncio.gather(*(r.evalsha(sha, 0) for _ in range(min(IN_FLIGHT, n - i))))
    return n


async def run(binary: str, jobs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="aq-instructions-") as tmp:
        server = Counted(binary, Path(tmp))
        try:
            r = aioredis.Redis.from_url(server.url)
            for _ in range(300):
                try:
                    await r.ping()
                    break
                except redis.exceptions.ConnectionError:
                    await asyncio.sleep(0.1)
            sha = await r.script_load(NOOP)
            client = await Client.connect(Settings(redis_url=server.url, prefix="aqbench"))
            base, _ = await measure(server, r, lambda: noop(r, sha, jobs))
            print(f"no-op EVALSHA: {base / 1000:.1f} k instructions per call", flush=True)
            print("| case | step | k instructions/job | ÷ no-op EVALSHA | commands/job |")
            print("| --- | --- | ---: | ---: | ---: |")
            cases = {
                "1,000 entities": [f"e{i % 1000}" for i in range(jobs)],
                "every job for a new entity": [f"n{i}" for i in range(jobs)],
            }
            for case, entities in cases.items():
                await r.flushdb()
                steps: list[tuple[str, Callable[[], Awaitable[int]]]] = [
                    ("enqueue", partial(enqueue, client, entities)),
                    ("claim or finish", partial(drain, client, jobs)),
                ]
                for name, step in steps:
                    per_job, cmds = await measure(server, r, step)
                    print(
                        f"| {case} | {name} | {per_job / 1000:.1f} | {per_job / base:.1f}× "
                        f"| {cmds:.2f} |",
                        flush=True,
                    )
            await client.close()
            await r.aclose()
        finally:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per case (default 20000)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("bench/instructions.py needs valgrind (Debian: apt-get install valgrind)")
    binary = os.environ.get("AQ_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        sys.exit("no redis-server: put one on PATH or set AQ_REDIS_SERVER")
    asyncio.run(run(binary, args.jobs))


if __name__ == "__main__":
    main()
