"""
The rules of every socket option (SPEC section 4), without I/O.

Each option is one L{OptionRule}: the states in which it may be set and
read, and how its wire value is decoded, checked against the policy and
stored, or encoded. L{ssa.sockets.TLSSocket} applies them in the SPEC's
order: unknown option, direction, state, value, policy.
"""

from __future__ import annotations

import errno
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cryptography import x509

from . import cipher_names, credentials
from . import constants as c
from .constants import SocketState
from .errors import SSAError
from .optioncheck import INT, check_hostname, decode_text
from .tlsconfig import chain_pem, subject_line

if TYPE_CHECKING:
    from .policy import Policy
    from .tlsconfig import TLSSessionInfo

U64 = struct.Struct("Q")

S = SocketState
ANY = frozenset({S.NEW, S.CONNECTING, S.CONNECTED, S.DISCONNECTED, S.LISTENING, S.ERROR})
NEW_ONLY = frozenset({S.NEW})
ESTABLISHED = frozenset({S.CONNECTED, S.DISCONNECTED})
NEVER: frozenset[SocketState] = frozenset()


class TLSSocket(Protocol):
    """
    What the option rules read and set on a socket
    (L{ssa.sockets.TLSSocket} is the one the daemon has).
    """

    id: int
    policy: Policy
    hostname: str | None
    trust_anchors: bytes | None
    version_min: int
    version_max: int
    session: TLSSessionInfo | None
    last_error: str | None
    chains: dict[str, tuple[x509.Certificate, ...]]
    keys: dict[str, bytes]
    alpn: tuple[str, ...]
    tls12_ciphers: tuple[str, ...]
    tls13_ciphers: tuple[str, ...]
    session_ttl: int
    server_ocsp_stapling: bool
    request_peer_auth: bool

    def context_from_wire(self, value: bytes) -> None:
        """
        C{TLS_CONTEXT}: take the settings of the socket the handle names.
        """


@dataclass(frozen=True)
class OptionRule:
    """
    How one option behaves.

    @ivar name: its constant's name, for messages.
    @ivar set_states: where C{setsockopt} is allowed (empty: get-only).
    @ivar get_states: where C{getsockopt} is allowed (empty: set-only).
    @ivar setter: stores a decoded wire value on the socket.
    @ivar getter: encodes the socket's value for the wire.
    """

    name: str
    set_states: frozenset[SocketState]
    get_states: frozenset[SocketState]
    setter: Callable[[TLSSocket, bytes], None] | None = None
    getter: Callable[[TLSSocket], bytes] | None = None


def encode_text(text: str) -> bytes:
    """
    Encode a string value, NUL-terminated as C expects.
    """
    return text.encode("utf-8") + b"\0"


def decode_int(name: str, value: bytes) -> int:
    """
    Decode a 4-byte native integer value.
    """
    if len(value) != INT.size:
        raise SSAError(
            errno.EINVAL, f"{name}: expected a {INT.size}-byte integer, got {len(value)} bytes"
        )
    return INT.unpack(value)[0]


def encode_int(number: int) -> bytes:
    """
    Encode a 4-byte native integer value.
    """
    return INT.pack(number)


def _set_hostname(sock: TLSSocket, value: bytes) -> None:
    sock.hostname = check_hostname(value)


def _get_hostname(sock: TLSSocket) -> bytes:
    if sock.hostname is None:
        raise SSAError(errno.EINVAL, "TLS_HOSTNAME: no hostname was set for this socket")
    return encode_text(sock.hostname)


@functools.lru_cache(maxsize=64)
def _normalized_trust_anchors(value: bytes):
    """
    The certificates of a TLS_TRUSTED_PEER_CERTIFICATES value in the form
    sockets keep; applications set the same few bundles again and again,
    so each is parsed once.
    """
    try:
        certificates = x509.load_pem_x509_certificates(value.rstrip(b"\0"))
    except ValueError:
        raise SSAError(
            errno.EINVAL,
            "TLS_TRUSTED_PEER_CERTIFICATES: the value holds no readable PEM certificate",
        ) from None
    return chain_pem(tuple(certificates))


def _set_trusted_peer_certificates(sock: TLSSocket, value: bytes) -> None:
    anchors = _normalized_trust_anchors(value)
    if sock.policy.app_trust_anchors == "deny":
        raise SSAError(
            errno.EPROTO,
            "TLS_TRUSTED_PEER_CERTIFICATES: the policy (app-trust-anchors: deny) "
            "does not let applications choose their own trust anchors",
        )
    sock.trust_anchors = anchors


