"""
Tests for L{ssa.backends.stdlib}: engines pumped against each other in
memory (stdlib with stdlib, and with the OpenSSL backend both ways), and a
client engine against a real C{openssl s_server} over loopback TCP.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import subprocess
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ssa.backends._openssl_errors import describe_ssl_error
from ssa.backends._tls_common import describe_reason, version_range
from ssa.backends.openssl import OpenSSLBackend
from ssa.backends.stdlib import (
    StdlibBackend,
    StdlibEngine,
    default_tls13_suites,
    raw_reason,
)
from ssa.constants import TLS_1_0, TLS_1_2, TLS_1_3
from ssa.errors import TLSFailure
from ssa.interfaces import ITLSBackend, ITLSEngine
from ssa.tlsconfig import (
    DEFAULT_TLS13_CIPHERS,
    ClientTLSConfig,
    Credential,
    ServerTLSConfig,
    subject_line,
)

_TIMEOUT = 10.0
_NOW = datetime.datetime.now(datetime.timezone.utc)
_DAY = datetime.timedelta(days=1)

_Pair = tuple[x509.Certificate, object]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SSA Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: str,
    issuer: _Pair | None = None,
    *,
    ca: bool = False,
    key: object = None,
    not_before: datetime.datetime = _NOW - _DAY,
    not_after: datetime.datetime = _NOW + _DAY,
) -> _Pair:
    """
    A self-signed CA (no C{issuer}), an intermediate CA (C{ca}) or a leaf
    for C{subject} signed by C{issuer}; an ECDSA P-256 key unless C{key}.
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .add_extension(
            x509.BasicConstraints(ca=ca or issuer is None, path_length=None),
            critical=True,
        )
        # Key identifiers: OpenSSL's strict X.509 checks demand them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)  # type: ignore[attr-defined]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key((issuer[1] if issuer else key).public_key()),  # type: ignore[attr-defined]
            critical=False,
        )
    )
    if issuer is not None and not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    signing_key = issuer[1] if issuer else key
    return builder.sign(signing_key, hashes.SHA256()), key  # type: ignore[arg-type]


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _key_pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


CA = _certificate("SSA Test CA")
OTHER_CA = _certificate("SSA Other CA")
INTERMEDIATE = _certificate("SSA Intermediate", CA, ca=True)
LEAF = _certificate("localhost", INTERMEDIATE)
RSA_LEAF = _certificate(
    "localhost", INTERMEDIATE, key=rsa.generate_private_key(65537, 2048)
)
EXPIRED = _certificate("localhost", INTERMEDIATE, not_before=_NOW - 10 * _DAY, not_after=_NOW - 5 * _DAY)
FOREIGN = _certificate("localhost", OTHER_CA)
CLIENT = _certificate("client.example", CA)


def _credential(pair: _Pair, *chain: x509.Certificate) -> Credential:
    return Credential(chain_pem=_pem(pair[0], *chain), key_pem=_key_pem(pair[1]))


def _client_config(*anchors: x509.Certificate, **kwargs: object) -> ClientTLSConfig:
    return ClientTLSConfig(
        trust_anchors=_pem(*(anchors or (CA[0],))),
        use_system_store=False,
        **kwargs,  # type: ignore[arg-type]
    )


def _server_config(*credentials: Credential, **kwargs: object) -> ServerTLSConfig:
    return ServerTLSConfig(
        credentials=credentials or (_credential(LEAF, INTERMEDIATE[0]),),
        **kwargs,  # type: ignore[arg-type]
    )


def _move(source: object, destination: object) -> bool:
    """
    Carry what C{source} queued to C{destination}; whether anything moved.
    """
    data = source.outgoing()  # type: ignore[attr-defined]
    if data:
        destination.receive(data)  # type: ignore[attr-defined]
    return bool(data)


