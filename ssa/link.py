"""
A link between two of the daemon's processes: one end of a
C{SOCK_SEQPACKET} socketpair carrying L{ssa.handoff} messages and the
descriptors that go with them, driven by the reactor.

Sending never blocks: packets wait in a queue until the socket takes them.
A descriptor given to L{Link.send} belongs to the link from then on; it is
closed once sent (the message in flight holds its own copy), or when the
link is lost before that.
"""

from __future__ import annotations

import array
import socket
from collections import deque
from collections.abc import Callable

from twisted.internet import main
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import handoff
from .handoff import LinkError, Message, Reassembler

log = Logger()

#: A generous send buffer: a fragment never waits for a smaller one.
SEND_BUFFER = 1 << 20
_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_RECV_SIZE = handoff.FRAGMENT + 64


@implementer(IReadWriteDescriptor)
class Link:
    """
    One end of a link.

    @ivar name: what logs call the other end (e.g. C{"worker 2"}).
    @ivar connected: whether the link still works.
    """

    def __init__(
        self, reactor, sock: socket.socket, name: str,
        on_message: Callable[[Message], None], on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.socket = sock
        self.name = name
        self.connected = True
        self._on_message = on_message
        self._on_lost = on_lost
        self._queue: deque[tuple[bytes, list[int]]] = deque()
        self._reassembler = Reassembler()
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass
        reactor.addReader(self)

    def send(self, message: Message) -> None:
        """
        Queue a message; its descriptors now belong to the link.
        """
        if not self.connected:
            log.warn("cannot send to {name}: the link is closed", name=self.name)  # noqa: G010
            handoff.close_all(message.fds)
            return
        packets = handoff.fragments(handoff.encode(message))
        self._queue.append((packets[0], list(message.fds)))
        self._queue.extend((packet, []) for packet in packets[1:])
        self.reactor.addWriter(self)

    def close(self) -> None:
        """
        Close the link; queued messages are dropped.
        """
        if self.connected:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
            self.connectionLost(Failure(main.CONNECTION_DONE))

    # IReadWriteDescriptor

    def fileno(self) -> int:
        """
        The socket's descriptor (-1 once closed).
        """
        return self.socket.fileno()

    def logPrefix(self) -> str:
        """
        For Twisted's logs.
        """
        return f"link to {self.name}"

    def doRead(self) -> object:
        """
        Take the packets that are ready, and act on each message they
        complete.
        """
        for _ in range(64):
            try:
                data, ancdata, flags, _ = self.socket.recvmsg(
                    _RECV_SIZE, socket.CMSG_SPACE(handoff.MAX_FDS * 4), _CMSG_CLOEXEC
                )
            except BlockingIOError:
                return None
            except OSError:
                return main.CONNECTION_LOST
            fds = _descriptors(ancdata)
            if not data and not fds:
                return main.CONNECTION_DONE
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                handoff.close_all(fds)
                self._reassembler.reset()
                log.error("dropped a truncated packet from {name}", name=self.name)
                continue
            try:
                message = self._reassembler.feed(data, fds)
            except LinkError as e:
                log.error("dropped a message from {name}: {error}", name=self.name, error=str(e))
                continue
            if message is not None:
                try:
                    self._on_message(message)
                except Exception:  # noqa: BLE001
                    log.failure("could not act on a message from {name}", name=self.name)
        return None

    def doWrite(self) -> object:
        """
        Send queued packets until the socket is full.
        """
        while self._queue:
            packet, fds = self._queue[0]
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                self.socket.sendmsg([packet], ancillary)
            except BlockingIOError:
                return None
            except OSError:
                return main.CONNECTION_LOST
            self._queue.popleft()
            handoff.close_all(fds)
        self.reactor.removeWriter(self)
        return None

    def connectionLost(self, reason: Failure) -> None:
        """
        The other end is gone (or L{close}): drop what was queued.
        """
        if not self.connected:
            return
        self.connected = False
        while self._queue:
            handoff.close_all(self._queue.popleft()[1])
        self._reassembler.reset()
        self.socket.close()
        self._on_lost()


def _descriptors(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)
