# -*- test-case-name: tests.test_backend_stdlib -*-
"""
The stdlib backend: sans-IO TLS client and server engines on Python's own
C{ssl} module (C{ssl.SSLObject} over two C{ssl.MemoryBIO}s).

L{StdlibBackend} builds one C{ssl.SSLContext} per distinct
L{ClientTLSConfig} or L{ServerTLSConfig}, finished before first use and
never changed after, and keeps the 256 most recently used. Each
L{StdlibEngine} is one C{SSLObject}.

As in the OpenSSL backend, the engines verify the peer's chain against the
configured anchors. Given the name to verify, a client engine has OpenSSL
check it inside the handshake (C{check_hostname}, subjectAltName only), so
that a mismatch reaches the server as an alert; the daemon core checks the
name again after the handshake with its own check.

What Python's C{ssl} module cannot do, and what this backend does instead:

  - B{TLS 1.3 suites cannot be restricted} (there is no
    C{SSL_CTX_set_ciphersuites}): the backend always offers OpenSSL's
    default TLS 1.3 suites, in OpenSSL's order (by default the SPEC's
    three). A configuration that allows all of them (more, or another
    order) is accepted and gets the defaults; one that disallows any of
    them fails when its context is built, since offering a suite the
    policy forbids would be worse than failing. An empty TLS 1.3 list is
    honoured exactly: TLS 1.3 is switched off.
  - B{No verify depth setter}: after the handshake the engine counts the
    verified chain and fails as OpenSSL would (C{certificate chain too long}
    at depth C{verify_depth + 1}), but without sending an alert: the daemon
    drops the connection. The chain comes from C{get_verified_chain}, public
    since Python 3.13 and private (C{SSLObject._sslobj}) in 3.10 to 3.12; if
    neither exists the depth is not enforced.
  - B{The peer's chain}: likewise from C{get_unverified_chain}; without it
    C{session_info().peer_chain} holds the leaf only.
  - B{A failed certificate check names neither depth nor subject}
    (C{SSLCertVerificationError} has only the code and OpenSSL's message;
    there is no verify callback): for the errors one certificate shows by
    itself (expired, not yet valid, issuer not found, self-signed in the
    chain) the engine finds it in the chain the peer sent
    (L{locate_verify_error}) and names its depth and subject; otherwise
    the reason says C{"(depth unknown)"}, or C{"(depth 0)"} for the checks
    that can only fail on the leaf. A server does not get the client's
    chain of a failed handshake: there it is always C{"(depth unknown)"}.
  - B{Keys must come from files} (C{load_cert_chain}): they are written to
    anonymous memory files (C{os.memfd_create}, Linux) and loaded from
    C{/proc/self/fd/N}, never to disk; the files are closed at once.
  - B{ALPN}: the server's order wins (C{ssl} selects with
    C{SSL_select_next_proto}, server list first); with no protocol in
    common the handshake goes on without one (as in the OpenSSL backend).
  - B{No client CA list}: a server that requires client certificates does
    not name its anchors in the CertificateRequest.
  - B{ALPN names must be ASCII} (C{set_alpn_protocols}).
  - B{No verify callback}: a certificate that OpenSSL accepts but the
    daemon cannot parse (a malformed extension) is refused only after the
    handshake, when no alert can be sent any more: the server sees the
    connection closed without one.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import ssl
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from zope.interface import implementer

from ssa.backends._tls_common import (
    SECURITY_LEVEL,
    AnyTLSConfig,
    ContextCache,
    alpn_names,
    check_credential,
    check_range,
    describe_reason,
    load_anchors,
    peer_chain,
    sni_name,
    verification_failed,
    version_range,
)
from ssa.constants import TLS_1_0, TLS_1_1, TLS_1_2, TLS_1_3
from ssa.errors import TLSFailure
from ssa.identity import verify_identity
from ssa.interfaces import ITLSBackend, ITLSEngine
from ssa.tlsconfig import ClientTLSConfig, ServerTLSConfig, TLSSessionInfo, subject_line

# OpenSSL 3.0 words a few verify errors differently from the table the
# OpenSSL backend uses; say them the same way.
_SAME_WORDS = {"unsuitable certificate purpose": "unsupported certificate purpose"}

_PROTOCOL_VERSIONS: dict[int, ssl.TLSVersion] = {
    TLS_1_0: ssl.TLSVersion.TLSv1,
    TLS_1_1: ssl.TLSVersion.TLSv1_1,
    TLS_1_2: ssl.TLSVersion.TLSv1_2,
    TLS_1_3: ssl.TLSVersion.TLSv1_3,
}
# What SSLObject.version() returns.
_VERSION_NAMES: dict[str, int] = {
    "TLSv1": TLS_1_0,
    "TLSv1.1": TLS_1_1,
    "TLSv1.2": TLS_1_2,
    "TLSv1.3": TLS_1_3,
}

# SSLObject.read returns at most one record per call, whatever the size.
_READ_SIZE = 256 * 1024

# The verification errors that can only be about the leaf (depth 0):
# X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE.
_LEAF_ONLY_CODES = frozenset({18, 21})

# X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH_CODES = frozenset({62, 64})

# "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:1006)"
_MESSAGE = re.compile(r"^(?:\[[^\]]*\]\s*)?(.*?)(?:\s*\(_ssl\.c:\d+\))?$", re.S)


def raw_reason(error: ssl.SSLError) -> str:
    """
    OpenSSL's reason text in C{error}, e.g. C{"tlsv1 alert unknown ca"},
    without the C{"[SSL: ...]"} prefix and the C{"(_ssl.c:N)"} suffix.
    """
    message = error.args[1] if len(error.args) > 1 else str(error)
    match = _MESSAGE.match(str(message))
    if match is not None and match.group(1):
        return match.group(1)
    if getattr(error, "reason", None):
        return str(error.reason).lower().replace("_", " ")
    return str(error) or type(error).__name__


@functools.lru_cache(maxsize=1)
def default_tls13_suites() -> tuple[str, ...]:
    """
    The TLS 1.3 suites every context of this OpenSSL offers, in its order.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return tuple(
        cipher["name"]
        for cipher in context.get_ciphers()
        if cipher.get("protocol") == "TLSv1.3"
    )


