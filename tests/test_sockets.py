"""
The socket state machine and option rules, without a reactor (SPEC 3, 4).
"""

from __future__ import annotations

import errno
import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from ssa import constants as c
from ssa.constants import SocketState as S
from ssa.errors import SSAError
from ssa.peer import PeerIdentity
from ssa.policy import Policy
from ssa.sockets import TLSSocket, check_socket_args
from ssa.testing.certs import CertificateAuthority
from ssa.tlsconfig import TLSSessionInfo

OWNER = PeerIdentity(pid=1234, uid=1000, gid=1000, executable="/usr/bin/app")
TLS = c.IPPROTO_TLS
INT = struct.Struct("i")
ADDRESS = (socket.AF_INET, "127.0.0.1", 443)


def make_socket(state: S = S.NEW, policy: Policy = Policy(), session: TLSSessionInfo | None = None) -> TLSSocket:
    """
    A socket put directly into C{state}.
    """
    sock = TLSSocket(0x1122334455667788, socket.AF_INET, OWNER, policy)
    sock.state = state
    sock.session = session
    return sock


def raises(testcase: SynchronousTestCase, err: int, call, *args) -> SSAError:
    """
    Assert that C{call(*args)} raises L{SSAError} with C{err}.
    """
    failure = testcase.assertRaises(SSAError, call, *args)
    testcase.assertEqual(
        failure.errno, err,
        f"expected {errno.errorcode[err]}, got {errno.errorcode.get(failure.errno)}: {failure.reason}",
    )
    return failure


class SocketArgsTests(SynchronousTestCase):
    """
    C{socket()}'s argument checks.
    """

    def test_table(self) -> None:
        """
        Each invalid combination fails with the SPEC's errno.
        """
        cases = [
            (socket.AF_INET, socket.SOCK_STREAM, TLS, None),
            (socket.AF_INET6, socket.SOCK_STREAM, TLS, None),
            (c.AF_HOSTNAME, socket.SOCK_STREAM, TLS, None),
            (socket.AF_INET, socket.SOCK_DGRAM, TLS, errno.EPROTONOSUPPORT),
            (socket.AF_INET, 0, TLS, errno.ESOCKTNOSUPPORT),
            (socket.AF_UNIX, socket.SOCK_STREAM, TLS, errno.EAFNOSUPPORT),
            (socket.AF_NETLINK, socket.SOCK_STREAM, TLS, errno.EAFNOSUPPORT),
            (socket.AF_INET, socket.SOCK_STREAM, 6, errno.EPROTONOSUPPORT),
        ]
        for family, type_, proto, expected in cases:
            if expected is None:
                check_socket_args(family, type_, proto)
            else:
                raises(self, expected, check_socket_args, family, type_, proto)


