"""
Edge-triggered readiness for descriptors that are never empty.

The daemon's end of an application's plaintext stream always holds one
byte it leaves unread (L{ssa.descriptors.hold_placeholder}: that byte makes
the application read ECONNRESET, not a clean end-of-file, if the daemon
dies), so it is always readable and the reactor's level-triggered watch
would wake for it without end. These descriptors are watched instead by
one edge-triggered epoll instance per reactor, which the reactor watches
as one ordinary reader: a callback runs when new bytes arrive or the
other end shuts down, not while old ones wait.
"""

from __future__ import annotations

import select
from collections.abc import Callable

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_watchers: dict[int, EdgeWatcher] = {}


@implementer(IReadDescriptor)
class EdgeWatcher:
    """
    An edge-triggered epoll instance, watched by a reactor.
    """

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], None]] = {}
        reactor.addReader(self)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """
        Call C{callback} each time C{fd} receives bytes or end-of-file
        (and once now if it holds anything: an edge from before counts).
        """
        self._callbacks[fd] = callback
        self._epoll.register(fd, _EVENTS)

    def forget(self, fd: int) -> None:
        """
        Stop watching C{fd}; call before closing it.
        """
        if self._callbacks.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass

    def fileno(self) -> int:
        """
        The epoll instance's descriptor, readable when an edge waits.
        """
        return self._epoll.fileno()

    def doRead(self) -> None:
        """
        Run the callback of every descriptor that had an edge.
        """
        for fd, _ in self._epoll.poll(0, 1024):
            callback = self._callbacks.get(fd)
            if callback is not None:
                callback()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor stopped watching (it is shutting down).
        """

    def logPrefix(self) -> str:
        """
        How the reactor names this in its log.
        """
        return "ssa-edges"


def release(reactor) -> None:
    """
    Stop and forget C{reactor}'s watcher if it watches nothing now (a
    reactor that goes on without bridges, as in tests).
    """
    watcher = _watchers.get(id(reactor))
    if watcher is not None and not watcher._callbacks:
        del _watchers[id(reactor)]
        reactor.removeReader(watcher)
        watcher._epoll.close()


def watcher_for(reactor) -> EdgeWatcher:
    """
    The one L{EdgeWatcher} of C{reactor}.
    """
    watcher = _watchers.get(id(reactor))
    if watcher is None:
        watcher = _watchers[id(reactor)] = EdgeWatcher(reactor)
    return watcher
