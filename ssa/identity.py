"""
Checking a peer's certificate where the daemon itself reads it: that it can
be parsed at all, and that it names the host the application asked for.
One implementation for every backend, so they all decide alike; every
failure is a L{TLSFailure}, never another exception.
"""

from __future__ import annotations

from cryptography import x509
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from .errors import TLSFailure
from .options import is_ip_literal
from .tlsconfig import subject_line


def certificate_subject(certificate: x509.Certificate) -> str:
    """
    C{certificate}'s subject for a reason (L{subject_line}), or words saying
    that it is empty or cannot be read; never raises.
    """
    try:
        return subject_line(certificate) or "(empty subject)"
    except Exception:
        return "(unreadable subject)"


def check_readable(certificate: x509.Certificate) -> None:
    """
    Check that the parts of C{certificate} the daemon reads (subject,
    issuer, every extension) can be parsed: C{cryptography} parses
    extensions only when asked, and may refuse what OpenSSL accepted.

    @raise TLSFailure: they cannot, naming the certificate and the problem.
    """
    try:
        _ = (certificate.subject, certificate.issuer, certificate.extensions)
        subject_line(certificate)
    except Exception as e:
        raise TLSFailure(
            f"the certificate ({certificate_subject(certificate)}) cannot be parsed: {e}"
        ) from None


def verify_identity(leaf: x509.Certificate | None, name: str) -> None:
    """
    Check that C{leaf} can be parsed (L{check_readable}) and is valid for
    C{name}, a DNS name or an IP literal.

    @raise TLSFailure: it is not, with the names the certificate does hold;
        whatever the certificate holds, nothing else is raised.
    """
    if leaf is None:
        raise TLSFailure(f"the peer sent no certificate to verify {name} against")
    check_readable(leaf)
    subject = certificate_subject(leaf)
    try:
        if is_ip_literal(name):
            verify_certificate_ip_address(leaf, name)
        else:
            verify_certificate_hostname(leaf, name)
    except VerificationError:
        raise TLSFailure(
            f"hostname mismatch: the certificate ({subject}) is valid for "
            f"{_names(leaf)}, not for {name}"
        ) from None
    except Exception as e:  # CertificateError, or what cryptography raises
        raise TLSFailure(
            f"hostname mismatch: the certificate ({subject}) cannot be "
            f"verified for {name}: {e}"
        ) from None


def _names(leaf: x509.Certificate) -> str:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        return "no subjectAltName names"
    except Exception:
        return "unreadable subjectAltName names"
    return ", ".join(names) if names else "no DNS or IP names"
