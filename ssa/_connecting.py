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
import threading
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


#: Errnos of a failed C{accept} after which the listener is of no more use:
#: the daemon is gone (its control socket missing, refusing or lost) or
#: the listener is no more.
LISTENER_GONE = frozenset(
    {errno.ENOENT, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EBADF, errno.EINVAL, errno.EPIPE}
)
#: Seconds to wait before accepting again after another failure (e.g.
#: EMFILE), so that a failing accept never spins.
ACCEPT_BACKOFF = 0.1


class Handover:
    """
    Hands a socket made in a thread to a waiter on the loop that may have
    given up meanwhile (cancelled): then the socket is closed, never lost.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._given_up = False
        self._sock: SSASocket | None = None

    def run(self, make: Callable[..., SSASocket], *args: Any) -> SSASocket:
        """
        In the thread: C{make(*args)}, kept for the waiter.
        """
        sock = make(*args)
        with self._lock:
            if not self._given_up:
                self._sock = sock
                return sock
        sock.close()
        raise OSError(errno.ECANCELED, "nobody waits for this SSA socket any more")

    def give_up(self) -> None:
        """
        On the loop, when the waiter stops waiting: close the socket if it
        was made already, or as soon as it is.
        """
        with self._lock:
            self._given_up = True
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


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
        handover = Handover()
        try:
            sock = await blocking(handover.run, start_connect, family, ip, port, options)
        except BaseException:
            handover.give_up()
            raise
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
