"""
Client-side TLS session resumption (SPEC section 4: TLS_SESSION_REUSE,
TLS_SESSION_TTL, TLS_RESUMED_SESSION): the daemon's session cache, the
options, and resumption end to end through each backend.
"""

from __future__ import annotations

import errno
import ssl

from twisted.trial.unittest import SynchronousTestCase

from ssa import client
from ssa import constants as c
from ssa.peer import PeerIdentity
from ssa.policy import Policy
from ssa.sessions import SessionCache, session_key
from ssa.sockets import ConnectPlan
from ssa.testing.peers import StdlibTLSServer, echo_handler
from ssa.tlsconfig import ClientTLSConfig, TLSSessionInfo

from .helpers import DaemonTestCase, for_each_backend
from .test_sockets import INT, STATES, TLS, _expect, make_socket, raises

S = c.SocketState
APP = PeerIdentity(pid=1, uid=1000, gid=1000, executable="/usr/bin/app")
PLAN = ConnectPlan("127.0.0.1", 443, "example.com", "example.com", ClientTLSConfig())


class SessionCacheTests(SynchronousTestCase):
    """
    L{SessionCache}: keyed, pooled, single-use, bounded, expiring.
    """

    def test_keying(self) -> None:
        """
        Sessions never cross applications (uid, executable), servers (host,
        port, SNI name) or TLS settings.
        """
        cache = SessionCache()
        key = session_key(APP, PLAN)
        others = [
            session_key(PeerIdentity(pid=1, uid=1001, gid=1000, executable="/usr/bin/app"), PLAN),
            session_key(PeerIdentity(pid=1, uid=1000, gid=1000, executable="/usr/bin/other"), PLAN),
            session_key(APP, ConnectPlan("127.0.0.2", 443, "example.com", "example.com", ClientTLSConfig())),
            session_key(APP, ConnectPlan("127.0.0.1", 444, "example.com", "example.com", ClientTLSConfig())),
            session_key(APP, ConnectPlan("127.0.0.1", 443, "other.com", "other.com", ClientTLSConfig())),
            session_key(APP, ConnectPlan("127.0.0.1", 443, "example.com", "example.com",
                                         ClientTLSConfig(trust_anchors=b"pem"))),
        ]
        cache.put(key, "s1", now=0, ttl=300)
        for other in others:
            self.assertIsNone(cache.take(other, 1))
        self.assertEqual(
            cache.take(session_key(PeerIdentity(pid=2, uid=1000, gid=1000, executable="/usr/bin/app"), PLAN), 1),
            "s1",
        )

    def test_single_use_pool(self) -> None:
        """
        A key holds several sessions; each is taken once, the newest first,
        and an empty pool gives L{None}.
        """
        cache = SessionCache()
        for session in ("s1", "s2", "s3"):
            cache.put("k", session, now=0, ttl=300)
        self.assertEqual(len(cache), 3)
        self.assertEqual([cache.take("k", 1) for _ in range(4)], ["s3", "s2", "s1", None])
        self.assertEqual(len(cache), 0)

    def test_pool_bound(self) -> None:
        """
        A full pool drops its oldest session for a new one.
        """
        cache = SessionCache(pool_size=2)
        for session in ("s1", "s2", "s3"):
            cache.put("k", session, now=0, ttl=300)
        self.assertEqual(len(cache), 2)
        self.assertEqual([cache.take("k", 1) for _ in range(3)], ["s3", "s2", None])

    def test_expiry(self) -> None:
        """
        A session is gone once its TTL has passed, and expired ones are
        never offered; a TTL of 0 or no session stores nothing.
        """
        cache = SessionCache()
        cache.put("k", "s", now=100, ttl=10)
        self.assertEqual(cache.take("k", 109.9), "s")
        cache.put("k", "old", now=100, ttl=10)
        cache.put("k", "new", now=105, ttl=10)
        cache.put("k", "short", now=105, ttl=1)
        self.assertEqual(cache.take("k", 110), "new")
        self.assertEqual(len(cache), 0)
        self.assertIsNone(cache.take("k", 110))
        cache.put("k", "s", now=100, ttl=0)
        cache.put("j", None, now=100, ttl=10)
        self.assertEqual(len(cache), 0)

    def test_lru_bound(self) -> None:
        """
        Past its size the sessions of the least recently used key go first;
        a take or a put counts as a use.
        """
        cache = SessionCache(size=3)
        cache.put("a", 1, 0, 100)
        cache.put("a", 2, 0, 100)
        cache.put("b", 3, 0, 100)
        self.assertEqual(cache.take("a", 1), 2)
        cache.put("c", 4, 0, 100)
        cache.put("c", 5, 0, 100)
        self.assertEqual(len(cache), 3)
        self.assertIsNone(cache.take("b", 1))
        self.assertEqual(cache.take("a", 1), 1)
        self.assertEqual([cache.take("c", 1) for _ in range(3)], [5, 4, None])

    def test_default_size(self) -> None:
        """
        The daemon keeps up to 10,000 sessions in all, 64 per key.
        """
        cache = SessionCache()
        for i in range(10_001):
            cache.put(i, i, 0, 100)
        self.assertEqual(len(cache), 10_000)
        self.assertIsNone(cache.take(0, 1))
        for i in range(65):
            cache.put("k", i, 0, 100)
        self.assertEqual(len(cache), 10_000)
        self.assertEqual(cache.take("k", 1), 64)


