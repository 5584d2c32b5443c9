"""Worker names: safe for any entity id, the same for local processes and pods.

A name carries a hash of the entity id, never the id itself (ids are arbitrary strings), and
fits a Kubernetes object name (at most 63 characters, DNS-safe when the pool name is).
"""

from __future__ import annotations

import hashlib
import secrets
import string

NAME_MAX = 63
ENTITY_HASH_IN_NAME = 10
SUFFIX_LENGTH = 5
SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def entity_hash(entity_id: str) -> str:
    """The SHA-256 of an entity id (hex): what names and labels carry instead of the id."""
    return hashlib.sha256(entity_id.encode("utf-8", "surrogatepass")).hexdigest()


def random_suffix() -> str:
    """Five lowercase letters and digits, so two workers of one slot never share a name."""
    return "".join(secrets.choice(SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))


def worker_name(pool: str, entity_id: str | None, slot: int, suffix: str | None = None) -> str:
    """`<pool>-<sha256(entity)[:10]>-<slot>-<suffix>` (`packed` for a packed worker), at most 63
    characters: the pool's name is shortened when it must be (never ending in '-')."""
    middle = "packed" if entity_id is None else entity_hash(entity_id)[:ENTITY_HASH_IN_NAME]
    tail = f"-{middle}-{slot}-{suffix or random_suffix()}"
    head = pool[: max(1, NAME_MAX - len(tail))].rstrip("-") or "w"
    return head + tail