def _check_tls13_suites(allowed: tuple[str, ...]) -> None:
    """
    Refuse a TLS 1.3 suite list that the stdlib cannot honour.

    @raise TLSFailure: C{allowed} lacks a suite that is always offered.
    """
    offered = default_tls13_suites()
    refused = [suite for suite in offered if suite not in allowed]
    if refused:
        raise TLSFailure(
            "invalid TLS configuration: the stdlib backend cannot restrict TLS 1.3"
            f" suites; it always offers {', '.join(offered)}, but"
            f" {', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not"
            " allowed (allow all of them, disallow TLS 1.3, or use the openssl"
            " backend)"
        )


def _new_context(protocol: int, config: AnyTLSConfig) -> ssl.SSLContext:
    """
    An C{SSLContext} with the versions, ciphers and options of C{config}.

    @raise TLSFailure: no cipher or version allowed, or none known.
    """
    context = ssl.SSLContext(protocol)
    min_version, max_version = version_range(config)
    check_range(min_version, max_version, _PROTOCOL_VERSIONS)
    with warnings.catch_warnings():
        # TLS 1.0 and 1.1 are deprecated in ssl, but the configuration asks.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = _PROTOCOL_VERSIONS[min_version]
        context.maximum_version = _PROTOCOL_VERSIONS[max_version]
    if min_version < TLS_1_3:
        try:
            context.set_ciphers(":".join(config.tls12_ciphers) + SECURITY_LEVEL)
        except ssl.SSLError as e:
            raise TLSFailure(
                "invalid TLS configuration: no allowed cipher is known to OpenSSL"
                f" ({raw_reason(e)})"
            ) from e
    if max_version >= TLS_1_3:
        _check_tls13_suites(config.tls13_ciphers)
    context.options |= ssl.OP_NO_COMPRESSION
    # OpenSSL's strict X.509 checks, as the OpenSSL backend sets them.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _trust(context: ssl.SSLContext, pem: bytes) -> None:
    """
    Trust every certificate in C{pem} (besides the system store, if loaded).

    @raise TLSFailure: C{pem} is not valid PEM.
    """
    certificates = load_anchors(pem)
    cadata = b"".join(
        certificate.public_bytes(serialization.Encoding.PEM)
        for certificate in certificates
    )
    try:
        context.load_verify_locations(cadata=cadata.decode("ascii"))
    except ssl.SSLError as e:
        raise TLSFailure(
            f"the trusted certificates are not usable ({raw_reason(e)})"
        ) from e


