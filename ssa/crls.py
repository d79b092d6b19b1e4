"""
Certificate revocation lists the administrator gives the daemon (the
policy's C{crl-path}), as immutable data: L{CRLSet} holds every CRL read,
each with the file it came from, indexed by issuer name, and a digest that
stands for the whole set (in cache keys, and in the TLS settings a
connection is made with, so that a new set of CRLs never resumes a session
checked under the old one).

Sans-IO: the files arrive as bytes (L{ssa.policyfile} reads them). Which
CRL says what about a certificate is L{ssa.revocation}.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.+?-----END X509 CRL-----", re.DOTALL)


@dataclass(frozen=True)
class SourcedCRL:
    """
    One CRL and where it was read.

    @ivar source: the file's path.
    @ivar crl: the CRL.
    @ivar serials: the serial numbers it lists (a set: the CRL itself
        searches its entries one by one).
    @ivar signatures: whether it verifies with a public key, by the key's
        DER (a large CRL takes tens of milliseconds to verify).
    """

    source: str
    crl: x509.CertificateRevocationList
    serials: frozenset[int] = field(default=frozenset(), compare=False, repr=False)
    signatures: dict[bytes, bool] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class CRLSet:
    """
    Every CRL of C{crl-path}; equal sets have equal digests.

    @ivar path: the file or directory they were read from, or L{None}.
    @ivar digest: SHA-256 over the sources and DER of every CRL, in order.
    @ivar crls: the CRLs, in the order read.
    """

    path: str | None
    digest: bytes
    crls: tuple[SourcedCRL, ...] = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[bytes, list[SourcedCRL]] = {}
        for sourced in self.crls:
            index.setdefault(sourced.crl.issuer.public_bytes(), []).append(sourced)
        object.__setattr__(self, "_by_issuer", index)

    def for_issuer(self, name: x509.Name) -> list[SourcedCRL]:
        """
        The CRLs whose issuer is C{name} (compared as DER).
        """
        return list(self._by_issuer.get(name.public_bytes(), ()))  # type: ignore[attr-defined]


NO_CRLS = CRLSet(None, hashlib.sha256(b"").digest(), ())
"""No CRLs at all (no C{crl-path}): every status is unknown."""


def parse_crl_file(source: str, data: bytes) -> list[x509.CertificateRevocationList]:
    """
    The CRLs of one file: PEM (one or more C{X509 CRL} blocks) or DER (one).

    @raise ValueError: no CRL, or one that cannot be parsed; the message
        names C{source}.
    """
    blocks = _PEM_CRL.findall(data)
    try:
        if blocks:
            crls = [x509.load_pem_x509_crl(block) for block in blocks]
        elif b"-----BEGIN" in data or not data.strip():
            raise ValueError("no X509 CRL in PEM or DER")
        else:
            crls = [x509.load_der_x509_crl(data)]
        for crl in crls:
            # cryptography parses entries lazily: parse them all now, so
            # that a broken entry is found here and not during a handshake.
            for entry in crl:
                entry.serial_number, entry.revocation_date_utc, entry.extensions  # noqa: B018
            crl.extensions  # noqa: B018
            crl.issuer.public_bytes()
    except ValueError as e:
        raise ValueError(f"{source} holds no usable CRL ({e})") from None
    return crls


def sourced_crl(source: str, crl: x509.CertificateRevocationList) -> SourcedCRL:
    """
    C{crl}, read from C{source}, with the set of its serials.
    """
    return SourcedCRL(source, crl, frozenset(entry.serial_number for entry in crl))


def crl_set(path: str, files: Iterable[tuple[str, bytes]]) -> CRLSet:
    """
    The L{CRLSet} of C{path} from its files' C{(name, bytes)}.

    @raise ValueError: a file is not a CRL (see L{parse_crl_file}).
    """
    found: list[SourcedCRL] = []
    h = hashlib.sha256()
    for source, data in files:
        for crl in parse_crl_file(source, data):
            der = crl.public_bytes(Encoding.DER)
            for part in (source.encode(), der):
                h.update(len(part).to_bytes(8, "big"))
                h.update(part)
            found.append(sourced_crl(source, crl))
    return CRLSet(path, h.digest(), tuple(found))


@dataclass(frozen=True)
class Revocation:
    """
    How a connection checks revocation (present only when the socket's
    revocation checks are on).

    @ivar crls: the policy's CRLs (none when CRL checks are off).
    @ivar hard_fail: C{revocation-mode: hard-fail}: an unknown status is
        refused.
    @ivar stapled: stapled OCSP responses are read (and must-staple
        enforced).
    @ivar ocsp: the OCSP responders of the certificates are asked.
    @ivar crl: CRLs are used: C{crl-path}'s and the certificates'
        distribution points'.
    @ivar cached: answers fetched for earlier connections may be used.
    @ivar timeout: seconds for each fetch (C{revocation-timeout}).
    """

    crls: CRLSet
    hard_fail: bool = False
    stapled: bool = False
    ocsp: bool = False
    crl: bool = True
    cached: bool = True
    timeout: float = 5.0
