"""
The daemon's own path validation (issue 11 item 1): C{cryptography}'s
web-PKI path builder plus the rules it lacks, after the TLS library's
checks, the same for both backends and both roles; its verdict cache; and
the policy key C{path-validation}.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl

from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from ssa import client
from ssa.errors import TLSFailure
from ssa.pathvalidation import RFC5280, PathValidator
from ssa.testing.certs import CertificateAuthority, CertifiedKey
from ssa.testing.peers import OpenSSLServer
from ssa.webpki_rules import PUBLIC_SUFFIX_LIST, is_public_suffix

from .helpers import DaemonTestCase, for_each_backend

TLS = client.IPPROTO_TLS
ANY_EKU = ["serverAuth", ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]


class PathValidatorTests(SynchronousTestCase):
    """
    L{PathValidator} on chains made here (pure logic: no TLS).
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority.create()
        self.validator = PathValidator(size=4)

    def check(self, certified: CertifiedKey, name: str | None = "localhost", **kwargs: object) -> None:
        options: dict = {"anchors_pem": self.ca.cert_pem(), "system_store": False, "name": name, "max_depth": 10}
        options.update(kwargs)
        self.validator.check((certified.cert, *certified.chain), **options)

    def test_valid_once(self) -> None:
        """
        A valid chain passes; checked again for the same name, the cached
        verdict answers; another name is checked anew.
        """
        leaf = self.ca.issue_server("localhost", "127.0.0.1")
        self.check(leaf)
        self.check(leaf)
        self.assertEqual(self.validator.checks, 1)
        self.check(leaf, "127.0.0.1")
        self.assertEqual(self.validator.checks, 2)

    def test_refusal_cached(self) -> None:
        """
        A refused chain is refused again from the cache with the same
        reason, naming the rule, the depth and the subject.
        """
        leaf = self.ca.issue_server("localhost", extended_key_usage=ANY_EKU)
        first = self.assertRaises(TLSFailure, self.check, leaf)
        second = self.assertRaises(TLSFailure, self.check, leaf)
        self.assertEqual(str(first), str(second))
        self.assertEqual(self.validator.checks, 1)
        for words in ("anyExtendedKeyUsage", "depth 0", "CN=localhost"):
            self.assertIn(words, str(first))

    def test_name_mismatch(self) -> None:
        """
        The name is part of the path builder's check.
        """
        failure = self.assertRaises(TLSFailure, self.check, self.ca.issue_server("other.test"))
        self.assertIn("certificate verification failed", str(failure))

    def test_bounded(self) -> None:
        """
        Past its size the cache forgets the least recently used verdict.
        """
        leaf = self.ca.issue_server("localhost")
        for depth in range(6):
            self.check(leaf, max_depth=depth + 1)
        self.check(leaf, max_depth=1)
        self.assertEqual(self.validator.checks, 7)

    def test_rfc5280_private_anchors(self) -> None:
        """
        C{rfc5280} with private anchors leaves the chain to the TLS
        library: the web-PKI rules are not applied.
        """
        self.check(self.ca.issue_server("localhost", extended_key_usage=ANY_EKU), mode=RFC5280)
        self.assertEqual(self.validator.checks, 0)

    def test_rfc5280_system_store(self) -> None:
        """
        With the system store, C{rfc5280} still means web PKI: a chain to
        an anchor the system does not hold is refused.
        """
        self.assertRaises(
            TLSFailure, self.check, self.ca.issue_server("localhost"), anchors_pem=None, system_store=True,
            mode=RFC5280,
        )
        self.assertEqual(self.validator.checks, 1)

    def test_client_certificate_rsa_size(self) -> None:
        """
        The server role: an RSA modulus that is not a multiple of 8 bits is
        refused (CABF), naming the client certificate.
        """
        odd = self.ca.issue_client("mallory", key_type="rsa", key_size=2052)
        failure = self.assertRaises(TLSFailure, self.check, odd, None, server=True)
        self.assertIn("client certificate verification failed", str(failure))
        self.assertIn("multiple of 8", str(failure))

    def test_client_certificate_without_names(self) -> None:
        """
        The server role: a client certificate need not hold a
        subjectAltName (the web-PKI profile wants one on every leaf); one
        that holds names passes too.
        """
        self.check(self.ca.issue_client("alice"), None, server=True)
        self.check(self.ca.issue_client("bob", names=["bob.example.test"]), None, server=True)

    def test_common_name(self) -> None:
        """
        A common name that passes for one of the names (another case, an
        IDN) must be a copy of one; a plain unrelated one is tolerated.
        """
        variant = self.ca.issue_server("localhost", common_name="LocalHost")
        failure = self.assertRaises(TLSFailure, self.check, variant)
        self.assertIn("common name", str(failure))
        self.check(self.ca.issue_server("localhost", common_name="Some Server"))

    def test_public_suffixes(self) -> None:
        """
        Single labels are public suffixes; with the list installed, so are
        C{co.uk} and private-section suffixes, not names under them.
        """
        self.assertTrue(is_public_suffix("com"))
        self.assertFalse(is_public_suffix("example.com"))
        if not os.path.exists(PUBLIC_SUFFIX_LIST):
            return
        self.assertTrue(is_public_suffix("co.uk"))
        self.assertTrue(is_public_suffix("s3.amazonaws.com"))
        self.assertFalse(is_public_suffix("example.co.uk"))


