"""
Taking a connected socket from a Twisted transport (L{ssa.twisted_internals}) and
the bridge's send helper: pure logic on real sockets, no reactor running.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from ssa.bridge import _send_after
from ssa.twisted_internals import TakeoverError, close_without_shutdown, take_socket


class _Transport(FileDescriptor):
    """
    A minimal transport over a real socket, as Twisted's TCP ones are.
    """

    def __init__(self, reactor, sock: socket.socket) -> None:
        super().__init__(reactor)
        self.socket = sock
        self.connected = 1

    def getHandle(self) -> socket.socket:
        return self.socket

    def fileno(self) -> int:
        return self.socket.fileno()

    def writeSomeData(self, data) -> int:
        return 0  # the kernel buffer is "full": everything stays queued


class TakeSocketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.ours, self.theirs = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        self.transport = _Transport(self.reactor, self.ours)

    def test_takes_socket_and_unsent_bytes(self) -> None:
        """
        The socket comes back with everything the transport had queued, in
        order; the transport no longer names the descriptor or touches the
        reactor.
        """
        self.transport.startReading()
        self.transport.write(b"finished")
        self.transport.write(b"+ticket")
        sock, unsent = take_socket(self.transport)
        self.assertIs(sock, self.ours)
        self.assertEqual(unsent, b"finished+ticket")
        self.assertEqual(self.transport.fileno(), -1)
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertEqual(self.reactor.getWriters(), [])
        self.transport.startWriting()  # a late call is inert
        self.transport.loseConnection()
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertNotEqual(sock.fileno(), -1, "the socket stays open for its new owner")

    def test_closing_connection_is_refused(self) -> None:
        """
        A connection that is already closing (or lost) cannot be taken: the
        caller fails the accept or connect instead of bridging a dead
        connection.
        """
        self.transport.disconnecting = True
        self.assertRaises(TakeoverError, take_socket, self.transport)
        self.transport.disconnecting = False
        self.transport.connected = 0
        self.assertRaises(TakeoverError, take_socket, self.transport)


class SendAfterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)
        self.a.setblocking(False)

    def test_sent_at_once(self) -> None:
        self.assertEqual(bytes(_send_after(self.a, memoryview(b""), b"abc")), b"")
        self.assertEqual(self.b.recv(10), b"abc")

    def test_pending_bytes_go_first(self) -> None:
        """
        With bytes pending nothing is sent now: the new data queues behind.
        """
        left = _send_after(self.a, memoryview(b"old"), b"new")
        self.assertEqual(bytes(left), b"oldnew")
        self.b.setblocking(False)
        self.assertRaises(BlockingIOError, self.b.recv, 10)

    def test_full_buffer_keeps_the_rest(self) -> None:
        big = b"x" * (8 << 20)
        left = _send_after(self.a, memoryview(b""), big)
        self.assertTrue(0 < len(left) < len(big))
        self.assertEqual(bytes(left), big[len(big) - len(left):])

    def test_dead_peer_raises(self) -> None:
        self.b.close()
        self.assertRaises(OSError, _send_after, self.a, memoryview(b""), b"abc")


class CloseWithoutShutdownTests(SynchronousTestCase):
    """
    L{close_without_shutdown} relies on Twisted's C{Connection} calling
    C{shutdown()} in an orderly close only while C{_shouldShutdown} is
    true: a duplicate of the descriptor goes on working.
    """

    def test_duplicate_keeps_the_connection(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Protocol

        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        kept = socket.socket(fileno=os.dup(ours.fileno()))
        self.addCleanup(kept.close)
        ours.setblocking(False)
        transport = reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, Factory.forProtocol(Protocol))
        ours.close()
        self.assertTrue(hasattr(transport, "_shouldShutdown"), "Twisted's transport has _shouldShutdown")
        close_without_shutdown(transport)
        self.assertFalse(transport._shouldShutdown)
        transport.connectionLost(Failure(ConnectionDone()))  # what the reactor does next
        kept.sendall(b"still here")
        self.assertEqual(theirs.recv(20), b"still here")
        theirs.sendall(b"and back")
        self.assertEqual(kept.recv(20), b"and back")
