"""
The administrator's policy (SPEC section 5): the bounds every socket lives in.

L{Policy} is one effective policy as immutable data, its defaults the
built-in secure ones. L{KEYS} is the policy file's schema: every key with
its type, range and meaning, and how a value read from the file becomes a
field of L{Policy} (sans-IO: the values arrive already read, as L{Located}).
Reading the file is L{ssa.policyfile}; choosing a profile for an application
is L{ssa.profiles}.
"""

from __future__ import annotations

import functools
import math
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from .constants import TLS_1_0, TLS_1_2, TLS_1_3
from .crls import CRLSet
from .tlsconfig import DEFAULT_TLS12_CIPHERS, DEFAULT_TLS13_CIPHERS

BUILT_IN = "built-in defaults"


@dataclass(frozen=True)
class Policy:
    """
    One effective policy. Each field names the policy file's key it comes
    from; C{docs/policy.md} says more.

    @ivar min_version: C{min-tls-version}, lowest C{TLS_1_x} allowed.
    @ivar max_version: C{max-tls-version}, highest C{TLS_1_x} allowed.
    @ivar tls12_ciphers: C{tlsv1.2-ciphers} (OpenSSL names).
    @ivar tls13_ciphers: C{tlsv1.3-ciphers} (IANA names).
    @ivar trust_anchors: PEM of C{trust-store-path}, or L{None} for the
        system store.
    @ivar verify_depth: C{cert-chain-depth}.
    @ivar path_validation: C{path-validation}: C{webpki} (the daemon's own
        web-PKI path validation after the TLS library's) or C{rfc5280} (for
        private anchors only: the TLS library's RFC 5280 checks alone).
    @ivar app_trust_anchors: C{app-trust-anchors}: what an application's
        own anchors do: C{replace} the store, C{add} to it, or C{deny}.
    @ivar verify_ip_addresses: C{verify-ip-addresses}: whether a connect to
        an IP literal with no C{TLS_HOSTNAME} is verified against the
        certificate's IP addresses (else it fails EPROTO).
    @ivar connect_timeout: C{connect-timeout}, seconds for TCP.
    @ivar handshake_timeout: C{handshake-timeout}, seconds for TLS.
    @ivar max_sockets_per_client: C{max-sockets-per-client}, per process.
    @ivar max_sockets_per_user: C{max-sockets-per-user}, per uid (the
        daemon also caps it at a quarter of what its descriptors allow).
    @ivar max_request_bytes_per_user: C{max-request-bytes-per-user}: bytes
        of unfinished requests the daemon buffers for one uid.
    @ivar backend: C{backend}, the TLS backend's name.
    @ivar session_tickets: C{session-tickets}: resumption by tickets too
        (only when C{session_resumption} is on).
    @ivar session_resumption: C{session-resumption}.
    @ivar session_timeout: C{session-timeout}, seconds a session may be
        resumed.
    @ivar cert_transparency: C{cert-transparency}: demand valid SCTs.
    @ivar revocation_checks: C{revocation-checks}: the master switch of the
        four methods below.
    @ivar revocation_stapled: C{revocation-stapled}: stapled OCSP.
    @ivar revocation_ocsp: C{revocation-ocsp}: asking OCSP responders.
    @ivar revocation_crl: C{revocation-crl}: CRLs.
    @ivar revocation_cached: C{revocation-cached}: cached answers.
    @ivar revocation_mode: C{revocation-mode}: C{soft-fail} (an unknown
        status passes unless the certificate demands stapling) or
        C{hard-fail} (an unknown status is fatal).
    @ivar crl_path: C{crl-path}: the CRL file or directory (absolute), or
        L{None}.
    @ivar crls: the CRLs read from C{crl_path}, or L{None}.
    @ivar revocation_timeout: C{revocation-timeout}, seconds for each
        fetch of an OCSP response or a CRL.
    @ivar log_format: C{log-format}: C{text} or C{json}.
    @ivar trust_store_path: where C{trust_anchors} were read from (absolute),
        or L{None} for the system store.
    @ivar source: the policy file's path, or C{"built-in defaults"}.
    @ivar generation: which load of the policy this is (set by whoever
        loads it, e.g. counted up on each SIGHUP); 0 for the first.
    @ivar profile: the name of the profile this policy is, or L{None} for
        the file's defaults.
    """

    min_version: int = TLS_1_2
    max_version: int = TLS_1_3
    tls12_ciphers: tuple[str, ...] = DEFAULT_TLS12_CIPHERS
    tls13_ciphers: tuple[str, ...] = DEFAULT_TLS13_CIPHERS
    trust_anchors: bytes | None = None
    verify_depth: int = 10
    path_validation: str = "webpki"
    app_trust_anchors: str = "replace"
    verify_ip_addresses: bool = True
    connect_timeout: float = 15.0
    handshake_timeout: float = 30.0
    max_sockets_per_client: int = 1024
    max_sockets_per_user: int = 4096
    max_request_bytes_per_user: int = 16 << 20
    backend: str = "openssl"
    session_tickets: bool = False
    session_resumption: bool = True
    session_timeout: int = 300
    cert_transparency: bool = False
    revocation_checks: bool = True
    revocation_stapled: bool = True
    revocation_ocsp: bool = True
    revocation_crl: bool = True
    revocation_cached: bool = True
    revocation_mode: str = "soft-fail"
    crl_path: str | None = None
    crls: CRLSet | None = None
    revocation_timeout: float = 5.0
    log_format: str = "text"
    trust_store_path: str | None = None
    source: str = BUILT_IN
    generation: int = 0
    profile: str | None = None


