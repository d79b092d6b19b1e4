"""
End to end: revocation by OCSP (stapled and from responders) and by CRL
distribution points, through a real daemon per backend (issue 18).

The PKI is made at test time: a root, an intermediate whose AIA and CRL
distribution point name the test's HTTP server on 127.0.0.1, and a
localhost leaf under it pointing there too. The OCSP answers are real
OpenSSL ones (C{openssl ocsp -index ... -reqin ... -respout ...} run by
the HTTP server per request); CRLs are served by the same server;
staples come from C{openssl s_server -status_file}.
"""

from __future__ import annotations

import datetime
import errno
import os
import select
import socket
import subprocess
import textwrap
import threading
import time

from ssa import client
from ssa.ocsp import build_request
from ssa.testing.certs import CertificateAuthority, CertifiedKey
from ssa.testing.peers import OpenSSLServer
from ssa.testing.revocation import (
    HOUR,
    OpenSSLResponder,
    RevocationHTTPServer,
    make_response,
    revocation_extensions,
)
from ssa.testing.tls_server import StdlibTLSServer, echo_handler

from .helpers import DaemonTestCase, for_each_backend
from .test_e2e_revocation import make_crl

TLS = client.IPPROTO_TLS


def closed_port() -> int:
    """
    A port of 127.0.0.1 nothing listens on.
    """
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class OCSPTestCase(DaemonTestCase):
    """
    A daemon with C{policy_text}, the test PKI, responders that know the
    intermediate and the leaf as good, and empty current CRLs at the
    distribution points.
    """

    policy_text = "revocation-timeout: 3\nsession-resumption: disabled\n"

    def daemon_arguments(self) -> list[str]:
        self.http = RevocationHTTPServer().start()
        self.addCleanup(self.http.stop)
        url = self.http.url
        self.intermediate = self.ca.issue_intermediate(
            extensions=revocation_extensions(url("/ocsp/root"), url("/crl/root")))
        self.leaf = self.issue()
        self.root_responder = OpenSSLResponder(self.ca)
        self.root_responder.good(self.intermediate.cert)
        self.responder = OpenSSLResponder(self.intermediate)
        self.responder.good(self.leaf.cert)
        self.http.routes.update({
            "/ocsp/root": self.root_responder.respond, "/ocsp/int": self.responder.respond,
            "/crl/root": make_crl(self.ca, der=True), "/crl/int": make_crl(self.intermediate),
        })
        self.config = os.path.join(self.tmp, "config.yml")
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(self.policy_text))
        return ["--config", self.config]

    def issue(self, ocsp_url: str | None = "/ocsp/int", crl_url: str | None = "/crl/int",
              must_staple: bool = False) -> CertifiedKey:
        """
        A localhost leaf of the intermediate naming C{ocsp_url} and
        C{crl_url} (paths of the test's server, or full URLs).
        """
        def full(path: str | None) -> str | None:
            return path if path is None or "://" in path else self.http.url(path)
        return self.intermediate.issue_server("localhost", "127.0.0.1", extensions=revocation_extensions(
            full(ocsp_url), full(crl_url), must_staple))

    def server(self, leaf: CertifiedKey | None = None) -> StdlibTLSServer:
        """
        A TLS echo server presenting C{leaf} (default the test's) and the
        intermediate; it staples nothing.
        """
        server = StdlibTLSServer(leaf or self.leaf, echo_handler).start()
        self.addCleanup(server.stop)
        return server

    def stapling_server(self, staple: bytes | None, leaf: CertifiedKey | None = None) -> OpenSSLServer:
        """
        C{openssl s_server} presenting C{leaf} and stapling C{staple} (DER),
        or nothing.
        """
        args = ["-quiet"]
        if staple is not None:
            path = os.path.join(self.tmp, f"staple-{len(os.listdir(self.tmp))}.der")
            with open(path, "wb") as f:
                f.write(staple)
            args += ["-status_file", path]
        server = OpenSSLServer(leaf or self.leaf, extra_args=args).start()
        self.addCleanup(server.stop)
        return server

    def staple(self, leaf: CertifiedKey | None = None) -> bytes:
        """
        The responder's real answer for C{leaf} (default the test's).
        """
        return self.responder.respond(build_request((leaf or self.leaf).cert, self.intermediate.cert))

    def bad_responses(self, status: str, leaf: CertifiedKey | None = None) -> list[bytes]:
        """
        Responses about C{leaf} (default the test's) with C{status}: forged
        (signed by a key of another CA claiming the intermediate's name),
        stale, and for another serial.
        """
        certificate = (leaf or self.leaf).cert
        forger = CertificateAuthority.create("SSA Test Intermediate CA")
        other = self.intermediate.issue_server("localhost")
        now = datetime.datetime.now(datetime.UTC)
        return [
            make_response(certificate, self.intermediate, status=status, signer=forger),
            make_response(certificate, self.intermediate, status=status, this_update=now - 48 * HOUR,
                          next_update=now - HOUR),
            make_response(other.cert, self.intermediate, status=status),
        ]

    def asked(self, path: str) -> None:
        """
        Wait until the test's HTTP server got a request for C{path} (the
        daemon's fetch is under way).
        """
        deadline = time.monotonic() + 30
        while self.http.requests[path] == 0:
            self.assertLess(time.monotonic(), deadline, f"no request for {path}")
            select.select([], [], [], 0.01)

    def connects(self, port: int, **options: int) -> None:
        """
        A socket trusting the root, with C{options} (by name), connects to
        C{port} for localhost.
        """
        sock = self.trusting_socket()
        for name, value in options.items():
            sock.setsockopt(TLS, getattr(client, name), value)
        sock.connect(("127.0.0.1", port))
        sock.close()

    def refused(self, port: int, *words: str, **options: int) -> str:
        """
        A socket trusting the root is refused EPROTO, the reason holding
        C{words}.
        """
        sock = self.trusting_socket()
        for name, value in options.items():
            sock.setsockopt(TLS, getattr(client, name), value)
        return self.assertConnectFails(sock, ("127.0.0.1", port), errno.EPROTO, *words)


