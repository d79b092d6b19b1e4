"""
OCSP as pure logic (L{ssa.ocsp}): requests, and responses made at test
time by C{openssl ocsp} (a real responder's answers) and by
C{cryptography}'s builder (forged, stale, another serial, delegated).
"""

from __future__ import annotations

import datetime

from cryptography.x509 import ocsp as x509_ocsp
from twisted.trial.unittest import SynchronousTestCase

from ssa import ocsp
from ssa.testing.certs import CertificateAuthority
from ssa.testing.revocation import (
    HOUR,
    OpenSSLResponder,
    make_response,
    revocation_extensions,
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


class RequestTests(SynchronousTestCase):
    """
    L{ocsp.build_request} and the certificate's OCSP fields.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority.create()
        self.leaf = self.ca.issue_server("localhost", extensions=revocation_extensions(
            "http://127.0.0.1:1/ocsp", "http://127.0.0.1:1/crl", must_staple=True)).cert

    def test_request(self) -> None:
        """
        The request names the certificate's serial and its issuer's hashes.
        """
        request = x509_ocsp.load_der_ocsp_request(ocsp.build_request(self.leaf, self.ca.cert))
        self.assertEqual(request.serial_number, self.leaf.serial_number)
        expected = x509_ocsp.OCSPRequestBuilder().add_certificate(
            self.leaf, self.ca.cert, request.hash_algorithm).build()
        self.assertEqual(request.issuer_key_hash, expected.issuer_key_hash)
        self.assertEqual(request.issuer_name_hash, expected.issuer_name_hash)

    def test_fields(self) -> None:
        """
        The AIA's responders and the must-staple feature are read; a
        certificate without them has none.
        """
        self.assertEqual(ocsp.ocsp_urls(self.leaf), ["http://127.0.0.1:1/ocsp"])
        self.assertTrue(ocsp.must_staple(self.leaf))
        plain = self.ca.issue_server("localhost").cert
        self.assertEqual(ocsp.ocsp_urls(plain), [])
        self.assertFalse(ocsp.must_staple(plain))


class OpenSSLResponseTests(SynchronousTestCase):
    """
    Responses of C{openssl ocsp} (signed by the CA, or by a delegated
    responder) read by L{ocsp.evaluate}.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority.create()
        self.leaf = self.ca.issue_server("localhost").cert
        self.other = self.ca.issue_server("other").cert

    def answer(self, responder: OpenSSLResponder, certificate=None) -> ocsp.Status:
        certificate = certificate or self.leaf
        data = responder.respond(ocsp.build_request(certificate, self.ca.cert))
        return ocsp.evaluate(data, certificate, self.ca.cert, _now())

    def test_good_and_revoked(self) -> None:
        """
        A listed valid certificate is good until the response's nextUpdate;
        a revoked one is revoked, with when and why.
        """
        responder = OpenSSLResponder(self.ca)
        responder.good(self.leaf)
        responder.revoke(self.other)
        status = self.answer(responder)
        self.assertEqual(status.state, ocsp.GOOD)
        self.assertGreater(status.next_update, _now() + 23 * HOUR)
        revoked = self.answer(responder, self.other)
        self.assertEqual(revoked.state, ocsp.REVOKED)
        self.assertIn("key_compromise", revoked.why)

    def test_not_listed(self) -> None:
        """
        A certificate the responder does not know: unknown.
        """
        status = self.answer(OpenSSLResponder(self.ca))
        self.assertEqual(status.state, ocsp.UNKNOWN)

    def test_delegated(self) -> None:
        """
        A responder certificate issued by the CA for OCSPSigning may sign;
        one without that usage, or issued by another CA, may not.
        """
        delegate = self.ca.issue_server(common_name="OCSP responder", extended_key_usage=("OCSPSigning",))
        responder = OpenSSLResponder(self.ca, delegate)
        responder.good(self.leaf)
        self.assertEqual(self.answer(responder).state, ocsp.GOOD)
        plain = self.ca.issue_server(common_name="Not a responder")
        responder = OpenSSLResponder(self.ca, plain)
        responder.good(self.leaf)
        status = self.answer(responder)
        self.assertEqual(status.state, ocsp.UNKNOWN)
        self.assertIn("OCSPSigning", status.why)
        stranger = CertificateAuthority.create("Other CA").issue_server(
            common_name="OCSP responder", extended_key_usage=("OCSPSigning",))
        responder = OpenSSLResponder(self.ca, stranger)
        responder.revoke(self.leaf)
        status = self.answer(responder)
        self.assertEqual(status.state, ocsp.UNKNOWN)
        self.assertIn("not issued by", status.why)


class CraftedResponseTests(SynchronousTestCase):
    """
    Responses made with C{cryptography}: every bad one is unknown, never
    good (nor revoked).
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority.create()
        self.leaf = self.ca.issue_server("localhost").cert

    def evaluate(self, data: bytes) -> ocsp.Status:
        return ocsp.evaluate(data, self.leaf, self.ca.cert, _now())

    def test_good(self) -> None:
        self.assertEqual(self.evaluate(make_response(self.leaf, self.ca)).state, ocsp.GOOD)

    def test_revoked(self) -> None:
        status = self.evaluate(make_response(self.leaf, self.ca, status="revoked"))
        self.assertEqual(status.state, ocsp.REVOKED)

    def test_forged(self) -> None:
        """
        Signed by a key claiming the issuer's name: unknown.
        """
        forger = CertificateAuthority.create("SSA Test Root CA")
        status = self.evaluate(make_response(self.leaf, self.ca, status="revoked", signer=forger))
        self.assertEqual(status.state, ocsp.UNKNOWN)

    def test_forged_by_hash(self) -> None:
        """
        A responder id that names no certificate of the response: unknown.
        """
        forger = CertificateAuthority.create("Forger")
        status = self.evaluate(make_response(self.leaf, self.ca, signer=forger))
        self.assertEqual(status.state, ocsp.UNKNOWN)
        self.assertIn("neither", status.why)

    def test_stale(self) -> None:
        now = _now()
        status = self.evaluate(make_response(self.leaf, self.ca, this_update=now - 48 * HOUR,
                                             next_update=now - HOUR))
        self.assertEqual(status.state, ocsp.UNKNOWN)
        self.assertIn("stale", status.why)

    def test_future(self) -> None:
        now = _now()
        status = self.evaluate(make_response(self.leaf, self.ca, this_update=now + HOUR,
                                             next_update=now + 24 * HOUR))
        self.assertEqual(status.state, ocsp.UNKNOWN)
        self.assertIn("not valid yet", status.why)

    def test_wrong_serial(self) -> None:
        """
        A good response for another certificate of the same issuer: unknown.
        """
        other = self.ca.issue_server("localhost").cert
        status = self.evaluate(make_response(other, self.ca))
        self.assertEqual(status.state, ocsp.UNKNOWN)
        self.assertIn("does not answer for this certificate", status.why)

    def test_other_issuer(self) -> None:
        """
        The same serial under another issuer's hashes: unknown.
        """
        other_ca = CertificateAuthority.create("SSA Test Root CA")
        status = self.evaluate(make_response(self.leaf, other_ca))
        self.assertEqual(status.state, ocsp.UNKNOWN)

    def test_delegate_embedded(self) -> None:
        """
        A delegated responder carried in the response may sign; an expired
        one may not.
        """
        delegate = self.ca.issue_server(common_name="OCSP responder", extended_key_usage=("OCSPSigning",))
        status = self.evaluate(make_response(self.leaf, self.ca, signer=delegate, embed=(delegate.cert,)))
        self.assertEqual(status.state, ocsp.GOOD)
        expired = self.ca.issue_server(common_name="OCSP responder", extended_key_usage=("OCSPSigning",),
                                       not_before=-2 * HOUR, not_after=-HOUR)
        status = self.evaluate(make_response(self.leaf, self.ca, signer=expired, embed=(expired.cert,)))
        self.assertEqual(status.state, ocsp.UNKNOWN)
        self.assertIn("not valid now", status.why)

    def test_unparseable(self) -> None:
        """
        Garbage, an empty body, a truncated response, an error response:
        unknown.
        """
        good = make_response(self.leaf, self.ca)
        error = x509_ocsp.OCSPResponseBuilder.build_unsuccessful(
            x509_ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(ocsp.Encoding.DER)
        for data in (b"", b"<html>", good[:-10], error):
            self.assertEqual(self.evaluate(data).state, ocsp.UNKNOWN, data[:10])
