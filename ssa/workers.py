"""
Worker processes (C{--workers N}), the main process's side: it is worker 0,
starts workers 1 to N-1, relays what they log into its own log, restarts
one that dies, forwards SIGHUP to them, stops them when it stops, and
relays L{ssa.handoff} messages between them.

Each worker is C{python -m twisted ssa ...} with these descriptors:

  - 0: a pipe from the main process; end of file means it died;
  - 1, 2: pipes whose lines the main process logs as C{worker K: ...};
  - 3: the listening control socket, which every worker accepts from;
  - 4: its end of a C{SOCK_SEQPACKET} link to the main process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from .handoff import Message, Ready, close_all
from .link import Link

log = Logger()

#: A worker that died is started again no sooner than this many seconds
#: after it exited, which also allows at most one start a second.
RESTART_DELAY = 1.0
#: How long stopping waits for workers after SIGTERM, before SIGKILL.
STOP_TIMEOUT = 5.0
#: The descriptors a worker gets its control socket and its link on.
CONTROL_FD, LINK_FD = 3, 4

# A worker's own log line starts with its timestamp; the main process's
# log line has one already.
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S*\s")


@dataclass
class _Worker:
    index: int
    process: object | None = None
    link: Link | None = None
    pid: int | None = None
    ready: bool = False
    hup_pending: bool = False
    restart: object | None = None
    ended: Deferred | None = None


class WorkerSupervisor(Service):
    """
    Starts, watches and stops workers 1 to N-1.

    @ivar count: N, the number of workers including this process.
    """

    def __init__(
        self, reactor, count: int, arguments: Callable[[int], list[str]],
        control_fd: Callable[[], int], deliver: Callable[[Message], None],
    ) -> None:
        """
        @param arguments: the command line of worker K (without the
            interpreter).
        @param control_fd: the listening control socket's descriptor.
        @param deliver: acts on a message for worker 0 (this process).
        """
        self.reactor = reactor
        self.count = count
        self._arguments = arguments
        self._control_fd = control_fd
        self._deliver = deliver
        self._workers = {index: _Worker(index) for index in range(1, count)}

    def startService(self) -> None:
        """
        Start the workers once the reactor runs.
        """
        super().startService()
        self.reactor.callWhenRunning(self._start_all)

    def _start_all(self) -> None:
        for worker in self._workers.values():
            if self.running and worker.process is None:
                self._start(worker)

    def _start(self, worker: _Worker) -> None:
        worker.restart = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = self.reactor.spawnProcess(
                _WorkerProtocol(self, worker), sys.executable,
                [sys.executable, *self._arguments(worker.index)], env=dict(os.environ),
                childFDs={0: "w", 1: "r", 2: "r", CONTROL_FD: self._control_fd(), LINK_FD: theirs.fileno()},
            )
        except OSError as e:
            ours.close()
            log.error("could not start worker {index}: {error}", index=worker.index, error=e)
            self._schedule_restart(worker)
            return
        finally:
            theirs.close()
        worker.process, worker.pid, worker.ready = process, process.pid, False
        worker.ended = Deferred()
        worker.link = Link(self.reactor, ours, f"worker {worker.index}",
                           lambda message: self._from_worker(worker, message))
        log.info("worker {index} started (pid {pid})", index=worker.index, pid=worker.pid)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        status = reason.value
        signum, code = getattr(status, "signal", None), getattr(status, "exitCode", None)
        how = f"signal {signum}" if signum else f"status {code}"
        log.info("worker {index} exited (pid {pid}, {how})", index=worker.index, pid=worker.pid, how=how)
        worker.process, worker.ready, worker.hup_pending = None, False, False
        if worker.link is not None:
            worker.link.close()
            worker.link = None
        ended, worker.ended = worker.ended, None
        if self.running:
            self._schedule_restart(worker)
        if ended is not None:
            ended.callback(None)

    def _schedule_restart(self, worker: _Worker) -> None:
        if self.running and worker.restart is None:
            worker.restart = self.reactor.callLater(RESTART_DELAY, self._start, worker)

    # Messages

    def _from_worker(self, worker: _Worker, message: Message) -> None:
        if isinstance(message, Ready):
            worker.ready = True
            log.info("worker {index} ready (pid {pid})", index=worker.index, pid=worker.pid)
            if worker.hup_pending:
                self._signal(worker, signal.SIGHUP)
            return
        self.route(message)

    def route(self, message: Message) -> None:
        """
        Pass a message to its target worker: act on it here for worker 0,
        else send it on that worker's link; if that worker is not running,
        drop it (closing its descriptors ends the connection it carried).
        """
        if message.target == 0:
            self._deliver(message)
            return
        worker = self._workers.get(message.target)
        if worker is None or worker.link is None or not worker.link.connected:
            log.warn(  # noqa: G010
                "cannot pass a connection to worker {target}: it is not running; closing it",
                target=message.target,
            )
            close_all(message.fds)
            return
        worker.link.send(message)

    # Signals

    def signal_all(self, signum: int) -> None:
        """
        Send C{signum} to every worker; one still starting gets it once it
        is ready (before, the signal could kill it).
        """
        for worker in self._workers.values():
            if worker.process is None:
                continue
            if worker.ready:
                self._signal(worker, signum)
            elif signum == signal.SIGHUP:
                worker.hup_pending = True

    def _signal(self, worker: _Worker, signum: int) -> None:
        worker.hup_pending = False
        try:
            if worker.process is not None:
                worker.process.signalProcess(signum)
        except (ProcessExitedAlready, OSError):
            pass

    def stopService(self) -> Deferred:
        """
        SIGTERM every worker and wait for them (SIGKILL after
        L{STOP_TIMEOUT} seconds).
        """
        super().stopService()
        waiting = []
        for worker in self._workers.values():
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            if worker.process is not None and worker.ended is not None:
                waiting.append(worker.ended)
                self._signal(worker, signal.SIGTERM)
        if not waiting:
            return DeferredList([])
        done = DeferredList(waiting)
        killer = self.reactor.callLater(STOP_TIMEOUT, self._kill_all)
        done.addBoth(lambda result: killer.cancel() if killer.active() else None)
        return done

    def _kill_all(self) -> None:
        for worker in self._workers.values():
            if worker.process is not None:
                log.warn("worker {index} did not stop; killing it", index=worker.index)  # noqa: G010
                self._signal(worker, signal.SIGKILL)


class _WorkerProtocol(ProcessProtocol):
    """
    Watches one worker process: logs its lines, reports its end.
    """

    def __init__(self, supervisor: WorkerSupervisor, worker: _Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Log each complete line the worker wrote.
        """
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            self._log(childFD, line)

    def _log(self, childFD: int, raw: bytes) -> None:
        line = _TIMESTAMP.sub("", raw.decode("utf-8", "replace").rstrip("\r"))
        if not line:
            return
        if line.lstrip("\x1e").startswith("{") and self._relay_event(line.lstrip("\x1e")):
            return
        if childFD == 2:
            log.warn("worker {index}: {line}", index=self.worker.index, line=line)  # noqa: G010
        else:
            log.info("worker {index}: {line}", index=self.worker.index, line=line)

    def _relay_event(self, line: str) -> bool:
        """
        Publish a worker's JSON log event (C{--log-format json}) as this
        process's, with the worker's index; say whether it was one.
        """
        try:
            event = eventFromJSON(line)
        except ValueError:
            return False
        if not isinstance(event, dict):
            return False
        event["worker"] = self.worker.index
        globalLogPublisher(event)
        return True

    def processEnded(self, reason: Failure) -> None:
        """
        Log what is left of its output, then tell the supervisor.
        """
        for childFD, rest in self._partial.items():
            if rest:
                self._log(childFD, rest)
        self._partial = {1: b"", 2: b""}
        self.supervisor._ended(self.worker, reason)
