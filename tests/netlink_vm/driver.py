"""
Run inside the VM next to the real SSA kernel module (by
tests/test_netlink_vm.py through vm-run): start the daemon with
C{--frontend netlink}, drive it with a C program that uses only the plain
socket API, then run the original SSA's SocketAPI suite with no preload.
Reads C{config.json} and writes C{results.json} in the current directory;
nothing here asserts: the host's trial tests do.
"""

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

config = json.loads(Path("config.json").read_text())
results: dict = {"started": time.time()}


def save() -> None:
    with open("results.json.tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace("results.json.tmp", "results.json")


def echo_server(host: str) -> int:
    """
    A TLS echo server (stdlib ssl) on C{host}, a thread per connection;
    it answers the client's close_notify with its own.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config["chain"], config["key"])
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.bind((host, 0))
    listener.listen(16)

    def serve(raw: socket.socket) -> None:
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                while data := conn.recv(65536):
                    conn.sendall(data)
                try:
                    conn.unwrap()
                except (OSError, ssl.SSLError):
                    pass
        except (OSError, ssl.SSLError):
            raw.close()

    def accept() -> None:
        while True:
            raw, _ = listener.accept()
            threading.Thread(target=serve, args=(raw,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def client(*args: str, timeout: float = 120) -> dict:
    start = time.monotonic()
    done = subprocess.run([config["client"], *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"output": done.stdout, "stderr": done.stderr}
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


def start_daemon():
    log = open("daemon.log", "w")  # noqa: SIM115 (the daemon's, for its whole life)
    env = dict(os.environ, PYTHONPATH=config["source_root"])
    daemon = subprocess.Popen(
        [config["python"], "-m", "twisted", "--log-format", "text", "ssa", "--frontend", "netlink",
         "--config", config["policy"]],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/tmp",
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            break
        if "serving the SSA kernel module" in Path("daemon.log").read_text():
            return daemon
        time.sleep(0.2)
    results["daemon_start_failed"] = Path("daemon.log").read_text()[-3000:]
    return None


def tls_client_of(port: int, payload: bytes) -> bytes:
    context = ssl.create_default_context(cafile=config["root"])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(payload)
        back = b""
        while len(back) < len(payload):
            data = tls.recv(65536)
            if not data:
                break
            back += data
        tls.unwrap()
    return back


def own_checks() -> None:
    t0 = time.monotonic()
    daemon = start_daemon()
    results["daemon_start_seconds"] = round(time.monotonic() - t0, 1)
    if daemon is None:
        return
    try:
        port4 = echo_server("127.0.0.1")
        results["echo"] = client("echo", "127.0.0.1", str(port4), "localhost", "300000")
        results["wrong_host"] = client("connect", "127.0.0.1", str(port4), "wrong.example")
        results["refused"] = client("connect", "127.0.0.1", str(free_port()), "localhost")
        results["nonblocking"] = [client("nonblock", "127.0.0.1", str(port4), "localhost") for _ in range(6)]
        results["ipv6_loopback"] = has_ipv6_loopback()
        if results["ipv6_loopback"]:
            port6 = echo_server("::1")
            results["echo6"] = client("echo", "::1", str(port6), "localhost", "100000")
        serve_port = free_port()
        server = subprocess.Popen([config["client"], "serve", "127.0.0.1", str(serve_port), config["chain"],
                                   config["key"]], stdout=subprocess.PIPE, text=True)
        first = server.stdout.readline()
        results["serve_listening"] = first.strip()
        payload = os.urandom(70000)
        try:
            back = tls_client_of(serve_port, payload)
            results["serve_client"] = {"echoed": back == payload, "length": len(back)}
        except Exception as e:  # noqa: BLE001 (reported to the host)
            results["serve_client"] = {"error": repr(e)}
        out, _ = server.communicate(timeout=60)
        results["serve"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        results["daemon_log_tail"] = Path("daemon.log").read_text()[-4000:]
        save()


def original_suite() -> None:
    daemon = (f"exec env PYTHONPATH={config['source_root']} {config['python']} -m twisted ssa "
              '--frontend netlink --config "$SSA_TEST_POLICY"')
    start = time.monotonic()
    done = subprocess.run(
        [config["kit"] + "/build-and-run", "--work", config["kit_work"], "--daemon-cmd", daemon, "--prefix", "",
         "--filter", config["suites"], "--ready", "netlink", "--ready-timeout", "200", "--timeout", "240", "--keep-certs"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    results["suite_seconds"] = round(time.monotonic() - start, 1)
    results["suite_output"] = (done.stdout + done.stderr)[-4000:]
    summary = os.path.join(config["kit_work"], "results", "summary.json")
    if os.path.exists(summary):
        results["suite"] = json.loads(Path(summary).read_text())
    logs = Path(config["kit_work"], "logs")
    results["suite_logs"] = {log.name: log.read_text(errors="replace")[-3000:]
                             for log in sorted(logs.glob("*.log")) if log.name != "build.log"}


own_checks()
save()
original_suite()
results["finished"] = time.time()
save()
sys.exit(0)
