"""
Tests for L{ssa.backends.openssl}: client engines driven over real loopback
TCP against stdlib C{ssl} servers and C{openssl s_server}; server engines
pumped against client engines in memory and driven over TCP against
C{openssl s_client}.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import threading
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ssa.backends.openssl import OpenSSLBackend, OpenSSLEngine, OpenSSLServerEngine
from ssa.constants import TLS_1_2, TLS_1_3
from ssa.errors import TLSFailure
from ssa.interfaces import ITLSBackend, ITLSEngine
from ssa.tlsconfig import (
    ClientTLSConfig,
    Credential,
    ServerTLSConfig,
    TLSSessionInfo,
    chain_pem,
    subject_line,
)

_TIMEOUT = 10.0
_NOW = datetime.datetime.now(datetime.timezone.utc)
_DAY = datetime.timedelta(days=1)


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
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    not_before: datetime.datetime = _NOW - _DAY,
    not_after: datetime.datetime = _NOW + _DAY,
    key: Any = None,
) -> tuple[x509.Certificate, Any]:
    """
    A CA (no C{issuer}) or a leaf for C{subject} signed by C{issuer}, with a
    new P-256 key unless C{key} is given.
    """
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # Key identifiers: OpenSSL's strict X.509 checks demand them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key((key if issuer is None else issuer[1]).public_key()),
            critical=False,
        )
    )
    if issuer is None:
        builder = builder.issuer_name(_name(subject)).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        signing_key = key
    else:
        builder = (
            builder.issuer_name(issuer[0].subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        )
        signing_key = issuer[1]
    return builder.sign(signing_key, hashes.SHA256()), key


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


CA = _certificate("SSA Test CA")
OTHER_CA = _certificate("SSA Other CA")
LEAF = _certificate("localhost", CA)
EXPIRED = _certificate("localhost", CA, _NOW - 10 * _DAY, _NOW - 5 * _DAY)
FOREIGN = _certificate("localhost", OTHER_CA)
RSA_LEAF = _certificate("localhost", CA, key=rsa.generate_private_key(65537, 2048))
CLIENT = _certificate("client", CA)
FOREIGN_CLIENT = _certificate("client", OTHER_CA)


def _handshake(sock: socket.socket, engine: OpenSSLEngine) -> None:
    """
    Pump until C{engine}'s handshake completes, sending what it queues.
    """
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


def _read(sock: socket.socket, engine: OpenSSLEngine, size: int) -> bytes:
    """
    Read C{size} bytes of plaintext, or less if the peer closes first.
    """
    received = b""
    while True:
        received += engine.read()
        out = engine.outgoing()
        if out:
            sock.sendall(out)
        if len(received) >= size or engine.peer_closed:
            return received
        data = sock.recv(65536)
        if not data:
            return received
        engine.receive(data)


class _Server:
    """
    A stdlib C{ssl} server on 127.0.0.1 that serves one connection in a
    thread with C{handler}.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        chain: list[x509.Certificate],
        key: ec.EllipticCurvePrivateKey,
        handler: Callable[[ssl.SSLSocket], None] = lambda s: None,
        maximum_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ) -> None:
        certfile, keyfile = test.mktemp(), test.mktemp()
        with open(certfile, "wb") as f:
            f.write(b"".join(_pem(c) for c in chain))
        with open(keyfile, "wb") as f:
            f.write(_key_pem(key))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.maximum_version = maximum_version
        self.context.load_cert_chain(certfile, keyfile)
        self.server_names: list[str | None] = []
        self.context.sni_callback = lambda s, name, c: self.server_names.append(name)
        self.errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, args=(handler,), daemon=True)
        self.thread.start()
        test.addCleanup(self.listener.close)
        test.addCleanup(self.thread.join, _TIMEOUT)

    def _serve(self, handler: Callable[[ssl.SSLSocket], None]) -> None:
        try:
            raw, _ = self.listener.accept()
            raw.settimeout(_TIMEOUT)
            with self.context.wrap_socket(raw, server_side=True) as tls:
                handler(tls)
        except BaseException as e:
            self.errors.append(e)

    def connect(self, test: SynchronousTestCase) -> socket.socket:
        """
        A blocking TCP connection to this server.
        """
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=_TIMEOUT)
        test.addCleanup(sock.close)
        return sock


def _trusting(*anchors: x509.Certificate, **kwargs: object) -> ClientTLSConfig:
    return ClientTLSConfig(
        trust_anchors=b"".join(_pem(a) for a in anchors),
        use_system_store=False,
        **kwargs,  # type: ignore[arg-type]
    )


