"""
The application side of the Secure Socket API, mirroring Python's C{socket}
module.

    from ssa import client

    with client.socket(client.AF_INET) as s:
        s.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, "example.com")
        s.connect(("example.com", 443))
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: example.com\\r\\n\\r\\n")
        print(s.recv(4096))

Each L{SSASocket} holds one control connection to the daemon's Unix control
socket (L{ssa.paths.client_socket_path}, or C{path=}) and, from C{socket()}
until C{close()}, the plaintext stream: a local stream socket the daemon
passed with C{SCM_RIGHTS}. The daemon does the TCP connect, the handshake and
every verification; this module only forwards calls and reports the daemon's
errno as C{OSError}. Option values that name files (trust anchors,
certificate chain, private key) are read here, with the application's own
permissions, and sent as contents: the daemon never opens a path.
"""

from __future__ import annotations

import errno as _errno
import os
import socket as _socket
import struct
import threading
import weakref
from socket import (  # noqa: F401  (re-exported for callers' convenience)
    AF_INET,
    AF_INET6,
    IPPROTO_TCP,
    SHUT_RD,
    SHUT_RDWR,
    SHUT_WR,
    SO_ERROR,
    SOCK_CLOEXEC,
    SOCK_NONBLOCK,
    SOCK_STREAM,
    SOL_SOCKET,
)
from typing import Any

from ssa import _channels, wire
from ssa._control import ControlChannel, encode_option, reply_error
from ssa.constants import *  # noqa: F401,F403  (re-exported: client.TLS_HOSTNAME)
from ssa.constants import (  # for create_connection / create_server
    AF_HOSTNAME,
    IPPROTO_TLS,
    TLS_ALPN,
    TLS_CERTIFICATE_CHAIN,
    TLS_CHOSEN_CIPHER,
    TLS_CHOSEN_VERSION,
    TLS_ERROR,
    TLS_HOSTNAME,
    TLS_ID,
    TLS_PEER_CERTIFICATE_CHAIN,
    TLS_PEER_IDENTITY,
    TLS_PRIVATE_KEY,
    TLS_REQUEST_PEER_AUTH,
    TLS_TRUSTED_CIPHERS,
    TLS_TRUSTED_PEER_CERTIFICATES,
    version_name,
)
from ssa.constants import __all__ as _constants_all
from ssa.optioncheck import is_ip_literal, travels_with_connect
from ssa.paths import client_socket_path

#: Options (level IPPROTO_TLS) whose value is text: C{getsockopt} without a
#: C{buflen} returns them as C{str}, not as an integer.
STRING_OPTIONS = frozenset(
    {
        TLS_HOSTNAME,
        TLS_ALPN,
        TLS_TRUSTED_CIPHERS,
        TLS_CHOSEN_CIPHER,
        TLS_PEER_IDENTITY,
        TLS_PEER_CERTIFICATE_CHAIN,
        TLS_ERROR,
    }
)

__all__ = [
    "socket",
    "SSASocket",
    "STRING_OPTIONS",
    "AF_INET",
    "AF_INET6",
    "IPPROTO_TCP",
    "SHUT_RD",
    "SHUT_RDWR",
    "SHUT_WR",
    "SO_ERROR",
    "SOCK_CLOEXEC",
    "SOCK_NONBLOCK",
    "SOCK_STREAM",
    "SOL_SOCKET",
    *_constants_all,
]