class ConnectStateTests(SynchronousTestCase):
    """
    C{connect()} in every state: the seed's connect(2) errnos.
    """

    def test_by_state(self) -> None:
        """
        NEW connects; CONNECTING → EALREADY; after success EOPNOTSUPP;
        after failure EBADFD; LISTENING → EOPNOTSUPP.
        """
        expected = {
            S.CONNECTING: errno.EALREADY,
            S.CONNECTED: errno.EOPNOTSUPP,
            S.DISCONNECTED: errno.EOPNOTSUPP,
            S.ERROR: errno.EBADFD,
            S.LISTENING: errno.EOPNOTSUPP,
        }
        for state, err in expected.items():
            sock = make_socket(state)
            sock.hostname = "example.test"
            failure = raises(self, err, sock.start_connect, ADDRESS)
            self.assertEqual(sock.state, state, "a refused connect changes no state")
            self.assertEqual(sock.last_error, failure.reason)
        sock = make_socket()
        sock.hostname = "example.test"
        plan = sock.start_connect(ADDRESS)
        self.assertEqual(sock.state, S.CONNECTING)
        self.assertEqual((plan.host, plan.port, plan.server_hostname, plan.verify_name),
                         ("127.0.0.1", 443, "example.test", "example.test"))

    def test_af_unspec(self) -> None:
        """
        An AF_UNSPEC address fails EAFNOSUPPORT and changes nothing.
        """
        sock = make_socket()
        raises(self, errno.EAFNOSUPPORT, sock.start_connect, (socket.AF_UNSPEC, "127.0.0.1", 443))
        self.assertEqual(sock.state, S.NEW)

    def test_wrong_family_and_bad_address(self) -> None:
        """
        An IPv6 address on an IPv4 socket, a name, or a bad port fail
        without changing state.
        """
        sock = make_socket()
        raises(self, errno.EAFNOSUPPORT, sock.start_connect, (socket.AF_INET6, "::1", 443))
        raises(self, errno.EINVAL, sock.start_connect, (socket.AF_INET, "example.test", 443))
        raises(self, errno.EINVAL, sock.start_connect, (socket.AF_INET, "127.0.0.1", 70000))
        self.assertEqual(sock.state, S.NEW)

    def test_ip_literal_identity(self) -> None:
        """
        With no hostname, an IP literal is the identity if the policy
        allows it; otherwise EPROTO and the socket is unusable.
        """
        plan = make_socket().start_connect(ADDRESS)
        self.assertEqual((plan.server_hostname, plan.verify_name), (None, "127.0.0.1"))
        sock = make_socket(policy=Policy(verify_ip_addresses=False))
        failure = raises(self, errno.EPROTO, sock.start_connect, ADDRESS)
        self.assertIn("TLS_HOSTNAME", failure.reason)
        self.assertEqual(sock.state, S.ERROR)
        raises(self, errno.EBADFD, sock.start_connect, ADDRESS)

    def test_outcomes(self) -> None:
        """
        Success moves to CONNECTED; failure to ERROR with SO_ERROR and
        TLS_ERROR set; SO_ERROR reads once.
        """
        sock = make_socket()
        sock.start_connect(ADDRESS)
        sock.connect_failed(errno.EPROTO, "certificate has expired")
        self.assertEqual(sock.state, S.ERROR)
        self.assertEqual(INT.unpack(sock.get_option(socket.SOL_SOCKET, socket.SO_ERROR))[0], errno.EPROTO)
        self.assertEqual(INT.unpack(sock.get_option(socket.SOL_SOCKET, socket.SO_ERROR))[0], 0)
        self.assertEqual(sock.get_option(TLS, c.TLS_ERROR), b"certificate has expired\0")
        sock = make_socket()
        sock.start_connect(ADDRESS)
        sock.connect_succeeded(TLSSessionInfo(c.TLS_1_3, "TLS_AES_128_GCM_SHA256", ()))
        self.assertEqual(sock.state, S.CONNECTED)
        sock.disconnected()
        self.assertEqual(sock.state, S.DISCONNECTED)

    def test_config_from_options(self) -> None:
        """
        The socket's anchors replace the system store by default, add to it
        when the policy says so; versions come from the options.
        """
        ca = CertificateAuthority.create()
        sock = make_socket()
        sock.set_option(TLS, c.TLS_TRUSTED_PEER_CERTIFICATES, ca.cert_pem())
        sock.set_option(TLS, c.TLS_VERSION_MIN, INT.pack(c.TLS_1_3))
        config = sock.client_config()
        self.assertEqual((config.use_system_store, config.min_version), (False, c.TLS_1_3))
        self.assertEqual(config.trust_anchors, ca.cert_pem())
        sock = make_socket(policy=Policy(app_trust_anchors="add"))
        sock.set_option(TLS, c.TLS_TRUSTED_PEER_CERTIFICATES, ca.cert_pem())
        self.assertTrue(sock.client_config().use_system_store)