def _version_setter(which: str) -> Callable[[TLSSocket, bytes], None]:
    name = f"TLS_VERSION_{which.upper()}"

    def setter(sock: TLSSocket, value: bytes) -> None:
        version = decode_int(name, value)
        if not c.TLS_1_0 <= version <= c.TLS_1_3:
            raise SSAError(errno.EINVAL, f"{name}: {version} is not a TLS_1_x constant (0-3)")
        low, high = sock.policy.min_version, sock.policy.max_version
        if version < low:
            raise SSAError(
                errno.EPROTO,
                f"{name}: {c.version_name(version)} is below the policy's "
                f"min-tls-version ({c.version_name(low)})",
            )
        if version > high:
            raise SSAError(
                errno.EPROTO,
                f"{name}: {c.version_name(version)} is above the policy's "
                f"max-tls-version ({c.version_name(high)})",
            )
        new_min = version if which == "min" else sock.version_min
        new_max = version if which == "max" else sock.version_max
        if new_min > new_max:
            raise SSAError(
                errno.EINVAL,
                f"{name}: the minimum {c.version_name(new_min)} would be above "
                f"the maximum {c.version_name(new_max)}",
            )
        sock.version_min, sock.version_max = new_min, new_max

    return setter


def _set_chain(sock: TLSSocket, value: bytes) -> None:
    chain = credentials.parse_chain(value)
    sock.chains[credentials.key_type(chain[0].public_key())] = chain


def _set_private_key(sock: TLSSocket, value: bytes) -> None:
    key = credentials.parse_private_key(value)
    slot = credentials.key_type(key.public_key())
    chain = sock.chains.get(slot)
    if chain is None:
        if not sock.chains:
            raise SSAError(
                errno.EPROTO, "TLS_PRIVATE_KEY: set TLS_CERTIFICATE_CHAIN before its private key"
            )
        held = ", ".join(f"{t} ({credentials.describe(c)})" for t, c in sock.chains.items())
        raise SSAError(
            errno.EPROTO,
            f"TLS_PRIVATE_KEY: the {slot} key matches no certificate chain set on this socket "
            f"(it holds: {held})",
        )
    if not credentials.same_key(chain[0], key):
        raise SSAError(
            errno.EPROTO,
            f"TLS_PRIVATE_KEY: the {slot} key does not match the certificate "
            f"{credentials.describe(chain)}",
        )
    sock.keys[slot] = credentials.key_pem(key)


def _set_flag(name: str, attribute: str) -> Callable[[TLSSocket, bytes], None]:
    def setter(sock: TLSSocket, value: bytes) -> None:
        number = decode_int(name, value)
        if number not in (0, 1):
            raise SSAError(errno.EINVAL, f"{name}: expected 0 or 1, got {number}")
        setattr(sock, attribute, bool(number))

    return setter


def _set_alpn(sock: TLSSocket, value: bytes) -> None:
    text = decode_text("TLS_ALPN", value)
    protocols = tuple(p.strip() for p in text.split(","))
    if not text or any(not p or len(p.encode()) > 255 for p in protocols):
        raise SSAError(
            errno.EINVAL, f"TLS_ALPN: {text!r} is not a comma list of protocol names (1-255 bytes each)"
        )
    sock.alpn = protocols


def _cipher_name(option: str, value: bytes) -> str:
    text = decode_text(option, value)
    name = cipher_names.canonical(text)
    if name is None:
        raise SSAError(errno.EINVAL, f"{option}: {text!r} is not a cipher OpenSSL knows")
    return name


def _disable_cipher(sock: TLSSocket, value: bytes) -> None:
    name = _cipher_name("TLS_DISABLE_CIPHER", value)
    sock.tls12_ciphers = tuple(c for c in sock.tls12_ciphers if c != name)
    sock.tls13_ciphers = tuple(c for c in sock.tls13_ciphers if c != name)


def _enable_cipher(sock: TLSSocket, value: bytes) -> None:
    name = _cipher_name("TLS_ENABLE_CIPHER", value)
    tls13 = name in cipher_names.TLS13_SUITES
    allowed = sock.policy.tls13_ciphers if tls13 else sock.policy.tls12_ciphers
    if name not in allowed:
        key = "tlsv1.3-ciphers" if tls13 else "tlsv1.2-ciphers"
        raise SSAError(errno.EPROTO, f"TLS_ENABLE_CIPHER: the policy's {key} does not allow {name}")
    current = sock.tls13_ciphers if tls13 else sock.tls12_ciphers
    if name not in current:
        restored = tuple(c for c in allowed if c in current or c == name)
        if tls13:
            sock.tls13_ciphers = restored
        else:
            sock.tls12_ciphers = restored


