"""
Twisted endpoints on SSA sockets: L{SSAClientEndpoint} and
L{SSAServerEndpoint}, and the parsers behind the C{ssa:} endpoint strings
(the plugin is C{twisted/plugins/ssa_endpoints.py}):

    clientFromString(reactor, "ssa:host=example.org:port=443")
    serverFromString(reactor, "ssa:8443:certKey=chain.pem:privateKey=key.pem")

The reactor drives the long waits: a nonblocking connect is done when the
plaintext descriptor turns writable, and a listener's descriptor is
readable while a connection waits for C{accept} (docs/protocol.md). Only
the short control round trips to the daemon (C{socket}, options, C{accept},
C{SO_ERROR}) run in a small thread pool of this module. The plaintext descriptor is
a real socket, adopted with C{adoptStreamConnection}; its L{SSASocket}
stays open until the connection is lost.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import address as _address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ssa import client
from ssa._connecting import ACCEPT_BACKOFF, LISTENER_GONE, connect_first
from ssa.client import SSASocket

__all__ = ["ClientParser", "SSAClientEndpoint", "SSAServerEndpoint", "ServerParser"]

_T = TypeVar("_T")
_log = Logger()
PathLike = str | bytes | os.PathLike[str]


#: Threads for the control round trips, apart from the reactor's pool so
#: that an application's long jobs there never hold up a connect or an
#: accept.
POOL_SIZE = 8
_pool: ThreadPool | None = None


def _in_thread(reactor: Any, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
    global _pool
    if _pool is None:
        _pool = ThreadPool(0, POOL_SIZE, "ssa-endpoints")
        _pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _stop_pool)
    return deferToThreadPool(reactor, _pool, function, *args)


def _stop_pool() -> None:
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.stop()


def _tcp_address(sockaddr: tuple[Any, ...]) -> _address.IPv4Address | _address.IPv6Address:
    kind = _address.IPv6Address if ":" in sockaddr[0] else _address.IPv4Address
    return kind("TCP", sockaddr[0], sockaddr[1])


class _Wrapper(ProtocolWrapper):
    """
    Stands between the transport and the application's protocol: reports
    the TLS peer's address, and closes the L{SSASocket} when the
    connection is lost.
    """

    def __init__(self, factory: _SocketFactory, wrapped: IProtocol) -> None:
        super().__init__(factory, wrapped)
        self.ssa_socket = factory.ssa_socket
        self._peer = factory.peer

    def getPeer(self) -> Any:
        """
        The TLS peer's address (not the local socketpair's).
        """
        return self._peer

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.ssa_socket.close()


@implementer(IHalfCloseableProtocol)
class _HalfCloseWrapper(_Wrapper):
    """
    A L{_Wrapper} for a protocol that takes half-closes.
    """

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()


class _SocketFactory(WrappingFactory):
    """
    Builds the one protocol of one adopted SSA connection.
    """

    def __init__(self, wrapped: IProtocolFactory, sock: SSASocket) -> None:
        super().__init__(wrapped)
        self.ssa_socket = sock
        self.peer = _tcp_address(sock.getpeername())
        self.built: _Wrapper | None = None

    def buildProtocol(self, addr: Any) -> _Wrapper | None:
        inner = self.wrappedFactory.buildProtocol(self.peer)
        if inner is None:
            return None
        kind = _HalfCloseWrapper if IHalfCloseableProtocol.providedBy(inner) else _Wrapper
        self.built = kind(self, inner)
        return self.built

    # A connection's protocol is not a factory's concern here: no start/stop logs.
    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


def _adopt(reactor: Any, sock: SSASocket, factory: IProtocolFactory) -> IProtocol | None:
    """
    Give the connected C{sock} to the reactor with a protocol from
    C{factory}; return that protocol, or C{None} if C{factory} declined
    (then the socket is closed).
    """
    wrapping = _SocketFactory(factory, sock)
    try:
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, wrapping)
    except BaseException:
        sock.close()
        raise
    if wrapping.built is None:
        sock.close()
        return None
    return wrapping.built.wrappedProtocol


class _Readiness:
    """
    One wait for a descriptor to turn writable or readable in the reactor.
    """

    def __init__(self, reactor: Any, fd: int, writable: bool) -> None:
        self._reactor = reactor
        self._fd = fd
        self._writable = writable
        self.ready: Deferred[None] = Deferred(lambda _: self._stop())

    def start(self) -> Deferred[None]:
        (self._reactor.addWriter if self._writable else self._reactor.addReader)(self)
        return self.ready

    def _stop(self) -> None:
        (self._reactor.removeWriter if self._writable else self._reactor.removeReader)(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "ssa"

    def doWrite(self) -> None:
        self._stop()
        self.ready.callback(None)

    doRead = doWrite

    def connectionLost(self, reason: Failure) -> None:
        # A failed connect hangs the descriptor up: done all the same (the
        # outcome is SO_ERROR's).
        self._stop()
        if not self.ready.called:
            self.ready.callback(None)


@implementer(IStreamClientEndpoint)
class SSAClientEndpoint:
    """
    Connects through the daemon: TCP, TLS and verification are its work.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        *,
        hostname: str | None = None,
        cafile: PathLike | None = None,
        alpn: str | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        """
        @param hostname: the name verified (C{TLS_HOSTNAME}); by default
            C{host} unless it is an IP literal.
        @param cafile: the trust anchors: PEM file, directory or inline PEM.
        @param alpn: protocols to offer, a comma list.
        @param path: the daemon's control socket.
        """
        self._reactor = reactor
        self._host = host
        self._port = port
        self._options = {"hostname": hostname, "cafile": cafile, "alpn": alpn, "path": path}

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect; the Deferred fails with the daemon's C{OSError} (C{EPROTO}
        for a failed handshake or verification, C{ECONNABORTED} when no
        address could be reached).
        """
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        reactor = self._reactor
        sock = await connect_first(
            self._host, self._port, self._options,
            lambda f, *args: _in_thread(reactor, f, *args),
            lambda fd: _Readiness(reactor, fd, writable=True).start(),
        )
        protocol = _adopt(reactor, sock, factory)
        if protocol is None:
            raise ConnectionRefusedError("the protocol factory built no protocol")
        return protocol


@implementer(IListeningPort)
class SSAListeningPort:
    """
    An SSA listener, accepting in the reactor: readable means a handshaken
    connection waits; the accept itself (a control round trip) runs in a
    thread, one at a time.
    """

    def __init__(self, reactor: Any, listener: SSASocket, factory: IProtocolFactory) -> None:
        self._reactor = reactor
        self.listener = listener
        self._factory = factory
        self._listening = False
        self._accepting = False

    def startListening(self) -> None:
        """
        Watch the listener (the endpoint calls it).
        """
        if not self._listening:
            self._listening = True
            self._factory.doStart()
            self._reactor.addReader(self)

    def stopListening(self) -> Deferred[None]:
        """
        Stop accepting and close the listener; accepted connections go on.
        """
        if self._listening:
            self._listening = False
            self._reactor.removeReader(self)
            self.listener.close()
            self._factory.doStop()
        return succeed(None)

    loseConnection = stopListening

    def getHost(self) -> Any:
        """
        The address the daemon listens on.
        """
        return _tcp_address(self.listener.getsockname())

    def fileno(self) -> int:
        return self.listener.fileno() if self._listening else -1

    def logPrefix(self) -> str:
        return f"SSAListeningPort({self._factory.__class__.__name__})"

    def doRead(self) -> None:
        if self._accepting:
            return
        self._accepting = True
        self._reactor.removeReader(self)
        _in_thread(self._reactor, self._accept).addCallbacks(self._accepted, self._failed)

    def _accept(self) -> SSASocket | None:
        try:
            return self.listener.accept()[0]
        except BlockingIOError:
            return None

    def _accepted(self, sock: SSASocket | None) -> None:
        self._resume()
        if sock is None:
            return
        if not self._listening:
            sock.close()
            return
        try:
            _adopt(self._reactor, sock, self._factory)
        except Exception:  # noqa: BLE001  (logged; the port goes on)
            _log.failure("adopting an accepted SSA connection")

    def _failed(self, failure: Failure) -> None:
        self._accepting = False
        if not self._listening:
            return
        _log.failure("SSA accept failed", failure)
        if failure.check(OSError) and failure.value.errno in LISTENER_GONE:
            self.stopListening()
        else:
            self._reactor.callLater(ACCEPT_BACKOFF, self._resume)

    def _resume(self) -> None:
        self._accepting = False
        if self._listening:
            self._reactor.addReader(self)

    def connectionLost(self, reason: Failure) -> None:
        self.stopListening()


@implementer(IStreamServerEndpoint)
class SSAServerEndpoint:
    """
    Listens through the daemon, which does the handshakes and hands over
    only the connections whose handshake (and client check) succeeded.
    """

    def __init__(
        self,
        reactor: Any,
        port: int,
        *,
        certfile: PathLike,
        keyfile: PathLike,
        interface: str = "",
        backlog: int = 50,
        alpn: str | None = None,
        require_client_certificate: bool = False,
        cafile: PathLike | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        """
        @param certfile: the certificate chain, leaf first (path or PEM).
        @param keyfile: its private key.
        @param interface: the address to listen on; all IPv4 by default.
        @param cafile: the anchors client certificates are verified against.
        """
        self._reactor = reactor
        self._address = (interface, port)
        self._family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        self._options = {
            "certfile": certfile, "keyfile": keyfile, "backlog": backlog, "alpn": alpn,
            "require_client_certificate": require_client_certificate, "cafile": cafile, "path": path,
        }

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen; the Deferred fails with the daemon's C{OSError} (e.g.
        C{EADDRINUSE}, or C{EPROTO} for a key that does not match).
        """
        return _in_thread(self._reactor, self._listener).addCallback(self._start, protocolFactory)

    def _listener(self) -> SSASocket:
        listener = client.create_server(self._address, family=self._family, **self._options)
        listener.setblocking(False)
        return listener

    def _start(self, listener: SSASocket, factory: IProtocolFactory) -> SSAListeningPort:
        port = SSAListeningPort(self._reactor, listener, factory)
        port.startListening()
        return port


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class ClientParser:
    """
    C{ssa:host=H:port=P[:hostname=N][:cafile=F][:alpn=L][:socket=S]}, or
    C{ssa:H:P...}; C{socket} is the daemon's control socket.
    """

    prefix = "ssa"

    def parseStreamClient(self, reactor: Any, *args: str, **kwargs: str) -> SSAClientEndpoint:
        """
        Make an L{SSAClientEndpoint} from an endpoint string's parts.
        """
        positional = dict(zip(("host", "port"), args, strict=False))
        host = kwargs.pop("host", positional.get("host"))
        port = kwargs.pop("port", positional.get("port"))
        if host is None or port is None:
            raise ValueError("an ssa: client endpoint needs a host and a port")
        return SSAClientEndpoint(
            reactor, host, int(port), hostname=kwargs.pop("hostname", None), cafile=kwargs.pop("cafile", None),
            alpn=kwargs.pop("alpn", None), path=kwargs.pop("socket", None), **_no_more(kwargs),
        )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ServerParser:
    """
    C{ssa:PORT:certKey=CHAIN:privateKey=KEY[:interface=A][:backlog=N]
    [:alpn=L][:requireClientCertificate=yes][:cafile=F][:socket=S]}, as
    Twisted's C{ssl:} (C{certKey} defaults to C{privateKey}).
    """

    prefix = "ssa"

    def parseStreamServer(self, reactor: Any, *args: str, **kwargs: str) -> SSAServerEndpoint:
        """
        Make an L{SSAServerEndpoint} from an endpoint string's parts.
        """
        port = kwargs.pop("port", args[0] if args else None)
        key = kwargs.pop("privateKey", None)
        if port is None or key is None:
            raise ValueError("an ssa: server endpoint needs a port and privateKey")
        return SSAServerEndpoint(
            reactor, int(port), certfile=kwargs.pop("certKey", key), keyfile=key,
            interface=kwargs.pop("interface", ""), backlog=int(kwargs.pop("backlog", 50)),
            alpn=kwargs.pop("alpn", None),
            require_client_certificate=_flag(kwargs.pop("requireClientCertificate", "no")),
            cafile=kwargs.pop("cafile", None), path=kwargs.pop("socket", None), **_no_more(kwargs),
        )


def _no_more(kwargs: dict[str, str]) -> dict[str, str]:
    if kwargs:
        raise TypeError(f"unknown ssa: endpoint options: {', '.join(sorted(kwargs))}")
    return kwargs
