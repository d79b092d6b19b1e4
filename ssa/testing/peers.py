"""
Real TLS peers on 127.0.0.1 for tests.

  - L{OpenSSLServer}: an C{openssl s_server} subprocess;
  - L{StdlibTLSServer}: a threaded server on the standard library's C{ssl}
    (from L{ssa.testing.tls_server}) whose handlers get a
    L{TLSPeerConnection} (from L{ssa.testing.tls_connection}) with explicit
    control over close_notify versus a bare TCP close.

Everything binds the IPv4 loopback address only.  Readiness checks read
C{/proc/net/tcp}, so L{OpenSSLServer} needs Linux.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from ssa.testing.certs import CertifiedKey
from ssa.testing.tls_connection import TLSPeerConnection, TruncatedError
from ssa.testing.tls_server import (
    Handler,
    SinkDigestHandler,
    SinkResult,
    StdlibTLSServer,
    echo_handler,
    pseudo_random_bytes,
    sink_digest_handler,
    source_handler,
    truncating_handler,
)

__all__ = [
    "Handler",
    "OpenSSLServer",
    "OpenSSLServerError",
    "SinkDigestHandler",
    "SinkResult",
    "StdlibTLSServer",
    "TLSPeerConnection",
    "TruncatedError",
    "echo_handler",
    "free_port",
    "pseudo_random_bytes",
    "sink_digest_handler",
    "source_handler",
    "truncating_handler",
]

StreamSpec = int | IO[bytes] | None
"""A C{subprocess} stream: C{PIPE}, C{DEVNULL}, a file object or C{None}."""

_LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp spells it
_TCP_LISTEN = "0A"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_listening(pid: int, port: int) -> bool:
    """Whether process C{pid} has a socket listening on 127.0.0.1:C{port}."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open("/proc/net/tcp") as table:
            lines = table.readlines()[1:]
    except OSError:
        return False
    local = f"{_LOOPBACK_HEX}:{port:04X}"
    for line in lines:
        fields = line.split()
        if fields[1] == local and fields[3] == _TCP_LISTEN and fields[9] in inodes:
            return True
    return False


class OpenSSLServerError(RuntimeError):
    """C{openssl s_server} failed to start (the message includes its stderr)."""


