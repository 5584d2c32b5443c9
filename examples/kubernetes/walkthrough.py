"""Enqueue jobs for a few accounts, wait until the pool's workers have run them, check order.

Run where AQ_REDIS_URL reaches the pool's Redis, for example in a pod of this image (what
scripts/kind-e2e.sh does):

    python -m walkthrough --accounts 5 --jobs 8 --timeout 180

Exit status 0 when every job ran once, in order per account, with no two jobs of an account
at once; 1 otherwise (or on timeout), with one line that says what was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from accounts import OVERLAPS_KEY, running_key, seen_key

from atomicqueues import Client

ENTITY_TYPE = "account"


async def run(accounts: int, jobs: int, timeout: float) -> str | None:
    """None when all is well, else what went wrong."""
    names = [f"acct-{i}" for i in range(accounts)]
    async with await Client.connect() as client:
        redis = client.redis
        await redis.delete(OVERLAPS_KEY, *map(seen_key, names), *map(running_key, names))
        for seq in range(jobs):  # round-robin: every account has work from the start
            for name in names:
                await client.enqueue(ENTITY_TYPE, name, "record", {"seq": seq})
        print(f"enqueued {jobs} jobs for each of {accounts} accounts", flush=True)
        deadline = time.monotonic() + timeout
        while True:
            seen = {n: [int(x) for x in await redis.lrange(seen_key(n), 0, -1)] for n in names}
            done = sum(len(s) for s in seen.values())
            if done >= accounts * jobs:
                break
            if time.monotonic() > deadline:
                return f"{done}/{accounts * jobs} jobs done after {timeout:g}s (are workers up?)"
            print(f"  {done}/{accounts * jobs} jobs done", flush=True)
            await asyncio.sleep(2)
        overlaps = [str(x) for x in await redis.lrange(OVERLAPS_KEY, 0, -1)]
    return verdict(seen, overlaps, jobs)


def verdict(seen: dict[str, list[int]], overlaps: list[str], jobs: int) -> str | None:
    """None when each account ran 0..jobs-1 once, in order, without overlaps; else why not."""
    for name, order in seen.items():
        if order != list(range(jobs)):
            return f"{name} ran {order}, expected 0..{jobs - 1} once each, in order"
    if overlaps:
        return f"jobs of one account overlapped: {overlaps[:5]}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m walkthrough", description=__doc__)
    parser.add_argument("--accounts", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=8, help="jobs per account")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait")
    args = parser.parse_args()
    problem = asyncio.run(run(args.accounts, args.jobs, args.timeout))
    if problem:
        print(f"FAILED: {problem}", file=sys.stderr)
        return 1
    print(f"OK: {args.accounts * args.jobs} jobs ran once each, in order per account")
    return 0


if __name__ == "__main__":
    sys.exit(main())
