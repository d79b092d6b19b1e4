"""
End to end: C{ssa connect} through a real daemon to real peers.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ssa.testing.peers import StdlibTLSServer, echo_handler

from .helpers import DaemonTestCase


class ConnectCommandTests(DaemonTestCase):
    """
    C{ssa connect HOST:PORT}.
    """

    def run_ssa(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        """
        Run the C{ssa} command against this test's daemon.
        """
        cafile = os.path.join(self.tmp, "ca.pem")
        with open(cafile, "wb") as f:
            f.write(self.ca.cert_pem())
        return subprocess.run(
            [sys.executable, "-c", "import sys; from ssa.cli import main; sys.exit(main())",
             "connect", "--socket", self.daemon.socket_path, "--cafile", cafile, *args],
            input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
        )

    def test_success(self) -> None:
        """
        stdin goes to the peer, the peer's bytes to stdout, the verified
        peer, version and cipher to stderr; exit 0.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            result = self.run_ssa(f"localhost:{server.port}", stdin=b"hello through ssa\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"hello through ssa\n")
        self.assertIn(b"CN=localhost", result.stderr)
        self.assertIn(b"TLS 1.3", result.stderr)

    def test_failure(self) -> None:
        """
        A hostname mismatch exits non-zero and says why.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            result = self.run_ssa(f"127.0.0.1:{server.port}", "--servername", "wrong.test")
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"hostname mismatch", result.stderr)
        self.assertIn(b"wrong.test", result.stderr)
        self.assertEqual(result.stdout, b"")