def _set_alpn(context: ssl.SSLContext, protocols: tuple[str, ...]) -> None:
    """
    Offer (client) or accept (server) C{protocols}, in that order.

    @raise TLSFailure: a name is empty, too long, or not ASCII.
    """
    alpn_names(protocols)
    for protocol in protocols:
        if not protocol.isascii():
            raise TLSFailure(
                "invalid TLS configuration: the stdlib backend supports only ASCII"
                f" ALPN protocol names, not {protocol!r}"
            )
    context.set_alpn_protocols(list(protocols))


def build_client_context(config: ClientTLSConfig) -> ssl.SSLContext:
    """
    Build the finished client C{SSLContext} for C{config}.

    @raise TLSFailure: the configuration cannot be used (no cipher allowed,
        TLS 1.3 suites restricted, unreadable trust anchors, bad ALPN names).
    """
    context = _new_context(ssl.PROTOCOL_TLS_CLIENT, config)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if config.use_system_store:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if config.trust_anchors:
        _trust(context, config.trust_anchors)
    if config.alpn:
        _set_alpn(context, config.alpn)
    return context


def build_checking_client_context(config: ClientTLSConfig) -> ssl.SSLContext:
    """
    L{build_client_context}, but OpenSSL also checks the server's name
    inside the handshake (and so sends it an alert when it does not
    match), as L{ssa.identity.verify_identity} does: subjectAltName only,
    never the subject's common name, no partial wildcards.
    """
    context = build_client_context(config)
    context.hostname_checks_common_name = False
    context.check_hostname = True
    return context


def _checked_name(server_hostname: str | None, verify_name: str | None) -> str | None:
    """
    The name to give C{ssl} for both SNI and its host name check:
    C{verify_name} as SNI sends it (an IP literal, which C{ssl} verifies
    but does not send), or L{None} when C{ssl} cannot check it (no name,
    a scoped IPv6 address, or SNI that differs from the name to verify).
    """
    if not verify_name or "%" in verify_name:
        return None
    if sni_name(server_hostname) != sni_name(verify_name):
        return None
    return sni_name(verify_name) or verify_name


def _refuse_password() -> bytes:
    """
    Never prompt for a pass phrase: keys are unencrypted by now.
    """
    raise TLSFailure("the private key is encrypted")


