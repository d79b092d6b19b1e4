"""
The Unix frontend's plaintext streams (L{IPlaintextStream}): a socketpair
per socket, one end passed to the application with C{SCM_RIGHTS}, the
other kept by the daemon with its placeholder byte (L{ssa.descriptors}).

Signals, all on the descriptors the application holds: a nonblocking
connect fills the application's sending queue, so its descriptor becomes
writable when the connect ends; a failed connect shuts the pair down (the
application reads end-of-file); a listening socket's descriptor holds one
byte per connection ready for C{accept()}, so it polls readable.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from .. import descriptors
from ..errors import SSAError
from ..interfaces import IPlaintextStream
from ..plaintext import PLAINTEXT_BUFFER, PlaintextSocket


@implementer(IPlaintextStream)
class SocketpairStream:
    """
    One socket's socketpair.

    @ivar app_end: the daemon's copy of the application's descriptor.
    @ivar daemon_end: the daemon's end, until a bridge takes it (then
        L{None}).
    @ivar filler: bytes queued into C{app_end} to keep it unwritable during
        a nonblocking connect; discarded when the connect ends.
    """

    def __init__(self, app_end: int, daemon_end: int | None) -> None:
        """
        Take over two descriptors of a pair whose placeholder is queued
        (see L{make}).
        """
        self.app_end = app_end
        self.daemon_end = daemon_end
        self.filler = 0

    @classmethod
    def make(cls) -> SocketpairStream:
        """
        A new pair with its placeholder.

        @raise SSAError: ENOBUFS when the daemon cannot make one now.
        """
        try:
            app, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as e:
            raise SSAError(errno.ENOBUFS, f"the daemon cannot make a socket now: {e.strerror}") from None
        descriptors.hold_placeholder(app.fileno(), daemon.fileno())
        return cls(app.detach(), daemon.detach())

    def connecting(self, blocking: bool) -> None:
        """
        A nonblocking connect makes the application's end unwritable.
        """
        if not blocking:
            self.filler = descriptors.fill(self.app_end)

    def connected(self) -> Deferred:
        """
        Drop the filler and give the daemon's end to the bridge, at once.
        """
        daemon_end = self._take_daemon_end()
        descriptors.discard(daemon_end, self.filler)
        self.filler = 0
        for fd in (daemon_end, self.app_end):
            descriptors.set_send_buffer(fd, PLAINTEXT_BUFFER)
        return succeed(PlaintextSocket(socket.socket(fileno=daemon_end), placeholder=True))

    def connect_failed(self) -> None:
        """
        Drop the filler and end the pair: the application reads EOF (and
        its connect's error from the control connection or C{SO_ERROR}).
        """
        if self.daemon_end is None:
            return
        try:
            descriptors.discard(self.daemon_end, self.filler)
            descriptors.shut_down(self.daemon_end)
        except OSError:
            pass
        self.filler = 0

    def connection_ready(self) -> None:
        """
        One byte more for the application's end to read.
        """
        descriptors.send_byte(self.daemon_end)

    def connection_taken(self) -> None:
        """
        One byte less.
        """
        descriptors.take_byte(self.app_end)

    def close(self) -> None:
        """
        Close both descriptors the daemon still holds.
        """
        descriptors.close_quietly(self.daemon_end)
        descriptors.close_quietly(self.app_end)
        self.daemon_end = None
        self.app_end = -1

    def _take_daemon_end(self) -> int:
        if self.daemon_end is None:
            raise RuntimeError("the daemon's end of this socketpair was taken already")
        daemon_end, self.daemon_end = self.daemon_end, None
        return daemon_end
