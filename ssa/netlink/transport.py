"""
A netlink socket in the reactor: datagrams in, datagrams out.

Production: C{NETLINK_GENERIC}, bound to the daemon's port id, talking to
the kernel (port id 0) and believing only messages the kernel sent (sender
port id 0). Tests: C{NETLINK_USERSOCK} with a simulated module at another
port id (L{ssa.testing.fakemodule}), where any sender is possible.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.abstract import FileDescriptor
from twisted.logger import Logger

from . import wire

log = Logger()

NETLINK_USERSOCK = 2
NETLINK_GENERIC = 16
#: The module sends to this port id and the app's plaintext to this TCP port.
DAEMON_PORT = 8443
_RECEIVE_BUFFER = 4 * 1024 * 1024


@dataclass(frozen=True)
class NetlinkAddress:
    """
    Where the daemon's netlink socket sits and whom it talks to.

    @ivar proto: C{NETLINK_GENERIC} (the module) or C{NETLINK_USERSOCK}
        (a simulated module).
    @ivar local_pid: the daemon's port id (the module's C{daemon_id}).
    @ivar peer_pid: the module's port id: 0, the kernel.
    @ivar require_kernel_sender: drop datagrams not sent by port id 0.
    """

    proto: int = NETLINK_GENERIC
    local_pid: int = DAEMON_PORT
    peer_pid: int = 0
    require_kernel_sender: bool = True


class FamilyMissing(Exception):
    """
    The kernel has no generic netlink family of that name (the module is
    not loaded).
    """


def open_netlink(proto: int, local_pid: int = 0) -> socket.socket:
    """
    A nonblocking netlink socket bound to C{local_pid} (0: the kernel
    chooses one).

    @raise OSError: EADDRINUSE when another process holds C{local_pid}.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        except OSError:
            pass
        sock.bind((local_pid, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def receive(sock: socket.socket) -> tuple[bytes, int]:
    """
    One whole datagram, however long, and its sender's port id.

    @raise BlockingIOError: none is waiting.
    """
    size = sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    data, (sender, _) = sock.recvfrom(max(size, 1))
    return data, sender


def resolve_family(name: str = wire.FAMILY_NAME, proto: int = NETLINK_GENERIC, peer_pid: int = 0,
                   timeout: float = 5.0) -> tuple[int, int]:
    """
    Ask the generic netlink controller for a family (C{CTRL_CMD_GETFAMILY}),
    synchronously, on a socket of its own.

    @return: the family id and version.
    @raise FamilyMissing: there is no such family.
    @raise OSError: the controller cannot be asked, or did not answer in
        C{timeout} seconds (ETIMEDOUT).
    """
    sock = open_netlink(proto)
    try:
        sock.sendto(wire.encode_getfamily(name, pid=sock.getsockname()[0]), (peer_pid, 0))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OSError(errno.ETIMEDOUT, f"no answer from the generic netlink controller about {name!r}")
            sock.settimeout(remaining)
            try:
                data, sender = receive(sock)
            except TimeoutError:
                continue
            if sender != peer_pid:
                continue
            try:
                return wire.decode_family_reply(data)
            except LookupError as e:
                raise FamilyMissing(f"no generic netlink family {name!r} ({os.strerror(e.args[0])})") from None
    finally:
        sock.close()


class NetlinkPort(FileDescriptor):
    """
    A bound netlink socket in the reactor: each datagram received from
    the peer goes to C{handler} with its sender's port id; L{send} sends
    one to the peer.
    """

    def __init__(self, reactor, address: NetlinkAddress, handler: Callable[[bytes, int], None]) -> None:
        super().__init__(reactor)
        self.address = address
        self.handler = handler
        self.socket = open_netlink(address.proto, address.local_pid)
        self.pid = self.socket.getsockname()[0]
        self.connected = 1

    def fileno(self) -> int:
        """
        The netlink socket's descriptor.
        """
        return self.socket.fileno()

    def doRead(self) -> None:
        """
        Hand on every waiting datagram from the peer.
        """
        while self.socket.fileno() >= 0:
            try:
                data, sender = receive(self.socket)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped messages: say so, go on
                    log.error("netlink receive buffer overrun: messages from the kernel module were lost")
                    continue
                raise
            if sender != self.address.peer_pid and (self.address.require_kernel_sender or sender == self.pid):
                log.warn("dropped a netlink message from port id {sender}", sender=sender)  # noqa: G010
                continue
            self.handler(data, sender)

    def send(self, data: bytes, to: int | None = None) -> bool:
        """
        Send one datagram to the peer (or port id C{to}); say whether it
        went (a full peer drops it, as the module drops its own when the
        daemon's is full).
        """
        try:
            self.socket.sendto(data, (self.address.peer_pid if to is None else to, 0))
            return True
        except OSError as e:
            log.warn("netlink send to port id {peer} failed: {error}", peer=self.address.peer_pid, error=e)  # noqa: G010
            return False

    def writeSomeData(self, data: bytes) -> int:
        """
        Not used: L{send} writes datagrams directly.
        """
        raise NotImplementedError

    def connectionLost(self, reason) -> None:
        """
        Close the socket.
        """
        super().connectionLost(reason)
        self.socket.close()

    def close(self) -> None:
        """
        Stop reading and close the socket.
        """
        self.stopReading()
        self.socket.close()

    def logPrefix(self) -> str:
        """
        For the log.
        """
        return "NetlinkPort"
