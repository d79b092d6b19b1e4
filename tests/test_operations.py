"""
What operators see and run, end to end against real daemons: Prometheus
metrics after known traffic (summed over two workers), JSON log events,
C{ssa status} with several processes and workers, and the pure pieces
behind them.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from ssa import client, metrics, status
from ssa.testing.certs import CertificateAuthority
from ssa.testing.daemon import SOURCE_ROOT
from ssa.testing.peers import StdlibTLSServer, echo_handler, free_port

from .helpers import DaemonTestCase
from .test_workers import (
    WorkersTestCase,
    forget_idle_connections,
    recv_exactly,
    worker_of,
)

TLS = client.IPPROTO_TLS


def scrape(path: str) -> dict[tuple[str, tuple], float]:
    """
    GET /metrics over the Unix socket C{path}; every sample by name and
    sorted labels.
    """

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(30)
            self.sock.connect(path)

    connection = UnixHTTPConnection("localhost")
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200, response.status
        assert response.getheader("Content-Type").startswith("text/plain"), response.getheader("Content-Type")
        text = response.read().decode()
    finally:
        connection.close()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# Runs as root, imports what it needs, then becomes the user given (who
# may not be able to read this interpreter's files) and does its part.
_AS_USER = """
import json, os, sys
from ssa import _control, cli, client, paths, status, wire
uid, action, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
if action == "hold":
    sock = client.socket(client.AF_INET, client.SOCK_STREAM, client.IPPROTO_TLS, path=path)
    print(hex(sock.id), flush=True)
    sys.stdin.read()
else:
    sys.exit(cli.main(sys.argv[4:]))
"""


def _as_user(user: int | None, action: str, path: str, *arguments: str) -> list[str]:
    return [sys.executable, "-c", _AS_USER, str(-1 if user is None else user), action, path, *arguments]


def run_ssa(*arguments: str, user: int | None = None) -> subprocess.CompletedProcess:
    """
    Run the C{ssa} command (from this source tree), as C{user} if given.
    """
    env = dict(os.environ, PYTHONPATH=str(SOURCE_ROOT))
    return subprocess.run(
        _as_user(user, "ssa", "-", *arguments), capture_output=True, text=True, env=env, timeout=60, cwd="/",
    )


class MetricsTests(WorkersTestCase):
    """
    C{--metrics} with two workers.
    """

    def daemon_arguments(self) -> list[str]:
        """
        Serve the metrics on a Unix socket of the test.
        """
        self.metrics_path = os.path.join(self.tmp, "metrics.sock")
        return [*super().daemon_arguments(), "--metrics", f"unix:{self.metrics_path}"]

    def test_values_after_known_traffic(self) -> None:
        """
        Two echoed connections (one per worker), a certificate failure, a
        hostname failure and a refused connection show up in the totals
        over both workers: connections by role and outcome, failures by
        class, handshake count, bytes both ways, no active connection.
        """
        message = b"x" * 1000
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            for worker in (0, 1):
                with self.socket_in(worker) as sock:
                    sock.connect(("127.0.0.1", server.port))
                    sock.sendall(message)
                    self.assertEqual(recv_exactly(sock, len(message)), message)
            stranger = CertificateAuthority.create()
            self.assertConnectFails(self.trusting_socket(ca=stranger), ("127.0.0.1", server.port), errno.EPROTO)
            self.assertConnectFails(
                self.trusting_socket(hostname="other.example"), ("127.0.0.1", server.port), errno.EPROTO
            )
        with self.trusting_socket() as sock:
            self.assertRaises(OSError, sock.connect, ("127.0.0.1", free_port()))

        expected = {
            ("ssa_connections_total", (("outcome", "ok"), ("role", "client"))): 2,
            ("ssa_connections_total", (("outcome", "failed"), ("role", "client"))): 3,
            ("ssa_connections_total", (("outcome", "ok"), ("role", "server"))): 0,
            ("ssa_failures_total", (("reason", "certificate"),)): 1,
            ("ssa_failures_total", (("reason", "hostname"),)): 1,
            ("ssa_failures_total", (("reason", "refused"),)): 1,
            ("ssa_failures_total", (("reason", "timeout"),)): 0,
            ("ssa_handshake_seconds_count", ()): 2,
            ("ssa_bytes_total", (("direction", "in"),)): 2000,
            ("ssa_bytes_total", (("direction", "out"),)): 2000,
            ("ssa_active_connections", ()): 0,
        }
        # The bytes are counted when each bridge ends, after the close.
        deadline = time.monotonic() + 20
        while True:
            samples = scrape(self.metrics_path)
            got = {key: samples.get(key) for key in expected}
            if got == expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(got, expected)
        self.assertGreater(samples[("ssa_handshake_seconds_sum", ())], 0)
        self.assertEqual(samples[("ssa_handshake_seconds_bucket", (("le", "+Inf"),))], 2)

    def test_server_outcomes(self) -> None:
        """
        An accepted connection counts as a server success; a client that
        rejects the daemon's certificate, as a server failure.
        """
        listener = self.tls_socket()
        listener.setsockopt(TLS, client.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        listener.setsockopt(TLS, client.TLS_PRIVATE_KEY, self.server_key.key_pem())
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = listener.getsockname()[:2]
        trusting = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
        with socket.create_connection(address, timeout=30) as raw:
            with trusting.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"hi")  # before accept: it may wait in the listener with the connection
                conn, _ = listener.accept()
                self.assertEqual(conn.recv(2), b"hi")
                conn.close()
        stranger = ssl.create_default_context(cadata=CertificateAuthority.create().cert_pem().decode())
        with socket.create_connection(address, timeout=30) as raw:
            self.assertRaises(ssl.SSLError, stranger.wrap_socket, raw, server_hostname="localhost")
        server = (("role", "server"),)
        deadline = time.monotonic() + 20
        while True:
            samples = scrape(self.metrics_path)
            got = [samples[("ssa_connections_total", (("outcome", outcome),) + server)] for outcome in ("ok", "failed")]
            got.append(samples[("ssa_bytes_total", (("direction", "in"),))])
            if got == [1, 1, 2] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(got, [1, 1, 2])

    def test_active_connection_counted(self) -> None:
        """
        A live connection is active in the gauge; it is not once closed.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            sock = self.socket_in(1)
            sock.connect(("127.0.0.1", server.port))
            self.assertEqual(scrape(self.metrics_path)[("ssa_active_connections", ())], 1)
            sock.close()
            deadline = time.monotonic() + 20
            while scrape(self.metrics_path)[("ssa_active_connections", ())] != 0:
                self.assertLess(time.monotonic(), deadline, "the connection stayed active")
                time.sleep(0.05)


