"""
A truncation is never a clean end, in either direction (issue 17, item 3).

Towards the application: when the daemon (or the worker serving a
connection) dies mid-transfer, the application reads what arrived and then
ECONNRESET, never a clean end-of-file; only the peer's close_notify is one.

Towards the peer: an application that dies (rather than calling
C{shutdown}/C{close}) reaches the peer as an abortive close, with no
close_notify, so a partial upload cannot pass for a complete one; an
application that closes, or shuts its stream down, ends cleanly, also
when it only held the raw descriptor.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from ssa import client
from ssa.testing.peers import StdlibTLSServer
from ssa.testing.tls_connection import TLSPeerConnection, TruncatedError
from ssa.testing.tls_server import pseudo_random_bytes

from .helpers import DaemonTestCase, for_each_backend
from .test_e2e_connect import recv_exactly
from .test_workers import WorkersTestCase

TLS = client.IPPROTO_TLS
CHUNK = pseudo_random_bytes(1 << 16, "truncation")
#: More than every buffer between the peer and the application holds.
STREAM = 32 << 20


def stream_handler(conn: TLSPeerConnection) -> None:
    """
    Send L{STREAM} bytes, then close_notify.
    """
    sent = 0
    try:
        while sent < STREAM:
            conn.sendall(CHUNK)
            sent += len(CHUNK)
        conn.close()
    except OSError:
        conn.abort()


def read_to_end(sock: client.SSASocket) -> tuple[int, str]:
    """
    Read until the end; return the bytes read and how it ended: C{"eof"}
    (clean) or the errno's name.
    """
    total = 0
    try:
        while data := sock.recv(1 << 18):
            total += len(data)
    except OSError as e:
        return total, errno.errorcode.get(e.errno or 0, str(e))
    return total, "eof"


class UploadSink:
    """
    A TLS server handler that reads until the end and records how it
    ended: C{"close_notify"}, C{"truncated"} (TCP FIN without
    close_notify) or C{"reset"}.
    """

    def __init__(self) -> None:
        self.outcomes: list[tuple[int, str]] = []
        self.started = threading.Event()
        self.done = threading.Event()

    def __call__(self, conn: TLSPeerConnection) -> None:
        total = 0
        try:
            while data := conn.recv():
                total += len(data)
                if total >= 1 << 20:
                    self.started.set()
            outcome = "close_notify"
        except TruncatedError:
            outcome = "truncated"
        except OSError:
            outcome = "reset"
        self.outcomes.append((total, outcome))
        self.done.set()
        conn.abort()


class DaemonDeathTests(DaemonTestCase):
    """
    The daemon is killed while applications download.
    """

    def test_killed_daemon_is_a_reset(self) -> None:
        """
        SIGKILL the daemon during five transfers: each application reads
        ECONNRESET after what arrived, none a clean end-of-file.
        """
        with StdlibTLSServer(self.server_key, stream_handler) as server:
            socks = []
            for _ in range(5):
                sock = self.trusting_socket()
                sock.connect(("127.0.0.1", server.port))
                self.assertTrue(sock.recv(1 << 16))  # the transfer is under way
                socks.append(sock)
            self.daemon.process.send_signal(signal.SIGKILL)
            self.daemon.process.wait()
            with ThreadPoolExecutor(5) as pool:
                outcomes = list(pool.map(read_to_end, socks))
        for total, how in outcomes:
            self.assertLess(total, STREAM)
            self.assertEqual(how, "ECONNRESET", outcomes)


class HalfClosedTruncationTests(DaemonTestCase):
    """
    A truncation after the application shut down writing.
    """

    def test_truncation_after_half_close_is_a_reset(self) -> None:
        """
        The application sends, shuts down writing; the peer answers and
        closes TCP without close_notify: the application reads the answer,
        then ECONNRESET (its own shutdown does not make the error a clean
        end-of-file).
        """
        def answer_then_truncate(conn: TLSPeerConnection) -> None:
            request = conn.recv_until_eof()
            conn.sendall(b"got " + request)
            conn.close_tcp_without_close_notify()

        with StdlibTLSServer(self.server_key, answer_then_truncate) as server:
            sock = self.trusting_socket()
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"ping")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_exactly(sock, 8), b"got ping")
            self.assertEqual(read_to_end(sock), (0, "ECONNRESET"))


class WorkerDeathTests(WorkersTestCase):
    """
    One worker of two is killed while applications download.
    """

    def test_killed_worker_is_a_reset(self) -> None:
        """
        Twenty transfers spread over both workers; SIGKILL worker 1: its
        transfers end in ECONNRESET, worker 0's complete with a clean end.
        """
        with StdlibTLSServer(self.server_key, stream_handler) as server:
            socks, first = [], []
            for _ in range(20):
                sock = self.trusting_socket()
                sock.connect(("127.0.0.1", server.port))
                first.append(len(sock.recv(1 << 16)))
                self.assertTrue(first[-1])
                socks.append(sock)
            served = [sock.id >> 56 for sock in socks]
            if 1 not in served:
                self.skipTest(f"the kernel gave worker 1 none of 20 connections ({served})")
            os.kill(self.pids()[1], signal.SIGKILL)
            with ThreadPoolExecutor(20) as pool:
                outcomes = list(pool.map(read_to_end, socks))
        for worker, before, (total, how) in zip(served, first, outcomes):
            if worker == 1:
                self.assertEqual(how, "ECONNRESET", (worker, total, how))
            else:
                self.assertEqual((before + total, how), (STREAM, "eof"), worker)


class ApplicationDeathTests(DaemonTestCase):
    """
    How an application's end reaches the peer.
    """

    def upload_in_child(self, port: int, finish: str) -> int:
        """
        Fork a process that connects through the daemon and uploads; with
        C{finish} C{"hang"} it uploads until killed, C{"shutdown"} it sends
        2 MiB, shuts down writing and then hangs, C{"handover"} it gives
        its plaintext descriptor to a child that sends 2 MiB and shuts
        down writing, and exits without closing anything.
        """
        path, ca = self.daemon.socket_path, self.ca.cert_pem()
        pid = os.fork()
        if pid:
            return pid
        try:
            sock = client.socket(path=path)
            sock.setsockopt(TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, ca)
            sock.setsockopt(TLS, client.TLS_HOSTNAME, "localhost")
            sock.connect(("127.0.0.1", port))
            if finish == "hang":
                while True:
                    sock.sendall(CHUNK)
            if finish == "shutdown":
                sock.sendall(CHUNK * 32)
                sock.shutdown(socket.SHUT_WR)
                signal.pause()
            if finish == "handover":
                raw = os.dup(sock.fileno())
                if os.fork() == 0:
                    _write_all(raw, CHUNK * 32)
                    socket.socket(fileno=raw).shutdown(socket.SHUT_WR)
                    os._exit(0)
                os.wait()
                os._exit(0)  # neither close() nor CLOSE: the daemon sees the connection end
        finally:
            os._exit(1)

    def test_killed_uploader_is_an_abortive_close(self) -> None:
        """
        An application killed mid-upload: the peer gets no close_notify.
        """
        sink = UploadSink()
        with StdlibTLSServer(self.server_key, sink) as server:
            pid = self.upload_in_child(server.port, "hang")
            self.assertTrue(sink.started.wait(30))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.assertTrue(sink.done.wait(30))
        (total, how), = sink.outcomes
        self.assertIn(how, ("reset", "truncated"), total)
        self.assertIn("the application ended without closing its socket", self.daemon.log())

    def test_shut_down_then_killed_is_clean(self) -> None:
        """
        An application that shut its stream down has ended it: its death
        afterwards changes nothing, the peer got close_notify.
        """
        sink = UploadSink()
        with StdlibTLSServer(self.server_key, sink) as server:
            pid = self.upload_in_child(server.port, "shutdown")
            self.assertTrue(sink.done.wait(30))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.assertEqual(sink.outcomes, [(len(CHUNK) * 32, "close_notify")])

    def test_raw_descriptor_holder_ends_cleanly(self) -> None:
        """
        A process that holds only the plaintext descriptor writes and shuts
        it down; the process that opened the socket exits without closing:
        the peer gets everything and close_notify.
        """
        sink = UploadSink()
        with StdlibTLSServer(self.server_key, sink) as server:
            pid = self.upload_in_child(server.port, "handover")
            _, status = os.waitpid(pid, 0)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0)
            self.assertTrue(sink.done.wait(30))
        self.assertEqual(sink.outcomes, [(len(CHUNK) * 32, "close_notify")])

    def test_closed_uploader_is_clean(self) -> None:
        """
        close() right after the last byte: the peer gets all, then
        close_notify.
        """
        sink = UploadSink()
        with StdlibTLSServer(self.server_key, sink) as server:
            sock = self.trusting_socket()
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(CHUNK * 32)
            sock.close()
            self.assertTrue(sink.done.wait(30))
        self.assertEqual(sink.outcomes, [(len(CHUNK) * 32, "close_notify")])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


for_each_backend(globals(), DaemonDeathTests, HalfClosedTruncationTests, ApplicationDeathTests)
