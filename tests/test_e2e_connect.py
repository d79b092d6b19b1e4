"""
End to end, the client role: a real daemon process, real peers on
loopback, certificates made at run time (issue: daemon core).
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
import datetime

from ssa import client
from ssa.testing.certs import CertificateAuthority
from ssa.testing.peers import (
    OpenSSLServer,
    StdlibTLSServer,
    echo_handler,
    free_port,
    pseudo_random_bytes,
    sink_digest_handler,
)

from .helpers import DaemonTestCase, digest, for_each_backend

TLS = client.IPPROTO_TLS
MIB = 1 << 20


def _keepalive_timers(remote_port: int) -> list[str]:
    """
    The C{timer_active} field of each established TCP socket in this
    namespace connected to C{remote_port} ("02" means keepalive).
    """
    timers = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            remote, state, timer = fields[2], fields[3], fields[5].split(":")[0]
            if int(remote.split(":")[1], 16) == remote_port and state == "01":
                timers.append(timer)
    return timers


def recv_exactly(sock, size: int) -> bytes:
    """
    Read exactly C{size} bytes.
    """
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 18))
        if not chunk:
            raise AssertionError(f"EOF after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock) -> bytes:
    """
    Read until end-of-file.
    """
    chunks = []
    while True:
        chunk = sock.recv(1 << 18)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class ConnectTests(DaemonTestCase):
    """
    Successful connections and what they report.
    """

    def test_openssl_server_info_and_data(self) -> None:
        """
        Through the daemon to C{openssl s_server}: data both ways and the
        negotiated values are real.
        """
        with OpenSSLServer(self.server_key, extra_args=["-naccept", "1", "-quiet"]) as server:
            sock = self.trusting_socket()
            sock.connect(("localhost", server.port))
            self.assertEqual(sock.getsockopt(TLS, client.TLS_CHOSEN_VERSION), client.TLS_1_3)
            self.assertIn(sock.getsockopt(TLS, client.TLS_CHOSEN_CIPHER, 256).rstrip(b"\0").decode(),
                          {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"})
            identity = sock.getsockopt(TLS, client.TLS_PEER_IDENTITY, 512).rstrip(b"\0").decode()
            self.assertTrue(identity.startswith("/"), identity)
            self.assertIn("CN=localhost", identity)
            chain = sock.getsockopt(TLS, client.TLS_PEER_CERTIFICATE_CHAIN, 65536).rstrip(b"\0")
            self.assertIn(self.server_key.cert_pem().strip(), chain)
            sock.sendall(b"ping\n")
            server.stdin.write(b"pong\n")
            server.stdin.flush()
            self.assertEqual(recv_exactly(sock, 5), b"pong\n")
            deadline = time.monotonic() + 10
            while server.output() != b"ping\n" and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(server.output(), b"ping\n")

    def test_tls12_when_capped(self) -> None:
        """
        TLS_VERSION_MAX 2 negotiates TLS 1.2 with an ECDHE AEAD cipher.
        """
        with OpenSSLServer(self.server_key, extra_args=["-naccept", "1", "-quiet"]) as server:
            sock = self.trusting_socket()
            sock.setsockopt(TLS, client.TLS_VERSION_MAX, client.TLS_1_2)
            sock.connect(("127.0.0.1", server.port))
            self.assertEqual(sock.getsockopt(TLS, client.TLS_CHOSEN_VERSION), client.TLS_1_2)
            self.assertTrue(sock.getsockopt(TLS, client.TLS_CHOSEN_CIPHER, 256).startswith(b"ECDHE-"))

    def test_af_hostname(self) -> None:
        """
        An AF_HOSTNAME socket connects to a name: the daemon resolves it and
        verifies the certificate against it, with no TLS_HOSTNAME set.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock = self.tls_socket(family=client.AF_HOSTNAME)
            sock.setsockopt(TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, self.ca.cert_pem())
            sock.connect(("localhost", server.port))
            self.assertEqual(sock.getsockopt(TLS, client.TLS_HOSTNAME, 256).rstrip(b"\0"), b"localhost")
            sock.sendall(b"by name")
            self.assertEqual(recv_exactly(sock, 7), b"by name")
        refused = self.tls_socket(family=client.AF_HOSTNAME)
        self.assertConnectFails(refused, ("localhost", free_port()), errno.ECONNABORTED, "refused")

    def test_tcp_options_reach_the_network_socket(self) -> None:
        """
        TCP_NODELAY and SO_KEEPALIVE set before connect apply to the daemon's
        TCP connection: the peer's view of the connection cannot show them,
        so look at the daemon's socket through /proc (the connection from
        our port to the server's).
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock = self.trusting_socket()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
            sock.connect(("127.0.0.1", server.port))
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 77)
            sock.sendall(b"x")
            self.assertEqual(recv_exactly(sock, 1), b"x")
            deadline = time.monotonic() + 5
            while (timers := _keepalive_timers(server.port)) != ["02"] and time.monotonic() < deadline:
                time.sleep(0.05)  # "01" while a segment (a ticket, say) awaits its ACK
            self.assertEqual(timers, ["02"], "the daemon's socket runs the keepalive timer")

    def test_disabled_ciphers_are_not_offered(self) -> None:
        """
        TLS_DISABLE_CIPHER takes effect: with TLS 1.2 and two of the three
        ECDSA ciphers disabled, the third is negotiated.
        """
        with OpenSSLServer(self.server_key, extra_args=["-naccept", "1", "-quiet"]) as server:
            sock = self.trusting_socket()
            sock.setsockopt(TLS, client.TLS_VERSION_MAX, client.TLS_1_2)
            sock.setsockopt(TLS, client.TLS_DISABLE_CIPHER, "ECDHE-ECDSA-AES256-GCM-SHA384")
            sock.setsockopt(TLS, client.TLS_DISABLE_CIPHER, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256")
            sock.connect(("127.0.0.1", server.port))
            self.assertEqual(sock.getsockopt(TLS, client.TLS_CHOSEN_CIPHER, 256).rstrip(b"\0"),
                             b"ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_ip_literal_and_ipv6(self) -> None:
        """
        With no TLS_HOSTNAME an IP literal is verified against the IP SAN;
        IPv6 works the same way.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock = self.trusting_socket(hostname=None)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"over v4")
            self.assertEqual(recv_exactly(sock, 7), b"over v4")
        with StdlibTLSServer(self.server_key, echo_handler, host="::1") as server:
            sock = self.trusting_socket(hostname=None, family=socket.AF_INET6)
            sock.connect(("::1", server.port))
            sock.sendall(b"over v6")
            self.assertEqual(recv_exactly(sock, 7), b"over v6")

    def test_16_mib_each_way(self) -> None:
        """
        16 MiB to the peer and 16 MiB back, concurrently, checksummed.
        """
        received = {}

        def handler(conn) -> None:
            payload = pseudo_random_bytes(16 * MIB, seed=2)
            sender = threading.Thread(target=conn.sendall, args=(payload,))
            sender.start()
            data = conn.recv_exactly(16 * MIB)
            sender.join()
            received["digest"] = digest(data)
            conn.close()

        outgoing = pseudo_random_bytes(16 * MIB, seed=1)
        with StdlibTLSServer(self.server_key, handler) as server:
            sock = self.trusting_socket()
            sock.connect(("localhost", server.port))
            sender = threading.Thread(target=sock.sendall, args=(outgoing,))
            sender.start()
            data = recv_exactly(sock, 16 * MIB)
            sender.join()
            self.assertEqual(recv_until_eof(sock), b"")
            server.wait_for_connections(1)
        self.assertEqual(digest(data), digest(pseudo_random_bytes(16 * MIB, seed=2)))
        self.assertEqual(received["digest"], digest(outgoing))
        self.assertEqual(server.errors, [])

    def test_half_close_from_application(self) -> None:
        """
        C{shutdown(SHUT_WR)} reaches the peer as close_notify, and the
        application still reads what the peer sends afterwards.
        """
        def handler(conn) -> None:
            data = conn.recv_until_eof()
            conn.sendall(b"after your EOF: " + digest(data).encode())
            conn.close()

        with StdlibTLSServer(self.server_key, handler) as server:
            sock = self.trusting_socket()
            sock.connect(("localhost", server.port))
            sock.sendall(b"x" * 100000)
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_until_eof(sock), b"after your EOF: " + digest(b"x" * 100000).encode())
            server.wait_for_connections(1)
        self.assertEqual(server.errors, [])

    def test_half_close_from_peer(self) -> None:
        """
        The peer's close_notify is end-of-file for the application, which
        can still send; the peer receives it.
        """
        got = {}

        def handler(conn) -> None:
            conn.sendall(b"bye")
            conn.send_close_notify()
            got["data"] = conn.recv_until_eof()

        with StdlibTLSServer(self.server_key, handler) as server:
            sock = self.trusting_socket()
            sock.connect(("localhost", server.port))
            self.assertEqual(recv_until_eof(sock), b"bye")
            sock.sendall(b"still talking")
            sock.shutdown(socket.SHUT_WR)
            server.wait_for_connections(1)
        self.assertEqual(got["data"], b"still talking")
        self.assertEqual(server.errors, [])

    def test_truncation_is_an_error(self) -> None:
        """
        A TCP close without close_notify reads as ECONNRESET after the
        bytes that did arrive, and TLS_ERROR says truncation.
        """
        def handler(conn) -> None:
            conn.sendall(b"partial")
            conn.close_tcp_without_close_notify()

        with StdlibTLSServer(self.server_key, handler) as server:
            sock = self.trusting_socket()
            sock.connect(("localhost", server.port))
            self.assertEqual(recv_exactly(sock, 7), b"partial")
            failure = self.assertRaises(OSError, recv_until_eof, sock)
            self.assertEqual(failure.errno, errno.ECONNRESET)
            self.assertIn("close_notify", sock.get_error())

    def test_close_right_after_send_loses_nothing(self) -> None:
        """
        Bytes written just before close() still reach the peer, followed by
        close_notify.
        """
        sink = sink_digest_handler()
        payload = pseudo_random_bytes(2 * MIB, seed=7)
        with StdlibTLSServer(self.server_key, sink) as server:
            sock = self.trusting_socket()
            sock.connect(("localhost", server.port))
            sock.sendall(payload)
            sock.close()
            deadline = time.monotonic() + 20
            while not sink.results and time.monotonic() < deadline:
                time.sleep(0.05)
        self.assertEqual([(r.nbytes, r.sha256) for r in sink.results], [(len(payload), digest(payload))])

    def test_100_concurrent_connections(self) -> None:
        """
        100 connections at once, each echoing its own data intact.
        """
        results: dict[int, bool] = {}
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                payload = pseudo_random_bytes(64 * 1024 + i, seed=100 + i)
                sock = self.trusting_socket()
                sock.connect(("localhost", server.port))
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                results[i] = digest(recv_until_eof(sock)) == digest(payload)
            except BaseException as e:
                errors.append(e)

        with StdlibTLSServer(self.server_key, echo_handler) as server:
            threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(results), list(range(100)))
        self.assertTrue(all(results.values()))


