"""
L{ssa.fetch}: bounded HTTP fetches against a real HTTP server on
127.0.0.1, and the shared cache (one fetch for many callers, kept until
the parser's expiry).
"""

from __future__ import annotations

import datetime
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ssa.fetch import FAILURE_MEMORY, FetchCache, FetchError, fetch
from ssa.testing.revocation import RevocationHTTPServer


class FetchTests(TestCase):
    """
    L{fetch} with the Twisted reactor against a threaded HTTP server.
    """

    def setUp(self) -> None:
        self.server = RevocationHTTPServer().start()
        self.addCleanup(self.server.stop)

    async def test_get_and_post(self) -> None:
        """
        A GET brings the body; a POST sends its body.
        """
        self.server.routes["/crl"] = b"crl bytes"
        self.server.routes["/ocsp"] = lambda body: b"answer to " + body
        got = await fetch(reactor, self.server.url("/crl"), timeout=10, limit=100)
        self.assertEqual(got, b"crl bytes")
        got = await fetch(reactor, self.server.url("/ocsp"), timeout=10, limit=100, body=b"req",
                          content_type="application/ocsp-request")
        self.assertEqual(got, b"answer to req")

    async def assertFetchFails(self, url: str, *words: str, **kwargs: object) -> None:
        options = {"timeout": 10.0, "limit": 100, **kwargs}
        try:
            await fetch(reactor, url, **options)  # type: ignore[arg-type]
        except FetchError as e:
            for word in words:
                self.assertIn(word, str(e))
        else:
            self.fail(f"{url} was fetched")

    async def test_refusals(self) -> None:
        """
        Not http://, an HTTP error, a body over the limit, a refused
        connection: L{FetchError} saying so.
        """
        self.server.routes["/big"] = b"x" * 101
        await self.assertFetchFails("https://127.0.0.1/x", "not an http:// URL")
        await self.assertFetchFails("ldap://127.0.0.1/x", "not an http:// URL")
        await self.assertFetchFails(self.server.url("/missing"), "HTTP 404")
        await self.assertFetchFails(self.server.url("/big"), "more than the 100")
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        await self.assertFetchFails(f"http://127.0.0.1:{port}/x", f"127.0.0.1:{port}")

    async def test_cut(self) -> None:
        """
        An answer cut short (the connection closed before the announced
        length): L{FetchError}, not the part that came.
        """
        self.server.routes["/cut"] = "cut"
        await self.assertFetchFails(self.server.url("/cut"), "/cut")

    async def test_hang(self) -> None:
        """
        A server that never answers: the fetch fails after the timeout.
        """
        self.server.routes["/hang"] = "hang"
        start = reactor.seconds()
        await self.assertFetchFails(self.server.url("/hang"), "did not answer within 0.5 s", timeout=0.5)
        self.assertLess(reactor.seconds() - start, 5)


class FetchCacheTests(SynchronousTestCase):
    """
    L{FetchCache} as pure logic, with fetches the test fires.
    """

    def setUp(self) -> None:
        self.now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        self.cache = FetchCache(2, lambda: self.now)
        self.pending: list[Deferred] = []

    def start(self) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def parse(self, data: bytes) -> tuple[object, datetime.datetime | None]:
        if data == b"bad":
            raise ValueError("unparseable")
        return data.decode(), None if data == b"fleeting" else self.now + datetime.timedelta(hours=1)

    def test_coalesced(self) -> None:
        """
        Callers asking while a fetch is in flight share it; later ones get
        the kept value until it expires.
        """
        first = self.cache.get("k", self.start, self.parse)
        second = self.cache.get("k", self.start, self.parse)
        self.assertEqual(len(self.pending), 1)
        self.pending[0].callback(b"value")
        self.assertEqual(self.successResultOf(first), "value")
        self.assertEqual(self.successResultOf(second), "value")
        self.assertEqual(self.successResultOf(self.cache.get("k", self.start, self.parse)), "value")
        self.assertEqual(self.cache.fetches, 1)
        self.now += datetime.timedelta(hours=2)
        self.cache.get("k", self.start, self.parse)
        self.assertEqual(self.cache.fetches, 2)

    def test_not_cached(self) -> None:
        """
        use_cached=False fetches again; a value without expiry is not
        kept; a failure or a parser's refusal reaches every waiter and is
        remembered only for FAILURE_MEMORY (a responder that is down does
        not make every connection wait for its timeout).
        """
        self.cache.get("k", lambda: succeed(b"value"), self.parse)
        self.cache.get("k", self.start, self.parse, use_cached=False)
        self.assertEqual(self.cache.fetches, 2)
        self.cache.get("f", lambda: succeed(b"fleeting"), self.parse)
        self.cache.get("f", self.start, self.parse)
        self.assertEqual(self.cache.fetches, 4)
        waiters = [self.cache.get("b", self.start, self.parse) for _ in range(2)]
        self.pending[-1].callback(b"bad")
        for waiter in waiters:
            self.failureResultOf(waiter, ValueError)
        self.failureResultOf(self.cache.get("b", self.start, self.parse), ValueError)
        self.assertEqual(self.cache.fetches, 5, "the failure is remembered")
        again = self.cache.get("b", self.start, self.parse, use_cached=False)
        self.assertEqual(self.cache.fetches, 6)
        self.pending[-1].errback(ConnectionRefusedError())
        self.failureResultOf(again, ConnectionRefusedError)
        self.now += FAILURE_MEMORY + datetime.timedelta(seconds=1)
        self.cache.get("b", self.start, self.parse)
        self.assertEqual(self.cache.fetches, 7, "forgotten after FAILURE_MEMORY")

    def test_bounded(self) -> None:
        """
        Beyond its size the least recently used value goes.
        """
        for key in ("a", "b", "c"):
            self.cache.get(key, lambda: succeed(b"v"), self.parse)
        self.cache.get("a", self.start, self.parse)
        self.assertEqual(self.cache.fetches, 4)