def socket(
    family: int = AF_INET,
    type: int = SOCK_STREAM,
    proto: int = IPPROTO_TLS,
    *,
    path: str | os.PathLike[str] | None = None,
) -> SSASocket:
    """
    Create an SSA socket, like C{socket.socket(family, type, IPPROTO_TLS)}.

    @param family: C{AF_INET}, C{AF_INET6} or L{AF_HOSTNAME}.
    @param type: C{SOCK_STREAM}, optionally or'ed with C{SOCK_NONBLOCK}
        (the socket starts nonblocking) and C{SOCK_CLOEXEC} (always so).
    @param proto: must be L{IPPROTO_TLS}.
    @param path: the daemon's control socket; by default
        L{client_socket_path}.
    @raise OSError: C{EPROTONOSUPPORT} for another C{proto}; the daemon's
        errno (SPEC section 3) for a family or type it refuses; the errno of
        the failed connect (C{ENOENT}, C{ECONNREFUSED}, ...) when the daemon
        cannot be reached, with a message naming the path.
    """
    if proto != IPPROTO_TLS:
        raise OSError(
            _errno.EPROTONOSUPPORT,
            f"protocol {proto} is not supported: SSA sockets use IPPROTO_TLS ({IPPROTO_TLS})",
        )
    nonblocking = bool(type & SOCK_NONBLOCK)
    type &= ~(SOCK_NONBLOCK | SOCK_CLOEXEC)
    where = client_socket_path() if path is None else os.fspath(path)
    body = wire.SOCKET_ARGS.pack(int(family), int(type), int(proto))
    channel = _channels.take(where)
    reply = None
    if channel is not None:
        try:
            reply = channel.request(wire.Op.SOCKET, 0, body, spin=True)
        except OSError:
            channel.close()  # the daemon went away since: connect afresh
    if reply is None:
        channel = ControlChannel(where)
    try:
        if reply is None:
            reply = channel.request(wire.Op.SOCKET, 0, body, spin=True)
        code, payload, fds = reply
        plain = _plaintext_socket(where, code, payload, fds)
        (socket_id,) = wire.NEW_SOCKET.unpack_from(payload)
    except BaseException:
        channel.close()
        raise
    if nonblocking:
        plain.setblocking(False)
    return SSASocket(channel, socket_id, plain, family, type, proto)


