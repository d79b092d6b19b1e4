"""
The certificate-decision matrix: every case is run against every backend,
with certificates generated at test time and a real peer on 127.0.0.1, and
all backends must reach the same verdict (the secure one) on every row.

Each client engine is driven the way the daemon drives it
(L{ssa.tlsprotocol.TLSStreamProtocol} for L{ssa.connector.ConnectAttempt}):
C{do_handshake()} until done, then L{verify_identity} on the peer's leaf,
then one round trip of application data, so that failures that surface
after the handshake (a TLS 1.3 server refusing the client's missing
certificate) count too. Any L{TLSFailure}, a close before the reply, or a
timeout is a failure; only the peer's reply is success.

The table (case x backend -> verdict) is printed to stdout and written to
the Twisted log (C{_trial_temp/test.log}).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Union

from cryptography.hazmat.primitives import hashes
from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase

from ssa.backend_choice import load_backend
from ssa.errors import TLSFailure
from ssa.identity import verify_identity
from ssa.interfaces import ITLSBackend
from ssa.optioncheck import is_ip_literal
from ssa.testing.certs import CertificateAuthority, CertifiedKey, self_signed_server
from ssa.testing.peers import OpenSSLServer, StdlibTLSServer, echo_handler
from ssa.tlsconfig import ClientTLSConfig

BACKENDS = ("openssl", "stdlib")
HOST = "www.example.test"
PING = b"ping\n"

# The rows of L{_cases}, in order, known without making certificates (a
# test per row is generated from them; test_table checks they match).
ROW_NAMES = (
    "valid chain", "expired", "not yet valid", "wrong host", "wildcard match",
    "wildcard too deep", "IP SAN", "IP not in SAN", "self-signed",
    "unknown issuer", "server sends no intermediate",
    "intermediate without CA:TRUE", "path length exceeded",
    "name constraint violated", "EKU clientAuth only", "RSA-1024 key",
    "SHA-1 signature", "TLS 1.0-only server (s_server)", "TLS 1.1-only server",
    "no shared cipher", "client cert required, missing (TLS 1.3)",
    "client cert required, missing (TLS 1.2)", "valid chain (s_server)",
)
TIMEOUT = 5.0

Peer = Union[StdlibTLSServer, OpenSSLServer]


def _seclevel0_context(
    certified_key: CertifiedKey,
    minimum_version: ssl.TLSVersion | None = None,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """
    A server context at OpenSSL security level 0, so that it can load a
    weak certificate (RSA-1024, SHA-1) or speak TLS 1.0/1.1 at all; the
    certificate is loaded after the level is lowered.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if minimum_version is not None:
        context.minimum_version = minimum_version
    if maximum_version is not None:
        context.maximum_version = maximum_version
    with tempfile.TemporaryDirectory(prefix="ssa-matrix-") as tmp:
        files = certified_key.write(Path(tmp), "server")
        context.load_cert_chain(files.cert, files.key)
    return context


def stdlib_server(
    certified_key: CertifiedKey,
    *,
    weak: bool = False,
    minimum_version: ssl.TLSVersion | None = None,
    maximum_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    client_ca: CertificateAuthority | None = None,
    placeholder: CertifiedKey | None = None,
) -> StdlibTLSServer:
    """
    An echoing L{StdlibTLSServer} for C{certified_key}.

    @param weak: serve at security level 0 (see L{_seclevel0_context});
        the server is built with C{placeholder} (which the default level
        accepts) and its C{context} replaced.
    @param ciphers: the TLS 1.2 cipher list to serve.
    """
    if weak:
        assert placeholder is not None
        server = StdlibTLSServer(placeholder, echo_handler)
        context = _seclevel0_context(certified_key, minimum_version, maximum_version)
        context.sni_callback = server.context.sni_callback
        server.context = context
    else:
        server = StdlibTLSServer(
            certified_key, echo_handler, client_ca=client_ca,
            minimum_version=minimum_version, maximum_version=maximum_version,
        )
    if ciphers is not None:
        server.context.set_ciphers(ciphers)
    return server


@dataclass(frozen=True)
class Case:
    """
    One row of the matrix.

    @ivar name: the row's label.
    @ivar peer: makes the (unstarted) server.
    @ivar expected: C{"ok"} or C{"fail"}.
    @ivar hostname: the name the application asks for (a DNS name or an
        IP literal, as C{TLS_HOSTNAME}).
    @ivar trust: the trust anchors (PEM).
    """

    name: str
    peer: Callable[[], Peer]
    expected: str
    hostname: str
    trust: bytes


