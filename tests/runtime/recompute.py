"""The index and every entity's summary recomputed from scratch from the queues, and compared
with what the scripts keep (lua/include/keys.lua has the layout).

The scripts change the index incrementally, only where an entity crosses a line (becomes busy,
claimable, idle, ...), so a script that forgets a transition leaves the index wrong for good.
`check_index` catches that: it reads every entity's queues and leases, recomputes what its meta
summary and the bucket's index must say, and compares. test_queue.py calls it after its steps,
the stateful model test (test_queue_model.py) after every step, also on Redis Cluster.
"""

from __future__ import annotations

from typing import Any

from atomicqueues import Client
from atomicqueues.controls import controls
from atomicqueues.dead_letters import DeadLetters
from atomicqueues.index_reads import IndexReads
from atomicqueues.keys import decode_id, job_key
from atomicqueues.summary import numbers

LIVE = ("waiting", "delayed", "retrying", "active", "dead")


def _lease(value: str) -> tuple[str, int, str | None]:
    """(token, expiry ms, running job slot or None) of a lease field's value."""
    parts = value.split(" ", 3)  # token, expiry, then the job's score and slot while it runs
    return parts[0], int(parts[1]), parts[3] if len(parts) == 4 else None


def _place(
    placed: dict[str, str], jobs: dict[str, dict[str, str]], bb: str, jslot: str, state: str
) -> None:
    """Record that job `jslot` is in the `state` set; it must be in no other, and say so."""
    jk = job_key(bb, jslot)
    assert jk not in placed, f"job {jslot} is both {placed[jk]} and {state}"
    placed[jk] = state
    if state == "dead" and jk not in jobs:
        return  # a dead letter's hash may have expired (keep_failed)
    got = jobs[jk].get("s", "waiting") if jk in jobs else None
    assert got == state, f"job {jslot} in the {state} set: {jobs.get(jk)}"


async def _keys(client: Client, pattern: str) -> list[str]:
    return [str(k) async for k in client.redis.scan_iter(match=pattern, count=1000)]


