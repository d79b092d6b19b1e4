"""
Nothing is lost at the moment a connection changes hands (issue 17, item
1): the read that completes a handshake may carry the peer's first data
too, and a blocked C{accept()} or C{connect()} is answered inside that
very read. These tests make that happen on purpose (the handshake's last
flight and the first data in one TCP write) and the way real programs
do (curl against a minimal server, one at a time and fifty at once).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from ssa import client, wire

from .helpers import DaemonTestCase, for_each_backend

TLS = client.IPPROTO_TLS
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def pump(tls: ssl.SSLObject, outgoing: ssl.MemoryBIO, incoming: ssl.MemoryBIO, sock: socket.socket) -> None:
    """
    Run C{tls}'s handshake over C{sock}, sending each flight in one write,
    and stop before sending the last one (it stays in C{outgoing}).
    """
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the peer closed during the handshake")
            incoming.write(data)


def read_until_closed(tls: ssl.SSLObject, outgoing: ssl.MemoryBIO, incoming: ssl.MemoryBIO,
                      sock: socket.socket) -> bytes:
    """
    Read plaintext until the peer's close_notify (or TCP's end).
    """
    received = b""
    while True:
        try:
            chunk = tls.read(65536)
            if not chunk:
                return received
            received += chunk
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            return received
        if outgoing.pending:
            sock.sendall(outgoing.read())
        data = sock.recv(65536)
        if not data:
            return received
        incoming.write(data)


class RawControl:
    """
    A control connection spoken by hand, so requests can be pipelined.
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.decoder = wire.FrameDecoder()
        self.fds: list[int] = []
        self.frames: list[wire.Frame] = []

    def send(self, op: int, tag: int, socket_id: int, body: bytes) -> None:
        self.sock.sendall(wire.encode_frame(op, tag, socket_id, body))

    def reply(self, tag: int) -> tuple[int, bytes]:
        while True:
            for frame in self.frames:
                if frame.tag == tag:
                    self.frames.remove(frame)
                    return wire.decode_reply_body(frame.body)
            data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    self.fds.extend(int.from_bytes(payload[i:i + 4], "little") for i in range(0, len(payload), 4))
            if not data:
                raise ConnectionError("the daemon closed the control connection")
            self.frames.extend(self.decoder.feed(data))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.sock.close()


