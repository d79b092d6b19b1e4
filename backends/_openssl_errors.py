# -*- test-case-name: tests.test_backend_openssl -*-
"""
Words for OpenSSL's failures, for the OpenSSL backend.

Two kinds of failure reach people: a certificate check that failed during
chain verification (an C{X509_V_ERR_*} code reported to the verify callback),
and an C{OpenSSL.SSL.Error} from the handshake or a later record. Both are
turned into one line that says what went wrong and keeps OpenSSL's own
reason text in parentheses. The words for an C{SSL.Error} are those of
L{ssa.backends._tls_common.describe_reason}, shared with the stdlib backend.
"""

from __future__ import annotations

from OpenSSL import SSL

from ssa.backends._tls_common import describe_reason

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


def describe_ssl_error(
    error: SSL.Error,
    stage: str,
    min_version: int,
    max_version: int,
    *,
    server: bool = False,
) -> str:
    """
    One line about an C{OpenSSL.SSL.Error}, for a L{ssa.errors.TLSFailure}:
    L{describe_reason} of its L{raw_reason}.

    @param error: what pyOpenSSL raised.
    @param stage: what failed, e.g. C{"handshake failed"}.
    @param min_version: the lowest C{TLS_1_x} allowed, named in version errors.
    @param max_version: the highest C{TLS_1_x} allowed.
    @param server: whether this side is the server (the peer is a client).
    @return: e.g. C{"handshake failed: the peer sent alert unknown_ca: it
        does not trust the client certificate's issuer (tlsv1 alert unknown
        ca)"}.
    """
    return describe_reason(
        raw_reason(error),
        stage,
        min_version,
        max_version,
        server=server,
        connection_ended=isinstance(error, SSL.SysCallError),
    )
