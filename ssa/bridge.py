"""
The endpoint objects that join an application's plaintext stream to its
secure connection, once the handshake is done.

The application holds one end of its plaintext stream (a Unix socketpair,
or a loopback TCP connection with the netlink frontend); the daemon holds
the other (the I{plaintext end}, a L{PlaintextSocket}) and the TCP socket
of the TLS connection (the I{secure end}). A L{Bridge} moves bytes between them through the
connection's L{ITLSEngine}, in order and unchanged, with the fewest system
calls it can: reads of L{READ_SIZE}, writes straight to the socket (no
reactor turn in between), and only what does not fit waits for the socket
to become writable. While one side holds unsent bytes the other side is
not read, so a slow reader pauses a fast writer instead of filling the
daemon's memory.

Half-closes travel both ways: the application's C{shutdown(SHUT_WR)}
becomes close_notify, the peer's close_notify becomes end-of-file. A
truncated or failed connection reaches the application as C{ECONNRESET}
after the bytes that did arrive.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import descriptors
from .edge import watcher_for
from .errors import TLSFailure, TLSTruncated
from .interfaces import ITLSEngine
from .plaintext import PlaintextSocket, reset_on_close

log = Logger()

#: Bytes read from either socket at once: the data path is bound by system
#: calls and reactor turns, not by the cipher (docs/performance.md).
READ_SIZE = 1 << 18

#: Reads per readiness event while every read fills the buffer.
READS_PER_TURN = 4

#: Seconds a closed connection may take to send what it still holds and
#: see the peer's end before it is reset.
CLOSE_LINGER = 10.0

#: Where consumed bytes go (they were peeked and sent already): one buffer
#: for every bridge of the process, which runs one at a time.
_SCRATCH = memoryview(bytearray(READ_SIZE))
_NOTHING = memoryview(b"")


def _send_after(sock: socket.socket, pending: memoryview, data: bytes) -> memoryview:
    """
    Send C{data} after the unsent C{pending} bytes: at once if nothing is
    pending, as much as the socket takes.

    @return: what is left unsent.
    @raise OSError: the socket failed (not for a full send buffer).
    """
    if pending:
        return memoryview(bytes(pending) + data)
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    return _NOTHING if sent == len(data) else memoryview(data)[sent:]


class ConnectionLostError(Exception):
    """
    The TCP connection failed after the handshake (reset, broken pipe).
    """


@implementer(IReadWriteDescriptor)
class _End:
    """
    One socket of a bridge, as the reactor sees it.
    """

    def __init__(self, sock: socket.socket, readable: Callable[[], None], writable: Callable[[], None],
                 lost: Callable[[Failure], None], name: str) -> None:
        self.socket = sock
        self.doRead = readable
        self.doWrite = writable
        self._lost = lost
        self._name = name
        self.reading = False
        self.writing = False

    def fileno(self) -> int:
        """
        The socket's descriptor (-1 once closed).
        """
        return self.socket.fileno()

    def logPrefix(self) -> str:
        """
        How the reactor names this in its log.
        """
        return self._name

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor gave up on this socket (an unexpected exception in a
        handler, or the reactor stopping).
        """
        self._lost(reason)