def _trusted_ciphers(sock: TLSSocket) -> bytes:
    names: list[str] = []
    if sock.version_max >= c.TLS_1_3:
        names += sock.tls13_ciphers
    if sock.version_min <= c.TLS_1_2:
        names += sock.tls12_ciphers
    return encode_text(":".join(names))


def _bounded_flag(name: str, attribute: str, policy_attribute: str, key: str) -> Callable[[TLSSocket, bytes], None]:
    """
    A 0/1 option that turns on a check or a feature. Turning a check off
    that the policy turns on loosens it; turning a feature on that the
    policy turns off does too: both fail EPROTO naming the key.
    """
    is_check = attribute.startswith("revocation")

    def setter(sock: TLSSocket, value: bytes) -> None:
        number = decode_int(name, value)
        if number not in (0, 1):
            raise SSAError(errno.EINVAL, f"{name}: expected 0 or 1, got {number}")
        allowed = getattr(sock.policy, policy_attribute)
        if is_check and allowed and not number:
            raise SSAError(
                errno.EPROTO, f"{name}: the policy ({key}: enabled) does not let applications turn this check off"
            )
        if not is_check and number and not allowed:
            raise SSAError(errno.EPROTO, f"{name}: the policy ({key}: disabled) does not allow it")
        setattr(sock, attribute, bool(number))

    return setter


def _flag_rule(name: str, attribute: str, policy_attribute: str, key: str) -> OptionRule:
    return OptionRule(
        name, NEW_ONLY, ANY, _bounded_flag(name, attribute, policy_attribute, key),
        lambda s: encode_int(int(getattr(s, attribute))),
    )


def _session(sock: TLSSocket):
    assert sock.session is not None
    return sock.session


def _get_peer_identity(sock: TLSSocket) -> bytes:
    leaf = _session(sock).peer_certificate
    if leaf is None:
        raise SSAError(errno.ENOTCONN, "TLS_PEER_IDENTITY: the peer sent no certificate")
    return encode_text(subject_line(leaf))


def _get_peer_chain(sock: TLSSocket) -> bytes:
    chain = _session(sock).peer_chain
    if not chain:
        raise SSAError(errno.ENOTCONN, "TLS_PEER_CERTIFICATE_CHAIN: the peer sent no certificate")
    return chain_pem(chain) + b"\0"


def _set_session_ttl(sock: TLSSocket, value: bytes) -> None:
    seconds = decode_int("TLS_SESSION_TTL", value)
    if seconds < 0:
        raise SSAError(errno.EINVAL, f"TLS_SESSION_TTL: {seconds} is negative")
    limit = sock.policy.session_timeout
    if seconds > limit:
        raise SSAError(
            errno.EPROTO, f"TLS_SESSION_TTL: {seconds} s is above the policy's session-timeout ({limit} s)"
        )
    sock.session_ttl = seconds


def _get_error(sock: TLSSocket) -> bytes:
    if sock.last_error is None:
        raise SSAError(errno.EINVAL, "TLS_ERROR: no failure has been recorded on this socket")
    return encode_text(sock.last_error)


