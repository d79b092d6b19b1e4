"""
One client connection attempt: TCP connect, TLS handshake, identity check,
each bounded by the policy's timeouts, ending in exactly one outcome.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import INTERNAL_ERROR, TLSFailure, TLSTruncated
from .identity import verify_identity
from .interfaces import ITLSBackend, ITLSHandshakeListener
from .optioncheck import is_ip_literal
from .pathvalidation import check_server_chain
from .revocationcheck import check_server_revocation
from .sockets import ConnectPlan
from .tlsconfig import TLSSessionInfo
from .tlsprotocol import TLSStreamProtocol, describe_tcp_failure

log = Logger()


@implementer(ITLSHandshakeListener)
class ConnectAttempt(ClientFactory):
    """
    Connects one socket; calls exactly one of C{on_connected(protocol,
    info)} or C{on_failed(errno, reason)}, unless cancelled.
    """

    noisy = False

    def __init__(
        self,
        reactor: IReactorTCP & IReactorTime,
        backend: ITLSBackend,
        plan: ConnectPlan,
        connect_timeout: float,
        handshake_timeout: float,
        on_connected: Callable[[TLSStreamProtocol, TLSSessionInfo], None],
        on_failed: Callable[[int, str], None],
        bind_address: tuple[str, int] | None = None,
        session: object | None = None,
    ) -> None:
        """
        @param session: a session of an earlier connection to offer for
            resumption (see L{ssa.sessions}), or L{None}.
        """
        self._reactor = reactor
        self._backend = backend
        self._plan = plan
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._bind_address = bind_address
        self._session = session
        self._connector = None
        self._resolving: Deferred | None = None
        self._protocol: TLSStreamProtocol | None = None
        self._timer: IDelayedCall | None = None
        self._done = False

    def start(self) -> None:
        """
        Begin with the TCP connection.
        """
        plan = self._plan
        if is_ip_literal(plan.host):
            self._connector = self._reactor.connectTCP(
                plan.host, plan.port, self, timeout=self._connect_timeout,
                bindAddress=self._bind_address,
            )
            return
        # An AF_HOSTNAME name: resolve it, IPv4 and IPv6, and try the
        # addresses the way HostnameEndpoint does (RFC 8305).
        endpoint = HostnameEndpoint(
            self._reactor, plan.host, plan.port, timeout=self._connect_timeout,
            bindAddress=self._bind_address,
        )
        self._resolving = endpoint.connect(self)
        self._resolving.addErrback(lambda reason: self.clientConnectionFailed(None, reason))

    def cancel(self) -> None:
        """
        The application gave up (closed its socket): stop everything.
        """
        if self._done:
            return
        self._done = True
        self._stop_timer()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.abortConnection()
        elif self._connector is not None:
            self._connector.stopConnecting()
        elif self._resolving is not None:
            self._resolving.cancel()

    # ClientFactory

    def buildProtocol(self, addr: object) -> TLSStreamProtocol | None:
        """
        TCP is up: make the TLS stream with a fresh engine.
        """
        plan = self._plan
        try:
            # The name to verify goes to the engine so that it can refuse a
            # mismatch inside the handshake, with an alert; the identity is
            # checked again after it (_check_session) whatever the backend.
            extra: dict[str, object] = {"verify_name": plan.verify_name}
            if self._session is not None:
                extra["session"] = self._session
            engine = self._backend.client_engine(plan.config, plan.server_hostname, **extra)
        except Exception:
            log.failure("the {backend} backend could not make a client engine",
                        backend=self._backend.name)
            self._finish_failed(errno.ECANCELED, INTERNAL_ERROR)
            return None
        self._protocol = TLSStreamProtocol(engine, self, self._check_session)
        self._timer = self._reactor.callLater(self._handshake_timeout, self._handshake_timed_out)
        return self._protocol

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        """
        TCP failed: refused, unreachable or timed out.
        """
        self._finish_failed(
            errno.ECONNABORTED, describe_tcp_failure(reason, self._plan.host, self._plan.port)
        )

    def clientConnectionLost(self, connector: object, reason: Failure) -> None:
        """
        Reported through L{tls_connection_lost} instead.
        """

    # ITLSHandshakeListener

    def _check_session(self, info: TLSSessionInfo) -> None:
        if not _checked_in_handshake(self._protocol, self._plan.verify_name):
            verify_identity(info.peer_certificate, self._plan.verify_name)
            check_server_chain(self._plan.config, self._plan.verify_name, info)

    def tls_handshake_completed(self, info: TLSSessionInfo) -> None:
        """
        The handshake and identity check passed: the protocol reads nothing
        more (what the engine holds is the bridge's to read). Once the
        revocation check passes too (L{check_server_revocation}; it may
        wait for fetches, while the connection waits unread), the socket is
        connected and the connection is C{on_connected}'s.
        """
        assert self._protocol is not None
        self._protocol.detach()
        if self._done:
            return
        self._stop_timer()
        protocol = self._protocol
        checked = check_server_revocation(self._reactor, self._plan.config, info)
        if not checked.called:
            IPushProducer(protocol.transport).pauseProducing()
        checked.addCallbacks(lambda _: self._revocation_passed(protocol, info), self._revocation_failed)

    def _revocation_passed(self, protocol: TLSStreamProtocol, info: TLSSessionInfo) -> None:
        if self._done:
            return
        self._done = True
        self._on_connected(protocol, info)

    def _revocation_failed(self, failure: Failure) -> None:
        if self._done:
            return
        if failure.check(TLSFailure):
            reason = str(failure.value.args[0])
        else:
            log.failure("the revocation check failed", failure)
            reason = INTERNAL_ERROR
        self._finish_failed(errno.EPROTO if reason != INTERNAL_ERROR else errno.ECANCELED, reason)
        if self._protocol is not None:
            self._protocol.fail(TLSFailure(reason))

    def tls_connection_lost(self, failure: BaseException | None) -> None:
        """
        The connection ended before the handshake completed.
        """
        if isinstance(failure, (TLSFailure, TLSTruncated)):
            reason = str(failure.args[0]) if failure.args else "TLS failure"
        else:
            reason = "the connection was lost during the handshake"
        self._finish_failed(errno.EPROTO, reason)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._protocol is not None:
            self._protocol.fail(
                TLSFailure(f"the TLS handshake did not finish within {self._handshake_timeout:g} s")
            )

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _finish_failed(self, err: int, reason: str) -> None:
        if self._done:
            return
        self._done = True
        self._stop_timer()
        self._on_failed(err, reason)


def _checked_in_handshake(protocol: TLSStreamProtocol | None, name: str) -> bool:
    """
    Whether C{protocol}'s engine already checked the peer's identity for
    C{name} and its path under the connection's configuration, inside the
    handshake (C{verified_name}, optional for engines: see
    L{backends.openssl.OpenSSLEngine.verified_name}), so that doing it
    again would only repeat the same checks on the same certificates.
    """
    engine = None if protocol is None else protocol.engine
    return getattr(engine, "verified_name", None) == name
