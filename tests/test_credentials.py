"""
Credentials per request, not per control connection (issue 17, item 4):
a new socket gets the profile of the process that sent its SOCKET request,
as the kernel says (SCM_CREDENTIALS), whoever opened the control
connection. A socket keeps its creator's profile wherever its descriptor
goes, as a kernel socket does.

The policy gives the test's own program, as root, a profile of its own
(C{min-tls-version: 3}); everyone else gets the default (TLS 1.2). Which
one applied shows in C{getsockopt(TLS_VERSION_MIN)} of the new socket.
The programs below speak the wire protocol by hand on an inherited or
passed control descriptor, with nothing but the standard library.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import traceback

from twisted.trial.unittest import SynchronousTestCase

from ssa import wire
from ssa.constants import IPPROTO_TLS, TLS_VERSION_MIN
from ssa.testing.daemon import DaemonProcess

NOBODY = 65534

#: Asks for a new socket on control descriptor argv[1] and prints its
#: TLS_VERSION_MIN; then, with "setuid", drops to nobody and asks again,
#: or executes the program argv[2] on the script argv[3], keeping the
#: descriptor.
PROGRAM = r"""
import os, socket, struct, sys
HEAD = struct.Struct("!IBBHIQ")

def call(sock, op, tag, sid, body):
    sock.sendall(HEAD.pack(HEAD.size - 4 + len(body), 1, op, 0, tag, sid) + body)
    data, fds = b"", []
    while len(data) < 4 or len(data) < 4 + struct.unpack_from("!I", data)[0]:
        chunk, anc, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(64))
        for level, kind, payload in anc:
            fds += list(struct.unpack("%di" % (len(payload) // 4), payload[: len(payload) // 4 * 4]))
        if not chunk:
            raise SystemExit("the daemon closed the connection")
        data += chunk
    for fd in fds:
        os.close(fd)
    return struct.unpack_from("!i", data, HEAD.size)[0], data[HEAD.size + 4 :]

def ask(sock):
    err, body = call(sock, 1, 1, 0, struct.pack("!iii", socket.AF_INET, socket.SOCK_STREAM, 205))
    if err:
        print("error", err, body.decode(errors="replace"), flush=True)
        return
    sid = struct.unpack_from("!Q", body)[0]
    err, value = call(sock, 5, 2, sid, struct.pack("!ii", 205, OPTION))
    print("min", struct.unpack("=i", value)[0] if not err else ("error", err), flush=True)

fd = int(sys.argv[1])
sock = socket.socket(fileno=fd)
ask(sock)
if sys.argv[2:] == ["setuid"]:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    ask(sock)
elif sys.argv[2:]:
    sock.detach()
    os.execv(sys.argv[2], [sys.argv[2], sys.argv[3], str(fd)])
"""


class CredentialsPerRequestTests(SynchronousTestCase):
    """
    The four ways a control descriptor outlives its process's identity.
    """

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ssa-creds-")
        os.chmod(self.tmp, 0o755)
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.python = os.path.realpath(sys.executable)
        # Another program: a copy of the interpreter (its own /proc/PID/exe).
        self.other = os.path.join(self.tmp, "other-program")
        shutil.copy(self.python, self.other)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONHOME": sys.base_prefix,
            "LD_LIBRARY_PATH": os.path.join(sys.base_prefix, "lib"),
        }
        self.script = os.path.join(self.tmp, "program.py")
        with open(self.script, "w") as f:
            f.write(f"OPTION = {TLS_VERSION_MIN}\nNOBODY = {NOBODY}\n" + PROGRAM)
        os.chmod(self.script, 0o644)
        config = os.path.join(self.tmp, "config.yml")
        with open(config, "w") as f:
            f.write(
                "profiles:\n"
                "  - name: the-test\n"
                f"    match: {{executable: {self.python}, uid: 0}}\n"
                "    min-tls-version: 3\n"
            )
        self.daemon = DaemonProcess(["--config", config]).start()
        self.addCleanup(self.daemon.stop)
        os.chmod(os.path.dirname(self.daemon.socket_path), 0o755)

    def control(self) -> socket.socket:
        """
        A control connection opened by this process (root, the test's
        program): the privileged profile's.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.daemon.socket_path)
        self.addCleanup(sock.close)
        return sock

    def run_program(self, fd: int, *args: str) -> list[str]:
        done = subprocess.run(
            [self.python, self.script, str(fd), *args], pass_fds=[fd], env=self.env,
            capture_output=True, text=True, timeout=60, check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.split("\n")[:-1]

    def run_forked_as(self, uid: int, fd: int) -> list[str]:
        """
        Run the program in a child process that is C{uid} before it
        starts (forked, since C{uid} may not read this interpreter's files).
        """
        with open(self.script) as f:
            code = compile(f.read(), self.script, "exec")  # uid may not read our modules
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(read_end)
                os.dup2(write_end, 1)
                os.setgid(uid)
                os.setuid(uid)
                sys.argv = [self.script, str(fd)]
                exec(code, {"__name__": "__main__"})
                status = 0
            except BaseException:
                traceback.print_exc(file=sys.stdout)
                sys.stdout.flush()
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end) as output:
            lines = output.read().split("\n")[:-1]
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, lines)
        return lines

    def own_socket_min(self, control: socket.socket) -> int:
        """
        The sanity check: a socket this process asks for has the profile.
        """
        control.sendall(wire.encode_frame(wire.Op.SOCKET, 7, 0, wire.SOCKET_ARGS.pack(2, 1, IPPROTO_TLS)))
        decoder = wire.FrameDecoder()
        frames: list = []
        while not frames:
            data, ancdata, _, _ = control.recvmsg(65536, socket.CMSG_SPACE(16))
            for _, _, payload in ancdata:
                os.close(int.from_bytes(payload[:4], sys.byteorder))
            frames = decoder.feed(data)
        err, body = wire.decode_reply_body(frames[0].body)
        self.assertEqual(err, 0, body)
        (socket_id,) = wire.NEW_SOCKET.unpack_from(body)
        control.sendall(wire.encode_frame(wire.Op.GETSOCKOPT, 8, socket_id, wire.OPTION.pack(IPPROTO_TLS, TLS_VERSION_MIN)))
        frames = []
        while not frames:
            frames = decoder.feed(control.recv(65536))
        err, value = wire.decode_reply_body(frames[0].body)
        self.assertEqual(err, 0, value)
        return int.from_bytes(value, sys.byteorder, signed=True)

    def test_passed_to_same_uid_other_program(self) -> None:
        """
        Root's test program opens the connection; another program of
        root's, given the descriptor, gets the default profile.
        """
        control = self.control()
        self.assertEqual(self.own_socket_min(control), 3)
        fd = control.fileno()
        done = subprocess.run(
            [self.other, self.script, str(fd)], pass_fds=[fd], env=self.env,
            capture_output=True, text=True, timeout=60, check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split("\n")[:-1], ["min 2"])

    def test_passed_to_another_uid(self) -> None:
        """
        The same program, run as nobody with root's descriptor: default.
        """
        control = self.control()
        self.assertEqual(self.own_socket_min(control), 3)
        self.assertEqual(self.run_forked_as(NOBODY, control.fileno()), ["min 2"])
        # Root's own next socket still has its profile.
        self.assertEqual(self.own_socket_min(control), 3)

    def test_exec_after_connecting(self) -> None:
        """
        A root process of the test's program makes a socket (its profile),
        then executes another program, which makes one: default.
        """
        control = self.control()
        lines = self.run_program(control.fileno(), self.other, self.script)
        self.assertEqual(lines, ["min 3", "min 2"])

    def test_setuid_after_connecting(self) -> None:
        """
        A root process makes a socket, drops to nobody, makes another:
        the second gets nobody's (default) profile.
        """
        control = self.control()
        lines = self.run_program(control.fileno(), "setuid")
        self.assertEqual(lines, ["min 3", "min 2"])
