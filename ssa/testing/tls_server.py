"""
A threaded TLS server on 127.0.0.1 built on the standard library's C{ssl}.

Each accepted connection becomes a L{TLSPeerConnection}, completes its
handshake and is passed to a handler running in its own thread.  The
handlers here cover the usual needs: echo, a digesting sink, a
deterministic source and a truncating source.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ssa.testing.certs import CertificateAuthority, CertifiedKey
from ssa.testing.tls_connection import TLSPeerConnection

__all__ = [
    "Handler",
    "SinkDigestHandler",
    "SinkResult",
    "StdlibTLSServer",
    "echo_handler",
    "pseudo_random_bytes",
    "sink_digest_handler",
    "source_handler",
    "truncating_handler",
]

Handler = Callable[[TLSPeerConnection], None]
"""What L{StdlibTLSServer} calls, in a thread, for each connection."""


def pseudo_random_bytes(n: int, seed: int | str | bytes = 0) -> bytes:
    """Return C{n} deterministic pseudo-random bytes (SHAKE-256 of the seed)."""
    if not isinstance(seed, bytes):
        seed = str(seed).encode("utf-8")
    return hashlib.shake_256(b"ssa.testing:" + seed).digest(n)


def echo_handler(conn: TLSPeerConnection) -> None:
    """Echo data until the peer's close_notify, then close cleanly."""
    while data := conn.recv():
        conn.sendall(data)
    conn.close()


@dataclass(frozen=True)
class SinkResult:
    """What L{SinkDigestHandler} saw on one connection."""

    nbytes: int
    """Bytes received before close_notify."""
    sha256: str
    """Hex SHA-256 of those bytes."""


class SinkDigestHandler:
    """
    Read until close_notify, record the digest, reply with it and close.

    The reply is the 64-character ASCII hex SHA-256, so a client that
    half-closes (sends close_notify but keeps reading) can check it.

    @ivar results: one L{SinkResult} per finished connection.
    """

    def __init__(self) -> None:
        """Start with no results."""
        self.results: list[SinkResult] = []
        self._lock = threading.Lock()

    def __call__(self, conn: TLSPeerConnection) -> None:
        """Handle one connection."""
        digest = hashlib.sha256()
        nbytes = 0
        while data := conn.recv():
            digest.update(data)
            nbytes += len(data)
        with self._lock:
            self.results.append(SinkResult(nbytes, digest.hexdigest()))
        conn.sendall(digest.hexdigest().encode("ascii"))
        conn.close()


def sink_digest_handler() -> SinkDigestHandler:
    """Return a new L{SinkDigestHandler} (read its C{results} afterwards)."""
    return SinkDigestHandler()


def source_handler(nbytes: int, seed: int | str | bytes = 0) -> Handler:
    """Return a handler sending C{pseudo_random_bytes(nbytes, seed)}, then close_notify."""

    def handler(conn: TLSPeerConnection) -> None:
        conn.sendall(pseudo_random_bytes(nbytes, seed))
        conn.close()

    return handler


def truncating_handler(
    nbytes: int, seed: int | str | bytes = 0, reset: bool = False
) -> Handler:
    """
    Return a handler sending C{nbytes} bytes, then closing TCP without
    close_notify (with an RST instead of a FIN if C{reset}).
    """

    def handler(conn: TLSPeerConnection) -> None:
        conn.sendall(pseudo_random_bytes(nbytes, seed))
        conn.close_tcp_without_close_notify(reset=reset)

    return handler


def _server_context(
    certified_key: CertifiedKey,
    client_ca: CertificateAuthority | None,
    alpn: list[str] | None,
    minimum_version: ssl.TLSVersion | None,
    maximum_version: ssl.TLSVersion | None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="ssa-tls-server-") as tmp:
        files = certified_key.write(Path(tmp), "server")
        context.load_cert_chain(files.cert, files.key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.root_pem().decode("ascii"))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    if minimum_version is not None:
        context.minimum_version = minimum_version
    if maximum_version is not None:
        context.maximum_version = maximum_version
    return context


