"""
A certificate factory for tests, built on C{cryptography} alone.

Every key is generated at run time and lives only in memory (or in files a
test writes into its own temporary directory); nothing is cached between
calls.  The factory can make both well-formed certificates and the broken
ones a certificate-decision matrix needs::

    root = CertificateAuthority.create()
    intermediate = root.issue_intermediate("SSA Test Intermediate")
    good = intermediate.issue_server("www.example.test")
    expired = root.issue_server("a.test", not_after=timedelta(days=-1))
    rsa_1024 = root.issue_server("a.test", key_type="rsa", key_size=1024)
    sha1 = root.issue_server("a.test", hash_algorithm=hashes.SHA1())

Validity times accept an absolute C{datetime} or a C{timedelta} relative to
now; the default window is now - 1 day to now + 30 days.

SHA-1: C{cryptography} (since 40 or so) refuses to sign certificates with
SHA-1 (C{UnsupportedAlgorithm: Hash algorithm "sha1" not supported for
signatures}), but it still signs raw bytes with it.  A SHA-1 request is
therefore served by signing with SHA-256, rewriting the DER signature
algorithm identifiers to the SHA-1 variant and re-signing the
to-be-signed bytes with SHA-1 (see L{ssa.testing._x509}).  This works for
RSA and ECDSA issuers; an Ed25519 issuer raises L{UnsupportedSignature}.
Note that OpenSSL 3 rejects SHA-1 certificate signatures at security level
1 and above, so a peer presenting one needs C{@SECLEVEL=0}.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)

from ssa.testing._x509 import (
    KeyType,
    TimeSpec,
    UnsupportedSignature,
    base_builder,
    ca_extensions,
    generate_key,
    make_leaf,
    make_name,
    sign,
)

__all__ = [
    "CertFiles",
    "CertifiedKey",
    "CertificateAuthority",
    "KeyType",
    "TimeSpec",
    "UnsupportedSignature",
    "generate_key",
    "self_signed_server",
]

_SHA256 = hashes.SHA256()


@dataclass(frozen=True)
class CertFiles:
    """Paths written by L{CertifiedKey.write}."""

    cert: Path
    """PEM file: the leaf certificate followed by its intermediates."""
    key: Path
    """PEM file: the unencrypted PKCS#8 private key."""


@dataclass(frozen=True)
class CertifiedKey:
    """An end-entity certificate, its private key and its intermediates."""

    cert: x509.Certificate
    """The leaf certificate."""
    key: CertificateIssuerPrivateKeyTypes
    """The leaf's private key."""
    chain: tuple[x509.Certificate, ...] = ()
    """Intermediates to send after the leaf, nearest first; never the root."""

    def cert_pem(self) -> bytes:
        """The leaf certificate alone, PEM-encoded."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def intermediates_pem(self) -> bytes:
        """The intermediates alone, PEM-encoded (empty if there are none)."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in self.chain
        )

    def chain_pem(self) -> bytes:
        """The leaf followed by its intermediates, PEM-encoded."""
        return self.cert_pem() + self.intermediates_pem()

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: str | Path, stem: str) -> CertFiles:
        """
        Write C{<stem>.pem} (leaf and intermediates) and C{<stem>.key}.

        @param directory: an existing directory, normally a test's temporary
            directory; the key file is created with mode 0600.
        """
        directory = Path(directory)
        cert_path = directory / f"{stem}.pem"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(self.chain_pem())
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem())
        return CertFiles(cert=cert_path, key=key_path)

