"""
End to end, the server role: applications built on C{ssa.client} bind,
listen and accept; real clients (curl, openssl s_client, stdlib ssl) talk
to them through a real daemon (issue: server role).
"""

from __future__ import annotations

import errno
import http.server
import os
import selectors
import socket
import socketserver
import ssl
import subprocess
import threading
import time

from ssa import client
from ssa.testing.peers import pseudo_random_bytes

from .helpers import DaemonTestCase, digest, for_each_backend

TLS = client.IPPROTO_TLS


class SSAHTTPServer(http.server.ThreadingHTTPServer):
    """
    The stdlib's HTTP server, on an SSA socket: TLS without a TLS library.
    """

    def __init__(self, daemon_path: str, chain: bytes, key: bytes, handler, extra=None) -> None:
        socketserver.TCPServer.__init__(self, ("127.0.0.1", 0), handler, bind_and_activate=False)
        self.socket = client.socket(socket.AF_INET, socket.SOCK_STREAM, TLS, path=daemon_path)
        self.socket.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, chain)
        self.socket.setsockopt(TLS, client.TLS_PRIVATE_KEY, key)
        for name, value in (extra or {}).items():
            self.socket.setsockopt(TLS, name, value)
        self.socket.bind(self.server_address)
        self.socket.listen(64)
        self.server_address = self.socket.getsockname()


