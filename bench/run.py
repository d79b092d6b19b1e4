"""
The ssa benchmark: one command, one table.

    python -m bench.run [--quick] [--reps N] [--paths stdlib,stunnel,ssa-openssl,ssa-stdlib]

It starts a TLS peer on loopback (L{bench.peer}: C by default, one port that
never resumes and one that does, counting resumptions itself), stunnel in client mode
(installed with apt-get if missing), and one ssa daemon per backend; then, for
each repetition, measures every figure on every path, interleaved (the path
order rotates per repetition).  The application side is the same driver for
every path; only the function that returns a connected socket differs:

- C{stdlib}: the application does TLS itself (C{ssl} wrap of a TCP socket);
- C{stunnel}: a plain TCP socket to stunnel's accept port;
- C{ssa-openssl}, C{ssa-stdlib}: C{ssa.client.socket(...)}, IPPROTO_TLS.

"Full" figures go to the peer's port without tickets or session cache, with
resumption also off on the client side of every path (C{TLS_SESSION_REUSE = 0}
for ssa, C{sessionResume = no} for stunnel, no session for stdlib); the
"resume" figures go to the port that resumes, with resumption on everywhere.
The peer's own counts say how many handshakes of each figure resumed.

It prints medians per path and the median of per-repetition ratios to stunnel,
and writes the raw results to C{bench/results/<timestamp>.json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peer import HEADER, PEERS, Peer, make_peer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
RESULTS = Path(__file__).resolve().parent / "results"
BUF = 256 * 1024


# ---------------------------------------------------------------- processes

def family(pid: int) -> list[int]:
    """C{pid} and its child processes (an ssa daemon's workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def _proc_files(pid: int, name: str) -> list[str]:
    """/proc/P/C{name} of C{pid} and its children (one that just exited is skipped)."""
    texts = []
    for p in family(pid):
        try:
            texts.append(Path(f"/proc/{p}/{name}").read_text())
        except OSError:
            pass
    return texts


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its children (all threads), in seconds."""
    fields = [text.rsplit(")", 1)[1].split() for text in _proc_files(pid, "stat")]
    return sum(int(f[11]) + int(f[12]) for f in fields) / CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS of a process and its children, in KiB."""
    return sum(int(line.split()[1]) for text in _proc_files(pid, "status")
               for line in text.splitlines() if line.startswith("VmRSS:"))


def ensure_stunnel() -> str:
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if exe:
        return exe
    print("installing stunnel4 with apt-get ...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "stunnel4"], check=True, stdout=subprocess.DEVNULL)
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if not exe:
        raise SystemExit("stunnel is not installed and apt-get could not install it")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stunnel:
    """
    stunnel in client mode: one service without session resumption (to the
    peer's full-handshake port), one with it (to the peer's resumption port).
    """

    def __init__(self, peer: Peer, directory: str) -> None:
        self.full_port = free_port()
        self.resume_port = free_port()
        self.conf = os.path.join(directory, "stunnel.conf")
        common = (
            "client = yes\nverifyChain = yes\n"
            f"CAfile = {peer.ca_path}\ncheckHost = localhost\nsni = localhost\n"
            "sslVersionMin = TLSv1.3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
        )
        Path(self.conf).write_text(
            "foreground = yes\npid =\ndebug = 3\n"
            f"output = {os.path.join(directory, 'stunnel.log')}\n"
            f"[full]\naccept = 127.0.0.1:{self.full_port}\nconnect = 127.0.0.1:{peer.full_port}\n"
            f"{common}sessionResume = no\n"
            f"[resume]\naccept = 127.0.0.1:{self.resume_port}\nconnect = 127.0.0.1:{peer.resume_port}\n"
            f"{common}sessionResume = yes\n"
        )

    def start(self) -> "Stunnel":
        self.process = subprocess.Popen([ensure_stunnel(), self.conf], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.resume_port), 0.2).close()
                socket.create_connection(("127.0.0.1", self.full_port), 0.2).close()
                self.pid = self.process.pid
                return self
            except OSError:
                time.sleep(0.05)
        raise SystemExit("stunnel did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)


# ------------------------------------------------------------------- paths

class Path_:
    """How to get a connected socket-like for one path; the rest is shared."""

    name = ""
    pid: int | None = None  # the process doing TLS for the application, if any

    def connect(self, resume: bool = False):
        raise NotImplementedError


class StdlibPath(Path_):
    name = "stdlib"

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.ctx = ssl.create_default_context(cafile=peer.ca_path)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.session = None
        self.lock = threading.Lock()

    def connect(self, resume: bool = False):
        raw = socket.create_connection(("127.0.0.1", self.peer.port(resume)))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = self.ctx.wrap_socket(raw, server_hostname="localhost",
                                 session=self.session if resume else None)
        return s

    def after_first_read(self, s, resume: bool) -> None:
        # TLS 1.3 tickets arrive after the handshake: keep the newest one.
        if resume and s.session is not None:
            self.session = s.session


class StunnelPath(Path_):
    name = "stunnel"

    def __init__(self, tunnel: Stunnel) -> None:
        self.tunnel = tunnel
        self.pid = tunnel.pid

    def connect(self, resume: bool = False):
        port = self.tunnel.resume_port if resume else self.tunnel.full_port
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


class SSAPath(Path_):
    def __init__(self, backend: str, peer: Peer, directory: str, workers: int = 1,
                 config: str | None = None) -> None:
        from ssa.testing.daemon import DaemonProcess

        self.name = f"ssa-{backend}"
        self.peer = peer
        self.ca_pem = Path(peer.ca_path).read_text()
        self.backend = backend
        self.args = ["--backend", backend] + (["--workers", str(workers)] if workers > 1 else [])
        if config is not None:
            self.args += ["--config", config]
        self.daemon = DaemonProcess(self.args).start()
        self.pid = self.daemon.process.pid

    def fresh_daemon(self):
        """
        Swap in a new daemon (CPython keeps its heap high-water mark, so
        RSS growth is only meaningful on a daemon that never held more).
        Returns the old one's stop function for the caller to run.
        """
        from ssa.testing.daemon import DaemonProcess

        old = self.daemon
        self.daemon = DaemonProcess(self.args).start()
        self.pid = self.daemon.process.pid
        one_connection(self, False)  # warm: imports, context caches
        return old

    def prepared(self, resume: bool | None = False):
        """
        A socket with every option the application sets before connect():
        C{TLS_SESSION_REUSE} is set to C{resume} (left at the daemon's
        default if L{None}).
        """
        from ssa import client

        s = client.socket(client.AF_INET, client.SOCK_STREAM, client.IPPROTO_TLS,
                          path=self.daemon.socket_path)
        try:
            s.setsockopt(client.IPPROTO_TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, self.ca_pem)
            s.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "localhost")
            # Like the other paths (stunnel's socket = r:TCP_NODELAY=1).
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if resume is not None:
                s.setsockopt(client.IPPROTO_TLS, client.TLS_SESSION_REUSE, int(resume))
        except BaseException:
            s.close()
            raise
        return s

    def connect(self, resume: bool = False):
        s = self.prepared(resume)
        try:
            s.connect(("127.0.0.1", self.peer.port(resume)))
        except BaseException:
            s.close()
            raise
        return s

    def control_path(self, count: int) -> list[float]:
        """
        Seconds of the control calls of one connection, without the
        network: socket(), the setsockopt() calls, and one more request
        and reply (a getsockopt), standing for connect()'s own round trip
        to the daemon; then close().
        """
        from ssa import client

        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            s = self.prepared(None)
            s.getsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, 64)
            times.append(time.perf_counter() - t0)
            s.close()
        return times


