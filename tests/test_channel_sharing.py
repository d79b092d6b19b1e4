"""
A control connection never serves two sockets' outstanding calls at once
(issue 17, item 2): the client keeps closed sockets' connections for the
next socket (L{ssa._channels}), so a C{close()} racing a call blocked in
another thread must not hand that call's connection to a new socket.
Each test closes a socket under a blocked call, makes a new socket at
once, and checks that the new socket works end to end and the blocked
call ends with an error, not with another socket's answer.
"""

from __future__ import annotations

import errno
import socket
from concurrent.futures import Future, ThreadPoolExecutor

from ssa import client
from ssa._control import ControlChannel
from ssa.testing.peers import StdlibTLSServer, echo_handler

from .helpers import DaemonTestCase
from .test_e2e_connect import recv_exactly

TLS = client.IPPROTO_TLS


class ChannelSharingTests(DaemonTestCase):
    """
    close() racing every blocking call.
    """

    def setUp(self) -> None:
        super().setUp()
        self.pool = ThreadPoolExecutor(4)
        self.addCleanup(self.pool.shutdown, wait=True)
        self.echo = StdlibTLSServer(self.server_key, echo_handler).start()
        self.addCleanup(self.echo.stop)

    def assertNewSocketWorks(self, busy: ControlChannel | None = None) -> None:
        """
        A socket made now works end to end, on a connection that is not
        C{busy}, the one a blocked call was using.
        """
        sock = self.trusting_socket()
        self.assertIsNot(sock._channel, busy)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", self.echo.port))
        sock.sendall(b"ping")
        self.assertEqual(recv_exactly(sock, 4), b"ping")
        self.assertEqual(sock.getsockopt(TLS, client.TLS_ID, 8), sock.id.to_bytes(8, "little"))
        sock.close()

    def assertEndsInError(self, call: Future, *errnos: int) -> None:
        error = call.exception(timeout=30)
        self.assertIsInstance(error, OSError)
        self.assertIn(error.errno, errnos, str(error))

    def test_listener_closed_under_blocked_accept(self) -> None:
        """
        A thread blocked in accept() fails when another thread closes the
        listener; a socket made at once (on the listener's kept connection)
        works.
        """
        for _ in range(10):
            listener = self.listener(backlog=4)
            accepting = self.pool.submit(listener.accept)
            listener.close()
            self.assertNewSocketWorks()
            self.assertEndsInError(accepting, errno.EBADF, errno.ECONNABORTED)

    def test_close_under_blocked_connect(self) -> None:
        """
        A thread blocked in connect() (the server never answers the
        handshake) fails when another thread closes the socket; the
        connection it was using is not kept.
        """
        stalled = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(stalled.close)
        sock = self.trusting_socket()
        connecting = self.pool.submit(sock.connect, ("127.0.0.1", stalled.getsockname()[1]))
        stalled.settimeout(30)
        held, _ = stalled.accept()  # the daemon's TCP connect: connect() is under way
        self.addCleanup(held.close)
        sock.close()
        self.assertEndsInError(connecting, errno.ECONNABORTED, errno.EBADF)
        self.assertTrue(sock._channel.closed)
        self.assertNewSocketWorks(sock._channel)

    def test_close_under_blocked_recv(self) -> None:
        """
        A thread blocked in recv() wakes when another thread closes the
        socket.
        """
        sock = self.trusting_socket()
        sock.connect(("127.0.0.1", self.echo.port))
        receiving = self.pool.submit(sock.recv, 100)
        sock.close()
        try:
            self.assertEqual(receiving.result(timeout=30), b"")
        except OSError:
            pass  # the descriptor was closed under it: as for a kernel socket
        self.assertNewSocketWorks()

    def test_close_under_quick_calls(self) -> None:
        """
        Calls in a loop on one thread while another closes the socket: each
        gets its own socket's answer or EBADF, never another socket's.
        """
        sock = self.trusting_socket()
        sock.connect(("127.0.0.1", self.echo.port))
        mine = sock.id.to_bytes(8, "little")

        def ask() -> int:
            answers = 0
            while True:
                try:
                    value = sock.getsockopt(TLS, client.TLS_ID, 8)
                except OSError as e:
                    if e.errno not in (errno.EBADF, errno.ECONNABORTED):
                        raise
                    return answers
                if value != mine:
                    raise AssertionError(f"another socket's id: {value!r}")
                answers += 1

        asking = self.pool.submit(ask)
        sock.close()
        others = [self.trusting_socket() for _ in range(4)]
        self.assertGreaterEqual(asking.result(timeout=30), 0)
        for other in others:
            self.assertEqual(other.getsockopt(TLS, client.TLS_ID, 8), other.id.to_bytes(8, "little"))
        self.assertNewSocketWorks()