class FailureTests(DaemonTestCase):
    """
    Each failure has its errno and a reason that names the cause.
    """

    def test_hostname_mismatch(self) -> None:
        """
        A certificate for another name → EPROTO naming both names.
        """
        with OpenSSLServer(self.ca.issue_server("other.test"), extra_args=["-naccept", "1"]) as server:
            sock = self.trusting_socket("localhost")
            self.assertConnectFails(sock, ("127.0.0.1", server.port), errno.EPROTO,
                                    "hostname mismatch", "other.test", "localhost")

    def test_untrusted_issuer(self) -> None:
        """
        A certificate from a CA the socket does not trust → EPROTO.
        """
        stranger = CertificateAuthority.create("Stranger CA")
        with OpenSSLServer(stranger.issue_server("localhost"), extra_args=["-naccept", "1"]) as server:
            sock = self.trusting_socket()
            self.assertConnectFails(sock, ("127.0.0.1", server.port), errno.EPROTO,
                                    "certificate verification failed", "local issuer")

    def test_expired(self) -> None:
        """
        An expired certificate → EPROTO saying so, with its depth.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        expired = self.ca.issue_server(
            "localhost", not_before=now - datetime.timedelta(days=60),
            not_after=now - datetime.timedelta(days=1),
        )
        with OpenSSLServer(expired, extra_args=["-naccept", "1"]) as server:
            sock = self.trusting_socket()
            reason = self.assertConnectFails(sock, ("127.0.0.1", server.port), errno.EPROTO, "expired")
            if self.backend == "openssl":
                self.assertIn("depth 0", reason)

    def test_tls10_only_server(self) -> None:
        """
        A server that speaks only TLS 1.0 → EPROTO naming the version range.
        """
        args = ["-naccept", "1", "-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]
        with OpenSSLServer(self.server_key, extra_args=args) as server:
            sock = self.trusting_socket()
            self.assertConnectFails(sock, ("127.0.0.1", server.port), errno.EPROTO, "TLS 1.2")

    def test_system_store_does_not_trust_test_ca(self) -> None:
        """
        With no anchors of its own, a socket uses the system store, which
        does not know the test CA.
        """
        with OpenSSLServer(self.server_key, extra_args=["-naccept", "1"]) as server:
            sock = self.tls_socket()
            sock.setsockopt(TLS, client.TLS_HOSTNAME, "localhost")
            self.assertConnectFails(sock, ("127.0.0.1", server.port), errno.EPROTO, "certificate verification failed")

    def test_refused(self) -> None:
        """
        Nothing listening → ECONNABORTED naming the refusal.
        """
        port = free_port()
        sock = self.trusting_socket()
        self.assertConnectFails(sock, ("127.0.0.1", port), errno.ECONNABORTED, "refused", str(port))

    def test_connect_errnos(self) -> None:
        """
        The seed's connect(2): after success EOPNOTSUPP, after failure
        EBADFD, listen after connect EOPNOTSUPP (EBADFD after failure), a
        closed socket EBADF, AF_UNSPEC EAFNOSUPPORT with nothing changed.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock = self.trusting_socket()
            sock.connect(("localhost", server.port))
            self.assertEqual(sock.connect_ex(("localhost", server.port)), errno.EOPNOTSUPP)
            self.assertEqual(self.assertRaises(OSError, sock.listen).errno, errno.EOPNOTSUPP)
        failed = self.trusting_socket()
        self.assertEqual(failed.connect_ex(("127.0.0.1", free_port())), errno.ECONNABORTED)
        self.assertEqual(failed.connect_ex(("127.0.0.1", free_port())), errno.EBADFD)
        self.assertEqual(self.assertRaises(OSError, failed.listen).errno, errno.EBADFD)
        closed = self.trusting_socket()
        closed.close()
        self.assertEqual(closed.connect_ex(("127.0.0.1", 1)), errno.EBADF)

    def test_unknown_socket_is_ebadf(self) -> None:
        """
        A request naming a socket the daemon does not know → EBADF.
        """
        sock = self.trusting_socket()
        from ssa import wire
        code, payload, _ = sock._channel.request(
            wire.Op.CONNECT, sock.id ^ 1,
            wire.CONNECT_FLAGS.pack(0) + wire.encode_address(socket.AF_INET, "127.0.0.1", 1),
        )
        self.assertEqual(code, errno.EBADF)
        self.assertIn(b"not known", payload)


