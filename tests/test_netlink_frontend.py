"""
The netlink frontend (L{ssa.frontends.netlink}) driven by the simulated
module (L{ssa.testing.fakemodule}) on NETLINK_USERSOCK: the daemon's core
on the test's reactor, real TLS servers and clients on loopback, real
loopback TCP for the plaintext. No root needed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import ssl
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from ssa import edge
from ssa.backend_choice import load_backend
from ssa.constants import (
    IPPROTO_TLS,
    TLS_CERTIFICATE_CHAIN,
    TLS_HOSTNAME,
    TLS_ID,
    TLS_PEER_IDENTITY,
    TLS_PRIVATE_KEY,
    TLS_TRUSTED_PEER_CERTIFICATES,
)
from ssa.frontends.netlink import NetlinkFrontend
from ssa.netlink import wire
from ssa.netlink.transport import NETLINK_USERSOCK, NetlinkAddress
from ssa.netlink.wire import Command, Message
from ssa.policy import Policy
from ssa.service import SocketService
from ssa.testing.certs import CertificateAuthority
from ssa.testing.fakemodule import FakeModule
from ssa.testing.tls_server import (
    StdlibTLSServer,
    echo_handler,
    pseudo_random_bytes,
    truncating_handler,
)

LO = (socket.AF_INET, "127.0.0.1")


def unique_pid() -> int:
    """
    A netlink port id no other test uses (ids are global per protocol).
    """
    return 0x40000000 + int.from_bytes(os.urandom(3), "big")


def echo(sock: socket.socket, payload: bytes) -> bytes:
    """
    Send C{payload}, half-close, read everything back.
    """
    sock.settimeout(20)
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


class NetlinkFrontendTests(TestCase):
    """
    Every request of the module, answered as the original daemon did.
    """

    def setUp(self) -> None:
        self.ca, self.server_key = _certificates()
        policy = Policy(trust_anchors=self.ca.root_pem(), revocation_checks=False)
        self.service = SocketService(reactor, load_backend("openssl"), policy)
        pid = unique_pid()
        self.frontend = NetlinkFrontend(reactor, self.service, NetlinkAddress(NETLINK_USERSOCK, pid, 0, False),
                                        0x1D, plaintext_port=0)
        # the module's port id is known only once it is bound: start it first
        self.module = FakeModule(reactor, pid)
        self.frontend.address = NetlinkAddress(NETLINK_USERSOCK, pid, self.module.pid, False)
        self.frontend.start()
        self.module.daemon_port = self.frontend.plaintext_port
        self.addCleanup(self.module.close)
        self.addCleanup(edge.release, reactor)
        self.addCleanup(self.frontend.stop)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def server(self, handler=echo_handler, host: str = "127.0.0.1") -> StdlibTLSServer:
        server = StdlibTLSServer(self.server_key, handler, host=host).start()
        self.addCleanup(server.stop)
        return server

    def replies(self, command: Command) -> list[Message]:
        return [m for m in self.module.received if m.command is command]

    @inlineCallbacks
    def client(self, hostname: bytes = b"localhost\0", family: int = socket.AF_INET):
        sock = yield self.module.socket(family)
        yield sock.setsockopt(IPPROTO_TLS, TLS_HOSTNAME, hostname)
        return sock

    @inlineCallbacks
    def test_blocking_connect_echo(self):
        """
        socket, setsockopt, connect: RETURN 0 each, HANDSHAKE_RETURN 0,
        then the module's loopback connection carries the plaintext; the
        peer's identity comes back as DATA_RETURN; CLOSE gets no reply.
        """
        server = self.server()
        sock = yield self.client()
        yield sock.connect((socket.AF_INET, *server.address))
        payload = pseudo_random_bytes(300_000, "netlink")
        back = yield deferToThread(echo, sock.app, payload)
        self.assertEqual(hashlib.sha256(back).hexdigest(), hashlib.sha256(payload).hexdigest())
        identity = yield sock.getsockopt(IPPROTO_TLS, TLS_PEER_IDENTITY)
        self.assertIn(b"CN=localhost", identity)
        self.assertEqual([m.result for m in self.replies(Command.RETURN)], [0, 0])
        self.assertEqual([m.result for m in self.replies(Command.HANDSHAKE_RETURN)], [0])
        self.assertEqual(len(self.replies(Command.DATA_RETURN)), 1)
        self.assertTrue(all(m.flags == wire.NLM_F_REQUEST | wire.NLM_F_ACK for m in self.module.received))
        self.assertEqual(self.module.rejected, [])
        tls_id = yield sock.getsockopt(IPPROTO_TLS, TLS_ID)
        self.assertEqual(tls_id, wire._U64.pack(sock.id))  # answered by the module itself
        count = len(self.module.received)
        sock.close()
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(self.module.received), count)
        self.assertEqual(self.frontend.sockets, {})

    @inlineCallbacks
    def test_truncation_is_a_reset(self):
        """
        The peer closes TCP without close_notify: the application reads
        every byte sent, then a reset, not a clean end.
        """
        server = self.server(truncating_handler(100_000, "cut"))
        sock = yield self.client()
        yield sock.connect((socket.AF_INET, *server.address))

        def read_all(app: socket.socket):
            app.settimeout(20)
            data = b""
            try:
                while chunk := app.recv(65536):
                    data += chunk
            except ConnectionResetError:
                return data, "reset"
            return data, "eof"

        data, end = yield deferToThread(read_all, sock.app)
        self.assertEqual((data, end), (pseudo_random_bytes(100_000, "cut"), "reset"))

    @inlineCallbacks
    def test_close_before_the_loopback_connection(self):
        """
        The module says the socket closed after HANDSHAKE_RETURN but before
        its loopback connection came: the daemon drops the TLS connection;
        a late loopback connection from that port is refused.
        """
        server = self.server()
        sock = yield self.client()
        sock._bind_loopback()
        sock.notify(Command.CONNECT_NOTIFY, internal=sock.internal, remote=(socket.AF_INET, *server.address),
                    blocking=True)
        yield sock.wait(10, errno.ENOTCONN)
        sock.notify(Command.CLOSE_NOTIFY)
        sock.forget()
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(self.frontend.sockets, {})
        sock.app.connect(("127.0.0.1", self.frontend.plaintext_port))
        data = yield deferToThread(_read_or_reset, sock.app)
        self.assertEqual(data, b"")
        sock.app.close()

    @inlineCallbacks
    def test_ipv6(self):
        server = self.server(host="::1")
        sock = yield self.client(family=socket.AF_INET6)
        yield sock.connect((socket.AF_INET6, "::1", server.port))
        back = yield deferToThread(echo, sock.app, b"over six")
        self.assertEqual(back, b"over six")

    @inlineCallbacks
    def test_wrong_host(self):
        """
        A certificate for another name: EPROTO from connect().
        """
        server = self.server()
        sock = yield self.client(b"not-localhost.test\0")
        with self.assertRaises(OSError) as caught:
            yield sock.connect((socket.AF_INET, *server.address))
        self.assertEqual(caught.exception.errno, errno.EPROTO)
        self.assertEqual([m.result for m in self.replies(Command.HANDSHAKE_RETURN)], [-errno.EPROTO])

    @inlineCallbacks
    def test_refused(self):
        """
        Nothing listening: ECONNABORTED (SPEC section 3).
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        sock = yield self.client()
        with self.assertRaises(OSError) as caught:
            yield sock.connect((socket.AF_INET, "127.0.0.1", port))
        self.assertEqual(caught.exception.errno, errno.ECONNABORTED)

    @inlineCallbacks
    def test_nonblocking_connect(self):
        """
        RETURN -EINPROGRESS at once; HANDSHAKE_RETURN 0 later, which the
        module NACKs with -EINPROGRESS (ignored); then data flows.
        """
        server = self.server()
        sock = yield self.client()
        answer = yield sock.connect((socket.AF_INET, *server.address), blocking=False)
        self.assertEqual(answer, -errno.EINPROGRESS)
        result = yield sock.connected
        self.assertIn(result, (0, errno.EINPROGRESS))
        sock.app.setblocking(True)
        back = yield deferToThread(echo, sock.app, b"later")
        self.assertEqual(back, b"later")
        self.assertIn((self.replies(Command.HANDSHAKE_RETURN)[0].seq, -errno.EINPROGRESS), self.module.acks)
        self.assertFalse([e for e in self.events if "refused message" in str(e.get("log_format", ""))])

    @inlineCallbacks
    def test_nonblocking_connect_failure_resets(self):
        """
        A nonblocking connect that fails: the module connects anyway, and
        the application reads a reset.
        """
        server = self.server()
        sock = yield self.client(b"wrong.test\0")
        yield sock.connect((socket.AF_INET, *server.address), blocking=False)
        yield sock.connected
        self.assertEqual([m.result for m in self.replies(Command.HANDSHAKE_RETURN)], [-errno.EPROTO])
        sock.app.setblocking(True)
        sock.app.settimeout(10)
        with self.assertRaises(ConnectionResetError):
            yield deferToThread(sock.app.recv, 10)

    @inlineCallbacks
    def test_second_connect(self):
        """
        A second connect fails EOPNOTSUPP (SPEC), as RETURN.
        """
        server = self.server()
        sock = yield self.client()
        yield sock.connect((socket.AF_INET, *server.address))
        with self.assertRaises(OSError) as caught:
            yield sock.connect((socket.AF_INET, *server.address))
        self.assertEqual(caught.exception.errno, errno.EOPNOTSUPP)

    @inlineCallbacks
    def test_bind_listen_accept(self):
        """
        A server socket: bind (the daemon binds the external address),
        listen, and accept() of a TLS client's connection, ACCEPT_NOTIFY
        matched by the daemon's source port.
        """
        directory = tempfile.mkdtemp()
        os.chmod(directory, 0o755)
        files = self.server_key.write(directory, "server")
        listener = yield self.module.socket()
        yield listener.setsockopt(IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, os.fsencode(files.cert) + b"\0")
        with self.assertRaises(OSError) as caught:  # 0600: the daemon will not read it for an unknown caller
            yield listener.setsockopt(IPPROTO_TLS, TLS_PRIVATE_KEY, os.fsencode(files.key) + b"\0")
        self.assertEqual(caught.exception.errno, errno.EACCES)
        yield listener.setsockopt(IPPROTO_TLS, TLS_PRIVATE_KEY, self.server_key.key_pem() + b"\0")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        yield listener.bind((socket.AF_INET, "127.0.0.1", port))
        yield listener.listen()

        def tls_client() -> bytes:
            context = ssl.create_default_context(cadata=self.ca.root_pem().decode())
            with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"hello server")
                return tls.recv(100)

        answer = deferToThread(tls_client)
        accepted, peer = yield listener.accept()
        self.assertEqual(peer[0], "127.0.0.1")
        data = yield deferToThread(accepted.app.recv, 100)
        self.assertEqual(data, b"hello server")
        accepted.app.sendall(b"hello client")
        self.assertEqual((yield answer), b"hello client")
        self.assertEqual(self.replies(Command.RETURN)[-1].result, 0)
        accepted.close()
        listener.close()

    @inlineCallbacks
    def test_relative_path_and_inline_pem(self):
        """
        The module makes relative paths absolute (87-89) and passes
        inline PEM as is: the daemon reads the file, or takes the PEM.
        """
        server = self.server()
        directory = tempfile.mkdtemp()
        os.chmod(directory, 0o755)
        with open(os.path.join(directory, "root.pem"), "wb") as f:
            f.write(self.ca.root_pem())
        cwd = os.getcwd()
        os.chdir(directory)
        self.addCleanup(os.chdir, cwd)
        sock = yield self.client()
        yield sock.setsockopt(IPPROTO_TLS, TLS_TRUSTED_PEER_CERTIFICATES, b"root.pem\0")
        yield sock.connect((socket.AF_INET, *server.address))
        other = yield self.client()
        yield other.setsockopt(IPPROTO_TLS, TLS_TRUSTED_PEER_CERTIFICATES, self.ca.root_pem() + b"\0")
        missing = yield self.client()
        with self.assertRaises(OSError) as caught:
            yield missing.setsockopt(IPPROTO_TLS, TLS_PRIVATE_KEY, b"/nonexistent/key.pem\0")
        self.assertEqual(caught.exception.errno, errno.EBADF)

    @inlineCallbacks
    def test_errno_conventions(self):
        """
        Errors are negative errnos in RETURN; getsockopt of a set-only
        option is ENOPROTOOPT; options at other levels the core does not
        keep are left to the module (0).
        """
        sock = yield self.module.socket()
        with self.assertRaises(OSError) as caught:
            yield sock.getsockopt(IPPROTO_TLS, TLS_PRIVATE_KEY)
        self.assertEqual(caught.exception.errno, errno.ENOPROTOOPT)
        with self.assertRaises(OSError) as caught:
            yield sock.setsockopt(IPPROTO_TLS, 4242, b"\1\0\0\0")
        self.assertEqual(caught.exception.errno, errno.ENOPROTOOPT)
        yield sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, b"\1\0\0\0")
        yield sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, b"\1\0\0\0")
        self.assertTrue(all(m.result <= 0 for m in self.replies(Command.RETURN)))

    @inlineCallbacks
    def test_unknown_id_and_unknown_accept(self):
        """
        A request for an id the daemon does not know: -EBADF; an
        ACCEPT_NOTIFY from a port it did not connect from: -ECONNABORTED;
        a CLOSE of an unknown id: nothing.
        """
        stranger = self.module.new_id()
        self.module.send(Message(Command.CLOSE_NOTIFY, stranger))
        from ssa.testing.fakemodule import FakeTLSSocket
        ghost = FakeTLSSocket(self.module, socket.AF_INET, socket.socket())
        self.addCleanup(ghost.app.close)
        with self.assertRaises(OSError) as caught:
            yield ghost.setsockopt(IPPROTO_TLS, TLS_HOSTNAME, b"x\0")
        self.assertEqual(caught.exception.errno, errno.EBADF)
        ghost.notify(Command.ACCEPT_NOTIFY, internal=(socket.AF_INET, "127.0.0.1", 1))
        result = yield ghost.wait(10, errno.ETIMEDOUT)
        self.assertEqual(result, -errno.ECONNABORTED)
        self.assertEqual(len(self.replies(Command.RETURN)), 2)

    @inlineCallbacks
    def test_id_reuse(self):
        """
        CLOSE(id) then SOCKET(same id), in one datagram: handled in order,
        the new socket works.
        """
        server = self.server()
        first = yield self.client()
        socket_id = first.id
        first.app.close()
        first.forget()
        again = FakeTLSSocketWithId(self.module, socket_id)
        self.module.port.send(
            wire.encode(0x1D, Message(Command.CLOSE_NOTIFY, socket_id))
            + wire.encode(0x1D, Message(Command.SOCKET_NOTIFY, socket_id, family=socket.AF_INET))
        )
        yield again.wait(10, errno.ENOTCONN)
        yield again.setsockopt(IPPROTO_TLS, TLS_HOSTNAME, b"localhost\0")
        yield again.connect((socket.AF_INET, *server.address))
        back = yield deferToThread(echo, again.app, b"reused")
        self.assertEqual(back, b"reused")

    @inlineCallbacks
    def test_malformed_and_unexpected(self):
        """
        A malformed datagram is logged and dropped; a loopback connection
        from a port nobody announced is refused and logged; the daemon
        serves on.
        """
        self.module.port.send(b"\x10\x00\x00\x00garbage-garbage!")
        self.module.port.send(wire.encode_message(0x1D, 1, [(1, b"short")]))
        intruder = socket.create_connection(("127.0.0.1", self.frontend.plaintext_port), timeout=10)
        self.addCleanup(intruder.close)
        data = yield deferToThread(_read_or_reset, intruder)
        self.assertEqual(data, b"")
        texts = " ".join(str(e.get("log_format")) for e in self.events)
        self.assertIn("malformed", texts)
        self.assertIn("refused a plaintext connection", texts)
        server = self.server()
        sock = yield self.client()
        yield sock.connect((socket.AF_INET, *server.address))


_MADE: list = []


def _certificates():
    """
    One CA and server certificate for the module's tests.
    """
    if not _MADE:
        ca = CertificateAuthority.create("Netlink Test CA")
        _MADE.append((ca, ca.issue_server("localhost", "127.0.0.1", "::1")))
    return _MADE[0]


def _read_or_reset(sock: socket.socket) -> bytes:
    try:
        return sock.recv(10)
    except ConnectionResetError:
        return b""


def FakeTLSSocketWithId(module: FakeModule, socket_id: int):
    """
    A simulated socket under a given id (the module reusing one).
    """
    from ssa.testing.fakemodule import FakeTLSSocket

    return FakeTLSSocket(module, socket.AF_INET, socket.socket(), socket_id)


__all__ = ["Deferred"]
