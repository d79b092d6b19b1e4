"""
The client's pool of idle control connections.

Each SSA socket has its own control connection (so that a socket's
C{close()}, even by a process that dies, is the connection's end). Opening
one costs a connect and an accept in the daemon; closing a socket and
opening the next is the common pattern of a client making connection after
connection. So L{SSASocket.close} sends an explicit CLOSE request and, when
the connection is healthy, keeps it here; the next L{ssa.client.socket} of
the same process, with the same credentials, to the same daemon, takes it
instead of connecting again.

A connection is only reused by the process and credentials it was opened
with: the daemon read them from the kernel when it accepted it, so a child
after C{fork()} or a process that changed its user must connect afresh
(the pool is emptied in a forked child, and keyed by uid and gid).
"""

from __future__ import annotations

import os
import threading

from ssa._control import ControlChannel

#: Idle control connections kept per process and daemon.
POOL_SIZE = 8

_lock = threading.Lock()
_idle: dict[tuple, list[ControlChannel]] = {}


def _key(path: str) -> tuple:
    return (path, os.getpid(), os.getuid(), os.geteuid(), os.getgid(), os.getegid())


def take(path: str) -> ControlChannel | None:
    """
    An idle control connection to the daemon at C{path} made by this
    process with its current credentials, if one is kept.
    """
    with _lock:
        idle = _idle.get(_key(path))
        while idle:
            channel = idle.pop()
            if channel.reusable:
                return channel
            channel.close()
    return None


def give_back(channel: ControlChannel) -> None:
    """
    Keep C{channel} for a later socket, or close it when it cannot be
    reused or the pool is full.
    """
    if not channel.reusable:
        channel.close()
        return
    with _lock:
        idle = _idle.setdefault(_key(channel.path), [])
        if len(idle) < POOL_SIZE:
            idle.append(channel)
            return
    channel.close()


def close_idle(path: str | None = None) -> None:
    """
    Close the idle connections kept for the daemon at C{path} (all daemons
    if L{None}), e.g. before a test checks that the daemon has none left.
    """
    with _lock:
        keys = [key for key in _idle if path is None or key[0] == path]
        channels = [channel for key in keys for channel in _idle.pop(key)]
    for channel in channels:
        channel.close()


def _forget_after_fork() -> None:
    """
    In a forked child: the parent's connections are not the child's. Close
    the child's copies of their descriptors (the parent's stay open).
    """
    global _lock
    _lock = threading.Lock()
    idle = list(_idle.values())
    _idle.clear()
    for channels in idle:
        for channel in channels:
            channel.discard_copy()


os.register_at_fork(after_in_child=_forget_after_fork)
