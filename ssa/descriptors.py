"""
Small operations on the raw descriptors of a socket's plaintext pair,
done without blocking and without changing the descriptors' flags (the
application shares their open file descriptions).

The pair: the application holds one end (C{app_end}, and the daemon keeps
a copy of it), the daemon the other (C{daemon_end}).

The placeholder: C{daemon_end} always holds one byte the daemon has not
read, first in its queue. The kernel makes the application's next read
fail with ECONNRESET (after the bytes already delivered) when the other
end closes with unread bytes, so whenever the daemon's end closes without
the daemon saying it ended cleanly (the daemon or its worker is killed,
the connection failed), the application reads an error, never a clean
end-of-file. The daemon reads past the placeholder with C{MSG_PEEK} from
offset 1 (C{SO_PEEK_OFF}) and then consumes what it peeked minus one
byte, so the last byte it forwarded becomes the next placeholder.
"""

from __future__ import annotations

import os
import socket


def _borrow(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)


#: Linux's C{SO_PEEK_OFF} (Python's C{socket} module does not name it).
SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)


def hold_placeholder(app_end: int, daemon_end: int) -> None:
    """
    Queue the placeholder byte towards C{daemon_end}, before the
    application can write anything, and make its peeks skip it.
    """
    sock = _borrow(app_end)
    try:
        sock.send(b"\0", socket.MSG_DONTWAIT)
    finally:
        sock.detach()
    sock = _borrow(daemon_end)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 1)
    finally:
        sock.detach()


def close_quietly(fd: int | None) -> None:
    """
    Close C{fd} if it is open.
    """
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def send_byte(fd: int | None) -> None:
    """
    Queue one byte for the other end of C{fd}'s pair, if there is room.
    """
    if fd is None or fd < 0:
        return
    sock = _borrow(fd)
    try:
        sock.send(b"!", socket.MSG_DONTWAIT)
    except OSError:
        pass  # a full queue is not empty either
    finally:
        sock.detach()


def take_byte(fd: int) -> None:
    """
    Take back one byte queued towards C{fd} by L{send_byte}, or the
    placeholder (before closing a daemon's end after a clean end, so that
    the application's reads go on seeing end-of-file).
    """
    sock = _borrow(fd)
    try:
        sock.recv(1, socket.MSG_DONTWAIT)
    except OSError:
        pass
    finally:
        sock.detach()


def fill(app_end: int) -> int:
    """
    Fill the application's sending queue so that its descriptor is not
    writable until the daemon drains it: the signal that a nonblocking
    connect is done.

    @return: how many filler bytes were queued.
    """
    sock = _borrow(app_end)
    chunk = bytes(65536)
    total = 0
    try:
        while True:
            total += sock.send(chunk, socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass
    finally:
        sock.detach()
    return total


def discard(daemon_end: int, count: int) -> None:
    """
    Read and drop C{count} bytes: the placeholder and all filler bytes
    queued by L{fill} but the last, which is the placeholder then.
    """
    sock = _borrow(daemon_end)
    try:
        while count > 0:
            got = sock.recv(min(count, 1 << 20), socket.MSG_DONTWAIT)
            if not got:
                break
            count -= len(got)
    except BlockingIOError:
        pass
    finally:
        # Reads took the peek offset down with them: skip the new
        # placeholder again.
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 1)
        sock.detach()


def drain(fd: int, placeholder: bool = True) -> list[bytes]:
    """
    Read everything queued on C{fd} now, without blocking, after the
    placeholder if it holds one (which is dropped: the application then
    reads a clean end-of-file once C{fd} closes).
    """
    sock = _borrow(fd)
    chunks = []
    try:
        if placeholder:
            sock.recv(1, socket.MSG_DONTWAIT)
        while chunk := sock.recv(1 << 18, socket.MSG_DONTWAIT):
            chunks.append(chunk)
    except OSError:
        pass
    finally:
        sock.detach()
    return chunks


def set_send_buffer(fd: int, size: int) -> None:
    """
    Ask for a send buffer of C{size} bytes on C{fd}'s socket (the kernel
    caps it at C{net.core.wmem_max}).
    """
    sock = _borrow(fd)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        pass
    finally:
        sock.detach()


def shut_down(fd: int) -> None:
    """
    Shut both directions of C{fd}'s socket: the other end reads EOF.
    """
    sock = _borrow(fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()
