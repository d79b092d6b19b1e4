"""
The client role's revocation check of a server's chain, after the
handshake and before the socket is reported connected
(L{check_server_revocation}, called by the connector): it may fetch OCSP
responses and CRLs, so it returns a L{Deferred}.

The path is walked from the leaf to an anchor (each step to the
certificate whose key verifies the previous signature, the connection's
anchors first, then the certificates the server sent). Every certificate
of it but the anchor is checked, all at once, each by its sources in
order until one says C{good} or C{revoked}:

 1. the stapled OCSP response (the leaf only; C{revocation-stapled});
 2. the OCSP responders of its authority information access
    (C{revocation-ocsp});
 3. the CRLs of C{crl-path}, then those of its CRL distribution points
    (C{revocation-crl}).

Fetches (L{ssa.fetch}) go only to C{http://} URLs, each bounded by
C{revocation-timeout}; their results are shared by every connection until
their nextUpdate (unless C{revocation-cached} is off for the socket).
A revoked certificate is refused; an unknown status is refused in
C{hard-fail} only; a must-staple leaf without a valid stapled response is
refused in either mode.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger

from . import ocsp
from .crls import Revocation, parse_crl_file, sourced_crl
from .errors import TLSFailure
from .fetch import CRL_LIMIT, OCSP_LIMIT, FetchCache, FetchError, fetch
from .identity import certificate_subject
from .ocsp import GOOD, REVOKED, UNKNOWN, Status, unknown
from .pathvalidation import anchors_of
from .revocation import crl_status, crl_urls
from .tlsconfig import ClientTLSConfig, TLSSessionInfo

log = Logger()

#: The OCSP responses (by responder and request) and CRLs (by URL) every
#: connection of this process shares.
OCSP_CACHE = FetchCache(4096)
CRL_CACHE = FetchCache(64)
#: Verdicts on stapled responses (nothing is fetched for them).
STAPLE_CACHE = FetchCache(4096)
#: How many walked paths are remembered.
PATHS = 4096
_paths: OrderedDict[tuple, tuple[tuple[x509.Certificate, ...], list[x509.Certificate]]] = OrderedDict()

_said: set[str] = set()
_CRL = "CRL"  # the source of a status a CRL gave (its reason names the CRL)


def _now() -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(time.time()), datetime.UTC)


def check_server_revocation(reactor: Any, config: ClientTLSConfig, info: TLSSessionInfo) -> Deferred:
    """
    Check the revocation of the server's chain in C{info} under
    C{config.revocation}. A resumed session is not checked again (its
    chain was checked when it was made, under the same settings).

    @return: fires with L{None} when the chain passes, or fails with
        L{TLSFailure} saying why not (C{revoked}, naming the certificate,
        its depth and the source). Already fired when nothing needs to be
        fetched.
    """
    revocation = config.revocation
    if revocation is None or info.resumed or not info.peer_chain:
        return succeed(None)
    if not (revocation.stapled or revocation.ocsp or revocation.crl):
        return succeed(None)  # every method off: nothing is checked
    if _nothing_to_learn(revocation, info):
        return succeed(None)
    try:
        path = _walked(info.peer_chain, anchors_of(config.trust_anchors, config.use_system_store))
    except TLSFailure:
        return fail()
    now = _now()
    checks = [
        Deferred.fromCoroutine(_status(reactor, revocation, path[depth], path[depth + 1],
                                       info.ocsp_response if depth == 0 else b"", depth, now))
        for depth in range(len(path) - 1)
    ]
    if not checks:
        return succeed(None)
    gathered = gatherResults(checks, consumeErrors=True)
    gathered.addCallback(_verdict, path, revocation, info.ocsp_response)
    return gathered


def _nothing_to_learn(revocation: Revocation, info: TLSSessionInfo) -> bool:
    """
    Whether no source could say anything and nothing would be refused for
    it (C{soft-fail}, no staple, no CRLs in C{crl-path}, no responder or
    distribution point named, no must-staple leaf): the common case of a
    private PKI, decided without walking the path.
    """
    if revocation.hard_fail or (revocation.crl and revocation.crls.crls):
        return False
    chain = info.peer_chain
    if revocation.stapled and (info.ocsp_response or ocsp.must_staple(chain[0])):
        return False
    return not any((revocation.ocsp and ocsp.ocsp_urls(c)) or (revocation.crl and crl_urls(c)) for c in chain)


def _walked(chain: Sequence[x509.Certificate], anchors: tuple[x509.Certificate, ...]) -> list[x509.Certificate]:
    """
    L{walk_path}, remembered for the last L{PATHS} distinct chains and
    anchors (walking verifies signatures: about a millisecond each).
    """
    key = (tuple(c.fingerprint(hashes.SHA256()) for c in chain), id(anchors))
    kept = _paths.get(key)
    if kept is not None and kept[0] is anchors:
        _paths.move_to_end(key)
        return kept[1]
    path = walk_path(chain, anchors)
    _paths[key] = (anchors, path)
    while len(_paths) > PATHS:
        _paths.popitem(last=False)
    return path


def walk_path(chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """
    The path from C{chain}'s leaf towards an anchor: each next certificate
    is one whose subject is the last one's issuer and whose key verifies
    its signature, among the anchors first, then C{chain}. The walk stops
    at an anchor, or where no issuer is found.
    """
    path = [chain[0]]
    candidates = [*anchors, *chain[1:]]
    while path[-1] not in anchors and len(path) <= len(chain):
        issuer = _issuer_of(path[-1], candidates)
        if issuer is None or issuer in path:
            break
        path.append(issuer)
    return path


def _issuer_of(certificate: x509.Certificate, candidates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(candidate)
        except (InvalidSignature, TypeError, ValueError):
            continue
        return candidate
    return None


async def _status(
    reactor: Any, revocation: Revocation, certificate: x509.Certificate, issuer: x509.Certificate,
    staple: bytes | None, depth: int, now: datetime.datetime,
) -> tuple[Status, str]:
    """
    The status of C{certificate} from its first source that knows it, and
    that source's name; or C{unknown}, saying what each source lacked.
    """
    reasons: list[str] = []
    if revocation.stapled and depth == 0:
        if staple is None:
            reasons.append("this backend cannot read a stapled OCSP response")
        elif not staple:
            reasons.append("the server stapled no OCSP response")
        else:
            status = await _staple_status(staple, certificate, issuer)
            if status.state != UNKNOWN:
                return status, "the stapled OCSP response"
            reasons.append(f"the stapled OCSP response {status.why}")
    if revocation.ocsp:
        for url in ocsp.ocsp_urls(certificate):
            try:
                status = await _ocsp_answer(reactor, revocation, url, certificate, issuer)
            except FetchError as e:
                reasons.append(f"the OCSP responder {e}")
                continue
            if status.state != UNKNOWN:
                return status, f"the OCSP responder {url}"
            reasons.append(f"the response of the OCSP responder {url} {status.why}")
    if revocation.crl:
        files = revocation.crls.for_issuer(issuer.subject)
        status = crl_status(certificate, issuer, files, now)
        if status.state != UNKNOWN:
            return status, _CRL
        reasons.append(status.why or f"no CRL from its issuer {certificate_subject(issuer)} in crl-path")
        for url in crl_urls(certificate):
            try:
                crl = await _crl_answer(reactor, revocation, url)
            except (FetchError, ValueError) as e:
                reasons.append(f"the CRL distribution point {e}")
                continue
            status = crl_status(certificate, issuer, [crl], _now())
            if status.state != UNKNOWN:
                return status, _CRL
            reasons.append(status.why)
    return unknown("; ".join(reasons)), ""


def _staple_status(staple: bytes, certificate: x509.Certificate, issuer: x509.Certificate) -> Deferred:
    """
    What C{staple} says about C{certificate}; a good or revoked verdict is
    remembered until the response's nextUpdate (a server staples the same
    response to every connection).
    """
    key = (hashlib.sha256(staple).digest(), certificate.fingerprint(hashes.SHA256()),
           issuer.fingerprint(hashes.SHA256()))

    def parse(data: bytes) -> tuple[Status, datetime.datetime | None]:
        status = ocsp.evaluate(data, certificate, issuer, _now())
        return status, (status.next_update if status.state != UNKNOWN else None)

    return STAPLE_CACHE.get(key, lambda: succeed(staple), parse)


def _ocsp_answer(
    reactor: Any, revocation: Revocation, url: str, certificate: x509.Certificate, issuer: x509.Certificate
) -> Deferred:
    """
    The L{Status} the responder at C{url} gives C{certificate}: cached, or
    fetched (POST, RFC 6960 appendix A).
    """
    request = ocsp.build_request(certificate, issuer)

    def parse(data: bytes) -> tuple[Status, datetime.datetime | None]:
        status = ocsp.evaluate(data, certificate, issuer, _now())
        return status, (status.next_update if status.state != UNKNOWN else None)

    def start() -> Deferred:
        return fetch(reactor, url, timeout=revocation.timeout, limit=OCSP_LIMIT, body=request,
                     content_type="application/ocsp-request")

    return OCSP_CACHE.get((url, request), start, parse, revocation.cached)


def _crl_answer(reactor: Any, revocation: Revocation, url: str) -> Deferred:
    """
    The CRL at C{url} (PEM or DER), cached until its nextUpdate, or
    fetched.
    """

    def parse(data: bytes) -> tuple[object, datetime.datetime | None]:
        crl = parse_crl_file(url, data)[0]
        return sourced_crl(url, crl), crl.next_update_utc

    def start() -> Deferred:
        return fetch(reactor, url, timeout=revocation.timeout, limit=CRL_LIMIT)

    return CRL_CACHE.get(url, start, parse, revocation.cached)


def _verdict(
    results: list[tuple[Status, str]], path: list[x509.Certificate], revocation: Revocation,
    staple: bytes | None,
) -> None:
    """
    Refuse the path if a certificate is revoked, if a must-staple leaf has
    no valid stapled response, or (C{hard-fail}) if a status is unknown.

    @raise TLSFailure: it is refused.
    """
    for depth, (status, source) in enumerate(results):
        if status.state == REVOKED:
            subject = certificate_subject(path[depth])
            if source == _CRL:  # the reason names the CRL: its file or URL
                raise TLSFailure(f"certificate revoked: {subject} (depth {depth}) {status.why}")
            raise TLSFailure(f"certificate revoked: {subject} (depth {depth}): {source} says {status.why}")
    if staple is None and revocation.stapled:
        _say_once()
    leaf_source = results[0][1]
    if revocation.stapled and ocsp.must_staple(path[0]) and leaf_source != "the stapled OCSP response":
        raise TLSFailure(
            f"certificate requires a stapled OCSP response (TLS feature status_request, must-staple):"
            f" {certificate_subject(path[0])} (depth 0): "
            + ("the stdlib backend cannot read stapled responses (Python's ssl module has no interface for"
               " them; the openssl backend can)" if staple is None else
               "the server stapled none" if not staple else "the stapled response is not valid")
        )
    if revocation.hard_fail:
        for depth, (status, _) in enumerate(results):
            if status.state != GOOD:
                raise TLSFailure(
                    f"certificate revocation status unknown (revocation-mode: hard-fail):"
                    f" {certificate_subject(path[depth])} (depth {depth}): {status.why}"
                )


def _say_once() -> None:
    """
    Log, once per process, that the backend cannot read stapled OCSP
    responses.
    """
    if _said:
        return
    _said.add("stapled")
    log.warn(  # noqa: G010 (Twisted's Logger has warn)
        "revocation: the {backend} backend cannot read stapled OCSP responses (Python's ssl module has no"
        " interface for them): revocation-stapled checks nothing with it, and must-staple certificates are"
        " refused; OCSP responders and CRLs are still asked. The openssl backend reads them.",
        backend="stdlib",
    )
