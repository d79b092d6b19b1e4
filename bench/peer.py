"""
The benchmark's remote TLS peers.  Both listen on two loopback ports, TLS 1.3
only, with an ECDSA P-256 leaf from L{ssa.testing.certs}:

- C{full_port} never lets a connection resume (no tickets, no session cache),
  so every handshake on it is a full one whatever the client offers;
- C{resume_port} issues TLS 1.3 tickets (two per full handshake, the
  OpenSSL default) and resumes them.

Each counts, per port, the handshakes it completed and how many of them
resumed a session I{as the server sees it}, in a 32-byte file the driver
reads (four native-endian u64: full.all, full.resumed, resume.all,
resume.resumed), so a "full" figure is known to be full and a "resumption"
figure is known to have resumed.

- L{CPeer} (the default): C{bench/peer.c}, OpenSSL with a thread per
  connection, compiled with C{cc} at bench time (needs C{libssl-dev}).
- L{PythonPeer}: the same on stdlib C{ssl}, thread per connection, in its
  own process (it costs several times the C peer's CPU per connection).

The protocol is a sequence of requests on one connection, each a 9-byte
header C{op (1 byte) + n (u64, big-endian)}:

- C{U}: upload; the peer reads and discards C{n} bytes, then answers C{K}.
- C{D}: download; the peer sends C{n} zero bytes.
- C{E}: echo; the peer reads C{n} bytes and sends them back.

EOF ends the connection.

Run alone: C{python -m bench.peer [c|python]} prints the ports and the CA path.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HEADER = struct.Struct("!cQ")
COUNTERS = struct.Struct("=4Q")
CHUNK = 256 * 1024
SOURCE = Path(__file__).resolve().parent / "peer.c"


def make_certs(directory: str) -> tuple[str, str, str]:
    """
    Write a fresh CA and a localhost/127.0.0.1 ECDSA P-256 server cert.

    @return: (ca.pem, server.pem, server.key) paths.
    """
    from ssa.testing.certs import CertificateAuthority

    ca = CertificateAuthority.create()
    server = ca.issue_server("localhost", "127.0.0.1")
    files = server.write(directory, "server")
    ca_path = str(ca.write_root(directory, "ca"))
    return ca_path, str(files.cert), str(files.key)


def _recv_exact(conn: ssl.SSLSocket, buf: memoryview, n: int) -> bool:
    got = 0
    while got < n:
        k = conn.recv_into(buf[got:n])
        if not k:
            return False
        got += k
    return True


def _serve_one(raw: socket.socket, context: ssl.SSLContext, count) -> None:
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        conn = context.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError):
        raw.close()
        return
    count(conn.session_reused)
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


def _python_context(cert: str, key: str, resume: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    if not resume:
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    return context


def _run_python(cert: str, key: str, socks: list[socket.socket], counters_path: str) -> None:
    fd = os.open(counters_path, os.O_RDWR)
    shared = mmap.mmap(fd, COUNTERS.size)
    lock = threading.Lock()
    threading.stack_size(256 * 1024)

    def counter(index: int):
        def count(resumed: bool) -> None:
            with lock:
                values = list(COUNTERS.unpack_from(shared))
                values[index] += 1
                values[index + 1] += int(resumed)
                COUNTERS.pack_into(shared, 0, *values)
        return count

    def accept_loop(sock: socket.socket, context: ssl.SSLContext, count) -> None:
        while True:
            raw, _ = sock.accept()
            threading.Thread(target=_serve_one, args=(raw, context, count), daemon=True).start()

    loops = [threading.Thread(target=accept_loop,
                              args=(sock, _python_context(cert, key, i == 1), counter(2 * i)))
             for i, sock in enumerate(socks)]
    for t in loops:
        t.start()
    for t in loops:
        t.join()


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock


class Peer:
    """
    What both peers share: certificates, ports, the counters file.
    C{start()} returns self; then C{full_port}, C{resume_port}, C{ca_path},
    C{pid}; C{handshakes(resume)} gives (all, resumed) on that port.
    """

    kind = ""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or tempfile.mkdtemp(prefix="ssa-bench-peer-")
        self.ca_path, self.cert_path, self.key_path = make_certs(self.directory)
        self.counters_path = os.path.join(self.directory, f"{self.kind}-peer-counters")
        Path(self.counters_path).write_bytes(bytes(COUNTERS.size))

    def port(self, resume: bool) -> int:
        """The port for full handshakes, or the one that resumes."""
        return self.resume_port if resume else self.full_port

    def handshakes(self, resume: bool) -> tuple[int, int]:
        """(handshakes completed, of which resumed) on one port, as the peer counted them."""
        with open(self.counters_path, "rb") as f:
            values = COUNTERS.unpack(f.read(COUNTERS.size))
        return (values[2], values[3]) if resume else (values[0], values[1])

    def start(self) -> Peer:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class PythonPeer(Peer):
    """The peer on stdlib C{ssl}, in a forked child process."""

    kind = "python"

    def start(self) -> PythonPeer:
        socks = [_listen(), _listen()]
        self.full_port, self.resume_port = (s.getsockname()[1] for s in socks)
        self.process = mp.get_context("fork").Process(
            target=_run_python, args=(self.cert_path, self.key_path, socks, self.counters_path),
            daemon=True,
        )
        self.process.start()
        for s in socks:
            s.close()
        self.pid = self.process.pid
        return self

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)


def build_c_peer(directory: str) -> str:
    """Compile C{bench/peer.c} into C{directory}; return the executable's path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("the C peer needs a C compiler and libssl-dev (or use --peer python)")
    exe = os.path.join(directory, "ssa-bench-peer")
    subprocess.run([cc, "-O2", "-o", exe, str(SOURCE), "-lssl", "-lcrypto", "-lpthread"], check=True)
    return exe


class CPeer(Peer):
    """The peer in C (C{bench/peer.c}), built when started."""

    kind = "c"

    def start(self) -> CPeer:
        exe = build_c_peer(self.directory)
        self.process = subprocess.Popen(
            [exe, self.cert_path, self.key_path, self.counters_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline().split()
        if len(line) != 2:
            self.process.kill()
            raise SystemExit("the C peer did not start")
        self.full_port, self.resume_port = int(line[0]), int(line[1])
        self.pid = self.process.pid
        return self

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)
        self.process.stdout.close()


PEERS = {"c": CPeer, "python": PythonPeer}


def make_peer(kind: str, directory: str | None = None) -> Peer:
    """An unstarted peer of C{kind} (C{c} or C{python})."""
    return PEERS[kind](directory)


if __name__ == "__main__":
    p = make_peer(sys.argv[1] if len(sys.argv) > 1 else "c").start()
    print(f"full port {p.full_port} resume port {p.resume_port} ca {p.ca_path}", flush=True)
    p.process.wait() if isinstance(p, CPeer) else p.process.join()