class CertificateAuthority:
    """
    A root or intermediate CA that can issue intermediates and leaves.

    Create a root with L{create}; L{issue_intermediate} returns another
    L{CertificateAuthority} whose leaves carry the longer chain.
    """

    def __init__(
        self,
        cert: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
        chain: tuple[x509.Certificate, ...] = (),
        root: x509.Certificate | None = None,
    ) -> None:
        """
        @param cert: this CA's certificate.
        @param key: this CA's private key.
        @param chain: the intermediates a leaf issued by this CA must send,
            nearest first (this CA's own certificate first, unless it is
            the root, in which case the chain is empty).
        @param root: the trust anchor; defaults to C{cert}.
        """
        self.cert = cert
        self.key = key
        self.chain = chain
        self.root = cert if root is None else root

    @classmethod
    def create(
        cls,
        common_name: str = "SSA Test Root CA",
        *,
        key_type: KeyType = "ecdsa",
        key_size: int = 2048,
        path_length: int | None = None,
        not_before: TimeSpec = None,
        not_after: TimeSpec = None,
        permitted_dns: Iterable[str] | None = None,
        excluded_dns: Iterable[str] | None = None,
        hash_algorithm: hashes.HashAlgorithm = _SHA256,
    ) -> CertificateAuthority:
        """
        Make a new self-signed root CA.

        @param path_length: C{BasicConstraints} pathLenConstraint; C{0}
            forbids intermediates below this root.
        @param permitted_dns: DNS name-constraint subtrees the CA may issue
            for (a critical C{NameConstraints} extension is added if either
            this or C{excluded_dns} is given).
        @param excluded_dns: DNS name-constraint subtrees it may not.
        """
        key = generate_key(key_type, key_size)
        name = make_name(common_name)
        builder = base_builder(
            name, name, key.public_key(), key.public_key(), not_before, not_after
        )
        builder = ca_extensions(
            builder, True, path_length, permitted_dns, excluded_dns
        )
        return cls(sign(builder, key, hash_algorithm), key)

    def cert_pem(self) -> bytes:
        """This CA's own certificate, PEM-encoded."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def root_pem(self) -> bytes:
        """The root (trust anchor) certificate, PEM-encoded."""
        return self.root.public_bytes(serialization.Encoding.PEM)

    def write_root(self, directory: str | Path, stem: str = "ca") -> Path:
        """Write the root certificate to C{<directory>/<stem>.pem}."""
        path = Path(directory) / f"{stem}.pem"
        path.write_bytes(self.root_pem())
        return path

    def issue_intermediate(
        self,
        common_name: str = "SSA Test Intermediate CA",
        *,
        ca: bool = True,
        key_type: KeyType = "ecdsa",
        key_size: int = 2048,
        path_length: int | None = None,
        not_before: TimeSpec = None,
        not_after: TimeSpec = None,
        permitted_dns: Iterable[str] | None = None,
        excluded_dns: Iterable[str] | None = None,
        hash_algorithm: hashes.HashAlgorithm = _SHA256,
        extensions: Iterable[x509.ExtensionType] = (),
    ) -> CertificateAuthority:
        """
        Issue a subordinate CA signed by this one.

        @param ca: C{False} marks the certificate C{CA:FALSE} (it keeps the
            keyCertSign key usage and can still sign), for the
            "intermediate that is not a CA" case.
        @param extensions: further extensions, non-critical (e.g. the
            authority information access and CRL distribution points).
        """
        key = generate_key(key_type, key_size)
        builder = base_builder(
            make_name(common_name), self.cert.subject, key.public_key(),
            self.key.public_key(), not_before, not_after,
        )
        builder = ca_extensions(
            builder, ca, path_length, permitted_dns, excluded_dns
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        cert = sign(builder, self.key, hash_algorithm)
        return CertificateAuthority(cert, key, (cert, *self.chain), self.root)

    def issue_server(
        self,
        *names: str,
        common_name: str | None = None,
        key_type: KeyType = "ecdsa",
        key_size: int = 2048,
        not_before: TimeSpec = None,
        not_after: TimeSpec = None,
        extended_key_usage: Iterable[str | x509.ObjectIdentifier] | None = (
            "serverAuth",
        ),
        hash_algorithm: hashes.HashAlgorithm = _SHA256,
        include_san: bool = True,
        extensions: Iterable[x509.ExtensionType] = (),
    ) -> CertifiedKey:
        """
        Issue a server (end-entity) certificate.

        @param names: DNS names (wildcards such as C{*.example.test} allowed)
            and IP literals, which become C{iPAddress} SAN entries.
        @param common_name: subject CN; defaults to the first name.
        @param extended_key_usage: EKU names (C{"serverAuth"},
            C{"clientAuth"}, ...) or OIDs; C{None} omits the extension.
        @param hash_algorithm: signature hash; C{hashes.SHA1()} is supported
            for RSA and ECDSA issuers (see the module docstring).
        @param include_san: C{False} omits subjectAltName (CN only).
        @param extensions: further extensions, non-critical (e.g. the
            authority information access, CRL distribution points, TLS
            feature).
        """
        cn = common_name or (names[0] if names else "SSA Test Server")
        cert, key = make_leaf(
            make_name(cn), self.cert.subject, self.key, names, key_type, key_size,
            not_before, not_after, extended_key_usage, hash_algorithm,
            include_san, extensions,
        )
        return CertifiedKey(cert, key, self.chain)

    def issue_client(
        self,
        common_name: str = "SSA Test Client",
        *,
        names: Iterable[str] = (),
        key_type: KeyType = "ecdsa",
        key_size: int = 2048,
        not_before: TimeSpec = None,
        not_after: TimeSpec = None,
        extended_key_usage: Iterable[str | x509.ObjectIdentifier] | None = (
            "clientAuth",
        ),
        hash_algorithm: hashes.HashAlgorithm = _SHA256,
    ) -> CertifiedKey:
        """Issue a client certificate (EKU clientAuth); C{names} go in the SAN."""
        cert, key = make_leaf(
            make_name(common_name), self.cert.subject, self.key, names, key_type,
            key_size, not_before, not_after, extended_key_usage,
            hash_algorithm, True,
        )
        return CertifiedKey(cert, key, self.chain)


def self_signed_server(
    *names: str,
    common_name: str | None = None,
    key_type: KeyType = "ecdsa",
    key_size: int = 2048,
    not_before: TimeSpec = None,
    not_after: TimeSpec = None,
    extended_key_usage: Iterable[str | x509.ObjectIdentifier] | None = (
        "serverAuth",
    ),
    hash_algorithm: hashes.HashAlgorithm = _SHA256,
) -> CertifiedKey:
    """
    Make a self-signed end-entity server certificate (C{CA:FALSE}).

    Arguments are as for L{CertificateAuthority.issue_server}.  To trust it,
    use its own certificate as the trust anchor.
    """
    cn = common_name or (names[0] if names else "SSA Test Server")
    cert, key = make_leaf(
        make_name(cn), make_name(cn), None, names, key_type, key_size, not_before,
        not_after, extended_key_usage, hash_algorithm, True,
    )
    return CertifiedKey(cert, key, ())
