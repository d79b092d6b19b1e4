"""
The daemon's own verdict on a peer's certificate chain, the same for every
TLS backend: after the TLS library has verified the chain (its RFC 5280
checks, with OpenSSL's strict X.509 flag), C{cryptography}'s web-PKI path
builder (C{cryptography.x509.verification}) builds and checks a path again
from the certificates the peer sent to the anchors the connection trusts,
including the peer's name (client role) or the clientAuth usage (server
role).

When the connection checks revocation, every certificate of the built
path but the anchor is then checked against the policy's CRLs
(L{ssa.revocation}).

Verdicts are cached: one per distinct (chain, anchors, name, policy, CRLs,
minute), so that a repeated or resumed connection does not pay again.

Every failure is a L{TLSFailure}, never another exception.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import os
import ssl
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification

from .crls import Revocation
from .errors import TLSFailure
from .identity import certificate_subject
from .optioncheck import is_ip_literal
from .revocation import revocation_failure
from .tlsconfig import ClientTLSConfig, ServerTLSConfig, TLSSessionInfo
from .webpki_rules import path_rule_failure

WEBPKI = "webpki"
RFC5280 = "rfc5280"
PATH_VALIDATION_MODES = (WEBPKI, RFC5280)
"""The values of the policy key C{path-validation}."""

# How long (seconds) a cached verdict stands: the verification time is
# "now", rounded into buckets of this size for the cache key.
TIME_BUCKET = 60
# How many verdicts and stores are kept (least recently used first out).
VERDICTS = 4096
STORES = 64


def _now() -> datetime.datetime:
    """
    The current time in UTC, to the second (X.509 times have no fraction).
    """
    return datetime.datetime.fromtimestamp(int(time.time()), datetime.UTC)


@functools.lru_cache(maxsize=1)
def system_anchors() -> tuple[x509.Certificate, ...]:
    """
    The system's trust anchors, as the TLS libraries load them
    (C{ssl.get_default_verify_paths}: the CA file, then the PEM files of the
    CA directory), read once. Unreadable files and certificates are
    skipped, as OpenSSL skips them.
    """
    paths = ssl.get_default_verify_paths()
    files: list[str] = []
    if paths.cafile:
        files.append(paths.cafile)
    if paths.capath and os.path.isdir(paths.capath) and not paths.cafile:
        files.extend(
            os.path.join(paths.capath, name) for name in sorted(os.listdir(paths.capath))
        )
    seen: dict[bytes, x509.Certificate] = {}
    for path in files:
        try:
            with open(path, "rb") as f, warnings.catch_warnings():
                # Some system roots have serial number 0: still anchors.
                warnings.simplefilter("ignore")
                certificates = x509.load_pem_x509_certificates(f.read())
        except (OSError, ValueError):
            continue
        for certificate in certificates:
            seen.setdefault(certificate.fingerprint(hashes.SHA256()), certificate)
    return tuple(seen.values())


def _digest(certificates: Sequence[x509.Certificate]) -> bytes:
    """
    One SHA-256 over the DER of C{certificates}, in order.
    """
    h = hashlib.sha256()
    for certificate in certificates:
        der = certificate.public_bytes(Encoding.DER)
        h.update(len(der).to_bytes(4, "big"))
        h.update(der)
    return h.digest()


@functools.lru_cache(maxsize=STORES)
def _anchors(pem: bytes | None, system: bool
             ) -> tuple[bytes, verification.Store | None, tuple[x509.Certificate, ...]]:
    """
    The anchors' digest, a C{Store} of them (L{None} if there are none)
    and the anchors, for C{pem} plus the system store if C{system}.

    @raise TLSFailure: C{pem} is not valid PEM.
    """
    certificates: list[x509.Certificate] = list(system_anchors()) if system else []
    if pem:
        try:
            certificates += x509.load_pem_x509_certificates(pem)
        except ValueError as e:
            raise TLSFailure(f"the trusted certificates are not valid PEM ({e})") from e
    store = verification.Store(certificates) if certificates else None
    return _digest(certificates), store, tuple(certificates)


class PathValidator:
    """
    Check peers' chains with C{cryptography}'s web-PKI path builder, with a
    bounded cache of verdicts.

    @ivar checks: how many chains were really checked (cache misses).
    """

    def __init__(self, size: int = VERDICTS) -> None:
        """
        @param size: how many verdicts to keep.
        """
        self._size = size
        self._verdicts: OrderedDict[tuple, TLSFailure | None] = OrderedDict()
        self.checks = 0

    def check(
        self,
        chain: Sequence[x509.Certificate],
        *,
        anchors_pem: bytes | None,
        system_store: bool,
        name: str | None,
        max_depth: int,
        mode: str = WEBPKI,
        server: bool = False,
        revocation: Revocation | None = None,
    ) -> None:
        """
        Validate the peer's C{chain} (leaf first, as it was sent).

        @param anchors_pem: the anchors the connection trusts (PEM), or
            L{None}.
        @param system_store: whether the system's anchors are trusted too.
        @param name: the DNS name or IP literal the leaf must be valid for
            (client role); L{None} for a client certificate (server role).
        @param max_depth: the most intermediates between leaf and anchor
            (the policy's C{cert-chain-depth}).
        @param mode: the policy's C{path-validation}: C{webpki}, or
            C{rfc5280} for private anchors only (then only the TLS
            library's checks apply: see C{docs/policy.md}).
        @param server: whether this side is the server (the chain is a
            client's).
        @param revocation: the CRLs and mode to check the path against, or
            L{None} to not check revocation.
        @raise TLSFailure: the chain is refused; the reason names the rule,
            the certificate's subject and, where known, its depth.
        """
        if not chain:
            raise TLSFailure("the peer sent no certificate to verify")
        if mode == RFC5280 and not system_store and revocation is None:
            return
        digest, store, anchors = _anchors(anchors_pem, system_store)
        now = _now()
        key = (_digest(chain), digest, name, server, max_depth, mode == RFC5280 and not system_store,
               revocation, int(now.timestamp()) // TIME_BUCKET)
        verdicts = self._verdicts
        if key in verdicts:
            verdicts.move_to_end(key)
            failure = verdicts[key]
        else:
            self.checks += 1
            if mode == RFC5280 and not system_store:
                failure = _revoked(chain, anchors, now, server, revocation)
            else:
                failure = _validate(chain, store, name, max_depth, now, server, revocation)
            verdicts[key] = failure
            while len(verdicts) > self._size:
                verdicts.popitem(last=False)
        if failure is not None:
            raise TLSFailure(*failure.args)


def _validate(
    chain: Sequence[x509.Certificate],
    store: verification.Store | None,
    name: str | None,
    max_depth: int,
    now: datetime.datetime,
    server: bool,
    revocation: Revocation | None = None,
) -> TLSFailure | None:
    """
    One uncached check (L{PathValidator.check}); the failure, or L{None}.
    """
    whose = "client certificate" if server else "certificate"
    leaf, intermediates = chain[0], list(chain[1:])
    subject = certificate_subject(leaf)
    if store is None:
        return TLSFailure(f"{whose} verification failed: no trust anchors (depth 0, subject {subject})")
    costly = too_costly(chain)
    if costly is not None:
        return TLSFailure(f"{whose} verification failed: {costly} (depth 0, subject {subject})")
    try:
        builder = verification.PolicyBuilder().store(store).time(now).max_chain_depth(max(0, min(max_depth, 255)))
        if server or name is None:
            builder = builder.extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                                 ee_policy=_CLIENT_LEAF_POLICY)
            path = builder.build_client_verifier().verify(leaf, intermediates).chain
        else:
            path = builder.build_server_verifier(_subject(name)).verify(leaf, intermediates)
        broken = path_rule_failure(path, server_leaf=not server and name is not None)
    except verification.VerificationError as e:
        return TLSFailure(f"{whose} verification failed: {_rule(str(e), chain)}")
    except Exception as e:  # unsupported key types, unparsable extensions, bad names
        return TLSFailure(
            f"{whose} verification failed: the path builder cannot check it"
            f" ({type(e).__name__}: {e}) (depth 0, subject {subject})"
        )
    if broken is not None:
        return TLSFailure(f"{whose} verification failed: {broken}")
    if revocation is not None:
        revoked = revocation_failure(path, revocation, now, whose)
        if revoked is not None:
            return TLSFailure(revoked)
    return None


def _revoked(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime.datetime,
    server: bool,
    revocation: Revocation | None,
) -> TLSFailure | None:
    """
    The revocation check alone, for C{path-validation: rfc5280} (the TLS
    library has validated the chain, and the path builder is not run): the
    path is walked from the leaf through the certificates of C{chain} and
    the anchors, each step to a certificate whose key verifies the
    previous one's signature, until an anchor.
    """
    if revocation is None:
        return None
    path = [chain[0]]
    while path[-1] not in anchors and len(path) <= len(chain):
        issuer = _issuer_of(path[-1], [*chain[1:], *anchors])
        if issuer is None or issuer in path:
            break
        path.append(issuer)
    whose = "client certificate" if server else "certificate"
    failure = revocation_failure(path, revocation, now, whose)
    return None if failure is None else TLSFailure(failure)


def _issuer_of(certificate: x509.Certificate, candidates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """
    The first of C{candidates} whose subject is C{certificate}'s issuer and
    whose key verifies its signature, or L{None}.
    """
    for candidate in candidates:
        if candidate.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(candidate)
        except (InvalidSignature, TypeError, ValueError):  # another key, another algorithm
            continue
        return candidate
    return None


#: Most certificates a peer may present (leaf and intermediates): the path
#: builder tries candidate issuers among them, so its work grows with them.
MAX_PRESENTED = 32
#: Most name-constraint checks a chain may ask for (the leaf's names, plus
#: its subject, times every subtree of every presented certificate).
MAX_CONSTRAINT_CHECKS = 1024


def too_costly(chain: Sequence[x509.Certificate]) -> str | None:
    """
    Why checking C{chain} would cost too much to do on the daemon's one
    thread, or L{None}: bounding the work bounds the time, so no peer's
    chain can stall other connections (the x509-limbo pathological cases
    are far over these bounds; every valid case is far under).
    """
    if len(chain) > MAX_PRESENTED:
        return f"the peer sent {len(chain)} certificates, more than the {MAX_PRESENTED} the daemon examines"
    try:
        names = len(chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value) + 1
    except Exception:  # noqa: BLE001 (absent or malformed: the path builder says which)
        names = 1
    subtrees = 0
    for certificate in chain[1:]:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.NameConstraints).value
        except Exception:  # noqa: BLE001
            continue
        subtrees += len(constraints.permitted_subtrees or ()) + len(constraints.excluded_subtrees or ())
    if names * subtrees > MAX_CONSTRAINT_CHECKS:
        return (f"its name constraints ask for {names * subtrees} checks ({names} names x {subtrees} subtrees),"
                f" more than the {MAX_CONSTRAINT_CHECKS} the daemon does")
    return None


# A client certificate need not name anything (TLS client authentication
# identifies the certificate, not a name): subjectAltName, which the web-PKI
# profile demands of every leaf, may be absent; every other web-PKI rule
# for leaves stands.
_CLIENT_LEAF_POLICY = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
)


def _subject(name: str) -> verification.DNSName | verification.IPAddress:
    """
    The verifier's subject for C{name}: an IP address for IP literals
    (a zone index dropped), a DNS name (without a trailing dot) otherwise.
    """
    if is_ip_literal(name):
        return verification.IPAddress(ipaddress.ip_address(name.split("%", 1)[0]))
    return verification.DNSName(name.rstrip("."))


def _rule(message: str, chain: Sequence[x509.Certificate]) -> str:
    """
    The words for the path builder's C{message}, with the certificate it is
    about: C{cryptography} names the certificate in its message (its
    subject, as RFC 4514), which is found in C{chain} to give its depth;
    otherwise the leaf's subject, as the path starts there.
    """
    rule = message.strip()
    for prefix in ("validation failed: ", "candidates exhausted: "):
        rule = rule.removeprefix(prefix)
    if rule.startswith("Other(") and rule.endswith(")"):
        rule = rule[6:-1].strip('"')
    for depth, certificate in enumerate(chain):
        try:
            rfc4514 = certificate.subject.rfc4514_string()
        except Exception:
            continue
        if rfc4514 and rfc4514 in message and depth > 0:
            return f"{rule} (path validation, depth {depth}, subject {certificate_subject(certificate)})"
    return (
        f"{rule} (path validation, depth 0 or an issuer of it, subject"
        f" {certificate_subject(chain[0])})"
    )


def anchors_of(pem: bytes | None, system: bool) -> tuple[x509.Certificate, ...]:
    """
    The anchors of C{pem} and, if C{system}, the system's (read once).

    @raise TLSFailure: C{pem} is not valid PEM.
    """
    return _anchors(pem, system)[2]


VALIDATOR = PathValidator()
"""The daemon's one validator, whose cache every connection shares."""


def check_server_chain(config: ClientTLSConfig, name: str, info: TLSSessionInfo) -> None:
    """
    The client role: validate the server's chain for C{name} under
    C{config} (its anchors, depth and C{path_validation}) with L{VALIDATOR}.
    Its revocation is checked after the handshake, by
    L{ssa.revocationcheck} (it may need to fetch data).

    A resumed session is not checked again: its chain was checked when it
    was made, under the same configuration and name (the daemon's session
    cache is keyed by them), and a resumption need not carry the chain.

    @raise TLSFailure: it is refused.
    """
    if info.resumed:
        return
    VALIDATOR.check(
        info.peer_chain, anchors_pem=config.trust_anchors, system_store=config.use_system_store,
        name=name, max_depth=config.verify_depth, mode=config.path_validation,
    )


def check_client_chain(config: ServerTLSConfig, info: TLSSessionInfo) -> None:
    """
    The server role: validate a client's chain under C{config} with
    L{VALIDATOR}, when C{config} requires a client certificate (without
    one, any chain a client volunteers is not checked, as by the library),
    unless the session is resumed (checked when it was made, under the same
    configuration: servers keep sessions per configuration).

    @raise TLSFailure: it is refused.
    """
    if not config.require_client_certificate or info.resumed:
        return
    VALIDATOR.check(
        info.peer_chain, anchors_pem=config.client_anchors, system_store=config.client_anchors is None,
        name=None, max_depth=config.verify_depth, mode=config.path_validation, server=True,
        revocation=config.revocation,
    )
