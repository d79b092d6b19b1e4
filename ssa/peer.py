"""
Who is on the other end of a control connection.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

_UCRED = struct.Struct("3i")

#: C{(pid, uid, gid)} as the kernel reports them.
Credentials = tuple[int, int, int]


@dataclass(frozen=True)
class PeerIdentity:
    """
    An application as the kernel vouches for it (C{SO_PEERCRED}).

    @ivar pid: its process id.
    @ivar uid: its user id.
    @ivar gid: its group id.
    @ivar executable: the path of its program (C{/proc/PID/exe}), or
        L{None} when it cannot be read.
    """

    pid: int
    uid: int
    gid: int
    executable: str | None = None

    def describe(self) -> str:
        """
        One phrase for logs: C{pid 123 uid 1000 /usr/bin/curl}.
        """
        exe = self.executable or "?"
        return f"pid {self.pid} uid {self.uid} {exe}"


def peer_identity(sock: socket.socket) -> PeerIdentity:
    """
    Ask the kernel who the peer of a connected Unix socket is.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return identity_of(*_UCRED.unpack(raw))


def identity_of(pid: int, uid: int, gid: int) -> PeerIdentity:
    """
    The identity of the process with these kernel-verified credentials,
    with the program it runs now.
    """
    try:
        executable: str | None = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        executable = None
    return PeerIdentity(pid, uid, gid, executable)
