"""
Requests that cross worker processes (C{--workers N}), one worker's side.

Every worker accepts control connections from the one shared control
socket, and each connection's sockets live in the worker that accepted it.
Two requests can name a socket of another worker:

  - a request on a connection that owns no socket yet (C{accept()} opens
    one and names the listener): the whole connection is handed to the
    listener's worker (L{Handoff}), with the unanswered bytes read from
    it;
  - C{setsockopt(TLS_CONTEXT, handle)} on a NEW socket, the handle naming
    a socket of another worker: the socket moves there with its
    connection (L{Migration}), its settings made again from its
    L{ReplayLog}, and the request is answered there.

A connection leaves without C{shutdown()} (which would end it for the new
owner too) and only after the replies already written to it are flushed.
The worker that adopts it reads the peer's credentials again from it.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from .constants import IPPROTO_TLS, TLS_CONTEXT, SocketState
from .errors import SSAError
from .frontends.socketpair import SocketpairStream
from .handoff import Answer, Handoff, Message, Migration, Query, ReplayLog, close_all
from .interfaces import IRequestRouter
from .options import U64
from .peer import Credentials, PeerIdentity, peer_identity
from .service import SocketService
from .status import local_report
from .twisted_internals import adopt_with_credentials, close_without_shutdown
from .wire import OPTION, Frame, Op

log = Logger()

#: How long C{ssa status} and C{/metrics} wait for a worker's report.
QUERY_TIMEOUT = 2.0


@implementer(IRequestRouter)
class CrossWorker:
    """
    What one worker does about requests for sockets of other workers: the
    Unix frontend's L{IRequestRouter}.

    @ivar index: this worker's index.
    @ivar count: how many workers the daemon runs.
    @ivar send: passes a message towards its target worker (set when the
        link is up).
    @ivar replay: the replay logs of this worker's sockets.
    @ivar factory: the control connections' factory, which makes the
        protocol of an adopted connection (set by the wiring).
    """

    def __init__(self, reactor, service: SocketService, count: int) -> None:
        self.reactor = reactor
        self.service = service
        self.index = service.worker_index
        self.count = count
        self.send: Callable[[Message], None] = _nowhere
        self.replay = ReplayLog()
        self.factory: Factory | None = None
        self._queries: dict[int, tuple[list[dict], set[int], Deferred, object]] = {}
        self._next_query = 0

    def _foreign(self, socket_id: int) -> int | None:
        """
        The worker serving C{socket_id} if it is another existing one.
        """
        target = SocketService.worker_of(socket_id)
        if target == self.index or target >= self.count:
            return None
        return target

    # IRequestRouter

    @property
    def processes(self) -> int:
        """
        How many worker processes serve requests.
        """
        return self.count

    def destination(
        self, frame: Frame, owned: set[int], waiting: bool
    ) -> Callable[[object, bytes, Credentials | None], Callable[[], None]] | None:
        """
        A connection that owns no socket and waits for nothing (a new one,
        typically, as C{accept()} opens) goes to the worker serving the
        socket its request names, if another one; a NEW socket asking for
        another worker's C{TLS_CONTEXT} moves there with its connection.
        """
        if not owned and not waiting:
            target = self.owner_of_request(frame)
            if target is None:
                return None
            return lambda transport, pending, sender: self.hand_off(transport, target, pending, frame, sender)
        if frame.op != Op.SETSOCKOPT or frame.socket_id not in owned:
            return None
        level, name = OPTION.unpack_from(frame.body)
        value = frame.body[OPTION.size :]
        socket_id = frame.socket_id
        moving_to = self.context_owner(socket_id, level, name, value, len(owned) == 1 and not waiting)
        if moving_to is None:
            return None
        return lambda transport, pending, sender: self.migrate(transport, socket_id, moving_to, pending, sender)

    def handled(self, frame: Frame) -> None:
        """
        Record a served C{setsockopt}, to replay it if the socket moves.
        """
        if frame.op == Op.SETSOCKOPT:
            level, name = OPTION.unpack_from(frame.body)
            self.replay.record(frame.socket_id, level, name, frame.body[OPTION.size :])

    def forget(self, socket_id: int) -> None:
        """
        A socket was closed: drop its replay log.
        """
        self.replay.forget(socket_id)

    def reports(self, uid: int | None) -> Deferred:
        """
        Every worker's report (L{gather}).
        """
        return self.gather(uid)

    # Decisions

    def owner_of_request(self, frame: Frame) -> int | None:
        """
        The worker to hand a connection that owns no socket to, given its
        request: the one serving the socket it names, if that is another
        worker.
        """
        if frame.op == Op.SOCKET or frame.socket_id == 0:
            return None
        return self._foreign(frame.socket_id)

    def context_owner(self, socket_id: int, level: int, name: int, value: bytes, movable: bool) -> int | None:
        """
        The worker to move C{socket_id} to for this C{setsockopt}: the one
        serving the C{TLS_CONTEXT} handle, if it is another worker and the
        socket is NEW; L{None} to handle it here.

        @param movable: whether the connection has only this socket and no
            request in progress.
        @raise SSAError: EINVAL, the socket cannot move.
        """
        if (level, name) != (IPPROTO_TLS, TLS_CONTEXT) or len(value) != U64.size:
            return None
        (handle,) = U64.unpack(value)
        target = self._foreign(handle)
        entry = self.service.entries.get(socket_id)
        if target is None or entry is None or entry.sock.state is not SocketState.NEW:
            return None
        if not movable:
            raise entry.sock.fail(
                errno.EINVAL,
                f"TLS_CONTEXT: {handle:#x} belongs to another worker of the daemon (worker {target}), "
                "and this control connection has other sockets or requests in progress, so the "
                "socket cannot move there",
            )
        return target

    # Leaving

    def hand_off(
        self, transport, target: int, pending: bytes, request: Frame, sender: Credentials | None = None
    ) -> Callable[[], None]:
        """
        Start handing a connection to C{target}.

        @param sender: who wrote C{pending}, as the kernel said.

        @return: what to call once the connection is lost here: it sends
            the connection on.
        """
        fd = os.dup(transport.fileno())
        close_without_shutdown(transport)
        log.info(
            "handing a control connection to worker {target} (its {op} request names socket {socket:#x})",
            target=target, op=_name(request.op), socket=request.socket_id,
        )
        return lambda: self.send(Handoff(self.index, target, pending, [fd], sender))

    def migrate(
        self, transport, socket_id: int, target: int, pending: bytes, sender: Credentials | None = None
    ) -> Callable[[], None]:
        """
        Start moving a NEW socket and its connection to C{target}.

        @param sender: who wrote C{pending}, as the kernel said.

        @return: what to call once the connection is lost here.
        """
        control = os.dup(transport.fileno())
        try:
            entry = self.service.release_new_socket(socket_id)
        except BaseException:
            os.close(control)
            raise
        close_without_shutdown(transport)
        replay = self.replay.get(socket_id)
        self.replay.forget(socket_id)
        stream = entry.plaintext
        assert isinstance(stream, SocketpairStream) and stream.daemon_end is not None
        fds = [control, stream.app_end, stream.daemon_end]
        if entry.bound is not None:
            fds.append(entry.bound.detach())
        log.info("moving socket {socket:#x} to worker {target} for its TLS_CONTEXT",
                 socket=socket_id, target=target)
        owner = entry.sock.owner
        message = Migration(
            self.index, target, socket_id, entry.sock.family, replay, entry.sock.last_error, pending, fds,
            sender, (owner.pid, owner.uid, owner.gid, owner.executable),
        )
        return lambda: self.send(message)

    # Arriving

    # Reports (C{ssa status}, C{/metrics})

    def gather(self, uid: int | None, timeout: float = QUERY_TIMEOUT) -> Deferred:
        """
        Ask every worker for its report (L{ssa.status.local_report}).

        @return: fires with the reports that arrived within C{timeout}
            seconds, this worker's first.
        """
        self._next_query += 1
        query = self._next_query
        reports = [local_report(self.service, uid)]
        waiting = {index for index in range(self.count) if index != self.index}
        done: Deferred = Deferred()
        if not waiting:
            done.callback(reports)
            return done
        timer = self.reactor.callLater(timeout, self._answered, query, None)
        self._queries[query] = (reports, waiting, done, timer)
        for index in sorted(waiting):
            self.send(Query(self.index, index, query, uid))
        return done

    def _answered(self, query: int, answer: Answer | None) -> None:
        """
        A worker answered C{query} (or, with L{None}, time is up).
        """
        pending = self._queries.get(query)
        if pending is None:
            return
        reports, waiting, done, timer = pending
        if answer is not None:
            if answer.source not in waiting:
                return
            waiting.discard(answer.source)
            reports.append(answer.report)
        if waiting and answer is not None:
            return
        del self._queries[query]
        if timer.active():
            timer.cancel()
        if not done.called:
            done.callback(reports)

    def receive(self, message: Message) -> None:
        """
        Serve a connection (and socket) another worker passed here.
        """
        if isinstance(message, Query):
            self.send(Answer(self.index, message.source, message.query, local_report(self.service, message.uid)))
            return
        if isinstance(message, Answer):
            self._answered(message.query, message)
            return
        if message.target != self.index or not isinstance(message, (Handoff, Migration)):
            log.error("dropped a {kind} for worker {target}", kind=type(message).__name__,
                      target=message.target)
            close_all(message.fds)
            return
        socket_id = None
        if isinstance(message, Migration):
            try:
                self._make_socket(message)
            except Exception:  # noqa: BLE001
                log.failure("could not take socket {socket:#x} from worker {source}",
                            socket=message.socket_id, source=message.source)
                close_all(message.fds)
                return
            socket_id = message.socket_id
        protocol = self._adopt(message.fds[0], message.pending, socket_id, message.sender)
        if protocol is None:
            return
        if socket_id is None:
            log.info("took a control connection from worker {source}", source=message.source)
        else:
            log.info("took socket {socket:#x} from worker {source}", socket=socket_id, source=message.source)
        if protocol.carried:
            protocol.dataReceived(b"")

    def _make_socket(self, message: Migration) -> None:
        """
        Make the NEW socket of a migration again, with its descriptors
        and settings; its owner is who the kernel says the connection's
        peer is.
        """
        control, app_end, daemon_end, *rest = message.fds
        if message.owner is not None:
            owner = PeerIdentity(*message.owner)
        else:
            view = socket.socket(fileno=control)
            try:
                owner = peer_identity(view)
            finally:
                view.detach()
        bound = socket.socket(fileno=rest[0]) if rest else None
        try:
            sock = self.service.adopt_new_socket(
                owner, message.socket_id, message.family, SocketpairStream(app_end, daemon_end), bound
            )
        except BaseException:
            if bound is not None:
                bound.detach()
            raise
        for level, name, value in message.replay:
            try:
                self.service.setsockopt(message.socket_id, level, name, value)
            except SSAError as e:
                log.warn(  # noqa: G010
                    "socket {socket:#x} from worker {source}: an option did not apply here: {error}",
                    socket=message.socket_id, source=message.source, error=str(e),
                )
        self.replay.replace(message.socket_id, message.replay)
        sock.last_error = message.last_error

    def _adopt(self, fd: int, carried: bytes, socket_id: int | None, sender: Credentials | None = None):
        """
        Serve the connection C{fd} here, owning C{socket_id} if given.

        @return: its protocol, or L{None} if it could not be served (it
            is closed then, and so is the socket).
        """
        assert self.factory is not None
        adopting = _Adopting(self.factory, carried, socket_id, sender)
        try:
            os.set_blocking(fd, False)
            adopt_with_credentials(self.reactor, fd, adopting)
        except OSError as e:
            log.warn("could not adopt a control connection: {error}", error=e)  # noqa: G010
        finally:
            os.close(fd)
        protocol = adopting.built
        if protocol is None:
            if socket_id is not None:
                self.service.close(socket_id)
                self.replay.forget(socket_id)
            return None
        return protocol if protocol.peer is not None else None


class _Adopting(Factory):
    """
    Builds the protocol of an adopted connection, starting with the
    bytes another worker read from it.
    """

    noisy = False

    def __init__(
        self, factory: Factory, carried: bytes, socket_id: int | None, sender: Credentials | None = None
    ) -> None:
        self.factory = factory
        self.carried = carried
        self.sender = sender
        self.socket_id = socket_id
        self.built = None

    def buildProtocol(self, addr: object):
        """
        The factory's protocol, told where it comes from.
        """
        built = self.factory.buildProtocol(addr)
        if built is not None:
            built.carried = self.carried
            built.carried_sender = self.sender
            if self.socket_id is not None:
                built.sockets.add(self.socket_id)
        self.built = built
        return built


def _name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"operation {op}"


def _nowhere(message: Message) -> None:
    log.error("no link to pass a message to worker {target}", target=message.target)
    close_all(message.fds)
