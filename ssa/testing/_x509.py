"""
Certificate-building helpers behind L{ssa.testing.certs}.

Besides the X.509 extension boilerplate this holds just enough DER to sign a
certificate with SHA-1: C{cryptography} refuses to build certificates
signed with SHA-1 but still signs raw bytes with it, so L{resign_with_sha1}
takes a certificate signed (with SHA-256) by the issuer, swaps the
signature AlgorithmIdentifier inside the TBSCertificate and the outer
Certificate for the SHA-1 one, and signs the new TBSCertificate with SHA-1.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ssa.der import children as _children
from ssa.der import encode as _encode
from ssa.der import read as _read

__all__ = [
    "KeyType",
    "TimeSpec",
    "UnsupportedSignature",
    "base_builder",
    "ca_extensions",
    "generate_key",
    "make_leaf",
    "make_name",
    "resign_with_sha1",
    "sign",
]

KeyType = Literal["ecdsa", "rsa", "ed25519"]
"""The key algorithms the factory can generate (ECDSA is P-256)."""

TimeSpec = datetime | timedelta | None
"""An absolute time, an offset from now, or C{None} for the default."""

_EKU_NAMES: dict[str, x509.ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}
_SHA256 = hashes.SHA256()


def generate_key(
    key_type: KeyType = "ecdsa", key_size: int = 2048
) -> CertificateIssuerPrivateKeyTypes:
    """
    Generate a fresh private key.

    @param key_type: C{"ecdsa"} (P-256), C{"rsa"} or C{"ed25519"}.
    @param key_size: RSA modulus size in bits (1024 is allowed, for tests of
        weak keys); ignored for the other types.
    """
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}")


# AlgorithmIdentifier DER for sha1WithRSAEncryption (with NULL parameters)
# and ecdsa-with-SHA1 (parameters absent), RFC 3279 section 2.2.
_SHA1_WITH_RSA = bytes.fromhex("300d06092a864886f70d0101050500")
_ECDSA_WITH_SHA1 = bytes.fromhex("300906072a8648ce3d0401")


class UnsupportedSignature(ValueError):
    """The requested signature algorithm cannot be produced for this key."""


def resign_with_sha1(
    cert: x509.Certificate, issuer_key: CertificateIssuerPrivateKeyTypes
) -> x509.Certificate:
    """
    Return C{cert} re-signed by C{issuer_key} with SHA-1.

    @raise UnsupportedSignature: if C{issuer_key} is neither RSA nor ECDSA.
    """
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        algorithm = _SHA1_WITH_RSA
    elif isinstance(issuer_key, ec.EllipticCurvePrivateKey):
        algorithm = _ECDSA_WITH_SHA1
    else:
        raise UnsupportedSignature(
            f"cannot sign with SHA-1 using a {type(issuer_key).__name__}"
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    _, start, end = _read(der, 0)
    tbs_der = _children(der, start, end)[0]
    _, tbs_start, tbs_end = _read(tbs_der, 0)
    fields = _children(tbs_der, tbs_start, tbs_end)
    # Fields: [0] version (explicit tag 0xA0), serialNumber, signature, ...
    index = 2 if fields[0][0] == 0xA0 else 1
    fields[index] = algorithm
    tbs = _encode(0x30, b"".join(fields))
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        signature = issuer_key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    else:
        signature = issuer_key.sign(tbs, ec.ECDSA(hashes.SHA1()))
    body = tbs + algorithm + _encode(0x03, b"\x00" + signature)
    return x509.load_der_x509_certificate(_encode(0x30, body))


def resolve_time(value: TimeSpec, default: timedelta, now: datetime) -> datetime:
    """Turn a L{TimeSpec} into an aware datetime (C{now + default} for C{None})."""
    if value is None:
        return now + default
    if isinstance(value, timedelta):
        return now + value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def make_name(common_name: str) -> x509.Name:
    """A distinguished name holding just a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def general_name(name: str) -> x509.GeneralName:
    """An IP literal as C{iPAddress}, anything else as C{dNSName}."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def sign(
    builder: x509.CertificateBuilder,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    hash_algorithm: hashes.HashAlgorithm,
) -> x509.Certificate:
    """Sign C{builder}, handling Ed25519 (no hash) and SHA-1 (see module)."""
    if isinstance(issuer_key, ed25519.Ed25519PrivateKey):
        if isinstance(hash_algorithm, hashes.SHA1):
            raise UnsupportedSignature("an Ed25519 issuer cannot sign with SHA-1")
        return builder.sign(issuer_key, None)
    if isinstance(hash_algorithm, hashes.SHA1):
        return resign_with_sha1(builder.sign(issuer_key, _SHA256), issuer_key)
    return builder.sign(issuer_key, hash_algorithm)


def base_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer_public_key: CertificateIssuerPublicKeyTypes,
    not_before: TimeSpec,
    not_after: TimeSpec,
) -> x509.CertificateBuilder:
    """A builder with names, key, serial, validity and key identifiers set."""
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(resolve_time(not_before, timedelta(days=-1), now))
        .not_valid_after(resolve_time(not_after, timedelta(days=30), now))
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key),
            critical=False,
        )
    )


def ca_extensions(
    builder: x509.CertificateBuilder,
    ca: bool,
    path_length: int | None,
    permitted_dns: Iterable[str] | None,
    excluded_dns: Iterable[str] | None,
) -> x509.CertificateBuilder:
    """Add CA basic constraints, key usage and optional name constraints."""
    builder = builder.add_extension(
        x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
        critical=True,
    ).add_extension(
        x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    if permitted_dns is not None or excluded_dns is not None:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=(
                    [x509.DNSName(n) for n in permitted_dns]
                    if permitted_dns is not None else None
                ),
                excluded_subtrees=(
                    [x509.DNSName(n) for n in excluded_dns]
                    if excluded_dns is not None else None
                ),
            ),
            critical=True,
        )
    return builder


def make_leaf(
    subject: x509.Name,
    issuer: x509.Name,
    issuer_key: CertificateIssuerPrivateKeyTypes | None,
    names: Iterable[str],
    key_type: KeyType,
    key_size: int,
    not_before: TimeSpec,
    not_after: TimeSpec,
    extended_key_usage: Iterable[str | x509.ObjectIdentifier] | None,
    hash_algorithm: hashes.HashAlgorithm,
    include_san: bool,
    extensions: Iterable[x509.ExtensionType] = (),
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """
    Make an end-entity certificate; C{issuer_key=None} self-signs it;
    C{extensions} are added, non-critical.
    """
    key = generate_key(key_type, key_size)
    signer = key if issuer_key is None else issuer_key
    builder = base_builder(
        subject, issuer, key.public_key(), signer.public_key(),
        not_before, not_after,
    ).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    ).add_extension(
        x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=key_type == "rsa", data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    names = list(names)
    if include_san and names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([general_name(n) for n in names]),
            critical=False,
        )
    if extended_key_usage is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [_EKU_NAMES[u] if isinstance(u, str) else u
                 for u in extended_key_usage]
            ),
            critical=False,
        )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return sign(builder, signer, hash_algorithm), key
