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
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet.defer import gatherResults
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._control import _read_pem_source
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
from .plaintext_tcp import LOOPBACK, ExpectedConnections, Relay, RelaySide

log = Logger()

#: Who owns the module's sockets: the module does not say which process
#: called, so no profile matches and the defaults apply.
KERNEL_CLIENT = PeerIdentity(pid=0, uid=-1, gid=-1, executable=None)
#: The backlog of the daemon's listeners (the module does not forward it).
BACKLOG = socket.SOMAXCONN
#: Options whose value the module sends as an absolute path (or inline PEM).
PATH_OPTIONS = (TLS_TRUSTED_PEER_CERTIFICATES, TLS_CERTIFICATE_CHAIN, TLS_PRIVATE_KEY)


@dataclass(eq=False)
class KernelSocket:
    """
    A socket of the module and the core's socket behind it.

    @ivar kernel_id: the module's id.
    @ivar core_id: the core's id.
    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar app_end: the core's plaintext descriptor for the application.
    @ivar internal: the application socket's loopback address.
    @ivar relays: the live relays of this socket's plaintext.
    """

    kernel_id: int
    core_id: int
    family: int
    app_end: int
    internal: wire.Address | None = None
    relays: list[Relay] = field(default_factory=list)
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
        self.expected = ExpectedConnections()
        # loopback source port of a connection the daemon made to an
        # application's listener -> (listener, core id of the accepted socket)
        self.accepted: dict[tuple[int, int], tuple[KernelSocket, int]] = {}
        self.port: NetlinkPort | None = None
        self.listeners: list = []
        self._seq = 0

    # Life

    def start(self) -> None:
        """
        Listen on loopback for the plaintext connections, then on netlink.

        @raise OSError: a port is taken (another daemon).
        """
        for family, host in LOOPBACK.items():
            try:
                port = self.reactor.listenTCP(self.plaintext_port, self.expected, interface=host)
            except Exception as e:
                if family == socket.AF_INET6:
                    log.info("no IPv6 loopback for the netlink plaintext port: {error}", error=e)
                    continue
                raise
            self.listeners.append(port)
            if not self.plaintext_port:
                self.plaintext_port = port.getHost().port
        self.port = NetlinkPort(self.reactor, self.address, self.datagram_received)
        self.port.startReading()

    def stop(self) -> list:
        """
        Stop listening and close every socket.

        @return: Deferreds of the listeners stopping.
        """
        if self.port is not None:
            self.port.close()
            self.port = None
        for entry in list(self.sockets.values()):
            self._close(entry, abort=True)
        stopped = [port.stopListening() for port in self.listeners]
        self.listeners = []
        return stopped

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
            sock, app_end = self.api.open_socket(KERNEL_CLIENT, message.family, socket.SOCK_STREAM, IPPROTO_TLS)
            self.sockets[message.socket_id] = KernelSocket(message.socket_id, sock.id, message.family, app_end)

        self._answer(message, make)

    def _setsockopt(self, message: Message) -> None:
        def apply() -> None:
            entry = self._entry(message)
            value = message.value or b""
            if message.level == IPPROTO_TLS and message.name in PATH_OPTIONS and not value.startswith(b"-"):
                try:
                    value = _read_pem_source(message.name, os.fsdecode(value.split(b"\0")[0]))
                except OSError as e:
                    raise SSAError(e.errno or errno.EINVAL, e.strerror or str(e)) from None
            try:
                self.api.setsockopt(entry.core_id, message.level, message.name, value)
            except SSAError as e:
                if message.level == IPPROTO_TLS or e.errno != errno.ENOPROTOOPT:
                    raise
                # The module sets it on the application's own socket as well.

        self._answer(message, apply)

    def _getsockopt(self, message: Message) -> None:
        try:
            value = self.api.getsockopt(self._entry(message).core_id, message.level, message.name)
        except SSAError as e:
            self._return(message.socket_id, -e.errno)
            return
        self._send(Command.DATA_RETURN, message.socket_id, value=value[:wire.MAX_OPTVAL])

    def _bind(self, message: Message) -> None:
        def bind() -> None:
            entry = self._entry(message)
            self.api.bind(entry.core_id, message.external)
            entry.internal = message.internal

        self._answer(message, bind)

    def _connect(self, message: Message) -> None:
        try:
            entry = self._entry(message)
            done = self.api.connect(entry.core_id, message.remote, message.blocking)
        except SSAError as e:
            self._return(message.socket_id, -e.errno)
            return
        entry.internal = message.internal
        family, _, port = message.internal
        relay: list[Relay] = []

        def arrived(app: RelaySide) -> None:
            if not relay:  # the connect failed: the application reads a reset
                app.transport.abortConnection()
                return
            relay[0].attach(app)

        self.expected.expect(family, port, arrived)

        def connected(_: object) -> None:
            if entry.closed:
                return
            relay.append(Relay(self.reactor, entry.app_end))
            entry.relays.append(relay[0])
            self._send(Command.HANDSHAKE_RETURN, entry.kernel_id, result=0)

        def failed(failure: Failure) -> None:
            if entry.closed:
                return
            err = failure.value.errno if isinstance(failure.value, SSAError) else errno.ECANCELED
            if not isinstance(failure.value, SSAError):
                log.failure("internal error connecting socket {id:#x}", failure, id=entry.kernel_id)
            if message.blocking:  # no loopback connection will come
                self.expected.forget(family, port)
            self._send(Command.HANDSHAKE_RETURN, entry.kernel_id, result=-err)

        if not message.blocking:
            self._return(message.socket_id, -errno.EINPROGRESS)
        done.addCallbacks(connected, failed)

    def _listen(self, message: Message) -> None:
        def listen() -> KernelSocket:
            entry = self._entry(message)
            self.api.listen(entry.core_id, BACKLOG)
            entry.internal = message.internal
            return entry

        entry = self._answer(message, listen)
        if entry is not None:
            self._accept_next(entry)

    def _accept_next(self, listener: KernelSocket) -> None:
        """
        Take the listener's next ready connection at once and connect it
        to the application's listening socket; the application's accept()
        then announces it (ACCEPT_NOTIFY) by the daemon's source port.
        """
        try:
            done = self.api.accept(listener.core_id, KERNEL_CLIENT, True)
        except SSAError as e:
            self._listener_failed(listener, e)
            return

        def ready(result: tuple) -> None:
            sock, app_end = result
            if listener.closed:
                self.api.close(sock.id, abort=True)
                return
            try:
                self._connect_to_application(listener, sock.id, app_end)
            except OSError as e:
                log.warn("could not reach the application's listening socket {address}: {error}",  # noqa: G010
                         address=listener.internal, error=e)
                self.api.close(sock.id, abort=True)
            self._accept_next(listener)

        def failed(failure: Failure) -> None:
            if not listener.closed:
                self._listener_failed(listener, failure.value)

        done.addCallbacks(ready, failed)

    def _listener_failed(self, listener: KernelSocket, error: BaseException) -> None:
        log.error("listening socket {id:#x} failed: {error}", id=listener.kernel_id, error=error)
        self._send(Command.LISTEN_ERR, listener.kernel_id)

    def _connect_to_application(self, listener: KernelSocket, core_id: int, app_end: int) -> None:
        assert listener.internal is not None
        family, host, port = listener.internal
        relay = Relay(self.reactor, app_end)
        connector = self.reactor.connectTCP(host, port, _AppSideFactory(relay), bindAddress=(LOOPBACK[family], 0))
        source = connector.transport.getHandle().getsockname()[1]
        key = (family, source)
        self.accepted[key] = (listener, core_id)
        listener.relays.append(relay)

    def _accept(self, message: Message) -> None:
        family, _, port = message.internal
        found = self.accepted.pop((family, port), None)
        if found is None or found[0].closed:
            self._return(message.socket_id, -errno.ECONNABORTED)
            return
        core_id = found[1]
        old = self.sockets.get(message.socket_id)
        if old is not None:
            self._close(old, abort=True)
        self.sockets[message.socket_id] = KernelSocket(message.socket_id, core_id, family, -1, message.internal)
        self._return(message.socket_id, 0)

    def _close(self, entry: KernelSocket, abort: bool = False) -> None:
        entry.closed = True
        if self.sockets.get(entry.kernel_id) is entry:
            del self.sockets[entry.kernel_id]
        if entry.internal is not None:
            self.expected.forget(entry.internal[0], entry.internal[2])
        for key in [k for k, (listener, _) in self.accepted.items() if listener is entry]:
            _, core_id = self.accepted.pop(key)
            self.api.close(core_id, abort=True)
        self.api.close(entry.core_id, abort=abort)

    def _close_notify(self, message: Message) -> None:
        entry = self.sockets.get(message.socket_id)
        if entry is not None:
            self._close(entry)


class _AppSideFactory(ClientFactory):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def buildProtocol(self, addr) -> RelaySide:
        side = _ConnectingSide(self.relay)
        side.factory = self
        return side

    def clientConnectionFailed(self, connector, reason) -> None:
        log.warn("could not connect to the application's listening socket: {reason}", reason=reason.value)  # noqa: G010
        self.relay.abort()

    def clientConnectionLost(self, connector, reason) -> None:
        pass


class _ConnectingSide(RelaySide):
    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay

    def connectionMade(self) -> None:
        super().connectionMade()
        self.relay.attach(self)


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

    def stopService(self):
        """
        Close every socket of the module and stop listening.
        """
        super().stopService()
        return gatherResults(self.frontend.stop())


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
