"""
The client keeps the control connection of a closed socket for the
process's next socket (L{ssa._channels}); these tests use a real daemon.
"""

from __future__ import annotations

import os

from ssa import _channels, client
from ssa.testing.daemon import DaemonProcess
from ssa.testing.peers import StdlibTLSServer, echo_handler

from .helpers import DaemonTestCase
from .test_e2e_connect import recv_exactly

TLS = client.IPPROTO_TLS


class ChannelPoolTests(DaemonTestCase):
    """
    Reuse of control connections across sockets.
    """

    def connected_echo(self, server: StdlibTLSServer) -> client.SSASocket:
        sock = self.trusting_socket()
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"ping")
        self.assertEqual(recv_exactly(sock, 4), b"ping")
        return sock

    def test_next_socket_reuses_the_connection(self) -> None:
        """
        After close(), the next socket of the process runs on the same
        control connection, and both work end to end; the closed socket is
        gone from the daemon (its id is refused).
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            first = self.connected_echo(server)
            channel, first_id = first._channel, first.id
            first.close()
            second = self.connected_echo(server)
            self.assertIs(second._channel, channel)
            self.assertNotEqual(second.id, first_id)
            self.assertEqual(second.getsockopt(TLS, client.TLS_HOSTNAME, 64).rstrip(b"\0"), b"localhost")

    def test_closed_socket_sends_close_notify(self) -> None:
        """
        Closing a connected socket whose connection is kept still ends the
        TLS connection cleanly: the peer reads end of file.
        """
        received: list[bytes] = []

        def handler(conn) -> None:
            data = b""
            while chunk := conn.recv(100):
                data += chunk
            received.append(data)

        with StdlibTLSServer(self.server_key, handler) as server:
            sock = self.trusting_socket()
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"last words")
            sock.close()
            (conn,) = server.wait_for_connections(1)
        self.assertEqual(received, [b"last words"], conn)

    def test_forked_child_connects_afresh(self) -> None:
        """
        A child after fork() does not use its parent's kept connections
        (the daemon knows them as the parent's); the parent's still work.
        """
        first = self.tls_socket()
        channel = first._channel
        first.close()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report whether its socket reused the channel
            try:
                child = client.socket(path=self.daemon.socket_path)
                child.setsockopt(TLS, client.TLS_HOSTNAME, "child")
                os.write(write_end, b"reused" if child._channel is channel else b"fresh")
                child.close()
            finally:
                os._exit(0)
        os.close(write_end)
        answer = os.read(read_end, 10)
        os.close(read_end)
        os.waitpid(pid, 0)
        self.assertEqual(answer, b"fresh")
        again = self.tls_socket()
        self.assertIs(again._channel, channel)
        again.setsockopt(TLS, client.TLS_HOSTNAME, "parent")

    def test_restarted_daemon(self) -> None:
        """
        A kept connection to a daemon that has since restarted is dropped
        and socket() connects to the new daemon.
        """
        first = self.tls_socket()
        first.close()
        path = self.daemon.socket_path
        self.daemon.stop()
        self.daemon = DaemonProcess(["--backend", self.backend])
        self.daemon.socket_path = path
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        sock = self.tls_socket()
        sock.setsockopt(TLS, client.TLS_HOSTNAME, "localhost")
        self.assertEqual(sock.getsockopt(TLS, client.TLS_HOSTNAME, 64).rstrip(b"\0"), b"localhost")

    def test_pool_is_bounded(self) -> None:
        """
        At most POOL_SIZE connections are kept per daemon; close_idle()
        closes them.
        """
        socks = [self.tls_socket() for _ in range(_channels.POOL_SIZE + 3)]
        for sock in socks:
            sock.close()
        key = _channels._key(self.daemon.socket_path)
        self.assertEqual(len(_channels._idle[key]), _channels.POOL_SIZE)
        _channels.close_idle(self.daemon.socket_path)
        self.assertNotIn(key, _channels._idle)
