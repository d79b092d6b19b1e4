"""
Revocation peers for tests: real OpenSSL OCSP answers and CRLs served over
HTTP on 127.0.0.1, and OCSP responses made with C{cryptography} (good,
revoked, forged, stale, for another serial).

L{OpenSSLResponder} answers one DER request with C{openssl ocsp -index
... -reqin ... -respout ...} (never C{openssl ocsp -port}, which listens on
every interface). L{RevocationHTTPServer} is a threaded HTTP server on
127.0.0.1 whose paths the test maps to answers: an OCSP responder, fixed
bytes (a CRL, a crafted response) or a hang; it counts the requests of
each path.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from .certs import CertificateAuthority, CertifiedKey

HOUR = datetime.timedelta(hours=1)


def revocation_extensions(ocsp_url: str | None = None, crl_url: str | None = None,
                          must_staple: bool = False) -> list[x509.ExtensionType]:
    """
    The extensions pointing a certificate at its OCSP responder (AIA) and
    CRL distribution point, and marking it must-staple (TLS feature).
    """
    extensions: list[x509.ExtensionType] = []
    if ocsp_url is not None:
        extensions.append(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]))
    if crl_url is not None:
        extensions.append(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]))
    if must_staple:
        extensions.append(x509.TLSFeature([x509.TLSFeatureType.status_request]))
    return extensions


class OpenSSLResponder:
    """
    C{openssl ocsp} as a responder for one CA: an index of the certificates
    it issued (C{V}alid or C{R}evoked), answering requests signed by the CA
    or by a delegated responder certificate.
    """

    def __init__(self, ca: CertificateAuthority, signer: CertifiedKey | None = None, days: int = 1) -> None:
        """
        @param signer: the delegated responder (issued by C{ca} for
            OCSPSigning), or L{None} for the CA's own key.
        @param days: the responses' validity (their nextUpdate).
        """
        self.ca = ca
        self.days = days
        self.dir = tempfile.mkdtemp(prefix="ssa-ocsp-")
        self.index = os.path.join(self.dir, "index.txt")
        self.entries: dict[int, str] = {}
        self.ca_file = os.path.join(self.dir, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(ca.cert.public_bytes(Encoding.PEM))
        if signer is None:
            key_pem = CertifiedKey(ca.cert, ca.key).key_pem()
            signer_pem = ca.cert.public_bytes(Encoding.PEM)
        else:
            key_pem, signer_pem = signer.key_pem(), signer.cert_pem()
        self.signer_file = os.path.join(self.dir, "signer.pem")
        self.key_file = os.path.join(self.dir, "signer.key")
        with open(self.signer_file, "wb") as f:
            f.write(signer_pem)
        with open(self.key_file, "wb") as f:
            f.write(key_pem)
        self._lock = threading.Lock()
        self._write()

    def good(self, certificate: x509.Certificate) -> None:
        """
        List C{certificate} as valid.
        """
        self.entries[certificate.serial_number] = self._line("V", certificate, "")
        self._write()

    def revoke(self, certificate: x509.Certificate) -> None:
        """
        List C{certificate} as revoked (key compromise, an hour ago).
        """
        when = datetime.datetime.now(datetime.UTC) - HOUR
        self.entries[certificate.serial_number] = self._line("R", certificate, f"{when:%y%m%d%H%M%S}Z,keyCompromise")
        self._write()

    @staticmethod
    def _line(flag: str, certificate: x509.Certificate, revoked: str) -> str:
        expiry = certificate.not_valid_after_utc
        serial = format(certificate.serial_number, "X")
        serial = serial if len(serial) % 2 == 0 else "0" + serial
        return f"{flag}\t{expiry:%y%m%d%H%M%S}Z\t{revoked}\t{serial}\tunknown\t{certificate.subject.rfc4514_string()}\n"

    def _write(self) -> None:
        with open(self.index, "w") as f:
            f.writelines(self.entries.values())
        with open(self.index + ".attr", "w") as f:
            f.write("unique_subject = no\n")  # many leaves may be localhost

    def respond(self, request: bytes) -> bytes:
        """
        OpenSSL's DER response to the DER C{request}.
        """
        with self._lock, tempfile.TemporaryDirectory(dir=self.dir) as work:
            reqin, respout = os.path.join(work, "req.der"), os.path.join(work, "resp.der")
            with open(reqin, "wb") as f:
                f.write(request)
            subprocess.run(
                ["openssl", "ocsp", "-index", self.index, "-CA", self.ca_file, "-rsigner", self.signer_file,
                 "-rkey", self.key_file, "-reqin", reqin, "-respout", respout, "-ndays", str(self.days)],
                check=True, capture_output=True, timeout=30,
            )
            with open(respout, "rb") as f:
                return f.read()


def make_response(
    certificate: x509.Certificate, issuer: CertificateAuthority, *, status: str = "good",
    signer: CertifiedKey | CertificateAuthority | None = None, this_update: datetime.datetime | None = None,
    next_update: datetime.datetime | None = None, embed: tuple[x509.Certificate, ...] = (),
) -> bytes:
    """
    A DER OCSP response about C{certificate} made with C{cryptography}:
    C{status} C{good} or C{revoked}, signed by C{signer} (default the
    issuer), current from an hour ago for a day unless told otherwise,
    carrying C{embed} (a delegated responder's certificate).
    """
    now = datetime.datetime.now(datetime.UTC)
    signer = signer or issuer
    revoked = status == "revoked"
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=certificate, issuer=issuer.cert, algorithm=hashes.SHA1(),
        cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
        this_update=this_update or now - HOUR, next_update=next_update or now + 24 * HOUR,
        revocation_time=now - 2 * HOUR if revoked else None,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
    if embed:
        builder = builder.certificates(list(embed))
    return builder.sign(signer.key, hashes.SHA256()).public_bytes(Encoding.DER)


class _Handler(BaseHTTPRequestHandler):
    server: RevocationHTTPServer

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(self.rfile.read(length))

    def _answer(self, body: bytes) -> None:
        route = self.server.routes.get(self.path)
        with self.server.lock:
            self.server.requests[self.path] += 1
        if route is None:
            self.send_error(404)
            return
        if route == "hang":
            self.server.stopping.wait()
            return
        if route == "cut":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
            return
        try:
            answer = route(body) if callable(route) else route
            assert isinstance(answer, bytes)
        except Exception as e:  # noqa: BLE001 (the test sees a 500)
            self.send_error(500, str(e))
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


Route = bytes | str | Callable[[bytes], bytes]


class RevocationHTTPServer(ThreadingHTTPServer):
    """
    An HTTP server on 127.0.0.1 (an ephemeral port) in a thread.

    @ivar routes: path -> the answer: bytes, C{"hang"} (never answer
        until stopped), C{"cut"} (10 bytes of the 1000 announced, then
        close), or a callable of the request body (e.g.
        L{OpenSSLResponder.respond}).
    @ivar requests: how many requests each path got.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """
        The port it listens on.
        """
        return self.server_address[1]

    def url(self, path: str) -> str:
        """
        The http:// URL of C{path} on this server.
        """
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> RevocationHTTPServer:
        """
        Serve in a thread.
        """
        self._thread.start()
        return self

    def stop(self) -> None:
        """
        Stop serving; hanging requests end.
        """
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(10)
