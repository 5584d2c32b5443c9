# schedules.py
import asyncio

from atomicqueues import Client, Schedules


async def main() -> None:
    async with await Client.connect() as client:
        schedules = Schedules(client)
        # Every day at 08:00 in Berlin (summer time or not), a digest to one user.
        await schedules.add(
            "user",
            "digest",
            "send",
            {"text": "your daily digest"},
            entity_id="alice@example.com",
            cron="0 8 * * *",
            tz="Europe/Berlin",
        )
        # Every 2 seconds, to the entity named after the schedule ("heartbeat").
        await schedules.add("user", "heartbeat", "send", {"text": "beat"}, every=2)
        for schedule in await schedules.list("user"):
            print(schedule.name, schedule.entity_id, schedule.describe())


asyncio.run(main())