class BindTests(SynchronousTestCase):
    """
    C{bind()}'s checks.
    """

    def test_bind(self) -> None:
        """
        NEW and unbound binds; twice, connecting, connected or listening →
        EINVAL (SPEC section 3, as TCP).
        """
        sock = make_socket()
        self.assertEqual(sock.check_bind(ADDRESS), ("127.0.0.1", 443))
        sock.bound("127.0.0.1", 443)
        raises(self, errno.EINVAL, sock.check_bind, ADDRESS)
        for state in (S.CONNECTING, S.CONNECTED, S.DISCONNECTED, S.LISTENING):
            raises(self, errno.EINVAL, make_socket(state).check_bind, ADDRESS)
        raises(self, errno.EBADFD, make_socket(S.ERROR).check_bind, ADDRESS)

    def test_listen(self) -> None:
        """
        C{listen()} without a certificate → EPROTO; after connect
        EOPNOTSUPP, after a failed one EBADFD.
        """
        raises(self, errno.EPROTO, make_socket().check_listen)
        raises(self, errno.EOPNOTSUPP, make_socket(S.CONNECTED).check_listen)
        raises(self, errno.EBADFD, make_socket(S.ERROR).check_listen)


SESSION = TLSSessionInfo(c.TLS_1_3, "TLS_AES_256_GCM_SHA384", ())
STATES = [S.NEW, S.CONNECTING, S.CONNECTED, S.DISCONNECTED, S.LISTENING, S.ERROR]
OK = "ok"


def _expect(allowed: set[S], state: S):
    if state in allowed:
        return OK
    return errno.EBADFD if state is S.ERROR else errno.EOPNOTSUPP


