"""A TCP proxy between runners and a private cluster that can stall, hold or cut traffic.

It forwards 127.0.0.1:<its port> to the cluster's port in one plain Python thread (the
pytest process is not gevent-patched; runners are subprocesses) running a ``poll`` loop
over non-blocking sockets. Since every byte is moved by that one loop, a mode change is
exact: when ``stall()`` returns, no further byte is forwarded in either direction.
Bytes read while a direction is held wait in that connection's buffer and are written in
order on ``resume()``: nothing is lost or reordered. A full buffer (4 MiB) stops reading,
so the sender feels TCP back-pressure as it would from a slow network.

Modes: ``forward()`` (normal), ``stall()`` (connections stay open, nothing is forwarded,
new connections are accepted and held), ``hold_replies()`` (client to server forwarded,
server to client held), ``resume()`` (forward again, delivering what was held), ``cut()``
(reset every connection, SO_LINGER 0 so the peers get an RST, and reset each new one as
soon as it is accepted, until ``restore()``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

FORWARD, STALL, HOLD_REPLIES, CUT = "forward", "stall", "hold_replies", "cut"
BUFFER_LIMIT = 4 * 1024 * 1024
CHUNK = 65536
READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
WRITE = select.POLLOUT
RETRYABLE = (BlockingIOError, InterruptedError)


def reset(sock: socket.socket) -> None:
    """Close ``sock`` abruptly: the peer gets an RST, not an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass(eq=False)
class _Link:
    """One proxied connection: the two sockets and the bytes read but not yet written."""

    client: socket.socket
    server: socket.socket
    up: bytearray = field(default_factory=bytearray)  # client -> server
    down: bytearray = field(default_factory=bytearray)  # server -> client
    client_eof: bool = False
    server_eof: bool = False
    up_shut: bool = False  # the client's EOF was passed on to the server
    down_shut: bool = False