class Bridge:
    """
    One established connection: its engine, its TCP socket and the
    daemon's end of the application's plaintext stream.

    @ivar engine: the connection's TLS engine.
    @ivar failure: why the connection ended, if not cleanly.
    """

    def __init__(
        self,
        reactor,
        engine: ITLSEngine,
        tcp: socket.socket,
        plaintext: PlaintextSocket,
        on_end: Callable[[BaseException | None], None],
        unsent: bytes = b"",
        on_first_data: Callable[[], None] | None = None,
    ) -> None:
        """
        @param tcp: the connected, nonblocking TCP socket; the bridge owns it.
        @param plaintext: the daemon's end of the application's stream; the
            bridge owns its socket.
        @param on_end: called once when both sides are closed.
        @param unsent: ciphertext to send before anything else.
        @param on_first_data: called once, when the first data from the
            peer arrives (TLS 1.3 session tickets come before it).
        """
        self.reactor = reactor
        self.engine = engine
        self.failure: BaseException | None = None
        self._on_end = on_end
        self._on_first_data = on_first_data
        self._placeholder = plaintext.placeholder
        app = plaintext.sock
        app.setblocking(False)
        self._secure = _End(tcp, self._secure_readable, self._secure_writable, self._lost, "ssa-tls")
        self._plaintext = _End(app, self._plaintext_readable, self._plaintext_writable, self._lost,
                               "ssa-plaintext")
        self._to_peer = _NOTHING
        self._to_app = _NOTHING
        self._app_done_writing = False   # the application's EOF was read
        self._peer_done_writing = False  # close_notify read; EOF passed on once _to_app is sent
        self._tcp_eof = False
        self._tcp_write_shut = False
        self._plaintext_write_shut = False
        self._closing = False            # the application closed its socket
        self.bytes_in = 0   # plaintext from the peer
        self.bytes_out = 0  # plaintext from the application
        self._failing = False
        self._ended = False
        self._linger = None
        self._app_ready = False          # an edge came and the plaintext end may hold unread bytes
        self._read_scheduled = False
        self._edges = watcher_for(reactor)
        self._edges.watch(app.fileno(), self._plaintext_edge)
        self._send_peer(unsent)

    @property
    def tcp(self) -> socket.socket:
        """
        The connection's TCP socket (for network options).
        """
        return self._secure.socket

    def start(self, plaintext: bytes = b"", peer_closed: bool = False) -> None:
        """
        Start moving bytes.

        @param plaintext: data from the peer that arrived before the bridge
            existed (an accepted connection waiting in the listener).
        @param peer_closed: the peer's close_notify came before, too.
        """
        if plaintext:
            self.bytes_in += len(plaintext)
            self._send_app(plaintext)
        if peer_closed:
            self._peer_done_writing = True
            self._maybe_shut_plaintext()
        # What the engine holds already: records that arrived in the same
        # read as the end of the handshake, before the bridge existed.
        self._received(b"")
        self._update()

    # The application's side

    def _plaintext_edge(self) -> None:
        """
        New bytes (or the application's end) reached the plaintext end.
        """
        self._app_ready = True
        self._plaintext_readable()

    def _plaintext_readable(self) -> None:
        self._read_scheduled = False
        sock = self._plaintext.socket
        for _ in range(READS_PER_TURN):
            if not self._can_read_app():
                break
            try:
                if self._placeholder:
                    data = sock.recv(READ_SIZE, socket.MSG_PEEK)  # after the placeholder (SO_PEEK_OFF)
                    if data:
                        self._consume(sock, len(data))
                else:
                    data = sock.recv(READ_SIZE)
            except BlockingIOError:
                self._app_ready = False
                break
            except OSError:
                self._plaintext_gone()
                return
            if not data:
                self._app_ready = False
                self._application_done_writing()
                break
            self.bytes_out += len(data)
            try:
                self.engine.write(data)
            except TLSFailure as e:
                self._fail(e)
                return
            self._send_peer(self.engine.outgoing())
            # A short read may have left the end-of-file that came with the
            # same edge: read on (in this turn) until EAGAIN says drained.
        self._update()

    def _can_read_app(self) -> bool:
        return self._app_ready and self._plaintext.socket.fileno() >= 0 and not (
            self._to_peer or self._app_done_writing or self._ended or self._failing
        )

    def _consume(self, sock: socket.socket, count: int) -> None:
        """
        Take C{count} peeked bytes out of the queue: the placeholder and
        all of them but the last, which is the placeholder now.
        """
        scratch = _SCRATCH
        while count > 0:
            got = sock.recv_into(scratch, count)
            if not got:
                break
            count -= got

    def _application_done_writing(self) -> None:
        """
        The application shut down writing: close_notify, then TCP's FIN.
        """
        self._app_done_writing = True
        if self._failing:
            return
        self.engine.close_notify()
        self._send_peer(self.engine.outgoing())
        self._maybe_shut_tcp()
        self._maybe_end()

    def _plaintext_writable(self) -> None:
        try:
            sent = self._plaintext.socket.send(self._to_app)
        except BlockingIOError:
            return
        except OSError:
            self._plaintext_gone()
            return
        self._to_app = self._to_app[sent:]
        if not self._to_app:
            self._maybe_shut_plaintext()
            if self._failing:
                self._signal_error_and_close()
                return
        self._update()

    def _send_app(self, data: bytes) -> None:
        if self._plaintext.socket.fileno() < 0:
            return
        try:
            self._to_app = _send_after(self._plaintext.socket, self._to_app, data)
        except OSError:
            self._plaintext_gone()

    def _maybe_shut_plaintext(self) -> None:
        if self._peer_done_writing and not self._to_app and not self._plaintext_write_shut:
            self._plaintext_write_shut = True
            try:
                self._plaintext.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._maybe_end()

    def _plaintext_gone(self) -> None:
        """
        The application's end is closed: nothing more can be delivered.
        Close the secure side cleanly.
        """
        self._to_app = _NOTHING
        self._plaintext_write_shut = True
        self._app_done_writing = True
        self._close_secure()

    # The peer's side

    def _secure_readable(self) -> None:
        sock = self._secure.socket
        for _ in range(READS_PER_TURN):
            if self._to_app or self._tcp_eof or self._ended or self._failing:
                break
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                self._secure_lost(e)
                return
            if not data:
                self._tcp_eof = True
                if self._closing:
                    self._close_tcp()
                    return
                if not self.engine.peer_closed:
                    self._fail(TLSTruncated("the peer closed TCP without sending close_notify (truncation)"))
                    return
                self._maybe_end()
                break
            self._received(data)
            if len(data) < READ_SIZE:
                break
        self._update()

    def _received(self, data: bytes) -> None:
        engine = self.engine
        try:
            if data:
                engine.receive(data)
            plaintext = engine.read()
        except TLSFailure as e:
            self._send_peer(engine.outgoing())
            self._fail(e)
            return
        self._send_peer(engine.outgoing())
        if plaintext:
            self.bytes_in += len(plaintext)
            if self._on_first_data is not None:
                first, self._on_first_data = self._on_first_data, None
                first()
            if not self._plaintext_write_shut:
                self._send_app(plaintext)
        if engine.peer_closed and not self._peer_done_writing:
            self._peer_done_writing = True
            self._maybe_shut_plaintext()

    def _secure_writable(self) -> None:
        try:
            sent = self._secure.socket.send(self._to_peer)
        except BlockingIOError:
            return
        except OSError as e:
            self._secure_lost(e)
            return
        self._to_peer = self._to_peer[sent:]
        if not self._to_peer:
            self._maybe_shut_tcp()
            if self._closing and self._tcp_eof:
                self._close_tcp()
                return
        self._update()

    def _send_peer(self, data: bytes) -> None:
        if not data or self._secure.socket.fileno() < 0:
            return
        try:
            self._to_peer = _send_after(self._secure.socket, self._to_peer, data)
        except OSError as e:
            self._secure_lost(e)

    def _maybe_shut_tcp(self) -> None:
        if self._app_done_writing and not self._to_peer and not self._tcp_write_shut and not self._ended:
            self._tcp_write_shut = True
            try:
                self._secure.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _secure_lost(self, error: OSError) -> None:
        """
        TCP failed (reset, broken pipe): clean only after close_notify.
        """
        if self.engine.peer_closed or self._closing:
            self._to_peer = _NOTHING
            self._tcp_eof = self._tcp_write_shut = True
            if self._closing:
                self._close_tcp()
            else:
                self._maybe_end()
            return
        self._fail(TLSTruncated(f"the connection was lost without close_notify ({error.strerror})"))

    # Ends

    def close(self) -> None:
        """
        The application closed its socket: send what it wrote before, then
        close_notify, and close both sides.
        """
        if self._closing or self._ended:
            return
        self._closing = True
        if not self._failing and not self._app_done_writing:
            self._app_done_writing = True
            try:
                for data in descriptors.drain(self._plaintext.fileno(), self._placeholder):
                    self.engine.write(data)
                self.engine.close_notify()
            except TLSFailure:
                pass
            self._send_peer(self.engine.outgoing())
        self._close_plaintext()
        if self._failing:
            self._close_tcp()
            return
        self._linger_then_close()

    def abort(self) -> None:
        """
        The application is gone without closing (or the daemon stops):
        unless it had ended its stream (C{shutdown(SHUT_WR)}, after which
        this is an ordinary close), reset the connection without
        close_notify, so the peer cannot take what arrived for all of it,
        and make the application's end read C{ECONNRESET}.
        """
        if self._closing or self._ended:
            return
        if self._app_done_writing and not self._failing:
            self.close()
            return
        log.info("the application ended without closing its socket: resetting the connection")
        self._closing = True
        self._failing = True
        self._abort_tcp()
        self._close_plaintext()

    def _close_secure(self) -> None:
        """
        Close the secure side cleanly (close_notify, then close once sent).
        """
        if self._closing:
            return
        self._closing = True
        if not self._tcp_write_shut:
            self.engine.close_notify()
            self._send_peer(self.engine.outgoing())
        self._linger_then_close()

    def _linger_then_close(self) -> None:
        """
        Send what is left and FIN, then read (and drop) until the peer's
        end before closing: closing a TCP socket with unread data resets
        the connection, and the peer could lose the end of what we sent.
        Gives up after L{CLOSE_LINGER} seconds with a reset.
        """
        if self._ended or self._secure.socket.fileno() < 0:
            return
        if not self._to_peer:
            self._maybe_shut_tcp()
            if self._tcp_eof:
                self._close_tcp()
                return
        self._linger = self.reactor.callLater(CLOSE_LINGER, self._abort_tcp)
        self._update()

    def _fail(self, failure: BaseException) -> None:
        """
        Drop the connection at once; the application reads what arrived,
        then C{ECONNRESET}.
        """
        if self._failing or self._ended:
            return
        log.info("connection failed: {reason}", reason=failure)
        self._failing = True
        if not self._closing:
            self.failure = failure
        self._abort_tcp()
        if not self._to_app:
            self._signal_error_and_close()
        else:
            self._update()

    def _signal_error_and_close(self) -> None:
        """
        Close the plaintext end with its placeholder unread (or, without
        one, with a reset): the kernel makes the application's next read,
        after the bytes already sent, fail with C{ECONNRESET}.
        """
        if not self._placeholder and self._plaintext.socket.fileno() >= 0:
            reset_on_close(self._plaintext.socket)
        self._close_plaintext()

    def _lost(self, reason: Failure) -> None:
        if not self._ended:
            self._fail(reason.value if isinstance(reason.value, BaseException) else ConnectionLostError())
            self._close_plaintext()

    def _abort_tcp(self) -> None:
        reset_on_close(self._secure.socket)
        self._to_peer = _NOTHING
        self._close_tcp()

    def _close_tcp(self) -> None:
        self._tcp_eof = self._tcp_write_shut = True
        self._to_peer = _NOTHING
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        self._forget(self._secure)
        self._maybe_end()

    def _close_plaintext(self) -> None:
        self._to_app = _NOTHING
        self._app_done_writing = self._plaintext_write_shut = True
        self._forget(self._plaintext)
        self._maybe_end()

    def _forget(self, end: _End) -> None:
        if end is self._plaintext and end.socket.fileno() >= 0:
            self._edges.forget(end.socket.fileno())
        if end.reading:
            self.reactor.removeReader(end)
            end.reading = False
        if end.writing:
            self.reactor.removeWriter(end)
            end.writing = False
        end.socket.close()

    def _maybe_end(self) -> None:
        if self._ended:
            return
        secure_done = self._secure.socket.fileno() < 0 or (
            self._tcp_eof and self._tcp_write_shut and not self._to_peer
        )
        plaintext_done = self._plaintext.socket.fileno() < 0 or (
            self._app_done_writing and self._plaintext_write_shut and not self._to_app
        )
        if not (secure_done and plaintext_done):
            return
        self._ended = True
        if (self.failure is None and not self._failing and self._placeholder
                and self._plaintext.socket.fileno() >= 0):
            descriptors.take_byte(self._plaintext.socket.fileno())  # a clean end reads as one
        for end in (self._secure, self._plaintext):
            if end.socket.fileno() >= 0:
                self._forget(end)
        self._on_end(self.failure)

    # Readiness

    def _update(self) -> None:
        """
        Watch each socket for what the bridge can do with it now.
        """
        if self._ended:
            return
        secure, plaintext = self._secure, self._plaintext
        open_secure = secure.socket.fileno() >= 0
        open_plaintext = plaintext.socket.fileno() >= 0
        self._watch(secure, open_secure and not self._tcp_eof and not self._to_app and not self._failing,
                    open_secure and bool(self._to_peer))
        self._watch(plaintext, False, open_plaintext and bool(self._to_app))
        if open_plaintext and self._can_read_app() and not self._read_scheduled:
            # Edge-triggered: bytes left unread when reading stopped bring
            # no new edge, so read them on the next turn.
            self._read_scheduled = True
            self.reactor.callLater(0, self._plaintext_readable)

    def _watch(self, end: _End, read: bool, write: bool) -> None:
        reactor = self.reactor
        if read != end.reading:
            (reactor.addReader if read else reactor.removeReader)(end)
            end.reading = read
        if write != end.writing:
            (reactor.addWriter if write else reactor.removeWriter)(end)
            end.writing = write
