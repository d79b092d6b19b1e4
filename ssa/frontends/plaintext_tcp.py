"""
The netlink frontend's plaintext side: loopback TCP connections between
the application's socket and the daemon, joined to the daemon core's
plaintext stream of the socket.

The kernel module redirects the application's socket to the daemon's port
on loopback (client sockets) and the daemon connects to the application's
listening socket (accepted ones). L{ExpectedConnections} listens on the
loopback addresses only and admits a connection only from a source port
the module announced; L{Relay} joins a TCP connection to the core's
plaintext descriptor, ends and errors included: a clean end is a FIN, a
truncation (the core's descriptor reads ECONNRESET) a reset.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


@implementer(IHalfCloseableProtocol)
class RelaySide(Protocol):
    """
    One side of a L{Relay}: what it reads goes to the other side's
    transport, its ends too. It reads nothing until joined.
    """

    def __init__(self) -> None:
        self.other: RelaySide | None = None

    def connectionMade(self) -> None:
        """
        Wait for the other side before reading.
        """
        if self.other is None:
            self.transport.pauseProducing()

    def join(self, other: RelaySide) -> None:
        """
        Pair with C{other} (connected), with flow control both ways.
        """
        self.other = other
        self.transport.registerProducer(other.transport, True)
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        """
        Pass data on.
        """
        assert self.other is not None
        self.other.transport.write(data)

    def readConnectionLost(self) -> None:
        """
        The writer ended cleanly: end the other side's writing.
        """
        if self.other is not None and _open(self.other.transport):
            self.other.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        """
        Nothing to do: the reading goes on.
        """

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:
        """
        Gone: close the other side, with a reset if this side failed (a
        truncated stream must not look complete to the application).
        """
        other = self.other
        if other is None or not _open(other.transport):
            return
        if not reason.check(ConnectionDone):
            reset_on_close(other.transport)
        other.transport.loseConnection()


def _open(transport) -> bool:
    return transport is not None and not transport.disconnected and not transport.disconnecting


def reset_on_close(transport) -> None:
    """
    Make a TCP transport's close a reset (after what it has queued).
    """
    try:
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError):
        pass


class Relay:
    """
    The bytes between the core's plaintext descriptor and the loopback TCP
    connection of the application.
    """

    def __init__(self, reactor, plaintext_fd: int) -> None:
        """
        @param plaintext_fd: the core's plaintext descriptor for the
            application; the relay keeps a duplicate (the caller keeps its
            own) and starts reading it once the application is there.
        """
        self.reactor = reactor
        self._fd: int | None = os.dup(plaintext_fd)
        self.core: RelaySide | None = None
        self.app: RelaySide | None = None

    def attach(self, app: RelaySide) -> None:
        """
        The application's TCP connection is there: join the two.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            app.transport.abortConnection()
            return
        self.app = app
        self.core = RelaySide()
        self.core.other = app
        try:
            self.reactor.adoptStreamConnection(fd, socket.AF_UNIX, _OneProtocol(self.core))
        finally:
            os.close(fd)
        self.core.join(app)
        app.join(self.core)

    def abort(self) -> None:
        """
        Drop both sides at once (or the descriptor, if never attached).
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        for side in (self.core, self.app):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()


class _OneProtocol(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr) -> Protocol:
        return self.protocol_instance


class ExpectedConnections(Factory):
    """
    The plaintext listener's factory: a connection is admitted only from
    a loopback source port registered with L{expect}; any other is
    refused (closed at once) and logged.
    """

    noisy = False

    def __init__(self) -> None:
        self._expected: dict[tuple[int, int], Callable[[RelaySide], None]] = {}

    def expect(self, family: int, port: int, arrived: Callable[[RelaySide], None]) -> None:
        """
        Admit one connection from the loopback port C{port} of C{family};
        C{arrived} gets its protocol once connected.
        """
        self._expected[family, port] = arrived

    def forget(self, family: int, port: int) -> None:
        """
        Stop expecting a connection from C{port}.
        """
        self._expected.pop((family, port), None)

    def buildProtocol(self, addr) -> Protocol | None:
        """
        Admit an expected connection, refuse any other.
        """
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        arrived = self._expected.pop((family, addr.port), None)
        if arrived is None:
            log.warn("refused a plaintext connection from {host} port {port}: no SSA socket expects it",  # noqa: G010
                     host=addr.host, port=addr.port)
            return None
        side = _ArrivingSide(arrived)
        side.factory = self
        return side


class _ArrivingSide(RelaySide):
    def __init__(self, arrived: Callable[[RelaySide], None]) -> None:
        super().__init__()
        self._arrived = arrived

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arrived(self)