def _pump(client: object, server: object) -> dict[str, TLSFailure]:
    """
    Run both handshakes in memory until neither side has more to say.

    @return: the failure of each side that failed, by C{"client"} and
        C{"server"}.
    """
    failures: dict[str, TLSFailure] = {}
    done = {"client": False, "server": False}
    for _ in range(50):
        moved = False
        for side, engine, peer in (("client", client, server), ("server", server, client)):
            if side not in failures and not done[side]:
                try:
                    done[side] = engine.do_handshake()  # type: ignore[attr-defined]
                except TLSFailure as e:
                    failures[side] = e
            moved = _move(engine, peer) or moved
        if not moved:
            break
    return failures


class _PairTests:
    """
    A client engine of C{client_backend} and a server engine of
    C{server_backend}, pumped against each other in memory.
    """

    client_backend: Callable[[], object]
    server_backend: Callable[[], object]

    def setUp(self) -> None:
        self.clients = self.client_backend()
        self.servers = self.server_backend()

    def connect(
        self,
        client_config: ClientTLSConfig | None = None,
        server_config: ServerTLSConfig | None = None,
        hostname: str | None = "localhost",
    ) -> tuple[object, object, dict[str, TLSFailure]]:
        client = self.clients.client_engine(client_config or _client_config(), hostname)  # type: ignore[attr-defined]
        server = self.servers.server_engine(server_config or _server_config())  # type: ignore[attr-defined]
        return client, server, _pump(client, server)

    def assertReasonStarts(self, failure: TLSFailure | None, prefix: str) -> None:
        self.assertIsInstance(failure, TLSFailure)  # type: ignore[attr-defined]
        assert failure is not None
        self.assertTrue(  # type: ignore[attr-defined]
            failure.reason.startswith(prefix), f"{failure.reason!r} !~ {prefix!r}"
        )

    def test_success(self) -> None:
        """
        A TLS 1.3 handshake completes, data flows both ways, and each side
        describes the session.
        """
        client, server, failures = self.connect()
        self.assertEqual(failures, {})  # type: ignore[attr-defined]
        client.write(b"ping")  # type: ignore[attr-defined]
        _move(client, server)
        self.assertEqual(server.read(), b"ping")  # type: ignore[attr-defined]
        server.write(b"pong" * 100000)  # type: ignore[attr-defined]
        _move(server, client)
        self.assertEqual(client.read(), b"pong" * 100000)  # type: ignore[attr-defined]
        self.assertEqual(client.read(), b"")  # type: ignore[attr-defined]

        info = client.session_info()  # type: ignore[attr-defined]
        self.assertEqual(info.version, TLS_1_3)  # type: ignore[attr-defined]
        self.assertEqual(info.cipher, "TLS_AES_256_GCM_SHA384")  # type: ignore[attr-defined]
        self.assertEqual(info.peer_chain, (LEAF[0], INTERMEDIATE[0]))  # type: ignore[attr-defined]
        self.assertEqual((info.alpn, info.resumed, info.server_name), (None, False, None))  # type: ignore[attr-defined]
        info = server.session_info()  # type: ignore[attr-defined]
        self.assertEqual(info.version, TLS_1_3)  # type: ignore[attr-defined]
        self.assertEqual(info.peer_chain, ())  # type: ignore[attr-defined]
        self.assertEqual(info.server_name, "localhost")  # type: ignore[attr-defined]

    def test_tls12(self) -> None:
        """
        With TLS 1.2 at most, the server's first ECDSA cipher is chosen.
        """
        client, server, failures = self.connect(_client_config(max_version=TLS_1_2))
        self.assertEqual(failures, {})  # type: ignore[attr-defined]
        for engine in (client, server):
            info = engine.session_info()  # type: ignore[attr-defined]
            self.assertEqual(info.version, TLS_1_2)  # type: ignore[attr-defined]
            self.assertEqual(info.cipher, "ECDHE-ECDSA-AES256-GCM-SHA384")  # type: ignore[attr-defined]

    def test_untrusted_issuer(self) -> None:
        """
        A chain from an issuer the client does not trust fails the client's
        check, and the server hears why.
        """
        _, _, failures = self.connect(_client_config(OTHER_CA[0]))
        self.assertReasonStarts(
            failures.get("client"),
            "certificate verification failed: unable to get local issuer certificate (depth ",
        )
        self.assertReasonStarts(
            failures.get("server"),
            "handshake failed: the peer sent alert unknown_ca: it does not trust the"
            " server certificate's issuer",
        )

    def test_expired(self) -> None:
        """
        An expired server certificate fails the client's check.
        """
        _, _, failures = self.connect(
            server_config=_server_config(_credential(EXPIRED, INTERMEDIATE[0]))
        )
        self.assertReasonStarts(
            failures.get("client"), "certificate verification failed: certificate has expired ("
        )
        self.assertReasonStarts(
            failures.get("server"),
            "handshake failed: the peer sent alert certificate_expired: it considers"
            " the server certificate expired",
        )

    def test_verify_depth(self) -> None:
        """
        A chain longer than the verify depth allows fails as OpenSSL's own
        depth check does; one just within it passes.
        """
        _, _, failures = self.connect(_client_config(verify_depth=0))
        self.assertEqual(  # type: ignore[attr-defined]
            failures["client"].reason,
            "certificate verification failed: certificate chain too long (depth 1,"
            f" subject {subject_line(INTERMEDIATE[0])})",
        )
        _, _, failures = self.connect(_client_config(verify_depth=1))
        self.assertEqual(failures, {})  # type: ignore[attr-defined]

    def test_version_range(self) -> None:
        """
        Disjoint version ranges fail on both sides, naming each side's range.
        """
        _, _, failures = self.connect(
            _client_config(max_version=TLS_1_2), _server_config(min_version=TLS_1_3)
        )
        self.assertReasonStarts(
            failures.get("client"),
            "handshake failed: the peer sent alert protocol_version: it accepts no TLS"
            " version in the allowed range TLS 1.2 (",
        )
        self.assertReasonStarts(
            failures.get("server"),
            "handshake failed: the peer offers no TLS version in the allowed range TLS 1.3 (",
        )

    def test_close_notify(self) -> None:
        """
        close_notify ends one direction only: the other side sees
        C{peer_closed} and can still send until it closes too.
        """
        client, server, failures = self.connect()
        self.assertEqual(failures, {})  # type: ignore[attr-defined]
        client.write(b"last words")  # type: ignore[attr-defined]
        client.close_notify()  # type: ignore[attr-defined]
        _move(client, server)
        client.close_notify()  # type: ignore[attr-defined]
        self.assertEqual(client.outgoing(), b"")  # type: ignore[attr-defined]
        self.assertRaises(TLSFailure, client.write, b"more")  # type: ignore[attr-defined]
        self.assertEqual(server.read(), b"last words")  # type: ignore[attr-defined]
        self.assertTrue(server.peer_closed)  # type: ignore[attr-defined]
        self.assertEqual(server.read(), b"")  # type: ignore[attr-defined]

        server.write(b"reply after half-close")  # type: ignore[attr-defined]
        _move(server, client)
        self.assertEqual(client.read(), b"reply after half-close")  # type: ignore[attr-defined]
        self.assertFalse(client.peer_closed)  # type: ignore[attr-defined]
        server.close_notify()  # type: ignore[attr-defined]
        _move(server, client)
        self.assertEqual(client.read(), b"")  # type: ignore[attr-defined]
        self.assertTrue(client.peer_closed)  # type: ignore[attr-defined]

    def test_client_certificate_missing(self) -> None:
        """
        A server that requires a client certificate refuses a client without
        one; the TLS 1.3 client learns it from the alert after its handshake.
        """
        client, server, failures = self.connect(
            server_config=_server_config(
                require_client_certificate=True, client_anchors=_pem(CA[0])
            )
        )
        self.assertReasonStarts(
            failures.get("server"),
            "handshake failed: the client sent no certificate (one is required)",
        )
        self.assertNotIn("client", failures)  # type: ignore[attr-defined]
        with self.assertRaises(TLSFailure) as caught:  # type: ignore[attr-defined]
            client.read()  # type: ignore[attr-defined]
        self.assertReasonStarts(
            caught.exception,
            "TLS connection failed: the peer sent alert certificate_required: it"
            " requires a client certificate",
        )

    def test_alpn_server_preference(self) -> None:
        """
        The server's preference order picks the protocol.
        """
        client, server, failures = self.connect(
            _client_config(alpn=("http/1.1", "h2")),
            _server_config(alpn=("h2", "http/1.1")),
        )
        self.assertEqual(failures, {})  # type: ignore[attr-defined]
        self.assertEqual(client.session_info().alpn, "h2")  # type: ignore[attr-defined]
        self.assertEqual(server.session_info().alpn, "h2")  # type: ignore[attr-defined]

    def test_alpn_no_overlap(self) -> None:
        """
        With no protocol in common, the handshake goes on without one.
        """
        client, server, failures = self.connect(
            _client_config(alpn=("spdy/3",)), _server_config(alpn=("h2",))
        )
        self.assertEqual(failures, {})  # type: ignore[attr-defined]
        self.assertIsNone(client.session_info().alpn)  # type: ignore[attr-defined]
        self.assertIsNone(server.session_info().alpn)  # type: ignore[attr-defined]

    def test_sni(self) -> None:
        """
        The server records the SNI name: none for IP literals, without the
        trailing dot of an absolute name.
        """
        for hostname, expected in (
            ("127.0.0.1", None),
            ("::1", None),
            (None, None),
            ("localhost.", "localhost"),
            ("www.example.com", "www.example.com"),
        ):
            _, server, failures = self.connect(hostname=hostname)
            self.assertEqual(failures, {})  # type: ignore[attr-defined]
            self.assertEqual(server.session_info().server_name, expected, hostname)  # type: ignore[attr-defined]

    def test_rsa_and_ecdsa(self) -> None:
        """
        A server with an RSA and an ECDSA credential serves the one the
        client's ciphers allow, each with its chain.
        """
        config = _server_config(
            _credential(RSA_LEAF, INTERMEDIATE[0]), _credential(LEAF, INTERMEDIATE[0])
        )
        for cipher, leaf in (
            ("ECDHE-RSA-AES128-GCM-SHA256", RSA_LEAF[0]),
            ("ECDHE-ECDSA-AES128-GCM-SHA256", LEAF[0]),
        ):
            client, _, failures = self.connect(
                _client_config(max_version=TLS_1_2, tls12_ciphers=(cipher,)), config
            )
            self.assertEqual(failures, {})  # type: ignore[attr-defined]
            info = client.session_info()  # type: ignore[attr-defined]
            self.assertEqual(info.cipher, cipher)  # type: ignore[attr-defined]
            self.assertEqual(info.peer_chain[0], leaf)  # type: ignore[attr-defined]


