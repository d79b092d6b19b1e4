"""
The Unix-socket frontend (SPEC section 6): applications' calls arrive as
frames (L{ssa.wire}) on a Unix stream socket; each control connection owns
the sockets it opened, and closing it closes them.

The daemon learns each peer's pid, uid and gid from the kernel, never from
the peer's words, and never opens a path for it: file contents arrive in
the option values.

With several worker processes (C{--workers N}) a request may have to be
served by another worker, with its connection: an L{IRequestRouter}
(L{ssa.routing}) says so before each request is served here.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import status, wire
from ..errors import INTERNAL_ERROR, SSAError
from ..interfaces import IRequestRouter, ISocketAPI
from ..limits import EXTRA_CONNECTIONS, RequestBudget, open_file_limit, user_socket_bound
from ..peer import Credentials, PeerIdentity, identity_of, peer_identity
from ..wire import Frame, FrameDecoder, FramingError, Op
from .socketpair import SocketpairStream

if TYPE_CHECKING:
    from ..sockets import TLSSocket

log = Logger()


@implementer(IFileDescriptorReceiver)
class ControlProtocol(Protocol):
    """
    One application's control connection.

    @ivar peer: who the kernel says the application is.
    @ivar sockets: the ids of the sockets this connection owns.
    @ivar router: with several worker processes, where requests are
        served; else L{None}.
    @ivar carried: bytes another worker read from this connection before
        handing it here; they come before anything read here.
    @ivar carried_sender: the credentials of the process that wrote
        C{carried}, as that worker read them.
    """

    def __init__(
        self, service: ISocketAPI, max_frame: int = wire.MAX_FRAME, router: IRequestRouter | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        """
        @param budget: the daemon's per-uid count of control connections
            and buffered request bytes (this connection's own by default).
        """
        self.service = service
        self.budget = RequestBudget() if budget is None else budget
        self._counted = False
        self._buffered = 0
        self._buffer_bound = 0
        self.decoder = FrameDecoder(max_frame)
        self.sockets: set[int] = set()
        self.peer: PeerIdentity | None = None
        self.router = router
        self.carried = b""
        self.carried_sender: Credentials | None = None
        self._open = False
        # Who wrote the bytes of the current read (SCM_CREDENTIALS), and
        # who wrote the start of a request still incomplete.
        self._chunk_sender: Credentials | None = None
        self._partial_sender: Credentials | None = None
        self.sender: Credentials | None = None
        self._waiting: set[Deferred] = set()
        self._departure: Callable[[], None] | None = None

    def connectionMade(self) -> None:
        """
        Ask the kernel who connected.
        """
        self._open = True
        try:
            self.peer = peer_identity(self.transport.getHandle())
        except OSError as e:
            log.warn("cannot read the peer's credentials ({error}); closing", error=e)
            self.transport.loseConnection()
            return
        policy = self.service.policies.for_peer(self.peer)
        self._buffer_bound = policy.max_request_bytes_per_user
        bound = user_socket_bound(policy.max_sockets_per_user, open_file_limit()) + EXTRA_CONNECTIONS
        self._counted = self.budget.open_connection(self.peer.uid, bound)
        if not self._counted:
            self._refuse(errno.EMFILE, f"uid {self.peer.uid} holds {bound} control connections to the daemon, "
                                       "its bound (max-sockets-per-user and its share of the daemon)")

    def _refuse(self, err: int, reason: str) -> None:
        """
        Say why in a frame of tag 0 (no request's) and close.
        """
        log.info("closing a control connection of {peer}: {reason}", peer=self._who(), reason=reason)
        self._send(wire.encode_frame(0, 0, 0, wire.ERRNO.pack(err) + reason.encode()))
        self._open = False
        self.transport.loseConnection()

    def credentials_received(self, credentials: Credentials | None) -> None:
        """
        The kernel says who wrote the bytes of the next L{dataReceived}.
        """
        self._chunk_sender = credentials

    def fileDescriptorReceived(self, descriptor: int) -> None:
        """
        Version 1 requests carry no descriptors: close any that arrive.
        """
        os.close(descriptor)

    def dataReceived(self, data: bytes) -> None:
        """
        Decode frames and answer each.
        """
        if self.carried:
            carried, self.carried = self.carried, b""
            chunk_sender, self._chunk_sender = self._chunk_sender, self.carried_sender
            self._feed(carried)
            self._chunk_sender = chunk_sender
        if data and self._open:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        sender = self._chunk_sender
        continued = self.decoder.pending > 0
        try:
            frames = self.decoder.feed(data)
        except FramingError as e:
            self._refuse(errno.EPROTO, str(e))
            return
        if not self._account_buffered():
            return
        first_sender = sender
        if continued and self._partial_sender != sender:
            first_sender = None  # one request written by two processes: trust neither
        if self.decoder.pending and (frames or not continued):
            self._partial_sender = sender
        elif self.decoder.pending and self._partial_sender != sender:
            self._partial_sender = None
        for index, frame in enumerate(frames):
            if not self._open:
                return
            self.sender = first_sender if index == 0 else sender
            if self.router is not None:
                try:
                    start = self.router.destination(frame, self.sockets, bool(self._waiting))
                except SSAError as e:
                    self._reply(frame, e.errno, e.reason.encode("utf-8"))
                    continue
                if start is not None:
                    self._move(start, frames[index:])
                    return
            self._handle(frame)

    # Moving to another worker process (L{IRequestRouter})

    def _move(self, start: Callable[..., Callable[[], None]], unanswered: list[Frame]) -> None:
        """
        Move the connection, its sockets and the C{unanswered} requests
        (with what is buffered of the next one) where the router said:
        C{start} detaches it and returns what sends it on once it is
        closed here.
        """
        self._open = False
        pending = wire.encode_frames(unanswered) + self.decoder.take_buffered()
        try:
            self._departure = start(self.transport, pending, self.sender)
        except Exception:  # noqa: BLE001
            log.failure("could not move a control connection of {peer} to another worker", peer=self._who())
            self.transport.loseConnection()
            return
        self.sockets.clear()  # they live on with the connection

    def _account_buffered(self) -> bool:
        """
        Count what the decoder holds of unfinished requests towards the
        uid's bound; over it, refuse the connection. Say whether it goes on.
        """
        if not self._counted:
            return self._open
        assert self.peer is not None
        held = self.decoder.pending
        total = self.budget.change_buffered(self.peer.uid, held - self._buffered)
        self._buffered = held
        if total > self._buffer_bound:
            self._refuse(errno.ENOBUFS, f"uid {self.peer.uid}'s unfinished requests hold {total} bytes, over "
                                        f"the policy's max-request-bytes-per-user ({self._buffer_bound})")
            return False
        return True

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        The application closed (or died): close its sockets.
        """
        self._open = False
        if self._counted:
            assert self.peer is not None
            self._counted = False
            self.budget.close_connection(self.peer.uid, self._buffered)
            self._buffered = 0
        for waiting in list(self._waiting):
            waiting.cancel()
        for socket_id in self.sockets:
            self.service.close(socket_id, abort=True)  # no CLOSE came: the application died
            if self.router is not None:
                self.router.forget(socket_id)
        self.sockets.clear()
        departure, self._departure = self._departure, None
        if departure is not None:
            departure()

    # Dispatch

    def _handle(self, frame: Frame) -> None:
        handler = _HANDLERS.get(frame.op)  # type: ignore[call-overload]  # any int may arrive
        try:
            if handler is None:
                raise SSAError(errno.EINVAL, f"unknown operation {frame.op}")
            if frame.nfds:
                raise SSAError(errno.EINVAL, "requests carry no descriptors in wire version 1")
            if frame.op not in (Op.SOCKET, Op.ACCEPT, Op.STATUS) and frame.socket_id not in self.sockets:
                raise SSAError(
                    errno.EBADF,
                    f"socket {frame.socket_id:#x} is not known to the daemon on this connection",
                )
            handler(self, frame)
        except SSAError as e:
            self._reply(frame, e.errno, e.reason.encode("utf-8"))
        except (struct.error, ValueError) as e:
            self._reply(frame, errno.EINVAL, f"malformed {_name(frame.op)} request: {e}".encode())
        except Exception:
            log.failure("internal error handling {op} from {peer}", op=_name(frame.op), peer=self._who())
            self._reply(frame, errno.ECANCELED, INTERNAL_ERROR.encode())

    def _socket(self, frame: Frame) -> None:
        family, type_, proto = wire.SOCKET_ARGS.unpack(frame.body)
        stream = SocketpairStream.make()
        sock = self.service.open_socket(self._requester(), family, type_, proto, stream)
        self.sockets.add(sock.id)
        self.transport.sendFileDescriptor(stream.app_end)
        self._send(wire.encode_reply(frame, 0, wire.NEW_SOCKET.pack(sock.id), nfds=1))

    def _bind(self, frame: Frame) -> None:
        address, _ = wire.decode_address(frame.body)
        host, port = self.service.bind(frame.socket_id, address)
        self._reply(frame, 0, wire.encode_address(address[0], host, port))

    def _connect(self, frame: Frame) -> None:
        (flags,) = wire.CONNECT_FLAGS.unpack_from(frame.body)
        address, rest = wire.decode_address(frame.body[wire.CONNECT_FLAGS.size :])
        if flags & wire.CONNECT_OPTIONS:
            # Options that waited in the client for this request: set them
            # first, in order, as SETSOCKOPTs would have; the first refused
            # one fails the CONNECT before anything connects.
            for level, name, value in wire.decode_options(rest):
                body = wire.OPTION.pack(level, name) + value
                self._set_option(Frame(Op.SETSOCKOPT, frame.tag, frame.socket_id, 0, body))
        blocking = not flags & wire.CONNECT_NONBLOCKING
        done = self.service.connect(frame.socket_id, address, blocking)
        if not blocking:
            done.addErrback(lambda f: f.trap(SSAError))
            self._reply(frame, errno.EINPROGRESS, b"connection in progress")
            return

        def succeeded(_: object) -> None:
            self._reply(frame, 0)

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, SSAError):
                self._reply(frame, error.errno, error.reason.encode("utf-8"))
            else:
                log.failure("internal error connecting {peer}", failure, peer=self._who())
                self._reply(frame, errno.ECANCELED, INTERNAL_ERROR.encode())

        done.addCallbacks(succeeded, failed)

    def _setsockopt(self, frame: Frame) -> None:
        self._set_option(frame)
        self._reply(frame, 0)

    def _set_option(self, frame: Frame) -> None:
        """
        Set the option of a SETSOCKOPT request (or one a CONNECT carries,
        standing for it), recorded by the router for a move.
        """
        level, name = wire.OPTION.unpack_from(frame.body)
        value = frame.body[wire.OPTION.size :]
        self.service.setsockopt(frame.socket_id, level, name, value)
        if self.router is not None:
            self.router.handled(frame)

    def _getsockopt(self, frame: Frame) -> None:
        level, name = wire.OPTION.unpack_from(frame.body)
        self._reply(frame, 0, self.service.getsockopt(frame.socket_id, level, name))

    def _listen(self, frame: Frame) -> None:
        (backlog,) = wire.BACKLOG.unpack_from(frame.body)
        host, port = self.service.listen(frame.socket_id, backlog)
        family = self.service.lookup(frame.socket_id).family
        self._reply(frame, 0, wire.encode_address(family, host, port))

    def _accept(self, frame: Frame) -> None:
        (flags,) = wire.ACCEPT_FLAGS.unpack_from(frame.body)
        requester = self._requester()
        stream = SocketpairStream.make()
        done = self.service.accept(frame.socket_id, requester, not flags & wire.ACCEPT_NONBLOCKING, stream)
        self._waiting.add(done)

        def delivered(sock: TLSSocket) -> None:
            self._waiting.discard(done)
            if not self._open:
                self.service.close(sock.id)
                return
            self.sockets.add(sock.id)
            assert sock.remote_address is not None
            host, port = sock.remote_address
            self.transport.sendFileDescriptor(stream.app_end)
            body = wire.NEW_SOCKET.pack(sock.id) + wire.encode_address(sock.family, host, port)
            self._send(wire.encode_reply(frame, 0, body, nfds=1))

        def failed(failure: Failure) -> None:
            self._waiting.discard(done)
            error = failure.value
            if isinstance(error, SSAError):
                self._reply(frame, error.errno, error.reason.encode("utf-8"))
            elif not failure.check(CancelledError):
                log.failure("internal error accepting for {peer}", failure, peer=self._who())
                self._reply(frame, errno.ECANCELED, INTERNAL_ERROR.encode())

        done.addCallbacks(delivered, failed)

    def _close(self, frame: Frame) -> None:
        self.sockets.discard(frame.socket_id)
        stopped = self.service.close(frame.socket_id)
        if self.router is not None:
            self.router.forget(frame.socket_id)
        if stopped is None:
            self._reply(frame, 0)
        else:  # a listener: answer once its address is free, as close(2) returns
            stopped.addBoth(lambda _: self._reply(frame, 0))

    def _status(self, frame: Frame) -> None:
        """
        The daemon's live sockets and counters, over every worker: root
        sees every socket, another user only its own (as the kernel says
        who sent the request).
        """
        requester = self._requester()  # who sent this request, not who opened the connection
        uid = None if requester.uid == 0 else requester.uid
        if self.router is None:
            count, done = 1, succeed([status.local_report(self.service, uid)])
        else:
            count, done = self.router.processes, self.router.reports(uid)
        self._waiting.add(done)

        def answer(reports: list[dict]) -> None:
            self._waiting.discard(done)
            self._reply(frame, 0, status.encode(status.combine(reports, count)))

        def failed(failure: Failure) -> None:
            self._waiting.discard(done)
            if not failure.check(CancelledError):
                log.failure("internal error gathering the status for {peer}", failure, peer=self._who())
                self._reply(frame, errno.ECANCELED, INTERNAL_ERROR.encode())

        done.addCallbacks(answer, failed)

    # Output

    def _reply(self, frame: Frame, err: int, payload: bytes = b"") -> None:
        self._send(wire.encode_reply(frame, err, payload))

    def _send(self, data: bytes) -> None:
        if self._open:
            self.transport.write(data)
            # Answer now, not on the reactor's next turn: the application
            # is waiting. A failed write shows on the next read anyway.
            self.transport.doWrite()

    def _requester(self) -> PeerIdentity:
        """
        Who sent the request being handled, as the kernel says
        (C{SCM_CREDENTIALS}), with the program it runs now: not who opened
        the connection, which may have passed it on, changed its user or
        executed another program since.

        @raise SSAError: EACCES when the kernel did not say.
        """
        if self.sender is None:
            raise SSAError(
                errno.EACCES, "the daemon could not learn who sent this request (no SCM_CREDENTIALS)"
            )
        return identity_of(*self.sender)

    def _who(self) -> str:
        return self.peer.describe() if self.peer else "an unknown peer"


_HANDLERS = {
    Op.SOCKET: ControlProtocol._socket,
    Op.BIND: ControlProtocol._bind,
    Op.CONNECT: ControlProtocol._connect,
    Op.SETSOCKOPT: ControlProtocol._setsockopt,
    Op.GETSOCKOPT: ControlProtocol._getsockopt,
    Op.LISTEN: ControlProtocol._listen,
    Op.ACCEPT: ControlProtocol._accept,
    Op.CLOSE: ControlProtocol._close,
    Op.STATUS: ControlProtocol._status,
}


def _name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"operation {op}"


class ControlFactory(Factory):
    """
    Makes a L{ControlProtocol} per application connection.
    """

    noisy = False

    def __init__(self, service: ISocketAPI, router: IRequestRouter | None = None) -> None:
        """
        @param router: with several worker processes, where requests are
            served.
        """
        self.service = service
        self.router = router
        self.budget = RequestBudget()

    def buildProtocol(self, addr: object) -> ControlProtocol:
        """
        A new control connection.
        """
        return ControlProtocol(self.service, router=self.router, budget=self.budget)
