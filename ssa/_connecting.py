"""
The blocking halves of a nonblocking connect, shared by L{ssa.aio} and
L{ssa.endpoints}: each is a short control round trip to the daemon, run
off the event loop; the wait between them is the loop's (the plaintext
descriptor turns writable when the connect is done).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from ssa import client
from ssa.client import SSASocket


def start_connect(family: int, ip: str, port: int, options: dict[str, Any]) -> SSASocket:
    """
    A new nonblocking socket with C{options} (L{client.tls_socket}'s),
    its connect to C{(ip, port)} started.
    """
    sock = client.tls_socket(family, nonblocking=True, **options)
    try:
        sock.connect((ip, port))
    except BlockingIOError:
        pass
    except BaseException:
        sock.close()
        raise
    return sock


def connect_outcome(sock: SSASocket) -> None:
    """
    Raise the failure of a finished nonblocking connect, with the daemon's
    reason (C{TLS_ERROR}); the socket is closed then.
    """
    try:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, sock.get_error() or os.strerror(code))
    except BaseException:
        sock.close()
        raise


async def connect_first(
    host: str,
    port: int,
    options: dict[str, Any],
    blocking: Callable[..., Awaitable[Any]],
    writable: Callable[[int], Awaitable[None]],
) -> SSASocket:
    """
    Connect to the first address of C{host} that can be reached, as
    L{client.create_connection} does, for any event loop: C{blocking(f,
    *args)} runs C{f} off the loop, C{writable(fd)} waits for C{fd} to turn
    writable (asyncio futures, or Deferreds in C{Deferred.fromCoroutine}).

    @param options: L{client.tls_socket}'s, with C{hostname} by default
        the host unless it is an IP literal (L{client.verified_name}).
    @raise OSError: as L{client.create_connection}.
    """
    options = dict(options, hostname=client.verified_name(host, options.get("hostname")))
    addresses = await blocking(client.resolve, host, port)
    errors: list[OSError] = []
    for family, ip in addresses:
        sock = await blocking(start_connect, family, ip, port, options)
        try:
            await writable(sock.fileno())
            await blocking(connect_outcome, sock)
        except BaseException as e:
            sock.close()
            if not (isinstance(e, OSError) and e.errno in client.RETRY_ERRNOS):
                raise
            errors.append(e)
            continue
        return sock
    if not errors:
        raise OSError(errno.EADDRNOTAVAIL, f"getaddrinfo returned no address for {host!r}")
    raise errors[0]