_HAS_OPENSSL_SERVER = hasattr(OpenSSLBackend, "server_engine")
_NO_OPENSSL_SERVER = "OpenSSLBackend.server_engine does not exist yet"


class StdlibPairTests(_PairTests, SynchronousTestCase):
    """
    Stdlib client, stdlib server.
    """

    client_backend = StdlibBackend
    server_backend = StdlibBackend


class StdlibClientOpenSSLServerTests(_PairTests, SynchronousTestCase):
    """
    Stdlib client, OpenSSL-backend server.
    """

    client_backend = StdlibBackend
    server_backend = OpenSSLBackend
    if not _HAS_OPENSSL_SERVER:
        skip = _NO_OPENSSL_SERVER


class OpenSSLClientStdlibServerTests(_PairTests, SynchronousTestCase):
    """
    OpenSSL-backend client, stdlib server.
    """

    client_backend = OpenSSLBackend
    server_backend = StdlibBackend
    if not _HAS_OPENSSL_SERVER:
        skip = _NO_OPENSSL_SERVER


class StdlibBackendTests(SynchronousTestCase):
    """
    What only the stdlib backend does: its configuration checks, context
    cache and client certificates.
    """

    def setUp(self) -> None:
        self.backend = StdlibBackend()

    def test_interfaces(self) -> None:
        """
        The backend and both kinds of engine provide their interfaces.
        """
        self.assertTrue(verifyObject(ITLSBackend, self.backend))
        self.assertEqual(self.backend.name, "stdlib")
        self.assertIn("ssl", self.backend.description)
        client = self.backend.client_engine(_client_config(), "localhost")
        server = self.backend.server_engine(_server_config())
        for engine in (client, server):
            self.assertIsInstance(engine, StdlibEngine)
            self.assertTrue(verifyObject(ITLSEngine, engine))
            self.assertFalse(engine.peer_closed)

    def test_context_cache(self) -> None:
        """
        Equal configurations share one context; the least recently used is
        dropped past the cache size.
        """
        backend = StdlibBackend(cache_size=2)
        one, two, three = (_client_config(verify_depth=d) for d in (1, 2, 3))
        first = backend.context_for(one)
        self.assertIs(backend.context_for(_client_config(verify_depth=1)), first)
        second = backend.context_for(two)
        self.assertIsNot(second, first)
        backend.context_for(one)  # now more recent than two
        backend.context_for(three)  # drops two
        self.assertIs(backend.context_for(one), first)
        self.assertIsNot(backend.context_for(two), second)
        server = self.backend.context_for(_server_config())
        self.assertIs(self.backend.context_for(_server_config()), server)
        self.assertIs(self.backend.server_engine(_server_config())._object.context, server)

    def test_client_context(self) -> None:
        """
        A client context verifies (not host names), with the configured
        versions and options.
        """
        context = self.backend.context_for(_client_config(min_version=TLS_1_0))
        self.assertFalse(context.check_hostname)
        self.assertEqual(context.verify_mode, ssl.CERT_REQUIRED)
        self.assertEqual(context.minimum_version, ssl.TLSVersion.TLSv1)
        self.assertEqual(context.maximum_version, ssl.TLSVersion.TLSv1_3)
        self.assertTrue(context.options & ssl.OP_NO_COMPRESSION)
        tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        self.assertEqual(tls12, list(ClientTLSConfig().tls12_ciphers))

    def test_key_mismatch(self) -> None:
        """
        A key that does not belong to its certificate is refused when the
        context is built, naming the credential and its subject.
        """
        config = _server_config(
            Credential(chain_pem=_pem(LEAF[0]), key_pem=_key_pem(FOREIGN[1]))
        )
        with self.assertRaises(TLSFailure) as caught:
            self.backend.server_engine(config)
        self.assertEqual(
            caught.exception.reason,
            "server credential 1: the private key does not match the certificate"
            f" {subject_line(LEAF[0])}",
        )

    def test_keys_stay_in_memory(self) -> None:
        """
        Credentials reach OpenSSL through memory files, closed at once.
        """
        paths: list[tuple[str, str]] = []
        load = ssl.SSLContext.load_cert_chain

        def record(context: ssl.SSLContext, certfile: str, keyfile: str, password: object) -> None:
            paths.append((certfile, keyfile))
            for path in (certfile, keyfile):
                self.assertTrue(os.readlink(path).startswith("/memfd:ssa-"), os.readlink(path))
            load(context, certfile, keyfile, password)

        self.patch(ssl.SSLContext, "load_cert_chain", record)
        self.backend.server_engine(
            _server_config(_credential(LEAF, INTERMEDIATE[0]), _credential(RSA_LEAF))
        )
        self.assertEqual(len(paths), 2)
        for pair in paths:
            for path in pair:
                self.assertTrue(path.startswith("/proc/self/fd/"))
                if os.path.exists(path):  # the number may have been reused
                    self.assertFalse(os.readlink(path).startswith("/memfd:ssa-"))

    def test_bad_credentials(self) -> None:
        """
        Unreadable PEM, a second key of one type and no credential at all are
        refused with their reasons.
        """
        cases = [
            (
                (Credential(chain_pem=b"junk", key_pem=_key_pem(LEAF[1])),),
                "server credential 1: the certificate chain contains no certificate",
            ),
            (
                (_credential(LEAF), Credential(chain_pem=_pem(LEAF[0]), key_pem=b"junk")),
                "server credential 2: the private key for",
            ),
            (
                (_credential(LEAF), _credential(FOREIGN)),
                "server credential 2: a second ECDSA certificate",
            ),
            ((), "invalid TLS configuration: a server needs a certificate"),
        ]
        for credentials, prefix in cases:
            with self.assertRaises(TLSFailure) as caught:
                self.backend.server_engine(ServerTLSConfig(credentials=credentials))
            self.assertTrue(caught.exception.reason.startswith(prefix), caught.exception.reason)

    def test_bad_anchors(self) -> None:
        """
        Trust anchors that are not PEM certificates are refused.
        """
        config = ClientTLSConfig(trust_anchors=b"not PEM", use_system_store=False)
        with self.assertRaises(TLSFailure) as caught:
            self.backend.client_engine(config, "localhost")
        self.assertTrue(caught.exception.reason.startswith("the trusted certificates"))

    def test_tls13_suites(self) -> None:
        """
        The stdlib cannot restrict TLS 1.3 suites: a list without one of the
        defaults is refused (unless TLS 1.3 is off), a reordered list or a
        superset is accepted, and an empty list switches TLS 1.3 off.
        """
        self.assertEqual(set(default_tls13_suites()), set(DEFAULT_TLS13_CIPHERS))
        narrow = DEFAULT_TLS13_CIPHERS[:2]
        with self.assertRaises(TLSFailure) as caught:
            self.backend.context_for(_client_config(tls13_ciphers=narrow))
        self.assertIn("cannot restrict TLS 1.3 suites", caught.exception.reason)
        self.assertIn(DEFAULT_TLS13_CIPHERS[2], caught.exception.reason)
        self.assertRaises(
            TLSFailure, self.backend.context_for, _server_config(tls13_ciphers=narrow)
        )
        self.backend.context_for(_client_config(tls13_ciphers=narrow, max_version=TLS_1_2))
        self.backend.context_for(
            _client_config(
                tls13_ciphers=(*reversed(DEFAULT_TLS13_CIPHERS), "TLS_AES_128_CCM_SHA256")
            )
        )
        client = self.backend.client_engine(_client_config(tls13_ciphers=()), "localhost")
        server = self.backend.server_engine(_server_config())
        self.assertEqual(_pump(client, server), {})
        self.assertEqual(client.session_info().version, TLS_1_2)

    def test_version_configuration(self) -> None:
        """
        No TLS 1.2 cipher means TLS 1.3 only; nothing allowed is refused.
        """
        context = self.backend.context_for(_client_config(tls12_ciphers=()))
        self.assertEqual(context.minimum_version, ssl.TLSVersion.TLSv1_3)
        self.assertEqual(version_range(_client_config(tls13_ciphers=())), (TLS_1_2, TLS_1_2))
        with self.assertRaises(TLSFailure) as caught:
            self.backend.context_for(_client_config(tls12_ciphers=(), max_version=TLS_1_2))
        self.assertIn("no cipher suite or TLS version is allowed", caught.exception.reason)
        with self.assertRaises(TLSFailure) as caught:
            self.backend.context_for(_client_config(tls12_ciphers=("NO-SUCH-CIPHER",)))
        self.assertIn("no allowed cipher is known to OpenSSL", caught.exception.reason)

    def test_client_certificate(self) -> None:
        """
        A server that requires a client certificate verifies it against its
        client anchors and reports it; one from another issuer is refused.
        """
        for certificate, expected in (
            (CLIENT, None),
            (_certificate("client.example", OTHER_CA), "client certificate verification failed:"
             " unable to get local issuer certificate (depth unknown)"),
        ):
            client = _PlainClient(certificate)
            server = self.backend.server_engine(
                _server_config(require_client_certificate=True, client_anchors=_pem(CA[0]))
            )
            failures = _pump(client, server)
            if expected is None:
                self.assertEqual(failures, {})
                # OpenSSL completes a client's chain from its trust store.
                self.assertEqual(server.session_info().peer_chain, (CLIENT[0], CA[0]))
            else:
                self.assertEqual(failures["server"].reason, expected)

    def test_post_handshake_failure_sticks(self) -> None:
        """
        After a failed depth check the engine refuses to read or write.
        """
        client = self.backend.client_engine(_client_config(verify_depth=0), "localhost")
        server = self.backend.server_engine(_server_config())
        failure = _pump(client, server)["client"]
        for call in (client.do_handshake, client.read, lambda: client.write(b"x")):
            with self.assertRaises(TLSFailure) as caught:
                call()
            self.assertIs(caught.exception, failure)

    def test_write_before_handshake(self) -> None:
        """
        Writing before the handshake is complete is refused.
        """
        client = self.backend.client_engine(_client_config(), "localhost")
        self.assertRaises(TLSFailure, client.write, b"early")

    def test_raw_reason(self) -> None:
        """
        OpenSSL's reason text is taken out of the C{ssl} module's message.
        """
        error = ssl.SSLError(
            1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:1006)"
        )
        self.assertEqual(raw_reason(error), "tlsv1 alert unknown ca")
        self.assertEqual(raw_reason(ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:992)")), "EOF occurred in violation of protocol")

    def test_reasons_match_openssl_backend(self) -> None:
        """
        The shared wording gives the OpenSSL backend's reasons for the same
        OpenSSL reason text.
        """
        for raw in (
            "tlsv1 alert protocol version",
            "unsupported protocol",
            "wrong version number",
            "peer did not return a certificate",
            "no shared cipher",
            "no protocols available",
            "certificate verify failed",
            "sslv3 alert handshake failure",
            "tlsv13 alert certificate required",
            "tlsv1 alert unknown ca",
            "sslv3 alert certificate expired",
            "tlsv1 alert no application protocol",
            "tlsv1 unrecognized name",
            "something else",
        ):
            error = SSL.Error([("SSL routines", "", raw)])
            for server in (False, True):
                for versions in ((TLS_1_2, TLS_1_3), (TLS_1_2, TLS_1_2)):
                    self.assertEqual(
                        describe_reason(raw, "handshake failed", *versions, server=server),
                        describe_ssl_error(error, "handshake failed", *versions, server=server),
                    )


class _PlainClient:
    """
    A plain C{ssl} client over memory BIOs, trusting L{CA} and presenting a
    certificate (L{ClientTLSConfig} has none), shaped for L{_pump}.
    """

    def __init__(self, certificate: _Pair) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cadata=_pem(CA[0]).decode())
        fds = [os.memfd_create("cert"), os.memfd_create("key")]
        try:
            os.write(fds[0], _pem(certificate[0]))
            os.write(fds[1], _key_pem(certificate[1]))
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname="localhost"
        )

    def do_handshake(self) -> bool:
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as e:
            raise TLSFailure(str(e)) from e
        return True

    def receive(self, data: bytes) -> None:
        self._incoming.write(data)

    def outgoing(self) -> bytes:
        return self._outgoing.read()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OpenSSLServerPeerTests(SynchronousTestCase):
    """
    The stdlib client engine against C{openssl s_server} over loopback TCP,
    with a real blocking socket.
    """

    if shutil.which("openssl") is None:
        skip = "no openssl command"

    def s_server(self, *options: str, chain: tuple[_Pair, ...] = (LEAF, INTERMEDIATE)) -> socket.socket:
        """
        Start C{openssl s_server -rev} (it echoes lines reversed, and closes
        with close_notify on C{"CLOSE"}) for one connection, and connect.
        """
        certificate, key = self.mktemp(), self.mktemp()
        with open(certificate, "wb") as f:
            f.write(_pem(*(pair[0] for pair in chain)))
        with open(key, "wb") as f:
            f.write(_key_pem(chain[0][1]))
        port = _free_port()
        process = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
             "-rev", "-cert", certificate, "-key", key, *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(process.wait, _TIMEOUT)
        self.addCleanup(process.stdout.close)  # type: ignore[union-attr]
        self.addCleanup(process.kill)
        for line in process.stdout:  # type: ignore[union-attr]
            if line.startswith(b"ACCEPT"):
                break
        else:
            self.fail("openssl s_server did not start")
        sock = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
        self.addCleanup(sock.close)
        return sock

    def handshake(self, sock: socket.socket, engine: StdlibEngine) -> None:
        while True:
            try:
                done = engine.do_handshake()
            finally:
                out = engine.outgoing()
                if out:
                    sock.sendall(out)
            if done:
                return
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("EOF during the handshake")
            engine.receive(data)

    def read_until(self, sock: socket.socket, engine: StdlibEngine, end: bytes) -> bytes:
        received = b""
        while not received.endswith(end) and not engine.peer_closed:
            data = sock.recv(65536)
            if not data:
                break
            engine.receive(data)
            received += engine.read()
            out = engine.outgoing()
            if out:
                sock.sendall(out)
        return received

    def test_success(self) -> None:
        """
        Handshake, data both ways, the server's ALPN choice, and the server's
        close_notify.
        """
        sock = self.s_server("-cert_chain", self._intermediate_file(), "-alpn", "h2,http/1.1")
        engine = StdlibBackend().client_engine(
            _client_config(alpn=("http/1.1", "h2")), "localhost"
        )
        self.handshake(sock, engine)
        info = engine.session_info()
        self.assertEqual(info.version, TLS_1_3)
        self.assertEqual(info.cipher, "TLS_AES_256_GCM_SHA384")
        self.assertEqual(info.alpn, "h2")
        self.assertEqual(info.peer_chain, (LEAF[0], INTERMEDIATE[0]))
        engine.write(b"hello\n")
        sock.sendall(engine.outgoing())
        self.assertEqual(self.read_until(sock, engine, b"\n"), b"olleh\n")
        engine.write(b"CLOSE\n")
        sock.sendall(engine.outgoing())
        self.read_until(sock, engine, b"never")
        self.assertTrue(engine.peer_closed)

    def _intermediate_file(self) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(_pem(INTERMEDIATE[0]))
        return path

    def test_tls10_only_server(self) -> None:
        """
        A TLS 1.0-only server refuses; the reason names the allowed range.
        """
        sock = self.s_server("-tls1", "-cipher", "DEFAULT@SECLEVEL=0")
        engine = StdlibBackend().client_engine(_client_config(), "localhost")
        with self.assertRaises(TLSFailure) as caught:
            self.handshake(sock, engine)
        self.assertEqual(
            caught.exception.reason,
            "handshake failed: the peer sent alert protocol_version: it accepts no TLS"
            " version in the allowed range TLS 1.2\N{EN DASH}TLS 1.3"
            " (tlsv1 alert protocol version)",
        )

    def test_untrusted_issuer(self) -> None:
        """
        A server whose chain the client does not trust is refused.
        """
        sock = self.s_server(chain=(FOREIGN,))
        engine = StdlibBackend().client_engine(_client_config(), "localhost")
        with self.assertRaises(TLSFailure) as caught:
            self.handshake(sock, engine)
        self.assertEqual(
            caught.exception.reason,
            "certificate verification failed: unable to get local issuer certificate"
            " (depth 0, subject /C=US/O=SSA Tests/CN=localhost)",
        )


class LocateVerifyErrorTests(SynchronousTestCase):
    """
    L{locate_verify_error} finds the certificate an OpenSSL verify error is
    about in the chain the peer sent (pure logic).
    """

    def test_locate(self) -> None:
        from ssa.backends.stdlib import locate_verify_error
        from ssa.testing.certs import CertificateAuthority

        now = datetime.datetime.now(datetime.timezone.utc)
        ca = CertificateAuthority.create()
        intermediate = ca.issue_intermediate(
            not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=1)
        )
        leaf = intermediate.issue_server("localhost")
        chain = [leaf.cert, *leaf.chain]
        self.assertEqual(len(chain), 2)
        self.assertEqual(locate_verify_error(10, chain, now), 1)
        self.assertIsNone(locate_verify_error(9, chain, now))
        self.assertEqual(locate_verify_error(20, chain, now), 1)
        self.assertEqual(locate_verify_error(20, chain[:1], now), 0)
        self.assertEqual(locate_verify_error(19, [*chain, ca.cert], now), 2)
        self.assertIsNone(locate_verify_error(24, chain, now))
