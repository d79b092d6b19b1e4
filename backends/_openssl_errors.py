# -*- test-case-name: tests.test_backend_openssl -*-
"""
Words for OpenSSL's failures, for the OpenSSL backend.

Two kinds of failure reach people: a certificate check that failed during
chain verification (an C{X509_V_ERR_*} code reported to the verify callback),
and an C{OpenSSL.SSL.Error} from the handshake or a later record. Both are
turned into one line that says what went wrong and keeps OpenSSL's own
reason text in parentheses.
"""

from __future__ import annotations

import re

from OpenSSL import SSL

from ssa.constants import version_name

_CODES = SSL.X509VerificationCodes

# The messages of the common verification errors, keyed by the public
# X509VerificationCodes names (their numbers differ between OpenSSL versions).
# pyOpenSSL has no public way to turn any code into OpenSSL's message, so the
# other codes go through verify_error_string's private fallback.
_VERIFY_MESSAGES: dict[str, str] = {
    "ERR_UNABLE_TO_GET_ISSUER_CERT": "unable to get issuer certificate",
    "ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY": "unable to decode issuer public key",
    "ERR_CERT_SIGNATURE_FAILURE": "certificate signature failure",
    "ERR_CERT_NOT_YET_VALID": "certificate is not yet valid",
    "ERR_CERT_HAS_EXPIRED": "certificate has expired",
    "ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD": "format error in certificate's notBefore field",
    "ERR_ERROR_IN_CERT_NOT_AFTER_FIELD": "format error in certificate's notAfter field",
    "ERR_DEPTH_ZERO_SELF_SIGNED_CERT": "self-signed certificate",
    "ERR_SELF_SIGNED_CERT_IN_CHAIN": "self-signed certificate in certificate chain",
    "ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY": "unable to get local issuer certificate",
    "ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE": "unable to verify the first certificate",
    "ERR_CERT_CHAIN_TOO_LONG": "certificate chain too long",
    "ERR_CERT_REVOKED": "certificate revoked",
    "ERR_INVALID_CA": "invalid CA certificate",
    "ERR_PATH_LENGTH_EXCEEDED": "path length constraint exceeded",
    "ERR_INVALID_PURPOSE": "unsupported certificate purpose",
    "ERR_CERT_UNTRUSTED": "certificate not trusted",
    "ERR_CERT_REJECTED": "certificate rejected",
    "ERR_KEYUSAGE_NO_CERTSIGN": "key usage does not include certificate signing",
    "ERR_UNHANDLED_CRITICAL_EXTENSION": "unhandled critical extension",
    "ERR_INVALID_NON_CA": "invalid non-CA certificate (has CA markings)",
    "ERR_PERMITTED_VIOLATION": "permitted subtree violation",
    "ERR_EXCLUDED_VIOLATION": "excluded subtree violation",
}
_MESSAGE_BY_CODE: dict[int, str] = {
    getattr(_CODES, name): message
    for name, message in _VERIFY_MESSAGES.items()
    if hasattr(_CODES, name)
}


def verify_error_string(code: int) -> str:
    """
    OpenSSL's message for a certificate verification error code.

    @param code: an C{X509_V_ERR_*} value, as passed to a verify callback.
    @return: e.g. C{"certificate has expired"}; C{"verify error N"} when the
        code is unknown.
    """
    message = _MESSAGE_BY_CODE.get(code)
    if message is not None:
        return message
    try:
        # Private: pyOpenSSL exposes no public code-to-message function.
        from OpenSSL._util import ffi, lib

        text = lib.X509_verify_cert_error_string(code)
        return ffi.string(text).decode("utf-8", "replace")
    except Exception:
        return f"verify error {code}"


def raw_reason(error: SSL.Error) -> str:
    """
    The reason texts of OpenSSL's error queue, as carried by C{error}.

    @param error: an C{OpenSSL.SSL.Error}; its first argument is normally a
        list of C{(library, function, reason)} tuples.
    """
    if isinstance(error, SSL.SysCallError):
        return f"{error.args[1] if len(error.args) > 1 else error}"
    if error.args and isinstance(error.args[0], list):
        reasons = [
            str(entry[-1])
            for entry in error.args[0]
            if isinstance(entry, tuple) and entry and entry[-1]
        ]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    return str(error) or type(error).__name__


_ALERT = re.compile(r"^(?:sslv3|tls|tlsv1|tlsv13) alert (.+)$|^tlsv1 (unrecognized name)$")

# What to do about the alerts a client most often receives.
_ALERT_HINTS: dict[str, str] = {
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
_SERVER_ALERT_HINTS: dict[str, str] = {
    "handshake_failure": "it accepts none of the allowed cipher suites and groups",
    "insufficient_security": "it requires stronger ciphers than those allowed",
    "bad_certificate": "it rejected the server certificate",
    "unknown_ca": "it does not trust the server certificate's issuer",
    "certificate_expired": "it considers the server certificate expired",
    "no_application_protocol": "it accepts none of the allowed ALPN protocols",
}


def describe_ssl_error(
    error: SSL.Error,
    stage: str,
    min_version: int,
    max_version: int,
    *,
    server: bool = False,
) -> str:
    """
    One line about an C{OpenSSL.SSL.Error}, for a L{ssa.errors.TLSFailure}.

    @param error: what pyOpenSSL raised.
    @param stage: what failed, e.g. C{"handshake failed"}.
    @param min_version: the lowest C{TLS_1_x} allowed, named in version errors.
    @param max_version: the highest C{TLS_1_x} allowed.
    @param server: whether this side is the server (the peer is a client).
    @return: e.g. C{"handshake failed: the peer sent alert unknown_ca: it
        does not trust the client certificate's issuer (tlsv1 alert unknown
        ca)"}.
    """
    raw = raw_reason(error)
    lowered = raw.lower()
    allowed = version_name(min_version)
    if max_version != min_version:
        allowed += f"\N{EN DASH}{version_name(max_version)}"
    if isinstance(error, SSL.SysCallError):
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
        hint = (_SERVER_ALERT_HINTS if server else _ALERT_HINTS).get(name)
        what = f"the peer sent alert {name}" + (f": {hint}" if hint else "")
    else:
        what = "TLS error"
    return f"{stage}: {what} ({raw})"
