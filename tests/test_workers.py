"""
End to end, several worker processes (C{--workers 2}): connections are
served by both; accept() and TLS_CONTEXT work across them (the control
connection, or the NEW socket, moves to the worker that serves the socket
named); SIGHUP reaches every worker; a killed worker comes back; stopping
leaves no worker behind; and the failure paths stay clean.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ssa import client, wire
from ssa._control import ControlChannel
from ssa.testing.daemon import SOURCE_ROOT, is_alive
from ssa.testing.peers import StdlibTLSServer, echo_handler

from .helpers import DaemonTestCase

TLS = client.IPPROTO_TLS
HANDOFF = "handing a control connection to worker"
TAKEN = "took a control connection from worker"


def worker_of(socket_id: int) -> int:
    """
    The worker serving a socket: the top byte of its id.
    """
    return socket_id >> 56


def forget_idle_connections(path: str) -> None:
    """
    Close the idle control connections the client may keep for reuse
    (C{ssa._channels}, where it exists), so that the next socket connects
    afresh and so lands in a worker chosen now.
    """
    try:
        from ssa import _channels
    except ImportError:
        return
    _channels.close_idle(path)


def recv_exactly(sock, size: int) -> bytes:
    """
    Read exactly C{size} bytes.
    """
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


class WorkersTestCase(DaemonTestCase):
    """
    A daemon with two workers, both serving.
    """

    workers = 2

    def daemon_arguments(self) -> list[str]:
        """
        Ask for the workers.
        """
        return [*super().daemon_arguments(), "--workers", str(self.workers), "--handshake-timeout", "5"]

    def setUp(self) -> None:
        super().setUp()
        for index in range(1, self.workers):
            self.daemon.wait_for_log(f"worker {index} ready")

    def pids(self) -> dict[int, int]:
        """
        The pid of each worker (the main process is worker 0).
        """
        pids = {0: self.daemon.process.pid}
        for match in re.finditer(r"worker (\d+) ready \(pid (\d+)\)", self.daemon.log()):
            pids[int(match.group(1))] = int(match.group(2))
        return pids

    @contextmanager
    def only(self, worker: int) -> Iterator[None]:
        """
        Let only C{worker} accept connections for a while: stop the others
        (SIGSTOP) and continue them afterwards. (The kernel wakes every
        worker for a new connection and the first to run takes it, so
        without this an idle daemon may give a run of connections to
        the same worker.)
        """
        others = [pid for index, pid in self.pids().items() if index != worker and is_alive(pid)]
        forget_idle_connections(self.daemon.socket_path)
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        for pid in others:
            deadline = time.monotonic() + 10
            while process_state(pid) not in ("T", "t"):  # SIGSTOP takes effect a little later
                self.assertLess(time.monotonic(), deadline, f"process {pid} did not stop")
                time.sleep(0.005)
        try:
            yield
        finally:
            for pid in others:
                os.kill(pid, signal.SIGCONT)

    def socket_in(self, worker: int, **kwargs) -> client.SSASocket:
        """
        A new socket served by C{worker}.
        """
        for attempt in range(20):
            if attempt:
                with self.only(worker):
                    sock = self.trusting_socket(**kwargs)
            else:
                sock = self.trusting_socket(**kwargs)
            if worker_of(sock.id) == worker:
                return sock
            sock.close()
        self.fail(f"no socket landed in worker {worker} in 20 tries")

    def count(self, text: str) -> int:
        """
        How often the daemon's log holds C{text}.
        """
        return self.daemon.log().count(text)


class SpreadTests(WorkersTestCase):
    """
    Connections through both workers.
    """

    def test_connections_served_by_both_workers(self) -> None:
        """
        Many concurrent connections to a real TLS server all echo, and
        their socket ids show that both workers served some.
        """
        seen: list[int] = []
        errors: list[BaseException] = []

        def run(thread: int) -> None:
            try:
                for number in range(6):
                    forget_idle_connections(self.daemon.socket_path)
                    with self.trusting_socket() as sock:
                        sock.connect(("127.0.0.1", server.port))
                        message = b"connection %d.%d" % (thread, number)
                        sock.sendall(message)
                        self.assertEqual(recv_exactly(sock, len(message)), message)
                        seen.append(worker_of(sock.id))
            except BaseException as e:  # noqa: BLE001 (reported by the test's thread)
                errors.append(e)

        with StdlibTLSServer(self.server_key, echo_handler) as server:
            threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(seen), 36)
        self.assertEqual(set(seen), {0, 1})

    def test_workers_option_is_checked(self) -> None:
        """
        C{--workers 0}, a negative count and more than 64 are usage errors.
        """
        env = dict(os.environ, PYTHONPATH=str(SOURCE_ROOT))
        for value in ("0", "-1", "65"):
            done = subprocess.run(
                [sys.executable, "-m", "twisted", "ssa", "--socket", os.path.join(self.tmp, "x.sock"),
                 "--workers", value],
                check=False, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
            )
            self.assertNotEqual(done.returncode, 0, value)
            self.assertIn(b"--workers must be between 1 and 64", done.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "x.sock")))


class AcceptTests(WorkersTestCase):
    """
    A listener in one worker, accept()'s channel landing in either.
    """

    def tls_client(self, port: int) -> ssl.SSLSocket:
        """
        A stdlib TLS client connected to C{port}, trusting this test's CA.
        """
        context = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        return context.wrap_socket(raw, server_hostname="localhost")

    def test_accept_across_workers(self) -> None:
        """
        accept() works whether its new control channel lands in the
        listener's worker or in the other one (which hands the channel
        over): each accept lets only one of the workers take the channel,
        in turn, so both cases happen; the log shows the handoffs.
        """
        listener = self.tls_socket()
        listener.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        listener.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        owner = worker_of(listener.id)
        handoffs = f"{HANDOFF} {owner} (its ACCEPT request names socket {listener.id:#x})"
        for number in range(8):
            peer = self.tls_client(port)
            result: list = []
            with self.only(number % 2):
                thread = threading.Thread(target=lambda out=result: out.append(listener.accept()))
                thread.start()
                time.sleep(0.2)
            thread.join(10)
            [(conn, address)] = result
            with conn, peer:
                self.assertEqual(worker_of(conn.id), owner)
                self.assertEqual(address[0], "127.0.0.1")
                message = b"ping %d" % number
                peer.sendall(message)
                self.assertEqual(recv_exactly(conn, len(message)), message)
                conn.sendall(b"pong")
                self.assertEqual(recv_exactly(peer, 4), b"pong")
        self.daemon.wait_for_log(TAKEN, 4)
        self.assertEqual(self.count(handoffs), 4)
        self.assertEqual(self.count(TAKEN), 4)

    def test_idle_connection_is_handed_over(self) -> None:
        """
        A connection whose socket was closed (as the client keeps one for
        reuse) owns nothing: a request naming another worker's listener
        moves it there too, and it goes on working.
        """
        listener = self.socket_in(0)
        listener.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        listener.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())
        listener.listen(4)
        with self.only(1):
            channel = ControlChannel(self.daemon.socket_path)
            self.addCleanup(channel.close)
            code, payload, fds = channel.request(
                wire.Op.SOCKET, 0, wire.SOCKET_ARGS.pack(socket.AF_INET, socket.SOCK_STREAM, TLS)
            )
        self.assertEqual(code, 0)
        os.close(fds[0])
        (socket_id,) = wire.NEW_SOCKET.unpack_from(payload)
        self.assertEqual(worker_of(socket_id), 1)
        self.assertEqual(channel.request(wire.Op.CLOSE, socket_id, b"")[0], 0)
        code, payload, _ = channel.request(wire.Op.ACCEPT, listener.id, wire.ACCEPT_FLAGS.pack(1), 10)
        self.assertEqual(code, errno.EAGAIN, payload)
        self.daemon.wait_for_log(f"{HANDOFF} 0 (its ACCEPT request names socket {listener.id:#x})")
        code, payload, fds = channel.request(
            wire.Op.SOCKET, 0, wire.SOCKET_ARGS.pack(socket.AF_INET, socket.SOCK_STREAM, TLS)
        )
        self.assertEqual(code, 0)
        os.close(fds[0])
        self.assertEqual(worker_of(wire.NEW_SOCKET.unpack_from(payload)[0]), 0)


class ContextTests(WorkersTestCase):
    """
    TLS_CONTEXT naming a socket of the other worker.
    """

    def test_context_copies_settings_across_workers(self) -> None:
        """
        The NEW socket moves to the context's worker, keeping its id and
        plaintext descriptor; it gets the context's settings and connects.
        """
        source = self.socket_in(0, hostname="localhost")
        source.setsockopt(TLS, client.TLS_SESSION_TTL, 77)
        source.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handle = source.getsockopt(TLS, client.TLS_CONTEXT)
        self.assertEqual(handle, source.id)
        sock = self.socket_in(1, hostname=None)
        own_id, fileno = sock.id, sock.fileno()
        sock.setsockopt(TLS, client.TLS_VERSION_MAX, client.TLS_1_2)
        sock.setsockopt(TLS, client.TLS_CONTEXT, handle)
        self.daemon.wait_for_log(f"took socket {own_id:#x} from worker 1")
        self.assertEqual(sock.getsockopt(TLS, client.TLS_ID), own_id)
        self.assertEqual(sock.getsockopt(TLS, client.TLS_HOSTNAME), "localhost")
        self.assertEqual(sock.getsockopt(TLS, client.TLS_SESSION_TTL), 77)
        self.assertEqual(sock.getsockopt(TLS, client.TLS_VERSION_MAX), client.TLS_1_3)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock.connect(("127.0.0.1", server.port))
            self.assertEqual(sock.fileno(), fileno)
            sock.sendall(b"moved")
            self.assertEqual(recv_exactly(sock, 5), b"moved")

    def test_failed_context_keeps_replayed_settings(self) -> None:
        """
        A handle of the other worker that names no socket: the socket
        moves, the other worker refuses the context (EINVAL), and the
        socket still has the settings it had, made again from its replay
        log; it still connects.
        """
        sock = self.socket_in(1)
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(TLS, client.TLS_SESSION_TTL, 33)
        bogus = (0 << 56) | 0x123456
        error = self.assertRaises(OSError, sock.setsockopt, TLS, client.TLS_CONTEXT, bogus)
        self.assertEqual(error.errno, errno.EINVAL)
        self.assertIn("is not a socket of this application", str(error))
        self.daemon.wait_for_log(f"took socket {sock.id:#x} from worker 1")
        self.assertEqual(sock.getsockopt(TLS, client.TLS_SESSION_TTL), 33)
        self.assertEqual(sock.getsockopt(TLS, client.TLS_HOSTNAME), "localhost")
        self.assertIn("is not a socket of this application", sock.get_error())
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"still")
            self.assertEqual(recv_exactly(sock, 5), b"still")

    def test_pipelined_requests_follow_the_socket(self) -> None:
        """
        Requests sent right behind the TLS_CONTEXT one (read together with
        it) are answered, in order, by the worker the socket moved to.
        """
        handle = self.socket_in(0, hostname="localhost").id
        for _ in range(200):
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.addCleanup(raw.close)
            raw.settimeout(10)
            raw.connect(self.daemon.socket_path)
            raw.sendall(wire.encode_frame(wire.Op.SOCKET, 1, 0, wire.SOCKET_ARGS.pack(socket.AF_INET, 1, TLS)))
            frames, fds = read_frames(raw, 1)
            os.close(fds[0])
            (socket_id,) = wire.NEW_SOCKET.unpack_from(frames[0].body, 4)
            if worker_of(socket_id) == 1:
                break
        option = wire.OPTION.pack(TLS, client.TLS_CONTEXT) + handle.to_bytes(8, sys.byteorder)
        hostname = wire.OPTION.pack(TLS, client.TLS_HOSTNAME)
        raw.sendall(
            wire.encode_frame(wire.Op.SETSOCKOPT, 2, socket_id, option)
            + wire.encode_frame(wire.Op.GETSOCKOPT, 3, socket_id, hostname)
            + wire.encode_frame(wire.Op.GETSOCKOPT, 4, socket_id, wire.OPTION.pack(TLS, client.TLS_ID))
        )
        frames, _ = read_frames(raw, 3)
        self.assertEqual([f.tag for f in frames], [2, 3, 4])
        self.assertEqual([wire.decode_reply_body(f.body)[0] for f in frames], [0, 0, 0])
        self.assertEqual(wire.decode_reply_body(frames[1].body)[1], b"localhost\0")
        self.assertEqual(int.from_bytes(wire.decode_reply_body(frames[2].body)[1], sys.byteorder), socket_id)
        self.daemon.wait_for_log(f"took socket {socket_id:#x} from worker 1")

    def test_connection_with_two_sockets_cannot_move(self) -> None:
        """
        A control connection that owns two sockets cannot move: EINVAL,
        naming the other worker; nothing moved.
        """
        other = self.socket_in(0).id
        for _ in range(200):
            channel = ControlChannel(self.daemon.socket_path)
            self.addCleanup(channel.close)
            ids = []
            for _ in range(2):
                code, payload, fds = channel.request(wire.Op.SOCKET, 0, wire.SOCKET_ARGS.pack(socket.AF_INET, 1, TLS))
                self.assertEqual(code, 0)
                os.close(fds[0])
                ids.append(wire.NEW_SOCKET.unpack(payload[:8])[0])
            if worker_of(ids[0]) == 1:
                break
            channel.close()
        value = wire.OPTION.pack(TLS, client.TLS_CONTEXT) + other.to_bytes(8, sys.byteorder)
        code, payload, _ = channel.request(wire.Op.SETSOCKOPT, ids[0], value)
        self.assertEqual(code, errno.EINVAL)
        self.assertIn(b"belongs to another worker of the daemon", payload)
        code, payload, _ = channel.request(wire.Op.GETSOCKOPT, ids[0], wire.OPTION.pack(TLS, client.TLS_ERROR))
        self.assertIn(b"belongs to another worker of the daemon", payload)
        self.assertEqual(self.count("took socket"), 0)


def process_state(pid: int) -> str:
    """
    A process's state letter (C{/proc/PID/stat}).
    """
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def read_frames(sock: socket.socket, count: int) -> tuple[list[wire.Frame], list[int]]:
    """
    Read C{count} frames and the descriptors that came with them.
    """
    decoder, frames, fds = wire.FrameDecoder(), [], []
    while len(frames) < count:
        data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16))
        for level, kind, payload in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds.extend(int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, len(payload), 4))
        if not data:
            raise AssertionError(f"EOF after {len(frames)} frames")
        frames.extend(decoder.feed(data))
    return frames, fds


class RequestTests(WorkersTestCase):
    """
    First requests that name sockets of workers that do not exist, or
    that are restarting.
    """

    def test_socket_of_a_worker_that_does_not_exist(self) -> None:
        """
        A first request naming a socket of worker 5 of 2 gets EBADF from
        whichever worker took the connection.
        """
        missing = (5 << 56) | 0x42
        for op, body in [(wire.Op.ACCEPT, wire.ACCEPT_FLAGS.pack(0)),
                         (wire.Op.GETSOCKOPT, wire.OPTION.pack(TLS, client.TLS_ID))]:
            for _ in range(4):
                channel = ControlChannel(self.daemon.socket_path)
                self.addCleanup(channel.close)
                code, payload, _ = channel.request(op, missing, body, timeout=10)
                self.assertEqual(code, errno.EBADF, payload)
        self.assertEqual(self.count(HANDOFF), 0)

    def test_handoff_to_a_restarting_worker(self) -> None:
        """
        accept() naming a listener of a worker that was just killed, before
        it is restarted: the main process cannot pass the connection on
        and closes it; the client sees the connection lost, the daemon goes
        on serving, and the worker comes back.
        """
        doomed = self.socket_in(1).id
        [pid] = self.daemon.children()
        os.kill(pid, signal.SIGKILL)
        self.daemon.wait_for_log(f"worker 1 exited (pid {pid}, signal 9)")
        channel = ControlChannel(self.daemon.socket_path)
        self.addCleanup(channel.close)
        error = self.assertRaises(
            OSError, channel.request, wire.Op.ACCEPT, doomed, wire.ACCEPT_FLAGS.pack(0), 10
        )
        self.assertEqual(error.errno, errno.ECONNABORTED)
        self.daemon.wait_for_log("cannot pass a connection to worker 1: it is not running")
        self.daemon.wait_for_log("worker 1 ready", 2)
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            for worker in (0, 1):
                sock = self.socket_in(worker)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(b"alive")
                self.assertEqual(recv_exactly(sock, 5), b"alive")


class LifeTests(WorkersTestCase):
    """
    Supervision: restarts, signals, stopping.
    """

    def daemon_arguments(self) -> list[str]:
        """
        Start with a policy file that allows TLS 1.2.
        """
        self.config = os.path.join(self.tmp, "config.yml")
        self.write_policy("min-tls-version: 2\n")
        return [*super().daemon_arguments(), "--config", self.config]

    def write_policy(self, text: str) -> None:
        """
        Replace the policy file.
        """
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(text))

    def test_killed_worker_is_restarted(self) -> None:
        """
        SIGKILL a worker: the main process logs its exit, starts it again,
        and both workers serve connections afterwards.
        """
        [pid] = self.daemon.children()
        os.kill(pid, signal.SIGKILL)
        self.daemon.wait_for_log(f"worker 1 exited (pid {pid}, signal 9)")
        self.daemon.wait_for_log("worker 1 ready", 2)
        [new_pid] = self.daemon.children()
        self.assertNotEqual(new_pid, pid)
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            for worker in (0, 1, 0, 1):
                sock = self.socket_in(worker)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(b"again")
                self.assertEqual(recv_exactly(sock, 5), b"again")
                sock.close()

    def test_worker_stopping_leaves_the_control_socket(self) -> None:
        """
        A worker that stops in order (SIGTERM) stops accepting from the
        shared control socket without shutting it down or removing its
        path: the other workers go on accepting, and it comes back.
        """
        [pid] = self.daemon.children()
        os.kill(pid, signal.SIGTERM)
        self.daemon.wait_for_log(f"worker 1 exited (pid {pid}, signal 15)")
        self.assertTrue(os.path.exists(self.daemon.socket_path))
        with self.only(0):
            sock = self.trusting_socket()
        self.assertEqual(worker_of(sock.id), 0)
        self.daemon.wait_for_log("worker 1 ready", 2)
        self.socket_in(1)

    def test_sighup_reloads_every_worker(self) -> None:
        """
        After a policy change and SIGHUP, a TLS 1.2 server is refused by
        sockets of both workers; before it, both reached it.
        """
        with StdlibTLSServer(self.server_key, echo_handler, maximum_version=ssl.TLSVersion.TLSv1_2) as server:
            for worker in (0, 1):
                sock = self.socket_in(worker)
                sock.connect(("127.0.0.1", server.port))
                sock.close()
            self.write_policy("min-tls-version: 3\n")
            self.daemon.process.send_signal(signal.SIGHUP)
            log = self.daemon.wait_for_log("worker 1: [ssa.tap.daemon#info] policy reloaded")
            self.assertIn("] policy reloaded from", log.replace("worker 1: [ssa.tap.daemon#info] policy", ""))
            for worker in (0, 1):
                sock = self.socket_in(worker)
                self.assertConnectFails(sock, ("127.0.0.1", server.port), errno.EPROTO)

    def test_stopping_leaves_no_worker(self) -> None:
        """
        SIGTERM to the main process stops the workers too.
        """
        children = self.daemon.children()
        self.assertEqual(len(children), 1)
        self.daemon.stop()
        for pid in children:
            self.assertFalse(is_alive(pid), f"worker {pid} outlived the daemon")
        self.assertIn("worker 1 exited", self.daemon.log())
        self.assertFalse(os.path.exists(self.daemon.socket_path))

    def test_workers_die_with_a_killed_main_process(self) -> None:
        """
        SIGKILL to the main process: the workers notice and stop.
        """
        children = self.daemon.children()
        self.daemon.process.kill()
        self.daemon.process.wait()
        deadline = time.monotonic() + 10
        while any(is_alive(pid) for pid in children):
            self.assertLess(time.monotonic(), deadline, "a worker outlived the main process")
            time.sleep(0.05)
