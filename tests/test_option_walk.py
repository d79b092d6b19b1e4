"""
Every option of SPEC section 4 through every state a real socket reaches
(NEW, CONNECTING, CONNECTED, LISTENING, ERROR), for set and get, against a
real daemon, once per backend.
"""

from __future__ import annotations

import errno
import socket
import struct

from ssa import client
from ssa import constants as c
from ssa.testing.peers import StdlibTLSServer, echo_handler, free_port

from .helpers import DaemonTestCase, for_each_backend

TLS = client.IPPROTO_TLS
ALL = frozenset({"NEW", "CONNECTING", "CONNECTED", "LISTENING", "ERROR"})
NEW = frozenset({"NEW"})
CONNECTED = frozenset({"CONNECTED"})
GET_ONLY, SET_ONLY = "get-only", "set-only"

# option: (states where set works or GET_ONLY, states where get works or SET_ONLY)
TABLE = {
    c.TLS_HOSTNAME: (NEW, ALL),
    c.TLS_TRUSTED_PEER_CERTIFICATES: (NEW, SET_ONLY),
    c.TLS_CERTIFICATE_CHAIN: (NEW, SET_ONLY),
    c.TLS_PRIVATE_KEY: (NEW, SET_ONLY),
    c.TLS_ALPN: (NEW, CONNECTED),
    c.TLS_SESSION_TTL: (NEW, ALL),
    c.TLS_DISABLE_CIPHER: (NEW, SET_ONLY),
    c.TLS_PEER_IDENTITY: (GET_ONLY, CONNECTED),
    c.TLS_REQUEST_PEER_AUTH: (NEW, ALL),
    c.TLS_PEER_CERTIFICATE_CHAIN: (GET_ONLY, CONNECTED),
    c.TLS_ID: (GET_ONLY, ALL),
    c.TLS_TRUSTED_CIPHERS: (GET_ONLY, ALL),
    c.TLS_CHOSEN_CIPHER: (GET_ONLY, CONNECTED),
    c.TLS_ERROR: (GET_ONLY, ALL),
    c.TLS_REVOCATION_CHECKS: (NEW, ALL),
    c.TLS_OCSP_STAPLED_CHECKS: (NEW, ALL),
    c.TLS_OCSP_CHECKS: (NEW, ALL),
    c.TLS_CRL_CHECKS: (NEW, ALL),
    c.TLS_CACHED_REV_CHECKS: (NEW, ALL),
    c.TLS_CONTEXT: (NEW, NEW),
    c.TLS_SESSION_REUSE: (NEW, ALL),
    c.TLS_RESUMED_SESSION: (GET_ONLY, CONNECTED),
    c.TLS_ENABLE_CIPHER: (NEW, SET_ONLY),
    c.TLS_VERSION_MIN: (NEW, ALL),
    c.TLS_VERSION_MAX: (NEW, ALL),
    c.TLS_CHOSEN_VERSION: (GET_ONLY, CONNECTED),
    c.TLS_SERVER_OCSP_STAPLING: (NEW, ALL),
}


class OptionWalkTests(DaemonTestCase):
    """
    The SPEC's answer for each (option, state, set|get).
    """

    def value(self, sock: client.SSASocket, name: int):
        """
        A valid value for C{name} on C{sock}.
        """
        return {
            c.TLS_HOSTNAME: "localhost",
            c.TLS_TRUSTED_PEER_CERTIFICATES: self.ca.cert_pem(),
            c.TLS_CERTIFICATE_CHAIN: self.server_key.chain_pem(),
            c.TLS_PRIVATE_KEY: self.server_key.key_pem(),
            c.TLS_ALPN: "http/1.1",
            c.TLS_SESSION_TTL: 60,
            c.TLS_DISABLE_CIPHER: "ECDHE-RSA-AES128-GCM-SHA256",
            c.TLS_ENABLE_CIPHER: "ECDHE-RSA-AES128-GCM-SHA256",
            c.TLS_CONTEXT: struct.pack("Q", sock.id),
            c.TLS_VERSION_MIN: c.TLS_1_2,
            c.TLS_VERSION_MAX: c.TLS_1_3,
        }.get(name, 1)

    def sockets(self, server_port: int, silent_port: int) -> dict[str, client.SSASocket]:
        """
        One socket in each state, reached by real operations.
        """
        new = self.trusting_socket()
        connecting = self.trusting_socket(nonblocking=True)
        self.assertEqual(connecting.connect_ex(("127.0.0.1", silent_port)), errno.EINPROGRESS)
        connected = self.trusting_socket()
        connected.connect(("127.0.0.1", server_port))
        listening = self.trusting_socket()
        listening.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        listening.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())
        listening.listen()
        failed = self.trusting_socket()
        self.assertEqual(failed.connect_ex(("127.0.0.1", free_port())), errno.ECONNABORTED)
        return {"NEW": new, "CONNECTING": connecting, "CONNECTED": connected,
                "LISTENING": listening, "ERROR": failed}

    def test_walk(self) -> None:
        """
        Walk the table; collect every mismatch and report them together.
        TLS_ERROR is left out of the get walk: it answers with a reason or
        with none in every state, which the failure tests check.
        """
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        self.addCleanup(silent.close)
        mismatches: list[str] = []
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            for state, sock in self.sockets(server.port, silent.getsockname()[1]).items():
                for name, (_, get_states) in TABLE.items():
                    if name != c.TLS_ERROR:
                        mismatches += self.check(
                            "get", state, name, get_states, SET_ONLY,
                            lambda: sock.getsockopt(TLS, name, 65536),
                        )
                for name, (set_states, _) in TABLE.items():
                    mismatches += self.check(
                        "set", state, name, set_states, GET_ONLY,
                        lambda: sock.setsockopt(TLS, name, self.value(sock, name)),
                    )
        self.assertEqual(mismatches, [])

    @staticmethod
    def check(what: str, state: str, name: int, states, other_direction: str, call) -> list[str]:
        """
        Run C{call} and compare its errno (0 for success) with the SPEC's:
        ENOPROTOOPT in the wrong direction, EOPNOTSUPP in the wrong state
        (EBADFD in ERROR).
        """
        if states == other_direction:
            expected = errno.ENOPROTOOPT
        elif state in states:
            expected = 0
        else:
            expected = errno.EBADFD if state == "ERROR" else errno.EOPNOTSUPP
        try:
            call()
            got = 0
        except OSError as e:
            got = e.errno
        if got == expected:
            return []
        name_of = errno.errorcode.get
        return [f"{what} {name} in {state}: {name_of(got, got)}, expected {name_of(expected, expected)}"]


for_each_backend(globals(), OptionWalkTests)
