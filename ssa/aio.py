"""
asyncio on SSA sockets: L{open_connection} and L{start_server}, as their
C{asyncio} namesakes, with the daemon doing TLS.

    reader, writer = await ssa.aio.open_connection("example.org", 443)

The event loop never waits for the daemon. The short control round trips
(C{socket}, options, starting a nonblocking connect, C{SO_ERROR},
C{accept}) run in a small thread pool of this module; the long waits (the
TCP connect, the handshake and verification, a client arriving) are
readiness of the plaintext descriptor, watched by the loop itself: it turns
writable when a nonblocking connect is done, and a listener's turns readable
while a connection waits for C{accept} (docs/protocol.md).

Each connection's L{ssa.client.SSASocket} lives as long as its transport:
closing the transport closes the socket in the daemon.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ssa import client
from ssa._connecting import ACCEPT_BACKOFF, LISTENER_GONE, Handover, connect_first
from ssa.client import SSASocket

__all__ = ["SSAServer", "connect", "open_connection", "start_server"]

_T = TypeVar("_T")
_LIMIT = 2**16
#: Threads for the control round trips: each is short, so a few serve
#: many connections.
POOL_SIZE = 8
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()

ClientConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
PathLike = str | bytes | os.PathLike[str]


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="ssa-aio")
        return _pool


async def _off_loop(function: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(_executor(), function, *args)


async def _writable(fd: int) -> None:
    await _ready(fd, writable=True)


async def _ready(fd: int, writable: bool) -> None:
    """
    Wait until C{fd} is writable (or readable).
    """
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    add(fd, wake)
    try:
        await waiter
    finally:
        remove(fd)


async def connect(
    host: str,
    port: int,
    *,
    hostname: str | None = None,
    cafile: PathLike | None = None,
    alpn: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> SSASocket:
    """
    A connected, nonblocking L{SSASocket}, reached as
    L{ssa.client.create_connection} would (each address in turn) without
    blocking the loop.

    @raise OSError: as L{ssa.client.create_connection}: C{EPROTO} for a
        failed handshake or verification, C{ECONNABORTED} when no address
        could be reached, with the daemon's reason.
    """
    options = {"hostname": hostname, "cafile": cafile, "alpn": alpn, "path": path}
    return await connect_first(host, port, options, _off_loop, _writable)


class _Protocol(asyncio.StreamReaderProtocol):
    """
    A stream protocol that closes its SSA socket (in the daemon too) when
    the connection is lost.
    """

    def __init__(self, sock: SSASocket, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ssa_socket = sock

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.ssa_socket.close()


def ssa_socket(writer: asyncio.StreamWriter) -> SSASocket:
    """
    The L{SSASocket} under a stream: for C{tls_info()}, C{get_error()} and
    the C{TLS_*} options (blocking calls: run them with C{to_thread}).
    """
    return writer.transport.get_protocol().ssa_socket  # type: ignore[attr-defined]


async def _streams(sock: SSASocket, limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """
    The streams of a connected client socket.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = _Protocol(sock, reader, loop=loop)
    transport = await _transport(sock, protocol, loop.create_connection)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _serve(sock: SSASocket, limit: int, callback: ClientConnectedCallback) -> None:
    """
    Give an accepted socket to the server's callback (the protocol makes
    the streams: a second writer would close the transport when collected).
    """
    loop = asyncio.get_running_loop()
    protocol = _Protocol(sock, asyncio.StreamReader(limit=limit, loop=loop), callback, loop=loop)
    await _transport(sock, protocol, loop.connect_accepted_socket)


async def _transport(
    sock: SSASocket, protocol: _Protocol, make: Callable[..., Awaitable[tuple[asyncio.BaseTransport, Any]]]
) -> Any:
    """
    A transport on a copy of the plaintext descriptor (the transport
    closes its copy, the protocol the socket).
    """
    plain = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        transport, _ = await make(lambda: protocol, sock=plain)
    except BaseException:
        plain.close()
        sock.close()
        raise
    return transport


