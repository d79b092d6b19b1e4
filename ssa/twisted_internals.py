"""
The one module that relies on parts of Twisted that are not public API;
C{tests/test_takeover.py} pins each of them.

1. Taking a connected TCP socket away from the Twisted transport that ran
   its handshake (L{take_socket}). Handshakes run on Twisted's TCP
   transports (connect timeouts, happy eyeballs, the listener's port); once
   a connection is established the L{ssa.bridge.Bridge} moves its bytes
   itself, with fewer and larger system calls than a transport makes.
2. Control connections whose reads carry the sender's kernel-verified
   credentials (L{CredentialPort}, L{CredentialServer}): the listening
   socket has C{SO_PASSCRED}, which every accepted connection inherits, so
   the kernel attaches C{SCM_CREDENTIALS} to every message and never joins
   two senders' bytes in one read. Twisted's Unix transport drops that
   ancillary data; ours hands it to the protocol before the bytes.
3. Sharing connections and listening sockets between worker processes: a
   control connection closed here without C{shutdown()} while another
   process serves it (L{close_without_shutdown}); the control socket a
   worker inherits, served without C{listen()}, C{chmod()} or, when it
   stops, C{shutdown()} and unlinking the path (L{serve_inherited}).
"""

from __future__ import annotations

import os
import socket
import struct

from twisted.internet import main, tcp, unix
from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import Interface


class TakeoverError(Exception):
    """
    The transport's connection is already closing or closed.
    """


def take_socket(transport: FileDescriptor) -> tuple[socket.socket, bytes]:
    """
    Stop the reactor watching C{transport}'s socket and take the socket.

    The transport is left inert: it holds no unsent bytes, and nothing in
    Twisted will read, write or close the socket again; the caller owns it.

    @return: the socket and the bytes the transport had not sent yet
        (typically the end of the handshake), which the caller must send
        first.
    @raise TakeoverError: the connection was already lost or is closing.
    """
    if not transport.connected or transport.disconnecting or transport.disconnected:
        raise TakeoverError("the connection is already closing")
    transport.stopReading()
    transport.stopWriting()
    sock = transport.getHandle()
    unsent = bytes(transport.dataBuffer[transport.offset :]) + b"".join(transport._tempDataBuffer)
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    # Nothing Twisted does with the transport later may reach the socket or
    # the reactor's registration of its descriptor, which is the bridge's
    # now: the reactor may still be inside this transport's doRead, and it
    # calls doWrite next if the descriptor was also writable, unless the
    # transport's fileno() no longer matches.
    transport.connected = False
    transport.disconnected = True
    transport.fileno = _no_descriptor
    for name in ("doRead", "doWrite", "startReading", "startWriting", "stopReading", "stopWriting"):
        setattr(transport, name, _nothing)
    return sock, unsent


def _no_descriptor() -> int:
    return -1


def _nothing() -> None:
    return None


_UCRED = struct.Struct("3i")
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(64 * 4)


class ICredentialReceiver(Interface):
    """
    A protocol told who sent the bytes of each read.
    """

    def credentials_received(credentials: tuple[int, int, int] | None) -> None:
        """
        The next C{dataReceived} holds bytes written by the process with
        these C{(pid, uid, gid)}, or L{None} when the kernel did not say.
        """


class CredentialServer(unix.Server):
    """
    A Unix stream connection whose every read passes the sender's
    credentials to the protocol first (an L{ICredentialReceiver}).
    """

    def doRead(self):
        """
        Read once: credentials, then the bytes; descriptors are closed
        (no request carries any).
        """
        try:
            data, ancillary, flags, _ = self.socket.recvmsg(self.bufferSize, _ANCILLARY)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        credentials = None
        for level, kind, payload in ancillary:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                credentials = _UCRED.unpack_from(payload)
            elif kind == socket.SCM_RIGHTS:
                for (fd,) in struct.iter_unpack("i", payload[: len(payload) - len(payload) % 4]):
                    _close(fd)
        if flags & socket.MSG_CTRUNC or (credentials is not None and credentials[0] <= 0):
            credentials = None
        if not data:
            return main.CONNECTION_DONE
        self.protocol.credentials_received(credentials)
        return self.protocol.dataReceived(data)


def pass_credentials(sock: socket.socket) -> None:
    """
    Ask the kernel to attach the sender's credentials to every message
    that arrives on C{sock} (inherited by the connections a listening
    socket accepts).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


class CredentialPort(unix.Port):
    """
    A listening Unix socket whose connections are L{CredentialServer}s.
    """

    transport = CredentialServer

    def createInternetSocket(self):
        """
        The listening socket, with C{SO_PASSCRED} before any client connects.
        """
        sock = super().createInternetSocket()
        pass_credentials(sock)
        return sock


def listen_with_credentials(reactor, path: str, factory, mode: int = 0o666, backlog: int = 128) -> CredentialPort:
    """
    What C{reactor.listenUNIX} does, with a L{CredentialPort}.
    """
    port = CredentialPort(path, factory, backlog, mode, reactor)
    port.startListening()
    return port


def adopt_with_credentials(reactor, fd: int, factory):
    """
    What C{reactor.adoptStreamConnection(fd, AF_UNIX, factory)} does, with
    a L{CredentialServer} (the descriptor stays the caller's to close).
    """
    return CredentialServer._fromConnectedSocket(fd, factory, reactor)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def close_without_shutdown(transport) -> None:
    """
    Close a TCP or Unix transport's connection here while it lives on
    elsewhere (through a duplicate of its descriptor): once the data
    already written is flushed, and without C{shutdown()}, which Twisted's
    orderly close calls and which would end it for the other holder too.
    Relies on C{Connection._shouldShutdown} (tests/test_takeover.py pins
    it).
    """
    transport._shouldShutdown = False
    transport.loseConnection()


class SharedControlPort(CredentialPort):
    """
    The control socket as a worker serves it: a listening socket it got
    from the main process, served as it is. A L{unix.Port} would call
    C{listen()} and C{chmod()} when it starts and, when it stops, call
    C{shutdown()} (which makes the shared socket refuse every connection,
    in every process) and remove the path.
    """

    def startListening(self) -> None:
        """
        Accept from the inherited socket.
        """
        tcp._reservedFD.reserve()
        self.factory.doStart()
        self.socket, self._preexistingSocket = self._preexistingSocket, None
        self._shouldShutdown = False
        self.fileno = self.socket.fileno
        self.connected = True
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        """
        Stop listening; the path stays.
        """
        tcp.Port.connectionLost(self, reason)


def serve_inherited(reactor, fd: int, factory: Factory) -> SharedControlPort:
    """
    Accept control connections from the listening socket C{fd} (what
    C{reactor.adoptStreamPort} does, with a port that leaves the path
    alone), and close C{fd}, which the port has duplicated.
    """
    os.set_blocking(fd, False)
    listening = socket.socket(fileno=fd)
    try:
        pass_credentials(listening)  # e.g. a socket systemd made: requests carry their senders
    finally:
        listening.detach()
    port = SharedControlPort._fromListeningDescriptor(reactor, fd, factory)
    port.startListening()
    os.close(fd)
    return port