class OptionWalkTests(SynchronousTestCase):
    """
    Every option of this issue through every state, for set and get.
    """

    def _set_value(self, name: int) -> bytes:
        if name == c.TLS_TRUSTED_PEER_CERTIFICATES:
            return CertificateAuthority.create().cert_pem()
        if name in (c.TLS_VERSION_MIN, c.TLS_VERSION_MAX):
            return INT.pack(c.TLS_1_3)
        return b"example.test\0"

    def test_walk(self) -> None:
        """
        Set and get give OK or the errno of SPEC section 4 in each state.
        """
        any_state = set(STATES)
        connected = {S.CONNECTED, S.DISCONNECTED}
        table = {
            # option: (set states or None for get-only, get states or None for set-only)
            c.TLS_HOSTNAME: ({S.NEW}, any_state),
            c.TLS_TRUSTED_PEER_CERTIFICATES: ({S.NEW}, None),
            c.TLS_ID: (None, any_state),
            c.TLS_ERROR: (None, any_state),
            c.TLS_VERSION_MIN: ({S.NEW}, any_state),
            c.TLS_VERSION_MAX: ({S.NEW}, any_state),
            c.TLS_PEER_IDENTITY: (None, connected),
            c.TLS_PEER_CERTIFICATE_CHAIN: (None, connected),
            c.TLS_CHOSEN_CIPHER: (None, connected),
            c.TLS_CHOSEN_VERSION: (None, connected),
        }
        leaf = CertificateAuthority.create().issue_server("example.test")
        session = TLSSessionInfo(c.TLS_1_3, "TLS_AES_256_GCM_SHA384", (leaf.cert,))
        for name, (set_states, get_states) in table.items():
            for state in STATES:
                sock = make_socket(state, session=session)
                sock.hostname = "example.test"
                sock.last_error = "earlier failure"
                if set_states is None:
                    raises(self, errno.ENOPROTOOPT, sock.set_option, TLS, name, b"x\0")
                else:
                    expected = _expect(set_states, state)
                    if expected == OK:
                        sock.set_option(TLS, name, self._set_value(name))
                    else:
                        raises(self, expected, sock.set_option, TLS, name, self._set_value(name))
                if get_states is None:
                    raises(self, errno.ENOPROTOOPT, sock.get_option, TLS, name)
                else:
                    expected = _expect(get_states, state)
                    if expected == OK:
                        self.assertTrue(sock.get_option(TLS, name))
                    else:
                        raises(self, expected, sock.get_option, TLS, name)

    def test_unknown_and_other_levels(self) -> None:
        """
        Unknown options and other levels → ENOPROTOOPT.
        """
        sock = make_socket()
        raises(self, errno.ENOPROTOOPT, sock.set_option, TLS, 9999, b"")
        raises(self, errno.ENOPROTOOPT, sock.get_option, TLS, 9999)
        raises(self, errno.ENOPROTOOPT, sock.get_option, socket.IPPROTO_TCP, socket.TCP_CORK)
        raises(self, errno.ENOPROTOOPT, sock.set_option, socket.SOL_SOCKET, socket.SO_REUSEPORT, INT.pack(1))

    def test_network_options(self) -> None:
        """
        TCP_NODELAY, SO_KEEPALIVE and friends are stored for the network
        socket in any usable state; malformed values EINVAL; ERROR EBADFD.
        """
        for state in [S.NEW, S.CONNECTING, S.CONNECTED, S.LISTENING]:
            sock = make_socket(state)
            self.assertEqual(sock.get_option(socket.IPPROTO_TCP, socket.TCP_NODELAY), INT.pack(0))
            sock.set_option(socket.IPPROTO_TCP, socket.TCP_NODELAY, INT.pack(1))
            sock.set_option(socket.SOL_SOCKET, socket.SO_KEEPALIVE, INT.pack(1))
            self.assertEqual(sock.get_option(socket.IPPROTO_TCP, socket.TCP_NODELAY), INT.pack(1))
            self.assertEqual(sock.network_options, {
                (socket.IPPROTO_TCP, socket.TCP_NODELAY): 1, (socket.SOL_SOCKET, socket.SO_KEEPALIVE): 1,
            })
        sock = make_socket()
        raises(self, errno.EINVAL, sock.set_option, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, b"\x01")
        raises(self, errno.EINVAL, sock.set_option, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, INT.pack(-5))
        raises(self, errno.EBADFD, make_socket(S.ERROR).set_option, socket.IPPROTO_TCP, socket.TCP_NODELAY, INT.pack(1))

    def test_values(self) -> None:
        """
        Getters return the wire encodings; TLS_ERROR with none is EINVAL.
        """
        ca = CertificateAuthority.create()
        leaf = ca.issue_server("example.test")
        sock = make_socket(S.CONNECTED, session=TLSSessionInfo(c.TLS_1_2, "ECDHE-ECDSA-AES128-GCM-SHA256", (leaf.cert,)))
        self.assertEqual(sock.get_option(TLS, c.TLS_ID), struct.pack("Q", 0x1122334455667788))
        self.assertEqual(sock.get_option(TLS, c.TLS_CHOSEN_VERSION), INT.pack(c.TLS_1_2))
        self.assertEqual(sock.get_option(TLS, c.TLS_CHOSEN_CIPHER), b"ECDHE-ECDSA-AES128-GCM-SHA256\0")
        self.assertIn(b"CN=", sock.get_option(TLS, c.TLS_PEER_IDENTITY))
        self.assertTrue(sock.get_option(TLS, c.TLS_PEER_CERTIFICATE_CHAIN).startswith(b"-----BEGIN CERTIFICATE-----"))
        raises(self, errno.EINVAL, sock.get_option, TLS, c.TLS_ERROR)
        self.assertIsNone(sock.last_error, "reading TLS_ERROR records no failure")
        raises(self, errno.EINVAL, make_socket().get_option, TLS, c.TLS_HOSTNAME)
        no_cert = make_socket(S.CONNECTED, session=SESSION)
        raises(self, errno.ENOTCONN, no_cert.get_option, TLS, c.TLS_PEER_IDENTITY)
        raises(self, errno.ENOTCONN, no_cert.get_option, TLS, c.TLS_PEER_CERTIFICATE_CHAIN)

    def test_hostname_values(self) -> None:
        """
        Hostnames: NUL optional, ≤ 255 bytes, no NUL inside, not empty.
        """
        sock = make_socket()
        sock.set_option(TLS, c.TLS_HOSTNAME, b"example.test")
        self.assertEqual(sock.get_option(TLS, c.TLS_HOSTNAME), b"example.test\0")
        sock.set_option(TLS, c.TLS_HOSTNAME, b"a" * 255 + b"\0")
        for bad in [b"a" * 256, b"\0", b"", b"ex\0ample", b"\xff\xfe", b"two words"]:
            raises(self, errno.EINVAL, sock.set_option, TLS, c.TLS_HOSTNAME, bad)

    def test_versions_bounded_by_policy(self) -> None:
        """
        Versions: 0-3 else EINVAL; outside the policy EPROTO naming the key;
        min above max EINVAL; tightening works.
        """
        sock = make_socket()
        for bad in [INT.pack(4), INT.pack(-1), b"\x02", b"\x02\0\0\0\0\0\0\0"]:
            raises(self, errno.EINVAL, sock.set_option, TLS, c.TLS_VERSION_MIN, bad)
        failure = raises(self, errno.EPROTO, sock.set_option, TLS, c.TLS_VERSION_MIN, INT.pack(c.TLS_1_1))
        self.assertIn("min-tls-version", failure.reason)
        self.assertEqual(sock.get_option(TLS, c.TLS_ERROR), failure.reason.encode() + b"\0")
        strict = make_socket(policy=Policy(max_version=c.TLS_1_2))
        failure = raises(self, errno.EPROTO, strict.set_option, TLS, c.TLS_VERSION_MAX, INT.pack(c.TLS_1_3))
        self.assertIn("max-tls-version", failure.reason)
        sock.set_option(TLS, c.TLS_VERSION_MIN, INT.pack(c.TLS_1_3))
        raises(self, errno.EINVAL, sock.set_option, TLS, c.TLS_VERSION_MAX, INT.pack(c.TLS_1_2))
        self.assertEqual(sock.get_option(TLS, c.TLS_VERSION_MIN), INT.pack(c.TLS_1_3))
        self.assertEqual(sock.get_option(TLS, c.TLS_VERSION_MAX), INT.pack(c.TLS_1_3))

    def test_trust_anchor_values(self) -> None:
        """
        Anchors must be PEM certificates; a policy of deny refuses (EPROTO).
        """
        raises(self, errno.EINVAL, make_socket().set_option, TLS, c.TLS_TRUSTED_PEER_CERTIFICATES, b"not pem")
        pem = CertificateAuthority.create().cert_pem()
        denied = make_socket(policy=Policy(app_trust_anchors="deny"))
        failure = raises(self, errno.EPROTO, denied.set_option, TLS, c.TLS_TRUSTED_PEER_CERTIFICATES, pem)
        self.assertIn("app-trust-anchors", failure.reason)


