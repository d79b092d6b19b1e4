"""
The interfaces between the parts of the daemon.

    frontend --ISocketAPI--> daemon core --ITLSBackend/ITLSEngine--> backend
                                   bridge <--ITLSHandshakeListener-- TLS stream

A frontend (Unix socket, netlink) turns an application's calls into
L{ISocketAPI} calls. The core keeps the socket table and policy and, to
connect, asks the configured L{ITLSBackend} for an L{ITLSEngine}: a sans-IO
TLS connection that the daemon's one TLS stream protocol drives over TCP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from .peer import Credentials, PeerIdentity
    from .plaintext import PlaintextSocket
    from .sockets import TLSSocket
    from .tlsconfig import TLSSessionInfo
    from .wire import Frame

#: C{(family, host, port)}, as applications name addresses.
Address = tuple[int, str, int]


class ITLSEngine(Interface):
    """
    One TLS connection without I/O: ciphertext goes in through L{receive}
    and comes out of L{outgoing}; plaintext goes in through L{write} and
    comes out of L{read}. Every method may queue ciphertext, so the caller
    drains L{outgoing} after each call.
    """

    peer_closed = Attribute("True once the peer's close_notify has been read.")

    def receive(ciphertext: bytes) -> None:
        """
        Hand the engine bytes that arrived from the network.
        """

    def do_handshake() -> bool:
        """
        Advance the handshake with what has been received.

        @return: C{True} once the handshake is complete (the peer's chain
            verified against the configured anchors), C{False} while it
            needs more data from the peer.
        @raise ssa.errors.TLSFailure: the handshake failed; the reason names
            the cause (the failing check and depth, the alert received).
        """

    def read() -> bytes:
        """
        Decrypt all the plaintext that can be decrypted now.

        @return: the plaintext, C{b""} if none; after the peer's close_notify,
            L{peer_closed} is true.
        @raise ssa.errors.TLSFailure: the peer broke the protocol.
        """

    def write(plaintext: bytes) -> None:
        """
        Encrypt C{plaintext} (after the handshake) for sending.
        """

    def close_notify() -> None:
        """
        Queue a close_notify alert; later writes are not allowed. Idempotent.
        """

    def outgoing() -> bytes:
        """
        Take the ciphertext queued for the network, C{b""} if none.
        """

    def session_info() -> TLSSessionInfo:
        """
        Describe the finished handshake.

        @rtype: L{ssa.tlsconfig.TLSSessionInfo}; its C{resumed} says
            whether the handshake resumed the session offered to
            L{ITLSBackend.client_engine}.
        """

    def session() -> object | None:
        """
        The connection's resumable session, to offer to a later client
        engine of the same backend, or L{None} if there is none yet. Ask
        after the handshake and again after reading data: TLS 1.3 session
        tickets arrive after the handshake.

        @return: an object opaque to the caller.
        """


class ITLSBackend(Interface):
    """
    A TLS library, chosen by name; it makes engines from plain data.
    """

    name = Attribute("The backend's short name, e.g. C{'openssl'}.")
    description = Attribute("One line for people.")

    def client_engine(
        config: object,
        server_hostname: str | None,
        session: object | None = None,
        verify_name: str | None = None,
    ) -> ITLSEngine:
        """
        Make a client engine.

        @param config: an L{ssa.tlsconfig.ClientTLSConfig}; backends build
            one library context per distinct config and reuse it.
        @param server_hostname: the name sent as SNI, or L{None} (IP literal).
        @param session: a session from L{ITLSEngine.session} of an earlier
            engine of this backend, to offer for resumption, or L{None}. A
            session the library cannot use is ignored (full handshake).
        @param verify_name: the DNS name or IP literal the server's
            certificate must be valid for, or L{None}. A backend that can
            checks it inside the handshake (see L{ssa.identity}), so that a
            refusal reaches the server as an alert; the daemon checks it
            again after the handshake either way.
        """

    def server_engine(config: object) -> ITLSEngine:
        """
        Make a server engine for one accepted connection.

        @param config: an L{ssa.tlsconfig.ServerTLSConfig}; as for clients,
            one library context per distinct config, reused.
        @raise ssa.errors.TLSFailure: the credentials are unusable (a key
            that does not match its certificate, bad PEM).
        """


class IBackendChoice(Interface):
    """
    A cheap descriptor of an installed backend, found as a Twisted plugin
    (like Twisted's reactor choices): listing backends imports nothing heavy;
    L{load} imports the backend's library.
    """

    name = Attribute("The name chosen by C{--backend} or the policy's C{backend:}.")
    description = Attribute("One line for people.")

    def load() -> ITLSBackend:
        """
        Import the backend and make it.
        """


class ITLSHandshakeListener(Interface):
    """
    What the TLS stream protocol tells the object that waits for its
    handshake. One that does not hand the connection on (detaching the
    protocol, L{ssa.tlsprotocol.TLSStreamProtocol.detach}) inside
    L{tls_handshake_completed} must provide L{ITLSStreamListener}.
    """

    def tls_handshake_completed(info: TLSSessionInfo) -> None:
        """
        The handshake and the peer identity check passed.

        @param info: an L{ssa.tlsconfig.TLSSessionInfo}.
        """

    def tls_connection_lost(failure: BaseException | None) -> None:
        """
        The connection is gone.

        @param failure: L{None} after a clean close; otherwise why: an
            L{ssa.errors.TLSFailure}, an L{ssa.errors.TLSTruncated}, or the
            TCP error.
        """


class ITLSStreamListener(ITLSHandshakeListener):
    """
    A handshake listener that also reads what follows the handshake.
    """

    def tls_data_received(data: bytes) -> None:
        """
        Plaintext from the peer.
        """

    def tls_peer_closed() -> None:
        """
        The peer sent close_notify: a clean end of its stream.
        """


class IPlaintextStream(Interface):
    """
    How one socket's plaintext stream to its application is made and
    signalled. The frontend that opens (or accepts) the socket supplies it,
    and the core calls it as the socket changes state:

      - the Unix frontend: a socketpair whose other end went to the
        application with C{SCM_RIGHTS}; the daemon's end holds a
        placeholder byte, so that a truncation reads as C{ECONNRESET};
      - the netlink frontend: the loopback TCP connection the kernel makes
        from the socket's internal address once told the handshake is done.

    From the call that hands it to the core, the core owns it: it calls
    L{close} when the socket goes, also when that call fails.
    """

    def connecting(blocking: bool) -> None:
        """
        C{connect()} started; a nonblocking one must not look writable to
        the application until it ends.
        """

    def connected() -> Deferred[PlaintextSocket]:
        """
        The handshake and every check passed.

        @return: a L{Deferred} that fires with a L{PlaintextSocket}, which
            the bridge then owns, once the application's side of the stream
            exists (at once for a socketpair; for netlink when the kernel's
            loopback connection arrives, after the application was told),
            or fails if it never comes; the core keeps the TLS connection
            paused until then, and resets it on failure.
        """

    def connect_failed() -> None:
        """
        The connection failed before it was established; the stream shows
        the application that it ended.
        """

    def connection_ready() -> None:
        """
        A listening socket has one more connection ready for C{accept()}.
        """

    def connection_taken() -> None:
        """
        C{accept()} took one of a listening socket's ready connections.
        """

    def close() -> None:
        """
        Free what the bridge did not take (idempotent).
        """


class ISocketAPI(Interface):
    """
    The socket calls of SPEC section 3, as the daemon core offers them to
    frontends. A frontend turns its wire format into these calls and their
    results (or L{ssa.errors.SSAError}) back into replies; it needs nothing
    else of the core. Addresses are C{(family, host, port)}.
    """

    policies = Attribute("The administrator's policy (L{ssa.profiles.PolicySet}), for per-peer bounds.")

    def open_socket(
        owner: PeerIdentity, family: int, type: int, proto: int, plaintext: IPlaintextStream
    ) -> TLSSocket:
        """
        C{socket()}: a NEW socket owned by C{owner} (an
        L{ssa.peer.PeerIdentity}), with its plaintext stream.

        @return: the new L{ssa.sockets.TLSSocket}; its C{id} names it in
            the other calls.
        """

    def lookup(socket_id: int) -> TLSSocket:
        """
        The L{ssa.sockets.TLSSocket} of C{socket_id} (its family, state,
        addresses), or EBADF.
        """

    def bind(socket_id: int, address: Address) -> tuple[str, int]:
        """
        C{bind()}: bind the socket's network side now.

        @return: the bound C{(host, port)}.
        """

    def listen(socket_id: int, backlog: int) -> tuple[str, int]:
        """
        C{listen()}: listen on the bound address (an ephemeral port on
        every address if unbound) and run server handshakes.

        @return: the C{(host, port)} listened on.
        """

    def accept(
        listener_id: int, owner: PeerIdentity, blocking: bool, plaintext: IPlaintextStream
    ) -> Deferred[TLSSocket]:
        """
        C{accept()}: the oldest connection whose handshake succeeded, as a
        new CONNECTED socket of C{owner} with stream C{plaintext}.

        @return: a L{Deferred} firing with the new L{ssa.sockets.TLSSocket};
            a nonblocking accept with none ready raises EAGAIN at once.
        """

    def connect(socket_id: int, address: Address, blocking: bool) -> Deferred[None]:
        """
        C{connect()}: start connecting.

        @return: a L{Deferred} that fires with L{None} once connected or
            fails with L{ssa.errors.SSAError}; for a nonblocking connect the
            frontend answers EINPROGRESS at once and the outcome is kept for
            C{SO_ERROR}.
        """

    def setsockopt(socket_id: int, level: int, name: int, value: bytes) -> None:
        """
        Set an option from its wire value.
        """

    def getsockopt(socket_id: int, level: int, name: int) -> bytes:
        """
        Get an option's wire value.
        """

    def close(socket_id: int, abort: bool = False) -> Deferred[None] | None:
        """
        Close the socket: close_notify if connected (a reset with
        C{abort}: the application died), then free everything.

        @return: for a listening socket, a Deferred that fires once its
            address is free; else L{None}.
        """


class IRequestRouter(Interface):
    """
    Where a control connection's requests are served when the daemon runs
    several worker processes (L{ssa.routing.CrossWorker}): the Unix
    frontend asks it before serving each request and tells it what it
    served; it knows nothing else of workers.
    """

    processes = Attribute("How many processes serve requests (each answers for its own sockets).")

    def destination(
        frame: Frame, owned: set[int], waiting: bool
    ) -> Callable[[Any, bytes, Credentials | None], Callable[[], None]] | None:
        """
        Whether C{frame} (an L{ssa.wire.Frame}) must be served elsewhere,
        with its connection.

        @param owned: the ids of the sockets the connection owns; they
            leave with it.
        @param waiting: whether a request of the connection is in progress.
        @return: L{None} to serve it here; else a callable C{start(transport,
            pending, sender)} that detaches the connection (C{pending}: the
            unanswered requests' bytes, C{sender}: who wrote them) and
            returns what sends it on once it is closed here.
        @raise ssa.errors.SSAError: the request cannot be served anywhere.
        """

    def handled(frame: Frame) -> None:
        """
        C{frame} changed a socket's settings here (a successful
        C{setsockopt}): remembered, to make the socket again elsewhere.
        """

    def forget(socket_id: int) -> None:
        """
        C{socket_id} was closed here.
        """

    def reports(uid: int | None) -> Deferred[list[dict]]:
        """
        Every process's status report (L{ssa.status.local_report}).

        @return: a L{Deferred} firing with the reports.
        """


class IMetrics(Interface):
    """
    Where the daemon counts what it does (connections and their outcomes,
    handshake times, bytes): L{ssa.metrics.PrometheusMetrics} in the daemon,
    L{ssa.metrics.MemoryMetrics} in tests.
    """

    def connection(
        role: str, outcome: str, reason: str | None, handshake_seconds: float | None, resumed: bool
    ) -> None:
        """
        A connection reached its outcome.

        @param role: C{"client"} (connect) or C{"server"} (accept).
        @param outcome: C{"ok"} or C{"failed"}.
        @param reason: for a failure, its class (L{ssa.metrics.REASONS}).
        @param handshake_seconds: how long the connection took to be ready
            (TCP connect and TLS handshake), if it succeeded.
        @param resumed: whether its handshake resumed a session.
        """

    def active(delta: int) -> None:
        """
        Connections carrying data changed by C{delta} (+1 or -1).
        """

    def transferred(direction: str, count: int) -> None:
        """
        A connection moved C{count} plaintext bytes: C{"in"} from its
        peer, C{"out"} to its peer.
        """
