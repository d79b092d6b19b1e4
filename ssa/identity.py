"""
Checking that a peer's certificate names the host the application asked
for; one implementation for every backend, so they all decide alike.
"""

from __future__ import annotations

from cryptography import x509
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from .errors import TLSFailure
from .options import is_ip_literal
from .tlsconfig import subject_line


def verify_identity(leaf: x509.Certificate | None, name: str) -> None:
    """
    Check that C{leaf} is valid for C{name}, a DNS name or an IP literal.

    @raise TLSFailure: it is not, with the names the certificate does hold.
    """
    if leaf is None:
        raise TLSFailure(f"the peer sent no certificate to verify {name} against")
    try:
        if is_ip_literal(name):
            verify_certificate_ip_address(leaf, name)
        else:
            verify_certificate_hostname(leaf, name)
    except VerificationError:
        raise TLSFailure(
            f"hostname mismatch: the certificate ({subject_line(leaf)}) is valid for "
            f"{_names(leaf)}, not for {name}"
        ) from None
    except CertificateError as e:
        raise TLSFailure(
            f"hostname mismatch: the certificate ({subject_line(leaf)}) cannot be "
            f"verified for {name}: {e}"
        ) from None


def _names(leaf: x509.Certificate) -> str:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName names"
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return ", ".join(names) if names else "no DNS or IP names"
