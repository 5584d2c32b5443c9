# schedules.py
import asyncio

from atomicqueues import Client


async def main() -> None:
    async with await Client.connect() as client:
        # Every day at 08:00 in Berlin (summer time or not), a digest to one user.
        await client.add_schedule(
            "user",
            "digest",
            "send",
            {"text": "your daily digest"},
            entity_id="alice@example.com",
            cron="0 8 * * *",
            tz="Europe/Berlin",
        )
        # Every 2 seconds, to the entity named after the schedule ("heartbeat").
        await client.add_schedule("user", "heartbeat", "send", {"text": "beat"}, every=2)
        for schedule in await client.schedules("user"):
            print(schedule.name, schedule.entity_id, schedule.describe())


asyncio.run(main())
