"""
End to end, every way the daemon refuses a certificate (issue 17 item 6):
the application gets EPROTO with a reason naming the certificate problem,
nothing escapes into the daemon's log as an unhandled error, and the peer
receives the proper TLS alert before the connection closes (never a bare
reset or EOF).
"""

from __future__ import annotations

import datetime
import errno
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID

from ssa import client
from ssa.testing.certs import CertificateAuthority, CertifiedKey
from ssa.testing.peers import OpenSSLServer

from .helpers import DaemonTestCase, for_each_backend

TLS = client.IPPROTO_TLS


def with_extension(issuer: CertificateAuthority, certified: CertifiedKey, extension: x509.ExtensionType) -> CertifiedKey:
    """
    C{certified} re-issued by C{issuer} with C{extension} (non-critical)
    instead of any it had under the same OID, e.g. an
    L{x509.UnrecognizedExtension} holding garbage under a known OID: a
    certificate OpenSSL accepts but whose extensions C{cryptography}
    cannot parse.
    """
    cert = certified.cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for existing in cert.extensions:
        if existing.oid != extension.oid:
            builder = builder.add_extension(existing.value, existing.critical)
    builder = builder.add_extension(extension, critical=False)
    return CertifiedKey(builder.sign(issuer.key, hashes.SHA256()), certified.key, certified.chain)


def malformed_aia(issuer: CertificateAuthority, *names: str) -> CertifiedKey:
    """
    A server certificate for C{names} whose authorityInfoAccess extension
    is garbage.
    """
    garbage = x509.UnrecognizedExtension(ExtensionOID.AUTHORITY_INFORMATION_ACCESS, b"\x30\x03garbage")
    return with_extension(issuer, issuer.issue_server(*names), garbage)


class ClientRoleRefusalTests(DaemonTestCase):
    """
    The daemon connects to a server whose certificate it refuses.
    """

    def refuse(self, certified: CertifiedKey, *words: str, hostname: str = "localhost") -> str:
        """
        Connect through the daemon to an C{openssl s_server} serving
        C{certified}; assert the connect fails EPROTO with C{words} in the
        reason, that the daemon logged no unhandled error, and return what
        s_server wrote about the connection (its alerts) once it exited.
        """
        with OpenSSLServer(certified, extra_args=["-naccept", "1"]) as server:
            sock = self.trusting_socket(hostname)
            self.assertConnectFails(sock, server.address, errno.EPROTO, *words)
            server.wait(20)
            said = server.stderr_text() + server.output().decode("utf-8", "replace")
        log = self.daemon.log()
        self.assertNotIn("Unhandled Error", log)
        self.assertNotIn("Traceback", log)
        return said

    def test_malformed_extension(self) -> None:
        """
        A certificate OpenSSL accepts but whose authorityInfoAccess cannot
        be parsed: EPROTO naming the unparsable certificate and its subject
        (not "the peer closed the connection"). With the openssl backend
        the refusal happens inside the handshake and the server gets an
        alert (internal_error: pyOpenSSL's verify callback cannot choose
        it); the stdlib backend has no verify callback and refuses after
        the handshake, when no alert can be sent.
        """
        said = self.refuse(
            malformed_aia(self.ca, "localhost", "127.0.0.1"),
            "certificate", "cannot be parsed", "CN=localhost", "authority information access extension is malformed",
        )
        if self.backend == "openssl":
            self.assertIn("SSL alert number", said)

    def test_unknown_issuer_alert(self) -> None:
        """
        A certificate from a CA the socket does not trust: alert unknown_ca.
        """
        stranger = CertificateAuthority.create("Stranger CA")
        said = self.refuse(stranger.issue_server("localhost"), "certificate verification failed", "local issuer")
        self.assertIn("alert unknown ca", said)

    def test_expired_alert(self) -> None:
        """
        An expired certificate: alert certificate_expired.
        """
        now = datetime.datetime.now(datetime.UTC)
        expired = self.ca.issue_server(
            "localhost", not_before=now - datetime.timedelta(days=60), not_after=now - datetime.timedelta(days=1)
        )
        said = self.refuse(expired, "expired")
        self.assertIn("alert certificate expired", said)

    def test_hostname_mismatch_alert(self) -> None:
        """
        A certificate for another name: the reason names both names as
        before, and the server gets an alert refusing the certificate.
        """
        said = self.refuse(self.ca.issue_server("other.test"), "hostname mismatch", "other.test", "localhost")
        self.assertIn("alert bad certificate", said)

    def test_ip_mismatch_alert(self) -> None:
        """
        An IP address the certificate does not name: the same, for IPs.
        """
        said = self.refuse(self.ca.issue_server("127.0.0.2"), "hostname mismatch", "127.0.0.2", hostname="127.0.0.1")
        self.assertIn("alert bad certificate", said)


class ServerRoleRefusalTests(DaemonTestCase):
    """
    The daemon accepts a client whose certificate it refuses.
    """

    daemon_args = ["--handshake-timeout", "10"]

    def present(self, certified: CertifiedKey) -> object:
        """
        Present C{certified} as a stdlib client to a listener that requires
        client certificates from this test's CA; assert the application
        never gets the connection and the daemon logged no unhandled
        error; return what the client's first read raised (or C{b""}:
        the stdlib backend refuses a certificate it cannot parse only after
        the handshake, when no alert can be sent any more).
        """
        sock = self.listener(backlog=8, TLS_REQUEST_PEER_AUTH=1, TLS_TRUSTED_PEER_CERTIFICATES=self.ca.cert_pem())
        sock.setblocking(False)
        files = certified.write(self.tmp, "client")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=self.ca.cert_pem().decode())
        context.load_cert_chain(files.cert, files.key)
        raw = socket.create_connection(sock.getsockname()[:2], timeout=20)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            # TLS 1.3: the client's handshake ends before the server has
            # checked its certificate; the verdict comes with the first read.
            try:
                verdict: object = tls.recv(100)
            except OSError as e:  # ssl.SSLError with the alert, or a reset
                verdict = e
        if isinstance(verdict, bytes):
            self.assertEqual(verdict, b"")
        self.assertRaises(BlockingIOError, sock.accept)
        log = self.daemon.log()
        self.assertNotIn("Unhandled Error", log)
        self.assertNotIn("Traceback", log)
        return verdict

    def test_untrusted_client_certificate_alert(self) -> None:
        """
        A client certificate from a CA the listener does not trust: the
        client reads alert unknown_ca, not a reset or a bare EOF.
        """
        stranger = CertificateAuthority.create("Stranger CA").issue_client("mallory")
        verdict = self.present(stranger)
        self.assertIsInstance(verdict, ssl.SSLError)
        self.assertIn("alert unknown ca", str(verdict).lower().replace("_", " "))

    def test_malformed_client_certificate(self) -> None:
        """
        A client certificate whose authorityInfoAccess cannot be parsed is
        refused, never delivered; with the openssl backend inside the
        handshake, with an alert.
        """
        garbage = x509.UnrecognizedExtension(ExtensionOID.AUTHORITY_INFORMATION_ACCESS, b"\x30\x03garbage")
        verdict = self.present(with_extension(self.ca, self.ca.issue_client("mallory"), garbage))
        if self.backend == "openssl":
            self.assertIsInstance(verdict, ssl.SSLError)
            self.assertIn("alert", str(verdict).lower())


for_each_backend(globals(), ClientRoleRefusalTests, ServerRoleRefusalTests)
