"""Connecting to Redis, standalone or Cluster, from one URL.

The same URL scheme serves both: after connecting we ask the server whether it runs in cluster
mode and, if so, switch to redis-py's cluster client. Password and TLS come through the URL
(`redis://:PASSWORD@host:6379/0`, `rediss://...`). Connection failures become
`RedisUnavailable` with one line a person can act on.

Redis Sentinel has a URL form of its own, `redis+sentinel://[:PASSWORD@]HOST[:PORT][,HOST[:PORT]
...]/PRIMARY_NAME[/DB]` (port 26379 unless given; the password is the data servers', the
sentinels are asked without one). Its client asks the sentinels where the primary is whenever it
opens a connection, and drops a connection whose server answers READONLY (a demoted primary):
after a failover the next call reaches the new primary, and the calls in between fail with
`RedisUnavailable`, which the worker's loops retry.

Every client is made with a timeout (`Settings.redis_timeout`): a call on a connection that
stopped answering (a partition, a frozen server) fails after that many seconds instead of
hanging, and a timed-out call is never re-sent behind the caller's back (a script may have run:
the caller decides). A connection that turns out to be broken when a call is sent is retried
once on a fresh one, so a restarted Redis costs the caller nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from .errors import PoolExhausted, RedisUnavailable

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"


def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    try:
        import hiredis
    except ImportError:  # the `fast` extra is not installed
        return None
    packer: Callable[[tuple[Any, ...]], bytes] | None = getattr(hiredis, "pack_command", None)
    return packer


_hiredis_pack = _hiredis_packer()
_UTF8_ERRORS = ("strict", "surrogateescape")
"""The decoding errors under which hiredis packs a command as redis-py would (surrogateescape:
the library's own, _options())."""

CONNECTION_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def broken_transport(exc: BaseException) -> bool:
    """A TypeError or AttributeError from inside redis-py's asyncio connection: a connection
    closed under a call (by the peer, or by the Cluster client dropping its connections when a
    node fails) that redis-py reports as such instead of a ConnectionError (redis-py #4287).
    redis-py has dropped the connection; the call may be tried again."""
    if not isinstance(exc, TypeError | AttributeError):
        return False
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename.replace("\\", "/"))
        tb = tb.tb_next
    return any(name.endswith("redis/asyncio/connection.py") for name in frames)


def permission_denied(exc: BaseException) -> str | None:
    """One line for a refusal by Redis's ACL (the user may not run a command or touch a key or
    channel), whether a command was refused (NOPERM) or a command inside a script; None for
    any other error."""
    text = " ".join(str(exc).split())
    if isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.exceptions.ResponseError)
        and any(mark in text for mark in ("NOPERM", "no permissions", "can't run this command"))
    ):
        return (
            f"the Redis user may not run a command AtomicQueues needs ({text}): grant the "
            "commands, keys and channels of the README's least-privilege ACL"
        )
    return None


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """A parsed `redis+sentinel://` URL."""

    sentinels: list[tuple[str, int]]
    primary: str
    db: int
    password: str | None = field(repr=False)

    def describe(self) -> str:
        hosts = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels
        )
        return f"{SENTINEL_SCHEME}://{hosts}/{self.primary}/{self.db}"


