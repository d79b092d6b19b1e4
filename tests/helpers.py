"""
Shared pieces of the end-to-end tests: a real daemon per test, real peers,
certificates made at run time.
"""

from __future__ import annotations

import hashlib
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from ssa import _channels, client
from ssa.testing.certs import CertificateAuthority, CertifiedKey
from ssa.testing.daemon import DaemonProcess


def digest(data: bytes) -> str:
    """
    A SHA-256 hex digest.
    """
    return hashlib.sha256(data).hexdigest()


class DaemonTestCase(SynchronousTestCase):
    """
    Each test gets a fresh daemon process, a test CA and a localhost
    server certificate.
    """

    daemon_args: list[str] = []
    backend: str = "openssl"

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ssa-test-")
        self.ca = CertificateAuthority.create()
        self.server_key = self.ca.issue_server("localhost", "127.0.0.1", "::1")
        self.daemon = DaemonProcess(["--backend", self.backend, *self.daemon_arguments()]).start()
        self.addCleanup(self.daemon.stop)
        self.addCleanup(_channels.close_idle, self.daemon.socket_path)

    def daemon_arguments(self) -> list[str]:
        """
        Extra arguments for this test's daemon (C{setUp} has made C{tmp}).
        """
        return list(self.daemon_args)

    def tls_socket(self, family: int = socket.AF_INET, nonblocking: bool = False) -> client.SSASocket:
        """
        A new SSA socket through this test's daemon, closed at cleanup.
        """
        type_ = socket.SOCK_STREAM | (socket.SOCK_NONBLOCK if nonblocking else 0)
        sock = client.socket(family, type_, client.IPPROTO_TLS, path=self.daemon.socket_path)
        self.addCleanup(sock.close)
        return sock

    def listener(
        self, chain: bytes | None = None, key: bytes | None = None, backlog: int = 128, **options: object
    ) -> client.SSASocket:
        """
        A socket listening on 127.0.0.1 with this test's server
        certificate; C{options} are further C{IPPROTO_TLS} options by
        name (e.g. C{TLS_REQUEST_PEER_AUTH=1}).
        """
        sock = self.tls_socket()
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_CERTIFICATE_CHAIN, chain or self.server_key.chain_pem())
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_PRIVATE_KEY, key or self.server_key.key_pem())
        for name, value in options.items():
            sock.setsockopt(client.IPPROTO_TLS, getattr(client, name), value)
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        return sock

    def trusting_socket(
        self, hostname: str | None = "localhost", ca: CertificateAuthority | None = None,
        family: int = socket.AF_INET, nonblocking: bool = False,
    ) -> client.SSASocket:
        """
        A socket that trusts C{ca} (this test's CA by default) and names
        C{hostname}.
        """
        sock = self.tls_socket(family, nonblocking)
        sock.setsockopt(client.IPPROTO_TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, (ca or self.ca).cert_pem())
        if hostname is not None:
            sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, hostname)
        return sock

    def assertConnectFails(self, sock: client.SSASocket, address: tuple, err: int, *words: str) -> str:
        """
        Assert that connecting fails with C{err}, and that the message and
        C{TLS_ERROR} both contain each of C{words}; return the reason.
        """
        failure = self.assertRaises(OSError, sock.connect, address)
        self.assertEqual(failure.errno, err, str(failure))
        reason = sock.getsockopt(client.IPPROTO_TLS, client.TLS_ERROR, 4096).rstrip(b"\0").decode()
        for word in words:
            self.assertIn(word, reason)
            self.assertIn(word, str(failure))
        return reason


BACKENDS = ("openssl", "stdlib")


def for_each_backend(namespace: dict, *bases: type) -> None:
    """
    Replace each test class in C{bases} by one subclass per backend in
    C{namespace} (a module's C{globals()}): C{ConnectTests} becomes
    C{ConnectTests_openssl} and C{ConnectTests_stdlib}, so every
    end-to-end test runs once per backend without being copied.
    """
    for base in bases:
        del namespace[base.__name__]
        for backend in BACKENDS:
            name = f"{base.__name__}_{backend}"
            namespace[name] = type(name, (base,), {"backend": backend, "__module__": namespace["__name__"]})


__all__ = ["DaemonTestCase", "digest", "CertificateAuthority", "CertifiedKey", "BACKENDS", "for_each_backend"]