class ResponderTests(OCSPTestCase):
    """
    C{soft-fail}: OCSP responders and CRL distribution points.
    """

    def test_good(self) -> None:
        """
        Both responders say good: connected, after asking each once; the
        distribution points are not needed.
        """
        self.connects(self.server().port)
        self.assertEqual(self.http.requests["/ocsp/int"], 1)
        self.assertEqual(self.http.requests["/ocsp/root"], 1)
        self.assertEqual(self.http.requests["/crl/int"], 0)

    def test_revoked_by_responder(self) -> None:
        """
        The intermediate's responder says the leaf is revoked: EPROTO
        naming the leaf and the responder.
        """
        self.responder.revoke(self.leaf.cert)
        self.refused(self.server().port, "revoked", "/CN=localhost", "depth 0",
                     f"OCSP responder {self.http.url('/ocsp/int')}", "key_compromise")

    def test_revoked_intermediate(self) -> None:
        """
        The root's responder says the intermediate is revoked: EPROTO
        naming it at depth 1.
        """
        self.root_responder.revoke(self.intermediate.cert)
        self.refused(self.server().port, "revoked", "SSA Test Intermediate CA", "depth 1",
                     self.http.url("/ocsp/root"))

    def test_revoked_by_distribution_point(self) -> None:
        """
        No responder answers (HTTP 404); the CRL of the distribution point
        lists the leaf: EPROTO naming the distribution point.
        """
        del self.http.routes["/ocsp/int"]
        self.http.routes["/crl/int"] = make_crl(self.intermediate, (self.leaf.cert,))
        self.refused(self.server().port, "revoked", "/CN=localhost",
                     f"is listed on the CRL {self.http.url('/crl/int')}")

    def test_unknown_passes(self) -> None:
        """
        Responder down (nothing listens) and no distribution point, or a
        responder that says 404 and a distribution point with a CRL signed
        by another key: unknown, which soft-fail passes.
        """
        leaf = self.issue(f"http://127.0.0.1:{closed_port()}/ocsp", None)
        self.connects(self.server(leaf).port)
        del self.http.routes["/ocsp/int"]
        self.http.routes["/crl/int"] = make_crl(self.intermediate, (self.leaf.cert,), signer=self.ca.key)
        self.connects(self.server().port)

    def test_hanging_responder_blocks_nobody(self) -> None:
        """
        A responder that never answers: the connect waits at most
        revocation-timeout, then passes (soft-fail); meanwhile another
        connection completes.
        """
        self.http.routes["/hang"] = "hang"
        hanging = self.server(self.issue("/hang", None))
        good = self.server()
        sock = self.trusting_socket(nonblocking=True)
        started = time.monotonic()
        self.assertRaises(BlockingIOError, sock.connect, ("127.0.0.1", hanging.port))
        self.connects(good.port)
        self.assertEqual(select.select([], [sock], [], 0)[1], [], "the hanging connect finished early")
        select.select([], [sock], [], 30)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0)
        self.assertLess(time.monotonic() - started, 15)
        self.assertGreaterEqual(self.http.requests["/hang"], 1)

    def test_close_while_checking(self) -> None:
        """
        A socket closed while its check waits for a hanging responder: the
        daemon goes on (other connections work; when the fetch ends, the
        next connection to that server passes), with no error in its log.
        """
        self.http.routes["/hang"] = "hang"
        hanging = self.server(self.issue("/hang", None))
        sock = self.trusting_socket(nonblocking=True)
        self.assertRaises(BlockingIOError, sock.connect, ("127.0.0.1", hanging.port))
        self.asked("/hang")
        sock.close()
        self.connects(self.server().port)
        self.connects(hanging.port)
        self.assertNotIn("Traceback", self.daemon.log())
        self.assertNotIn("Unhandled", self.daemon.log())

    def test_bad_responses_are_not_revoked(self) -> None:
        """
        Forged, stale and wrong-serial responses saying "revoked" are
        unknown, not revoked: soft-fail passes.
        """
        del self.http.routes["/crl/int"]
        server = self.server()
        for response in self.bad_responses("revoked"):
            self.http.routes["/ocsp/int"] = response
            self.connects(server.port)

    def test_cache_one_fetch(self) -> None:
        """
        Five connections at once to a server whose responder is slow: one
        fetch per responder serves them all, and a later connection too.
        """
        gate = threading.Event()
        self.addCleanup(gate.set)

        def slow(body: bytes) -> bytes:
            gate.wait(30)
            return self.responder.respond(body)

        self.http.routes["/ocsp/int"] = slow
        server = self.server()
        sockets = [self.trusting_socket(nonblocking=True) for _ in range(5)]
        for sock in sockets:
            self.assertRaises(BlockingIOError, sock.connect, ("127.0.0.1", server.port))
        self.asked("/ocsp/int")
        gate.set()
        for sock in sockets:
            select.select([], [sock], [], 30)
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0)
        self.connects(server.port)
        self.assertEqual(self.http.requests["/ocsp/int"], 1)
        self.assertEqual(self.http.requests["/ocsp/root"], 1)

    def test_options(self) -> None:
        """
        The methods the policy turns on cannot be turned off (EPROTO
        naming the key); turning them on is allowed (the five revocation
        options).
        """
        sock = self.tls_socket()
        for option, key in ((client.TLS_OCSP_CHECKS, "revocation-ocsp"),
                            (client.TLS_OCSP_STAPLED_CHECKS, "revocation-stapled"),
                            (client.TLS_CACHED_REV_CHECKS, "revocation-cached"),
                            (client.TLS_CRL_CHECKS, "revocation-crl"),
                            (client.TLS_REVOCATION_CHECKS, "revocation-checks")):
            failure = self.assertRaises(OSError, sock.setsockopt, TLS, option, 0)
            self.assertEqual(failure.errno, errno.EPROTO)
            self.assertIn(key, str(failure))
            sock.setsockopt(TLS, option, 1)