def parse_sentinel_url(url: str) -> SentinelURL | None:
    """The parts of a `redis+sentinel://` URL; None for any other scheme. `ValueError` names
    what is wrong, never the password."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != SENTINEL_SCHEME or not sep:
        return None
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    password = (unquote(userinfo.partition(":")[2]) or None) if at else None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, port = item, str(SENTINEL_PORT)
        if item.rfind(":") > item.rfind("]"):  # a port (not a colon inside [IPv6])
            host, _, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad sentinel address {item!r}: use HOST or HOST:PORT")
        sentinels.append((host, int(port)))
    name, _, db = path.partition("?")[0].strip("/").partition("/")
    if not name:
        raise ValueError("the primary's name is missing: redis+sentinel://HOSTS/PRIMARY_NAME/DB")
    if db and not db.isdigit():
        raise ValueError(f"bad database number {db!r}")
    return SentinelURL(sentinels, unquote(name), int(db or 0), password)


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        sentinel = parse_sentinel_url(url)
    except ValueError:
        return f"{SENTINEL_SCHEME}://(invalid)"
    if sentinel is not None:
        return sentinel.describe()
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


MAX_CONNECTIONS = 100
"""Connections one client keeps to one server at most (redis-py's default). On a standalone
server a call beyond them waits for a free one (`POOL_WAIT` call timeouts at most); on Cluster
(per node) and through Sentinel it fails at once (`PoolExhausted`)."""
POOL_WAIT = 10
"""How many call timeouts a call may wait for a free connection. Waiting is queueing in this
process, not a silent server (calls on a silent server time out and free their connections),
so a burst of thousands of calls at once goes through even on a busy machine."""


class _WaitingPool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool: more calls at once than `MAX_CONNECTIONS` wait their turn
    instead of failing; a call that waited past `POOL_WAIT` call timeouts fails naming that
    cause.

    A call almost always finds a free connection, and nobody waiting for one: then it takes it,
    and gives it back, straight (and checked, as redis-py checks it). redis-py's way holds a
    lock and a timer and tells its telemetry hooks and re-authentication listeners (for token
    credentials, which a URL never gives) about every call: a tenth of a busy worker's CPU. A
    call that would wait, and every call while some wait, goes redis-py's way, which wakes the
    waiting ones in turn."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._available_connections and not self._contended():
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
            try:
                # (redis-py before 8 names the check can_read_destructive)
                unread = getattr(connection, "can_read", None) or connection.can_read_destructive
                if connection.is_connected and not await unread():
                    return connection  # connected, and nothing left unread on it
                await self.ensure_connection(connection)  # (re)connected as redis-py does it
            except BaseException:
                await self.release(connection)
                raise
            return connection
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.exceptions.ConnectionError as exc:
            if not isinstance(exc.__cause__, TimeoutError):
                raise
            where = _where(self.connection_kwargs)
            raise PoolExhausted(where, self.max_connections, self.timeout) from None

    async def release(self, connection: Any) -> None:
        if self._contended():
            await super().release(connection)
            return
        self._in_use_connections.remove(connection)
        reconnect = getattr(connection, "should_reconnect", None)  # redis-py 6 and later
        if reconnect is not None and reconnect():
            await connection.disconnect()
        self._available_connections.append(connection)

    def _contended(self) -> bool:
        """Calls wait for a connection, or redis-py's pool is in a state of its own."""
        return bool(getattr(self._condition, "_waiters", True)) or bool(
            getattr(self, "_in_maintenance", False)
        )


def _where(kwargs: dict[str, Any]) -> str:
    """Where a connection pool's connections go, for messages (never a password)."""
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


class _QuickSend:
    """A mixin for redis-py's asyncio connections, for a small call's sake:

    - A command is sent under `asyncio.timeout` instead of the `asyncio.wait_for` redis-py
      uses whenever a socket timeout is set, which on Python 3.11 makes a task per call (a
      quarter to a third of the client's CPU time for a small call), and without any timer
      when the write cannot wait: nothing is waiting to be sent, and the command is no larger
      than what the transport takes before it makes a writer wait. A send still fails after
      the socket timeout; reads keep it.
    - A command is packed by hiredis (when it is installed) instead of redis-py's Python
      code, a tenth of the time; what hiredis refuses is packed by redis-py, which raises its
      own error for what it refuses too."""

    socket_timeout: float | None
    encoder: Any
    _writer: asyncio.StreamWriter | None

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        plain = self.encoder.encoding == "utf-8" and self.encoder.encoding_errors in _UTF8_ERRORS
        if _hiredis_pack is not None and plain and isinstance(first, str) and " " not in first:
            # hiredis encodes strictly: a string with a surrogate escape is redis-py's to pack.
            with suppress(TypeError, UnicodeEncodeError):
                return [_hiredis_pack(args)]
        packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
        return packed

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout, self.socket_timeout = self.socket_timeout, None  # then redis-py just writes
        try:
            if self._never_waits(command):
                await super().send_packed_command(command, check_health)  # type: ignore[misc]
                return
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except TimeoutError:  # asyncio's: redis-py has dropped the connection
            raise redis.exceptions.TimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout

    def _never_waits(self, command: Any) -> bool:
        """Writing `command` cannot make the writer wait (`StreamWriter.drain`)."""
        writer = self._writer
        if writer is None or not isinstance(command, list) or len(command) != 1:
            return False
        transport = writer.transport
        _, most = transport.get_write_buffer_limits()
        return transport.get_write_buffer_size() == 0 and len(command[0]) <= most


_quick_classes: dict[type[Any], type[Any]] = {}


def _send_quickly(pool: aioredis.ConnectionPool) -> None:
    """Make `pool`'s connections `_QuickSend` ones (standalone and Sentinel; a Cluster client
    makes its connections deep inside and keeps redis-py's)."""
    plain = pool.connection_class
    if plain not in _quick_classes:
        _quick_classes[plain] = type(plain.__name__, (_QuickSend, plain), {})
    pool.connection_class = _quick_classes[plain]


def _options(timeout: float) -> dict[str, Any]:
    """Client options; a `socket_timeout` given in the URL still wins. Replies are decoded as
    UTF-8, bytes that are not kept as surrogates (an entity's packed summary: summary.py)."""
    return {
        "decode_responses": True,
        "encoding_errors": "surrogateescape",
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }


class _Client(aioredis.Redis):
    """redis-py's client, with a short way for a command whose reply redis-py returns as it
    is (EVALSHA, HGET, SADD, ...: no response callback, no options): a connection from the
    pool, the command sent and its reply read under the connection's retry policy (a broken
    connection is dropped, and the call tried again as that policy says), the connection
    given back. redis-py's own way times and reports every call to its telemetry hooks, about
    a fifth of what a small call costs this process. Every other command goes redis-py's way."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if options or self.single_connection_client or args[0] in self.response_callbacks:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        pool = self.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await connection.retry.call_with_retry(
                lambda: _send_and_read(connection, args), lambda _: connection.disconnect()
            )
        finally:
            await pool.release(connection)


async def _send_and_read(connection: Any, args: tuple[Any, ...]) -> Any:
    await connection.send_command(*args)
    return await connection.read_response()


class _SentinelPrimary(_Client):
    """The primary's client of a Sentinel URL; closing it also closes the sentinels' clients."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            for client in self.sentinels.sentinels:
                await client.aclose()


def _primary_of(sentinel_url: SentinelURL, timeout: float, **options: Any) -> aioredis.Redis:
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinel_url.sentinels,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),  # the next sentinel is asked instead
        },
    )
    client = sentinel.master_for(
        sentinel_url.primary,
        redis_class=_SentinelPrimary,
        db=sentinel_url.db,
        password=sentinel_url.password,
        **_options(timeout),
        **options,
    )
    assert isinstance(client, _SentinelPrimary)
    client.sentinels = sentinel
    return client


