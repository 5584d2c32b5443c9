# handlers.py
import asyncio

from pydantic import BaseModel

from atomicqueues import JobContext, Registry

registry = Registry()


class Send(BaseModel):
    text: str


class MailAPI:
    """Stands in for your mail service: it prints what it would send."""

    async def send(self, to: str, text: str, fencing_token: int) -> None:
        print(f"to {to}: {text!r} (fencing token {fencing_token})", flush=True)


mail_api = MailAPI()


@registry.command("send")
async def send(ctx: JobContext, payload: Send) -> None:
    # ctx.fencing_token grows with every lease grant: pass it to the stores you write.
    await mail_api.send(ctx.entity_id, payload.text, fencing_token=ctx.fencing_token)


@registry.query("balance")
async def balance(ctx: JobContext, payload: None) -> int:
    return 42  # a query's return value becomes the job's result


@registry.command("export", timeout=600)  # cancelled after 10 minutes (default: 5)
async def export(ctx: JobContext, payload: None) -> None:
    await asyncio.sleep(3600)  # a long job: `aq cancel JOB_ID` stops it