class SessionOptionTests(SynchronousTestCase):
    """
    TLS_SESSION_TTL and TLS_RESUMED_SESSION on the socket state machine.
    """

    def test_ttl(self) -> None:
        """
        TLS_SESSION_TTL defaults to the policy's session-timeout, is set in
        NEW only, read in any state, 0 or more and not above the policy.
        """
        sock = make_socket(policy=Policy(session_timeout=60))
        self.assertEqual(sock.get_option(TLS, c.TLS_SESSION_TTL), INT.pack(60))
        self.assertTrue(sock.resumes_sessions)
        sock.set_option(TLS, c.TLS_SESSION_TTL, INT.pack(30))
        self.assertEqual(sock.get_option(TLS, c.TLS_SESSION_TTL), INT.pack(30))
        sock.set_option(TLS, c.TLS_SESSION_TTL, INT.pack(0))
        self.assertFalse(sock.resumes_sessions)
        raises(self, errno.EINVAL, sock.set_option, TLS, c.TLS_SESSION_TTL, INT.pack(-1))
        raises(self, errno.EINVAL, sock.set_option, TLS, c.TLS_SESSION_TTL, b"\1")
        failure = raises(self, errno.EPROTO, sock.set_option, TLS, c.TLS_SESSION_TTL, INT.pack(61))
        self.assertIn("session-timeout", failure.reason)
        for state in STATES:
            other = make_socket(state)
            self.assertEqual(other.get_option(TLS, c.TLS_SESSION_TTL), INT.pack(300))
            if state is S.NEW:
                other.set_option(TLS, c.TLS_SESSION_TTL, INT.pack(1))
            else:
                raises(self, _expect({S.NEW}, state), other.set_option, TLS, c.TLS_SESSION_TTL, INT.pack(1))

    def test_reuse_off(self) -> None:
        """
        TLS_SESSION_REUSE 0 turns resumption off whatever the TTL.
        """
        sock = make_socket()
        sock.set_option(TLS, c.TLS_SESSION_REUSE, INT.pack(0))
        self.assertFalse(sock.resumes_sessions)
        self.assertFalse(make_socket(policy=Policy(session_resumption=False)).resumes_sessions)

    def test_resumed(self) -> None:
        """
        TLS_RESUMED_SESSION is read-only, readable once connected.
        """
        for resumed in (False, True):
            info = TLSSessionInfo(version=c.TLS_1_3, cipher="TLS_AES_128_GCM_SHA256", peer_chain=(), resumed=resumed)
            for state in (S.CONNECTED, S.DISCONNECTED):
                sock = make_socket(state, session=info)
                self.assertEqual(sock.get_option(TLS, c.TLS_RESUMED_SESSION), INT.pack(int(resumed)))
        for state in STATES:
            sock = make_socket(state)
            raises(self, errno.ENOPROTOOPT, sock.set_option, TLS, c.TLS_RESUMED_SESSION, INT.pack(1))
            if state not in (S.CONNECTED, S.DISCONNECTED):
                raises(self, _expect(set(), state), sock.get_option, TLS, c.TLS_RESUMED_SESSION)


