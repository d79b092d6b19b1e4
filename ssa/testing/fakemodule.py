"""
A simulated SSA kernel module on C{NETLINK_USERSOCK}, for testing the
netlink frontend without root or the real module (C{research/netlink.md}
section 7).

It plays the kernel's part step by step on real loopback TCP sockets:
each L{FakeTLSSocket} owns the application's real TCP socket, sends the
module's notifications, waits as the module does (10 s, 180 s for a
blocking connect, no limit for accept) with one completion per socket,
and redirects the application's connection to the daemon's plaintext port.
It validates the daemon's messages as the module's policy does and acks
them like the kernel. What it cannot reproduce: interception of unmodified
programs, the empty poll mask, signals, and the kernel's own id reuse.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ..constants import IPPROTO_TLS, TLS_ID
from ..frontends.loopback import ReadinessWaiter
from ..netlink import wire
from ..netlink.transport import NETLINK_USERSOCK, NetlinkAddress, NetlinkPort
from ..netlink.wire import Ack, Command, Message, NetlinkDecodeError

log = Logger()
_COMMANDS = frozenset(int(c) for c in Command)

RESPONSE_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 180.0
#: Option names whose value the module turns into an absolute path.
PATH_OPTIONS = (87, 88, 89)


class FakeModule:
    """
    The simulated module: a USERSOCK socket that speaks to one daemon.

    @ivar received: every message of the SSA family the daemon sent, in
        order, decoded.
    @ivar rejected: C{(datagram, reason)} of each the module refused.
    @ivar acks: C{(seq, error)} of each ack the module sent.
    """

    def __init__(self, reactor, daemon_pid: int, daemon_port: int = 0, family_id: int = 0x1D,
                 loopback: dict[int, str] | None = None) -> None:
        """
        @param daemon_pid: the daemon's netlink port id.
        @param daemon_port: the daemon's plaintext TCP port on loopback.
        """
        self.reactor = reactor
        self.family_id = family_id
        self.daemon_port = daemon_port
        self.loopback = loopback or {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
        self.port = NetlinkPort(reactor, NetlinkAddress(NETLINK_USERSOCK, 0, daemon_pid, False), self._datagram)
        self.pid = self.port.pid
        self.sockets: dict[int, FakeTLSSocket] = {}
        self.received: list[Message] = []
        self.rejected: list[tuple[bytes, str]] = []
        self.acks: list[tuple[int, int]] = []
        self.port.startReading()

    def close(self) -> None:
        """
        Unload: close every socket and the netlink socket.
        """
        for sock in list(self.sockets.values()):
            sock.app.close()
        self.sockets.clear()
        self.port.close()

    # Application calls

    def socket(self, family: int = socket.AF_INET) -> Deferred:
        """
        C{socket(family, SOCK_STREAM, IPPROTO_TLS)}.

        @return: fires with a L{FakeTLSSocket}; fails with C{OSError}
            ENOTCONN when the daemon is absent or silent. The daemon's
            answer is ignored, as the module ignores it.
        """
        sock = FakeTLSSocket(self, family, socket.socket(family, socket.SOCK_STREAM))
        if not sock.notify(Command.SOCKET_NOTIFY, family=family):
            sock.forget()
            return _failed(errno.ENOTCONN, "socket: the daemon is not there")

        def answered(_: object) -> FakeTLSSocket:
            return sock

        def timed_out(failure):
            sock.forget()
            return failure

        return sock.wait(RESPONSE_TIMEOUT, errno.ENOTCONN).addCallbacks(answered, timed_out)

    def new_id(self) -> int:
        """
        A fresh socket id (the module's pointer XOR a random u64).
        """
        while True:
            socket_id = secrets.randbits(64)
            if socket_id not in self.sockets:
                return socket_id

    def send(self, message: Message) -> bool:
        """
        Send a module-to-daemon message; say whether it was delivered.
        """
        return self.port.send(wire.encode(self.family_id, message))

    # Daemon messages

    def _datagram(self, data: bytes, sender: int) -> None:
        try:
            parts = wire.split(data)
        except NetlinkDecodeError as e:
            self.rejected.append((data, str(e)))
            return
        for kind, flags, seq, pid, body in parts:
            raw = wire.NLMSGHDR.pack(wire.NLMSGHDR.size + len(body), kind, flags, seq, pid) + body
            if not flags & wire.NLM_F_REQUEST:
                self.rejected.append((raw, "no NLM_F_REQUEST: the kernel skips it"))
                continue
            error = self._handle(kind, flags, seq, pid, body, raw, sender)
            if error is not None and (flags & wire.NLM_F_ACK or error):
                self.acks.append((seq, error))
                self.port.send(wire.encode_ack(error, raw), sender)

    def _handle(self, kind: int, flags: int, seq: int, pid: int, body: bytes, raw: bytes, sender: int) -> int | None:
        if kind == wire.GENL_ID_CTRL:
            name = wire.getfamily_name(body)
            if name != wire.FAMILY_NAME:
                return -errno.ENOENT
            self.port.send(wire.encode_newfamily(self.family_id, name, wire.FAMILY_VERSION, 11,
                                                 {"notify": self.family_id + 1}, seq), sender)
            return None
        if len(body) >= wire.GENLMSGHDR.size and kind == self.family_id and body[0] not in _COMMANDS:
            self.rejected.append((raw, f"unknown command {body[0]}"))
            return -errno.EOPNOTSUPP
        try:
            message = wire.decode(self.family_id, kind, flags, seq, pid, body)
        except NetlinkDecodeError as e:
            self.rejected.append((raw, str(e)))
            return -errno.EINVAL
        if isinstance(message, Ack):
            return None
        self.received.append(message)
        if message.command in wire.REQUESTS:
            self.rejected.append((raw, f"{message.command.name} goes from the module to the daemon"))
            return -errno.EINVAL
        sock = self.sockets.get(message.socket_id)
        if sock is None:
            return -errno.EINVAL
        return sock.reply(message)


class FakeTLSSocket:
    """
    One application socket of protocol C{IPPROTO_TLS}, as the module
    keeps it.

    @ivar app: the application's real TCP socket.
    @ivar internal: its loopback address once bound.
    @ivar connected: for a nonblocking connect, fires with the errno of
        the loopback connect the daemon's HANDSHAKE_RETURN triggered.
    """

    def __init__(self, module: FakeModule, family: int, app: socket.socket, socket_id: int | None = None) -> None:
        self.module = module
        self.family = family
        self.app = app
        self.id = module.new_id() if socket_id is None else socket_id
        module.sockets[self.id] = self
        self.internal: wire.Address | None = None
        self.external: wire.Address | None = None
        self.async_connect = False
        self.listen_error = False
        self.connected: Deferred = Deferred()
        self._done = 0
        self._response = 0
        self._data = b""
        self._waiter: Deferred | None = None

    def forget(self) -> None:
        """
        Drop the socket from the module's table.
        """
        self.module.sockets.pop(self.id, None)

    def notify(self, command: Command, **fields) -> bool:
        """
        Send a notification about this socket.
        """
        return self.module.send(Message(command, self.id, **fields))

    def wait(self, timeout: float | None, timeout_errno: int) -> Deferred:
        """
        Wait for this socket's one completion; fires with the response,
        or fails with C{OSError(timeout_errno)}. A completion that came
        while nobody waited is used at once (the module's stale
        completions).
        """
        if self._done:
            self._done -= 1
            return succeed(self._response)
        waiter: Deferred = Deferred()
        self._waiter = waiter
        if timeout is not None:
            call = self.module.reactor.callLater(timeout, self._time_out, waiter, timeout_errno)
            waiter.addBoth(_cancelling(call))
        return waiter

    def _time_out(self, waiter: Deferred, err: int) -> None:
        if self._waiter is waiter:
            self._waiter = None
            waiter.errback(OSError(err, os.strerror(err)))

    def _complete(self, response: int, data: bytes = b"") -> None:
        self._response, self._data = response, data
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            self._done += 1
        else:
            waiter.callback(response)

    def reply(self, message: Message) -> int:
        """
        The daemon answered about this socket; return the ack's errno.
        """
        if message.command is Command.RETURN:
            self._complete(message.result or 0)
        elif message.command is Command.DATA_RETURN:
            self._complete(0, message.value or b"")
        elif message.command is Command.LISTEN_ERR:
            self.listen_error = True
        elif self.async_connect:  # HANDSHAKE_RETURN: start the loopback connect whatever it says
            self.app.setblocking(False)
            result = self.app.connect_ex(self._daemon())
            self.async_connect = False
            self.connected.callback(result)
            return -errno.EINPROGRESS  # what the module's handler returns, and the kernel NACKs with
        else:
            self._complete(message.result or 0)
        return 0

    def _daemon(self) -> tuple[str, int]:
        return self.module.loopback[self.family], self.module.daemon_port

    def _bind_loopback(self) -> None:
        if self.internal is None:
            self.app.bind((self.module.loopback[self.family], 0))
            host, port = self.app.getsockname()[:2]
            self.internal = (self.family, host, port)

    def _call(self, command: Command, timeout: float | None = RESPONSE_TIMEOUT, timeout_errno: int = errno.ENOTCONN,
              **fields) -> Deferred:
        """
        Notify and wait; fire with the response if 0, else fail with it.
        """
        if not self.notify(command, **fields):
            return _failed(errno.ENOTCONN, f"{command.name}: the daemon is not there")

        def check(response: int) -> int:
            if response:
                raise OSError(-response, os.strerror(-response))
            return response

        return self.wait(timeout, timeout_errno).addCallback(check)

    # The socket calls

    def setsockopt(self, level: int, name: int, value: bytes) -> Deferred:
        """
        C{setsockopt}: paths made absolute for 87-89; other levels are
        also set on the application's TCP socket.
        """
        if not value:
            return _failed(errno.EINVAL, "setsockopt: no value")
        if level == IPPROTO_TLS and name in PATH_OPTIONS and value[:1] not in (b"/", b"-"):
            value = os.fsencode(os.getcwd()) + b"/" + value.split(b"\0")[0] + b"\0"

        def mirror(_: object) -> None:
            if level != IPPROTO_TLS:
                self.app.setsockopt(level, name, value)

        return self._call(Command.SETSOCKOPT_NOTIFY, level=level, name=name, value=value).addCallback(mirror)

    def getsockopt(self, level: int, name: int, size: int = 4096) -> Deferred:
        """
        C{getsockopt}: fires with at most C{size} bytes.
        """
        if level != IPPROTO_TLS:
            return succeed(self.app.getsockopt(level, name, size))
        if name == TLS_ID:
            return succeed(wire._U64.pack(self.id))
        return self._call(Command.GETSOCKOPT_NOTIFY, level=level, name=name).addCallback(
            lambda _: self._data[:size])

    def bind(self, address: wire.Address) -> Deferred:
        """
        C{bind}: the application's socket is bound to loopback, the
        daemon's to C{address}.
        """
        self._bind_loopback()

        def bound(_: object) -> None:
            self.external = address

        return self._call(Command.BIND_NOTIFY, internal=self.internal, external=address).addCallback(bound)

    def connect(self, address: wire.Address, blocking: bool = True) -> Deferred:
        """
        C{connect}: fires once the application's socket is connected to
        the daemon (blocking) or with the daemon's answer, C{-EINPROGRESS}
        expected (nonblocking; then L{connected} fires later).
        """
        self._bind_loopback()
        if blocking:
            def redirect(_: object) -> None:
                self.app.connect(self._daemon())

            return self._call(Command.CONNECT_NOTIFY, HANDSHAKE_TIMEOUT, internal=self.internal,
                              remote=address, blocking=True).addCallback(redirect)
        self.async_connect = True
        if not self.notify(Command.CONNECT_NOTIFY, internal=self.internal, remote=address, blocking=False):
            return _failed(errno.ENOTCONN, "connect: the daemon is not there")
        return self.wait(RESPONSE_TIMEOUT, errno.ENOTCONN)

    def listen(self, backlog: int = 16) -> Deferred:
        """
        C{listen}: the daemon listens on the external address, the
        application's socket on its loopback address.
        """
        self._bind_loopback()

        def listening(_: object) -> None:
            self.app.listen(backlog)
            self.app.setblocking(False)

        return self._call(Command.LISTEN_NOTIFY, timeout_errno=errno.ETIMEDOUT, internal=self.internal,
                          external=self.external).addCallback(listening)

    def accept(self) -> Deferred:
        """
        C{accept}: the next loopback connection the daemon made, announced
        with ACCEPT_NOTIFY; fires with C{(FakeTLSSocket, peer address)}.
        """
        if self.listen_error:
            return _failed(errno.EBADFD, "accept: the daemon's listener failed")
        return _readable(self.module.reactor, self.app).addCallback(lambda _: self._accepted())

    def _accepted(self) -> Deferred:
        conn, peer = self.app.accept()
        conn.setblocking(True)
        new = FakeTLSSocket(self.module, self.family, conn)
        new.internal = (self.family, peer[0], peer[1])

        def done(_: object):
            return new, peer

        def failed(failure):
            new.close()
            return failure

        return new._call(Command.ACCEPT_NOTIFY, None, internal=new.internal).addCallbacks(done, failed)

    def close(self) -> None:
        """
        C{close}: CLOSE_NOTIFY, sent and not waited for.
        """
        self.notify(Command.CLOSE_NOTIFY)
        self.forget()
        self.app.close()


def _failed(err: int, reason: str) -> Deferred:
    d: Deferred = Deferred()
    d.errback(OSError(err, reason))
    return d


def _cancelling(call) -> Callable:
    def cancel(result):
        if call.active():
            call.cancel()
        return result

    return cancel


def _readable(reactor, sock: socket.socket) -> Deferred:
    return ReadinessWaiter(reactor, sock, "read").done