class AcceptDeliveryTests(DaemonTestCase):
    """
    The server role: an accepted socket used at once.
    """

    def test_request_in_the_handshakes_last_read(self) -> None:
        """
        A blocked accept() is answered inside the read that completes the
        handshake; the client's first data came in that same read (its
        Finished and its request in one TCP write) and reaches the
        application whole.
        """
        server = self.listener()
        port = server.getsockname()[1]
        control = RawControl(self.daemon.socket_path)
        self.addCleanup(control.close)
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            context = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
            context.minimum_version = context.maximum_version = version
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
            tcp = socket.create_connection(("127.0.0.1", port), timeout=30)
            self.addCleanup(tcp.close)
            pump(tls, outgoing, incoming, tcp)
            # The ACCEPT is waiting in the daemon once the request after it
            # on the same connection is answered (in order, one reader).
            control.send(wire.Op.ACCEPT, 1, server.id, wire.ACCEPT_FLAGS.pack(0))
            control.send(wire.Op.GETSOCKOPT, 2, server.id, wire.OPTION.pack(TLS, client.TLS_ID))
            control.reply(2)
            request = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
            tls.write(request)
            tcp.sendall(outgoing.read())  # Finished and the request, one write
            code, payload = control.reply(1)
            self.assertEqual(code, 0, payload)
            (accepted_id,) = wire.NEW_SOCKET.unpack_from(payload)
            plain = socket.socket(fileno=control.fds.pop())
            plain.settimeout(30)
            received = b""
            while not received.endswith(b"\r\n\r\n"):
                chunk = plain.recv(65536)
                self.assertTrue(chunk, f"{version.name}: end of stream after {received!r}")
                received += chunk
            self.assertEqual(received, request)
            plain.sendall(RESPONSE)
            plain.close()
            control.send(wire.Op.CLOSE, 3, accepted_id, b"")
            self.assertEqual(control.reply(3)[0], 0)
            self.assertEqual(read_until_closed(tls, outgoing, incoming, tcp), RESPONSE, version.name)

    def serve_http(self, server: client.SSASocket, errors: list) -> None:
        """
        The minimal server of the report: accept, read the request up to
        the blank line (no control call first), reply, close at once.
        """
        def handle(conn: client.SSASocket) -> None:
            try:
                with conn:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(4096)
                        if not chunk:
                            raise ConnectionError(f"end of stream after {request!r}")
                        request += chunk
                    conn.sendall(RESPONSE)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        def run() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

        threading.Thread(target=run, daemon=True).start()

    def curl(self, port: int) -> bytes:
        cafile = os.path.join(self.tmp, "ca.pem")
        if not os.path.exists(cafile):
            with open(cafile, "wb") as f:
                f.write(self.ca.cert_pem())
        done = subprocess.run(
            ["curl", "-sS", "-m", "20", "--cacert", cafile, f"https://localhost:{port}/"],
            capture_output=True, check=False,
        )
        return done.stdout + done.stderr

    def test_sequential_curls(self) -> None:
        """
        Twenty curls, one at a time: each gets the whole reply.
        """
        server = self.listener()
        errors: list = []
        self.serve_http(server, errors)
        port = server.getsockname()[1]
        results = [self.curl(port) for _ in range(20)]
        self.assertEqual([r for r in results if r != b"hello"], [])
        self.assertEqual(errors, [])

    def test_concurrent_curls(self) -> None:
        """
        Fifty curls at once: each gets the whole reply.
        """
        server = self.listener()
        errors: list = []
        self.serve_http(server, errors)
        port = server.getsockname()[1]
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda _: self.curl(port), range(50)))
        self.assertEqual([r for r in results if r != b"hello"], [])
        self.assertEqual(errors, [])


class ListenerCloseTests(DaemonTestCase):
    """
    Closing a listener lets its address go before close() returns.
    """

    def test_closed_listener_refuses_and_frees_its_port(self) -> None:
        for _ in range(20):
            server = self.listener(backlog=8)
            port = server.getsockname()[1]
            server.close()
            self.assertRaises(ConnectionRefusedError, socket.create_connection, ("127.0.0.1", port), 10)
            again = self.tls_socket()
            again.bind(("127.0.0.1", port))
            again.close()


class ConnectDeliveryTests(DaemonTestCase):
    """
    The client role: the server's first data in the read that completes
    the client's handshake.
    """

    def test_banner_in_the_handshakes_last_read(self) -> None:
        """
        A TLS 1.2 server sends its Finished and a banner in one TCP write
        (a server that speaks first); the application reads the banner.
        """
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        chain = os.path.join(self.tmp, "chain.pem")
        key = os.path.join(self.tmp, "key.pem")
        with open(chain, "wb") as f:
            f.write(self.server_key.chain_pem())
        with open(key, "wb") as f:
            f.write(self.server_key.key_pem())
        context.load_cert_chain(chain, key)
        banner = b"220 ready\r\n"
        outcome: list = []

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(30)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing, server_side=True)
            try:
                while True:
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        if outgoing.pending:
                            conn.sendall(outgoing.read())
                        incoming.write(conn.recv(65536))
                tls.write(banner)
                conn.sendall(outgoing.read())  # Finished and the banner, one write
                outcome.append(read_until_closed(tls, outgoing, incoming, conn))
            except Exception as e:  # noqa: BLE001
                outcome.append(e)
            finally:
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        sock = self.trusting_socket()
        sock.setsockopt(TLS, client.TLS_SESSION_REUSE, 0)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", listener.getsockname()[1]))
        self.assertEqual(sock.recv(100), banner)
        sock.sendall(b"QUIT\r\n")
        sock.close()
        thread.join(30)
        self.assertEqual(outcome, [b"QUIT\r\n"])


for_each_backend(globals(), AcceptDeliveryTests, ConnectDeliveryTests)