DEFAULT_POLICY = Policy()


class PolicyError(ValueError):
    """
    A policy file that cannot be used; C{str()} is C{FILE:LINE: KEY: what is
    wrong} (parts that do not apply are left out).

    @ivar path: the file.
    @ivar line: the 1-based line, or L{None}.
    @ivar key: the key at fault as written in the file, or L{None}.
    @ivar reason: what is wrong.
    """

    def __init__(self, path: str, line: int | None, key: str | None, reason: str) -> None:
        super().__init__(path, line, key, reason)
        self.path, self.line, self.key, self.reason = path, line, key, reason

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


@dataclass(frozen=True)
class Located:
    """
    A value read from the file and the line it is on. A YAML list arrives
    as a tuple of L{Located}, a mapping as a C{dict} of them.
    """

    value: object
    line: int


class Invalid(ValueError):
    """
    A value a key does not accept: C{message} says why; C{line} is the line
    of the offending item when it is not the key's own line.
    """

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message, self.line = message, line


def shown(value: object) -> str:
    """
    A value as an error message shows it.
    """
    if isinstance(value, Located):
        value = value.value
    if value is None:
        return "nothing"
    if isinstance(value, tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


# Value parsers: Located -> field value, or Invalid.

def _boolean(v: Located) -> bool:
    if isinstance(v.value, bool):
        return v.value
    if isinstance(v.value, str) and v.value.lower() in ("enabled", "disabled"):
        return v.value.lower() == "enabled"
    raise Invalid(f"expected enabled or disabled, not {shown(v)}")


def _integer(low: int, high: int | None = None) -> Callable[[Located], int]:
    def parse(v: Located) -> int:
        if isinstance(v.value, bool) or not isinstance(v.value, int):
            raise Invalid(f"expected a whole number, not {shown(v)}")
        if v.value < low or (high is not None and v.value > high):
            bounds = f"{low}..{high}" if high is not None else f"at least {low}"
            raise Invalid(f"{v.value} is out of range ({bounds})")
        return v.value

    return parse


def _seconds(v: Located) -> float:
    if isinstance(v.value, bool) or not isinstance(v.value, (int, float)):
        raise Invalid(f"expected a number of seconds, not {shown(v)}")
    if not (0 < v.value < math.inf):
        raise Invalid(f"{v.value} is out of range (more than 0 seconds)")
    return float(v.value)


def _choice(*options: str) -> Callable[[Located], str]:
    def parse(v: Located) -> str:
        if v.value not in options:
            raise Invalid(f"expected {' or '.join(options)}, not {shown(v)}")
        return str(v.value)

    return parse


_VERSION_NAME = re.compile(r"^(?:tls[-_ v]?)?v?1\.([0-3])$", re.IGNORECASE)


def _version(v: Located) -> int:
    """
    0..3 (the SSA's numbers); also C{1.2}, C{"tls-1.2"} or C{"TLSv1.2"} as
    the SSA's C{master} branch wrote them.
    """
    if isinstance(v.value, float) and v.value in (1.0, 1.1, 1.2, 1.3):
        return round((v.value - 1.0) * 10)
    if isinstance(v.value, str) and (m := _VERSION_NAME.match(v.value.strip())):
        return int(m.group(1))
    return _integer(TLS_1_0, TLS_1_3)(v)


def _path(what: str) -> Callable[[Located], str | None]:
    """
    A path (read by the loader) of C{what}; null means none (for
    C{trust-store-path}: the system store).
    """

    def parse(v: Located) -> str | None:
        if v.value is None:
            return None
        if not isinstance(v.value, str) or not v.value.strip():
            raise Invalid(f"expected the path of {what}, not {shown(v)}")
        return v.value

    return parse


_trust_store = _path("a PEM file or directory")
_crl_path = _path("a CRL file or directory")


def _backend(v: Located) -> str:
    if not isinstance(v.value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", v.value):
        raise Invalid(f"expected a backend's name such as openssl, not {shown(v)}")
    return v.value


TLS13_SUITES: tuple[str, ...] = (
    "TLS_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
)


@functools.cache
def openssl_ciphers() -> dict[str, str]:
    """
    Every TLS 1.2-and-older cipher this OpenSSL knows: name -> description.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return {c["name"]: c["description"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"}


def insecurity(name: str, description: str = "") -> str | None:
    """
    Why cipher C{name} is refused whatever the administrator says, or
    L{None}: no encryption, RC4, MD5, (3)DES, export grade, no
    authentication, or a pre-shared key or SRP (which the daemon has not).
    """
    tokens = name.upper().split("-")
    fields = dict(f.split("=", 1) for f in description.split() if "=" in f)
    if "NULL" in tokens or fields.get("Enc") == "None":
        return "it does not encrypt (NULL)"
    if any(t.startswith("RC4") for t in tokens) or fields.get("Enc", "").startswith("RC4"):
        return "RC4 is broken"
    if "MD5" in tokens or fields.get("Mac") == "MD5":
        return "MD5 is broken"
    if any(t in ("DES", "3DES", "DES-CBC3", "CBC3") for t in tokens) or "DES" in fields.get("Enc", ""):
        return "3DES/DES is too weak"
    if any(t.startswith("EXP") for t in tokens) or "export" in description.lower():
        return "export-grade ciphers are broken"
    if tokens[0] in ("ADH", "AECDH") or "ANON" in tokens or fields.get("Au") == "None":
        return "it does not authenticate the server (anonymous)"
    if "PSK" in tokens or tokens[0] == "SRP":
        return "it needs a pre-shared key or SRP, which the daemon does not use"
    return None


def _cipher_list(tls13: bool) -> Callable[[Located], tuple[str, ...]]:
    """
    A list of cipher names (or one C{:}-separated string), each known to
    OpenSSL for its protocol, secure, and listed once.
    """

    def parse(v: Located) -> tuple[str, ...]:
        if isinstance(v.value, str):
            items = tuple(Located(n.strip(), v.line) for n in v.value.split(":") if n.strip())
        elif isinstance(v.value, tuple):
            items = v.value
        else:
            raise Invalid(f"expected a list of cipher names, not {shown(v)}")
        names: list[str] = []
        for item in items:
            names.append(_cipher(item, tls13))
            if names[-1] in names[:-1]:
                raise Invalid(f"{names[-1]} is listed twice", item.line)
        return tuple(names)

    return parse


def _cipher(item: Located, tls13: bool) -> str:
    name = item.value
    if not isinstance(name, str):
        raise Invalid(f"expected a cipher name, not {shown(item)}", item.line)
    known = openssl_ciphers()
    why = insecurity(name, known.get(name, ""))
    if why:
        raise Invalid(f"{name} is refused: {why}", item.line)
    if tls13 and name not in TLS13_SUITES:
        hint = " (it is a TLS 1.2 cipher: list it under tlsv1.2-ciphers)" if name in known else ""
        raise Invalid(f"unknown TLS 1.3 cipher suite {name}{hint}", item.line)
    if not tls13 and name not in known:
        hint = " (it is a TLS 1.3 suite: list it under tlsv1.3-ciphers)" if name in TLS13_SUITES else ""
        raise Invalid(f"unknown TLS 1.2 cipher {name}{hint}", item.line)
    return name


# Renderers: field value -> the text of a value in the file.

def _render_bool(value: object) -> str:
    return "enabled" if value else "disabled"


def _render_version(value: object) -> str:
    return f"{value}  # TLS 1.{value}"


def _render_list(value: object) -> str:
    return "[" + ", ".join(value) + "]"  # type: ignore[arg-type]


def _render_store(value: object) -> str:
    return "~  # the system store" if value is None else str(value)


def _render_crl_path(value: object) -> str:
    return "~  # no CRLs" if value is None else str(value)


def _render_number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Key:
    """
    One key of the policy file.

    @ivar name: its name in the file.
    @ivar field: the L{Policy} field it sets.
    @ivar parse: turns a L{Located} value into the field's value.
    @ivar render: turns the field's value back into the file's text.
    @ivar aliases: older names the SSA used for it.
    @ivar global_only: only at the top level, never in a profile.
    """

    name: str
    field: str
    parse: Callable[[Located], object]
    render: Callable[[object], str] = _render_number
    aliases: tuple[str, ...] = ()
    global_only: bool = False


KEYS: tuple[Key, ...] = (
    Key("min-tls-version", "min_version", _version, _render_version),
    Key("max-tls-version", "max_version", _version, _render_version),
    Key("tlsv1.2-ciphers", "tls12_ciphers", _cipher_list(False), _render_list,
        aliases=("cipher-list",)),
    Key("tlsv1.3-ciphers", "tls13_ciphers", _cipher_list(True), _render_list,
        aliases=("ciphersuites",)),
    Key("trust-store-path", "trust_store_path", _trust_store, _render_store,
        aliases=("trust-store-location", "ca-path", "CA-path")),
    Key("cert-chain-depth", "verify_depth", _integer(0, 100), aliases=("cert-verification-depth",)),
    Key("path-validation", "path_validation", _choice("webpki", "rfc5280"), str),
    Key("app-trust-anchors", "app_trust_anchors", _choice("replace", "add", "deny"), str),
    Key("verify-ip-addresses", "verify_ip_addresses", _boolean, _render_bool),
    Key("session-resumption", "session_resumption", _boolean, _render_bool),
    Key("session-tickets", "session_tickets", _boolean, _render_bool),
    Key("session-timeout", "session_timeout", _integer(0, 2**31 - 1)),
    Key("cert-transparency", "cert_transparency", _boolean, _render_bool,
        aliases=("cert-transparency-checks", "verify-cert-transparency")),
    Key("revocation-checks", "revocation_checks", _boolean, _render_bool),
    Key("revocation-stapled", "revocation_stapled", _boolean, _render_bool),
    Key("revocation-ocsp", "revocation_ocsp", _boolean, _render_bool),
    Key("revocation-crl", "revocation_crl", _boolean, _render_bool),
    Key("revocation-cached", "revocation_cached", _boolean, _render_bool),
    Key("revocation-mode", "revocation_mode", _choice("soft-fail", "hard-fail"), str),
    Key("crl-path", "crl_path", _crl_path, _render_crl_path),
    Key("revocation-timeout", "revocation_timeout", _seconds),
    Key("connect-timeout", "connect_timeout", _seconds),
    Key("handshake-timeout", "handshake_timeout", _seconds),
    Key("max-sockets-per-client", "max_sockets_per_client", _integer(1, 2**31 - 1)),
    Key("max-sockets-per-user", "max_sockets_per_user", _integer(1, 2**31 - 1)),
    Key("max-request-bytes-per-user", "max_request_bytes_per_user", _integer(1 << 20, 2**62)),
    Key("backend", "backend", _backend, str, global_only=True),
    Key("log-format", "log_format", _choice("text", "json"), str, global_only=True),
)
"""The policy file's keys, in the order C{ssa check-config} shows them."""

KEY_BY_NAME: dict[str, Key] = {n: k for k in KEYS for n in (k.name, *k.aliases)}
"""Every accepted name, aliases included."""


def render(policy: Policy) -> list[tuple[str, str]]:
    """
    C{(key, value)} for every key, as the file would write it.
    """
    return [(key.name, key.render(getattr(policy, key.field))) for key in KEYS]


def conflict(policy: Policy) -> tuple[tuple[str, ...], str] | None:
    """
    A contradiction between keys of C{policy}, as C{(the keys involved,
    what is wrong)}, or L{None}.
    """
    if policy.min_version > policy.max_version:
        return (("max-tls-version", "min-tls-version"),
                f"the minimum TLS 1.{policy.min_version} is above the maximum TLS 1.{policy.max_version}")
    for version, key, ciphers in ((2, "tlsv1.2-ciphers", policy.tls12_ciphers),
                                  (3, "tlsv1.3-ciphers", policy.tls13_ciphers)):
        if not ciphers and policy.min_version <= version <= policy.max_version:
            return ((key, "min-tls-version", "max-tls-version"),
                    f"no ciphers left for TLS 1.{version}, which the version range allows")
    if policy.max_version < TLS_1_2 and not policy.tls12_ciphers:
        return (("tlsv1.2-ciphers",), "no ciphers left for TLS 1.0/1.1")
    return None
