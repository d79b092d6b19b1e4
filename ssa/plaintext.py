"""
What a bridge is given of an application's plaintext stream once its
frontend has made it (L{ssa.interfaces.IPlaintextStream.connected}).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

#: Send buffer of the daemon's plaintext socket (and of the application's
#: end where the daemon holds it) once connected, so that a 256 KiB write
#: needs one wakeup, not two.
PLAINTEXT_BUFFER = 1 << 20

_LINGER_ABORT = struct.pack("ii", 1, 0)


def reset_on_close(sock: socket.socket) -> None:
    """
    Make closing C{sock} (a TCP socket) reset its connection instead of
    ending it with a FIN: what the other side read must not look like a
    complete stream.
    """
    if sock.fileno() >= 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass


@dataclass(frozen=True)
class PlaintextSocket:
    """
    The daemon's end of an application's plaintext stream.

    @ivar sock: a connected stream socket; whoever receives it owns it.
    @ivar placeholder: whether it holds the unread placeholder byte of
        L{ssa.descriptors} (a socketpair of the Unix frontend): reads peek
        past it, a clean end takes it first, and closing with it unread is
        how a truncation reaches the application. Without one (a loopback
        TCP connection of the netlink frontend) reads are plain and a
        truncation is a reset.
    """

    sock: socket.socket
    placeholder: bool