class HardFailTests(OCSPTestCase):
    """
    C{hard-fail}: an unknown status is refused, bounded by
    revocation-timeout.
    """

    policy_text = "revocation-timeout: 1\nsession-resumption: disabled\nrevocation-mode: hard-fail\n"

    def test_good(self) -> None:
        self.connects(self.server().port)

    def test_down(self) -> None:
        """
        The only responder is down: refused, naming it.
        """
        port = closed_port()
        leaf = self.issue(f"http://127.0.0.1:{port}/ocsp", None)
        self.refused(self.server(leaf).port, "unknown", "hard-fail", f"127.0.0.1:{port}")

    def test_hanging(self) -> None:
        """
        The only responder never answers: refused after revocation-timeout.
        """
        self.http.routes["/hang"] = "hang"
        started = time.monotonic()
        self.refused(self.server(self.issue("/hang", None)).port, "unknown", "did not answer within 1 s")
        self.assertLess(time.monotonic() - started, 10)

    def test_bad_responses(self) -> None:
        """
        Forged, stale and wrong-serial responses saying "good" are
        unknown, never good: refused, saying why.
        """
        del self.http.routes["/crl/int"]
        server = self.server()
        words = ("is signed by neither", "is stale", "does not answer for this certificate")
        for response, word in zip(self.bad_responses("good"), words, strict=True):
            self.http.routes["/ocsp/int"] = response
            self.refused(server.port, "unknown", word)

    def test_distribution_point_good(self) -> None:
        """
        Without responders, current CRLs at the distribution points make
        the status known: connected.
        """
        self.http.routes.pop("/ocsp/int")
        self.http.routes.pop("/ocsp/root")
        self.connects(self.server().port)
        self.assertEqual(self.http.requests["/crl/int"], 1)