class CarriedOptionTests(DaemonTestCase):
    """
    Options that travel with CONNECT (docs/protocol.md): set by the daemon
    before it connects, in order, as SETSOCKOPTs would have been; one it
    refuses fails the CONNECT and nothing connects.
    """

    def raw_connect(self, sock: client.SSASocket, port: int, options: bytes) -> tuple[int, bytes]:
        """
        Send CONNECT for C{sock} to 127.0.0.1:C{port} carrying the encoded
        C{options}; the daemon's errno and payload.
        """
        from ssa import wire

        body = (wire.CONNECT_FLAGS.pack(wire.CONNECT_OPTIONS) + wire.encode_address(socket.AF_INET, "127.0.0.1", port)
                + options)
        code, payload, _ = sock._channel.request(wire.Op.CONNECT, sock.id, body)
        return code, payload

    def test_applied_before_connecting(self) -> None:
        """
        A carried TLS_HOSTNAME is the name verified (a wrong one fails the
        handshake); carried TCP_NODELAY and TLS_SESSION_REUSE read back.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock = self.trusting_socket()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(client.IPPROTO_TLS, client.TLS_SESSION_REUSE, 0)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"ping")
            self.assertEqual(sock.recv(4), b"ping")
            self.assertEqual(sock.getsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME), "localhost")
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
            self.assertEqual(sock.getsockopt(client.IPPROTO_TLS, client.TLS_SESSION_REUSE), 0)
            self.assertConnectFails(self.trusting_socket("wrong.example"), ("127.0.0.1", server.port),
                                    errno.EPROTO, "wrong.example")

    def test_refused_option_fails_connect(self) -> None:
        """
        A carried option the daemon refuses fails CONNECT with its errno and
        reason (also TLS_ERROR), before connecting: the socket is still new
        and connects afterwards.
        """
        from ssa import wire

        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock = self.trusting_socket(hostname=None)
            code, payload = self.raw_connect(
                sock, server.port, wire.encode_options([(client.IPPROTO_TLS, client.TLS_HOSTNAME, b"a b\0")]))
            self.assertEqual(code, errno.EINVAL)
            self.assertIn(b"TLS_HOSTNAME", payload)
            self.assertIn("white space", sock.getsockopt(client.IPPROTO_TLS, client.TLS_ERROR))
            sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "localhost")
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"ping")
            self.assertEqual(sock.recv(4), b"ping")

    def test_fork_sends_them(self) -> None:
        """
        Before fork() the waiting options are sent, so that a child that
        connects the shared socket has them set, and the parent, which
        still holds none, sends nothing again afterwards (TLS_HOSTNAME is
        refused once the socket is connecting).
        """
        import os

        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock = self.trusting_socket()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    sock.connect(("127.0.0.1", server.port))
                    sock.sendall(b"ping")
                    code = 0 if recv_exactly(sock, 4) == b"ping" else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0)
            self.assertEqual(sock.getsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME), "localhost")
            self.assertIsNone(sock.getsockopt(client.IPPROTO_TLS, client.TLS_ERROR))

    def test_malformed_options(self) -> None:
        """
        Options cut short, or bytes after them: EINVAL, nothing set, nothing
        connected.
        """
        from ssa import wire

        sock = self.trusting_socket(hostname=None)
        whole = wire.encode_options([(client.IPPROTO_TLS, client.TLS_HOSTNAME, b"localhost\0")])
        for options in (whole[:-1], whole + b"x", b"\0"):
            code, payload = self.raw_connect(sock, 1, options)
            self.assertEqual(code, errno.EINVAL)
            self.assertIn(b"malformed CONNECT request", payload)
        self.assertRaises(OSError, sock.getsockopt, client.IPPROTO_TLS, client.TLS_HOSTNAME)


def delaying_relay(testcase, target: tuple[str, int], delay: float) -> int:
    """
    A TCP relay on loopback that waits C{delay} seconds before passing a
    connection on to C{target}, so a handshake is reliably still running
    for that long.

    @return: the relay's port.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    testcase.addCleanup(listener.close)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        time.sleep(delay)
        upstream = socket.create_connection(target)
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()
        testcase.addCleanup(conn.close)
        testcase.addCleanup(upstream.close)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


