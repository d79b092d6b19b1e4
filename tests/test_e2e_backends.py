"""
Backends as plugins: listing them, choosing one, and a third-party backend
dropped in as a plugin working without touching our code (issue: backends).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ssa import client
from ssa.backend_choice import NoSuchBackend, available, load_backend
from ssa.interfaces import IBackendChoice, ITLSBackend
from ssa.testing.certs import CertificateAuthority
from ssa.testing.daemon import SOURCE_ROOT, DaemonProcess
from ssa.testing.peers import StdlibTLSServer, echo_handler

PLUGIN = '''
from ssa.backend_choice import BackendChoice

wrapped = BackendChoice("wrapped", "wrappedtls.WrappedBackend", "the OpenSSL backend under another name")
'''

BACKEND = '''
from ssa.backends.openssl import OpenSSLBackend


class WrappedBackend(OpenSSLBackend):
    name = "wrapped"
    description = "the OpenSSL backend under another name"
'''


def third_party_tree() -> str:
    """
    A directory laid out like a third-party distribution: its backend
    module and a plugin module in C{twisted/plugins/}.
    """
    root = tempfile.mkdtemp(prefix="ssa-plugin-")
    os.makedirs(os.path.join(root, "twisted", "plugins"))
    with open(os.path.join(root, "twisted", "plugins", "wrappedtls_backend.py"), "w") as f:
        f.write(PLUGIN)
    with open(os.path.join(root, "wrappedtls.py"), "w") as f:
        f.write(BACKEND)
    return root


class BackendChoiceTests(SynchronousTestCase):
    """
    The built-in backends and the choosing machinery.
    """

    def test_builtin(self) -> None:
        """
        Both built-in backends are listed, load, and provide the interface.
        """
        choices = available()
        self.assertLessEqual({"openssl", "stdlib"}, set(choices))
        for name, choice in choices.items():
            verifyObject(IBackendChoice, choice)
            backend = load_backend(name)
            verifyObject(ITLSBackend, backend)
            self.assertEqual(backend.name, name)

    def test_unknown(self) -> None:
        """
        An unknown name says which backends are installed.
        """
        failure = self.assertRaises(NoSuchBackend, load_backend, "nope")
        self.assertIn("openssl", str(failure))

    def test_cli_lists(self) -> None:
        """
        C{ssa backends} lists the built-in ones and a dropped-in one, and
        marks the default.
        """
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE_ROOT), third_party_tree()]))
        result = subprocess.run([sys.executable, "-m", "ssa.cli", "backends"], env=env,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("openssl (default)", result.stdout)
        self.assertIn("stdlib", result.stdout)
        self.assertIn("wrapped", result.stdout)


class ThirdPartyBackendTests(SynchronousTestCase):
    """
    A backend that is not ours, chosen by flag, serves real connections.
    """

    def test_daemon_uses_dropped_in_backend(self) -> None:
        """
        C{twistd ssa --backend wrapped} runs on the plugin, and an
        application connects through it.
        """
        tree = third_party_tree()
        daemon = DaemonProcess(["--backend", "wrapped"], env={
            "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), tree]),
        }).start()
        self.addCleanup(daemon.stop)
        ca = CertificateAuthority.create()
        with StdlibTLSServer(ca.issue_server("localhost"), echo_handler) as server:
            with client.socket(client.AF_INET, client.SOCK_STREAM, client.IPPROTO_TLS, path=daemon.socket_path) as sock:
                sock.setsockopt(client.IPPROTO_TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, ca.cert_pem())
                sock.connect(("localhost", server.port))
                sock.sendall(b"via a plugin")
                self.assertEqual(sock.recv(100), b"via a plugin")
        self.assertIn("with the wrapped backend", daemon.log())

    def test_unknown_backend_refused(self) -> None:
        """
        The daemon does not start on a backend that is not installed.
        """
        failure = self.assertRaises(RuntimeError, DaemonProcess(["--backend", "nope"]).start, 20)
        self.assertIn("no TLS backend called 'nope'", str(failure))
