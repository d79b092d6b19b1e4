"""
Checking a peer's certificate where the daemon itself reads it: that it can
be parsed at all, and that it names the host the application asked for.
One implementation for every backend, so they all decide alike; every
failure is a L{TLSFailure}, never another exception.
"""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID
from service_identity import VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity

from . import der
from .errors import TLSFailure
from .optioncheck import is_ip_literal
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

    The verdict is kept per certificate (L{_unreadable}): it depends on
    its bytes only, and a server presents the same leaf to every connection.

    @raise TLSFailure: they cannot, naming the certificate and the problem.
    """
    reason = _unreadable(certificate)
    if reason is not None:
        raise TLSFailure(reason)


@functools.lru_cache(maxsize=1024)
def _unreadable(certificate: x509.Certificate) -> str | None:
    """
    Why C{certificate} cannot be read (L{check_readable}), or L{None}.
    Certificates hash and compare by their DER.
    """
    try:
        _ = (certificate.subject, certificate.issuer, certificate.extensions)
        subject_line(certificate)
    except Exception as e:
        bad = malformed_extensions(certificate)
        what = str(e)
        if len(bad) == 1:
            what = f"its {bad[0]} extension is malformed ({e})"
        elif bad:
            what = f"its {', '.join(bad)} extensions are malformed ({e})"
        return f"the certificate ({certificate_subject(certificate)}) cannot be parsed: {what}"
    return None


# The names of the extensions cryptography knows, for reasons.
_EXTENSION_NAMES = {
    oid.dotted_string: name.lower().replace("_", " ")
    for name, oid in vars(ExtensionOID).items()
    if isinstance(oid, x509.ObjectIdentifier)
}
# At most this many extensions are tried one by one (each try parses the
# whole certificate again).
_MAX_TRIED = 32


def malformed_extensions(certificate: x509.Certificate) -> list[str]:
    """
    The names of the extensions of C{certificate} that C{cryptography}
    cannot parse, each tried alone in a copy of the certificate (its
    signature unchecked); empty if none alone fails or the DER cannot be
    taken apart. Never raises.
    """
    try:
        data = certificate.public_bytes(Encoding.DER)
        _, start, end = der.read(data, 0)
        tbs, *signature = der.children(data, start, end)
        _, start, end = der.read(tbs, 0)
        fields = der.children(tbs, start, end)
        if not fields or fields[-1][0] != 0xA3:
            return []
        _, start, end = der.read(fields[-1], 0)
        _, start, end = der.read(fields[-1], start)
        extensions = der.children(fields[-1], start, end)
    except ValueError:
        return []
    bad = []
    for extension in extensions[:_MAX_TRIED]:
        alone = der.encode(0xA3, der.encode(0x30, extension))
        copy = der.encode(0x30, der.encode(0x30, b"".join(fields[:-1]) + alone) + b"".join(signature))
        try:
            _ = x509.load_der_x509_certificate(copy).extensions
        except Exception:
            bad.append(_extension_name(extension))
    return bad


def _extension_name(extension: bytes) -> str:
    """
    The name of the encoded C{extension}'s type, or its dotted OID.
    """
    try:
        _, start, _end = der.read(extension, 0)
        tag, start, end = der.read(extension, start)
        if tag != 0x06:
            return "unnamed"
        dotted = der.decode_oid(extension[start:end])
    except ValueError:
        return "unnamed"
    return _EXTENSION_NAMES.get(dotted, dotted)


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
    try:
        # What service_identity's verify_certificate_hostname and
        # verify_certificate_ip_address do, with the certificate's names
        # parsed once per certificate; the name is matched every time.
        verify_service_identity(cert_patterns=_patterns(leaf), obligatory_ids=[_service_id(name)], optional_ids=[])
    except VerificationError:
        subject = certificate_subject(leaf)
        raise TLSFailure(
            f"hostname mismatch: the certificate ({subject}) is valid for "
            f"{_names(leaf)}, not for {name}"
        ) from None
    except Exception as e:  # CertificateError, or what cryptography raises
        subject = certificate_subject(leaf)
        raise TLSFailure(
            f"hostname mismatch: the certificate ({subject}) cannot be "
            f"verified for {name}: {e}"
        ) from None


@functools.lru_cache(maxsize=1024)
def _patterns(leaf: x509.Certificate) -> tuple:
    """
    The names C{leaf} is valid for, as C{service_identity} patterns
    (its subjectAltName DNS, IP, URI and SRV names).
    """
    return tuple(extract_patterns(leaf))


@functools.lru_cache(maxsize=1024)
def _service_id(name: str) -> DNS_ID | IPAddress_ID:
    """
    C{service_identity}'s identity for C{name}, an IP literal or a DNS name.
    """
    return IPAddress_ID(name) if is_ip_literal(name) else DNS_ID(name)


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