async def _connect_sentinel(url: str, sentinel_url: SentinelURL, timeout: float) -> RedisClient:
    broken_once = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    client = _primary_of(sentinel_url, timeout, retry=broken_once)
    _send_quickly(client.connection_pool)
    try:
        await client.ping()
    except CONNECTION_ERRORS as exc:
        await client.aclose()
        raise RedisUnavailable(
            f"cannot reach the Redis primary via {describe(url)}: {exc}"
        ) from None
    except redis.exceptions.ResponseError as exc:
        await client.aclose()
        raise RedisUnavailable(f"Redis at {describe(url)} refused us: {exc}") from None
    return client


async def connect(url: str, timeout: float) -> RedisClient:
    """A client for `url` whose calls fail after `timeout` seconds without an answer; a Cluster
    client when the server runs in cluster mode, a Sentinel-managed one for a Sentinel URL."""
    try:
        sentinel_url = parse_sentinel_url(url)
    except ValueError as exc:
        raise RedisUnavailable(f"invalid Redis URL {describe(url)!r}: {exc}") from None
    if sentinel_url is not None:
        return await _connect_sentinel(url, sentinel_url, timeout)
    broken_once = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    try:
        pool = _WaitingPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT * timeout,
            retry=broken_once,
            **_options(timeout),
        )
    except ValueError as exc:
        raise RedisUnavailable(f"invalid Redis URL {describe(url)!r}: {exc}") from None
    _send_quickly(pool)
    plain = _Client.from_pool(pool)  # closing the client closes its pool
    try:
        info = await plain.info("cluster")
    except CONNECTION_ERRORS as exc:
        await plain.aclose()
        raise RedisUnavailable(f"cannot reach Redis at {describe(url)}: {exc}") from None
    except redis.exceptions.ResponseError as exc:
        await plain.aclose()
        raise RedisUnavailable(f"Redis at {describe(url)} refused us: {exc}") from None
    if not info.get("cluster_enabled"):
        return plain
    await plain.aclose()
    cluster = RedisCluster.from_url(url, max_connections=MAX_CONNECTIONS, **_options(timeout))
    try:
        await cluster.initialize()
    except (*CONNECTION_ERRORS, redis.exceptions.RedisClusterException) as exc:
        await cluster.aclose()
        raise RedisUnavailable(f"cannot reach Redis Cluster at {describe(url)}: {exc}") from None
    return cluster


def pubsub_client(url: str, timeout: float) -> aioredis.Redis:
    """A plain client for subscribing (its reads of messages wait without limit). On Cluster it
    talks to the URL's node: classic pub/sub messages reach every node of a cluster. The caller
    closes it. With a Sentinel URL it subscribes on the current primary (found again after a
    failover when the caller subscribes anew)."""
    sentinel_url = parse_sentinel_url(url)
    if sentinel_url is not None:
        return _primary_of(sentinel_url, timeout)
    return aioredis.Redis.from_url(url, **_options(timeout))