def _memory_file(label: str, data: bytes) -> int:
    """
    An anonymous in-memory file holding C{data}; the caller closes it.
    """
    fd = os.memfd_create(label, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _load_credential(
    context: ssl.SSLContext,
    chain: list[x509.Certificate],
    key: PrivateKeyTypes,
    number: int,
) -> None:
    """
    Install one checked certificate chain and its key on C{context}, in
    OpenSSL's slot for the key's type, through memory files.

    @raise TLSFailure: no C{memfd_create}, or OpenSSL refused them.
    """
    what = f"server credential {number}"
    subject = subject_line(chain[0]) or "(empty subject)"
    if not hasattr(os, "memfd_create"):
        raise TLSFailure(
            f"{what}: the stdlib backend needs os.memfd_create (Linux) to load"
            " keys without writing them to disk"
        )
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fds: list[int] = []
    try:
        fds.append(_memory_file("ssa-chain", chain_pem))
        fds.append(_memory_file("ssa-key", key_pem))
        context.load_cert_chain(
            f"/proc/self/fd/{fds[0]}",
            f"/proc/self/fd/{fds[1]}",
            password=_refuse_password,
        )
    except ssl.SSLError as e:
        raise TLSFailure(
            f"{what}: OpenSSL refused the certificate {subject} or its key"
            f" ({raw_reason(e)})"
        ) from e
    except OSError as e:
        raise TLSFailure(
            f"{what}: cannot hand the certificate {subject} to OpenSSL in memory"
            f" ({e})"
        ) from e
    finally:
        for fd in fds:
            os.close(fd)


class _ServerObject(ssl.SSLObject):
    """
    A server C{SSLObject} that remembers the SNI name its client sent.

    @ivar ssa_server_name: the name, or L{None} if the client sent none.
    """

    ssa_server_name: str | None = None


def _record_server_name(
    sslobject: ssl.SSLObject, name: str | None, context: ssl.SSLContext
) -> None:
    """
    The C{sni_callback} (run for every ClientHello, with or without SNI):
    record the name on the connection's L{_ServerObject}.
    """
    if isinstance(sslobject, _ServerObject):
        sslobject.ssa_server_name = name


def build_server_context(config: ServerTLSConfig) -> ssl.SSLContext:
    """
    Build the finished server C{SSLContext} for C{config}.

    Every credential goes into OpenSSL's slot for its key type, with its own
    intermediates, so an RSA and an ECDSA certificate coexist and each
    client gets one it supports. The server's cipher order wins for TLS 1.2.

    @raise TLSFailure: the configuration cannot be used (no credential, a
        key that does not match its certificate, unreadable PEM, no cipher,
        TLS 1.3 suites restricted, OCSP stapling asked for).
    """
    if not config.credentials:
        raise TLSFailure("invalid TLS configuration: a server needs a certificate")
    if config.ocsp_stapling:
        raise TLSFailure(
            "the stdlib backend cannot staple OCSP responses (Python's ssl module has no interface for it):"
            " TLS_SERVER_OCSP_STAPLING needs the openssl backend"
        )
    context = _new_context(ssl.PROTOCOL_TLS_SERVER, config)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if config.session_timeout <= 0:
        # The ssl module cannot set the session timeout or turn the
        # server's session-id cache off: with resumption off it issues no
        # tickets (TLS 1.3 resumes only with them; TLS 1.2 session ids
        # stay possible).
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    seen: dict[str, str] = {}
    for number, credential in enumerate(config.credentials, 1):
        chain, key = check_credential(credential, number, seen)
        _load_credential(context, chain, key, number)
    if config.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
        if config.client_anchors is None:
            context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        else:
            _trust(context, config.client_anchors)
    if config.alpn:
        _set_alpn(context, config.alpn)
    context.sslobject_class = _ServerObject
    context.sni_callback = _record_server_name
    return context


def _chain(sslobject: ssl.SSLObject, method: str) -> list[object] | None:
    """
    The peer's chain from C{get_verified_chain} or C{get_unverified_chain}:
    public since Python 3.13 (DER bytes), private (on C{_sslobj}, returning
    C{_ssl.Certificate}s) in 3.10 to 3.12. Read with L{_certificate}.

    @return: the chain, leaf first; L{None} if this Python cannot say.
    """
    function = getattr(sslobject, method, None)
    if function is None:
        function = getattr(getattr(sslobject, "_sslobj", None), method, None)
    if function is None:
        return None
    try:
        return list(function() or ())
    except Exception:
        return None


def _certificate(item: object) -> x509.Certificate:
    """
    A certificate of a L{_chain}.
    """
    if isinstance(item, (bytes, bytearray)):
        return x509.load_der_x509_certificate(bytes(item))
    # _ssl.Certificate: PEM text by default.
    return x509.load_pem_x509_certificate(item.public_bytes().encode("ascii"))  # type: ignore[attr-defined]


# X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED,
# X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
# X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN.
_NOT_YET_VALID, _EXPIRED, _NO_ISSUER, _NO_LOCAL_ISSUER, _SELF_SIGNED_IN_CHAIN = 9, 10, 2, 20, 19


def locate_verify_error(code: int, chain: list[x509.Certificate], now: datetime.datetime) -> int | None:
    """
    The depth in C{chain} (as the peer sent it, leaf first) of the
    certificate OpenSSL's verify error C{code} is about, for the errors a
    certificate shows by itself: the first one expired or not yet valid at
    C{now}; the end of the path from the leaf through the chain (whose
    issuer was not found); the first self-signed one past the leaf.
    L{None} for other errors, or when no certificate of C{chain} shows it.
    """
    if code in (_EXPIRED, _NOT_YET_VALID):
        for depth, certificate in enumerate(chain):
            expired = certificate.not_valid_after_utc < now
            if expired if code == _EXPIRED else certificate.not_valid_before_utc > now:
                return depth
        return None
    if code in (_NO_ISSUER, _NO_LOCAL_ISSUER) and chain:
        depth, rest = 0, list(chain[1:])
        while True:
            issuer = next((c for c in rest if c.subject == chain[depth].issuer), None)
            if issuer is None or issuer.subject == issuer.issuer:
                return depth
            rest.remove(issuer)
            depth = chain.index(issuer)
    if code == _SELF_SIGNED_IN_CHAIN:
        return next((d for d, c in enumerate(chain) if d and c.subject == c.issuer), None)
    return None


@implementer(ITLSEngine)
class StdlibEngine:
    """
    One TLS connection, client or server, over memory BIOs.

    @ivar peer_closed: whether the peer's close_notify has been read.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        config: AnyTLSConfig,
        server_hostname: str | None = None,
        *,
        server_side: bool = False,
        session: ssl.SSLSession | None = None,
        verify_name: str | None = None,
    ) -> None:
        """
        @param context: the finished C{SSLContext} for C{config}.
        @param config: the configuration, for its checks and the words of
            failures.
        @param server_hostname: the name sent as SNI (not for IP literals);
            clients only.
        @param server_side: whether this is the server end.
        @param session: a session to offer for resumption; clients only.
        @param verify_name: the name C{context} (which checks host names)
            checks the server's certificate against, and the SNI sent
            unless it is an IP literal (see L{_checked_name}); L{None} if
            C{context} does not check host names.
        @raise TLSFailure: C{server_hostname} cannot be sent as SNI.
        """
        self.peer_closed = False
        self._server = server_side
        self._versions = version_range(config)
        verifies = not server_side or getattr(config, "require_client_certificate", False)
        self._verify_depth: int | None = config.verify_depth if verifies else None
        self._handshake_done = False
        self._close_sent = False
        self._failure: TLSFailure | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._verify_name = verify_name
        sni = None if server_side else verify_name or sni_name(server_hostname)
        if server_side or not isinstance(session, ssl.SSLSession):
            session = None
        try:
            self._object = context.wrap_bio(
                self._incoming, self._outgoing, server_side=server_side, server_hostname=sni
            ) if session is None else self._resuming(context, sni, session)
        except (UnicodeError, ValueError) as e:
            raise TLSFailure(f"cannot send {server_hostname!r} as SNI ({e})") from e

    def _resuming(self, context: ssl.SSLContext, sni: str | None, session: ssl.SSLSession) -> ssl.SSLObject:
        """
        A client C{SSLObject} offering C{session}; one that C{context}
        refuses (a session of an older context for the same configuration,
        evicted and rebuilt since) gives a full handshake instead.
        """
        try:
            return context.wrap_bio(self._incoming, self._outgoing, server_hostname=sni, session=session)
        except ValueError:
            return context.wrap_bio(self._incoming, self._outgoing, server_hostname=sni)

    def _fail(self, failure: TLSFailure) -> TLSFailure:
        """
        Remember C{failure}: the connection is unusable from now on.
        """
        if self._failure is None:
            self._failure = failure
        return failure

    def _describe(self, error: ssl.SSLError, stage: str) -> TLSFailure:
        """
        A L{TLSFailure} for what C{ssl} raised, in the OpenSSL backend's words.
        """
        if isinstance(error, ssl.SSLCertVerificationError):
            if error.verify_code in _NAME_MISMATCH_CODES and self._verify_name is not None:
                return self._mismatch(error)
            message = error.verify_message or raw_reason(error)
            message = _SAME_WORDS.get(message, message)
            where = "depth 0" if error.verify_code in _LEAF_ONLY_CODES else self._locate(error.verify_code)
            return verification_failed(f"{message} ({where})", server=self._server)
        return TLSFailure(
            describe_reason(
                raw_reason(error),
                stage,
                *self._versions,
                server=self._server,
                connection_ended=isinstance(error, (ssl.SSLEOFError, ssl.SSLSyscallError)),
            )
        )

    def _locate(self, code: int) -> str:
        """
        Where in the chain the peer sent OpenSSL's verify error C{code}
        most likely arose, as OpenSSL's verify callback would say it
        (C{"depth 1, subject /CN=..."}), for the errors one certificate of
        that chain shows by itself (L{locate_verify_error}); else
        C{"depth unknown"}.
        """
        try:
            chain = [_certificate(item) for item in _chain(self._object, "get_unverified_chain") or ()]
            found = locate_verify_error(code, chain, datetime.datetime.now(datetime.UTC))
        except Exception:
            found = None
        if found is None:
            return "depth unknown"
        return f"depth {found}, subject {subject_line(chain[found]) or '(empty)'}"

    def _mismatch(self, error: ssl.SSLCertVerificationError) -> TLSFailure:
        """
        OpenSSL found that the leaf does not name C{verify_name}: say so in
        the words of L{verify_identity} (which names the names the
        certificate holds), from the chain the server sent.
        """
        name = self._verify_name
        try:
            verify_identity(_certificate(_chain(self._object, "get_unverified_chain")[0]), name)  # type: ignore[index]
        except TLSFailure as failure:
            return failure
        except Exception:
            pass  # no chain to read: OpenSSL's words only
        return TLSFailure(
            f"hostname mismatch: the certificate is not valid for {name}"
            f" ({error.verify_message or raw_reason(error)})"
        )

    def _check_depth(self) -> None:
        """
        Fail as OpenSSL's verify depth would: the verified chain (anchor
        included) may hold at most C{verify_depth + 2} certificates.
        """
        depth = self._verify_depth
        if depth is None or depth < 0:
            return
        chain = _chain(self._object, "get_verified_chain")
        if chain is None or len(chain) <= depth + 2:
            return
        try:
            subject = subject_line(_certificate(chain[depth + 1])) or "(empty)"
        except Exception:
            subject = "(unreadable)"
        raise verification_failed(
            f"certificate chain too long (depth {depth + 1}, subject {subject})",
            server=self._server,
        )

    def receive(self, ciphertext: bytes) -> None:
        """
        Hand the engine bytes that arrived from the network.
        """
        self._incoming.write(ciphertext)

    def do_handshake(self) -> bool:
        """
        Advance the handshake; see L{ITLSEngine.do_handshake}.
        """
        if self._failure is not None:
            raise self._failure
        if self._handshake_done:
            return True
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as e:
            raise self._fail(self._describe(e, "handshake failed")) from e
        try:
            self._check_depth()
        except TLSFailure as e:
            raise self._fail(e) from None
        self._handshake_done = True
        return True

    def read(self) -> bytes:
        """
        Decrypt all the plaintext available now; see L{ITLSEngine.read}.
        """
        if self._failure is not None:
            raise self._failure
        if not self._handshake_done and not self.do_handshake():
            return b""
        if self.peer_closed:
            return b""
        read = self._object.read
        chunks: list[bytes] = []
        while True:
            try:
                data = read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            except ssl.SSLError as e:
                raise self._fail(self._describe(e, "TLS connection failed")) from e
            if not data:
                # ssl returns b"" for close_notify until this side sent its own.
                self.peer_closed = True
                break
            chunks.append(data)
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def write(self, plaintext: bytes) -> None:
        """
        Encrypt all of C{plaintext} for sending.

        @raise TLSFailure: close_notify was already sent, the handshake is not
            complete, or the connection failed.
        """
        if self._close_sent:
            raise TLSFailure("cannot send: this side already sent close_notify")
        if self._failure is not None:
            raise self._failure
        if not self._handshake_done:
            raise TLSFailure("cannot send: the handshake is not complete")
        view = memoryview(plaintext)
        write = self._object.write
        try:
            while view:
                view = view[write(view) :]
        except ssl.SSLError as e:
            raise self._fail(self._describe(e, "TLS connection failed")) from e

    def close_notify(self) -> None:
        """
        Queue a close_notify alert once; later calls do nothing.
        """
        if self._close_sent:
            return
        self._close_sent = True
        try:
            self._object.unwrap()
        except ssl.SSLError:
            # SSLWantReadError is expected (the peer's close_notify is not
            # awaited); any other failure leaves nothing to close cleanly.
            pass

    def outgoing(self) -> bytes:
        """
        Take the ciphertext queued for the network, C{b""} if none.
        """
        return self._outgoing.read()

    def session_info(self) -> TLSSessionInfo:
        """
        Describe the finished handshake. On a server, C{peer_chain} is the
        client's chain (empty if it sent none) and C{server_name} the SNI
        name it sent.
        """
        sslobject = self._object
        cipher = sslobject.cipher()
        return TLSSessionInfo(
            version=_VERSION_NAMES[sslobject.version() or ""],
            cipher=cipher[0] if cipher else "",
            peer_chain=self._peer_chain(),
            alpn=sslobject.selected_alpn_protocol(),
            resumed=bool(sslobject.session_reused),
            server_name=getattr(sslobject, "ssa_server_name", None) if self._server else None,
            group=getattr(sslobject, "group", lambda: None)(),  # Python 3.13 and later
        )

    def session(self) -> ssl.SSLSession | None:
        """
        The connection's session, for a later engine; see
        L{ITLSEngine.session}.
        """
        session = self._object.session
        if session is not None and self._object.version() == "TLSv1.3" and not session.has_ticket:
            return None  # no NewSessionTicket read yet: nothing to resume
        return session

    def _peer_chain(self) -> tuple[x509.Certificate, ...]:
        """
        The certificates the peer sent, leaf first (the leaf alone if this
        Python cannot give the rest).
        """
        der = self._object.getpeercert(binary_form=True)
        if not der:
            return ()
        leaf = x509.load_der_x509_certificate(der)
        try:
            rest = [_certificate(item) for item in _chain(self._object, "get_unverified_chain") or ()]
        except Exception:
            rest = []
        return peer_chain(leaf, rest)


@implementer(ITLSBackend)
class StdlibBackend:
    """
    Make L{StdlibEngine}s, sharing one C{SSLContext} per distinct
    configuration.

    @cvar name: C{"stdlib"}.
    @cvar description: one line for people.
    """

    name = "stdlib"
    description = f"Python's ssl module ({ssl.OPENSSL_VERSION})"

    def __init__(self, cache_size: int = 256) -> None:
        """
        @param cache_size: how many contexts to keep, client and server
            together (least recently used first out).
        """
        self._contexts: ContextCache[ssl.SSLContext] = ContextCache(
            cache_size, build_client_context, build_server_context
        )
        self._checking: ContextCache[ssl.SSLContext] = ContextCache(
            cache_size, build_checking_client_context, build_server_context
        )

    def context_for(self, config: AnyTLSConfig) -> ssl.SSLContext:
        """
        The cached C{SSLContext} for C{config} (client or server), built on
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
    ) -> StdlibEngine:
        """
        Make a client engine; see L{ITLSBackend.client_engine}. With
        C{verify_name}, OpenSSL checks it inside the handshake, from a
        second context per configuration (C{check_hostname} is a context's
        setting), when C{ssl} can (L{_checked_name}).
        """
        name = _checked_name(server_hostname, verify_name)
        if name is None:
            return StdlibEngine(self.context_for(config), config, server_hostname, session=session)  # type: ignore[arg-type]
        return StdlibEngine(
            self._checking.get(config), config, server_hostname, session=session, verify_name=name  # type: ignore[arg-type]
        )

    def server_engine(self, config: ServerTLSConfig) -> StdlibEngine:
        """
        Make a server engine; see L{ITLSBackend.server_engine}.

        @raise TLSFailure: the credentials are unusable.
        """
        return StdlibEngine(self.context_for(config), config, server_side=True)
