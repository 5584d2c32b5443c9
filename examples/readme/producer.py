# producer.py
import asyncio

from atomicqueues import Client


async def main() -> None:
    async with await Client.connect() as client:  # AQ_REDIS_URL, AQ_PREFIX
        await client.enqueue("user", "alice@example.com", "send", {"text": "hi"})
        job_id = await client.enqueue("user", "alice@example.com", "balance")
        print(await client.result(job_id, timeout=10))  # 42


asyncio.run(main())
