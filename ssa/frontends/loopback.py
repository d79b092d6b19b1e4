"""
The netlink frontend's plaintext streams (L{IPlaintextStream}): loopback
TCP connections between the application's own socket and the daemon.

The SSA kernel module makes the application's socket a real TCP socket
bound to loopback (its "internal address"). For a client socket, once
told the handshake is done, the module connects it to the daemon's
plaintext port on loopback: L{LoopbackListener} admits that connection
only from the source port the module announced, refuses (resets) and logs
any other, and L{RedirectedStream} hands it to the core. For an accepted
socket the daemon connects to the application's listening socket
(L{OutgoingStream}); the module then names the connection by the daemon's
source port (ACCEPT_NOTIFY). Neither carries a placeholder byte: a
truncation reaches the application as a reset.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from .. import descriptors
from ..interfaces import IPlaintextStream
from ..plaintext import PLAINTEXT_BUFFER, PlaintextSocket, reset_on_close

log = Logger()

LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
Arrival = Callable[[socket.socket], None]


def reset(sock: socket.socket) -> None:
    """
    Close C{sock} with a reset, not a FIN.
    """
    reset_on_close(sock)
    sock.close()


@implementer(IReadDescriptor)
class _Acceptor:
    """
    One listening socket in the reactor; each connection goes to
    C{arrived}.
    """

    def __init__(self, sock: socket.socket, arrived: Callable[[socket.socket, tuple], None]) -> None:
        self.sock = sock
        self.arrived = arrived

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: leave it queued, say so
                log.error("cannot accept a plaintext connection: {error}", error=e)
                return
            self.arrived(conn, peer)

    def connectionLost(self, reason) -> None:
        pass

    def logPrefix(self) -> str:
        return "ssa-netlink-plaintext"


class LoopbackListener:
    """
    The daemon's plaintext port on loopback (C{127.0.0.1} and, if there is
    one, C{::1}; never the wildcard address), admitting only the
    connections it was told to expect.
    """

    def __init__(self, reactor, port: int) -> None:
        """
        @param port: the TCP port (0: an ephemeral one, for tests).
        """
        self.reactor = reactor
        self.port = port
        self._acceptors: list[_Acceptor] = []
        self._expected: dict[tuple[int, int], Arrival] = {}

    def start(self) -> None:
        """
        Listen; an IPv6 loopback that is missing is only logged.

        @raise OSError: the IPv4 port is taken.
        """
        for family, host in LOOPBACK.items():
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, self.port))
                sock.listen(socket.SOMAXCONN)
                sock.setblocking(False)
            except OSError as e:
                sock.close()
                if family == socket.AF_INET6:
                    log.info("no IPv6 loopback for the plaintext port: {error}", error=e)
                    continue
                self.stop()
                raise
            self.port = sock.getsockname()[1]
            acceptor = _Acceptor(sock, self._arrived)
            self._acceptors.append(acceptor)
            self.reactor.addReader(acceptor)

    def stop(self) -> None:
        """
        Stop listening.
        """
        for acceptor in self._acceptors:
            self.reactor.removeReader(acceptor)
            acceptor.sock.close()
        self._acceptors = []

    def expect(self, family: int, port: int, arrived: Arrival) -> None:
        """
        Admit one connection from loopback port C{port} of C{family}.
        """
        self._expected[family, port] = arrived

    def forget(self, family: int, port: int, arrived: Arrival | None = None) -> None:
        """
        Stop expecting it (only if still for C{arrived}, when given).
        """
        if arrived is None or self._expected.get((family, port)) == arrived:
            self._expected.pop((family, port), None)

    def _arrived(self, conn: socket.socket, peer: tuple) -> None:
        arrived = self._expected.pop((conn.family, peer[1]), None)
        if arrived is None:
            log.warn("refused a plaintext connection from {host} port {port}: no SSA socket expects it",  # noqa: G010
                     host=peer[0], port=peer[1])
            reset(conn)
            return
        arrived(conn)


def _plaintext(sock: socket.socket) -> PlaintextSocket:
    descriptors.set_send_buffer(sock.fileno(), PLAINTEXT_BUFFER)
    return PlaintextSocket(sock, placeholder=False)


@implementer(IPlaintextStream)
class RedirectedStream:
    """
    The stream of a socket the application opened: the module's loopback
    connection from the socket's internal address. A listening socket's
    stream tells L{on_ready} of each connection ready for accept().

    @ivar on_ready: called by L{connection_ready}.
    """

    def __init__(self, listener: LoopbackListener) -> None:
        self.listener = listener
        self.on_ready: Callable[[], None] | None = None
        self._key: tuple[int, int] | None = None
        self._arrived: socket.socket | None = None
        self._waiting: Deferred | None = None
        self._failed = False
        self._closed = False

    def expect_from(self, family: int, port: int) -> None:
        """
        The module will connect from loopback port C{port} (the socket's
        internal address).
        """
        if self._key is not None:
            self.listener.forget(*self._key, self._arrive)
        self._key = (family, port)
        self.listener.expect(family, port, self._arrive)

    def _arrive(self, sock: socket.socket) -> None:
        self._key = None
        if self._failed or self._closed:
            reset(sock)  # a failed nonblocking connect: the module connects anyway
            return
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.callback(_plaintext(sock))
        else:
            self._arrived = sock

    def connecting(self, blocking: bool) -> None:
        """
        Nothing to do: the module keeps the application's socket from
        polling writable until it connects it.
        """

    def connected(self) -> Deferred:
        """
        Fire with the module's connection once it is there.
        """
        waiting: Deferred = Deferred()
        if self._arrived is not None:
            sock, self._arrived = self._arrived, None
            waiting.callback(_plaintext(sock))
        else:
            self._waiting = waiting
        return waiting

    def connect_failed(self) -> None:
        """
        A nonblocking connect's loopback connection will come anyway and
        is reset; a blocking connect's never comes.
        """
        self._failed = True

    def connection_ready(self) -> None:
        """
        Tell the frontend, which takes the connection at once.
        """
        if self.on_ready is not None:
            self.on_ready()

    def connection_taken(self) -> None:
        """
        Nothing to do.
        """

    def close(self) -> None:
        """
        Forget the expected connection; reset one not handed over.
        """
        self._closed = True
        if self._key is not None:
            self.listener.forget(*self._key, self._arrive)
            self._key = None
        if self._arrived is not None:
            reset(self._arrived)
            self._arrived = None
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(ConnectionAbortedError(errno.ECONNABORTED, "the socket was closed"))


@implementer(IReadDescriptor, IWriteDescriptor)
class ReadinessWaiter:
    """
    Fires L{done} once a socket is readable (C{"read"}) or writable
    (C{"write"}), then stops watching; L{cancel} stops early.
    """

    def __init__(self, reactor, sock: socket.socket, what: str) -> None:
        self.reactor, self.sock = reactor, sock
        self.done: Deferred = Deferred()
        self._remove = reactor.removeReader if what == "read" else reactor.removeWriter
        (reactor.addReader if what == "read" else reactor.addWriter)(self)

    def fileno(self) -> int:
        """
        The socket's descriptor.
        """
        return self.sock.fileno()

    def doRead(self) -> None:
        """
        Ready.
        """
        self.cancel()
        self.done.callback(None)

    doWrite = doRead

    def cancel(self) -> None:
        """
        Stop watching.
        """
        self._remove(self)

    def connectionLost(self, reason) -> None:
        """
        The reactor gave up the socket.
        """
        if not self.done.called:
            self.done.errback(reason)

    def logPrefix(self) -> str:
        """
        For the log.
        """
        return "ssa-loopback"


@implementer(IPlaintextStream)
class OutgoingStream:
    """
    The stream of an accepted socket: the daemon connects from a loopback
    port of its own to the application's listening socket, and tells
    C{on_source} that port (the module announces the accepted socket by
    it).

    @ivar core_id: the core's id of the accepted socket, once known.
    """

    def __init__(self, reactor, target: tuple[int, str, int], on_source: Callable[[int], None]) -> None:
        self.reactor = reactor
        self.target = target
        self.on_source = on_source
        self.core_id: int | None = None
        self._sock: socket.socket | None = None
        self._writable: ReadinessWaiter | None = None

    def connected(self) -> Deferred:
        """
        Connect to the application's listening socket; fire once done.
        """
        family, host, port = self.target
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((LOOPBACK[family], 0))
            self.on_source(sock.getsockname()[1])
            sock.setblocking(False)
            err = sock.connect_ex((host, port))
        except OSError as e:
            sock.close()
            return fail(e)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return fail(OSError(err, os.strerror(err)))
        self._sock = sock
        self._writable = ReadinessWaiter(self.reactor, sock, "write")

        def done(_: object) -> PlaintextSocket:
            self._writable = None
            sock, self._sock = self._sock, None
            if sock is None:
                raise ConnectionAbortedError(errno.ECONNABORTED, "the socket was closed")
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                sock.close()
                raise OSError(err, f"cannot reach the application's listening socket: {os.strerror(err)}")
            return _plaintext(sock)

        return self._writable.done.addCallback(done)

    def connecting(self, blocking: bool) -> None:
        """
        Not called for an accepted socket.
        """

    def connect_failed(self) -> None:
        """
        Not called for an accepted socket.
        """

    def connection_ready(self) -> None:
        """
        Not called: an accepted socket does not listen.
        """

    def connection_taken(self) -> None:
        """
        Not called: an accepted socket does not listen.
        """

    def close(self) -> None:
        """
        Drop the connection if the bridge has not taken it.
        """
        sock, self._sock = self._sock, None
        if sock is not None:
            reset(sock)
        if self._writable is not None:
            writable, self._writable = self._writable, None
            writable.cancel()
            writable.done.callback(None)  # done() finds no socket and fails
