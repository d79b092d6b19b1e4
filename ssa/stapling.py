"""
Server-side OCSP stapling (C{TLS_SERVER_OCSP_STAPLING}): a listener's
L{Stapler} fetches a response for each of its certificates from the OCSP
responder of the certificate's AIA, keeps it in L{STAPLES} while it is
good and current, and fetches again halfway to its nextUpdate (or sooner
after a failure). A backend that staples reads L{STAPLES} in its status
callback for the certificate it serves; the TLS contexts themselves never
change.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import ocsp
from .fetch import OCSP_LIMIT, fetch
from .identity import certificate_subject
from .tlsconfig import Credential

log = Logger()

#: Seconds before fetching again after a failed or unusable answer, and the
#: least time between two fetches for one certificate.
RETRY = 30.0
MIN_REFRESH = 1.0


def _now() -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(time.time()), datetime.UTC)


class StapleStore:
    """
    The current staple of each certificate (by SHA-256 of its DER), with
    how many listeners staple it.
    """

    def __init__(self, now: Callable[[], datetime.datetime] = _now) -> None:
        self._now = now
        self._staples: dict[bytes, tuple[bytes, datetime.datetime]] = {}
        self._users: Counter[bytes] = Counter()

    def get(self, certificate: x509.Certificate) -> bytes:
        """
        The DER response to staple for C{certificate}; C{b""} if there is
        none current.
        """
        kept = self._staples.get(certificate.fingerprint(hashes.SHA256()))
        if kept is None or kept[1] < self._now():
            return b""
        return kept[0]

    def acquire(self, fingerprint: bytes) -> None:
        """
        One more listener staples the certificate C{fingerprint}.
        """
        self._users[fingerprint] += 1

    def release(self, fingerprint: bytes) -> None:
        """
        One listener less; the staple goes with the last.
        """
        self._users[fingerprint] -= 1
        if self._users[fingerprint] <= 0:
            del self._users[fingerprint]
            self._staples.pop(fingerprint, None)

    def put(self, fingerprint: bytes, response: bytes, next_update: datetime.datetime) -> None:
        """
        Staple C{response} until C{next_update}.
        """
        if fingerprint in self._users:
            self._staples[fingerprint] = (response, next_update)


STAPLES = StapleStore()
"""The staples of this process, read by the backends' status callbacks."""


class Stapler:
    """
    Keeps the staples of one listener's certificates fresh.
    """

    def __init__(
        self, reactor: Any, credentials: Sequence[Credential], timeout: float,
        store: StapleStore = STAPLES, fetcher: Callable[..., Deferred] = fetch,
    ) -> None:
        """
        @param credentials: the listener's certificates and their chains
            (each certificate's issuer must follow it in its chain).
        @param timeout: seconds for each fetch (C{revocation-timeout}).
        @param fetcher: L{ssa.fetch.fetch}, or another with its signature.
        """
        self._reactor = reactor
        self._timeout = timeout
        self._store = store
        self._fetch = fetcher
        self._timers: dict[bytes, IDelayedCall] = {}
        self._stopped = False
        self._items: list[tuple[bytes, x509.Certificate, x509.Certificate, str]] = []
        for credential in credentials:
            item = _stapled(credential)
            if isinstance(item, str):
                log.warn("stapling: {why}", why=item)  # noqa: G010 (Twisted's Logger has warn)
            else:
                self._items.append(item)

    def start(self) -> Stapler:
        """
        Fetch every certificate's first response.
        """
        for item in self._items:
            self._store.acquire(item[0])
            self._refresh(item)
        return self

    def stop(self) -> None:
        """
        The listener is closed: no more fetches, its staples go.
        """
        self._stopped = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for item in self._items:
            self._store.release(item[0])

    def _refresh(self, item: tuple[bytes, x509.Certificate, x509.Certificate, str]) -> None:
        fingerprint, leaf, issuer, url = item
        request = ocsp.build_request(leaf, issuer)
        fetched = self._fetch(self._reactor, url, timeout=self._timeout, limit=OCSP_LIMIT, body=request,
                              content_type="application/ocsp-request")

        def got(data: bytes) -> float:
            now = _now()
            status = ocsp.evaluate(data, leaf, issuer, now)
            if status.state != ocsp.GOOD or status.next_update is None:
                log.warn(  # noqa: G010
                    "stapling: the OCSP responder {url} gives no good response for {subject}: {why}",
                    url=url, subject=certificate_subject(leaf), why=status.why or status.state)
                return RETRY
            self._store.put(fingerprint, data, status.next_update)
            log.info("stapling: a good OCSP response for {subject} from {url}, until {until}",
                     subject=certificate_subject(leaf), url=url, until=status.next_update.isoformat())
            return max(MIN_REFRESH, (status.next_update - now).total_seconds() / 2)

        def failed(failure: Failure) -> float:
            log.warn("stapling: no OCSP response for {subject}: {why}",  # noqa: G010
                     subject=certificate_subject(leaf), why=failure.getErrorMessage())
            return RETRY

        def schedule(delay: float) -> None:
            if not self._stopped:
                self._timers[fingerprint] = self._reactor.callLater(delay, self._refresh, item)

        fetched.addCallbacks(got, failed)
        fetched.addCallback(schedule)


def _stapled(credential: Credential) -> tuple[bytes, x509.Certificate, x509.Certificate, str] | str:
    """
    What stapling C{credential}'s certificate needs (its fingerprint, it,
    its issuer, its responder's http:// URL), or why it cannot be stapled.
    """
    chain = x509.load_pem_x509_certificates(credential.chain_pem)
    leaf = chain[0]
    subject = certificate_subject(leaf)
    urls = [url for url in ocsp.ocsp_urls(leaf) if url.startswith("http://")]
    if not urls:
        return f"{subject} names no http:// OCSP responder: nothing to staple"
    for candidate in chain[1:]:
        try:
            leaf.verify_directly_issued_by(candidate)
        except Exception:  # noqa: BLE001, S112 (not its issuer)
            continue
        return leaf.fingerprint(hashes.SHA256()), leaf, candidate, urls[0]
    return f"the chain of {subject} does not hold its issuer, which an OCSP request names: nothing to staple"
