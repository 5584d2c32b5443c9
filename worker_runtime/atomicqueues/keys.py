"""The Redis key schema: every key name the project uses is built here and nowhere else.

Entities are spread over a fixed number of *buckets* per entity type. Every key of an entity,
its jobs, and the part of the entity-type index that covers its bucket share one hash tag
(`{TYPE:BUCKET}`), so every Lua script touches exactly one hash slot and the same code runs on
Redis Cluster. Entity ids are arbitrary strings: inside keys they appear percent-encoded
(`%`, `{`, `}` and `:` escaped), which keeps hash tags intact and key names unambiguous, and
the index stores the encoded form, which `decode_id` turns back.

Resource locks (locks.py) keep every key of one resource type under one hash tag (`{TYPE}`,
after `PREFIX:lock:`), so taking the first free resource of a pool is one script on one slot.
That tag has no `:`, so it never equals an entity bucket's tag.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import Literal, get_args

from .errors import InvalidInput

BUCKETS = 32
"""Buckets per entity type. Changing it relocates every key: it is part of the storage format."""

MAX_ENTITY_ID_BYTES = 4096
ENTITY_TYPE_RE = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
AUTO_JOB_ID_RE = re.compile(r"^([A-Za-z0-9_-]{1,63})\.([0-9]{1,3})\.([0-9a-f]{32})$")
_ESCAPE_RE = re.compile(r"[%{}:]")
_UNESCAPE_RE = re.compile(r"%(25|7B|7D|3A)")


def encode_id(entity_id: str) -> str:
    """Percent-encode the characters that would break a hash tag or a key separator."""
    return _ESCAPE_RE.sub(lambda m: f"%{ord(m.group()):02X}", entity_id)


def decode_id(encoded: str) -> str:
    return _UNESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), encoded)


def check_entity_type(entity_type: str) -> str:
    if not isinstance(entity_type, str) or not ENTITY_TYPE_RE.fullmatch(entity_type):
        raise InvalidInput(
            f"invalid entity type {entity_type!r}: use 1-63 letters, digits, '_' or '-'"
        )
    return entity_type


def check_entity_id(entity_id: str, what: str = "entity id") -> str:
    if not isinstance(entity_id, str) or entity_id == "":
        raise InvalidInput(f"{what} must be a non-empty string")
    size = len(entity_id.encode("utf-8", "surrogatepass"))
    if size > MAX_ENTITY_ID_BYTES:
        raise InvalidInput(f"{what} is {size} bytes, over the limit of {MAX_ENTITY_ID_BYTES}")
    try:
        entity_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid unicode (lone surrogate)") from None
    return entity_id


def check_resource_type(resource_type: str) -> str:
    if not isinstance(resource_type, str) or not ENTITY_TYPE_RE.fullmatch(resource_type):
        raise InvalidInput(
            f"invalid resource type {resource_type!r}: use 1-63 letters, digits, '_' or '-'"
        )
    return resource_type


def check_resource_id(resource_id: str) -> str:
    """Resource ids are as free as entity ids (they are percent-encoded inside keys)."""
    return check_entity_id(resource_id, "resource id")


BucketKey = Literal[
    "pending",
    "work",
    "ready",
    "leases",
    "delayed",
    "dead",
    "conc",
    "paused",
    "caps",
    "rates",
    "limited",
    "defaults",
    "counts",
    "bell",
    "sched",
]
"""The keys of a bucket's index and housekeeping, as lua/include/keys.lua documents them."""
EntityKey = Literal["wait", "delayed", "retry", "done", "dlq", "bell", "starts", "meta"]
"""The keys of one entity (lua/include/keys.lua's `ekey`)."""
BUCKET_KEYS: tuple[str, ...] = get_args(BucketKey)
ENTITY_KEYS: tuple[str, ...] = get_args(EntityKey)


def in_bucket(bucket: str, name: BucketKey) -> str:
    """One key of a bucket, from the bucket's base (`Keys.bucket`): the scripts' `bb..name`."""
    return bucket + name


def of_entity(entity: str, name: EntityKey) -> str:
    """One key of an entity, from the entity's base (`Keys.entity`): the scripts' `ekey`."""
    return entity + name


def job_key(bucket: str, jslot: str) -> str:
    """The HASH of one job (the scripts' `jkey`), from its bucket's base and its slot."""
    return f"{bucket}j:{jslot}"


def job_waiters(bucket: str, jslot: str) -> str:
    """The LIST a job's result() waiters block on once the job has ended."""
    return f"{bucket}jw:{jslot}"


def schedule_key(bucket: str, name: str) -> str:
    """The HASH of one schedule (the scripts' `skey`); the bucket's "sched" orders them."""
    return f"{bucket}s:{name}"