class Hello(http.server.BaseHTTPRequestHandler):
    """
    Answers every GET with a page naming what the connection negotiated.
    """

    def do_GET(self) -> None:
        sni = self.request.getsockopt(TLS, client.TLS_HOSTNAME, 256).rstrip(b"\0")
        body = b"hello over ssa, sni=" + sni + b"\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        """
        Quiet.
        """


def echo_server(listener: client.SSASocket, count: int, errors: list) -> threading.Thread:
    """
    Accept C{count} connections, each echoed in its own thread until EOF.
    """
    def serve(conn: client.SSASocket) -> None:
        try:
            with conn:
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
        except BaseException as e:
            errors.append(e)

    def run() -> None:
        threads = []
        for _ in range(count):
            conn, _ = listener.accept()
            t = threading.Thread(target=serve, args=(conn,))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


class ServerTests(DaemonTestCase):
    """
    Servers built on C{ssa.client}.
    """

    daemon_args = ["--handshake-timeout", "2"]

    def ca_file(self) -> str:
        """
        This test's CA certificate as a file.
        """
        path = os.path.join(self.tmp, "ca.pem")
        with open(path, "wb") as f:
            f.write(self.ca.cert_pem())
        return path

    def s_client(self, port: int, *args: str, data: bytes = b"") -> subprocess.CompletedProcess:
        """
        Run C{openssl s_client} against C{port}.
        """
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", self.ca_file(),
             "-verify_return_error", "-ign_eof", *args],
            input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
        )

    def test_curl_fetches_a_page(self) -> None:
        """
        C{curl --cacert} fetches a page from the stdlib HTTP server running
        on an SSA socket; the page shows the SNI curl sent.
        """
        server = SSAHTTPServer(self.daemon.socket_path, self.server_key.chain_pem(), self.server_key.key_pem(), Hello)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        port = server.server_address[1]
        result = subprocess.run(
            ["curl", "-sS", "--cacert", self.ca_file(), "--resolve", f"localhost:{port}:127.0.0.1",
             f"https://localhost:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"hello over ssa, sni=localhost\n")

    def test_client_certificate_required(self) -> None:
        """
        With TLS_REQUEST_PEER_AUTH, s_client without a certificate is
        refused and never reaches the application; with one it is accepted
        and TLS_PEER_IDENTITY names it.
        """
        listener = self.listener(TLS_REQUEST_PEER_AUTH=1, TLS_TRUSTED_PEER_CERTIFICATES=self.ca.cert_pem())
        listener.setblocking(False)
        port = listener.getsockname()[1]
        refused = self.s_client(port, "-servername", "localhost", data=b"should not arrive\n")
        self.assertNotEqual(refused.returncode, 0)
        self.assertRaises(BlockingIOError, listener.accept)
        client_key = self.ca.issue_client("alice")
        cert = os.path.join(self.tmp, "alice.pem")
        key = os.path.join(self.tmp, "alice.key")
        with open(cert, "wb") as f:
            f.write(client_key.chain_pem())
        with open(key, "wb") as f:
            f.write(client_key.key_pem())
        results = {}
        runner = threading.Thread(target=lambda: results.update(r=self.s_client(
            port, "-servername", "localhost", "-cert", cert, "-key", key, data=b"hi from alice\n")))
        runner.start()
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            self.assertTrue(selector.select(20))
        conn, address = listener.accept()
        self.addCleanup(conn.close)
        self.assertEqual(address[0], "127.0.0.1")
        self.assertIn("CN=alice", conn.getsockopt(TLS, client.TLS_PEER_IDENTITY, 512).decode())
        self.assertIn(client_key.cert_pem().strip(), conn.getsockopt(TLS, client.TLS_PEER_CERTIFICATE_CHAIN, 65536))
        conn.settimeout(10)
        self.assertEqual(conn.recv(100), b"hi from alice\n")
        conn.sendall(b"welcome\n")
        conn.close()
        runner.join(30)
        self.assertIn(b"welcome", results["r"].stdout)

    def test_alpn_and_sni(self) -> None:
        """
        The server's ALPN preference wins; the SNI reaches TLS_HOSTNAME;
        the chosen protocol is readable on the accepted socket.
        """
        listener = self.listener(TLS_ALPN="http/1.1,h2")
        port = listener.getsockname()[1]
        results = {}
        runner = threading.Thread(target=lambda: results.update(r=self.s_client(
            port, "-servername", "localhost", "-alpn", "h2,http/1.1", data=b"x")))
        runner.start()
        conn, _ = listener.accept()
        self.addCleanup(conn.close)
        self.assertEqual(conn.getsockopt(TLS, client.TLS_ALPN, 64).rstrip(b"\0"), b"http/1.1")
        self.assertEqual(conn.getsockopt(TLS, client.TLS_HOSTNAME, 256).rstrip(b"\0"), b"localhost")
        self.assertEqual(conn.getsockopt(TLS, client.TLS_CHOSEN_VERSION), client.TLS_1_3)
        self.assertTrue(conn.getsockopt(TLS, client.TLS_CHOSEN_CIPHER, 256).startswith(b"TLS_"))
        self.assertEqual(self.assertRaises(OSError, conn.getsockopt, TLS, client.TLS_PEER_IDENTITY, 256).errno,
                         errno.ENOTCONN)
        conn.close()
        runner.join(30)
        self.assertIn(b"ALPN protocol: http/1.1", results["r"].stdout)

    def test_alpn_client_role(self) -> None:
        """
        An SSA client offering ALPN to an SSA server gets the server's pick.
        """
        listener = self.listener(TLS_ALPN="h2")
        port = listener.getsockname()[1]
        errors: list = []
        thread = echo_server(listener, 1, errors)
        sock = self.trusting_socket()
        sock.setsockopt(TLS, client.TLS_ALPN, "http/1.1,h2")
        sock.connect(("127.0.0.1", port))
        self.assertEqual(sock.getsockopt(TLS, client.TLS_ALPN, 64).rstrip(b"\0"), b"h2")
        sock.close()
        thread.join(30)
        self.assertEqual(errors, [])

    def test_200_clients_and_stalled_ones(self) -> None:
        """
        200 clients at once each get their own echo back; clients that open
        TCP and never handshake neither delay them nor reach the
        application, and are dropped after the handshake timeout.
        """
        listener = self.listener(backlog=256)
        port = listener.getsockname()[1]
        stalled = []
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port))
            stalled.append(s)
            self.addCleanup(s.close)
        errors: list = []
        thread = echo_server(listener, 200, errors)
        context = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
        results: dict[int, bool] = {}

        def one(i: int) -> None:
            try:
                payload = pseudo_random_bytes(16 * 1024 + i, seed=i)
                with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(payload)
                        got = b""
                        while len(got) < len(payload):
                            got += tls.recv(65536)
                        tls.unwrap()
                results[i] = digest(got) == digest(payload)
            except BaseException as e:
                errors.append(e)

        start = time.monotonic()
        clients = [threading.Thread(target=one, args=(i,)) for i in range(200)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(120)
        thread.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 200)
        self.assertTrue(all(results.values()))
        for s in stalled:
            s.settimeout(10)
            try:
                self.assertEqual(s.recv(10), b"", "a stalled client is dropped after the handshake timeout")
            except ConnectionResetError:
                pass  # dropped with a reset: also dropped
        self.assertLess(time.monotonic() - start, 60)

    def test_backlog_is_honoured(self) -> None:
        """
        With backlog 2, at most 2 handshaken connections wait for accept();
        the others wait in TCP until there is room, and all are served.
        """
        listener = self.listener(backlog=2)
        port = listener.getsockname()[1]
        context = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
        done: list[bytes] = []

        def one(i: int) -> None:
            with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                                     server_hostname="localhost") as tls:
                tls.sendall(b"%d" % i)
                done.append(tls.recv(10))

        clients = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in clients:
            t.start()
        time.sleep(1.5)
        peeked = socket.socket(fileno=os.dup(listener.fileno()))
        try:
            queued = peeked.recv(100, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        finally:
            peeked.close()
        # The daemon stops taking connections from the kernel once it holds
        # the backlog; what the kernel had already queued (its own backlog
        # of the same size, plus one) may come with the last batch.
        self.assertGreaterEqual(len(queued), 2)
        self.assertLess(len(queued), 6, "the backlog bounds the queue")
        for _ in range(6):
            conn, _ = listener.accept()
            conn.sendall(b"ok:" + conn.recv(10))
            conn.close()
        for t in clients:
            t.join(30)
        self.assertEqual(sorted(done), sorted(b"ok:%d" % i for i in range(6)))

    def test_selectors_server_50_clients(self) -> None:
        """
        A nonblocking server on C{selectors}, one thread, serves 50 clients.
        """
        listener = self.listener()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        context = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
        results: dict[int, bytes] = {}

        def one(i: int) -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"client %d\n" % i)
                    results[i] = tls.recv(100)

        clients = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in clients:
            t.start()
        served = 0
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ, "listener")
            deadline = time.monotonic() + 60
            while served < 50 and time.monotonic() < deadline:
                for key, _ in selector.select(1):
                    if key.data == "listener":
                        try:
                            conn, _ = listener.accept()
                        except BlockingIOError:
                            continue
                        conn.setblocking(False)
                        selector.register(conn, selectors.EVENT_READ, "conn")
                    else:
                        conn = key.fileobj
                        data = conn.recv(100)
                        conn.sendall(b"echo " + data)
                        selector.unregister(conn)
                        conn.close()
                        served += 1
        for t in clients:
            t.join(60)
        self.assertEqual(served, 50)
        self.assertEqual(sorted(results.values()), sorted(b"echo client %d\n" % i for i in range(50)))


class ServerErrorTests(DaemonTestCase):
    """
    The server role's errnos.
    """

    def test_key_and_chain_errors(self) -> None:
        """
        Missing paths, mismatched keys and keys without chains.
        """
        sock = self.tls_socket()
        missing = os.path.join(self.tmp, "missing.pem")
        self.assertEqual(self.assertRaises(OSError, sock.setsockopt, TLS, client.TLS_CERTIFICATE_CHAIN, missing).errno, errno.EINVAL)
        self.assertEqual(self.assertRaises(OSError, sock.setsockopt, TLS, client.TLS_PRIVATE_KEY, missing).errno, errno.EBADF)
        self.assertEqual(self.assertRaises(OSError, sock.setsockopt, TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem()).errno, errno.EPROTO)
        sock.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        other = self.ca.issue_server("localhost")
        failure = self.assertRaises(OSError, sock.setsockopt, TLS, client.TLS_PRIVATE_KEY, other.key_pem())
        self.assertEqual(failure.errno, errno.EPROTO)
        self.assertIn("does not match", str(failure))
        rsa = self.ca.issue_server("localhost", key_type="rsa")
        failure = self.assertRaises(OSError, sock.setsockopt, TLS, client.TLS_PRIVATE_KEY, rsa.key_pem())
        self.assertEqual(failure.errno, errno.EPROTO)
        self.assertEqual(self.assertRaises(OSError, sock.setsockopt, TLS, client.TLS_PRIVATE_KEY, b"garbage").errno, errno.EBADF)
        sock.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())

    def test_files_directories_and_two_key_types(self) -> None:
        """
        Chains from a file and a directory; an RSA and an ECDSA pair on one
        listener, each client getting the one it supports.
        """
        rsa = self.ca.issue_server("localhost", key_type="rsa")
        files = rsa.write(self.tmp, "rsa")
        chain_dir = os.path.join(self.tmp, "rsa-chain")
        os.mkdir(chain_dir)
        os.rename(files.cert, os.path.join(chain_dir, "chain.pem"))
        sock = self.tls_socket()
        sock.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, chain_dir)
        sock.setsockopt(TLS, client.TLS_PRIVATE_KEY, str(files.key))
        sock.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        sock.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        errors: list = []
        thread = echo_server(sock, 2, errors)
        seen = []
        for cipher in ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"]:
            context = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(cipher)
            with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as tls:
                seen.append(tls.cipher()[0])
                tls.sendall(b"x")
                self.assertEqual(tls.recv(1), b"x")
                tls.unwrap()
        thread.join(30)
        self.assertEqual(seen, ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"])
        self.assertEqual(errors, [])

    def test_state_errors(self) -> None:
        """
        listen without a certificate EPROTO; accept when not listening
        EINVAL; bind twice EINVAL; connect on a listener EOPNOTSUPP;
        setsockopt on a listener EOPNOTSUPP; the OS's bind errno.
        """
        sock = self.tls_socket()
        failure = self.assertRaises(OSError, sock.listen)
        self.assertEqual(failure.errno, errno.EPROTO)
        self.assertIn("TLS_CERTIFICATE_CHAIN", str(failure))
        self.assertEqual(self.assertRaises(OSError, sock.accept).errno, errno.EINVAL)
        sock.bind(("127.0.0.1", 0))
        self.assertEqual(self.assertRaises(OSError, sock.bind, ("127.0.0.1", 0)).errno, errno.EINVAL)
        taken = self.tls_socket()
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        self.assertEqual(self.assertRaises(OSError, taken.bind, busy.getsockname()).errno, errno.EADDRINUSE)
        taken.bind(("127.0.0.1", 0))
        listener = self.tls_socket()
        listener.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        listener.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())
        listener.listen()
        self.assertNotEqual(listener.getsockname()[1], 0)
        self.assertEqual(listener.connect_ex(("127.0.0.1", 1)), errno.EOPNOTSUPP)
        self.assertEqual(self.assertRaises(OSError, listener.setsockopt, TLS, client.TLS_HOSTNAME, "x").errno, errno.EOPNOTSUPP)
        self.assertEqual(self.assertRaises(OSError, listener.listen).errno, errno.EOPNOTSUPP)

    def test_close_listener_wakes_blocked_accept(self) -> None:
        """
        An accept() blocked in another thread fails with EBADF when the
        listener is closed, and the daemon keeps serving.
        """
        listener = self.tls_socket()
        listener.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        listener.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())
        listener.listen()
        outcome: list[BaseException] = []

        def accept() -> None:
            try:
                listener.accept()
            except OSError as e:
                outcome.append(e)

        thread = threading.Thread(target=accept)
        thread.start()
        time.sleep(0.3)
        listener.close()
        thread.join(10)
        self.assertFalse(thread.is_alive(), "accept() still blocked after close")
        self.assertEqual([e.errno for e in outcome], [errno.EBADF])
        self.assertEqual(self.tls_socket().getsockopt(TLS, client.TLS_VERSION_MIN), client.TLS_1_2)

    def test_vanished_accepter_loses_no_connection(self) -> None:
        """
        A process that sent a blocking ACCEPT and died before a connection
        came loses nothing for the next accept(): the connection waits for
        it instead of going to the dead waiter.
        """
        from ssa import wire

        listener = self.tls_socket()
        listener.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        listener.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ghost = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ghost.connect(self.daemon.socket_path)
        ghost.sendall(wire.encode_frame(wire.Op.ACCEPT, 1, listener.id, wire.ACCEPT_FLAGS.pack(0)))
        time.sleep(0.2)
        ghost.close()
        time.sleep(0.2)
        context = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
        port = listener.getsockname()[1]
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname="localhost") as tls:
            tls.sendall(b"still here")
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                self.assertEqual(conn.recv(100), b"still here")

    def test_close_listener_drops_undelivered(self) -> None:
        """
        Closing a listener closes the connections it had not delivered.
        """
        listener = self.tls_socket()
        listener.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        listener.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        context = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
        tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
        self.addCleanup(tls.close)
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            self.assertTrue(selector.select(10))
        listener.close()
        self.assertRaises((ssl.SSLError, OSError, AssertionError), lambda: self.assertNotEqual(tls.recv(10), b""))


for_each_backend(globals(), ServerTests, ServerErrorTests)