class BoundedOptionTests(SynchronousTestCase):
    """
    Ciphers, revocation toggles and session reuse: tighten freely, never
    loosen (SPEC section 4), each refusal naming the policy key.
    """

    def test_walk(self) -> None:
        """
        Set in NEW only; get in any state (the cipher edits are set-only).
        """
        table = {
            c.TLS_DISABLE_CIPHER: (True, False), c.TLS_ENABLE_CIPHER: (True, False),
            c.TLS_TRUSTED_CIPHERS: (False, True), c.TLS_REVOCATION_CHECKS: (True, True),
            c.TLS_OCSP_STAPLED_CHECKS: (True, True), c.TLS_OCSP_CHECKS: (True, True),
            c.TLS_CRL_CHECKS: (True, True), c.TLS_CACHED_REV_CHECKS: (True, True),
            c.TLS_SESSION_REUSE: (True, True),
        }
        for name, (settable, gettable) in table.items():
            value = b"ECDHE-RSA-AES128-GCM-SHA256\0" if name in (c.TLS_DISABLE_CIPHER, c.TLS_ENABLE_CIPHER) else INT.pack(1)
            for state in STATES:
                sock = make_socket(state)
                if not settable:
                    raises(self, errno.ENOPROTOOPT, sock.set_option, TLS, name, value)
                elif state is S.NEW:
                    sock.set_option(TLS, name, value)
                else:
                    raises(self, _expect({S.NEW}, state), sock.set_option, TLS, name, value)
                if gettable:
                    self.assertTrue(sock.get_option(TLS, name))
                else:
                    raises(self, errno.ENOPROTOOPT, sock.get_option, TLS, name)

    def test_ciphers(self) -> None:
        """
        Disabling removes a cipher (OpenSSL or IANA name); enabling restores
        one the policy allows, in the policy's order; anything else fails.
        """
        sock = make_socket()
        full = sock.get_option(TLS, c.TLS_TRUSTED_CIPHERS)
        sock.set_option(TLS, c.TLS_DISABLE_CIPHER, b"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\0")
        sock.set_option(TLS, c.TLS_DISABLE_CIPHER, b"TLS_CHACHA20_POLY1305_SHA256\0")
        listed = sock.get_option(TLS, c.TLS_TRUSTED_CIPHERS).rstrip(b"\0").split(b":")
        self.assertNotIn(b"ECDHE-RSA-AES128-GCM-SHA256", listed)
        self.assertNotIn(b"TLS_CHACHA20_POLY1305_SHA256", listed)
        self.assertEqual(sock.client_config().tls12_ciphers, tuple(n for n in Policy().tls12_ciphers if n != "ECDHE-RSA-AES128-GCM-SHA256"))
        sock.set_option(TLS, c.TLS_ENABLE_CIPHER, b"ECDHE-RSA-AES128-GCM-SHA256\0")
        sock.set_option(TLS, c.TLS_ENABLE_CIPHER, b"TLS_CHACHA20_POLY1305_SHA256\0")
        self.assertEqual(sock.get_option(TLS, c.TLS_TRUSTED_CIPHERS), full)
        failure = raises(self, errno.EPROTO, sock.set_option, TLS, c.TLS_ENABLE_CIPHER, b"AES128-GCM-SHA256\0")
        self.assertIn("tlsv1.2-ciphers", failure.reason)
        raises(self, errno.EINVAL, sock.set_option, TLS, c.TLS_DISABLE_CIPHER, b"NOT-A-CIPHER\0")
        raises(self, errno.EINVAL, sock.set_option, TLS, c.TLS_ENABLE_CIPHER, b"NOT-A-CIPHER\0")
        sock.set_option(TLS, c.TLS_VERSION_MIN, INT.pack(c.TLS_1_3))
        self.assertTrue(sock.get_option(TLS, c.TLS_TRUSTED_CIPHERS).startswith(b"TLS_"))
        self.assertNotIn(b"ECDHE", sock.get_option(TLS, c.TLS_TRUSTED_CIPHERS))

    def test_revocation_and_reuse(self) -> None:
        """
        A check the policy turns on cannot be turned off; one it turns off
        may be turned on. Resumption the policy disables cannot be turned
        on; turning it off is always allowed.
        """
        checks = [
            (c.TLS_REVOCATION_CHECKS, "revocation_checks", "revocation-checks"),
            (c.TLS_OCSP_STAPLED_CHECKS, "revocation_stapled", "revocation-stapled"),
            (c.TLS_OCSP_CHECKS, "revocation_ocsp", "revocation-ocsp"),
            (c.TLS_CRL_CHECKS, "revocation_crl", "revocation-crl"),
            (c.TLS_CACHED_REV_CHECKS, "revocation_cached", "revocation-cached"),
        ]
        for name, attribute, key in checks:
            on = make_socket()
            failure = raises(self, errno.EPROTO, on.set_option, TLS, name, INT.pack(0))
            self.assertIn(key, failure.reason)
            on.set_option(TLS, name, INT.pack(1))
            off = make_socket(policy=Policy(**{attribute: False}))
            self.assertEqual(off.get_option(TLS, name), INT.pack(0))
            off.set_option(TLS, name, INT.pack(1))
            self.assertEqual(off.get_option(TLS, name), INT.pack(1))
            off.set_option(TLS, name, INT.pack(0))
            raises(self, errno.EINVAL, off.set_option, TLS, name, INT.pack(2))
        sock = make_socket()
        sock.set_option(TLS, c.TLS_SESSION_REUSE, INT.pack(0))
        self.assertEqual(sock.get_option(TLS, c.TLS_SESSION_REUSE), INT.pack(0))
        no_resume = make_socket(policy=Policy(session_resumption=False))
        failure = raises(self, errno.EPROTO, no_resume.set_option, TLS, c.TLS_SESSION_REUSE, INT.pack(1))
        self.assertIn("session-resumption", failure.reason)