class NonblockingTests(DaemonTestCase):
    """
    Nonblocking connect: EINPROGRESS, EALREADY, then writable.
    """

    def test_nonblocking_connect(self) -> None:
        """
        The descriptor turns writable when connected; SO_ERROR is 0; data
        flows; a second connect says EOPNOTSUPP.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            relay = delaying_relay(self, server.address, 0.5)
            sock = self.trusting_socket(nonblocking=True)
            fd = sock.fileno()
            self.assertEqual(sock.connect_ex(("127.0.0.1", relay)), errno.EINPROGRESS)
            self.assertEqual(sock.connect_ex(("127.0.0.1", relay)), errno.EALREADY)
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_WRITE)
                self.assertEqual(selector.select(0.1), [], "writable while still connecting")
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_WRITE)
                self.assertTrue(selector.select(10), "the socket never became writable")
                self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0)
                self.assertEqual(sock.fileno(), fd)
                sock.sendall(b"hello")
                selector.modify(sock, selectors.EVENT_READ)
                self.assertTrue(selector.select(10))
                self.assertEqual(sock.recv(100), b"hello")
            self.assertEqual(sock.connect_ex(("127.0.0.1", server.port)), errno.EOPNOTSUPP)

    def test_nonblocking_failure(self) -> None:
        """
        A failing nonblocking connect also turns writable, and SO_ERROR
        gives the errno once.
        """
        sock = self.trusting_socket(nonblocking=True)
        self.assertEqual(sock.connect_ex(("127.0.0.1", free_port())), errno.EINPROGRESS)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE)
            self.assertTrue(selector.select(10))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), errno.ECONNABORTED)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0)
        self.assertIn("refused", sock.get_error())
        self.assertEqual(sock.connect_ex(("127.0.0.1", 1)), errno.EBADFD)


for_each_backend(globals(), ConnectTests, FailureTests, NonblockingTests)