class OpenSSLServer:
    """
    An C{openssl s_server} subprocess listening on 127.0.0.1.

    Certificates come either from a L{CertifiedKey} (written, with its
    intermediates as C{-cert_chain}, into a temporary directory this object
    owns and removes) or from explicit file paths.  C{extra_args} are
    appended verbatim, e.g. C{["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]},
    C{["-WWW"]}, C{["-rev"]}, C{["-naccept", "1"]}.

    Behaviour of OpenSSL 3.0's s_server, found empirically:

      - Binary data is passed through unchanged in both directions: what
        the client sends is written raw to stdout, and stdin is read in
        chunks and sent as-is.  Without C{-quiet}, however, a stdin chunk
        (one read, up to 8 KiB, not a line) that I{starts} with C{Q} is
        swallowed and closes TCP without close_notify and exits, C{q} does
        the same but keeps listening, C{P} writes plaintext to the socket
        (the client sees a record error), C{S} prints cache statistics (the
        chunk is still sent), and C{r}/C{R}/C{k}/C{K}/C{c} plus newline
        renegotiate or update keys; stdout also carries diagnostics
        (C{ACCEPT}, session PEM, statistics) mixed with the data.  With C{-quiet} commands are
        disabled and stdout holds exactly the client's bytes, so a bulk
        transfer with a checksum works in both directions.  C{-WWW} with a
        random file in C{cwd} is another way: the body follows an
        C{HTTP/1.0 200 ok} header and ends with close_notify.
      - stdin EOF ends the current connection at once, discarding whatever
        the client is still sending (so close stdin only once L{output} has
        everything): with C{-quiet} by sending close_notify (s_server then
        waits for the client to close); without it by a bare TCP close
        I{and} s_server exits.  stdin is only read
        while a connection is up, so the default here is a pipe we keep
        open until L{stop}; write to L{stdin} to send data to the client.
      - With C{-quiet} nothing (not even C{ACCEPT}) is printed, and a probe
        connection would use up a C{-naccept} slot, so readiness is
        detected by finding the listening socket in C{/proc/net/tcp}.
      - A stdout pipe that nobody reads fills up and stalls s_server (and
        then the client); by default stdout goes to a file, see L{output}.
    """

    def __init__(
        self,
        certified_key: CertifiedKey | None = None,
        *,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        chain_file: str | Path | None = None,
        extra_args: Sequence[str] = (),
        cwd: str | Path | None = None,
        stdin: StreamSpec = subprocess.PIPE,
        stdout: StreamSpec = None,
        port: int | None = None,
        openssl: str = "openssl",
        startup_timeout: float = 10.0,
    ) -> None:
        """
        @param certified_key: server certificate, chain and key; or give
            C{cert_file} and C{key_file} (and optionally C{chain_file}).
        @param cwd: s_server's working directory (the document root for
            C{-WWW}); defaults to the temporary directory, which L{start}
            creates and L{stop} removes.
        @param stdin: s_server's stdin; the default pipe is closed by
            L{stop}.
        @param stdout: s_server's stdout; C{None} (default) means a file in
            the temporary directory, readable with L{output}.
        @param port: port to bind; default a free one (retried if taken).
        """
        if certified_key is None and (cert_file is None or key_file is None):
            raise TypeError("give certified_key, or cert_file and key_file")
        self._certified_key = certified_key
        self._cert_file = cert_file
        self._key_file = key_file
        self._chain_file = chain_file
        self._extra_args = list(extra_args)
        self._cwd = cwd
        self._stdin_spec = stdin
        self._stdout_spec = stdout
        self._fixed_port = port
        self._openssl = openssl
        self._startup_timeout = startup_timeout
        self._tmp: Path | None = None
        self._cert_args: list[str] = []
        self._files: list[IO[bytes]] = []
        self._final_stdout = b""
        self._final_stderr = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    def _prepare(self) -> Path:
        """Create the temporary directory and write the key material."""
        tmp = self._tmp = Path(tempfile.mkdtemp(prefix="ssa-s_server-"))
        cert_file, key_file = self._cert_file, self._key_file
        chain_file = self._chain_file
        if self._certified_key is not None:
            cert_file = tmp / "server.pem"
            cert_file.write_bytes(self._certified_key.cert_pem())
            key_file = tmp / "server.key"
            key_file.touch(mode=0o600)
            key_file.write_bytes(self._certified_key.key_pem())
            if self._certified_key.chain:
                chain_file = tmp / "server-chain.pem"
                chain_file.write_bytes(self._certified_key.intermediates_pem())
        self._cert_args = ["-cert", str(cert_file), "-key", str(key_file)]
        if chain_file is not None:
            self._cert_args += ["-cert_chain", str(chain_file)]
        return tmp

    @property
    def port(self) -> int:
        """The port s_server listens on (after L{start})."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """C{("127.0.0.1", port)}."""
        return ("127.0.0.1", self.port)

    @property
    def stdin(self) -> IO[bytes] | None:
        """s_server's stdin pipe, if C{stdin=PIPE} (the default)."""
        return None if self.process is None else self.process.stdin

    @property
    def command(self) -> list[str]:
        """The command line (after L{start})."""
        return [self._openssl, "s_server", "-accept", f"127.0.0.1:{self.port}",
                *self._cert_args, *self._extra_args]

    def output(self) -> bytes:
        """What s_server wrote to stdout (default C{stdout} only), even after L{stop}."""
        if self._tmp is None or not (self._tmp / "stdout").exists():
            return self._final_stdout
        return (self._tmp / "stdout").read_bytes()

    def stderr_text(self) -> str:
        """What s_server wrote to stderr, even after L{stop}."""
        if self._tmp is None or not (self._tmp / "stderr").exists():
            return self._final_stderr
        return (self._tmp / "stderr").read_text(errors="replace")

    def _spawn(self, tmp: Path) -> subprocess.Popen[bytes]:
        stdout: StreamSpec = self._stdout_spec
        if stdout is None:
            stdout = open(tmp / "stdout", "wb")
            self._files.append(stdout)
        stderr = open(tmp / "stderr", "wb")
        self._files.append(stderr)
        return subprocess.Popen(
            self.command, stdin=self._stdin_spec, stdout=stdout, stderr=stderr,
            cwd=self._cwd if self._cwd is not None else tmp,
        )

    def start(self) -> OpenSSLServer:
        """
        Start s_server and wait until it listens; returns C{self}.

        @raise OpenSSLServerError: if it exits or is not listening within
            C{startup_timeout} seconds (everything is cleaned up first).
        """
        tmp = self._prepare()
        try:
            for _ in range(3):
                self._port = self._fixed_port or free_port()
                self.process = process = self._spawn(tmp)
                deadline = time.monotonic() + self._startup_timeout
                while process.poll() is None and time.monotonic() < deadline:
                    if _is_listening(process.pid, self._port):
                        return self
                    time.sleep(0.01)
                self._reap()
                stderr = self.stderr_text()
                if self._fixed_port is None and "in use" in stderr:
                    continue
                break
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise OpenSSLServerError(
            f"s_server (exit status {process.returncode}) did not start "
            f"listening: {' '.join(self.command)}\n{stderr}"
        )

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for s_server to exit (e.g. after C{-naccept}); return its status."""
        if self.process is None:
            raise RuntimeError("server not started")
        return self.process.wait(timeout)

    def _reap(self) -> None:
        process = self.process
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        for f in self._files:
            f.close()
        self._files.clear()

    def stop(self) -> None:
        """Terminate and reap s_server and remove the temporary directory."""
        self._reap()
        if self._tmp is not None:
            self._final_stdout = self.output()
            self._final_stderr = self.stderr_text()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> OpenSSLServer:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()
