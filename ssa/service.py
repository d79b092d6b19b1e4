"""
The daemon core: the socket table and the socket calls (L{ISocketAPI}),
joining the sans-IO L{TLSSocket} rules to connections, listeners and
bridges. Frontends call it, each socket with the plaintext stream its
frontend makes (L{IPlaintextStream}); it never parses a wire format and
never makes or signals an application's descriptor itself.
"""

from __future__ import annotations

import errno
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import netoptions, outcomes
from .bridge import Bridge
from .connector import ConnectAttempt
from .constants import IPPROTO_TLS, SocketState
from .errors import INTERNAL_ERROR, SSAError
from .interfaces import IMetrics, IPlaintextStream, ISocketAPI, ITLSBackend
from .limits import SocketCounts, open_file_limit
from .listener import Listener, PendingConnection
from .metrics import PrometheusMetrics, reason_class
from .peer import PeerIdentity
from .plaintext import PlaintextSocket
from .policy import Policy
from .profiles import PolicySet
from .sessions import SessionCache, session_key
from .sockets import TLSSocket, check_socket_args
from .tlsconfig import TLSSessionInfo
from .tlsprotocol import TLSStreamProtocol
from .twisted_internals import TakeoverError, take_socket

log = Logger()


@dataclass
class _AcceptWaiter:
    """
    A blocked C{accept()}: who asked and the stream its socket will get.
    """

    waiter: Deferred
    owner: PeerIdentity
    plaintext: IPlaintextStream


def _closing(failure: Failure, plaintext: IPlaintextStream) -> Failure:
    plaintext.close()
    return failure


@dataclass
class SocketEntry:
    """
    A socket and the daemon's resources for it.

    @ivar sock: the socket's rules and state.
    @ivar plaintext: its stream to the application, as its frontend makes
        and signals it.
    @ivar joining: a connection whose handshake is done, waiting (paused)
        for the application's side of the stream before its bridge starts.
    @ivar session_key: where this client connection's TLS session goes in
        the daemon's L{SessionCache}, or L{None} if it is not kept.
    @ivar session_since: when its handshake finished (the session's TTL
        counts from then).
    @ivar session_kept: whether its session is stored already.
    """

    sock: TLSSocket
    plaintext: IPlaintextStream
    bound: socket.socket | None = None
    attempt: ConnectAttempt | None = None
    bridge: Bridge | None = None
    joining: TLSStreamProtocol | None = None
    waiters: list[Deferred] = field(default_factory=list)
    listener: Listener | None = None
    accept_waiters: list[_AcceptWaiter] = field(default_factory=list)
    session_key: object | None = None
    session_since: float = 0.0
    session_kept: bool = False
    created: float = 0.0
    started: float = 0.0
    active: bool = False


