"""
Property-based: whatever bytes a peer's certificate holds, the daemon's
checks of it end in a L{TLSFailure} or pass, never in another exception
(issue 17 item 6). Mutated DER goes through the functions that read peer
certificates: the handshake's finishing step of L{TLSStreamProtocol}
(parse, readability, the connector's identity check), the identity check
itself, the OpenSSL backend's in-handshake leaf check, and the subject
words of reasons.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import crypto
from ssa.backends.openssl import _VerifyRecord
from twisted.trial.unittest import SynchronousTestCase

from ssa import der
from ssa.constants import TLS_1_3
from ssa.errors import TLSFailure
from ssa.identity import (
    certificate_subject,
    check_readable,
    malformed_extensions,
    verify_identity,
)
from ssa.testing.certs import CertificateAuthority
from ssa.tlsconfig import TLSSessionInfo
from ssa.tlsprotocol import TLSStreamProtocol

from .test_certificate_failures import with_extension

_CA = CertificateAuthority.create("SSA Fuzz CA")
_LEAF = _CA.issue_server("localhost", "*.example.test", "127.0.0.1", "::1")
_DER = _LEAF.cert.public_bytes(serialization.Encoding.DER)
_NAMES = ("localhost", "www.example.test", "127.0.0.1", "::1", "xn--bcher-kva.example", "other.test")
# Extensions the daemon or service_identity parse; garbage under their OIDs
# keeps the certificate loadable but its extensions unparsable.
_OIDS = (
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
)
_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated_der(draw: st.DrawFn) -> bytes:
    """
    The leaf's DER with bytes flipped, cut or inserted.
    """
    data = bytearray(_DER)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("flip", "cut", "insert")))
        where = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[where] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[where : where + draw(st.integers(1, 16))]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            break
    return bytes(data)


@st.composite
def garbled_extension(draw: st.DrawFn) -> x509.Certificate:
    """
    A certificate signed by the test CA, so OpenSSL verifies it, with
    garbage under the OID of an extension the daemon reads.
    """
    garbage = x509.UnrecognizedExtension(draw(st.sampled_from(_OIDS)), draw(st.binary(max_size=24)))
    return with_extension(_CA, _LEAF, garbage).cert


class _Engine:
    """
    The one engine call the handshake's last step makes: the session
    info, with the peer's leaf loaded from C{der} as the stdlib backend
    does (so a load failure happens inside C{session_info}).
    """

    def __init__(self, der: bytes) -> None:
        self._der = der

    def session_info(self) -> TLSSessionInfo:
        return TLSSessionInfo(TLS_1_3, "TLS_AES_128_GCM_SHA256", (x509.load_der_x509_certificate(self._der),))


def _finish_handshake(der: bytes, name: str) -> None:
    """
    The step of L{TLSStreamProtocol} that ends a client handshake, with the
    connector's identity check.
    """
    protocol = TLSStreamProtocol(_Engine(der), None, lambda info: verify_identity(info.peer_certificate, name))  # type: ignore[arg-type]
    protocol._checked_session()


class CertificateFuzzTests(SynchronousTestCase):
    """
    Only TLSFailure, whatever the certificate.
    """

    def assertOnlyTLSFailure(self, check, *args) -> None:
        try:
            check(*args)
        except TLSFailure as failure:
            self.assertTrue(failure.reason)

    def test_original_passes(self) -> None:
        """
        The unmutated certificate passes every check (so the properties
        below do test refusals).
        """
        _finish_handshake(_DER, "localhost")
        verify_identity(_LEAF.cert, "www.example.test")
        self.assertTrue(_VerifyRecord("127.0.0.1").accept_leaf(crypto.X509.from_cryptography(_LEAF.cert)))

    @_FAST
    @given(der=mutated_der(), name=st.sampled_from(_NAMES))
    def test_mutated_der(self, der: bytes, name: str) -> None:
        """
        Bytes flipped, cut or inserted anywhere: the handshake's last step
        and, for DER OpenSSL still loads, the OpenSSL backend's leaf check
        end in a verdict.
        """
        self.assertOnlyTLSFailure(_finish_handshake, der, name)
        try:
            loaded = crypto.load_certificate(crypto.FILETYPE_ASN1, der)
        except crypto.Error:
            return
        self.assertIsInstance(_VerifyRecord(name).accept_leaf(loaded), bool)
        self.assertIsInstance(_VerifyRecord(None).accept_leaf(loaded), bool)

    @_FAST
    @given(cert=garbled_extension(), name=st.sampled_from(_NAMES))
    def test_garbled_extension(self, cert: x509.Certificate, name: str) -> None:
        """
        A validly signed certificate with garbage in an extension the
        daemon reads: every check refuses or passes with a reason, and
        the reason's subject words never fail.
        """
        der = cert.public_bytes(serialization.Encoding.DER)
        self.assertOnlyTLSFailure(_finish_handshake, der, name)
        self.assertOnlyTLSFailure(verify_identity, cert, name)
        self.assertOnlyTLSFailure(check_readable, cert)
        self.assertIsInstance(certificate_subject(cert), str)
        self.assertIsInstance(malformed_extensions(cert), list)
        record = _VerifyRecord(name)
        if not record.accept_leaf(crypto.X509.from_cryptography(cert)):
            self.assertIsInstance(record.refusal, TLSFailure)

    @_FAST
    @given(data=st.one_of(mutated_der(), st.binary(max_size=64)))
    def test_der_reader(self, data: bytes) -> None:
        """
        The daemon's DER reader, which takes peer certificates apart to
        name a malformed extension, raises only ValueError.
        """
        try:
            _, start, end = der.read(data, 0)
            for child in der.children(data, start, end):
                der.decode_oid(child)
        except ValueError:
            pass

    def test_names_each_malformed_extension(self) -> None:
        """
        Each extension that cannot be parsed alone is named; a certificate
        without one names none.
        """
        self.assertEqual(malformed_extensions(_LEAF.cert), [])
        garbage = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x05junk")
        failure = self.assertRaises(TLSFailure, check_readable, with_extension(_CA, _LEAF, garbage).cert)
        self.assertIn("subject alternative name extension is malformed", failure.reason)


class CachedParsingTests(SynchronousTestCase):
    """
    What L{verify_identity} and L{check_readable} keep per certificate (its
    parse, its names) never turns into a verdict for another name or for
    another certificate.
    """

    def test_name_matched_every_time(self) -> None:
        """
        The same leaf, asked alternately for names it holds and names it
        does not, passes and fails each time, a fresh copy of it too; the
        second and later asks reuse its parsed names.
        """
        der_bytes = _LEAF.cert.public_bytes(serialization.Encoding.DER)
        for _ in range(2):
            for cert in (_LEAF.cert, x509.load_der_x509_certificate(der_bytes)):
                verify_identity(cert, "www.example.test")
                verify_identity(cert, "::1")
                failure = self.assertRaises(TLSFailure, verify_identity, cert, "other.test")
                self.assertIn("not for other.test", failure.reason)
                self.assertRaises(TLSFailure, verify_identity, cert, "127.0.0.2")
                self.assertRaises(TLSFailure, verify_identity, cert, "a.b.example.test")
        from ssa.identity import _patterns

        self.assertGreater(_patterns.cache_info().hits, 0)

    def test_unreadable_refused_every_time(self) -> None:
        """
        A certificate that cannot be parsed is refused on every check, with
        the same reason, while a readable one passes.
        """
        garbage = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x05junk")
        bad = with_extension(_CA, _LEAF, garbage).cert
        reasons = {self.assertRaises(TLSFailure, check_readable, bad).reason for _ in range(3)}
        self.assertEqual(len(reasons), 1)
        self.assertIn("malformed", reasons.pop())
        self.assertRaises(TLSFailure, verify_identity, bad, "localhost")
        check_readable(_LEAF.cert)
