"""
Options at other levels than C{IPPROTO_TLS} (SPEC section 4): those that
make sense on the daemon's network socket are stored on the SSA socket and
applied to the TCP connection; the rest fail with ENOPROTOOPT.
"""

from __future__ import annotations

import errno
import socket

from .errors import SSAError

NAMES: dict[tuple[int, int], str] = {
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): "SO_KEEPALIVE",
    (socket.SOL_SOCKET, socket.SO_RCVBUF): "SO_RCVBUF",
    (socket.SOL_SOCKET, socket.SO_SNDBUF): "SO_SNDBUF",
    (socket.IPPROTO_TCP, socket.TCP_NODELAY): "TCP_NODELAY",
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): "TCP_KEEPIDLE",
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): "TCP_KEEPINTVL",
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): "TCP_KEEPCNT",
}


def check(level: int, name: int, value: int) -> None:
    """
    Whether C{(level, name)} applies to the network socket, with a value
    the kernel would take.

    @raise SSAError: ENOPROTOOPT for an option that does not apply, EINVAL
        for a negative value.
    """
    if (level, name) not in NAMES:
        raise SSAError(
            errno.ENOPROTOOPT,
            f"option {name} at level {level} does not apply to an SSA socket's network side",
        )
    if value < 0:
        raise SSAError(errno.EINVAL, f"{NAMES[level, name]}: {value} is negative")


def apply(network: socket.socket, options: dict[tuple[int, int], int]) -> None:
    """
    Set C{options} on a live network socket.
    """
    for (level, name), value in options.items():
        network.setsockopt(level, name, value)
