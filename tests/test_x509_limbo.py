"""
The gate of issue 11: every case of x509-limbo's development half
(C{../shared/fixtures/x509-limbo/dev.json}, or C{$SSA_X509_LIMBO}) played
end to end through a real daemon, per backend: a local TLS server presents
the case's chain (or a local TLS client does, for client certificates),
the daemon trusts only the case's anchors, its clock pinned to the case's
validation time with libfaketime (absolute, stopped), and its verdict is
compared with the expected one.

Zero false accepts; every false reject is listed in
C{tests/x509_limbo_deviations.txt} with its reason; the CRLs of C{has-crl}
cases are given to their daemon as the policy's C{crl-path}; cases that
cannot be served are skipped and counted. The counts per category (the
case id's prefix) go to the test's output.

Cases are grouped by (validation time, chain depth, whether they have
CRLs): one daemon serves a group.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import socket
import ssl
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from twisted.python import log
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ssa import _channels, client
from ssa.testing.certs import CertificateAuthority
from ssa.testing.daemon import SOURCE_ROOT, DaemonProcess

from .helpers import BACKENDS

TLS = client.IPPROTO_TLS
LIMBO = Path(os.environ.get("SSA_X509_LIMBO", SOURCE_ROOT.parent / "shared" / "fixtures" / "x509-limbo" / "dev.json"))
DEVIATIONS = Path(__file__).with_name("x509_limbo_deviations.txt")
# Seconds any one step may take before the case counts as a hang.
PATIENCE = 30.0
# The words of a verdict on the certificate (rather than a handshake that
# could not happen at all, e.g. no cipher suite for the case's key).
_VERDICT_WORDS = ("verification failed", "hostname mismatch", "cannot be parsed", "sent no certificate", "revoked",
                  "revocation status unknown")


def libfaketime() -> str | None:
    """
    The path of libfaketime (Debian package C{faketime}), or L{None}.
    """
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    return found[0] if found else None


def load_deviations(backend: str) -> dict[str, str]:
    """
    The known false rejects of C{backend}: C{{case id: reason}} from
    L{DEVIATIONS} (C{id reason...} per line, the id prefixed with
    C{backend:} for one backend only; C{#} comments).
    """
    known: dict[str, str] = {}
    if DEVIATIONS.exists():
        for line in DEVIATIONS.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                case_id, _, reason = line.partition(" ")
                only, _, rest = case_id.partition(":")
                if only in BACKENDS:
                    if only != backend:
                        continue
                    case_id = rest
                known[case_id] = reason.strip()
    return known


def _pem_file(directory: str, name: str, *pems: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("".join(p if p.endswith("\n") else p + "\n" for p in pems))
    return path


def _peer_context(case: dict, directory: str, server: bool) -> ssl.SSLContext | None:
    """
    A context presenting the case's peer certificate and intermediates,
    or L{None} if the TLS library refuses them (the case cannot be served).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not server:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        context.set_ciphers("ALL:@SECLEVEL=0")
        chain = _pem_file(directory, "chain.pem", case["peer_certificate"], *case["untrusted_intermediates"])
        key = _pem_file(directory, "key.pem", case["peer_certificate_key"])
        context.load_cert_chain(chain, key)
    except (ssl.SSLError, ValueError, OSError):
        return None
    return context


@dataclass
class Outcome:
    """
    What the daemon did with one case: C{verdict} is C{SUCCESS},
    C{FAILURE}, C{UNSERVED} (the case cannot be played) or C{ERROR} (a
    bug: another errno, a hang), with the reason.
    """

    verdict: str
    reason: str = ""


def _judged(failure: OSError, reason: str) -> Outcome:
    if failure.errno != errno.EPROTO:
        return Outcome("ERROR", f"errno {failure.errno}: {failure}")
    if any(word in reason for word in _VERDICT_WORDS):
        return Outcome("FAILURE", reason)
    return Outcome("UNSERVED", reason)


def _error_reason(sock: client.SSASocket, failure: OSError) -> str:
    try:
        return sock.getsockopt(TLS, client.TLS_ERROR, 4096).rstrip(b"\0").decode() or str(failure)
    except OSError:
        return str(failure)


def play_server_case(case: dict, daemon: DaemonProcess) -> Outcome:
    """
    The client role: a local TLS server presents the chain, the daemon
    connects for the case's name.
    """
    name = case["expected_peer_name"]
    if name is None or name["kind"] not in ("DNS", "IP"):
        return Outcome("UNSERVED", "no DNS or IP name to connect for")
    with tempfile.TemporaryDirectory(prefix="limbo-") as directory:
        context = _peer_context(case, directory, server=True)
        if context is None:
            return Outcome("UNSERVED", "the TLS library refuses the chain or key")
        family, host = socket.AF_INET, "127.0.0.1"
        if name["kind"] == "IP" and name["value"] == "::1":
            family, host = socket.AF_INET6, "::1"
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.settimeout(PATIENCE)
        listener.bind((host, 0))
        listener.listen(1)
        thread = threading.Thread(target=_serve_once, args=(listener, context), daemon=True)
        thread.start()
        try:
            sock = client.socket(family, socket.SOCK_STREAM, TLS, path=daemon.socket_path)
            try:
                sock.settimeout(PATIENCE)
                sock.setsockopt(TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, "".join(case["trusted_certs"]).encode())
                if not (name["kind"] == "IP" and name["value"] in ("127.0.0.1", "::1")):
                    sock.setsockopt(TLS, client.TLS_HOSTNAME, name["value"])
                try:
                    sock.connect(listener.getsockname()[:2])
                except TimeoutError:
                    return Outcome("ERROR", "connect() hung")
                except OSError as e:
                    return _judged(e, _error_reason(sock, e))
                return Outcome("SUCCESS")
            finally:
                sock.close()
        finally:
            thread.join(PATIENCE)
            listener.close()


def _serve_once(listener: socket.socket, context: ssl.SSLContext) -> None:
    """
    Accept one connection, do the handshake, wait for the daemon to close.
    """
    try:
        conn, _ = listener.accept()
    except OSError:
        return
    with conn:
        conn.settimeout(PATIENCE)
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass


def play_client_case(case: dict, daemon: DaemonProcess, own: bytes, own_key: bytes) -> Outcome:
    """
    The server role: the daemon listens requiring client certificates, a
    local TLS client presents the chain; C{SUCCESS} when C{accept()}
    delivers the connection.
    """
    with tempfile.TemporaryDirectory(prefix="limbo-") as directory:
        context = _peer_context(case, directory, server=False)
        if context is None:
            return Outcome("UNSERVED", "the TLS library refuses the chain or key")
        server = client.socket(socket.AF_INET, socket.SOCK_STREAM, TLS, path=daemon.socket_path)
        try:
            server.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, own)
            server.setsockopt(TLS, client.TLS_PRIVATE_KEY, own_key)
            server.setsockopt(TLS, client.TLS_REQUEST_PEER_AUTH, 1)
            server.setsockopt(TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, "".join(case["trusted_certs"]).encode())
            server.bind(("127.0.0.1", 0))
            server.listen(4)
            said: list[bytes] = []
            thread = threading.Thread(target=_client_once, args=(server.getsockname()[:2], context, said), daemon=True)
            thread.start()
            # Poll accept() until the client knows: a refused client sees
            # the connection end, an accepted one waits for "ok".
            server.settimeout(0.2)
            while True:
                try:
                    conn, _ = server.accept()
                except (TimeoutError, BlockingIOError):
                    if thread.is_alive():
                        continue
                    thread.join()
                    if said and said[0] == b"hang":
                        return Outcome("ERROR", "the client heard nothing")
                    return Outcome("FAILURE", "accept() never delivered the connection")
                conn.sendall(b"ok")
                conn.close()
                thread.join(PATIENCE)
                return Outcome("SUCCESS")
        finally:
            server.close()


def _client_once(address: tuple, context: ssl.SSLContext, said: list[bytes]) -> None:
    try:
        with socket.create_connection(address, timeout=PATIENCE) as raw:
            with context.wrap_socket(raw) as tls:
                said.append(tls.recv(2))
    except TimeoutError:
        said.append(b"hang")
    except (OSError, ssl.SSLError):
        said.append(b"")


@dataclass
class Tally:
    """
    The counts of one backend's run, per category and overall.
    """

    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    false_accepts: list[str] = field(default_factory=list)
    unlisted_rejects: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, case: dict, outcome: Outcome, deviations: dict[str, str]) -> None:
        category = case["id"].split("::", 1)[0]
        expected, got, case_id = case["expected_result"], outcome.verdict, case["id"]
        if got == "ERROR":
            kind = "error"
            self.errors.append(f"{case_id}: {outcome.reason}")
        elif got == "UNSERVED":
            kind = "skipped (cannot be served)"
            self.skipped.append(f"{case_id}: {outcome.reason}")
        elif got == expected:
            kind = "agree"
            if case_id in deviations:
                self.fixed.append(case_id)
        elif got == "SUCCESS":
            kind = "FALSE ACCEPT"
            self.false_accepts.append(f"{case_id}: {case['description'][:200]!r}")
        else:
            kind = "false reject (deviation)"
            if case_id not in deviations:
                self.unlisted_rejects.append(f"{case_id}: {outcome.reason}")
        self.counts[category][kind] += 1

    def report(self, backend: str) -> str:
        lines = [f"x509-limbo dev cases through the {backend} backend:"]
        total: Counter = Counter()
        for category in sorted(self.counts):
            counts = self.counts[category]
            total.update(counts)
            lines.append(f"  {category}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        lines.append("  all: " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())))
        for skipped in self.skipped:
            lines.append(f"  skipped {skipped}")
        if self.fixed:
            lines.append("  listed as deviations but now agree: " + ", ".join(self.fixed))
        return "\n".join(lines)


Group = tuple[str | None, int | None, bool]


def groups(cases: list[dict]) -> Iterator[tuple[Group, list[dict]]]:
    """
    The cases by (validation time to the second, chain depth, whether the
    case has CRLs).
    """
    grouped: dict[Group, list[dict]] = defaultdict(list)
    for case in cases:
        when = case["validation_time"]
        if when is not None:
            when = when[:19].replace("T", " ")
        grouped[(when, case["max_chain_depth"], bool(case.get("crls")))].append(case)
    return iter(sorted(grouped.items(), key=lambda item: (item[0][0] or "", item[0][1] or -1, item[0][2])))


class X509LimboMixin:
    """
    Play every dev case through one backend.
    """

    backend = "openssl"

    def setUp(self) -> None:
        if not LIMBO.exists():
            raise SkipTest(f"no x509-limbo cases at {LIMBO} (set SSA_X509_LIMBO)")
        self.cases = json.loads(LIMBO.read_text())["testcases"]
        self.faketime = libfaketime()

    def daemon_for(self, when: str | None, depth: int | None, cases: list[dict]) -> DaemonProcess:
        """
        A daemon for one group: its clock stopped at C{when}, its policy's
        chain depth C{depth}, its C{crl-path} the CRLs of C{cases}.
        """
        directory = tempfile.mkdtemp(prefix="limbo-policy-")
        lines = ["handshake-timeout: 20", "connect-timeout: 20"]
        if depth is not None:
            lines.append(f"cert-chain-depth: {min(depth, 100)}")
        crls = [crl for case in cases for crl in case.get("crls") or ()]
        if crls:
            lines.append(f"crl-path: {_pem_file(directory, 'crls.pem', *crls)}")
        # Revocation by crl-path alone: some cases' certificates name real
        # OCSP responders and CRL distribution points, which a test must
        # never reach (network traffic only to loopback).
        lines.append("revocation-ocsp: disabled\nrevocation-stapled: disabled" if crls else "revocation-checks: disabled")
        policy = _pem_file(directory, "config.yml", "\n".join(lines))
        env = {}
        if when is not None:
            assert self.faketime is not None
            env = {"LD_PRELOAD": self.faketime, "FAKETIME": when, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        daemon = DaemonProcess(["--backend", self.backend, "--config", policy], env=env).start()
        self.addCleanup(daemon.stop)
        self.addCleanup(_channels.close_idle, daemon.socket_path)
        return daemon

    def test_dev_cases(self) -> None:
        """
        No false accept; every false reject is a listed deviation; no
        other errno, hang or exception in the daemon's log.
        """
        deviations = load_deviations(self.backend)
        tally = Tally()
        own = CertificateAuthority.create().issue_server("localhost")
        for (when, depth, _), cases in groups(self.cases):
            if when is not None and self.faketime is None:
                for case in cases:
                    tally.add(case, Outcome("UNSERVED", "no libfaketime"), deviations)
                continue
            daemon = self.daemon_for(when, depth, cases)
            for case in cases:
                if case["peer_certificate_key"] is None:
                    outcome = Outcome("UNSERVED", "no private key")
                elif case["validation_kind"] == "CLIENT":
                    outcome = play_client_case(case, daemon, own.chain_pem(), own.key_pem())
                else:
                    outcome = play_server_case(case, daemon)
                tally.add(case, outcome, deviations)
            daemon_log = daemon.log()
            if "Traceback" in daemon_log or "Unhandled" in daemon_log:
                tally.errors.append(f"the daemon logged an exception (group {when}, {depth}):\n{daemon_log[-3000:]}")
            daemon.stop()
        report = tally.report(self.backend)
        print("\n" + report)
        log.msg(report)
        problems = []
        if tally.false_accepts:
            problems.append("false accepts:\n  " + "\n  ".join(tally.false_accepts))
        if tally.unlisted_rejects:
            problems.append(f"false rejects not in {DEVIATIONS.name}:\n  " + "\n  ".join(tally.unlisted_rejects))
        if tally.errors:
            problems.append("errors:\n  " + "\n  ".join(tally.errors))
        if problems:
            self.fail(report + "\n" + "\n".join(problems))



for _backend in BACKENDS:
    _name = f"X509LimboTests_{_backend}"
    globals()[_name] = type(_name, (X509LimboMixin, SynchronousTestCase), {"backend": _backend, "__module__": __name__})