# ------------------------------------------------------------------ driver

def recv_exact(s, n: int, buf: memoryview) -> None:
    got = 0
    while got < n:
        k = s.recv_into(buf[: min(len(buf), n - got)])
        if not k:
            raise ConnectionError("EOF")
        got += k


def upload(path: Path_, nbytes: int) -> float:
    s = path.connect()
    try:
        chunk = memoryview(bytes(BUF))
        t0 = time.perf_counter()
        s.sendall(HEADER.pack(b"U", nbytes))
        left = nbytes
        while left:
            k = min(BUF, left)
            s.sendall(chunk[:k])
            left -= k
        ack = memoryview(bytearray(1))
        recv_exact(s, 1, ack)
        return nbytes / (time.perf_counter() - t0) / 1e6
    finally:
        s.close()


def download(path: Path_, nbytes: int) -> float:
    s = path.connect()
    try:
        buf = memoryview(bytearray(BUF))
        t0 = time.perf_counter()
        s.sendall(HEADER.pack(b"D", nbytes))
        recv_exact(s, nbytes, buf)
        return nbytes / (time.perf_counter() - t0) / 1e6
    finally:
        s.close()


def one_connection(path: Path_, resume: bool) -> float:
    """Connect, one 1-byte echo round trip (so stunnel's handshake is counted), close."""
    t0 = time.perf_counter()
    s = path.connect(resume)
    try:
        s.sendall(HEADER.pack(b"E", 1) + b"x")
        buf = memoryview(bytearray(1))
        recv_exact(s, 1, buf)
        if isinstance(path, StdlibPath):
            path.after_first_read(s, resume)
        return time.perf_counter() - t0
    finally:
        s.close()