def run_client(
    backend: ITLSBackend, config: ClientTLSConfig, hostname: str, address: tuple[str, int]
) -> str:
    """
    Connect as the daemon does and return the verdict: C{"ok"} or
    C{"fail: <reason>"}.

    As in L{ssa.sockets.TLSSocket.connect}, an IP literal is verified but
    not sent as SNI.
    """
    server_hostname = None if is_ip_literal(hostname) else hostname
    try:
        engine = backend.client_engine(config, server_hostname, verify_name=hostname)
    except TLSFailure as e:
        return f"fail: {e.args[0] if e.args else e}"
    deadline = time.monotonic() + TIMEOUT
    sock = socket.create_connection(address, timeout=TIMEOUT)

    def flush() -> None:
        out = engine.outgoing()
        if out:
            sock.sendall(out)

    handshake_done = False
    reply = b""
    data = b""
    try:
        while True:
            # TLSStreamProtocol._receive, with the connector's identity check.
            try:
                if data:
                    engine.receive(data)
                if not handshake_done:
                    done = engine.do_handshake()
                    flush()
                    if done:
                        info = engine.session_info()
                        verify_identity(info.peer_certificate, hostname)
                        handshake_done = True
                        engine.write(PING)
                if handshake_done:
                    reply += engine.read()
            except TLSFailure as e:
                try:
                    flush()
                except OSError:
                    pass
                return f"fail: {e.args[0] if e.args else e}"
            flush()
            if reply:
                return "ok"
            if engine.peer_closed:
                return "fail: the peer sent close_notify without replying"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "fail: timed out"
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return "fail: timed out"
            except OSError as e:
                return f"fail: TCP error ({e})"
            if not data:
                if not handshake_done:
                    return "fail: the peer closed the connection during the handshake"
                return "fail: the peer closed TCP without close_notify (truncation)"
    except OSError as e:
        return f"fail: TCP error ({e})"
    finally:
        if handshake_done:
            try:
                engine.close_notify()
                flush()
            except (OSError, TLSFailure):
                pass
        sock.close()


@dataclass(frozen=True)
class Row:
    """One case's verdicts, by backend."""

    case: Case
    verdicts: dict[str, str]


