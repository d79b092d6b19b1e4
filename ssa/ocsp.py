"""
OCSP without I/O (RFC 6960): the request for one certificate, and a strict
reading of a response (stapled, or from a responder) into a L{Status}.

A response says C{good} or C{revoked} only when every test holds: it parses
and is C{successful}; it is signed by the certificate's issuer, or by a
responder certificate the issuer issued directly for C{id-kp-OCSPSigning}
(valid now, named by the response's responder id); it holds a single
response for this certificate (serial number, issuer name hash and issuer
key hash); that single response is current (thisUpdate no later than now,
with a little clock skew allowed; a nextUpdate no earlier than now; a
response without nextUpdate is not used). Anything else is C{unknown},
never C{good}: the caller decides what an unknown status does
(C{revocation-mode}).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

GOOD = "good"
REVOKED = "revoked"
UNKNOWN = "unknown"

#: How far a responder's clock may run ahead of the daemon's (thisUpdate in
#: the future), in seconds.
CLOCK_SKEW = 300


@dataclass(frozen=True)
class Status:
    """
    What one source says about one certificate.

    @ivar state: L{GOOD}, L{REVOKED} or L{UNKNOWN}.
    @ivar why: for C{revoked}, when and why; for C{unknown}, what was
        wrong with the source; empty for C{good}.
    @ivar next_update: until when the answer stands (its nextUpdate), or
        L{None}.
    """

    state: str
    why: str = ""
    next_update: datetime.datetime | None = None


def unknown(why: str) -> Status:
    """
    An C{unknown} L{Status} saying C{why}.
    """
    return Status(UNKNOWN, why)


def ocsp_urls(certificate: x509.Certificate) -> list[str]:
    """
    The OCSP responders C{certificate}'s authority information access names
    (every URI, in order; the caller uses only C{http://} ones).
    """
    try:
        access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [d.access_location.value for d in access
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)]


def must_staple(certificate: x509.Certificate) -> bool:
    """
    Whether C{certificate} has the TLS Feature extension with
    C{status_request} (OCSP must-staple, RFC 7633).
    """
    try:
        features = certificate.extensions.get_extension_for_class(x509.TLSFeature).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return x509.TLSFeatureType.status_request in features


def build_request(certificate: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """
    The DER of an OCSP request for C{certificate} issued by C{issuer}
    (SHA-1 certificate id, as responders expect; no nonce, so that
    responses can be cached and shared).
    """
    request = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1()).build()
    return request.public_bytes(Encoding.DER)


def evaluate(
    data: bytes, certificate: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime
) -> Status:
    """
    What the DER OCSP response C{data} says about C{certificate} (issued by
    C{issuer}) at C{now}; see the module's rules. Never raises.
    """
    try:
        response = ocsp.load_der_ocsp_response(data)
    except Exception as e:  # noqa: BLE001 (any parse failure: no data)
        return unknown(f"cannot be parsed ({e})")
    try:
        return _evaluate(response, certificate, issuer, now)
    except Exception as e:  # noqa: BLE001 (a malformed field cryptography parses lazily)
        return unknown(f"cannot be read ({type(e).__name__}: {e})")


def _evaluate(
    response: ocsp.OCSPResponse, certificate: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime
) -> Status:
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return unknown(f"is not successful ({response.response_status.name})")
    signer_problem = _signer_problem(response, issuer, now)
    if signer_problem is not None:
        return unknown(signer_problem)
    single = _single_for(response, certificate, issuer)
    if single is None:
        return unknown(f"does not answer for this certificate (serial {certificate.serial_number:#x} of its issuer)")
    this_update, next_update = single.this_update_utc, single.next_update_utc
    if this_update > now + datetime.timedelta(seconds=CLOCK_SKEW):
        return unknown(f"is not valid yet (thisUpdate {this_update:%Y-%m-%d %H:%M:%S} UTC)")
    if next_update is None:
        return unknown("has no nextUpdate")
    if next_update < now:
        return unknown(f"is stale (nextUpdate {next_update:%Y-%m-%d %H:%M:%S} UTC)")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.GOOD:
        return Status(GOOD, "", next_update)
    if status == ocsp.OCSPCertStatus.REVOKED:
        reason = f", reason {single.revocation_reason.name}" if single.revocation_reason is not None else ""
        return Status(REVOKED, f"revoked {single.revocation_time_utc:%Y-%m-%d %H:%M:%S} UTC{reason}", next_update)
    return Status(UNKNOWN, "says the status is unknown", next_update)


def _single_for(
    response: ocsp.OCSPResponse, certificate: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse | None:
    """
    The single response of C{response} whose certificate id is
    C{certificate}'s (serial, and issuer hashes in the id's own hash
    algorithm), or L{None}.
    """
    ids: dict[str, tuple[bytes, bytes]] = {}
    for single in response.responses:
        if single.serial_number != certificate.serial_number:
            continue
        algorithm = single.hash_algorithm
        if algorithm.name not in ids:
            try:
                request = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, algorithm).build()
            except (ValueError, TypeError):  # a hash algorithm OCSP ids may not use
                continue
            ids[algorithm.name] = (request.issuer_name_hash, request.issuer_key_hash)
        if ids[algorithm.name] == (single.issuer_name_hash, single.issuer_key_hash):
            return single
    return None


def _signer_problem(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime) -> str | None:
    """
    Why C{response}'s signature does not make it the issuer's word, or
    L{None}: it must verify with the issuer's key (the responder id naming
    the issuer), or with a delegated responder's (see L{_delegate_problem}).
    """
    if _names(response, issuer):
        if _verifies(response, issuer.public_key()):
            return None
        return "is not signed by the certificate's issuer (the signature does not verify)"
    reasons: list[str] = []
    for candidate in response.certificates:
        if not _names(response, candidate):
            continue
        problem = _delegate_problem(candidate, issuer, now)
        if problem is None and _verifies(response, candidate.public_key()):
            return None
        reasons.append(problem or "its signature does not verify with the responder's key")
    if reasons:
        return "is signed by a responder the issuer did not authorize (" + "; ".join(reasons) + ")"
    return "is signed by neither the certificate's issuer nor a responder certificate it carries"


def _delegate_problem(responder: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime) -> str | None:
    """
    Why C{responder} may not answer for C{issuer}, or L{None}: it must be
    issued directly by C{issuer}, allow C{id-kp-OCSPSigning} and be valid
    now.
    """
    try:
        responder.verify_directly_issued_by(issuer)
    except Exception:  # noqa: BLE001 (another issuer, name or key)
        return "the responder certificate is not issued by the certificate's issuer"
    try:
        usages = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        return "the responder certificate lacks id-kp-OCSPSigning"
    if not responder.not_valid_before_utc <= now <= responder.not_valid_after_utc:
        return "the responder certificate is not valid now"
    return None


def _names(response: ocsp.OCSPResponse, certificate: x509.Certificate) -> bool:
    """
    Whether C{response}'s responder id (by name or by key hash) names
    C{certificate}.
    """
    if response.responder_name is not None:
        return response.responder_name == certificate.subject
    try:
        digest = x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return response.responder_key_hash == digest


def _verifies(response: ocsp.OCSPResponse, key: object) -> bool:
    """
    Whether C{response}'s signature verifies with C{key}.
    """
    signature, data, algorithm = response.signature, response.tbs_response_bytes, response.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except Exception:  # noqa: BLE001 (InvalidSignature, or a mismatched algorithm)
        return False
    return True

