"""
Checks of option values that need neither a socket nor a policy, shared by
the daemon (L{ssa.options}) and the client library (L{ssa.client}).

The client uses L{travels_with_connect} to tell the C{setsockopt()} calls
the daemon cannot refuse on a new socket: their requests wait and travel
with C{CONNECT} instead of costing a round trip each (docs/protocol.md,
"Options that travel with CONNECT"). Every other call still asks the
daemon at once, so every refusal an application can meet still comes from
its C{setsockopt()}.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import struct

from . import netoptions
from .constants import IPPROTO_TLS, TLS_HOSTNAME, TLS_SESSION_REUSE
from .errors import SSAError

INT = struct.Struct("i")
MAX_HOSTNAME = 255


def decode_text(name: str, value: bytes) -> str:
    """
    Decode a NUL-terminated (or plain) string value.
    """
    if value.endswith(b"\0"):
        value = value[:-1]
    if b"\0" in value:
        raise SSAError(errno.EINVAL, f"{name}: the value has a NUL byte inside it")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise SSAError(errno.EINVAL, f"{name}: the value is not UTF-8 text") from None


def check_hostname(value: bytes) -> str:
    """
    The name a C{TLS_HOSTNAME} value holds.

    @raise SSAError: C{EINVAL}: not text, empty, too long, or with white
        space.
    """
    name = decode_text("TLS_HOSTNAME", value)
    if not name:
        raise SSAError(errno.EINVAL, "TLS_HOSTNAME: the hostname is empty")
    if len(name.encode("utf-8")) > MAX_HOSTNAME:
        raise SSAError(errno.EINVAL, f"TLS_HOSTNAME: longer than {MAX_HOSTNAME} bytes")
    if any(ch.isspace() for ch in name):
        raise SSAError(errno.EINVAL, f"TLS_HOSTNAME: {name!r} contains white space")
    return name


def travels_with_connect(level: int, name: int, value: bytes) -> bool:
    """
    Whether the daemon accepts C{setsockopt(level, name, value)} on every
    socket in state NEW, whatever its policy: a valid C{TLS_HOSTNAME}, a
    network option the daemon passes on (C{TCP_NODELAY}, ...) with a value
    of 0 or more, C{TLS_SESSION_REUSE} 0 (turning a feature off is never
    refused). Options a policy can refuse (versions, ciphers, trust anchors,
    resumption on, ...) or whose value needs parsing are not.
    """
    try:
        if level == IPPROTO_TLS:
            if name == TLS_HOSTNAME:
                check_hostname(value)
                return True
            return name == TLS_SESSION_REUSE and value == INT.pack(0)
        if (level, name) not in netoptions.NAMES or len(value) != INT.size:
            return False
        netoptions.check(level, name, INT.unpack(value)[0])
    except SSAError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def is_ip_literal(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address rather than a name.

    Cached: a connection asks it five times of the same name, and for a
    name the answer costs a C{ValueError} raised and caught.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