class CacheOffTests(OCSPTestCase):
    """
    C{revocation-cached: disabled} and C{revocation-ocsp: disabled}: every
    connection fetches again, unless its socket turns the cache on (then
    what the last fetch brought serves); the responders are asked only by
    sockets that turn OCSP on.
    """

    policy_text = ("revocation-timeout: 3\nsession-resumption: disabled\nrevocation-cached: disabled\n"
                   "revocation-ocsp: disabled\n")

    def test_cache_option(self) -> None:
        server = self.server()
        self.connects(server.port)
        self.connects(server.port)
        self.assertEqual(self.http.requests["/crl/int"], 2)
        self.connects(server.port, TLS_CACHED_REV_CHECKS=1)
        self.connects(server.port, TLS_CACHED_REV_CHECKS=1)
        self.assertEqual(self.http.requests["/crl/int"], 2)
        self.assertEqual(self.http.requests["/ocsp/int"], 0)

    def test_ocsp_option(self) -> None:
        self.responder.revoke(self.leaf.cert)
        server = self.server()
        self.connects(server.port)
        self.refused(server.port, "revoked", "OCSP responder", TLS_OCSP_CHECKS=1)


class StapleTests(OCSPTestCase):
    """
    Stapled responses and must-staple (C{openssl s_server -status_file}).
    The openssl backend reads staples; the stdlib backend cannot, and says
    so.
    """

    def test_must_staple_without_staple(self) -> None:
        """
        A must-staple leaf and a server that staples nothing: refused even
        in soft-fail, though the responder says good.
        """
        leaf = self.issue(must_staple=True)
        self.responder.good(leaf.cert)
        reason = self.refused(self.stapling_server(None, leaf).port, "must-staple", "/CN=localhost")
        if self.backend == "stdlib":
            self.assertIn("stdlib backend cannot read stapled responses", reason)

    def test_must_staple_with_staple(self) -> None:
        """
        A must-staple leaf with a good staple: connected without asking
        the leaf's responder (openssl); the stdlib backend cannot read the
        staple and refuses, saying so.
        """
        leaf = self.issue(must_staple=True)
        self.responder.good(leaf.cert)
        server = self.stapling_server(self.staple(leaf), leaf)
        if self.backend == "stdlib":
            self.refused(server.port, "must-staple", "stdlib backend cannot read stapled responses")
            self.assertIn("cannot read stapled OCSP responses", self.daemon.log())
            return
        self.connects(server.port)
        self.assertEqual(self.http.requests["/ocsp/int"], 0)

    def test_revoked_by_staple(self) -> None:
        """
        The server staples a response saying its leaf is revoked: refused
        naming the staple (openssl). The stdlib backend cannot read it and
        asks the responder, which says good.
        """
        self.responder.revoke(self.leaf.cert)
        staple = self.staple()
        self.responder.good(self.leaf.cert)
        server = self.stapling_server(staple)
        if self.backend == "stdlib":
            self.connects(server.port)
            return
        self.refused(server.port, "revoked", "/CN=localhost", "stapled OCSP response")

    def test_bad_staple(self) -> None:
        """
        A forged staple saying revoked is not taken (the responder, which
        says good, decides); with must-staple a stale staple is refused.
        """
        forged = self.bad_responses("revoked")[0]
        self.connects(self.stapling_server(forged).port)
        leaf = self.issue(must_staple=True)
        stale = self.bad_responses("good", leaf)[1]
        self.refused(self.stapling_server(stale, leaf).port, "must-staple")




