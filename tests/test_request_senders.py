"""
Who sent each request, as the control protocol attributes the kernel's
per-read credentials to frames (pure logic: a stub transport whose handle
is a real Unix socket, so that the protocol can ask the kernel who opened
the connection; the reads and their credentials are fed by hand).
"""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from ssa import wire
from ssa.frontends.unix import ControlProtocol
from ssa.policy import Policy
from ssa.service import SocketService

ROOT = (os.getpid(), 0, 0)
NOBODY = (os.getpid() + 1, 65534, 65534)


class StubTransport:
    """
    What the protocol uses of a Unix transport.
    """

    def __init__(self) -> None:
        self.handle, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.written = b""
        self.fds: list[int] = []
        self.closed = False

    def getHandle(self) -> socket.socket:
        return self.handle

    def write(self, data: bytes) -> None:
        self.written += data

    def doWrite(self) -> None:
        pass

    def sendFileDescriptor(self, fd: int) -> None:
        self.fds.append(fd)

    def loseConnection(self) -> None:
        self.closed = True


class SenderTests(SynchronousTestCase):
    """
    SOCKET requests get the sender of their bytes, or are refused.
    """

    def setUp(self) -> None:
        self.service = SocketService(MemoryReactor(), backend=None, policies=Policy())
        self.addCleanup(self.service.close_all)
        self.protocol = ControlProtocol(self.service)
        self.transport = StubTransport()
        self.addCleanup(self.transport.handle.close)
        self.addCleanup(self.transport.peer.close)
        self.protocol.makeConnection(self.transport)

    def feed(self, sender: tuple[int, int, int] | None, data: bytes) -> None:
        self.protocol.credentials_received(sender)
        self.protocol.dataReceived(data)

    def replies(self) -> list[tuple[int, int]]:
        frames = wire.FrameDecoder().feed(self.transport.written)
        return [(frame.tag, wire.decode_reply_body(frame.body)[0]) for frame in frames]

    def socket_request(self, tag: int) -> bytes:
        return wire.encode_frame(wire.Op.SOCKET, tag, 0, wire.SOCKET_ARGS.pack(socket.AF_INET, socket.SOCK_STREAM, 205))

    def owners(self) -> list[int]:
        return [entry.sock.owner.uid for entry in self.service.entries.values()]

    def test_each_read_its_sender(self) -> None:
        """
        Two requests in two reads of two senders: each socket is owned by
        the process that asked for it.
        """
        self.feed(ROOT, self.socket_request(1))
        self.feed(NOBODY, self.socket_request(2))
        self.assertEqual(self.replies(), [(1, 0), (2, 0)])
        self.assertEqual(sorted(self.owners()), [0, 65534])

    def test_request_split_between_senders_is_refused(self) -> None:
        """
        One request whose bytes two processes wrote: trust neither.
        """
        request = self.socket_request(1)
        self.feed(NOBODY, request[:10])
        self.feed(ROOT, request[10:] + self.socket_request(2))
        self.assertEqual(self.replies(), [(1, errno.EACCES), (2, 0)])
        self.assertEqual(self.owners(), [0])

    def test_request_continued_by_its_sender(self) -> None:
        """
        A request in several reads of one sender is that sender's.
        """
        request = self.socket_request(1)
        for start in range(0, len(request), 7):
            self.feed(NOBODY, request[start : start + 7])
        self.assertEqual(self.replies(), [(1, 0)])
        self.assertEqual(self.owners(), [65534])

    def test_no_credentials_is_refused(self) -> None:
        """
        A read the kernel gave no credentials for creates nothing.
        """
        self.feed(None, self.socket_request(1))
        self.assertEqual(self.replies(), [(1, errno.EACCES)])
        self.assertEqual(self.owners(), [])
