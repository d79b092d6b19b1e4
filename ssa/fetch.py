"""
Bounded HTTP fetches for revocation data (OCSP responses, CRLs), on
Twisted's HTTP client, and a shared cache of what they bring.

L{fetch} asks one C{http://} URL (OCSP and CRL distribution are plain
HTTP: the data is signed) and never blocks: the whole exchange is bounded
in time (the policy's C{revocation-timeout}) and the body in size.
L{FetchCache} keeps what a fetch brought, parsed, until the time its
parser says (an OCSP response's or a CRL's nextUpdate), and makes every
caller asking for the same thing while a fetch is in flight wait for that
one fetch.
"""

from __future__ import annotations

import datetime
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

#: The largest OCSP response read, and the largest CRL (bytes).
OCSP_LIMIT = 1 << 20
CRL_LIMIT = 8 << 20


class FetchError(Exception):
    """
    A fetch that brought nothing usable; C{str()} says why, naming the URL.
    """


def fetch(
    reactor: Any, url: str, *, timeout: float, limit: int, body: bytes | None = None,
    content_type: str | None = None,
) -> Deferred:
    """
    GET C{url} (or POST C{body} as C{content_type}).

    @param timeout: seconds for the whole exchange: connection, request,
        answer.
    @param limit: the most bytes of body accepted.
    @return: fires with the body of a 200 answer, or fails with
        L{FetchError}.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return fail(FetchError(f"{url} is not an http:// URL"))
    headers = Headers({b"User-Agent": [b"ssa"]})
    if content_type is not None:
        headers.addRawHeader(b"Content-Type", content_type.encode("ascii"))
    agent = Agent(reactor, connectTimeout=timeout)
    result: Deferred = Deferred()
    state: dict[str, Any] = {"body": None}

    def finish(outcome: object) -> None:
        if result.called:
            return
        if timer.active():
            timer.cancel()
        if isinstance(outcome, Failure):
            error = outcome.value
            outcome = Failure(error if isinstance(error, FetchError) else FetchError(
                f"{url}: {error.__class__.__name__}: {outcome.getErrorMessage()}"))
        result.callback(outcome) if not isinstance(outcome, Failure) else result.errback(outcome)

    def timed_out() -> None:
        finish(Failure(FetchError(f"{url} did not answer within {timeout:g} s (revocation-timeout)")))
        if state["body"] is not None:
            state["body"].abort()
        else:
            request.cancel()

    def answered(response: Any) -> Deferred | None:
        if response.code != 200:
            response.deliverBody(_Discard())
            raise FetchError(f"{url} answered HTTP {response.code}")
        if response.length is not UNKNOWN_LENGTH and response.length > limit:
            response.deliverBody(_Discard())
            raise FetchError(f"{url} answered {response.length} bytes, more than the {limit} read")
        reader = _BoundedBody(url, limit)
        state["body"] = reader
        response.deliverBody(reader)
        return reader.done

    timer = reactor.callLater(timeout, timed_out)
    request = agent.request(b"POST" if body is not None else b"GET", url.encode("ascii", "replace"), headers,
                            _Bytes(body) if body is not None else None)
    request.addCallback(answered)
    request.addBoth(finish)
    return result


@implementer(IBodyProducer)
class _Bytes:
    """
    A request body of known bytes.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _BoundedBody(Protocol):
    """
    Collects a response body up to a limit; C{done} fires with it.
    """

    def __init__(self, url: str, limit: int) -> None:
        self._url = url
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self._fail(FetchError(f"{self._url} answered more than the {self._limit} bytes read"))
            return
        self._chunks.append(data)

    def abort(self) -> None:
        """
        Stop reading (timed out).
        """
        self._fail(FetchError(f"{self._url}: aborted"))

    def _fail(self, error: FetchError) -> None:
        if not self.done.called:
            self.done.errback(error)
        if self.transport is not None:
            IPushProducer(self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(FetchError(f"{self._url}: the answer was cut ({reason.getErrorMessage()})"))


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pass


def _now() -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(time.time()), datetime.UTC)


#: How long a failed fetch (a responder down, hanging or answering
#: nonsense) is remembered: connections in that time get its failure at
#: once instead of each waiting up to C{revocation-timeout} again.
FAILURE_MEMORY = datetime.timedelta(seconds=30)


class FetchCache:
    """
    Parsed fetch results shared by every connection, each kept until the
    expiry its parser gave (least recently used out beyond C{size}); a
    result without expiry is not kept. One fetch per key is in flight at
    a time: later callers wait for it. A failure is remembered for
    L{FAILURE_MEMORY}.

    @ivar fetches: how many fetches were started.
    """

    def __init__(self, size: int, now: Callable[[], datetime.datetime] = _now) -> None:
        self._size = size
        self._now = now
        self._kept: OrderedDict[Hashable, tuple[object, datetime.datetime]] = OrderedDict()
        self._inflight: dict[Hashable, list[Deferred]] = {}
        self._failed: OrderedDict[Hashable, tuple[Failure, datetime.datetime]] = OrderedDict()
        self.fetches = 0

    def get(
        self, key: Hashable, start: Callable[[], Deferred],
        parse: Callable[[bytes], tuple[object, datetime.datetime | None]], use_cached: bool = True,
    ) -> Deferred:
        """
        The parsed result for C{key}: kept, or from the fetch in flight for
        it, or from a new fetch C{start()}.

        @param parse: turns the fetched bytes into C{(value, expiry)}; the
            value is kept until C{expiry} unless it is L{None}.
        @param use_cached: L{False}: not the kept value (a fetch is made,
            or one in flight joined).
        @return: fires with the value, or fails as the fetch or C{parse}
            did.
        """
        if use_cached and key in self._kept:
            value, expiry = self._kept[key]
            if expiry >= self._now():
                self._kept.move_to_end(key)
                return succeed(value)
            del self._kept[key]
        if use_cached and key in self._failed:
            failure, until = self._failed[key]
            if until >= self._now():
                return fail(failure)
            del self._failed[key]
        waiter: Deferred = Deferred()
        if key in self._inflight:
            self._inflight[key].append(waiter)
            return waiter
        self._inflight[key] = [waiter]
        self.fetches += 1

        def done(outcome: bytes | Failure) -> None:
            waiters = self._inflight.pop(key, [])
            if not isinstance(outcome, Failure):
                try:
                    value, expiry = parse(outcome)
                except Exception:  # noqa: BLE001 (the parser's refusal goes to every waiter)
                    outcome = Failure()
                else:
                    if expiry is not None:
                        self._keep(key, value, expiry)
                    outcome = value  # type: ignore[assignment]
            if isinstance(outcome, Failure):
                self._failed[key] = (outcome, self._now() + FAILURE_MEMORY)
                while len(self._failed) > self._size:
                    self._failed.popitem(last=False)
            else:
                self._failed.pop(key, None)
            for each in waiters:
                each.callback(outcome) if not isinstance(outcome, Failure) else each.errback(outcome)

        try:
            started = start()
        except Exception:  # noqa: BLE001
            started = fail()
        started.addBoth(done)
        return waiter

    def _keep(self, key: Hashable, value: object, expiry: datetime.datetime) -> None:
        self._kept[key] = (value, expiry)
        self._kept.move_to_end(key)
        while len(self._kept) > self._size:
            self._kept.popitem(last=False)
