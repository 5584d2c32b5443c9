# locks.py
import asyncio

from atomicqueues import Client, Locks


async def use(modem: str, fencing_token: int) -> None:
    print(f"using {modem} under fencing token {fencing_token}")


async def main() -> None:
    async with await Client.connect() as client:
        locks = Locks(client)
        result = await locks.acquire("modem", "m1", owner_id="me", owner_type="proc", ttl=10)
        if result.lock:  # else result.holder says who has it, until when
            await locks.extend(result.lock, 10)
            await locks.release(result.lock)
        # The first free one of a pool, in one script: spread "first", "random" or "lru".
        result = await locks.acquire_any("modem", ["m1", "m2"], "me", "proc", 10, spread="lru")
        if result.lock:
            print(f"got {result.lock.resource_id}")
            await locks.release(result.lock)
        async with locks.hold("modem", "m1", "me", "proc", ttl=10) as lock:  # LockBusy if taken
            await use("m1", fencing_token=lock.token)  # renewed every ttl/3, released at the end


asyncio.run(main())
