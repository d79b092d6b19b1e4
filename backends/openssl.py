# -*- test-case-name: tests.test_backend_openssl -*-
"""
The OpenSSL backend: sans-IO TLS client engines on pyOpenSSL memory BIOs.

L{OpenSSLBackend} builds one C{OpenSSL.SSL.Context} per distinct
L{ClientTLSConfig} and keeps it (pyOpenSSL forbids changing a Context once it
has made a Connection, so a Context is finished before it is cached). Each
L{OpenSSLEngine} is one C{OpenSSL.SSL.Connection} without a socket.

The engine verifies the peer's chain against the configured anchors only;
the daemon core checks the peer's identity (host name) on the leaf.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509
from zope.interface import implementer

from ssa.backends._openssl_errors import (
    describe_ssl_error,
    raw_reason,
    verify_error_string,
)
from ssa.constants import TLS_1_0, TLS_1_1, TLS_1_2, TLS_1_3
from ssa.errors import TLSFailure
from ssa.interfaces import ITLSBackend, ITLSEngine
from ssa.tlsconfig import ClientTLSConfig, TLSSessionInfo, subject_line

_PROTOCOL_VERSIONS: dict[int, int] = {
    TLS_1_0: SSL.TLS1_VERSION,
    TLS_1_1: SSL.TLS1_1_VERSION,
    TLS_1_2: SSL.TLS1_2_VERSION,
    TLS_1_3: SSL.TLS1_3_VERSION,
}
_VERSION_CONSTANTS: dict[int, int] = {v: k for k, v in _PROTOCOL_VERSIONS.items()}

# Big enough that one bio_read usually drains the memory BIO (it returns all
# it holds up to the size asked for); SSL_read returns one record at a time.
_READ_SIZE = 256 * 1024


class _VerifyRecord:
    """
    The first failing certificate check of one connection.

    @ivar failure: e.g. C{"certificate has expired (depth 0, subject
        /CN=localhost)"}, or L{None} while every check has passed.
    """

    __slots__ = ("failure",)

    def __init__(self) -> None:
        self.failure: str | None = None


def _verify_callback(
    connection: SSL.Connection, certificate: X509, code: int, depth: int, ok: int
) -> bool:
    """
    Keep OpenSSL's verdict, remembering the first failure on the connection.
    """
    record = connection.get_app_data()
    if not ok and isinstance(record, _VerifyRecord) and record.failure is None:
        try:
            subject = subject_line(certificate.to_cryptography()) or "(empty)"
        except Exception:
            subject = "(unreadable)"
        record.failure = (
            f"{verify_error_string(code)} (depth {depth}, subject {subject})"
        )
    return bool(ok)


def _load_anchors(context: SSL.Context, pem: bytes) -> None:
    """
    Trust every certificate in C{pem} (and nothing else, unless the system
    store was loaded too).
    """
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise TLSFailure(f"the trusted certificates are not valid PEM ({e})") from e
    store = context.get_cert_store()
    assert store is not None
    for certificate in certificates:
        # X509Store.add_cert takes only pyOpenSSL X509; from_cryptography is
        # the non-deprecated bridge.
        store.add_cert(X509.from_cryptography(certificate))


def _version_range(config: ClientTLSConfig) -> tuple[int, int]:
    """
    The C{TLS_1_x} versions C{config} can really negotiate, lowest first.
    """
    if not config.tls12_ciphers:
        # No cipher for TLS 1.2 and below: only TLS 1.3 can be negotiated.
        return max(config.min_version, TLS_1_3), config.max_version
    return config.min_version, config.max_version


def build_context(config: ClientTLSConfig) -> SSL.Context:
    """
    Build the finished client C{Context} for C{config}.

    @raise TLSFailure: the configuration cannot be used (no cipher allowed,
        unreadable trust anchors).
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    min_version, max_version = _version_range(config)
    for version in (min_version, max_version):
        if version not in _PROTOCOL_VERSIONS:
            raise TLSFailure(f"invalid TLS configuration: unknown TLS version {version}")
    if min_version > max_version:
        raise TLSFailure(
            "invalid TLS configuration: no cipher suite or TLS version is allowed"
        )
    try:
        context.set_min_proto_version(_PROTOCOL_VERSIONS[min_version])
        context.set_max_proto_version(_PROTOCOL_VERSIONS[max_version])
        if config.tls12_ciphers:
            context.set_cipher_list(":".join(config.tls12_ciphers).encode("ascii"))
        context.set_tls13_ciphersuites(":".join(config.tls13_ciphers).encode("ascii"))
    except SSL.Error as e:
        raise TLSFailure(
            "invalid TLS configuration: no allowed cipher is known to OpenSSL"
            f" ({raw_reason(e)})"
        ) from e
    context.set_options(SSL.OP_NO_COMPRESSION)
    context.set_verify(SSL.VERIFY_PEER, _verify_callback)
    context.set_verify_depth(config.verify_depth)
    if config.use_system_store:
        context.set_default_verify_paths()
    if config.trust_anchors:
        _load_anchors(context, config.trust_anchors)
    return context


def _sni_name(server_hostname: str | None) -> bytes | None:
    """
    The SNI value for C{server_hostname}: L{None} for IP literals.
    """
    if not server_hostname:
        return None
    name = server_hostname.rstrip(".")
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        pass
    else:
        return None
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        return name.encode("idna")


