"""
The SSA's numbers (SPEC section 2): those of the SSA's C{in_tls.h}, which the
kernel module also puts on the wire.

There is deliberately no C{SOL_TLS}: the option level is L{IPPROTO_TLS}.
"""

import enum

IPPROTO_TLS = 205
AF_HOSTNAME = 43
TCP_UPGRADE_TLS = 33

TLS_HOSTNAME = 85
TLS_TRUSTED_PEER_CERTIFICATES = 87
TLS_CERTIFICATE_CHAIN = 88
TLS_PRIVATE_KEY = 89
TLS_ALPN = 90
TLS_SESSION_TTL = 91
TLS_DISABLE_CIPHER = 92
TLS_PEER_IDENTITY = 93
TLS_REQUEST_PEER_AUTH = 94
TLS_PEER_CERTIFICATE_CHAIN = 95
TLS_ID = 96
TLS_TRUSTED_CIPHERS = 97
TLS_CHOSEN_CIPHER = 98
TLS_ERROR = 100
TLS_REVOCATION_CHECKS = 102
TLS_OCSP_STAPLED_CHECKS = 103
TLS_OCSP_CHECKS = 104
TLS_CRL_CHECKS = 105
TLS_CACHED_REV_CHECKS = 106
TLS_CONTEXT = 107
TLS_SESSION_REUSE = 108
TLS_RESUMED_SESSION = 109
TLS_ENABLE_CIPHER = 110
TLS_VERSION_MIN = 111
TLS_VERSION_MAX = 112
TLS_CHOSEN_VERSION = 113
TLS_SERVER_OCSP_STAPLING = 122

TLS_1_0 = 0
TLS_1_1 = 1
TLS_1_2 = 2
TLS_1_3 = 3


class SocketState(enum.Enum):
    """
    The states of an SSA socket (SPEC section 3).
    """

    NEW = "NEW"
    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    LISTENING = "LISTENING"
    ERROR = "ERROR"
    CLOSED = "CLOSED"


def version_name(version: int) -> str:
    """
    Name a C{TLS_1_x} constant for people, e.g. C{"TLS 1.2"}.
    """
    return f"TLS 1.{version}"


__all__ = [name for name in dir() if name.isupper()] + ["SocketState", "version_name"]
