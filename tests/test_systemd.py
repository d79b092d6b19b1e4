"""
The daemon under systemd's protocols, with sockets the test owns: socket
activation (a listening socket passed as descriptor 3 with C{LISTEN_FDS}
and C{LISTEN_PID}, through a small exec wrapper), C{sd_notify} to a
datagram socket (C{READY=1}, C{RELOADING=1}/C{READY=1} around SIGHUP,
C{STOPPING=1}), and the unit files through C{systemd-analyze verify}.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from ssa import client, systemd
from ssa.testing.certs import CertificateAuthority
from ssa.testing.daemon import SOURCE_ROOT
from ssa.testing.peers import StdlibTLSServer, echo_handler

UNITS = SOURCE_ROOT / "systemd"
MAN = SOURCE_ROOT / "man"

# Puts descriptor argv[1] on 3, as systemd does, sets LISTEN_PID to its own
# pid, which the exec keeps, and runs the rest of its arguments.
_WRAPPER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.argv[2], sys.argv[2:])
"""


class ActivationTests(SynchronousTestCase):
    """
    C{ssa-daemon} started the way systemd starts it.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority.create()
        self.server_key = self.ca.issue_server("localhost", "127.0.0.1")
        self.dir = tempfile.mkdtemp(prefix="ssa-systemd-")
        self.path = os.path.join(self.dir, "ssa.sock")
        self.listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listening.bind(self.path)
        self.listening.listen(16)
        self.addCleanup(self.listening.close)
        self.notifications = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notifications.bind(os.path.join(self.dir, "notify"))
        self.notifications.settimeout(30)
        self.addCleanup(self.notifications.close)

    def start(self, *arguments: str) -> subprocess.Popen:
        """
        Start C{ssa-daemon} with the listening socket as descriptor 3.
        """
        env = dict(os.environ, PYTHONPATH=str(SOURCE_ROOT), NOTIFY_SOCKET=os.path.join(self.dir, "notify"))
        log = open(os.path.join(self.dir, "daemon.log"), "wb")
        self.addCleanup(log.close)
        fd = self.listening.fileno()
        process = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, str(fd), sys.executable, "-m", "ssa.systemd", "--log-format", "text",
             "ssa", "--socket", os.path.join(self.dir, "unused.sock"), *arguments],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=[fd],
        )

        def stop() -> None:
            if process.poll() is None:
                process.kill()
            process.wait()

        self.addCleanup(stop)
        return process

    def notification(self) -> dict[str, str]:
        """
        The next C{sd_notify} datagram, as a dict.
        """
        try:
            data = self.notifications.recv(4096).decode()
        except TimeoutError:
            self.fail(f"no notification; the daemon's log:\n{self.log()}")
        return dict(line.split("=", 1) for line in data.splitlines())

    def log(self) -> str:
        return Path(self.dir, "daemon.log").read_text(errors="replace")

    def echo(self, server: StdlibTLSServer) -> None:
        """
        One connection through the daemon, on the test's control socket.
        """
        with client.socket(client.AF_INET, client.SOCK_STREAM, client.IPPROTO_TLS, path=self.path) as sock:
            sock.setsockopt(client.IPPROTO_TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, self.ca.cert_pem())
            sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "localhost")
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"ping")
            self.assertEqual(sock.recv(4), b"ping")

    def activated(self, *arguments: str) -> None:
        process = self.start(*arguments)
        ready = self.notification()
        self.assertEqual((ready.get("READY"), ready.get("MAINPID")), ("1", str(process.pid)), ready)
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            for _ in range(3):
                self.echo(server)
                _close_idle(self.path)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "unused.sock")))
        process.send_signal(signal.SIGHUP)
        reloading = self.notification()
        self.assertEqual(reloading.get("RELOADING"), "1", reloading)
        self.assertGreater(int(reloading["MONOTONIC_USEC"]), 0)
        self.assertEqual(self.notification().get("READY"), "1")
        process.send_signal(signal.SIGTERM)
        self.assertEqual(self.notification().get("STOPPING"), "1")
        # twist ends by the signal that stopped it, as systemd expects.
        self.assertIn(process.wait(30), (0, -signal.SIGTERM), self.log())
        # The socket is still systemd's (here, the test's): it exists and
        # still takes connections for the next start.
        self.assertTrue(os.path.exists(self.path))
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(probe.close)
        probe.connect(self.path)

    def test_socket_activation_and_notify(self) -> None:
        """
        The daemon serves the socket it was passed (not binding its own),
        tells systemd it is ready with its pid, says RELOADING=1 then
        READY=1 around SIGHUP and STOPPING=1 on SIGTERM, and leaves the
        socket working and in place.
        """
        self.activated()

    def test_socket_activation_with_workers(self) -> None:
        """
        The same with two worker processes, which share the passed socket;
        only the main process notifies.
        """
        self.activated("--workers", "2")


def _close_idle(path: str) -> None:
    from ssa import _channels

    _channels.close_idle(path)


class ListenFDsTests(SynchronousTestCase):
    """
    Taking the descriptors out of the environment.
    """

    def test_other_process(self) -> None:
        """
        Descriptors meant for another pid are not taken, and the variables
        are removed all the same.
        """
        environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "PATH": "/bin"}
        self.assertEqual(systemd.take_listen_fds(environ), [])
        self.assertEqual(environ, {"PATH": "/bin"})

    def test_taken_nonblocking(self) -> None:
        """
        The descriptors from 3 on are made nonblocking and close-on-exec
        (systemd passes them blocking and inheritable).
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        saved = os.dup(3) if _is_open(3) else None
        os.dup2(a.fileno(), 3)
        try:
            os.set_blocking(3, True)
            environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
            self.assertEqual(systemd.take_listen_fds(environ), [3])
            self.assertFalse(os.get_blocking(3))
            self.assertFalse(os.get_inheritable(3))
            self.assertEqual(environ, {})
        finally:
            if saved is None:
                os.close(3)
            else:
                os.dup2(saved, 3)
                os.close(saved)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class UnitTests(SynchronousTestCase):
    """
    The unit files in the repository.
    """

    def test_verify(self) -> None:
        """
        C{systemd-analyze verify} accepts both units (ExecStart pointing at
        this installation's C{ssa-daemon}, the manual pages they name found
        in the repository).
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise self.skipTest("systemd-analyze is not installed (.ci/run installs the systemd package)")
        daemon = Path(sys.executable).parent / "ssa-daemon"
        if not daemon.exists():
            raise self.skipTest(f"{daemon} is not installed (pip install -e . makes it)")
        units = Path(tempfile.mkdtemp(prefix="ssa-units-"))
        self.addCleanup(shutil.rmtree, units)
        service = (UNITS / "ssa.service").read_text()
        self.assertIn("ExecStart=/usr/bin/ssa-daemon ", service)
        (units / "ssa.service").write_text(service.replace("/usr/bin/ssa-daemon", str(daemon)))
        shutil.copy(UNITS / "ssa.socket", units / "ssa.socket")
        manpath = units / "man"
        for page in MAN.iterdir():
            section = manpath / f"man{page.suffix[1:]}"
            section.mkdir(parents=True, exist_ok=True)
            shutil.copy(page, section / page.name)
        env = dict(os.environ, MANPATH=str(manpath), SYSTEMD_LOG_LEVEL="notice")
        result = subprocess.run(
            [analyze, "verify", str(units / "ssa.socket"), str(units / "ssa.service")],
            capture_output=True, text=True, env=env, timeout=120,
        )
        self.assertEqual((result.returncode, result.stderr.strip()), (0, ""), result.stdout)

    def test_hardening(self) -> None:
        """
        The service asks for the hardening of a network daemon and the
        notify protocol.
        """
        service = (UNITS / "ssa.service").read_text().splitlines()
        for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "PrivateTmp=yes", "DynamicUser=yes",
                     "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"):
            self.assertIn(line, service)
        self.assertIn("ListenStream=/run/ssa/ssa.sock", (UNITS / "ssa.socket").read_text().splitlines())
