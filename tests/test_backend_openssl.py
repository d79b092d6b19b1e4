"""
Tests for L{ssa.backends.openssl}: engines driven over real loopback TCP
against stdlib C{ssl} servers and C{openssl s_server}.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import threading
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ssa.backends.openssl import OpenSSLBackend, OpenSSLEngine
from ssa.constants import TLS_1_2, TLS_1_3
from ssa.errors import TLSFailure
from ssa.interfaces import ITLSBackend, ITLSEngine
from ssa.tlsconfig import ClientTLSConfig, chain_pem, subject_line

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
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    A CA (no C{issuer}) or a leaf for C{subject} signed by C{issuer}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if issuer is None:
        builder = builder.issuer_name(_name(subject)).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
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


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
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
