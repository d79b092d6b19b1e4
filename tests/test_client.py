"""
The application library L{ssa.client} and the C{ssa} command, against a
scripted fake daemon: a thread serving a real Unix control socket in the
wire format, passing real descriptors.
"""

from __future__ import annotations

import array
import errno
import io
import os
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.trial.unittest import SynchronousTestCase

from ssa import _channels, cli, client, wire
from ssa.wire import Frame, Op

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN " + b"PRIVATE KEY-----\nMIIE\n-----END " + b"PRIVATE KEY-----\n"  # not a key: a placeholder


@dataclass
class Reply:
    """
    What the fake daemon does with one request.

    @ivar errno: the reply's errno.
    @ivar payload: the result, or the reason when C{errno} is not 0.
    @ivar fds: descriptors to pass with the reply (closed by the fake after).
    @ivar delay: seconds to wait before replying.
    @ivar hangup: close the control connection instead of replying.
    """

    errno: int = 0
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)
    delay: float = 0.0
    hangup: bool = False


class FakeDaemon:
    """
    A scripted daemon on a real Unix control socket.

    @ivar requests: C{(connection number, Frame)} of every request, in order.
    @ivar eofs: the connection numbers whose client closed.
    @ivar ends: socket id -> the daemon's end of the plaintext socketpair.
    @ivar passed: socket id -> the inode of the end passed to the client.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.dir = tempfile.mkdtemp()
        case.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "ssa.sock")
        self.requests: list[tuple[int, Frame]] = []
        self.eofs: list[int] = []
        self.ends: dict[int, socket.socket] = {}
        self.passed: dict[int, int] = {}
        self.errors: list[BaseException] = []
        self.on_new_socket: Callable[[int, socket.socket], None] | None = None
        self._script: dict[object, Callable[[Frame], Reply] | Reply] = {}
        self._next_id = 0x1000
        self._stop = False
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._listener.settimeout(0.02)
        self._spawn(self._accept)
        case.addCleanup(self.stop)
        case.addCleanup(_channels.close_idle, self.path)

    def script(self, key: object, reply: Reply | Callable[[Frame], Reply]) -> None:
        """
        Answer requests of C{key}: an L{Op}, or C{(Op.SETSOCKOPT or
        Op.GETSOCKOPT, level, optname)}.
        """
        self._script[key] = reply

    def ops(self) -> list[int]:
        """
        The ops received, in order.
        """
        return [frame.op for _, frame in self.requests]

    def options(self, op: int) -> list[tuple[int, int, bytes]]:
        """
        The C{(level, optname, value)} of every request of C{op}; for
        C{SETSOCKOPT}, with the options that CONNECTs carried, in order:
        every option the daemon was asked to set.
        """
        found = []
        for _, frame in self.requests:
            if frame.op == op:
                level, optname = wire.OPTION.unpack_from(frame.body)
                found.append((level, optname, frame.body[wire.OPTION.size :]))
            elif frame.op == Op.CONNECT and op == Op.SETSOCKOPT:
                found += self.carried(frame)
        return found

    @staticmethod
    def carried(frame: Frame) -> list[tuple[int, int, bytes]]:
        """
        The options a CONNECT carries (none without C{CONNECT_OPTIONS}).
        """
        (flags,) = wire.CONNECT_FLAGS.unpack_from(frame.body)
        _, rest = wire.decode_address(frame.body[wire.CONNECT_FLAGS.size :])
        return wire.decode_options(rest) if flags & wire.CONNECT_OPTIONS else []

    def only(self, op: int) -> Frame:
        """
        The one request of C{op}.
        """
        frames = [frame for _, frame in self.requests if frame.op == op]
        assert len(frames) == 1, frames
        return frames[0]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("the fake daemon never got there")
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop = True
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        self._listener.close()
        for conn in self._conns:
            conn.close()
        for end in self.ends.values():
            end.close()
        if self.errors:
            raise self.errors[0]

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=self._guard, args=(target, *args), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guard(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        except BaseException as e:  # reported by stop()
            if not self._stop:
                self.errors.append(e)

    def _accept(self) -> None:
        number = 0
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            self._conns.append(conn)
            self._spawn(self._serve, conn, number)
            number += 1

    def _serve(self, conn: socket.socket, number: int) -> None:
        decoder = wire.FrameDecoder()
        while True:
            try:
                data = conn.recv(65536)
            except ConnectionResetError:
                data = b""  # the client closed with a reply unread
            if not data:
                self.eofs.append(number)
                return
            for frame in decoder.feed(data):
                self.requests.append((number, frame))
                reply = self._answer(frame)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.hangup:
                    conn.close()
                    return
                raw = wire.encode_reply(frame, reply.errno, reply.payload, len(reply.fds))
                if reply.fds:
                    conn.sendmsg(
                        [raw], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", reply.fds))]
                    )
                    for fd in reply.fds:
                        os.close(fd)
                else:
                    try:
                        conn.sendall(raw)
                    except (BrokenPipeError, ConnectionResetError):
                        # The client does not wait for a CLOSE reply.
                        self.eofs.append(number)
                        return

    def _answer(self, frame: Frame) -> Reply:
        key: object = frame.op
        if frame.op in (Op.SETSOCKOPT, Op.GETSOCKOPT):
            key = (frame.op, *wire.OPTION.unpack_from(frame.body))
        scripted = self._script.get(key)
        if scripted is not None:
            return scripted(frame) if callable(scripted) else scripted
        if frame.op == Op.SOCKET:
            return self._new_socket()
        if frame.op == Op.BIND:
            return Reply(payload=frame.body)
        return Reply()

    def _new_socket(self) -> Reply:
        self._next_id += 1
        ours, theirs = socket.socketpair()
        self.ends[self._next_id] = ours
        self.passed[self._next_id] = os.fstat(theirs.fileno()).st_ino
        if self.on_new_socket is not None:
            self.on_new_socket(self._next_id, ours)
        return Reply(payload=wire.NEW_SOCKET.pack(self._next_id), fds=[theirs.detach()])


class ClientTestCase(SynchronousTestCase):
    """
    Tests with a fake daemon at C{self.daemon}.
    """

    def setUp(self) -> None:
        self.daemon = FakeDaemon(self)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> client.SSASocket:
        sock = client.socket(family, type, client.IPPROTO_TLS, path=self.daemon.path)
        self.addCleanup(sock.close)
        return sock

    def tempdir(self) -> str:
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def write(self, path: str, data: bytes) -> str:
        with open(path, "wb") as f:
            f.write(data)
        return path


class ModuleTests(SynchronousTestCase):
    """
    What the module exports.
    """

    def test_constants(self) -> None:
        """
        The SSA's numbers and the socket module's usual ones are there; there
        is no C{SOL_TLS}.
        """
        self.assertEqual(client.IPPROTO_TLS, 205)
        self.assertEqual(client.TLS_HOSTNAME, 85)
        self.assertEqual(client.TLS_ID, 96)
        self.assertEqual(client.AF_HOSTNAME, 43)
        self.assertEqual(client.SHUT_WR, socket.SHUT_WR)
        self.assertFalse(hasattr(client, "SOL_TLS"))
        self.assertIn("TLS_ERROR", client.__all__)


class SocketTests(ClientTestCase):
    """
    C{socket()}: the SOCKET request and its descriptor.
    """

    def test_socket_request(self) -> None:
        """
        C{socket()} sends SOCKET with family, type and proto on socket id 0,
        and keeps the id the daemon gives.
        """
        sock = self.socket(socket.AF_INET6)
        frame = self.daemon.only(Op.SOCKET)
        self.assertEqual(frame.socket_id, 0)
        self.assertEqual(frame.body, wire.SOCKET_ARGS.pack(socket.AF_INET6, socket.SOCK_STREAM, 205))
        self.assertEqual(sock.id, 0x1001)
        self.assertEqual((sock.family, sock.type, sock.proto), (socket.AF_INET6, socket.SOCK_STREAM, 205))
        self.assertTrue(sock.getblocking())

    def test_type_flags(self) -> None:
        """
        C{SOCK_NONBLOCK} and C{SOCK_CLOEXEC} do not reach the daemon;
        C{SOCK_NONBLOCK} makes the socket nonblocking.
        """
        sock = self.socket(type=socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.assertEqual(self.daemon.only(Op.SOCKET).body, wire.SOCKET_ARGS.pack(socket.AF_INET, socket.SOCK_STREAM, 205))
        self.assertEqual(sock.type, socket.SOCK_STREAM)
        self.assertFalse(sock.getblocking())
        self.assertFalse(os.get_inheritable(sock.fileno()))

    def test_wrong_proto(self) -> None:
        """
        A protocol other than IPPROTO_TLS fails EPROTONOSUPPORT without asking
        the daemon.
        """
        for proto in (0, socket.IPPROTO_TCP):
            e = self.assertRaises(OSError, client.socket, socket.AF_INET, socket.SOCK_STREAM, proto, path=self.daemon.path)
            self.assertEqual(e.errno, errno.EPROTONOSUPPORT)
        time.sleep(0.05)
        self.assertEqual(self.daemon.requests, [])

    def test_refused(self) -> None:
        """
        The daemon's errno for SOCKET is raised with its reason, and the
        control connection is closed.
        """
        self.daemon.script(Op.SOCKET, Reply(errno.EAFNOSUPPORT, b"address family 99 is not supported"))
        e = self.assertRaises(OSError, client.socket, 99, path=self.daemon.path)
        self.assertEqual(e.errno, errno.EAFNOSUPPORT)
        self.assertEqual(e.strerror, "address family 99 is not supported")
        self.daemon.wait_for(lambda: self.daemon.eofs == [0])

    def test_no_descriptor(self) -> None:
        """
        A SOCKET reply without a descriptor is the daemon's fault: EPROTO.
        """
        self.daemon.script(Op.SOCKET, Reply(payload=wire.NEW_SOCKET.pack(5)))
        e = self.assertRaises(OSError, client.socket, path=self.daemon.path)
        self.assertEqual(e.errno, errno.EPROTO)
        self.assertIn(self.daemon.path, str(e))

    def test_daemon_missing(self) -> None:
        """
        No control socket: ENOENT at once, naming the path.
        """
        path = os.path.join(self.tempdir(), "nothing.sock")
        started = time.monotonic()
        e = self.assertRaises(FileNotFoundError, client.socket, path=path)
        self.assertLess(time.monotonic() - started, 1)
        self.assertEqual(e.errno, errno.ENOENT)
        self.assertIn(f"cannot reach the SSA daemon at {path}", str(e))

    def test_daemon_not_listening(self) -> None:
        """
        A control socket nobody listens on: ECONNREFUSED, naming the path.
        """
        path = os.path.join(self.tempdir(), "dead.sock")
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(dead.close)
        dead.bind(path)
        e = self.assertRaises(ConnectionRefusedError, client.socket, path=path)
        self.assertIn(path, str(e))

    def test_environment(self) -> None:
        """
        Without C{path}, C{$SSA_SOCKET} names the daemon.
        """
        old = os.environ.get("SSA_SOCKET")
        os.environ["SSA_SOCKET"] = self.daemon.path
        self.addCleanup(lambda: os.environ.pop("SSA_SOCKET") if old is None else os.environ.update(SSA_SOCKET=old))
        with client.socket() as sock:
            self.assertEqual(sock.daemon_path, self.daemon.path)
        self.daemon.wait_for(lambda: Op.CLOSE in self.daemon.ops())
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.CLOSE])

    def test_fileno_is_the_passed_descriptor(self) -> None:
        """
        C{fileno()} is the descriptor the daemon passed, the same before and
        after connect, and carries the plaintext both ways.
        """
        sock = self.socket()
        fd = sock.fileno()
        self.assertEqual(os.fstat(fd).st_ino, self.daemon.passed[sock.id])
        sock.connect(("127.0.0.1", 443))
        self.assertEqual(sock.fileno(), fd)
        end = self.daemon.ends[sock.id]
        end.sendall(b"hello")
        self.assertEqual(sock.recv(5), b"hello")
        sock.sendall(b"world")
        self.assertEqual(end.recv(5), b"world")
        buffer = bytearray(3)
        end.sendall(b"abc")
        self.assertEqual(sock.recv_into(buffer), 3)
        self.assertEqual(buffer, b"abc")
        sock.shutdown(socket.SHUT_WR)
        self.assertEqual(end.recv(1), b"")

    def test_makefile(self) -> None:
        """
        C{makefile} reads the plaintext stream.
        """
        sock = self.socket()
        sock.connect(("127.0.0.1", 443))
        self.daemon.ends[sock.id].sendall(b"line one\nline two\n")
        with sock.makefile("rb") as f:
            self.assertEqual(f.readline(), b"line one\n")

    def test_data_before_connect(self) -> None:
        """
        Data calls before any connect fail ENOTCONN; timeouts work.
        """
        sock = self.socket()
        for call, args in [(sock.send, (b"x",)), (sock.sendall, (b"x",)), (sock.recv, (1,)), (sock.recv_into, (bytearray(1),)), (sock.shutdown, (socket.SHUT_WR,)), (sock.makefile, ()), (sock.getpeername, ())]:
            e = self.assertRaises(OSError, call, *args)
            self.assertEqual(e.errno, errno.ENOTCONN, call)
        sock.settimeout(2.5)
        self.assertEqual(sock.gettimeout(), 2.5)
        sock.setblocking(False)
        self.assertEqual(sock.gettimeout(), 0.0)
        self.assertFalse(sock.getblocking())

    def test_close(self) -> None:
        """
        C{close()} ends the control connection and the plaintext stream, may
        be repeated, and every later call fails EBADF.
        """
        sock = self.socket()
        sock.connect(("127.0.0.1", 443))
        end = self.daemon.ends[sock.id]
        sock.close()
        sock.close()
        self.daemon.wait_for(lambda: Op.CLOSE in self.daemon.ops())
        self.assertEqual(self.daemon.only(Op.CLOSE).socket_id, sock.id)
        self.assertEqual(end.recv(1), b"")
        self.assertIn("[closed]", repr(sock))
        calls = [
            (sock.fileno, ()), (sock.send, (b"x",)), (sock.recv, (1,)), (sock.connect, (("127.0.0.1", 1),)),
            (sock.connect_ex, (("127.0.0.1", 1),)), (sock.bind, (("127.0.0.1", 0),)),
            (sock.setsockopt, (205, 85, "x")), (sock.getsockopt, (205, 96)), (sock.settimeout, (1,)),
            (sock.getpeername, ()), (sock.shutdown, (socket.SHUT_RDWR,)),
        ]
        for call, args in calls:
            try:
                result = call(*args)
            except OSError as e:
                self.assertEqual(e.errno, errno.EBADF, call)
            else:
                self.assertEqual(result, errno.EBADF, call)  # connect_ex
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.CONNECT, Op.CLOSE])

    def test_context_manager(self) -> None:
        """
        C{with} closes the socket.
        """
        with client.socket(path=self.daemon.path) as sock:
            pass
        self.assertRaises(OSError, sock.fileno)
        self.daemon.wait_for(lambda: Op.CLOSE in self.daemon.ops())

    def test_repr(self) -> None:
        """
        The repr names the id, descriptor, family, peer and daemon.
        """
        sock = self.socket()
        sock.connect(("127.0.0.1", 443))
        text = repr(sock)
        for part in (f"id={sock.id}", f"fd={sock.fileno()}", "AF_INET", "('127.0.0.1', 443)", self.daemon.path):
            self.assertIn(part, text)


class OptionTests(ClientTestCase):
    """
    C{setsockopt} and C{getsockopt}: the bytes on the wire.
    """

    def test_set_str(self) -> None:
        """
        A str travels as UTF-8 with a NUL, on the socket's id.
        """
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "exämple.com")
        sock.getsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, 64)  # sends it first
        frame = self.daemon.only(Op.SETSOCKOPT)
        self.assertEqual(frame.socket_id, sock.id)
        self.assertEqual(frame.body, wire.OPTION.pack(205, 85) + "exämple.com".encode() + b"\0")

    def test_set_bytes_and_int(self) -> None:
        """
        bytes travel as given; ints as 4-byte native ints, except the 8-byte
        TLS_CONTEXT.
        """
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_ALPN, b"h2,http/1.1")
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_REVOCATION_CHECKS, 0)
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_SESSION_REUSE, True)
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_VERSION_MIN, client.TLS_1_3)
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_CONTEXT, 2**63 + 7)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.getsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, 64)  # sends TCP_NODELAY first
        self.assertEqual(
            self.daemon.options(Op.SETSOCKOPT),
            [
                (205, 90, b"h2,http/1.1"),
                (205, 102, struct.pack("i", 0)),
                (205, 108, struct.pack("i", 1)),
                (205, 111, struct.pack("i", 3)),
                (205, 107, struct.pack("Q", 2**63 + 7)),
                (socket.IPPROTO_TCP, socket.TCP_NODELAY, struct.pack("i", 1)),
            ],
        )
        self.assertRaises(OverflowError, sock.setsockopt, 205, 91, 2**40)
        self.assertRaises(TypeError, sock.setsockopt, 205, 91, 1.5)

    def test_files_read_by_the_client(self) -> None:
        """
        Paths for trust anchors, chain and key are read here and sent as
        contents; a path may be str, bytes or a PathLike.
        """
        import pathlib

        base = self.tempdir()
        ca = self.write(os.path.join(base, "ca.pem"), CERT)
        chain = self.write(os.path.join(base, "chain.pem"), CERT + CERT)
        key = self.write(os.path.join(base, "key.pem"), KEY)
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, ca)
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_CERTIFICATE_CHAIN, os.fsencode(chain))
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_PRIVATE_KEY, pathlib.Path(key))
        self.assertEqual(
            self.daemon.options(Op.SETSOCKOPT),
            [(205, 87, CERT), (205, 88, CERT + CERT), (205, 89, KEY)],
        )

    def test_directory(self) -> None:
        """
        A directory gives its regular files that hold PEM, in name order,
        each file once (however many links name it).
        """
        base = self.tempdir()
        self.write(os.path.join(base, "b.pem"), b"B" + CERT)
        self.write(os.path.join(base, "a.crt"), b"A" + CERT.rstrip(b"\n"))
        self.write(os.path.join(base, "notes.txt"), b"no certificates here\n")
        os.symlink("a.crt", os.path.join(base, "c0ffee.0"))
        os.mkdir(os.path.join(base, "sub.pem"))
        self.write(os.path.join(base, "sub.pem", "deep.pem"), CERT)
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, base)
        self.assertEqual(self.daemon.options(Op.SETSOCKOPT), [(205, 87, b"A" + CERT + b"B" + CERT)])

    def test_empty_directory(self) -> None:
        """
        A directory without PEM fails EINVAL without asking the daemon.
        """
        base = self.tempdir()
        sock = self.socket()
        e = self.assertRaises(OSError, sock.setsockopt, 205, client.TLS_TRUSTED_PEER_CERTIFICATES, base)
        self.assertEqual(e.errno, errno.EINVAL)
        self.assertIn(base, str(e))
        self.assertEqual(self.daemon.ops(), [Op.SOCKET])

    def test_inline_pem(self) -> None:
        """
        A value starting C{-----BEGIN} is PEM, not a path: a str gets its
        NUL, bytes go as they are.
        """
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, CERT.decode())
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_PRIVATE_KEY, KEY)
        self.assertEqual(self.daemon.options(Op.SETSOCKOPT), [(205, 87, CERT + b"\0"), (205, 89, KEY)])

    def test_missing_paths(self) -> None:
        """
        A path that cannot be read fails at once, naming it: EINVAL for
        anchors and chain, EBADF for the key; the daemon is not asked.
        """
        missing = os.path.join(self.tempdir(), "missing.pem")
        sock = self.socket()
        for option, code in [(87, errno.EINVAL), (88, errno.EINVAL), (89, errno.EBADF)]:
            e = self.assertRaises(OSError, sock.setsockopt, client.IPPROTO_TLS, option, missing)
            self.assertEqual(e.errno, code)
            self.assertIn(missing, str(e))
            self.assertIn("No such file or directory", str(e))
        self.assertEqual(self.daemon.ops(), [Op.SOCKET])

    def test_set_refused(self) -> None:
        """
        The daemon's errno and reason come back as OSError.
        """
        self.daemon.script((Op.SETSOCKOPT, 205, 111), Reply(errno.EPROTO, b"policy min-tls-version: TLS 1.2 is the least allowed"))
        sock = self.socket()
        e = self.assertRaises(OSError, sock.setsockopt, 205, 111, 1)
        self.assertEqual(e.errno, errno.EPROTO)
        self.assertEqual(e.strerror, "policy min-tls-version: TLS 1.2 is the least allowed")

    def test_get_int(self) -> None:
        """
        Without buflen a 4-byte value is a native int, an 8-byte one unsigned.
        """
        self.daemon.script((Op.GETSOCKOPT, 205, 113), Reply(payload=struct.pack("i", 3)))
        self.daemon.script((Op.GETSOCKOPT, 205, 96), Reply(payload=struct.pack("Q", 2**40 + 5)))
        sock = self.socket()
        self.assertEqual(sock.getsockopt(client.IPPROTO_TLS, client.TLS_CHOSEN_VERSION), 3)
        self.assertEqual(sock.getsockopt(client.IPPROTO_TLS, client.TLS_ID), 2**40 + 5)
        frame = [f for _, f in self.daemon.requests if f.op == Op.GETSOCKOPT][0]
        self.assertEqual((frame.socket_id, frame.body), (sock.id, wire.OPTION.pack(205, 113)))

    def test_get_bytes(self) -> None:
        """
        With buflen: the raw bytes, at most buflen; text options without
        buflen are str.
        """
        self.daemon.script((Op.GETSOCKOPT, 205, 93), Reply(payload=b"/CN=example.com\0"))
        sock = self.socket()
        self.assertEqual(sock.getsockopt(205, client.TLS_PEER_IDENTITY, 5), b"/CN=e")
        self.assertEqual(sock.getsockopt(205, client.TLS_PEER_IDENTITY, 100), b"/CN=example.com\0")
        self.assertEqual(sock.getsockopt(205, client.TLS_PEER_IDENTITY), "/CN=example.com")

    def test_get_odd_size(self) -> None:
        """
        A value neither 4 nor 8 bytes long is not taken for an int.
        """
        self.daemon.script((Op.GETSOCKOPT, 205, 91), Reply(payload=b"abc"))
        sock = self.socket()
        e = self.assertRaises(OSError, sock.getsockopt, 205, 91)
        self.assertEqual(e.errno, errno.EINVAL)

    def test_tls_error(self) -> None:
        """
        TLS_ERROR with nothing recorded (EINVAL) is None; else the reason.
        """
        sock = self.socket()
        self.daemon.script((Op.GETSOCKOPT, 205, 100), Reply(errno.EINVAL, b"no error"))
        self.assertIsNone(sock.getsockopt(client.IPPROTO_TLS, client.TLS_ERROR))
        self.assertIsNone(sock.get_error())
        self.daemon.script((Op.GETSOCKOPT, 205, 100), Reply(payload=b"certificate has expired (depth 0)\0"))
        self.assertEqual(sock.get_error(), "certificate has expired (depth 0)")

    def test_get_refused(self) -> None:
        """
        Other errnos raise, EINVAL included for other options.
        """
        sock = self.socket()
        self.daemon.script((Op.GETSOCKOPT, 205, 93), Reply(errno.ENOTCONN, b"no peer certificate"))
        self.daemon.script((Op.GETSOCKOPT, 205, 85), Reply(errno.EINVAL, b"no hostname set"))
        self.assertRaises(OSError, sock.getsockopt, 205, 93)
        e = self.assertRaises(OSError, sock.getsockopt, 205, 85)
        self.assertEqual((e.errno, e.strerror), (errno.EINVAL, "no hostname set"))

    def test_so_error(self) -> None:
        """
        C{SO_ERROR} is the daemon's.
        """
        self.daemon.script((Op.GETSOCKOPT, socket.SOL_SOCKET, socket.SO_ERROR), Reply(payload=struct.pack("i", errno.EPROTO)))
        sock = self.socket()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), errno.EPROTO)

    def test_tls_info(self) -> None:
        """
        C{tls_info()} gathers version, cipher and peer.
        """
        self.daemon.script((Op.GETSOCKOPT, 205, 113), Reply(payload=struct.pack("i", 2)))
        self.daemon.script((Op.GETSOCKOPT, 205, 98), Reply(payload=b"ECDHE-RSA-AES128-GCM-SHA256\0"))
        self.daemon.script((Op.GETSOCKOPT, 205, 93), Reply(errno.ENOTCONN, b"no peer certificate"))
        sock = self.socket()
        self.assertEqual(sock.tls_info(), {"version": "TLS 1.2", "cipher": "ECDHE-RSA-AES128-GCM-SHA256", "peer": None})

    def test_threads(self) -> None:
        """
        Threads sharing a socket each get their own reply.
        """
        for optname in range(200, 210):
            self.daemon.script(
                (Op.GETSOCKOPT, 205, optname),
                lambda frame: Reply(payload=struct.pack("i", wire.OPTION.unpack_from(frame.body)[1])),
            )
        sock = self.socket()
        results: dict[int, list[int]] = {}

        def work(optname: int) -> None:
            results[optname] = [sock.getsockopt(205, optname) for _ in range(20)]

        threads = [threading.Thread(target=work, args=(n,)) for n in range(200, 210)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(results, {n: [n] * 20 for n in range(200, 210)})


class ConnectTests(ClientTestCase):
    """
    C{bind}, C{connect} and C{connect_ex}.
    """

    def connect_frame(self) -> tuple[int, tuple[int, str, int]]:
        """
        The one CONNECT's flags (but C{CONNECT_OPTIONS}) and address.
        """
        frame = self.daemon.only(Op.CONNECT)
        (flags,) = wire.CONNECT_FLAGS.unpack_from(frame.body)
        address, rest = wire.decode_address(frame.body[wire.CONNECT_FLAGS.size :])
        self.assertEqual(bool(rest), bool(flags & wire.CONNECT_OPTIONS))
        return flags & ~wire.CONNECT_OPTIONS, address

    def test_ip_literal(self) -> None:
        """
        An IP literal goes as it is, with no TLS_HOSTNAME.
        """
        sock = self.socket()
        sock.connect(("127.0.0.1", 443))
        frame = self.daemon.only(Op.CONNECT)
        self.assertEqual(frame.socket_id, sock.id)
        self.assertEqual(frame.body, wire.CONNECT_FLAGS.pack(0) + wire.encode_address(socket.AF_INET, "127.0.0.1", 443))
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.CONNECT])
        self.assertEqual(sock.getpeername(), ("127.0.0.1", 443))

    def test_ipv6(self) -> None:
        """
        AF_INET6 takes 2- and 4-tuples.
        """
        sock = self.socket(socket.AF_INET6)
        sock.connect(("::1", 8443, 0, 0))
        self.assertEqual(self.connect_frame(), (0, (socket.AF_INET6, "::1", 8443)))
        self.assertEqual(sock.getpeername(), ("::1", 8443, 0, 0))
        self.assertRaises(TypeError, self.socket().connect, ("127.0.0.1", 1, 0, 0))

    def test_name_sets_hostname(self) -> None:
        """
        A DNS name is resolved here and becomes TLS_HOSTNAME first.
        """
        sock = self.socket()
        sock.connect(("localhost", 8443))
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.CONNECT])  # carried by CONNECT
        self.assertEqual(self.daemon.options(Op.SETSOCKOPT), [(205, 85, b"localhost\0")])
        self.assertEqual(self.connect_frame(), (0, (socket.AF_INET, "127.0.0.1", 8443)))

    def test_name_keeps_hostname(self) -> None:
        """
        A TLS_HOSTNAME the application set stays.
        """
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "example.com")
        sock.connect(("localhost", 8443))
        self.assertEqual(self.daemon.options(Op.SETSOCKOPT), [(205, 85, b"example.com\0")])

    def test_af_hostname(self) -> None:
        """
        AF_HOSTNAME addresses go to the daemon unresolved.
        """
        sock = self.socket(client.AF_HOSTNAME)
        sock.connect(("example.com", 443))
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.CONNECT])
        self.assertEqual(self.connect_frame(), (0, (43, "example.com", 443)))
        self.assertIn("AF_HOSTNAME", repr(sock))

    def test_bind(self) -> None:
        """
        BIND carries the address; an empty host is the wildcard.
        """
        sock = self.socket()
        sock.bind(("", 0))
        sock2 = self.socket()
        sock2.bind(("127.0.0.1", 4433))
        bodies = [f.body for _, f in self.daemon.requests if f.op == Op.BIND]
        self.assertEqual(bodies, [wire.encode_address(socket.AF_INET, "0.0.0.0", 0), wire.encode_address(socket.AF_INET, "127.0.0.1", 4433)])

    def test_bad_addresses(self) -> None:
        """
        Malformed addresses fail here, as with the socket module.
        """
        sock = self.socket()
        self.assertRaises(TypeError, sock.connect, "127.0.0.1:443")
        self.assertRaises(TypeError, sock.connect, ("127.0.0.1", "443"))
        self.assertRaises(OverflowError, sock.connect, ("127.0.0.1", 70000))
        self.assertRaises(socket.gaierror, sock.connect_ex, ("name.invalid", 443))
        self.assertEqual(self.daemon.ops(), [Op.SOCKET])

    def test_errno(self) -> None:
        """
        The daemon's errno becomes the matching OSError subclass, its reason
        the message.
        """
        self.daemon.script(Op.CONNECT, Reply(errno.ECONNABORTED, b"connection to 127.0.0.1:443 refused"))
        sock = self.socket()
        e = self.assertRaises(ConnectionAbortedError, sock.connect, ("127.0.0.1", 443))
        self.assertEqual(e.errno, errno.ECONNABORTED)
        self.assertIn("connection to 127.0.0.1:443 refused", str(e))

    def test_connect_ex(self) -> None:
        """
        C{connect_ex} returns 0 or the daemon's errno.
        """
        sock = self.socket()
        self.assertEqual(sock.connect_ex(("127.0.0.1", 443)), 0)
        self.daemon.script(Op.CONNECT, Reply(errno.EOPNOTSUPP, b"already connected"))
        self.assertEqual(sock.connect_ex(("127.0.0.1", 443)), errno.EOPNOTSUPP)
        e = self.assertRaises(OSError, sock.connect, ("127.0.0.1", 443))
        self.assertEqual((e.errno, e.strerror), (errno.EOPNOTSUPP, "already connected"))

    def test_nonblocking(self) -> None:
        """
        A nonblocking connect says so; EINPROGRESS is BlockingIOError, and
        the data calls are then allowed.
        """
        self.daemon.script(Op.CONNECT, Reply(errno.EINPROGRESS, b"connecting"))
        sock = self.socket()
        sock.setblocking(False)
        e = self.assertRaises(BlockingIOError, sock.connect, ("127.0.0.1", 443))
        self.assertEqual(e.errno, errno.EINPROGRESS)
        self.assertEqual(self.connect_frame()[0], wire.CONNECT_NONBLOCKING)
        self.assertRaises(BlockingIOError, sock.recv, 1)
        other = self.socket(type=socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.assertEqual(other.connect_ex(("127.0.0.1", 443)), errno.EINPROGRESS)

    def test_timeout(self) -> None:
        """
        With a timeout, a blocking connect waits that long; the late reply,
        and the descriptor it carries, are dropped, and the channel goes on.
        """
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, write_end)
        self.daemon.script(Op.CONNECT, Reply(delay=0.5, fds=[read_end]))
        self.daemon.script((Op.GETSOCKOPT, 205, 96), Reply(payload=struct.pack("Q", 77)))
        sock = self.socket()
        sock.settimeout(0.1)
        started = time.monotonic()
        e = self.assertRaises(TimeoutError, sock.connect, ("127.0.0.1", 443))
        self.assertLess(time.monotonic() - started, 0.4)
        self.assertIn("timed out", str(e))
        self.assertEqual(self.connect_frame()[0], 0)
        self.assertEqual(sock.getsockopt(205, client.TLS_ID), 77)
        self.assertRaises(BrokenPipeError, os.write, write_end, b"x")
        self.daemon.script(Op.CONNECT, Reply(delay=0.5))
        self.assertEqual(sock.connect_ex(("127.0.0.1", 443)), errno.ETIMEDOUT)

    def test_lost_daemon(self) -> None:
        """
        The control connection dying mid-request is ECONNABORTED naming the
        daemon, then and after.
        """
        self.daemon.script(Op.CONNECT, Reply(hangup=True))
        sock = self.socket()
        e = self.assertRaises(ConnectionAbortedError, sock.connect, ("127.0.0.1", 443))
        self.assertIn(f"lost the connection to the SSA daemon at {self.daemon.path}", str(e))
        e = self.assertRaises(ConnectionAbortedError, sock.getsockopt, 205, 96)
        self.assertIn(self.daemon.path, str(e))


class WaitingOptionTests(ClientTestCase):
    """
    Options the daemon cannot refuse on a new socket wait in the client and
    travel with CONNECT, or go first with the next other request, in one
    write; every other option, and any value the client's check refuses,
    is asked at once (docs/protocol.md, "Options that travel with CONNECT").
    """

    def test_carried_by_connect(self) -> None:
        """
        TLS_HOSTNAME, network options and TLS_SESSION_REUSE 0 cost no round
        trip: CONNECT carries them, in the order they were set.
        """
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "example.com")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_SESSION_REUSE, 0)
        self.assertEqual(self.daemon.ops(), [Op.SOCKET])
        sock.connect(("127.0.0.1", 8443))
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.CONNECT])
        frame = self.daemon.only(Op.CONNECT)
        self.assertTrue(wire.CONNECT_FLAGS.unpack_from(frame.body)[0] & wire.CONNECT_OPTIONS)
        self.assertEqual(
            self.daemon.carried(frame),
            [(205, 85, b"example.com\0"), (socket.IPPROTO_TCP, socket.TCP_NODELAY, struct.pack("i", 1)),
             (205, 108, struct.pack("i", 0))],
        )
        # Connected: options go at once again.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.CONNECT, Op.SETSOCKOPT])

    def test_asked_at_once(self) -> None:
        """
        Options a policy or a parse could refuse go at once, after those
        that waited (sent in the same write, their replies checked); so do
        values the client's check refuses, whose error is the daemon's.
        """
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "example.com")
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_SESSION_REUSE, 1)
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.SETSOCKOPT, Op.SETSOCKOPT])
        self.assertEqual(self.daemon.options(Op.SETSOCKOPT),
                         [(205, 85, b"example.com\0"), (205, 108, struct.pack("i", 1))])
        self.daemon.script((Op.SETSOCKOPT, 205, 85), Reply(errno.EINVAL, b"TLS_HOSTNAME: 'a b' contains white space"))
        error = self.assertRaises(OSError, sock.setsockopt, client.IPPROTO_TLS, client.TLS_HOSTNAME, "a b")
        self.assertEqual(error.errno, errno.EINVAL)
        self.assertEqual(self.daemon.ops()[-1], Op.SETSOCKOPT)
        self.assertRaises(OSError, sock.setsockopt, client.IPPROTO_TLS, client.TLS_HOSTNAME, "")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, -1)
        self.assertEqual(self.daemon.ops().count(Op.SETSOCKOPT), 5)

    def test_sent_before_other_requests(self) -> None:
        """
        A getsockopt (or bind, listen, ...) sends the waiting options first,
        so it sees them; a refusal of one (the daemon lost the socket, say)
        is that call's error.
        """
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "example.com")
        self.daemon.script((Op.GETSOCKOPT, 205, 85), Reply(payload=b"example.com\0"))
        self.assertEqual(sock.getsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME), "example.com")
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.SETSOCKOPT, Op.GETSOCKOPT])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.daemon.script((Op.SETSOCKOPT, socket.IPPROTO_TCP, socket.TCP_NODELAY), Reply(errno.EBADF, b"gone"))
        error = self.assertRaises(OSError, sock.bind, ("127.0.0.1", 0))
        self.assertEqual((error.errno, error.strerror), (errno.EBADF, "gone"))
        self.assertEqual(self.daemon.ops()[-2:], [Op.SETSOCKOPT, Op.BIND])
        # Asked to bind (even though that call failed): options go at once.
        self.assertRaises(OSError, sock.setsockopt, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.assertEqual(self.daemon.ops()[-2:], [Op.BIND, Op.SETSOCKOPT])

    def test_id_sends_them(self) -> None:
        """
        The socket's id is the handle another socket adopts its settings by
        (TLS_CONTEXT): asking for it sends what waited.
        """
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "example.com")
        self.assertEqual(sock.id, 0x1001)
        self.assertEqual(self.daemon.options(Op.SETSOCKOPT), [(205, 85, b"example.com\0")])
        self.assertEqual(sock.id, 0x1001)
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.SETSOCKOPT, Op.GETSOCKOPT])

    def test_closed_unsent(self) -> None:
        """
        Closing a socket drops what waited: the daemon is not asked.
        """
        sock = self.socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "example.com")
        sock.close()
        self.daemon.wait_for(lambda: Op.CLOSE in self.daemon.ops())
        self.assertEqual(self.daemon.ops(), [Op.SOCKET, Op.CLOSE])


class CommandTests(ClientTestCase):
    """
    The C{ssa} command.
    """

    def run_main(self, argv: list[str]) -> tuple[int | None, str]:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        try:
            code: int | None = cli.main(argv)
        except SystemExit as e:
            code = e.code  # type: ignore[assignment]
        return code, err.getvalue() + out.getvalue()

    def test_help(self) -> None:
        """
        C{--help} of C{ssa} and of C{ssa connect} exit 0 and say what they do.
        """
        code, text = self.run_main(["--help"])
        self.assertEqual(code, 0)
        self.assertIn("connect", text)
        code, text = self.run_main(["connect", "--help"])
        self.assertEqual(code, 0)
        self.assertIn("--servername", text)
        self.assertIn("openssl s_client", text)

    def test_usage_errors(self) -> None:
        """
        Usage errors exit 2.
        """
        self.assertEqual(self.run_main([])[0], 2)
        self.assertEqual(self.run_main(["connect"])[0], 2)
        self.assertEqual(self.run_main(["connect", "example.com"])[0], 2)
        self.assertEqual(self.run_main(["connect", "::1:443"])[0], 2)
        self.assertEqual(self.run_main(["nonsense"])[0], 2)

    def test_parse_host_port(self) -> None:
        """
        HOST:PORT and [v6]:PORT.
        """
        self.assertEqual(cli.parse_host_port("example.com:443"), ("example.com", 443))
        self.assertEqual(cli.parse_host_port("[::1]:8443"), ("::1", 8443))
        for bad in ("example.com", "example.com:0", "example.com:http", ":443", "[::1]", "[::1]443", "a:b:443"):
            self.assertRaises(ValueError, cli.parse_host_port, bad)

    def test_registry(self) -> None:
        """
        Subcommands live in a dict, so more are one decorator away.
        """
        self.assertIn("connect", cli.COMMANDS)
        self.assertIs(cli.COMMANDS["connect"].run, cli.run_connect)

    def test_connect_failure(self) -> None:
        """
        A refused connect prints the reason and exits 1; the options went
        out first.
        """
        ca = self.write(os.path.join(self.tempdir(), "ca.pem"), CERT)
        self.daemon.script(Op.CONNECT, Reply(errno.EPROTO, b"certificate verify failed: unable to get local issuer certificate (depth 1)"))
        code, text = self.run_main(["connect", "127.0.0.1:4433", "--servername", "example.com", "--cafile", ca, "--socket", self.daemon.path])
        self.assertEqual(code, 1)
        self.assertEqual(text, "ssa: cannot connect to 127.0.0.1:4433: certificate verify failed: unable to get local issuer certificate (depth 1)\n")
        self.assertEqual(self.daemon.options(Op.SETSOCKOPT), [(205, 85, b"example.com\0"), (205, 87, CERT)])
        self.daemon.wait_for(lambda: Op.CLOSE in self.daemon.ops())

    def test_connect_unreachable(self) -> None:
        """
        No daemon: the message names the control socket.
        """
        path = os.path.join(self.tempdir(), "none.sock")
        code, text = self.run_main(["connect", "[::1]:443", "--socket", path])
        self.assertEqual(code, 1)
        self.assertEqual(text, f"ssa: cannot connect to [::1]:443: cannot reach the SSA daemon at {path}: No such file or directory\n")

    def test_connect_name(self) -> None:
        """
        A name becomes TLS_HOSTNAME; the socket's family is the address's.
        """
        self.daemon.script(Op.CONNECT, Reply(errno.EPROTO, b"no"))
        code, _ = self.run_main(["connect", "localhost:4433", "--socket", self.daemon.path])
        self.assertEqual(code, 1)
        self.assertEqual(self.daemon.options(Op.SETSOCKOPT), [(205, 85, b"localhost\0")])
        family = wire.SOCKET_ARGS.unpack(self.daemon.only(Op.SOCKET).body)[0]
        body = self.daemon.only(Op.CONNECT).body
        (connect_family, host, port), _ = wire.decode_address(body[wire.CONNECT_FLAGS.size :])
        self.assertEqual((connect_family, port), (family, 4433))
        self.assertIn(host, ("127.0.0.1", "::1"))

    def relay(self, peer: Callable[[socket.socket], None], stdin_data: bytes, close_stdin: bool) -> tuple[int, bytes, str]:
        """
        Run C{ssa connect} with pipes for stdin and stdout and C{peer}
        playing the far end on the daemon's side of the plaintext stream.
        """
        self.daemon.script((Op.GETSOCKOPT, 205, 113), Reply(payload=struct.pack("i", 3)))
        self.daemon.script((Op.GETSOCKOPT, 205, 98), Reply(payload=b"TLS_AES_256_GCM_SHA384\0"))
        self.daemon.script((Op.GETSOCKOPT, 205, 93), Reply(payload=b"/CN=localhost\0"))
        threads = []

        def start(socket_id: int, end: socket.socket) -> None:
            thread = threading.Thread(target=peer, args=(end,), daemon=True)
            threads.append(thread)
            thread.start()

        self.daemon.on_new_socket = start
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        for fd in (stdin_r, stdout_r):
            self.addCleanup(_close_quietly, fd)
        if not close_stdin:
            self.addCleanup(_close_quietly, stdin_w)
        os.write(stdin_w, stdin_data)
        if close_stdin:
            os.close(stdin_w)
        args = cli.build_parser().parse_args(["connect", "127.0.0.1:4433", "--servername", "localhost", "--socket", self.daemon.path])
        err = io.StringIO()
        code = cli.run_connect(args, stdin=stdin_r, stdout=stdout_w, stderr=err)
        for thread in threads:
            thread.join(5)
        os.close(stdout_w)
        with os.fdopen(os.dup(stdout_r), "rb") as f:
            out = f.read()
        return code, out, err.getvalue()

    def test_relay(self) -> None:
        """
        stdin goes to the peer and its end of file half-closes; the peer's
        data goes to stdout and its clean end exits 0.
        """
        received = []

        def peer(end: socket.socket) -> None:
            data = b""
            while chunk := end.recv(1024):
                data += chunk
            received.append(data)
            end.sendall(b"hello back")
            end.shutdown(socket.SHUT_WR)

        code, out, err = self.relay(peer, b"ping", close_stdin=True)
        self.assertEqual(code, 0)
        self.assertEqual(out, b"hello back")
        self.assertEqual(received, [b"ping"])
        self.assertEqual(err, "ssa: connected to 127.0.0.1:4433, peer /CN=localhost, TLS 1.3, TLS_AES_256_GCM_SHA384\n")

    def test_truncation(self) -> None:
        """
        A read error (the daemon resets the stream: the peer truncated)
        exits 1 with the reason.
        """
        self.daemon.script((Op.GETSOCKOPT, 205, 100), Reply(payload=b"the peer closed the connection without close_notify\0"))

        def peer(end: socket.socket) -> None:
            select.select([end], [], [], 5)
            end.close()  # unread data: the client's read fails ECONNRESET

        code, out, err = self.relay(peer, b"ping", close_stdin=False)
        self.assertEqual(code, 1)
        self.assertEqual(out, b"")
        self.assertIn("ssa: connection to 127.0.0.1:4433 failed: Connection reset by peer", err)
        self.assertIn("the peer closed the connection without close_notify", err)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
