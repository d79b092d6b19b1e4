"""
The daemon's client-side TLS session cache, without I/O (SPEC section 4:
C{TLS_SESSION_REUSE}, C{TLS_SESSION_TTL}, C{TLS_RESUMED_SESSION}).

Sessions are opaque objects made by a backend's engine. They are keyed by
the application's identity (uid and executable), the server (host, port
and SNI name) and the whole L{ssa.tlsconfig.ClientTLSConfig}, so a session
never crosses to another application or to different TLS settings (other
trust anchors, versions or ciphers).

Each key holds a small pool of sessions, and each session is offered once:
L{SessionCache.take} removes the session it returns. TLS 1.3 tickets are
meant for one use (RFC 8446, appendix C.4: reusing one links connections),
and OpenSSL's client cache retires a TLS 1.3 session once a connection that
resumed it receives its successor; so concurrent connections to one server
each need their own ticket. Every connection stores the session it ends
with, so the pool refills as fast as it is drawn from, and a burst of
concurrent connections grows it up to L{POOL_SIZE}.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from .peer import PeerIdentity
from .sockets import ConnectPlan

DEFAULT_SIZE = 10_000
POOL_SIZE = 64


def session_key(owner: PeerIdentity, plan: ConnectPlan) -> Hashable:
    """
    The cache key of a connection C{owner} makes according to C{plan}.
    """
    return (owner.uid, owner.executable, plan.host, plan.port, plan.server_hostname, plan.config)


class SessionCache:
    """
    Bounded pools of single-use sessions, one pool per key, each session
    with its own expiry time; the least recently used keys go first.
    """

    def __init__(self, size: int = DEFAULT_SIZE, pool_size: int = POOL_SIZE) -> None:
        """
        @param size: the most sessions kept in all; the pools of the least
            recently used keys go first.
        @param pool_size: the most sessions kept per key; the oldest go first.
        """
        self._size = size
        self._pool_size = pool_size
        self._count = 0
        self._pools: OrderedDict[Hashable, list[tuple[object, float]]] = OrderedDict()

    def __len__(self) -> int:
        """
        How many sessions are kept, all keys together.
        """
        return self._count

    def take(self, key: Hashable, now: float) -> object | None:
        """
        Remove and return the newest session stored under C{key} that has
        not expired by C{now}, or L{None} if there is none. Expired ones
        found on the way are dropped.
        """
        pool = self._pools.get(key)
        if pool is None:
            return None
        found = None
        while pool:
            session, expires = pool.pop()
            self._count -= 1
            if now < expires:
                found = session
                break
        # The oldest of a pool expire first: drop them before they are reached.
        while pool and now >= pool[0][1]:
            del pool[0]
            self._count -= 1
        if pool:
            self._pools.move_to_end(key)
        else:
            del self._pools[key]
        return found

    def put(self, key: Hashable, session: object | None, now: float, ttl: float) -> None:
        """
        Add C{session} to C{key}'s pool until C{now + ttl}; a L{None}
        session or a TTL of 0 or less stores nothing. A full pool drops its
        oldest session.
        """
        if session is None or ttl <= 0:
            return
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = []
        else:
            self._pools.move_to_end(key)
        pool.append((session, now + ttl))
        self._count += 1
        if len(pool) > self._pool_size:
            del pool[0]
            self._count -= 1
        while self._count > self._size:
            oldest = next(iter(self._pools))
            victims = self._pools[oldest]
            del victims[0]
            self._count -= 1
            if not victims:
                del self._pools[oldest]
