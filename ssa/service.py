"""
The daemon core: the socket table and the socket calls (L{ISocketAPI}),
joining the sans-IO L{TLSSocket} rules to real descriptors, connections
and bridges. Frontends call it; it never parses a wire format.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
from collections import Counter
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from .bridge import Bridge, PlaintextSide
from .connector import INTERNAL_ERROR, ConnectAttempt
from .constants import version_name
from .errors import SSAError
from .interfaces import ISocketAPI, ITLSBackend
from .peer import PeerIdentity
from .policy import Policy
from .sockets import TLSSocket, check_socket_args
from .tlsconfig import TLSSessionInfo
from .tlsprotocol import TLSStreamProtocol

log = Logger()


@dataclass
class SocketEntry:
    """
    A socket and the daemon's resources for it.

    @ivar sock: the socket's rules and state.
    @ivar app_end: the daemon's copy of the application's descriptor.
    @ivar daemon_end: the daemon's end of the socketpair, until a bridge
        adopts it.
    @ivar filler: bytes queued into C{app_end} to keep it unwritable during
        a nonblocking connect; discarded before the bridge starts.
    """

    sock: TLSSocket
    app_end: int
    daemon_end: int | None
    filler: int = 0
    bound: socket.socket | None = None
    attempt: ConnectAttempt | None = None
    bridge: Bridge | None = None
    waiters: list[Deferred] = field(default_factory=list)


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


@implementer(ISocketAPI)
class SocketService:
    """
    Every live socket of this daemon.
    """

    def __init__(self, reactor, backend: ITLSBackend, policy: Policy) -> None:
        self.reactor = reactor
        self.backend = backend
        self.policy = policy
        self.entries: dict[int, SocketEntry] = {}
        self._per_process: Counter[int] = Counter()
        self.counters: Counter[str] = Counter()

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

    def open_socket(self, owner: PeerIdentity, family: int, type_: int, proto: int = 0) -> tuple[TLSSocket, int]:
        """
        C{socket()}: a NEW socket and the application's end of its stream.

        @return: the socket and the descriptor to hand the application.
        """
        check_socket_args(family, type_, proto)
        limit = self.policy.max_sockets_per_client
        if self._per_process[owner.pid] >= limit:
            raise SSAError(
                errno.EMFILE, f"the policy's max-sockets-per-client ({limit}) is reached"
            )
        socket_id = secrets.randbits(64) or 1
        while socket_id in self.entries:
            socket_id = secrets.randbits(64) or 1
        app, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sock = TLSSocket(socket_id, family, owner, self.policy)
        self.entries[socket_id] = SocketEntry(sock, app.detach(), daemon.detach())
        self._per_process[owner.pid] += 1
        self.counters["sockets_opened"] += 1
        return sock, self.entries[socket_id].app_end

    # ISocketAPI

    def bind(self, socket_id: int, address: tuple[int, str, int]) -> tuple[str, int]:
        """
        C{bind()}: bind a real socket now, so that the OS's errno shows.
        """
        entry = self.entry(socket_id)
        sock = entry.sock
        host, port = sock.check_bind(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        net = socket.socket(family, socket.SOCK_STREAM)
        try:
            net.bind((host, port))
        except OSError as e:
            net.close()
            raise sock.fail(e.errno or errno.EINVAL, f"bind to {host}:{port} failed: {e.strerror}") from None
        entry.bound = net
        bound_host, bound_port = net.getsockname()[:2]
        sock.bound(bound_host, bound_port)
        return bound_host, bound_port

    def listen(self, socket_id: int, backlog: int) -> None:
        """
        C{listen()}: the server role checks.
        """
        self.entry(socket_id).sock.check_listen()

    def connect(self, socket_id: int, address: tuple[int, str, int], blocking: bool = True) -> Deferred:
        """
        C{connect()}: start connecting.

        @return: fires with L{None} once connected, or fails with
            L{SSAError}. For a nonblocking connect the caller answers
            EINPROGRESS at once; the outcome is kept for C{SO_ERROR}.
        """
        entry = self.entry(socket_id)
        plan = entry.sock.start_connect(address)
        if not blocking:
            entry.filler = _fill(entry.app_end)
        bind_address = None
        if entry.bound is not None:
            bind_address = entry.sock.bound_address
            entry.bound.close()
            entry.bound = None
        done: Deferred = Deferred()
        entry.waiters.append(done)
        policy = entry.sock.policy
        entry.attempt = ConnectAttempt(
            self.reactor, self.backend, plan, policy.connect_timeout, policy.handshake_timeout,
            lambda protocol, info: self._connected(entry, protocol, info),
            lambda err, reason: self._failed(entry, err, reason),
            bind_address,
        )
        try:
            entry.attempt.start()
        except Exception:
            log.failure("could not start a connection to {host}:{port}", host=plan.host, port=plan.port)
            self._failed(entry, errno.ECANCELED, INTERNAL_ERROR)
        return done

    def setsockopt(self, socket_id: int, level: int, name: int, value: bytes) -> None:
        """
        C{setsockopt()}.
        """
        self.entry(socket_id).sock.set_option(level, name, value)

    def getsockopt(self, socket_id: int, level: int, name: int) -> bytes:
        """
        C{getsockopt()}.
        """
        return self.entry(socket_id).sock.get_option(level, name)

    def close(self, socket_id: int) -> None:
        """
        C{close()}: stop any attempt, close_notify if connected, free all.
        """
        entry = self.entries.pop(socket_id, None)
        if entry is None:
            return
        owner = entry.sock.owner.pid
        self._per_process[owner] -= 1
        if self._per_process[owner] <= 0:
            del self._per_process[owner]
        if entry.attempt is not None:
            entry.attempt.cancel()
        if entry.bridge is not None:
            entry.bridge.close()
        if entry.bound is not None:
            entry.bound.close()
        _close_fd(entry.daemon_end)
        _close_fd(entry.app_end)
        entry.daemon_end = None
        entry.app_end = -1
        entry.sock.close()

    def close_all(self) -> None:
        """
        Close every socket (the daemon is stopping).
        """
        for socket_id in list(self.entries):
            self.close(socket_id)

    # Outcomes

    def _connected(self, entry: SocketEntry, protocol: TLSStreamProtocol, info: TLSSessionInfo) -> None:
        sock = entry.sock
        entry.attempt = None
        try:
            daemon_end = entry.daemon_end
            assert daemon_end is not None
            _discard(daemon_end, entry.filler)
            bridge = Bridge(protocol, entry.app_end, lambda failure: self._ended(entry, failure))
            factory = _PlaintextFactory(bridge)
            self.reactor.adoptStreamConnection(daemon_end, socket.AF_UNIX, factory)
            _close_fd(daemon_end)
            entry.daemon_end = None
            bridge.attach(factory.built)
        except Exception:
            log.failure("could not join {sock} to its connection", sock=sock)
            protocol.transport.abortConnection()
            self._failed(entry, errno.ECANCELED, INTERNAL_ERROR)
            return
        entry.bridge = bridge
        sock.connect_succeeded(info)
        self.counters["connect_ok"] += 1
        log.info(
            "connect ok: {owner} to {host}:{port} sni={sni} {version} {cipher} resumed={resumed}",
            owner=sock.owner.describe(), host=sock.remote_address[0], port=sock.remote_address[1],
            sni=sock.hostname, version=version_name(info.version), cipher=info.cipher,
            resumed=info.resumed,
        )
        self._settle(entry, None)

    def _failed(self, entry: SocketEntry, err: int, reason: str) -> None:
        sock = entry.sock
        entry.attempt = None
        failure = sock.connect_failed(err, reason)
        if entry.daemon_end is not None:
            try:
                _discard(entry.daemon_end, entry.filler)
                _shutdown(entry.daemon_end)
            except OSError:
                pass
        self.counters[f"connect_failed_{errno.errorcode.get(err, err)}"] += 1
        log.info(
            "connect failed: {owner} to {address} sni={sni}: {errname} {reason}",
            owner=sock.owner.describe(), address=sock.remote_address, sni=sock.hostname,
            errname=errno.errorcode.get(err, str(err)), reason=reason,
        )
        self._settle(entry, failure)

    def _ended(self, entry: SocketEntry, failure: BaseException | None) -> None:
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


class _PlaintextFactory(Factory):
    noisy = False

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.built: PlaintextSide | None = None

    def buildProtocol(self, addr: object) -> PlaintextSide:
        self.built = PlaintextSide(self.bridge)
        return self.built


def _fill(app_end: int) -> int:
    """
    Fill the application's sending queue so that its descriptor is not
    writable until the daemon drains it (a nonblocking connect's signal).
    """
    sock = socket.socket(fileno=app_end)
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


def _discard(daemon_end: int, count: int) -> None:
    """
    Read and drop the C{count} filler bytes queued by L{_fill}.
    """
    sock = socket.socket(fileno=daemon_end)
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


def _shutdown(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()
