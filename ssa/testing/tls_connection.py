"""
One TLS connection driven by hand: L{ssl.SSLObject} over a blocking socket.

Because the TLS state machine is fed through L{ssl.MemoryBIO}s, the owner
decides exactly what goes on the wire and when: a close_notify alert with
or without a TCP FIN, a bare TCP close (truncation), or a TCP reset.  The
same class serves both ends: L{StdlibTLSServer
<ssa.testing.tls_server.StdlibTLSServer>} wraps accepted sockets in it, and
L{TLSPeerConnection.client} connects out.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509

__all__ = ["TLSPeerConnection", "TruncatedError"]

_CHUNK = 65536
_T = TypeVar("_T")


class TruncatedError(ConnectionError):
    """The peer closed TCP without sending a TLS close_notify first."""


class TLSPeerConnection:
    """
    A blocking TLS connection with explicit control over closing.

    Handshake details (L{version}, L{cipher}, L{peer_certificate},
    L{alpn_protocol}, L{server_name}) are captured when the handshake
    completes and stay readable after the connection is closed.

    Not generally thread-safe, but one thread may send (L{sendall}) while
    another receives (L{recv} and friends); the TLS object is locked and
    records are sent in order.

    @ivar close_notify_sent: whether we have sent close_notify.
    @ivar close_notify_received: whether the peer's close_notify arrived.
    @ivar closed: whether the socket has been closed.
    @ivar handshake_error: set by L{StdlibTLSServer
        <ssa.testing.tls_server.StdlibTLSServer>} if the handshake failed.
    @ivar handler_error: set by the server if its handler raised.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        """
        Wrap a connected socket; no I/O happens until L{do_handshake}.

        @param sock: a connected blocking socket (its timeout applies to
            every read and write).
        @param context: the TLS configuration.
        @param server_side: which end of the handshake to play.
        @param server_hostname: SNI and hostname to check, client side only.
        """
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname,
        )
        self._plain = bytearray()
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._eof_seen = False
        self.close_notify_sent = False
        self.close_notify_received = False
        self.closed = False
        self.handshake_error: BaseException | None = None
        self.handler_error: BaseException | None = None
        self._server_name = None if server_side else server_hostname
        self._version: str | None = None
        self._cipher: str | None = None
        self._peer_der: bytes | None = None
        self._alpn: str | None = None

    @classmethod
    def client(
        cls,
        address: tuple[str, int],
        context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float = 10.0,
    ) -> TLSPeerConnection:
        """Connect to C{address}, complete the handshake and return the connection."""
        sock = socket.create_connection(address, timeout=timeout)
        conn = cls(sock, context, server_side=False,
                   server_hostname=server_hostname)
        try:
            conn.do_handshake()
        except BaseException:
            conn.abort()
            raise
        return conn

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The underlying L{ssl.SSLObject}, for anything not wrapped here."""
        return self._ssl

    @property
    def socket(self) -> socket.socket:
        """The underlying TCP socket."""
        return self._sock

    @property
    def version(self) -> str | None:
        """The negotiated protocol version, e.g. C{"TLSv1.3"}."""
        return self._version

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite name."""
        return self._cipher

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's (verified) leaf certificate, if it sent one."""
        if self._peer_der is None:
            return None
        return x509.load_der_x509_certificate(self._peer_der)

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol selected in the handshake, if any."""
        return self._alpn

    @property
    def server_name(self) -> str | None:
        """The SNI name: as sent by the client (server side) or requested."""
        return self._server_name

    def _ssl_call(self, operation: Callable[..., _T], *args: Any) -> _T:
        """
        Run an L{ssl.SSLObject} operation under the lock, then send whatever
        it produced.  The send lock is taken before the SSL lock is released,
        so records reach the wire in the order they were made even when one
        thread sends while another receives.
        """
        self._ssl_lock.acquire()
        try:
            return operation(*args)
        finally:
            data = self._outgoing.read()
            if data:
                self._send_lock.acquire()
            self._ssl_lock.release()
            if data:
                try:
                    self._sock.sendall(data)
                finally:
                    self._send_lock.release()

    def _fill(self) -> None:
        data = self._sock.recv(_CHUNK)
        with self._ssl_lock:
            if data:
                self._incoming.write(data)
            else:
                self._eof_seen = True
                self._incoming.write_eof()

    def do_handshake(self) -> None:
        """Run the TLS handshake to completion (raises L{ssl.SSLError} on failure)."""
        while True:
            try:
                self._ssl_call(self._ssl.do_handshake)
            except ssl.SSLWantReadError:
                self._fill()
            except ssl.SSLEOFError as e:
                raise TruncatedError("TCP closed during the handshake") from e
            else:
                break
        self._version = self._ssl.version()
        cipher = self._ssl.cipher()
        self._cipher = cipher[0] if cipher else None
        self._peer_der = self._ssl.getpeercert(binary_form=True)
        self._alpn = self._ssl.selected_alpn_protocol()

    def _set_server_name(self, name: str | None) -> None:
        """Record the SNI name (called from the server's SNI callback)."""
        self._server_name = name

    def recv(self, n: int = _CHUNK) -> bytes:
        """
        Read up to C{n} bytes of application data.

        @return: data, or C{b""} once the peer's close_notify has arrived.
        @raise TruncatedError: TCP was closed without close_notify.
        """
        with self._ssl_lock:
            if self._plain:
                data = bytes(self._plain[:n])
                del self._plain[:n]
                return data
        while True:
            try:
                data = self._ssl_call(self._ssl.read, n)
            except ssl.SSLWantReadError:
                self._fill()
                continue
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLEOFError as e:
                raise TruncatedError(
                    "peer closed TCP without sending close_notify"
                ) from e
            if not data:
                self.close_notify_received = True
            return data

    def recv_exactly(self, n: int) -> bytes:
        """
        Read exactly C{n} bytes.

        @raise EOFError: close_notify arrived first.
        @raise TruncatedError: TCP closed without close_notify first.
        """
        chunks = bytearray()
        while len(chunks) < n:
            data = self.recv(min(n - len(chunks), _CHUNK))
            if not data:
                raise EOFError(f"close_notify after {len(chunks)} of {n} bytes")
            chunks += data
        return bytes(chunks)

    def recv_until_eof(self) -> bytes:
        """Read until close_notify (L{TruncatedError} on a bare TCP close)."""
        chunks = bytearray()
        while True:
            data = self.recv()
            if not data:
                return bytes(chunks)
            chunks += data

    def sendall(self, data: bytes) -> None:
        """
        Encrypt and send all of C{data}.

        One thread may call this while another is in L{recv}.
        """
        view = memoryview(data)
        for offset in range(0, len(view), _CHUNK):
            chunk = view[offset:offset + _CHUNK]
            while chunk:
                try:
                    written = self._ssl_call(self._ssl.write, chunk)
                except ssl.SSLWantReadError:  # renegotiation, TLS 1.2 only
                    self._fill()
                    continue
                chunk = chunk[written:]

    def _shutdown_ssl(self) -> None:
        # ssl's unwrap() calls SSL_shutdown twice, and the second call
        # would read (and discard) application data already buffered; hide
        # the buffered data from it and put it back afterwards.
        pending = self._ssl.pending()
        if pending:
            self._plain += self._ssl.read(pending)
        buffered = b"" if self._eof_seen else self._incoming.read()
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass
        finally:
            if buffered:
                self._incoming.write(buffered)

    def send_close_notify(self, shutdown_write: bool = False) -> None:
        """
        Send close_notify; reading stays possible (a TLS half-close).

        @param shutdown_write: also C{shutdown(SHUT_WR)} the TCP socket.
        """
        if not self.close_notify_sent:
            self.close_notify_sent = True
            self._ssl_call(self._shutdown_ssl)
        if shutdown_write:
            self._sock.shutdown(socket.SHUT_WR)

    def _linger_close(self, linger: float) -> None:
        """FIN, then discard input until the peer's FIN (avoiding an RST)."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + linger
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                if not self._sock.recv(_CHUNK):
                    break
        except OSError:
            pass
        finally:
            self.abort()

    def close(self, linger: float = 2.0) -> None:
        """
        Close cleanly: close_notify, TCP FIN, then close the socket.

        Before closing, input is discarded for up to C{linger} seconds until
        the peer closes, so unread input cannot turn our FIN into an RST.
        """
        if self.closed:
            return
        try:
            self.send_close_notify()
        except (OSError, ssl.SSLError):
            pass
        self._linger_close(linger)

    def close_tcp_without_close_notify(
        self, reset: bool = False, linger: float = 2.0
    ) -> None:
        """
        Truncate: close TCP without sending close_notify.

        @param reset: send a TCP RST (C{SO_LINGER} 0) instead of a FIN.
        @param linger: as for L{close}, when C{reset} is false.
        """
        if self.closed:
            return
        if reset:
            self._sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.abort()
        else:
            self._linger_close(linger)

    def abort(self) -> None:
        """Close the socket immediately, sending nothing more."""
        self.closed = True
        self._sock.close()

    def interrupt(self) -> None:
        """Shut the socket down from another thread, unblocking its I/O."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