def connections(path: Path_, clients: int, total: int, resume: bool) -> tuple[float, list[float]]:
    """C{total} connections by C{clients} threads: (connections per second, latencies)."""
    t0 = time.perf_counter()
    if clients == 1:
        lat = [one_connection(path, resume) for _ in range(total)]
    else:
        with ThreadPoolExecutor(clients) as pool:
            lat = list(pool.map(lambda _: one_connection(path, resume), range(total)))
    return total / (time.perf_counter() - t0), lat


def counted_connections(path: Path_, peer: Peer, clients: int, total: int, resume: bool) -> dict:
    """
    L{connections}, with what the peer counted (handshakes, resumed) and the
    CPU seconds of the TLS process, the peer and this driver over the run.
    A resumption run is primed first (one connection, not counted).
    """
    if resume:
        one_connection(path, True)
    tls_cpu = (lambda: cpu_seconds(path.pid)) if path.pid else (lambda: 0.0)
    h0, c0, p0, d0 = peer.handshakes(resume), tls_cpu(), cpu_seconds(peer.pid), time.process_time()
    rate, lat = connections(path, clients, total, resume)
    h1, c1, p1, d1 = peer.handshakes(resume), tls_cpu(), cpu_seconds(peer.pid), time.process_time()
    if h1[0] - h0[0] != total:
        print(f"warning: {path.name}: the peer counted {h1[0] - h0[0]} handshakes for {total} connections",
              file=sys.stderr)
    return {"rate": rate, "lat": lat, "connections": total, "handshakes": h1[0] - h0[0],
            "resumed": h1[1] - h0[1], "tls_cpu": c1 - c0 if path.pid else None,
            "peer_cpu": p1 - p0, "driver_cpu": d1 - d0}


def per_connection_ms(runs: Sequence[dict], key: str) -> float | None:
    """CPU ms per connection of one process over C{runs}, or None if not measured."""
    if any(r[key] is None for r in runs):
        return None
    return sum(r[key] for r in runs) / sum(r["connections"] for r in runs) * 1e3


def resumed_fraction(runs: Sequence[dict]) -> float:
    """The fraction of the peer's handshakes in C{runs} that resumed (peer's count)."""
    return sum(r["resumed"] for r in runs) / max(1, sum(r["handshakes"] for r in runs))