class PolicyLogFormatTests(DaemonTestCase):
    """
    The policy file's C{log-format: json}, with no C{--log-format}.
    """

    def daemon_arguments(self) -> list[str]:
        config = os.path.join(self.tmp, "config.yml")
        with open(config, "w") as f:
            f.write("log-format: json\n")
        return ["--config", config]

    def test_policy_key_chooses_json(self) -> None:
        with self.trusting_socket() as sock:
            self.assertRaises(OSError, sock.connect, ("127.0.0.1", free_port()))
        self.daemon.wait_for_log('"outcome": "failed"')
        events = [json.loads(line) for line in self.daemon.log().splitlines() if line.strip()]
        self.assertTrue(any(event.get("outcome") == "failed" for event in events))


class JSONLogTests(DaemonTestCase):
    """
    C{--log-format json} with two workers.
    """

    daemon_args = ["--log-format", "json", "--workers", "2"]

    def events(self) -> list[dict]:
        """
        Every event logged so far: one JSON object per line.
        """
        return [json.loads(line) for line in self.daemon.log().splitlines() if line.strip()]

    def test_outcome_events_carry_fields(self) -> None:
        """
        Every log line is a JSON object; a successful connection's event
        (relayed from worker 1, naming it) and a failure's carry pid, uid,
        executable, remote, sni, TLS version, cipher, resumed, outcome
        and reason.
        """
        self.daemon.wait_for_log('"log_format": "worker {index} ready (pid {pid})"')
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            for _ in range(40):
                forget_idle_connections(self.daemon.socket_path)
                with self.trusting_socket() as sock:
                    sock.connect(("127.0.0.1", server.port))
                    if worker_of(sock.id) == 1:
                        break
            else:
                self.fail("no connection landed in worker 1")
            failing = self.trusting_socket(hostname="other.example")
            self.assertConnectFails(failing, ("127.0.0.1", server.port), errno.EPROTO)
            port = server.port
        self.daemon.wait_for_log('"outcome": "failed"')
        outcomes = [event for event in self.events() if "outcome" in event]
        relayed = [event for event in outcomes if event["outcome"] == "ok" and event.get("worker") == 1]
        self.assertTrue(relayed, outcomes)
        ok = relayed[0]
        me = os.path.realpath(sys.executable)
        self.assertEqual(
            {key: ok[key] for key in ("pid", "uid", "executable", "remote", "sni", "tls_version", "resumed",
                                      "outcome", "reason", "role")},
            {"pid": os.getpid(), "uid": os.getuid(), "executable": me, "remote": f"127.0.0.1:{port}",
             "sni": "localhost", "tls_version": "TLS 1.3", "resumed": False, "outcome": "ok", "reason": None,
             "role": "client"},
        )
        self.assertTrue(ok["cipher"].startswith("TLS_"), ok["cipher"])
        self.assertTrue(ok["group"], ok)
        failed = [event for event in outcomes if event["outcome"] == "failed"][0]
        self.assertEqual(failed["sni"], "other.example")
        self.assertEqual(failed["remote"], f"127.0.0.1:{port}")
        self.assertIn("hostname mismatch", failed["reason"])
        self.assertIsNone(failed["tls_version"])


