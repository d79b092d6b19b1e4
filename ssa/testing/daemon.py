"""
A real SSA daemon process for end-to-end tests: C{python -m twisted ssa}
on a private control socket, with its log in a file.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ssa

SOURCE_ROOT = Path(ssa.__file__).resolve().parent.parent


class DaemonProcess:
    """
    C{twist ssa} in a child process.

    @ivar socket_path: its control socket.
    @ivar log_path: where its log goes.
    """

    def __init__(
        self, extra_args: list[str] | None = None, env: dict[str, str] | None = None,
        descriptor_limit: int | None = None,
    ) -> None:
        """
        @param descriptor_limit: C{RLIMIT_NOFILE} (soft and hard) for the
            daemon, to test what it does when descriptors run short.
        """
        self._descriptor_limit = descriptor_limit
        self._dir = tempfile.mkdtemp(prefix="ssa-daemon-")
        self.socket_path = os.path.join(self._dir, "ssa.sock")
        self.log_path = os.path.join(self._dir, "daemon.log")
        self._extra_args = extra_args or []
        self._env = env or {}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        """
        Start it and wait until its control socket accepts connections.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SOURCE_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env.update(self._env)
        args = [sys.executable, "-m", "twisted", "--log-file", self.log_path, "--log-format", "text", "ssa",
                "--socket", self.socket_path, *self._extra_args]
        self.stderr_path = os.path.join(self._dir, "stderr")
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                args, env=env, cwd=self._dir, stdin=subprocess.DEVNULL, stderr=stderr,
                preexec_fn=None if self._descriptor_limit is None else self._limit_descriptors,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the daemon exited with {self.process.returncode}:\n"
                    f"{Path(self.stderr_path).read_text(errors='replace')}{self.log()}"
                )
            if self._accepting():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the daemon did not listen within {timeout} s:\n{self.log()}")

    def _limit_descriptors(self) -> None:
        assert self._descriptor_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self._descriptor_limit, self._descriptor_limit))

    def _accepting(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket_path)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def stop(self) -> int | None:
        """
        Stop it (SIGTERM, then SIGKILL) and return its exit status.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        """
        Everything it logged so far.
        """
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 20.0) -> str:
        """
        Wait until the log holds C{text} at least C{count} times; return
        the log.

        @raise AssertionError: not within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while (log := self.log()).count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not {count} times in the daemon's log:\n{log}")
            time.sleep(0.02)
        return log

    def children(self) -> list[int]:
        """
        The pids of its child processes (its workers, with C{--workers}).
        """
        assert self.process is not None
        return children_of(self.process.pid)

    def descriptor_count(self) -> int:
        """
        How many descriptors it has open.
        """
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def descriptors(self) -> list[str]:
        """
        What its open descriptors are (C{socket:[inode]}, paths), for a
        failure message that shows what was left open.
        """
        assert self.process is not None
        directory = f"/proc/{self.process.pid}/fd"
        found = []
        for name in os.listdir(directory):
            try:
                found.append(f"{name}->{os.readlink(os.path.join(directory, name))}")
            except OSError:
                pass
        return sorted(found, key=lambda entry: int(entry.split("->")[0]))

    def memory_kib(self) -> int:
        """
        Its resident memory in KiB.
        """
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def __enter__(self) -> DaemonProcess:
        """
        Start it, unless L{start} was called already (C{with
        DaemonProcess().start() as daemon} runs one daemon, not two).
        """
        if self.process is None or self.process.poll() is not None:
            return self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def children_of(pid: int) -> list[int]:
    """
    The pids of the live (not zombie) processes whose parent is C{pid}.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            found.append(int(entry))
    return found


def is_alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
