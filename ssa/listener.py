"""
A listening socket's network side: it accepts TCP connections, runs each
server handshake under a timeout, and queues the connections whose
handshake (and client-certificate check) succeeded until the application
accepts them. Nothing that failed or stalled ever reaches the queue.
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from .errors import TLSFailure
from .interfaces import IMetrics, ITLSBackend, ITLSStreamListener
from .metrics import reason_class
from .pathvalidation import check_client_chain
from .stapling import Stapler
from .tlsconfig import ServerTLSConfig, TLSSessionInfo
from .tlsprotocol import TLSStreamProtocol

log = Logger()


@implementer(ITLSStreamListener)
class PendingConnection:
    """
    One incoming connection, from TCP accept until the application takes
    it; after its handshake it stops reading and keeps what arrived.

    @ivar peer: the client's C{(host, port)}.
    @ivar session: what its handshake negotiated, once done.
    @ivar buffered: plaintext that arrived with the end of the handshake.
    @ivar peer_closed: whether its close_notify arrived before delivery.
    """

    def __init__(self, listener: Listener, peer: tuple[str, int]) -> None:
        self.listener = listener
        self.peer = peer
        self.protocol: TLSStreamProtocol | None = None
        self.session: TLSSessionInfo | None = None
        self.buffered: list[bytes] = []
        self.peer_closed = False
        self.timer: IDelayedCall | None = None

    def tls_handshake_completed(self, info: TLSSessionInfo) -> None:
        """
        Ready for the application: stop reading and queue.
        """
        self._stop_timer()
        self.session = info
        assert self.protocol is not None
        self.protocol.transport.pauseProducing()
        self.listener._ready(self)

    def tls_data_received(self, data: bytes) -> None:
        """
        Keep data that came with the handshake's last flight.
        """
        self.buffered.append(data)

    def tls_peer_closed(self) -> None:
        """
        Remember a close_notify that came before delivery.
        """
        self.peer_closed = True

    def tls_connection_lost(self, failure: BaseException | None) -> None:
        """
        Gone before delivery: never reaches the application.
        """
        self._stop_timer()
        self.listener._lost(self, failure)

    def timed_out(self) -> None:
        """
        The handshake took too long: drop the client.
        """
        self.timer = None
        if self.protocol is not None:
            self.protocol.fail(TLSFailure("the client did not finish its handshake in time"))

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class Listener(Factory):
    """
    The network side of one listening socket.

    @ivar ready: connections whose handshake succeeded, oldest first.
    @ivar handshaking: connections still in their handshake.
    @ivar metrics: where failed server handshakes are counted, if set.
    """

    noisy = False
    metrics: IMetrics | None = None
    stapler: Stapler | None = None

    def __init__(
        self,
        reactor,
        backend: ITLSBackend,
        config: ServerTLSConfig,
        backlog: int,
        handshake_timeout: float,
        on_ready: Callable[[], None],
        on_unready: Callable[[], None],
    ) -> None:
        """
        @param on_ready: called after a connection joins L{ready}.
        @param on_unready: called after a queued connection is lost.
        """
        self.reactor = reactor
        self.backend = backend
        self.config = config
        self.backlog = max(1, backlog)
        self.handshake_timeout = handshake_timeout
        self.ready: deque[PendingConnection] = deque()
        self.handshaking: set[PendingConnection] = set()
        self.port = None
        self._on_ready = on_ready
        self._on_unready = on_unready
        self._paused = False

    def start(self, bound: socket.socket) -> tuple[str, int]:
        """
        Listen on the already bound C{bound}, which the reactor takes over;
        with OCSP stapling, start fetching the staples.

        @return: the address listened on.
        @raise OSError: C{EPROTO} if the backend cannot staple (C{bound}
            is closed then).
        """
        if self.config.ocsp_stapling:
            try:
                self.backend.server_engine(self.config)
            except TLSFailure as e:
                bound.close()
                raise OSError(errno.EPROTO, str(e.args[0])) from None
        bound.listen(self.backlog)
        bound.setblocking(False)
        address = bound.getsockname()[:2]
        self.port = self.reactor.adoptStreamPort(bound.fileno(), bound.family, self)
        bound.close()
        if self.config.ocsp_stapling:
            self.stapler = Stapler(self.reactor, self.config.credentials, self.config.ocsp_timeout).start()
        return address

    def buildProtocol(self, addr) -> TLSStreamProtocol | None:
        """
        A client connected over TCP: start its handshake.
        """
        if len(self.handshaking) >= 4 * self.backlog + 64:
            return None
        pending = PendingConnection(self, (addr.host, addr.port))
        try:
            engine = self.backend.server_engine(self.config)
        except Exception:
            log.failure("the {backend} backend could not make a server engine", backend=self.backend.name)
            return None
        config = self.config
        pending.protocol = TLSStreamProtocol(engine, pending, lambda info: check_client_chain(config, info))
        pending.timer = self.reactor.callLater(self.handshake_timeout, pending.timed_out)
        self.handshaking.add(pending)
        if len(self.handshaking) + len(self.ready) >= self.backlog and not self._paused:
            # The backlog is full: leave further clients in the kernel's
            # queue until accept() or a failed handshake makes room.
            self._paused = True
            self.port.stopReading()
        return pending.protocol

    def _resume_if_room(self) -> None:
        if self._paused and self.port is not None and len(self.handshaking) + len(self.ready) < self.backlog:
            self._paused = False
            self.port.startReading()

    def take(self) -> PendingConnection | None:
        """
        The oldest ready connection, or L{None}.
        """
        if not self.ready:
            return None
        pending = self.ready.popleft()
        self._resume_if_room()
        return pending

    def close(self) -> Deferred | None:
        """
        Stop listening and drop every connection not yet delivered.

        @return: fires once the listening socket is closed (Twisted closes
            a port on a later turn), or L{None} if it was not listening.
        """
        stopped = None
        if self.stapler is not None:
            self.stapler.stop()
            self.stapler = None
        if self.port is not None:
            stopped = self.port.stopListening()
            self.port = None
        for pending in list(self.ready) + list(self.handshaking):
            pending._stop_timer()
            if pending.protocol is not None and pending.protocol.transport is not None:
                pending.protocol.transport.abortConnection()
        self.ready.clear()
        self.handshaking.clear()
        return stopped

    def _ready(self, pending: PendingConnection) -> None:
        self.handshaking.discard(pending)
        self.ready.append(pending)
        self._on_ready()

    def _lost(self, pending: PendingConnection, failure: BaseException | None) -> None:
        self.handshaking.discard(pending)
        self._resume_if_room()
        if pending in self.ready:
            self.ready.remove(pending)
            self._on_unready()
        elif pending.session is None and failure is not None:
            reason = str(failure.args[0]) if failure.args else repr(failure)
            if self.metrics is not None:
                self.metrics.connection("server", "failed", reason_class(errno.EPROTO, reason), None, False)
            log.info("server handshake with {peer} failed: {reason}", peer=pending.peer,
                     reason=reason, role="server", outcome="failed", remote=f"{pending.peer[0]}:{pending.peer[1]}")
