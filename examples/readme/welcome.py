# welcome.py
import asyncio

from atomicqueues import Client, NewJob

emails = ["ann@example.com", "bob@example.com", "eve@example.com"]


async def main() -> None:
    async with await Client.connect() as client:
        ids = await client.enqueue_many(
            NewJob("user", email, "send", {"text": "welcome"}, job_id=f"welcome-{email}")
            for email in emails
        )
        print(f"{len(ids)} jobs enqueued")  # 3; running it again adds none (same job ids)


asyncio.run(main())