class _PolicyDaemon(DaemonTestCase):
    """
    A daemon test whose daemon runs with the policy lines of L{policy}.
    """

    def policy(self) -> list[str]:
        """
        The policy file's lines; none: the built-in defaults.
        """
        return []

    def daemon_arguments(self) -> list[str]:
        lines = self.policy()
        if not lines:
            return []
        path = os.path.join(self.tmp, "config.yml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return ["--config", path]

    def odd_client(self) -> tuple[client.SSASocket, object]:
        """
        A listener requiring client certificates of this test's CA, and
        what a client presenting one with a 2052-bit RSA key first reads
        (bytes, or the error raised).
        """
        sock = self.listener(backlog=8, TLS_REQUEST_PEER_AUTH=1, TLS_TRUSTED_PEER_CERTIFICATES=self.ca.cert_pem())
        files = self.ca.issue_client("mallory", key_type="rsa", key_size=2052).write(self.tmp, "client")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=self.ca.cert_pem().decode())
        context.load_cert_chain(files.cert, files.key)
        raw = socket.create_connection(sock.getsockname()[:2], timeout=20)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            # TLS 1.3: the verdict on the client's certificate comes with
            # the first read; an accepted client is sent "ok".
            sock.setblocking(False)
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                conn = None
            if conn is None:
                try:
                    verdict: object = tls.recv(100)
                except OSError as e:
                    verdict = e
            else:
                conn.sendall(b"ok")
                verdict = tls.recv(100)
                conn.close()
        return sock, verdict


class PathValidationEndToEndTests(_PolicyDaemon):
    """
    The daemon refuses, through either backend, a chain its TLS library
    accepts but its path validation does not.
    """

    def test_any_eku_refused(self) -> None:
        """
        A server leaf allowing anyExtendedKeyUsage: EPROTO naming the rule,
        the depth and the subject, and nothing in the daemon's log.
        """
        with OpenSSLServer(self.ca.issue_server("localhost", extended_key_usage=ANY_EKU),
                           extra_args=["-naccept", "1"]) as server:
            sock = self.trusting_socket("localhost")
            self.assertConnectFails(sock, server.address, errno.EPROTO,
                                    "anyExtendedKeyUsage", "depth 0", "CN=localhost")
            sock.close()
            server.wait(20)
            said = server.stderr_text() + server.output().decode("utf-8", "replace")
        log = self.daemon.log()
        self.assertNotIn("Traceback", log)
        if self.backend == "openssl":
            # Refused inside the handshake: the server hears why.
            self.assertIn("SSL alert number", said)

    def test_valid_still_connects(self) -> None:
        """
        A valid chain connects, twice (the second verdict from the cache).
        """
        with OpenSSLServer(self.server_key, extra_args=["-naccept", "2"]) as server:
            for _ in range(2):
                sock = self.trusting_socket("localhost")
                sock.connect(server.address)
                sock.close()

    def test_client_certificate_refused(self) -> None:
        """
        The server role: a client certificate whose RSA modulus is not a
        multiple of 8 bits never reaches accept().
        """
        sock, verdict = self.odd_client()
        self.assertNotEqual(verdict, b"ok")
        self.assertRaises(BlockingIOError, sock.accept)
        self.assertNotIn("Traceback", self.daemon.log())


class RFC5280PolicyTests(_PolicyDaemon):
    """
    Under C{path-validation: rfc5280}, an application's own anchors get
    the TLS library's checks only.
    """

    def policy(self) -> list[str]:
        return ["path-validation: rfc5280"]

    def test_any_eku_accepted(self) -> None:
        """
        A leaf allowing anyExtendedKeyUsage connects.
        """
        with OpenSSLServer(self.ca.issue_server("localhost", extended_key_usage=ANY_EKU),
                           extra_args=["-naccept", "1"]) as server:
            sock = self.trusting_socket("localhost")
            sock.connect(server.address)
            sock.close()

    def test_client_certificate_accepted(self) -> None:
        """
        A client certificate with a 2052-bit RSA key is delivered.
        """
        _, verdict = self.odd_client()
        self.assertEqual(verdict, b"ok")


for_each_backend(globals(), PathValidationEndToEndTests, RFC5280PolicyTests)


class ResumptionThroughIntermediateTests(DaemonTestCase):
    """
    A resumed session through an intermediate CA is not refused for want
    of the chain (a resumption need not carry it): its path was validated
    when the session was made.
    """

    def test_resumed(self) -> None:
        from ssa import constants as c
        from ssa.testing.tls_server import StdlibTLSServer, echo_handler

        leaf = self.ca.issue_intermediate().issue_server("localhost")
        with StdlibTLSServer(leaf, echo_handler) as server:
            resumed = []
            for _ in range(3):
                sock = self.trusting_socket()
                sock.connect(("localhost", server.port))
                sock.sendall(b"ping")
                with sock.makefile("rb") as echoed:
                    self.assertEqual(echoed.read(4), b"ping")  # TLS 1.3 tickets have come
                resumed.append(sock.getsockopt(TLS, c.TLS_RESUMED_SESSION))
                sock.close()
        self.assertEqual(resumed[0], 0)
        self.assertIn(1, resumed[1:])


for_each_backend(globals(), ResumptionThroughIntermediateTests)
