# -*- test-case-name: tests.test_backend_stdlib -*-
"""
What every TLS backend needs and no TLS library provides: the checks of a
configuration that come before the library sees it, and the words for
failures, and what the two engines do alike around the library (the cache
of contexts, the peer's chain).

Nothing here imports a TLS library, so any backend can use it. The words
take OpenSSL's reason text (e.g. C{"tlsv1 alert unknown ca"}) rather than a
library's exception, so that both backends fail with the same reasons.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ssa.constants import TLS_1_2, TLS_1_3, version_name
from ssa.errors import TLSFailure
from ssa.tlsconfig import ClientTLSConfig, Credential, ServerTLSConfig, subject_line

AnyTLSConfig = ClientTLSConfig | ServerTLSConfig


# Both backends pin OpenSSL's security level rather than inherit how the
# system's OpenSSL was built: level 2 refuses RSA keys under 2048 bits and
# SHA-1 signatures, whatever the distribution's default.
SECURITY_LEVEL = ":@SECLEVEL=2"


def version_range(config: AnyTLSConfig) -> tuple[int, int]:
    """
    The C{TLS_1_x} versions C{config} can really negotiate, lowest first.

    No TLS 1.2 cipher leaves only TLS 1.3; no TLS 1.3 suite leaves only
    TLS 1.2 and below. The range may come out empty (lowest above highest).
    """
    low, high = config.min_version, config.max_version
    if not config.tls12_ciphers:
        low = max(low, TLS_1_3)
    if not config.tls13_ciphers:
        high = min(high, TLS_1_2)
    return low, high


def check_range(min_version: int, max_version: int, known: Container[int]) -> None:
    """
    Refuse a version range a library cannot be given.

    @param known: the C{TLS_1_x} versions the library has a constant for.
    @raise TLSFailure: a version is not in C{known}, or the range is empty.
    """
    for version in (min_version, max_version):
        if version not in known:
            raise TLSFailure(f"invalid TLS configuration: unknown TLS version {version}")
    if min_version > max_version:
        raise TLSFailure(
            "invalid TLS configuration: no cipher suite or TLS version is allowed"
        )


def allowed_range(min_version: int, max_version: int) -> str:
    """
    Name a version range for people: C{"TLS 1.2"}, C{"TLS 1.2–TLS 1.3"}.
    """
    allowed = version_name(min_version)
    if max_version != min_version:
        allowed += f"\N{EN DASH}{version_name(max_version)}"
    return allowed


def sni_name(server_hostname: str | None) -> str | None:
    """
    The SNI value for C{server_hostname}: L{None} for IP literals (RFC 6066
    forbids them) and empty names, without a trailing dot otherwise.
    """
    if not server_hostname:
        return None
    name = server_hostname.rstrip(".")
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return name or None
    return None


def alpn_names(protocols: tuple[str, ...]) -> list[bytes]:
    """
    The wire names of ALPN C{protocols}.

    @raise TLSFailure: a name is empty or longer than 255 bytes.
    """
    names = [protocol.encode("utf-8") for protocol in protocols]
    for name, protocol in zip(names, protocols, strict=False):
        if not 0 < len(name) < 256:
            raise TLSFailure(
                f"invalid TLS configuration: bad ALPN protocol name {protocol!r}"
            )
    return names


def load_anchors(pem: bytes) -> list[x509.Certificate]:
    """
    The certificates of C{pem}, to be trusted.

    @raise TLSFailure: C{pem} is not valid PEM.
    """
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise TLSFailure(f"the trusted certificates are not valid PEM ({e})") from e


# The private key types OpenSSL keeps a certificate slot for, by name.
_KEY_TYPES: tuple[tuple[type, str], ...] = (
    (rsa.RSAPrivateKey, "RSA"),
    (ec.EllipticCurvePrivateKey, "ECDSA"),
    (ed25519.Ed25519PrivateKey, "Ed25519"),
    (ed448.Ed448PrivateKey, "Ed448"),
    (dsa.DSAPrivateKey, "DSA"),
)


def key_type(key: object) -> str | None:
    """
    The name of C{key}'s type (C{"RSA"}, C{"ECDSA"}, ...), L{None} if no
    TLS library keeps a certificate slot for it.
    """
    for cls, name in _KEY_TYPES:
        if isinstance(key, cls):
            return name
    return None


def check_credential(
    credential: Credential, number: int, seen: dict[str, str]
) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    """
    Read and check one server credential before a library gets it.

    @param number: the credential's position, counted from 1, for failures.
    @param seen: the key types accepted so far, with their leaf's subject;
        updated.
    @return: the chain (leaf first) and the private key.
    @raise TLSFailure: unreadable PEM, no certificate, an unsupported or
        encrypted key, a key type already served, or a key that does not
        match the leaf.
    """
    what = f"server credential {number}"
    if b"-----BEGIN CERTIFICATE-----" not in credential.chain_pem:
        raise TLSFailure(f"{what}: the certificate chain contains no certificate")
    try:
        chain = x509.load_pem_x509_certificates(credential.chain_pem)
    except ValueError as e:
        raise TLSFailure(f"{what}: the certificate chain is not valid PEM ({e})") from e
    leaf = chain[0]
    subject = subject_line(leaf) or "(empty subject)"
    try:
        key = serialization.load_pem_private_key(credential.key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise TLSFailure(
            f"{what}: the private key for {subject} is not a readable unencrypted"
            f" PEM key ({e})"
        ) from e
    name = key_type(key)
    if name is None:
        raise TLSFailure(
            f"{what}: unsupported private key type {type(key).__name__} for {subject}"
        )
    mismatch = TLSFailure(
        f"{what}: the private key does not match the certificate {subject}"
    )
    try:
        if leaf.public_key() != key.public_key():
            raise mismatch
    except TypeError:
        # Public keys of different types may refuse to compare.
        raise mismatch from None
    if name in seen:
        raise TLSFailure(
            f"{what}: a second {name} certificate ({subject}; the first is"
            f" {seen[name]}): at most one credential per key type"
        )
    seen[name] = subject
    return chain, key


_ALERT = re.compile(r"^(?:sslv3|tls|tlsv1|tlsv13) alert (.+)$|^tlsv1 (unrecognized name)$")

# What to do about the alerts a client most often receives.
ALERT_HINTS: dict[str, str] = {
    "handshake_failure": (
        "it accepts none of the allowed cipher suites and groups,"
        " or it requires a client certificate"
    ),
    "insufficient_security": "it requires stronger ciphers than those allowed",
    "certificate_required": "it requires a client certificate",
    "bad_certificate": "it rejected the client certificate",
    "unknown_ca": "it does not trust the client certificate's issuer",
    "unrecognized_name": "it does not serve the requested host name (SNI)",
}

# What to do about the alerts a server most often receives from clients.
SERVER_ALERT_HINTS: dict[str, str] = {
    "handshake_failure": "it accepts none of the allowed cipher suites and groups",
    "insufficient_security": "it requires stronger ciphers than those allowed",
    "bad_certificate": "it rejected the server certificate",
    "unknown_ca": "it does not trust the server certificate's issuer",
    "certificate_expired": "it considers the server certificate expired",
    "no_application_protocol": "it accepts none of the allowed ALPN protocols",
}


def describe_reason(
    raw: str,
    stage: str,
    min_version: int,
    max_version: int,
    *,
    server: bool = False,
    connection_ended: bool = False,
) -> str:
    """
    One line about a TLS failure, for a L{ssa.errors.TLSFailure}.

    @param raw: OpenSSL's reason text(s), e.g. C{"tlsv1 alert unknown ca"};
        several are joined with C{"; "}, the first being the one described.
    @param stage: what failed, e.g. C{"handshake failed"}.
    @param min_version: the lowest C{TLS_1_x} allowed, named in version errors.
    @param max_version: the highest C{TLS_1_x} allowed.
    @param server: whether this side is the server (the peer is a client).
    @param connection_ended: the transport ended mid-exchange (a system
        call error or an unexpected EOF rather than a TLS error).
    @return: e.g. C{"handshake failed: the peer sent alert unknown_ca: it
        does not trust the client certificate's issuer (tlsv1 alert unknown
        ca)"}.
    """
    lowered = raw.lower()
    allowed = allowed_range(min_version, max_version)
    if connection_ended:
        what = "the connection ended in the middle of the TLS exchange"
    elif "unsupported protocol" in lowered or "wrong ssl version" in lowered:
        what = f"the peer offers no TLS version in the allowed range {allowed}"
    elif "alert protocol version" in lowered:
        what = (
            "the peer sent alert protocol_version: it accepts no TLS version"
            f" in the allowed range {allowed}"
        )
    elif "wrong version number" in lowered or "packet length too long" in lowered:
        what = "the peer does not speak TLS"
    elif server and "peer did not return a certificate" in lowered:
        what = "the client sent no certificate (one is required)"
    elif "no shared cipher" in lowered or "no ciphers available" in lowered:
        what = "no allowed cipher suite is usable with the peer"
        if server:
            what += " (or none suits the key types of the server's certificates)"
    elif "no protocols available" in lowered:
        what = f"no TLS version in the allowed range {allowed} is usable"
    elif "certificate verify failed" in lowered:
        what = "certificate verification failed"
    elif (match := _ALERT.search(lowered.split("; ")[0])) is not None:
        name = (match.group(1) or match.group(2)).strip().replace(" ", "_")
        hint = (SERVER_ALERT_HINTS if server else ALERT_HINTS).get(name)
        what = f"the peer sent alert {name}" + (f": {hint}" if hint else "")
    else:
        what = "TLS error"
    return f"{stage}: {what} ({raw})"


def verification_failed(detail: str, *, server: bool = False) -> TLSFailure:
    """
    A failed check of the peer's certificate chain.

    @param detail: what OpenSSL found, e.g. C{"certificate has expired
        (depth 0, subject /CN=localhost)"}.
    @param server: whether this side is the server (the chain is a client's).
    """
    whose = "client certificate" if server else "certificate"
    return TLSFailure(f"{whose} verification failed: {detail}")


def peer_chain(
    leaf: x509.Certificate | None, rest: Iterable[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """
    The peer's chain, leaf first, for L{ssa.tlsconfig.TLSSessionInfo}.

    @param leaf: the peer's certificate, L{None} if it sent none.
    @param rest: the chain the library reports, which may or may not hold
        C{leaf}.
    @return: C{leaf} then the rest of the chain without it; empty without a
        leaf.
    """
    if leaf is None:
        return ()
    return (leaf, *(c for c in rest if c != leaf))


_Context = TypeVar("_Context")


class ContextCache(Generic[_Context]):
    """
    A library's finished contexts, one per distinct configuration, client
    and server together, built on first use; past C{size}, the least
    recently used is dropped.
    """

    def __init__(
        self,
        size: int,
        build_client: Callable[[ClientTLSConfig], _Context],
        build_server: Callable[[ServerTLSConfig], _Context],
    ) -> None:
        """
        @param size: how many contexts to keep.
        @param build_client: make the finished context for a client
            configuration.
        @param build_server: the same for a server configuration.
        """
        self._size = size
        self._build_client = build_client
        self._build_server = build_server
        self._contexts: OrderedDict[AnyTLSConfig, _Context] = OrderedDict()

    def __len__(self) -> int:
        return len(self._contexts)

    def __contains__(self, config: object) -> bool:
        return config in self._contexts

    def get(self, config: AnyTLSConfig) -> _Context:
        """
        The context for C{config}, from the cache or built (and cached).

        @raise TLSFailure: the configuration cannot be used; nothing is
            cached.
        """
        contexts = self._contexts
        context = contexts.get(config)
        if context is not None:
            contexts.move_to_end(config)
            return context
        if isinstance(config, ServerTLSConfig):
            context = self._build_server(config)
        else:
            context = self._build_client(config)
        contexts[config] = context
        while len(contexts) > self._size:
            contexts.popitem(last=False)
        return context