class StatusTests(WorkersTestCase):
    """
    C{ssa status} against a daemon with two workers.
    """

    def hold_socket(self, user: int | None = None) -> tuple[subprocess.Popen, str]:
        """
        Another process (run as C{user}) holding a NEW socket until its
        stdin closes; its pid and socket id.
        """
        holder = subprocess.Popen(
            _as_user(user, "hold", self.daemon.socket_path), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(SOURCE_ROOT)), cwd="/",
        )

        def stop() -> None:
            holder.stdin.close()
            holder.wait(30)
            holder.stdout.close()

        self.addCleanup(stop)
        return holder, holder.stdout.readline().strip()

    def status(self, user: int | None = None) -> dict:
        """
        C{ssa status --json}, run as C{user}.
        """
        result = run_ssa("status", "--json", "--socket", self.daemon.socket_path, user=user)
        self.assertEqual(result.returncode, 0, result.stderr)
        return json.loads(result.stdout)

    def test_every_worker_and_process(self) -> None:
        """
        Sockets of both workers and of two processes are listed, a
        connected one with its TLS details and bytes; counters are summed
        over the workers; the text form lists the same sockets.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            connected = self.socket_in(1)
            connected.connect(("127.0.0.1", server.port))
            connected.sendall(b"hello")
            self.assertEqual(recv_exactly(connected, 5), b"hello")
            idle = self.socket_in(0)
            holder, held = self.hold_socket()
            report = self.status()
            text = run_ssa("status", "--socket", self.daemon.socket_path)
        self.assertEqual([w["worker"] for w in report["workers"]], [0, 1])
        self.assertEqual(report["missing_workers"], [])
        rows = {row["id"]: row for row in report["sockets"]}
        mine, theirs = f"{connected.id:#018x}", f"{int(held, 16):#018x}"
        self.assertLessEqual({mine, f"{idle.id:#018x}", theirs}, set(rows))
        row = rows[mine]
        self.assertEqual(
            {key: row[key] for key in ("pid", "uid", "state", "remote", "sni", "tls_version", "resumed",
                                       "bytes_in", "bytes_out")},
            {"pid": os.getpid(), "uid": os.getuid(), "state": "CONNECTED", "remote": f"127.0.0.1:{server.port}",
             "sni": "localhost", "tls_version": "TLS 1.3", "resumed": False, "bytes_in": 5, "bytes_out": 5},
        )
        self.assertEqual(row["executable"], os.path.realpath(sys.executable))
        self.assertIsInstance(row["group"], str)  # the openssl backend names it (X25519, ...)
        self.assertTrue(row["group"])
        self.assertGreaterEqual(row["age"], 0)
        self.assertEqual(rows[theirs]["pid"], holder.pid)
        self.assertEqual(rows[theirs]["state"], "NEW")
        self.assertEqual(report["counters"]["connections_client_ok"], 1)
        self.assertEqual(report["counters"]["active"], 1)
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn(mine, text.stdout)
        self.assertIn(theirs, text.stdout)
        self.assertIn("TLS 1.3", text.stdout)

    def test_other_users_see_only_their_own(self) -> None:
        """
        Root sees every socket; another user sees only its own.
        """
        if os.getuid() != 0:
            raise self.skipTest("needs root to run processes as another user")
        os.chmod(os.path.dirname(self.daemon.socket_path), 0o755)
        mine = f"{self.trusting_socket().id:#018x}"
        _, nobodys = self.hold_socket(user=65534)
        nobodys = f"{int(nobodys, 16):#018x}"
        self.assertLessEqual({mine, nobodys}, {row["id"] for row in self.status()["sockets"]})
        seen = self.status(user=65534)
        self.assertEqual([row["id"] for row in seen["sockets"]], [nobodys])
        self.assertEqual([w["worker"] for w in seen["workers"]], [0, 1])

    def test_worker_not_answering(self) -> None:
        """
        A stopped worker does not hold the status up: it is named as not
        answering, the others' sockets are listed; its late answer is
        ignored and the next status has every worker again.
        """
        mine = self.socket_in(0)
        with self.only(0):
            report = self.status()
            text = run_ssa("status", "--socket", self.daemon.socket_path)
        self.assertEqual(report["missing_workers"], [1])
        self.assertEqual([w["worker"] for w in report["workers"]], [0])
        self.assertIn(f"{mine.id:#018x}", [row["id"] for row in report["sockets"]])
        self.assertIn("not answering: 1", text.stdout)
        self.assertEqual(self.status()["missing_workers"], [])

    def test_no_daemon(self) -> None:
        """
        Without a daemon, C{ssa status} says so and exits 1.
        """
        result = run_ssa("status", "--socket", os.path.join(self.tmp, "nothing.sock"))
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot reach the SSA daemon", result.stderr)


class PureTests(SynchronousTestCase):
    """
    The pure pieces: failure classes, sums over workers, rendering.
    """

    def test_reason_classes(self) -> None:
        """
        Failure reasons fall in the classes the metrics count.
        """
        cases = [
            (errno.EPROTO, "certificate verify failed: unable to get local issuer certificate", "certificate"),
            (errno.EPROTO, "hostname mismatch: the certificate (/CN=a) is valid for b", "hostname"),
            (errno.EPROTO, "certificate revoked", "revocation"),
            (errno.ECONNABORTED, "TCP connection to 127.0.0.1:1 timed out", "timeout"),
            (errno.ETIMEDOUT, "the TLS handshake did not finish within 5 s", "timeout"),
            (errno.ECONNABORTED, "TCP connection to 127.0.0.1:1 refused", "refused"),
            (errno.EPROTO, "tlsv1 alert protocol version", "other"),
        ]
        for err, reason, expected in cases:
            self.assertEqual(metrics.reason_class(err, reason), expected, reason)

    def test_merge_and_render(self) -> None:
        """
        Two processes' counters add up, histograms included, and render
        in the Prometheus text format.
        """
        one, two = metrics.PrometheusMetrics(), metrics.PrometheusMetrics()
        one.connection("client", "ok", None, 0.02, False)
        one.active(1)
        one.transferred("in", 10)
        two.connection("client", "ok", None, 0.2, True)
        two.connection("client", "failed", "certificate", None, False)
        two.transferred("in", 5)
        families = metrics.merge([one.families(), two.families()])
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.render(families).decode())
            for s in family.samples
        }
        self.assertEqual(samples[("ssa_connections_total", (("outcome", "ok"), ("role", "client")))], 2)
        self.assertEqual(samples[("ssa_failures_total", (("reason", "certificate"),))], 1)
        self.assertEqual(samples[("ssa_handshake_seconds_bucket", (("le", "0.025"),))], 1)
        self.assertEqual(samples[("ssa_handshake_seconds_count", ())], 2)
        self.assertEqual(samples[("ssa_bytes_total", (("direction", "in"),))], 15)
        self.assertEqual(samples[("ssa_resumptions_total", ())], 1)
        self.assertEqual(samples[("ssa_active_connections", ())], 1)
        self.assertEqual(metrics.summary(families)["handshakes"], 2)

    def test_memory_metrics(self) -> None:
        """
        The in-memory implementation keeps what it was told.
        """
        memory = metrics.MemoryMetrics()
        memory.connection("server", "ok", None, None, False)
        memory.active(1)
        memory.active(-1)
        memory.transferred("out", 7)
        self.assertEqual(memory.connections, [("server", "ok", None, None, False)])
        self.assertEqual((memory.active_now, memory.bytes), (0, {"in": 0, "out": 7}))

    def test_json_logs_under_twistd(self) -> None:
        """
        Under C{twistd}, C{--log-format json} names an observer factory
        that twistd imports; it writes one JSON object per line.
        """
        from twisted.logger import Logger
        from twisted.python.reflect import namedAny
        from twisted.scripts.twistd import ServerOptions

        from ssa.tap.daemon import Options

        parent, options = ServerOptions(), Options()
        options.parent = parent
        options.parseOptions(["--log-format", "json", "--socket", "/nonexistent/ssa.sock"])
        out = tempfile.TemporaryFile("w+")
        self.addCleanup(out.close)
        self.patch(sys, "stdout", out)
        Logger(observer=namedAny(parent["logger"])()).info("x {n}", n=1)
        out.seek(0)
        lines = out.read().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertEqual(json.loads(lines[0])["n"], 1)

    def test_combine_reports_a_missing_worker(self) -> None:
        """
        A worker that did not answer is named; the sockets of the others
        are listed in worker order.
        """
        reports = [
            {"worker": 2, "pid": 12, "sockets": [{"id": "b"}], "metrics": []},
            {"worker": 0, "pid": 10, "sockets": [{"id": "a"}], "metrics": []},
        ]
        combined = status.combine(reports, 3)
        self.assertEqual(combined["missing_workers"], [1])
        self.assertEqual([row["id"] for row in combined["sockets"]], ["a", "b"])
