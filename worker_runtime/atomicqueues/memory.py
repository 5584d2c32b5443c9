"""Redis memory: telling a refusal for full memory apart, and warning of an eviction policy.

Redis with a `maxmemory` limit either refuses writes once it is reached (policy `noeviction`)
or evicts keys to make room. Refusals are safe for us: every change is one script that Redis
refuses before its first write, so `Client.call` turns them into `RedisOutOfMemory` and nothing
is half-written (lua/include/oom.lua says which scripts still run when memory is full).
Eviction is not safe: an `allkeys-*` policy may drop any key, a `volatile-*` one any key with
a TTL, and ours carry TTLs (kept jobs, registrations, resource locks); a queued job, a lease or
a lock could vanish. So a worker and `aq status` check the policy when they start and warn in
one line.
"""

from __future__ import annotations

import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from .connection import RedisClient

POLICY = "maxmemory-policy"
SAFE_POLICY = "noeviction"
OOM_TEXT = "OOM command not allowed"


def refused_for_memory(exc: BaseException) -> bool:
    """Whether Redis refused a command or a script for full memory.

    Redis 7 answers a refused script with an OOM error (redis-py's `OutOfMemoryError`); Redis
    6.2 wraps the refusal in a plain script error whose text carries it.
    """
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and OOM_TEXT in str(exc)


async def eviction_warning(redis_client: RedisClient) -> str | None:
    """One line of warning when Redis may evict our keys, else None.

    None too when the policy cannot be read: CONFIG not permitted to our user (ACL), or renamed
    away as managed services do. On Cluster every primary is asked. Connection errors are left
    to the caller (`Client.call`).
    """
    try:
        if isinstance(redis_client, RedisCluster):
            found = {
                f" on {node.name}": (await redis_client.config_get(POLICY, target_nodes=node))
                for node in redis_client.get_primaries()
            }
        else:
            found = {"": await redis_client.config_get(POLICY)}
    except redis.exceptions.ResponseError:
        return None
    for where, reply in found.items():
        policy = str(reply.get(POLICY, SAFE_POLICY))
        if policy != SAFE_POLICY:
            return (
                f"Redis{where} has maxmemory-policy {policy}: when memory is full it may evict "
                f"AtomicQueues keys (queued jobs, leases, locks); set maxmemory-policy "
                f"{SAFE_POLICY}"
            )
    return None
