"""
The daemon's one TLS stream protocol: it drives any backend's
L{ITLSEngine} over a TCP transport and tells an L{ITLSHandshakeListener} what
happens. Backends differ only in their engine, so half-close, truncation
and flow control behave the same whichever backend runs.

It serves a connection until its handshake is done and the daemon has
somewhere to put its plaintext (an accepted connection may wait in its
listener, reading into a buffer); then a L{ssa.bridge.Bridge} takes the
TCP socket and the engine and this protocol is detached.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import TLSFailure, TLSTruncated
from .identity import check_readable
from .interfaces import ITLSEngine, ITLSHandshakeListener, ITLSStreamListener
from .tlsconfig import TLSSessionInfo


@implementer(IHalfCloseableProtocol)
class TLSStreamProtocol(Protocol):
    """
    TLS over one TCP connection.

    @ivar listener: who hears about the handshake, data and the end (the
        connector, or the listener's pending connection), until a bridge
        takes the connection over.
    @ivar handshake_done: whether the handshake and identity check passed.
    """

    def __init__(
        self,
        engine: ITLSEngine,
        listener: ITLSHandshakeListener,
        check_session: Callable[[TLSSessionInfo], None],
    ) -> None:
        """
        @param check_session: called with the finished handshake's info; it
            raises L{TLSFailure} to refuse the peer (the identity check).
        """
        self.engine = engine
        self.listener = listener
        self.handshake_done = False
        self._check_session = check_session
        self._failure: BaseException | None = None
        self._peer_closed_reported = False
        self._detached = False

    def detach(self) -> None:
        """
        Another object (the bridge) takes the connection and its engine:
        from now on this protocol does nothing, not even within the read
        that completed the handshake. What the engine still holds (the
        plaintext that came with the handshake's last flight, a
        close_notify) is the new owner's to read.
        """
        self._detached = True

    def connectionMade(self) -> None:
        """
        TCP is up: start the handshake.
        """
        self._receive(b"")

    def dataReceived(self, data: bytes) -> None:
        """
        Ciphertext from the peer.
        """
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        if self._failure is not None:
            return  # refused: what still arrives is not read
        engine = self.engine
        try:
            if data:
                engine.receive(data)
            if not self.handshake_done:
                done = engine.do_handshake()
                self._flush()
                if not done:
                    return
                info = self._checked_session()
                self.handshake_done = True
                self.listener.tls_handshake_completed(info)
                if self._detached:
                    return
            plaintext = engine.read()
        except TLSFailure as failure:
            self._refuse(failure)
            return
        self._flush()
        if not plaintext and not engine.peer_closed:
            return
        reader = ITLSStreamListener(self.listener)
        if plaintext:
            reader.tls_data_received(plaintext)
        if engine.peer_closed and not self._peer_closed_reported:
            self._peer_closed_reported = True
            reader.tls_peer_closed()

    def _checked_session(self) -> TLSSessionInfo:
        """
        The finished handshake's info, once the peer's leaf certificate
        can be parsed and C{check_session} accepts it.

        @raise TLSFailure: it cannot or does not; whatever the certificate
            holds, nothing else is raised.
        """
        try:
            info = self.engine.session_info()
            # An engine that verified the peer inside the handshake checked
            # its leaf readable there (verify_identity does).
            if info.peer_certificate is not None and getattr(self.engine, "verified_name", None) is None:
                check_readable(info.peer_certificate)
            self._check_session(info)
        except TLSFailure:
            raise
        except Exception as e:
            raise TLSFailure(f"the peer's certificate cannot be parsed: {e}") from e
        return info

    def _refuse(self, failure: TLSFailure) -> None:
        """
        End the connection because of C{failure}: send what the engine
        queued (the alert telling the peer why, e.g. unknown_ca), then
        close TCP after it; during the handshake the owner's timeout
        bounds the wait (L{fail} aborts). Established connections are
        aborted at once, as before.
        """
        try:
            self._flush()
        except Exception:
            pass
        if self.handshake_done or self._failure is not None:
            self.fail(failure)
            return
        self._failure = failure
        self.transport.loseConnection()

    def _flush(self) -> None:
        out = self.engine.outgoing()
        if out:
            self.transport.write(out)

    def fail(self, failure: BaseException) -> None:
        """
        Drop the connection at once because of C{failure}, which the
        listener gets in L{ITLSHandshakeListener.tls_connection_lost}.
        """
        if self._failure is None:
            self._failure = failure
        self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        """
        The peer ended TCP's sending side: clean only after close_notify.
        """
        if not self.handshake_done:
            self.fail(TLSFailure("the peer closed the connection during the handshake"))
        elif not self.engine.peer_closed:
            self.fail(TLSTruncated("the peer closed TCP without sending close_notify (truncation)"))

    def writeConnectionLost(self) -> None:
        """
        Our sending side is closed; nothing more to do.
        """

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        TCP is gone: tell the listener whether that was clean.
        """
        failure = self._failure
        if failure is None:
            if not self.handshake_done:
                failure = TLSFailure("the peer closed the connection during the handshake")
            elif not self.engine.peer_closed:
                why = "connection closed" if reason is None else reason.getErrorMessage()
                failure = TLSTruncated(f"the connection was lost without close_notify ({why})")
        self.listener.tls_connection_lost(failure)


def describe_tcp_failure(reason: Failure, host: str, port: int) -> str:
    """
    Say in words why a TCP connection to C{host}:C{port} failed.
    """
    from twisted.internet import error

    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if reason.check(error.ConnectionRefusedError):
        return f"TCP connection to {where} refused"
    if reason.check(error.TimeoutError, error.TCPTimedOutError):
        return f"TCP connection to {where} timed out"
    if reason.check(error.NoRouteError):
        return f"no route to {where} (host unreachable)"
    if reason.check(error.DNSLookupError):
        return f"cannot resolve {host}"
    return f"TCP connection to {where} failed: {reason.getErrorMessage()}"
