"""
Tests for L{ssa.testing.certs} and L{ssa.testing.peers}.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.trial.unittest import SynchronousTestCase

from ssa.testing.certs import (
    CertificateAuthority,
    CertifiedKey,
    UnsupportedSignature,
    self_signed_server,
)
from ssa.testing.peers import (
    Handler,
    OpenSSLServer,
    OpenSSLServerError,
    SinkResult,
    StdlibTLSServer,
    TLSPeerConnection,
    TruncatedError,
    echo_handler,
    free_port,
    pseudo_random_bytes,
    sink_digest_handler,
    source_handler,
    truncating_handler,
)

MIB = 1 << 20


def _ext(cert: x509.Certificate, kind: type) -> object:
    return cert.extensions.get_extension_for_class(kind).value


def _verify_failure(leaf: CertifiedKey, trust: CertificateAuthority | CertifiedKey,
                    hostname: str = "a.test") -> str | None:
    """
    Handshake in memory (no sockets) with a verifying stdlib client; return
    the verification error message, or C{None} if the handshake succeeded.
    """
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        files = leaf.write(tmp, "leaf")
        server_ctx.load_cert_chain(files.cert, files.key)
    anchor = trust.root_pem() if isinstance(trust, CertificateAuthority) else trust.cert_pem()
    client_ctx = ssl.create_default_context(cadata=anchor.decode())
    pipes = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    client = client_ctx.wrap_bio(pipes[0][0], pipes[0][1], server_hostname=hostname)
    server = server_ctx.wrap_bio(pipes[1][0], pipes[1][1], server_side=True)
    for _ in range(10):
        for endpoint in (client, server):
            try:
                endpoint.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as e:
                return e.verify_message
        pipes[1][0].write(pipes[0][1].read())
        pipes[0][0].write(pipes[1][1].read())
    client.do_handshake()
    return None


class CertificateTests(SynchronousTestCase):
    """
    Each case the certificate-decision matrix needs has the property it
    claims, both in the certificate and as OpenSSL's verifier sees it.
    """

    def setUp(self) -> None:
        self.root = CertificateAuthority.create()

    def test_defaults(self) -> None:
        """
        A root is a self-issued ECDSA P-256 CA valid from a day ago for 30
        days; leaves are CA:FALSE with serverAuth and a SAN.
        """
        cert = self.root.cert
        self.assertEqual(cert.issuer, cert.subject)
        self.assertTrue(_ext(cert, x509.BasicConstraints).ca)
        self.assertIsInstance(self.root.key, ec.EllipticCurvePrivateKey)
        self.assertEqual(self.root.key.curve.name, "secp256r1")
        now = datetime.now(timezone.utc)
        self.assertLess(abs(now - timedelta(days=1) - cert.not_valid_before_utc), timedelta(minutes=1))
        self.assertLess(abs(now + timedelta(days=30) - cert.not_valid_after_utc), timedelta(minutes=1))
        leaf = self.root.issue_server("a.test")
        self.assertFalse(_ext(leaf.cert, x509.BasicConstraints).ca)
        self.assertEqual(list(_ext(leaf.cert, x509.ExtendedKeyUsage)), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertEqual(leaf.chain, ())
        self.assertIsNone(_verify_failure(leaf, self.root))

    def test_chain_via_intermediate(self) -> None:
        """
        A leaf from an intermediate carries the intermediate in its chain,
        and PEM output puts the leaf first.
        """
        intermediate = self.root.issue_intermediate("Mid")
        deeper = intermediate.issue_intermediate("Deeper")
        leaf = deeper.issue_server("a.test")
        self.assertEqual(leaf.chain, (deeper.cert, intermediate.cert))
        leaf.cert.verify_directly_issued_by(deeper.cert)
        deeper.cert.verify_directly_issued_by(intermediate.cert)
        intermediate.cert.verify_directly_issued_by(self.root.cert)
        self.assertEqual(deeper.root, self.root.cert)
        loaded = x509.load_pem_x509_certificates(leaf.chain_pem())
        self.assertEqual(loaded, [leaf.cert, deeper.cert, intermediate.cert])
        self.assertEqual(x509.load_pem_x509_certificates(leaf.cert_pem()), [leaf.cert])
        self.assertIsNone(_verify_failure(leaf, self.root))

    def test_expired_and_not_yet_valid(self) -> None:
        """
        Validity accepts offsets from now and absolute times.
        """
        now = datetime.now(timezone.utc)
        expired = self.root.issue_server("a.test", not_before=timedelta(days=-10),
                                         not_after=timedelta(days=-1))
        self.assertLess(expired.cert.not_valid_after_utc, now)
        self.assertIn("expired", _verify_failure(expired, self.root))
        future = self.root.issue_server("a.test", not_before=now + timedelta(days=1),
                                        not_after=now + timedelta(days=2))
        self.assertGreater(future.cert.not_valid_before_utc, now)
        self.assertIn("not yet valid", _verify_failure(future, self.root))

    def test_names(self) -> None:
        """
        DNS names, wildcards and IP literals go into the SAN; the first
        name is the CN by default.
        """
        leaf = self.root.issue_server("right.test", "*.example.test", "127.0.0.1", "::1")
        san = _ext(leaf.cert, x509.SubjectAlternativeName)
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["right.test", "*.example.test"])
        self.assertEqual(san.get_values_for_type(x509.IPAddress),
                         [ip_address("127.0.0.1"), ip_address("::1")])
        self.assertEqual(leaf.cert.subject.rfc4514_string(), "CN=right.test")
        verify_certificate_hostname(leaf.cert, "a.example.test")
        self.assertRaises(VerificationError, verify_certificate_hostname, leaf.cert, "wrong.test")
        self.assertIn("mismatch", _verify_failure(leaf, self.root, "wrong.test"))
        self.assertIsNone(_verify_failure(leaf, self.root, "b.example.test"))
        bare = self.root.issue_server("a.test", include_san=False)
        self.assertRaises(x509.ExtensionNotFound, _ext, bare.cert, x509.SubjectAlternativeName)

    def test_self_signed(self) -> None:
        """
        A self-signed leaf is its own issuer but not a CA.
        """
        leaf = self_signed_server("a.test")
        self.assertEqual(leaf.cert.issuer, leaf.cert.subject)
        leaf.cert.verify_directly_issued_by(leaf.cert)
        self.assertFalse(_ext(leaf.cert, x509.BasicConstraints).ca)
        self.assertIn("self-signed", _verify_failure(leaf, self.root))

    def test_unknown_issuer(self) -> None:
        """
        Another CA, even with the same name, does not sign for this one.
        """
        stranger = CertificateAuthority.create().issue_server("a.test")
        self.assertRaises(InvalidSignature, stranger.cert.verify_directly_issued_by, self.root.cert)
        self.assertIn("local issuer", _verify_failure(stranger, self.root))

    def test_intermediate_not_a_ca(self) -> None:
        """
        C{ca=False} makes a CA:FALSE intermediate that still signs.
        """
        fake = self.root.issue_intermediate(ca=False)
        self.assertFalse(_ext(fake.cert, x509.BasicConstraints).ca)
        self.assertTrue(_ext(fake.cert, x509.KeyUsage).key_cert_sign)
        leaf = fake.issue_server("a.test")
        leaf.cert.verify_directly_issued_by(fake.cert)
        self.assertIn("invalid CA", _verify_failure(leaf, self.root))

    def test_path_length_exceeded(self) -> None:
        """
        A root with pathlen 0 can still be made to sign an intermediate.
        """
        root = CertificateAuthority.create(path_length=0)
        self.assertEqual(_ext(root.cert, x509.BasicConstraints).path_length, 0)
        leaf = root.issue_intermediate(path_length=3).issue_server("a.test")
        self.assertIn("path length", _verify_failure(leaf, root))

    def test_name_constraints(self) -> None:
        """
        A name-constrained CA issues outside its permitted subtree on request.
        """
        root = CertificateAuthority.create(permitted_dns=["allowed.test"], excluded_dns=["bad.allowed.test"])
        constraints = _ext(root.cert, x509.NameConstraints)
        self.assertEqual(constraints.permitted_subtrees, [x509.DNSName("allowed.test")])
        self.assertEqual(constraints.excluded_subtrees, [x509.DNSName("bad.allowed.test")])
        self.assertIsNone(_verify_failure(root.issue_server("www.allowed.test"), root, "www.allowed.test"))
        self.assertIn("subtree", _verify_failure(root.issue_server("other.test"), root, "other.test"))

    def test_extended_key_usage(self) -> None:
        """
        Server certificates may carry clientAuth only, or no EKU at all;
        client certificates carry clientAuth.
        """
        wrong = self.root.issue_server("a.test", extended_key_usage=("clientAuth",))
        self.assertEqual(list(_ext(wrong.cert, x509.ExtendedKeyUsage)), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertIn("purpose", _verify_failure(wrong, self.root))
        none = self.root.issue_server("a.test", extended_key_usage=None)
        self.assertRaises(x509.ExtensionNotFound, _ext, none.cert, x509.ExtendedKeyUsage)
        alice = self.root.issue_client("alice")
        self.assertEqual(list(_ext(alice.cert, x509.ExtendedKeyUsage)), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertEqual(alice.cert.subject.rfc4514_string(), "CN=alice")

    def test_key_types(self) -> None:
        """
        ECDSA P-256, RSA (any size from 1024) and Ed25519 keys, for leaves
        and CAs.
        """
        self.assertEqual(self.root.issue_server("a.test", key_type="rsa", key_size=1024).key.key_size, 1024)
        self.assertEqual(self.root.issue_server("a.test", key_type="rsa").key.key_size, 2048)
        ed = CertificateAuthority.create(key_type="ed25519")
        leaf = ed.issue_server("a.test", key_type="ed25519")
        self.assertIsInstance(leaf.key, ed25519.Ed25519PrivateKey)
        self.assertIsNone(leaf.cert.signature_hash_algorithm)
        self.assertIsNone(_verify_failure(leaf, ed))
        self.assertIsInstance(self.root.issue_server("a.test").key.public_key(), ec.EllipticCurvePublicKey)

    def test_sha1_signatures(self) -> None:
        """
        SHA-1 signatures are made by re-signing the DER; the result is a
        valid SHA-1 signature by the issuer.  Ed25519 issuers refuse.
        """
        rsa_root = CertificateAuthority.create(key_type="rsa")
        for issuer in (rsa_root, self.root):
            leaf = issuer.issue_server("a.test", hash_algorithm=hashes.SHA1())
            self.assertIsInstance(leaf.cert.signature_hash_algorithm, hashes.SHA1)
            public = issuer.cert.public_key()
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(leaf.cert.signature, leaf.cert.tbs_certificate_bytes,
                              padding.PKCS1v15(), hashes.SHA1())
            else:
                public.verify(leaf.cert.signature, leaf.cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA1()))
            self.assertEqual(_ext(leaf.cert, x509.SubjectAlternativeName).get_values_for_type(x509.DNSName),
                             ["a.test"])
        ed = CertificateAuthority.create(key_type="ed25519")
        self.assertRaises(UnsupportedSignature, ed.issue_server, "a.test", hash_algorithm=hashes.SHA1())

    def test_write(self) -> None:
        """
        C{write} puts the chain and a 0600 PKCS#8 key in the directory.
        """
        leaf = self.root.issue_intermediate().issue_server("a.test")
        directory = Path(self.mktemp())
        directory.mkdir()
        files = leaf.write(directory, "srv")
        self.assertEqual((files.cert, files.key), (directory / "srv.pem", directory / "srv.key"))
        self.assertEqual(files.cert.read_bytes(), leaf.chain_pem())
        self.assertEqual(os.stat(files.key).st_mode & 0o777, 0o600)
        self.assertTrue(leaf.key_pem().startswith(b"-----BEGIN " + b"PRIVATE KEY-----"))
        key = serialization.load_pem_private_key(files.key.read_bytes(), None)
        self.assertEqual(key.public_key(), leaf.cert.public_key())


def _client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.root_pem().decode())


def _recv_until_eof(sock: ssl.SSLSocket) -> bytes:
    chunks = []
    while data := sock.recv(MIB):
        chunks.append(data)
    return b"".join(chunks)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HelperTests(SynchronousTestCase):
    """
    L{free_port} and L{pseudo_random_bytes}.
    """

    def test_free_port(self) -> None:
        """
        The port is free to bind on loopback.
        """
        port = free_port()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))

    def test_pseudo_random_bytes(self) -> None:
        """
        Deterministic per seed, prefix-consistent, different across seeds.
        """
        data = pseudo_random_bytes(MIB, seed=7)
        self.assertEqual(len(data), MIB)
        self.assertEqual(data, pseudo_random_bytes(MIB, 7))
        self.assertEqual(pseudo_random_bytes(100, 7), data[:100])
        self.assertNotEqual(pseudo_random_bytes(100, 8), data[:100])


class PeerTestCase(SynchronousTestCase):
    """
    Shared set-up: a root, an intermediate and a server certificate for
    localhost issued by the intermediate; a check that no server threads
    outlive a test.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority.create()
        self.server_key = self.ca.issue_intermediate().issue_server("localhost", "127.0.0.1")
        self.addCleanup(self.assertNoServerThreads)

    def assertNoServerThreads(self) -> None:
        """
        Fail if any L{StdlibTLSServer} thread is still alive.
        """
        left = [t.name for t in threading.enumerate() if t.name.startswith("StdlibTLSServer")]
        self.assertEqual(left, [])

    def connect(self, address: tuple[str, int], context: ssl.SSLContext | None = None,
                hostname: str = "localhost") -> ssl.SSLSocket:
        """
        A verifying stdlib client, closed at clean-up, that reports ragged EOFs.
        """
        raw = socket.create_connection(address, timeout=10)
        sock = (context or _client_context(self.ca)).wrap_socket(
            raw, server_hostname=hostname, suppress_ragged_eofs=False)
        self.addCleanup(sock.close)
        return sock

    def openssl(self, *args: str, **kwargs: object) -> OpenSSLServer:
        """
        A started L{OpenSSLServer} for C{self.server_key}, stopped at clean-up.
        """
        server = OpenSSLServer(self.server_key, extra_args=list(args), **kwargs)
        self.addCleanup(server.stop)
        return server.start()

    def stdlib(self, handler: Handler, **kwargs: object) -> StdlibTLSServer:
        """
        A started L{StdlibTLSServer} for C{self.server_key}, stopped at clean-up.
        """
        server = StdlibTLSServer(self.server_key, handler, **kwargs)
        self.addCleanup(server.stop)
        return server.start()


