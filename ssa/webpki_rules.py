"""
The web-PKI and RFC 5280 rules the daemon checks on a path that
C{cryptography}'s path builder has already accepted, for the rules that
builder does not enforce (as of C{cryptography} 50): serial numbers,
critical name constraints, RSA modulus sizes, the extended key usages of
roots and leaves, the subject common name against the subjectAltName, and
wildcards over a public suffix.

Pure functions of certificates; each failure is one line naming the rule,
the depth (0 is the leaf) and the certificate's subject.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .identity import certificate_subject

# Where Debian's package publicsuffix puts the Public Suffix List.
PUBLIC_SUFFIX_LIST = "/usr/share/publicsuffix/public_suffix_list.dat"


def path_rule_failure(path: Sequence[x509.Certificate], server_leaf: bool) -> str | None:
    """
    The first rule that the built C{path} (leaf first, anchor last)
    breaks, or L{None}.

    @param server_leaf: whether the leaf is a TLS server's (the CA/Browser
        Forum's rules for server certificates apply to it).
    """
    for depth, certificate in enumerate(path):
        anchor = depth == len(path) - 1 and depth > 0
        for problem in _certificate_problems(certificate, anchor):
            return f"{problem} (path validation, depth {depth}, subject {certificate_subject(certificate)})"
    if server_leaf:
        for problem in _server_leaf_problems(path[0]):
            return f"{problem} (path validation, depth 0, subject {certificate_subject(path[0])})"
    return None


def _extension(certificate: x509.Certificate, kind: type) -> x509.Extension | None:
    try:
        return certificate.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _certificate_problems(certificate: x509.Certificate, anchor: bool) -> list[str]:
    """
    What is wrong with any certificate of a path, the anchor included
    (whose serial number the rules do not constrain).
    """
    problems = []
    serial = certificate.serial_number
    if not anchor and (serial <= 0 or serial.bit_length() > 159):
        problems.append("the serial number is not a positive integer of at most 20 octets (RFC 5280 4.1.2.2)")
    constraints = _extension(certificate, x509.NameConstraints)
    if constraints is not None and not constraints.critical:
        problems.append("the name constraints extension is not critical (RFC 5280 4.2.1.10)")
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size % 8:
        problems.append(f"an RSA modulus of {key.key_size} bits is not a multiple of 8 (CABF BR 6.1.5)")
    if anchor and certificate.subject == certificate.issuer and _extension(certificate, x509.ExtendedKeyUsage):
        problems.append("a root certificate carries an extended key usage (CABF BR 7.1.2.1.2)")
    return problems


def _server_leaf_problems(leaf: x509.Certificate) -> list[str]:
    """
    What the CA/Browser Forum's rules forbid in a TLS server's leaf.
    """
    problems = []
    usage = _extension(leaf, x509.ExtendedKeyUsage)
    if usage is not None and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usage.value:
        problems.append("the leaf allows anyExtendedKeyUsage (CABF BR 7.1.2.7.10)")
    san = _extension(leaf, x509.SubjectAlternativeName)
    dns = [str(n) for n in san.value.get_values_for_type(x509.DNSName)] if san else []
    ips = [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] if san else []
    for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value if isinstance(attribute.value, str) else ""
        if value not in dns and _ip_text(value) not in ips and _misleading(value, dns):
            problems.append(
                f"the common name {value!r} is not a character-for-character copy of a"
                " subjectAltName entry (CABF BR 7.1.4.3)"
            )
    for name in dns:
        if name.startswith("*.") and is_public_suffix(name[2:]):
            problems.append(f"the wildcard {name!r} covers a public suffix (CABF BR 3.2.2.6)")
    return problems


def _misleading(common_name: str, dns: list[str]) -> bool:
    """
    Whether a common name that is not one of the leaf's names could pass
    for one: internationalized (non-ASCII or an A-label), or one of them
    in other letter case. A plain ASCII common name unrelated to the names
    is tolerated: it is ignored for identity, and private CAs still issue
    such certificates (see C{docs/policy.md}).
    """
    lowered = common_name.lower()
    if any(lowered == name.lower() for name in dns):
        return True
    return not common_name.isascii() or any(label.startswith("xn--") for label in lowered.split("."))


def _ip_text(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


@functools.lru_cache(maxsize=1)
def _public_suffix_rules() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """
    The Public Suffix List's (plain, wildcard, exception) rules, lower case,
    from L{PUBLIC_SUFFIX_LIST}; empty if it cannot be read.
    """
    plain: set[str] = set()
    wildcard: set[str] = set()
    exception: set[str] = set()
    try:
        with open(PUBLIC_SUFFIX_LIST, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        rule = line.strip().split(" ", 1)[0].lower()
        if not rule or rule.startswith("//"):
            continue
        try:
            rule = ".".join(label.encode("idna").decode("ascii") if not label.isascii() else label
                            for label in rule.split("."))
        except UnicodeError:
            continue
        if rule.startswith("!"):
            exception.add(rule[1:])
        elif rule.startswith("*."):
            wildcard.add(rule[2:])
        else:
            plain.add(rule)
    return frozenset(plain), frozenset(wildcard), frozenset(exception)


def is_public_suffix(name: str) -> bool:
    """
    Whether C{name} (A-labels) is a public suffix: a single label always;
    otherwise by the Public Suffix List (private section included) when it
    is installed.
    """
    name = name.lower().rstrip(".")
    if "." not in name:
        return True
    plain, wildcard, exception = _public_suffix_rules()
    if name in exception:
        return False
    return name in plain or name.split(".", 1)[1] in wildcard
