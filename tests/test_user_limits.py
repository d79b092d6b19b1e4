"""
One user must not exhaust the daemon for everyone (issue 17, item 5): per
uid, sockets (a policy bound, and never more than a share of the daemon's
descriptors) and bytes buffered for unfinished requests. Each test has a
second user (nobody, in forked processes) push against a bound, then
checks the clear errno it got and that root's connections still work.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import termios
import time
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from ssa import _channels, client, wire
from ssa.limits import socket_capacity
from ssa.testing.certs import CertificateAuthority
from ssa.testing.daemon import DaemonProcess
from ssa.testing.peers import StdlibTLSServer, echo_handler

from .test_e2e_connect import recv_exactly

NOBODY = 65534
TLS = client.IPPROTO_TLS


def as_user(uid: int, work: Callable[[], object]) -> object:
    """
    Run C{work} in a forked child process that is C{uid}, and return what
    it returned (JSON), or raise what it raised, as text.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            result = {"ok": work()}
        except BaseException as e:  # noqa: BLE001
            result = {"error": repr(e)}
        with os.fdopen(write_end, "w") as out:
            json.dump(result, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as out:
        text = out.read()
    os.waitpid(pid, 0)
    result = json.loads(text)
    if "error" in result:
        raise AssertionError(f"the child process as uid {uid} failed: {result['error']}")
    return result["ok"]


def unread(sock: socket.socket) -> int:
    """
    Bytes written on C{sock} that its peer has not read yet.
    """
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


class UserLimitTests(SynchronousTestCase):
    """
    A daemon shared by root and nobody.
    """

    config = ""
    descriptor_limit: int | None = None

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ssa-limits-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        config = os.path.join(self.tmp, "config.yml")
        with open(config, "w") as f:
            f.write(self.config or "max-sockets-per-client: 1024\n")
        self.daemon = DaemonProcess(["--config", config], descriptor_limit=self.descriptor_limit).start()
        self.addCleanup(self.daemon.stop)
        self.addCleanup(_channels.close_idle)
        os.chmod(os.path.dirname(self.daemon.socket_path), 0o755)
        ca = CertificateAuthority.create()
        self.ca_pem = ca.cert_pem()
        self.echo = StdlibTLSServer(ca.issue_server("localhost"), echo_handler).start()
        self.addCleanup(self.echo.stop)

    def assertRootStillWorks(self) -> None:
        sock = client.socket(path=self.daemon.socket_path)
        with sock:
            sock.setsockopt(TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, self.ca_pem)
            sock.setsockopt(TLS, client.TLS_HOSTNAME, "localhost")
            sock.connect(("127.0.0.1", self.echo.port))
            sock.sendall(b"ping")
            self.assertEqual(recv_exactly(sock, 4), b"ping")

    def open_until_refused(self, most: int) -> tuple[int, int, str]:
        """
        As nobody, open sockets until the daemon refuses one (at most
        C{most}); return how many it gave, and the refusal's errno and
        message.
        """
        path = self.daemon.socket_path

        def work() -> list:
            held = []
            try:
                for _ in range(most):
                    held.append(client.socket(path=path))
            except OSError as e:
                return [len(held), e.errno, str(e)]
            return [len(held), 0, ""]

        count, err, message = as_user(NOBODY, work)  # type: ignore[misc]
        return count, err, message


class PolicyBoundTests(UserLimitTests):
    config = "max-sockets-per-user: 20\n"

    def test_processes_of_one_user_share_the_bound(self) -> None:
        """
        Two processes of nobody hold 20 sockets between them, the 21st is
        refused with EMFILE naming the key; root is not affected.
        """
        path = self.daemon.socket_path
        read_end, write_end = os.pipe()
        go_end, wait_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the first process: hold 15 until told
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                held = [client.socket(path=path) for _ in range(15)]
                os.write(write_end, b"%d" % len(held))
                os.read(go_end, 1)
            finally:
                os._exit(0)
        self.assertEqual(os.read(read_end, 10), b"15")
        try:
            count, err, message = self.open_until_refused(50)
            self.assertEqual((count, err), (5, errno.EMFILE), message)
            self.assertIn("max-sockets-per-user (20 sockets)", message)
            self.assertRootStillWorks()
        finally:
            os.write(wait_end, b"x")
            os.waitpid(pid, 0)
        # Once the first process is gone, nobody has room again.
        count, err, message = self.open_until_refused(50)
        self.assertEqual((count, err), (20, errno.EMFILE), message)


class ConnectionBoundTests(UserLimitTests):
    config = "max-sockets-per-user: 20\n"

    def test_control_connections_are_bounded(self) -> None:
        """
        Nobody opens 40 control connections: 36 (its 20 sockets, plus 16)
        are served, the rest get a tag-0 EMFILE frame naming the bound and
        are closed; root still works.
        """
        path = self.daemon.socket_path
        request = wire.encode_frame(wire.Op.SOCKET, 1, 0, wire.SOCKET_ARGS.pack(socket.AF_INET, socket.SOCK_STREAM, 205))

        def work() -> list:
            conns = []
            for _ in range(40):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(path)
                sock.settimeout(30)
                conns.append(sock)
            outcomes = []
            for sock in conns:
                try:
                    sock.sendall(request)
                except OSError:
                    pass  # already closed by the daemon; its frame is still there to read
                decoder, frames = wire.FrameDecoder(), []
                while not frames:
                    data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16))
                    for _, _, payload in ancdata:
                        os.close(int.from_bytes(payload[:4], sys.byteorder))
                    if not data:
                        break
                    frames = decoder.feed(data)
                code, reason = wire.decode_reply_body(frames[0].body)
                outcomes.append([frames[0].tag, code, reason.decode(errors="replace")])
            return outcomes

        outcomes = as_user(NOBODY, work)
        self.assertEqual([o[:2] for o in outcomes[:20]], [[1, 0]] * 20, outcomes)
        self.assertEqual([o[:2] for o in outcomes[20:36]], [[1, errno.EMFILE]] * 16, outcomes)
        for outcome in outcomes[36:]:
            self.assertEqual(outcome[:2], [0, errno.EMFILE], outcomes)
            self.assertIn("36 control connections", outcome[2])
        self.assertRootStillWorks()


