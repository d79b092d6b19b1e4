"""
The administrator's policy (SPEC section 5): the bounds every socket lives in.

This module holds the policy as immutable data with the built-in secure
defaults; loading it from a file comes with the policy work.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import TLS_1_2, TLS_1_3
from .tlsconfig import DEFAULT_TLS12_CIPHERS, DEFAULT_TLS13_CIPHERS


@dataclass(frozen=True)
class Policy:
    """
    One effective policy.

    @ivar min_version: C{min-tls-version}, lowest C{TLS_1_x} allowed.
    @ivar max_version: C{max-tls-version}, highest C{TLS_1_x} allowed.
    @ivar tls12_ciphers: C{tlsv1.2-ciphers}.
    @ivar tls13_ciphers: C{tlsv1.3-ciphers}.
    @ivar trust_anchors: PEM of C{trust-store-path}, or L{None} for the
        system store.
    @ivar verify_depth: C{cert-chain-depth}.
    @ivar app_trust_anchors: C{app-trust-anchors}: what an application's
        own anchors do: C{replace} the store, C{add} to it, or C{deny}.
    @ivar verify_ip_addresses: C{verify-ip-addresses}: whether a connect to
        an IP literal with no C{TLS_HOSTNAME} is verified against the
        certificate's IP addresses (else it fails EPROTO).
    @ivar connect_timeout: C{connect-timeout}, seconds for TCP.
    @ivar handshake_timeout: C{handshake-timeout}, seconds for TLS.
    @ivar max_sockets_per_client: C{max-sockets-per-client}, per process.
    @ivar backend: C{backend}, the TLS backend's name.
    """

    min_version: int = TLS_1_2
    max_version: int = TLS_1_3
    tls12_ciphers: tuple[str, ...] = DEFAULT_TLS12_CIPHERS
    tls13_ciphers: tuple[str, ...] = DEFAULT_TLS13_CIPHERS
    trust_anchors: bytes | None = None
    verify_depth: int = 10
    app_trust_anchors: str = "replace"
    verify_ip_addresses: bool = True
    connect_timeout: float = 15.0
    handshake_timeout: float = 30.0
    max_sockets_per_client: int = 1024
    backend: str = "openssl"


DEFAULT_POLICY = Policy()
