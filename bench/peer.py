"""
The benchmark's remote TLS peer: a thread-per-connection server on stdlib
C{ssl} (TLS 1.3 only, ECDSA P-256 leaf from L{ssa.testing.certs}) running in
its own process, so it shares no GIL with the driver or the daemon.

The protocol is a sequence of requests on one connection, each a 9-byte
header C{op (1 byte) + n (u64, big-endian)}:

- C{U}: upload; the peer reads and discards C{n} bytes, then answers C{K}.
- C{D}: download; the peer sends C{n} zero bytes.
- C{E}: echo; the peer reads C{n} bytes and sends them back.

EOF ends the connection.  Handshake counters (all, resumed) live in shared
memory so the driver can check that "resumption" really resumed.

Run alone: C{python -m bench.peer} prints the port and the CA path.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import ssl
import struct
import tempfile
import threading

HEADER = struct.Struct("!cQ")
CHUNK = 256 * 1024


def make_certs(directory: str) -> tuple[str, str, str]:
    """
    Write a fresh CA and a localhost/127.0.0.1 ECDSA P-256 server cert.

    @return: (ca.pem, server.pem, server.key) paths.
    """
    from ssa.testing.certs import CertificateAuthority

    ca = CertificateAuthority.create()
    server = ca.issue_server("localhost", "127.0.0.1")
    files = server.write(directory, "server")
    ca_path = os.path.join(directory, "ca.pem")
    with open(ca_path, "wb") as f:
        f.write(ca.cert_pem() if hasattr(ca, "cert_pem") else _pem(ca.cert))
    return ca_path, str(files.cert), str(files.key)


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _recv_exact(conn: ssl.SSLSocket, buf: memoryview, n: int) -> bool:
    got = 0
    while got < n:
        k = conn.recv_into(buf[got:n])
        if not k:
            return False
        got += k
    return True


def _serve_one(raw: socket.socket, context: ssl.SSLContext, counters) -> None:
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        conn = context.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError):
        raw.close()
        return
    with counters.get_lock():
        counters[0] += 1
        if conn.session_reused:
            counters[1] += 1
    buf = memoryview(bytearray(CHUNK))
    zeros = memoryview(bytes(CHUNK))
    head = memoryview(bytearray(HEADER.size))
    try:
        while True:
            if not _recv_exact(conn, head, HEADER.size):
                break
            op, n = HEADER.unpack(head)
            if op == b"U":
                left = n
                while left:
                    k = conn.recv_into(buf, min(CHUNK, left))
                    if not k:
                        return
                    left -= k
                conn.sendall(b"K")
            elif op == b"D":
                left = n
                while left:
                    k = min(CHUNK, left)
                    conn.sendall(zeros[:k])
                    left -= k
            elif op == b"E":
                if n > CHUNK or not _recv_exact(conn, buf, n):
                    break
                conn.sendall(buf[:n])
            else:
                break
    except (OSError, ssl.SSLError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def _run(cert: str, key: str, sock: socket.socket, counters) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    threading.stack_size(256 * 1024)
    while True:
        raw, _ = sock.accept()
        threading.Thread(target=_serve_one, args=(raw, context, counters), daemon=True).start()


class Peer:
    """
    The peer in a child process.  C{start()} returns self; C{port},
    C{ca_path}, C{pid}; C{handshakes()} gives (all, resumed).
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or tempfile.mkdtemp(prefix="ssa-bench-peer-")
        self.ca_path, self.cert_path, self.key_path = make_certs(self.directory)
        self._counters = mp.get_context("fork").Array("q", 2)

    def start(self) -> "Peer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(4096)
        self.port = sock.getsockname()[1]
        self.process = mp.get_context("fork").Process(
            target=_run, args=(self.cert_path, self.key_path, sock, self._counters), daemon=True
        )
        self.process.start()
        sock.close()
        self.pid = self.process.pid
        return self

    def handshakes(self) -> tuple[int, int]:
        with self._counters.get_lock():
            return self._counters[0], self._counters[1]

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)


if __name__ == "__main__":
    p = Peer().start()
    print(f"port {p.port} ca {p.ca_path}", flush=True)
    p.process.join()