def bucket_of(entity_type: str, entity_id: str) -> int:
    return zlib.crc32(f"{entity_type}\0{entity_id}".encode()) % BUCKETS


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (`AQ_PREFIX`)."""

    prefix: str = "aq"

    # --- buckets and entities -------------------------------------------------------------
    def bucket(self, entity_type: str, bucket: int) -> str:
        """Base of every key in one bucket of a type; scripts build the rest from it."""
        return f"{self.prefix}:{{{entity_type}:{bucket}}}:"

    def buckets(self, entity_type: str) -> list[str]:
        return [self.bucket(entity_type, b) for b in range(BUCKETS)]

    def entity_bucket(self, entity_type: str, entity_id: str) -> str:
        return self.bucket(entity_type, bucket_of(entity_type, entity_id))

    def entity(self, entity_type: str, entity_id: str) -> str:
        """Base of one entity's keys (`...:e:<encoded id>:`)."""
        return f"{self.entity_bucket(entity_type, entity_id)}e:{encode_id(entity_id)}:"

    def events(self, entity_type: str) -> str:
        """Pub/sub channel: an encoded entity id each time an entity becomes claimable."""
        return f"{self.prefix}:events:{entity_type}"

    # --- jobs ----------------------------------------------------------------------------
    def new_job_id(self, entity_type: str, entity_id: str) -> str:
        """A generated job id carries its type and bucket, so it can be found from the id alone,
        then 128 random bits in hex (as unique as a UUID, without making one)."""
        return f"{entity_type}.{bucket_of(entity_type, entity_id)}.{os.urandom(16).hex()}"

    def job_slot(self, entity_type: str, entity_id: str, job_id: str) -> str:
        """The job's name inside its bucket (`j:<slot>`): unique per entity."""
        if AUTO_JOB_ID_RE.fullmatch(job_id):
            return job_id
        return f"{encode_id(entity_id)}:{job_id}"

    def locate_auto_job(self, job_id: str) -> tuple[str, str] | None:
        """Bucket base and slot of a generated job id, or None for a caller-given one."""
        m = AUTO_JOB_ID_RE.fullmatch(job_id)
        if not m or int(m.group(2)) >= BUCKETS:
            return None
        return self.bucket(m.group(1), int(m.group(2))), job_id

    # --- workers, signals, housekeeping ----------------------------------------------------
    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def workers(self) -> str:
        """Sorted set of worker names by last heartbeat (ms)."""
        return f"{self.prefix}:workers"

    def entity_workers(self, entity_type: str, entity_id: str) -> str:
        return f"{self.prefix}:workers:entity:{entity_type}:{encode_id(entity_id)}"

    def node_workers(self, node: str) -> str:
        return f"{self.prefix}:workers:node:{node}"

    def close_worker(self, name: str) -> str:
        return f"{self.prefix}:close:worker:{name}"

    def close_entity(self, entity_type: str, entity_id: str) -> str:
        return f"{self.prefix}:close:entity:{entity_type}:{encode_id(entity_id)}"

    def close_type(self, entity_type: str) -> str:
        return f"{self.prefix}:close:type:{entity_type}"

    def close_node(self, node: str) -> str:
        return f"{self.prefix}:close:node:{node}"

    def close_channel(self) -> str:
        return f"{self.prefix}:close"

    def pools(self) -> str:
        """ZSET "NAMESPACE/NAME" -> until when (ms) the pool's last announcement holds."""
        return f"{self.prefix}:pools"

    def pool(self, namespace: str, name: str) -> str:
        """HASH a pool's entity type, desired and ready workers (pools/health.py)."""
        return f"{self.prefix}:pool:{namespace}/{name}"

    def sweep_lock(self, entity_type: str) -> str:
        return f"{self.prefix}:sweep:{entity_type}"

    def shared_rate(self, entity_type: str) -> str:
        """STRING "n period_ms": at most n handlers of the whole type start in any period."""
        return f"{self.prefix}:shared-rate:{entity_type}"

    def permits(self, entity_type: str) -> str:
        """LIST the start ms of the type's last handlers, newest first (lua/permit.lua)."""
        return f"{self.prefix}:permits:{entity_type}"

    def types(self) -> str:
        """Set of entity types that have ever been enqueued to (for `aq status`)."""
        return f"{self.prefix}:types"

    # --- schedules (schedules.py; a schedule itself lives in its entity's bucket) ------------
    def schedules(self, entity_type: str) -> str:
        """HASH of the type's schedules: name -> the entity id its jobs go to."""
        return f"{self.prefix}:schedules:{entity_type}"

    def schedules_changed(self) -> str:
        """HASH entity type -> a counter bumped on every add and remove of one of its schedules
        (each ticker reads its type's field once a tick)."""
        return f"{self.prefix}:schedules-changed"

    # --- resource locks --------------------------------------------------------------------
    def lock_base(self, resource_type: str) -> str:
        """Base of every lock key of one resource type; the lock scripts build the rest."""
        return f"{self.prefix}:lock:{{{resource_type}}}:"

    def lock(self, resource_type: str, resource_id: str) -> str:
        """HASH of one resource's lock: holder fields while held, the last token always."""
        return f"{self.lock_base(resource_type)}l:{encode_id(resource_id)}"

    def lock_held(self, resource_type: str) -> str:
        """ZSET of the type's held locks: encoded resource id -> expiry ms (for listing)."""
        return f"{self.lock_base(resource_type)}held"

    def lock_used(self, resource_type: str) -> str:
        """ZSET encoded resource id -> when it was last acquired or released, ms (for LRU)."""
        return f"{self.lock_base(resource_type)}used"

    def lock_types(self) -> str:
        """Set of resource types that have ever been locked (for `aq locks list`)."""
        return f"{self.prefix}:lock-types"
