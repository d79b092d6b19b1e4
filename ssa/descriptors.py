"""
Small operations on the raw descriptors of a socket's plaintext pair,
done without blocking and without changing the descriptors' flags (the
application shares their open file descriptions).

The pair: the application holds one end (C{app_end}, and the daemon keeps
a copy of it), the daemon the other (C{daemon_end}).
"""

from __future__ import annotations

import os
import socket


def _borrow(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)


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
    Take back one byte queued towards C{fd} by L{send_byte}.
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
    Read and drop C{count} filler bytes queued by L{fill}.
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
        sock.detach()


def drain(fd: int) -> list[bytes]:
    """
    Read everything queued on C{fd} now, without blocking.
    """
    sock = _borrow(fd)
    chunks = []
    try:
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
