"""
Taking a connected TCP socket away from the Twisted transport that ran its
handshake.

Handshakes run on Twisted's TCP transports (connect timeouts, happy
eyeballs, the listener's port). Once a connection is established the
L{ssa.bridge.Bridge} moves its bytes itself, with fewer and larger system
calls than a transport makes; this module is the one place that reaches
into a transport to hand its socket over.
"""

from __future__ import annotations

import socket

from twisted.internet.abstract import FileDescriptor


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
