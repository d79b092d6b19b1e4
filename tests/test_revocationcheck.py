"""
L{ssa.revocationcheck} without the network: the walked path, and the
verdicts on stapled responses, must-staple, soft and hard fail (nothing
to fetch: the certificates name no responder). End to end, with
fetches: C{tests/test_e2e_ocsp.py}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ssa.crls import NO_CRLS, Revocation
from ssa.errors import TLSFailure
from ssa.revocationcheck import check_server_revocation, walk_path
from ssa.testing.certs import CertificateAuthority
from ssa.testing.revocation import make_response, revocation_extensions
from ssa.tlsconfig import ClientTLSConfig, TLSSessionInfo


class WalkTests(SynchronousTestCase):
    def test_walk(self) -> None:
        """
        From the leaf through the sent intermediates to the anchor; an
        anchor ends the walk even if the server sent more; a chain whose
        issuer is missing ends where it is missing.
        """
        root = CertificateAuthority.create()
        intermediate = root.issue_intermediate()
        leaf = intermediate.issue_server("localhost").cert
        self.assertEqual(walk_path((leaf, intermediate.cert, root.cert), (root.cert,)),
                         [leaf, intermediate.cert, root.cert])
        self.assertEqual(walk_path((leaf, intermediate.cert, root.cert), (intermediate.cert,)),
                         [leaf, intermediate.cert])
        self.assertEqual(walk_path((leaf,), (root.cert,)), [leaf])


class VerdictTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = CertificateAuthority.create()
        self.intermediate = self.root.issue_intermediate()
        self.leaf = self.intermediate.issue_server("localhost").cert
        self.must = self.intermediate.issue_server("localhost", extensions=revocation_extensions(
            must_staple=True)).cert

    def check(self, leaf, staple: bytes | None = b"", hard: bool = False, resumed: bool = False):
        revocation = Revocation(NO_CRLS, hard_fail=hard, stapled=True, ocsp=True, crl=True)
        config = ClientTLSConfig(trust_anchors=self.root.cert_pem(), use_system_store=False, revocation=revocation)
        info = TLSSessionInfo(4, "x", (leaf, self.intermediate.cert), resumed=resumed, ocsp_response=staple)
        return check_server_revocation(Clock(), config, info)

    def refused(self, *args, words=(), **kwargs) -> str:
        failure = self.failureResultOf(self.check(*args, **kwargs), TLSFailure)
        reason = str(failure.value.args[0])
        for word in words:
            self.assertIn(word, reason)
        return reason

    def test_staples(self) -> None:
        """
        A good staple passes; a revoked one is refused naming it; a forged
        one is unknown: passes in soft-fail, refused in hard-fail.
        """
        self.successResultOf(self.check(self.leaf, make_response(self.leaf, self.intermediate)))
        self.refused(self.leaf, make_response(self.leaf, self.intermediate, status="revoked"),
                     words=("certificate revoked: /CN=localhost (depth 0): the stapled OCSP response says revoked",))
        forged = make_response(self.leaf, self.intermediate, signer=CertificateAuthority.create("Forger"))
        self.successResultOf(self.check(self.leaf, forged))
        self.refused(self.leaf, forged, hard=True, words=("unknown", "the stapled OCSP response is signed by neither"))

    def test_hard_fail(self) -> None:
        """
        Nothing known: soft-fail passes; hard-fail refuses, saying what
        each source lacked, at the first certificate.
        """
        self.successResultOf(self.check(self.leaf))
        self.refused(self.leaf, hard=True, words=("(depth 0)", "the server stapled no OCSP response",
                                                  "no CRL from its issuer"))

    def test_must_staple(self) -> None:
        """
        A must-staple leaf: refused without a staple, or with one that is
        not good, even in soft-fail; a backend that cannot read staples
        says so; a good staple passes.
        """
        self.refused(self.must, words=("must-staple", "stapled none"))
        self.refused(self.must, None, words=("the stdlib backend cannot read stapled responses",))
        self.successResultOf(self.check(self.must, make_response(self.must, self.intermediate)))
        other = make_response(self.leaf, self.intermediate)
        self.refused(self.must, other, words=("the stapled response is not valid",))

    def test_resumed(self) -> None:
        """
        A resumed session is not checked again.
        """
        self.successResultOf(self.check(self.must, resumed=True, hard=True))