class ContextTests(SynchronousTestCase):
    """
    TLS_CONTEXT and TLS_SERVER_OCSP_STAPLING.
    """

    def test_context(self) -> None:
        """
        Get (NEW) gives the 8-byte handle; set copies the settings of a
        socket of the same application and policy, and refuses others.
        """
        source = make_socket()
        source.set_option(TLS, c.TLS_VERSION_MIN, INT.pack(c.TLS_1_3))
        source.set_option(TLS, c.TLS_HOSTNAME, b"example.test\0")
        handle = source.get_option(TLS, c.TLS_CONTEXT)
        self.assertEqual(handle, struct.pack("Q", source.id))
        target = TLSSocket(2, socket.AF_INET, OWNER, Policy())
        target.lookup_context = {source.id: source}.get
        target.set_option(TLS, c.TLS_CONTEXT, handle)
        self.assertEqual((target.version_min, target.hostname), (c.TLS_1_3, "example.test"))
        self.assertEqual(target.client_config(), source.client_config())
        raises(self, errno.EINVAL, target.set_option, TLS, c.TLS_CONTEXT, struct.pack("Q", 99))
        raises(self, errno.EINVAL, target.set_option, TLS, c.TLS_CONTEXT, b"short")
        stranger = TLSSocket(3, socket.AF_INET, PeerIdentity(1, 2, 2), Policy())
        stranger.lookup_context = {source.id: source}.get
        raises(self, errno.EINVAL, stranger.set_option, TLS, c.TLS_CONTEXT, handle)
        other_policy = TLSSocket(4, socket.AF_INET, OWNER, Policy(verify_depth=3))
        other_policy.lookup_context = {source.id: source}.get
        raises(self, errno.EINVAL, other_policy.set_option, TLS, c.TLS_CONTEXT, handle)
        raises(self, errno.EOPNOTSUPP, make_socket(S.CONNECTED).get_option, TLS, c.TLS_CONTEXT)

    def test_server_ocsp_stapling(self) -> None:
        """
        Stored as 0/1 in NEW, readable in any state.
        """
        sock = make_socket()
        self.assertEqual(sock.get_option(TLS, c.TLS_SERVER_OCSP_STAPLING), INT.pack(0))
        sock.set_option(TLS, c.TLS_SERVER_OCSP_STAPLING, INT.pack(1))
        self.assertEqual(sock.get_option(TLS, c.TLS_SERVER_OCSP_STAPLING), INT.pack(1))
        raises(self, errno.EINVAL, sock.set_option, TLS, c.TLS_SERVER_OCSP_STAPLING, INT.pack(2))
        raises(self, errno.EOPNOTSUPP, make_socket(S.CONNECTED).set_option, TLS, c.TLS_SERVER_OCSP_STAPLING, INT.pack(1))
