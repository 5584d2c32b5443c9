"""A TCP proxy that can partition a process from Redis, for the fault tests.

Why this module exists: killing or pausing a worker tests only half of what can go wrong. The
other half is a worker that is alive and busy but cannot reach Redis for a while: its lease
expires, another worker takes the entity over, and then the network comes back and the first
worker's queued commands (ack, renew, release) arrive late. A connection reset does not show
that, because the client sees the error at once and gives up. A real partition is silent:
nothing arrives, nothing fails, and when it heals the bytes TCP kept retransmitting are
delivered, in order. `Partition` plays that part for every connection put through it.

A `Partition` listens on a free loopback port and forwards each accepted connection to the
upstream (Redis), in both directions, from its own thread with its own selector, so it keeps
working whatever the test does (blocking sync code, or an asyncio loop that blocks). Point a
process at it with `url_for(redis_url)`.

- `cut()` stops all forwarding while every socket stays open: no RST, no FIN. Nothing is read
  from either side, so bytes wait in the proxy's buffers or in the kernel's, and a client with
  a socket timeout sees a timeout, never a connection error. A connection accepted during a
  cut is held as well: its upstream connection is only opened at `heal()` (the upstream sees
  no new client during a cut), and until then nothing flows on it.
- `heal()` resumes forwarding; what was held is delivered, in order. A side that closed during
  the cut is noticed then, as TCP would after a partition shorter than its give-up time.
- `reset_all()` closes every connection, as a proxy restart would; `close()` also stops the
  thread and the listener.

Control calls are thread-safe and synchronous: they run in the proxy's thread between two
rounds of I/O and return once done, so after `cut()` returns not one more byte is forwarded.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

HOST = "127.0.0.1"
CHUNK = 64 * 1024  # bytes read from a socket at a time
HIGH_WATER = 256 * 1024  # stop reading a side while this much waits to be written to the other


class _Pipe:
    """One accepted client connection and its upstream connection, with a buffer each way."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None  # None until opened (at heal, if cut)
        self.connecting = False  # a non-blocking connect to the upstream is under way
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.eof_from: socket.socket | None = None  # the side that closed: drain, then close
        self.events: dict[socket.socket, int] = {}  # what each socket is registered for
        self.closed = False

    def buffer_to(self, sock: socket.socket) -> bytearray:
        return self.to_client if sock is self.client else self.to_upstream


class _Command:
    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.error: BaseException | None = None