def idle_memory(path: Path_, count: int) -> float | None:
    """RSS growth of the TLS process per idle, connected connection (KiB)."""
    if path.pid is None:
        return None
    if isinstance(path, SSAPath):
        path.fresh_daemon().stop()
    time.sleep(0.3)
    before = rss_kib(path.pid)
    held = []
    try:
        def open_one(_):
            s = path.connect()
            s.sendall(HEADER.pack(b"E", 1) + b"x")
            recv_exact(s, 1, memoryview(bytearray(1)))
            return s
        with ThreadPoolExecutor(16) as pool:
            held = list(pool.map(open_one, range(count)))
        time.sleep(0.5)
        after = rss_kib(path.pid)
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)  # let the daemon/stunnel drop them before the next figure
    return (after - before) / count


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def measure(path: Path_, cfg: dict, peer: Peer) -> dict:
    r: dict = {}
    cpu = (lambda: cpu_seconds(path.pid)) if path.pid else (lambda: 0.0)

    c0 = cpu()
    r["upload_MBps"] = upload(path, cfg["bulk"])
    r["download_MBps"] = download(path, cfg["bulk"])
    r["cpu_s_per_GB"] = (cpu() - c0) / (2 * cfg["bulk"] / 1e9) if path.pid else None

    full1 = counted_connections(path, peer, 1, cfg["seq"], False)
    full50 = counted_connections(path, peer, 50, cfg["par"], False)
    res1 = counted_connections(path, peer, 1, cfg["seq"], True)
    res50 = counted_connections(path, peer, 50, cfg["par"], True)
    for name, run in (("full_1", full1), ("full_50", full50), ("resume_1", res1), ("resume_50", res50)):
        r[f"peer_count_{name}"] = [run["handshakes"], run["resumed"]]
    r["conn_per_s_1"], r["conn_per_s_50"] = full1["rate"], full50["rate"]
    r["resume_conn_per_s_1"], r["resume_conn_per_s_50"] = res1["rate"], res50["rate"]
    r["full_resumed_fraction"] = resumed_fraction([full1, full50])
    r["resumed_fraction_1"] = resumed_fraction([res1])
    r["resumed_fraction_50"] = resumed_fraction([res50])
    r["connect_p50_ms"] = pct(full1["lat"], 0.5) * 1e3
    r["connect_p99_ms"] = pct(full1["lat"], 0.99) * 1e3
    r["resume_connect_p50_ms"] = pct(res1["lat"], 0.5) * 1e3
    r["cpu_ms_per_conn"] = per_connection_ms([full1, full50], "tls_cpu")
    r["resume_cpu_ms_per_conn"] = per_connection_ms([res1, res50], "tls_cpu")
    r["peer_cpu_ms_per_conn"] = per_connection_ms([full1, full50], "peer_cpu")
    r["resume_peer_cpu_ms_per_conn"] = per_connection_ms([res1, res50], "peer_cpu")
    r["driver_cpu_ms_per_conn"] = per_connection_ms([full1, full50], "driver_cpu")

    r["control_path_ms"] = (pct(path.control_path(cfg["seq"]), 0.5) * 1e3
                            if isinstance(path, SSAPath) else None)
    r["idle_KiB_per_conn"] = idle_memory(path, cfg["idle"])
    return r


# ------------------------------------------------------------------- table