class OpenSSLServerTests(PeerTestCase):
    """
    L{OpenSSLServer} runs a real s_server on loopback.
    """

    def test_binary_both_ways(self) -> None:
        """
        With C{-quiet}, bytes from the client appear unchanged on stdout and
        bytes written to stdin reach the client unchanged (including lines
        that would otherwise be s_server commands); closing stdin sends
        close_notify.
        """
        server = self.openssl("-quiet", "-naccept", "1")
        self.assertEqual(server.address, ("127.0.0.1", server.port))
        upload = b"Q\nq\nP\n" + pseudo_random_bytes(MIB, 1)
        download = b"Q\n" + pseudo_random_bytes(MIB, 2)
        sock = self.connect(server.address)
        self.assertEqual(sock.version(), "TLSv1.3")
        # One direction at a time: an ssl.SSLSocket must not send and
        # receive in two threads at once.  stdin EOF ends the connection at
        # once, so the upload has to be complete before stdin is closed.
        sock.sendall(upload)
        deadline = time.monotonic() + 10
        while len(server.output()) < len(upload) and time.monotonic() < deadline:
            time.sleep(0.01)

        def feed() -> None:
            server.stdin.write(download)
            server.stdin.close()

        feeder = threading.Thread(target=feed)
        feeder.start()
        received = _recv_until_eof(sock)
        feeder.join()
        sock.close()
        self.assertEqual(server.wait(), 0)
        self.assertEqual(_sha256(received), _sha256(download))
        self.assertEqual(_sha256(server.output()), _sha256(upload))

    def test_www_binary_file(self) -> None:
        """
        C{-WWW} serves a binary file from C{cwd} intact.
        """
        root = Path(self.mktemp())
        root.mkdir()
        body = pseudo_random_bytes(2 * MIB, 3)
        (root / "blob.bin").write_bytes(body)
        server = self.openssl("-WWW", cwd=root)
        sock = self.connect(server.address)
        sock.sendall(b"GET /blob.bin HTTP/1.0\r\n\r\n")
        response = _recv_until_eof(sock)
        header, _, got = response.partition(b"\r\n\r\n")
        self.assertTrue(header.startswith(b"HTTP/1.0 200"), header)
        self.assertEqual(_sha256(got), _sha256(body))

    def test_tls1_only_refuses_modern_client(self) -> None:
        """
        A TLS 1.0-only s_server at security level 0 refuses a client whose
        minimum is TLS 1.2, but talks to one that allows TLS 1.0.
        """
        server = self.openssl("-tls1", "-cipher", "DEFAULT@SECLEVEL=0")
        modern = _client_context(self.ca)
        modern.minimum_version = ssl.TLSVersion.TLSv1_2
        self.assertRaises(ssl.SSLError, self.connect, server.address, modern)
        legacy = _client_context(self.ca)
        legacy.minimum_version = ssl.TLSVersion.TLSv1
        legacy.set_ciphers("DEFAULT@SECLEVEL=0")
        self.assertEqual(self.connect(server.address, legacy).version(), "TLSv1")

    def test_start_failure_reports_stderr(self) -> None:
        """
        If s_server cannot start, L{OpenSSLServer.start} says why, and the
        process is reaped.
        """
        server = OpenSSLServer(self.server_key, extra_args=["-no-such-option"])
        self.addCleanup(server.stop)
        error = self.assertRaises(OpenSSLServerError, server.start)
        self.assertIn("no-such-option", str(error))
        self.assertIn("no-such-option", server.stderr_text())
        self.assertIsNotNone(server.process.returncode)
        self.assertFalse(Path(server.command[server.command.index("-key") + 1]).exists())

    def test_stop_reaps(self) -> None:
        """
        C{stop} ends the process and removes the key material; what
        s_server printed stays available.
        """
        with OpenSSLServer(self.server_key) as server:
            tmp = Path(server.command[server.command.index("-key") + 1]).parent
            self.assertTrue(tmp.exists())
            self.assertEqual(oct(os.stat(tmp / "server.key").st_mode & 0o777), "0o600")
        self.assertIsNotNone(server.process.returncode)
        self.assertFalse(tmp.exists())
        self.assertIn(b"ACCEPT", server.output())