@implementer(ISocketAPI)
class SocketService:
    """
    Every live socket of this daemon.
    """

    def __init__(
        self, reactor, backend: ITLSBackend, policies: PolicySet | Policy, worker_index: int = 0,
        metrics: IMetrics | None = None,
    ) -> None:
        """
        @param policies: the administrator's policy: a loaded file (defaults
            and per-application profiles) or one policy for everybody.
        @param worker_index: which of the daemon's worker processes this
            is; it is the top byte of every socket id made here, so any
            worker can tell which one serves a socket (L{worker_of}).
        @param metrics: where connections are counted (default: a new
            L{PrometheusMetrics}).
        """
        if not 0 <= worker_index < 256:
            raise ValueError(f"worker index {worker_index} is not in 0..255")
        self.worker_index = worker_index
        self.reactor = reactor
        self.backend = backend
        if isinstance(policies, Policy):
            policies = PolicySet(default=policies)
        self.policies = policies
        self.entries: dict[int, SocketEntry] = {}
        self.counts = SocketCounts()
        self.sessions = SessionCache()
        self.metrics: IMetrics = metrics if metrics is not None else PrometheusMetrics()

    # Table

    def entry(self, socket_id: int) -> SocketEntry:
        """
        Look a socket up.

        @raise SSAError: EBADF, if the daemon does not know it.
        """
        try:
            return self.entries[socket_id]
        except KeyError:
            raise SSAError(errno.EBADF, f"socket {socket_id:#x} is not known to the daemon") from None

    def lookup(self, socket_id: int) -> TLSSocket:
        """
        The socket C{socket_id}, or EBADF.
        """
        return self.entry(socket_id).sock

    def open_socket(
        self, owner: PeerIdentity, family: int, type_: int, proto: int, plaintext: IPlaintextStream
    ) -> TLSSocket:
        """
        C{socket()}: a NEW socket with its plaintext stream (which this
        service owns from now on, also if it refuses).
        """
        try:
            check_socket_args(family, type_, proto)
            policy = self.policies.for_peer(owner)
            self.counts.admit(
                owner.pid, owner.uid, policy.max_sockets_per_client, policy.max_sockets_per_user,
                open_file_limit(),
            )
        except SSAError:
            plaintext.close()
            raise
        socket_id = self._new_socket_id()
        sock = TLSSocket(socket_id, family, owner, policy)
        sock.lookup_context = self._context_socket
        self.entries[socket_id] = SocketEntry(sock, plaintext, created=time.monotonic())
        self.counts.add(owner.pid, owner.uid)
        return sock

    def _new_socket_id(self) -> int:
        """
        An unused, unguessable socket id whose top byte is this worker's
        index.
        """
        while True:
            socket_id = (self.worker_index << 56) | secrets.randbits(56)
            if socket_id and socket_id not in self.entries:
                return socket_id

    @staticmethod
    def worker_of(socket_id: int) -> int:
        """
        The index of the worker process that serves C{socket_id}.
        """
        return (socket_id >> 56) & 0xFF

    def release_new_socket(self, socket_id: int) -> SocketEntry:
        """
        Take a NEW socket out of the table without closing anything: it is
        moving to another worker process, which gets its descriptors and
        makes it again with L{adopt_new_socket}.

        @return: its entry; the caller now owns its C{plaintext} and
            C{bound}.
        @raise SSAError: EBADF if unknown; EINVAL if it is not NEW.
        """
        entry = self.entry(socket_id)
        if entry.sock.state is not SocketState.NEW:
            raise SSAError(errno.EINVAL, f"socket {socket_id:#x} is not NEW and cannot move")
        del self.entries[socket_id]
        self.counts.remove(entry.sock.owner.pid, entry.sock.owner.uid)
        return entry

    def adopt_new_socket(
        self, owner: PeerIdentity, socket_id: int, family: int, plaintext: IPlaintextStream,
        bound: socket.socket | None = None,
    ) -> TLSSocket:
        """
        Make a NEW socket that another worker process released (see
        L{release_new_socket}), keeping its id and descriptors; it gets
        this worker's policy for C{owner}, and the caller replays its
        options. It counts towards C{max-sockets-per-client} and
        C{max-sockets-per-user} here, but is not refused for them: it
        exists already.

        @param bound: its bound network socket, if it was bound.
        """
        if socket_id in self.entries:
            raise ValueError(f"socket {socket_id:#x} exists already")
        sock = TLSSocket(socket_id, family, owner, self.policies.for_peer(owner))
        sock.lookup_context = self._context_socket
        entry = SocketEntry(sock, plaintext, bound=bound, created=time.monotonic())
        if bound is not None:
            host, port = bound.getsockname()[:2]
            sock.bound(host, port)
        self.entries[socket_id] = entry
        self.counts.add(owner.pid, owner.uid)
        return sock

    # ISocketAPI

    def bind(self, socket_id: int, address: tuple[int, str, int]) -> tuple[str, int]:
        """
        C{bind()}: bind a real socket now, so that the OS's errno shows.
        """
        entry = self.entry(socket_id)
        sock = entry.sock
        host, port = sock.check_bind(address)
        entry.bound = _bound_socket(sock, host, port)
        bound_host, bound_port = entry.bound.getsockname()[:2]
        sock.bound(bound_host, bound_port)
        return bound_host, bound_port

    def listen(self, socket_id: int, backlog: int) -> tuple[str, int]:
        """
        C{listen()}: listen on the bound address (or an ephemeral port on
        every address) and run server handshakes for accept().

        @return: the address listened on.
        """
        entry = self.entry(socket_id)
        sock = entry.sock
        config = sock.check_listen()
        if entry.bound is None:
            wildcard = "::" if sock.family == socket.AF_INET6 else "0.0.0.0"
            entry.bound = _bound_socket(sock, wildcard, 0)
        listener = Listener(
            self.reactor, self.backend, config, backlog, sock.policy.handshake_timeout,
            on_ready=lambda: self._accept_ready(entry),
            on_unready=entry.plaintext.connection_taken,
        )
        listener.metrics = self.metrics
        try:
            host, port = listener.start(entry.bound)
        except OSError as e:
            raise sock.fail(e.errno or errno.EINVAL, f"listen failed: {e.strerror}") from None
        finally:
            entry.bound = None
        entry.listener = listener
        sock.listening(host, port)
        log.info("listening: {owner} on {host}:{port}", owner=sock.owner.describe(), host=host, port=port)
        return host, port

    def accept(
        self, listener_id: int, owner: PeerIdentity, blocking: bool, plaintext: IPlaintextStream
    ) -> Deferred:
        """
        C{accept()}: the oldest connection whose handshake succeeded.

        @param plaintext: the new socket's stream, owned by this service
            from now on (closed if nothing is accepted).
        @return: fires with the new socket; for a nonblocking accept with
            none ready, raises EAGAIN at once.
        """
        try:
            entry = self.entry(listener_id)
            sock = entry.sock
            if sock.owner.uid != owner.uid:
                raise SSAError(errno.EBADF, f"socket {listener_id:#x} belongs to another user")
            if sock.state is not SocketState.LISTENING or entry.listener is None:
                raise sock.fail(errno.EINVAL, "accept: the socket is not listening")
            pending = entry.listener.take()
            if pending is None and not blocking:
                raise SSAError(errno.EAGAIN, "accept: no connection is ready")
        except SSAError:
            plaintext.close()
            raise
        if pending is not None:
            entry.plaintext.connection_taken()
            return succeed(self._deliver(entry, pending, owner, plaintext))
        waiter: Deferred = Deferred()
        waiter.addErrback(_closing, plaintext)
        entry.accept_waiters.append(_AcceptWaiter(waiter, owner, plaintext))
        return waiter

    def connect(self, socket_id: int, address: tuple[int, str, int], blocking: bool = True) -> Deferred:
        """
        C{connect()}: start connecting.

        @return: fires with L{None} once connected, or fails with
            L{SSAError}. For a nonblocking connect the caller answers
            EINPROGRESS at once; the outcome is kept for C{SO_ERROR}.
        """
        entry = self.entry(socket_id)
        plan = entry.sock.start_connect(address)
        entry.plaintext.connecting(blocking)
        bind_address = None
        if entry.bound is not None:
            bind_address = entry.sock.bound_address
            entry.bound.close()
            entry.bound = None
        done: Deferred = Deferred()
        entry.waiters.append(done)
        entry.started = time.monotonic()
        policy = entry.sock.policy
        offered = None
        if entry.sock.resumes_sessions:
            entry.session_key = session_key(entry.sock.owner, plan)
            offered = self.sessions.take(entry.session_key, self.reactor.seconds())
        entry.attempt = ConnectAttempt(
            self.reactor, self.backend, plan, policy.connect_timeout, policy.handshake_timeout,
            lambda protocol, info: self._connected(entry, protocol, info),
            lambda err, reason: self._failed(entry, err, reason),
            bind_address,
            offered,
        )
        try:
            entry.attempt.start()
        except Exception:
            log.failure("could not start a connection to {host}:{port}", host=plan.host, port=plan.port)
            self._failed(entry, errno.ECANCELED, INTERNAL_ERROR)
        return done

    def setsockopt(self, socket_id: int, level: int, name: int, value: bytes) -> None:
        """
        C{setsockopt()}; options of the network side apply at once to a
        live connection.
        """
        entry = self.entry(socket_id)
        entry.sock.set_option(level, name, value)
        if entry.bridge is not None and level != IPPROTO_TLS:
            self._apply_network_options(entry)

    def getsockopt(self, socket_id: int, level: int, name: int) -> bytes:
        """
        C{getsockopt()}.
        """
        return self.entry(socket_id).sock.get_option(level, name)

    def close(self, socket_id: int, abort: bool = False) -> Deferred | None:
        """
        C{close()}: stop any attempt, close_notify if connected, free all.

        @param abort: the application did not close the socket but is gone
            (its control connection ended without CLOSE), or the daemon is
            stopping: a connection whose stream the application had not
            ended is reset instead (no close_notify), and the application
            reads ECONNRESET, so that neither side takes a cut stream for a
            complete one.
        @return: for a listening socket, fires once its address is free.
        """
        entry = self.entries.pop(socket_id, None)
        if entry is None:
            return None
        stopped = None
        self.counts.remove(entry.sock.owner.pid, entry.sock.owner.uid)
        if entry.attempt is not None:
            entry.attempt.cancel()
        if entry.bridge is not None:
            self._keep_session(entry)
            if abort:
                entry.bridge.abort()
            else:
                entry.bridge.close()
        if entry.listener is not None:
            stopped = entry.listener.close()
            waiters, entry.accept_waiters = entry.accept_waiters, []
            for waiting in waiters:
                if not waiting.waiter.called:
                    waiting.waiter.errback(SSAError(errno.EBADF, "the listening socket was closed"))
        if entry.joining is not None:
            entry.joining.transport.abortConnection()
            entry.joining = None
        if entry.bound is not None:
            entry.bound.close()
        entry.plaintext.close()
        entry.sock.close()
        return stopped

    def _context_socket(self, socket_id: int) -> TLSSocket | None:
        entry = self.entries.get(socket_id)
        return None if entry is None else entry.sock

    def reload(self, policies: PolicySet) -> int:
        """
        Adopt a new policy: sockets opened from now on get it; live sockets
        and connections keep the one they were opened under.

        @return: the new policy generation.
        """
        generation = self.policies.default.generation + 1
        self.policies = policies.with_generation(generation)
        return generation

    def close_all(self) -> None:
        """
        Close every socket (the daemon is stopping).
        """
        for socket_id in list(self.entries):
            self.close(socket_id, abort=True)

    # Outcomes

    def _connected(self, entry: SocketEntry, protocol: TLSStreamProtocol, info: TLSSessionInfo) -> None:
        sock = entry.sock
        entry.attempt = None

        def start(plaintext: PlaintextSocket) -> None:
            self._join(entry, protocol, plaintext)
            self._apply_network_options(entry)
            self._activate(entry)

        try:
            self._when_plaintext(entry, protocol, start)
        except Exception:
            log.failure("could not join {sock} to its connection", sock=sock)
            protocol.transport.abortConnection()
            self._failed(entry, errno.ECANCELED, INTERNAL_ERROR)
            return
        sock.connect_succeeded(info)
        entry.session_since = self.reactor.seconds()
        self.metrics.connection("client", "ok", None, time.monotonic() - entry.started, info.resumed)
        outcomes.connect_ok(sock, info)
        self._settle(entry, None)

    def _when_plaintext(
        self, entry: SocketEntry, protocol: TLSStreamProtocol, start: Callable[[PlaintextSocket], None]
    ) -> None:
        """
        Call C{start} with the socket's plaintext stream once its frontend
        has it (L{IPlaintextStream.connected}): at once, raising what
        C{start} raises, or later, with the TLS connection paused until
        then and reset if the stream never comes.
        """
        stream = entry.plaintext.connected()
        now: list[object] = []
        waiting = False

        def ready(plaintext: PlaintextSocket) -> None:
            if not waiting:
                now.append(plaintext)
            elif self.entries.get(entry.sock.id) is not entry or entry.joining is not protocol:
                plaintext.sock.close()  # the socket was closed meanwhile
            else:
                entry.joining = None
                try:
                    start(plaintext)
                except Exception as e:
                    if isinstance(e, TakeoverError):
                        log.info("{sock}: the connection ended before its plaintext stream came", sock=entry.sock)
                    else:
                        log.failure("could not join {sock} to its connection", sock=entry.sock)
                    plaintext.sock.close()
                    protocol.transport.abortConnection()
                    self._ended(entry, e)

        def failed(failure: Failure) -> None:
            if not waiting:
                now.append(failure)
            elif entry.joining is protocol:
                entry.joining = None
                log.info("{sock}: the application's plaintext stream never came: {why}", sock=entry.sock,
                         why=failure.getErrorMessage())
                protocol.transport.abortConnection()
                self._ended(entry, failure.value)

        stream.addCallbacks(ready, failed)
        if not now:
            waiting = True
            entry.joining = protocol
            protocol.transport.pauseProducing()
            return
        result = now[0]
        if isinstance(result, Failure):
            result.raiseException()
        assert isinstance(result, PlaintextSocket)
        try:
            start(result)
        except BaseException:
            result.sock.close()
            raise

    def _join(
        self, entry: SocketEntry, protocol: TLSStreamProtocol, plaintext: PlaintextSocket,
        received: bytes = b"", peer_closed: bool = False,
    ) -> Bridge:
        """
        Start the bridge between C{protocol}'s connection and the socket's
        plaintext stream; the bridge takes over both sockets.

        @param received: data from the peer received before the bridge.
        @param peer_closed: whether the peer's close_notify came before.
        @raise TakeoverError: the connection is already closing.
        """
        tcp, unsent = take_socket(protocol.transport)
        # We may be inside the protocol's read that completed the handshake
        # (a blocked accept() or connect() is answered at once): it must not
        # read the engine after us, or what came with the handshake's last
        # flight would be lost (the bridge reads it, in start()).
        protocol.detach()

        def on_end(failure: BaseException | None) -> None:
            self._ended(entry, failure)

        keep_session = None
        if entry.session_key is not None:
            def keep_session() -> None:
                self._keep_session(entry)
        bridge = Bridge(self.reactor, protocol.engine, tcp, plaintext, on_end, unsent, keep_session)
        entry.bridge = bridge
        bridge.start(received, peer_closed)
        return bridge

    @staticmethod
    def _apply_network_options(entry: SocketEntry) -> None:
        """
        Set the socket's SOL_SOCKET/IPPROTO_TCP options on its connection.
        """
        if entry.bridge is None or not entry.sock.network_options:
            return
        try:
            netoptions.apply(entry.bridge.tcp, entry.sock.network_options)
        except OSError as e:
            log.info("could not set network options on {sock}: {error}", sock=entry.sock, error=e)

    def _accept_ready(self, entry: SocketEntry) -> None:
        """
        A connection is ready: hand it to a waiting accept(), or tell the
        listening socket's stream (one signal per ready connection).
        """
        listener = entry.listener
        assert listener is not None
        while entry.accept_waiters:
            waiting = entry.accept_waiters.pop(0)
            if waiting.waiter.called:
                continue
            pending = listener.take()
            if pending is None:
                entry.accept_waiters.insert(0, waiting)
                return
            try:
                accepted = self._deliver(entry, pending, waiting.owner, waiting.plaintext)
            except SSAError as e:
                waiting.waiter.errback(e)
            else:
                waiting.waiter.callback(accepted)
            return
        entry.plaintext.connection_ready()

    def _deliver(
        self, entry: SocketEntry, pending: PendingConnection, owner: PeerIdentity, plaintext: IPlaintextStream
    ) -> TLSSocket:
        """
        Make a CONNECTED socket of a ready connection.
        """
        protocol = pending.protocol
        assert protocol is not None and pending.session is not None
        try:
            sock = self.open_socket(owner, entry.sock.family, socket.SOCK_STREAM, 0, plaintext)
        except SSAError:
            protocol.transport.abortConnection()
            raise
        accepted = self.entries[sock.id]
        sock.accepted_from(entry.sock, pending.peer, pending.session)

        def start(stream: PlaintextSocket) -> None:
            self._join(accepted, protocol, stream, b"".join(pending.buffered), pending.peer_closed)
            self._apply_network_options(accepted)
            self._activate(accepted)

        try:
            self._when_plaintext(accepted, protocol, start)
        except TakeoverError:
            self.close(sock.id)
            raise SSAError(errno.ECONNABORTED, "accept: the connection was lost before it was accepted") from None
        info = pending.session
        self.metrics.connection("server", "ok", None, None, info.resumed)
        outcomes.accept_ok(sock, owner, pending.peer, info)
        return sock

    def _failed(self, entry: SocketEntry, err: int, reason: str) -> None:
        sock = entry.sock
        entry.attempt = None
        failure = sock.connect_failed(err, reason)
        entry.plaintext.connect_failed()
        self.metrics.connection("client", "failed", reason_class(err, reason), None, False)
        outcomes.connect_failed(sock, err, reason)
        self._settle(entry, failure)

    def _keep_session(self, entry: SocketEntry) -> None:
        """
        Store the connection's session for later connections of the same
        application to the same server with the same settings: once, when
        the peer's first data arrives (TLS 1.3 tickets come before it), or
        when the connection ends if no data came. Only once because taking
        a session can cost as much as a handshake (Python's C{ssl} copies
        it through DER, peer certificates included).
        """
        if entry.session_key is None or entry.bridge is None or entry.session_kept:
            return
        # Optional for third-party engines written before it existed.
        get_session = getattr(entry.bridge.engine, "session", None)
        if get_session is None:
            return
        try:
            session = get_session()
        except Exception:
            log.failure("the {backend} backend could not give a session", backend=self.backend.name)
            return
        entry.session_kept = session is not None
        self.sessions.put(entry.session_key, session, entry.session_since, entry.sock.session_ttl)

    def _activate(self, entry: SocketEntry) -> None:
        entry.active = True
        self.metrics.active(1)

    def _ended(self, entry: SocketEntry, failure: BaseException | None) -> None:
        if entry.active:
            entry.active = False
            self.metrics.active(-1)
            if entry.bridge is not None:
                self.metrics.transferred("in", entry.bridge.bytes_in)
                self.metrics.transferred("out", entry.bridge.bytes_out)
        if failure is None:
            self._keep_session(entry)
        entry.sock.disconnected()
        if failure is not None:
            entry.sock.last_error = str(failure.args[0]) if failure.args else repr(failure)

    @staticmethod
    def _settle(entry: SocketEntry, failure: SSAError | None) -> None:
        waiters, entry.waiters = entry.waiters, []
        for waiter in waiters:
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)


def _bound_socket(sock: TLSSocket, host: str, port: int) -> socket.socket:
    """
    A TCP socket bound to C{(host, port)}, or the OS's errno as SSAError.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    net = socket.socket(family, socket.SOCK_STREAM)
    net.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        net.bind((host, port))
    except OSError as e:
        net.close()
        raise sock.fail(e.errno or errno.EINVAL, f"bind to {host}:{port} failed: {e.strerror}") from None
    return net
