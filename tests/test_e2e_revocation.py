"""
End to end: revocation by CRLs from the policy's C{crl-path}, through a
real daemon per backend (issue: revocation). The PKI (root, intermediate,
server) and its CRLs are made at test time; the server is a real TLS
server on loopback.
"""

from __future__ import annotations

import datetime
import errno
import os
import signal
import ssl
import textwrap
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from ssa import client
from ssa.testing.certs import CertificateAuthority, CertifiedKey
from ssa.testing.tls_server import StdlibTLSServer, echo_handler

from .helpers import DaemonTestCase, for_each_backend
from .test_x509_limbo import _client_once

TLS = client.IPPROTO_TLS
HOUR = datetime.timedelta(hours=1)


def make_crl(
    issuer: CertificateAuthority, revoked: tuple[x509.Certificate, ...] = (), *, signer=None,
    this_update: datetime.datetime | None = None, next_update: datetime.datetime | None = None,
    der: bool = False,
) -> bytes:
    """
    A CRL in C{issuer}'s name listing C{revoked}, signed by C{signer}
    (default C{issuer}'s key), valid from an hour ago for a day by default.
    """
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.cert.subject)
               .last_update(this_update or now - HOUR).next_update(next_update or now + 24 * HOUR))
    for certificate in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(certificate.serial_number)
            .revocation_date(now - 2 * HOUR).build())
    crl = builder.sign(signer or issuer.key, hashes.SHA256())
    return crl.public_bytes(Encoding.DER if der else Encoding.PEM)


class RevocationTestCase(DaemonTestCase):
    """
    A daemon whose policy reads its CRLs from the directory C{crls} next to
    the policy file (a relative C{crl-path}), a root, an intermediate and a
    localhost server under it, and a TLS server presenting that chain.
    The directory starts with an empty, current CRL of each CA.
    """

    policy_text = "crl-path: crls\n"

    def daemon_arguments(self) -> list[str]:
        self.intermediate = self.ca.issue_intermediate()
        self.leaf = self.intermediate.issue_server("localhost", "127.0.0.1")
        self.crl_dir = os.path.join(self.tmp, "crls")
        os.mkdir(self.crl_dir)
        self.write_crl("root.pem", make_crl(self.ca))
        self.write_crl("intermediate.pem", make_crl(self.intermediate))
        self.config = os.path.join(self.tmp, "config.yml")
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(self.policy_text))
        return ["--config", self.config]

    def write_crl(self, name: str, data: bytes) -> str:
        """
        Write C{data} as C{crls/name} (atomically); its path.
        """
        path = os.path.join(self.crl_dir, name)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
        return path

    def server(self) -> StdlibTLSServer:
        """
        A TLS echo server presenting the leaf and the intermediate.
        """
        server = StdlibTLSServer(self.leaf, echo_handler).start()
        self.addCleanup(server.stop)
        return server

    def connect(self, server: StdlibTLSServer) -> client.SSASocket:
        """
        A socket trusting the root, connected to C{server} for localhost,
        proven by an echo.
        """
        sock = self.trusting_socket()
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"ping")
        self.assertEqual(sock.recv(4), b"ping")
        return sock

    def refused(self, server: StdlibTLSServer, *words: str) -> str:
        """
        Assert a socket trusting the root is refused EPROTO, the reason
        holding C{words}.
        """
        return self.assertConnectFails(self.trusting_socket(), ("127.0.0.1", server.port), errno.EPROTO, *words)

    def reload(self) -> None:
        """
        SIGHUP the daemon and wait until it says it reloaded (or refused).
        """
        words = ("policy reloaded", "policy reload refused")
        before = sum(self.daemon.log().count(w) for w in words)
        self.daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60  # a reload reads every CRL again; a busy machine is slow
        while sum(self.daemon.log().count(w) for w in words) <= before:
            self.assertLess(time.monotonic(), deadline, f"no reload in the log:\n{self.daemon.log()}")
            time.sleep(0.05)


