# control.py
import asyncio

from atomicqueues import Client, JobCancelled


async def main() -> None:
    async with await Client.connect() as client:
        job_id = await client.enqueue("user", "carol@example.com", "export", timeout=120)
        for _ in range(100):  # until a worker has started it
            if (await client.job(job_id)).state == "active":
                break
            await asyncio.sleep(0.1)
        await client.cancel(job_id)  # its worker cancels the handler at once
        try:
            await client.result(job_id, timeout=10)
        except JobCancelled as exc:
            print(exc)  # job '...' was cancelled: cancelled on request


asyncio.run(main())
