"""
End to end, the Unix frontend under bad input: garbage, truncated,
oversized and unknown frames, bad option values, clients that vanish
mid-handshake. Each gets its error; a well-behaved client at the same time
is unaffected; the daemon's descriptors and memory come back down.
"""

from __future__ import annotations

import errno
import socket
import struct
import time

from ssa import client, wire
from ssa.testing.peers import StdlibTLSServer, echo_handler, free_port

from .helpers import DaemonTestCase

TLS = client.IPPROTO_TLS


def raw_connection(path: str) -> socket.socket:
    """
    A bare control connection.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def read_frame(sock: socket.socket) -> wire.Frame | None:
    """
    Read one frame, or L{None} at end-of-file.
    """
    decoder = wire.FrameDecoder()
    while True:
        data = sock.recv(65536)
        if not data:
            return None
        frames = decoder.feed(data)
        if frames:
            return frames[0]


class BadInputTests(DaemonTestCase):
    """
    Misbehaving clients next to a good one.
    """

    def good_round_trip(self, server) -> None:
        """
        A well-behaved client connects and echoes.
        """
        sock = self.trusting_socket()
        sock.connect(("localhost", server.port))
        sock.sendall(b"good client")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(100):
            data += chunk
        self.assertEqual(data, b"good client")
        sock.close()

    def test_protocol_errors(self) -> None:
        """
        Each kind of bad frame gets its answer; the daemon keeps serving.
        """
        path = self.daemon.socket_path
        # Unknown operation: EINVAL, and the connection stays usable.
        conn = raw_connection(path)
        conn.sendall(wire.encode_frame(99, 1, 0, b""))
        reply = read_frame(conn)
        self.assertEqual(wire.decode_reply_body(reply.body)[0], errno.EINVAL)
        conn.sendall(wire.encode_frame(wire.Op.SOCKET, 2, 0, wire.SOCKET_ARGS.pack(socket.AF_INET, socket.SOCK_STREAM, TLS)))
        reply = read_frame(conn)
        self.assertEqual((reply.tag, wire.decode_reply_body(reply.body)[0]), (2, 0))
        # Malformed body: EINVAL.
        conn.sendall(wire.encode_frame(wire.Op.SETSOCKOPT, 3, wire.NEW_SOCKET.unpack(wire.decode_reply_body(reply.body)[1])[0], b"\x01"))
        reply = read_frame(conn)
        self.assertEqual(wire.decode_reply_body(reply.body)[0], errno.EINVAL)
        self.assertIn(b"malformed", wire.decode_reply_body(reply.body)[1])
        conn.close()
        # Oversized frame: an EPROTO frame, then the connection closes.
        conn = raw_connection(path)
        conn.sendall(struct.pack("!I", wire.MAX_FRAME + 1) + b"\x01" * 16)
        reply = read_frame(conn)
        self.assertEqual(wire.decode_reply_body(reply.body)[0], errno.EPROTO)
        self.assertIsNone(read_frame(conn))
        conn.close()
        # Garbage: framing lost, closed.
        conn = raw_connection(path)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_frame(conn)
        self.assertEqual(wire.decode_reply_body(reply.body)[0], errno.EPROTO)
        self.assertIsNone(read_frame(conn))
        conn.close()
        # Wrong version.
        conn = raw_connection(path)
        frame = bytearray(wire.encode_frame(wire.Op.SOCKET, 1, 0, b"x" * 12))
        frame[4] = 7
        conn.sendall(bytes(frame))
        self.assertIn(b"version", wire.decode_reply_body(read_frame(conn).body)[1])
        conn.close()
        # Truncated frame, then the client goes away.
        conn = raw_connection(path)
        conn.sendall(wire.encode_frame(wire.Op.SOCKET, 1, 0, b"x" * 12)[:10])
        conn.close()
        # Descriptors sent with a request are closed and refused.
        conn = raw_connection(path)
        r, w = socket.socketpair()
        conn.sendmsg([wire.encode_frame(wire.Op.SOCKET, 5, 0, wire.SOCKET_ARGS.pack(socket.AF_INET, socket.SOCK_STREAM, TLS), nfds=1)],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r.fileno()))])
        reply = read_frame(conn)
        self.assertEqual(wire.decode_reply_body(reply.body)[0], errno.EINVAL)
        conn.close()
        r.close()
        w.close()
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            self.good_round_trip(server)

    def test_bad_option_values(self) -> None:
        """
        Bad option values get EINVAL/ENOPROTOOPT and the socket still works.
        """
        sock = self.trusting_socket()
        for level, name, value, err in [
            (TLS, client.TLS_HOSTNAME, b"a" * 300, errno.EINVAL),
            (TLS, client.TLS_HOSTNAME, b"bad\0name", errno.EINVAL),
            (TLS, client.TLS_VERSION_MIN, b"\x01", errno.EINVAL),
            (TLS, client.TLS_VERSION_MIN, 7, errno.EINVAL),
            (TLS, client.TLS_VERSION_MIN, client.TLS_1_0, errno.EPROTO),
            (TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, b"-----BEGIN CERTIFICATE-----\ngarbage\n", errno.EINVAL),
            (TLS, 12345, b"x", errno.ENOPROTOOPT),
            (TLS, client.TLS_ID, b"x", errno.ENOPROTOOPT),
        ]:
            failure = self.assertRaises(OSError, sock.setsockopt, level, name, value)
            self.assertEqual(failure.errno, err, f"option {name} value {value!r}: {failure}")
            self.assertTrue(sock.get_error())
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock.connect(("localhost", server.port))
            sock.sendall(b"ok")
            self.assertEqual(sock.recv(2), b"ok")

    def test_resources_come_back(self) -> None:
        """
        After many sockets, failed connects, abandoned handshakes and bad
        frames, the daemon's descriptors return to their starting level and
        its memory stays bounded; a good client meanwhile is unaffected.
        """
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(50)
        self.addCleanup(silent.close)
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            self.good_round_trip(server)
            time.sleep(0.2)
            fds_before = self.daemon.descriptor_count()
            memory_before = self.daemon.memory_kib()
            for round_ in range(3):
                # Clients that vanish mid-handshake (the peer never answers).
                for _ in range(20):
                    sock = self.trusting_socket(nonblocking=True)
                    self.assertEqual(sock.connect_ex(("127.0.0.1", silent.getsockname()[1])), errno.EINPROGRESS)
                    sock.close()
                # Failed connects and closed sockets.
                for _ in range(20):
                    sock = self.trusting_socket()
                    sock.connect_ex(("127.0.0.1", free_port()))
                    sock.close()
                # Garbage on raw connections.
                for _ in range(20):
                    conn = raw_connection(self.daemon.socket_path)
                    conn.sendall(b"\xff" * 64)
                    conn.close()
                self.good_round_trip(server)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.daemon.descriptor_count() > fds_before:
                time.sleep(0.1)
            self.assertLessEqual(self.daemon.descriptor_count(), fds_before)
            self.assertLess(self.daemon.memory_kib(), memory_before + 8 * 1024)

    def test_daemon_unreachable(self) -> None:
        """
        With no daemon, socket() fails at once naming the path.
        """
        path = self.daemon.socket_path
        self.daemon.stop()
        start = time.monotonic()
        failure = self.assertRaises(OSError, client.socket, socket.AF_INET, socket.SOCK_STREAM, TLS, path=path)
        self.assertLess(time.monotonic() - start, 2)
        self.assertIn(failure.errno, (errno.ECONNREFUSED, errno.ENOENT))
        self.assertIn(path, str(failure))