class StdlibTLSServerTests(PeerTestCase):
    """
    L{StdlibTLSServer} and its handlers, against stdlib clients.
    """

    def test_echo(self) -> None:
        """
        Echo round trip; the connection records version, cipher, SNI and
        ALPN; a clean close on both sides.
        """
        server = self.stdlib(echo_handler, alpn=["ssa-test", "h2"])
        context = _client_context(self.ca)
        context.set_alpn_protocols(["ssa-test"])
        sock = self.connect(server.address, context)
        payload = pseudo_random_bytes(300000, 4)
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            received += sock.recv(MIB)
        self.assertEqual(received, payload)
        cipher = sock.cipher()[0]
        sock.unwrap()
        [conn] = server.wait_for_connections(1)
        self.assertEqual((conn.version, conn.server_name, conn.alpn_protocol),
                         ("TLSv1.3", "localhost", "ssa-test"))
        self.assertEqual(conn.cipher, cipher)
        self.assertIsNone(conn.peer_certificate)
        self.assertTrue(conn.close_notify_received and conn.close_notify_sent and conn.closed)
        self.assertEqual(server.errors, [])

    def test_sink_digest_half_close(self) -> None:
        """
        A client that sends close_notify can still read the server's reply.
        """
        handler = sink_digest_handler()
        server = self.stdlib(handler)
        payload = pseudo_random_bytes(3 * MIB, 5)
        conn = TLSPeerConnection.client(server.address, _client_context(self.ca), "localhost")
        self.addCleanup(conn.abort)
        conn.sendall(payload)
        conn.send_close_notify()
        self.assertEqual(conn.recv_until_eof().decode(), _sha256(payload))
        conn.close()
        server.wait_for_connections(1)
        self.assertEqual(handler.results, [SinkResult(len(payload), _sha256(payload))])
        self.assertEqual(server.errors, [])

    def test_close_notify_keeps_buffered_data(self) -> None:
        """
        Data already received but not yet read survives C{send_close_notify}
        (the stdlib's unwrap would otherwise discard it).
        """
        def handler(conn: TLSPeerConnection) -> None:
            conn.sendall(pseudo_random_bytes(MIB, 11))
            self.assertEqual(conn.recv(), b"")
            conn.sendall(b"after your close_notify")
            conn.close()

        server = self.stdlib(handler)
        conn = TLSPeerConnection.client(server.address, _client_context(self.ca), "localhost")
        self.addCleanup(conn.abort)
        head = conn.recv(10)
        conn.send_close_notify()
        rest = conn.recv_until_eof()
        self.assertEqual(head + rest, pseudo_random_bytes(MIB, 11) + b"after your close_notify")
        conn.close()
        server.wait_for_connections(1)
        self.assertEqual(server.errors, [])

    def test_source(self) -> None:
        """
        The source handler sends its bytes, then close_notify.
        """
        server = self.stdlib(source_handler(2 * MIB, seed=6))
        sock = self.connect(server.address)
        self.assertEqual(_sha256(_recv_until_eof(sock)), _sha256(pseudo_random_bytes(2 * MIB, 6)))
        sock.close()
        server.wait_for_connections(1)
        self.assertEqual(server.errors, [])

    def test_truncation_seen_by_client(self) -> None:
        """
        The truncating handler's bytes arrive, then the client's read fails
        with C{SSLEOFError}; with C{reset} the read fails too.
        """
        server = self.stdlib(truncating_handler(100000, seed=7))
        sock = self.connect(server.address)
        received = b""
        while len(received) < 100000:
            received += sock.recv(MIB)
        self.assertEqual(received, pseudo_random_bytes(100000, 7))
        self.assertRaises(ssl.SSLEOFError, sock.recv, 1)
        sock.close()
        server.wait_for_connections(1)
        self.assertEqual(server.errors, [])
        reset = self.stdlib(truncating_handler(10, reset=True))
        sock = self.connect(reset.address)
        reset.wait_for_connections(1)
        self.assertRaises((ssl.SSLEOFError, ConnectionResetError), _recv_until_eof, sock)

    def test_truncation_seen_by_server(self) -> None:
        """
        A client closing TCP without close_notify makes C{recv} raise
        L{TruncatedError}, which a handler failure records in C{errors}.
        """
        server = self.stdlib(echo_handler)
        sock = self.connect(server.address)
        sock.sendall(b"x")
        self.assertEqual(sock.recv(1), b"x")
        sock.close()
        [conn] = server.wait_for_connections(1)
        [error] = server.errors
        self.assertIsInstance(error, TruncatedError)
        self.assertIs(conn.handler_error, error)

    def test_client_certificates(self) -> None:
        """
        With C{client_ca} the server requires a client certificate and
        exposes it; a client without one fails the handshake.
        """
        server = self.stdlib(echo_handler, client_ca=self.ca)
        alice = self.ca.issue_client("alice")
        context = _client_context(self.ca)
        with tempfile.TemporaryDirectory() as tmp:
            files = alice.write(tmp, "alice")
            context.load_cert_chain(files.cert, files.key)
        sock = self.connect(server.address, context)
        sock.sendall(b"hi")
        self.assertEqual(sock.recv(2), b"hi")
        sock.unwrap()
        [conn] = server.wait_for_connections(1)
        self.assertEqual(conn.peer_certificate, alice.cert)
        anonymous = self.connect(server.address)
        self.assertRaises(ssl.SSLError, _recv_until_eof, anonymous)
        conns = server.wait_for_connections(2)
        self.assertIsInstance(conns[1].handshake_error, ssl.SSLError)
        self.assertEqual(server.errors, [])

    def test_versions_and_key_types(self) -> None:
        """
        C{maximum_version} caps the protocol; RSA and Ed25519 server keys work.
        """
        server = self.stdlib(echo_handler, maximum_version=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(self.connect(server.address).version(), "TLSv1.2")
        for key_type in ("rsa", "ed25519"):
            self.server_key = self.ca.issue_server("localhost", key_type=key_type)
            server = self.stdlib(echo_handler, minimum_version=ssl.TLSVersion.TLSv1_3)
            sock = self.connect(server.address)
            self.assertEqual(sock.version(), "TLSv1.3")
            sock.sendall(b"ping")
            self.assertEqual(sock.recv(4), b"ping")

    def test_concurrent_send_and_receive(self) -> None:
        """
        One thread may send while another receives on a L{TLSPeerConnection}.
        """
        seen = {}

        def handler(conn: TLSPeerConnection) -> None:
            sender = threading.Thread(target=conn.sendall, args=(pseudo_random_bytes(8 * MIB, 9),))
            sender.start()
            seen["digest"] = _sha256(conn.recv_until_eof())
            sender.join()

        server = self.stdlib(handler)
        conn = TLSPeerConnection.client(server.address, _client_context(self.ca), "localhost")
        self.addCleanup(conn.abort)
        sender = threading.Thread(target=conn.sendall, args=(pseudo_random_bytes(8 * MIB, 10),))
        sender.start()
        received = conn.recv_exactly(8 * MIB)
        sender.join()
        conn.send_close_notify()
        self.assertEqual(conn.recv(), b"")
        conn.close()
        server.wait_for_connections(1)
        self.assertEqual(_sha256(received), _sha256(pseudo_random_bytes(8 * MIB, 9)))
        self.assertEqual(seen["digest"], _sha256(pseudo_random_bytes(8 * MIB, 10)))
        self.assertEqual(server.errors, [])

    def test_wait_timeout_and_stop(self) -> None:
        """
        C{wait_for_connections} times out; C{stop} interrupts an idle
        connection and joins its thread.
        """
        server = StdlibTLSServer(self.server_key, echo_handler)
        with server:
            sock = self.connect(server.address)
            self.assertRaises(TimeoutError, server.wait_for_connections, 1, 0.1)
        self.assertEqual(len(server.wait_for_connections(1, 5)), 1)
        self.assertRaises((ssl.SSLEOFError, ConnectionResetError), sock.recv, 1)
        self.assertEqual(len(server.errors), 1)