class StdlibTLSServer:
    """
    A TLS server on 127.0.0.1 (or C{::1}), ephemeral port, a thread per
    connection.

    Use as a context manager or call L{start} and L{stop}.  Handshake
    failures are recorded on the connection (C{handshake_error}), not in
    L{errors}, since tests often provoke them on purpose; a handler that
    raises has its exception appended to L{errors} and its socket closed
    without close_notify.  A handler that returns without closing gets
    L{TLSPeerConnection.close} called for it.

    @ivar context: the server's L{ssl.SSLContext}; adjust it before
        L{start} for anything the constructor does not cover (but keep
        its C{sni_callback}, which records L{TLSPeerConnection.server_name}).
    @ivar errors: exceptions raised by handlers.
    """

    def __init__(
        self,
        certified_key: CertifiedKey,
        handler: Handler,
        *,
        client_ca: CertificateAuthority | None = None,
        alpn: list[str] | None = None,
        minimum_version: ssl.TLSVersion | None = None,
        maximum_version: ssl.TLSVersion | None = None,
        connection_timeout: float = 10.0,
        host: str = "127.0.0.1",
    ) -> None:
        """
        @param certified_key: the server certificate, key and chain.
        @param handler: called with each handshaken connection.
        @param client_ca: if given, require a client certificate issued
            under this CA's root.
        @param alpn: ALPN protocols to offer.
        @param connection_timeout: socket timeout for each connection.
        @param host: loopback address to bind, C{"127.0.0.1"} or C{"::1"}.
        """
        self.context = _server_context(
            certified_key, client_ca, alpn, minimum_version, maximum_version
        )
        self.context.sni_callback = self._on_sni
        self.errors: list[BaseException] = []
        self._handler = handler
        self._host = host
        self._timeout = connection_timeout
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._active: dict[TLSPeerConnection, threading.Thread] = {}
        self._finished: list[TLSPeerConnection] = []
        self._by_ssl: dict[int, TLSPeerConnection] = {}

    @property
    def port(self) -> int:
        """The port the server listens on (after L{start})."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """C{(host, port)}, e.g. C{("127.0.0.1", 40123)}."""
        return (self._host, self.port)

    def _on_sni(
        self, ssl_object: ssl.SSLObject, name: str | None, _: ssl.SSLContext
    ) -> None:
        with self._cond:
            conn = self._by_ssl.get(id(ssl_object))
        if conn is not None:
            conn._set_server_name(name)

    def start(self) -> StdlibTLSServer:
        """Bind, listen and start accepting; returns C{self}."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((self._host, 0))
        self._listener.listen(64)
        self._port = self._listener.getsockname()[1]
        self._listener.settimeout(0.05)
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="StdlibTLSServer-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(self._timeout)
            conn = TLSPeerConnection(sock, self.context, server_side=True)
            thread = threading.Thread(
                target=self._serve, args=(conn,), daemon=True,
                name="StdlibTLSServer-connection",
            )
            with self._cond:
                self._active[conn] = thread
                self._by_ssl[id(conn.ssl_object)] = conn
            thread.start()

    def _serve(self, conn: TLSPeerConnection) -> None:
        try:
            try:
                conn.do_handshake()
            except Exception as e:
                conn.handshake_error = e
                conn.abort()
                return
            try:
                self._handler(conn)
            except Exception as e:
                conn.handler_error = e
                with self._cond:
                    self.errors.append(e)
                conn.abort()
            else:
                conn.close()
        finally:
            with self._cond:
                self._active.pop(conn, None)
                self._by_ssl.pop(id(conn.ssl_object), None)
                self._finished.append(conn)
                self._cond.notify_all()

    def wait_for_connections(
        self, count: int, timeout: float = 10.0
    ) -> list[TLSPeerConnection]:
        """
        Wait until C{count} connections have finished (handler returned or
        handshake failed) and return all finished connections, in order.

        @raise TimeoutError: if that takes longer than C{timeout} seconds.
        """
        with self._cond:
            if not self._cond.wait_for(
                lambda: len(self._finished) >= count, timeout
            ):
                raise TimeoutError(
                    f"{len(self._finished)} of {count} connections finished"
                )
            return list(self._finished)

    def stop(self) -> None:
        """
        Stop accepting, interrupt live connections and join all threads.

        An interrupted handler usually fails, so its exception lands in
        L{errors}.
        """
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(5)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
        with self._cond:
            active = list(self._active.items())
        for conn, thread in active:
            conn.interrupt()
            thread.join(5)

    def __enter__(self) -> StdlibTLSServer:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()
