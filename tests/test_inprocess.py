"""
The daemon's core on the test's own reactor, for failures that cannot be
provoked from outside: an internal error must reach the application as
ECANCELED, be logged, and leave the daemon serving.
"""

from __future__ import annotations

import errno
import socket
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ssa import _channels, client
from ssa.frontends.socketpair import SocketpairStream
from ssa.frontends.unix import ControlFactory
from ssa.twisted_internals import listen_with_credentials
from ssa.interfaces import ISocketAPI, ITLSBackend
from ssa.policy import Policy
from ssa.service import SocketService


class BackendBug(Exception):
    """
    A bug inside a backend.
    """


@implementer(ITLSBackend)
class BrokenBackend:
    """
    A backend that fails inside, as a buggy one would.
    """

    name = "broken"
    description = "raises on every connection"

    def client_engine(self, config, server_hostname, **options):
        """
        Fail.
        """
        raise BackendBug("boom")


class InternalFailureTests(TestCase):
    """
    ECANCELED for internal failures.
    """

    @inlineCallbacks
    def test_internal_error_is_ecanceled(self):
        """
        A backend bug fails connect() with ECANCELED and a reason pointing
        to the log; the traceback is logged; the daemon keeps serving.
        """
        path = tempfile.mkdtemp() + "/ssa.sock"
        service = SocketService(reactor, BrokenBackend(), Policy())
        verifyObject(ISocketAPI, service)
        port = listen_with_credentials(reactor, path, ControlFactory(service))
        self.addCleanup(port.stopListening)
        self.addCleanup(_channels.close_idle, path)
        tcp = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(tcp.stopListening)

        def application() -> tuple[int, str | None, int]:
            with client.socket(socket.AF_INET, socket.SOCK_STREAM, client.IPPROTO_TLS, path=path) as sock:
                sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "localhost")
                err = sock.connect_ex(("127.0.0.1", tcp.getHost().port))
                reason = sock.get_error()
            with client.socket(socket.AF_INET, socket.SOCK_STREAM, client.IPPROTO_TLS, path=path) as other:
                later = other.getsockopt(client.IPPROTO_TLS, client.TLS_VERSION_MIN)
            return err, reason, later

        err, reason, later = yield deferToThread(application)
        self.assertEqual(err, errno.ECANCELED)
        self.assertIn("log", reason)
        self.assertEqual(later, client.TLS_1_2)
        self.assertEqual(len(self.flushLoggedErrors(BackendBug)), 1)
        for _ in range(100):
            if not service.entries:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(service.entries, {})


class LimitTests(SynchronousTestCase):
    """
    The per-process socket limit.
    """

    def test_max_sockets_per_client(self) -> None:
        """
        Past the policy's max-sockets-per-client a process gets EMFILE; other
        processes are unaffected; closing frees a place.
        """
        from twisted.internet.testing import MemoryReactor

        from ssa.errors import SSAError
        from ssa.peer import PeerIdentity

        service = SocketService(MemoryReactor(), BrokenBackend(), Policy(max_sockets_per_client=2))
        greedy, other = PeerIdentity(10, 1000, 1000), PeerIdentity(11, 1000, 1000)

        def open_socket(owner: PeerIdentity):
            return service.open_socket(owner, socket.AF_INET, socket.SOCK_STREAM, 0, SocketpairStream.make())

        first = open_socket(greedy)
        open_socket(greedy)
        refused = SocketpairStream.make()
        failure = self.assertRaises(
            SSAError, service.open_socket, greedy, socket.AF_INET, socket.SOCK_STREAM, 0, refused
        )
        self.assertEqual(failure.errno, errno.EMFILE)
        self.assertIn("max-sockets-per-client", failure.reason)
        self.assertEqual((refused.app_end, refused.daemon_end), (-1, None), "a refused socket's stream is closed")
        open_socket(other)
        service.close(first.id)
        open_socket(greedy)
        service.close_all()
        self.assertEqual(service.entries, {})


class InterfaceTests(SynchronousTestCase):
    """
    The objects that listen to TLS streams provide the interface.
    """

    def test_stream_listeners(self) -> None:
        """
        The connector waits for handshakes (L{ITLSHandshakeListener}); the
        listener's pending connections also read what follows them
        (L{ITLSStreamListener}).
        """
        from twisted.internet.testing import MemoryReactor

        from ssa.connector import ConnectAttempt
        from ssa.interfaces import ITLSHandshakeListener, ITLSStreamListener
        from ssa.listener import Listener, PendingConnection
        from ssa.sockets import ConnectPlan
        from ssa.tlsconfig import ClientTLSConfig, ServerTLSConfig

        reactor = MemoryReactor()
        plan = ConnectPlan("127.0.0.1", 443, "localhost", "localhost", ClientTLSConfig())
        attempt = ConnectAttempt(reactor, BrokenBackend(), plan, 1, 1, lambda *a: None, lambda *a: None)
        listener = Listener(reactor, BrokenBackend(), ServerTLSConfig(()), 1, 1, lambda: None, lambda: None)
        verifyObject(ITLSHandshakeListener, attempt)
        verifyObject(ITLSStreamListener, PendingConnection(listener, ("127.0.0.1", 1)))