def _plaintext_socket(path: str, code: int, payload: bytes, fds: list[int]) -> _socket.socket:
    """
    Check a SOCKET reply and wrap the plaintext descriptor it carried.
    """
    if code:
        _close_all(fds)
        raise reply_error(code, payload)
    if len(fds) != 1 or len(payload) < wire.NEW_SOCKET.size:
        _close_all(fds)
        raise OSError(
            _errno.EPROTO,
            f"the SSA daemon at {path} answered SOCKET with {len(fds)} descriptors "
            f"and a {len(payload)}-byte body (expected 1 and {wire.NEW_SOCKET.size})",
        )
    try:
        return _socket.socket(fileno=fds[0])
    except OSError as e:
        _close_all(fds)
        raise OSError(
            _errno.EPROTO, f"the SSA daemon at {path} passed no socket: {e.strerror}"
        ) from None


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class SSASocket:
    """
    An C{IPPROTO_TLS} socket served by the SSA daemon.

    The TLS calls (C{bind}, C{connect}, C{setsockopt}, C{getsockopt}) go to
    the daemon; the data calls (C{send}, C{recv}, C{makefile}, C{shutdown},
    timeouts) act on the plaintext stream, whose descriptor L{fileno}
    returns, so C{select}, C{poll} and C{selectors} work on it as on any
    socket. All methods are safe to call from several threads.
    """

    def __init__(
        self,
        channel: ControlChannel,
        socket_id: int,
        plain: _socket.socket,
        family: int,
        type: int,
        proto: int,
    ) -> None:
        """
        Use L{socket} to make one.
        """
        self._channel = channel
        self._id = socket_id
        self._plain = plain
        self._family = _enum(_socket.AddressFamily, family) if family != AF_HOSTNAME else family
        self._type = _enum(_socket.SocketKind, type)
        self._proto = proto
        self._closed = False
        self._connect_attempted = False
        self._hostname_set = False
        self._peer: tuple[Any, ...] | None = None
        self._sockname: tuple[Any, ...] | None = None
        self._holds_address = False  # bound or listening: close() waits for the daemon
        # setsockopt() calls the daemon cannot refuse, not sent yet: they go
        # with CONNECT, or before the next other request (docs/protocol.md).
        self._waiting: list[tuple[int, int, bytes]] = []
        self._waiting_lock = threading.Lock()
        self._new = True  # nothing but options asked of the daemon yet

    # Attributes

    @property
    def family(self) -> int:
        """
        The address family given to L{socket}.
        """
        return self._family

    @property
    def type(self) -> int:
        """
        The socket type, without C{SOCK_NONBLOCK}/C{SOCK_CLOEXEC}.
        """
        return self._type

    @property
    def proto(self) -> int:
        """
        Always L{IPPROTO_TLS}.
        """
        return self._proto

    @property
    def id(self) -> int:
        """
        The daemon's id of this socket (also C{getsockopt(IPPROTO_TLS, TLS_ID)}).

        It is also the handle another socket adopts this one's settings by
        (C{TLS_CONTEXT}), so options still waiting to travel with
        C{CONNECT} are sent first.

        @raise OSError: one of those was refused after all.
        """
        self._send_waiting()
        return self._id

    def _send_waiting(self) -> None:
        """
        Send the options still waiting to travel with C{CONNECT}, now (one
        round trip, with a C{TLS_ID} request they go before).
        """
        if self._waiting and not self._closed:
            self._call_raw(wire.Op.GETSOCKOPT, wire.OPTION.pack(IPPROTO_TLS, TLS_ID))

    @property
    def daemon_path(self) -> str:
        """
        The control socket of the daemon serving this socket.
        """
        return self._channel.path

    def fileno(self) -> int:
        """
        The plaintext stream's descriptor: the same from L{socket} to
        L{close}.
        """
        return self._open().fileno()

    def __repr__(self) -> str:
        state = " [closed]" if self._closed else ""
        fd = -1 if self._closed else self._plain.fileno()
        family = getattr(self._family, "name", None) or (
            "AF_HOSTNAME" if self._family == AF_HOSTNAME else str(self._family)
        )
        kind = getattr(self._type, "name", str(self._type))
        peer = f", peer={self._peer!r}" if self._peer else ""
        return (
            f"<ssa.client.SSASocket{state} id={self._id}, fd={fd}, family={family}, "
            f"type={kind}, proto={self._proto}{peer}, daemon={self._channel.path!r}>"
        )

    # Life

    def close(self) -> None:
        """
        Close the plaintext stream and the socket in the daemon
        (close_notify if connected). The control connection is kept for a
        later socket of this process when it is healthy, else closed.
        Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._plain.close()
        finally:
            # An explicit CLOSE lets the connection serve a later socket of
            # this process (L{ssa._channels}); its end would close it too.
            # Without it the daemon takes the connection's end for the
            # application's death and resets the peer (docs/protocol.md).
            channel = self._channel
            if self._holds_address and channel.reusable:
                # Bound or listening: wait until the daemon has let the
                # address go, so that it is free (and refusing) on return,
                # as after closing a kernel socket.
                try:
                    channel.request(wire.Op.CLOSE, self._id, b"", timeout=30)
                except OSError:
                    channel.close()
                else:
                    _channels.give_back(channel)
            elif channel.post(wire.Op.CLOSE, self._id) and channel.reusable:
                _channels.give_back(channel)
            else:
                channel.close()

    def __enter__(self) -> SSASocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Calls served by the daemon

    def bind(self, address: tuple[Any, ...]) -> None:
        """
        Choose the local address of the daemon's network socket.
        """
        host, port = self._address(address, "bind")
        if self._family in (AF_INET, AF_INET6):
            if host == "":
                host = "0.0.0.0" if self._family == AF_INET else "::"
            elif not is_ip_literal(host):
                host = self._resolve(host, port)
        reply = self._call(wire.Op.BIND, wire.encode_address(int(self._family), host, port))
        self._sockname = self._address_tuple(reply)
        self._holds_address = True

    def connect(self, address: tuple[Any, ...]) -> None:
        """
        Connect: the daemon does the TCP connect, the handshake and the
        verification.

        For C{AF_INET}/C{AF_INET6} a DNS name is resolved here, and becomes
        C{TLS_HOSTNAME} unless the application set one. C{AF_HOSTNAME}
        addresses go to the daemon as they are.

        @raise BlockingIOError: C{EINPROGRESS}, the socket being nonblocking;
            C{getsockopt(SOL_SOCKET, SO_ERROR)} later gives the outcome.
        @raise TimeoutError: a timeout was set and no answer came in time.
        @raise OSError: the daemon's errno (SPEC section 3) and reason.
        """
        host, port = self._address(address, "connect")
        name = None
        if self._family in (AF_INET, AF_INET6) and not is_ip_literal(host):
            name = host
            host = self._resolve(host, port)
        if name is not None and not self._hostname_set:
            self.setsockopt(IPPROTO_TLS, TLS_HOSTNAME, name)
        timeout = self._plain.gettimeout()
        flags = wire.CONNECT_NONBLOCKING if timeout == 0.0 else 0
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, []
            self._connect_attempted = True
        options = b""
        if waiting:
            flags |= wire.CONNECT_OPTIONS
            options = wire.encode_options(waiting)
        body = wire.CONNECT_FLAGS.pack(flags) + wire.encode_address(
            int(self._family), host, port
        ) + options
        code, payload = self._call_raw(wire.Op.CONNECT, body, timeout or None)
        if code in (0, _errno.EINPROGRESS):
            self._peer = (host, port, 0, 0) if self._family == AF_INET6 else (host, port)
        if code:
            raise reply_error(code, payload)

    def connect_ex(self, address: tuple[Any, ...]) -> int:
        """
        Like L{connect}, but return the errno instead of raising it (0 on
        success, C{EINPROGRESS}, C{ETIMEDOUT} after a timeout, ...). Bad
        addresses and failed name lookups still raise.
        """
        try:
            self.connect(address)
        except _socket.gaierror:
            raise
        except OSError as e:
            if e.errno is None:
                raise
            return e.errno
        return 0

    def listen(self, backlog: int = 128) -> None:
        """
        Listen for TLS connections (the server role; SPEC section 3).
        """
        reply = self._call(wire.Op.LISTEN, wire.BACKLOG.pack(backlog))
        self._sockname = self._address_tuple(reply)
        self._holds_address = True

    def accept(self) -> tuple[SSASocket, tuple[Any, ...]]:
        """
        Take the oldest connection whose TLS handshake (and client
        certificate check, if asked) succeeded.

        @return: C{(socket, address)} like C{socket.accept}; the new socket
            is connected and blocking.
        @raise BlockingIOError: nonblocking, and none is ready.
        @raise OSError: C{EINVAL} when not listening.
        """
        timeout = self._open().gettimeout()
        flags = wire.ACCEPT_NONBLOCKING if timeout == 0.0 else 0
        channel = ControlChannel(self._channel.path)
        try:
            code, payload, fds = channel.request(
                wire.Op.ACCEPT, self._id, wire.ACCEPT_FLAGS.pack(flags), timeout or None
            )
            plain = _plaintext_socket(self._channel.path, code, payload, fds)
            (new_id,) = wire.NEW_SOCKET.unpack_from(payload)
            peer = self._address_tuple(payload[wire.NEW_SOCKET.size :])
        except BaseException:
            channel.close()
            raise
        accepted = SSASocket(channel, new_id, plain, self._family, self._type, self._proto)
        accepted._connect_attempted = True
        accepted._peer = peer
        accepted._sockname = self._sockname
        return accepted, peer

    def getsockname(self) -> tuple[Any, ...]:
        """
        The local address of the daemon's network socket, once bound or
        listening.
        """
        self._open()
        if self._sockname is None:
            raise OSError(_errno.EINVAL, "the SSA socket is not bound")
        return self._sockname

    def _address_tuple(self, data: bytes) -> tuple[Any, ...]:
        (family, host, port), _ = wire.decode_address(data)
        return (host, port, 0, 0) if family == AF_INET6 else (host, port)

    def setsockopt(self, level: int, optname: int, value: int | str | bytes | os.PathLike[str]) -> None:
        """
        Set an option: an C{int} travels as a 4-byte native int (8-byte
        unsigned for C{TLS_CONTEXT}), a C{str} as UTF-8 with a NUL, C{bytes}
        as they are.

        For C{TLS_TRUSTED_PEER_CERTIFICATES}, C{TLS_CERTIFICATE_CHAIN} and
        C{TLS_PRIVATE_KEY} a value that does not start with C{-----BEGIN} is
        a path, read here: a file's bytes, or a directory's regular files
        that hold PEM, in name order.

        @raise OSError: the path cannot be read: C{EINVAL} (C{EBADF} for the
            private key), the daemon not asked. Else the daemon's errno.
        """
        self._open()
        data = encode_option(level, optname, value)
        if not self._wait_with(level, optname, data):
            self._call(wire.Op.SETSOCKOPT, wire.OPTION.pack(level, optname) + data)
        if level == IPPROTO_TLS and optname == TLS_HOSTNAME:
            self._hostname_set = True

    def _wait_with(self, level: int, optname: int, data: bytes) -> bool:
        """
        Keep the option to send with the next request instead of asking
        now, if the daemon cannot refuse it: the socket is new (nothing
        but options asked of it yet) and the value is one that
        L{travels_with_connect}. Every refusal thus still comes from
        C{setsockopt()} itself.

        @return: whether it was kept.
        """
        if not travels_with_connect(level, optname, data):
            return False
        with self._waiting_lock:
            if not self._new or self._connect_attempted:
                return False
            self._waiting.append((level, optname, data))
        _WITH_WAITING.add(self)
        return True

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        """
        Get an option from the daemon.

        Without C{buflen}: the value as an C{int} (4-byte native int, or
        8-byte unsigned, e.g. C{TLS_ID}), except that the text options of
        L{STRING_OPTIONS} come as C{str}. With C{buflen}: the raw bytes, at
        most C{buflen} of them. C{TLS_ERROR} with no failure recorded gives
        C{None}.
        """
        self._open()
        if buflen is not None and buflen < 0:
            raise OSError(_errno.EINVAL, "getsockopt buflen out of range")
        code, payload = self._call_raw(wire.Op.GETSOCKOPT, wire.OPTION.pack(level, optname))
        if code:
            if code == _errno.EINVAL and (level, optname) == (IPPROTO_TLS, TLS_ERROR):
                return None
            raise reply_error(code, payload)
        if buflen is not None:
            return payload[:buflen]
        if level == IPPROTO_TLS and optname in STRING_OPTIONS:
            return payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        if len(payload) == 4:
            return struct.unpack("i", payload)[0]
        if len(payload) == 8:
            return struct.unpack("Q", payload)[0]
        raise OSError(
            _errno.EINVAL,
            f"option {optname} (level {level}) has a {len(payload)}-byte value, "
            "not an integer: pass buflen",
        )

    def get_error(self) -> str | None:
        """
        The reason of this socket's last failure (C{TLS_ERROR}), or C{None}.
        """
        return self.getsockopt(IPPROTO_TLS, TLS_ERROR)

    def tls_info(self) -> dict[str, str | None]:
        """
        The connection's negotiated parameters: C{version} (e.g.
        C{"TLS 1.3"}), C{cipher} and C{peer} (the certificate's subject, or
        C{None} when the peer sent none).

        @raise OSError: the socket is not connected (the daemon's errno).
        """
        version = version_name(self.getsockopt(IPPROTO_TLS, TLS_CHOSEN_VERSION))
        cipher = self.getsockopt(IPPROTO_TLS, TLS_CHOSEN_CIPHER)
        try:
            peer = self.getsockopt(IPPROTO_TLS, TLS_PEER_IDENTITY)
        except OSError as e:
            if e.errno != _errno.ENOTCONN:
                raise
            peer = None
        return {"version": version, "cipher": cipher, "peer": peer}

    def getpeername(self) -> tuple[Any, ...]:
        """
        The address this socket connected (or is connecting) to.
        """
        self._open()
        if self._peer is None:
            raise OSError(_errno.ENOTCONN, os.strerror(_errno.ENOTCONN))
        return self._peer

    # Calls on the plaintext stream

    def send(self, data: bytes, flags: int = 0) -> int:
        """
        Send plaintext; return how many bytes were taken.
        """
        return self._data().send(data, flags)

    def sendall(self, data: bytes, flags: int = 0) -> None:
        """
        Send all of C{data}.
        """
        self._data().sendall(data, flags)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """
        Send a file's contents (C{os.sendfile} where possible).
        """
        return self._data().sendfile(file, offset, count)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """
        Receive plaintext; C{b""} at the peer's clean end (close_notify). A
        peer's truncation raises instead.
        """
        return self._data().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """
        Receive plaintext into C{buffer}.
        """
        return self._data().recv_into(buffer, nbytes, flags)

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        """
        A file object on the plaintext stream, as C{socket.makefile}.
        """
        return self._data().makefile(mode, *args, **kwargs)

    def shutdown(self, how: int) -> None:
        """
        Shut down the plaintext stream; C{SHUT_WR} makes the daemon send
        close_notify while reading goes on.
        """
        self._data().shutdown(how)

    def settimeout(self, value: float | None) -> None:
        """
        Set the timeout of data calls and of a blocking L{connect}; 0.0
        makes the socket nonblocking.
        """
        self._open().settimeout(value)

    def gettimeout(self) -> float | None:
        """
        The timeout set by L{settimeout}.
        """
        return self._open().gettimeout()

    def setblocking(self, flag: bool) -> None:
        """
        C{setblocking(False)} is C{settimeout(0.0)}; C{True} is C{None}.
        """
        self._open().setblocking(flag)

    def getblocking(self) -> bool:
        """
        Whether the socket is blocking (with or without a timeout).
        """
        return self._open().getblocking()

    # Helpers

    def _open(self) -> _socket.socket:
        if self._closed:
            raise OSError(_errno.EBADF, "the SSA socket is closed")
        return self._plain

    def _data(self) -> _socket.socket:
        plain = self._open()
        if not self._connect_attempted:
            raise OSError(_errno.ENOTCONN, "the SSA socket is not connected")
        return plain

    def _call_raw(self, op: int, body: bytes, timeout: float | None = None) -> tuple[int, bytes]:
        """
        Ask the daemon; return its errno and payload.
        """
        self._open()
        before: tuple[tuple[int, bytes], ...] = ()
        if op not in (wire.Op.SETSOCKOPT, wire.Op.GETSOCKOPT):
            self._new = False
        if self._waiting and op != wire.Op.CONNECT:
            with self._waiting_lock:
                waiting, self._waiting = self._waiting, []
            before = tuple((wire.Op.SETSOCKOPT, wire.OPTION.pack(level, name) + value)
                           for level, name, value in waiting)
        try:
            code, payload, fds = self._channel.request(
                op, self._id, body, timeout, spin=op in _QUICK_OPS, before=before
            )
        except ValueError as e:
            raise OSError(_errno.EINVAL, str(e)) from None
        _close_all(fds)
        return code, payload

    def _call(self, op: int, body: bytes) -> bytes:
        code, payload = self._call_raw(op, body)
        if code:
            raise reply_error(code, payload)
        return payload

    def _address(self, address: Any, call: str) -> tuple[str, int]:
        """
        Check an address tuple; return its host and port.
        """
        sizes = (2, 4) if self._family == AF_INET6 else (2,)
        if not isinstance(address, tuple) or len(address) not in sizes:
            shape = "(host, port[, flowinfo, scope_id])" if len(sizes) == 2 else "(host, port)"
            raise TypeError(f"{call}(): the address must be a tuple {shape}, not {address!r}")
        host, port = address[0], address[1]
        if isinstance(host, (bytes, bytearray)):
            host = bytes(host).decode("ascii")
        if not isinstance(host, str):
            raise TypeError(f"{call}(): the host must be str, not {type(host).__name__}")
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"{call}(): the port must be int, not {type(port).__name__}")
        if not 0 <= port <= 0xFFFF:
            raise OverflowError(f"{call}(): port must be 0-65535.")
        return host, port

    def _resolve(self, host: str, port: int) -> str:
        """
        The first address of C{host} in this socket's family.
        """
        infos = _socket.getaddrinfo(host, port, self._family, SOCK_STREAM)
        return infos[0][4][0]


#: Requests the daemon answers at once (no network wait): the client polls
#: briefly for their reply instead of sleeping (L{ControlChannel.request}).
_QUICK_OPS = frozenset(
    {wire.Op.SETSOCKOPT, wire.Op.GETSOCKOPT, wire.Op.BIND, wire.Op.LISTEN, wire.Op.CLOSE}
)


#: Sockets that may hold options waiting to travel with CONNECT.
_WITH_WAITING: weakref.WeakSet[SSASocket] = weakref.WeakSet()


def _send_all_waiting() -> None:
    """
    Before C{fork()}: send every socket's waiting options, so that parent
    and child share a socket whose daemon-side settings are complete
    (either may connect it; neither must send them again after).
    A refusal is left in the socket's C{TLS_ERROR}.
    """
    for sock in list(_WITH_WAITING):
        try:
            sock._send_waiting()
        except OSError:
            pass
    _WITH_WAITING.clear()


os.register_at_fork(before=_send_all_waiting)


def _enum(kind: Any, value: int) -> Any:
    try:
        return kind(value)
    except ValueError:
        return value


# socket.create_connection and socket.create_server, through the daemon

__all__ += ["create_connection", "create_server", "tls_socket"]

#: Errnos after which L{create_connection} tries the host's next address:
#: the address could not be reached. A TLS failure (C{EPROTO}) is the
#: host's, not the address's, and is raised at once.
RETRY_ERRNOS = frozenset(
    {_errno.ECONNABORTED, _errno.ECONNREFUSED, _errno.ETIMEDOUT, _errno.ENETUNREACH, _errno.EHOSTUNREACH}
)


def tls_socket(
    family: int = AF_INET,
    *,
    hostname: str | None = None,
    cafile: str | bytes | os.PathLike[str] | None = None,
    alpn: str | None = None,
    certfile: str | bytes | os.PathLike[str] | None = None,
    keyfile: str | bytes | os.PathLike[str] | None = None,
    require_client_certificate: bool = False,
    nonblocking: bool = False,
    path: str | os.PathLike[str] | None = None,
) -> SSASocket:
    """
    A new SSA socket with the common options set: C{TLS_HOSTNAME},
    C{TLS_TRUSTED_PEER_CERTIFICATES} (C{cafile}: a path or inline PEM),
    C{TLS_ALPN} (a comma list), C{TLS_CERTIFICATE_CHAIN} and
    C{TLS_PRIVATE_KEY}, C{TLS_REQUEST_PEER_AUTH}. It is closed again if
    one of them is refused.
    """
    sock = socket(family, SOCK_STREAM | (SOCK_NONBLOCK if nonblocking else 0), path=path)
    try:
        options = [
            (TLS_HOSTNAME, hostname),
            (TLS_TRUSTED_PEER_CERTIFICATES, cafile),
            (TLS_ALPN, alpn),
            (TLS_CERTIFICATE_CHAIN, certfile),
            (TLS_PRIVATE_KEY, keyfile),
            (TLS_REQUEST_PEER_AUTH, 1 if require_client_certificate else None),
        ]
        for name, value in options:
            if value is not None:
                sock.setsockopt(IPPROTO_TLS, name, value)
    except BaseException:
        sock.close()
        raise
    return sock


def resolve(host: str, port: int) -> list[tuple[int, str]]:
    """
    C{(family, IP literal)} of each IPv4 and IPv6 address of C{host}, in
    C{getaddrinfo}'s order (an IP literal gives itself).
    """
    seen: list[tuple[int, str]] = []
    for family, _type, _proto, _name, sockaddr in _socket.getaddrinfo(host, port, 0, SOCK_STREAM):
        if family in (AF_INET, AF_INET6) and (family, sockaddr[0]) not in seen:
            seen.append((int(family), sockaddr[0]))
    return seen


def verified_name(host: str, hostname: str | None) -> str | None:
    """
    The C{TLS_HOSTNAME} for a connection to C{host}: C{hostname} if given,
    else C{host} unless it is an IP literal (then the daemon's policy
    decides whether the certificate's IP addresses may be checked).
    """
    if hostname is not None:
        return hostname
    return None if is_ip_literal(host) else host


def create_connection(
    address: tuple[str, int],
    timeout: float | None | object = _socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
    source_address: tuple[str, int] | None = None,
    *,
    hostname: str | None = None,
    cafile: str | bytes | os.PathLike[str] | None = None,
    alpn: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> SSASocket:
    """
    Connect to C{address} through the daemon, like C{socket.create_connection}:
    each IPv4 and IPv6 address of the host is tried in turn until one
    connects.

    @param hostname: the name to verify (C{TLS_HOSTNAME}); by default the
        host of C{address} (see L{verified_name}).
    @param cafile: the trust anchors (C{TLS_TRUSTED_PEER_CERTIFICATES}):
        a PEM file, a directory or inline PEM; by default the policy's.
    @param alpn: protocols to offer, a comma list.
    @return: a connected, blocking L{SSASocket} with C{timeout} set.
    @raise OSError: the first address's failure when none could be
        reached (C{ECONNABORTED} with the reason), or at once a failure
        that is not about the address, such as C{EPROTO} for a
        verification failure.
    """
    host, port = address
    name = verified_name(host, hostname)
    errors: list[OSError] = []
    for family, ip in resolve(host, port):
        sock = tls_socket(family, hostname=name, cafile=cafile, alpn=alpn, path=path)
        try:
            if timeout is not _socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)  # type: ignore[arg-type]
            if source_address is not None:
                sock.bind(source_address)
            sock.connect((ip, port))
            return sock
        except OSError as e:
            sock.close()
            if e.errno not in RETRY_ERRNOS:
                raise
            errors.append(e)
    if not errors:
        raise OSError(_errno.EADDRNOTAVAIL, f"getaddrinfo returned no address for {host!r}")
    raise errors[0]


def create_server(
    address: tuple[str, int],
    *,
    certfile: str | bytes | os.PathLike[str],
    keyfile: str | bytes | os.PathLike[str],
    family: int = AF_INET,
    backlog: int | None = None,
    reuse_port: bool = False,
    cafile: str | bytes | os.PathLike[str] | None = None,
    require_client_certificate: bool = False,
    alpn: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> SSASocket:
    """
    A listening TLS socket, like C{socket.create_server}: bound to
    C{address} (C{("", 0)}: every address, an ephemeral port) and
    listening, serving C{certfile} (the chain, leaf first) and C{keyfile}.

    @param cafile: the anchors client certificates are verified against.
    @param require_client_certificate: ask for and verify a client
        certificate (C{TLS_REQUEST_PEER_AUTH}).
    @param reuse_port: set C{SO_REUSEPORT} on the daemon's socket; the
        daemon refuses it with C{ENOPROTOOPT} when it does not support it.
    """
    sock = tls_socket(
        family, cafile=cafile, alpn=alpn, certfile=certfile, keyfile=keyfile,
        require_client_certificate=require_client_certificate, path=path,
    )
    try:
        if reuse_port:
            sock.setsockopt(SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(128 if backlog is None else backlog)
    except BaseException:
        sock.close()
        raise
    return sock
