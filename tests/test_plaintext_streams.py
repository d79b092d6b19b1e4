"""
The seam between the daemon core and a frontend's plaintext streams
(L{ssa.interfaces.IPlaintextStream}): a stream that exists only after the
application was told its connect succeeded, as the netlink frontend's
loopback TCP connections do. Real TLS to a real server, real sockets; the
core in this process.
"""

from __future__ import annotations

import errno
import socket
import ssl

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ssa import edge
from ssa.backend_choice import load_backend
from ssa.constants import IPPROTO_TLS, TLS_HOSTNAME, SocketState
from ssa.frontends.socketpair import SocketpairStream
from ssa.interfaces import IPlaintextStream
from ssa.peer import PeerIdentity
from ssa.plaintext import PlaintextSocket
from ssa.policy import Policy
from ssa.service import SocketService
from ssa.testing.certs import CertificateAuthority
from ssa.testing.tls_server import StdlibTLSServer, echo_handler, pseudo_random_bytes, truncating_handler


def read_to_end(app: socket.socket) -> tuple[bytes, int | None]:
    """
    Read C{app} to its end and close it.

    @return: what arrived, and the errno that ended it (L{None}: a clean
        end-of-file).
    """
    app.settimeout(30)
    received = bytearray()
    try:
        while chunk := app.recv(65536):
            received += chunk
    except OSError as e:
        return bytes(received), e.errno
    finally:
        app.close()
    return bytes(received), None


@implementer(IPlaintextStream)
class LateTCPStream:
    """
    A plaintext stream over loopback TCP that the test makes when it
    chooses, after the core asked for it.

    @ivar app: the application's end, once made.
    """

    def __init__(self) -> None:
        self.asked: Deferred = Deferred()   # fires when the core asks
        self._stream: Deferred | None = None
        self.app: socket.socket | None = None
        self.events: list[str] = []

    def connecting(self, blocking: bool) -> None:
        self.events.append("connecting")

    def connected(self) -> Deferred:
        self.events.append("connected")
        self._stream = Deferred()
        self.asked.callback(None)
        return self._stream

    def arrive(self) -> socket.socket:
        """
        Make the loopback connection and hand the core its end.
        """
        assert self._stream is not None
        with socket.create_server(("127.0.0.1", 0)) as server:
            self.app = socket.create_connection(server.getsockname())
            daemon, _ = server.accept()
        self._stream.callback(PlaintextSocket(daemon, placeholder=False))
        return self.app

    def never(self) -> None:
        assert self._stream is not None
        self._stream.errback(ConnectionRefusedError("the application's side never connected"))

    def connect_failed(self) -> None:
        self.events.append("connect_failed")

    def connection_ready(self) -> None:
        self.events.append("connection_ready")

    def connection_taken(self) -> None:
        self.events.append("connection_taken")

    def close(self) -> None:
        self.events.append("close")


