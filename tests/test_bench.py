"""
The benchmark's own parts (C{bench/}): the peers' two ports and their
server-side resumption counts, and the table's arithmetic.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench.peer import HEADER, make_peer
from bench.run import per_connection_ms, resumed_fraction, summarize


def _echo_once(peer, resume: bool, context: ssl.SSLContext, session=None):
    """One TLS connection to the peer, one echo; returns the client's socket state."""
    raw = socket.create_connection(("127.0.0.1", peer.port(resume)), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        s.sendall(HEADER.pack(b"E", 3) + b"abc")
        got = b""
        while len(got) < 3:
            chunk = s.recv(3 - len(got))
            if not chunk:
                break
            got += chunk
        return got, s.session, s.session_reused


class PeerCountTests(SynchronousTestCase):
    """
    Each peer's full-handshake port refuses to resume even a session the
    client offers; its resumption port resumes; both count what they did.
    """

    def _check(self, kind: str) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        peer = make_peer(kind, directory).start()
        self.addCleanup(peer.stop)
        context = ssl.create_default_context(cafile=peer.ca_path)
        context.minimum_version = ssl.TLSVersion.TLSv1_3

        got, session, reused = _echo_once(peer, True, context)
        self.assertEqual((got, reused), (b"abc", False))
        got, session2, reused = _echo_once(peer, True, context, session)
        self.assertEqual((got, reused), (b"abc", True))
        self.assertEqual(peer.handshakes(True), (2, 1))

        # The full port's own session, then a ticket of the resumption port,
        # offered to the full port: neither resumes.
        got, session_full, reused = _echo_once(peer, False, context)
        self.assertEqual((got, reused), (b"abc", False))
        for offered in (session_full, session2):
            got, _, reused = _echo_once(peer, False, context, offered)
            self.assertEqual((got, reused), (b"abc", False))
        self.assertEqual(peer.handshakes(False), (3, 0))
        self.assertEqual(peer.handshakes(True), (2, 1))

    def test_python_peer(self) -> None:
        """The stdlib C{ssl} peer."""
        self._check("python")

    def test_c_peer(self) -> None:
        """The C peer, compiled now."""
        if not shutil.which("cc") or not Path("/usr/include/openssl/ssl.h").exists():
            raise SkipTest("needs a C compiler and libssl-dev")
        self._check("c")


RUNS = (
    {"connections": 100, "handshakes": 100, "resumed": 90, "tls_cpu": 0.2, "peer_cpu": None},
    {"connections": 300, "handshakes": 300, "resumed": 300, "tls_cpu": 0.6, "peer_cpu": 0.1},
)


class TableTests(SynchronousTestCase):
    """The arithmetic of the printed table."""

    def test_resumed_fraction(self) -> None:
        """Resumed over completed handshakes, as the peer counted them; 0 for none."""
        self.assertEqual(resumed_fraction(RUNS), 390 / 400)
        self.assertEqual(resumed_fraction([]), 0)

    def test_per_connection_ms(self) -> None:
        """CPU ms per connection over several runs; None if any run lacks it."""
        self.assertAlmostEqual(per_connection_ms(RUNS, "tls_cpu"), 2.0)
        self.assertIsNone(per_connection_ms(RUNS, "peer_cpu"))

    def test_summarize_ratios(self) -> None:
        """
        Rows with a direction get medians of per-repetition ratios to
        stunnel; informational rows (resumed fractions) get none.
        """
        reps = [{"stunnel": {"conn_per_s_1": 100.0, "resumed_fraction_1": 0.5},
                 "ssa-openssl": {"conn_per_s_1": 50.0, "resumed_fraction_1": 1.0}},
                {"stunnel": {"conn_per_s_1": 200.0, "resumed_fraction_1": 0.5},
                 "ssa-openssl": {"conn_per_s_1": 140.0, "resumed_fraction_1": 1.0}}]
        table = summarize({"repetitions": reps}, ["stunnel", "ssa-openssl"]).splitlines()
        rate = next(line for line in table if "1 client (full)" in line)
        self.assertEqual([c.strip() for c in rate.strip("|").split("|")][1:],
                         ["150", "95", "0.60x"])
        resumed = next(line for line in table if "resumed (peer's count), 1 client" in line)
        self.assertEqual([c.strip() for c in resumed.strip("|").split("|")][1:], ["0.5", "1", "-"])
