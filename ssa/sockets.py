"""
One SSA socket as a state machine, without I/O (SPEC sections 3 and 4).

A L{TLSSocket} knows its state, its options and its last failure, and
decides every call's outcome; the daemon does the I/O and reports back with
L{TLSSocket.connect_succeeded} or L{TLSSocket.connect_failed}.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from . import netoptions
from .constants import AF_HOSTNAME, IPPROTO_TLS, TLS_ERROR, SocketState
from .crls import NO_CRLS, Revocation
from .errors import SSAError
from .optioncheck import is_ip_literal
from .options import ANY, INT, RULES, U64, OptionRule, decode_int
from .peer import PeerIdentity
from .policy import Policy
from .tlsconfig import ClientTLSConfig, Credential, ServerTLSConfig, TLSSessionInfo, chain_pem

S = SocketState
FAMILIES = {socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6", AF_HOSTNAME: "AF_HOSTNAME"}


@dataclass(frozen=True)
class ConnectPlan:
    """
    What the daemon must do to connect a socket.

    @ivar host: the IP address (or, for C{AF_HOSTNAME}, the name) to reach.
    @ivar port: the TCP port.
    @ivar server_hostname: the name sent as SNI, or L{None}.
    @ivar verify_name: the DNS name or IP address the certificate must match.
    @ivar config: the TLS settings for the backend.
    """

    host: str
    port: int
    server_hostname: str | None
    verify_name: str
    config: ClientTLSConfig


def check_socket_args(family: int, type_: int, proto: int) -> None:
    """
    Validate C{socket()}'s arguments (SPEC section 3).

    @raise SSAError: ESOCKTNOSUPPORT, EPROTONOSUPPORT or EAFNOSUPPORT.
    """
    if type_ == 0:
        raise SSAError(errno.ESOCKTNOSUPPORT, "socket type 0 is not a socket type")
    if type_ != socket.SOCK_STREAM:
        raise SSAError(errno.EPROTONOSUPPORT, "IPPROTO_TLS works only with SOCK_STREAM")
    if proto not in (0, IPPROTO_TLS):
        raise SSAError(errno.EPROTONOSUPPORT, f"protocol {proto} is not IPPROTO_TLS")
    if family not in FAMILIES:
        raise SSAError(
            errno.EAFNOSUPPORT, f"address family {family} is not AF_INET, AF_INET6 or AF_HOSTNAME"
        )


class TLSSocket:
    """
    The daemon's record of one application socket.

    @ivar id: the socket's 8-byte id (C{TLS_ID}).
    @ivar family: its address family.
    @ivar owner: the application that opened it.
    @ivar policy: the policy it was opened under.
    @ivar state: its L{SocketState}.
    @ivar hostname: C{TLS_HOSTNAME}, or L{None}.
    @ivar trust_anchors: PEM of C{TLS_TRUSTED_PEER_CERTIFICATES}, or L{None}.
    @ivar version_min: C{TLS_VERSION_MIN}.
    @ivar version_max: C{TLS_VERSION_MAX}.
    @ivar bound_address: C{(host, port)} after a successful bind.
    @ivar remote_address: C{(host, port)} once connecting.
    @ivar session: what the handshake negotiated, once connected.
    @ivar last_error: C{TLS_ERROR}: the last failure's reason.
    @ivar pending_error: C{SO_ERROR}: a nonblocking connect's outcome.
    @ivar session_reuse: C{TLS_SESSION_REUSE}: whether to resume sessions.
    @ivar session_ttl: C{TLS_SESSION_TTL}: seconds this socket's session
        may be resumed later; 0: never.
    """

    def __init__(self, socket_id: int, family: int, owner: PeerIdentity, policy: Policy) -> None:
        self.id = socket_id
        self.family = family
        self.owner = owner
        self.policy = policy
        self.state = S.NEW
        self.hostname: str | None = None
        self.trust_anchors: bytes | None = None
        self.version_min = policy.min_version
        self.version_max = policy.max_version
        self.bound_address: tuple[str, int] | None = None
        self.remote_address: tuple[str, int] | None = None
        self.session: TLSSessionInfo | None = None
        self.last_error: str | None = None
        self.pending_error = 0
        self.network_options: dict[tuple[int, int], int] = {}
        self.server_ocsp_stapling = False
        self.lookup_context: Callable[[int], TLSSocket | None] = lambda socket_id: None
        self.chains: dict[str, tuple[x509.Certificate, ...]] = {}
        self.keys: dict[str, bytes] = {}
        self.request_peer_auth = False
        self.alpn: tuple[str, ...] = ()
        self.tls12_ciphers = policy.tls12_ciphers
        self.tls13_ciphers = policy.tls13_ciphers
        self.session_reuse = policy.session_resumption
        self.session_ttl = policy.session_timeout
        self.revocation_checks = policy.revocation_checks
        self.revocation_stapled = policy.revocation_stapled
        self.revocation_ocsp = policy.revocation_ocsp
        self.revocation_crl = policy.revocation_crl
        self.revocation_cached = policy.revocation_cached

    def __repr__(self) -> str:
        return f"<TLSSocket {self.id:#018x} {self.state.value} {self.owner.describe()}>"

    def fail(self, err: int, reason: str, state: SocketState | None = None) -> SSAError:
        """
        Record a failure as C{TLS_ERROR}, optionally change state, and
        return the exception for the caller to raise.
        """
        self.last_error = reason
        if state is not None:
            self.state = state
        return SSAError(err, reason)

    def _check_state(self, allowed: frozenset[SocketState], what: str) -> None:
        if self.state in allowed:
            return
        if self.state is S.ERROR:
            raise self.fail(
                errno.EBADFD, f"{what}: the socket failed an earlier operation and is unusable"
            )
        raise self.fail(errno.EOPNOTSUPP, f"{what}: not allowed on a {self.state.value} socket")

    # Options

    def set_option(self, level: int, name: int, value: bytes) -> None:
        """
        C{setsockopt}: apply a wire value, or raise L{SSAError}.
        """
        if level != IPPROTO_TLS:
            self._check_network_option(level, name)
            try:
                number = decode_int(netoptions.NAMES[level, name], value)
                netoptions.check(level, name, number)
            except SSAError as e:
                raise self.fail(e.errno, e.reason) from None
            self.network_options[level, name] = number
            return
        rule = self._rule(level, name)
        if rule.setter is None:
            raise self.fail(errno.ENOPROTOOPT, f"{rule.name} can be read but not set")
        self._check_state(rule.set_states, f"setsockopt({rule.name})")
        try:
            rule.setter(self, value)
        except SSAError as e:
            raise self.fail(e.errno, e.reason) from None

    def get_option(self, level: int, name: int) -> bytes:
        """
        C{getsockopt}: the option's wire value, or raise L{SSAError}.
        """
        if level == socket.SOL_SOCKET and name == socket.SO_ERROR:
            pending, self.pending_error = self.pending_error, 0
            return INT.pack(pending)
        if level != IPPROTO_TLS:
            self._check_network_option(level, name)
            return INT.pack(self.network_options.get((level, name), 0))
        rule = self._rule(level, name)
        if rule.getter is None:
            raise self.fail(errno.ENOPROTOOPT, f"{rule.name} can be set but not read")
        self._check_state(rule.get_states, f"getsockopt({rule.name})")
        try:
            return rule.getter(self)
        except SSAError as e:
            if name == TLS_ERROR:
                raise
            raise self.fail(e.errno, e.reason) from None

    # Settings shared through TLS_CONTEXT: everything an application can
    # set that shapes the TLS connection (not its identity or addresses).
    SHARED_SETTINGS = (
        "hostname", "trust_anchors", "version_min", "version_max", "tls12_ciphers", "tls13_ciphers",
        "alpn", "session_reuse", "session_ttl", "revocation_checks", "revocation_stapled",
        "revocation_ocsp", "revocation_crl", "revocation_cached", "request_peer_auth",
        "server_ocsp_stapling",
    )

    def context_from_wire(self, value: bytes) -> None:
        """
        C{setsockopt(TLS_CONTEXT)}: copy the settings of the socket whose
        C{TLS_CONTEXT} handle C{value} is (one of the same application,
        under the same policy); the daemon-wide session cache then serves
        both, since their settings are equal.
        """
        if len(value) != U64.size:
            raise SSAError(errno.EINVAL, f"TLS_CONTEXT: expected an {U64.size}-byte handle")
        (handle,) = U64.unpack(value)
        source = self.lookup_context(handle)
        if source is None or source.owner.uid != self.owner.uid:
            raise SSAError(errno.EINVAL, f"TLS_CONTEXT: {handle:#x} is not a socket of this application")
        if source.policy != self.policy:
            raise SSAError(errno.EINVAL, "TLS_CONTEXT: that socket runs under another policy")
        for name in self.SHARED_SETTINGS:
            setattr(self, name, getattr(source, name))
        self.network_options = dict(source.network_options)
        self.chains, self.keys = dict(source.chains), dict(source.keys)

    def _check_network_option(self, level: int, name: int) -> None:
        try:
            netoptions.check(level, name, 0)
        except SSAError as e:
            raise self.fail(e.errno, e.reason) from None
        self._check_state(ANY - {S.ERROR}, f"option {netoptions.NAMES[level, name]}")

    def _rule(self, level: int, name: int) -> OptionRule:
        if level != IPPROTO_TLS:
            raise self.fail(
                errno.ENOPROTOOPT, f"option {name} at level {level} is not supported on SSA sockets"
            )
        rule = RULES.get(name)
        if rule is None:
            raise self.fail(errno.ENOPROTOOPT, f"unknown or unsupported TLS option {name}")
        return rule

    # Operations

    def check_bind(self, address: tuple[int, str, int]) -> tuple[str, int]:
        """
        Validate C{bind(address)} before the daemon binds for real.

        @return: the C{(host, port)} to bind.
        """
        if self.state in (S.CONNECTING, S.CONNECTED, S.DISCONNECTED, S.LISTENING):
            # as TCP and the original (SPEC section 3): the address is taken
            raise self.fail(errno.EINVAL, f"bind: the socket is already {self.state.value.lower()}")
        self._check_state(frozenset({S.NEW}), "bind")
        if self.bound_address is not None:
            raise self.fail(errno.EINVAL, f"bind: the socket is already bound to {self.bound_address}")
        return self._check_address("bind", address)

    def bound(self, host: str, port: int) -> None:
        """
        The daemon's bind succeeded.
        """
        self.bound_address = (host, port)

    def check_listen(self) -> ServerTLSConfig:
        """
        Validate C{listen()}: only a NEW socket with a certificate and its
        key may listen.

        @return: the TLS settings its accepted connections will use.
        """
        if self.state in (S.CONNECTED, S.DISCONNECTED, S.CONNECTING):
            raise self.fail(errno.EOPNOTSUPP, "listen: the socket is connected or connecting")
        self._check_state(frozenset({S.NEW}), "listen")
        if not self.keys:
            raise self.fail(
                errno.EPROTO,
                "listen: no certificate and private key are available "
                "(set TLS_CERTIFICATE_CHAIN and TLS_PRIVATE_KEY)",
            )
        return self.server_config()

    def listening(self, host: str, port: int) -> None:
        """
        The daemon listens: the socket is a listener bound to C{(host, port)}.
        """
        self.bound_address = (host, port)
        self.state = S.LISTENING

    def server_config(self) -> ServerTLSConfig:
        """
        The TLS settings of this socket's accepted connections.
        """
        policy = self.policy
        return ServerTLSConfig(
            credentials=tuple(
                Credential(chain_pem(self.chains[slot]), key) for slot, key in sorted(self.keys.items())
            ),
            min_version=self.version_min,
            max_version=self.version_max,
            tls12_ciphers=self.tls12_ciphers,
            tls13_ciphers=self.tls13_ciphers,
            require_client_certificate=self.request_peer_auth,
            client_anchors=self.trust_anchors if self.trust_anchors is not None else policy.trust_anchors,
            verify_depth=policy.verify_depth,
            alpn=self.alpn,
            session_timeout=self.session_ttl if self.resumes_sessions else 0,
            path_validation=policy.path_validation,
            revocation=self.client_certificate_revocation(),
            ocsp_stapling=self.server_ocsp_stapling,
            ocsp_timeout=policy.revocation_timeout,
        )

    def accepted_from(self, listener: TLSSocket, peer: tuple[str, int], session: TLSSessionInfo) -> None:
        """
        This socket is a connection C{listener} accepted from C{peer}.
        """
        self.remote_address = peer
        self.bound_address = listener.bound_address
        self.hostname = session.server_name
        self.request_peer_auth = listener.request_peer_auth
        self.network_options = dict(listener.network_options)
        self.connect_succeeded(session)

    def start_connect(self, address: tuple[int, str, int]) -> ConnectPlan:
        """
        C{connect(address)}: check everything, move to CONNECTING, and say
        what the daemon must do.

        @raise SSAError: with the SPEC's errno; an unusable address changes
            nothing, a missing identity to verify leaves the socket in ERROR.
        """
        if self.state is S.CONNECTING:
            raise self.fail(errno.EALREADY, "connect: a connection attempt is already in progress")
        if self.state in (S.CONNECTED, S.DISCONNECTED):
            raise self.fail(errno.EOPNOTSUPP, "connect: the socket is already connected")
        self._check_state(frozenset({S.NEW}), "connect")
        host, port = self._check_address("connect", address)
        if self.family == AF_HOSTNAME and self.hostname is None:
            self.hostname = host
        if self.hostname is not None:
            server_hostname: str | None = self.hostname
            verify_name = self.hostname
            if is_ip_literal(self.hostname):
                server_hostname = None
        elif self.policy.verify_ip_addresses:
            server_hostname, verify_name = None, host
        else:
            raise self.fail(
                errno.EPROTO,
                f"connect: no hostname to verify {host} against: set TLS_HOSTNAME "
                "(the policy does not allow verifying IP addresses)",
                S.ERROR,
            )
        self.state = S.CONNECTING
        self.remote_address = (host, port)
        return ConnectPlan(host, port, server_hostname, verify_name, self.client_config())

    @property
    def resumes_sessions(self) -> bool:
        """
        Whether this socket offers and keeps sessions for resumption.
        """
        return self.session_reuse and self.session_ttl > 0

    def client_config(self) -> ClientTLSConfig:
        """
        The TLS settings this socket's options and policy add up to.
        """
        policy = self.policy
        anchors, system = policy.trust_anchors, policy.trust_anchors is None
        if self.trust_anchors is not None:
            if policy.app_trust_anchors == "add":
                anchors = (anchors or b"") + self.trust_anchors
            else:
                anchors, system = self.trust_anchors, False
        return ClientTLSConfig(
            min_version=self.version_min,
            max_version=self.version_max,
            tls12_ciphers=self.tls12_ciphers,
            tls13_ciphers=self.tls13_ciphers,
            trust_anchors=anchors,
            use_system_store=system,
            verify_depth=policy.verify_depth,
            alpn=self.alpn,
            path_validation=policy.path_validation,
            revocation=self.revocation(),
        )

    def revocation(self) -> Revocation | None:
        """
        How this socket's peer is checked for revocation (the methods its
        options leave on, see L{ssa.revocationcheck}), or L{None} when its
        revocation checks are off.
        """
        if not self.revocation_checks:
            return None
        policy = self.policy
        return Revocation(
            (policy.crls or NO_CRLS) if self.revocation_crl else NO_CRLS,
            hard_fail=policy.revocation_mode == "hard-fail", stapled=self.revocation_stapled,
            ocsp=self.revocation_ocsp, crl=self.revocation_crl, cached=self.revocation_cached,
            timeout=policy.revocation_timeout,
        )

    def client_certificate_revocation(self) -> Revocation | None:
        """
        How client certificates are checked for revocation (server role):
        by the CRLs of C{crl-path} alone, when revocation and CRL checks
        are both on; else L{None}.
        """
        revocation = self.revocation()
        return revocation if revocation is not None and revocation.crl else None

    def connect_succeeded(self, session: TLSSessionInfo) -> None:
        """
        The daemon connected: TCP, handshake and every check passed.
        """
        self.session = session
        self.state = S.CONNECTED

    def connect_failed(self, err: int, reason: str) -> SSAError:
        """
        The daemon could not connect; the socket is unusable from now on.
        """
        self.pending_error = err
        return self.fail(err, reason, S.ERROR)

    def disconnected(self) -> None:
        """
        The secure connection ended after it had been established.
        """
        if self.state is S.CONNECTED:
            self.state = S.DISCONNECTED

    def close(self) -> None:
        """
        C{close()}: the socket is gone.
        """
        self.state = S.CLOSED

    def _check_address(self, what: str, address: tuple[int, str, int]) -> tuple[str, int]:
        family, host, port = address
        if family == socket.AF_UNSPEC:
            raise self.fail(errno.EAFNOSUPPORT, f"{what}: address family AF_UNSPEC")
        if family != self.family and not (self.family == AF_HOSTNAME and family in FAMILIES):
            raise self.fail(
                errno.EAFNOSUPPORT,
                f"{what}: a {FAMILIES.get(family, family)} address on a "
                f"{FAMILIES[self.family]} socket",
            )
        if not 0 <= port <= 65535:
            raise self.fail(errno.EINVAL, f"{what}: port {port} is out of range")
        if family != AF_HOSTNAME and not is_ip_literal(host):
            raise self.fail(errno.EINVAL, f"{what}: {host!r} is not an IP address")
        return host, port