class ResumptionTests(DaemonTestCase):
    """
    A second connection of the same application to the same server resumes
    the first one's session, daemon-wide and without the application asking.
    """

    def connect_once(self, port: int, context: bytes | None = None, **options: int) -> int:
        """
        Connect, exchange a little data (so TLS 1.3 tickets have arrived),
        close, and say whether the handshake resumed a session.
        """
        if context is None:
            sock = self.trusting_socket()
        else:
            sock = self.tls_socket()
            sock.setsockopt(client.IPPROTO_TLS, c.TLS_CONTEXT, context)
        for name, value in options.items():
            sock.setsockopt(client.IPPROTO_TLS, getattr(c, name), value)
        sock.connect(("localhost", port))
        self.ping(sock)
        resumed = sock.getsockopt(client.IPPROTO_TLS, c.TLS_RESUMED_SESSION)
        sock.close()
        return resumed

    def ping(self, sock: client.SSASocket) -> None:
        """
        One echo round trip on C{sock} (TLS 1.3 tickets arrive before the
        echo, so the daemon has kept the session once it returns).
        """
        sock.sendall(b"ping")
        received = b""
        while len(received) < 4:
            chunk = sock.recv(4 - len(received))
            self.assertTrue(chunk)
            received += chunk
        self.assertEqual(received, b"ping")

    def check(self, maximum_version: ssl.TLSVersion | None) -> None:
        with StdlibTLSServer(self.server_key, echo_handler, maximum_version=maximum_version) as server:
            self.assertEqual(self.connect_once(server.port), 0)
            self.assertEqual(self.connect_once(server.port), 1)
            self.assertEqual(self.connect_once(server.port, TLS_SESSION_REUSE=0), 0)
            self.assertEqual(self.connect_once(server.port, TLS_SESSION_TTL=0), 0)
            self.assertEqual(self.connect_once(server.port), 1)

    def test_tls13(self) -> None:
        """
        TLS 1.3: resumed by a session ticket.
        """
        self.check(None)

    def test_tls12(self) -> None:
        """
        TLS 1.2: resumed too.
        """
        self.check(ssl.TLSVersion.TLSv1_2)

    def test_concurrent_connections_each_resume(self) -> None:
        """
        Sessions are single-use and pooled per server: connections open at
        the same time each take their own session, and each connection
        gives one back, so after one connection and a burst of five, a
        second burst of five all resume.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            self.assertEqual(self.connect_once(server.port), 0)
            self.assertEqual(self.burst(server.port, 5), [1, 0, 0, 0, 0])
            self.assertEqual(self.burst(server.port, 5), [1] * 5)

    def burst(self, port: int, count: int) -> list[int]:
        """
        Connect C{count} sockets, each before the one before has exchanged
        data (so none has given back a session yet), then exchange data on
        each and close them; say which resumed.
        """
        socks = []
        for _ in range(count):
            sock = self.trusting_socket()
            sock.connect(("localhost", port))
            socks.append(sock)
        resumed = []
        for sock in socks:
            self.ping(sock)
            resumed.append(sock.getsockopt(client.IPPROTO_TLS, c.TLS_RESUMED_SESSION))
        for sock in socks:
            sock.close()
        return resumed

    def test_ten_sockets_share_a_context(self) -> None:
        """
        The original SSA's TenSocketSessionReuse: a template socket that
        never connects exports its settings with TLS_CONTEXT; ten sockets
        adopting them connect, and nine resume. Its
        TenSocketDisabledSessionReuse: with reuse off on the template, none
        does.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            for reuse, expected in [(0, [0] * 10), (1, [0] + [1] * 9)]:
                template = self.trusting_socket()
                template.setsockopt(client.IPPROTO_TLS, c.TLS_SESSION_REUSE, reuse)
                handle = template.getsockopt(client.IPPROTO_TLS, c.TLS_CONTEXT, 8)
                results = [self.connect_once(server.port, context=handle) for _ in range(10)]
                self.assertEqual(results, expected)
                template.close()


class ServerResumptionTests(DaemonTestCase):
    """
    A server on an ssa socket lets clients resume within the policy's
    session timeout, and not at all when the listener turns reuse off.
    """

    def resumed_twice(self, reuse: int) -> list[bool]:
        import socket as _socket
        import threading

        listener = self.tls_socket()
        listener.setsockopt(client.IPPROTO_TLS, c.TLS_CERTIFICATE_CHAIN, self.server_key.chain_pem())
        listener.setsockopt(client.IPPROTO_TLS, c.TLS_PRIVATE_KEY, self.server_key.key_pem())
        listener.setsockopt(client.IPPROTO_TLS, c.TLS_SESSION_REUSE, reuse)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(conn.recv(10))

        thread = threading.Thread(target=serve)
        thread.start()
        context = ssl.create_default_context(cadata=self.ca.cert_pem().decode())
        session, reused = None, []
        for _ in range(2):
            with context.wrap_socket(_socket.create_connection(("127.0.0.1", port), timeout=10),
                                     server_hostname="localhost", session=session) as tls:
                tls.sendall(b"hi")
                self.assertEqual(tls.recv(10), b"hi")
                reused.append(tls.session_reused)
                session = tls.session
        thread.join(10)
        return reused

    def test_resumes(self) -> None:
        """
        The second connection resumes.
        """
        self.assertEqual(self.resumed_twice(1), [False, True])

    def test_reuse_off(self) -> None:
        """
        TLS_SESSION_REUSE 0 on the listener: no resumption.
        """
        self.assertEqual(self.resumed_twice(0), [False, False])


for_each_backend(globals(), ResumptionTests, ServerResumptionTests)
