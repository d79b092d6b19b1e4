"""
L{ssa.stapling}: when a listener's staple is fetched and refreshed, and
what is stapled (pure logic: a test clock, and a fetch the test answers
with responses made by C{cryptography}). End to end with C{openssl
s_client -status}: C{tests/test_e2e_ocsp.py}.
"""

from __future__ import annotations

import datetime

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ssa import stapling
from ssa.fetch import FetchError
from ssa.testing.certs import CertificateAuthority
from ssa.testing.revocation import make_response, revocation_extensions
from ssa.tlsconfig import Credential


class StaplerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority.create()
        self.intermediate = self.ca.issue_intermediate()
        self.leaf = self.intermediate.issue_server(
            "localhost", extensions=revocation_extensions("http://127.0.0.1:9/ocsp"))
        self.clock = Clock()
        self.store = stapling.StapleStore()
        self.answers: list[Deferred] = []
        self.asked: list[tuple[str, bytes]] = []

    def fetch(self, reactor, url: str, **kwargs) -> Deferred:
        self.asked.append((url, kwargs["body"]))
        return self.answers.pop(0)

    def stapler(self, leaf=None) -> stapling.Stapler:
        leaf = leaf or self.leaf
        credential = Credential(leaf.chain_pem(), leaf.key_pem())
        return stapling.Stapler(self.clock, [credential], 5.0, self.store, self.fetch)

    def test_refresh(self) -> None:
        """
        A good response is stapled at once and fetched again halfway to its
        nextUpdate; a failed fetch keeps the staple and retries after
        RETRY; closing the listener drops it.
        """
        now = datetime.datetime.now(datetime.UTC)
        good = make_response(self.leaf.cert, self.intermediate, next_update=now + datetime.timedelta(minutes=10))
        self.answers += [succeed(good), fail(FetchError("down")), succeed(good)]
        stapler = self.stapler().start()
        self.assertEqual(self.asked[0][0], "http://127.0.0.1:9/ocsp")
        self.assertEqual(self.store.get(self.leaf.cert), good)
        self.clock.advance(290)
        self.assertEqual(len(self.asked), 1)
        self.clock.advance(20)
        self.assertEqual(len(self.asked), 2)
        self.assertEqual(self.store.get(self.leaf.cert), good)
        self.clock.advance(stapling.RETRY)
        self.assertEqual(len(self.asked), 3)
        stapler.stop()
        self.assertEqual(self.store.get(self.leaf.cert), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_response_not_stapled(self) -> None:
        """
        A revoked, or forged, response is not stapled.
        """
        forger = CertificateAuthority.create("SSA Test Intermediate CA")
        self.answers += [succeed(make_response(self.leaf.cert, self.intermediate, status="revoked")),
                         succeed(make_response(self.leaf.cert, self.intermediate, signer=forger))]
        self.stapler().start()
        self.assertEqual(self.store.get(self.leaf.cert), b"")
        self.clock.advance(stapling.RETRY)
        self.assertEqual(self.store.get(self.leaf.cert), b"")

    def test_nothing_to_staple(self) -> None:
        """
        A certificate without a responder, or whose chain lacks its issuer,
        is not fetched for.
        """
        self.stapler(self.intermediate.issue_server("localhost")).start()
        orphan = self.ca.issue_server("localhost", extensions=revocation_extensions("http://127.0.0.1:9/ocsp"))
        self.stapler(orphan).start()
        self.assertEqual(self.asked, [])

    def test_shared(self) -> None:
        """
        Two listeners of one certificate: the staple stays until both are
        closed.
        """
        good = make_response(self.leaf.cert, self.intermediate)
        self.answers += [succeed(good), succeed(good)]
        first, second = self.stapler().start(), self.stapler().start()
        first.stop()
        self.assertEqual(self.store.get(self.leaf.cert), good)
        second.stop()
        self.assertEqual(self.store.get(self.leaf.cert), b"")
