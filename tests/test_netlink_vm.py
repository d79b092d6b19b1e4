"""
The netlink frontend against the real SSA kernel module, in a qemu VM
(C{../shared/peers/ssa-kmod/vm-run}): one VM boot for the whole module.
Inside it, C{tests/netlink_vm/driver.py} starts the daemon with
C{--frontend netlink}, drives it with a C program that uses only the
plain socket API (C{tests/netlink_vm/tlsclient.c}, built here with gcc),
then runs the original SSA's SocketAPI suite with no preload; it writes
its observations to C{results.json}, and the tests here assert on them.

Needs root (vm-run installs qemu and a kernel on its first run and the
daemon needs CAP_NET_ADMIN), the kit next to the repository (or
C{SSA_KMOD_KIT}), gcc; skipped otherwise. With C{trial -j}, the first
worker to get here runs the VM and the others wait for its results.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ssa.testing.certs import CertificateAuthority
from ssa.testing.daemon import SOURCE_ROOT
from tests.test_original_suite import allowed_failures

KMOD = Path(os.environ.get("SSA_KMOD_KIT", SOURCE_ROOT.parent / "shared" / "peers" / "ssa-kmod"))
KIT = Path(os.environ.get("SSA_TESTS_KIT", SOURCE_ROOT.parent / "shared" / "peers" / "ssa-tests"))
HERE = Path(__file__).resolve().parent / "netlink_vm"
DIFFERENCES = HERE / "original-differences.txt"
SUITES = "SocketAPI*"
VM_TIMEOUT = 600


def _run_key() -> str:
    """
    What names this trial run: its main process (the parent of C{-j}
    workers) and that process's start time, and the source under test.
    """
    pid = os.getpid()
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        if b"trial" in parent:
            pid = os.getppid()
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        started = "0"
    digest = hashlib.sha256()
    for path in sorted([*(SOURCE_ROOT / "ssa").rglob("*.py"), *HERE.iterdir()]):
        digest.update(path.read_bytes())
    return f"{pid}-{started}-{digest.hexdigest()[:12]}"


def _skip_unless_possible() -> None:
    if not (KMOD / "vm-run").is_file():
        raise SkipTest(f"the kernel module kit is not at {KMOD} (set SSA_KMOD_KIT)")
    if os.geteuid() != 0:
        raise SkipTest("vm-run needs root (it installs qemu and a kernel on its first run)")
    if shutil.which("gcc") is None:
        raise SkipTest("needs gcc, which .ci/run installs")


_CACHE: dict = {}


def results() -> dict:
    """
    The VM's results, running it if no process of this trial run has.
    """
    if "results" in _CACHE:
        return _CACHE["results"]
    _skip_unless_possible()
    work = Path(tempfile.gettempdir()) / f"ssa-netlink-vm-{_run_key()}"
    work.mkdir(exist_ok=True)
    with open(work / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = work / "done.json"
        if not done.exists():
            outcome = _run_vm(work)
            done.write_text(json.dumps(outcome))
            shutil.rmtree(work / "kit", ignore_errors=True)  # the suite's build; its summary is in done.json
        _CACHE["results"] = json.loads(done.read_text())
    return _CACHE["results"]


def _readable_by_everybody(top: Path) -> None:
    """
    Let every user enter C{top} and read everything under it.
    """
    top.chmod(0o755)
    for directory, names, files in os.walk(top):
        for name in names:
            os.chmod(os.path.join(directory, name), 0o755)
        for name in files:
            path = os.path.join(directory, name)
            os.chmod(path, os.stat(path).st_mode | 0o444)


def _run_vm(work: Path) -> dict:
    ca = CertificateAuthority.create("SSA netlink VM test CA")
    files = ca.issue_server("localhost", "127.0.0.1", "::1").write(work, "server")
    root = ca.write_root(work, "root")
    policy = work / "policy.yml"
    policy.write_text(f"trust-store-path: {root}\nrevocation-checks: disabled\n")
    client = work / "tlsclient"
    subprocess.run(["gcc", "-Wall", "-O2", "-o", str(client), str(HERE / "tlsclient.c")], check=True,
                   capture_output=True)
    suites = ""
    kit_work = work / "kit"
    if (KIT / "build-and-run").is_file():
        built = subprocess.run(
            [str(KIT / "build-and-run"), "--work", str(kit_work), "--daemon-cmd", "true", "--build-only"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=900, check=False,
        )
        if built.returncode == 0:
            suites = SUITES
            # The suite's programs name their certificate and key files by path, and the netlink
            # frontend reads a path for a caller it cannot name only if every user may read it
            # (docs/netlink.md): these keys are the test's own, made just now.
            _readable_by_everybody(work)
    config = {
        "python": sys.executable, "source_root": str(SOURCE_ROOT), "client": str(client),
        "chain": str(files.cert), "key": str(files.key), "root": str(root), "policy": str(policy),
        "kit": str(KIT), "kit_work": str(kit_work), "suites": suites,
    }
    (work / "config.json").write_text(json.dumps(config))
    shutil.copy(HERE / "driver.py", work / "driver.py")
    start = time.monotonic()
    vm = subprocess.run(
        [str(KMOD / "vm-run"), sys.executable, "driver.py"], cwd=work, stdin=subprocess.DEVNULL,
        capture_output=True, timeout=VM_TIMEOUT + 600, check=False,
        env=dict(os.environ, VM_TIMEOUT=str(VM_TIMEOUT), PYTHON_COLORS="0"),
    )
    outcome: dict = {"vm_status": vm.returncode, "vm_seconds": round(time.monotonic() - start, 1),
                     "vm_output": (vm.stdout + vm.stderr).decode(errors="replace")[-6000:], "suites": suites}
    path = work / "results.json"
    outcome["results"] = json.loads(path.read_text()) if path.exists() else {}
    return outcome


class RealModuleTests(SynchronousTestCase):
    """
    A C program's plain socket calls, through the real module, to the
    daemon's netlink frontend.
    """

    def result(self, name: str):
        outcome = results()
        found = outcome["results"].get(name)
        if found is None:
            self.fail(f"the VM did not report {name!r} (status {outcome['vm_status']}):\n"
                      f"{json.dumps(outcome['results'], indent=1)[-4000:]}\n{outcome['vm_output']}")
        return found

    def assertEchoed(self, result: dict, size: int) -> None:
        self.assertEqual((result["errno"], result["io_errno"]), (0, 0), result)
        self.assertEqual((result["sent"], result["received"]), (size, size), result)
        self.assertEqual(result["sent_hash"], result["received_hash"], result)

    def test_echo_checksummed(self) -> None:
        """
        socket(AF_INET, SOCK_STREAM, 205), TLS_HOSTNAME, connect: 300 kB
        echoed through a TLS server come back identical.
        """
        self.assertEchoed(self.result("echo"), 300000)

    def test_peer_identity(self) -> None:
        self.assertIn("CN=localhost", self.result("echo").get("identity", ""))

    def test_wrong_host(self) -> None:
        self.assertEqual(self.result("wrong_host")["errno"], errno.EPROTO)

    def test_refused(self) -> None:
        self.assertEqual(self.result("refused")["errno"], errno.ECONNABORTED)

    def test_nonblocking_connect(self) -> None:
        """
        EINPROGRESS, then writable (polled in slices: the module loses
        the wake-up now and then) with SO_ERROR 0, then data flows.
        """
        for run in self.result("nonblocking"):
            self.assertEqual(run["connect_errno"], errno.EINPROGRESS, run)
            self.assertEqual((run["writable"], run["so_error"]), (1, 0), run)
            self.assertEchoed(run, 50000)

    def test_bind_listen_accept(self) -> None:
        """
        A server with a certificate: bind, listen, accept; a TLS client's
        bytes come back.
        """
        self.assertEqual(self.result("serve_client"), {"echoed": True, "length": 70000})
        served = self.result("serve")
        self.assertEqual((served["errno"], served["received"]), (0, 70000), served)

    def test_ipv6(self) -> None:
        if not self.result("ipv6_loopback"):
            raise SkipTest("the VM's lo has no ::1")
        self.assertEchoed(self.result("echo6"), 100000)

    def test_original_socket_api_suite(self) -> None:
        """
        The original SSA's SocketAPI suite, unmodified, no preload: every
        case passes but those listed as differing on purpose.
        """
        if not results()["suites"]:
            raise SkipTest(f"the original SSA's tests are not at {KIT} or could not be built (g++, libgtest-dev)")
        summary = self.result("suite")
        allowed = allowed_failures(DIFFERENCES)
        statuses = {name: f"{case['status']}: {case.get('message', '')}" for suite in summary["suites"].values()
                    for name, case in suite.get("tests", {}).items()}
        unexpected = {name: status for name, status in statuses.items()
                      if not status.startswith("passed") and name not in allowed}
        self.assertGreaterEqual(len(statuses), 8, results()["results"].get("suite_output"))
        self.assertEqual(unexpected, {}, "\n".join(
            [results()["results"].get("suite_output", "")]
            + [f"--- {name}:\n{text}" for name, text in results()["results"].get("suite_logs", {}).items()]
        ))
