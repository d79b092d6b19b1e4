# -*- test-case-name: tests.test_backend_openssl -*-
"""
The OpenSSL backend: sans-IO TLS client and server engines on pyOpenSSL
memory BIOs.

L{OpenSSLBackend} builds one C{OpenSSL.SSL.Context} per distinct
L{ClientTLSConfig} or L{ServerTLSConfig} and keeps it (pyOpenSSL forbids
changing a Context once it has made a Connection, so a Context is finished
before it is cached). Each engine is one C{OpenSSL.SSL.Connection} without a
socket: L{OpenSSLEngine} in connect state, L{OpenSSLServerEngine} in accept
state.

The engines verify the peer's chain against the configured anchors; given
the name to verify, a client engine also checks the leaf's identity with
the daemon's own check (L{ssa.identity}) inside the handshake, from the
verify callback, so that a refusal reaches the server as an alert.

Keys and certificates are read with C{cryptography} and handed to pyOpenSSL
as C{cryptography} objects (pyOpenSSL's own C{X509}/C{PKey} arguments are
deprecated since 24.3).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from OpenSSL.crypto import X509, X509StoreFlags
from zope.interface import implementer

from ssa.backends._openssl_errors import (
    describe_ssl_error,
    raw_reason,
    verify_error_string,
)
from ssa.backends._tls_common import (
    SECURITY_LEVEL,
    AnyTLSConfig,
    ContextCache,
    alpn_names,
    check_credential,
    check_range,
    load_anchors,
    peer_chain,
    sni_name,
    verification_failed,
    version_range,
)
from ssa.constants import TLS_1_0, TLS_1_1, TLS_1_2, TLS_1_3
from ssa.errors import TLSFailure
from ssa.identity import check_readable, verify_identity
from ssa.interfaces import ITLSBackend, ITLSEngine
from ssa.optioncheck import is_ip_literal
from ssa.pathvalidation import check_server_chain
from ssa.stapling import STAPLES
from ssa.tlsconfig import (
    ClientTLSConfig,
    Credential,
    ServerTLSConfig,
    TLSSessionInfo,
    subject_line,
)

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
# SSL_read returns at most one record's plaintext.
_RECORD_SIZE = 16384
# Enough for the ciphertext of a READ_SIZE write in one bio_read (records
# add at most a few hundred bytes each).
_OUTGOING_SIZE = 2 * _READ_SIZE


class _VerifyRecord:
    """
    What one connection's certificate checks found.

    @ivar failure: the first failing check of OpenSSL's, e.g.
        C{"certificate has expired (depth 0, subject /CN=localhost)"}, or
        L{None} while every check has passed.
    @ivar verify_name: the name the leaf must be valid for (see
        L{ssa.identity.verify_identity}), or L{None}: the leaf is then only
        checked to be readable.
    @ivar refusal: why the daemon's own check of the leaf refused it, or
        L{None}.
    """

    __slots__ = (
        "chain", "config", "failure", "leaf", "leaf_checked", "path_checked", "refusal", "staple", "verify_name",
    )

    def __init__(self, verify_name: str | None = None) -> None:
        self.config: ClientTLSConfig | None = None
        self.staple = b""
        self.failure: str | None = None
        self.verify_name = verify_name
        self.refusal: TLSFailure | None = None
        self.leaf_checked = False
        # The leaf and chain converted inside the handshake (for the checks
        # there), kept for session_info instead of converting them again.
        self.leaf: x509.Certificate | None = None
        self.chain: tuple[x509.Certificate, ...] | None = None
        # Whether the identity and path checks both passed in the handshake.
        self.path_checked = False

    def accept_leaf(self, certificate: X509) -> bool:
        """
        The daemon's own check of the leaf, once OpenSSL has verified the
        chain: inside the handshake, so that OpenSSL sends the peer an
        alert when it fails.
        """
        if not self.leaf_checked:
            self.leaf_checked = True
            try:
                leaf = self.leaf = certificate.to_cryptography()
                if self.verify_name is None:
                    check_readable(leaf)
                else:
                    verify_identity(leaf, self.verify_name)
            except TLSFailure as e:
                self.refusal = e
            except Exception as e:
                self.refusal = TLSFailure(f"the peer's certificate cannot be parsed: {e}")
        return self.refusal is None


def _verify_callback(
    connection: SSL.Connection, certificate: X509, code: int, depth: int, ok: int
) -> bool:
    """
    Keep OpenSSL's verdict, remembering the first failure on the connection;
    once the chain is verified, check the leaf (L{_VerifyRecord.accept_leaf}).

    A refusal sends the alert for OpenSSL's own failures (e.g. unknown_ca),
    certificate_unknown for the daemon's (the callback cannot set a code).
    """
    record = connection.get_app_data()
    if not isinstance(record, _VerifyRecord):
        return bool(ok)
    if not ok:
        if code in _NAME_MISMATCH_CODES and record.verify_name is not None:
            # OpenSSL's own name check (_check_name_in_handshake) refused:
            # the daemon's words name the names the certificate holds.
            record.leaf_checked = False
            if record.accept_leaf(certificate):
                record.refusal = TLSFailure(
                    f"hostname mismatch: the certificate is not valid for {record.verify_name}"
                    f" ({verify_error_string(code)})"
                )
            return False
        if record.failure is None:
            try:
                subject = subject_line(certificate.to_cryptography()) or "(empty)"
            except Exception:
                subject = "(unreadable)"
            record.failure = (
                f"{verify_error_string(code)} (depth {depth}, subject {subject})"
            )
        return False
    if depth == 0:
        return record.accept_leaf(certificate) and _accept_path(connection, record)
    return True


def _accept_path(connection: SSL.Connection, record: _VerifyRecord) -> bool:
    """
    The daemon's own path validation (L{ssa.pathvalidation}) of a server's
    chain, once OpenSSL and the identity check have accepted it: inside
    the handshake, so that a refusal reaches the server as an alert
    (internal_error: pyOpenSSL's verify callback cannot choose it). The
    daemon core checks again after the handshake, whatever the backend (a
    cached verdict then). The stdlib backend has no verify callback: its
    refusals come after the handshake, without an alert.
    """
    if record.config is None or record.verify_name is None or record.refusal is not None:
        return record.refusal is None
    try:
        chain = _peer_chain(connection, record.leaf)
        if chain:
            record.chain = chain
            check_server_chain(record.config, record.verify_name, TLSSessionInfo(0, "", chain))
            record.path_checked = True
    except TLSFailure as e:
        record.refusal = e
    except Exception:
        pass  # no chain to read here: the check after the handshake decides
    return record.refusal is None


def _keep_staple(connection: SSL.Connection, response: bytes, data: object) -> bool:
    """
    OpenSSL's OCSP status callback on a client: keep the stapled response
    (C{b""} if none) for the revocation check after the handshake
    (L{ssa.revocationcheck}), which judges it; the handshake goes on.
    """
    record = connection.get_app_data()
    if isinstance(record, _VerifyRecord):
        record.staple = bytes(response)
    return True


def _staple(connection: SSL.Connection, data: object) -> bytes:
    """
    OpenSSL's OCSP status callback on a server: the current staple of the
    certificate being served (L{ssa.stapling.STAPLES}), C{b""} if none.
    """
    certificate = connection.get_certificate(as_cryptography=True)
    return STAPLES.get(certificate) if certificate is not None else b""


def _peer_chain(connection: SSL.Connection, leaf: x509.Certificate | None) -> tuple[x509.Certificate, ...]:
    """
    A client connection's peer chain as C{cryptography} certificates, leaf
    first; the leaf is C{leaf} when it was converted already (it is the
    same certificate: OpenSSL verified this chain from it).
    """
    chain = connection.get_peer_cert_chain() or []
    if leaf is None or not chain:
        return tuple(c.to_cryptography() for c in chain)
    return (leaf, *(c.to_cryptography() for c in chain[1:]))


# X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH_CODES = frozenset({62, 64})


def _check_name_in_handshake(connection: SSL.Connection, name: str) -> bool:
    """
    Have OpenSSL check C{name} against the server's certificate during the
    handshake, as L{ssa.identity.verify_identity} does (subjectAltName
    only, no partial wildcards), so that a mismatch gets OpenSSL's alert.

    pyOpenSSL has no public call for this: it sets the connection's own
    C{X509_VERIFY_PARAM} through pyOpenSSL's bindings (the Context is not
    touched); without them, the verify callback's check still refuses,
    with alert internal_error.

    @return: whether OpenSSL will check the name.
    """
    try:
        param = _lib.SSL_get0_param(connection._ssl)
        _lib.X509_VERIFY_PARAM_set_hostflags(
            param,
            _lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | _lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT,
        )
        if is_ip_literal(name):
            family = socket.AF_INET6 if ":" in name else socket.AF_INET
            packed = socket.inet_pton(family, name)
            return _lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed)) == 1
        host = _sni_name(name)
        if host is None:
            return False
        return _lib.X509_VERIFY_PARAM_set1_host(param, host, len(host)) == 1
    except (AttributeError, TypeError, ValueError, OSError):
        return False


def _load_anchors(
    context: SSL.Context, pem: bytes, *, name_client_cas: bool = False
) -> None:
    """
    Trust every certificate in C{pem} (and nothing else, unless the system
    store was loaded too).

    @param name_client_cas: also name them in the server's certificate
        request, so that clients can pick a matching certificate.
    """
    store = context.get_cert_store()
    assert store is not None
    for certificate in load_anchors(pem):
        # X509Store.add_cert takes only pyOpenSSL X509; from_cryptography is
        # the non-deprecated bridge.
        store.add_cert(X509.from_cryptography(certificate))
        if name_client_cas:
            context.add_client_ca(certificate)


def _version_range(config: AnyTLSConfig) -> tuple[int, int]:
    """
    The C{TLS_1_x} versions C{config} can really negotiate, lowest first.

    Unlike L{version_range}, an empty TLS 1.3 suite list leaves the highest
    version as configured: OpenSSL keeps TLS 1.3 on without a suite, and the
    handshake then fails (C{"no ciphers available"}) rather than falling
    back to TLS 1.2.
    """
    return version_range(config)[0], config.max_version


def _new_context(method: int, config: AnyTLSConfig) -> SSL.Context:
    """
    A C{Context} with the versions, ciphers and options of C{config}.

    @raise TLSFailure: no cipher or version allowed, or none known.
    """
    context = SSL.Context(method)
    min_version, max_version = _version_range(config)
    check_range(min_version, max_version, _PROTOCOL_VERSIONS)
    try:
        context.set_min_proto_version(_PROTOCOL_VERSIONS[min_version])
        context.set_max_proto_version(_PROTOCOL_VERSIONS[max_version])
        if config.tls12_ciphers:
            context.set_cipher_list((":".join(config.tls12_ciphers) + SECURITY_LEVEL).encode("ascii"))
        context.set_tls13_ciphersuites(":".join(config.tls13_ciphers).encode("ascii"))
    except SSL.Error as e:
        raise TLSFailure(
            "invalid TLS configuration: no allowed cipher is known to OpenSSL"
            f" ({raw_reason(e)})"
        ) from e
    context.set_options(SSL.OP_NO_COMPRESSION)
    # An idle connection gives its read and write buffers back (about
    # 34 KiB each); the daemon holds many idle connections.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # OpenSSL's strict X.509 checks, as the stdlib backend sets them.
    store = context.get_cert_store()
    if store is not None:
        store.set_flags(X509StoreFlags.X509_STRICT)
    return context


def build_context(config: ClientTLSConfig) -> SSL.Context:
    """
    Build the finished client C{Context} for C{config}.

    @raise TLSFailure: the configuration cannot be used (no cipher allowed,
        unreadable trust anchors, bad ALPN names).
    """
    context = _new_context(SSL.TLS_CLIENT_METHOD, config)
    context.set_verify(SSL.VERIFY_PEER, _verify_callback)
    context.set_verify_depth(config.verify_depth)
    context.set_ocsp_client_callback(_keep_staple)
    # Keep the client's sessions resumable (the daemon caches them itself).
    context.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    if config.use_system_store:
        context.set_default_verify_paths()
    if config.trust_anchors:
        _load_anchors(context, config.trust_anchors)
    if config.alpn:
        context.set_alpn_protos(alpn_names(config.alpn))
    return context


def _load_credential(
    context: SSL.Context, credential: Credential, number: int, seen: dict[str, str]
) -> list[x509.Certificate]:
    """
    Check one certificate and its key (L{check_credential}) and install them
    on C{context}.

    @param number: the credential's position, counted from 1, for failures.
    @param seen: the key types installed so far, with their leaf's subject;
        updated.
    @return: the chain's intermediates (everything after the leaf).
    @raise TLSFailure: unreadable PEM, no certificate, an unsupported key, a
        key type already served, a key that does not match, or OpenSSL
        refused them.
    """
    chain, key = check_credential(credential, number, seen)
    leaf = chain[0]
    try:
        context.use_certificate(leaf)
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.check_privatekey()
    except SSL.Error as e:
        subject = subject_line(leaf) or "(empty subject)"
        raise TLSFailure(
            f"server credential {number}: OpenSSL refused the certificate"
            f" {subject} or its key ({raw_reason(e)})"
        ) from e
    return chain[1:]


def _alpn_selector(
    preferences: list[bytes],
) -> Callable[[SSL.Connection, list[bytes]], object]:
    """
    An ALPN select callback choosing the first of C{preferences} (the
    server's order) that the client offered.
    """

    def select(connection: SSL.Connection, offered: list[bytes]) -> object:
        for protocol in preferences:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def build_server_context(config: ServerTLSConfig) -> SSL.Context:
    """
    Build the finished server C{Context} for C{config}.

    Every credential is installed in OpenSSL's slot for its key type, so an
    RSA and an ECDSA certificate coexist and each client gets one it
    supports. The intermediates of all credentials go into one context-wide
    extra chain (C{SSL_CTX_add_extra_chain_cert}): pyOpenSSL does not expose
    the per-slot C{SSL_CTX_add1_chain_cert}, not even privately, so a
    client is sent the intermediates of every credential, whichever leaf it
    gets (clients ignore the ones that do not certify their leaf).

    For TLS 1.2 the server's cipher order (the configuration's) wins.

    @raise TLSFailure: the configuration cannot be used (no credential, a
        key that does not match its certificate, unreadable PEM, no cipher).
    """
    if not config.credentials:
        raise TLSFailure("invalid TLS configuration: a server needs a certificate")
    context = _new_context(SSL.TLS_SERVER_METHOD, config)
    context.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    seen: dict[str, str] = {}
    intermediates: list[x509.Certificate] = []
    for number, credential in enumerate(config.credentials, 1):
        for certificate in _load_credential(context, credential, number, seen):
            if certificate not in intermediates:
                intermediates.append(certificate)
    for certificate in intermediates:
        context.add_extra_chain_cert(certificate)
    if config.require_client_certificate:
        context.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback
        )
        context.set_verify_depth(config.verify_depth)
        if config.client_anchors is None:
            context.set_default_verify_paths()
        else:
            _load_anchors(context, config.client_anchors, name_client_cas=True)
    if config.alpn:
        context.set_alpn_select_callback(_alpn_selector(alpn_names(config.alpn)))
    if config.ocsp_stapling:
        # The staples change; the Context does not: the callback reads them.
        context.set_ocsp_server_callback(_staple)
    # A session id context makes sessions resumable (OpenSSL refuses to
    # resume a session that had a verified client certificate without one);
    # distinct configurations get distinct ones.
    context.set_session_id(hashlib.sha256(repr(config).encode()).digest()[:32])
    if config.session_timeout > 0:
        context.set_timeout(config.session_timeout)
    else:
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        context.set_options(SSL.OP_NO_TICKET)
    return context


def _sni_name(server_hostname: str | None) -> bytes | None:
    """
    The SNI bytes for C{server_hostname} (L{sni_name}, IDNA-encoded if not
    ASCII): L{None} for IP literals and empty names.
    """
    name = sni_name(server_hostname)
    if name is None:
        return None
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        return name.encode("idna")


def _group(connection: SSL.Connection) -> str | None:
    """
    The key-exchange group C{connection} negotiated, if pyOpenSSL can say.
    """
    try:
        return connection.get_group_name()
    except (AttributeError, SSL.Error):
        return None


def _session_reused(connection: SSL.Connection) -> bool:
    """
    Whether C{connection}'s handshake resumed a session.

    pyOpenSSL has no public C{SSL_session_reused}, so this calls OpenSSL
    through pyOpenSSL's bindings; if they change, it says C{False}.
    """
    try:
        return bool(_lib.SSL_session_reused(connection._ssl))
    except (AttributeError, TypeError):
        return False


@implementer(ITLSEngine)
class OpenSSLEngine:
    """
    One client TLS connection over memory BIOs.

    @ivar peer_closed: whether the peer's close_notify has been read.
    """

    _server = False

    def __init__(
        self,
        context: SSL.Context,
        config: AnyTLSConfig,
        server_hostname: str | None = None,
        session: SSL.Session | None = None,
        verify_name: str | None = None,
    ) -> None:
        """
        @param context: the finished C{Context} for C{config}.
        @param config: the configuration, for the words of failures.
        @param server_hostname: the name sent as SNI (not for IP literals);
            clients only.
        @param session: a session to offer for resumption; clients only.
        @param verify_name: the DNS name or IP literal the server's
            certificate must be valid for, checked inside the handshake;
            L{None} leaves that check to the caller. Clients only.
        """
        self.peer_closed = False
        self._versions = _version_range(config)
        self._record = _VerifyRecord(verify_name)
        if verify_name is not None and isinstance(config, ClientTLSConfig):
            self._record.config = config
        self._handshake_done = False
        self._close_sent = False
        self._connection = SSL.Connection(context, None)
        self._connection.set_app_data(self._record)
        if self._server:
            self._connection.set_accept_state()
            return
        self._connection.set_connect_state()
        if isinstance(config, ClientTLSConfig) and config.revocation is not None and config.revocation.stapled:
            self._connection.request_ocsp()  # status_request: the server may staple
        if verify_name is not None and "%" not in verify_name:
            _check_name_in_handshake(self._connection, verify_name)
        sni = _sni_name(server_hostname)
        if sni is not None:
            self._connection.set_tlsext_host_name(sni)
        if isinstance(session, SSL.Session):
            try:
                self._connection.set_session(session)
            except SSL.Error:
                pass  # unusable: a full handshake follows

    def _failure(self, error: SSL.Error, stage: str) -> TLSFailure:
        """
        A L{TLSFailure} for C{error}, naming the first failed certificate check
        if there was one.
        """
        if self._record.failure is not None:
            return verification_failed(self._record.failure, server=self._server)
        if self._record.refusal is not None:
            return self._record.refusal
        return TLSFailure(
            describe_ssl_error(error, stage, *self._versions, server=self._server)
        )

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
        # Held (not just its address): a freed session's memory could hold
        # the session of a later ticket and look like no ticket came.
        self._handshake_session = self._connection.get_session()
        return True

    def read(self) -> bytes:
        """
        Decrypt all the plaintext available now; see L{ITLSEngine.read}.
        """
        recv = self._connection.recv
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(recv(_RECORD_SIZE))
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
            data = bio_read(_OUTGOING_SIZE)
        except SSL.WantReadError:
            return b""
        if len(data) < _OUTGOING_SIZE:
            return data
        chunks = [data]
        while True:
            try:
                chunks.append(bio_read(_OUTGOING_SIZE))
            except SSL.WantReadError:
                return b"".join(chunks)

    def session_info(self) -> TLSSessionInfo:
        """
        Describe the finished handshake.
        """
        connection = self._connection
        chain = self._record.chain
        if chain is None:
            chain = _peer_chain(connection, self._record.leaf)
        return TLSSessionInfo(
            version=_VERSION_CONSTANTS[connection.get_protocol_version()],
            cipher=connection.get_cipher_name() or "",
            peer_chain=chain,
            alpn=self._alpn(),
            resumed=_session_reused(connection),
            group=_group(connection),
            ocsp_response=self._record.staple,
        )

    @property
    def verified_name(self) -> str | None:
        """
        The name this client connection's peer was checked for inside the
        handshake, both its identity (L{ssa.identity.verify_identity}, which
        also checks that the leaf can be read) and its path
        (L{ssa.pathvalidation.check_server_chain}), on the chain that
        L{session_info} gives; L{None} if not both were (a resumed session,
        a server, no name to check): then the caller checks them.
        """
        record = self._record
        if record.path_checked and record.leaf_checked and record.refusal is None:
            return record.verify_name
        return None

    def session(self) -> SSL.Session | None:
        """
        The connection's session, for a later engine; see
        L{ITLSEngine.session}.
        """
        connection = self._connection
        first = getattr(self, "_handshake_session", None)
        if (
            first is not None
            and connection.get_protocol_version_name() == "TLSv1.3"
            and _lib.SSL_get_session(connection._ssl) == first._session
        ):
            # No NewSessionTicket read yet (it replaces the session): the
            # handshake's TLS 1.3 session cannot be resumed.
            return None
        return connection.get_session()

    def _alpn(self) -> str | None:
        """
        The negotiated ALPN protocol, or L{None}.
        """
        alpn = self._connection.get_alpn_proto_negotiated()
        return alpn.decode("utf-8", "replace") if alpn else None


class OpenSSLServerEngine(OpenSSLEngine):
    """
    One server TLS connection over memory BIOs: an L{OpenSSLEngine} in
    accept state.
    """

    _server = True

    def __init__(self, context: SSL.Context, config: ServerTLSConfig) -> None:
        """
        @param context: the finished server C{Context} for C{config}.
        @param config: the configuration, for the words of failures.
        """
        super().__init__(context, config)

    def session_info(self) -> TLSSessionInfo:
        """
        Describe the finished handshake: C{peer_chain} is the client's chain
        (empty if it sent none), C{server_name} the SNI name it sent.
        """
        connection = self._connection
        # On a server, SSL_get_peer_cert_chain leaves out the peer's leaf.
        chain = peer_chain(
            connection.get_peer_certificate(as_cryptography=True),
            connection.get_peer_cert_chain(as_cryptography=True) or [],
        )
        name = connection.get_servername()
        return TLSSessionInfo(
            version=_VERSION_CONSTANTS[connection.get_protocol_version()],
            cipher=connection.get_cipher_name() or "",
            peer_chain=chain,
            alpn=self._alpn(),
            resumed=_session_reused(connection),
            server_name=name.decode("ascii", "replace") if name else None,
            group=_group(connection),
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
        @param cache_size: how many Contexts to keep, client and server
            together (least recently used first out).
        """
        self._contexts: ContextCache[SSL.Context] = ContextCache(
            cache_size, build_context, build_server_context
        )

    def context_for(self, config: AnyTLSConfig) -> SSL.Context:
        """
        The cached C{Context} for C{config} (client or server), built on
        first use.

        @raise TLSFailure: the configuration cannot be used.
        """
        return self._contexts.get(config)

    def client_engine(
        self,
        config: ClientTLSConfig,
        server_hostname: str | None,
        session: object | None = None,
        verify_name: str | None = None,
    ) -> OpenSSLEngine:
        """
        Make a client engine; see L{ITLSBackend.client_engine}.
        """
        return OpenSSLEngine(
            self.context_for(config), config, server_hostname, session, verify_name  # type: ignore[arg-type]
        )

    def server_engine(self, config: ServerTLSConfig) -> OpenSSLServerEngine:
        """
        Make a server engine; see L{ITLSBackend.server_engine}.

        @raise TLSFailure: the credentials are unusable.
        """
        return OpenSSLServerEngine(self.context_for(config), config)