RULES: dict[int, OptionRule] = {
    c.TLS_HOSTNAME: OptionRule("TLS_HOSTNAME", NEW_ONLY, ANY, _set_hostname, _get_hostname),
    c.TLS_TRUSTED_PEER_CERTIFICATES: OptionRule(
        "TLS_TRUSTED_PEER_CERTIFICATES", NEW_ONLY, NEVER, _set_trusted_peer_certificates
    ),
    c.TLS_ID: OptionRule("TLS_ID", NEVER, ANY, getter=lambda s: U64.pack(s.id)),
    c.TLS_ERROR: OptionRule("TLS_ERROR", NEVER, ANY, getter=_get_error),
    c.TLS_VERSION_MIN: OptionRule(
        "TLS_VERSION_MIN", NEW_ONLY, ANY, _version_setter("min"),
        lambda s: encode_int(s.version_min),
    ),
    c.TLS_VERSION_MAX: OptionRule(
        "TLS_VERSION_MAX", NEW_ONLY, ANY, _version_setter("max"),
        lambda s: encode_int(s.version_max),
    ),
    c.TLS_PEER_IDENTITY: OptionRule("TLS_PEER_IDENTITY", NEVER, ESTABLISHED, getter=_get_peer_identity),
    c.TLS_PEER_CERTIFICATE_CHAIN: OptionRule(
        "TLS_PEER_CERTIFICATE_CHAIN", NEVER, ESTABLISHED, getter=_get_peer_chain
    ),
    c.TLS_CHOSEN_CIPHER: OptionRule(
        "TLS_CHOSEN_CIPHER", NEVER, ESTABLISHED, getter=lambda s: encode_text(_session(s).cipher)
    ),
    c.TLS_CHOSEN_VERSION: OptionRule(
        "TLS_CHOSEN_VERSION", NEVER, ESTABLISHED, getter=lambda s: encode_int(_session(s).version)
    ),
    c.TLS_DISABLE_CIPHER: OptionRule("TLS_DISABLE_CIPHER", NEW_ONLY, NEVER, _disable_cipher),
    c.TLS_ENABLE_CIPHER: OptionRule("TLS_ENABLE_CIPHER", NEW_ONLY, NEVER, _enable_cipher),
    c.TLS_TRUSTED_CIPHERS: OptionRule("TLS_TRUSTED_CIPHERS", NEVER, ANY, getter=_trusted_ciphers),
    c.TLS_REVOCATION_CHECKS: _flag_rule(
        "TLS_REVOCATION_CHECKS", "revocation_checks", "revocation_checks", "revocation-checks"
    ),
    c.TLS_OCSP_STAPLED_CHECKS: _flag_rule(
        "TLS_OCSP_STAPLED_CHECKS", "revocation_stapled", "revocation_stapled", "revocation-stapled"
    ),
    c.TLS_OCSP_CHECKS: _flag_rule("TLS_OCSP_CHECKS", "revocation_ocsp", "revocation_ocsp", "revocation-ocsp"),
    c.TLS_CRL_CHECKS: _flag_rule("TLS_CRL_CHECKS", "revocation_crl", "revocation_crl", "revocation-crl"),
    c.TLS_CACHED_REV_CHECKS: _flag_rule(
        "TLS_CACHED_REV_CHECKS", "revocation_cached", "revocation_cached", "revocation-cached"
    ),
    c.TLS_SESSION_REUSE: _flag_rule(
        "TLS_SESSION_REUSE", "session_reuse", "session_resumption", "session-resumption"
    ),
    c.TLS_SERVER_OCSP_STAPLING: OptionRule(
        "TLS_SERVER_OCSP_STAPLING", NEW_ONLY, ANY,
        _set_flag("TLS_SERVER_OCSP_STAPLING", "server_ocsp_stapling"),
        lambda s: encode_int(int(s.server_ocsp_stapling)),
    ),
    c.TLS_CONTEXT: OptionRule(
        "TLS_CONTEXT", NEW_ONLY, NEW_ONLY, lambda s, v: s.context_from_wire(v), lambda s: U64.pack(s.id)
    ),
    c.TLS_SESSION_TTL: OptionRule(
        "TLS_SESSION_TTL", NEW_ONLY, ANY, _set_session_ttl, lambda s: encode_int(s.session_ttl)
    ),
    c.TLS_RESUMED_SESSION: OptionRule(
        "TLS_RESUMED_SESSION", NEVER, ESTABLISHED, getter=lambda s: encode_int(int(_session(s).resumed))
    ),
    c.TLS_CERTIFICATE_CHAIN: OptionRule("TLS_CERTIFICATE_CHAIN", NEW_ONLY, NEVER, _set_chain),
    c.TLS_PRIVATE_KEY: OptionRule("TLS_PRIVATE_KEY", NEW_ONLY, NEVER, _set_private_key),
    c.TLS_REQUEST_PEER_AUTH: OptionRule(
        "TLS_REQUEST_PEER_AUTH", NEW_ONLY, ANY, _set_flag("TLS_REQUEST_PEER_AUTH", "request_peer_auth"),
        lambda s: encode_int(int(s.request_peer_auth)),
    ),
    c.TLS_ALPN: OptionRule(
        "TLS_ALPN", NEW_ONLY, ESTABLISHED, _set_alpn,
        lambda s: encode_text(_session(s).alpn or ""),
    ),
}
