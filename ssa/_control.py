"""
The client's control channel: one Unix-domain stream connection to the
daemon's control socket per SSA socket, speaking L{ssa.wire}; and the bytes
of the option values it carries (L{encode_option}).

This is private to L{ssa.client}. It sends a request frame, then reads
frames (and the descriptors passed with them by C{SCM_RIGHTS}) until the
reply carrying the request's tag arrives. Replies to requests that were
given up on (a timed-out connect) are read later and dropped, their
descriptors closed.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import stat
import struct
import threading
import time
from collections import deque
from typing import Any

from ssa import wire
from ssa.constants import (
    IPPROTO_TLS,
    TLS_CERTIFICATE_CHAIN,
    TLS_CONTEXT,
    TLS_PRIVATE_KEY,
    TLS_TRUSTED_PEER_CERTIFICATES,
)

#: At most this many descriptors are taken from one C{recvmsg}.
MAX_FDS = 16
_RECV_SIZE = 65536
#: How long a quick request polls for its reply before sleeping.
SPIN_SECONDS = 100e-6
_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

# Options whose value is PEM or a path read here: errno when the path cannot
# be read (SPEC section 4), and what it holds, for messages.
_PEM_OPTIONS = {
    TLS_TRUSTED_PEER_CERTIFICATES: (errno.EINVAL, "trusted peer certificates"),
    TLS_CERTIFICATE_CHAIN: (errno.EINVAL, "certificate chain"),
    TLS_PRIVATE_KEY: (errno.EBADF, "private key"),
}
_PEM_MARK = b"-----BEGIN"


def reply_error(code: int, payload: bytes) -> OSError:
    """
    The exception for a reply whose errno is not 0: C{OSError(code, reason)},
    which Python turns into the matching subclass (e.g.
    C{ConnectionAbortedError}).
    """
    reason = payload.rstrip(b"\0").decode("utf-8", "replace") or os.strerror(code)
    return OSError(code, reason)


class ControlChannel:
    """
    A connection to the daemon's control socket.

    @ivar path: the control socket's path, for messages.
    """

    def __init__(self, path: str) -> None:
        """
        Connect to the daemon at C{path}.

        @raise OSError: the daemon cannot be reached; the message names
            C{path}.
        """
        self.path = path
        self._lock = threading.Lock()  # one request (send, then wait) at a time
        self._send_lock = threading.Lock()  # one frame written at a time
        self._decoder = wire.FrameDecoder()
        self._fds: deque[int] = deque()
        self._pending: deque[tuple[wire.Frame, list[int]]] = deque()
        self._tag = 0
        self._broken: str | None = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise OSError(
                e.errno, f"cannot reach the SSA daemon at {path}: {e.strerror}"
            ) from None
        self._sock: socket.socket | None = sock

    @property
    def reusable(self) -> bool:
        """
        Whether another socket could use this connection now: open, not
        broken, no request in progress and nothing unclaimed.
        """
        return (
            self._sock is not None
            and self._broken is None
            and not self._lock.locked()
            and not self._fds
        )

    def post(self, op: int, socket_id: int, body: bytes = b"") -> bool:
        """
        Send a request without waiting for its reply (a later request
        skips it), even while another thread waits for a reply here. Used
        for CLOSE, which tells the daemon that the application closed the
        socket (rather than died, which ends the connection without it).

        @return: whether it was sent (not after L{close} or a failure).
        """
        with self._send_lock:
            sock = self._sock
            if sock is None or self._broken is not None:
                return False
            try:
                self._send(sock, op, socket_id, body)
            except OSError as e:
                self._lose(e.strerror or str(e))
                return False
            return True

    def _send(self, sock: socket.socket, op: int, socket_id: int, body: bytes) -> int:
        """
        Write one request frame (the caller holds L{_send_lock}).

        @return: its tag.
        """
        sock.sendall(self._frame(op, socket_id, body))
        return self._tag

    def _frame(self, op: int, socket_id: int, body: bytes) -> bytes:
        """
        A request frame with the next tag (the caller holds L{_send_lock}).
        """
        self._tag = self._tag % 0xFFFFFFFF + 1
        return wire.encode_frame(op, self._tag, socket_id, body)

    def discard_copy(self) -> None:
        """
        Close this process's descriptor of the connection without shutting
        it down: after C{fork()}, the other process's copy stays usable.
        """
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._close_fds(list(self._fds))
        self._fds.clear()
        self._pending.clear()

    @property
    def closed(self) -> bool:
        """
        Whether L{close} was called.
        """
        return self._sock is None

    def close(self) -> None:
        """
        Close the connection (the daemon takes its end of file as the
        socket's C{close()}) and any descriptors nobody claimed. Idempotent.

        A request blocked in another thread is woken first and fails with
        C{ECONNABORTED}.
        """
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()
            self._close_fds(list(self._fds))
            self._fds.clear()
            while self._pending:
                self._close_fds(self._pending.popleft()[1])

    def request(
        self,
        op: int,
        socket_id: int,
        body: bytes,
        timeout: float | None = None,
        spin: bool = False,
        before: tuple[tuple[int, bytes], ...] = (),
    ) -> tuple[int, bytes, list[int]]:
        """
        Send one request and wait for its reply.

        @param timeout: seconds to wait for the reply; C{None} waits for ever.
        @param before: requests C{(op, body)} for the same socket to send
            first, in the same write, without a round trip each: their
            replies come before this one's (the daemon answers in order).
        @return: C{(errno, payload, descriptors)}; the caller owns the
            descriptors.
        @raise TimeoutError: no reply within C{timeout}.
        @raise OSError: C{EBADF} after L{close}; C{ECONNABORTED} when the
            connection to the daemon is lost; the errno and reason of the
            first request of C{before} that failed.
        @raise ValueError: the request does not fit in a frame.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            sock = self._check()
            try:
                sock.settimeout(None)
                with self._send_lock:
                    frames, earlier = [], set()
                    for first_op, first_body in before:
                        frames.append(self._frame(first_op, socket_id, first_body))
                        earlier.add(self._tag)
                    frames.append(self._frame(op, socket_id, body))
                    tag = self._tag
                    sock.sendall(b"".join(frames))
            except OSError as e:
                raise self._lose(e.strerror or str(e)) from None
            failed: OSError | None = None
            while True:
                reply, fds = self._read_frame(sock, deadline, spin)
                if reply.tag == tag:
                    break
                self._close_fds(fds)
                if reply.tag == 0:
                    self._refused(reply)
                elif reply.tag in earlier and failed is None:
                    code, payload = self._decode(reply, [])
                    if code:
                        failed = reply_error(code, payload)
            code, payload = self._decode(reply, fds)
            if failed is not None:
                self._close_fds(fds)
                raise failed
            return code, payload, fds

    def _decode(self, reply: wire.Frame, fds: list[int]) -> tuple[int, bytes]:
        """
        A reply's errno and payload; its descriptors are closed if it cannot
        be read (the connection is then lost).
        """
        try:
            return wire.decode_reply_body(reply.body)
        except wire.FramingError as e:
            self._close_fds(fds)
            raise self._lose(str(e)) from None

    def _refused(self, frame: wire.Frame) -> None:
        """
        A frame of tag 0 answers no request: the daemon says why it is
        closing the connection (a bound reached, a malformed request).

        @raise OSError: its errno and reason.
        """
        try:
            code, payload = wire.decode_reply_body(frame.body)
        except wire.FramingError:
            return
        if code:
            reason = payload.decode("utf-8", "replace")
            self._broken = f"the SSA daemon at {self.path} closed the connection: {reason}"
            raise OSError(code, self._broken)

    def _check(self) -> socket.socket:
        if self._sock is None:
            raise OSError(errno.EBADF, "the SSA socket is closed")
        if self._broken is not None:
            raise OSError(errno.ECONNABORTED, self._broken)
        return self._sock

    def _lose(self, why: str) -> OSError:
        """
        Mark the connection dead; every later request fails the same way.
        """
        self._broken = f"lost the connection to the SSA daemon at {self.path}"
        if why:
            self._broken += f" ({why})"
        return OSError(errno.ECONNABORTED, self._broken)

    @staticmethod
    def _poll_briefly(sock: socket.socket) -> tuple | None:
        """
        Try to read a reply for up to L{SPIN_SECONDS} without sleeping:
        the daemon answers most requests within tens of microseconds, and
        waking a sleeping thread costs more than that on many machines.

        @return: what C{recvmsg} returned, or L{None} if nothing came.
        """
        flags = _CMSG_CLOEXEC | socket.MSG_DONTWAIT
        space = socket.CMSG_SPACE(MAX_FDS * 4)
        deadline = time.perf_counter() + SPIN_SECONDS
        while True:
            try:
                return sock.recvmsg(_RECV_SIZE, space, flags)
            except BlockingIOError:
                if time.perf_counter() > deadline:
                    return None

    def _read_frame(
        self, sock: socket.socket, deadline: float | None, spin: bool = False
    ) -> tuple[wire.Frame, list[int]]:
        """
        Read until one frame is complete; return it with its descriptors.
        """
        while True:
            if self._pending:
                return self._pending.popleft()
            if deadline is None:
                sock.settimeout(None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        errno.ETIMEDOUT, "timed out waiting for the SSA daemon"
                    )
                sock.settimeout(remaining)
            try:
                received = self._poll_briefly(sock) if spin else None
                if received is None:
                    received = sock.recvmsg(_RECV_SIZE, socket.CMSG_SPACE(MAX_FDS * 4), _CMSG_CLOEXEC)
                data, ancdata, _flags, _ = received
            except TimeoutError:
                raise TimeoutError(
                    errno.ETIMEDOUT, "timed out waiting for the SSA daemon"
                ) from None
            except OSError as e:
                raise self._lose(e.strerror or str(e)) from None
            self._fds.extend(_descriptors(ancdata))
            if not data:
                raise self._lose("")
            try:
                frames = self._decoder.feed(data)
            except wire.FramingError as e:
                raise self._lose(str(e)) from None
            for frame in frames:
                if frame.nfds > len(self._fds):
                    raise self._lose(
                        f"a frame announced {frame.nfds} descriptors, "
                        f"{len(self._fds)} arrived"
                    )
                fds = [self._fds.popleft() for _ in range(frame.nfds)]
                self._pending.append((frame, fds))

    @staticmethod
    def _close_fds(fds: list[int]) -> None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _descriptors(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """
    The descriptors in C{recvmsg} ancillary data.
    """
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def encode_option(level: int, optname: int, value: Any) -> bytes:
    """
    The bytes of an option value on the wire (SPEC section 2): an C{int} as
    a 4-byte native int (8-byte unsigned for C{TLS_CONTEXT}), a C{str} as
    UTF-8 with a NUL, bytes as they are. For the trust anchors, chain and
    key, a value not starting C{-----BEGIN} is a path, read here.

    @raise OSError: that path cannot be read: C{EINVAL}, or C{EBADF} for the
        private key (SPEC section 4), naming the path.
    """
    if level == IPPROTO_TLS and optname in _PEM_OPTIONS and not _is_inline_pem(value):
        return _read_pem_source(optname, value)
    if isinstance(value, int):
        fmt = "Q" if (level, optname) == (IPPROTO_TLS, TLS_CONTEXT) else "i"
        try:
            return struct.pack(fmt, value)
        except struct.error:
            raise OverflowError(f"option value {value} out of range") from None
    if isinstance(value, str):
        return value.encode("utf-8") + b"\0"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"option value must be int, str or bytes, not {type(value).__name__}")


def _is_inline_pem(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(_PEM_MARK.decode())
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).startswith(_PEM_MARK)
    return False


def _read_pem_source(optname: int, value: Any) -> bytes:
    """
    Read the file or directory an option names, with the application's own
    permissions.
    """
    code, what = _PEM_OPTIONS[optname]
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"the {what} must be PEM or a path, not {type(value).__name__}")
    path = os.fsdecode(value)
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            data = _read_pem_directory(path)
            if not data:
                raise OSError(code, "the directory holds no PEM file")
            return data
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise OSError(code, f"cannot read the {what} from {path}: {e.strerror}") from None


def _read_pem_directory(path: str) -> bytes:
    """
    The regular files of C{path} that hold PEM, in name order, each once
    (a c_rehash directory links a certificate under several names).
    """
    seen: set[str] = set()
    chunks = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        real = os.path.realpath(full)
        if real in seen or not os.path.isfile(full):
            continue
        seen.add(real)
        try:
            with open(full, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if _PEM_MARK in data:
            chunks.append(data if data.endswith(b"\n") else data + b"\n")
    return b"".join(chunks)