def _cases() -> list[Case]:
    """
    The matrix's cases, with their certificates made now (one root and
    intermediate shared by most of them).
    """
    root = CertificateAuthority.create("SSA Matrix Root CA")
    trust = root.root_pem()
    inter = root.issue_intermediate("SSA Matrix Intermediate CA")
    good = inter.issue_server(HOST)

    def plain(key: CertifiedKey, **kw: object) -> Callable[[], Peer]:
        return lambda: stdlib_server(key, **kw)  # type: ignore[arg-type]

    def weak(key: CertifiedKey, **kw: object) -> Callable[[], Peer]:
        return lambda: stdlib_server(key, weak=True, placeholder=good, **kw)  # type: ignore[arg-type]

    other_root = CertificateAuthority.create("SSA Matrix Unknown Root CA")
    unknown = other_root.issue_intermediate("SSA Matrix Unknown Intermediate").issue_server(HOST)
    no_intermediate = dataclasses.replace(good, chain=())
    not_ca = root.issue_intermediate("SSA Matrix Not-a-CA", ca=False).issue_server(HOST)
    path_len = (
        root.issue_intermediate("SSA Matrix PathLen0 CA", path_length=0)
        .issue_intermediate("SSA Matrix Too-Deep CA")
        .issue_server(HOST)
    )
    constrained = root.issue_intermediate(
        "SSA Matrix Constrained CA", permitted_dns=["allowed.test"]
    ).issue_server(HOST)
    client_only = inter.issue_server(HOST, extended_key_usage=("clientAuth",))
    rsa_1024 = inter.issue_server(HOST, key_type="rsa", key_size=1024)
    sha1 = inter.issue_server(HOST, hash_algorithm=hashes.SHA1())
    wildcard = inter.issue_server("*.example.test")
    ip = inter.issue_server("127.0.0.1")

    def openssl(key: CertifiedKey, *args: str) -> Callable[[], Peer]:
        return lambda: OpenSSLServer(key, extra_args=["-rev", *args])

    return [
        Case("valid chain", plain(good), "ok", HOST, trust),
        Case(
            "expired",
            plain(inter.issue_server(HOST, not_before=timedelta(days=-30),
                                     not_after=timedelta(days=-1))),
            "fail", HOST, trust,
        ),
        Case(
            "not yet valid",
            plain(inter.issue_server(HOST, not_before=timedelta(days=1),
                                     not_after=timedelta(days=30))),
            "fail", HOST, trust,
        ),
        Case("wrong host", plain(inter.issue_server("other.example.test")), "fail", HOST, trust),
        Case("wildcard match", plain(wildcard), "ok", HOST, trust),
        Case("wildcard too deep", plain(wildcard), "fail", "a." + HOST, trust),
        Case("IP SAN", plain(ip), "ok", "127.0.0.1", trust),
        Case("IP not in SAN", plain(good), "fail", "127.0.0.1", trust),
        Case("self-signed", plain(self_signed_server(HOST)), "fail", HOST, trust),
        Case("unknown issuer", plain(unknown), "fail", HOST, trust),
        Case("server sends no intermediate", plain(no_intermediate), "fail", HOST, trust),
        Case("intermediate without CA:TRUE", plain(not_ca), "fail", HOST, trust),
        Case("path length exceeded", plain(path_len), "fail", HOST, trust),
        Case("name constraint violated", plain(constrained), "fail", HOST, trust),
        Case("EKU clientAuth only", plain(client_only), "fail", HOST, trust),
        Case("RSA-1024 key", weak(rsa_1024), "fail", HOST, trust),
        Case("SHA-1 signature", weak(sha1), "fail", HOST, trust),
        Case(
            "TLS 1.0-only server (s_server)",
            openssl(good, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0"),
            "fail", HOST, trust,
        ),
        Case(
            "TLS 1.1-only server",
            weak(good, minimum_version=ssl.TLSVersion.TLSv1_1,
                 maximum_version=ssl.TLSVersion.TLSv1_1),
            "fail", HOST, trust,
        ),
        Case(
            "no shared cipher",
            plain(good, maximum_version=ssl.TLSVersion.TLSv1_2,
                  ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384"),
            "fail", HOST, trust,
        ),
        Case(
            "client cert required, missing (TLS 1.3)",
            plain(good, client_ca=root), "fail", HOST, trust,
        ),
        Case(
            "client cert required, missing (TLS 1.2)",
            plain(good, client_ca=root, maximum_version=ssl.TLSVersion.TLSv1_2),
            "fail", HOST, trust,
        ),
        Case("valid chain (s_server)", openssl(good), "ok", HOST, trust),
    ]


def _run_case(case: Case, backends: dict[str, ITLSBackend]) -> Row:
    peer = case.peer()
    peer.start()
    try:
        config = ClientTLSConfig(trust_anchors=case.trust, use_system_store=False)
        verdicts = {
            name: run_client(backend, config, case.hostname, peer.address)
            for name, backend in backends.items()
        }
    finally:
        peer.stop()
    return Row(case, verdicts)


@functools.lru_cache(maxsize=1)
def matrix() -> tuple[Row, ...]:
    """Run every case against every backend, once per test run."""
    backends = {name: load_backend(name) for name in BACKENDS}
    return tuple(_run_case(case, backends) for case in _cases())


def outcome(verdict: str) -> str:
    """C{"ok"} or C{"fail"}, without the reason."""
    return verdict.split(":", 1)[0]


def format_table(rows: tuple[Row, ...]) -> str:
    """The matrix as text, one line per case."""
    first = max(len("case"), *(len(row.case.name) for row in rows)) + 2
    widths = {
        name: max(len(name), *(len(row.verdicts[name]) for row in rows)) + 2
        for name in BACKENDS
    }
    lines = [
        "case".ljust(first) + "expected  "
        + "".join(name.ljust(widths[name]) for name in BACKENDS).rstrip()
    ]
    for row in rows:
        agree = all(outcome(row.verdicts[n]) == row.case.expected for n in BACKENDS)
        lines.append(
            row.case.name.ljust(first) + row.case.expected.ljust(10)
            + "".join(row.verdicts[n].ljust(widths[n]) for n in BACKENDS).rstrip()
            + ("" if agree else "   <-- MISMATCH")
        )
    return "\n".join(lines)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


class DecisionMatrixTests(SynchronousTestCase):
    """
    Every backend reaches the expected verdict on every case; a test per
    row, and one that prints the table.
    """

    def test_table(self) -> None:
        """
        Print the whole matrix (case x backend -> verdict) to stdout and the
        test log; fail if any row disagrees.
        """
        rows = matrix()
        self.assertEqual(tuple(row.case.name for row in rows), ROW_NAMES)
        table = format_table(rows)
        sys.stdout.write("\ncertificate-decision matrix:\n" + table + "\n")
        sys.stdout.flush()
        log.msg("certificate-decision matrix:\n" + table)
        bad = [
            row.case.name for row in rows
            if any(outcome(row.verdicts[n]) != row.case.expected for n in BACKENDS)
        ]
        self.assertEqual(bad, [], "\n" + table)

    def _check_row(self, name: str) -> None:
        [row] = [row for row in matrix() if row.case.name == name]
        got = {n: outcome(v) for n, v in row.verdicts.items()}
        self.assertEqual(
            got, {n: row.case.expected for n in BACKENDS},
            f"{name}: {row.verdicts}",
        )


def _add_row_tests() -> None:
    for name in ROW_NAMES:
        def test(self: DecisionMatrixTests, name: str = name) -> None:
            self._check_row(name)

        test.__name__ = f"test_row_{_slug(name)}"
        test.__doc__ = f"Both backends reach the expected verdict: {name}."
        setattr(DecisionMatrixTests, test.__name__, test)


_add_row_tests()
