"""
C{twistd ssa --frontend ...}: the netlink frontend in a real daemon
process, served to the simulated module (NETLINK_USERSOCK), and what the
daemon says when the kernel module is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from ssa.constants import IPPROTO_TLS, TLS_HOSTNAME, TLS_TRUSTED_PEER_CERTIFICATES
from ssa.netlink.transport import FamilyMissing, resolve_family
from ssa.netlink.wire import Command
from ssa.testing.certs import CertificateAuthority
from ssa.testing.daemon import SOURCE_ROOT, DaemonProcess
from ssa.testing.fakemodule import FakeModule
from ssa.testing.tls_server import StdlibTLSServer, echo_handler
from tests.test_netlink_frontend import echo


def free_port() -> int:
    """
    A TCP port free on loopback now (also used as the netlink port id).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NetlinkDaemon(DaemonProcess):
    """
    A daemon that is ready once it serves the module (it may have no
    control socket).
    """

    def _accepting(self) -> bool:
        return "serving the SSA kernel module" in self.log()


def run_daemon(*args: str) -> subprocess.CompletedProcess:
    """
    Run C{twist ssa ARGS} from the source tree to its end.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "twisted", "ssa", *args], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def module_loaded() -> bool:
    try:
        resolve_family()
    except FamilyMissing:
        return False
    return True


class MissingModuleTests(TestCase):
    """
    The real generic netlink controller of this machine, which has no SSA
    module loaded.
    """

    def setUp(self) -> None:
        if module_loaded():
            raise SkipTest("the SSA kernel module is loaded here")

    def test_netlink_alone_exits(self) -> None:
        """
        C{--frontend netlink} without the module: a message naming it and
        a non-zero exit, at once.
        """
        result = run_daemon("--frontend", "netlink", "--netlink-port", str(free_port()))
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("needs the SSA kernel module, which is not loaded", result.stdout + result.stderr)

    def test_unix_and_netlink_goes_on(self) -> None:
        """
        C{--frontend unix,netlink} without the module: a warning, and the
        Unix frontend serves.
        """
        with DaemonProcess(["--frontend", "unix,netlink", "--netlink-port", str(free_port())]) as daemon:
            daemon.wait_for_log("serving the Unix frontend only")
            from ssa import client

            with client.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_TLS, path=daemon.socket_path) as sock:
                sock.setsockopt(IPPROTO_TLS, TLS_HOSTNAME, "localhost")


class DaemonProcessTests(TestCase):
    """
    A daemon process serving the simulated module.
    """

    @inlineCallbacks
    def serve(self, *extra: str):
        port = free_port()
        self.module = FakeModule(reactor, port, daemon_port=port)
        self.addCleanup(self.module.close)
        daemon = NetlinkDaemon(["--frontend", *extra, "--netlink-port", str(port),
                                "--netlink-peer", str(self.module.pid)])
        self.addCleanup(daemon.stop)
        # the daemon asks the simulated module for the family while it
        # starts: keep the reactor running meanwhile
        yield deferToThread(daemon.start)
        return daemon

    @inlineCallbacks
    def connect_and_echo(self):
        ca = CertificateAuthority.create("Netlink Daemon CA")
        server = StdlibTLSServer(ca.issue_server("localhost"), echo_handler).start()
        self.addCleanup(server.stop)
        sock = yield self.module.socket()
        yield sock.setsockopt(IPPROTO_TLS, TLS_HOSTNAME, b"localhost\0")
        yield sock.setsockopt(IPPROTO_TLS, TLS_TRUSTED_PEER_CERTIFICATES, ca.root_pem() + b"\0")
        yield sock.connect((socket.AF_INET, *server.address))
        back = yield deferToThread(echo, sock.app, b"through a daemon process")
        self.assertEqual(back, b"through a daemon process")
        sock.close()

    @inlineCallbacks
    def test_netlink_only(self):
        yield self.serve("netlink")
        yield self.connect_and_echo()

    @inlineCallbacks
    def test_workers_main_process_serves_netlink(self):
        """
        With C{--workers 2}, the main process alone serves the module:
        exactly one daemon process holds the netlink port id, and the
        module's sockets work.
        """
        daemon = yield self.serve("unix,netlink", "--workers", "2")
        yield self.connect_and_echo()
        log = daemon.log()
        self.assertEqual(log.count("serving the SSA kernel module"), 1)
        replies = [m for m in self.module.received if m.command is Command.RETURN]
        self.assertTrue(replies)
        self.assertEqual({m.pid for m in replies}, {int(daemon_port_id(daemon))})

    def test_port_id_taken(self) -> None:
        """
        A second daemon on the same port id exits, naming it.
        """
        from ssa.netlink.transport import NETLINK_USERSOCK, open_netlink

        port = free_port()
        held = open_netlink(NETLINK_USERSOCK, port)
        self.addCleanup(held.close)
        module = FakeModule(reactor, port, daemon_port=port)
        self.addCleanup(module.close)
        done = deferToThread(
            run_daemon, "--frontend", "netlink", "--netlink-port", str(port), "--netlink-peer", str(module.pid)
        )

        def check(result) -> None:
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(f"cannot take netlink port id {port}", result.stdout + result.stderr)

        return done.addCallback(check)


def daemon_port_id(daemon: DaemonProcess) -> str:
    """
    The netlink port id the daemon was told to take.
    """
    args = daemon.process.args
    return args[args.index("--netlink-port") + 1]



