"""
End to end: the Twisted C{ssa:} endpoints against a real daemon and real
TLS peers, in trial's reactor and in C{twist web} (issue 13).
"""

from __future__ import annotations

import errno
import os
import ssl
import subprocess
import sys
import time
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from ssa import _channels
from ssa.client import SSASocket
from ssa.endpoints import SSAClientEndpoint, SSAServerEndpoint
from ssa.testing.certs import CertificateAuthority
from ssa.testing.daemon import SOURCE_ROOT
from ssa.testing.peers import (
    StdlibTLSServer,
    echo_handler,
    free_port,
    pseudo_random_bytes,
)
from ssa.testing.tls_connection import TLSPeerConnection

from .helpers import DaemonTestCase, digest
from .test_e2e_aio import MAX_LOOP_STALL, GatedTLSServer, wait_for


@implementer(IHalfCloseableProtocol)
class SendAndCollect(Protocol):
    """
    Sends its data, half-closes, collects what comes back until the end.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: object) -> None:
        self.done.callback(b"".join(self.received))


@implementer(IHalfCloseableProtocol)
class DigestEcho(Protocol):
    """
    Reads until the peer's end, answers with the digest of what it read
    and the TLS peer's address family, and closes.
    """

    def connectionMade(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        peer = self.transport.getPeer()
        self.transport.write(f"{peer.type} {peer.host} ".encode() + digest(b"".join(self.received)).encode())
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class EndpointTests(DaemonTestCase, TestCase):
    """
    C{ssa:} client and server endpoint strings.
    """

    def setUp(self) -> None:
        DaemonTestCase.setUp(self)
        self.ca_file = self.ca.write_root(self.tmp)
        self.files = self.server_key.write(self.tmp, "server")

    def client_string(self, port: int, cafile: str | os.PathLike[str] | None = None) -> str:
        return f"ssa:host=localhost:port={port}:cafile={cafile or self.ca_file}:socket={self.daemon.socket_path}"

    @inlineCallbacks
    def test_client_endpoint_echoes(self):
        """
        C{clientFromString("ssa:host=...:port=...")}: 10 connections at
        once to a real TLS echo server, each echo checksummed; the peer
        address is the TLS peer's.
        """
        server = StdlibTLSServer(self.server_key, echo_handler).start()
        self.addCleanup(server.stop)
        endpoint = clientFromString(reactor, self.client_string(server.port))
        self.assertIsInstance(endpoint, SSAClientEndpoint)
        protocols = []

        def one(i: int) -> Deferred[bytes]:
            protocol = SendAndCollect(pseudo_random_bytes(200_000, seed=i))
            protocols.append(protocol)
            return endpoint.connect(Factory.forProtocol(lambda: protocol)).addCallback(lambda p: p.done)

        echoes = yield gatherResults([one(i) for i in range(10)])
        for protocol, echoed in zip(protocols, echoes):
            self.assertEqual(digest(echoed), digest(protocol.data))
        peer = protocols[0].transport.getPeer()
        self.assertEqual((peer.type, peer.port), ("TCP", server.port))
        self.assertIsInstance(protocols[0].transport.ssa_socket, SSASocket)

    @inlineCallbacks
    def test_reactor_never_stalls_during_20_connects(self):
        """
        20 connects in flight together (the server holds every handshake
        until all 20 have reached it) never stall the reactor for more
        than L{MAX_LOOP_STALL}, measured by a 1 ms looping call.
        """
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.files.cert, self.files.key)
        lags: list[float] = []
        last = [reactor.seconds()]

        def probe() -> None:
            now = reactor.seconds()
            lags.append(now - last[0] - 0.001)
            last[0] = now

        with GatedTLSServer(context, gate=20) as server:
            endpoint = clientFromString(reactor, self.client_string(server.port))
            ticker = LoopingCall(probe)
            ticker.clock = reactor
            ticker.start(0.001, now=True)
            try:
                protocols = [SendAndCollect(b"n%d" % i) for i in range(20)]
                connects = [endpoint.connect(Factory.forProtocol(lambda p=p: p)) for p in protocols]
                yield gatherResults(connects)
                echoes = yield gatherResults([p.done for p in protocols])
            finally:
                ticker.stop()
        self.assertEqual(echoes, [b"n%d" % i for i in range(20)])
        print(f"\n20 concurrent Twisted connects: {len(lags)} probes, worst reactor stall {max(lags) * 1000:.1f} ms")
        self.assertLess(max(lags), MAX_LOOP_STALL)

    @inlineCallbacks
    def test_client_endpoint_verification_failure(self):
        """
        An untrusted certificate fails the connect with EPROTO; the
        factory builds nothing.
        """
        other = CertificateAuthority.create().write_root(self.tmp, "other")
        server = StdlibTLSServer(self.server_key, echo_handler).start()
        self.addCleanup(server.stop)
        built = []
        factory = Factory.forProtocol(lambda: built.append(1) or Protocol())
        endpoint = clientFromString(reactor, self.client_string(server.port, other))
        failure = yield self.assertFailure(endpoint.connect(factory), OSError)
        self.assertEqual(failure.errno, errno.EPROTO, str(failure))
        self.assertEqual(built, [])

    @inlineCallbacks
    def test_server_endpoint_serves_stdlib_clients(self):
        """
        C{serverFromString("ssa:0:certKey=...:privateKey=...")}: 10 stdlib
        TLS clients at once, each answered by the protocol; after
        C{stopListening} nobody is accepted.
        """
        description = (
            f"ssa:0:interface=127.0.0.1:certKey={self.files.cert}:privateKey={self.files.key}"
            f":socket={self.daemon.socket_path}"
        )
        endpoint = serverFromString(reactor, description)
        self.assertIsInstance(endpoint, SSAServerEndpoint)
        port = yield endpoint.listen(Factory.forProtocol(DigestEcho))
        self.addCleanup(port.stopListening)
        address = port.getHost()
        self.assertEqual(address.host, "127.0.0.1")
        context = ssl.create_default_context(cafile=str(self.ca_file))

        def talk(i: int) -> bytes:
            tls = TLSPeerConnection.client(("127.0.0.1", address.port), context, "localhost", timeout=60)
            try:
                tls.sendall(pseudo_random_bytes(50_000, seed=i))
                tls.send_close_notify()
                return tls.recv_until_eof()
            finally:
                tls.close()

        replies = yield gatherResults([deferToThread(talk, i) for i in range(10)])
        for i, reply in enumerate(replies):
            self.assertEqual(reply, b"TCP 127.0.0.1 " + digest(pseudo_random_bytes(50_000, seed=i)).encode())
        yield port.stopListening()
        yield self.assertFailure(deferToThread(talk, 99), OSError)

    @inlineCallbacks
    def test_server_endpoint_requires_client_certificates(self):
        """
        C{requireClientCertificate=yes} with C{cafile}: a client without a
        certificate never reaches the protocol; one with a certificate
        from the CA does.
        """
        description = (
            f"ssa:0:interface=127.0.0.1:certKey={self.files.cert}:privateKey={self.files.key}"
            f":requireClientCertificate=yes:cafile={self.ca_file}:socket={self.daemon.socket_path}"
        )
        port = yield serverFromString(reactor, description).listen(Factory.forProtocol(DigestEcho))
        self.addCleanup(port.stopListening)
        address = ("127.0.0.1", port.getHost().port)
        anonymous = ssl.create_default_context(cafile=str(self.ca_file))
        known = ssl.create_default_context(cafile=str(self.ca_file))
        client_files = self.ca.issue_client("app").write(self.tmp, "client")
        known.load_cert_chain(client_files.cert, client_files.key)

        def talk(context: ssl.SSLContext) -> bytes:
            tls = TLSPeerConnection.client(address, context, "localhost", timeout=30)
            try:
                tls.sendall(b"hello")
                tls.send_close_notify()
                return tls.recv_until_eof()
            finally:
                tls.close()

        yield self.assertFailure(deferToThread(talk, anonymous), OSError)
        reply = yield deferToThread(talk, known)
        self.assertEqual(reply, b"TCP 127.0.0.1 " + digest(b"hello").encode())

    @inlineCallbacks
    def test_big_reply_then_immediate_close(self):
        """
        A protocol writes 4 MiB and calls C{loseConnection} at once: the
        client gets every byte and then a clean end.
        """
        payload = pseudo_random_bytes(4 << 20, seed="big")

        class Blurt(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(payload)
                self.transport.loseConnection()

        description = (
            f"ssa:0:interface=127.0.0.1:certKey={self.files.cert}:privateKey={self.files.key}"
            f":socket={self.daemon.socket_path}"
        )
        port = yield serverFromString(reactor, description).listen(Factory.forProtocol(Blurt))
        self.addCleanup(port.stopListening)
        context = ssl.create_default_context(cafile=str(self.ca_file))

        def fetch() -> bytes:
            tls = TLSPeerConnection.client(("127.0.0.1", port.getHost().port), context, "localhost", timeout=60)
            try:
                return tls.recv_until_eof()
            finally:
                tls.close()

        received = yield gatherResults([deferToThread(fetch) for _ in range(3)])
        for data in received:
            self.assertEqual(digest(data), digest(payload))

    def test_bad_strings(self) -> None:
        """
        Missing parts and unknown options are refused when parsing.
        """
        self.assertRaises(ValueError, clientFromString, reactor, "ssa:host=localhost")
        self.assertRaises(TypeError, clientFromString, reactor, "ssa:localhost:443:colour=blue")
        self.assertRaises(ValueError, serverFromString, reactor, "ssa:8443")

    def test_twist_web_listens_on_ssa(self) -> None:
        """
        C{twist web --listen ssa:...} serves files over TLS done by the
        daemon.
        """
        docroot = os.path.join(self.tmp, "www")
        os.mkdir(docroot)
        page = pseudo_random_bytes(30_000, seed="page").hex().encode()
        with open(os.path.join(docroot, "page.txt"), "wb") as f:
            f.write(page)
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(SOURCE_ROOT))
        listen = (
            f"ssa:{port}:interface=127.0.0.1:certKey={self.files.cert}:privateKey={self.files.key}"
            f":socket={self.daemon.socket_path}"
        )
        log = open(os.path.join(self.tmp, "twist.log"), "wb")  # noqa: SIM115  (the child's, until cleanup)
        self.addCleanup(log.close)
        web = subprocess.Popen(
            [sys.executable, "-m", "twisted", "web", "--listen", listen, "--path", docroot],
            env=env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT,
        )

        def stop() -> None:
            web.terminate()
            web.wait(30)

        self.addCleanup(stop)
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://localhost:{port}/page.txt"
        deadline = time.monotonic() + 30
        while True:  # readiness: until twist web listens (or has exited)
            try:
                with urllib.request.urlopen(url, context=context, timeout=30) as response:
                    body = response.read()
                break
            except OSError:
                if web.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    with open(log.name, "rb") as f:
                        self.fail(f"twist web did not serve: {f.read().decode(errors='replace')}")
                time.sleep(0.1)
        self.assertEqual(body, page)

    @inlineCallbacks
    def test_cancelled_connects_leave_nothing_behind(self):
        """
        10 connects cancelled while their handshakes are held by the server
        (it never answers): every SSA socket is closed, in the daemon too.
        """
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.files.cert, self.files.key)
        _channels.close_idle(self.daemon.socket_path)
        before = self.daemon.descriptor_count()
        with GatedTLSServer(context, gate=1000) as server:
            endpoint = clientFromString(reactor, self.client_string(server.port))
            attempts = [endpoint.connect(Factory.forProtocol(Protocol)) for _ in range(10)]
            yield deferLater(reactor, 0.3)  # not synchronisation: cancel wherever each has got to
            for attempt in attempts:
                attempt.cancel()
            for attempt in attempts:
                yield self.assertFailure(attempt, CancelledError)
        def settled_now() -> bool:
            # A thread still finishing a cancelled connect may give its
            # control connection to the idle pool late: close those too.
            _channels.close_idle(self.daemon.socket_path)
            return self.daemon.descriptor_count() <= before

        # Generous: the cancelled connects' threads may be scheduled late on
        # a busy machine; a leak never settles.
        settled = yield deferToThread(wait_for, settled_now, 60.0)
        self.assertTrue(settled, f"{self.daemon.descriptor_count()} descriptors in the daemon, {before} before: "
                                 f"{self.daemon.descriptors()}")

    @inlineCallbacks
    def test_killed_daemon_stops_the_port(self):
        """
        The daemon killed under a listening port: the port stops listening
        (logging why) instead of spinning on a dead listener.
        """
        description = (
            f"ssa:0:interface=127.0.0.1:certKey={self.files.cert}:privateKey={self.files.key}"
            f":socket={self.daemon.socket_path}"
        )
        port = yield serverFromString(reactor, description).listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        self.daemon.process.kill()
        yield deferToThread(self.daemon.process.wait)
        stopped = yield deferToThread(wait_for, lambda: port.fileno() == -1)
        self.assertTrue(stopped)
        self.flushLoggedErrors(OSError)