@dataclass
class ProxyStats:
    """Connection counts since the proxy started."""

    accepted: int = 0  # connections accepted and forwarded to the server
    refused: int = 0  # connections reset on accept (cut) or because the server refused
    cut: int = 0  # open connections reset by cut()
    closed: int = 0  # connections that ended on their own (either side closed or failed)
    open: int = 0  # connections open now


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``; see the module docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], _Reply]] = queue.SimpleQueue()
        self._mode = FORWARD
        self._links: dict[int, tuple[_Link, bool]] = {}  # fd -> (link, is the client side)
        self._stats = ProxyStats()
        self._running = True
        self._poller = select.poll()
        self._poller.register(self._listener.fileno(), READ)
        self._poller.register(self._wake_r.fileno(), READ)
        self._thread = threading.Thread(target=self._loop, name=f"tcp-proxy-{self.port}",
                                        daemon=True)
        self._thread.start()

    # -- the API, called from the test's thread ---------------------------------------

    def dsn_for(self, cluster_dsn: str) -> str:
        """``cluster_dsn`` (a postgresql:// URI) with its host and port replaced by ours."""
        parts = urlsplit(cluster_dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"not a postgresql:// URI: {cluster_dsn!r}")
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def mode(self) -> str:
        return self._mode

    def forward(self) -> None:
        """Forward both ways (and deliver whatever was held)."""
        self._set_mode(FORWARD)

    def stall(self) -> None:
        """Forward nothing either way; connections stay open and new ones are held too."""
        self._set_mode(STALL)

    def hold_replies(self) -> None:
        """Forward what clients send; hold what the server sends back."""
        self._set_mode(HOLD_REPLIES)

    def resume(self) -> None:
        """End a stall or a hold: deliver the held bytes, in order, and forward again."""
        self._set_mode(FORWARD)

    def cut(self) -> int:
        """Reset every open connection and each new one until ``restore()``; return how
        many were open."""
        return self._call(self._cut)

    def restore(self) -> None:
        """Accept and forward new connections again after ``cut()``."""
        self._set_mode(FORWARD)

    def stats(self) -> ProxyStats:
        """A snapshot of the connection counts."""
        def snapshot() -> ProxyStats:
            return dataclasses.replace(self._stats, open=len(self._open_links()))

        return self._call(snapshot)

    def close(self) -> None:
        """Reset every connection and stop the proxy's thread."""
        if self._running:
            self._call(self._shutdown)
            self._thread.join(10)
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _set_mode(self, mode: str) -> None:
        def apply() -> None:
            self._mode = mode

        self._call(apply)

    def _call(self, command: Callable[[], T]) -> T:
        """Run ``command`` in the proxy's thread, between two rounds of its loop."""
        reply = _Reply()
        self._commands.put((command, reply))
        self._wake_w.send(b"x")
        if not reply.done.wait(10):
            raise RuntimeError("the proxy's thread did not answer in 10 s")
        if reply.error is not None:
            raise reply.error
        return reply.value

    # -- the loop, in the proxy's thread ------------------------------------------------

    def _loop(self) -> None:
        while self._running:
            for fd, events in self._poller.poll(1000):
                if fd == self._wake_r.fileno():
                    self._run_commands()
                elif fd == self._listener.fileno():
                    self._accept()
                elif fd in self._links:
                    link, is_client = self._links[fd]
                    self._service(link, is_client, events)
            for link in self._open_links():
                self._update(link)
        self._run_commands()  # answer whoever is still waiting

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                command, reply = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                reply.value = command()
            except Exception as exc:
                reply.error = exc
            reply.done.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except RETRYABLE:
                return
            if self._mode == CUT:
                self._stats.refused += 1
                reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=2)
            except OSError:
                self._stats.refused += 1
                reset(client)
                continue
            for sock in (client, server):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            self._links[client.fileno()] = (link, True)
            self._links[server.fileno()] = (link, False)
            self._stats.accepted += 1
            self._update(link)

    def _service(self, link: _Link, is_client: bool, events: int) -> None:
        """Read what a socket has, write what it may take; reset the link on an error."""
        sock = link.client if is_client else link.server
        try:
            if events & READ:
                self._read(link, is_client, sock)
            if events & WRITE:
                pending = link.down if is_client else link.up
                if pending:
                    with contextlib.suppress(*RETRYABLE):
                        del pending[: sock.send(pending)]
        except OSError:  # reset by the peer, or the like: pass the reset on
            self._drop(link)
            self._stats.closed += 1

    def _read(self, link: _Link, is_client: bool, sock: socket.socket) -> None:
        buffer = link.up if is_client else link.down
        if len(buffer) >= BUFFER_LIMIT:
            return
        try:
            data = sock.recv(CHUNK)
        except RETRYABLE:
            return
        if data:
            buffer += data
        elif is_client:
            link.client_eof = True
        else:
            link.server_eof = True

    def _update(self, link: _Link) -> None:
        """Pass on an EOF whose bytes are all delivered, close a finished link, and
        (re-)register what each socket should wait for in the current mode."""
        if link.client.fileno() < 0:
            return
        up_allowed = self._mode in (FORWARD, HOLD_REPLIES)
        down_allowed = self._mode == FORWARD
        try:
            if link.client_eof and not link.up and up_allowed and not link.up_shut:
                link.server.shutdown(socket.SHUT_WR)
                link.up_shut = True
            if link.server_eof and not link.down and down_allowed and not link.down_shut:
                link.client.shutdown(socket.SHUT_WR)
                link.down_shut = True
        except OSError:
            self._drop(link)
            self._stats.closed += 1
            return
        if link.up_shut and link.down_shut:
            self._drop(link, abrupt=False)
            self._stats.closed += 1
            return
        client_events = server_events = 0
        if not link.client_eof and len(link.up) < BUFFER_LIMIT:
            client_events |= READ
        if not link.server_eof and len(link.down) < BUFFER_LIMIT:
            server_events |= READ
        if link.down and down_allowed:
            client_events |= WRITE
        if link.up and up_allowed:
            server_events |= WRITE
        self._watch(link.client, client_events)
        self._watch(link.server, server_events)

    def _watch(self, sock: socket.socket, events: int) -> None:
        """Poll ``sock`` for ``events``; not at all when there are none (poll would still
        report a hang-up, again and again, on a socket we are done reading)."""
        if events:
            self._poller.register(sock.fileno(), events)
        else:
            with contextlib.suppress(KeyError):
                self._poller.unregister(sock.fileno())

    def _open_links(self) -> list[_Link]:
        return [link for link, is_client in self._links.values() if is_client]

    def _drop(self, link: _Link, abrupt: bool = True) -> None:
        for sock in (link.client, link.server):
            fd = sock.fileno()
            if fd >= 0:
                self._links.pop(fd, None)
                with contextlib.suppress(KeyError):
                    self._poller.unregister(fd)
                if abrupt:
                    reset(sock)
                else:
                    sock.close()

    def _cut(self) -> int:
        self._mode = CUT
        links = self._open_links()
        for link in links:
            self._drop(link)
        self._stats.cut += len(links)
        return len(links)

    def _shutdown(self) -> None:
        for link in self._open_links():
            self._drop(link)
        self._running = False


class _Reply:
    """The outcome of a command run in the proxy's thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: Exception | None = None