async def open_connection(
    host: str,
    port: int,
    *,
    hostname: str | None = None,
    cafile: PathLike | None = None,
    alpn: str | None = None,
    path: str | os.PathLike[str] | None = None,
    limit: int = _LIMIT,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """
    Connect through the daemon, like C{asyncio.open_connection}.

    @param hostname: the name verified (C{TLS_HOSTNAME}); by default
        C{host} unless it is an IP literal.
    @param cafile: the trust anchors: PEM file, directory or inline PEM.
    @param alpn: protocols to offer, a comma list.
    @param path: the daemon's control socket.
    @raise OSError: see L{connect}.
    """
    sock = await connect(host, port, hostname=hostname, cafile=cafile, alpn=alpn, path=path)
    return await _streams(sock, limit)


class SSAServer(asyncio.AbstractServer):
    """
    The L{asyncio.AbstractServer} of L{start_server}: one SSA listener,
    accepting while serving.

    @ivar listener: the listening L{SSASocket}.
    """

    def __init__(self, listener: SSASocket, callback: ClientConnectedCallback, limit: int) -> None:
        self.listener = listener
        self._callback = callback
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._acceptor: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def sockets(self) -> tuple[SSASocket, ...]:
        """
        The listening socket (its C{getsockname()} gives the port).
        """
        return () if self._closed.is_set() else (self.listener,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """
        The loop serving.
        """
        return self._loop

    def is_serving(self) -> bool:
        """
        Whether connections are being accepted.
        """
        return self._acceptor is not None and not self._acceptor.done()

    async def start_serving(self) -> None:
        """
        Start accepting (L{start_server} does so at once).
        """
        if self._closed.is_set():
            raise RuntimeError(f"server {self!r} is closed")
        if self._acceptor is None:
            self._acceptor = self._loop.create_task(self._accept_loop())

    async def serve_forever(self) -> None:
        """
        Accept until cancelled; cancelling closes the server.
        """
        await self.start_serving()
        try:
            await self._closed.wait()
        finally:
            self.close()

    def close(self) -> None:
        """
        Stop accepting and close the listener; connections already accepted
        go on.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        if self._acceptor is not None:
            self._acceptor.cancel()
        self._loop.remove_reader(self.listener.fileno())  # before its number can be reused
        self.listener.close()

    async def wait_closed(self) -> None:
        """
        Wait until L{close} was called and the accepting has stopped.
        """
        await self._closed.wait()
        if self._acceptor is not None:
            await asyncio.gather(self._acceptor, return_exceptions=True)

    async def _accept_loop(self) -> None:
        while True:
            await _ready(self.listener.fileno(), writable=False)
            handover = Handover()
            try:
                accepted = await _off_loop(handover.run, lambda: self.listener.accept()[0])
            except BlockingIOError:
                continue  # another accepter took it
            except BaseException as e:
                handover.give_up()
                if not isinstance(e, Exception):
                    raise
                if self._closed.is_set():
                    return
                self._loop.call_exception_handler({"message": "SSA accept failed", "exception": e, "server": self})
                if isinstance(e, OSError) and e.errno in LISTENER_GONE:
                    self.close()
                    return
                await asyncio.sleep(ACCEPT_BACKOFF)
                continue
            task = self._loop.create_task(_serve(accepted, self._limit, self._callback))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def start_server(
    client_connected_cb: ClientConnectedCallback,
    host: str | None,
    port: int,
    *,
    certfile: PathLike,
    keyfile: PathLike,
    cafile: PathLike | None = None,
    require_client_certificate: bool = False,
    alpn: str | None = None,
    backlog: int = 100,
    path: str | os.PathLike[str] | None = None,
    limit: int = _LIMIT,
    start_serving: bool = True,
) -> SSAServer:
    """
    Serve TLS through the daemon, like C{asyncio.start_server}: each
    connection whose handshake succeeded is handed to
    C{client_connected_cb(reader, writer)} (a function or a coroutine
    function).

    @param host: the address to listen on; C{None} or C{""} for all IPv4
        addresses.
    @param certfile: the certificate chain, leaf first (path or PEM).
    @param keyfile: its private key.
    @param cafile: the anchors client certificates are verified against.
    @param require_client_certificate: require a client certificate.
    """
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    listener = await _off_loop(
        lambda: client.create_server(
            (host or "", port), certfile=certfile, keyfile=keyfile, family=family, backlog=backlog,
            cafile=cafile, require_client_certificate=require_client_certificate, alpn=alpn, path=path,
        )
    )
    listener.setblocking(False)
    server = SSAServer(listener, client_connected_cb, limit)
    if start_serving:
        await server.start_serving()
    return server
