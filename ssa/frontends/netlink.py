"""
The netlink frontend (SPEC section 6): serves the SSA kernel module.

The module forwards every call an application makes on an C{IPPROTO_TLS}
socket as a generic netlink message (L{ssa.netlink.wire}); this adapter
turns each into an L{ISocketAPI} call and answers as the original daemon
did: C{RETURN} with 0 or a negative errno, C{DATA_RETURN} with a
getsockopt value, C{HANDSHAKE_RETURN} when a connect is done (the kernel
NACKs it with -EINPROGRESS for a nonblocking socket, which is expected),
C{LISTEN_ERR} when a listener fails, and nothing to C{CLOSE_NOTIFY}.

Messages are handled strictly in the order they arrive: the module reuses
socket ids, and delivers a CLOSE before the SOCKET that reuses its id.
The application's data moves over loopback TCP (L{ssa.frontends.plaintext_tcp}).

The module says nothing about the calling process: every socket belongs
to L{KERNEL_CLIENT} and gets the policy's defaults (C{docs/netlink.md}).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..constants import (
    IPPROTO_TLS,
    TLS_CERTIFICATE_CHAIN,
    TLS_PRIVATE_KEY,
    TLS_TRUSTED_PEER_CERTIFICATES,
)
from ..errors import SSAError
from ..interfaces import ISocketAPI
from ..netlink import wire
from ..netlink.transport import (
    DAEMON_PORT,
    NETLINK_GENERIC,
    NETLINK_USERSOCK,
    FamilyMissing,
    NetlinkAddress,
    NetlinkPort,
    open_netlink,
    resolve_family,
)
from ..netlink.wire import Ack, Command, Message, NetlinkDecodeError
from ..peer import PeerIdentity
from ..public_files import read_public
from .loopback import LoopbackListener, OutgoingStream, RedirectedStream

log = Logger()
T = TypeVar("T")

#: Who owns the module's sockets: the module does not say which process
#: called, so no profile matches and the defaults apply.
KERNEL_CLIENT = PeerIdentity(pid=0, uid=-1, gid=-1, executable=None)
#: The backlog of the daemon's listeners (the module does not forward it).
BACKLOG = socket.SOMAXCONN
#: Options whose value the module sends as an absolute path (or inline PEM),
#: with the errno of a path that cannot be read (as the client library's).
PATH_OPTIONS = {TLS_TRUSTED_PEER_CERTIFICATES: errno.EINVAL, TLS_CERTIFICATE_CHAIN: errno.EINVAL,
                TLS_PRIVATE_KEY: errno.EBADF}
_OPTION_NAMES = {TLS_TRUSTED_PEER_CERTIFICATES: "TLS_TRUSTED_PEER_CERTIFICATES",
                 TLS_CERTIFICATE_CHAIN: "TLS_CERTIFICATE_CHAIN", TLS_PRIVATE_KEY: "TLS_PRIVATE_KEY"}


@dataclass(eq=False)
class KernelSocket:
    """
    A socket of the module and the core's socket behind it.

    @ivar kernel_id: the module's id.
    @ivar core_id: the core's id.
    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar stream: its plaintext stream (owned by the core).
    @ivar internal: the application socket's loopback address.
    """

    kernel_id: int
    core_id: int
    family: int
    stream: RedirectedStream | OutgoingStream
    internal: wire.Address | None = None
    closed: bool = False


class NetlinkFrontend:
    """
    The adapter between the module's messages and an L{ISocketAPI}.
    """

    def __init__(self, reactor, api: ISocketAPI, address: NetlinkAddress, family_id: int,
                 plaintext_port: int | None = None) -> None:
        """
        @param address: where the daemon's netlink socket is and whom it
            talks to.
        @param family_id: the SSA family's id (from L{resolve_family}).
        @param plaintext_port: the loopback TCP port the module redirects
            applications to (default: the netlink port id, as the module
            does; 0 for an ephemeral one, in tests).
        """
        self.reactor = reactor
        self.api = api
        self.address = address
        self.family_id = family_id
        self.plaintext_port = address.local_pid if plaintext_port is None else plaintext_port
        self.sockets: dict[int, KernelSocket] = {}
        self.loopback = LoopbackListener(reactor, self.plaintext_port)
        # the loopback source port of a connection the daemon made to an
        # application's listening socket -> (that listener, its stream)
        self.accepted: dict[tuple[int, int], tuple[KernelSocket, OutgoingStream]] = {}
        self.port: NetlinkPort | None = None
        self._seq = 0

    # Life

    def start(self) -> None:
        """
        Listen on loopback for the plaintext connections, then on netlink.

        @raise OSError: a port is taken (another daemon).
        """
        self.loopback.start()
        self.plaintext_port = self.loopback.port
        self.port = NetlinkPort(self.reactor, self.address, self.datagram_received)
        self.port.startReading()

    def stop(self) -> None:
        """
        Stop listening and close every socket.
        """
        if self.port is not None:
            self.port.close()
            self.port = None
        for entry in list(self.sockets.values()):
            self._close(entry, abort=True)
        self.loopback.stop()

    # Input

    def datagram_received(self, data: bytes, sender: int = 0) -> None:
        """
        Handle each message of a datagram from the module, in order.
        """
        try:
            messages = wire.decode_datagram(self.family_id, data)
        except NetlinkDecodeError as e:
            log.error("dropped a malformed message from the SSA module: {error}", error=str(e))
            return
        for message in messages:
            if isinstance(message, Ack):
                self._acked(message)
                continue
            handler = _HANDLERS.get(message.command)
            if handler is None:
                log.error("dropped a {command} message: the module does not send it", command=message.command.name)
                continue
            try:
                handler(self, message)
            except Exception:  # noqa: BLE001 (logged, answered ECANCELED)
                log.failure("internal error handling {command} for socket {id:#x}", command=message.command.name,
                            id=message.socket_id)
                if message.command is not Command.CLOSE_NOTIFY:
                    self._return(message.socket_id, -errno.ECANCELED)

    def _acked(self, ack: Ack) -> None:
        if ack.error == -errno.EINPROGRESS:
            return  # HANDSHAKE_RETURN on a nonblocking socket: the module started the loopback connect
        if ack.error:
            log.warn("the SSA module refused message {seq}: {error}", seq=ack.seq,  # noqa: G010
                     error=errno.errorcode.get(-ack.error, ack.error))

    # Output

    def _send(self, command: Command, socket_id: int, **fields) -> None:
        if self.port is None:
            return
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self.port.send(wire.reply(self.family_id, command, socket_id, seq=self._seq, pid=self.port.pid, **fields))

    def _return(self, socket_id: int, result: int) -> None:
        self._send(Command.RETURN, socket_id, result=result)

    def _entry(self, message: Message) -> KernelSocket:
        entry = self.sockets.get(message.socket_id)
        if entry is None:
            raise SSAError(errno.EBADF, f"socket {message.socket_id:#x} is not known to the daemon")
        return entry

    def _answer(self, message: Message, call: Callable[[], object]) -> object:
        """
        Run C{call}; answer RETURN 0, or RETURN with its errno.
        """
        try:
            result = call()
        except SSAError as e:
            self._return(message.socket_id, -e.errno)
            return None
        self._return(message.socket_id, 0)
        return result

    # Handlers

    def _socket(self, message: Message) -> None:
        old = self.sockets.get(message.socket_id)
        if old is not None:  # its CLOSE was lost (a full buffer): the id is the module's again
            log.warn("socket id {id:#x} reused before its close arrived", id=message.socket_id)  # noqa: G010
            self._close(old, abort=True)

        def make() -> None:
            assert message.family is not None  # the codec checks every command's attributes
            stream = RedirectedStream(self.loopback)
            sock = self.api.open_socket(KERNEL_CLIENT, message.family, socket.SOCK_STREAM, IPPROTO_TLS, stream)
            self.sockets[message.socket_id] = KernelSocket(message.socket_id, sock.id, message.family, stream)

        self._answer(message, make)

    def _setsockopt(self, message: Message) -> None:
        def apply() -> None:
            entry = self._entry(message)
            value = message.value or b""
            if message.level == IPPROTO_TLS and message.name in PATH_OPTIONS and not value.startswith(b"-"):
                # The caller is unknown: read only what every local user may.
                path = os.fsdecode(value.split(b"\0")[0])
                try:
                    value = read_public(path)
                except OSError as e:
                    err = e.errno if e.errno in (errno.EACCES, errno.EFBIG) else PATH_OPTIONS[message.name]
                    raise SSAError(err, f"{_OPTION_NAMES[message.name]}: {e.strerror or e}") from None
            try:
                self.api.setsockopt(entry.core_id, _given(message.level), _given(message.name), value)
            except SSAError as e:
                if message.level == IPPROTO_TLS or e.errno != errno.ENOPROTOOPT:
                    raise
                # The module sets it on the application's own socket as well.

        self._answer(message, apply)

    def _getsockopt(self, message: Message) -> None:
        try:
            value = self.api.getsockopt(self._entry(message).core_id, _given(message.level), _given(message.name))
        except SSAError as e:
            self._return(message.socket_id, -e.errno)
            return
        self._send(Command.DATA_RETURN, message.socket_id, value=value[:wire.MAX_OPTVAL])

    def _bind(self, message: Message) -> None:
        def bind() -> None:
            entry = self._entry(message)
            self.api.bind(entry.core_id, _given(message.external))
            entry.internal = message.internal

        self._answer(message, bind)

    def _connect(self, message: Message) -> None:
        try:
            entry = self._entry(message)
            assert isinstance(entry.stream, RedirectedStream) and message.internal is not None
            family, _, port = message.internal
            entry.stream.expect_from(family, port)
            done = self.api.connect(entry.core_id, _given(message.remote), bool(message.blocking))
        except SSAError as e:
            self._return(message.socket_id, -e.errno)
            return
        entry.internal = message.internal

        def connected(_: object) -> None:
            if not entry.closed:
                self._send(Command.HANDSHAKE_RETURN, entry.kernel_id, result=0)

        def failed(failure: Failure) -> None:
            if entry.closed:
                return
            err = failure.value.errno if isinstance(failure.value, SSAError) else errno.ECANCELED
            if not isinstance(failure.value, SSAError):
                log.failure("internal error connecting socket {id:#x}", failure, id=entry.kernel_id)
            self._send(Command.HANDSHAKE_RETURN, entry.kernel_id, result=-err)

        if not message.blocking:
            self._return(message.socket_id, -errno.EINPROGRESS)
        done.addCallbacks(connected, failed)

    def _listen(self, message: Message) -> None:
        def listen() -> None:
            entry = self._entry(message)
            assert isinstance(entry.stream, RedirectedStream)
            self.api.listen(entry.core_id, BACKLOG)
            entry.internal = message.internal
            entry.stream.on_ready = lambda: self._take_ready(entry)

        self._answer(message, listen)

    def _take_ready(self, listener: KernelSocket) -> None:
        """
        A connection is ready on C{listener}: take it at once and connect
        it to the application's listening socket, whose accept() then
        announces it (ACCEPT_NOTIFY) by the daemon's source port.
        """
        assert listener.internal is not None
        family = listener.internal[0]

        def source(port: int) -> None:
            self.accepted[family, port] = (listener, stream)

        stream = OutgoingStream(self.reactor, listener.internal, source)
        try:
            done = self.api.accept(listener.core_id, KERNEL_CLIENT, False, stream)
        except SSAError as e:
            self._accept_failed(listener, e)
            return

        def accepted(sock) -> None:
            stream.core_id = sock.id

        done.addCallbacks(accepted, lambda failure: self._accept_failed(listener, failure.value))

    def _accept_failed(self, listener: KernelSocket, error: BaseException) -> None:
        """
        A ready connection could not be taken: lost meanwhile (logged), or
        the listener failed (LISTEN_ERR: the application's next accept()
        fails EBADFD).
        """
        if isinstance(error, SSAError) and error.errno in (errno.EAGAIN, errno.ECONNABORTED):
            log.info("a connection to listening socket {id:#x} was lost before it was accepted: {error}",
                     id=listener.kernel_id, error=error)
            return
        log.error("listening socket {id:#x} failed: {error}", id=listener.kernel_id, error=error)
        if not listener.closed:
            self._send(Command.LISTEN_ERR, listener.kernel_id)

    def _accept(self, message: Message) -> None:
        assert message.internal is not None
        family, _, port = message.internal
        found = self.accepted.pop((family, port), None)
        if found is None or found[0].closed or found[1].core_id is None:
            self._return(message.socket_id, -errno.ECONNABORTED)
            return
        stream = found[1]
        assert stream.core_id is not None
        old = self.sockets.get(message.socket_id)
        if old is not None:
            self._close(old, abort=True)
        self.sockets[message.socket_id] = KernelSocket(message.socket_id, stream.core_id, family, stream,
                                                       message.internal)
        self._return(message.socket_id, 0)

    def _close(self, entry: KernelSocket, abort: bool = False) -> None:
        entry.closed = True
        if self.sockets.get(entry.kernel_id) is entry:
            del self.sockets[entry.kernel_id]
        for key in [k for k, (listener, _) in self.accepted.items() if listener is entry]:
            _, stream = self.accepted.pop(key)
            if stream.core_id is not None:  # connected to the application, never accepted by it
                self.api.close(stream.core_id, abort=True)
        self.api.close(entry.core_id, abort=abort)

    def _close_notify(self, message: Message) -> None:
        entry = self.sockets.get(message.socket_id)
        if entry is not None:
            self._close(entry)


def _given(value: T | None) -> T:
    """
    An attribute the codec guarantees for the command (see
    L{wire.LAYOUT}); EINVAL if it is missing all the same.
    """
    if value is None:
        raise SSAError(errno.EINVAL, "a required attribute is missing")
    return value


_HANDLERS = {
    Command.SOCKET_NOTIFY: NetlinkFrontend._socket,
    Command.SETSOCKOPT_NOTIFY: NetlinkFrontend._setsockopt,
    Command.GETSOCKOPT_NOTIFY: NetlinkFrontend._getsockopt,
    Command.BIND_NOTIFY: NetlinkFrontend._bind,
    Command.CONNECT_NOTIFY: NetlinkFrontend._connect,
    Command.LISTEN_NOTIFY: NetlinkFrontend._listen,
    Command.ACCEPT_NOTIFY: NetlinkFrontend._accept,
    Command.CLOSE_NOTIFY: NetlinkFrontend._close_notify,
}


class NetlinkFrontendService(Service):
    """
    The netlink frontend as a Twisted service of the daemon.
    """

    def __init__(self, frontend: NetlinkFrontend) -> None:
        self.frontend = frontend

    def startService(self) -> None:
        """
        Listen on netlink and on the loopback plaintext port.
        """
        super().startService()
        self.frontend.start()
        log.info("SSA daemon serving the SSA kernel module (generic netlink family {family}, port id {pid}, "
                 "plaintext on loopback port {port})", family=self.frontend.family_id,
                 pid=self.frontend.address.local_pid, port=self.frontend.plaintext_port)

    def stopService(self) -> None:
        """
        Close every socket of the module and stop listening.
        """
        super().stopService()
        self.frontend.stop()


def netlink_service(reactor, api: ISocketAPI, port: int = DAEMON_PORT, peer: int | None = None,
                    required: bool = True) -> NetlinkFrontendService | None:
    """
    Make the netlink frontend's service, checking now that it can run: the
    SSA family exists (the module is loaded) and no other daemon holds the
    port id.

    @param port: the daemon's netlink port id and plaintext TCP port (the
        module's C{DAEMON_START_PORT}, 8443).
    @param peer: for tests, the port id of a simulated module on
        C{NETLINK_USERSOCK}; L{None}: the kernel.
    @param required: whether a missing module stops the daemon
        (C{--frontend netlink}) or is only a warning (C{unix,netlink}).
    @return: the service, or L{None} when the module is missing and not
        required.
    @raise SystemExit: the frontend cannot run and is required, or the
        port id is taken.
    """
    address = (NetlinkAddress(NETLINK_USERSOCK, port, peer, False) if peer is not None
               else NetlinkAddress(NETLINK_GENERIC, port, 0, True))
    try:
        family_id, version = resolve_family(wire.FAMILY_NAME, address.proto, address.peer_pid)
    except (FamilyMissing, OSError) as e:
        message = (f"the netlink frontend needs the SSA kernel module, which is not loaded ({e}); load it "
                   "(insmod ssa.ko) or run with --frontend unix")
        if required:
            raise SystemExit(f"ssa: {message}") from None
        log.warn("{message}; serving the Unix frontend only", message=message)  # noqa: G010
        return None
    if version != wire.FAMILY_VERSION:
        log.warn("the SSA module's family has version {version}, not {expected}", version=version,  # noqa: G010
                 expected=wire.FAMILY_VERSION)
    try:
        open_netlink(address.proto, port).close()
    except OSError as e:
        raise SystemExit(f"ssa: cannot take netlink port id {port} ({e.strerror}): another SSA daemon "
                         "is likely serving the module") from None
    if peer is None and os.geteuid() != 0:
        log.warn("not running as root: the SSA module accepts the daemon's replies only from a process "  # noqa: G010
                 "with CAP_NET_ADMIN")
    return NetlinkFrontendService(NetlinkFrontend(reactor, api, address, family_id))