class LateStreamTests(TestCase):
    """
    A stream that comes after the connect's success: the TLS connection
    waits (paused) for it, then the bytes flow as over a socketpair; a
    truncation reaches the application as a reset; a stream that never
    comes resets the TLS connection.
    """

    def setUp(self) -> None:
        ca = CertificateAuthority.create("Seam CA")
        self.server_key = ca.issue_server("localhost")
        self.service = SocketService(reactor, load_backend("openssl"), Policy(trust_anchors=ca.root_pem()))
        self.addCleanup(edge.release, reactor)
        self.addCleanup(self.service.close_all)

    def start_server(self, handler) -> StdlibTLSServer:
        server = StdlibTLSServer(self.server_key, handler).start()
        self.addCleanup(server.stop)
        return server

    def connect(self, server: StdlibTLSServer, stream: IPlaintextStream) -> tuple[int, Deferred]:
        owner = PeerIdentity(1, 1000, 1000)
        sock = self.service.open_socket(owner, socket.AF_INET, socket.SOCK_STREAM, 0, stream)
        self.service.setsockopt(sock.id, IPPROTO_TLS, TLS_HOSTNAME, b"localhost\0")
        return sock.id, self.service.connect(sock.id, (socket.AF_INET, *server.address), True)

    @inlineCallbacks
    def test_stream_after_success(self):
        """
        connect() succeeds before the stream exists; what the server sent
        meanwhile waits, then arrives, and an echo of 200 KiB comes back
        whole; the application's half-close ends the TLS stream cleanly.
        """
        verifyObject(IPlaintextStream, LateTCPStream())
        server = self.start_server(echo_handler)
        stream = LateTCPStream()
        socket_id, done = self.connect(server, stream)
        yield stream.asked
        yield done
        self.assertEqual(self.service.lookup(socket_id).state, SocketState.CONNECTED)
        self.assertIsNone(self.service.entry(socket_id).bridge, "no bridge before the stream")
        app = stream.arrive()
        payload = pseudo_random_bytes(200_000, "seam")

        def exchange() -> tuple[bytes, int | None]:
            app.settimeout(30)
            app.sendall(payload)
            app.shutdown(socket.SHUT_WR)
            return read_to_end(app)

        echoed = yield deferToThread(exchange)
        self.assertEqual(echoed, (payload, None))
        self.assertEqual(stream.events, ["connecting", "connected"])

    @inlineCallbacks
    def test_banner_with_the_handshake(self):
        """
        A TLS 1.2 server's banner, sent right behind its Finished (often in
        the read that completes the handshake), reaches a stream that
        comes later, then the server's clean end.
        """

        def banner(conn) -> None:
            conn.sendall(b"220 hello\r\n")
            conn.close()

        server = StdlibTLSServer(self.server_key, banner, maximum_version=ssl.TLSVersion.TLSv1_2).start()
        self.addCleanup(server.stop)
        stream = LateTCPStream()
        _, done = self.connect(server, stream)
        yield done
        yield deferToThread(server.wait_for_connections, 1)  # the banner and close_notify were sent
        app = stream.arrive()

        received = yield deferToThread(read_to_end, app)
        self.assertEqual(received, (b"220 hello\r\n", None))

    @inlineCallbacks
    def test_truncation_is_a_reset(self):
        """
        The server cuts TCP without close_notify: the application reads
        what was sent, then ECONNRESET (a reset: there is no placeholder).
        """
        server = self.start_server(truncating_handler(50_000, "cut"))
        stream = LateTCPStream()
        _, done = self.connect(server, stream)
        yield done
        app = stream.arrive()

        received, err = yield deferToThread(read_to_end, app)
        self.assertEqual(received, pseudo_random_bytes(50_000, "cut"))
        self.assertEqual(err, errno.ECONNRESET)

    @inlineCallbacks
    def test_stream_that_never_comes(self):
        """
        The application's side never connects: the TLS connection is reset
        (the server sees no close_notify) and the socket is disconnected.
        """
        server = self.start_server(echo_handler)
        stream = LateTCPStream()
        socket_id, done = self.connect(server, stream)
        yield done
        stream.never()
        (peer,) = yield deferToThread(server.wait_for_connections, 1)
        cut = peer.handshake_error or peer.handler_error  # its read of our Finished may come after the cut
        self.assertIsNotNone(cut, "the server saw the connection cut, not closed")
        self.assertFalse(peer.close_notify_received)
        self.assertNotEqual(self.service.lookup(socket_id).state, SocketState.CONNECTED)

    @inlineCallbacks
    def test_closed_while_waiting(self):
        """
        The application closes before its stream came: the TLS connection
        goes, and a stream arriving later is closed, not bridged.
        """
        server = self.start_server(echo_handler)
        stream = LateTCPStream()
        socket_id, done = self.connect(server, stream)
        yield done
        self.service.close(socket_id)
        app = stream.arrive()
        app.settimeout(30)
        data = yield deferToThread(app.recv, 10)
        self.assertEqual(data, b"")
        app.close()
        self.assertIn("close", stream.events)


class SocketpairStreamTests(TestCase):
    """
    The Unix frontend's stream frees its descriptors whatever happens.
    """

    def test_close_is_idempotent(self):
        stream = SocketpairStream.make()
        stream.close()
        stream.close()
        self.assertEqual((stream.app_end, stream.daemon_end), (-1, None))