FIGURES = [
    ("upload_MBps", "bulk upload MB/s", "higher"),
    ("download_MBps", "bulk download MB/s", "higher"),
    ("conn_per_s_1", "new conn/s, 1 client (full)", "higher"),
    ("conn_per_s_50", "new conn/s, 50 clients (full)", "higher"),
    ("resume_conn_per_s_1", "new conn/s, 1 client (resume)", "higher"),
    ("resume_conn_per_s_50", "new conn/s, 50 clients (resume)", "higher"),
    ("full_resumed_fraction", "resumed (peer's count), full runs", ""),
    ("resumed_fraction_1", "resumed (peer's count), 1 client", ""),
    ("resumed_fraction_50", "resumed (peer's count), 50 clients", ""),
    ("connect_p50_ms", "connect+1st RTT p50 ms", "lower"),
    ("connect_p99_ms", "connect+1st RTT p99 ms", "lower"),
    ("resume_connect_p50_ms", "resumed connect p50 ms", "lower"),
    ("cpu_s_per_GB", "TLS-process CPU s/GB", "lower"),
    ("cpu_ms_per_conn", "TLS-process CPU ms/conn (full)", "lower"),
    ("resume_cpu_ms_per_conn", "TLS-process CPU ms/conn (resume)", "lower"),
    ("peer_cpu_ms_per_conn", "peer CPU ms/conn (full)", ""),
    ("resume_peer_cpu_ms_per_conn", "peer CPU ms/conn (resume)", ""),
    ("driver_cpu_ms_per_conn", "driver CPU ms/conn (full)", ""),
    ("idle_KiB_per_conn", "RSS KiB/idle conn (1000)", "lower"),
    ("control_path_ms", "control path p50 ms (ssa only)", "lower"),
]


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def summarize(raw: dict, names: list[str]) -> str:
    reps = raw["repetitions"]
    head = ["figure"] + names + [f"{n}/stunnel" for n in names if n != "stunnel"]
    rows = [head]
    for key, label, better in FIGURES:
        row = [label + (f" ({better})" if better else "")]
        for n in names:
            vals = [rep[n][key] for rep in reps if rep[n].get(key) is not None]
            row.append(fmt(statistics.median(vals)) if vals else "-")
        for n in names:
            if n == "stunnel":
                continue
            ratios = [rep[n][key] / rep["stunnel"][key] for rep in reps
                      if rep[n].get(key) is not None and rep["stunnel"].get(key)]
            row.append(f"{statistics.median(ratios):.2f}x" if ratios and better else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 MiB bulk, fewer connections")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--paths", default="stdlib,stunnel,ssa-openssl,ssa-stdlib")
    ap.add_argument("--workers", type=int, default=1, help="worker processes of each ssa daemon")
    ap.add_argument("--config", help="the ssa daemons' policy file (e.g. path-validation: rfc5280)")
    ap.add_argument("--peer", choices=sorted(PEERS), default="c",
                    help="the TLS server: c (bench/peer.c, built now) or python (stdlib ssl)")
    args = ap.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    cfg = (dict(bulk=16 << 20, seq=100, par=300, idle=1000) if args.quick
           else dict(bulk=64 << 20, seq=200, par=600, idle=1000))
    names = args.paths.split(",")
    if "stunnel" not in names:
        raise SystemExit("the stunnel path is the reference; keep it in --paths")

    workdir = tempfile.mkdtemp(prefix="ssa-bench-")
    peer = make_peer(args.peer, workdir).start()  # forks first, before any thread exists
    started: list = []
    try:
        tunnel = Stunnel(peer, workdir).start()
        started.append(tunnel)
        paths: dict[str, Path_] = {}
        for n in names:
            if n == "stdlib":
                paths[n] = StdlibPath(peer)
            elif n == "stunnel":
                paths[n] = StunnelPath(tunnel)
            elif n.startswith("ssa-"):
                p = SSAPath(n[4:], peer, workdir, args.workers, args.config)
                started.append(p)
                paths[n] = p
            else:
                raise SystemExit(f"unknown path {n}")
        for p in paths.values():  # warm up every path once
            one_connection(p, False)
        started = [tunnel] + [p for p in paths.values() if isinstance(p, SSAPath)]

        raw = {"config": cfg, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "python": sys.version.split()[0], "ssl": ssl.OPENSSL_VERSION,
               "cpus": os.cpu_count(), "workers": args.workers, "peer": args.peer, "repetitions": []}
        t_start = time.monotonic()
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[: rep % len(names)]
            res = {}
            for n in order:
                t0 = time.monotonic()
                res[n] = measure(paths[n], cfg, peer)
                print(f"rep {rep + 1}/{args.reps} {n}: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
            raw["repetitions"].append(res)
        raw["seconds"] = time.monotonic() - t_start

        table = summarize(raw, names)
        raw["table"] = table
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
        out.write_text(json.dumps(raw, indent=1))
        print(table)
        print(f"\nraw results: {out}  ({raw['seconds']:.0f} s, {args.reps} repetitions)")
        return 0
    finally:
        for s in reversed(started):
            (s.daemon if isinstance(s, SSAPath) else s).stop()
        peer.stop()


if __name__ == "__main__":
    sys.exit(main())