class Partition:
    """A TCP proxy from a free loopback port to (upstream_host, upstream_port) that can be cut.

    Use as a context manager, or call close(). The thread starts in the constructor.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pipes: set[_Pipe] = set()
        self._cut = False
        self._stopping = False
        self._commands: collections.deque[_Command] = collections.deque()
        self._lock = threading.Lock()  # guards _commands and _finished
        self._finished = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"partition-proxy:{self.port}", daemon=True
        )
        self._thread.start()

    # --- public API -----------------------------------------------------------------------------
    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def connections(self) -> int:
        """Accepted client connections still open (held ones included, see cut())."""
        return len(self._pipes)

    def url_for(self, redis_url: str) -> str:
        """`redis_url` with its host:port replaced by the proxy's; user, db, query are kept."""
        parts = urlsplit(redis_url)
        if not parts.hostname:
            raise ValueError(f"not a TCP Redis URL: {redis_url!r}")
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{HOST}:{self.port}"))

    def cut(self) -> None:
        """Stop forwarding both ways; sockets stay open, bytes wait until heal()."""
        self._call(self._do_cut)

    def heal(self) -> None:
        """Resume forwarding; held bytes are delivered in order, held connections opened."""
        self._call(self._do_heal)

    def cut_for(self, seconds: float) -> None:
        """cut(), wait `seconds` (this thread only), heal()."""
        self.cut()
        try:
            time.sleep(seconds)
        finally:
            self.heal()

    def reset_all(self) -> None:
        """Close every connection (both sides), as a restart of the proxy would."""
        self._call(self._do_reset_all)

    def close(self) -> None:
        """Stop the thread and close the listener and every connection. Idempotent."""
        with contextlib.suppress(RuntimeError):  # already closed
            self._call(self._do_stop)
        self._thread.join()
        if self._failure is not None:
            raise self._closed_error()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- control: run a function in the proxy's thread and wait for it --------------------------
    def _call(self, fn: Callable[[], None]) -> None:
        command = _Command(fn)
        # Wake the thread under the lock: it marks itself finished under this lock before it
        # closes the wake-up socket, and cannot run this command before the wake-up is sent.
        with self._lock:
            if self._finished:
                raise self._closed_error()
            self._commands.append(command)
            with contextlib.suppress(BlockingIOError):  # full of wake-ups: it will wake anyway
                self._wake_w.send(b"\0")
        command.done.wait()
        if command.error is not None:
            raise command.error

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                command = self._commands.popleft()
            try:
                command.fn()
            except Exception as e:
                command.error = e
            command.done.set()

    def _do_cut(self) -> None:
        self._cut = True

    def _do_heal(self) -> None:
        self._cut = False
        for pipe in list(self._pipes):
            if pipe.upstream is None:
                self._open_upstream(pipe)

    def _do_reset_all(self) -> None:
        for pipe in list(self._pipes):
            self._close_pipe(pipe)

    def _do_stop(self) -> None:
        self._stopping = True

    # --- the proxy's thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._update_interest()
                ready = self._selector.select()
                # Wake-ups are drained before the commands run, never after: a command sent
                # after this drain has its own wake-up pending, so the next select returns for
                # it (draining afterwards swallowed that wake-up and its caller waited forever).
                if any(key.fileobj is self._wake_r for key, _ in ready):
                    self._drain_wake()
                self._run_commands()
                if self._stopping:
                    break
                for key, mask in ready:
                    if key.fileobj is self._wake_r:
                        continue
                    if key.fileobj is self._listener:
                        self._accept()
                    else:
                        assert isinstance(key.fileobj, socket.socket)
                        self._service(key.data, key.fileobj, mask)
        except BaseException as e:
            self._failure = e  # raised again by the next control call, and by close()
            raise
        finally:
            with self._lock:
                self._finished = True
                pending = list(self._commands)
                self._commands.clear()
            try:
                for pipe in list(self._pipes):
                    self._close_pipe(pipe)
                self._selector.close()
                for sock in (self._listener, self._wake_r, self._wake_w):
                    sock.close()
            finally:
                for command in pending:  # sent while the thread was stopping
                    if command.fn != self._do_stop:  # a second close() is no error
                        command.error = self._closed_error()
                    command.done.set()

    def _closed_error(self) -> RuntimeError:
        error = RuntimeError(f"partition proxy on port {self.port} is closed")
        if self._failure is not None:
            error = RuntimeError(
                f"partition proxy on port {self.port} stopped: its thread failed: {self._failure!r}"
            )
            error.__cause__ = self._failure
        return error

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors, aborted handshake: keep serving
                if e.errno in (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                    return
                raise
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(client)
            self._pipes.add(pipe)
            if not self._cut:  # during a cut the upstream is opened at heal()
                self._open_upstream(pipe)

    def _open_upstream(self, pipe: _Pipe) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe.upstream = upstream
        err = upstream.connect_ex(self.upstream)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            pipe.connecting = True
        elif err != 0:  # refused at once: the client sees its connection closed
            self._close_pipe(pipe)

    def _update_interest(self) -> None:
        for pipe in list(self._pipes):
            if pipe.closed:
                continue
            client_events = upstream_events = 0
            if not self._cut:
                if pipe.eof_from is None:
                    if len(pipe.to_upstream) < HIGH_WATER:
                        client_events |= selectors.EVENT_READ
                    if len(pipe.to_client) < HIGH_WATER and not pipe.connecting:
                        upstream_events |= selectors.EVENT_READ
                    if pipe.to_client:
                        client_events |= selectors.EVENT_WRITE
                if pipe.to_upstream or pipe.connecting:
                    upstream_events |= selectors.EVENT_WRITE
                if pipe.eof_from is pipe.upstream and pipe.to_client:
                    client_events |= selectors.EVENT_WRITE
            self._register(pipe, pipe.client, client_events)
            if pipe.upstream is not None:
                self._register(pipe, pipe.upstream, upstream_events)

    def _register(self, pipe: _Pipe, sock: socket.socket, events: int) -> None:
        current = pipe.events.get(sock, 0)
        if events == current:
            return
        if current == 0:
            self._selector.register(sock, events, pipe)
        elif events == 0:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, events, pipe)
        pipe.events[sock] = events

    def _service(self, pipe: _Pipe, sock: socket.socket, mask: int) -> None:
        if pipe.closed or self._cut:  # readiness seen before a cut is left for after heal
            return
        if pipe.connecting and sock is pipe.upstream:
            if not mask & selectors.EVENT_WRITE:
                return
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self._close_pipe(pipe)  # the upstream refused: close the client's side
                return
            pipe.connecting = False
        try:
            if mask & selectors.EVENT_READ and pipe.eof_from is None:
                self._read(pipe, sock)
            for target in (pipe.client, pipe.upstream):  # nothing more to a side that closed
                if target is not None and target is not pipe.eof_from:
                    self._flush(pipe, target)
        except OSError:  # reset, broken pipe: the connection is gone on one side
            self._close_pipe(pipe)
            return
        if pipe.eof_from is not None:  # one side closed: close the other once it has it all
            pending = pipe.to_upstream if pipe.eof_from is pipe.client else pipe.to_client
            if not pending:
                self._close_pipe(pipe)

    def _read(self, pipe: _Pipe, sock: socket.socket) -> None:
        buffer = pipe.to_upstream if sock is pipe.client else pipe.to_client
        while len(buffer) < HIGH_WATER:
            try:
                data = sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                pipe.eof_from = sock
                return
            buffer += data

    def _flush(self, pipe: _Pipe, sock: socket.socket) -> None:
        if sock is pipe.upstream and pipe.connecting:
            return
        buffer = pipe.buffer_to(sock)
        while buffer:
            try:
                sent = sock.send(buffer)
            except (BlockingIOError, InterruptedError):
                return
            del buffer[:sent]

    def _close_pipe(self, pipe: _Pipe) -> None:
        if pipe.closed:
            return
        pipe.closed = True
        self._pipes.discard(pipe)
        for sock in (pipe.client, pipe.upstream):
            if sock is None:
                continue
            if pipe.events.get(sock, 0):
                self._selector.unregister(sock)
            sock.close()
        pipe.events.clear()