class ServerStaplingTests(OCSPTestCase):
    """
    A listener with TLS_SERVER_OCSP_STAPLING=1 staples its responder's
    answer (openssl backend); the stdlib backend refuses to listen so.
    """

    def stapling_listener(self, leaf: CertifiedKey) -> client.SSASocket:
        """
        A listener serving C{leaf} with stapling, once the daemon says it
        has a good response for it.
        """
        before = self.daemon.log().count("stapling: a good OCSP response")
        listener = self.listener(leaf.chain_pem(), leaf.key_pem(), TLS_SERVER_OCSP_STAPLING=1)
        deadline = time.monotonic() + 30
        while self.daemon.log().count("stapling: a good OCSP response") <= before:
            self.assertLess(time.monotonic(), deadline, f"no staple in the log:\n{self.daemon.log()}")
            select.select([], [], [], 0.02)
        return listener

    def test_s_client_sees_staple(self) -> None:
        """
        C{openssl s_client -status} gets a good stapled response; the
        daemon's own client accepts a must-staple leaf from it.
        """
        if self.backend == "stdlib":
            failure = self.assertRaises(OSError, self.listener, self.leaf.chain_pem(), self.leaf.key_pem(),
                                        TLS_SERVER_OCSP_STAPLING=1)
            self.assertEqual(failure.errno, errno.EPROTO)
            self.assertIn("stdlib backend cannot staple", str(failure))
            return
        leaf = self.issue(must_staple=True)
        self.responder.good(leaf.cert)
        listener = self.stapling_listener(leaf)
        port = listener.getsockname()[1]
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-status"],
            input=b"", capture_output=True, timeout=30, check=False)
        output = result.stdout.decode(errors="replace")
        self.assertIn("OCSP Response Status: successful", output)
        self.assertIn("Cert Status: good", output)
        self.connects(port)
        self.assertEqual(self.http.requests["/ocsp/int"], 1)


for_each_backend(globals(), ResponderTests, HardFailTests, CacheOffTests, StapleTests, ServerStaplingTests)