class SoftFailTests(RevocationTestCase):
    """
    The default C{revocation-mode: soft-fail}.
    """

    def test_good(self) -> None:
        """
        Current CRLs of both CAs that list nothing: the connection works.
        """
        self.connect(self.server())

    def test_revoked_leaf(self) -> None:
        """
        The intermediate's CRL lists the leaf: EPROTO, saying revoked and
        naming the certificate, its depth and the CRL file.
        """
        path = self.write_crl("intermediate.pem", make_crl(self.intermediate, (self.leaf.cert,)))
        self.reload()
        self.refused(self.server(), "revoked", "/CN=localhost", "depth 0", path)

    def test_revoked_intermediate(self) -> None:
        """
        The root's CRL lists the intermediate: EPROTO naming it at depth 1.
        """
        path = self.write_crl("root.pem", make_crl(self.ca, (self.intermediate.cert,)))
        self.reload()
        self.refused(self.server(), "revoked", "SSA Test Intermediate CA", "depth 1", path)

    def test_der_crl(self) -> None:
        """
        A DER CRL counts as a PEM one.
        """
        os.remove(os.path.join(self.crl_dir, "intermediate.pem"))
        self.write_crl("intermediate.crl", make_crl(self.intermediate, (self.leaf.cert,), der=True))
        self.reload()
        self.refused(self.server(), "revoked", "intermediate.crl")

    def test_wrong_signer(self) -> None:
        """
        A CRL in the intermediate's name listing the leaf but signed by the
        root's key is no data: soft-fail passes.
        """
        self.write_crl("intermediate.pem", make_crl(self.intermediate, (self.leaf.cert,), signer=self.ca.key))
        self.reload()
        self.connect(self.server())

    def test_stale(self) -> None:
        """
        A CRL listing the leaf whose nextUpdate has passed is no data:
        soft-fail passes.
        """
        now = datetime.datetime.now(datetime.UTC)
        self.write_crl("intermediate.pem", make_crl(
            self.intermediate, (self.leaf.cert,), this_update=now - 48 * HOUR, next_update=now - HOUR))
        self.reload()
        self.connect(self.server())

    def test_reload(self) -> None:
        """
        A leaf revoked after the daemon started is refused on the next
        connect after SIGHUP (not resumed from the session of the first
        connection); a live connection stays; a broken CRL file is refused
        with the policy file's line and the CRLs before it stay.
        """
        server = self.server()
        live = self.connect(server)
        path = self.write_crl("intermediate.pem", make_crl(self.intermediate, (self.leaf.cert,)))
        self.reload()
        self.refused(server, "revoked", path)
        live.sendall(b"pong")
        self.assertEqual(live.recv(4), b"pong")
        broken = self.write_crl("broken.pem", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
        self.reload()
        self.assertIn(f"{self.config}:1: crl-path: {broken} holds no usable CRL", self.daemon.log())
        self.refused(server, "revoked", path)


class CRLChecksOffTests(RevocationTestCase):
    """
    A policy with CRL checks off (and OCSP, stapled or not): a revoked
    leaf passes, unless the application turns the CRL checks on for its
    socket.
    """

    policy_text = ("crl-path: crls\nrevocation-crl: disabled\nrevocation-mode: hard-fail\n"
                   "revocation-ocsp: disabled\nrevocation-stapled: disabled\n")

    def test_off_unless_turned_on(self) -> None:
        server = self.server()
        self.write_crl("intermediate.pem", make_crl(self.intermediate, (self.leaf.cert,)))
        self.reload()
        self.connect(server)
        sock = self.trusting_socket()
        sock.setsockopt(TLS, client.TLS_CRL_CHECKS, 1)
        self.assertConnectFails(sock, ("127.0.0.1", server.port), errno.EPROTO, "revoked")


class HardFailTests(RevocationTestCase):
    """
    C{revocation-mode: hard-fail}: an unknown status is refused.
    """

    policy_text = "crl-path: crls\nrevocation-mode: hard-fail\n"

    def test_good(self) -> None:
        """
        Current CRLs for every CA of the path: the connection works.
        """
        self.connect(self.server())

    def test_wrong_signer(self) -> None:
        """
        A CRL signed by another key is unknown: refused, saying why.
        """
        self.write_crl("intermediate.pem", make_crl(self.intermediate, signer=self.ca.key))
        self.reload()
        self.refused(self.server(), "unknown", "hard-fail", "/CN=localhost", "does not verify")

    def test_stale(self) -> None:
        """
        A stale CRL that lists nothing is unknown, not good: refused.
        """
        now = datetime.datetime.now(datetime.UTC)
        self.write_crl("root.pem", make_crl(self.ca, this_update=now - 48 * HOUR, next_update=now - HOUR))
        self.reload()
        self.refused(self.server(), "unknown", "SSA Test Intermediate CA", "depth 1", "stale")

    def test_no_crl(self) -> None:
        """
        No CRL for the leaf's issuer: refused.
        """
        os.remove(os.path.join(self.crl_dir, "intermediate.pem"))
        self.reload()
        self.refused(self.server(), "unknown", "no CRL from its issuer")


class HardFailWithoutCRLPathTests(RevocationTestCase):
    """
    C{hard-fail} and no C{crl-path} at all: nothing can be known.
    """

    policy_text = "revocation-mode: hard-fail\n"

    def test_refused(self) -> None:
        self.refused(self.server(), "unknown", "depth 0")

    def test_checks_off_for_the_socket(self) -> None:
        """
        Where the policy leaves revocation checks to the application
        (revocation-checks: disabled), a socket that does not turn them on
        connects; one that turns them on is refused.
        """
        with open(self.config, "w") as f:
            f.write("revocation-mode: hard-fail\nrevocation-checks: disabled\n")
        self.reload()
        server = self.server()
        self.connect(server)
        sock = self.trusting_socket()
        sock.setsockopt(TLS, client.TLS_REVOCATION_CHECKS, 1)
        self.assertConnectFails(sock, ("127.0.0.1", server.port), errno.EPROTO, "unknown")


class ClientCertificateTests(RevocationTestCase):
    """
    The server role: a revoked client certificate is refused too.
    """

    def delivered(self, listener: client.SSASocket, presented: CertifiedKey) -> bool:
        """
        Whether C{accept()} delivers a connection of a client presenting
        C{presented} (the client sees the connection end if not).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        files = presented.write(self.tmp, "client")
        context.load_cert_chain(str(files.cert), str(files.key))
        said: list[bytes] = []
        thread = threading.Thread(target=_client_once, args=(listener.getsockname()[:2], context, said))
        thread.start()
        self.addCleanup(thread.join, 30)
        listener.settimeout(0.2)
        while True:
            try:
                conn, _ = listener.accept()
            except (TimeoutError, BlockingIOError):
                if thread.is_alive():
                    continue
                return False
            conn.sendall(b"ok")
            conn.close()
            thread.join(30)
            return said == [b"ok"]

    def test_revoked_client(self) -> None:
        own = self.ca.issue_server("localhost")
        good = self.intermediate.issue_client("good client")
        revoked = self.intermediate.issue_client("revoked client")
        self.write_crl("intermediate.pem", make_crl(self.intermediate, (revoked.cert,)))
        self.reload()
        listener = self.tls_socket()
        listener.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, own.chain_pem())
        listener.setsockopt(TLS, client.TLS_PRIVATE_KEY, own.key_pem())
        listener.setsockopt(TLS, client.TLS_REQUEST_PEER_AUTH, 1)
        listener.setsockopt(TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, self.ca.cert_pem())
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        self.assertFalse(self.delivered(listener, revoked))
        self.assertTrue(self.delivered(listener, good))


for_each_backend(globals(), SoftFailTests, CRLChecksOffTests, HardFailTests, HardFailWithoutCRLPathTests,
                 ClientCertificateTests)