class DescriptorShareTests(UserLimitTests):
    descriptor_limit = 700

    def test_a_user_gets_a_share_of_the_descriptors(self) -> None:
        """
        With no policy bound below it, nobody gets a quarter of the sockets
        the daemon's descriptors allow; root keeps working.
        """
        share = socket_capacity(self.descriptor_limit) // 4
        count, err, message = self.open_until_refused(1000)
        self.assertEqual((count, err), (share, errno.EMFILE), message)
        self.assertIn("share of the daemon's descriptors", message)
        self.assertRootStillWorks()


class BufferedBytesTests(UserLimitTests):
    config = "max-request-bytes-per-user: 2097152\n"

    def test_unfinished_requests_are_bounded(self) -> None:
        """
        Nobody opens ten control connections, each with 900 KiB of a
        1 MiB request: the first two are kept, each later one is closed
        with ENOBUFS; the daemon does not grow by what they sent; root
        works.
        """
        path = self.daemon.socket_path
        before = self.daemon.memory_kib()
        header = struct.pack("!IBBHIQ", (1 << 20) - 4, 1, wire.Op.SOCKET, 0, 1, 0)
        part = header + bytes(900 << 10)

        def work() -> list:
            outcomes = []
            kept = []
            for _ in range(10):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(path)
                sock.settimeout(30)
                try:
                    sock.sendall(part)
                    deadline = time.monotonic() + 30
                    while unread(sock) and time.monotonic() < deadline:
                        time.sleep(0.001)  # until the daemon has read it all
                except OSError:
                    pass
                kept.append(sock)
            for sock in kept:
                decoder = wire.FrameDecoder()
                frames: list = []
                try:
                    if len(outcomes) < 2:
                        sock.sendall(bytes((1 << 20) - len(part)))  # finish it: an answer comes
                    while not frames:
                        data = sock.recv(65536)
                        if not data:
                            break
                        frames = decoder.feed(data)
                except OSError as e:
                    outcomes.append(["error", e.errno])
                    continue
                if not frames:
                    outcomes.append(["closed"])
                    continue
                code, reason = wire.decode_reply_body(frames[0].body)
                outcomes.append([frames[0].tag, code, reason.decode()])
            return outcomes

        outcomes = as_user(NOBODY, work)
        self.assertEqual([o[:2] for o in outcomes[:2]], [[1, errno.EINVAL]] * 2, outcomes)
        for outcome in outcomes[2:]:
            self.assertEqual(outcome[:2], [0, errno.ENOBUFS], outcomes)
            self.assertIn("max-request-bytes-per-user (2097152)", outcome[2])
        self.assertLess(self.daemon.memory_kib() - before, 6 << 10)
        self.assertRootStillWorks()
