"""An entity's summary: the numbers the scripts keep in its meta hash (lua/include/entity.lua).

They are packed in one field, `s`, as 10 little-endian doubles, so that a script reads and
writes them in one call each. The connection decodes replies with `surrogateescape`
(connection.py), so the packed bytes come back as a `str` that encodes back to them exactly.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

FIELDS = ("w", "a", "r", "h", "x", "c", "due", "seq", "token", "dx")
"""Waiting, active, retrying, lease holders, dead, concurrency, next due ms (0: none), FIFO
sequence, last fencing token granted, expiry of the done list (as last set)."""

_PACKED = struct.Struct("<10d")
_ABSENT = dict(zip(FIELDS, (0, 0, 0, 0, 0, 1, 0, 0, 0, 0), strict=True))


def numbers(meta: Mapping[str, str]) -> dict[str, int]:
    """The summary's numbers from an entity's meta hash as read (HGETALL); an entity without
    one (new, or idle) has the defaults: nothing waiting, concurrency 1."""
    packed = meta.get("s")
    if packed is None:
        return dict(_ABSENT)
    values = _PACKED.unpack(packed.encode("utf-8", "surrogateescape"))
    return {f: int(v) for f, v in zip(FIELDS, values, strict=True)}
