"""
The endpoint objects that join an application's plaintext stream to its
secure connection.

The application holds one end of a Unix socketpair; the daemon holds the
other (the I{plaintext side}) and a TLS stream (the I{secure side}). Bytes
cross unchanged and in order; each side's transport is the other's
streaming producer, so a slow reader pauses a fast writer instead of
filling the daemon's memory. Half-closes travel both ways: the application's
C{shutdown(SHUT_WR)} becomes close_notify, the peer's close_notify becomes
end-of-file. A truncated or failed connection reaches the application as
C{ECONNRESET} after the bytes that did arrive.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from . import descriptors
from .interfaces import ITLSStreamListener
from .tlsconfig import TLSSessionInfo
from .tlsprotocol import TLSStreamProtocol


READ_SIZE = 1 << 18


@implementer(IHalfCloseableProtocol)
class PlaintextSide(Protocol):
    """
    The daemon's end of the application's socketpair.
    """

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def dataReceived(self, data: bytes) -> None:
        """
        The application wrote plaintext: send it securely.
        """
        self.bridge.secure.write(data)

    def readConnectionLost(self) -> None:
        """
        The application shut down writing: send close_notify.
        """
        self.bridge.application_done_writing()

    def writeConnectionLost(self) -> None:
        """
        Our writing side to the application is closed.
        """

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        The plaintext side is gone.
        """
        self.bridge.plaintext_lost()


@implementer(ITLSStreamListener)
class Bridge:
    """
    One established connection: a L{TLSStreamProtocol} and a
    L{PlaintextSide}, joined.

    @ivar secure: the TLS stream to the peer.
    @ivar plaintext: the application-side protocol, once attached.
    @ivar failure: why the connection ended, if not cleanly.
    """

    def __init__(
        self,
        secure: TLSStreamProtocol,
        app_end: int,
        on_end: Callable[[BaseException | None], None],
    ) -> None:
        """
        @param app_end: the daemon's copy of the application's descriptor,
            used only to make a failure reach the application as an error.
        @param on_end: called once when both sides are gone.
        """
        self.secure = secure
        self.plaintext: PlaintextSide | None = None
        self.failure: BaseException | None = None
        self._app_end = app_end
        self._on_end = on_end
        self._secure_gone = False
        self._plaintext_gone = False
        self._closing = False

    def attach(self, plaintext: PlaintextSide) -> None:
        """
        Join the sides once the plaintext transport exists.
        """
        self.plaintext = plaintext
        self.secure.listener = self
        secure_transport, plain_transport = self.secure.transport, plaintext.transport
        # Fewer, larger reads: the data path is bound by system calls and
        # reactor turns, not by the cipher (docs/performance.md).
        secure_transport.bufferSize = plain_transport.bufferSize = READ_SIZE
        secure_transport.registerProducer(plain_transport, True)
        plain_transport.registerProducer(secure_transport, True)

    # ITLSStreamListener

    def tls_handshake_completed(self, info: TLSSessionInfo) -> None:
        """
        Not expected: the bridge is attached after the handshake.
        """

    def tls_data_received(self, data: bytes) -> None:
        """
        Plaintext from the peer goes to the application.
        """
        assert self.plaintext is not None
        self.plaintext.transport.write(data)

    def tls_peer_closed(self) -> None:
        """
        The peer's close_notify: the application reads end-of-file.
        """
        assert self.plaintext is not None
        self._unregister_peer_producer()
        self.plaintext.transport.loseWriteConnection()

    def tls_connection_lost(self, failure: BaseException | None) -> None:
        """
        The secure side is gone; close the plaintext side, as an error if
        the end was not clean.
        """
        self._secure_gone = True
        if failure is not None and not self._closing:
            self.failure = failure
            self._signal_error()
        if self.plaintext is not None and not self._plaintext_gone:
            self._unregister_peer_producer()
            self._unregister_application_producer()
            self.plaintext.transport.loseConnection()
        self._maybe_end()

    # Flow control ends with each direction: a transport whose producer is
    # finished must not wait for it before closing.

    def _unregister_peer_producer(self) -> None:
        """
        No more data will come from the peer: the plaintext transport stops
        treating the TCP transport as its producer.
        """
        assert self.plaintext is not None
        if self.plaintext.transport.producer is not None:
            self.plaintext.transport.unregisterProducer()

    def _unregister_application_producer(self) -> None:
        """
        No more data will come from the application: the TCP transport
        stops treating the plaintext transport as its producer.
        """
        transport = self.secure.transport
        if transport is not None and transport.producer is not None:
            transport.unregisterProducer()

    def application_done_writing(self) -> None:
        """
        The application shut down writing: no more plaintext will come;
        send close_notify.
        """
        if not self._secure_gone:
            self._unregister_application_producer()
            self.secure.close_write()

    # Plaintext side

    def plaintext_lost(self) -> None:
        """
        The plaintext side is gone; close the secure side.
        """
        self._plaintext_gone = True
        if not self._secure_gone:
            self._unregister_application_producer()
            self.secure.close()
        self._maybe_end()

    def close(self) -> None:
        """
        The application closed its socket: close_notify, then close both.
        """
        if self._closing:
            return
        self._closing = True
        if not self._secure_gone:
            self._forward_unread()
            self._unregister_application_producer()
            self.secure.close()
        if self.plaintext is not None and not self._plaintext_gone:
            self._unregister_peer_producer()
            self.plaintext.transport.loseConnection()

    def _forward_unread(self) -> None:
        """
        Send what the application wrote before it closed: it is already
        queued on the daemon's end, though not yet read.
        """
        if self.plaintext is None or self._plaintext_gone:
            return
        for data in descriptors.drain(self.plaintext.transport.fileno()):
            self.secure.write(data)

    def _signal_error(self) -> None:
        """
        Make the application's next read, after the bytes already sent,
        fail with C{ECONNRESET}: the kernel does that when the daemon's end
        closes with unread data queued, so queue one byte first.
        """
        if self.plaintext is None:
            return
        transport = self.plaintext.transport
        transport.stopReading()
        # Twisted's orderly close calls shutdown() first, which the
        # application would read as a clean end-of-file before the reset.
        transport._shouldShutdown = False
        descriptors.send_byte(self._app_end)

    def _maybe_end(self) -> None:
        if self._secure_gone and self._plaintext_gone:
            self._on_end(self.failure)