@implementer(ITLSEngine)
class OpenSSLEngine:
    """
    One client TLS connection over memory BIOs.

    @ivar peer_closed: whether the peer's close_notify has been read.
    """

    def __init__(
        self, context: SSL.Context, config: ClientTLSConfig, server_hostname: str | None
    ) -> None:
        """
        @param context: the finished C{Context} for C{config}.
        @param config: the configuration, for the words of failures.
        @param server_hostname: the name sent as SNI (not for IP literals).
        """
        self.peer_closed = False
        self._versions = _version_range(config)
        self._record = _VerifyRecord()
        self._handshake_done = False
        self._close_sent = False
        self._connection = SSL.Connection(context, None)
        self._connection.set_app_data(self._record)
        self._connection.set_connect_state()
        sni = _sni_name(server_hostname)
        if sni is not None:
            self._connection.set_tlsext_host_name(sni)

    def _failure(self, error: SSL.Error, stage: str) -> TLSFailure:
        """
        A L{TLSFailure} for C{error}, naming the first failed certificate check
        if there was one.
        """
        if self._record.failure is not None:
            return TLSFailure(f"certificate verification failed: {self._record.failure}")
        return TLSFailure(describe_ssl_error(error, stage, *self._versions))

    def receive(self, ciphertext: bytes) -> None:
        """
        Hand the engine bytes that arrived from the network.
        """
        self._connection.bio_write(ciphertext)

    def do_handshake(self) -> bool:
        """
        Advance the handshake; see L{ITLSEngine.do_handshake}.
        """
        if self._handshake_done:
            return True
        try:
            self._connection.do_handshake()
        except (SSL.WantReadError, SSL.WantWriteError):
            return False
        except SSL.Error as e:
            raise self._failure(e, "handshake failed") from e
        self._handshake_done = True
        return True

    def read(self) -> bytes:
        """
        Decrypt all the plaintext available now; see L{ITLSEngine.read}.
        """
        recv = self._connection.recv
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(recv(_READ_SIZE))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.peer_closed = True
                break
            except SSL.Error as e:
                raise self._failure(e, "TLS connection failed") from e
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def write(self, plaintext: bytes) -> None:
        """
        Encrypt all of C{plaintext} for sending.

        @raise TLSFailure: close_notify was already sent, or OpenSSL failed.
        """
        if self._close_sent:
            raise TLSFailure("cannot send: this side already sent close_notify")
        view = memoryview(plaintext)
        send = self._connection.send
        try:
            while view:
                view = view[send(view) :]
        except SSL.Error as e:
            raise self._failure(e, "TLS connection failed") from e

    def close_notify(self) -> None:
        """
        Queue a close_notify alert once; later calls do nothing.
        """
        if self._close_sent:
            return
        self._close_sent = True
        try:
            self._connection.shutdown()
        except SSL.Error:
            # WantReadError is expected (the peer's close_notify is not needed);
            # any other failure leaves nothing to close cleanly.
            pass

    def outgoing(self) -> bytes:
        """
        Take the ciphertext queued for the network, C{b""} if none.
        """
        bio_read = self._connection.bio_read
        try:
            data = bio_read(_READ_SIZE)
        except SSL.WantReadError:
            return b""
        if len(data) < _READ_SIZE:
            return data
        chunks = [data]
        while True:
            try:
                chunks.append(bio_read(_READ_SIZE))
            except SSL.WantReadError:
                return b"".join(chunks)

    def session_info(self) -> TLSSessionInfo:
        """
        Describe the finished handshake.

        C{resumed} is always false: this engine never offers a session
        (pyOpenSSL also has no public C{SSL_session_reused}).
        """
        connection = self._connection
        chain = connection.get_peer_cert_chain(as_cryptography=True) or []
        alpn = connection.get_alpn_proto_negotiated()
        return TLSSessionInfo(
            version=_VERSION_CONSTANTS[connection.get_protocol_version()],
            cipher=connection.get_cipher_name() or "",
            peer_chain=tuple(chain),
            alpn=alpn.decode("ascii", "replace") if alpn else None,
            resumed=False,
        )


@implementer(ITLSBackend)
class OpenSSLBackend:
    """
    Make L{OpenSSLEngine}s, sharing one C{Context} per distinct configuration.

    @cvar name: C{"openssl"}.
    @cvar description: one line for people.
    """

    name = "openssl"
    description = "OpenSSL through pyOpenSSL"

    def __init__(self, cache_size: int = 256) -> None:
        """
        @param cache_size: how many Contexts to keep (least recently used
            first out).
        """
        self._cache_size = cache_size
        self._contexts: OrderedDict[ClientTLSConfig, SSL.Context] = OrderedDict()

    def context_for(self, config: ClientTLSConfig) -> SSL.Context:
        """
        The cached C{Context} for C{config}, built on first use.

        @raise TLSFailure: the configuration cannot be used.
        """
        contexts = self._contexts
        context = contexts.get(config)
        if context is not None:
            contexts.move_to_end(config)
            return context
        context = contexts[config] = build_context(config)
        while len(contexts) > self._cache_size:
            contexts.popitem(last=False)
        return context

    def client_engine(
        self, config: ClientTLSConfig, server_hostname: str | None
    ) -> OpenSSLEngine:
        """
        Make a client engine; see L{ITLSBackend.client_engine}.
        """
        return OpenSSLEngine(self.context_for(config), config, server_hostname)