class OpenSSLEngineTests(SynchronousTestCase):
    """
    L{OpenSSLEngine} against real TLS servers on loopback.
    """

    def setUp(self) -> None:
        self.backend = OpenSSLBackend()

    def _echo_once(self, tls: ssl.SSLSocket) -> None:
        tls.sendall(tls.recv(100).upper())
        tls.unwrap()

    def _roundTrip(self, config: ClientTLSConfig, expectedVersion: int) -> None:
        server = _Server(self, [LEAF[0], CA[0]], LEAF[1], self._echo_once)
        sock = server.connect(self)
        engine = self.backend.client_engine(config, "localhost")
        _handshake(sock, engine)
        info = engine.session_info()
        self.assertEqual(info.version, expectedVersion)
        self.assertEqual(info.peer_chain, (LEAF[0], CA[0]))
        self.assertEqual(chain_pem(info.peer_chain), _pem(LEAF[0]) + _pem(CA[0]))
        assert info.peer_certificate is not None
        self.assertEqual(
            subject_line(info.peer_certificate), "/C=US/O=SSA Tests/CN=localhost"
        )
        self.assertIsNone(info.alpn)
        self.assertFalse(info.resumed)
        engine.write(b"hello")
        sock.sendall(engine.outgoing())
        self.assertEqual(_read(sock, engine, 5), b"HELLO")
        self.assertEqual(_read(sock, engine, 1), b"")
        self.assertTrue(engine.peer_closed)
        engine.close_notify()
        sock.sendall(engine.outgoing())
        server.thread.join(_TIMEOUT)
        self.assertEqual(server.errors, [])
        self.assertEqual(server.server_names, ["localhost"])
        return info

    def test_interfaces(self) -> None:
        """
        The backend and its engines provide the interfaces.
        """
        self.assertTrue(verifyObject(ITLSBackend, self.backend))
        engine = self.backend.client_engine(_trusting(CA[0]), "localhost")
        self.assertTrue(verifyObject(ITLSEngine, engine))
        self.assertEqual(self.backend.name, "openssl")

    def test_tls13(self) -> None:
        """
        With the test CA as the only anchor, the handshake succeeds at TLS 1.3,
        data goes both ways and the peer's close_notify is seen.
        """
        info = self._roundTrip(_trusting(CA[0]), TLS_1_3)
        self.assertEqual(info.cipher, "TLS_AES_256_GCM_SHA384")

    def test_tls12(self) -> None:
        """
        With max_version TLS_1_2, TLS 1.2 is negotiated with the first cipher
        of the list that suits the server's key.
        """
        info = self._roundTrip(_trusting(CA[0], max_version=TLS_1_2), TLS_1_2)
        self.assertEqual(info.cipher, "ECDHE-ECDSA-AES256-GCM-SHA384")

    def test_tls13Suites(self) -> None:
        """
        The TLS 1.3 suites of the configuration are the ones offered.
        """
        config = _trusting(CA[0], tls13_ciphers=("TLS_CHACHA20_POLY1305_SHA256",))
        info = self._roundTrip(config, TLS_1_3)
        self.assertEqual(info.cipher, "TLS_CHACHA20_POLY1305_SHA256")

    def test_severalAnchors(self) -> None:
        """
        Every certificate of the anchors PEM is trusted.
        """
        self._roundTrip(_trusting(OTHER_CA[0], CA[0]), TLS_1_3)

    def _failure(
        self, config: ClientTLSConfig, chain: list[x509.Certificate], key: object
    ) -> str:
        server = _Server(self, chain, key)  # type: ignore[arg-type]
        sock = server.connect(self)
        engine = self.backend.client_engine(config, "localhost")
        failure = self.assertRaises(TLSFailure, _handshake, sock, engine)
        return failure.reason

    def test_untrustedIssuer(self) -> None:
        """
        A leaf from another CA fails: the reason names the check, depth and
        subject.
        """
        reason = self._failure(_trusting(CA[0]), [FOREIGN[0]], FOREIGN[1])
        self.assertEqual(
            reason,
            "certificate verification failed: unable to get local issuer"
            " certificate (depth 0, subject /C=US/O=SSA Tests/CN=localhost)",
        )

    def test_nothingTrusted(self) -> None:
        """
        With no anchors and no system store, nothing verifies.
        """
        config = ClientTLSConfig(use_system_store=False)
        reason = self._failure(config, [LEAF[0], CA[0]], LEAF[1])
        self.assertIn("certificate verification failed: ", reason)
        self.assertIn("depth 1, subject /C=US/O=SSA Tests/CN=SSA Test CA", reason)

    def test_expired(self) -> None:
        """
        An expired leaf fails with "certificate has expired" at depth 0.
        """
        reason = self._failure(_trusting(CA[0]), [EXPIRED[0], CA[0]], EXPIRED[1])
        self.assertEqual(
            reason,
            "certificate verification failed: certificate has expired"
            " (depth 0, subject /C=US/O=SSA Tests/CN=localhost)",
        )

    def test_tls10Server(self) -> None:
        """
        A TLS 1.0-only server fails the handshake; the reason names the range.
        """
        openssl = shutil.which("openssl")
        if openssl is None:
            raise self.skipTest("no openssl command")
        certfile, keyfile = self.mktemp(), self.mktemp()
        with open(certfile, "wb") as f:
            f.write(_pem(LEAF[0]) + _pem(CA[0]))
        with open(keyfile, "wb") as f:
            f.write(_key_pem(LEAF[1]))
        process = subprocess.Popen(
            [openssl, "s_server", "-accept", "127.0.0.1:0", "-naccept", "1",
             "-cert", certfile, "-key", keyfile, "-tls1",
             "-cipher", "DEFAULT@SECLEVEL=0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(process.wait, _TIMEOUT)
        self.addCleanup(process.kill)
        assert process.stdout is not None
        self.addCleanup(process.stdout.close)
        self.addCleanup(process.stdin.close)  # type: ignore[union-attr]
        line = ""
        while not line.startswith("ACCEPT "):
            line = process.stdout.readline().decode()
            self.assertTrue(line, "openssl s_server did not start")
        port = int(line.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
        self.addCleanup(sock.close)
        engine = self.backend.client_engine(_trusting(CA[0]), "localhost")
        failure = self.assertRaises(TLSFailure, _handshake, sock, engine)
        self.assertTrue(failure.reason.startswith("handshake failed: "), failure.reason)
        self.assertIn("TLS 1.2\N{EN DASH}TLS 1.3", failure.reason)

    def test_noSharedCipher(self) -> None:
        """
        A server that accepts none of our ciphers sends an alert, named in the
        reason with OpenSSL's text.
        """
        server = _Server(
            self, [LEAF[0], CA[0]], LEAF[1], maximum_version=ssl.TLSVersion.TLSv1_2
        )
        server.context.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305")
        sock = server.connect(self)
        config = _trusting(
            CA[0], max_version=TLS_1_2, tls12_ciphers=("ECDHE-ECDSA-AES128-GCM-SHA256",)
        )
        engine = self.backend.client_engine(config, "localhost")
        failure = self.assertRaises(TLSFailure, _handshake, sock, engine)
        self.assertTrue(
            failure.reason.startswith(
                "handshake failed: the peer sent alert handshake_failure: "
            ),
            failure.reason,
        )
        self.assertTrue(failure.reason.endswith("alert handshake failure)"), failure.reason)

    def test_alertAfterHandshake(self) -> None:
        """
        A TLS 1.3 server that requires a client certificate says so after our
        side of the handshake is done: L{OpenSSLEngine.read} raises.
        """
        server = _Server(self, [LEAF[0], CA[0]], LEAF[1], lambda tls: tls.recv(1))
        server.context.verify_mode = ssl.CERT_REQUIRED
        server.context.load_verify_locations(cadata=_pem(CA[0]).decode("ascii"))
        sock = server.connect(self)
        engine = self.backend.client_engine(_trusting(CA[0]), "localhost")
        _handshake(sock, engine)
        failure = self.assertRaises(TLSFailure, _read, sock, engine, 1)
        self.assertEqual(
            failure.reason,
            "TLS connection failed: the peer sent alert certificate_required:"
            " it requires a client certificate (tlsv13 alert certificate required)",
        )

    def test_halfClose(self) -> None:
        """
        Our close_notify reaches the peer as a clean EOF, and what the peer
        sends afterwards can still be read.
        """
        seen: list[bytes] = []

        def handler(tls: ssl.SSLSocket) -> None:
            seen.append(tls.recv(100))
            tls.sendall(b"after your close")
            tls.unwrap()

        server = _Server(self, [LEAF[0], CA[0]], LEAF[1], handler)
        sock = server.connect(self)
        engine = self.backend.client_engine(_trusting(CA[0]), "localhost")
        _handshake(sock, engine)
        engine.close_notify()
        engine.close_notify()
        sock.sendall(engine.outgoing())
        self.assertEqual(_read(sock, engine, 100), b"after your close")
        self.assertTrue(engine.peer_closed)
        server.thread.join(_TIMEOUT)
        self.assertEqual((seen, server.errors), ([b""], []))
        self.assertRaises(TLSFailure, engine.write, b"too late")

    def test_sni(self) -> None:
        """
        No SNI is sent for an IP literal.
        """
        server = _Server(self, [LEAF[0], CA[0]], LEAF[1])
        sock = server.connect(self)
        engine = self.backend.client_engine(_trusting(CA[0]), "127.0.0.1")
        _handshake(sock, engine)
        engine.close_notify()
        sock.sendall(engine.outgoing())
        server.thread.join(_TIMEOUT)
        self.assertEqual(server.server_names, [None])

    def test_outgoingEmpty(self) -> None:
        """
        Before anything happens there is nothing to send; the first handshake
        step queues a ClientHello.
        """
        engine = self.backend.client_engine(_trusting(CA[0]), "localhost")
        self.assertEqual(engine.outgoing(), b"")
        self.assertFalse(engine.do_handshake())
        hello = engine.outgoing()
        self.assertEqual(hello[:1], b"\x16")
        self.assertEqual(engine.outgoing(), b"")


class OpenSSLBackendTests(SynchronousTestCase):
    """
    L{OpenSSLBackend}'s Context cache.
    """

    def test_sameConfigSameContext(self) -> None:
        """
        Equal configurations share one Context; a different one gets its own.
        """
        backend = OpenSSLBackend()
        config = _trusting(CA[0])
        context = backend.context_for(config)
        self.assertIsInstance(context, SSL.Context)
        self.assertIs(backend.context_for(config), context)
        self.assertIs(backend.context_for(_trusting(CA[0])), context)
        engine = backend.client_engine(config, "localhost")
        self.assertIs(engine._connection.get_context(), context)
        self.assertIsNot(backend.context_for(_trusting(CA[0], max_version=TLS_1_2)), context)

    def test_bounded(self) -> None:
        """
        The least recently used Context is dropped past the cache size.
        """
        backend = OpenSSLBackend(cache_size=2)
        first, second, third = (_trusting(CA[0], verify_depth=n) for n in (1, 2, 3))
        context = backend.context_for(first)
        backend.context_for(second)
        self.assertIs(backend.context_for(first), context)
        backend.context_for(third)
        self.assertIs(backend.context_for(first), context)
        self.assertEqual(len(backend._contexts), 2)
        self.assertNotIn(second, backend._contexts)

    def test_badAnchors(self) -> None:
        """
        Anchors that are not PEM certificates are a L{TLSFailure}.
        """
        config = ClientTLSConfig(trust_anchors=b"not a certificate")
        self.assertRaises(TLSFailure, OpenSSLBackend().context_for, config)


def _credential(
    certificate: tuple[x509.Certificate, Any], *intermediates: x509.Certificate
) -> Credential:
    return Credential(
        b"".join(_pem(c) for c in (certificate[0], *intermediates)),
        _key_pem(certificate[1]),
    )


EC_CREDENTIAL = _credential(LEAF, CA[0])
RSA_CREDENTIAL = _credential(RSA_LEAF, CA[0])


def _pump(client: OpenSSLEngine, server: OpenSSLEngine) -> None:
    """
    Move each engine's output into the other until both handshakes are done.
    """
    client_done = server_done = False
    for _ in range(10):
        if not client_done:
            client_done = client.do_handshake()
        data = client.outgoing()
        if data:
            server.receive(data)
        if not server_done:
            server_done = server.do_handshake()
        data = server.outgoing()
        if data:
            client.receive(data)
        if client_done and server_done:
            return
    raise AssertionError("the handshakes did not finish")


def _flush(source: OpenSSLEngine, sink: OpenSSLEngine) -> bytes:
    """
    Move C{source}'s output into C{sink}, then read C{sink}'s plaintext.
    """
    data = source.outgoing()
    if data:
        sink.receive(data)
    return sink.read()


class OpenSSLServerEngineTests(SynchronousTestCase):
    """
    L{OpenSSLBackend.server_engine} against L{OpenSSLBackend.client_engine},
    pumped in memory.
    """

    def setUp(self) -> None:
        self.backend = OpenSSLBackend()

    def _pair(
        self,
        server: ServerTLSConfig,
        client: ClientTLSConfig | None = None,
        server_hostname: str | None = "localhost",
        client_certificate: tuple[x509.Certificate, Any] | None = None,
    ) -> tuple[OpenSSLEngine, OpenSSLServerEngine]:
        client_engine = self.backend.client_engine(
            client or _trusting(CA[0]), server_hostname
        )
        if client_certificate is not None:
            # ClientTLSConfig has no client credential yet: set one on this
            # Connection only (the cached Context stays untouched).
            client_engine._connection.use_certificate(client_certificate[0])
            client_engine._connection.use_privatekey(client_certificate[1])
        return client_engine, self.backend.server_engine(server)

    def _connect(
        self, server: ServerTLSConfig, client: ClientTLSConfig | None = None, **kwargs: Any
    ) -> tuple[TLSSessionInfo, TLSSessionInfo]:
        client_engine, server_engine = self._pair(server, client, **kwargs)
        _pump(client_engine, server_engine)
        return client_engine.session_info(), server_engine.session_info()

    def test_interfaces(self) -> None:
        """
        The backend still provides L{ITLSBackend}; server engines provide
        L{ITLSEngine}.
        """
        self.assertTrue(verifyObject(ITLSBackend, self.backend))
        engine = self.backend.server_engine(ServerTLSConfig((EC_CREDENTIAL,)))
        self.assertIsInstance(engine, OpenSSLServerEngine)
        self.assertTrue(verifyObject(ITLSEngine, engine))

    def test_roundTrip(self) -> None:
        """
        A client and a server engine complete a TLS 1.3 handshake, exchange
        data and close_notify; each side describes the other.
        """
        client, server = self._pair(ServerTLSConfig((EC_CREDENTIAL,)))
        self.assertEqual(server.outgoing(), b"")
        self.assertFalse(server.do_handshake())
        _pump(client, server)
        client.write(b"ping")
        self.assertEqual(_flush(client, server), b"ping")
        server.write(b"pong")
        self.assertEqual(_flush(server, client), b"pong")
        server.close_notify()
        self.assertEqual(_flush(server, client), b"")
        self.assertTrue(client.peer_closed)
        client.close_notify()
        self.assertEqual(_flush(client, server), b"")
        self.assertTrue(server.peer_closed)
        clientInfo, serverInfo = client.session_info(), server.session_info()
        self.assertEqual(clientInfo.peer_chain, (LEAF[0], CA[0]))
        self.assertEqual(
            serverInfo,
            TLSSessionInfo(
                version=TLS_1_3,
                cipher="TLS_AES_256_GCM_SHA384",
                peer_chain=(),
                alpn=None,
                resumed=False,
                server_name="localhost",
            ),
        )
        self.assertEqual(clientInfo.cipher, serverInfo.cipher)

    def test_verifiedInHandshake(self) -> None:
        """
        A client engine given a name checks the server's identity and path
        inside a full handshake and says so (C{verified_name}), so the
        daemon does not check them again; the chain it converted for that is
        the one C{session_info} gives, not converted again. A resumed
        handshake, an engine without a name and a server say L{None}: their
        callers check.
        """
        config = ServerTLSConfig((EC_CREDENTIAL,))
        client = self.backend.client_engine(_trusting(CA[0]), "localhost", verify_name="localhost")
        server = self.backend.server_engine(config)
        _pump(client, server)
        self.assertEqual(client.verified_name, "localhost")
        info = client.session_info()
        self.assertEqual(info.peer_chain, (LEAF[0], CA[0]))
        self.assertIs(client.session_info().peer_chain, info.peer_chain)
        self.assertIsNone(server.verified_name)
        server.write(b"ticket first")
        self.assertEqual(_flush(server, client), b"ticket first")
        session = client.session()
        self.assertIsNotNone(session)

        resumed = self.backend.client_engine(_trusting(CA[0]), "localhost", session, verify_name="localhost")
        _pump(resumed, self.backend.server_engine(config))
        self.assertTrue(resumed.session_info().resumed)
        self.assertIsNone(resumed.verified_name)
        self.assertEqual(resumed.session_info().peer_chain[0], LEAF[0])

        unnamed = self.backend.client_engine(_trusting(CA[0]), "localhost")
        _pump(unnamed, self.backend.server_engine(config))
        self.assertIsNone(unnamed.verified_name)
        self.assertEqual(unnamed.session_info().peer_chain, (LEAF[0], CA[0]))

    def test_tls12(self) -> None:
        """
        TLS 1.2 works, with the server's cipher order.
        """
        config = ServerTLSConfig((EC_CREDENTIAL,), max_version=TLS_1_2)
        client = _trusting(
            CA[0],
            tls12_ciphers=("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"),
        )
        clientInfo, serverInfo = self._connect(config, client)
        self.assertEqual(
            (serverInfo.version, serverInfo.cipher),
            (TLS_1_2, "ECDHE-ECDSA-AES256-GCM-SHA384"),
        )

    def test_rsaAndEcdsa(self) -> None:
        """
        An RSA and an ECDSA credential coexist on one context: a TLS 1.2
        client that allows only RSA (or only ECDSA) ciphers gets the RSA (or
        ECDSA) certificate.
        """
        config = ServerTLSConfig((RSA_CREDENTIAL, EC_CREDENTIAL))
        for cipher, keyType, leaf in [
            ("ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey, RSA_LEAF[0]),
            ("ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey, LEAF[0]),
        ]:
            client = _trusting(CA[0], max_version=TLS_1_2, tls12_ciphers=(cipher,))
            clientInfo, serverInfo = self._connect(config, client)
            self.assertEqual(serverInfo.cipher, cipher)
            self.assertIsInstance(clientInfo.peer_chain[0].public_key(), keyType)
            self.assertEqual(clientInfo.peer_chain, (leaf, CA[0]))
        self.assertEqual(len(self.backend._contexts), 3)

    def test_noCertificateForClient(self) -> None:
        """
        A client that allows only ciphers for a key type the server has no
        certificate for fails; the server's reason says so.
        """
        client, server = self._pair(
            ServerTLSConfig((RSA_CREDENTIAL,)),
            _trusting(
                CA[0], max_version=TLS_1_2, tls12_ciphers=("ECDHE-ECDSA-AES128-GCM-SHA256",)
            ),
        )
        failure = self.assertRaises(TLSFailure, _pump, client, server)
        self.assertTrue(
            failure.reason.startswith(
                "handshake failed: no allowed cipher suite is usable with the peer"
                " (or none suits the key types of the server's certificates)"
            ),
            failure.reason,
        )

    def _badConfig(self, *credentials: Credential) -> str:
        return self.assertRaises(
            TLSFailure, self.backend.server_engine, ServerTLSConfig(credentials)
        ).reason

    def test_keyMismatch(self) -> None:
        """
        A key that is not the certificate's, of the same or another type, is
        a L{TLSFailure} naming the certificate; nothing is cached.
        """
        for key in (CA[1], RSA_LEAF[1]):
            reason = self._badConfig(
                EC_CREDENTIAL, Credential(_pem(FOREIGN[0]), _key_pem(key))
            )
            self.assertEqual(
                reason,
                "server credential 2: the private key does not match the"
                " certificate /C=US/O=SSA Tests/CN=localhost",
            )
        self.assertEqual(len(self.backend._contexts), 0)

    def test_badPEM(self) -> None:
        """
        Unreadable PEM, a chain without a certificate, a second credential
        of one key type, or no credential at all are L{TLSFailure}s.
        """
        key = _key_pem(LEAF[1])
        for credentials, start in [
            ((Credential(b"junk", key),), "server credential 1: the certificate chain"
             " contains no certificate"),
            ((Credential(key, key),), "server credential 1: the certificate chain"
             " contains no certificate"),
            ((Credential(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                         key),),
             "server credential 1: the certificate chain is not valid PEM ("),
            ((Credential(_pem(LEAF[0]), b"junk"),),
             "server credential 1: the private key for /C=US/O=SSA Tests/CN=localhost"
             " is not a readable unencrypted PEM key ("),
            ((EC_CREDENTIAL, _credential(FOREIGN)),
             "server credential 2: a second ECDSA certificate"),
            ((), "invalid TLS configuration: a server needs a certificate"),
        ]:
            reason = self._badConfig(*credentials)
            self.assertTrue(reason.startswith(start), reason)

    def _required(self, **kwargs: Any) -> ServerTLSConfig:
        return ServerTLSConfig(
            (EC_CREDENTIAL,),
            require_client_certificate=True,
            client_anchors=_pem(CA[0]),
            **kwargs,
        )

    def test_clientCertificateMissing(self) -> None:
        """
        When a client certificate is required and none is sent, the server's
        handshake fails with that reason, at TLS 1.3 and 1.2; the TLS 1.3
        client learns it from the alert.
        """
        for version in (TLS_1_3, TLS_1_2):
            client, server = self._pair(self._required(max_version=version))
            failure = self.assertRaises(TLSFailure, _pump, client, server)
            self.assertEqual(
                failure.reason,
                "handshake failed: the client sent no certificate (one is required)"
                " (peer did not return a certificate)",
            )
            if version == TLS_1_3:
                clientFailure = self.assertRaises(TLSFailure, _flush, server, client)
                self.assertIn("alert certificate_required", clientFailure.reason)

    def test_clientCertificateTrusted(self) -> None:
        """
        A client certificate from a trusted CA is accepted; the server's
        session info carries the client's chain.
        """
        for version in (TLS_1_3, TLS_1_2):
            clientInfo, serverInfo = self._connect(
                self._required(max_version=version), client_certificate=CLIENT
            )
            self.assertEqual(serverInfo.version, version)
            self.assertEqual(serverInfo.peer_certificate, CLIENT[0])
            self.assertEqual(serverInfo.peer_chain[1:], (CA[0],))

    def test_clientCertificateUntrusted(self) -> None:
        """
        A client certificate from another CA fails with the failed check.
        """
        client, server = self._pair(self._required(), client_certificate=FOREIGN_CLIENT)
        failure = self.assertRaises(TLSFailure, _pump, client, server)
        self.assertEqual(
            failure.reason,
            "client certificate verification failed: unable to get local issuer"
            " certificate (depth 0, subject /C=US/O=SSA Tests/CN=client)",
        )

    def test_clientCertificateOptional(self) -> None:
        """
        Without require_client_certificate none is asked for.
        """
        clientInfo, serverInfo = self._connect(
            ServerTLSConfig((EC_CREDENTIAL,)), client_certificate=CLIENT
        )
        self.assertEqual(serverInfo.peer_chain, ())

    def test_alpnServerPreference(self) -> None:
        """
        The server picks its own first choice among the client's offers.
        """
        clientInfo, serverInfo = self._connect(
            ServerTLSConfig((EC_CREDENTIAL,), alpn=("http/1.1", "h2")),
            _trusting(CA[0], alpn=("h2", "http/1.1")),
        )
        self.assertEqual((clientInfo.alpn, serverInfo.alpn), ("http/1.1", "http/1.1"))
        clientInfo, serverInfo = self._connect(
            ServerTLSConfig((EC_CREDENTIAL,), alpn=("spdy/3", "h2", "http/1.1")),
            _trusting(CA[0], alpn=("http/1.1", "h2")),
        )
        self.assertEqual((clientInfo.alpn, serverInfo.alpn), ("h2", "h2"))

    def test_alpnNoOverlap(self) -> None:
        """
        Without a common protocol, or when only one side has ALPN, the
        handshake succeeds without ALPN.
        """
        for serverAlpn, clientAlpn in [(("h2",), ("http/1.1",)), (("h2",), ()), ((), ("h2",))]:
            clientInfo, serverInfo = self._connect(
                ServerTLSConfig((EC_CREDENTIAL,), alpn=serverAlpn),
                _trusting(CA[0], alpn=clientAlpn),
            )
            self.assertEqual((clientInfo.alpn, serverInfo.alpn), (None, None))

    def test_badAlpn(self) -> None:
        """
        An empty ALPN name is a L{TLSFailure}.
        """
        self.assertRaises(
            TLSFailure, self.backend.server_engine, ServerTLSConfig((EC_CREDENTIAL,), alpn=("",))
        )
        self.assertRaises(
            TLSFailure, self.backend.client_engine, _trusting(CA[0], alpn=("",)), "localhost"
        )

    def test_serverName(self) -> None:
        """
        The server reports the SNI name the client sent, L{None} without.
        """
        config = ServerTLSConfig((EC_CREDENTIAL,))
        for hostname, expected in [("LocalHost", "LocalHost"), ("127.0.0.1", None)]:
            client = ClientTLSConfig(use_system_store=False)
            client_engine, server_engine = self._pair(config, client, server_hostname=hostname)
            # The client fails verification (nothing is trusted); the server
            # has read the ClientHello by then.
            self.assertRaises(TLSFailure, _pump, client_engine, server_engine)
            self.assertEqual(server_engine._connection.get_servername(),
                             expected and expected.encode())
        clientInfo, serverInfo = self._connect(config, server_hostname="localhost.")
        self.assertEqual(serverInfo.server_name, "localhost")

    def test_contextCache(self) -> None:
        """
        Equal server configurations share one Context, in the same bounded
        cache as client ones.
        """
        backend = OpenSSLBackend(cache_size=2)
        config = ServerTLSConfig((EC_CREDENTIAL,))
        context = backend.context_for(config)
        self.assertIs(backend.context_for(ServerTLSConfig((EC_CREDENTIAL,))), context)
        self.assertIs(backend.server_engine(config)._connection.get_context(), context)
        backend.context_for(_trusting(CA[0]))
        backend.context_for(ServerTLSConfig((RSA_CREDENTIAL,)))
        self.assertNotIn(config, backend._contexts)


class _EngineServer:
    """
    A server engine serving one connection accepted on 127.0.0.1, in a
    thread: handshake, send a greeting, read one line, then close_notify.
    """

    def __init__(self, test: SynchronousTestCase, engine: OpenSSLServerEngine) -> None:
        self.engine = engine
        self.info: TLSSessionInfo | None = None
        self.received = b""
        self.errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        test.addCleanup(self.listener.close)
        test.addCleanup(self.thread.join, _TIMEOUT)

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            with raw:
                raw.settimeout(_TIMEOUT)
                _handshake(raw, self.engine)
                self.info = self.engine.session_info()
                self.engine.write(b"hello from ssa\n")
                raw.sendall(self.engine.outgoing())
                while not self.received.endswith(b"\n"):
                    data = _read(raw, self.engine, 1)
                    if not data:
                        break
                    self.received += data
                self.engine.close_notify()
                raw.sendall(self.engine.outgoing())
        except BaseException as e:
            self.errors.append(e)


class SClientTests(SynchronousTestCase):
    """
    A server engine over a real TCP socket against C{openssl s_client}.
    """

    def setUp(self) -> None:
        self.openssl = shutil.which("openssl")
        if self.openssl is None:
            raise self.skipTest("no openssl command")
        self.backend = OpenSSLBackend()

    def _file(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def _sClient(self, config: ServerTLSConfig, *arguments: str) -> tuple[_EngineServer, str]:
        server = _EngineServer(self, self.backend.server_engine(config))
        assert self.openssl is not None
        process = subprocess.run(
            [self.openssl, "s_client", "-connect", f"127.0.0.1:{server.port}",
             "-servername", "ssa.example", "-alpn", "h2,http/1.1",
             "-CAfile", self._file(_pem(CA[0])), "-verify_return_error", "-ign_eof",
             *arguments],
            input=b"ping\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=_TIMEOUT,
        )
        server.thread.join(_TIMEOUT)
        return server, process.stdout.decode("utf-8", "replace")

    def test_clientCertificate(self) -> None:
        """
        s_client with a trusted certificate: the server verifies it and
        reports it, the SNI name and its own ALPN choice; data goes both ways.
        """
        config = ServerTLSConfig(
            (RSA_CREDENTIAL, EC_CREDENTIAL),
            require_client_certificate=True,
            client_anchors=_pem(CA[0]),
            alpn=("http/1.1", "h2"),
        )
        server, output = self._sClient(
            config,
            "-cert", self._file(_pem(CLIENT[0])),
            "-key", self._file(_key_pem(CLIENT[1])),
        )
        self.assertEqual(server.errors, [])
        self.assertIn("ALPN protocol: http/1.1", output)
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertIn("hello from ssa", output)
        self.assertEqual(server.received, b"ping\n")
        info = server.info
        assert info is not None
        self.assertEqual(
            (info.version, info.server_name, info.alpn),
            (TLS_1_3, "ssa.example", "http/1.1"),
        )
        self.assertEqual(info.peer_certificate, CLIENT[0])

    def test_noClientCertificate(self) -> None:
        """
        s_client without a certificate, when one is required: the server's
        handshake fails with that reason and s_client sees the alert.
        """
        server, output = self._sClient(
            ServerTLSConfig(
                (EC_CREDENTIAL,), require_client_certificate=True,
                client_anchors=_pem(CA[0]),
            )
        )
        self.assertEqual(len(server.errors), 1, server.errors)
        error = server.errors[0]
        self.assertIsInstance(error, TLSFailure)
        self.assertIn("the client sent no certificate (one is required)", str(error))
        self.assertIn("alert certificate required", output)

    def test_tls13CertificateChoice(self) -> None:
        """
        At TLS 1.3 the certificate follows the client's signature algorithms:
        RSA-PSS only gets the RSA certificate, ECDSA only the ECDSA one.
        """
        config = ServerTLSConfig((EC_CREDENTIAL, RSA_CREDENTIAL))
        for sigalgs, keyType in [
            ("rsa_pss_rsae_sha256", rsa.RSAPublicKey),
            ("ecdsa_secp256r1_sha256", ec.EllipticCurvePublicKey),
        ]:
            server, output = self._sClient(config, "-sigalgs", sigalgs)
            self.assertEqual(server.errors, [])
            start = output.index("-----BEGIN CERTIFICATE-----")
            certificate = x509.load_pem_x509_certificate(output[start:].encode())
            self.assertIsInstance(certificate.public_key(), keyType)
            self.assertIn("Verify return code: 0 (ok)", output)
            self.assertIsNone(server.info.alpn if server.info else "no info")

    def test_resumption(self) -> None:
        """
        The server context has a session id context, so a client can resume
        its session, even one with a verified client certificate.
        """
        config = ServerTLSConfig(
            (EC_CREDENTIAL,), require_client_certificate=True, client_anchors=_pem(CA[0])
        )
        session = self.mktemp()
        credentials = ("-cert", self._file(_pem(CLIENT[0])),
                       "-key", self._file(_key_pem(CLIENT[1])))
        server, output = self._sClient(config, *credentials, "-sess_out", session)
        self.assertEqual(server.errors, [])
        self.assertIn("New, TLSv1.3", output)
        server, output = self._sClient(config, *credentials, "-sess_in", session)
        self.assertEqual(server.errors, [])
        self.assertIn("Reused, TLSv1.3", output)
