"""
Revocation checking by CRLs (the policy's C{crl-path}), on the path the
daemon's validator built (sans-IO, pure logic).

For every certificate of the path except the anchor, the CRLs of its
issuer's name are examined: one is usable when its signature verifies with
the issuer's public key (an issuer with a key usage extension must allow
C{cRLSign}), its authority key identifier (if any) names the issuer's key,
it is current (thisUpdate <= now <= nextUpdate, a nextUpdate is
required), it is complete (not a delta CRL, no critical extension the
daemon does not understand) and its issuing distribution point (if any)
covers the certificate. The newest usable CRL decides: a listed serial is
revoked, an unlisted one is good; with no usable CRL the status is unknown,
which C{revocation-mode} turns into a pass (C{soft-fail}) or a refusal
(C{hard-fail}). A CRL that fails any of these tests counts as no data,
never as good.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from .crls import Revocation, SourcedCRL
from .identity import certificate_subject
from .ocsp import GOOD, REVOKED, UNKNOWN, Status, unknown

# CRL extensions the daemon understands (a critical one it does not know
# makes the CRL unusable, RFC 5280 section 5.2).
_KNOWN_CRL_EXTENSIONS = frozenset({
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER, ExtensionOID.CRL_NUMBER, ExtensionOID.ISSUING_DISTRIBUTION_POINT,
    ExtensionOID.ISSUER_ALTERNATIVE_NAME, ExtensionOID.AUTHORITY_INFORMATION_ACCESS, ExtensionOID.FRESHEST_CRL,
})
_KNOWN_ENTRY_EXTENSIONS = frozenset({
    CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE,
})


def revocation_failure(
    path: Sequence[x509.Certificate], revocation: Revocation, now: datetime.datetime, whose: str = "certificate"
) -> str | None:
    """
    Why the built C{path} (leaf first, anchor last) is refused for
    revocation by the CRLs of C{revocation}, or L{None}.
    """
    for depth in range(len(path) - 1):
        certificate, issuer = path[depth], path[depth + 1]
        status = crl_status(certificate, issuer, revocation.crls.for_issuer(issuer.subject), now)
        subject = certificate_subject(certificate)
        if status.state == REVOKED:
            return f"{whose} revoked: {subject} (depth {depth}) {status.why}"
        if status.state == UNKNOWN and revocation.hard_fail:
            why = status.why or f"no CRL from its issuer {certificate_subject(issuer)} in crl-path"
            return f"{whose} revocation status unknown (revocation-mode: hard-fail): {subject} (depth {depth}): {why}"
    return None


def crl_status(
    certificate: x509.Certificate, issuer: x509.Certificate, candidates: Sequence[SourcedCRL],
    now: datetime.datetime,
) -> Status:
    """
    What the newest usable CRL of C{candidates} says about C{certificate}
    issued by C{issuer}: C{revoked} (C{why} names the CRL, when and why),
    C{good} (until the CRL's nextUpdate), or C{unknown} with why no CRL
    could be used (empty when there was none).
    """
    usable: list[SourcedCRL] = []
    reasons: list[str] = []
    for candidate in candidates:
        problem = _crl_problem(candidate, certificate, issuer, now)
        if problem is None:
            usable.append(candidate)
        else:
            reasons.append(f"the CRL {candidate.source} {problem}")
    if not usable:
        return unknown("; ".join(reasons))
    crl = max(usable, key=lambda c: c.crl.last_update_utc)
    if certificate.serial_number not in crl.serials:
        return Status(GOOD, "", crl.crl.next_update_utc)
    entry = crl.crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
    assert entry is not None
    problem = _entry_problem(entry)
    if problem is not None:
        return unknown(f"the CRL {crl.source} lists it {problem}")
    return Status(REVOKED, f"is listed on the CRL {crl.source} (revoked"
                           f" {entry.revocation_date_utc:%Y-%m-%d %H:%M:%S} UTC{_reason(entry)})",
                  crl.crl.next_update_utc)


def crl_urls(certificate: x509.Certificate) -> list[str]:
    """
    The URIs of C{certificate}'s CRL distribution points (full names only;
    the caller uses only C{http://} ones).
    """
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [name.value for point in points for name in (point.full_name or ())
            if isinstance(name, x509.UniformResourceIdentifier)]


def _crl_problem(
    sourced: SourcedCRL, certificate: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime,
) -> str | None:
    """
    Why C{sourced} cannot say anything about C{certificate}, or L{None}.
    """
    crl = sourced.crl
    if crl.issuer != issuer.subject:
        return "is issued in another name than the certificate's issuer"
    issuer_key_id = _key_identifier(issuer)
    try:
        crl_key_id = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        crl_key_id = None
    if crl_key_id is not None and issuer_key_id is not None and crl_key_id != issuer_key_id:
        return "is for another key of the issuer (authority key identifier)"
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.crl_sign:
            return "is signed by an issuer whose key usage does not allow cRLSign"
    except x509.ExtensionNotFound:
        pass
    if not _signed_by(sourced, issuer):
        return "does not verify with the issuer's public key"
    if crl.last_update_utc > now:
        return f"is not valid yet (thisUpdate {crl.last_update_utc:%Y-%m-%d %H:%M:%S} UTC)"
    if crl.next_update_utc is None:
        return "has no nextUpdate"
    if crl.next_update_utc < now:
        return f"is stale (nextUpdate {crl.next_update_utc:%Y-%m-%d %H:%M:%S} UTC)"
    for extension in crl.extensions:
        if extension.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            return "is a delta CRL (not supported)"
        if extension.critical and extension.oid not in _KNOWN_CRL_EXTENSIONS:
            return f"has a critical extension the daemon does not understand ({extension.oid.dotted_string})"
    return _scope_problem(crl, certificate)


def _signed_by(sourced: SourcedCRL, issuer: x509.Certificate) -> bool:
    """
    Whether C{sourced} verifies with C{issuer}'s public key (remembered per
    key).
    """
    key = issuer.public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if der not in sourced.signatures:
        if len(sourced.signatures) >= 64:  # bounded: keys of CA certificates that name this issuer
            sourced.signatures.clear()
        try:
            sourced.signatures[der] = sourced.crl.is_signature_valid(key)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 (an unsupported key or algorithm: not verified)
            sourced.signatures[der] = False
    return sourced.signatures[der]


def _scope_problem(crl: x509.CertificateRevocationList, certificate: x509.Certificate) -> str | None:
    """
    Why C{crl}'s issuing distribution point leaves C{certificate} out, or
    L{None}.
    """
    try:
        point = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return None
    if point.indirect_crl or point.only_some_reasons or point.only_contains_attribute_certs:
        return "is indirect or partial by reason (not supported)"
    is_ca = _is_ca(certificate)
    if point.only_contains_user_certs and is_ca:
        return "covers only end-entity certificates"
    if point.only_contains_ca_certs and not is_ca:
        return "covers only CA certificates"
    if point.relative_name is not None:
        return "names its distribution point relatively (not supported)"
    if point.full_name is not None:
        try:
            points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            points = x509.CRLDistributionPoints([])
        names = {name for p in points for name in (p.full_name or ())}
        if not names.intersection(point.full_name):
            return "is for a distribution point the certificate does not name"
    return None


def _entry_problem(entry: x509.RevokedCertificate) -> str | None:
    """
    Why a CRL entry does not revoke (C{removeFromCRL}) or cannot be
    understood, or L{None}.
    """
    for extension in entry.extensions:
        reason = extension.value.reason if extension.oid == CRLEntryExtensionOID.CRL_REASON else None
        if reason == x509.ReasonFlags.remove_from_crl:
            return "as removed (removeFromCRL)"
        if extension.critical and extension.oid not in _KNOWN_ENTRY_EXTENSIONS:
            return f"with a critical extension the daemon does not understand ({extension.oid.dotted_string})"
    return None


def _reason(entry: x509.RevokedCertificate) -> str:
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return ""
    return f", reason {reason.name}"


def _key_identifier(certificate: x509.Certificate) -> bytes | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
