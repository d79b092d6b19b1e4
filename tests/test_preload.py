"""
The preload library (C{preload/ssa_preload.c}) through C{ssa run}: a small C
program (C{preload/tests/preload_check.c}, compiled here with the system's C
compiler) and C{python3 -c} code using plain C{socket.socket(AF_INET,
SOCK_STREAM, 205)}, against a real daemon and a real TLS echo server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ssa import preload
from ssa.testing.daemon import SOURCE_ROOT
from ssa.testing.tls_server import StdlibTLSServer, echo_handler

from .helpers import DaemonTestCase

CHECK_SOURCE = SOURCE_ROOT / "preload" / "tests" / "preload_check.c"
SSA_COMMAND = [
    sys.executable, "-c", "import sys; from ssa.cli import main; sys.exit(main())"
]
RUN_TIMEOUT = 120


def compiled_check() -> Path:
    """
    The check program, compiled once per test run.
    """
    if not hasattr(compiled_check, "path"):
        compiler = shutil.which("gcc") or shutil.which("cc")
        if compiler is None:
            raise SkipTest("no C compiler")
        out = Path(tempfile.mkdtemp(prefix="ssa-preload-check-")) / "preload_check"
        subprocess.run(
            [compiler, "-O1", "-Wall", "-o", str(out), str(CHECK_SOURCE), "-lpthread"],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        compiled_check.path = out  # type: ignore[attr-defined]
    return compiled_check.path  # type: ignore[attr-defined]


class PreloadTestCase(DaemonTestCase):
    """
    A daemon, an echo server trusting this test's CA, and a way to run a
    program under C{ssa run} against them.
    """

    def setUp(self) -> None:
        super().setUp()
        self.root = str(self.ca.write_root(self.tmp))
        self.server = StdlibTLSServer(self.server_key, echo_handler).start()
        self.addCleanup(self.server.stop)

    def ssa_run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{ssa run -- ARGV} with this test's daemon; fail on a non-zero
        exit, showing its output.
        """
        env = dict(os.environ, SSA_SOCKET=self.daemon.socket_path)
        result = subprocess.run(
            [*SSA_COMMAND, "run", "--", *argv], env=env, capture_output=True, text=True, check=False,
            timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        self.assertEqual(
            result.returncode, 0, f"{argv}:\n{result.stdout}\n{result.stderr}\n{self.daemon.log()[-3000:]}"
        )
        return result

    def check(self, mode: str, *extra: str) -> None:
        """
        Run one mode of the check program; it says C{ok MODE} on success.
        """
        result = self.ssa_run(str(compiled_check()), mode, str(self.server.port), self.root, *extra)
        self.assertIn("ok ", result.stdout)


class CProgramTests(PreloadTestCase):
    """
    The C check program's modes (see its source for what each asserts).
    """

    def test_blocking_client(self) -> None:
        """
        socket, options (the CA read from its path by the library), a
        blocking connect, data, getpeername, half-close; a plain TCP socket
        of the same program is untouched.
        """
        self.check("client")

    def test_nonblocking_connect(self) -> None:
        """
        EINPROGRESS, then writable, then SO_ERROR 0; a refused connect
        reports ECONNABORTED through SO_ERROR.
        """
        self.check("nonblocking")

    def test_eintr(self) -> None:
        """
        A signal during a blocking connect: EINTR, the connect goes on
        (EALREADY meanwhile), the socket turns writable with SO_ERROR 0
        and carries data.
        """
        self.check("eintr")

    def test_fork(self) -> None:
        """
        After fork both processes keep working: either one closing its
        copy leaves the other's socket open; a child opens its own.
        """
        self.check("fork")

    def test_exec(self) -> None:
        """
        A socket (and its dup) survive exec (execv in a forked child, then
        execl), with its id, peer and data; a SOCK_CLOEXEC one does not.
        """
        self.check("exec")

    def test_dup(self) -> None:
        """
        dup, dup2, dup3, F_DUPFD and F_DUPFD_CLOEXEC give the same socket,
        which lives until its last copy is closed; socket() takes the
        lowest free descriptor number; the control connection's descriptor
        cannot be closed by the program, and dup2() onto its number moves
        it away.
        """
        self.check("dup")

    def test_threads(self) -> None:
        """
        Eight threads making, duplicating, using and closing sockets at
        once.
        """
        self.check("threads", "8")

    def test_server(self) -> None:
        """
        bind, SO_REUSEADDR, listen, getsockname, nonblocking accept (EAGAIN),
        a blocking accept interrupted by a signal (EINTR, the listener goes
        on), accept4 with SOCK_CLOEXEC, and data both ways; certificate and key
        read from paths, an unreadable key path is EBADF.
        """
        files = self.server_key.write(self.tmp, "own")
        self.check("server", str(files.cert), str(files.key))


PYTHON_CLIENT = """
import socket, sys
port, root = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 205)
s.setsockopt(205, 87, root.encode() + b"\\0")
s.setsockopt(205, 85, b"localhost\\0")
s.connect(("127.0.0.1", port))
s.sendall(b"hello through the preload library")
data = b""
while len(data) < 33:
    data += s.recv(100)
assert data == b"hello through the preload library", data
assert s.getsockopt(205, 113) >= 2
assert s.getpeername() == ("127.0.0.1", port)
copy = s.dup()
s.close()
copy.sendall(b"x")
assert copy.recv(1) == b"x"
copy.close()
print("python ok")
"""


class PythonProgramTests(PreloadTestCase):
    """
    CPython's own C{socket} module, unmodified, under C{ssa run}.
    """

    def test_plain_socket_module(self) -> None:
        """
        C{socket.socket(AF_INET, SOCK_STREAM, 205)}: connect, data, options,
        getpeername and dup.
        """
        result = self.ssa_run(sys.executable, "-c", PYTHON_CLIENT, str(self.server.port), self.root)
        self.assertIn("python ok", result.stdout)


class RunCommandTests(SynchronousTestCase):
    """
    C{ssa run}'s own behaviour.
    """

    def test_print_path(self) -> None:
        """
        C{--print-path} prints the installed library's path.
        """
        result = subprocess.run(
            [*SSA_COMMAND, "run", "--print-path"], capture_output=True, text=True, check=True
        )
        self.assertEqual(result.stdout.strip(), str(preload.library_path()))
        self.assertTrue(preload.library_path().is_file())

    def test_environment(self) -> None:
        """
        The library goes first in C{LD_PRELOAD}, once; other entries stay;
        C{SSA_SOCKET} is kept unless C{--socket} replaces it.
        """
        library = Path("/lib/x/libssa-preload.so")
        env = preload.preload_environment(
            {"LD_PRELOAD": f"/a.so {library}:/b.so", "SSA_SOCKET": "/s"}, library
        )
        self.assertEqual(env["LD_PRELOAD"], f"{library} /a.so /b.so")
        self.assertEqual(env["SSA_SOCKET"], "/s")
        self.assertEqual(preload.preload_environment({}, library, "/t")["SSA_SOCKET"], "/t")

    def test_missing_command(self) -> None:
        """
        Without a command, a usage error; a command that does not exist,
        127, as a shell says.
        """
        usage = subprocess.run([*SSA_COMMAND, "run"], capture_output=True, text=True, check=False)
        self.assertEqual(usage.returncode, 2, usage.stderr)
        missing = subprocess.run(
            [*SSA_COMMAND, "run", "--", "/nonexistent/program"], capture_output=True, text=True, check=False
        )
        self.assertEqual(missing.returncode, 127, missing.stderr)
        self.assertIn("/nonexistent/program", missing.stderr)

    def test_program_without_tls_sockets(self) -> None:
        """
        A program that never opens an IPPROTO_TLS socket runs as usual,
        with no daemon at all: its own sockets, dup and close are its own.
        An IPPROTO_TLS socket then fails with ENOENT (no control socket).
        """
        code = (
            "import socket, os; a, b = socket.socketpair(); c = a.dup(); c.sendall(b'x');"
            "print(b.recv(1)); a.close(); c.close(); os.close(os.dup(1))\n"
            "try:\n socket.socket(2, 1, 205)\nexcept FileNotFoundError: print('plain ok')"
        )
        env = dict(os.environ, SSA_SOCKET="/nonexistent/ssa.sock")
        result = subprocess.run(
            [*SSA_COMMAND, "run", "--", sys.executable, "-c", code],
            capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT, check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("plain ok", result.stdout)
