"""
A worker process's side of C{--workers N} (worker 1 to N-1; the main
process is worker 0, see L{ssa.workers}): it accepts from the control
socket the main process bound, talks to the main process over its link,
and stops when the main process goes away.

A worker never binds, removes or replaces the control socket's path: the
main process owns it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket

from twisted.application.service import Service
from twisted.internet import main
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .frontends.unix import ControlFactory
from .handoff import Ready
from .link import Link
from .routing import CrossWorker
from .service import SocketService
from .twisted_internals import SharedControlPort, serve_inherited

log = Logger()

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """
    Ask Linux to send C{signum} to this process when its parent dies
    (C{PR_SET_PDEATHSIG}); elsewhere, do nothing.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    except (OSError, AttributeError):
        pass


@implementer(IReadDescriptor)
class _ParentWatch:
    """
    Reads the pipe from the main process (descriptor 0); its end of file
    means the main process died.
    """

    def __init__(self, fd: int, gone) -> None:
        self.fd = fd
        self.gone = gone
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "main process watch"

    def doRead(self) -> object:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        return None if data else main.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        self.gone("its pipe ended")


class WorkerProcessService(Service):
    """
    What makes this process worker K: serving the inherited control
    socket, the link to the main process, and stopping with it.
    """

    def __init__(
        self, reactor, sockets: SocketService, workers: CrossWorker, control_fd: int, link_fd: int,
        parent_fd: int = 0,
    ) -> None:
        self.reactor = reactor
        self.sockets = sockets
        self.workers = workers
        self._control_fd = control_fd
        self._link_fd = link_fd
        self._parent_fd = parent_fd
        self.port: SharedControlPort | None = None
        self.link: Link | None = None
        self._watch: _ParentWatch | None = None

    def startService(self) -> None:
        """
        Serve the control socket and tell the main process so.
        """
        super().startService()
        die_with_parent()
        index = self.sockets.worker_index
        self.link = Link(
            self.reactor, socket.socket(fileno=self._link_fd), "the main process",
            self.workers.receive, lambda: self._parent_gone("the link closed"),
        )
        self.workers.send = self.link.send
        factory = self.workers.factory = ControlFactory(self.sockets, self.workers)
        self.port = serve_inherited(self.reactor, self._control_fd, factory)
        self._watch = _ParentWatch(self._parent_fd, self._parent_gone)
        self.reactor.addReader(self._watch)
        log.info("SSA worker {index} (pid {pid}) serving with the {backend} backend",
                 index=index, pid=os.getpid(), backend=self.sockets.backend.name)
        self.link.send(Ready(index))

    def _parent_gone(self, why: str) -> None:
        if not self.running:
            return
        log.info("the main process is gone ({why}); stopping", why=why)
        self.reactor.callLater(0, self._stop_reactor)

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self):
        """
        Stop accepting (leaving the path), close every socket and the link.
        """
        super().stopService()
        if self._watch is not None:
            self.reactor.removeReader(self._watch)
            self._watch = None
        self.sockets.close_all()
        if self.link is not None:
            self.link.close()
        if self.port is not None:
            return self.port.stopListening()
        return None
