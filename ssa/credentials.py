"""
Server certificates and keys as the application hands them over
(C{TLS_CERTIFICATE_CHAIN}, C{TLS_PRIVATE_KEY}): parsing, putting a chain in
order, and pairing a key with its chain, with C{cryptography}.
"""

from __future__ import annotations

import errno

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .errors import SSAError
from .tlsconfig import chain_pem, subject_line


def key_type(public_key: object) -> str:
    """
    The slot a key occupies: C{"RSA"}, C{"ECDSA"}, C{"Ed25519"}, C{"Ed448"}.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ECDSA"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def order_chain(certificates: list[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """
    Put certificates in chain order, leaf first: the leaf is the first
    certificate that is not a CA; then each certificate's issuer.
    """
    remaining = list(certificates)
    leaf = next((c for c in remaining if not _is_ca(c)), remaining[0])
    ordered = [leaf]
    remaining.remove(leaf)
    while remaining:
        issuer = next((c for c in remaining if c.subject == ordered[-1].issuer), None)
        if issuer is None or issuer.subject == ordered[-1].subject:
            break
        ordered.append(issuer)
        remaining.remove(issuer)
    return tuple(ordered + remaining)


def parse_chain(value: bytes) -> tuple[x509.Certificate, ...]:
    """
    Parse a C{TLS_CERTIFICATE_CHAIN} value (PEM, in any order).

    @raise SSAError: EINVAL if it holds no certificate.
    """
    try:
        certificates = x509.load_pem_x509_certificates(value.rstrip(b"\0"))
    except ValueError:
        raise SSAError(
            errno.EINVAL, "TLS_CERTIFICATE_CHAIN: the value holds no readable PEM certificate"
        ) from None
    return order_chain(certificates)


def parse_private_key(value: bytes):
    """
    Parse a C{TLS_PRIVATE_KEY} value (PEM or DER, unencrypted).

    @raise SSAError: EBADF if it is not a readable private key.
    """
    data = value.rstrip(b"\0")
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SSAError(errno.EBADF, f"TLS_PRIVATE_KEY: not a readable unencrypted private key ({e})") from None


def same_key(certificate: x509.Certificate, private_key) -> bool:
    """
    Whether C{private_key} belongs to C{certificate}.
    """
    encoding, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(encoding, fmt) == private_key.public_key().public_bytes(encoding, fmt)


def key_pem(private_key) -> bytes:
    """
    A private key as unencrypted PKCS#8 PEM.
    """
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def describe(chain: tuple[x509.Certificate, ...]) -> str:
    """
    Name a chain by its leaf, for messages.
    """
    return subject_line(chain[0]) or "(empty subject)"


__all__ = ["key_type", "order_chain", "parse_chain", "parse_private_key", "same_key", "key_pem",
           "describe", "chain_pem"]
