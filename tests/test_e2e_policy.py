"""
End to end: the administrator's policy in a real daemon: its bounds, a
per-executable profile, and live reload on SIGHUP (issue: policy).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

from twisted.trial.unittest import SynchronousTestCase

from ssa import client
from ssa.testing.daemon import SOURCE_ROOT
from ssa.testing.peers import OpenSSLServer, StdlibTLSServer, echo_handler

from .helpers import DaemonTestCase

TLS = client.IPPROTO_TLS


class PolicyTestCase(DaemonTestCase):
    """
    A daemon started with this test's policy file.
    """

    policy_text = ""

    def daemon_arguments(self) -> list[str]:
        """
        Write C{policy_text} and pass it with C{--config}.
        """
        self.config = os.path.join(self.tmp, "config.yml")
        self.write_policy(self.policy_text)
        return ["--config", self.config]

    def write_policy(self, text: str) -> None:
        """
        Replace the policy file.
        """
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(text))

    def reload(self, expected: str) -> None:
        """
        SIGHUP the daemon and wait until its log says C{expected}.
        """
        before = self.daemon.log().count(expected)
        self.daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.daemon.log().count(expected) <= before:
            self.assertLess(time.monotonic(), deadline, f"no {expected!r} in the log:\n{self.daemon.log()}")
            time.sleep(0.05)

    def tls12_server(self) -> OpenSSLServer:
        """
        A server that speaks only TLS 1.2.
        """
        server = OpenSSLServer(self.server_key, extra_args=["-tls1_2", "-quiet"]).start()
        self.addCleanup(server.stop)
        return server


class BoundsTests(PolicyTestCase):
    """
    A TLS 1.3-only policy.
    """

    policy_text = """
        min-tls-version: 3
        max-tls-version: 3
    """

    def test_tls12_server_refused(self) -> None:
        """
        A TLS 1.2-only server fails with EPROTO under a TLS 1.3-only policy.
        """
        server = self.tls12_server()
        sock = self.trusting_socket()
        self.assertConnectFails(sock, ("127.0.0.1", server.port), errno.EPROTO, "TLS 1.3")

    def test_application_cannot_loosen(self) -> None:
        """
        TLS_VERSION_MIN below the policy fails EPROTO naming the key;
        tightening within it works.
        """
        sock = self.tls_socket()
        failure = self.assertRaises(OSError, sock.setsockopt, TLS, client.TLS_VERSION_MIN, client.TLS_1_2)
        self.assertEqual(failure.errno, errno.EPROTO)
        self.assertIn("min-tls-version", str(failure))
        self.assertEqual(sock.getsockopt(TLS, client.TLS_VERSION_MIN), client.TLS_1_3)


class ReloadTests(PolicyTestCase):
    """
    SIGHUP reloads the policy for new sockets only.
    """

    policy_text = "min-tls-version: 3\n"

    def test_sighup(self) -> None:
        """
        A changed file changes the next connection's outcome without
        dropping an open one; a broken file is refused and the old policy
        stays.
        """
        server12 = self.tls12_server()
        with StdlibTLSServer(self.server_key, echo_handler) as server13:
            live = self.trusting_socket()
            live.connect(("localhost", server13.port))
            refused = self.trusting_socket()
            self.assertEqual(refused.connect_ex(("127.0.0.1", server12.port)), errno.EPROTO)

            self.write_policy("min-tls-version: 2\n")
            self.reload("policy reloaded")
            allowed = self.trusting_socket()
            allowed.connect(("127.0.0.1", server12.port))
            self.assertEqual(allowed.getsockopt(TLS, client.TLS_CHOSEN_VERSION), client.TLS_1_2)
            allowed.close()

            self.write_policy("min-tls-version: 9\n")
            self.reload("policy reload refused")
            self.assertIn("min-tls-version", self.daemon.log())
            live.sendall(b"still here")
            self.assertEqual(live.recv(100), b"still here")
        server12.stop()
        server12 = self.tls12_server()
        after_broken = self.trusting_socket()
        after_broken.connect(("127.0.0.1", server12.port))
        self.assertEqual(after_broken.getsockopt(TLS, client.TLS_CHOSEN_VERSION), client.TLS_1_2)


class ReloaderFirstTests(SynchronousTestCase):
    """
    The SIGHUP handler is installed before anything listens: a daemon
    answers on its control socket only once a SIGHUP reloads it, never
    kills it (the default action), however soon after the socket answers
    the signal comes.
    """

    def test_reloader_starts_first(self) -> None:
        from twisted.internet.testing import MemoryReactor

        from ssa.tap.daemon import Options, PolicyReloader, makeService

        for arguments in ([], ["--workers", "2"]):
            options = Options()
            options.parseOptions(["--socket", "/nonexistent/ssa.sock", *arguments])
            top = makeService(options, MemoryReactor())
            self.assertIsInstance(list(top)[0], PolicyReloader, arguments)


class BrokenFileTests(DaemonTestCase):
    """
    A wrong file stops the daemon at start-up.
    """

    def setUp(self) -> None:
        """
        No daemon: the test starts its own.
        """

    def test_refuses_to_start(self) -> None:
        """
        The daemon exits naming the file, line, key and reason.
        """
        import tempfile

        from ssa.testing.daemon import DaemonProcess

        path = os.path.join(tempfile.mkdtemp(), "config.yml")
        with open(path, "w") as f:
            f.write("min-tls-version: 2\nmax-tls-verison: 3\n")
        daemon = DaemonProcess(["--config", path])
        failure = self.assertRaises(RuntimeError, daemon.start, 20)
        self.assertIn(f"{path}:2: max-tls-verison", str(failure))


class ProfileTests(PolicyTestCase):
    """
    A profile for one executable.
    """

    def daemon_arguments(self) -> list[str]:
        """
        Make a second name for the Python interpreter (a hard link beside
        it), and a policy whose profile lets only that name use TLS 1.2.
        """
        real = os.path.realpath(sys.executable)
        self.special = f"{real}-ssa-profile-test-{os.getpid()}"
        try:
            os.link(real, self.special)
        except OSError as e:
            self.skipTest = f"cannot link the interpreter beside itself: {e}"
            self.special = None
        else:
            self.addCleanup(os.unlink, self.special)
        self.policy_text = f"""
            min-tls-version: 3
            profiles:
              - name: legacy
                match:
                  executable: {self.special or '/nonexistent'}
                min-tls-version: 2
        """
        return super().daemon_arguments()

    def test_only_that_executable(self) -> None:
        """
        The profiled executable reaches a TLS 1.2 server; this process, not
        matching, is refused.
        """
        if self.special is None:
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest(self.skipTest)
        server = self.tls12_server()
        sock = self.trusting_socket()
        self.assertEqual(sock.connect_ex(("127.0.0.1", server.port)), errno.EPROTO)
        ca = os.path.join(self.tmp, "ca.pem")
        with open(ca, "wb") as f:
            f.write(self.ca.cert_pem())
        program = textwrap.dedent(f"""
            from ssa import client
            s = client.socket(client.AF_INET, client.SOCK_STREAM, client.IPPROTO_TLS, path={self.daemon.socket_path!r})
            s.setsockopt(client.IPPROTO_TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, {ca!r})
            s.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "localhost")
            s.connect(("127.0.0.1", {server.port}))
            print(s.getsockopt(client.IPPROTO_TLS, client.TLS_CHOSEN_VERSION))
        """)
        import site
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE_ROOT), *site.getsitepackages()]))
        result = subprocess.run([self.special, "-c", program], env=env, capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        self.assertEqual(result.stdout.strip(), str(client.TLS_1_2).encode())
        self.assertIn("policy=0/legacy", self.daemon.log())
