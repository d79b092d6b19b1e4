"""
Plain data that crosses from the daemon's core to a TLS backend and back.

A backend is handed a L{ClientTLSConfig} (hashable, so backends can build one
library context per distinct configuration and reuse it) and reports a
finished handshake as a L{TLSSessionInfo}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .constants import TLS_1_2, TLS_1_3
from .crls import Revocation

DEFAULT_TLS12_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
)
DEFAULT_TLS13_CIPHERS: tuple[str, ...] = (
    "TLS_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256",
)


@dataclass(frozen=True)
class ClientTLSConfig:
    """
    Everything a backend needs to build a client TLS context.

    @ivar min_version: lowest C{TLS_1_x} allowed.
    @ivar max_version: highest C{TLS_1_x} allowed.
    @ivar tls12_ciphers: OpenSSL names of the TLS 1.2 ciphers, in order.
    @ivar tls13_ciphers: IANA names of the TLS 1.3 suites, in order.
    @ivar trust_anchors: PEM certificates to trust, or L{None}.
    @ivar use_system_store: whether the system trust store is trusted too.
    @ivar verify_depth: the longest chain accepted, leaf excluded.
    @ivar path_validation: the policy's C{path-validation} (see
        L{ssa.pathvalidation}).
    @ivar revocation: how the server's chain is checked for revocation,
        or L{None} when the socket does not check (see L{ssa.revocation}).
    """

    min_version: int = TLS_1_2
    max_version: int = TLS_1_3
    tls12_ciphers: tuple[str, ...] = DEFAULT_TLS12_CIPHERS
    tls13_ciphers: tuple[str, ...] = DEFAULT_TLS13_CIPHERS
    trust_anchors: bytes | None = None
    use_system_store: bool = True
    verify_depth: int = 10
    alpn: tuple[str, ...] = ()
    path_validation: str = "webpki"
    revocation: Revocation | None = None


@dataclass(frozen=True)
class Credential:
    """
    One certificate chain and its private key (a server may hold one per
    key type: RSA, ECDSA, Ed25519).

    @ivar chain_pem: the chain, leaf first, as PEM.
    @ivar key_pem: the leaf's private key as unencrypted PEM.
    """

    chain_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class ServerTLSConfig:
    """
    Everything a backend needs to build a server TLS context.

    @ivar credentials: the certificates to serve, at most one per key
        type; the backend serves the one the client supports.
    @ivar require_client_certificate: demand a client certificate and
        verify it against C{client_anchors}.
    @ivar client_anchors: PEM anchors for client certificates, or L{None}
        for the system store.
    @ivar alpn: the protocols the server accepts, in its own preference
        order.
    @ivar session_timeout: seconds a client may resume a session of this
        server (the policy's C{session-timeout}); 0 turns resumption off.
    @ivar path_validation: the policy's C{path-validation} for client
        certificates (see L{ssa.pathvalidation}).
    @ivar revocation: how client certificates are checked for
        revocation, or L{None} (see L{ssa.revocation}).
    @ivar ocsp_stapling: C{TLS_SERVER_OCSP_STAPLING}: staple an OCSP
        response for the certificate (see L{ssa.stapling}).
    @ivar ocsp_timeout: seconds for each fetch of that response (the
        policy's C{revocation-timeout}).
    """

    credentials: tuple[Credential, ...]
    min_version: int = TLS_1_2
    max_version: int = TLS_1_3
    tls12_ciphers: tuple[str, ...] = DEFAULT_TLS12_CIPHERS
    tls13_ciphers: tuple[str, ...] = DEFAULT_TLS13_CIPHERS
    require_client_certificate: bool = False
    client_anchors: bytes | None = None
    verify_depth: int = 10
    alpn: tuple[str, ...] = ()
    session_timeout: int = 300
    path_validation: str = "webpki"
    revocation: Revocation | None = None
    ocsp_stapling: bool = False
    ocsp_timeout: float = 5.0


@dataclass(frozen=True)
class TLSSessionInfo:
    """
    What a finished handshake negotiated.

    @ivar version: the C{TLS_1_x} constant of the negotiated version.
    @ivar cipher: the negotiated cipher's OpenSSL name.
    @ivar peer_chain: the certificates the peer sent, leaf first.
    @ivar alpn: the negotiated application protocol, if any.
    @ivar resumed: whether the handshake resumed a session.
    @ivar server_name: on a server, the SNI name the client sent.
    @ivar group: the negotiated key-exchange group (e.g. C{X25519}), if
        the backend can tell.
    @ivar ocsp_response: on a client, the OCSP response the server stapled
        (DER; C{b""} if it stapled none), or L{None} if the backend cannot
        read stapled responses.
    """

    version: int
    cipher: str
    peer_chain: tuple[x509.Certificate, ...]
    alpn: str | None = None
    resumed: bool = False
    server_name: str | None = None
    group: str | None = field(default=None, compare=False)  # informational: left out of equality
    ocsp_response: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """
        The peer's leaf certificate, or L{None} if it sent none.
        """
        return self.peer_chain[0] if self.peer_chain else None


def subject_line(certificate: x509.Certificate) -> str:
    """
    A certificate's subject on one line, OpenSSL style: C{/C=US/O=Org/CN=host}.
    """
    parts = []
    for rdn in certificate.subject.rdns:
        for attribute in rdn:
            name = attribute.rfc4514_attribute_name
            parts.append(f"/{name}={attribute.value}")
    return "".join(parts)


def chain_pem(chain: tuple[x509.Certificate, ...]) -> bytes:
    """
    The certificates of C{chain} as concatenated PEM, in order.
    """
    return b"".join(c.public_bytes(Encoding.PEM) for c in chain)