async def check_index(
    client: Client,
    t: str,
    *,
    completed: int | None = None,
    buckets: list[str] | None = None,
) -> dict[str, Any]:
    """Recompute the index of type `t` (or of some of its buckets) and compare it with Redis.

    Checks, per entity: its meta summary (waiting, active, retrying, lease holders, dead,
    concurrency, next due) against its queues and leases; per bucket: pending, work, ready,
    delayed, dead and the lease index; every queued job is in exactly one state set and its
    hash says that state, and no job in a live state is outside its set (nothing lost); and
    the per-state counts. Returns what it computed (encoded ids).
    """
    r = client.redis
    buckets = buckets or client.keys.buckets(t)
    truth: dict[str, Any] = {"pending": {}, "work": set(), "ready": set(), "dead": {}}
    totals = dict.fromkeys(LIVE, 0)
    placed: dict[str, str] = {}
    for bb in buckets:
        entities: set[str] = set()
        jobs: dict[str, dict[str, str]] = {}
        for key in await _keys(client, bb + "*"):
            rest = key[len(bb) :]
            if rest.startswith("e:"):
                entities.add(rest[2:].rsplit(":", 1)[0])
            elif rest.startswith("j:"):
                jobs[key] = await r.hgetall(key)
        for idx in ("work", "ready", "delayed", "limited"):
            entities |= set(await r.zrange(bb + idx, 0, -1))
        for idx in ("pending", "dead", "conc", "paused", "caps", "rates"):
            entities |= set(await r.hkeys(bb + idx))
        for member in await r.zrange(bb + "leases", 0, -1):
            entities.add(member.split("|", 1)[1])

        want: dict[str, Any] = {
            "pending": {},
            "work": set(),
            "ready": set(),
            "delayed": {},
            "dead": {},
            "leases": {},
            "paused": {},
            "caps": {},
            "limited": {},
            "rates": {},
        }

        for e in sorted(entities):
            base = f"{bb}e:{e}:"
            wait = await r.zrange(base + "wait", 0, -1)
            delayed = await r.zrange(base + "delayed", 0, -1, withscores=True)
            retry = await r.zrange(base + "retry", 0, -1, withscores=True)
            dlq = await r.zrange(base + "dlq", 0, -1)
            meta = await r.hgetall(base + "meta")
            if await r.exists(base + "done"):
                assert await r.pttl(base + "done") > 0, f"the done list of {e!r} never expires"
            conc = int(await r.hget(bb + "conc", e) or 1)
            leases = {f[2:]: _lease(v) for f, v in meta.items() if f.startswith("l:")}
            running = [jslot for _, _, jslot in leases.values() if jslot]
            for state, slots in (
                ("waiting", wait),
                ("delayed", [j for j, _ in delayed]),
                ("retrying", [j for j, _ in retry]),
                ("active", running),
                ("dead", dlq),
            ):
                for jslot in slots:
                    _place(placed, jobs, bb, jslot, state)
                totals[state] += len(slots)
            # Its controls, set by pause.lua, limit.lua and the rate limit alone: not from the
            # queues.
            paused, held_until, mb, _, rn, _, _, _ = map(int, controls(meta))
            dues = [s for _, s in delayed] + [s for _, s in retry]
            dues += [held_until] if held_until else []
            summary = {
                "w": len(wait),
                "a": len(running),
                "r": len(retry),
                "h": len(leases),
                "x": len(dlq),
                "c": conc,
                "due": int(min(dues)) if dues else None,
            }
            kept: dict[str, int | None] = dict(numbers(meta))
            kept["due"] = kept["due"] or None
            for unchecked in ("seq", "token", "dx"):  # not recomputable from the queues
                del kept[unchecked]
            assert kept == summary, f"summary of {e!r} drifted from its queues: {kept}"
            busy = len(running) + len(retry)
            if wait:
                want["pending"][e] = str(len(wait))
                truth["pending"][e] = len(wait)
            if wait or busy:
                want["work"].add(e)
                truth["work"].add(e)
            if paused:
                want["paused"][e] = str(paused)
            if mb:  # its own max backlog
                want["caps"][e] = str(mb)
            if held_until:
                want["limited"][e] = float(held_until)
            if rn:  # its own rate limit
                want["rates"][e] = str(rn)
            if wait and busy < conc and len(leases) < conc and not paused and not held_until:
                want["ready"].add(e)
                truth["ready"].add(e)
            if dues:
                want["delayed"][e] = min(dues)
            if dlq:
                want["dead"][e] = str(len(dlq))
                truth["dead"][e] = len(dlq)
            for owner, (_, exp, _) in leases.items():
                want["leases"][f"{owner}|{e}"] = float(exp)

        got = {
            "pending": await r.hgetall(bb + "pending"),
            "work": set(await r.zrange(bb + "work", 0, -1)),
            "ready": set(await r.zrange(bb + "ready", 0, -1)),
            "delayed": dict(await r.zrange(bb + "delayed", 0, -1, withscores=True)),
            "dead": await r.hgetall(bb + "dead"),
            "leases": dict(await r.zrange(bb + "leases", 0, -1, withscores=True)),
            "paused": await r.hgetall(bb + "paused"),
            "caps": await r.hgetall(bb + "caps"),
            "limited": dict(await r.zrange(bb + "limited", 0, -1, withscores=True)),
            "rates": await r.hgetall(bb + "rates"),
        }
        assert got == want, f"index of bucket {bb} drifted from its queues"
        for jk, fields in jobs.items():
            if fields.get("s", "waiting") in LIVE:
                assert jk in placed, f"job {jk} ({fields.get('s', 'waiting')}) is in no queue: lost"
            elif fields.get("s") in ("completed", "cancelled"):
                assert await r.pttl(jk) > 0, f"{fields['s']} job {jk} is kept for ever"

    if len(buckets) == len(client.keys.buckets(t)):
        counts = await IndexReads(client).counts(t)
        assert {s: counts[s] for s in totals} == totals
        if completed is not None:
            assert counts["completed"] == completed
        # The client's decoded views agree with the raw index.
        assert await IndexReads(client).pending_entities(t) == {
            decode_id(e): n for e, n in truth["pending"].items()
        }
        assert set(await IndexReads(client).entities_with_work(t)) == {
            decode_id(e) for e in truth["work"]
        }
        assert set(await IndexReads(client).claimable_entities(t)) == {
            decode_id(e) for e in truth["ready"]
        }
        assert await DeadLetters(client).entities(t) == {
            decode_id(e): n for e, n in truth["dead"].items()
        }
    return truth
