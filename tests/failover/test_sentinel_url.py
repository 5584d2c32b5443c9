"""The `redis+sentinel://` URL form: parsed as documented, never shown with its password."""

from __future__ import annotations

import re

import pytest

from atomicqueues import RedisUnavailable
from atomicqueues.connection import connect, describe, parse_sentinel_url


def test_sentinel_url_names_sentinels_primary_database_and_password() -> None:
    url = "redis+sentinel://:p%40ss@10.0.0.1:26380,sentinel-b,[::1]:5000/orders/2"
    parsed = parse_sentinel_url(url)
    assert parsed is not None
    assert parsed.sentinels == [("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 5000)]
    assert (parsed.primary, parsed.db, parsed.password) == ("orders", 2, "p@ss")
    shown = describe(url)
    assert shown == "redis+sentinel://10.0.0.1:26380,sentinel-b:26379,[::1]:5000/orders/2"
    assert "p@ss" not in repr(parsed)
    assert "p%40ss" not in shown


def test_other_urls_are_not_sentinel_urls() -> None:
    assert parse_sentinel_url("redis://:secret@host:6379/0") is None
    assert describe("redis://:secret@host:6379/0") == "redis://host:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis+sentinel://:secret@host:notaport/m", id="bad-port"),
        pytest.param("redis+sentinel://:secret@host:26379/", id="no-primary-name"),
        pytest.param("redis+sentinel://:secret@host/m/x", id="bad-db"),
    ],
)
async def test_bad_sentinel_urls_end_in_one_line_without_the_password(url: str) -> None:
    with pytest.raises(RedisUnavailable) as caught:
        await connect(url, 1.0)
    assert "secret" not in str(caught.value)
    assert "invalid Redis URL" in str(caught.value)


async def test_unreachable_sentinels_are_redis_unavailable() -> None:
    with pytest.raises(RedisUnavailable, match=re.escape("via redis+sentinel://127.0.0.1:1/m/0")):
        await connect("redis+sentinel://:secret@127.0.0.1:1/m", 0.5)
