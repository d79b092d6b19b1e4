"""
End to end: C{requests} through the daemon with L{ssa.http.SSAAdapter},
against a real HTTPS server of the test (issue 13).
"""

from __future__ import annotations

import http.server
import os
import ssl
import threading

import requests

from ssa.http import SSAAdapter
from ssa.testing.certs import CertificateAuthority, CertifiedKey

from .helpers import DaemonTestCase


class Pages(http.server.BaseHTTPRequestHandler):
    """
    Answers GET /NAME with C{page NAME}, keeping connections alive, and
    records each TCP connection's client port.
    """

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.clients.append(self.client_address[1])  # type: ignore[attr-defined]
        body = b"page " + self.path[1:].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """
        Quiet.
        """


class HTTPSServer(http.server.ThreadingHTTPServer):
    """
    The stdlib's HTTP server behind the stdlib's TLS, on 127.0.0.1.
    """

    daemon_threads = True

    def __init__(self, key: CertifiedKey, directory: str) -> None:
        super().__init__(("127.0.0.1", 0), Pages)
        files = key.write(directory, "https")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert, files.key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.clients: list[int] = []
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(30)


class RequestsTests(DaemonTestCase):
    """
    C{session.mount("https://", SSAAdapter(...))}.
    """

    def session(self, **kwargs: object) -> requests.Session:
        session = requests.Session()
        session.mount("https://", SSAAdapter(path=self.daemon.socket_path, **kwargs))
        self.addCleanup(session.close)
        return session

    def server(self, key: CertifiedKey) -> HTTPSServer:
        server = HTTPSServer(key, self.tmp)
        self.addCleanup(server.stop)
        return server

    def test_get_through_the_daemon_with_pooling(self) -> None:
        """
        Three GETs: answered by the real server, over one connection
        (kept alive and reused by the pool).
        """
        server = self.server(self.server_key)
        session = self.session(cafile=self.ca.cert_pem())
        for name in ("a", "b", "c"):
            response = session.get(f"https://localhost:{server.port}/{name}", timeout=30)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(response.content, b"page " + name.encode())
        self.assertEqual(len(server.clients), 3)
        self.assertEqual(len(set(server.clients)), 1, server.clients)
        self.assertIn(f"127.0.0.1:{server.port}", self.daemon.log())

    def test_bad_certificate_refused(self) -> None:
        """
        A certificate from an untrusted CA, and one for another name: both
        refused by the daemon, as C{requests}' C{SSLError}, reason given.
        """
        other = CertificateAuthority.create().issue_server("localhost", "127.0.0.1")
        untrusted = self.server(other)
        session = self.session(cafile=self.ca.cert_pem())
        failure = self.assertRaises(
            requests.exceptions.SSLError, session.get, f"https://localhost:{untrusted.port}/", timeout=30
        )
        self.assertIn("certificate", str(failure).lower())
        self.assertEqual(untrusted.clients, [])
        elsewhere = self.server(self.ca.issue_server("elsewhere.example"))
        failure = self.assertRaises(
            requests.exceptions.SSLError, session.get, f"https://localhost:{elsewhere.port}/", timeout=30
        )
        self.assertIn("localhost", str(failure))
        self.assertEqual(elsewhere.clients, [])

    def test_daemon_not_running(self) -> None:
        """
        With no daemon at the control socket, C{ConnectionError} names the
        daemon and its path.
        """
        missing = os.path.join(self.tmp, "no-daemon.sock")
        session = requests.Session()
        session.mount("https://", SSAAdapter(path=missing))
        self.addCleanup(session.close)
        failure = self.assertRaises(requests.exceptions.ConnectionError, session.get, "https://localhost:1/")
        self.assertIn("SSA daemon", str(failure))
        self.assertIn(missing, str(failure))

    def test_proxies_are_refused(self) -> None:
        """
        A proxy would take TLS away from the daemon: refused, saying so,
        and nothing reaches the proxy.
        """
        server = self.server(self.server_key)
        session = self.session(cafile=self.ca.cert_pem())
        session.proxies = {"https": f"http://127.0.0.1:{server.port}"}
        failure = self.assertRaises(requests.exceptions.ProxyError, session.get, "https://localhost:1/")
        self.assertIn("SSA", str(failure))
        self.assertEqual(server.clients, [])
